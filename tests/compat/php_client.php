<?php
// PHP's mysqlnd through Switchyard, as mysqli or PDO (COMPAT_API), for
// tests/tests/compat.rs. Reads its settings from COMPAT_* environment
// variables (see tests/tests/compat.rs) and prints one JSON line per
// scenario: {"scenario": ..., "status": "ok" | "fail" | "na", "detail": ...}.

declare(strict_types=1);

$E = getenv();
$API = $E['COMPAT_API'] ?? 'mysqli';
$HOST = $E['COMPAT_HOST'];
$PORT = (int) $E['COMPAT_PORT'];
$USER = $E['COMPAT_USER'];
$PASSWORD = $E['COMPAT_PASSWORD'];
$DB = $E['COMPAT_DB'];
// off: the client's defaults; required: TLS with the server's certificate
// verified against COMPAT_CA; disabled: TLS explicitly off.
$TLS_MODE = $E['COMPAT_TLS'] ?? 'off';
$TLS = $TLS_MODE === 'required';
$CA = $E['COMPAT_CA'] ?? '';

function report(string $scenario, string $status, string $detail = '', array $extra = []): void
{
    echo json_encode(['scenario' => $scenario, 'status' => $status, 'detail' => $detail] + $extra,
        JSON_UNESCAPED_UNICODE | JSON_INVALID_UTF8_SUBSTITUTE), "\n";
}

/** The server's error number in a mysqli or PDO exception. */
function errno(Throwable $e): ?int
{
    if ($e instanceof PDOException) {
        $n = $e->errorInfo[1] ?? $e->getCode();
        return is_numeric($n) ? (int) $n : null;
    }
    return is_int($e->getCode()) ? $e->getCode() : null;
}

/** A connection: mysqli or PDO. */
function connect(?string $password = null, ?string $tls = null, ?int $port = null)
{
    global $API, $HOST, $PORT, $USER, $PASSWORD, $DB, $TLS_MODE, $CA;
    $password ??= $PASSWORD;
    $tls ??= $TLS_MODE;
    $port ??= $PORT;
    if ($API === 'pdo') {
        $options = [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION];
        if ($tls === 'required') {
            // A CA makes mysqlnd ask for TLS; verification is on.
            $options[PDO::MYSQL_ATTR_SSL_CA] = $CA;
            $options[PDO::MYSQL_ATTR_SSL_VERIFY_SERVER_CERT] = true;
        }
        // mysqlnd uses TLS only when asked: nothing to turn off.
        return new PDO("mysql:host=$HOST;port=$port;dbname=$DB", $USER, $password, $options);
    }
    mysqli_report(MYSQLI_REPORT_ERROR | MYSQLI_REPORT_STRICT);
    $m = mysqli_init();
    $flags = 0;
    if ($tls === 'required') {
        $m->ssl_set(null, null, $CA, null, null);
        $m->options(MYSQLI_OPT_SSL_VERIFY_SERVER_CERT, true);
        $flags |= MYSQLI_CLIENT_SSL;
    }
    $m->real_connect($HOST, $USER, $password, $DB, $port, null, $flags);
    return $m;
}

function expect_denied(string $scenario, ?string $password = null, ?string $tls = null): void
{
    try {
        $c = connect($password, $tls);
        $c = null;
        report($scenario, 'fail', 'login succeeded');
    } catch (Throwable $e) {
        $code = errno($e);
        report($scenario, $code === 1045 ? 'ok' : 'fail', get_class($e) . ': ' . $e->getMessage(), ['code' => $code]);
    }
}

/** One row of a text-protocol query, as a list. */
function row($c, string $sql): array
{
    if ($c instanceof PDO) {
        return $c->query($sql)->fetch(PDO::FETCH_NUM);
    }
    return $c->query($sql)->fetch_row();
}

function suite(): void
{
    global $API, $E, $DB, $TLS, $PASSWORD;
    $table = "`$DB`.`{$E['COMPAT_TABLE']}`";
    $c = null;
    $steps = [
        'connect' => function () use (&$c, $API) {
            $c = connect();
            $info = $c instanceof PDO ? $c->getAttribute(PDO::ATTR_SERVER_VERSION) : $c->server_info;
            report('connect', 'ok', "server $info ($API, mysqlnd)");
        },
        'tls' => function () use (&$c, $TLS, $E) {
            if (!$TLS) {
                report('tls', 'na', 'plaintext run');
                return;
            }
            // mysqlnd reports no cipher: check instead that the same
            // settings refuse a server without TLS.
            try {
                $p = connect(null, 'required', (int) $E['COMPAT_PLAIN_PORT']);
                $p = null;
                report('tls', 'fail', 'the TLS settings also logged in to a server without TLS');
            } catch (Throwable $e) {
                report('tls', 'ok', 'no cipher report in mysqlnd; the same settings refuse a server without TLS: '
                    . $e->getMessage());
            }
        },
        'query' => function () use (&$c, $E, $DB) {
            $r = row($c, 'SELECT @@server_id, 1+1, DATABASE()');
            $ok = (int) $r[0] === (int) $E['COMPAT_SERVER_ID'] && (int) $r[1] === 2 && $r[2] === $DB;
            report('query', $ok ? 'ok' : 'fail', json_encode($r));
        },
        'prepared' => function () use (&$c) {
            $sql = "SELECT ? * 2, CONCAT('<', ?, '>')";
            $cases = [[21, 'héllo'], [50, 'wörld']];
            $want = [[42, '<héllo>'], [100, '<wörld>']];
            $norm = fn ($r) => [(int) $r[0], $r[1]];
            if ($c instanceof PDO) {
                // PDO emulates prepares by default (client-side
                // interpolation): check that, then real server-side ones.
                $got = [];
                foreach ($cases as [$n, $s]) {
                    $st = $c->prepare($sql);
                    $st->execute([$n, $s]);
                    $got[] = $norm($st->fetch(PDO::FETCH_NUM));
                }
                if ($got !== $want) {
                    report('prepared', 'fail', 'emulated (default): ' . json_encode($got, JSON_UNESCAPED_UNICODE));
                    return;
                }
                $c->setAttribute(PDO::ATTR_EMULATE_PREPARES, false);
                $st = $c->prepare($sql);
                $got = [];
                foreach ($cases as [$n, $s]) {
                    $st->bindValue(1, $n, PDO::PARAM_INT);
                    $st->bindValue(2, $s, PDO::PARAM_STR);
                    $st->execute();
                    $got[] = $norm($st->fetch(PDO::FETCH_NUM));
                    $st->closeCursor();
                }
                $st = null;
                $c->setAttribute(PDO::ATTR_EMULATE_PREPARES, true);
                report('prepared', $got === $want ? 'ok' : 'fail',
                    'server-side: ' . json_encode($got, JSON_UNESCAPED_UNICODE),
                    ['note' => 'server-side with ATTR_EMULATE_PREPARES=false; PDO emulates prepares client-side'
                        . ' by default (checked too)']);
                return;
            }
            $st = $c->prepare($sql);
            $got = [];
            foreach ($cases as [$n, $s]) {
                $st->bind_param('is', $n, $s);
                $st->execute();
                $got[] = $norm($st->get_result()->fetch_row());
            }
            $st->close();
            report('prepared', $got === $want ? 'ok' : 'fail',
                'server-side (binary protocol): ' . json_encode($got, JSON_UNESCAPED_UNICODE));
        },
        'transaction' => function () use (&$c, $table) {
            if ($c instanceof PDO) {
                $c->beginTransaction();
                $c->prepare("INSERT INTO $table VALUES (?, ?)")->execute([1, 'rolled back']);
                $c->rollBack();
                $gone = (int) row($c, "SELECT COUNT(*) FROM $table WHERE id = 1")[0];
                $c->beginTransaction();
                $c->prepare("INSERT INTO $table VALUES (?, ?)")->execute([2, 'committed']);
                $c->commit();
            } else {
                $c->begin_transaction();
                $c->execute_query("INSERT INTO $table VALUES (?, ?)", [1, 'rolled back']);
                $c->rollback();
                $gone = (int) row($c, "SELECT COUNT(*) FROM $table WHERE id = 1")[0];
                $c->begin_transaction();
                $c->execute_query("INSERT INTO $table VALUES (?, ?)", [2, 'committed']);
                $c->commit();
            }
            $kept = row($c, "SELECT v FROM $table WHERE id = 2");
            $ok = $gone === 0 && $kept === ['committed'];
            report('transaction', $ok ? 'ok' : 'fail', "after rollback $gone rows; after commit " . json_encode($kept));
        },
        'big_value' => function () use (&$c, $E) {
            $units = (int) $E['COMPAT_BIG_UNITS'];
            $v = row($c, "SELECT CONCAT(REPEAT('0123456789abcdef', $units), 'END')")[0];
            $ok = $v === str_repeat('0123456789abcdef', $units) . 'END';
            report('big_value', $ok ? 'ok' : 'fail', strlen((string) $v) . ' bytes read' . ($ok ? '' : ', content differs'));
        },
        'disconnect' => function () use (&$c) {
            if ($c instanceof PDO) {
                // PDO has no close(): the last reference going closes it.
                $c = null;
                report('disconnect', 'ok', 'PDO object released (PDO has no close())');
            } else {
                $ok = $c->close();
                $c = null;
                report('disconnect', $ok ? 'ok' : 'fail', 'close() returned ' . var_export($ok, true));
            }
        },
    ];
    foreach ($steps as $name => $fn) {
        if ($c === null && $name !== 'connect') {
            report($name, 'fail', 'no connection');
            continue;
        }
        try {
            $fn();
        } catch (Throwable $e) {
            report($name, 'fail', get_class($e) . ': ' . $e->getMessage());
            fwrite(STDERR, (string) $e . "\n");
        }
    }
    expect_denied('bad_password', $PASSWORD . '-wrong');
    if ($TLS) {
        expect_denied('plaintext_refused', null, 'disabled');
    } else {
        report('plaintext_refused', 'na', 'plaintext run');
    }
}

function login(): void
{
    try {
        $c = connect();
        row($c, 'SELECT 1');
        $c = null;
        report('login', 'ok', 'logged in');
    } catch (Throwable $e) {
        report('login', 'fail', $e->getMessage(), ['code' => errno($e)]);
    }
}

($E['COMPAT_ACTION'] ?? 'suite') === 'login' ? login() : suite();

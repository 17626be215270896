// node mysql2 (pure JavaScript) through Switchyard, for
// tests/tests/compat.rs. Reads its settings from COMPAT_* environment
// variables (see tests/tests/compat.rs) and prints one JSON line per
// scenario: {"scenario": ..., "status": "ok" | "fail" | "na", "detail": ...}.
// mysql2 is found through NODE_PATH (target/npm-clients/node_modules).
'use strict';

const fs = require('fs');
const path = require('path');
const mysql = require('mysql2/promise');

const E = process.env;
const HOST = E.COMPAT_HOST;
const PORT = Number(E.COMPAT_PORT);
const USER = E.COMPAT_USER;
const PASSWORD = E.COMPAT_PASSWORD;
const DB = E.COMPAT_DB;
// off: the client's defaults; required: TLS with the server's certificate
// verified against COMPAT_CA; disabled: TLS explicitly off.
const TLS_MODE = E.COMPAT_TLS || 'off';
const TLS = TLS_MODE === 'required';

function report(scenario, status, detail, extra) {
  console.log(JSON.stringify({ scenario, status, detail: String(detail ?? ''), ...extra }));
}

function connect(password = PASSWORD, tls = TLS_MODE, port = PORT) {
  const config = { host: HOST, port, user: USER, password };
  if (DB) config.database = DB;
  if (tls === 'required') {
    // With `ssl`, mysql2 refuses a server without TLS; the certificate
    // and the host name are checked against the CA (Node's defaults).
    config.ssl = { ca: fs.readFileSync(E.COMPAT_CA), rejectUnauthorized: true };
  }
  // mysql2 uses TLS only when `ssl` is given: nothing to turn off.
  return mysql.createConnection(config);
}

async function expectDenied(scenario, password, tls) {
  try {
    const c = await connect(password, tls);
    await c.end();
    report(scenario, 'fail', 'login succeeded');
  } catch (e) {
    report(scenario, e.errno === 1045 ? 'ok' : 'fail', `${e.code} ${e.message}`, { code: e.errno ?? null });
  }
}

// Watches mysql2's own caching_sha2_password plugin (the flow is
// unchanged): what the server answered the scramble with, "fast" (fast
// auth success) or "full" (full authentication), and "rsa" when the
// client fetched the server's public key to encrypt the password with.
function observeCachingSha2(seen) {
  const lib = path.join(path.dirname(require.resolve('mysql2')), 'lib');
  const authSwitch = require(path.join(lib, 'commands/auth_switch.js'));
  const factory = require(path.join(lib, 'auth_plugins/caching_sha2_password.js'));
  authSwitch.standardAuthPlugins.caching_sha2_password = (ctx) => {
    const inner = factory({ onServerPublicKey: () => seen.push('rsa') })(ctx);
    let primed = false;
    return (data) => {
      if (primed && data.length === 1) {
        seen.push({ 3: 'fast', 4: 'full' }[data[0]] ?? `more-data ${data[0]}`);
      }
      primed = true;
      return inner(data);
    };
  };
}

async function login() {
  const seen = [];
  observeCachingSha2(seen);
  const authPath = () => seen.join('+') || 'none';
  try {
    const c = await connect();
    await c.query('SELECT 1');
    await c.end();
    report('login', 'ok', 'logged in', { auth_path: authPath() });
  } catch (e) {
    report('login', 'fail', `${e.code} ${e.message}`, { code: e.errno ?? null, auth_path: authPath() });
  }
}

async function suite() {
  const table = `\`${DB}\`.\`${E.COMPAT_TABLE}\``;
  let conn = null;

  const steps = [
    ['connect', async () => {
      conn = await connect();
      report('connect', 'ok', `server ${conn.connection._handshakePacket?.serverVersion}`);
    }],
    ['tls', async () => {
      if (!TLS) return report('tls', 'na', 'plaintext run');
      const stream = conn.connection.stream;
      const cipher = stream.encrypted && stream.getCipher ? stream.getCipher() : null;
      const shown = cipher ? `socket: ${stream.getProtocol()} ${cipher.name}` : 'the socket is not TLS';
      // The same settings must refuse a server without TLS.
      try {
        const p = await connect(PASSWORD, 'required', Number(E.COMPAT_PLAIN_PORT));
        await p.end();
        report('tls', 'fail', `${shown}; the TLS settings also logged in to a server without TLS`);
      } catch (e) {
        report('tls', cipher ? 'ok' : 'fail', `${shown}; the same settings refuse a server without TLS: ${e.message}`);
      }
    }],
    ['query', async () => {
      const [rows] = await conn.query({ sql: 'SELECT @@server_id, 1+1, DATABASE()', rowsAsArray: true });
      const row = rows[0];
      const ok = Number(row[0]) === Number(E.COMPAT_SERVER_ID) && Number(row[1]) === 2 && row[2] === DB;
      report('query', ok ? 'ok' : 'fail', JSON.stringify(row));
    }],
    ['prepared', async () => {
      // execute(): COM_STMT_PREPARE / COM_STMT_EXECUTE (binary protocol);
      // the second run reuses the cached statement.
      const got = [];
      for (const [n, s] of [[21, 'héllo'], [50, 'wörld']]) {
        const [rows] = await conn.execute({ sql: "SELECT ? * 2, CONCAT('<', ?, '>')", rowsAsArray: true }, [n, s]);
        got.push([Number(rows[0][0]), rows[0][1]]);
      }
      const ok = JSON.stringify(got) === JSON.stringify([[42, '<héllo>'], [100, '<wörld>']]);
      report('prepared', ok ? 'ok' : 'fail', `server-side (binary protocol): ${JSON.stringify(got)}`);
    }],
    ['transaction', async () => {
      await conn.beginTransaction();
      await conn.execute(`INSERT INTO ${table} VALUES (?, ?)`, [1, 'rolled back']);
      await conn.rollback();
      const [[gone]] = await conn.query({ sql: `SELECT COUNT(*) FROM ${table} WHERE id = 1`, rowsAsArray: true });
      await conn.beginTransaction();
      await conn.execute(`INSERT INTO ${table} VALUES (?, ?)`, [2, 'committed']);
      await conn.commit();
      const [kept] = await conn.query({ sql: `SELECT v FROM ${table} WHERE id = 2`, rowsAsArray: true });
      const ok = Number(gone[0]) === 0 && kept.length === 1 && kept[0][0] === 'committed';
      report('transaction', ok ? 'ok' : 'fail', `after rollback ${gone[0]} rows; after commit ${JSON.stringify(kept)}`);
    }],
    ['big_value', async () => {
      const units = Number(E.COMPAT_BIG_UNITS);
      const [rows] = await conn.query({
        sql: `SELECT CONCAT(REPEAT('0123456789abcdef', ${units}), 'END')`,
        rowsAsArray: true,
      });
      const value = rows[0][0];
      const ok = value === '0123456789abcdef'.repeat(units) + 'END';
      report('big_value', ok ? 'ok' : 'fail', `${value.length} bytes read${ok ? '' : ', content differs'}`);
    }],
    ['disconnect', async () => {
      const c = conn;
      conn = null;
      await c.end();
      report('disconnect', 'ok', 'end() sent COM_QUIT');
    }],
  ];
  for (const [name, fn] of steps) {
    if (conn === null && name !== 'connect') {
      report(name, 'fail', 'no connection');
      continue;
    }
    try {
      await fn();
    } catch (e) {
      report(name, 'fail', `${e.code ?? e.name}: ${e.message}`);
      console.error(e);
    }
  }
  await expectDenied('bad_password', `${PASSWORD}-wrong`, TLS_MODE);
  if (TLS) {
    await expectDenied('plaintext_refused', PASSWORD, 'disabled');
  } else {
    report('plaintext_refused', 'na', 'plaintext run');
  }
}

(E.COMPAT_ACTION === 'login' ? login() : suite()).then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  }
);

"""mysql-connector-python in pure-Python mode (a MySQL 8/9 style client)
through Switchyard, for tests/tests/compat.rs.

Its settings (COMPAT_* variables) and the JSON line it prints per scenario
are those of compat_common.py.
"""


import mysql.connector

from compat_common import (
    CA, DB, E, HOST, PASSWORD, PORT, TLS, TLS_MODE, USER, big_value_query, main, report,
    report_big_value, run_scenarios,
)

AUTH_PLUGIN = E.get("COMPAT_AUTH_PLUGIN")


def connect(password=PASSWORD, tls=TLS_MODE, port=PORT):
    kwargs = dict(host=HOST, port=port, user=USER, password=password, use_pure=True)
    if DB:
        kwargs["database"] = DB
    if AUTH_PLUGIN:
        kwargs["auth_plugin"] = AUTH_PLUGIN
    if tls == "required":
        # ssl_verify_cert makes the connector refuse a server without TLS
        # (2026); ssl_verify_identity checks the name too.
        kwargs.update(ssl_ca=CA, ssl_verify_cert=True, ssl_verify_identity=True)
    elif tls == "disabled":
        # By default the connector uses TLS when the server offers it.
        kwargs.update(ssl_disabled=True)
    conn = mysql.connector.connect(**kwargs)
    if type(conn).__name__ != "MySQLConnection":
        raise RuntimeError(f"not the pure-Python connection: {type(conn).__name__}")
    return conn


def refused_without_tls():
    """Whether the TLS settings refuse a server without TLS; the error."""
    try:
        connect(tls="required", port=int(E["COMPAT_PLAIN_PORT"])).close()
        return False, "the TLS settings also logged in to a server without TLS"
    except mysql.connector.Error as e:
        return True, f"the same settings refuse a server without TLS: {e}"


def expect_denied(scenario, **kwargs):
    try:
        c = connect(**kwargs)
        c.close()
        report(scenario, "fail", "login succeeded")
    except mysql.connector.Error as e:
        report(scenario, "ok" if e.errno == 1045 else "fail", str(e), code=e.errno)


def text(v):
    return v.decode() if isinstance(v, (bytes, bytearray)) else v


def login():
    """One login, for the caching_sha2_password cases; auth_path tells what
    the server answered the scramble with: "fast" (fast auth success) or
    "full" (full authentication, which this connector answers with the
    password in cleartext, TLS or not)."""
    from mysql.connector.plugins import caching_sha2_password as plugin

    seen = []
    cls = plugin.MySQLCachingSHA2PasswordAuthPlugin
    original = cls.auth_more_response

    def observed(self, sock, auth_data, **kwargs):
        if len(auth_data) == 1:
            seen.append({3: "fast", 4: "full"}.get(auth_data[0], f"more-data {auth_data[0]}"))
        return original(self, sock, auth_data, **kwargs)

    cls.auth_more_response = observed
    path = lambda: "+".join(seen) or "none"  # noqa: E731
    try:
        c = connect()
        cur = c.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
        cur.close()
        secure = c.is_secure
        c.close()
        report("login", "ok", "logged in over " + ("TLS" if secure else "plaintext"), auth_path=path())
    except mysql.connector.Error as e:
        report("login", "fail", str(e), code=e.errno, auth_path=path())


def suite():
    table = f"`{DB}`.`{E['COMPAT_TABLE']}`"
    conn = None

    def do_connect():
        nonlocal conn
        conn = connect()
        report("connect", "ok", f"server {conn.server_info}, pure Python")

    def do_tls():
        if not TLS:
            report("tls", "na", "plaintext run")
            return
        sock = getattr(conn._socket, "sock", None)
        cipher = sock.cipher() if hasattr(sock, "cipher") else None
        refused, why = refused_without_tls()
        ok = conn.is_secure and bool(cipher) and refused
        shown = f"{cipher[1]} {cipher[0]}" if cipher else "no cipher"
        report("tls", "ok" if ok else "fail", f"is_secure={conn.is_secure}, socket: {shown}; {why}")

    def do_query():
        cur = conn.cursor()
        cur.execute("SELECT @@server_id, 1+1, DATABASE()")
        row = tuple(text(v) for v in cur.fetchone())
        cur.close()
        want = (int(E["COMPAT_SERVER_ID"]), 2, DB)
        report("query", "ok" if row == want else "fail", f"{row}")

    def do_prepared():
        # prepared=True: COM_STMT_PREPARE / COM_STMT_EXECUTE (binary
        # protocol), one statement executed twice.
        cur = conn.cursor(prepared=True)
        got = []
        for n, s in [(21, "héllo"), (50, "wörld")]:
            cur.execute("SELECT ? * 2, CONCAT('<', ?, '>')", (n, s))
            got.append(tuple(text(v) for v in cur.fetchone()))
        cur.close()
        want = [(42, "<héllo>"), (100, "<wörld>")]
        report("prepared", "ok" if got == want else "fail",
               f"server-side (binary protocol): {got}")

    def do_transaction():
        cur = conn.cursor()
        # autocommit is off by default: the SELECTs before opened a
        # transaction, which start_transaction() refuses to nest in.
        if conn.in_transaction:
            conn.rollback()
        conn.start_transaction()
        cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (1, "rolled back"))
        conn.rollback()
        cur.execute(f"SELECT COUNT(*) FROM {table} WHERE id = 1")
        gone = cur.fetchone()[0]
        if conn.in_transaction:
            conn.rollback()
        conn.start_transaction()
        cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (2, "committed"))
        conn.commit()
        cur.execute(f"SELECT v FROM {table} WHERE id = 2")
        kept = tuple(text(v) for v in cur.fetchone())
        cur.close()
        ok = gone == 0 and kept == ("committed",)
        report("transaction", "ok" if ok else "fail", f"after rollback {gone} rows; after commit {kept}")

    def do_big_value():
        sql, want = big_value_query()
        cur = conn.cursor()
        cur.execute(sql)
        value = text(cur.fetchone()[0])
        cur.close()
        report_big_value(value, want)

    def do_disconnect():
        nonlocal conn
        conn.close()
        conn = None
        report("disconnect", "ok", "close() sent COM_QUIT")

    run_scenarios([
        ("connect", do_connect),
        ("tls", do_tls),
        ("query", do_query),
        ("prepared", do_prepared),
        ("transaction", do_transaction),
        ("big_value", do_big_value),
        ("disconnect", do_disconnect),
    ], lambda: conn is not None, expect_denied)


if __name__ == "__main__":
    main(suite, login)

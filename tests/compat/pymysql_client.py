"""PyMySQL (pure Python) through Switchyard, for tests/tests/compat.rs.

Its settings (COMPAT_* variables) and the JSON line it prints per scenario
are those of compat_common.py.
"""

import contextlib
import io

import pymysql

from compat_common import (
    CA, DB, E, HOST, PASSWORD, PORT, TLS, TLS_MODE, USER, big_value_query, main, report,
    report_big_value, run_scenarios,
)



def error_code(e):
    return e.args[0] if getattr(e, "args", None) and isinstance(e.args[0], int) else None


def connect(password=PASSWORD, tls=TLS_MODE, port=PORT):
    kwargs = dict(host=HOST, port=port, user=USER, password=password, database=DB or None)
    if tls == "required":
        # Any ssl_* option makes PyMySQL require TLS (it refuses a server
        # without it); ssl_verify_identity checks the name too.
        kwargs.update(ssl_ca=CA, ssl_verify_cert=True, ssl_verify_identity=True)
    elif tls == "disabled":
        # By default PyMySQL uses TLS when the server offers it.
        kwargs.update(ssl_disabled=True)
    return pymysql.connect(**kwargs)


def refused_without_tls():
    """Whether the TLS settings refuse a server without TLS; the error."""
    try:
        connect(tls="required", port=int(E["COMPAT_PLAIN_PORT"])).close()
        return False, "the TLS settings also logged in to a server without TLS"
    except pymysql.MySQLError as e:
        return True, f"the same settings refuse a server without TLS: {e}"


def expect_denied(scenario, **kwargs):
    try:
        c = connect(**kwargs)
        c.close()
        report(scenario, "fail", "login succeeded")
    except pymysql.MySQLError as e:
        code = error_code(e)
        report(scenario, "ok" if code == 1045 else "fail", str(e), code=code)


def login():
    """One login, for the caching_sha2_password cases; auth_path tells what
    the server answered the scramble with: "fast" (fast auth success),
    "full" (full authentication: the password inside TLS) or "full+rsa"
    (the password encrypted with the server's RSA key), from PyMySQL's
    own debug output."""
    from pymysql import _auth

    _auth.DEBUG = True
    trace = io.StringIO()
    try:
        with contextlib.redirect_stdout(trace):
            c = connect()
            with c.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchall()
            c.close()
        report("login", "ok", "logged in", auth_path=auth_path(trace.getvalue()))
    except pymysql.MySQLError as e:
        report("login", "fail", str(e), code=error_code(e), auth_path=auth_path(trace.getvalue()))


def auth_path(trace):
    if "succeeded by fast path" in trace:
        return "fast"
    if "Sending plain password via secure connection" in trace:
        return "full"
    if "Trying full auth" in trace:
        return "full+rsa"
    return "none"


def suite():
    table = f"`{DB}`.`{E['COMPAT_TABLE']}`"
    conn = None

    def do_connect():
        nonlocal conn
        conn = connect()
        report("connect", "ok", f"server {conn.get_server_info()}")

    def do_tls():
        if not TLS:
            report("tls", "na", "plaintext run")
            return
        cipher = conn._sock.cipher() if hasattr(conn._sock, "cipher") else None
        refused, why = refused_without_tls()
        ok = bool(cipher) and refused
        report("tls", "ok" if ok else "fail", f"socket: {cipher[1]} {cipher[0]}; {why}" if cipher else f"the socket is not TLS; {why}")

    def do_query():
        with conn.cursor() as cur:
            cur.execute("SELECT @@server_id, 1+1, DATABASE()")
            row = cur.fetchone()
        want = (int(E["COMPAT_SERVER_ID"]), 2, DB)
        report("query", "ok" if tuple(row) == want else "fail", f"{tuple(row)}")

    def do_prepared():
        # PyMySQL interpolates parameters client-side: there is no binary
        # protocol. The parameterised query is still checked.
        got = []
        with conn.cursor() as cur:
            for n, s in [(21, "héllo"), (50, "wörld")]:
                cur.execute("SELECT %s * 2, CONCAT('<', %s, '>')", (n, s))
                got.append(tuple(cur.fetchone()))
        want = [(42, "<héllo>"), (100, "<wörld>")]
        if got == want:
            report("prepared", "na", "client has no server-side prepared statements "
                   "(client-side interpolation checked: ok)")
        else:
            report("prepared", "fail", f"parameterised query gave {got}")

    def do_transaction():
        with conn.cursor() as cur:
            conn.begin()
            cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (1, "rolled back"))
            conn.rollback()
            cur.execute(f"SELECT COUNT(*) FROM {table} WHERE id = 1")
            gone = cur.fetchone()[0]
            conn.begin()
            cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (2, "committed"))
            conn.commit()
            cur.execute(f"SELECT v FROM {table} WHERE id = 2")
            kept = cur.fetchone()
        ok = gone == 0 and kept == ("committed",)
        report("transaction", "ok" if ok else "fail", f"after rollback {gone} rows; after commit {kept}")

    def do_big_value():
        sql, want = big_value_query()
        with conn.cursor() as cur:
            cur.execute(sql)
            value = cur.fetchone()[0]
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

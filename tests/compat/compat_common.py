"""What the Python client programs of tests/tests/compat.rs share: their
settings (COMPAT_* environment variables), the JSON line each scenario
prints ({"scenario": ..., "status": "ok" | "fail" | "na", "detail": ...}),
the order the scenarios run in, and the entry point."""

import json
import os
import sys
import traceback

E = os.environ
HOST, PORT = E["COMPAT_HOST"], int(E["COMPAT_PORT"])
USER, PASSWORD, DB = E["COMPAT_USER"], E["COMPAT_PASSWORD"], E["COMPAT_DB"]
# off: the client's defaults; required: TLS with the server's certificate
# verified against COMPAT_CA; disabled: TLS explicitly off.
TLS_MODE = E.get("COMPAT_TLS", "off")
TLS = TLS_MODE == "required"
CA = E.get("COMPAT_CA")


def report(scenario, status, detail="", **extra):
    print(json.dumps({"scenario": scenario, "status": status, "detail": detail, **extra}), flush=True)


def big_value_query():
    """The query of the >16 MiB scenario, and the value it must return."""
    size = int(E["COMPAT_BIG_UNITS"])
    return (f"SELECT CONCAT(REPEAT('0123456789abcdef', {size}), 'END')",
            "0123456789abcdef" * size + "END")


def report_big_value(value, want):
    ok = value == want
    report("big_value", "ok" if ok else "fail", f"{len(value)} bytes read" + ("" if ok else ", content differs"))


def run_scenarios(steps, connected, expect_denied):
    """Runs `steps` ((name, fn) in the suite's order; all but "connect"
    need `connected()`), reporting each failure, then the two refused
    logins."""
    for name, fn in steps:
        if not connected() and name != "connect":
            report(name, "fail", "no connection")
            continue
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported
            report(name, "fail", f"{type(e).__name__}: {e}")
            traceback.print_exc()
    expect_denied("bad_password", password=PASSWORD + "-wrong")
    if TLS:
        expect_denied("plaintext_refused", tls="disabled")
    else:
        report("plaintext_refused", "na", "plaintext run")


def main(suite, login):
    if E.get("COMPAT_ACTION", "suite") == "login":
        login()
    else:
        suite()
    sys.exit(0)

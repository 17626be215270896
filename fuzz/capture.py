#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/) from real
bytes: it starts a throwaway mariadbd on a free loopback port, puts a
recording TCP relay in front of it, runs real clients through the relay
(the mariadb CLI, and PyMySQL and MySQL Connector/Python when the venv of
scripts/compat-deps.sh is there, or a Python with both in $CAPTURE_PYTHON), and cuts what went by into seeds:
greetings, handshake responses, auth switch requests, OK and ERR packets,
COM_CHANGE_USER, query replies, client command streams (with LOAD DATA
LOCAL INFILE), KILL statements. The configuration seeds are the TOML
examples of the README and examples/; the RSA seeds are built from a
captured nonce (the key is made afresh by the target, so no captured
ciphertext could decrypt).

Run by hand when the protocol code changes: python3 fuzz/capture.py
(needs mariadb-server and mariadb-client: scripts/setup.sh installs them).
"""

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
os.environ["PATH"] += ":/usr/sbin:/usr/local/sbin"

CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_DEPRECATE_EOF = 1 << 24


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MariaDb:
    """A throwaway server of its own."""

    def __init__(self, tmp):
        self.dir = tmp
        self.port = free_port()
        self.sock = os.path.join(tmp, "mysqld.sock")
        root = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={tmp}/data",
             "--auth-root-authentication-method=normal", "--skip-test-db",
             "--skip-name-resolve"] + root,
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={tmp}/data",
             f"--socket={self.sock}", f"--pid-file={tmp}/mysqld.pid",
             f"--log-error={tmp}/error.log", f"--port={self.port}",
             "--bind-address=127.0.0.1", "--skip-name-resolve", "--local-infile=1",
             "--innodb-buffer-pool-size=32M", "--performance-schema=OFF",
             "--character-set-server=utf8mb4"] + root,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while subprocess.run(self.cli("SELECT 1"), capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.time() > deadline:
                sys.exit("mariadbd did not start:\n" + open(f"{tmp}/error.log").read())
            time.sleep(0.2)

    def cli(self, sql):
        return ["mariadb", "--no-defaults", f"--socket={self.sock}", "-uroot", "-e", sql]

    def sql(self, sql):
        subprocess.run(self.cli(sql), check=True)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Relay:
    """Forwards loopback connections to the server and records each
    direction of each connection, labelled with the client that made it."""

    def __init__(self, backend_port):
        self.backend_port = backend_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.label = None
        self.conns = []  # (label, client bytes, server bytes)
        self.threads = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.backend_port))
            rec = (self.label, bytearray(), bytearray())
            self.conns.append(rec)
            for src, dst, buf in ((client, server, rec[1]), (server, client, rec[2])):
                t = threading.Thread(target=self.pump, args=(src, dst, buf), daemon=True)
                t.start()
                self.threads.append(t)

    @staticmethod
    def pump(src, dst, buf):
        try:
            while data := src.recv(65536):
                buf += data
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self, label, argv, stdin=None):
        self.label = label
        subprocess.run(argv, input=stdin, capture_output=True, timeout=60)
        deadline = time.time() + 10
        for t in self.threads:
            t.join(max(0, deadline - time.time()))

    def close(self):
        self.listener.close()


def packets(stream):
    """(seq, payload) of a framed stream."""
    out = []
    i = 0
    while len(stream) - i >= 4:
        n = int.from_bytes(stream[i:i + 3], "little")
        out.append((stream[i + 3], bytes(stream[i + 4:i + 4 + n])))
        i += 4 + n
    return out


def frame(seq, payload):
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


class Seeds:
    def __init__(self):
        self.files = {}  # target -> {content hash: (name, bytes)}

    def add(self, target, name, data, limit=4096):
        data = bytes(data[:limit])
        d = self.files.setdefault(target, {})
        key = hashlib.sha1(data).hexdigest()
        if key not in d and len(d) < 40:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
            names = {n for n, _ in d.values()}
            base, i = name, 1
            while name in names:
                i += 1
                name = f"{base}-{i}"
            d[key] = (name, data)

    def write(self):
        for target, d in sorted(self.files.items()):
            path = os.path.join(CORPUS, target)
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path)
            for name, data in d.values():
                with open(os.path.join(path, name), "wb") as f:
                    f.write(data)
            print(f"{target}: {len(d)} seeds")


def cut(seeds, label, client, server):
    """Seeds from one recorded connection."""
    s_pk, c_pk = packets(server), packets(client)
    if not s_pk or not c_pk:
        return
    greeting = s_pk[0][1]
    seeds.add("greeting", label, greeting)
    resp = c_pk[0][1]
    seeds.add("handshake_response", label, resp)
    caps = resp[:4]
    server_caps = int.from_bytes(greeting[greeting.index(0, 1) + 14:][:2], "little") \
        | int.from_bytes(greeting[greeting.index(0, 1) + 19:][:2], "little") << 16
    deprecate_eof = int.from_bytes(caps, "little") & server_caps & CLIENT_DEPRECATE_EOF
    # The login ends with the first OK or ERR from the server.
    login_end = next((i for i, (_, p) in enumerate(s_pk[1:], 1) if p[:1] in (b"\0", b"\xff")),
                     len(s_pk) - 1)
    for _, p in s_pk[1:login_end]:
        if p[:1] == b"\xfe":
            seeds.add("auth_switch", f"{label}-{p[1:p.index(0)].decode() if 0 in p else 'x'}", p)
    for _, p in s_pk[1:]:
        if p[:1] in (b"\0", b"\xff") or (p[:1] == b"\xfe" and len(p) < 9):
            seeds.add("ok_err", f"{label}-{p[0]:02x}", p)
    # Commands: from the first client packet numbered 0.
    first_cmd = next((i for i, (seq, _) in enumerate(c_pk) if seq == 0), None)
    if first_cmd is not None:
        start = sum(4 + len(p) for _, p in c_pk[:first_cmd])
        commands = client[start:]
        seeds.add("command_scanner", label, b"\0" + commands)
        # Cuts around the first few packet headers.
        seeds.add("command_scanner", label + "-cut",
                  bytes([3, 1, 2, 2, 0xfe, 3, 5]) + commands)
        for _, p in c_pk[first_cmd:]:
            if p[:1] == b"\x03" and len(p) <= 256:
                seeds.add("kill", f"{label}-query", p)
            if p[:1] == b"\x11":
                seeds.add("change_user", label, caps + p)
    seeds.add("packet_codec", label + "-client", b"\x00\x40\x00" + client)
    seeds.add("packet_codec", label + "-server", b"\xff\xff\xff" + server)
    # Replies: each starts with sequence id 1.
    reply = []
    for seq, p in s_pk[login_end + 1:] + [(1, None)]:
        if seq == 1 and reply:
            seeds.add("resultset", f"{label}-reply",
                      bytes([1 if deprecate_eof else 0]) + b"".join(frame(s, q) for s, q in reply))
            reply = []
        if p is not None:
            reply.append((seq, p))
    return greeting


def config_seeds(seeds):
    for path in ("README.md", "examples/switchyard.toml"):
        text = open(os.path.join(ROOT, path)).read()
        blocks = re.findall(r"```toml\n(.*?)```", text, re.S) if path.endswith(".md") else [text]
        for i, block in enumerate(blocks):
            seeds.add("config", f"{os.path.basename(path)}-{i}", block.encode(), limit=1 << 16)


def rsa_seeds(seeds, nonce):
    for mode, body in ((1, b"mysqlpassword"), (3, b"secret"), (1, b""), (0, bytes(range(64)))):
        seeds.add("rsa_decrypt", f"mode{mode}-{len(body)}", bytes([mode, len(nonce)]) + nonce + body)


SQL = """SELECT 1;
SELECT @@version, NULL, 'x', 1.5, REPEAT('y', 300);
SELECT * FROM t ORDER BY id;
INSERT INTO t (v) VALUES ('a'), ('b');
UPDATE t SET v = 'c' WHERE id = 1;
LOAD DATA LOCAL INFILE '{infile}' INTO TABLE t (v);
SELECT COUNT(*) FROM t;
SHOW VARIABLES LIKE 'read_only';
SELECT 'KILL 5';
KILL QUERY 1073741825;
kill connection 99999;
KILL HARD QUERY 7;
KILL QUERY ID 5;
SELECT nosuchcolumn FROM t;
"""

PY_CLIENTS = r"""
import sys, pymysql, mysql.connector
port = int(sys.argv[1])
c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="apppw", database="appdb")
cur = c.cursor(); cur.execute("SELECT id, v FROM t LIMIT 3"); cur.fetchall(); c.ping(); c.close()
c = mysql.connector.connect(host="127.0.0.1", port=port, user="app", password="apppw",
                            database="appdb", use_pure=True, ssl_disabled=True)
cur = c.cursor(); cur.execute("SELECT 2"); cur.fetchall()
c.cmd_change_user(username="other", password="otherpw", database="appdb")
cur = c.cursor(); cur.execute("SELECT CURRENT_USER()"); cur.fetchall()
c.cmd_reset_connection(); c.close()
"""


def main():
    tmp = tempfile.mkdtemp(prefix="switchyard-capture-")
    db = MariaDb(tmp)
    relay = Relay(db.port)
    try:
        db.sql("CREATE DATABASE appdb; CREATE TABLE appdb.t (id INT AUTO_INCREMENT PRIMARY KEY, v TEXT);"
               "INSERT INTO appdb.t (v) VALUES ('one'), (NULL);"
               "CREATE USER app@'%' IDENTIFIED BY 'apppw'; GRANT ALL ON appdb.* TO app@'%';"
               "CREATE USER other@'%' IDENTIFIED BY 'otherpw'; GRANT ALL ON appdb.* TO other@'%';"
               "INSTALL SONAME 'auth_ed25519';"
               "CREATE USER ed@'%' IDENTIFIED VIA ed25519 USING PASSWORD('edpw');")
        infile = os.path.join(tmp, "rows.txt")
        with open(infile, "w") as f:
            f.write("".join(f"row {i}\n" for i in range(200)))
        cli = ["mariadb", "--no-defaults", "--protocol=TCP", "-h127.0.0.1", f"-P{relay.port}",
               "--ssl=0"]
        relay.run("cli", cli + ["-uapp", "-papppw", "--local-infile=1", "--force", "appdb"],
                  stdin=SQL.format(infile=infile).encode())
        relay.run("cli-denied", cli + ["-uapp", "-pwrong", "-e", "SELECT 1"])
        relay.run("cli-ed25519", cli + ["-ued", "-pedpw", "-e", "SELECT 3"])
        relay.run("cli-switch", cli + ["--default-auth=client_ed25519", "-uapp", "-papppw",
                                       "-e", "SELECT 4"])
        relay.run("cli-nodb", cli + ["-uother", "-potherpw", "-e", "SELECT USER()"])
        py = os.environ.get("CAPTURE_PYTHON") or os.path.join(ROOT, "target/pyvenv/bin/python")
        py = py if os.path.exists(py) else None
        if py:
            relay.run("python", [py, "-c", PY_CLIENTS, str(relay.port)])
        else:
            print("no target/pyvenv (scripts/compat-deps.sh makes it): Python clients skipped")
    finally:
        relay.close()
        db.stop()
    seeds = Seeds()
    nonce = None
    for label, client, server in relay.conns:
        g = cut(seeds, label or "client", client, server)
        if g and nonce is None:
            nonce = g[g.index(0, 1) + 5:][:8] + g[g.index(0, 1) + 32:][:12]
    config_seeds(seeds)
    rsa_seeds(seeds, nonce or b"0123456789abcdefghij")
    seeds.write()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Static checks of deploy/Containerfile (with dockerfile-parse).

Usage: python3 containerfile.py deploy/Containerfile

- multi-stage: a builder on a Debian bookworm Rust image that adds the
  wasm32-wasip2 target and builds `-p switchyard` and, for wasm32-wasip2,
  `-p default-policy`;
- the final stage runs nothing (no RUN: the runtime image has no shell),
  sets a non-root USER, has ENTRYPOINT and CMD in exec (JSON) form with
  the binary as the entrypoint, copies the binary and the default policy
  from the builder to the documented paths, and exposes 6033 and 9033;
- the ignore file beside it keeps target directories and .git out of the
  build context.
"""

import json
import pathlib
import re
import sys

from dockerfile_parse import DockerfileParser

errors = []


def fail(msg):
    errors.append(msg)


def main(path):
    # A path not named Dockerfile is taken for a directory: pass the file.
    with open(path, "rb") as f:
        dfp = DockerfileParser(fileobj=f)
        structure = dfp.structure
    stages = []
    for ins in structure:
        if ins["instruction"] == "FROM":
            stages.append({"from": ins["value"], "ins": []})
        elif stages:
            stages[-1]["ins"].append(ins)
    if len(stages) < 2:
        fail(f"{path}: not multi-stage ({len(stages)} FROM)")
        return report()
    builder, final = stages[0], stages[-1]
    m = re.match(r"(\S+)\s+AS\s+(\S+)", builder["from"], re.I)
    if not m or "rust" not in m.group(1) or "bookworm" not in m.group(1):
        fail(f"{path}: the first stage is not `FROM <rust ...-bookworm> AS <name>`: {builder['from']}")
        return report()
    builder_name = m.group(2)
    runs = " ".join(i["value"] for i in builder["ins"] if i["instruction"] == "RUN")
    runs = re.sub(r"[\[\]\",]", " ", runs)
    for needle, what in ((r"rustup\s+target\s+add\s+wasm32-wasip2", "rustup target add wasm32-wasip2"),
                         (r"cargo build --release[^&]*-p switchyard\b", "cargo build --release -p switchyard"),
                         (r"cargo build --release[^&]*--target wasm32-wasip2[^&]*-p default-policy",
                          "cargo build --release --target wasm32-wasip2 -p default-policy")):
        if not re.search(needle, runs):
            fail(f"{path}: the builder does not run `{what}`")

    by = {}
    for i in final["ins"]:
        by.setdefault(i["instruction"], []).append(i)
    if "RUN" in by:
        fail(f"{path}: the final stage has RUN at line {by['RUN'][0]['startline'] + 1} (no shell in the runtime image)")
    if "ADD" in by:
        fail(f"{path}: the final stage uses ADD; COPY --from the builder")
    user = by.get("USER", [{}])[-1].get("value", "")
    if not user or user.split(":")[0] in ("0", "root"):
        fail(f"{path}: the final stage sets no non-root USER ({user or 'none'})")
    for kind in ("ENTRYPOINT", "CMD", "HEALTHCHECK"):
        for i in by.get(kind, []):
            value = i["value"]
            if kind == "HEALTHCHECK":
                value = re.sub(r"^(--\S+\s+)*CMD\s+", "", value)
            try:
                parsed = json.loads(value)
                if not isinstance(parsed, list):
                    raise ValueError
            except ValueError:
                fail(f"{path}: {kind} at line {i['startline'] + 1} is in shell form")
    def exec_form(kind):
        try:
            value = json.loads(by[kind][-1]["value"])
            return value if isinstance(value, list) else None
        except (KeyError, ValueError):
            return None

    for kind in ("ENTRYPOINT", "CMD"):
        if kind not in by:
            fail(f"{path}: the final stage has no {kind}")
    if exec_form("ENTRYPOINT") != ["/usr/local/bin/switchyard"]:
        fail(f"{path}: ENTRYPOINT is not [\"/usr/local/bin/switchyard\"]")
    if (exec_form("CMD") or [])[:2] != ["run", "--config"]:
        fail(f"{path}: CMD is not [\"run\", \"--config\", ...]")
    copies = [i["value"].split() for i in by.get("COPY", [])]
    for dest in ("/usr/local/bin/switchyard", "/usr/local/lib/switchyard/default_policy.wasm"):
        if not any(f"--from={builder_name}" in c and c[-1] == dest for c in copies):
            fail(f"{path}: the final stage does not COPY --from={builder_name} to {dest}")
    exposed = " ".join(i["value"] for i in by.get("EXPOSE", [])).split()
    for port in ("6033", "9033"):
        if port not in [p.split("/")[0] for p in exposed]:
            fail(f"{path}: port {port} is not exposed")

    ignore = pathlib.Path(path + ".dockerignore")
    if not ignore.exists():
        fail(f"{ignore}: missing (the context is the repository root: target/ would be sent)")
    else:
        lines = [l.strip() for l in ignore.read_text().splitlines() if l.strip() and not l.startswith("#")]
        for must in ("**/target", ".git"):
            if must not in lines:
                fail(f"{ignore}: does not exclude {must}")
    print(f"  {path}: {len(stages)} stages; final FROM {final['from']}, USER {user}")
    return report()


def report():
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

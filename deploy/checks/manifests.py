"""Invariants of the rendered Kubernetes manifests that a schema cannot see.

Usage: python3 manifests.py RENDERED.yaml...

For every Switchyard Deployment in each file (with the Secret, ConfigMaps,
Services and PodDisruptionBudget rendered beside it):

- probes: startup and liveness on GET /live, readiness on GET /ready, all on
  the admin port; the admin endpoint listens off loopback with a token file
  that a mounted Secret provides;
- preStop runs `switchyard drain` (exec form: the image has no shell) with
  that token file, and terminationGracePeriodSeconds covers its --wait-ms,
  the configuration's shutdown_timeout_ms and a margin of 5 s;
- the configuration and the policy come from ConfigMap volumes, the
  files the configuration reads secrets from (users_file,
  password_sha1_file, [fleet] password_file) and the admin token from
  Secret volumes, all mounted as directories (no subPath anywhere: a
  subPath mount never sees an update), and the files the configuration
  names are in them; a configuration in a ConfigMap holds no secret
  itself (no password hash, SHA1(password), token or store password);
- the compile cache is on a writable emptyDir ($XDG_CACHE_HOME) or off;
- every pod of the render (Switchyard's and the fleet store's) runs as
  non-root with a read-only root file system, no privilege escalation,
  ALL capabilities dropped, seccomp RuntimeDefault, and resource requests
  and limits;
- the Service and the PodDisruptionBudget select Switchyard's pods, the
  Service exposes 6033 and 9033 through named container ports;
- a `[fleet] store = "redis://HOST:PORT"` names a Service of the render.
"""

import base64
import ipaddress
import posixpath
import sys
import tomllib

import yaml

MARGIN_S = 5
DEFAULT_SHUTDOWN_MS = 30000
IMAGE_POLICY = "/usr/local/lib/switchyard/default_policy.wasm"

errors = []


def fail(where, msg):
    errors.append(f"{where}: {msg}")


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_pod_security(where, pod):
    psc = pod.get("securityContext", {})
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        w = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            fail(w, "runAsNonRoot is not set")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        if uid == 0:
            fail(w, "runAsUser is 0")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(w, "readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(w, "allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            fail(w, "privileged")
        if "ALL" not in (sc.get("capabilities", {}).get("drop") or []):
            fail(w, "capabilities do not drop ALL")
        if sc.get("capabilities", {}).get("add"):
            fail(w, "adds capabilities")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
        if seccomp.get("type") != "RuntimeDefault":
            fail(w, "seccompProfile is not RuntimeDefault")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(kind, {}):
                    fail(w, f"no {kind}.{r}")
        for m in c.get("volumeMounts", []):
            if "subPath" in m or "subPathExpr" in m:
                fail(w, f"mount {m['mountPath']} uses subPath (never updated)")


def mounted_file(pod, container, path, objects):
    """The (volume, key) that provides file `path` in `container`, if any."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if posixpath.dirname(path) != mp:
            continue
        name = posixpath.basename(path)
        v = volumes.get(m["name"], {})
        src = v.get("secret") or v.get("configMap")
        if src is None:
            return v, None
        kind = "Secret" if "secret" in v else "ConfigMap"
        obj_name = src.get("secretName") or src.get("name")
        items = src.get("items")
        if items:
            key = next((i["key"] for i in items if i["path"] == name), None)
        else:
            key = name
        obj = objects.get((kind, obj_name))
        if obj is None:
            # Created outside the render (the admin token): trust the key.
            return v, key
        keys = set(obj.get("data", {})) | set(obj.get("binaryData", {})) | set(obj.get("stringData", {}))
        return v, key if key in keys else None
    return None, None


def users_of(config):
    users = config.get("users", [])
    return users.get("accounts", []) if isinstance(users, dict) else users


def inline_secrets(config):
    """What the configuration holds that belongs in a Secret."""
    found = []
    if any(u.get("password_hash") for u in users_of(config)):
        found.append("password hashes ([[users]] password_hash)")
    if "password_sha1" in config.get("monitor", {}):
        found.append("[monitor] password_sha1")
    users = config.get("users")
    if isinstance(users, dict) and "password_sha1" in users:
        found.append("[users] password_sha1")
    if "token" in config.get("admin", {}):
        found.append("[admin] token")
    if "@" in config.get("fleet", {}).get("store", ""):
        found.append("a password in [fleet] store")
    return found


def secret_files(config):
    """The files the configuration reads secrets from, by key."""
    users = config.get("users")
    found = [("users_file", config.get("users_file")),
             ("[monitor] password_sha1_file", config.get("monitor", {}).get("password_sha1_file")),
             ("[users] password_sha1_file", users.get("password_sha1_file") if isinstance(users, dict) else None),
             ("[fleet] password_file", config.get("fleet", {}).get("password_file"))]
    return [(w, p) for w, p in found if p]


def is_loopback(addr):
    host = addr.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_switchyard(where, dep, objects, services, pdbs):
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    if not labels_match(dep["spec"]["selector"].get("matchLabels"), labels):
        fail(where, "selector does not match the pod labels")
    c = next((c for c in pod["containers"] if c["name"] == "switchyard"), None)
    if c is None:
        fail(where, "no container named switchyard")
        return
    args = c.get("args", [])
    if "--config" not in args:
        fail(where, "args name no --config")
        return
    config_path = args[args.index("--config") + 1]
    vol, key = mounted_file(pod, c, config_path, objects)
    if vol is None or key is None:
        fail(where, f"--config {config_path} is not a key of a mounted Secret/ConfigMap")
        return
    in_secret = "secret" in vol
    obj = objects[("Secret", vol["secret"]["secretName"]) if in_secret
                  else ("ConfigMap", vol["configMap"]["name"])]
    text = obj.get("stringData", {}).get(key)
    if text is None and in_secret:
        text = base64.b64decode(obj["data"][key]).decode()
    elif text is None:
        text = obj["data"][key]
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(where, f"switchyard.toml does not parse: {e}")
        return
    if not in_secret:
        for what in inline_secrets(config):
            fail(where, f"the configuration is a ConfigMap but holds {what}: move it to a Secret file")
    for what, path in secret_files(config):
        v, k = mounted_file(pod, c, path, objects)
        if v is None or k is None or "secret" not in v:
            fail(where, f"{what} {path} is not a key of a mounted Secret")

    if is_loopback(config.get("listen", "127.0.0.1:6033")):
        fail(where, "listen is a loopback address: unreachable through the Service")
    admin = config.get("admin")
    if admin is None:
        fail(where, "no [admin]: the probes need the admin endpoint")
        return
    if is_loopback(admin.get("listen", "127.0.0.1:9033")):
        fail(where, "[admin] listen is a loopback address: the kubelet cannot probe it")
    token_file = admin.get("token_file")
    if not token_file:
        fail(where, "[admin] token_file is not set (required off loopback)")
    else:
        v, k = mounted_file(pod, c, token_file, objects)
        if v is None or k is None or "secret" not in v:
            fail(where, f"[admin] token_file {token_file} is not a key of a mounted Secret")

    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    admin_port = int(admin.get("listen", "127.0.0.1:9033").rsplit(":", 1)[1])
    listen_port = int(config.get("listen", "127.0.0.1:6033").rsplit(":", 1)[1])
    if ports.get("admin") != admin_port:
        fail(where, f"containerPort admin is not {admin_port}")
    if ports.get("mysql") != listen_port:
        fail(where, f"containerPort mysql is not {listen_port}")
    for probe, path in (("startupProbe", "/live"), ("livenessProbe", "/live"), ("readinessProbe", "/ready")):
        http = c.get(probe, {}).get("httpGet", {})
        if http.get("path") != path or http.get("port") not in ("admin", admin_port):
            fail(where, f"{probe} is not GET {path} on the admin port")

    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if pre[:2] != ["/usr/local/bin/switchyard", "drain"]:
        fail(where, "preStop is not the exec form of `/usr/local/bin/switchyard drain`")
    wait_ms = 0
    if "--wait-ms" in pre:
        wait_ms = int(pre[pre.index("--wait-ms") + 1])
    else:
        fail(where, "preStop drain has no --wait-ms")
    if token_file and ("--token-file" not in pre or pre[pre.index("--token-file") + 1] != token_file):
        fail(where, "preStop drain does not use [admin] token_file")
    shutdown_ms = config.get("shutdown_timeout_ms", DEFAULT_SHUTDOWN_MS)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    need = wait_ms / 1000 + shutdown_ms / 1000 + MARGIN_S
    if grace < need:
        fail(where, f"terminationGracePeriodSeconds {grace} < preStop {wait_ms} ms"
                    f" + shutdown_timeout_ms {shutdown_ms} + {MARGIN_S} s margin = {need:g} s")

    module = config.get("policy", {}).get("module")
    policies = [("[policy]", config.get("policy", {}))] + [
        (f"[policies.{n}]", p) for n, p in config.get("policies", {}).items()]
    for name, p in policies:
        module = p.get("module")
        if module == IMAGE_POLICY:
            continue
        if not module or not module.startswith("/"):
            fail(where, f"{name} module {module!r} is not an absolute path")
            continue
        v, k = mounted_file(pod, c, module, objects)
        if v is None or k is None:
            fail(where, f"{name} module {module} is neither the image's policy nor a key of a mounted ConfigMap")
        if p.get("cache_dir") not in (None, ""):
            fail(where, f"{name} cache_dir is set: check that it is writable")

    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    uses_default_cache = any(p.get("cache_dir") is None for _, p in policies)
    if uses_default_cache:
        cache = env.get("XDG_CACHE_HOME")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"].rstrip("/") == (cache or "").rstrip("/")), None)
        if cache is None or mount is None or "emptyDir" not in volumes.get(mount["name"], {}) or mount.get("readOnly"):
            fail(where, "XDG_CACHE_HOME is not a writable emptyDir mount (the root file system is read-only); or set cache_dir = \"\"")

    fleet = config.get("fleet")
    if fleet:
        store = fleet.get("store", "")
        if store.startswith("redis://"):
            hostport = store[len("redis://"):].split("/")[0].rsplit("@", 1)[-1]
            host, _, port = hostport.partition(":")
            svc = services.get(host.split(".")[0])
            if svc is None or int(port or 6379) not in [p["port"] for p in svc["spec"]["ports"]]:
                fail(where, f"[fleet] store {store} names no Service of the render")

    matched = [s for s in services.values() if labels_match(s["spec"].get("selector"), labels)]
    if not matched:
        fail(where, "no Service selects the pods")
    for s in matched:
        for p in s["spec"]["ports"]:
            t = p.get("targetPort", p["port"])
            if isinstance(t, str) and t not in ports:
                fail(where, f"Service {s['metadata']['name']} targets unknown port {t}")
        if sorted(p["port"] for p in s["spec"]["ports"]) != sorted({listen_port, admin_port}):
            fail(where, f"Service {s['metadata']['name']} does not expose {listen_port} and {admin_port}")
    if not any(labels_match(p["spec"]["selector"].get("matchLabels"), labels) for p in pdbs):
        fail(where, "no PodDisruptionBudget selects the pods")
    return True


def main(paths):
    for path in paths:
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
        objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
        pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
        found = 0
        for d in docs:
            if d["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
                continue
            where = f"{path}: {d['kind']}/{d['metadata']['name']}"
            pod = d["spec"]["template"]["spec"]
            check_pod_security(where, pod)
            if any(c["name"] == "switchyard" for c in pod["containers"]):
                found += check_switchyard(where, d, objects, services, pdbs) or 0
        if not found:
            fail(path, "no Switchyard Deployment")
        print(f"  {path}: {len(docs)} objects, {found} Switchyard Deployment(s) checked")
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

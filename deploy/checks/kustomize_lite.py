"""A small stand-in for `kustomize build`, used by check.sh only where
neither `kubectl kustomize` nor `kustomize` is installed.

Usage: python3 kustomize_lite.py DIR > rendered.yaml

It knows what deploy/kubernetes uses and refuses anything else:
resources (files and directories), components, namespace, images,
replicas, secretGenerator and configMapGenerator from files (behavior
create or replace, options.disableNameSuffixHash: true, options.labels) and
strategic-merge patches (containers, volumes, env and ports merged by
name, volumeMounts by mountPath). check.sh compares it with the real
kustomize where that is installed.
"""

import base64
import copy
import os
import sys

import yaml

KNOWN = {"apiVersion", "kind", "resources", "components", "namespace", "images", "replicas",
         "secretGenerator", "configMapGenerator", "patches"}
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "ports": "containerPort", "volumeMounts": "mountPath"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def die(msg):
    sys.exit(f"kustomize_lite: {msg}")


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def generate(gen, base, kind):
    options = gen.get("options", {})
    if not options.get("disableNameSuffixHash"):
        die(f"{gen['name']}: only generators with disableNameSuffixHash: true are supported")
    unknown = set(gen) - {"name", "files", "behavior", "options"}
    if unknown:
        die(f"{gen['name']}: unsupported generator keys {sorted(unknown)}")
    obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
    if options.get("labels"):
        obj["metadata"]["labels"] = dict(options["labels"])
    for spec in gen.get("files", []):
        key, _, rel = spec.partition("=") if "=" in spec else (os.path.basename(spec), "", spec)
        data = open(os.path.join(base, rel), "rb").read()
        if kind == "Secret":
            obj.setdefault("data", {})[key] = base64.b64encode(data).decode()
        else:
            try:
                obj.setdefault("data", {})[key] = data.decode("utf-8")
            except UnicodeDecodeError:
                obj.setdefault("binaryData", {})[key] = base64.b64encode(data).decode()
    if kind == "Secret":
        obj["type"] = "Opaque"
    return obj, gen.get("behavior", "create")


def merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if k in MERGE_KEYS and isinstance(v, list) and isinstance(base.get(k), list):
                key = MERGE_KEYS[k]
                items = [copy.deepcopy(i) for i in base[k]]
                added = []
                for p in v:
                    i = next((n for n, b in enumerate(items) if b.get(key) == p.get(key)), None)
                    if i is None:
                        added.append(copy.deepcopy(p))
                    else:
                        items[i] = merge(items[i], p)
                # As kustomize does: items only the patch has come first.
                out[k] = added + items
            elif k in out:
                out[k] = merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    return copy.deepcopy(patch)


def build(path, component=False):
    k = yaml.safe_load(open(os.path.join(path, "kustomization.yaml")))
    unknown = set(k) - KNOWN
    if unknown:
        die(f"{path}: unsupported kustomization keys {sorted(unknown)}")
    if (k.get("kind") == "Component") != component:
        die(f"{path}: kind {k.get('kind')} where a {'Component' if component else 'Kustomization'} belongs")
    objs = []
    for r in k.get("resources", []):
        p = os.path.join(path, r)
        objs += build(p) if os.path.isdir(p) else load_yaml_docs(p)
    for c in k.get("components", []):
        objs = apply(objs, os.path.join(path, c), yaml.safe_load(
            open(os.path.join(path, c, "kustomization.yaml"))), component=True)
    return apply(objs, path, k)


def apply(objs, path, k, component=False):
    if component:
        objs = objs + [o for r in k.get("resources", []) for o in load_yaml_docs(os.path.join(path, r))]
    for kind, key in (("Secret", "secretGenerator"), ("ConfigMap", "configMapGenerator")):
        for gen in k.get(key, []):
            obj, behavior = generate(gen, path, kind)
            existing = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == obj["metadata"]["name"]]
            if behavior == "replace":
                if not existing:
                    die(f"{obj['metadata']['name']}: replace of a missing {kind}")
                labels = existing[0]["metadata"].get("labels")
                if labels and "labels" not in obj["metadata"]:
                    obj["metadata"]["labels"] = labels
                objs[objs.index(existing[0])] = obj
            elif behavior == "create":
                if existing:
                    die(f"{obj['metadata']['name']}: {kind} exists")
                objs.append(obj)
            else:
                die(f"{obj['metadata']['name']}: unsupported behavior {behavior}")
    for p in k.get("patches", []):
        if set(p) != {"path"}:
            die(f"{path}: only `patches: - path:` (strategic merge, target from the patch) is supported")
        patch = yaml.safe_load(open(os.path.join(path, p["path"])))
        target = [o for o in objs if o["kind"] == patch["kind"] and o["metadata"]["name"] == patch["metadata"]["name"]]
        if len(target) != 1:
            die(f"{p['path']}: matches {len(target)} objects")
        objs[objs.index(target[0])] = merge(target[0], patch)
    for r in k.get("replicas", []):
        for o in objs:
            if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"]["name"] == r["name"]:
                o["spec"]["replicas"] = r["count"]
    for img in k.get("images", []):
        for o in objs:
            pod = o.get("spec", {}).get("template", {}).get("spec", {})
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                name, _, tag = c["image"].partition(":")
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"
    if k.get("namespace"):
        for o in objs:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = k["namespace"]
    return objs


def normalized(path):
    """The objects of a rendered file by (kind, namespace, name), with
    Secret and ConfigMap data decoded, for comparing two renderers."""
    out = {}
    for d in load_yaml_docs(path):
        for field in ("data", "binaryData"):
            if field in d and (d["kind"] == "Secret" or field == "binaryData"):
                d[field] = {k: base64.b64decode(v) for k, v in d[field].items()}
        out[(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])] = d
    return out


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        a, b = normalized(sys.argv[2]), normalized(sys.argv[3])
        diff = sorted(str(k) for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            die(f"{sys.argv[2]} and {sys.argv[3]} differ in {', '.join(diff)}")
    else:
        yaml.safe_dump_all(build(sys.argv[1]), sys.stdout, sort_keys=False)

#!/usr/bin/env python3
"""Import circles between the modules (files) of a Rust source tree.

usage: scripts/import-circles.py [SRC_DIR]   (default host/src)
Reads every `crate::...` and `super::...` path outside `#[cfg(test)] mod
tests`, maps it to the file of the longest module prefix, and prints each
group of files that import each other (a parent module and its own child
excluded: a parent declares its children). Exit 1 if there is any.
Text, not a parser: a path in a string or comment counts too.
"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "host/src"
files = {}
for d, _, names in os.walk(src):
    for n in names:
        if n.endswith(".rs"):
            p = os.path.join(d, n)
            files[os.path.relpath(p, src)] = open(p, encoding="utf-8").read()


def module(rel):
    parts = rel[:-3].split(os.sep)
    return tuple(parts[:-1] if parts[-1] in ("mod", "lib", "main") else parts)


by_module = {module(r): r for r in files}


def file_of(path):
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in by_module:
            return by_module[tuple(path[:n])]
    return None


edges = {r: set() for r in files}
for rel, text in files.items():
    here = module(rel)
    text = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", text, flags=re.S)
    # `use a::{b, c::d}` -> a::b, a::c::d; then every path.
    text = re.sub(
        r"((?:crate|super)(?:::\w+)*)::\{([^{}]*)\}",
        lambda m: " ".join(f"{m.group(1)}::{i.strip()}" for i in m.group(2).split(",") if i.strip()),
        text,
    )
    for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", text):
        segs = list(m.group(2).strip(":").split("::"))
        path = segs if m.group(1) == "crate" else list(here[:-1]) + segs
        target = file_of(path)
        if target and target != rel:
            a, b = module(rel), module(target)
            if a != b[: len(a)] and b != a[: len(b)]:  # not parent/descendant
                edges[rel].add(target)

# Strongly connected components (Tarjan).
index, low, stack, on, groups = {}, {}, [], set(), []


def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        group = []
        while True:
            w = stack.pop()
            on.discard(w)
            group.append(w)
            if w == v:
                break
        if len(group) > 1:
            groups.append(sorted(group))


sys.setrecursionlimit(10000)
for v in sorted(files):
    if v not in index:
        visit(v)
for g in groups:
    print("circle: " + ", ".join(g))
print(f"import circles in {src}: {len(groups)}")
sys.exit(1 if groups else 0)

"""Metric names of the alert rules and the Grafana dashboard against the
ones Switchyard exports.

Usage: python3 metrics.py SRC_DIR RULES.yaml DASHBOARD.json EXPRS_OUT.yaml

- Every metric an expression reads must be one Switchyard renders (a
  `switchyard_...` string in SRC_DIR's Rust files; a histogram's `_bucket`,
  `_sum` and `_count` count as its name) or Prometheus' own `up`. Names in
  PENDING are allowed with a warning while the source lacks them.
- Every literal label value matched on a `switchyard_` metric for a
  label with a fixed set of values (outcome, result, ...) must appear as a
  string in the source.
- The dashboard: valid JSON, unique panel ids, panels within the 24-column
  grid and not overlapping, every panel and target on the `${DS_PROMETHEUS}`
  data source, a DS_PROMETHEUS data source variable and job and instance
  variables that every Switchyard selector uses.
- EXPRS_OUT gets a rules file with every dashboard expression as a
  recording rule (Grafana's variables replaced), for `promtool check rules`
  to parse them.
"""

import json
import pathlib
import re
import sys

import yaml

# Names a rule or panel may use before host/src renders them (each with a
# warning); empty once the source has caught up.
PENDING = set()
PROMETHEUS_OWN = {"up"}
FIXED_LABELS = {"outcome", "result", "direction", "target", "reason", "how", "path"}

FUNCTIONS_AND_KEYWORDS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "stdvar",
    "count_values", "group", "rate", "irate", "increase", "delta", "idelta", "deriv",
    "histogram_quantile", "vector", "scalar", "abs", "absent", "absent_over_time", "ceil",
    "floor", "round", "clamp", "clamp_min", "clamp_max", "label_replace", "label_join",
    "time", "timestamp", "sort", "sort_desc", "changes", "resets", "avg_over_time",
    "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan", "humanize",
}

errors = []
warnings = []


def exported_names(src):
    names = set()
    for f in pathlib.Path(src).rglob("*.rs"):
        names.update(re.findall(r"switchyard_[a-z0-9_]+", f.read_text(errors="replace")))
    return names


def source_strings(src):
    text = []
    for f in pathlib.Path(src).rglob("*.rs"):
        text.append(f.read_text(errors="replace"))
    return "\n".join(text)


def metrics_of(expr):
    """(metric, {label: value}) pairs an expression selects."""
    s = re.sub(r"\[[^\]]*\]", " ", expr)                    # range durations
    out = []
    # selectors with braces, then bare identifiers
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}", s):
        name, body = m.group(1), m.group(2)
        matchers = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"', body))
        if name and name not in FUNCTIONS_AND_KEYWORDS:
            out.append((name, matchers))
    bare = re.sub(r"[a-zA-Z_:][a-zA-Z0-9_:]*\s*\{[^}]*\}", " ", s)
    bare = re.sub(r"\{[^}]*\}", " ", bare)
    bare = re.sub(r'"[^"]*"', " ", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", bare):
        name, call = m.group(1), m.group(2)
        if call or name in FUNCTIONS_AND_KEYWORDS or re.fullmatch(r"\d+[smhdwy]", name):
            continue
        out.append((name, {}))
    return out


def check_expr(where, expr, exported, source):
    found = metrics_of(expr)
    if not found:
        errors.append(f"{where}: no metric in {expr!r}")
    for name, matchers in found:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name in PROMETHEUS_OWN:
            continue
        if name in exported or base in exported:
            pass
        elif name in PENDING:
            warnings.append(f"{where}: {name} is not in host/src yet (pending, issue 17)")
        else:
            errors.append(f"{where}: {name} is not a metric Switchyard exports")
            continue
        for label, value in matchers.items():
            if label in FIXED_LABELS and name.startswith("switchyard_") and f'"{value}"' not in source:
                errors.append(f"{where}: {name}{{{label}=\"{value}\"}}: no such label value in host/src")


def check_rules(path, exported, source):
    n = 0
    for g in yaml.safe_load(open(path))["groups"]:
        for r in g["rules"]:
            n += 1
            where = f"{path}: {r.get('alert') or r.get('record')}"
            check_expr(where, r["expr"], exported, source)
            if "alert" in r:
                if "for" not in r:
                    errors.append(f"{where}: no `for:`")
                if "severity" not in r.get("labels", {}):
                    errors.append(f"{where}: no severity label")
                for a in ("summary", "description"):
                    if a not in r.get("annotations", {}):
                        errors.append(f"{where}: no {a} annotation")
    return n


def grafana_to_promql(expr):
    return (expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
            .replace("$__range", "1h").replace("$job", ".*").replace("$instance", ".*"))


def check_dashboard(path, exported, source, exprs_out):
    try:
        d = json.load(open(path))
    except json.JSONDecodeError as e:
        errors.append(f"{path}: not valid JSON: {e}")
        return 0
    for key in ("title", "uid", "panels", "templating", "schemaVersion"):
        if key not in d:
            errors.append(f"{path}: no {key}")
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("DS_PROMETHEUS")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        errors.append(f"{path}: no DS_PROMETHEUS data source variable")
    for v in ("job", "instance"):
        if variables.get(v, {}).get("type") != "query":
            errors.append(f"{path}: no `{v}` query variable")
    ids, cells, rules, n = set(), {}, [], 0
    for p in d.get("panels", []):
        where = f"{path}: panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            errors.append(f"{where}: duplicate id")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if g.get("x", 0) + g.get("w", 0) > 24:
            errors.append(f"{where}: wider than the grid")
        for x in range(g.get("x", 0), g.get("x", 0) + g.get("w", 0)):
            for y in range(g.get("y", 0), g.get("y", 0) + g.get("h", 0)):
                if (x, y) in cells:
                    errors.append(f"{where}: overlaps panel {cells[(x, y)]}")
                    break
                cells[(x, y)] = p.get("id")
        if p.get("type") == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            errors.append(f"{where}: data source is not ${{DS_PROMETHEUS}}")
        if not p.get("targets"):
            errors.append(f"{where}: no targets")
        for t in p.get("targets", []):
            n += 1
            expr = t.get("expr", "")
            if t.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
                errors.append(f"{where} {t.get('refId')}: data source is not ${{DS_PROMETHEUS}}")
            for name, matchers in metrics_of(expr):
                if name.startswith("switchyard_") and not (
                        matchers.get("job") is None and 'job=~"$job"' in expr and 'instance=~"$instance"' in expr):
                    if 'job=~"$job"' not in expr or 'instance=~"$instance"' not in expr:
                        errors.append(f"{where}: {name} is not filtered by $job and $instance")
            check_expr(f"{where} {t.get('refId')}", expr, exported, source)
            rules.append({"record": f"dashboard:panel{p.get('id')}:{t.get('refId')}",
                          "expr": grafana_to_promql(expr)})
    yaml.safe_dump({"groups": [{"name": "dashboard-expressions", "rules": rules}]},
                   open(exprs_out, "w"), sort_keys=False)
    return n


def main(src, rules, dashboard, exprs_out):
    exported = exported_names(src)
    source = source_strings(src)
    if len(exported) < 20:
        errors.append(f"only {len(exported)} switchyard_ names found under {src}")
    n_rules = check_rules(rules, exported, source)
    n_exprs = check_dashboard(dashboard, exported, source, exprs_out)
    print(f"  {len(exported)} metric names in {src}; {n_rules} rules and {n_exprs} dashboard expressions checked")
    for w in warnings:
        print(f"  WARNING {w}")
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

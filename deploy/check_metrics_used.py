#!/usr/bin/env python3
"""Every forewarn metric the dashboard and the alert rules use is one a live /metrics exports.

usage: check_metrics_used.py METRICS_TEXT FILE...   (exit 1 naming what is missing)
"""
import re
import sys

exposition = open(sys.argv[1], encoding="utf-8").read()
exported = set()
for line in exposition.splitlines():
    m = re.match(r"# TYPE (\S+) (\S+)", line)
    if m:
        name, kind = m.groups()
        exported.add(name)
        if kind == "histogram":
            exported.update({name + "_bucket", name + "_sum", name + "_count"})
missing = {}
for path in sys.argv[2:]:
    text = open(path, encoding="utf-8").read()
    for name in set(re.findall(r"\bforewarn_[a-z0-9_]+", text)):
        if name not in exported:
            missing.setdefault(path, []).append(name)
for path, names in missing.items():
    print(f"{path}: not exported by /metrics: {', '.join(sorted(names))}")
if missing:
    sys.exit(1)
print(f"every forewarn metric in {len(sys.argv) - 2} file(s) is exported")

#!/usr/bin/env python3
"""Fails when a module in src/ imports a room of its own or a higher layer, as listed in the
`layers` block of docs/ARCHITECTURE.md. A room is a folder or file directly under src/; `crate::ROOM`
paths (and `finetune::ROOM` in the binary) are its imports. Stdlib only: it runs before any set-up."""
import os
import re
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
doc = open(os.path.join(root, "docs", "ARCHITECTURE.md")).read()
block = re.search(r"```layers\n(.*?)```", doc, re.S)
if not block:
    sys.exit("check_layers: no ```layers block in docs/ARCHITECTURE.md")
layer = {}
for line in block.group(1).splitlines():
    n, *rooms = line.split()
    for r in rooms:
        layer[r] = int(n)

bad = []
src = os.path.join(root, "src")
for d, _, files in os.walk(src):
    for f in sorted(files):
        if not f.endswith(".rs"):
            continue
        path = os.path.join(d, f)
        rel = os.path.relpath(path, src)
        room = rel.split(os.sep)[0].removesuffix(".rs")
        if room == "lib":
            continue
        if room not in layer:
            bad.append(f"src/{rel}: room `{room}` is not in docs/ARCHITECTURE.md's layer table")
            continue
        code = "\n".join(t.split("//")[0] for t in open(path, encoding="utf-8").read().splitlines())
        uses = [(m.start(), m.group(1)) for m in re.finditer(r"\b(?:crate|finetune)::([a-z_]+)", code)]
        # `use crate::{data::files, model}`: every name at the top of the group.
        for m in re.finditer(r"\b(?:crate|finetune)::\{([^}]*)", code):
            uses += [(m.start(), n.strip().split("::")[0]) for n in m.group(1).split(",") if n.strip()]
        for at, used in uses:
            if used == room or used not in layer:
                continue
            if layer[used] >= layer[room]:
                i = code.count("\n", 0, at) + 1
                bad.append(f"src/{rel}:{i}: `{room}` (layer {layer[room]}) imports `{used}` "
                           f"(layer {layer[used]}); imports go down the table in docs/ARCHITECTURE.md")
if bad:
    print("\n".join(bad))
    sys.exit(1)
print(f"check_layers: {len(layer)} rooms, every import goes down the layers")

#!/usr/bin/env python3
"""Fails when a file in src/ is over 600 lines (the pickle VM excepted), or when a module in src/
imports a room of its own or a higher layer, as listed in the
`layers` block of docs/ARCHITECTURE.md. A room is a folder or file directly under src/; `crate::ROOM`
paths (and `finetune::ROOM` in the binary) are its imports. A `layers ROOM` block does the same inside
one room (its rooms are the folders and files directly under src/ROOM; its imports are
`crate::ROOM::NAME` and, in files directly under it, `super::NAME`, with the names ROOM/mod.rs
re-exports mapped to the module they come from). Stdlib only: it runs before any set-up."""
import os
import re
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
doc = open(os.path.join(root, "docs", "ARCHITECTURE.md")).read()
block = re.search(r"```layers\n(.*?)```", doc, re.S)
inner = {m.group(1): m.group(2) for m in re.finditer(r"```layers (\w+)\n(.*?)```", doc, re.S)}
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


def parse(text):
    out = {}
    for line in text.splitlines():
        n, *rooms = line.split()
        for r in rooms:
            out[r] = int(n)
    return out


def strip_comments(path):
    return "\n".join(t.split("//")[0] for t in open(path, encoding="utf-8").read().splitlines())


def names(group):
    """`a::b, c, {d, e}` -> the first segment of each path."""
    return [n.strip().split("::")[0] for n in re.sub(r"\{[^}]*\}", "", group).split(",") if n.strip()]


for outer, text in inner.items():
    sub = parse(text)
    base = os.path.join(src, outer)
    # Names `pub use MODULE::{...}` re-exports, by the module they come from.
    reexport = {}
    for m in re.finditer(r"pub use (\w+)::(\{[^;]*\}|\w+);", strip_comments(os.path.join(base, "mod.rs"))):
        for n in names(m.group(2).strip("{}")):
            reexport[n] = m.group(1)
    for d, _, files in os.walk(base):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(d, f)
            rel = os.path.relpath(path, base)
            room = rel.split(os.sep)[0].removesuffix(".rs")
            if room == "mod":
                continue
            if room not in sub:
                bad.append(f"src/{outer}/{rel}: `{room}` is not in the `layers {outer}` table")
                continue
            code = strip_comments(path)
            uses = [(m.start(), m.group(1)) for m in re.finditer(rf"\bcrate::{outer}::(\w+)", code)]
            uses += [(m.start(), n) for m in re.finditer(rf"\bcrate::{outer}::\{{([^}}]*)", code) for n in names(m.group(1))]
            if os.sep not in rel:
                uses += [(m.start(), m.group(1)) for m in re.finditer(r"\bsuper::(\w+)", code)]
                uses += [(m.start(), n) for m in re.finditer(r"\bsuper::\{([^}]*)", code) for n in names(m.group(1))]
            for at, used in uses:
                used = reexport.get(used, used)
                if used == room or used not in sub:
                    continue
                if sub[used] >= sub[room]:
                    i = code.count("\n", 0, at) + 1
                    bad.append(f"src/{outer}/{rel}:{i}: `{outer}::{room}` (layer {sub[room]}) imports "
                               f"`{outer}::{used}` (layer {sub[used]}); imports go down the `layers {outer}` table")
# The room table's file names are the files: every `name.rs` or `name/` a room's row mentions
# exists in that room (a moved file is a stale row).
for row in re.finditer(r"^\| \d+ \| `(\w+)(?:/|\.rs)`[^|]*\| (.*) \|$", doc, re.M):
    room, text = row.group(1), row.group(2)
    base = os.path.join(src, room)
    here = {os.path.relpath(os.path.join(d, x), base) for d, ds, fs in os.walk(base) for x in ds + fs}
    for name in re.findall(r"`([\w/]+(?:\.rs|/))`", text):
        stem = name.rstrip("/")
        if stem in layer:  # another room, named as such
            continue
        if not any(h == stem or h.endswith(os.sep + stem) for h in here):
            bad.append(f"docs/ARCHITECTURE.md: the `{room}` row names `{name}`, which is not in src/{room}/")

# One job per file, each readable in one sitting. The pickle VM is the exception: it is one
# interpreter loop over PyTorch's opcode table, and splitting the table would scatter the opcodes.
MAX_LINES = 600
LONG_ALLOWED = {os.path.join("model", "weights", "pickle.rs")}
for d, _, files in os.walk(src):
    for f in sorted(files):
        path = os.path.join(d, f)
        rel = os.path.relpath(path, src)
        if f.endswith(".rs") and rel not in LONG_ALLOWED:
            n = sum(1 for _ in open(path, encoding="utf-8"))
            if n > MAX_LINES:
                bad.append(f"src/{rel}: {n} lines, over {MAX_LINES}; split it by job (see docs/ARCHITECTURE.md)")
if bad:
    print("\n".join(bad))
    sys.exit(1)
print(f"check_layers: {len(layer)} rooms" + "".join(f", {len(parse(t))} in {o}/" for o, t in inner.items())
      + f", every import goes down the layers, no file over {MAX_LINES} lines")

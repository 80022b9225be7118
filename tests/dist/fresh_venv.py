"""A fresh venv holding what `pip install finetune-*.whl` needs before it: torch==2.11.0 and numpy.

    python tests/dist/fresh_venv.py DEST

Run with the repo venv's interpreter. DEST is made with `python -m venv` from the same base
Python; then each distribution in the dependency closure of torch and numpy (read from their
metadata) is linked into DEST's site-packages from the repo venv's, dist-info included, so pip sees
them installed. That is what `pip install` from the local cache would unpack, without copying
5 GB of CUDA libraries again (CI's disk and time); nothing else of the repo venv is visible.
"""

import importlib.metadata as md
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

dest = Path(sys.argv[1])
base = getattr(sys, "_base_executable", sys.executable)
subprocess.run([base, "-m", "venv", str(dest)], check=True)
src = Path(sysconfig.get_path("purelib"))
(site,) = dest.glob("lib/python*/site-packages")


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(dist, extras):
    """(name, extras) of `dist`'s requirements, with those of the extras asked for (torch asks
    for `cuda-toolkit[cublas,...]`), as pip resolves them."""
    for req in dist.requires or []:
        m = re.match(r"([A-Za-z0-9._-]+)\s*(?:\[([^\]]*)\])?", req)
        extra = re.search(r"extra\s*==\s*[\"']([^\"']+)", req)
        if extra and norm(extra.group(1)) not in extras:
            continue
        yield m.group(1), frozenset(norm(e) for e in (m.group(2) or "").split(",") if e.strip())


seen, todo, linked = set(), [("torch", frozenset()), ("numpy", frozenset())], set()
while todo:
    name, extras = todo.pop()
    if (norm(name), extras) in seen:
        continue
    seen.add((norm(name), extras))
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue  # a requirement whose marker excludes this platform
    for f in dist.files or []:
        top = f.parts[0]
        if top in ("..", "__pycache__") or top in linked or not (src / top).exists():
            continue
        if (site / top).exists():
            continue  # the venv's own (pip, setuptools): keep them
        linked.add(top)
        (site / top).symlink_to(src / top)
    todo.extend(requirements(dist, extras))
print(f"{dest}: linked {len({n for n, _ in seen})} distributions ({len(linked)} entries) from {src}")

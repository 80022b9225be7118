"""The "From Python" and "On a Ray cluster" examples of docs/python.md run as written (in a scratch
folder holding the repo's assets/ and README.md, which the example reads as a file that is not an
image, with the real mobilenet_v2 weights in the cache)."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

README = (REPO / "docs" / "python.md").read_text()


def block(section, lang):
    s = README[README.index(f"## {section}"):]
    end = s.find("\n## ", 4)  # the next section, or the end of the page
    s = s[:end] if end > 0 else s
    m = re.search(f"```{lang}\n(.*?)```", s, re.S)
    assert m, f"no {lang} block in {section}"
    return m.group(1)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    shared = Path(os.environ.get("FINETUNE_SHARED", REPO.parent / "shared"))
    weights = shared / "weights" / "mobilenet_v2-b0353104.pth"
    if not weights.is_file():
        pytest.skip(f"no {weights}: the README example trains mobilenet_v2 from ImageNet weights")
    d = tmp_path_factory.mktemp("readme")
    (d / "assets").symlink_to(REPO / "assets")
    (d / "README.md").symlink_to(REPO / "README.md")
    cache = d / "cache"
    (cache / "weights").mkdir(parents=True)
    (cache / "weights" / weights.name).symlink_to(weights)
    env = dict(os.environ, FINETUNE_CACHE=str(cache))
    return d, env


def test_python_example(scratch):
    d, env = scratch
    p = subprocess.run(
        [sys.executable, "-c", block("From Python", "python")],
        cwd=d, env=env, capture_output=True, text=True, timeout=900,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    # quiet=True keeps the epoch tables (as `finetune train --quiet`); the example's prints follow.
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("valid accuracy ")):]
    assert float(lines[0].split()[-1].rstrip("%")) >= 75.0, p.stdout  # real weights learn
    assert lines[1] == "['hat', 'pants', 'shoes', 't-shirt']"
    top2 = ast.literal_eval(lines[2])
    assert len(top2) == 2 and all(len(t) == 2 for t in top2) and top2[0][0][0] == "shoes", p.stdout
    assert lines[3].startswith("[[('shoes', ")
    assert lines[4] == "True"
    assert lines[5] == "README.md: not an image (content is unrecognised bytes [23, 20, 66, 69])"
    assert (d / "models" / "clothes" / "model.json").is_file()


def test_ray_example(scratch):
    d, env = scratch
    if not (d / "models" / "clothes").is_dir():
        pytest.skip("needs the bundle of the Python example")
    runs = []
    for line in block("On a Ray cluster", "sh").replace("\\\n", " ").splitlines():
        cmd = line.strip().replace(".venv/bin/python", sys.executable, 1)
        p = subprocess.run(cmd, shell=True, cwd=d, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr
        runs.append(p)
    assert "40 images (0 unreadable)" in runs[0].stderr, runs[0].stderr
    counts, unreadable = runs[1].stdout.strip().split(" unreadable: ")
    counts = ast.literal_eval(counts)
    assert set(counts) <= {"hat", "pants", "shoes", "t-shirt"} and sum(counts.values()) == 40
    assert unreadable == "0"
    print(runs[0].stderr.strip().splitlines()[-1])

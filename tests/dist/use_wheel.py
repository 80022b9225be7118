"""A user's first steps with the installed wheel, in a venv that has only it and its dependencies.

    VENV/bin/python tests/dist/use_wheel.py SAMPLE WORKDIR

Run by tests/dist.rs with PATH = VENV/bin alone (no cargo, no rustc, no LIBTORCH, no
LD_LIBRARY_PATH): `finetune --version`, a one-epoch `finetune train` on the embedded sample,
`finetune predict`, `finetune serve` answering one photo over HTTP, and `import finetune` predicting
the same labels as the command. Exits non-zero naming the first step that went wrong.
"""

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

sample, work = Path(sys.argv[1]), Path(sys.argv[2])
venv_bin = Path(sys.executable).parent
exe = shutil.which("finetune")
assert exe is not None, f"no `finetune` on PATH={os.environ.get('PATH')}"
assert Path(exe).parent == venv_bin, f"`finetune` is {exe}, not the venv's"
assert shutil.which("cargo") is None and shutil.which("rustc") is None, "a Rust toolchain is on PATH"
assert open(exe, "rb").read(4) == b"\x7fELF", f"{exe} is not the binary itself"


def run(*args):
    p = subprocess.run(["finetune", *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, f"finetune {' '.join(map(str, args))} failed:\n{p.stderr}"
    return p.stdout


version = run("--version")
print(version, end="")
assert version.startswith("finetune 0.1.0\n"), version
assert "\nlibtorch 2.11.0 (" in version and "libtorch_cpu.so)" in version, version
assert "\nCUDA: " in version, version

model = work / "clothes"
run("train", sample, "--arch", "mobilenet_v2", "--random-init", "--size", "64", "--bs", "16",
    "--epochs", "1", "--device", "cpu", "--quiet", "--out", model)
photos = sorted((sample / "test").rglob("*.jpg"))[::5]
cli = {r["path"]: r["predictions"][0]["label"] for r in json.loads(run("predict", model, *photos, "--json"))}

import finetune  # noqa: E402  (after the command: it must not need the package imported)

m = finetune.load(str(model))
py = [r[0][0] for r in m.predict([str(p) for p in photos])]
assert py == [cli[str(p)] for p in photos], f"python {py} != command {cli}"
print(f"predict: {len(photos)} photos, command and Python agree: {py[:4]} ...")

server = subprocess.Popen(["finetune", "serve", model, "--port", "0", "--device", "cpu"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
try:
    line = server.stdout.readline()
    assert line.startswith("listening on "), f"serve said {line!r}: {server.stderr.read()}"
    url = line.split()[-1] + "/predictions/clothes"
    req = urllib.request.Request(url, data=photos[0].read_bytes(), method="POST",
                                 headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(req, timeout=60) as r:
        answer = json.load(r)
    assert answer[0]["label"] == cli[str(photos[0])], f"serve {answer} != command {cli[str(photos[0])]}"
    print(f"serve: {answer[0]}")
finally:
    server.terminate()
    server.wait(timeout=30)
print("ok")

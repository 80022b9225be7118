//! The Python package (python/) and the Ray batch job: builds the wheel as `make wheel` does
//! (maturin from the venv, into target/wheels), installs it into the venv, and runs pytest on
//! python/tests: predictions, metrics and messages against this binary's, and a local Ray cluster.

mod common;

use common::{python, repo, skip};
use std::process::Command;

fn venv_has(module: &str) -> bool {
    Command::new(python())
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn python_package_and_ray_job() {
    for m in ["maturin", "pytest", "numpy", "PIL"] {
        if !venv_has(m) {
            skip(
                &format!("{} has no `{m}`", python().display()),
                "run `make test`: scripts/setup-venv.sh installs it from PyPI",
            );
            return;
        }
    }
    let py = python();
    let wheels = repo().join("target/wheels");
    let t = std::time::Instant::now();
    let o = common::without_cargo_env(&mut Command::new(&py))
        .args(["-m", "maturin", "build", "--release", "--interpreter"])
        .arg(&py)
        .arg("--out")
        .arg(&wheels)
        .current_dir(repo().join("python"))
        .output()
        .expect("run maturin");
    assert!(
        o.status.success(),
        "maturin could not build the wheel:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("wheel built in {:.0}s", t.elapsed().as_secs_f64());
    let text =
        String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    let wheel = text
        .lines()
        .rev()
        .find_map(|l| l.split_whitespace().find(|w| w.ends_with(".whl")))
        .map(|w| repo().join("python").join(w))
        .expect("maturin names the wheel it built");
    let st = Command::new(&py)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "--no-deps",
            "--force-reinstall",
        ])
        .arg(&wheel)
        .status()
        .expect("run pip");
    assert!(st.success(), "cannot install {}", wheel.display());
    let mut cmd = Command::new(&py);
    cmd.args([
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        // pytest keeps its last three runs' folders by default (670 MB each here); a failed
        // test's folder is all anyone reads.
        "-o",
        "tmp_path_retention_policy=failed",
        "python/tests",
    ])
    .current_dir(repo())
    .env("FINETUNE_BIN", env!("CARGO_BIN_EXE_finetune"));
    let ray = venv_has("ray");
    if !ray {
        skip(
            "no `ray` in the venv: the Ray tests did not run",
            "run `make test`: scripts/setup-venv.sh installs ray[data]",
        );
    }
    let o = cmd.output().expect("run pytest");
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("{out}");
    assert!(
        o.status.success(),
        "pytest failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Only a missing Ray or ../shared (the README example's real weights) may skip tests.
    assert!(
        !ray || common::shared().is_none() || !out.contains(" skipped"),
        "pytest skipped tests the venv should run:\n{out}"
    );
}

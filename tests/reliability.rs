//! Crash safety: `train --resume` continues a killed run to the same result, bundles are replaced
//! whole (never half-written, never lost to a crash or a full disk), user folders are never touched.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};

fn train_args(out: &Path, data: &Path) -> Command {
    train_epochs(out, data, 3)
}

fn train_epochs(out: &Path, data: &Path, epochs: usize) -> Command {
    let mut c = bin();
    c.args([
        "train",
        "--random-init",
        "--arch",
        "resnet18",
        "--size",
        "48",
        "--bs",
        "8",
        "--epochs",
        &epochs.to_string(),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--quiet",
        "--out",
    ])
    .arg(out)
    .arg(data);
    c
}

fn state(out: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(out.join("resume/state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((v["phase"].as_str()?.to_string(), v["epochs_done"].as_u64()?))
}

#[test]
fn killed_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synthetic(&data, 24);

    // The reference: one uninterrupted run.
    let whole = dir.path().join("whole");
    let o = run(&mut train_args(&whole, &data));
    assert!(o.status.success(), "{}", o.stderr);
    assert!(
        !whole.join("resume").exists(),
        "a finished bundle carries no resume state"
    );

    // The same run, killed (SIGKILL: no chance to save) once the first unfrozen epoch is saved.
    let cut = dir.path().join("cut");
    let mut child = train_args(&cut, &data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(300, "the first unfrozen epoch's checkpoint", || {
        state(&cut).is_some_and(|(p, n)| p == "unfrozen" && n >= 1)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let (_, done) = state(&cut).unwrap();
    assert!(done < 3, "killed before the end ({done} epochs done)");

    // What a kill leaves is a complete bundle: it predicts.
    let o = run(bin()
        .args(["predict", "--device", "cpu"])
        .arg(&cut)
        .arg(data.join("red [a]")));
    assert!(o.status.success(), "{}", o.stderr);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cut.join("model.json")).unwrap()).unwrap();
    assert_eq!(info["training"]["interrupted"], true);

    // Resume from another working folder: the bundle remembers its data.
    let o = run(bin()
        .current_dir(dir.path().join("data"))
        .args([
            "train",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--quiet",
            "--resume",
        ])
        .arg(&cut));
    assert!(o.status.success(), "{}", o.stderr);
    assert!(
        o.stderr
            .contains(&format!("after {done} epoch(s) of its unfrozen phase")),
        "{}",
        o.stderr
    );
    assert_eq!(metrics_without_time(&cut), metrics_without_time(&whole));
    assert_eq!(
        std::fs::read(cut.join("model.safetensors")).unwrap(),
        std::fs::read(whole.join("model.safetensors")).unwrap(),
        "resumed weights are bit-identical to the uninterrupted run's"
    );
    assert!(!cut.join("resume").exists());
    // A save interrupted by the kill may have left its temporary folder; the next save removes it.
    let siblings: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        siblings.iter().all(|n| !n.starts_with(".cut.")),
        "{siblings:?}"
    );

    // Nothing left to resume, said plainly.
    let o = run(bin().args(["train", "--resume"]).arg(&cut));
    assert!(
        !o.status.success() && o.stderr.contains("nothing to resume"),
        "{}",
        o.stderr
    );
}

#[test]
fn ctrl_c_mid_epoch_resumes_from_the_last_completed_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synthetic(&data, 24);
    let whole = dir.path().join("whole");
    assert!(run(&mut train_args(&whole, &data)).status.success());
    let cut = dir.path().join("cut");
    let mut child = train_args(&cut, &data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(300, "the frozen epoch's checkpoint", || {
        state(&cut).is_some()
    });
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let o = run(bin()
        .args(["train", "--quiet", "--resume"])
        .arg(&cut)
        .args(["--device", "cpu", "--threads", "1"]));
    assert!(o.status.success(), "{}", o.stderr);
    assert_eq!(metrics_without_time(&cut), metrics_without_time(&whole));
    assert_eq!(
        std::fs::read(cut.join("model.safetensors")).unwrap(),
        std::fs::read(whole.join("model.safetensors")).unwrap()
    );
}

#[test]
fn a_crash_never_destroys_the_previous_bundle_or_a_users_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synthetic(&data, 24);
    let out = dir.path().join("model");
    assert!(run(&mut train_args(&out, &data)).status.success());
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let json_before = std::fs::read(out.join("model.json")).unwrap();

    // Retrain over it and kill during the first epoch: the old bundle is still whole.
    let mut child = train_epochs(&out, &data, 50)
        .arg("--force")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Data decoded and training started, well before the first epoch ends.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut started = false;
    while std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0 {
        if line.starts_with("model:") {
            started = true;
            break;
        }
        line.clear();
    }
    assert!(started, "training started: {line}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    assert_eq!(std::fs::read(out.join("model.json")).unwrap(), json_before);

    // A folder holding the user's own files is never used as --out.
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("thesis.txt"), "precious").unwrap();
    let o = run(&mut train_args(&mine, &data));
    assert!(
        !o.status.success() && o.stderr.contains("is not a model bundle"),
        "{}",
        o.stderr
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("thesis.txt")).unwrap(),
        "precious"
    );
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);
}

#[test]
fn a_full_disk_gives_a_clear_error_and_keeps_the_previous_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synthetic(&data, 24);
    // resnet18's bundle is ~45 MB: one fits, a second (or its checkpoint) does not.
    let Some(disk) = Tmpfs::new(&dir.path().join("disk"), "70m") else {
        return skip("cannot mount a tmpfs here", common::NEEDS_ROOT);
    };
    let out = disk.0.join("model");
    let o = run(&mut train_epochs(&out, &data, 1));
    assert!(o.status.success(), "{}", o.stderr);
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let o = run(train_epochs(&out, &data, 1).arg("--force"));
    assert!(!o.status.success());
    assert!(
        o.stderr.contains("No space left on device"),
        "the error names the cause: {}",
        o.stderr
    );
    assert!(
        o.stderr.contains("could not save the epoch checkpoint"),
        "{}",
        o.stderr
    );
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    let left: Vec<_> = std::fs::read_dir(&disk.0).unwrap().collect();
    assert_eq!(left.len(), 1, "no temporary folder left behind: {left:?}");
}

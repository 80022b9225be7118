//! A generated hostile folder (tests/hostile/make_hostile.py: devices, FIFOs, sockets, symlink loops,
//! non-images named like images, truncated and header-bombed images, odd names) through train,
//! evaluate and predict: no panic, no hang, bounded memory, every skipped file named once in a
//! warning, every valid image used.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` to completion, killing it (and failing) after `secs`.
fn run_within(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut b).unwrap();
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut b).unwrap();
        b
    });
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(secs) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{cmd:?} hung: killed after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Peak resident memory of the largest child waited for so far, in MB.
fn children_max_rss_mb() -> u64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    u.ru_maxrss as u64 / 1024
}

struct Expect {
    valid: Vec<(String, Vec<String>)>,
    warned: Vec<String>,
}

fn generate(dir: &Path) -> (PathBuf, Expect) {
    let data = dir.join("data");
    let o = Command::new(python())
        .arg(repo().join("tests/hostile/make_hostile.py"))
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expect.json")).unwrap()).unwrap();
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let valid = v["valid"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), strs(v)))
        .collect();
    (
        data,
        Expect {
            valid,
            warned: strs(&v["warned"]),
        },
    )
}

/// Every expected file is named in exactly one warning, and nothing else is warned about.
fn check_warnings(what: &str, stderr: &str, data: &Path, e: &Expect) {
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    for rel in &e.warned {
        let p = data.join(rel).display().to_string();
        let n = warnings
            .iter()
            .filter(|w| w.contains(&format!("{p}:")))
            .count();
        assert_eq!(n, 1, "{what}: {rel} named in {n} warnings:\n{stderr}");
    }
    assert_eq!(
        warnings.len(),
        e.warned.len(),
        "{what}: unexpected warnings:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
}

#[test]
fn hostile_folder_through_train_evaluate_and_predict() {
    let dir = tempfile::tempdir().unwrap();
    let (data, e) = generate(dir.path());
    let n_valid: usize = e.valid.iter().map(|(_, v)| v.len()).sum();
    assert_eq!(n_valid, 32);
    let model = dir.path().join("model");

    let o = run_within(
        bin()
            .args([
                "--max-file-mb",
                "1",
                "train",
                "--random-init",
                "--size",
                "32",
            ])
            .args([
                "--bs", "4", "--epochs", "1", "--device", "cpu", "--quiet", "--out",
            ])
            .arg(&model)
            .arg(&data),
        300,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    check_warnings("train", &stderr, &data, &e);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    let used = info["data"]["train_images"].as_u64().unwrap()
        + info["data"]["valid_images"].as_u64().unwrap();
    assert_eq!(used as usize, n_valid, "every valid image used");
    assert_eq!(
        info["data"]["skipped_files"].as_u64().unwrap() as usize,
        e.warned.len()
    );
    let mut classes: Vec<String> = e.valid.iter().map(|(c, _)| c.clone()).collect();
    classes.sort();
    assert_eq!(info["classes"], serde_json::json!(classes));

    let o = run_within(
        bin()
            .args([
                "--max-file-mb",
                "1",
                "evaluate",
                "--json",
                "--device",
                "cpu",
            ])
            .arg(&model)
            .arg(&data),
        300,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    check_warnings("evaluate", &stderr, &data, &e);
    let ev: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let counted: u64 = ev["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()))
        .sum();
    assert_eq!(counted as usize, n_valid, "evaluate used every valid image");

    let o = run_within(
        bin()
            .args(["--max-file-mb", "1", "predict", "--json", "--device", "cpu"])
            .arg(&model)
            .arg(&data),
        300,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let preds: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let paths: Vec<String> = preds
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap().to_string())
        .collect();
    for (_, files) in &e.valid {
        for rel in files {
            let p = data.join(rel).display().to_string();
            assert!(paths.contains(&p), "predict covers {p}");
        }
    }
    assert_eq!(paths.len(), n_valid);
    // predict names what it skips like evaluate does (the pixel and byte caps, non-images, ...).
    check_warnings("predict", &stderr, &data, &e);
    assert!(
        stderr.contains("65000x65000") && stderr.contains("60000x60000"),
        "the pixel-cap message shows what the header claims: {stderr}"
    );

    let rss = children_max_rss_mb();
    println!("largest child peak RSS: {rss} MB");
    assert!(rss < 3000, "memory stayed bounded: {rss} MB");
}

/// A class that cannot be split is named with its folder and count, and the fix is said.
#[test]
fn a_class_too_small_to_split_is_named() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), 6);
    let deep = dir.path().join("a/b/c/d20");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::copy(
        dir.path().join("red [a]/img 0 (copy).png"),
        deep.join("only.png"),
    )
    .unwrap();
    let o = run(bin()
        .args(["train", "--random-init", "--size", "32", "--out"])
        .arg(dir.path().join("m"))
        .arg(dir.path()));
    assert!(!o.status.success());
    assert!(
        o.stderr.contains("class `d20`")
            && o.stderr.contains(&deep.display().to_string())
            && o.stderr.contains("only 1 image")
            && o.stderr.contains("train/ and valid/"),
        "{}",
        o.stderr
    );
}

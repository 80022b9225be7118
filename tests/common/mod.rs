//! Test helpers: the shared data, the live PyTorch reference outputs, the binary, a local HTTP server.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the checkout (or `$FINETUNE_SHARED`). `None` in a user's clone: tests that
/// need it print why they skip.
pub fn shared() -> Option<PathBuf> {
    let p = std::env::var_os("FINETUNE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared"));
    p.join("weights")
        .is_dir()
        .then(|| p.canonicalize().unwrap_or(p))
}

pub fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
    println!("SKIPPED: {why}");
}

pub fn mobilenet_weights() -> Option<PathBuf> {
    let p = shared()?.join("weights/mobilenet_v2-b0353104.pth");
    p.is_file().then_some(p)
}

pub fn python() -> PathBuf {
    std::env::var_os("FINETUNE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"))
}

/// Reference outputs from the venv's torch/torchvision, generated once per `target/` dir.
pub fn reference() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    DIR.get_or_init(|| {
        let _g = LOCK.lock().unwrap();
        let dir = repo().join("target/reference");
        // Regenerated whenever the script changes (its hash is the marker's content).
        let script = std::fs::read(repo().join("tests/reference/make_reference.py")).unwrap();
        let want: String =
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&script))
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
        if std::fs::read_to_string(dir.join("done")).ok().as_deref() != Some(want.as_str()) {
            let mut cmd = Command::new(python());
            cmd.arg(repo().join("tests/reference/make_reference.py"))
                .arg(&dir);
            if let Some(s) = shared() {
                cmd.arg(s);
            }
            let st = cmd.status().unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}); run `make test`, which creates the venv with torch",
                    python().display()
                )
            });
            assert!(
                st.success(),
                "reference script failed; run `make test` to set up the venv"
            );
        }
        dir
    })
    .clone()
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_finetune"))
}

pub struct Output {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().expect("run finetune");
    Output {
        status: o.status,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A one-route-per-path HTTP/1.1 server on 127.0.0.1, answering from a fixed table; returns the
/// base URL. Unknown paths get 404.
pub fn serve(routes: Vec<(&'static str, u16, Vec<u8>)>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 8192];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (code, body) = routes
                .iter()
                .find(|(p, _, _)| *p == path)
                .map(|(_, c, b)| (*c, b.clone()))
                .unwrap_or((404, b"not found".to_vec()));
            let head = format!(
                "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}")
}

pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

pub fn read_io(path: &Path) -> (tch::Tensor, tch::Tensor) {
    let mut m: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect();
    (m.remove("input").unwrap(), m.remove("logits").unwrap())
}

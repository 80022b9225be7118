//! Test helpers: the shared data, the live PyTorch reference outputs, the binary, a local HTTP server.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// Two visually separable classes of small synthetic images (red-ish vs blue-ish), `n` each.
pub fn synthetic(dir: &Path, n: usize) {
    for (cls, base) in [("red [a]", [200u8, 30, 30]), ("blue é", [30u8, 30, 200])] {
        let d = dir.join(cls);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            let img = image::RgbImage::from_fn(24, 20, |x, y| {
                let v = ((x * 7 + y * 13 + i as u32 * 31) % 50) as u8;
                image::Rgb([
                    base[0].saturating_add(v),
                    base[1].saturating_add(v),
                    base[2].saturating_add(v),
                ])
            });
            img.save(d.join(format!("img {i} (copy).png"))).unwrap();
        }
    }
}

/// A small tmpfs, to fill a disk for real; `None` (the test skips) where mounting is not allowed.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn new(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// `img` as a JPEG of quality `q`.
pub fn jpeg(img: &image::RgbImage, q: u8) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
        &mut out, q,
    ))
    .unwrap();
    out
}

/// How to enable the tests that need ../shared.
pub const NEEDS_SHARED: &str =
    "put the project's shared/ folder beside the checkout as ../shared, or set FINETUNE_SHARED";
/// How to enable the tests that fill a small disk.
pub const NEEDS_ROOT: &str = "run the suite as root, which may mount a tmpfs";

#[path = "skip.rs"]
mod skip_log;
pub use skip_log::skip;

pub fn mobilenet_weights() -> Option<PathBuf> {
    let p = shared()?.join("weights/mobilenet_v2-b0353104.pth");
    p.is_file().then_some(p)
}

pub fn lite0_weights() -> Option<PathBuf> {
    let p = shared()?.join("weights/efficientnet-lite0-57934424.pth");
    p.is_file().then_some(p)
}

/// Takes out of `cmd`'s environment what `cargo test` sets for the test (CARGO_MANIFEST_DIR,
/// CARGO_PKG_*, OUT_DIR, ...), for a command that runs cargo again (maturin, `make dist`): build
/// scripts that read them (ring's) take them for a change and rebuild ring, rustls, ureq and this
/// crate there, and then once more in the next plain `cargo build`.
pub fn without_cargo_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR")
            || k == "OUT_DIR"
        {
            cmd.env_remove(&*k);
        }
    }
    cmd
}

pub fn python() -> PathBuf {
    std::env::var_os("FINETUNE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"))
}

/// The kernel-selection variables of oneDNN and ATen (`ONEDNN_MAX_CPU_ISA=AVX2
/// ATEN_CPU_CAPABILITY=avx2` make this processor take the kernels an AVX2-only one would), as a
/// name: "native" when neither is set.
pub fn isa_tag() -> String {
    let vars: Vec<String> = ["ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
        .collect();
    if vars.is_empty() {
        "native".into()
    } else {
        vars.join(",")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    }
}

/// Reference outputs from the venv's torch/torchvision, generated once per `target/` dir, kernel
/// set and processor.
///
/// The references are what PyTorch computes with the very kernels the test will run: the same
/// libtorch, the same instruction set (one folder per `isa_tag`) and the same processor (its model
/// and flags are part of the marker). A reference made with AVX-512 kernels and compared with an
/// AVX2 run differs by kernel rounding, not by anything finetune computes (measured: resnet101's
/// logits 4.6e-4 apart, bf16 logits 0.125 apart, Adam's second step 0.035 apart through the sign of
/// a near-zero gradient), so the parity tests keep bounds that catch a wrong layer.
pub fn reference() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    DIR.get_or_init(|| {
        let _g = LOCK.lock().unwrap();
        let dir = repo().join("target/reference").join(isa_tag());
        // Two test processes at once (two `cargo test` runs side by side): one makes the
        // references while the other waits on this lock, then finds them made.
        std::fs::create_dir_all(&dir).unwrap();
        let lock = std::fs::File::create(dir.with_extension("lock")).unwrap();
        // SAFETY: a valid open descriptor; the lock ends when `lock` is closed below.
        assert_eq!(
            unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
            0,
            "cannot lock {}",
            dir.display()
        );
        // Regenerated whenever the script or the processor changes (their hash is the marker).
        let mut script = std::fs::read(repo().join("tests/reference/make_reference.py")).unwrap();
        script.extend_from_slice(cpu_identity().as_bytes());
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
            std::fs::write(dir.join("done"), &want).unwrap();
        }
        drop(lock);
        dir
    })
    .clone()
}

/// The processor's model name and feature flags (Linux's /proc/cpuinfo; empty elsewhere): which
/// kernels oneDNN and ATen pick on it.
pub fn cpu_identity() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("model name") || l.starts_with("flags"))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The binary, with its image cache under target/ (never the user's cache folder).
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_finetune"));
    c.env(
        "FINETUNE_IMAGE_CACHE",
        repo().join("target/test-image-cache"),
    );
    c
}

/// `finetune train` from random weights at 32 px, bs 8, on the CPU, for `epochs` epochs (after the
/// one frozen epoch): the quick training run most tests need; add the rest, then `--out` and data.
pub fn tiny_train(epochs: usize) -> Command {
    tiny_train_bs(epochs, 8)
}

/// [`tiny_train`] with another batch size (the smallest data sets need 4).
pub fn tiny_train_bs(epochs: usize, bs: usize) -> Command {
    let mut c = bin();
    c.args(["train", "--random-init", "--size", "32", "--device", "cpu"])
        .args(["--bs", &bs.to_string()])
        .args(["--epochs", &epochs.to_string()]);
    c
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

/// Runs `cmd`, which must fail with `want` in its error output; returns that output.
pub fn refused(cmd: &mut Command, want: &str) -> String {
    let o = run(cmd);
    assert!(!o.status.success(), "must fail: {cmd:?}");
    assert!(o.stderr.contains(want), "{cmd:?}: {}", o.stderr);
    o.stderr
}

/// `finetune predict --json ... --top-k K` (with `args`): per file, its (label, probability) pairs,
/// best first.
pub fn predict_json(args: &mut Command) -> Vec<Vec<(String, f64)>> {
    let o = run(args);
    assert!(o.status.success(), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["predictions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["label"].as_str().unwrap().to_string(),
                        p["probability"].as_f64().unwrap(),
                    )
                })
                .collect()
        })
        .collect()
}

/// A bundle's metrics.csv rows without their last column (wall time, which differs between runs).
pub fn metrics_without_time(bundle: &Path) -> Vec<String> {
    std::fs::read_to_string(bundle.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').map_or(l, |(rest, _)| rest).to_string())
        .collect()
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
    let (x, y, _) = read_io_formats(path);
    (x, y)
}

/// The input, PyTorch's NCHW logits and PyTorch's channels-last logits (`make_reference.py`'s
/// `save_io`).
pub fn read_io_formats(path: &Path) -> (tch::Tensor, tch::Tensor, tch::Tensor) {
    let mut m: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect();
    (
        m.remove("input").unwrap(),
        m.remove("logits").unwrap(),
        m.remove("logits_channels_last").unwrap(),
    )
}

/// A scriptable HTTP/1.1 server on 127.0.0.1 for the download and search tests.
pub mod http {
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    pub enum Body {
        Bytes(Vec<u8>),
        /// Accept the request and never answer.
        Never,
        /// Send the bytes one at a time with a pause between them.
        Drip(Vec<u8>, Duration),
    }

    pub struct Reply {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Body,
    }

    impl Reply {
        pub fn ok(content_type: &str, body: Vec<u8>) -> Reply {
            Reply {
                status: 200,
                headers: vec![("Content-Type".into(), content_type.into())],
                body: Body::Bytes(body),
            }
        }
        pub fn status(code: u16) -> Reply {
            Reply {
                status: code,
                headers: vec![],
                body: Body::Bytes(format!("status {code}").into_bytes()),
            }
        }
        pub fn redirect(to: &str) -> Reply {
            Reply {
                status: 302,
                headers: vec![("Location".into(), to.into())],
                body: Body::Bytes(vec![]),
            }
        }
    }

    #[derive(Debug, Clone)]
    pub struct Req {
        pub path: String,
        pub query: HashMap<String, String>,
        pub headers: HashMap<String, String>,
        pub at: Instant,
    }

    fn decode(s: &str) -> String {
        let b = s.replace('+', " ");
        let bytes = b.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                if let Some(v) = b
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Starts the server; returns its base URL and the log of requests received.
    pub fn serve(
        f: impl Fn(&Req) -> Reply + Send + Sync + 'static,
    ) -> (String, Arc<Mutex<Vec<Req>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let f = Arc::new(f);
        let log2 = log.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let f = f.clone();
                let log = log2.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let mut lines = text.lines();
                    let target = lines
                        .next()
                        .unwrap_or("")
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("/")
                        .to_string();
                    let headers: HashMap<String, String> = lines
                        .take_while(|l| !l.is_empty())
                        .filter_map(|l| {
                            l.split_once(':')
                                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        })
                        .collect();
                    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
                    let query = q
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (decode(k), decode(v)))
                        .collect();
                    let req = Req {
                        path: decode(path),
                        query,
                        headers,
                        at: Instant::now(),
                    };
                    log.lock().unwrap().push(req.clone());
                    let reply = f(&req);
                    let len = match &reply.body {
                        Body::Bytes(b) | Body::Drip(b, _) => b.len(),
                        Body::Never => 0,
                    };
                    if let Body::Never = reply.body {
                        std::thread::sleep(Duration::from_secs(60));
                        return;
                    }
                    let mut head = format!(
                        "HTTP/1.1 {} X\r\nContent-Length: {len}\r\nConnection: close\r\n",
                        reply.status
                    );
                    for (k, v) in &reply.headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    if s.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    match reply.body {
                        Body::Bytes(b) => {
                            let _ = s.write_all(&b);
                        }
                        Body::Drip(b, pause) => {
                            for byte in b {
                                if s.write_all(&[byte]).is_err() {
                                    return;
                                }
                                std::thread::sleep(pause);
                            }
                        }
                        Body::Never => {}
                    }
                });
            }
        });
        (base, log)
    }
}

/// A child process killed (and reaped) when dropped, so a failing test leaves no server behind.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with its stdout piped; returns it with the first line it prints (the servers print
/// their address there).
pub fn spawn_first_line(cmd: &mut Command) -> (KillOnDrop, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("start finetune");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("piped stdout")),
        &mut line,
    )
    .expect("read the first line");
    (KillOnDrop(child), line)
}

/// Debian's Chromium and the venv's Playwright, which the browser tests drive; `None` (the test
/// records its skip) when either is missing.
pub fn browser() -> Option<PathBuf> {
    let chromium = std::env::var_os("FINETUNE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        skip(
            "no Chromium at /usr/bin/chromium (or $FINETUNE_CHROMIUM)",
            "apt-get install chromium",
        );
        return None;
    }
    let has_playwright = Command::new(python())
        .args(["-c", "import playwright"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_playwright {
        skip(
            "no playwright in the venv",
            "run `make test`: scripts/setup-venv.sh installs it",
        );
        return None;
    }
    Some(chromium)
}

/// A temporary folder for a fixture that lives as long as the test binary.
///
/// Statics are never dropped, so a `TempDir` kept in a `OnceLock` stayed on disk after every run
/// (90 MB a binary, thousands of runs later a full CI disk). This one is removed by an `atexit`
/// hook, which runs when the harness exits, whether its tests passed or failed.
pub fn binary_tempdir() -> PathBuf {
    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static HOOK: std::sync::Once = std::sync::Once::new();
    extern "C" fn remove_all() {
        let dirs = match DIRS.lock() {
            Ok(mut d) => std::mem::take(&mut *d),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    HOOK.call_once(|| {
        // SAFETY: `remove_all` is a plain `extern "C" fn()` that neither unwinds nor calls exit.
        let rc = unsafe { libc::atexit(remove_all) };
        assert_eq!(rc, 0, "atexit refused the clean-up hook");
    });
    let dir = tempfile::tempdir().unwrap().keep();
    DIRS.lock().unwrap().push(dir.clone());
    dir
}

/// A tiny model (resnet18 from random weights, 32 px, one epoch after the frozen one) trained on
/// the embedded sample (`assets/sample`: its train/ split at random, test/ beside it), once per test
/// binary.
pub fn sample_model() -> &'static Path {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let m = binary_tempdir().join("m");
        let o = run(tiny_train(1)
            .args(["--arch", "resnet18", "--threads", "1", "--quiet"])
            .arg("--out")
            .arg(&m)
            .arg(repo().join("assets/sample")));
        assert!(o.status.success(), "train: {}", o.stderr);
        m
    })
}

/// `finetune serve MODEL` on a free port, 1 CPU thread; returns it with its base URL.
pub fn serve_model(model: &Path) -> (KillOnDrop, String) {
    let (child, line) = spawn_first_line(bin().arg("serve").arg(model).args([
        "--port",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]));
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, base)
}

/// Runs a browser test script (`cmd`, its arguments given); it must succeed and end with one JSON
/// line saying `"ok": true`, which is returned.
pub fn browser_script(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().expect("run the browser script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).expect("a JSON summary");
    assert_eq!(v["ok"], true);
    v
}

/// Waits until `cond` holds (polling), or panics after `secs`.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A learner for `arch` (random init, seeded) on the 32-px images of `dir`, in batches of `bs`.
pub fn learner_for(arch: finetune::model::Arch, dir: &Path, bs: usize) -> finetune::train::Learner {
    tch::manual_seed(0);
    let cfg = finetune::data::DataConfig {
        size: finetune::data::Size { w: 32, h: 32 },
        bs,
        ..Default::default()
    };
    let dls = finetune::data::DataLoaders::from_folder(dir, cfg, &finetune::data::Quiet).unwrap();
    let net =
        finetune::model::Network::classifier(arch, dls.classes.len() as i64, tch::Device::Cpu);
    finetune::train::Learner::new(net, dls, finetune::train::Recipe::default(), 42).unwrap()
}

/// [`learner_for`] resnet18.
pub fn tiny_learner(dir: &Path, bs: usize) -> finetune::train::Learner {
    learner_for(finetune::model::Arch::Resnet18, dir, bs)
}

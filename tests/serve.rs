//! `finetune serve` end to end: the real binary on an ephemeral port, a real HTTP client.

mod common;

use base64::Engine;
use common::bin;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// A tiny trained bundle named `pets` and its data, made once for the whole file.
fn fixture() -> &'static (PathBuf, PathBuf, PathBuf) {
    static F: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = common::binary_tempdir();
        let data = tmp.join("data");
        common::synthetic(&data, 8);
        let model = tmp.join("pets");
        let out = common::tiny_train(1)
            .args(["--arch", "resnet18", "--threads", "1", "--out"])
            .arg(&model)
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "train failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A saved evaluation goes into the bundle, for the model card.
        let out = bin()
            .args(["evaluate", "--save", "--json", "--device", "cpu"])
            .arg(&model)
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(model.join("evaluation.json").is_file() && model.join("confusion.svg").is_file());
        (tmp, data, model)
    })
}

fn images() -> Vec<PathBuf> {
    let (_, data, _) = fixture();
    let mut v: Vec<PathBuf> = ["red [a]", "blue é"]
        .iter()
        .flat_map(|c| (0..2).map(move |i| data.join(c).join(format!("img {i} (copy).png"))))
        .collect();
    // A JPEG too, so a second decoder is covered.
    let jpg = data.parent().unwrap().join("photo.jpg");
    if !jpg.exists() {
        image::open(&v[0]).unwrap().to_rgb8().save(&jpg).unwrap();
    }
    v.push(jpg);
    v
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let (_, _, model) = fixture();
        let mut child = bin()
            .arg("serve")
            .arg(model)
            .args(["--port", "0", "--device", "cpu", "--threads", "1"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Resp {
    status: u16,
    retry_after: Option<String>,
    headers: std::collections::HashMap<String, String>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.body))
            .to_string()
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    let mut r = agent().request(method, url);
    for (k, v) in headers {
        r = r.set(k, v);
    }
    let res = match body {
        Some(b) => r.send_bytes(b),
        None => r.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: transport error {e}"),
    };
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| Some((n.to_ascii_lowercase(), resp.header(&n)?.to_string())))
        .collect();
    Resp {
        status: resp.status(),
        retry_after: resp.header("retry-after").map(str::to_string),
        headers,
        body: resp.into_string().unwrap(),
    }
}

fn get(url: &str) -> Resp {
    send("GET", url, &[], None)
}

fn post(url: &str, ct: &str, body: &[u8]) -> Resp {
    send("POST", url, &[("Content-Type", ct)], Some(body))
}

fn multipart(files: &[&[u8]]) -> (String, Vec<u8>) {
    let boundary = "XyZfinetuneBoundary42";
    let mut body = Vec::new();
    for (i, f) in files.iter().enumerate() {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"f{i}.png\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(f);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// label → probability from `finetune predict --json` for every file.
fn reference(files: &[PathBuf]) -> Vec<Vec<(String, f64)>> {
    let (_, _, model) = fixture();
    common::predict_json(bin().arg("predict").arg(model).args(files).args([
        "--json",
        "--top-k",
        "10",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]))
}

/// serve's answer is predict's to 1e-5: the server batches requests as they come (other batch
/// shapes than predict's, so other oneDNN kernels and summation orders), and the logits agree to
/// rounding, not bit for bit; a probability (at most 1) then moves by less (worst printed; seen:
/// 6e-8 on an AVX-512 Xeon, natively and under ONEDNN_MAX_CPU_ISA=AVX2, 170× inside). A wrong
/// label, a missing softmax or another image's answer is off by far more.
fn assert_same(got: &Value, want: &[(String, f64)], what: &str) {
    let got = got.as_array().unwrap_or_else(|| panic!("{what}: {got}"));
    assert_eq!(got.len(), want.len(), "{what}: {got:?}");
    let mut worst = 0f64;
    for (g, (label, p)) in got.iter().zip(want) {
        assert_eq!(g["label"].as_str().unwrap(), label, "{what}");
        let s = g["score"].as_f64().unwrap();
        worst = worst.max((s - p).abs());
        assert!((s - p).abs() <= 1e-5, "{what}: {label} {s} vs predict {p}");
    }
    eprintln!("{what}: max |Δp| vs predict {worst:.1e}");
    let scores: Vec<f64> = got.iter().map(|g| g["score"].as_f64().unwrap()).collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "{what}: not sorted"
    );
}

#[test]
fn routes_and_parity_with_predict() {
    let s = Server::start(&[]);
    let r = get(&s.url("/ping"));
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"status": "Healthy"}))
    );
    let r = get(&s.url("/models"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["models"][0]["name"], "pets");
    let card = get(&s.url("/models/pets"));
    assert_eq!(card.status, 200);
    let c = card.json();
    assert_eq!(c["arch"], "resnet18");
    assert_eq!(c["classes"].as_array().unwrap().len(), 2);
    assert_eq!(c["input_size"]["width"], 32);
    assert!(c["resize"].is_string(), "{c}");
    assert!(c["training"]["bs"].is_number(), "{c}");
    assert!(c["valid_error_rate"].is_number(), "{c}");
    assert!(c["final_epoch"]["error_rate"].is_string(), "{c}");
    let saved: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().2.join("evaluation.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(c["test_accuracy"], saved["accuracy"], "{c}");
    assert_eq!(c["evaluation"]["total"], 16, "{c}");

    let files = images();
    let want = reference(&files);
    let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let url = s.url("/predictions/pets");
    for (i, b) in bytes.iter().enumerate() {
        let r = post(&url, "application/octet-stream", b);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_same(&r.json(), &want[i], "raw");
        let r = send("PUT", &url, &[], Some(b));
        assert_same(&r.json(), &want[i], "raw PUT, no content type");
        let r = post(&url, "image/png", b);
        assert_same(&r.json(), &want[i], "image/*");
        let (ct, body) = multipart(&[b]);
        let r = post(&url, &ct, &body);
        assert_same(&r.json(), &want[i], "multipart");
        let j = serde_json::json!({"inputs": b64(b)}).to_string();
        let r = post(&url, "application/json", j.as_bytes());
        assert_same(&r.json(), &want[i], "base64");
    }
    // Several images at once: one list per image, in order.
    let refs: Vec<&[u8]> = bytes.iter().map(|b| b.as_slice()).collect();
    let (ct, body) = multipart(&refs);
    let r = post(&url, &ct, &body);
    assert_eq!(r.status, 200, "{}", r.body);
    for (i, l) in r.json().as_array().unwrap().iter().enumerate() {
        assert_same(l, &want[i], "multipart, several");
    }
    let list: Vec<String> = bytes.iter().map(|b| b64(b)).collect();
    let j = serde_json::json!({ "inputs": list }).to_string();
    let r = post(&url, "application/json", j.as_bytes());
    let v = r.json();
    assert_eq!(v.as_array().unwrap().len(), bytes.len());
    for (i, l) in v.as_array().unwrap().iter().enumerate() {
        assert_same(l, &want[i], "base64 list");
    }
    // top_k: default 5 clamped to the 2 classes; top_k=1 gives one.
    let r = post(&format!("{url}?top_k=1"), "image/png", &bytes[0]);
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    assert_eq!(r.json()[0]["label"].as_str().unwrap(), want[0][0].0);
    let r = post(&format!("{url}?top_k=abc"), "image/png", &bytes[0]);
    assert_eq!(r.status, 400);

    // KServe v2 subset.
    assert_eq!(get(&s.url("/v2/health/live")).status, 200);
    assert_eq!(get(&s.url("/v2/health/ready")).status, 200);
    let m = get(&s.url("/v2/models/pets")).json();
    assert_eq!(m["outputs"][0]["shape"][1], 2);
    assert_eq!(get(&s.url("/v2/models/pets/ready")).json()["ready"], true);
    assert_eq!(get(&s.url("/v2/models/nope/ready")).status, 404);
    let j = serde_json::json!({"id": "r1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [b64(&bytes[0]), b64(&bytes[2])]}]});
    let r = post(
        &s.url("/v2/models/pets/infer"),
        "application/json",
        j.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["id"], "r1");
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([2, 2]));
    let data: Vec<f64> = v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let classes: Vec<String> = c["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    for (row, wi) in [(0usize, 0usize), (1, 2)] {
        for (label, p) in &want[wi] {
            let ci = classes.iter().position(|x| x == label).unwrap();
            assert!((data[row * 2 + ci] - p).abs() <= 1e-5);
        }
    }

    // /metrics: Prometheus text with the routes seen so far.
    let m = get(&s.url("/metrics"));
    assert_eq!(m.status, 200);
    assert!(m.body.contains("finetune_requests_total{method=\"POST\",route=\"/predictions/{model}\",status=\"200\"}"), "{}", m.body);
    assert!(m.body.contains("finetune_batch_size_count"));
    assert!(m.body.contains("finetune_queue_depth{model=\"pets\"} 0"));
    assert!(m.body.contains("finetune_request_duration_seconds_bucket"));
    // The value of the metric line that starts with `name` (labels included).
    let metric = |name: &str| -> f64 {
        m.body
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
            .trim()
            .parse()
            .unwrap()
    };
    let images = metric("finetune_images_total{model=\"pets\"} ");
    assert!(images >= 10.0, "{images} images counted");
    assert!(m.body.contains("finetune_images_per_second "));
    // Its forward passes ran in the inference plan (BatchNorm folded).
    let passes = metric("finetune_inference_plan_passes_total ");
    assert!(passes >= 1.0, "serve's passes did not run in the plan");
}

/// A PNG signature and an IHDR chunk claiming `w`×`h` pixels, with a correct CRC.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&w.to_be_bytes());
    chunk.extend_from_slice(&h.to_be_bytes());
    chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend_from_slice(&13u32.to_be_bytes());
    v.extend_from_slice(&chunk);
    v.extend_from_slice(&crc32(&chunk).to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(b"IDAT");
    v
}

fn truncated_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(256, 256, |x, y| {
        image::Rgb([x as u8, y as u8, (x ^ y) as u8])
    });
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Jpeg).unwrap();
    let b = buf.into_inner();
    b[..b.len() * 2 / 3].to_vec()
}

#[test]
fn bad_inputs_are_json_errors() {
    let s = Server::start(&[]);
    let url = s.url("/predictions/pets");
    let check = |r: Resp, status: u16, needle: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        let e = r.error();
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
    };
    check(post(&url, "image/png", b""), 400, "empty body");
    check(
        post(&url, "text/plain", b"hello"),
        400,
        "unsupported content type",
    );
    check(
        post(&url, "application/json", b"{\"inputs\": \"!!!notbase64\"}"),
        400,
        "base64",
    );
    check(
        post(&url, "application/json", b"{\"inputs\": "),
        400,
        "bad JSON",
    );
    check(post(&url, "application/json", b"{\"x\": 1}"), 400, "inputs");
    check(
        post(&url, "application/octet-stream", &vec![7u8; 30 << 20]),
        413,
        "larger than 20 MB",
    );
    check(
        post(
            &url,
            "application/octet-stream",
            b"<!DOCTYPE html><html><body>hi</body></html>",
        ),
        400,
        "not an image (content is HTML)",
    );
    check(
        post(&url, "image/jpeg", &truncated_jpeg()),
        400,
        "truncated",
    );
    check(
        post(&url, "image/png", &png_header(65000, 65000)),
        400,
        "65000x65000",
    );
    let (ct, body) = multipart(&[b"<html>no</html>"]);
    check(post(&url, &ct, &body), 400, "HTML");
    check(
        post(&s.url("/predictions/nope"), "image/png", b"x"),
        404,
        "no model named \"nope\"",
    );
    check(get(&s.url("/models/nope")), 404, "no model named");
    check(get(&s.url("/no/such/route")), 404, "no such route");
    check(
        send("DELETE", &s.url("/models/pets"), &[], None),
        405,
        "method not allowed",
    );
    // The server is still healthy after all of that.
    assert_eq!(get(&s.url("/ping")).status, 200);
}

#[test]
fn token_is_required_when_set() {
    let s = Server::start(&["--token", "s3cret"]);
    let png = std::fs::read(&images()[0]).unwrap();
    let url = s.url("/predictions/pets");
    let r = post(&url, "image/png", &png);
    assert_eq!(r.status, 401);
    assert!(r.error().contains("Bearer"));
    let r = send(
        "POST",
        &url,
        &[
            ("Content-Type", "image/png"),
            ("Authorization", "Bearer wrong"),
        ],
        Some(&png),
    );
    assert_eq!(r.status, 401);
    assert_eq!(get(&s.url("/models")).status, 401);
    let r = send(
        "POST",
        &url,
        &[
            ("Content-Type", "image/png"),
            ("Authorization", "Bearer s3cret"),
        ],
        Some(&png),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Health probes and the page (which asks for the token) stay open.
    assert_eq!(get(&s.url("/")).status, 200);
    assert_eq!(get(&s.url("/ping")).status, 200);
    assert_eq!(get(&s.url("/v2/health/live")).status, 200);
}

#[test]
fn load_is_batched_and_overload_is_503() {
    // Two workers (copies of the network) on one queue, as serve runs by default on two cores.
    let s = Server::start(&[
        "--max-batch",
        "16",
        "--max-batch-delay-ms",
        "20",
        "--queue",
        "12",
        "--workers",
        "2",
    ]);
    let files = images();
    let want = reference(&files);
    let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let url = s.url("/predictions/pets");
    let (mut ok, mut busy) = (0, 0);
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|t| {
                let (url, bytes, want) = (&url, &bytes, &want);
                sc.spawn(move || {
                    let (mut ok, mut busy) = (0, 0);
                    for i in 0..25 {
                        let k = (t + i) % bytes.len();
                        let r = post(url, "image/png", &bytes[k]);
                        match r.status {
                            200 => {
                                assert_same(&r.json(), &want[k], "under load");
                                ok += 1;
                            }
                            503 => {
                                assert!(r.retry_after.is_some(), "503 without Retry-After");
                                busy += 1;
                            }
                            s => panic!("status {s}: {}", r.body),
                        }
                    }
                    (ok, busy)
                })
            })
            .collect();
        for h in hs {
            let (o, b) = h.join().unwrap();
            ok += o;
            busy += b;
        }
    });
    assert_eq!(ok + busy, 400);
    assert!(ok > 0);
    let card = get(&s.url("/models/pets")).json();
    let largest = card["serving"]["largest_batch"].as_u64().unwrap();
    assert!(largest > 1, "no batch larger than 1: {}", card["serving"]);
    assert!(largest <= 16);
    assert_eq!(
        card["serving"]["images"].as_u64().unwrap(),
        ok as u64,
        "{}",
        card["serving"]
    );
    // Both workers ran batches: a request arriving while one computed started on the other.
    let per: Vec<u64> = card["serving"]["worker_batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect();
    assert_eq!(card["serving"]["workers"], 2, "{}", card["serving"]);
    assert!(per.iter().all(|&b| b > 0), "{}", card["serving"]);
    assert_eq!(
        per.iter().sum::<u64>(),
        card["serving"]["batches"].as_u64().unwrap()
    );
    eprintln!(
        "load: {ok} answered, {busy} told to retry, serving {}",
        card["serving"]
    );
}

/// Waits until `n` images are queued in `model` (the batch is still being gathered), so a test
/// acts on the server's state instead of on how long a request takes to arrive.
fn wait_queued(s: &Server, model: &str, n: u64) {
    let t = std::time::Instant::now();
    loop {
        let card = get(&s.url(&format!("/models/{model}"))).json();
        if card["serving"]["queued"] == n {
            return;
        }
        // A hang guard only: queuing takes milliseconds.
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "never saw {n} queued: {card}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A client that sends a prediction request's headers and a little of its body, then nothing: a
/// request on its way, for which the worker holds a batch open (up to the batching delay).
/// Returns once the server counts it.
fn slow_client(s: &Server) -> std::net::TcpStream {
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(
        b"POST /predictions/pets HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n\
          Content-Length: 100000\r\n\r\n\x89PNG",
    )
    .unwrap();
    let t = std::time::Instant::now();
    while get(&s.url("/models/pets")).json()["serving"]["arriving"] != 1 {
        assert!(t.elapsed() < Duration::from_secs(120), "never counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    c
}

#[test]
fn a_lone_request_does_not_wait_for_a_batch() {
    // Nothing else on its way: the batching delay (an hour here) must not hold it. Twenty in a
    // row, as the worker may take a request's image before the request counts itself arrived (a
    // wake-up ends that wait; CI once saw a request held for the delay).
    let s = Server::start(&["--max-batch-delay-ms", "3600000"]);
    let png = std::fs::read(&images()[0]).unwrap();
    for _ in 0..20 {
        let r = post(&s.url("/predictions/pets"), "image/png", &png);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let card = get(&s.url("/models/pets")).json();
    assert_eq!(card["serving"]["batches"], 20, "{}", card["serving"]);
    assert_eq!(card["serving"]["arriving"], 0, "{}", card["serving"]);
}

#[test]
fn full_queue_answers_503_with_retry_after() {
    // Two images wait in a batch that is still being gathered (held open by a request still
    // arriving); a third finds the queue full. The batching delay only has to outlast the polling
    // that sees them queued.
    let s = Server::start(&[
        "--max-batch",
        "64",
        "--max-batch-delay-ms",
        "5000",
        "--queue",
        "2",
    ]);
    let png = std::fs::read(&images()[0]).unwrap();
    let url = s.url("/predictions/pets");
    let slow = slow_client(&s);
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..2)
            .map(|_| sc.spawn(|| post(&url, "image/png", &png)))
            .collect();
        wait_queued(&s, "pets", 2);
        let r = post(&url, "image/png", &png);
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.retry_after.as_deref(), Some("1"));
        assert!(r.error().contains("queue is full"));
        for h in hs {
            let r = h.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
        }
    });
    let card = get(&s.url("/models/pets")).json();
    assert_eq!(card["serving"]["largest_batch"], 2, "{}", card["serving"]);
    assert_eq!(card["serving"]["queued"], 0);
    drop(slow);
}

#[test]
fn sigint_lets_requests_in_flight_finish() {
    // A long batching delay keeps the requests inside the server when the signal arrives.
    // The slow client's body deadline (3 s) ends its request, so the shutdown does not wait the
    // default 30 s for it.
    let mut s = Server::start(&[
        "--max-batch",
        "64",
        "--max-batch-delay-ms",
        "5000",
        "--body-timeout-s",
        "3",
    ]);
    let png = std::fs::read(&images()[0]).unwrap();
    let url = s.url("/predictions/pets");
    // Holds the batch open (see `slow_client`).
    let _slow = slow_client(&s);
    let results = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| sc.spawn(|| post(&url, "image/png", &png)))
            .collect();
        wait_queued(&s, "pets", 4);
        let pid = s.child.id() as i32;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for r in &results {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json().as_array().unwrap().len(), 2);
    }
    let status = s.child.wait().unwrap();
    assert!(status.success(), "server exit: {status:?}");
    // No new connections after shutdown.
    assert!(agent().get(&s.url("/ping")).call().is_err());
}

/// Normalised `[3, H, W]` floats of `file`, made with the library's own preprocessing: what a KServe
/// v2 client sends as an `FP32` input.
fn fp32_of(file: &std::path::Path) -> Vec<f32> {
    let (_, _, model) = fixture();
    let info = finetune::bundle::read_info(model).unwrap();
    let img = image::open(file).unwrap().to_rgb8();
    let img = finetune::infer::predict::preprocess(&img, &info);
    let (w, h) = img.dimensions();
    let (mean, std) = (info.normalization.mean, info.normalization.std);
    let mut out = vec![0f32; (3 * w * h) as usize];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            let v = (p[c] as f64 / 255.0 - mean[c]) / std[c];
            out[(c as u32 * h * w + y * w + x) as usize] = v as f32;
        }
    }
    out
}

#[test]
fn kserve_fp32_tensors_and_triton_classification() {
    let s = Server::start(&[]);
    let files = images();
    let want = reference(&files);
    let url = s.url("/v2/models/pets/infer");
    let meta = get(&s.url("/v2/models/pets")).json();
    assert_eq!(
        meta["inputs"][1],
        serde_json::json!({"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]})
    );
    let classes: Vec<String> = get(&s.url("/models/pets")).json()["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let check = |v: &Value, rows: &[usize], what: &str| {
        let data = v["outputs"][0]["data"].as_array().unwrap();
        assert_eq!(
            v["outputs"][0]["shape"],
            serde_json::json!([rows.len(), 2]),
            "{what}"
        );
        for (row, &wi) in rows.iter().enumerate() {
            for (label, p) in &want[wi] {
                let ci = classes.iter().position(|x| x == label).unwrap();
                let got = data[row * 2 + ci].as_f64().unwrap();
                assert!(
                    (got - p).abs() <= 1e-5,
                    "{what}: {label} {got} vs predict {p}"
                );
            }
        }
    };
    // Flat data, two images: the same probabilities as `predict` on the files.
    let flat: Vec<f32> = [fp32_of(&files[0]), fp32_of(&files[2])].concat();
    let j = serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 32, 32], "data": flat}]});
    let r = post(&url, "application/json", j.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers.contains_key("x-compute-time"), "{:?}", r.headers);
    check(&r.json(), &[0, 2], "FP32 flat");
    // Nested data ([N][3][H][W]) is row-major too.
    let one = fp32_of(&files[3]);
    let nested: Vec<Vec<Vec<f32>>> = one
        .chunks(32 * 32)
        .map(|ch| ch.chunks(32).map(|r| r.to_vec()).collect())
        .collect();
    let j = serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [nested]}]});
    let r = post(&url, "application/json", j.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    check(&r.json(), &[3], "FP32 nested");

    // Triton's classification extension: top K as "score:index:label" strings.
    let j = serde_json::json!({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                    "data": [b64(&std::fs::read(&files[0]).unwrap()), b64(&std::fs::read(&files[2]).unwrap())]}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}]});
    let r = post(&url, "application/json", j.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["outputs"][0]["datatype"], "BYTES");
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([2, 1]));
    for (row, wi) in [(0usize, 0usize), (1, 2)] {
        let s = v["outputs"][0]["data"][row].as_str().unwrap();
        let (label, p) = &want[wi][0];
        let idx = classes.iter().position(|x| x == label).unwrap();
        let (score, rest) = s.split_once(':').unwrap();
        assert_eq!(rest, format!("{idx}:{label}"), "{s}");
        assert!((score.parse::<f64>().unwrap() - p).abs() <= 1e-5, "{s}");
    }
    // Bad tensors are 400s that say what fits.
    for (j, needle) in [
        (
            serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 16, 16], "data": [0.0]}]}),
            "[N, 3, 32, 32]",
        ),
        (
            serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0, 1.0]}]}),
            "needs 3072",
        ),
        (
            serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": ["x"]}]}),
            "only numbers",
        ),
        (
            serde_json::json!({"inputs": [{"name": "input", "datatype": "INT8", "shape": [1], "data": [1]}]}),
            "not accepted",
        ),
        (
            serde_json::json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}],
                            "outputs": [{"name": "probabilities", "parameters": {"classification": -2}}]}),
            "positive integer",
        ),
    ] {
        let r = post(&url, "application/json", j.to_string().as_bytes());
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.error().contains(needle), "{} lacks {needle}", r.body);
    }
}

#[test]
fn page_confusion_svg_and_cors() {
    let s = Server::start(&["--cors", "https://app.example.com"]);
    let page = get(&s.url("/"));
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"].starts_with("text/html"));
    assert!(page.body.contains("<title>finetune</title>"));
    // One self-contained file: nothing fetched from elsewhere.
    for bad in ["<script src", "<link ", "http://", "https://"] {
        assert!(!page.body.contains(bad), "the page refers to {bad}");
    }
    let card = get(&s.url("/models/pets")).json();
    assert_eq!(card["confusion_svg"], "/models/pets/confusion.svg");
    assert_eq!(
        card["data"]["source"], "data",
        "only the folder's name is shown"
    );
    let svg = get(&s.url("/models/pets/confusion.svg"));
    assert_eq!(svg.status, 200);
    assert_eq!(svg.headers["content-type"], "image/svg+xml");
    assert!(svg.headers["content-security-policy"].contains("default-src 'none'"));
    assert!(svg.body.contains("<svg"));
    assert_eq!(get(&s.url("/models/nope/confusion.svg")).status, 404);

    // CORS: the allowed origin gets the headers and its preflight is answered; others do not.
    let pre = send(
        "OPTIONS",
        &s.url("/predictions/pets"),
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "content-type,authorization",
            ),
        ],
        None,
    );
    assert_eq!(pre.status, 200, "{}", pre.body);
    assert_eq!(
        pre.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    let png = std::fs::read(&images()[0]).unwrap();
    let ok = send(
        "POST",
        &s.url("/predictions/pets"),
        &[
            ("Content-Type", "image/png"),
            ("Origin", "https://app.example.com"),
        ],
        Some(&png),
    );
    assert_eq!(
        ok.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(ok.headers["access-control-expose-headers"].contains("x-compute-time"));
    let other = send(
        "POST",
        &s.url("/predictions/pets"),
        &[
            ("Content-Type", "image/png"),
            ("Origin", "https://evil.example.net"),
        ],
        Some(&png),
    );
    // (A fixed origin is answered as is; the browser compares it with its own and refuses.)
    assert_ne!(
        other
            .headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("https://evil.example.net")
    );
    // Without --cors, no CORS headers at all.
    let plain = Server::start(&[]);
    let r = send(
        "POST",
        &plain.url("/predictions/pets"),
        &[
            ("Content-Type", "image/png"),
            ("Origin", "https://app.example.com"),
        ],
        Some(&png),
    );
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    // A bad origin is refused at start.
    let out = bin()
        .args(["serve", "--port", "0", "--cors", "app.example.com/x"])
        .arg(&fixture().2)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an origin"));
}

/// A client that stops sending mid-body gets 408 instead of holding the connection forever.
#[test]
fn stalled_body_times_out() {
    use std::io::{Read, Write};
    let s = Server::start(&["--body-timeout-s", "2"]);
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(b"POST /predictions/pets HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n12345")
        .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let t = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(t.elapsed() >= Duration::from_secs(2), "answered too early");
}

/// Clients that connect and then send nothing, or only part of their headers, are cut off after
/// `--header-timeout-s` (nginx's client_header_timeout), and while 200 of them hang on, everyone
/// else is answered.
#[test]
fn silent_and_slow_clients_are_cut_off_after_the_header_timeout() {
    use std::io::{Read, Write};
    let s = Server::start(&["--header-timeout-s", "3"]);
    let addr = s.base.trim_start_matches("http://").to_string();
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            if i % 2 == 1 {
                c.write_all(b"POST /predictions/pets HTTP/1.1\r\nHost: x\r\nContent-Ty")
                    .unwrap();
            }
            c
        })
        .collect();
    let t = std::time::Instant::now();
    let png = std::fs::read(&images()[0]).unwrap();
    for _ in 0..3 {
        assert_eq!(get(&s.url("/ping")).status, 200);
        let r = post(&s.url("/predictions/pets"), "image/png", &png);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let answered_while_held = t.elapsed();
    for (i, mut c) in idle.into_iter().enumerate() {
        // A hang guard far beyond the 3 s deadline: a connection never closed fails here.
        c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut buf = [0u8; 512];
        match c.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                let head = String::from_utf8_lossy(&buf[..n]);
                assert!(head.starts_with("HTTP/1.1 408"), "connection {i}: {head}");
            }
            Err(e) => assert!(
                e.kind() == std::io::ErrorKind::ConnectionReset,
                "connection {i} was not closed: {e}"
            ),
        }
    }
    println!(
        "6 requests answered in {answered_while_held:?} beside 200 silent or slow connections, \
         all 200 closed after {:?}",
        t.elapsed()
    );
    assert_eq!(get(&s.url("/ping")).status, 200);
}

/// The web page in a real headless Chromium (Debian's `chromium`, Playwright for Python from the
/// venv): every input (keyboard-opened file chooser, drop, paste, a large photo downscaled in the
/// browser, the fake webcam) shows exactly what the API answers for the bytes the page sent.
#[test]
fn browser_page_matches_the_api() {
    let Some(chromium) = common::browser() else {
        return;
    };
    let py = common::python();
    // Half the validation images' scores as the threshold, so that some of these images are
    // "unknown" and the page's notice is checked both ways.
    let s = Server::start(&["--unknown", "0.5"]);
    let files = images();
    let mut cmd = std::process::Command::new(&py);
    cmd.arg(common::repo().join("tests/browser/page_test.py"))
        .arg(&s.base)
        .arg("pets")
        .args(&files)
        .env("FINETUNE_CHROMIUM", &chromium);
    if let Some(shot) = std::env::var_os("FINETUNE_SCREENSHOT") {
        cmd.arg("--screenshot").arg(shot);
    }
    let v = common::browser_script(&mut cmd);
    assert!(v["checked_requests"].as_u64().unwrap() >= 3);
    assert!(v["unknown_cards"].as_u64().unwrap() >= 1, "{v}");
}

/// The Python client examples of docs/serving.md (requests; TorchServe, Hugging Face and KServe v2
/// shapes) run as written against a live server, with the page's file and model names.
#[test]
fn readme_python_examples_run() {
    let py = common::python();
    let has_requests = std::process::Command::new(&py)
        .args(["-c", "import requests"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_requests {
        return common::skip(
            "no requests in the venv",
            "run `make test`: scripts/setup-venv.sh installs it",
        );
    }
    let readme = std::fs::read_to_string(common::repo().join("docs/serving.md")).unwrap();
    let serve = &readme[readme.find("## Serve").unwrap()..];
    let start = serve.find("```python\n").unwrap() + "```python\n".len();
    let code = &serve[start..start + serve[start..].find("```").unwrap()];
    assert!(code.contains("/v2/models/pets/infer") && code.contains("classification"));
    let s = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let files = images();
    std::fs::copy(&files[4], dir.path().join("cat.jpg")).unwrap();
    std::fs::copy(&files[2], dir.path().join("dog.png")).unwrap();
    let code = code.replace("http://127.0.0.1:8080", &s.base);
    let out = std::process::Command::new(&py)
        .args(["-c", &code])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Raw, multipart (two lists), base64 with top_k=2, and the classification strings.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].starts_with("[{'label': "), "{stdout}");
    assert!(lines[1].starts_with("[[{'label': "), "{stdout}");
    assert_eq!(lines[2].matches("'label'").count(), 2, "{stdout}");
    assert!(lines[3].starts_with("['0."), "{stdout}");
}

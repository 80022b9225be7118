//! Network faults for `finetune download`, against servers on 127.0.0.1 that misbehave on purpose
//! (raw `TcpListener` threads): a connection reset mid-body, Content-Length lies, a gzip bomb,
//! endless redirects across hosts, a DNS failure, a TLS handshake that never comes.
//!
//! Each case goes through `download::run` with `Source::Lists` (one also through the binary with
//! `--urls-from`) and checks that the per-reason failure counts are exactly right, that the good
//! images of the same run are kept, and that nothing half-written is left on disk.

mod common;
use common::{bin, run};
use finetune::download::fetch::{Fetcher, MAX_REDIRECTS};
use finetune::download::manifest::Row;
use finetune::download::{self, ClassSummary, DownloadConfig, NoProgress, Source};
use finetune::search::SearchResult;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The largest single allocation, to show a decompression bomb stays within the size cap.

struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LARGEST.fetch_max(n, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// Images and misbehaving servers.

/// A distinct photo-like JPEG per seed (random 8×8 blocks: far apart in perceptual hash).
fn photo(seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005) ^ 0x9e37_79b9_7f4a_7c15;
    let mut grid = [[0u8; 8]; 8];
    for v in grid.iter_mut().flatten() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *v = (state >> 56) as u8;
    }
    let img = image::RgbImage::from_fn(160, 120, |x, y| {
        let v = grid[(y * 8 / 120) as usize][(x * 8 / 160) as usize];
        image::Rgb([v, v.wrapping_add(80), 255 - v])
    });
    let mut out = Vec::new();
    img.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
        &mut out, 90,
    ))
    .unwrap();
    out
}

/// Starts a server on 127.0.0.1 that hands each connection (after reading the request head) to
/// `handler(path, stream)` on its own thread. Returns the port and a request counter.
fn server(handler: impl Fn(&str, TcpStream) + Send + Sync + 'static) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let handler = handler.clone();
            let hits = h.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut first = String::new();
                if r.read_line(&mut first).is_err() {
                    return;
                }
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                handler(&path, s);
            });
        }
    });
    (port, hits)
}

/// A server that accepts connections and never says a word (nor reads), for `secs`.
fn silent_server(secs: u64) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            std::thread::spawn(move || {
                let _keep = s;
                std::thread::sleep(Duration::from_secs(secs));
            });
        }
    });
    port
}

fn head(s: &mut TcpStream, status: &str, headers: &[(&str, String)]) {
    let mut h = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    let _ = s.write_all(h.as_bytes());
}

fn send(mut s: TcpStream, body: &[u8], headers: &[(&str, String)]) {
    let mut hs = vec![("Content-Length", body.len().to_string())];
    hs.extend(headers.iter().cloned());
    head(&mut s, "200 OK", &hs);
    let _ = s.write_all(body);
}

/// Closes with an RST instead of a FIN (SO_LINGER 0).
fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// Serves `/good<N>.jpg` (a distinct photo each) and hands every other path to `faults`.
fn with_good_images(
    faults: impl Fn(&str, TcpStream) + Send + Sync + 'static,
) -> (u16, Arc<AtomicUsize>) {
    server(move |path, s| {
        if let Some(n) = path
            .strip_prefix("/good")
            .and_then(|p| p.strip_suffix(".jpg"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            return send(s, &photo(n), &[("Content-Type", "image/jpeg".into())]);
        }
        faults(path, s)
    })
}

// ---------------------------------------------------------------------------------------------
// Running a download and checking what it left behind.

struct Outcome {
    _dir: tempfile::TempDir,
    summary: ClassSummary,
    rows: Vec<Row>,
    secs: f64,
}

impl Outcome {
    fn reason(&self, url_end: &str) -> &str {
        &self
            .rows
            .iter()
            .find(|r| r.image_url.ends_with(url_end))
            .unwrap_or_else(|| panic!("{url_end} not in the manifest"))
            .reason
    }
}

fn config(out: &Path, timeout: Duration) -> DownloadConfig {
    DownloadConfig {
        out: out.to_path_buf(),
        per_class: 100,
        max_size: 200,
        test_per_class: 1,
        concurrency: 4,
        timeout,
        ..Default::default()
    }
}

/// Downloads `urls` for class `cats` through the library, then checks disk and manifest.
fn download(urls: &[String], timeout: Duration) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let mut lists = BTreeMap::new();
    lists.insert(
        "cats".to_string(),
        urls.iter()
            .map(|u| SearchResult {
                image: u.clone(),
                title: "t".into(),
                url: "http://page.example/".into(),
                ..Default::default()
            })
            .collect::<Vec<_>>(),
    );
    let t = Instant::now();
    let mut s = download::run(
        &["cats".to_string()],
        Source::Lists(lists),
        &config(&out, timeout),
        &NoProgress,
    )
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let rows = finetune::download::manifest::read(&out.join("manifest.csv")).unwrap();
    let summary = s.remove(0);
    check_disk(&out, &rows, &summary, urls.len());
    Outcome {
        _dir: dir,
        summary,
        rows,
        secs,
    }
}

const COLUMNS: [&str; 6] = [
    "timeout",
    "http",
    "not_image",
    "too_large",
    "decode",
    "network",
];

/// No `.part` or hidden file; every file under train/ and test/ is a kept manifest row and
/// decodes to that row's size; every kept row's file exists; failed rows have a reason under one
/// of the six columns and no file; the summary's counts are the manifest's.
fn check_disk(out: &Path, rows: &[Row], s: &ClassSummary, urls: usize) {
    fn walk(d: &Path, files: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, files)
            } else {
                files.push(p)
            }
        }
    }
    let mut files = Vec::new();
    walk(out, &mut files);
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(
            !name.ends_with(".part") && !name.starts_with('.'),
            "half-written file left: {}",
            f.display()
        );
    }
    let mut on_disk: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(out).unwrap().to_string_lossy().into_owned())
        .filter(|f| f.starts_with("train/") || f.starts_with("test/"))
        .collect();
    on_disk.sort();
    let mut kept: Vec<String> = rows
        .iter()
        .filter(|r| r.is_kept())
        .map(|r| r.file.clone())
        .collect();
    kept.sort();
    assert_eq!(on_disk, kept, "files on disk vs kept manifest rows");
    for r in rows.iter().filter(|r| r.is_kept()) {
        let img = finetune::data::decode::decode_file(
            &out.join(&r.file),
            finetune::data::files::DEFAULT_MAX_FILE_BYTES,
        )
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", r.file));
        assert_eq!(img.dimensions(), (r.width, r.height), "{}", r.file);
        assert!(r.file.starts_with(&format!("{}/cats/", r.status)), "{r:?}");
        assert_eq!(r.sha256.len(), 64, "{r:?}");
    }
    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.status == "failed") {
        assert!(r.file.is_empty(), "{r:?}");
        let col = r.reason.split(':').next().unwrap();
        assert!(COLUMNS.contains(&col), "reason outside the columns: {r:?}");
        *failed.entry(col.to_string()).or_default() += 1;
    }
    assert_eq!(s.failed, failed, "summary vs manifest failures");
    assert_eq!(rows.len(), urls, "one manifest row per URL");
    assert_eq!(s.found, urls);
    let count = |st: &str| rows.iter().filter(|r| r.status == st).count();
    assert_eq!((s.train, s.test), (count("train"), count("test")));
}

/// `{column: n}` for the failure counts a case expects (others zero).
fn counts(c: &[(&str, usize)]) -> BTreeMap<String, usize> {
    c.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

fn kept(o: &Outcome) -> usize {
    o.summary.train + o.summary.test
}

// ---------------------------------------------------------------------------------------------
// The faults.

#[test]
fn connection_reset_in_the_middle_of_the_body() {
    let body = photo(100);
    let (port, _) = with_good_images(move |path, mut s| match path {
        "/reset.jpg" => {
            head(
                &mut s,
                "200 OK",
                &[("Content-Length", body.len().to_string())],
            );
            let _ = s.write_all(&body[..body.len() / 2]);
            let _ = s.flush();
            std::thread::sleep(Duration::from_millis(100));
            reset(s);
        }
        _ => head(&mut s, "404 Not Found", &[("Content-Length", "0".into())]),
    });
    let b = format!("http://127.0.0.1:{port}");
    let o = download(
        &[
            format!("{b}/good1.jpg"),
            format!("{b}/reset.jpg"),
            format!("{b}/good2.jpg"),
        ],
        Duration::from_secs(5),
    );
    assert_eq!(o.summary.failed, counts(&[("network", 1)]));
    let r = o.reason("/reset.jpg");
    assert!(r.to_lowercase().contains("reset"), "{r}");
    assert_eq!(kept(&o), 2);
}

#[test]
fn content_length_that_lies() {
    let body = photo(200);
    let (port, _) = with_good_images(move |path, mut s| match path {
        // Announces 1000 bytes more than it sends, then closes.
        "/short.jpg" => {
            head(
                &mut s,
                "200 OK",
                &[("Content-Length", (body.len() + 1000).to_string())],
            );
            let _ = s.write_all(&body);
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        // Announces half the image and sends all of it: the client sees half a JPEG.
        "/long.jpg" => {
            head(
                &mut s,
                "200 OK",
                &[("Content-Length", (body.len() / 2).to_string())],
            );
            let _ = s.write_all(&body);
        }
        // Announces the whole image, then sends junk after it: the junk is never read.
        "/junk-after.jpg" => {
            let img = photo(201);
            head(
                &mut s,
                "200 OK",
                &[("Content-Length", img.len().to_string())],
            );
            let _ = s.write_all(&img);
            let _ = s.write_all(&[0xAB; 3000]);
        }
        _ => head(&mut s, "404 Not Found", &[("Content-Length", "0".into())]),
    });
    let b = format!("http://127.0.0.1:{port}");
    let o = download(
        &[
            format!("{b}/good3.jpg"),
            format!("{b}/short.jpg"),
            format!("{b}/long.jpg"),
            format!("{b}/junk-after.jpg"),
            format!("{b}/good4.jpg"),
        ],
        Duration::from_secs(5),
    );
    assert_eq!(
        o.summary.failed,
        counts(&[("network", 1), ("decode", 1)]),
        "{:#?}",
        o.rows
    );
    let r = o.reason("/short.jpg");
    assert!(
        r.starts_with("network") && r.contains("closed before"),
        "{r}"
    );
    assert!(o.reason("/long.jpg").starts_with("decode"));
    assert_eq!(kept(&o), 3, "good3, good4 and junk-after");
}

/// gzip of 200 MB of zeros (about 200 KB), made once.
fn gzip_bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..200 {
            e.write_all(&zeros).unwrap();
        }
        e.finish().unwrap()
    })
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn gzip_bomb_is_cut_at_the_size_cap() {
    let bomb = gzip_bomb();
    assert!(bomb.len() < 400_000, "{}", bomb.len());
    let good_gz = gzip(&photo(300));
    let (port, _) = with_good_images(move |path, s| {
        let gz = [
            ("Content-Encoding", "gzip".to_string()),
            ("Content-Type", "image/jpeg".to_string()),
        ];
        match path {
            "/bomb.jpg" => send(s, bomb, &gz),
            "/gzipped.jpg" => send(s, &good_gz, &gz),
            _ => send(s, b"", &[]),
        }
    });
    let b = format!("http://127.0.0.1:{port}");
    LARGEST.store(0, Ordering::SeqCst);
    let o = download(
        &[
            format!("{b}/good5.jpg"),
            format!("{b}/bomb.jpg"),
            format!("{b}/gzipped.jpg"),
            format!("{b}/good6.jpg"),
        ],
        Duration::from_secs(8),
    );
    let largest = LARGEST.load(Ordering::SeqCst);
    assert_eq!(o.summary.failed, counts(&[("too_large", 1)]));
    assert!(o.reason("/bomb.jpg").starts_with("too_large"));
    assert_eq!(kept(&o), 3, "a legitimately gzipped image is kept");
    // The default cap is 20 MB: reading stops there (a Vec doubling to 32 MB at most), far from
    // the 200 MB the body expands to.
    let cap = DownloadConfig::default().max_bytes as usize;
    println!(
        "gzip bomb: {} compressed bytes, largest single allocation {:.1} MB, {:.2} s",
        bomb.len(),
        largest as f64 / 1e6,
        o.secs
    );
    assert!(largest <= 2 * cap, "largest allocation {largest} bytes");
}

#[test]
fn endless_redirect_chain_across_hosts() {
    // Three servers; hop n goes to server n % 3, alternately named 127.0.0.1 and localhost.
    let ports: Arc<OnceLock<Vec<u16>>> = Arc::new(OnceLock::new());
    let hops = Arc::new(AtomicUsize::new(0));
    let mut mine = Vec::new();
    for _ in 0..3 {
        let (ports, hops) = (ports.clone(), hops.clone());
        let (p, _) = with_good_images(move |path, mut s| {
            let Some(n) = path
                .strip_prefix("/hop/")
                .and_then(|n| n.parse::<usize>().ok())
            else {
                return head(&mut s, "404 Not Found", &[("Content-Length", "0".into())]);
            };
            hops.fetch_add(1, Ordering::SeqCst);
            let ps = ports.get().unwrap();
            let host = if n % 2 == 0 { "localhost" } else { "127.0.0.1" };
            let to = format!("http://{host}:{}/hop/{}", ps[(n + 1) % 3], n + 1);
            head(
                &mut s,
                "302 Found",
                &[("Location", to), ("Content-Length", "0".into())],
            );
        });
        mine.push(p);
    }
    ports.set(mine.clone()).unwrap();
    let o = download(
        &[
            format!("http://127.0.0.1:{}/good7.jpg", mine[0]),
            format!("http://127.0.0.1:{}/hop/1", mine[0]),
            format!("http://localhost:{}/good8.jpg", mine[1]),
        ],
        Duration::from_secs(5),
    );
    assert_eq!(o.summary.failed, counts(&[("network", 1)]));
    let r = o.reason("/hop/1");
    assert!(r.contains("too many redirects"), "{r}");
    let n = hops.load(Ordering::SeqCst);
    assert!(
        n <= MAX_REDIRECTS as usize + 1,
        "followed {n} hops, limit {MAX_REDIRECTS}"
    );
    assert_eq!(kept(&o), 2);
}

#[test]
fn dns_failure_fails_fast() {
    // How fast this machine's resolver says no is the machine's business (no network at all may mean
    // a nameserver that never answers); what finetune promises is that a lookup never outlasts the
    // request timeout, and that the failure is named as DNS.
    let timeout = Duration::from_secs(3);
    let f = Fetcher::new(timeout, 1 << 20);
    let t = Instant::now();
    let e = f.fetch("http://no-such-host.invalid/x.jpg").unwrap_err();
    let dns = t.elapsed();
    println!("DNS failure for a .invalid host: {dns:?} ({e})");
    assert!(["network", "timeout"].contains(&e.column()), "{e}");
    assert!(e.to_string().contains("DNS"), "{e}");
    // A hang guard: the deadline plus generous slack for a loaded machine.
    assert!(dns < timeout + Duration::from_secs(20), "{dns:?}");

    let (port, _) = with_good_images(|_, s| send(s, b"", &[]));
    let o = download(
        &[
            format!("http://127.0.0.1:{port}/good9.jpg"),
            "http://no-such-host.invalid/a.jpg".into(),
            "http://also-missing.invalid:8080/b.jpg".into(),
            format!("http://127.0.0.1:{port}/good10.jpg"),
        ],
        timeout,
    );
    let dns_failures: usize = ["network", "timeout"]
        .iter()
        .filter_map(|c| o.summary.failed.get(*c))
        .sum();
    assert_eq!(dns_failures, 2, "{:?}", o.summary.failed);
    assert!(o.reason("/a.jpg").contains("DNS"), "{}", o.reason("/a.jpg"));
    assert!(o.reason("/b.jpg").contains("DNS"), "{}", o.reason("/b.jpg"));
    assert_eq!(kept(&o), 2);
    assert!(o.secs < 30.0, "{} s", o.secs);

    // Reasons come from the error, not from words in the URL.
    let o = download(
        &[
            "http://timeout.invalid/redirect/timeout.jpg".into(),
            "http://127.0.0.1:1/timeout-after-redirect.jpg".into(),
        ],
        timeout,
    );
    assert_eq!(o.summary.failed, counts(&[("network", 2)]));
    let r = o.reason("/redirect/timeout.jpg");
    assert!(
        r.starts_with("network: ") && r.contains("DNS lookup failed"),
        "{r}"
    );
    let r = o.reason("/timeout-after-redirect.jpg");
    assert!(
        r.starts_with("network: ") && r.contains("connection failed"),
        "{r}"
    );
    assert!(o.secs < 30.0, "{} s", o.secs);
}

#[test]
fn tls_handshake_that_never_comes_times_out() {
    let silent = silent_server(30);
    // A server that answers the TLS ClientHello in plain HTTP: a network error, not a hang.
    let (plain, _) = server(|_, mut s| {
        head(&mut s, "400 Bad Request", &[("Content-Length", "0".into())]);
    });
    let drip = photo(500);
    let (port, _) = with_good_images(move |path, mut s| match path {
        // Headers, then one byte every 200 ms: cut off by the whole-request timeout.
        "/drip.jpg" => {
            head(
                &mut s,
                "200 OK",
                &[("Content-Length", drip.len().to_string())],
            );
            for b in &drip {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        _ => send(s, b"", &[]),
    });
    let timeout = Duration::from_millis(1500);
    let o = download(
        &[
            format!("http://127.0.0.1:{port}/good11.jpg"),
            format!("https://127.0.0.1:{silent}/x.jpg"),
            format!("https://127.0.0.1:{plain}/y.jpg"),
            format!("http://127.0.0.1:{silent}/plain-silent.jpg"),
            format!("http://127.0.0.1:{port}/drip.jpg"),
            format!("http://127.0.0.1:{port}/good12.jpg"),
        ],
        timeout,
    );
    assert_eq!(
        o.summary.failed,
        counts(&[("timeout", 3), ("network", 1)]),
        "{:#?}",
        o.rows
    );
    assert!(o.reason("/x.jpg").starts_with("timeout"));
    assert!(o.reason("/plain-silent.jpg").starts_with("timeout"));
    assert!(o.reason("/drip.jpg").starts_with("timeout"));
    assert!(o.reason("/y.jpg").starts_with("network"));
    assert_eq!(kept(&o), 2);
    println!("TLS handshake timeout: whole run {:.2} s", o.secs);
    // The silent servers hold on for 30 s and the drip lasts 100 s: only the timeout ends sooner
    // (the slack is for a loaded machine, not for the code).
    assert!(
        o.secs < timeout.as_secs_f64() + 15.0,
        "took {} s with a {timeout:?} timeout",
        o.secs
    );
}

#[test]
fn cli_counts_faults_from_urls_from() {
    let body = photo(400);
    let bomb = gzip_bomb();
    let (port, _) = with_good_images(move |path, mut s| match path {
        "/reset.jpg" => {
            head(
                &mut s,
                "200 OK",
                &[("Content-Length", body.len().to_string())],
            );
            let _ = s.write_all(&body[..body.len() / 3]);
            let _ = s.flush();
            std::thread::sleep(Duration::from_millis(100));
            reset(s);
        }
        "/short.jpg" => {
            head(
                &mut s,
                "200 OK",
                &[("Content-Length", (body.len() * 2).to_string())],
            );
            let _ = s.write_all(&body);
        }
        "/bomb.jpg" => send(s, bomb, &[("Content-Encoding", "gzip".into())]),
        _ => head(&mut s, "404 Not Found", &[("Content-Length", "0".into())]),
    });
    let silent = silent_server(30);
    let b = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.txt");
    let urls = [
        format!("{b}/good13.jpg"),
        format!("{b}/reset.jpg"),
        format!("{b}/short.jpg"),
        format!("{b}/bomb.jpg"),
        format!("{b}/missing.jpg"),
        format!("https://127.0.0.1:{silent}/x.jpg"),
        "http://no-such-host.invalid/z.jpg".to_string(),
        format!("{b}/good14.jpg"),
    ];
    std::fs::write(&list, urls.join("\n")).unwrap();
    let out = dir.path().join("data");
    let o = run(bin()
        .args(["download", "cats", "--urls-from"])
        .arg(&list)
        .arg("--out")
        .arg(&out)
        .args(["--timeout", "1.5", "--max-size", "200", "--quiet"]));
    assert!(o.status.success(), "{}\n{}", o.stdout, o.stderr);
    let line = o.stdout.lines().find(|l| l.starts_with("cats")).unwrap();
    let nums: Vec<usize> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    // found downloaded timeout http not_image too_large decode network dups near_dups conflicts
    // train test short
    assert_eq!(
        nums,
        vec![8, 2, 1, 1, 0, 1, 0, 3, 0, 0, 0, 2, 0, 98],
        "{line}"
    );
    let outcome = "cats: 2 kept, 98 short: the URL list ran dry after 8 URLs";
    assert!(o.stdout.contains(outcome), "{}", o.stdout);
    let rows = finetune::download::manifest::read(&out.join("manifest.csv")).unwrap();
    let summary = ClassSummary {
        found: 8,
        failed: counts(&[
            ("timeout", 1),
            ("http", 1),
            ("too_large", 1),
            ("network", 3),
        ]),
        train: 2,
        ..Default::default()
    };
    check_disk(&out, &rows, &summary, urls.len());
}

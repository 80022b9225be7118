//! The DuckDuckGo client against a mock on 127.0.0.1, and downloads driven by it: one search for
//! two classes, and top-ups when failures and duplicates leave a class short.

use super::*;
use finetune::download::{self, ClassSummary, DownloadConfig, DownloadError, NoProgress, Source};
use finetune::search::ddg::{DdgConfig, DuckDuckGo, Filters};
use finetune::search::{Provider, SearchError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

fn ddg(base: &str) -> DuckDuckGo {
    DuckDuckGo::new(DdgConfig {
        base: base.to_string(),
        delay: Duration::from_millis(750),
        backoff: Duration::from_millis(20),
        max_tries: 3,
        ..Default::default()
    })
}

fn result(i: usize) -> serde_json::Value {
    serde_json::json!({"title": format!("t{i}"), "image": format!("http://img/{i}.jpg"), "thumbnail": "x",
                       "url": format!("http://page/{i}"), "width": 100 + i, "height": 50, "source": "Bing"})
}

/// vqd in the form the query asks for; two pages linked by `next`, with a repeated image.
fn mock_ddg(req: &Req) -> Reply {
    let q = req.query.get("q").cloned().unwrap_or_default();
    match req.path.as_str() {
        "/" => Reply::ok(
            "text/html",
            match q.as_str() {
                "form two" => "<a href='/x?q=a&vqd=4-222&p=1'>".into(),
                "form three" => "<script>{vqd='4-333'}</script>".into(),
                "no token" => "<html>sorry</html>".into(),
                _ => "<script>vqd=\"4-111\";</script>".to_string(),
            }
            .into_bytes(),
        ),
        "/i.js" => {
            let ok = req.query.get("o").map(String::as_str) == Some("json")
                && req.query.get("vqd").is_some_and(|v| v.starts_with("4-"))
                && req.query.get("p").map(String::as_str) == Some("1")
                && req.query.get("l").map(String::as_str) == Some("us-en")
                && req.query.contains_key("f")
                && req.headers.get("referer").is_some_and(|r| r.ends_with('/'));
            if !ok {
                return Reply::status(400);
            }
            let page = match req.query.get("s").map(String::as_str) {
                None => {
                    serde_json::json!({"results": [result(0), result(1), result(1), result(2)], "next": "i.js?q=x&s=3&o=json"})
                }
                Some("3") => serde_json::json!({"results": [result(3), result(4)]}),
                _ => return Reply::status(500),
            };
            Reply::ok("application/json", page.to_string().into_bytes())
        }
        _ => Reply::status(404),
    }
}

#[test]
fn ddg_protocol_paging_dedup_and_throttle() {
    let (base, log) = serve(mock_ddg);
    let mut d = ddg(&base);
    let r = d.search("red fox", 100).unwrap();
    let images: Vec<&str> = r.iter().map(|x| x.image.as_str()).collect();
    assert_eq!(
        images,
        [
            "http://img/0.jpg",
            "http://img/1.jpg",
            "http://img/2.jpg",
            "http://img/3.jpg",
            "http://img/4.jpg"
        ]
    );
    assert_eq!(
        (r[2].title.as_str(), r[2].url.as_str(), r[2].width),
        ("t2", "http://page/2", 102)
    );
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 3, "token, page 1, page 2");
    assert_eq!(log[0].query["q"], "red fox");
    assert_eq!(log[1].query["f"], ",,,,,");
    assert_eq!(log[2].query["s"], "3");
    for w in log.windows(2) {
        assert!(
            w[1].at - w[0].at >= Duration::from_millis(700),
            "requests are spaced ~0.75 s"
        );
    }
    // `max` stops early, on the first page.
    let (base, log) = serve(mock_ddg);
    assert_eq!(ddg(&base).search("x", 2).unwrap().len(), 2);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[test]
fn ddg_vqd_forms_and_filters() {
    let (base, log) = serve(mock_ddg);
    let mut d = DuckDuckGo::new(DdgConfig {
        base,
        delay: Duration::ZERO,
        filters: Filters {
            size: Some("Large".into()),
            kind: Some("photo".into()),
            ..Default::default()
        },
        ..Default::default()
    });
    for q in ["form two", "form three"] {
        assert_eq!(d.search(q, 3).unwrap().len(), 3, "{q}");
    }
    let log = log.lock().unwrap();
    let vqds: Vec<&str> = log
        .iter()
        .filter(|r| r.path == "/i.js")
        .map(|r| r.query["vqd"].as_str())
        .collect();
    assert_eq!(vqds, ["4-222", "4-333"]);
    assert_eq!(log[1].query["f"], ",size:Large,,type:photo,,");
}

#[test]
fn ddg_page_without_token_is_a_clear_error() {
    let (base, _) = serve(mock_ddg);
    let e = ddg(&base).search("no token", 10).unwrap_err();
    assert!(matches!(e, SearchError::NoToken { .. }), "{e}");
    assert!(e.to_string().contains("vqd"), "{e}");
}

#[test]
fn ddg_rate_limit_then_success_with_fresh_token() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let (base, log) = serve(move |req| {
        if req.path == "/i.js" && h.fetch_add(1, Ordering::SeqCst) == 0 {
            return Reply::status(403);
        }
        mock_ddg(req)
    });
    let r = ddg(&base).search("x", 3).unwrap();
    assert_eq!(r.len(), 3);
    let tokens = log.lock().unwrap().iter().filter(|r| r.path == "/").count();
    assert_eq!(tokens, 2, "a fresh vqd after the rate limit");
}

#[test]
fn ddg_rate_limited_forever_says_resume() {
    for status in [202u16, 429, 418] {
        let (base, _) = serve(move |req| {
            if req.path == "/i.js" {
                Reply::status(status)
            } else {
                mock_ddg(req)
            }
        });
        let e = ddg(&base).search("x", 3).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, SearchError::RateLimited { tries: 3, .. }),
            "{msg}"
        );
        assert!(
            msg.contains(&status.to_string()) && msg.contains("run the same command again"),
            "{msg}"
        );
    }
}

#[test]
fn search_driven_download_end_to_end() {
    let (img_base, _) = image_server();
    let ib = img_base.clone();
    let (base, _) = serve(move |req| match req.path.as_str() {
        "/" => Reply::ok("text/html", b"vqd=\"4-1\"".to_vec()),
        "/i.js" => {
            let q = req.query["q"].clone();
            let n = if q.starts_with("dog") { 3 } else { 0 };
            let rows: Vec<serde_json::Value> = (n..n + 3)
                .map(|i| serde_json::json!({"title": q, "image": format!("{ib}/other{i}.jpg"), "url": "http://p", "width": 320, "height": 240}))
                .collect();
            Reply::ok(
                "application/json",
                serde_json::json!({"results": rows})
                    .to_string()
                    .into_bytes(),
            )
        }
        _ => Reply::status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let o = run(bin()
        .env("FINETUNE_SEARCH_URL", &base)
        .args([
            "download",
            "cat",
            "dog",
            "--query-suffix",
            " animal",
            "--per-class",
            "2",
            "--quiet",
            "--out",
        ])
        .arg(dir.path()));
    assert!(o.status.success(), "{}", o.stderr);
    let rows = manifest(dir.path());
    assert_eq!(
        rows.iter().filter(|r| r.is_kept()).count(),
        4,
        "per-class cap: {rows:#?}"
    );
    assert!(rows.iter().all(|r| r.query.ends_with(" animal")));
    assert!(rows
        .iter()
        .filter(|r| r.class == "dog")
        .all(|r| r.title == "dog animal"));

    // Search unreachable: a clear error, and quickstart explains the offline route.
    let o = run(bin()
        .env("FINETUNE_SEARCH_URL", "http://127.0.0.1:9")
        .args(["download", "cat", "--out"])
        .arg(dir.path().join("x")));
    assert!(
        !o.status.success() && o.stderr.contains("cannot reach"),
        "{}",
        o.stderr
    );
    let o = run(bin()
        .env("FINETUNE_SEARCH_URL", "http://127.0.0.1:9")
        .args(["quickstart", "--dir"])
        .arg(dir.path().join("q")));
    assert!(!o.status.success(), "{}", o.stdout);
    assert!(
        o.stderr.contains("could not download the images") && o.stderr.contains("finetune train"),
        "{}",
        o.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Top-ups: a class left short after its first batch asks the search for more.

/// Results on each of `cat`'s pages.
const PAGE: usize = 48;

/// A search and the images it finds, on one server. `cat` never runs dry: its first page is half
/// broken (after each good photo, in turn: a 404, garbage bytes served as a JPEG, the same bytes as
/// that photo, a near-duplicate of it; and one URL listed twice), later pages are all good photos.
/// `dog` has two short pages, then repeats its first page forever, which must count as dry. `owl`
/// has cat's first page, then is rate limited for good.
fn topup_server() -> (String, Arc<Mutex<Vec<Req>>>) {
    let base: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let b = base.clone();
    let (url, log) = serve(move |req| match req.path.as_str() {
        "/" => Reply::ok("text/html", b"vqd=\"4-7\"".to_vec()),
        "/i.js" => topup_page(b.get().map(String::as_str).unwrap_or_default(), req),
        path => topup_image(path),
    });
    base.set(url.clone()).unwrap();
    (url, log)
}

fn topup_page(base: &str, req: &Req) -> Reply {
    let q = req.query.get("q").cloned().unwrap_or_default();
    let s: usize = req.query.get("s").and_then(|s| s.parse().ok()).unwrap_or(0);
    let row = |kind: &str, n: usize| {
        serde_json::json!({"title": q, "image": format!("{base}/img/{kind}/{n}.jpg"),
                           "url": "http://p", "width": 300, "height": 200})
    };
    let half_broken = || {
        let mut rows = Vec::new();
        for i in 0..PAGE / 2 {
            rows.push(row("good", i));
            rows.push(row(["missing", "garbage", "copy", "near"][i % 4], i));
        }
        rows.insert(5, row("good", 0));
        rows
    };
    let dog_first = || {
        let mut rows: Vec<_> = (2000..2004).map(|n| row("good", n)).collect();
        rows.extend([row("missing", 2004), row("garbage", 2005)]);
        rows
    };
    let (rows, next) = match (q.as_str(), s) {
        ("cat" | "owl", 0) => (half_broken(), s + PAGE),
        ("owl", _) => return Reply::status(429),
        ("cat", _) => (
            (s..s + PAGE).map(|n| row("good", n + 1000)).collect(),
            s + PAGE,
        ),
        ("dog", 0) => (dog_first(), 6),
        ("dog", 6) => (
            vec![
                row("good", 2006),
                row("good", 2007),
                row("good", 2000),
                row("garbage", 2005),
            ],
            12,
        ),
        ("dog", _) => (dog_first(), s + 6),
        _ => (Vec::new(), 0),
    };
    let page = serde_json::json!({"results": rows, "next": format!("i.js?q={q}&s={next}&o=json")});
    Reply::ok("application/json", page.to_string().into_bytes())
}

/// `/img/KIND/N.jpg`: photo N (`good`, `copy`: the same bytes), a near-duplicate of it, garbage,
/// or a 404.
fn topup_image(path: &str) -> Reply {
    let Some((kind, n)) = path
        .strip_prefix("/img/")
        .and_then(|p| p.strip_suffix(".jpg"))
        .and_then(|p| p.split_once('/'))
        .and_then(|(k, n)| Some((k, n.parse::<u32>().ok()?)))
    else {
        return Reply::status(404);
    };
    let photo = || picture(300, 200, n * 7 + 1);
    match kind {
        "good" | "copy" => Reply::ok("image/jpeg", jpeg(&photo(), 90)),
        "near" => Reply::ok(
            "image/jpeg",
            jpeg(
                &image::imageops::resize(&photo(), 290, 193, image::imageops::FilterType::Triangle),
                55,
            ),
        ),
        "garbage" => Reply::ok("image/jpeg", b"\x00\x01 not a picture ".repeat(40)),
        _ => Reply::status(404),
    }
}

fn topup_config(out: &std::path::Path) -> DownloadConfig {
    DownloadConfig {
        out: out.to_path_buf(),
        per_class: 24,
        test_per_class: 4,
        concurrency: 4,
        timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

fn topup_run(
    base: &str,
    out: &std::path::Path,
    classes: &[&str],
) -> Result<Vec<ClassSummary>, DownloadError> {
    let mut provider = DuckDuckGo::new(DdgConfig {
        base: base.to_string(),
        delay: Duration::ZERO,
        backoff: Duration::from_millis(20),
        max_tries: 2,
        ..Default::default()
    });
    let classes: Vec<String> = classes.iter().map(|c| c.to_string()).collect();
    download::run(
        &classes,
        Source::Search(&mut provider),
        &topup_config(out),
        &NoProgress,
    )
}

/// The `s` offsets of the result pages asked for `query`, in order (0 for the first page).
fn pages_asked(log: &Mutex<Vec<Req>>, query: &str) -> Vec<usize> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == "/i.js" && r.query.get("q").map(String::as_str) == Some(query))
        .map(|r| r.query.get("s").and_then(|s| s.parse().ok()).unwrap_or(0))
        .collect()
}

fn image_requests(log: &Mutex<Vec<Req>>) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|r| r.path.starts_with("/img/"))
        .count()
}

#[test]
fn a_short_class_is_topped_up_to_exactly_its_target() {
    let (base, log) = topup_server();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let s = topup_run(&base, &out, &["cat", "dog"]).unwrap();
    let (cat, dog) = (&s[0], &s[1]);

    // Half of cat's first batch fails or duplicates; more pages make up for it, exactly.
    assert_eq!((cat.train, cat.test, cat.short_by), (20, 4, 0), "{cat:?}");
    assert_eq!(cat.outcome(), "cat: 24 kept (target met)");
    assert!(cat.rounds >= 2, "a top-up round: {cat:?}");
    assert!(
        cat.failed["http"] >= 1 && cat.failed["not_image"] >= 1,
        "{cat:?}"
    );
    assert!(cat.duplicates >= 1 && cat.near_duplicates >= 1, "{cat:?}");
    let asked = pages_asked(&log, "cat");
    assert_eq!(asked[0], 0);
    let mut distinct = asked.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        asked.len(),
        "a page fetched twice: {asked:?}"
    );
    assert!(asked.len() >= 2, "{asked:?}");
    let tokens = log.lock().unwrap().iter().filter(|r| r.path == "/").count();
    assert_eq!(tokens, 2, "one token per query, kept between pages");

    // dog's search runs dry (a page of nothing new, twice): short, and it says so.
    assert_eq!((dog.kept(), dog.short_by, dog.found), (6, 18, 8), "{dog:?}");
    assert!(dog.search_exhausted, "{dog:?}");
    assert!(
        dog.outcome()
            .starts_with("dog: 6 kept, 18 short: search ran dry after 8 results"),
        "{}",
        dog.outcome()
    );
    assert_eq!(pages_asked(&log, "dog"), [0, 6, 12, 18]);
    let table = download::summary_table(&s);
    println!("{table}cat: {} rounds, pages {asked:?}", cat.rounds);
    assert!(
        table.contains(&cat.outcome()) && table.contains(&dog.outcome()),
        "{table}"
    );

    // The manifest tries each URL once and matches the disk.
    let rows = manifest(&out);
    let mut urls: Vec<&str> = rows.iter().map(|r| r.image_url.as_str()).collect();
    urls.sort();
    let n = urls.len();
    urls.dedup();
    assert_eq!(urls.len(), n, "a URL tried twice");
    for r in rows.iter().filter(|r| r.is_kept()) {
        assert!(out.join(&r.file).is_file(), "{r:?}");
    }
    let files = |class: &str| {
        ["train", "test"]
            .iter()
            .map(|split| std::fs::read_dir(out.join(split).join(class)).map_or(0, |d| d.count()))
            .sum::<usize>()
    };
    assert_eq!((files("cat"), files("dog")), (24, 6), "no stray file");

    // Again: cat is complete and not searched; dog walks past what it knows, downloads nothing,
    // and is still dry.
    let before = image_requests(&log);
    let cat_pages = pages_asked(&log, "cat").len();
    let s = topup_run(&base, &out, &["cat", "dog"]).unwrap();
    assert_eq!(image_requests(&log), before, "nothing fetched again");
    assert_eq!(
        pages_asked(&log, "cat").len(),
        cat_pages,
        "a complete class is not searched"
    );
    assert_eq!((s[0].kept(), s[0].short_by, s[0].rounds), (24, 0, 0));
    assert!(s[1].search_exhausted && s[1].short_by == 18, "{:?}", s[1]);
    assert_eq!(manifest(&out), rows, "manifest unchanged");
}

/// The same through the binary: the table's `short` column and the outcome lines.
#[test]
fn download_output_says_target_met_or_search_ran_dry() {
    let (base, _) = topup_server();
    let dir = tempfile::tempdir().unwrap();
    let o = run(bin()
        .env("FINETUNE_SEARCH_URL", &base)
        .args([
            "download",
            "cat",
            "dog",
            "--per-class",
            "24",
            "--test-per-class",
            "4",
        ])
        .arg("--out")
        .arg(dir.path()));
    assert!(o.status.success(), "{}\n{}", o.stdout, o.stderr);
    let short = |class: &str| {
        let row = o
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(class))
            .unwrap_or_else(|| panic!("no {class} row: {}", o.stdout));
        row.split_whitespace()
            .last()
            .unwrap()
            .parse::<usize>()
            .unwrap()
    };
    assert_eq!((short("cat"), short("dog")), (0, 18), "{}", o.stdout);
    assert!(
        o.stdout.contains("cat: 24 kept (target met)"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("dog: 6 kept, 18 short: search ran dry after 8 results"),
        "{}",
        o.stdout
    );
    // Without a terminal, a top-up is one line on stderr.
    assert!(
        o.stderr.contains("cat: ") && o.stderr.contains("short: trying"),
        "{}",
        o.stderr
    );
}

/// A rate limit in a top-up round stops the run with the resume advice, and what the first round
/// downloaded is in the manifest and on disk.
#[test]
fn a_rate_limit_while_topping_up_keeps_the_first_round() {
    let (base, log) = topup_server();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let e = topup_run(&base, &out, &["owl"]).unwrap_err();
    assert!(
        matches!(e, DownloadError::Search(SearchError::RateLimited { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("run the same command again"), "{e}");
    assert_eq!(pages_asked(&log, "owl")[..2], [0, PAGE]);
    let rows = manifest(&out);
    let kept: Vec<_> = rows.iter().filter(|r| r.is_kept()).collect();
    assert!(!kept.is_empty() && kept.len() < 24, "{rows:#?}");
    let on_disk = std::fs::read_dir(out.join("train/owl")).unwrap().count();
    assert_eq!(on_disk, kept.len(), "disk and manifest agree");
}

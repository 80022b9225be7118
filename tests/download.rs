//! `download` and the DuckDuckGo client, against mock servers on 127.0.0.1. The search side (the
//! client's protocol, search-driven downloads and their top-ups) is in `download/search.rs`.

mod common;
// In a folder of its own: a file directly under tests/ would be a test binary of its own.
#[path = "download/search.rs"]
mod search;
use common::http::{serve, Body, Reply, Req};
use common::*;
use std::sync::Arc;
use std::time::Duration;

/// A photo-like test image: a seeded grid of random blocks, so different seeds have very different
/// perceptual hashes while re-encodings of one picture stay close.
fn picture(w: u32, h: u32, seed: u32) -> image::RgbImage {
    let mut state = seed as u64 * 6364136223846793005 + 1442695040888963407;
    let mut grid = [[0u8; 8]; 8];
    for row in grid.iter_mut() {
        for v in row.iter_mut() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *v = (state >> 56) as u8;
        }
    }
    image::RgbImage::from_fn(w, h, |x, y| {
        let v = grid[(y * 8 / h) as usize][(x * 8 / w) as usize];
        image::Rgb([v, v.wrapping_add(40), 255 - v])
    })
}

fn png_rgba(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(w, h, |x, _| {
        image::Rgba([200, 10, 10, if x < w / 2 { 0 } else { 255 }])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn webp(img: &image::RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut out))
        .unwrap();
    out
}

fn image_server() -> (String, Arc<std::sync::Mutex<Vec<Req>>>) {
    let r = reference().join("bad_inputs");
    let big = picture(600, 300, 1);
    let ok = jpeg(&big, 95);
    let near = jpeg(
        &image::imageops::resize(&big, 580, 290, image::imageops::FilterType::Triangle),
        60,
    );
    let cmyk = std::fs::read(r.join("cmyk.jpg")).unwrap();
    let rotated = std::fs::read(r.join("rotated.jpg")).unwrap();
    let truncated = {
        let j = jpeg(&picture(300, 300, 3), 90);
        j[..j.len() / 3].to_vec()
    };
    let others: Vec<Vec<u8>> = (10..16).map(|s| jpeg(&picture(320, 240, s), 90)).collect();
    let alpha = png_rgba(40, 30);
    let wp = webp(&picture(120, 80, 7));
    serve(move |req| {
        let p = req.path.as_str();
        if let Some(i) = p
            .strip_prefix("/other")
            .and_then(|s| s.strip_suffix(".jpg"))
            .and_then(|s| s.parse::<usize>().ok())
        {
            return Reply::ok("image/jpeg", others[i].clone());
        }
        match p {
            "/ok.jpg" => Reply::ok("image/jpeg", ok.clone()),
            "/same bytes.jpg" => Reply::ok("image/jpeg", ok.clone()),
            "/near.jpg" => Reply::ok("image/jpeg", near.clone()),
            "/cmyk.jpg" => Reply::ok("image/jpeg", cmyk.clone()),
            "/rotated.jpg" => Reply::ok("image/jpeg", rotated.clone()),
            "/alpha.png" => Reply::ok("image/png", alpha.clone()),
            "/img.webp" => Reply::ok("image/webp", wp.clone()),
            "/truncated.jpg" => Reply::ok("image/jpeg", truncated.clone()),
            "/page.jpg" => Reply::ok(
                "image/jpeg",
                b"<!DOCTYPE html><html><body>Forbidden</body></html>".to_vec(),
            ),
            "/drawing.svg" => Reply::ok(
                "image/svg+xml",
                b"<svg xmlns='http://www.w3.org/2000/svg'></svg>".to_vec(),
            ),
            "/huge.jpg" => Reply::ok("image/jpeg", vec![0xff; 30 * 1024 * 1024]),
            "/never.jpg" => Reply {
                status: 200,
                headers: vec![],
                body: Body::Never,
            },
            "/drip.jpg" => Reply {
                status: 200,
                headers: vec![],
                body: Body::Drip(ok[..40].to_vec(), Duration::from_millis(100)),
            },
            "/loop.jpg" => Reply::redirect("/loop.jpg"),
            "/moved.jpg" => Reply::redirect("/other5.jpg"),
            _ => Reply::status(404),
        }
    })
}

fn manifest(out: &std::path::Path) -> Vec<finetune::download::manifest::Row> {
    finetune::download::manifest::read(&out.join("manifest.csv")).unwrap()
}

#[test]
fn download_handles_every_kind_of_url_and_resumes() {
    let (base, log) = image_server();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.csv");
    let mut csv = String::from("class,url,title\n");
    let photos = [
        "ok.jpg",
        "same bytes.jpg",
        "near.jpg",
        "cmyk.jpg",
        "rotated.jpg",
        "alpha.png",
        "img.webp",
        "moved.jpg",
    ];
    let broken = [
        "missing.jpg",
        "truncated.jpg",
        "page.jpg",
        "drawing.svg",
        "huge.jpg",
        "never.jpg",
        "drip.jpg",
        "loop.jpg",
    ];
    for (i, p) in photos.iter().chain(&broken).enumerate() {
        csv.push_str(&format!(
            "cats,{base}/{},photo {i}\n",
            p.replace(' ', "%20")
        ));
    }
    for i in 0..5 {
        csv.push_str(&format!("dogs,{base}/other{i}.jpg,dog {i}\n"));
    }
    std::fs::write(&list, csv).unwrap();
    let out = dir.path().join("data set");
    let cmd = || {
        let mut c = bin();
        c.args(["download", "--urls-from"])
            .arg(&list)
            .arg("--out")
            .arg(&out);
        c.args([
            "--max-size",
            "200",
            "--timeout",
            "1.5",
            "--test-per-class",
            "2",
            "--max-mb",
            "20",
            "--quiet",
        ]);
        c
    };
    let o = run(&mut cmd());
    assert!(o.status.success(), "{}\n{}", o.stdout, o.stderr);
    let rows = manifest(&out);
    let by_url = |name: &str| {
        rows.iter()
            .find(|r| r.image_url.ends_with(&name.replace(' ', "%20")))
            .unwrap_or_else(|| panic!("{name} not in manifest"))
    };
    let reason = |name: &str| by_url(name).reason.clone();
    // Each failure under its column; `page.jpg` is an HTML page, `loop.jpg` a redirect loop.
    for (name, column) in [
        ("missing.jpg", "http: HTTP 404"),
        ("page.jpg", "not_image"),
        ("drawing.svg", "not_image"),
        ("huge.jpg", "too_large"),
        ("never.jpg", "timeout"),
        ("drip.jpg", "timeout"),
        ("truncated.jpg", "decode"),
    ] {
        assert!(reason(name).starts_with(column), "{name}: {}", reason(name));
    }
    assert!(
        reason("page.jpg").contains("HTML"),
        "{}",
        reason("page.jpg")
    );
    assert!(
        reason("loop.jpg").contains("redirect"),
        "{}",
        reason("loop.jpg")
    );
    assert_eq!(by_url("same bytes.jpg").status, "duplicate");
    assert_eq!(
        by_url("near.jpg").status,
        "near_duplicate",
        "{:?}",
        by_url("near.jpg")
    );
    for p in [
        "ok.jpg",
        "cmyk.jpg",
        "rotated.jpg",
        "alpha.png",
        "img.webp",
        "moved.jpg",
    ] {
        let r = by_url(p);
        assert!(r.is_kept(), "{p}: {r:?}");
        let img = finetune::data::decode::decode_file(
            &out.join(&r.file),
            finetune::data::files::DEFAULT_MAX_FILE_BYTES,
        )
        .unwrap();
        assert_eq!(img.dimensions(), (r.width, r.height), "{p}");
        assert!(r.file.ends_with(".jpg") && r.sha256.len() == 64 && !r.phash.is_empty());
        assert!(out
            .join(&r.file)
            .starts_with(out.join(r.status.as_str()).join("cats")));
    }
    // Shrunk to 200 px on the longer side, aspect kept; small images never enlarged; EXIF applied.
    assert_eq!(
        (by_url("ok.jpg").width, by_url("ok.jpg").height),
        (200, 100)
    );
    assert_eq!(
        (by_url("alpha.png").width, by_url("alpha.png").height),
        (40, 30)
    );
    assert_eq!(
        (by_url("rotated.jpg").width, by_url("rotated.jpg").height),
        (20, 40)
    );
    let alpha = finetune::data::decode::decode_file(
        &out.join(&by_url("alpha.png").file),
        finetune::data::files::DEFAULT_MAX_FILE_BYTES,
    )
    .unwrap();
    assert!(
        alpha.get_pixel(2, 2).0.iter().all(|&c| c > 240),
        "transparent half composited on white"
    );

    // Manifest rows match the files on disk, exactly.
    let mut on_disk: Vec<String> = Vec::new();
    for split in ["train", "test"] {
        for class in ["cats", "dogs"] {
            for e in std::fs::read_dir(out.join(split).join(class)).unwrap() {
                on_disk.push(format!(
                    "{split}/{class}/{}",
                    e.unwrap().file_name().to_string_lossy()
                ));
            }
        }
    }
    on_disk.sort();
    let mut listed: Vec<String> = rows
        .iter()
        .filter(|r| r.is_kept())
        .map(|r| r.file.clone())
        .collect();
    listed.sort();
    assert_eq!(on_disk, listed);
    assert_eq!(
        rows.iter()
            .filter(|r| r.class == "cats" && r.status == "test")
            .count(),
        2
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.class == "dogs" && r.status == "test")
            .count(),
        2
    );
    assert!(
        o.stdout.contains("cats") && o.stdout.contains("near_dups"),
        "{}",
        o.stdout
    );
    let cats_line = o.stdout.lines().find(|l| l.starts_with("cats")).unwrap();
    let nums: Vec<usize> = cats_line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    // found downloaded timeout http not_image too_large decode network dups near_dups conflicts
    // train test short
    assert_eq!(
        nums,
        vec![16, 7, 2, 1, 2, 1, 1, 1, 1, 1, 0, 4, 2, 94],
        "{cats_line}"
    );
    let outcome = "cats: 6 kept, 94 short: the URL list ran dry after 16 URLs";
    assert!(o.stdout.contains(outcome), "{}", o.stdout);

    // Browser-like request headers on every download.
    for r in log.lock().unwrap().iter() {
        assert!(
            r.headers
                .get("user-agent")
                .is_some_and(|u| u.starts_with("Mozilla/5.0")),
            "{:?}",
            r.headers
        );
        assert!(
            r.headers
                .get("accept")
                .is_some_and(|a| a.contains("image/")),
            "{:?}",
            r.headers
        );
    }

    // A second run fetches nothing and loses nothing.
    let image_requests = |log: &std::sync::Mutex<Vec<Req>>| log.lock().unwrap().len();
    let before = image_requests(&log);
    let o = run(&mut cmd());
    assert!(o.status.success(), "{}", o.stderr);
    assert_eq!(image_requests(&log), before, "no URL is fetched twice");
    assert_eq!(manifest(&out), rows, "manifest unchanged");
}

/// A local server answering each path of `files` with its bytes as a JPEG, 404 otherwise.
fn serve_files(files: std::collections::HashMap<String, Vec<u8>>) -> String {
    serve(move |req| {
        files
            .get(&req.path)
            .map(|b| Reply::ok("image/jpeg", b.clone()))
            .unwrap_or(Reply::status(404))
    })
    .0
}

#[test]
fn near_duplicate_twins_never_straddle_train_and_test() {
    let dir = tempfile::tempdir().unwrap();
    let pics: Vec<image::RgbImage> = (0..6).map(|s| picture(300, 200, s * 7 + 1)).collect();
    let mut files = std::collections::HashMap::new();
    for (i, p) in pics.iter().enumerate() {
        files.insert(format!("/a{i}.jpg"), jpeg(p, 95));
        files.insert(
            format!("/b{i}.jpg"),
            jpeg(
                &image::imageops::resize(p, 290, 193, image::imageops::FilterType::Triangle),
                55,
            ),
        );
    }
    let base = serve_files(files);
    let list = dir.path().join("urls.txt");
    let urls: Vec<String> = (0..6)
        .flat_map(|i| [format!("{base}/a{i}.jpg"), format!("{base}/b{i}.jpg")])
        .collect();
    std::fs::write(&list, urls.join("\n")).unwrap();
    let out = dir.path().join("out");
    let o = run(bin()
        .args([
            "download",
            "birds",
            "--quiet",
            "--test-per-class",
            "3",
            "--urls-from",
        ])
        .arg(&list)
        .arg("--out")
        .arg(&out));
    assert!(o.status.success(), "{}", o.stderr);
    let rows = manifest(&out);
    let kept: Vec<_> = rows.iter().filter(|r| r.is_kept()).collect();
    assert_eq!(kept.len(), 6, "one of each twin pair kept: {rows:#?}");
    assert_eq!(
        rows.iter().filter(|r| r.status == "near_duplicate").count(),
        6
    );
    // Each dropped twin names the file kept in its place, where it is now (test/ or train/).
    for r in rows.iter().filter(|r| r.status == "near_duplicate") {
        let path = r
            .reason
            .strip_prefix("near-duplicate of ")
            .unwrap_or_else(|| panic!("{}", r.reason));
        assert!(
            out.join(path).is_file(),
            "{} names a missing file",
            r.reason
        );
        let k = kept.iter().find(|k| k.file == path).unwrap();
        assert_eq!(k.sha256, r.duplicate_of);
    }
    // What is kept holds no two pictures of one group, so none straddles train and test.
    let hashes: Vec<String> = kept.iter().map(|r| r.phash.clone()).collect();
    let groups = finetune::download::dedup::groups(&hashes, |k| {
        finetune::data::decode::decode_file(
            &out.join(&kept[k].file),
            finetune::data::files::DEFAULT_MAX_FILE_BYTES,
        )
        .ok()
    });
    assert!(groups.iter().all(|g| g.len() == 1), "{groups:?}");
}

/// The report: distinct product photos (clothing-small validation, no duplicates) served
/// through a local search mock must all be kept; the first hash kept 3 of 13 hats and 2 of 12 skirts.
#[test]
fn distinct_photos_are_all_kept() {
    let Some(shared) = shared() else {
        return skip(
            "../shared not found (clothing-small photos)",
            common::NEEDS_SHARED,
        );
    };
    let mut files = std::collections::HashMap::new();
    let mut lines = vec!["class,url".to_string()];
    for (class, n) in [("hat", 13), ("skirt", 12)] {
        let (photos, _) = finetune::data::items::image_files(
            &shared.join("data/clothing-small/validation").join(class),
        )
        .unwrap();
        for (i, p) in photos.iter().take(n).enumerate() {
            files.insert(format!("/{class}{i}.jpg"), std::fs::read(p).unwrap());
            lines.push(format!("{class},{{BASE}}/{class}{i}.jpg"));
        }
    }
    let base = serve_files(files);
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.csv");
    std::fs::write(&list, lines.join("\n").replace("{BASE}", &base)).unwrap();
    let out = dir.path().join("out");
    let o = run(bin()
        .args([
            "download",
            "hat",
            "skirt",
            "--test-per-class",
            "5",
            "--urls-from",
        ])
        .arg(&list)
        .arg("--out")
        .arg(&out));
    assert!(o.status.success(), "{}", o.stderr);
    let rows = manifest(&out);
    let count = |class: &str, status: &str| {
        rows.iter()
            .filter(|r| r.class == class && r.status == status)
            .count()
    };
    assert_eq!(
        (count("hat", "train"), count("hat", "test")),
        (8, 5),
        "{rows:#?}"
    );
    assert_eq!(
        (count("skirt", "train"), count("skirt", "test")),
        (7, 5),
        "{rows:#?}"
    );
    assert!(rows.iter().all(|r| r.is_kept()), "{rows:#?}");
}

/// The same picture found for two classes cannot carry both labels: none of it is kept, and the
/// summary and manifest say so.
#[test]
fn a_picture_found_for_two_classes_is_a_label_conflict() {
    let pics: Vec<image::RgbImage> = (0..4).map(|s| picture(300, 200, s * 11 + 3)).collect();
    let mut files = std::collections::HashMap::new();
    for (i, p) in pics.iter().enumerate() {
        files.insert(format!("/{i}.jpg"), jpeg(p, 95));
    }
    // The same picture, re-encoded, under the other class.
    files.insert("/copy.jpg".to_string(), jpeg(&pics[0], 60));
    let base = serve_files(files);
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.csv");
    std::fs::write(
        &list,
        format!(
            "class,url\ncats,{base}/0.jpg\ncats,{base}/1.jpg\ndogs,{base}/copy.jpg\ndogs,{base}/2.jpg\ndogs,{base}/3.jpg\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = run(bin()
        .args(["download", "cats", "dogs", "--urls-from"])
        .arg(&list)
        .arg("--out")
        .arg(&out));
    assert!(o.status.success(), "{}", o.stderr);
    let rows = manifest(&out);
    let conflicts: Vec<_> = rows
        .iter()
        .filter(|r| r.status == "label_conflict")
        .collect();
    assert_eq!(conflicts.len(), 2, "{rows:#?}");
    for r in &conflicts {
        assert!(
            r.file.is_empty() && r.reason.contains("cats, dogs"),
            "{r:?}"
        );
    }
    assert_eq!(rows.iter().filter(|r| r.is_kept()).count(), 3);
    assert!(o.stdout.contains("conflicts"), "{}", o.stdout);
    let cats = std::fs::read_dir(out.join("train/cats")).unwrap().count();
    assert_eq!(cats, 1, "the conflicting picture's file is gone");
}

/// A disk that fills up mid-download: a clear error saying how to resume, nothing half-written, and
/// a manifest that lists exactly the files on disk.
#[test]
fn a_full_disk_stops_download_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::new(&dir.path().join("disk"), "400k") else {
        return skip("cannot mount a tmpfs here", common::NEEDS_ROOT);
    };
    let mut files = std::collections::HashMap::new();
    let mut lines = vec!["class,url".to_string()];
    for i in 0..40 {
        // Noisy pictures compress badly: ~30 KB each, so 400 KB fill after a dozen.
        let img = image::RgbImage::from_fn(160, 120, |x, y| {
            let v = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503) ^ (i * 7919)) as u8;
            image::Rgb([v, v.wrapping_mul(3), v.wrapping_add(i as u8)])
        });
        files.insert(format!("/{i}.jpg"), jpeg(&img, 95));
        lines.push(format!(
            "{},{{BASE}}/{i}.jpg",
            if i % 2 == 0 { "owls" } else { "larks" }
        ));
    }
    let base = serve_files(files);
    let list = dir.path().join("urls.csv");
    std::fs::write(&list, lines.join("\n").replace("{BASE}", &base)).unwrap();
    let out = disk.0.join("birds");
    let o = run(bin()
        .args([
            "download",
            "owls",
            "larks",
            "--quiet",
            "--max-size",
            "160",
            "--urls-from",
        ])
        .arg(&list)
        .arg("--out")
        .arg(&out));
    assert!(!o.status.success(), "{}", o.stdout);
    assert!(
        o.stderr.contains("disk is full") && o.stderr.contains("run the same command again"),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    // Every file on disk is a whole image listed in the manifest, and every listed file exists.
    let rows = if out.join("manifest.csv").exists() {
        manifest(&out)
    } else {
        Vec::new()
    };
    let listed: std::collections::BTreeSet<String> = rows
        .iter()
        .filter(|r| r.is_kept())
        .map(|r| r.file.clone())
        .collect();
    let mut on_disk = std::collections::BTreeSet::new();
    for split in ["train", "test"] {
        for class in ["owls", "larks"] {
            let d = out.join(split).join(class);
            for e in std::fs::read_dir(&d).into_iter().flatten() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(!name.starts_with('.'), "temporary left behind: {name}");
                finetune::data::decode::decode_file(
                    &e.path(),
                    finetune::data::files::DEFAULT_MAX_FILE_BYTES,
                )
                .unwrap();
                on_disk.insert(format!("{split}/{class}/{name}"));
            }
        }
    }
    assert!(
        listed.is_subset(&on_disk),
        "listed {listed:?} on disk {on_disk:?}"
    );
    assert!(
        on_disk.len() <= listed.len() + 20,
        "only files of the class in progress may be unlisted"
    );
}

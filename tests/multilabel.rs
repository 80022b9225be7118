//! Multi-label classification (fastai's `MultiCategoryBlock`, `--label-delim`): on images made of two
//! sample photos side by side, labelled with both classes, the model learns both (accuracy_multi
//! ≥ 0.9 on its valid split, well above chance on pairs of unseen photos); `predict` returns the
//! labels above the threshold
//! and agrees with `evaluate`; the bundle, metrics.csv and the ONNX export say multi-label.

// ureq's error is large; these closures only hand it to an assertion.
#![allow(clippy::result_large_err)]

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const CLASSES: [&str; 4] = ["hat", "pants", "shoes", "t-shirt"];

/// `n` images of two photos of different classes from `src/<class>/` side by side, each 128×128, in
/// `out/`, and the CSV rows `name,"a b",is_valid` (the last `valid` images are the valid set).
fn pairs(src: &Path, out: &Path, n: usize, valid: usize) -> Vec<(String, BTreeSet<String>, bool)> {
    std::fs::create_dir_all(out).unwrap();
    let files: Vec<Vec<PathBuf>> = CLASSES
        .iter()
        .map(|c| {
            let mut v: Vec<PathBuf> = std::fs::read_dir(src.join(c))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            v.sort();
            v
        })
        .collect();
    let mut rows = Vec::new();
    for i in 0..n {
        let a = i % 4;
        let b = (a + 1 + (i / 4) % 3) % 4;
        let pa = &files[a][(i / 4) % files[a].len()];
        let pb = &files[b][(i / 3 + 7) % files[b].len()];
        let mut img = image::RgbImage::new(256, 128);
        for (k, p) in [pa, pb].iter().enumerate() {
            let t = image::open(p).unwrap().to_rgb8();
            let t = image::imageops::resize(&t, 128, 128, image::imageops::FilterType::Triangle);
            image::imageops::replace(&mut img, &t, 128 * k as i64, 0);
        }
        let name = format!("pair{i:03}.jpg");
        image::DynamicImage::ImageRgb8(img)
            .save(out.join(&name))
            .unwrap();
        let labels: BTreeSet<String> = [CLASSES[a], CLASSES[b]]
            .iter()
            .map(|s| s.to_string())
            .collect();
        rows.push((name, labels, i >= n - valid));
    }
    rows
}

fn write_csv(path: &Path, rows: &[(String, BTreeSet<String>, bool)]) {
    let mut s = String::from("fname,tags,is_valid\n");
    for (name, labels, valid) in rows {
        let tags: Vec<&str> = labels.iter().map(String::as_str).collect();
        s.push_str(&format!("{name},{},{valid}\n", tags.join(" ")));
    }
    std::fs::write(path, s).unwrap();
}

#[test]
fn two_photos_side_by_side_are_learned_as_both_labels() {
    let Some(weights) = mobilenet_weights() else {
        return skip("no ImageNet weights in ../shared/weights", NEEDS_SHARED);
    };
    let tmp = tempfile::tempdir().unwrap();
    let sample = repo().join("assets/sample");
    let train_dir = tmp.path().join("train");
    let rows = pairs(&sample.join("train"), &train_dir, 320, 64);
    write_csv(&tmp.path().join("train.csv"), &rows);
    let test_dir = tmp.path().join("test");
    let test_rows = pairs(&sample.join("test"), &test_dir, 40, 0);
    write_csv(&tmp.path().join("test.csv"), &test_rows);

    // fastai refuses nothing here, but label smoothing is a single-label loss: said at once.
    refused(
        tiny_train(1)
            .arg("--labels")
            .arg(tmp.path().join("train.csv"))
            .args(["--label-delim", " ", "--label-smoothing", "0.1"])
            .arg(&train_dir),
        "--label-smoothing is for single-label models",
    );

    let model = tmp.path().join("m");
    let o = run(bin()
        .args(["train", "--arch", "mobilenet_v2", "--device", "cpu"])
        .arg("--weights")
        .arg(&weights)
        .args([
            "--size",
            "192",
            "--bs",
            "16",
            "--epochs",
            "4",
            "--base-lr",
            "1e-2",
        ])
        .arg("--quiet")
        .arg("--labels")
        .arg(tmp.path().join("train.csv"))
        .args([
            "--fn-col",
            "fname",
            "--label-col",
            "tags",
            "--valid-col",
            "is_valid",
        ])
        .args(["--label-delim", " "])
        .arg("--out")
        .arg(&model)
        .arg(&train_dir));
    assert!(o.status.success(), "{}", o.stderr);
    assert!(
        o.stdout.contains("accuracy_multi") && o.stdout.contains("f1_score"),
        "{}",
        o.stdout
    );

    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(info["task"], "multi_label");
    assert_eq!(info["classes"], serde_json::json!(CLASSES));
    assert_eq!(info["data"]["valid_images"], 64);
    // The valid pairs are new pairings of the training photos (the sample has 40 per class).
    let acc = info["metrics"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.9, "accuracy_multi on the valid split: {acc}");
    let csv = std::fs::read_to_string(model.join("metrics.csv")).unwrap();
    assert!(
        csv.starts_with("phase,epoch,train_loss,valid_loss,error_rate,accuracy,f1_score,seconds"),
        "{csv}"
    );

    // Held-out pairs: evaluate's accuracy_multi, and predict's label sets give the same figure.
    let o = run(bin()
        .args(["evaluate", "--json", "--device", "cpu"])
        .arg(&model)
        .arg(&test_dir)
        .arg("--labels")
        .arg(tmp.path().join("test.csv"))
        .args(["--fn-col", "fname", "--label-col", "tags"]));
    assert!(o.status.success(), "{}", o.stderr);
    let ev: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(ev["task"], "multi_label");
    assert_eq!(ev["thresh"], 0.5);
    assert_eq!(ev["total"], 40);
    assert_eq!(ev["per_label"].as_array().unwrap().len(), 4);
    // Pairs of photos never seen (0.825 here): far above the 0.5 of answering no label, or of
    // any constant answer (each label is in half the pairs).
    let acc_multi = ev["accuracy_multi"].as_f64().unwrap();
    assert!(acc_multi >= 0.75, "held-out accuracy_multi {acc_multi}");

    let files: Vec<PathBuf> = test_rows.iter().map(|r| test_dir.join(&r.0)).collect();
    let got = predict_json(
        bin()
            .args(["predict", "--json", "--device", "cpu"])
            .arg(&model)
            .args(&files),
    );
    let mut right = 0;
    for (pred, (_, truth, _)) in got.iter().zip(&test_rows) {
        let set: BTreeSet<String> = pred.iter().map(|(l, _)| l.clone()).collect();
        assert!(
            pred.iter().all(|(_, p)| *p > 0.5),
            "only labels above the threshold"
        );
        right += CLASSES
            .iter()
            .filter(|c| set.contains(**c) == truth.contains(**c))
            .count();
    }
    // Exact, though predict and evaluate batch the photos differently (their logits agree to
    // about 1e-6 relative): only a sigmoid within ~1e-6 of the 0.5 threshold could flip a label,
    // a chance of about 1e-4 per run over these 160 decisions.
    let from_predict = right as f64 / (4.0 * test_rows.len() as f64);
    assert!(
        (from_predict - acc_multi).abs() < 1e-12,
        "{from_predict} vs {acc_multi}"
    );
    // A higher threshold never adds labels.
    let strict = predict_json(
        bin()
            .args(["predict", "--json", "--device", "cpu", "--thresh", "0.9"])
            .arg(&model)
            .args(&files),
    );
    for (a, b) in strict.iter().zip(&got) {
        assert!(a.len() <= b.len());
    }

    // serve answers with the same label sets for ?thresh=, and refuses a threshold out of (0, 1).
    let (_serve, base) = serve_model(&model);
    let ask = |query: &str, f: &Path| {
        ureq::post(&format!("{base}/predictions/m{query}"))
            .set("Content-Type", "image/jpeg")
            .send_bytes(&std::fs::read(f).unwrap())
    };
    let low = predict_json(
        bin()
            .args(["predict", "--json", "--device", "cpu", "--thresh", "0.3"])
            .arg(&model)
            .args(&files[..6]),
    );
    for (f, want) in files[..6].iter().zip(&low) {
        let v: Value =
            serde_json::from_str(&ask("?thresh=0.3", f).unwrap().into_string().unwrap()).unwrap();
        let got: Vec<(String, f64)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["label"].as_str().unwrap().to_string(),
                    p["score"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.0, w.0);
            assert!((g.1 - w.1).abs() < 1e-5);
        }
    }
    match ask("?thresh=1", &files[0]) {
        Err(ureq::Error::Status(400, r)) => {
            assert!(r.into_string().unwrap().contains("between 0 and 1"))
        }
        other => panic!("thresh=1 must be 400: {other:?}"),
    }

    // The cleaner lists a label's images by their label set's binary cross-entropy; relabelling is
    // for the CSV, deleting works.
    let (_clean, line) = spawn_first_line(
        bin()
            .args(["clean", "--port", "0", "--device", "cpu", "--threads", "1"])
            .arg("--model")
            .arg(&model)
            .arg(&train_dir),
    );
    let url = line
        .split("open ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let items: Value = serde_json::from_str(
        &ureq::get(&format!("{url}/api/items?class=hat"))
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    let items = items.as_array().unwrap();
    assert_eq!(items.len(), 160, "hat is in half the pairs");
    let losses: Vec<f64> = items.iter().map(|i| i["loss"].as_f64().unwrap()).collect();
    assert!(losses.windows(2).all(|w| w[0] >= w[1]));
    assert!(items
        .iter()
        .all(|i| i["label"].as_str().unwrap().split(' ').any(|l| l == "hat")));
    let summary = || -> Value {
        let s = ureq::get(&format!("{url}/api/summary")).call().unwrap();
        serde_json::from_str(&s.into_string().unwrap()).unwrap()
    };
    // A class's count is its images, each pair counted under both of its labels.
    let count = |s: &Value, k: &str| {
        s["classes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == k)
            .unwrap()["count"]
            .as_u64()
            .unwrap()
    };
    let before = summary();
    assert_eq!(count(&before, "hat"), 160, "{before}");
    let first = &items[0]["id"];
    let post = |body: &str| {
        ureq::post(&format!("{url}/api/items/{first}"))
            .set("Content-Type", "application/json")
            .send_string(body)
    };
    match post(r#"{"action": "move", "label": "pants"}"#) {
        Err(ureq::Error::Status(400, r)) => assert!(r.into_string().unwrap().contains("CSV")),
        other => panic!("a move of a CSV-labelled image must be 400: {other:?}"),
    }
    assert!(post(r#"{"action": "delete"}"#).is_ok());
    let after = summary();
    assert_eq!(count(&after, "hat"), 159, "{after}");
    assert_eq!(
        after["images"].as_u64().unwrap() + 1,
        before["images"].as_u64().unwrap()
    );
    let gone = train_dir.join(items[0]["path"].as_str().unwrap().trim_start_matches("./"));
    assert!(!gone.exists());

    // The ONNX export's probabilities are sigmoids, and it says so.
    let onnx = tmp.path().join("m.onnx");
    let o = run(bin()
        .args(["export", "--format", "onnx", "--out"])
        .arg(&onnx)
        .arg(&model));
    assert!(o.status.success(), "{}", o.stderr);
    let bytes = std::fs::read(&onnx).unwrap();
    let has = |s: &str| bytes.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(has("Sigmoid") && has("multi_label") && !has("Softmax"));
}

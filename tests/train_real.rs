//! Real fine-tunes: ImageNet weights from ../shared on the embedded sample (4 clothing classes, 40
//! train images each) with fastai's defaults at 192 px, evaluated on held-out photos — one
//! parameterised test over the architectures whose real weights exist here.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// One architecture's real fine-tune and what it must reach.
struct Case {
    arch: &'static str,
    weights: fn() -> Option<PathBuf>,
    /// The lowest accuracy on the sample's 40 test photos (see each case's measurement).
    sample_accuracy: f64,
    /// What this case checks beyond training and accuracy, on the bundle in `out`.
    extra: fn(out: &Path, dir: &Path),
}

const CASES: [Case; 2] = [
    // Measured here: 0.925 (37/40), fastai 2.8.12 on the same data and settings: see README
    // benchmark. 0.85 leaves room for libtorch/CPU numeric differences while still failing on a
    // broken pipeline (a random head gives ~0.25, an untrained-but-pretrained body with a bad
    // schedule ~0.5-0.7).
    Case {
        arch: "mobilenet_v2",
        weights: mobilenet_weights,
        sample_accuracy: 0.85,
        extra: mobilenet_v2_outputs,
    },
    // Measured here: 0.850 (34/40; valid error 0.0625), against 0.950 for mobilenet_v2 on the
    // same run. 0.75 (30/40) leaves four photos for libtorch/CPU differences while a broken body,
    // padding or head stays far below (a random head gives ~0.25). On the shared photos: 0.944
    // (169/179); the same run with ImageNet instead of Lite statistics: 0.916, sample 0.875.
    Case {
        arch: "efficientnet_lite0",
        weights: lite0_weights,
        sample_accuracy: 0.75,
        extra: lite0_statistics,
    },
];

#[test]
fn fine_tune_for_real() {
    for case in &CASES {
        let Some(w) = (case.weights)() else {
            skip(
                &format!(
                    "../shared/weights absent: real {} fine-tune not run",
                    case.arch
                ),
                common::NEEDS_SHARED,
            );
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model");
        let o = run(bin()
            .args(["train", "assets/sample/train", "--arch", case.arch])
            .args([
                "--bs",
                "32",
                "--epochs",
                "3",
                "--device",
                "cpu",
                "--quiet",
                "--weights",
            ])
            .arg(&w)
            .arg("--out")
            .arg(&out)
            .current_dir(repo()));
        assert!(o.status.success(), "{}", o.stderr);
        eprintln!("{}", o.stdout);
        assert_eq!(
            o.stdout
                .matches("epoch  train_loss  valid_loss  error_rate   time")
                .count(),
            2,
            "two tables"
        );

        let accuracy = |test: &Path| {
            let o = run(bin().args(["evaluate", "--json"]).arg(&out).arg(test));
            assert!(o.status.success(), "{}", o.stderr);
            let ev: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
            (
                ev["accuracy"].as_f64().unwrap(),
                ev["total"].as_i64().unwrap(),
            )
        };
        let (acc, n) = accuracy(&repo().join("assets/sample/test"));
        eprintln!("{}: sample test accuracy {acc} ({n} images)", case.arch);
        assert!(
            acc >= case.sample_accuracy,
            "{}: test accuracy {acc} below {}",
            case.arch,
            case.sample_accuracy
        );
        assert_eq!(n, 40);

        // The same model on the shared test photos of these 4 classes (179 images).
        if let Some(shared) = shared() {
            let t = dir.path().join("shared_test");
            std::fs::create_dir(&t).unwrap();
            for c in ["hat", "pants", "shoes", "t-shirt"] {
                std::os::unix::fs::symlink(
                    shared.join("data/clothing-small/test").join(c),
                    t.join(c),
                )
                .unwrap();
            }
            let (acc, n) = accuracy(&t);
            eprintln!("{}: shared test accuracy {acc} ({n} images)", case.arch);
            assert!(acc >= 0.85, "{}: shared test accuracy {acc}", case.arch);
        }
        (case.extra)(&out, dir.path());
    }
}

/// The bundle's files, the confusion plot, predict in every output format, and a bundle from an
/// incompatible version refused clearly.
fn mobilenet_v2_outputs(out: &Path, dir: &Path) {
    for f in ["model.safetensors", "model.json", "metrics.csv"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(out.join("metrics.csv"))
            .unwrap()
            .lines()
            .count(),
        5
    );

    let plot = dir.join("confusion.svg");
    let o = run(bin()
        .args(["evaluate", "--json", "--plot"])
        .arg(&plot)
        .arg(out)
        .arg(repo().join("assets/sample/test")));
    assert!(o.status.success(), "{}", o.stderr);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert_eq!(svg.matches("<rect x=").count(), 16, "4x4 cells");
    assert!(svg.contains(">t-shirt</text>"));

    // predict agrees with evaluate's view, in every output format.
    let hat = repo().join("assets/sample/test/hat");
    let o = run(bin()
        .args(["predict", "--csv", "--top-k", "2"])
        .arg(out)
        .arg(&hat));
    assert!(o.status.success(), "{}", o.stderr);
    let lines: Vec<&str> = o.stdout.lines().collect();
    // A model with the "unknown" answer appends its two columns.
    assert_eq!(lines[0], "path,label,probability,unknown,score");
    assert_eq!(lines.len(), 1 + 2 * 10);
    let o = run(bin().args(["predict", "--json"]).arg(out).arg(&hat));
    let js: Vec<serde_json::Value> = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(js.len(), 10);
    let hats = js
        .iter()
        .filter(|p| p["predictions"][0]["label"] == "hat")
        .count();
    assert!(hats >= 6, "{hats}/10 hats recognised");
    let o = run(bin()
        .arg("predict")
        .arg(out)
        .arg(hat.join("2a12baab-f020-42e3-8e6b-5d82e3ed0b55.jpg")));
    assert!(
        o.stdout.contains("2a12baab") && o.stdout.split_whitespace().count() == 3,
        "{}",
        o.stdout
    );

    // A bundle from an incompatible version is refused clearly.
    let j = std::fs::read_to_string(out.join("model.json"))
        .unwrap()
        .replace("\"format_version\": 1", "\"format_version\": 99");
    std::fs::write(out.join("model.json"), j).unwrap();
    let o = run(bin().arg("predict").arg(out).arg(&hat));
    assert!(
        !o.status.success() && o.stderr.contains("format version 99"),
        "{}",
        o.stderr
    );
}

/// EfficientNet-Lite0's TensorFlow-Lite input statistics are recorded in the bundle.
fn lite0_statistics(out: &Path, _dir: &Path) {
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(info["arch"], "efficientnet_lite0");
    let mean = info["normalization"]["mean"][0].as_f64().unwrap();
    let std = info["normalization"]["std"][0].as_f64().unwrap();
    assert!((mean - 127.0 / 255.0).abs() < 1e-9 && (std - 128.0 / 255.0).abs() < 1e-9);
}

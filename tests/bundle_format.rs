//! Bundles that keep loading (docs/usage.md): `tests/fixtures/bundle-v1`, a bundle written in
//! format version 1 and committed (made once by `tests/fixtures/make_bundle_v1.py`, never
//! regenerated), loads in every build and answers its recorded probabilities; a bundle of a newer
//! format is refused with both versions named.

mod common;

use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The fixture as a bundle folder: its weights are stored gzipped (binary weights, 0.4 MB), the
/// rest as written.
fn unpack(dst: &Path) -> PathBuf {
    let src = repo().join("tests/fixtures/bundle-v1");
    let b = dst.join("bundle-v1");
    std::fs::create_dir_all(&b).unwrap();
    for f in ["model.json", "metrics.csv"] {
        std::fs::copy(src.join(f), b.join(f)).unwrap();
    }
    let gz = std::fs::File::open(src.join("model.safetensors.gz")).unwrap();
    let mut out = std::fs::File::create(b.join("model.safetensors")).unwrap();
    std::io::copy(&mut flate2::read::GzDecoder::new(gz), &mut out).unwrap();
    b
}

/// (path, label → probability) of `predict --json` output.
fn by_label(v: &serde_json::Value) -> Vec<(String, HashMap<String, f64>)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let probs = a["predictions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["label"].as_str().unwrap().to_string(),
                        p["probability"].as_f64().unwrap(),
                    )
                })
                .collect();
            (a["path"].as_str().unwrap().to_string(), probs)
        })
        .collect()
}

/// Each class's probability as recorded, calibrated and raw, on two photos a class: the weights,
/// the class order, the transform, the normalisation and the temperature all read as written.
/// Compared per class, not by rank (the calibrated answers are close to uniform, and a tie may
/// order either way on another processor); 1e-4 is float rounding across kernel sets (measured
/// differences are under 1e-6).
#[test]
fn the_version_1_fixture_loads_and_answers_as_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let b = unpack(tmp.path());
    let recorded: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/bundle-v1/answers.json")).unwrap(),
    )
    .unwrap();
    for (name, extra) in [("calibrated", &[][..]), ("raw", &["--raw-probs"][..])] {
        let want = by_label(&recorded[name]);
        let paths: Vec<PathBuf> = want.iter().map(|(p, _)| repo().join(p)).collect();
        let o = run(bin()
            .args(["predict", "--json", "--top-k", "4", "--device", "cpu"])
            .args(extra)
            .arg(&b)
            .args(&paths));
        assert!(o.status.success(), "{}", o.stderr);
        let got = by_label(&serde_json::from_str(&o.stdout).unwrap());
        assert_eq!(got.len(), want.len());
        let mut worst = 0f64;
        for ((gp, g), (wp, w)) in got.iter().zip(&want) {
            assert!(gp.ends_with(wp.as_str()), "{gp} vs {wp}");
            assert_eq!(g.len(), 4, "{gp}: every class");
            for (label, p) in w {
                let d = (g[label] - p).abs();
                worst = worst.max(d);
                assert!(
                    d <= 1e-4,
                    "{name} {wp} {label}: {} recorded, {} now",
                    p,
                    g[label]
                );
            }
        }
        eprintln!("{name}: largest difference from the recorded probabilities {worst:.1e}");
    }
    // The raw answers differ from image to image: the fixture tests the transform too.
    let raw = by_label(&recorded["raw"]);
    assert!(raw.iter().any(|(_, p)| p["shoes"] > 0.9) && raw.iter().any(|(_, p)| p["shoes"] < 0.3));
}

#[test]
fn a_newer_format_is_refused_naming_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let b = unpack(tmp.path());
    let j = std::fs::read_to_string(b.join("model.json"))
        .unwrap()
        .replace("\"format_version\": 1", "\"format_version\": 2");
    std::fs::write(b.join("model.json"), j).unwrap();
    let photo = repo().join("assets/sample/test/hat/2a12baab-f020-42e3-8e6b-5d82e3ed0b55.jpg");
    let e = refused(
        bin()
            .args(["predict", "--device", "cpu"])
            .arg(&b)
            .arg(&photo),
        "format version 2",
    );
    assert!(
        e.contains("reads versions 1 to 1") && e.contains("upgrade finetune"),
        "{e}"
    );
    assert!(e.contains("model.json"), "{e}");
}

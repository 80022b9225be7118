//! What training makes of a data folder: train/valid folders, bad and odd files (skipped with one
//! warning each), clear errors for unusable folders, labels from a CSV, and `show-batch`.

mod common;
use common::*;
use finetune::data::{DataConfig, DataLoaders, Size};
use std::path::Path;

#[test]
fn explicit_train_valid_folders_are_respected() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(&dir.path().join("train"), 6);
    synthetic(&dir.path().join("valid"), 3);
    synthetic(&dir.path().join("test"), 2);
    let cfg = DataConfig {
        size: Size { w: 16, h: 16 },
        bs: 4,
        ..Default::default()
    };
    let dls = DataLoaders::from_folder(dir.path(), cfg, &finetune::data::Quiet).unwrap();
    assert_eq!((dls.train.len(), dls.valid.len()), (12, 6));
    assert!(dls
        .valid
        .paths
        .iter()
        .all(|p| p.starts_with(dir.path().join("valid"))));
    assert!(!dls
        .train
        .paths
        .iter()
        .chain(&dls.valid.paths)
        .any(|p| p.starts_with(dir.path().join("test"))));
    // Without valid/: a random split of train/, test/ still unused.
    std::fs::remove_dir_all(dir.path().join("valid")).unwrap();
    let cfg = DataConfig {
        size: Size { w: 16, h: 16 },
        bs: 4,
        ..Default::default()
    };
    let dls = DataLoaders::from_folder(dir.path(), cfg, &finetune::data::Quiet).unwrap();
    assert_eq!((dls.train.len(), dls.valid.len()), (10, 2));
}

#[test]
fn bad_files_are_skipped_with_one_warning_each() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), 8);
    let odd = dir.path().join("blue é");
    for f in [
        "cmyk.jpg",
        "grey16.png",
        "transparent.png",
        "palette.gif",
        "rotated.jpg",
        "huge.png",
        "truncated.jpg",
        "empty.jpg",
        "page.jpg",
    ] {
        std::fs::copy(r.join("bad_inputs").join(f), odd.join(f)).unwrap();
    }
    std::fs::write(
        odd.join("notes.txt"),
        "not an image, not named like one: ignored",
    )
    .unwrap();
    let out = dir.path().join("model");
    let o = run(tiny_train(1)
        .args(["--arch", "resnet18", "--out"])
        .arg(&out)
        .arg(dir.path()));
    assert!(o.status.success(), "{}", o.stderr);
    let warnings: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    for bad in ["huge.png", "truncated.jpg", "empty.jpg", "page.jpg"] {
        assert_eq!(
            warnings.iter().filter(|w| w.contains(bad)).count(),
            1,
            "one warning for {bad}: {warnings:#?}"
        );
    }
    assert_eq!(warnings.len(), 4, "{warnings:#?}");
    assert!(o.stdout.contains("4 skipped"), "{}", o.stdout);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(info["data"]["skipped_files"], 4);
    assert_eq!(
        info["data"]["train_images"].as_u64().unwrap()
            + info["data"]["valid_images"].as_u64().unwrap(),
        21
    );

    // --strict makes the first bad file fatal, naming it.
    let o = run(bin()
        .args([
            "train",
            "--random-init",
            "--size",
            "32",
            "--bs",
            "8",
            "--strict",
            "--out",
        ])
        .arg(dir.path().join("m2"))
        .arg(dir.path()));
    assert!(!o.status.success());
    assert!(
        o.stderr.contains("--strict") && o.stderr.contains("blue é"),
        "{}",
        o.stderr
    );
}

#[test]
fn decoding_converts_everything_to_rgb() {
    let r = reference().join("bad_inputs");
    use finetune::data::decode::decode_file;
    let cmyk = decode_file(
        &r.join("cmyk.jpg"),
        finetune::data::files::DEFAULT_MAX_FILE_BYTES,
    )
    .unwrap();
    assert_eq!(cmyk.dimensions(), (40, 30));
    let p = cmyk.get_pixel(5, 5).0;
    assert!(
        p[0] > 200 && p[1] < 160 && p[2] < 160,
        "CMYK (0,128,128,0) is reddish: {p:?}"
    );
    let t = decode_file(
        &r.join("transparent.png"),
        finetune::data::files::DEFAULT_MAX_FILE_BYTES,
    )
    .unwrap();
    assert_eq!(
        t.get_pixel(0, 0).0,
        [255, 255, 255],
        "transparent pixels composite on white"
    );
    let g = decode_file(
        &r.join("grey16.png"),
        finetune::data::files::DEFAULT_MAX_FILE_BYTES,
    )
    .unwrap();
    assert_eq!(g.get_pixel(0, 0).0[0], g.get_pixel(0, 0).0[2]);
    assert_eq!(
        decode_file(
            &r.join("rotated.jpg"),
            finetune::data::files::DEFAULT_MAX_FILE_BYTES
        )
        .unwrap()
        .dimensions(),
        (20, 40),
        "EXIF orientation applied"
    );
    assert!(decode_file(
        &r.join("huge.png"),
        finetune::data::files::DEFAULT_MAX_FILE_BYTES
    )
    .unwrap_err()
    .to_string()
    .contains("too large"));
    assert!(decode_file(
        &r.join("page.jpg"),
        finetune::data::files::DEFAULT_MAX_FILE_BYTES
    )
    .unwrap_err()
    .to_string()
    .contains("HTML"));
}

#[test]
fn folder_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(bin()
        .args(["train", "--random-init"])
        .arg(dir.path().join("nope")));
    assert!(
        !o.status.success() && o.stderr.contains("does not exist"),
        "{}",
        o.stderr
    );

    synthetic(dir.path(), 4);
    std::fs::create_dir(dir.path().join("empty class")).unwrap();
    let o = run(bin()
        .args(["train", "--random-init", "--out"])
        .arg(dir.path().join("m"))
        .arg(dir.path()));
    assert!(
        !o.status.success()
            && o.stderr.contains("empty class")
            && o.stderr.contains("no usable image"),
        "{}",
        o.stderr
    );

    // A class whose only files are broken is as empty as an empty one.
    std::fs::write(dir.path().join("empty class/x.jpg"), b"garbage").unwrap();
    let o = run(bin()
        .args(["train", "--random-init", "--out"])
        .arg(dir.path().join("m"))
        .arg(dir.path()));
    assert!(
        !o.status.success() && o.stderr.contains("empty class"),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains("panicked"));

    let o = run(bin().args(["evaluate"]).arg(dir.path()).arg(dir.path()));
    assert!(
        !o.status.success() && o.stderr.contains("not a model bundle"),
        "{}",
        o.stderr
    );
}

/// `--labels` (fastai's `from_csv`): a CSV that lists the folder layout's labels, with `is_valid`
/// marking the valid folder's images, trains the same model as the folders (same split, metrics
/// and weights bit for bit); without a valid column it gives the folder's seeded random split;
/// `evaluate --labels` equals `evaluate` on folders; rows naming missing files are skipped with one
/// warning; a malformed CSV names its line.
#[test]
fn labels_from_a_csv_train_the_folder_layouts_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synthetic(&data.join("train"), 8);
    synthetic(&data.join("valid"), 3);
    let mut rows = vec!["fname,label,is_valid".to_string()];
    for split in ["train", "valid"] {
        for cls in ["red [a]", "blue é"] {
            let mut names: Vec<String> = std::fs::read_dir(data.join(split).join(cls))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names {
                // Quoted: the names hold spaces, brackets and parentheses.
                rows.push(format!("\"{split}/{cls}/{n}\",{cls},{}", split == "valid"));
            }
        }
    }
    rows.push("train/gone.png,red [a],false".into());
    let csv = dir.path().join("labels.csv");
    std::fs::write(&csv, rows.join("\n") + "\n").unwrap();
    let train = |extra: &[&str], out: &str| {
        let o = run(tiny_train_bs(1, 4)
            .args(["--quiet", "--out"])
            .arg(dir.path().join(out))
            .args(extra)
            .arg(&data));
        assert!(o.status.success(), "{extra:?}: {}", o.stderr);
        let m = metrics_without_time(&dir.path().join(out));
        let w = std::fs::read(dir.path().join(out).join("model.safetensors")).unwrap();
        (m, w, o.stderr)
    };
    let folders = train(&[], "folders");
    let csv_s = csv.to_str().unwrap();
    let labelled = train(&["--labels", csv_s, "--valid-col", "is_valid"], "csv");
    assert_eq!(labelled.0, folders.0, "same metrics");
    assert!(labelled.1 == folders.1, "same weights, bit for bit");
    assert_eq!(
        labelled.2.matches("row(s) of").count(),
        1,
        "one warning for the missing file: {}",
        labelled.2
    );
    assert!(labelled.2.contains("gone.png"), "{}", labelled.2);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("csv/model.json")).unwrap())
            .unwrap();
    assert_eq!(info["data"]["split"]["kind"], "csv", "{info}");
    assert_eq!(info["data"]["split"]["labels"]["valid_col"], "is_valid");

    // No valid column: the seeded random split of the same items, as the folder of class folders.
    let pooled = dir.path().join("pooled");
    for split in ["train", "valid"] {
        for cls in ["red [a]", "blue é"] {
            std::fs::create_dir_all(pooled.join(cls)).unwrap();
            for e in std::fs::read_dir(data.join(split).join(cls)).unwrap() {
                let e = e.unwrap();
                let to = pooled
                    .join(cls)
                    .join(format!("{split}-{}", e.file_name().to_string_lossy()));
                std::fs::copy(e.path(), to).unwrap();
            }
        }
    }
    let pooled_csv = dir.path().join("pooled.csv");
    let mut lines = vec!["label;file".to_string()];
    for cls in ["red [a]", "blue é"] {
        for e in std::fs::read_dir(pooled.join(cls)).unwrap() {
            lines.push(format!(
                "{cls};{cls}/{}",
                e.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    std::fs::write(&pooled_csv, lines.join("\n")).unwrap();
    let run_pooled = |extra: &[&str], out: &str| {
        let o = run(tiny_train_bs(1, 4)
            .args(["--quiet", "--out"])
            .arg(dir.path().join(out))
            .args(extra)
            .arg(&pooled));
        assert!(o.status.success(), "{extra:?}: {}", o.stderr);
        std::fs::read(dir.path().join(out).join("model.safetensors")).unwrap()
    };
    // A semicolon-separated file is one column to a comma reader: named columns are not found.
    refused(
        tiny_train_bs(1, 4)
            .args([
                "--labels",
                pooled_csv.to_str().unwrap(),
                "--fn-col",
                "file",
                "--out",
            ])
            .arg(dir.path().join("bad"))
            .arg(&pooled),
        "no column `file` (its columns: label;file)",
    );
    std::fs::write(&pooled_csv, lines.join("\n").replace(';', ",")).unwrap();
    let a = run_pooled(&[], "pooled-folders");
    let b = run_pooled(
        &[
            "--labels",
            pooled_csv.to_str().unwrap(),
            "--fn-col",
            "file",
            "--label-col",
            "label",
        ],
        "pooled-csv",
    );
    assert!(
        a == b,
        "the random split and model equal the folder layout's"
    );

    // evaluate --labels: the valid folder's evaluation, from the valid rows of a CSV.
    let eval = |target: &Path, extra: &[&str]| {
        let o = run(bin()
            .args(["evaluate", "--json", "--device", "cpu"])
            .arg(dir.path().join("csv"))
            .arg(target)
            .args(extra));
        assert!(o.status.success(), "{}", o.stderr);
        serde_json::from_str::<serde_json::Value>(&o.stdout).unwrap()
    };
    let valid_csv = dir.path().join("valid.csv");
    let vrows: Vec<&str> = rows
        .iter()
        .filter(|r| r.starts_with("fname") || r.starts_with("\"valid/"))
        .map(|r| r.as_str())
        .collect();
    std::fs::write(&valid_csv, vrows.join("\n")).unwrap();
    let by_folder = eval(&data.join("valid"), &[]);
    let by_csv = eval(&data, &["--labels", valid_csv.to_str().unwrap()]);
    assert_eq!(by_csv["total"], 6, "{by_csv}");
    for k in ["total", "correct", "accuracy", "confusion"] {
        assert_eq!(by_csv[k], by_folder[k], "{k}");
    }

    // A malformed CSV names its line.
    std::fs::write(&csv, "fname,label\ntrain/x.png,cat\ntrain/x.png,dog\n").unwrap();
    refused(
        tiny_train_bs(1, 4)
            .args(["--labels", csv_s, "--out"])
            .arg(dir.path().join("bad"))
            .arg(&data),
        "labels.csv, line 3: train/x.png is listed again (first on line 2)",
    );
}

/// `show-batch` (fastai's show_batch): a fastai-shaped grid of the first training batch's images at
/// the model's size, each a real training item as training loads it, labelled; `--augment` shows
/// the augmented pixels; the count is checked.
#[test]
fn show_batch_draws_the_first_training_batch() {
    use finetune::train::show_batch::first_batch;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synthetic(&data, 8);
    let png = dir.path().join("b.png");
    let show = |extra: &[&str], out: &Path| {
        let o = run(bin()
            .args([
                "show-batch",
                "--size",
                "32",
                "--bs",
                "8",
                "--n",
                "4",
                "--out",
            ])
            .arg(out)
            .args(extra)
            .arg(&data));
        assert!(o.status.success(), "{}", o.stderr);
        image::open(out).unwrap().to_rgb8()
    };
    let g = show(&[], &png);
    // 2×2 cells of 32×32 with a 12-px caption, 4-px gaps.
    assert_eq!(g.dimensions(), (2 * 36 + 4, 2 * 48 + 4));
    let cell = |g: &image::RgbImage, k: u32| {
        image::imageops::crop_imm(g, 4 + (k % 2) * 36, 4 + (k / 2) * 48, 32, 32).to_image()
    };
    let cfg = DataConfig {
        size: Size { w: 32, h: 32 },
        bs: 8,
        ..Default::default()
    };
    let dls = DataLoaders::from_folder(&data, cfg, &finetune::data::Quiet).unwrap();
    let want = first_batch(&dls, 4, None).unwrap();
    let mut rng = rand::rngs::mock::StepRng::new(0, 0);
    let train_items: Vec<Vec<u8>> = (0..dls.train.len())
        .map(|i| {
            let (x, _) = dls.train_batch(&[i], &mut rng);
            Vec::<u8>::try_from(x.view([-1])).unwrap()
        })
        .collect();
    for k in 0..4 {
        let c = cell(&g, k);
        assert_eq!(c, want[k as usize].0, "cell {k} is the library's image");
        assert!(
            train_items.contains(&c.into_raw()),
            "cell {k} is a training item"
        );
        // Its caption holds ink.
        let ink = (4..36)
            .filter(|&x| {
                g.get_pixel(x + (k % 2) * 36, 4 + (k / 2) * 48 + 34) != &image::Rgb([255, 255, 255])
            })
            .count();
        assert!(ink > 0, "cell {k} is labelled");
    }
    let aug = show(
        &["--augment", "--max-warp", "0.3"],
        &dir.path().join("a.png"),
    );
    assert_ne!(cell(&aug, 0), cell(&g, 0), "augmentation shows");
    refused(
        bin()
            .args(["show-batch", "--n", "0", "--out"])
            .arg(&png)
            .arg(&data),
        "--n must be between 1 and the batch size",
    );
}

// --- RegNet, ConvNeXt and ViT: one training step per phase, and fastai's norm parameters -------

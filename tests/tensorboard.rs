//! `--tensorboard DIR` (docs/usage.md "Experiment tracking"): the event files, read back with
//! TensorBoard's own reader (`tests/tracking/read_events.py`), hold every step's loss and learning
//! rate, every epoch's table row, the first batch and each epoch's confusion matrix as images, and
//! the run's settings as hparams.

mod common;

use common::*;

#[test]
fn tensorboard_holds_the_runs_scalars_images_and_hparams() {
    let tmp = tempfile::tempdir().unwrap();
    let (tb, out) = (tmp.path().join("tb"), tmp.path().join("m"));
    let o = run(tiny_train(1)
        .args(["--arch", "resnet18", "--threads", "1", "--quiet", "--tensorboard"])
        .arg(&tb)
        .arg("--out")
        .arg(&out)
        .arg(repo().join("assets/sample")));
    assert!(o.status.success(), "{}", o.stderr);
    let files: Vec<_> = std::fs::read_dir(&tb).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("events.out.tfevents."));
    let r = run(std::process::Command::new(python())
        .arg(repo().join("tests/tracking/read_events.py"))
        .arg(&tb));
    assert!(r.status.success(), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();

    // One loss and one learning rate per step, steps 1, 2, … through both fits.
    let loss = v["scalars"]["train/loss"].as_array().unwrap();
    let steps: Vec<u64> = loss.iter().map(|p| p[0].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>());
    assert_eq!(v["scalars"]["train/lr"].as_array().unwrap().len(), steps.len());
    assert!(loss.iter().all(|p| p[1].as_f64().unwrap().is_finite()));

    // Each epoch's row as metrics.csv records it, at the epoch's last step.
    let rows = metrics_without_time(&out);
    let header: Vec<&str> = rows[0].split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let valid = v["scalars"]["epoch/valid_loss"].as_array().unwrap();
    assert_eq!(valid.len(), rows.len() - 1, "one point per epoch");
    for (p, row) in valid.iter().zip(&rows[1..]) {
        let want: f64 = row.split(',').nth(col("valid_loss")).unwrap().parse().unwrap();
        let got = p[1].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{got} vs {want}");
    }
    assert_eq!(valid.last().unwrap()[0].as_u64(), steps.last().copied());
    for t in ["epoch/train_loss", "epoch/error_rate", "epoch/accuracy"] {
        assert_eq!(v["scalars"][t].as_array().unwrap().len(), rows.len() - 1, "{t}");
    }

    // The first batch (8 images of 32 px, in fastai's 2×4 grid) and a confusion matrix per epoch.
    let show = &v["images"]["show_batch"][0];
    assert!(show[1].as_u64().unwrap() > 4 * 32 && show[2].as_u64().unwrap() > 2 * 32, "{show}");
    assert_eq!(v["images"]["confusion_matrix"].as_array().unwrap().len(), rows.len() - 1);

    let h = &v["hparams"];
    assert_eq!(h["arch"], "resnet18");
    assert_eq!(h["bs"], 8.0);
    assert_eq!(h["fine_tune.epochs"], 1.0);
    assert_eq!(h["fine_tune.base_lr"], 0.002);
    assert_eq!(h["augment"], false);
    assert_eq!(h["size"], "32x32");
}

/// A folder that cannot be made is refused before training, naming it.
#[test]
fn an_unwritable_tensorboard_folder_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = refused(
        tiny_train(0)
            .args(["--arch", "resnet18", "--threads", "1", "--quiet", "--tensorboard"])
            .arg(file.join("tb"))
            .arg("--out")
            .arg(tmp.path().join("m"))
            .arg(repo().join("assets/sample")),
        "cannot write TensorBoard events to",
    );
    assert!(e.contains("a-file"), "{e}");
}

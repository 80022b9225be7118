//! The recipe's options at work: augmentation, MixUp/CutMix and label smoothing, save-best and
//! early stopping (resumed exactly), Ctrl-C, and mixed precision with its loss scale.

mod common;
use common::*;
use finetune::train::fit::AfterEpoch;
use finetune::train::{FineTune, Learner, LrSpec, OneCycle, Report, SilentReport};
use std::path::Path;

#[test]
fn augment_changes_training_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synthetic(&data, 12);
    let train = |aug: bool, out: &str| {
        let mut c = tiny_train_bs(1, 4);
        c.args(["--quiet", "--out"])
            .arg(dir.path().join(out))
            .arg(&data);
        if aug {
            c.arg("--augment");
        }
        let o = run(&mut c);
        assert!(o.status.success(), "{}", o.stderr);
        let info: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(out).join("model.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(info["training"]["augment"], aug);
        // Every column but the time.
        let csv = std::fs::read_to_string(dir.path().join(out).join("metrics.csv")).unwrap();
        csv.lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let plain1 = train(false, "p1");
    let plain2 = train(false, "p2");
    let aug = train(true, "a1");
    let train_loss = |csv: &str| {
        csv.lines()
            .nth(1)
            .unwrap()
            .split(',')
            .nth(2)
            .unwrap()
            .to_string()
    };
    assert_eq!(plain1, plain2, "same seed, same run");
    assert_ne!(
        train_loss(&plain1),
        train_loss(&aug),
        "augmentation changes what the model sees"
    );
    // The warp is part of --augment (fastai's max_warp 0.2), recorded with every magnitude.
    let info = |out: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(out).join("model.json")).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        info("a1")["training"]["aug"],
        serde_json::json!({"p_affine": 0.75, "p_lighting": 0.75, "max_rotate": 10.0,
            "max_zoom": 1.1, "max_lighting": 0.2, "max_warp": 0.2})
    );
    assert!(info("p1")["training"].get("aug").is_none());
    let o = run(tiny_train_bs(1, 4)
        .args(["--quiet", "--augment", "--max-warp", "0", "--out"])
        .arg(dir.path().join("nowarp"))
        .arg(&data));
    assert!(o.status.success(), "{}", o.stderr);
    assert_eq!(info("nowarp")["training"]["aug"]["max_warp"], 0.0);
    let csv = std::fs::read_to_string(dir.path().join("nowarp/metrics.csv")).unwrap();
    assert_ne!(
        csv.lines().nth(1).unwrap().split(',').nth(2).unwrap(),
        train_loss(&aug),
        "the warp changes what the model sees"
    );
    for (args, want) in [
        (
            &["--augment", "--max-warp", "0.5"][..],
            "--max-warp must be between 0 and 0.3",
        ),
        (
            &["--augment", "--p-affine", "2"][..],
            "--p-affine must be between 0 and 1",
        ),
        (&["--max-warp", "0.1"][..], "--augment"),
    ] {
        refused(
            tiny_train_bs(1, 4)
                .args(["--quiet", "--out"])
                .arg(dir.path().join("bad"))
                .args(args)
                .arg(&data),
            want,
        );
    }
}

/// `--mixup`/`--cutmix` (fastai's callbacks) are recorded, seeded, change what training sees, and
/// are checked before a run starts; `--label-smoothing` likewise.
#[test]
fn mixing_and_label_smoothing_change_training_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synthetic(&data, 12);
    let train = |extra: &[&str], out: &str| {
        let o = run(tiny_train_bs(1, 4)
            .args(["--quiet", "--out"])
            .arg(dir.path().join(out))
            .args(extra)
            .arg(&data));
        assert!(o.status.success(), "{extra:?}: {}", o.stderr);
        let info: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(out).join("model.json")).unwrap(),
        )
        .unwrap();
        // train_loss of the first epoch, and every column but the time.
        let rows = metrics_without_time(&dir.path().join(out));
        let first = rows[1].split(',').nth(2).unwrap().to_string();
        (info["training"].clone(), first, rows)
    };
    let (plain_info, plain, _) = train(&[], "plain");
    assert!(plain_info.get("mix").is_none(), "{plain_info}");
    let (info, mixup, rows1) = train(&["--mixup", "0.4"], "m1");
    assert_eq!(
        info["mix"],
        serde_json::json!({"kind": "mixup", "alpha": 0.4})
    );
    let (_, _, rows2) = train(&["--mixup", "0.4"], "m2");
    assert_eq!(rows1, rows2, "same seed, same mixing");
    assert_ne!(plain, mixup, "MixUp changes the training batches");
    let (info, cutmix, _) = train(&["--cutmix", "0.5"], "c1");
    assert_eq!(
        info["mix"],
        serde_json::json!({"kind": "cutmix", "alpha": 0.5})
    );
    assert_ne!(plain, cutmix, "CutMix changes the training batches");
    let (info, smoothed, _) = train(&["--label-smoothing", "0.1"], "ls");
    assert_eq!(info["label_smoothing"], 0.1);
    assert_ne!(plain, smoothed);

    for (args, want) in [
        (&["--mixup", "0"][..], "--mixup must be a number above 0"),
        (&["--cutmix", "-1"][..], "--cutmix must be a number above 0"),
        (
            &["--mixup", "0.4", "--cutmix", "1"][..],
            "cannot be used with",
        ),
        (
            &["--label-smoothing", "1"][..],
            "--label-smoothing must be at least 0 and below 1",
        ),
    ] {
        refused(
            tiny_train_bs(1, 4)
                .args(["--quiet", "--out"])
                .arg(dir.path().join("bad"))
                .args(args)
                .arg(&data),
            want,
        );
    }
}

/// Every field of a row but its wall time.
fn row_key(r: &finetune::train::EpochRow) -> String {
    format!(
        "{} {} {:e} {:e} {:e} {}",
        r.phase, r.epoch, r.train_loss, r.valid_loss, r.error_rate, r.best
    )
}

fn weights_of(l: &Learner) -> Vec<(String, tch::Tensor)> {
    let mut v: Vec<(String, tch::Tensor)> = l
        .net
        .vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.detach().copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// `--save-best` (fastai's SaveModelCallback): each fit ends with the weights of its first epoch
/// with the lowest monitored value, and marks it; a run resumed from any epoch's checkpoint ends
/// with the same rows and weights bit for bit (the tracker state and best weights travel in it).
#[test]
fn save_best_keeps_each_fits_best_epoch_and_resumes() {
    use finetune::bundle::{Checkpoint, Monitor, Tracking};
    use std::cell::RefCell;
    use std::rc::Rc;
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), 12);
    let ft = FineTune {
        epochs: 4,
        freeze_epochs: 3,
        base_lr: 3e-2,
        ..Default::default()
    };
    let make = || {
        let mut l = tiny_learner(dir.path(), 4);
        l.recipe.tracking = Some(Tracking {
            monitor: Monitor::ValidLoss,
            save_best: true,
            patience: None,
        });
        l
    };
    type Snap = (String, usize, Vec<(String, tch::Tensor)>, Checkpoint);
    let snaps: Rc<RefCell<Vec<Snap>>> = Rc::default();
    let mut a = make();
    let s = snaps.clone();
    a.add_callback(AfterEpoch(move |l: &Learner, _: &mut dyn Report| {
        let row = l.rows.last().unwrap();
        s.borrow_mut().push((
            row.phase.clone(),
            row.epoch,
            weights_of(l),
            l.last_checkpoint.clone().unwrap(),
        ));
    }));
    a.fine_tune(ft, &mut SilentReport);
    a.clear_callbacks();
    assert_eq!(a.rows.len(), 7);
    for phase in ["frozen", "unfrozen"] {
        let rows: Vec<_> = a.rows.iter().filter(|r| r.phase == phase).collect();
        let kept: Vec<_> = rows.iter().filter(|r| r.best).collect();
        assert_eq!(kept.len(), 1, "{phase}: one kept epoch");
        let first_min = rows
            .iter()
            .fold(None::<&&finetune::train::EpochRow>, |b, r| match b {
                Some(b) if b.valid_loss <= r.valid_loss => Some(b),
                _ => Some(r),
            })
            .unwrap();
        assert_eq!(
            kept[0].epoch, first_min.epoch,
            "{phase}: the first lowest valid_loss"
        );
    }
    let kept = a.rows.iter().rfind(|r| r.best).unwrap();
    eprintln!(
        "kept unfrozen epoch {} of 4 (valid losses {:?})",
        kept.epoch,
        a.rows.iter().map(|r| r.valid_loss).collect::<Vec<_>>()
    );
    let snaps = snaps.borrow();
    let (_, _, kept_weights, _) = snaps
        .iter()
        .find(|(p, e, _, _)| p == "unfrozen" && *e == kept.epoch)
        .unwrap();
    let final_weights = weights_of(&a);
    for ((k, w), (_, f)) in kept_weights.iter().zip(&final_weights) {
        assert!(w.equal(f), "{k}: the final weights are the kept epoch's");
    }
    let want: Vec<String> = a.rows.iter().map(row_key).collect();
    // Resumed from the end of the frozen phase (its best reloaded at the boundary) and from
    // inside each fit.
    for (phase, epoch) in [("frozen", 1), ("frozen", 2), ("unfrozen", 1)] {
        let (_, _, _, ck) = snaps
            .iter()
            .find(|(p, e, _, _)| p == phase && *e == epoch)
            .unwrap();
        let mut c = make();
        c.resume_from(ck.clone()).unwrap();
        c.fine_tune(ft, &mut SilentReport);
        let got: Vec<String> = c.rows.iter().map(row_key).collect();
        assert_eq!(got, want, "resumed after {phase} epoch {epoch}");
        for ((k, w), (_, f)) in weights_of(&c).iter().zip(&final_weights) {
            assert!(w.equal(f), "resumed after {phase} epoch {epoch}: {k}");
        }
    }
}

/// `--early-stop` (fastai's EarlyStoppingCallback) ends each fit after PATIENCE epochs without a
/// strict improvement, says so even under --quiet, and does not skip the next fit; with
/// `--save-best error_rate` metrics.csv marks the kept epochs and model.json records both.
/// Seven epochs on a valid set of at most 5 images cannot all improve its error rate strictly
/// (it takes at most 6 values), so both fits stop early whatever the machine's arithmetic.
#[test]
fn early_stop_ends_each_fit_and_save_best_marks_the_kept_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synthetic(&data, 12);
    let out = dir.path().join("m");
    let o = run(tiny_train_bs(7, 4)
        .args([
            "--freeze-epochs",
            "7",
            "--early-stop",
            "1",
            "--save-best",
            "error_rate",
        ])
        .args(["--quiet", "--out"])
        .arg(&out)
        .arg(&data));
    assert!(o.status.success(), "{}", o.stderr);
    assert_eq!(
        o.stderr.matches("No improvement since epoch").count(),
        2,
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains("unfrozen: kept the weights of epoch"),
        "{}",
        o.stderr
    );
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().ends_with(",seconds,best"), "{csv}");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    for phase in ["frozen", "unfrozen"] {
        let of: Vec<_> = rows.iter().filter(|r| r[0] == phase).collect();
        assert!(
            !of.is_empty() && of.len() < 7,
            "{phase} stopped early: {csv}"
        );
        assert_eq!(of.iter().filter(|r| r[7] == "yes").count(), 1, "{csv}");
    }
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(
        info["training"]["tracking"],
        serde_json::json!({"monitor": "error_rate", "save_best": true, "patience": 1})
    );
    // model.json's metrics are the kept epoch's.
    let kept = rows.iter().rfind(|r| r[7] == "yes").unwrap();
    let err: f64 = kept[4].parse().unwrap();
    assert!((info["metrics"]["error_rate"].as_f64().unwrap() - err).abs() < 1e-6);

    refused(
        tiny_train_bs(1, 4)
            .args(["--early-stop", "0", "--out"])
            .arg(dir.path().join("bad"))
            .arg(&data),
        "--early-stop must be at least 1",
    );
}

#[test]
fn ctrl_c_saves_what_was_learnt() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), 40);
    let out = dir.path().join("model");
    let mut child = tiny_train(500)
        .args(["--quiet", "--out"])
        .arg(&out)
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Wait for the first row of the unfrozen table, then interrupt.
    let mut tables = 0;
    for l in lines.by_ref() {
        let l = l.unwrap();
        if l.starts_with("epoch") {
            tables += 1;
        } else if tables == 2 && l.trim_start().starts_with('0') {
            break;
        }
    }
    let st = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "clean exit after Ctrl-C: {status:?} {rest:?}"
    );
    assert!(
        rest.iter().any(|l| l.starts_with("interrupted")),
        "{rest:?}"
    );
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(info["training"]["interrupted"], true);
    assert!(out.join("model.safetensors").is_file());
    let rows = std::fs::read_to_string(out.join("metrics.csv"))
        .unwrap()
        .lines()
        .count()
        - 1;
    assert!(
        (2..100).contains(&rows),
        "stopped early with the epochs done so far: {rows}"
    );
}

/// `--precision bf16|fp16` trains end to end on the CPU (libtorch's autocast; fp16 adds loss
/// scaling) and the bundle it writes is an ordinary fp32 one that evaluates in any precision.
#[test]
fn mixed_precision_trains_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synthetic(&data, 16);
    for p in ["bf16", "fp16"] {
        let out = dir.path().join(format!("model-{p}"));
        let o = tiny_train(1)
            .args(["--precision", p, "--out"])
            .arg(&out)
            .arg(&data)
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "{p}: {log}");
        assert!(
            log.lines()
                .any(|l| l.starts_with("model:") && l.ends_with(&format!(", {p}"))),
            "{p}: the model line names the precision: {log}"
        );
        let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
        for row in csv.lines().skip(1) {
            let f: Vec<f64> = row.split(',').skip(2).map(|v| v.parse().unwrap()).collect();
            assert!(f.iter().all(|v| v.is_finite()), "{p}: {row}");
        }
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap())
                .unwrap();
        assert_eq!(info["training"]["precision"], p);
        let st = tch::Tensor::read_safetensors(out.join("model.safetensors")).unwrap();
        assert!(st
            .iter()
            .filter(|(_, t)| t.is_floating_point())
            .all(|(_, t)| t.kind() == tch::Kind::Float));
        for eval_p in ["fp32", p] {
            let e = bin()
                .args([
                    "evaluate",
                    "--json",
                    "--device",
                    "cpu",
                    "--precision",
                    eval_p,
                ])
                .arg(&out)
                .arg(&data)
                .output()
                .unwrap();
            assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
            let v: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
            assert!(v["accuracy"].as_f64().unwrap().is_finite());
        }
    }
}

/// fp16 training keeps its loss scale in the resumable checkpoint (a resumed run goes on with
/// it instead of re-learning it by skipping steps); fp32 has none.
#[test]
fn fp16_checkpoints_carry_the_loss_scale() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), 8);
    for (precision, scaled) in [
        (finetune::model::Precision::Fp32, false),
        (finetune::model::Precision::Fp16, true),
    ] {
        let mut learn = tiny_learner(dir.path(), 8);
        learn.net.set_precision(precision);
        learn.scaler = finetune::train::GradScaler::new(scaled);
        learn.fit_one_cycle(
            "frozen",
            1,
            LrSpec::Max(1e-3),
            OneCycle::default(),
            &mut SilentReport,
        );
        let ck = learn.last_checkpoint.as_ref().unwrap();
        assert_eq!(
            ck.state.loss_scale,
            scaled.then(|| learn.scaler.state()),
            "{precision}"
        );
        assert!(learn.rows[0].train_loss.is_finite(), "{precision}");
    }
}

/// Skewed classes: `train` warns and names the options; `--class-weights auto`, a CSV of weights
/// and `--balanced` train and are recorded in `model.json` (and so resumed and compared across
/// ranks); bad weights are refused naming the class; `evaluate` reports balanced accuracy and
/// macro F1 as scikit-learn defines them.
#[test]
fn class_weights_and_balanced_sampling_for_skewed_classes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synthetic(&data, 30);
    // 30 red, 4 blue: over 5x apart in the training split too.
    for i in 4..30 {
        std::fs::remove_file(data.join("blue é").join(format!("img {i} (copy).png"))).unwrap();
    }
    let train = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let o = run(tiny_train_bs(1, 4)
            .args([
                "--arch",
                "resnet18",
                "--threads",
                "1",
                "--quiet",
                "--unknown",
                "off",
            ])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .arg(&data));
        (o, out)
    };
    let training = |out: &Path| -> serde_json::Value {
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap())
                .unwrap();
        info["training"].clone()
    };

    let (o, plain) = train("plain", &[]);
    assert!(o.status.success(), "{}", o.stderr);
    assert!(
        o.stderr.contains("warning: skewed classes")
            && o.stderr.contains("--class-weights auto")
            && o.stderr.contains("--balanced"),
        "{}",
        o.stderr
    );
    assert!(training(&plain).get("class_weights").is_none());
    assert!(training(&plain).get("balanced").is_none());

    let (o, auto) = train("auto", &["--class-weights", "auto"]);
    assert!(o.status.success(), "{}", o.stderr);
    assert!(!o.stderr.contains("skewed classes"), "{}", o.stderr);
    assert_eq!(training(&auto)["class_weights"], "auto");

    let csv = dir.path().join("weights.csv");
    std::fs::write(&csv, "class,weight\nred [a],1\nblue é,7.5\n").unwrap();
    let (o, given) = train("given", &["--class-weights", csv.to_str().unwrap()]);
    assert!(o.status.success(), "{}", o.stderr);
    assert_eq!(
        training(&given)["class_weights"],
        serde_json::json!({"given": {"blue é": 7.5, "red [a]": 1.0}})
    );

    let (o, balanced) = train("balanced", &["--balanced"]);
    assert!(o.status.success(), "{}", o.stderr);
    assert_eq!(training(&balanced)["balanced"], true);

    // Weights that do not fit the data are refused, naming the class and the fix.
    std::fs::write(&csv, "red [a],1\n").unwrap();
    let (o, _) = train("missing", &["--class-weights", csv.to_str().unwrap()]);
    assert!(
        !o.status.success() && o.stderr.contains("no weight for the class `blue é`"),
        "{}",
        o.stderr
    );
    std::fs::write(&csv, "red [a],1\nblue é,0\n").unwrap();
    let (o, _) = train("zero", &["--class-weights", csv.to_str().unwrap()]);
    assert!(
        !o.status.success()
            && o.stderr
                .contains("weight of `blue é` must be a number above 0"),
        "{}",
        o.stderr
    );
    let (o, _) = train("nofile", &["--class-weights", "nowhere.csv"]);
    assert!(
        !o.status.success() && o.stderr.contains("--class-weights nowhere.csv"),
        "{}",
        o.stderr
    );

    // Balanced accuracy is the mean of the classes' recalls, macro F1 the mean of their F1.
    let o = run(bin()
        .args(["evaluate", "--json", "--device", "cpu"])
        .arg(&balanced)
        .arg(&data));
    assert!(o.status.success(), "{}", o.stderr);
    let ev: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let per: Vec<&serde_json::Value> = ev["per_class"].as_array().unwrap().iter().collect();
    let mean = |k: &str| per.iter().map(|r| r[k].as_f64().unwrap()).sum::<f64>() / per.len() as f64;
    assert!((ev["balanced_accuracy"].as_f64().unwrap() - mean("recall")).abs() < 1e-12);
    assert!((ev["macro_f1"].as_f64().unwrap() - mean("f1")).abs() < 1e-12);
}

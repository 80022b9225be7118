//! Training semantics: fastai's schedules, optimizer and freezing; bad input handling; and a real
//! fine-tune of ImageNet mobilenet_v2 that must reach a measured accuracy.

mod common;
use common::*;
use finetune::data::{DataConfig, DataLoaders, Size};
use finetune::model::{load_checkpoint, Arch, Network, Part};
use finetune::train::fit::AfterEpoch;
use finetune::train::learner::opt_params;
use finetune::train::optimizer::Adam;
use finetune::train::{
    AdamConfig, FineTune, Learner, LrSpec, OneCycle, Recipe, Report, SilentReport,
};
use std::path::Path;

/// A learner for `arch` (random init, seeded) on the 32-px images of `dir`, in batches of `bs`.
fn learner_for(arch: Arch, dir: &Path, bs: usize) -> Learner {
    tch::manual_seed(0);
    let cfg = DataConfig {
        size: Size { w: 32, h: 32 },
        bs,
        ..Default::default()
    };
    let dls = DataLoaders::from_folder(dir, cfg, &indicatif::ProgressBar::hidden()).unwrap();
    let net = Network::classifier(arch, dls.classes.len() as i64, tch::Device::Cpu);
    Learner::new(net, dls, Recipe::default(), 42)
}

fn tiny_learner(dir: &Path, bs: usize) -> Learner {
    learner_for(Arch::Resnet18, dir, bs)
}

/// fastai's formulas, written out independently of the library.
fn cos(a: f64, b: f64, t: f64) -> f64 {
    a + (1.0 + (std::f64::consts::PI * (1.0 - t)).cos()) * (b - a) / 2.0
}
fn combined(pct: f64, a: f64, b: f64, c: f64, p: f64) -> f64 {
    if p < pct {
        cos(a, b, p / pct)
    } else {
        cos(b, c, (p - pct) / (1.0 - pct))
    }
}

#[test]
fn fine_tune_schedules_match_fastai() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), 10); // 20 images: 16 train → 4 batches of 4
    let mut learn = tiny_learner(dir.path(), 4);
    assert_eq!(learn.dls.n_train_batches(), 4);
    learn.fine_tune(
        FineTune {
            epochs: 2,
            ..Default::default()
        },
        &mut SilentReport,
    );
    let frozen: Vec<_> = learn
        .hypers
        .iter()
        .filter(|(p, _)| p == "frozen")
        .map(|(_, h)| h)
        .collect();
    let unfrozen: Vec<_> = learn
        .hypers
        .iter()
        .filter(|(p, _)| p == "unfrozen")
        .map(|(_, h)| h)
        .collect();
    assert_eq!((frozen.len(), unfrozen.len()), (4, 8));
    for (i, h) in frozen.iter().enumerate() {
        let p = i as f64 / 4.0;
        let want_head = combined(0.99, 2e-3 / 25.0, 2e-3, 2e-3 / 1e5, p);
        let want_body = combined(0.99, 2e-4 / 25.0, 2e-4, 2e-4 / 1e5, p);
        assert!(
            (h.lrs[2] - want_head).abs() < 1e-9
                && (h.lrs[0] - want_body).abs() < 1e-9
                && (h.lrs[1] - want_body).abs() < 1e-9
        );
        assert!((h.mom - combined(0.99, 0.95, 0.85, 0.95, p)).abs() < 1e-9);
    }
    let peaks = [1e-5, 1e-4, 1e-3]; // even_mults(1e-3/100, 1e-3, 3)
    for (i, h) in unfrozen.iter().enumerate() {
        let p = i as f64 / 8.0;
        for (g, peak) in peaks.iter().enumerate() {
            let want = combined(0.3, peak / 5.0, *peak, peak / 1e5, p);
            assert!(
                (h.lrs[g] - want).abs() < 1e-9,
                "batch {i} group {g}: {} vs {want}",
                h.lrs[g]
            );
        }
        assert!((h.mom - combined(0.3, 0.95, 0.85, 0.95, p)).abs() < 1e-9);
    }
    // Two tables: one frozen row, then epochs 0 and 1.
    let rows: Vec<(String, usize)> = learn
        .rows
        .iter()
        .map(|r| (r.phase.clone(), r.epoch))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("frozen".into(), 0),
            ("unfrozen".into(), 0),
            ("unfrozen".into(), 1)
        ]
    );
}

#[test]
fn group_lrs_follow_fastai() {
    assert_eq!(LrSpec::Max(1e-2).per_group(3), vec![1e-3, 1e-3, 1e-2]);
    let g = LrSpec::Range(1e-6, 1e-4).per_group(3);
    assert!((g[1] - 1e-5).abs() < 1e-18);
    let s = OneCycle::default();
    assert_eq!((s.div, s.div_final, s.pct_start), (25.0, 1e5, 0.25));
}

#[test]
fn adam_two_steps_match_pytorch() {
    let r = reference();
    // NCHW, PyTorch's kernels in PyTorch's order: this checks the optimizer's arithmetic. (In
    // channels-last the gradients differ in the last bits, and Adam's first steps, ≈ lr·sign(g),
    // turn a sign flip of a near-zero gradient into a 2·lr difference.) The reference is made on
    // this processor's kernels (`reference()`): one made with AVX-512 kernels and replayed under
    // ONEDNN_MAX_CPU_ISA=AVX2 is 3.5e-2 off through that very sign flip. Same kernels: 9.9e-7
    // natively, 1.2e-6 under the AVX2 cap (an AVX-512 Xeon), within the 1e-5 bound.
    let mut net = Network::imagenet(Arch::Resnet18, tch::Device::Cpu);
    net.set_memory_format(finetune::model::MemoryFormat::Nchw);
    load_checkpoint(&net, &r.join("resnet18.pth"), Part::BodyAndClassifier).unwrap();
    let want: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(r.join("adam_resnet18_after2.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.join("adam.json")).unwrap()).unwrap();
    let params = opt_params(&net);
    // Our no-weight-decay rule agrees with fastai's (BatchNorm parameters and biases).
    for (name, _, _, do_wd, _) in &params {
        let key = name.split_once('.').unwrap().1;
        assert_eq!(Some(*do_wd), meta["do_wd"][key].as_bool(), "{name}");
    }
    assert!(params.iter().any(|p| p.0.ends_with("bn1.weight") && !p.3));
    assert!(params.iter().any(|p| p.0.ends_with("fc.bias") && !p.3));
    assert!(params.iter().any(|p| p.0.ends_with("conv1.weight") && p.3));
    let mut opt = Adam::new(
        params,
        AdamConfig {
            wd: meta["wd"].as_f64().unwrap(),
            ..Default::default()
        },
    );
    let lr = meta["lr"].as_f64().unwrap();
    let x = &want["__input"];
    let y = &want["__target"];
    for mom in [0.95, 0.9] {
        use tch::nn::ModuleT;
        let loss = net.forward_t(x, true).cross_entropy_for_logits(y);
        opt.zero_grad();
        loss.backward();
        opt.step(&[lr, lr, lr], mom);
    }
    let mut worst = (0.0, String::new());
    for (name, v) in net.vs.variables() {
        let key = name.split_once('.').unwrap().1;
        // Relative for BN running statistics, whose scale grows with depth on random weights.
        let scale = if key.contains("running") {
            want[key].abs().max().double_value(&[]).max(1.0)
        } else {
            1.0
        };
        let d = max_abs_diff(&v, &want[key]) / scale;
        if d > worst.0 {
            worst = (d, key.to_string());
        }
    }
    eprintln!(
        "max |Δ| after two fastai-Adam steps: {:.2e} ({})",
        worst.0, worst.1
    );
    assert!(worst.0 <= 1e-5, "{worst:?}");
}

#[test]
fn frozen_phase_trains_only_batchnorm_and_head() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), 10);
    let mut learn = tiny_learner(dir.path(), 4);
    let before: Vec<(String, tch::Tensor)> = learn
        .net
        .vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.copy()))
        .collect();
    learn.freeze();
    learn.fit_one_cycle(
        "frozen",
        1,
        LrSpec::Max(1e-2),
        OneCycle {
            pct_start: 0.99,
            ..Default::default()
        },
        &mut SilentReport,
    );
    let after = learn.net.vs.variables();
    let mut seen = [0; 4];
    for (name, b) in before {
        let changed = max_abs_diff(&b, &after[&name]) > 0.0;
        if name.starts_with("head.") {
            assert!(changed, "{name} (head) must train");
            seen[0] += 1;
        } else if name.ends_with("running_mean") || name.ends_with("running_var") {
            assert!(
                changed,
                "{name}: running statistics update in the frozen phase"
            );
            seen[1] += 1;
        } else if learn.net.is_bn_param(&name) {
            assert!(
                changed,
                "{name}: BatchNorm parameters train in frozen groups"
            );
            seen[2] += 1;
        } else {
            assert!(!changed, "{name} is frozen but changed");
            seen[3] += 1;
        }
    }
    assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
}

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
    let dls = DataLoaders::from_folder(dir.path(), cfg, &indicatif::ProgressBar::hidden()).unwrap();
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
    let dls = DataLoaders::from_folder(dir.path(), cfg, &indicatif::ProgressBar::hidden()).unwrap();
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

/// Fine-tunes real ImageNet mobilenet_v2 on the embedded sample (4 clothing classes, 40 train
/// images each) with fastai's defaults at 192 px, then evaluates on held-out photos.
#[test]
fn fine_tune_mobilenet_v2_for_real() {
    let Some(w) = mobilenet_weights() else {
        return skip(
            "../shared/weights absent: real fine-tune not run",
            common::NEEDS_SHARED,
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let o = run(bin()
        .args([
            "train",
            "assets/sample/train",
            "--arch",
            "mobilenet_v2",
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

    let plot = dir.path().join("confusion.svg");
    let o = run(bin()
        .args(["evaluate", "--json", "--plot"])
        .arg(&plot)
        .arg(&out)
        .arg(repo().join("assets/sample/test")));
    assert!(o.status.success(), "{}", o.stderr);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert_eq!(svg.matches("<rect x=").count(), 16, "4x4 cells");
    assert!(svg.contains(">t-shirt</text>"));
    let ev: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let acc = ev["accuracy"].as_f64().unwrap();
    eprintln!("sample test accuracy {acc}");
    // Measured here: 0.925 (37/40), fastai 2.8.12 on the same data and settings: see README benchmark.
    // 0.85 leaves room for libtorch/CPU numeric differences while still failing on a broken pipeline
    // (a random head gives ~0.25, an untrained-but-pretrained body with a bad schedule ~0.5-0.7).
    assert!(acc >= 0.85, "test accuracy {acc} below 0.85");
    assert_eq!(ev["total"], 40);

    // The same model on the shared test photos of these 4 classes (179 images) when available.
    if let Some(shared) = shared() {
        let t = dir.path().join("shared_test");
        std::fs::create_dir(&t).unwrap();
        for c in ["hat", "pants", "shoes", "t-shirt"] {
            std::os::unix::fs::symlink(shared.join("data/clothing-small/test").join(c), t.join(c))
                .unwrap();
        }
        let o = run(bin().args(["evaluate", "--json"]).arg(&out).arg(&t));
        let ev: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        let acc = ev["accuracy"].as_f64().unwrap();
        eprintln!("shared test accuracy {acc} ({} images)", ev["total"]);
        assert!(acc >= 0.85, "shared test accuracy {acc}");
    }

    // predict agrees with evaluate's view, in every output format.
    let hat = repo().join("assets/sample/test/hat");
    let o = run(bin()
        .args(["predict", "--csv", "--top-k", "2"])
        .arg(&out)
        .arg(&hat));
    assert!(o.status.success(), "{}", o.stderr);
    let lines: Vec<&str> = o.stdout.lines().collect();
    // A model with the "unknown" answer appends its two columns.
    assert_eq!(lines[0], "path,label,probability,unknown,score");
    assert_eq!(lines.len(), 1 + 2 * 10);
    let o = run(bin().args(["predict", "--json"]).arg(&out).arg(&hat));
    let js: Vec<serde_json::Value> = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(js.len(), 10);
    let hats = js
        .iter()
        .filter(|p| p["predictions"][0]["label"] == "hat")
        .count();
    assert!(hats >= 6, "{hats}/10 hats recognised");
    let o = run(bin()
        .arg("predict")
        .arg(&out)
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
    let o = run(bin().arg("predict").arg(&out).arg(&hat));
    assert!(
        !o.status.success() && o.stderr.contains("format version 99"),
        "{}",
        o.stderr
    );
}

#[test]
fn lr_find_sweeps_restores_and_suggests() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), 12);
    let mut learn = tiny_learner(dir.path(), 4);
    learn.freeze();
    let before: Vec<(String, tch::Tensor)> = learn
        .net
        .vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.copy()))
        .collect();
    let r = learn.lr_find(1e-7, 10.0, 30, &mut SilentReport);
    assert!(r.lrs.len() >= 10 && r.lrs.len() <= 30);
    for (i, lr) in r.lrs.iter().enumerate() {
        let want = 1e-7 * (10.0f64 / 1e-7).powf(i as f64 / 30.0);
        assert!(
            (lr / want - 1.0).abs() < 1e-9,
            "exponential schedule at {i}"
        );
    }
    let after = learn.net.vs.variables();
    for (k, v) in before {
        assert_eq!(
            max_abs_diff(&v, &after[&k]),
            0.0,
            "{k} restored after lr_find"
        );
    }

    let plot = dir.path().join("lr.svg");
    let o = run(bin()
        .args([
            "lr-find",
            "--random-init",
            "--size",
            "32",
            "--bs",
            "4",
            "--num-it",
            "30",
            "--quiet",
            "--plot",
        ])
        .arg(&plot)
        .arg(dir.path()));
    assert!(o.status.success(), "{}", o.stderr);
    assert!(
        o.stdout.contains("suggested learning rate (valley)"),
        "{}",
        o.stdout
    );
    assert!(std::fs::read_to_string(&plot)
        .unwrap()
        .contains("<polyline"));
    assert!(
        std::fs::read_to_string(plot.with_extension("csv"))
            .unwrap()
            .lines()
            .count()
            > 10
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
    let dls = DataLoaders::from_folder(&data, cfg, &indicatif::ProgressBar::hidden()).unwrap();
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

const ZOO2: [Arch; 8] = [
    Arch::RegnetY400mf,
    Arch::RegnetY800mf,
    Arch::RegnetY1_6gf,
    Arch::RegnetX400mf,
    Arch::ConvnextTiny,
    Arch::ConvnextSmall,
    Arch::VitB16,
    Arch::VitS16,
];

/// Snapshot of every variable.
fn variables(learn: &Learner) -> Vec<(String, tch::Tensor)> {
    let mut v: Vec<_> = learn
        .net
        .vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn changed(learn: &Learner, before: &[(String, tch::Tensor)]) -> Vec<(String, bool)> {
    let after = learn.net.vs.variables();
    before
        .iter()
        .map(|(k, b)| (k.clone(), max_abs_diff(b, &after[k]) > 0.0))
        .collect()
}

/// One batch (8 training images of 32 px) per fit, from the random torchvision-made checkpoints
/// of the parity tests (a fresh ConvNeXt's 1e-6 layer scales would leave steps below float
/// resolution): frozen, only the head, every norm layer's affine parameters (fastai's `train_bn`,
/// LayerNorm included) and BatchNorm statistics change; unfrozen, every parameter changes.
#[test]
fn zoo2_one_step_frozen_then_unfrozen() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), 5); // 10 images: 8 train (one batch of 8), 2 valid
    let one_step = |learn: &mut Learner, phase: &str| {
        learn.fit_one_cycle(
            phase,
            1,
            LrSpec::Max(1e-2),
            OneCycle::default(),
            &mut SilentReport,
        )
    };
    for arch in ZOO2 {
        let mut learn = learner_for(arch, dir.path(), 8);
        assert_eq!(learn.dls.n_train_batches(), 1);
        let w = reference().join(format!("zoo2_{arch}.pth"));
        load_checkpoint(&learn.net, &w, Part::Body).unwrap();
        assert_eq!(arch.n_groups(), 2, "{arch}: fastai's default split");
        let params: std::collections::HashSet<String> =
            learn.net.param_names().iter().cloned().collect();

        let before = variables(&learn);
        learn.freeze();
        one_step(&mut learn, "frozen");
        let mut seen = [0; 4];
        for (name, ch) in changed(&learn, &before) {
            if name.starts_with("head.") {
                assert!(ch, "{arch}: {name} (head) must train");
                seen[0] += 1;
            } else if name.ends_with("running_mean") || name.ends_with("running_var") {
                assert!(ch, "{arch}: {name}: running statistics update when frozen");
                seen[1] += 1;
            } else if learn.net.is_bn_param(&name) {
                assert!(ch, "{arch}: {name}: norm parameters train in frozen groups");
                seen[2] += 1;
            } else {
                assert!(!ch, "{arch}: {name} is frozen but changed");
                seen[3] += 1;
            }
        }
        // ConvNeXt and ViT have LayerNorms only: no running statistics.
        let has_bn = arch.is_regnet();
        assert!(
            seen[0] > 0 && seen[2] > 0 && seen[3] > 0 && (seen[1] > 0) == has_bn,
            "{arch}: {seen:?}"
        );

        let before = variables(&learn);
        learn.unfreeze();
        one_step(&mut learn, "unfrozen");
        let mut per_group = vec![0; arch.n_groups()];
        for (name, ch) in changed(&learn, &before) {
            if params.contains(&name) {
                assert!(ch, "{arch}: {name} must train when unfrozen");
                per_group[arch.group_of(&name)] += 1;
            }
        }
        assert!(per_group.iter().all(|&n| n > 0), "{arch}: {per_group:?}");
        eprintln!("{arch}: frozen {seen:?}, unfrozen per group {per_group:?}");
    }
}

/// The parameters fastai's `train_bn` keeps training and exempts from weight decay are those of
/// its `norm_types` (BatchNorm, InstanceNorm, LayerNorm) modules: the list comes from the
/// torchvision model in Python.
#[test]
fn zoo2_norm_parameters_are_fastais() {
    let json: std::collections::HashMap<String, Vec<String>> = serde_json::from_str(
        &std::fs::read_to_string(reference().join("zoo2_norm_params.json")).unwrap(),
    )
    .unwrap();
    for arch in ZOO2 {
        let net = Network::classifier(arch, 3, tch::Device::Cpu);
        let ours: std::collections::BTreeSet<&str> = net
            .param_names()
            .iter()
            .filter(|n| net.is_bn_param(n))
            .filter_map(|n| n.strip_prefix("body."))
            .collect();
        // The torchvision model's classifier (ConvNeXt's final LayerNorm) is not in the body.
        let want: std::collections::BTreeSet<&str> = json[arch.name()]
            .iter()
            .map(String::as_str)
            .filter(|n| !n.starts_with("classifier.") && !n.starts_with("heads."))
            .collect();
        assert!(!want.is_empty());
        assert_eq!(ours, want, "{arch}");
    }
}

/// One training step of every MobileNetV3 / EfficientNet arch on a tiny batch (32 px), frozen
/// then unfrozen: frozen, only the head, BatchNorm parameters and running statistics change (fastai
/// `train_bn`); unfrozen, every parameter of both groups ([body], [head]: fastai's default split)
/// changes. Seeded, so stochastic depth drops the same branches on every run.
#[test]
fn one_step_of_every_mobile_arch_trains_the_right_parameters() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), 4);
    for arch in [
        Arch::MobilenetV3Small,
        Arch::MobilenetV3Large,
        Arch::EfficientnetB0,
        Arch::EfficientnetB1,
        Arch::EfficientnetB2,
        Arch::EfficientnetB3,
        Arch::EfficientnetV2S,
        Arch::EfficientnetLite0,
        Arch::Mobilenetv3Small100,
        Arch::Mobilenetv3Large100,
        Arch::TfEfficientnetV2S,
    ] {
        let mut learn = learner_for(arch, dir.path(), 4);
        assert_eq!(arch.n_groups(), 2, "{arch}: fastai's default split");
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        let order = learn.dls.train_order(&mut rng);
        let (xb, yb) = learn.dls.train_batch(&order[0], &mut rng);
        let snapshot = |l: &Learner| -> Vec<(String, tch::Tensor)> {
            l.net
                .vs
                .variables()
                .into_iter()
                .map(|(k, v)| (k, v.copy()))
                .collect()
        };
        let changed = |l: &Learner, before: &[(String, tch::Tensor)]| {
            let after = l.net.vs.variables();
            before
                .iter()
                .map(|(k, b)| (k.clone(), max_abs_diff(b, &after[k]) > 0.0))
                .collect::<Vec<_>>()
        };

        learn.freeze();
        let before = snapshot(&learn);
        learn.train_batch(&xb, &yb, &[1e-3, 1e-2], 0.9);
        let mut seen = [0; 4];
        for (name, ch) in changed(&learn, &before) {
            let kind = if name.starts_with("head.") {
                0
            } else if name.ends_with("running_mean") || name.ends_with("running_var") {
                1
            } else if learn.net.is_bn_param(&name) {
                2
            } else {
                3
            };
            seen[kind] += 1;
            if kind == 3 {
                assert!(!ch, "{arch}: {name} is frozen but changed");
            } else if !name.ends_with("num_batches_tracked") {
                assert!(ch, "{arch}: {name} must change in the frozen step");
            }
        }
        assert!(seen.iter().all(|&n| n > 0), "{arch}: {seen:?}");

        learn.unfreeze();
        let before = snapshot(&learn);
        learn.train_batch(&xb, &yb, &[1e-3, 1e-2], 0.9);
        let params = learn.net.param_names().to_vec();
        let mut per_group = [0; 2];
        for (name, ch) in changed(&learn, &before) {
            if params.contains(&name) {
                assert!(ch, "{arch}: {name} did not train unfrozen");
                per_group[arch.group_of(&name)] += 1;
            }
        }
        assert!(per_group.iter().all(|&n| n > 0), "{arch}: {per_group:?}");
    }
}

/// Fine-tunes EfficientNet-Lite0's real weights on the embedded sample with fastai's defaults at
/// 192 px (as `fine_tune_mobilenet_v2_for_real`), records its TensorFlow-Lite input statistics in
/// the bundle, and evaluates on held-out photos.
#[test]
fn fine_tune_efficientnet_lite0_for_real() {
    let Some(w) = lite0_weights() else {
        return skip(
            "../shared/weights absent: efficientnet_lite0 fine-tune not run",
            common::NEEDS_SHARED,
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let o = run(bin()
        .args([
            "train",
            "assets/sample/train",
            "--arch",
            "efficientnet_lite0",
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
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(info["arch"], "efficientnet_lite0");
    let mean = info["normalization"]["mean"][0].as_f64().unwrap();
    let std = info["normalization"]["std"][0].as_f64().unwrap();
    assert!((mean - 127.0 / 255.0).abs() < 1e-9 && (std - 128.0 / 255.0).abs() < 1e-9);

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
    eprintln!("sample test accuracy {acc} ({n} images)");
    // Measured here: 0.850 (34/40; valid error 0.0625), against 0.950 for mobilenet_v2 on the
    // same run. 0.75 (30/40) leaves four photos for libtorch/CPU differences while a broken
    // body, padding or head stays far below (a random head gives ~0.25).
    assert!(acc >= 0.75, "test accuracy {acc} below 0.75");
    assert_eq!(n, 40);

    // The shared test photos of these 4 classes: measured 0.944 (169/179). (The same run with
    // ImageNet instead of Lite statistics: 0.916, 164/179; sample test 0.875.)
    if let Some(shared) = shared() {
        let t = dir.path().join("shared_test");
        std::fs::create_dir(&t).unwrap();
        for c in ["hat", "pants", "shoes", "t-shirt"] {
            std::os::unix::fs::symlink(shared.join("data/clothing-small/test").join(c), t.join(c))
                .unwrap();
        }
        let (acc, n) = accuracy(&t);
        eprintln!("shared test accuracy {acc} ({n} images)");
        assert!(acc >= 0.85, "shared test accuracy {acc}");
    }
}

/// One training step of the deeper, grouped and wide ResNets (random init, 32 px), frozen then
/// unfrozen, with fastai's `_resnet_split` (3 groups): frozen, only the head, BatchNorm parameters
/// and running statistics change; unfrozen, every parameter of all three groups changes.
#[test]
fn resnet_family_one_step_frozen_then_unfrozen() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), 5); // 10 images: 8 train (one batch of 8), 2 valid
    for arch in [
        Arch::Resnet34,
        Arch::Resnet50,
        Arch::Resnet101,
        Arch::Resnet152,
        Arch::Resnext50,
        Arch::WideResnet50,
    ] {
        let mut learn = learner_for(arch, dir.path(), 8);
        assert_eq!(arch.n_groups(), 3, "{arch}: fastai's _resnet_split");
        let params: std::collections::HashSet<String> =
            learn.net.param_names().iter().cloned().collect();
        let one_step = |learn: &mut Learner, phase: &str| {
            learn.fit_one_cycle(
                phase,
                1,
                LrSpec::Max(1e-2),
                OneCycle::default(),
                &mut SilentReport,
            )
        };
        let before = variables(&learn);
        learn.freeze();
        one_step(&mut learn, "frozen");
        for (name, ch) in changed(&learn, &before) {
            let should = name.starts_with("head.")
                || name.ends_with("running_mean")
                || name.ends_with("running_var")
                || learn.net.is_bn_param(&name);
            assert_eq!(ch, should, "{arch}: {name} (frozen step)");
        }
        let before = variables(&learn);
        learn.unfreeze();
        one_step(&mut learn, "unfrozen");
        let mut per_group = vec![0; 3];
        for (name, ch) in changed(&learn, &before) {
            if params.contains(&name) {
                assert!(ch, "{arch}: {name} must train when unfrozen");
                per_group[arch.group_of(&name)] += 1;
            }
        }
        assert!(per_group.iter().all(|&n| n > 0), "{arch}: {per_group:?}");
    }
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

//! One training step of every architecture family, frozen then unfrozen: the right parameters
//! (and BatchNorm statistics) change in each phase, with fastai's parameter groups.

mod common;
use common::*;
use finetune::model::{load_checkpoint, Arch, Network, Portion};
use finetune::train::{Learner, LrSpec, OneCycle, SilentReport};

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
        load_checkpoint(&learn.net, &w, Portion::Body).unwrap();
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

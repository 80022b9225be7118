//! Logit parity with PyTorch/torchvision on the same weights and input (eval mode), for every
//! weights layout we read, in both memory formats: PyTorch's outputs are NCHW (contiguous), ours
//! are checked NCHW and channels-last.

mod common;
use common::*;
use finetune::model::{load_checkpoint, Arch, MemoryFormat, Network, Part};
use std::path::Path;
use tch::nn::ModuleT;

fn check(arch: Arch, weights: &Path, io: &str) {
    let (x, want) = read_io(&reference().join(io));
    assert!(MemoryFormat::Nchw.holds(&x), "PyTorch's input is NCHW");
    for format in [MemoryFormat::Nchw, MemoryFormat::Nhwc] {
        let mut net = Network::imagenet(arch, tch::Device::Cpu);
        net.set_memory_format(MemoryFormat::Nchw);
        load_checkpoint(&net, weights, Part::BodyAndClassifier).unwrap();
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
        let d = max_abs_diff(&got, &want);
        eprintln!(
            "{arch} {format} {} max|Δlogit| = {d:.2e}",
            weights.display()
        );
        assert!(d <= 1e-4, "{arch} {format}: max |Δlogit| {d} > 1e-4");
    }
}

/// A channels-last network saves the same bytes as an NCHW one: the standard contiguous layout
/// that PyTorch and safetensors readers expect, and it loads back into either format.
#[test]
fn channels_last_bundles_are_standard_files() {
    use finetune::data::{PadMode, ResizeMethod, Size};
    use finetune::infer::bundle::{self, ModelInfo, Normalization};
    let dir = tempfile::tempdir().unwrap();
    let (x, _) = read_io(&reference().join("resnet18_io.safetensors"));
    let mut logits = Vec::new();
    for format in [MemoryFormat::Nchw, MemoryFormat::Nhwc] {
        tch::manual_seed(3);
        let mut net = Network::classifier(Arch::Resnet18, 3, tch::Device::Cpu);
        net.set_memory_format(MemoryFormat::Nchw);
        load_checkpoint(&net, &reference().join("resnet18.pth"), Part::Body).unwrap();
        net.set_memory_format(format);
        let info = ModelInfo {
            format_version: bundle::FORMAT_VERSION,
            finetune_version: "test".into(),
            arch: Arch::Resnet18,
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
        return skip("../shared/weights absent: mobilenet_v2 parity not run");
    };
    check(Arch::MobilenetV2, &w, "mobilenet_v2_io.safetensors");
}

#[test]
fn mobilenet_v2_fp16_zip_pth() {
    if mobilenet_weights().is_none() {
        return skip("../shared/weights absent: fp16 parity not run");
    }
    check(
        Arch::MobilenetV2,
        &reference().join("mobilenet_v2_fp16.pth"),
        "mobilenet_v2_fp16_io.safetensors",
    );
}

//! Broken, truncated and wrong weights files give the documented errors, never a panic.

mod common;
use common::*;
use finetune::model::{load_checkpoint, Arch, Network, Portion};

fn load_err(arch: Arch, bytes: &[u8], name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    let net = Network::imagenet(arch, tch::Device::Cpu);
    let e = load_checkpoint(&net, &p, Portion::BodyAndClassifier)
        .expect_err("must fail")
        .to_string();
    assert!(e.contains(name), "error names the file: {e}");
    e
}

#[test]
fn truncated_zip_checkpoint() {
    let full = std::fs::read(reference().join("resnet18.pth")).unwrap();
    let e = load_err(Arch::Resnet18, &full[..full.len() / 2], "half.pth");
    assert!(e.contains("zip"), "{e}");
}

#[test]
fn truncated_legacy_checkpoint() {
    let Some(w) = mobilenet_weights() else {
        return skip("../shared/weights absent", common::NEEDS_SHARED);
    };
    let full = std::fs::read(w).unwrap();
    let e = load_err(Arch::MobilenetV2, &full[..full.len() - 1000], "cut.pth");
    assert!(e.contains("truncated"), "{e}");
    let e = load_err(Arch::MobilenetV2, &full[..5000], "cut2.pth");
    assert!(e.contains("legacy checkpoint"), "{e}");
}

#[test]
fn garbage_and_empty_files() {
    let e = load_err(Arch::Resnet18, b"<html>404 not found</html>", "page.pth");
    assert!(e.contains("not a PyTorch checkpoint"), "{e}");
    let e = load_err(Arch::Resnet18, b"", "empty.pth");
    assert!(e.contains("empty"), "{e}");
    let e = load_err(Arch::Resnet18, b"\x80\x02}q\x00.", "pickle.pth");
    assert!(e.contains("not a PyTorch checkpoint"), "{e}");
}

#[test]
fn wrong_arch_names_key_and_guess() {
    // resnet34 holds every resnet18 key with the right shape, plus more: strictness must catch it.
    let bytes = std::fs::read(reference().join("resnet34.pth")).unwrap();
    let e = load_err(Arch::Resnet18, &bytes, "r34.pth");
    assert!(e.contains("unexpected tensor `layer1.2."), "{e}");
    assert!(e.contains("looks like resnet34"), "{e}");
    let bytes = std::fs::read(reference().join("resnet18.pth")).unwrap();
    let e = load_err(Arch::Resnet50, &bytes, "r18.pth");
    assert!(e.contains("shape") || e.contains("missing"), "{e}");
    assert!(e.contains("looks like resnet18"), "{e}");
    let e = load_err(Arch::MobilenetV2, &bytes, "r18b.pth");
    assert!(e.contains("missing tensor `features.0.0.weight`"), "{e}");
}

/// timm checkpoints given to the wrong arch name the arch they fit (timm layouts load into it).
#[test]
fn wrong_arch_names_timm_and_torchvision_zoo2_files() {
    for (file, given, want) in [
        (
            "zoo2_timm_convnext_tiny.safetensors",
            Arch::Resnet50,
            "convnext_tiny",
        ),
        (
            "zoo2_convnext_small.pth",
            Arch::ConvnextTiny,
            "convnext_small",
        ),
        (
            "zoo2_timm_regnety_016.safetensors",
            Arch::RegnetY400mf,
            "regnet_y_1_6gf",
        ),
        (
            "zoo2_regnet_x_400mf.pth",
            Arch::RegnetY800mf,
            "regnet_x_400mf",
        ),
        (
            "zoo2_timm_vit_small_patch16_224.safetensors",
            Arch::VitB16,
            "vit_s_16",
        ),
        ("zoo2_vit_s_16.pth", Arch::ConvnextTiny, "vit_s_16"),
    ] {
        let bytes = std::fs::read(reference().join(file)).unwrap();
        let e = load_err(given, &bytes, file);
        assert!(e.contains(&format!("looks like {want}")), "{file}: {e}");
    }
}

/// The new families: every wrong pairing names what the file is, timm layouts included.
#[test]
fn wrong_arch_for_mobilenet_v3_efficientnet_and_timm_files() {
    let file = |n: &str| std::fs::read(reference().join(n)).unwrap();
    // A timm EfficientNet given to a ResNet: the message names the timm model, as an --arch.
    let e = load_err(
        Arch::Resnet50,
        &file("timm_efficientnet_b0.safetensors"),
        "b0.safetensors",
    );
    assert!(
        e.contains("timm EfficientNet/MobileNetV3 checkpoint"),
        "{e}"
    );
    assert!(e.contains("looks like efficientnet_b0"), "{e}");
    // timm's MobileNetV3 is not torchvision's (BatchNorm eps): refused, with the arch to use.
    let e = load_err(
        Arch::MobilenetV3Large,
        &file("timm_mobilenetv3_large_100.pth"),
        "mnv3.pth",
    );
    assert!(e.contains("pass --arch mobilenetv3_large_100"), "{e}");
    // timm's V2-S is the TensorFlow port ("SAME" padding): not torchvision's efficientnet_v2_s.
    let e = load_err(
        Arch::EfficientnetV2S,
        &file("timm_tf_efficientnetv2_s.safetensors"),
        "v2s.safetensors",
    );
    assert!(e.contains("looks like tf_efficientnetv2_s"), "{e}");
    // A timm B2 into B1 (same names, wider tensors): caught after renaming, named by its shapes.
    let e = load_err(
        Arch::EfficientnetB1,
        &file("timm_efficientnet_b2.safetensors"),
        "b2.safetensors",
    );
    assert!(e.contains("after renaming timm's keys"), "{e}");
    assert!(e.contains("looks like efficientnet_b2"), "{e}");
    // torchvision files the other way round.
    let e = load_err(
        Arch::EfficientnetB1,
        &file("efficientnet_b2.pth"),
        "tv_b2.pth",
    );
    assert!(
        e.contains("shape") && e.contains("looks like efficientnet_b2"),
        "{e}"
    );
    let e = load_err(
        Arch::Mobilenetv3Small100,
        &file("mobilenet_v3_small.pth"),
        "tv_s.pth",
    );
    assert!(e.contains("looks like mobilenet_v3_small"), "{e}");
    let e = load_err(
        Arch::EfficientnetB3,
        &file("efficientnet_v2_s.pth"),
        "tv_v2s.pth",
    );
    assert!(e.contains("looks like efficientnet_v2_s"), "{e}");
    let e = load_err(
        Arch::MobilenetV3Small,
        &file("mobilenet_v3_large.pth"),
        "tv_l.pth",
    );
    assert!(e.contains("looks like mobilenet_v3_large"), "{e}");
    if let Some(w) = lite0_weights() {
        let e = load_err(
            Arch::EfficientnetB0,
            &std::fs::read(w).unwrap(),
            "lite0.pth",
        );
        assert!(e.contains("looks like efficientnet_lite0"), "{e}");
    }
}

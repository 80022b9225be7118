//! Recognising the arch a checkpoint was saved from, for "looks like" errors.

use super::{timm, Arch};
use crate::model::family::{convnext, regnet, vit};
use crate::model::weights::Shapes;

impl Arch {
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

impl Arch {
    /// The arch a checkpoint was saved from, by names and shapes (timm layouts included), for
    /// "looks like" errors.
    pub fn guess_weights(shapes: &Shapes) -> Option<String> {
        if let Some(a) = timm::guess(shapes).or_else(|| torchvision_layout(shapes)) {
            return Some(a.name().to_string());
        }
        let g = Arch::guess_from_keys(shapes.keys().map(String::as_str))?;
        // EfficientNet-B2 differs from B1 only in widths.
        let b2 =
            g == "efficientnet_b1" && shapes.get("features.8.0.weight").map(|s| s[0]) == Some(1408);
        Some(if b2 { "efficientnet_b2".into() } else { g })
    }
}

/// The RegNet, ConvNeXt or ViT a torchvision checkpoint was saved from (their family files read
/// either layout).
fn torchvision_layout(shapes: &Shapes) -> Option<Arch> {
    regnet::guess(shapes)
        .or_else(|| convnext::guess(shapes))
        .or_else(|| vit::guess(shapes))
        .and_then(|name| name.parse().ok())
}

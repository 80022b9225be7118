//! timm's EfficientNet builder (`efficientnet_*`, `tf_efficientnetv2_*`, `mobilenetv3_*`): its
//! checkpoints' names and layouts, renamed to torchvision's EfficientNet and MobileNetV3 keys on
//! load, recognised from the keys alone.

use crate::model::weights::{Shapes, Tensors};
use std::collections::{BTreeMap, HashMap};

/// Whether a checkpoint uses the names of timm's EfficientNet builder.
pub fn timm_detect(s: &Shapes) -> bool {
    s.contains_key("conv_stem.weight") && s.keys().any(|k| k.starts_with("blocks.0.0."))
}

/// Block counts per stage (`blocks.S.I`).
fn stage_depths(keys: impl Iterator<Item = impl AsRef<str>>) -> Vec<usize> {
    let mut depth: BTreeMap<usize, usize> = BTreeMap::new();
    for k in keys {
        let mut it = k.as_ref().split('.');
        if it.next() != Some("blocks") {
            continue;
        }
        if let (Some(Ok(s)), Some(Ok(i))) = (
            it.next().map(str::parse::<usize>),
            it.next().map(str::parse::<usize>),
        ) {
            let d = depth.entry(s).or_default();
            *d = (*d).max(i + 1);
        }
    }
    depth.into_values().collect()
}

/// The network a checkpoint of timm's builder was saved from, by its stage depths and widths.
pub fn guess(s: &Shapes) -> Option<&'static str> {
    let depths = stage_depths(s.keys());
    let head = s.get("conv_head.weight").map(|v| v[0]);
    let mnv3 = s.contains_key("conv_head.bias");
    Some(match (mnv3, depths.as_slice(), head) {
        (true, [1, 2, 3, 4, 2, 3, 1], _) => "mobilenetv3_large_100",
        (true, [1, 2, 3, 2, 3, 1], _) => "mobilenetv3_small_100",
        (false, [1, 2, 2, 3, 3, 4, 1], Some(1280)) => "efficientnet_b0",
        (false, [2, 3, 3, 4, 4, 5, 2], Some(1280)) => "efficientnet_b1",
        (false, [2, 3, 3, 4, 4, 5, 2], Some(1408)) => "efficientnet_b2",
        (false, [2, 3, 3, 5, 5, 6, 2], Some(1536)) => "efficientnet_b3",
        (false, [2, 4, 4, 6, 9, 15], Some(1280)) => "tf_efficientnetv2_s",
        _ => return None,
    })
}

/// timm block types, told apart by their layer names.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BlockKind {
    /// `DepthwiseSeparableConv`: conv_dw, bn1, [se], conv_pw, bn2.
    Ds,
    /// `InvertedResidual`: conv_pw, bn1, conv_dw, bn2, [se], conv_pwl, bn3.
    Ir,
    /// `EdgeResidual` (V2's fused MBConv): conv_exp, bn1, [se], conv_pwl, bn2.
    Er,
    /// `ConvBnAct`: conv, bn1.
    Cn,
}

/// Renames into torchvision's EfficientNet keys, or with `mnv3` its MobileNetV3's (which lists
/// blocks flat in `features`, where EfficientNet nests one Sequential per stage).
pub fn timm_remap(mnv3: bool, t: Tensors) -> Result<Tensors, String> {
    let depths = stage_depths(t.keys());
    let mut kinds: HashMap<(usize, usize), (BlockKind, bool)> = HashMap::new();
    for (s, &depth) in depths.iter().enumerate() {
        for i in 0..depth {
            let has = |n: &str| t.contains_key(&format!("blocks.{s}.{i}.{n}.weight"));
            let kind = if has("conv_pwl") && has("conv_pw") {
                BlockKind::Ir
            } else if has("conv_exp") {
                BlockKind::Er
            } else if has("conv_dw") {
                BlockKind::Ds
            } else if has("conv") {
                BlockKind::Cn
            } else {
                return Err(format!(
                    "block `blocks.{s}.{i}` has no layer timm's EfficientNet builder makes"
                ));
            };
            kinds.insert((s, i), (kind, has("se.conv_reduce")));
        }
    }
    // Index in `features` of the last 1×1 conv (EfficientNet) / first block of each stage (MobileNetV3).
    let last_feature = depths.len() + 1;
    let mut offsets = vec![1; depths.len()];
    for s in 1..depths.len() {
        offsets[s] = offsets[s - 1] + depths[s - 1];
    }
    let mut out = Tensors::new();
    for (k, v) in t {
        let (new, v) = if let Some(rest) = k.strip_prefix("conv_stem.") {
            (format!("features.0.0.{rest}"), v)
        } else if let Some(rest) = k.strip_prefix("bn1.") {
            (format!("features.0.1.{rest}"), v)
        } else if let Some(rest) = k.strip_prefix("conv_head.") {
            if mnv3 {
                // timm applies the hidden layer as a 1×1 conv after pooling; torchvision as a Linear.
                let v = if rest == "weight" {
                    v.flatten(1, -1)
                } else {
                    v
                };
                (format!("classifier.0.{rest}"), v)
            } else {
                (format!("features.{last_feature}.0.{rest}"), v)
            }
        } else if let Some(rest) = k.strip_prefix("bn2.") {
            (format!("features.{last_feature}.1.{rest}"), v)
        } else if let Some(rest) = k.strip_prefix("classifier.") {
            (format!("classifier.{}.{rest}", if mnv3 { 3 } else { 1 }), v)
        } else if let Some(rest) = k.strip_prefix("blocks.") {
            let mut parts = rest.splitn(3, '.');
            let (Some(Ok(s)), Some(Ok(i)), Some(layer)) = (
                parts.next().map(str::parse::<usize>),
                parts.next().map(str::parse::<usize>),
                parts.next(),
            ) else {
                return Err(format!("unexpected key `{k}`"));
            };
            // Stages are numbered from 0 without gaps in timm's files; anything else is not one.
            let (Some(&(kind, se)), Some(offset)) = (kinds.get(&(s, i)), offsets.get(s)) else {
                return Err(format!(
                    "unexpected key `{k}` (stages are not numbered 0, 1, ...)"
                ));
            };
            let prefix = if mnv3 && kind == BlockKind::Cn {
                format!("features.{}.", offset + i)
            } else if mnv3 {
                format!("features.{}.block.", offset + i)
            } else {
                format!("features.{}.{i}.block.", s + 1)
            };
            let sub = block_layer(kind, se, layer, mnv3 && kind == BlockKind::Cn)
                .ok_or_else(|| format!("unexpected key `{k}`"))?;
            (format!("{prefix}{sub}"), v)
        } else {
            return Err(format!("unexpected key `{k}`"));
        };
        out.insert(new, v);
    }
    Ok(out)
}

/// A timm block's layer (`conv_dw.weight`, `bn1.running_mean`, `se.conv_reduce.bias`, ...) as the
/// torchvision block's (`0.0.weight`, `0.1.running_mean`, `1.fc1.bias`, ...). `bare`: a
/// MobileNetV3 head conv, a `Conv2dNormActivation` straight in `features` (no `block.`).
fn block_layer(kind: BlockKind, se: bool, layer: &str, bare: bool) -> Option<String> {
    let (name, param) = layer.split_once('.')?;
    if name == "se" {
        let (conv, p) = param.split_once('.')?;
        let fc = match conv {
            "conv_reduce" => "fc1",
            "conv_expand" => "fc2",
            _ => return None,
        };
        let at = match kind {
            BlockKind::Ir => 2,
            _ => 1,
        };
        return Some(format!("{at}.{fc}.{p}"));
    }
    let after_se = usize::from(se);
    let (at, which) = match (kind, name) {
        (BlockKind::Ds, "conv_dw") => (0, 0),
        (BlockKind::Ds, "bn1") => (0, 1),
        (BlockKind::Ds, "conv_pw") => (1 + after_se, 0),
        (BlockKind::Ds, "bn2") => (1 + after_se, 1),
        (BlockKind::Ir, "conv_pw") => (0, 0),
        (BlockKind::Ir, "bn1") => (0, 1),
        (BlockKind::Ir, "conv_dw") => (1, 0),
        (BlockKind::Ir, "bn2") => (1, 1),
        (BlockKind::Ir, "conv_pwl") => (2 + after_se, 0),
        (BlockKind::Ir, "bn3") => (2 + after_se, 1),
        (BlockKind::Er, "conv_exp") => (0, 0),
        (BlockKind::Er, "bn1") => (0, 1),
        (BlockKind::Er, "conv_pwl") => (1 + after_se, 0),
        (BlockKind::Er, "bn2") => (1 + after_se, 1),
        (BlockKind::Cn, "conv") if bare => return Some(format!("0.{param}")),
        (BlockKind::Cn, "bn1") if bare => return Some(format!("1.{param}")),
        (BlockKind::Cn, "conv") => (0, 0),
        (BlockKind::Cn, "bn1") => (0, 1),
        _ => return None,
    };
    Some(format!("{at}.{which}.{param}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_layers_map_to_torchvision_positions() {
        assert_eq!(
            block_layer(BlockKind::Ir, true, "conv_pwl.weight", false).unwrap(),
            "3.0.weight"
        );
        assert_eq!(
            block_layer(BlockKind::Ir, false, "bn3.bias", false).unwrap(),
            "2.1.bias"
        );
        assert_eq!(
            block_layer(BlockKind::Ds, true, "se.conv_expand.bias", false).unwrap(),
            "1.fc2.bias"
        );
        assert_eq!(
            block_layer(BlockKind::Cn, false, "bn1.running_var", true).unwrap(),
            "1.running_var"
        );
        assert!(block_layer(BlockKind::Ds, false, "conv_pwl.weight", false).is_none());
    }
}

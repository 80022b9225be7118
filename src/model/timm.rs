//! timm checkpoints: the hub files we know (`--arch timm:NAME[.TAG]`), and renaming timm's key
//! names and layouts to ours (torchvision's) on load, recognised from the keys alone.
//!
//! A family is one [`Family`] row: how to recognise its timm layout, which of our archs it loads
//! into, how to rename it, and (for error messages) which arch a file of it was saved from.

use super::{Arch, KnownWeights};
use std::collections::{BTreeMap, HashMap};
use tch::Tensor;

pub type Tensors = HashMap<String, Tensor>;
/// Key → shape: what recognising a layout may look at.
pub type Shapes = HashMap<String, Vec<i64>>;

/// One pretrained timm checkpoint on the Hugging Face hub (`timm/<name>`), with the input
/// statistics and size of its `pretrained_cfg`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimmWeights {
    /// `model.tag`, e.g. `efficientnet_b0.ra_in1k`.
    pub name: &'static str,
    pub arch: Arch,
    pub mean: [f64; 3],
    pub std: [f64; 3],
    /// `test_input_size` (else `input_size`) of the pretrained config.
    pub size: i64,
    pub classes: i64,
    pub known: KnownWeights,
}

impl TimmWeights {
    /// The model name without its tag.
    pub fn model(&self) -> &'static str {
        self.name.split_once('.').map_or(self.name, |(m, _)| m)
    }
}

const IMAGENET: ([f64; 3], [f64; 3]) = super::arch::IMAGENET_STATS;
const INCEPTION: ([f64; 3], [f64; 3]) = super::arch::INCEPTION_STATS;
/// `mobilenetv3_large_100.miil_*`: no normalisation at all.
const IDENTITY: ([f64; 3], [f64; 3]) = ([0.0; 3], [1.0; 3]);

/// A hub row. Sizes are approximate (the progress bar without a Content-Length); the hub publishes
/// no hash we could pin offline, so a download is checked by strict loading only.
macro_rules! hub_row {
    ($name:literal, $arch:expr, $stats:expr, $size:expr, $classes:expr, $bytes:expr) => {
        TimmWeights {
            name: $name,
            arch: $arch,
            mean: $stats.0,
            std: $stats.1,
            size: $size,
            classes: $classes,
            known: KnownWeights {
                file: concat!("timm-", $name, ".safetensors"),
                url: concat!(
                    "https://huggingface.co/timm/",
                    $name,
                    "/resolve/main/model.safetensors"
                ),
                sha256: "",
                size_bytes: $bytes,
            },
        }
    };
}
pub(crate) use hub_row;

/// Known timm checkpoints of the EfficientNet/MobileNetV3 builder; for each model the first row is
/// timm's default tag. [`hub`] lists these and the other families' ([`super::timm_zoo2`]).
pub const HUB: &[TimmWeights] = &[
    hub_row!(
        "efficientnet_b0.ra_in1k",
        Arch::EfficientnetB0,
        IMAGENET,
        224,
        1000,
        21_400_000
    ),
    hub_row!(
        "efficientnet_b0.ra4_e3600_r224_in1k",
        Arch::EfficientnetB0,
        INCEPTION,
        256,
        1000,
        21_400_000
    ),
    hub_row!(
        "efficientnet_b1.ra4_e3600_r240_in1k",
        Arch::EfficientnetB1,
        INCEPTION,
        288,
        1000,
        31_500_000
    ),
    hub_row!(
        "efficientnet_b1.ft_in1k",
        Arch::EfficientnetB1,
        IMAGENET,
        256,
        1000,
        31_500_000
    ),
    hub_row!(
        "efficientnet_b2.ra_in1k",
        Arch::EfficientnetB2,
        IMAGENET,
        288,
        1000,
        36_800_000
    ),
    hub_row!(
        "efficientnet_b3.ra2_in1k",
        Arch::EfficientnetB3,
        IMAGENET,
        320,
        1000,
        49_300_000
    ),
    hub_row!(
        "tf_efficientnetv2_s.in21k_ft_in1k",
        Arch::TfEfficientnetV2S,
        INCEPTION,
        384,
        1000,
        86_500_000
    ),
    hub_row!(
        "tf_efficientnetv2_s.in1k",
        Arch::TfEfficientnetV2S,
        INCEPTION,
        384,
        1000,
        86_500_000
    ),
    hub_row!(
        "tf_efficientnetv2_s.in21k",
        Arch::TfEfficientnetV2S,
        INCEPTION,
        384,
        21843,
        139_000_000
    ),
    hub_row!(
        "mobilenetv3_large_100.ra_in1k",
        Arch::Mobilenetv3Large100,
        IMAGENET,
        224,
        1000,
        22_100_000
    ),
    hub_row!(
        "mobilenetv3_large_100.miil_in21k_ft_in1k",
        Arch::Mobilenetv3Large100,
        IDENTITY,
        224,
        1000,
        22_100_000
    ),
    hub_row!(
        "mobilenetv3_large_100.ra4_e3600_r224_in1k",
        Arch::Mobilenetv3Large100,
        INCEPTION,
        256,
        1000,
        22_100_000
    ),
    hub_row!(
        "mobilenetv3_small_100.lamb_in1k",
        Arch::Mobilenetv3Small100,
        IMAGENET,
        224,
        1000,
        10_300_000
    ),
];

/// Every known timm checkpoint, of every family.
pub fn hub() -> impl Iterator<Item = &'static TimmWeights> {
    HUB.iter().chain(super::timm_zoo2::HUB_ZOO2)
}

/// `NAME` (timm's default tag) or `NAME.TAG`, with or without the `timm:` prefix.
pub fn lookup(name: &str) -> Option<&'static TimmWeights> {
    let name = name.to_ascii_lowercase();
    let name = name.strip_prefix("timm:").unwrap_or(&name);
    hub()
        .find(|w| w.name == name)
        .or_else(|| hub().find(|w| w.model() == name))
}

/// timm's default checkpoint of an arch that only exists as a timm model.
pub fn default_for(arch: Arch) -> Option<&'static TimmWeights> {
    hub().find(|w| w.arch == arch && w.model() == arch.name())
}

/// A timm model family whose checkpoints we rename into our layout.
pub struct Family {
    pub name: &'static str,
    /// Whether a checkpoint's keys are this family's timm layout.
    pub detect: fn(&Shapes) -> bool,
    /// Our archs that accept this layout (others get a "looks like" error).
    pub archs: &'static [Arch],
    /// The arch the checkpoint was saved from, when the names and shapes tell.
    pub guess: fn(&Shapes) -> Option<Arch>,
    /// Renames (and reshapes where layouts differ) into `arch`'s torchvision keys.
    pub remap: fn(Arch, Tensors) -> Result<Tensors, String>,
}

pub const FAMILIES: &[Family] = &[Family {
    name: "EfficientNet/MobileNetV3",
    detect: effnet_detect,
    archs: &[
        Arch::EfficientnetB0,
        Arch::EfficientnetB1,
        Arch::EfficientnetB2,
        Arch::EfficientnetB3,
        Arch::TfEfficientnetV2S,
        Arch::Mobilenetv3Small100,
        Arch::Mobilenetv3Large100,
    ],
    guess: effnet_guess,
    remap: effnet_remap,
}];

/// The timm family whose layout a checkpoint has, of every family's table.
pub fn family_of(shapes: &Shapes) -> Option<&'static Family> {
    FAMILIES
        .iter()
        .chain(super::timm_zoo2::FAMILIES_ZOO2)
        .find(|f| (f.detect)(shapes))
}

/// The arch a timm checkpoint was saved from, if it is one we know.
pub fn guess(shapes: &Shapes) -> Option<Arch> {
    family_of(shapes).and_then(|f| (f.guess)(shapes))
}

// ---- timm's EfficientNet builder (efficientnet_*, tf_efficientnetv2_*, mobilenetv3_*) ----

fn effnet_detect(s: &Shapes) -> bool {
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

fn effnet_guess(s: &Shapes) -> Option<Arch> {
    let depths = stage_depths(s.keys());
    let head = s.get("conv_head.weight").map(|v| v[0]);
    let mnv3 = s.contains_key("conv_head.bias");
    Some(match (mnv3, depths.as_slice(), head) {
        (true, [1, 2, 3, 4, 2, 3, 1], _) => Arch::Mobilenetv3Large100,
        (true, [1, 2, 3, 2, 3, 1], _) => Arch::Mobilenetv3Small100,
        (false, [1, 2, 2, 3, 3, 4, 1], Some(1280)) => Arch::EfficientnetB0,
        (false, [2, 3, 3, 4, 4, 5, 2], Some(1280)) => Arch::EfficientnetB1,
        (false, [2, 3, 3, 4, 4, 5, 2], Some(1408)) => Arch::EfficientnetB2,
        (false, [2, 3, 3, 5, 5, 6, 2], Some(1536)) => Arch::EfficientnetB3,
        (false, [2, 4, 4, 6, 9, 15], Some(1280)) => Arch::TfEfficientnetV2S,
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

fn effnet_remap(arch: Arch, t: Tensors) -> Result<Tensors, String> {
    // torchvision's MobileNetV3 lists blocks flat in `features`; EfficientNet nests one
    // Sequential per stage.
    let mnv3 = matches!(arch, Arch::Mobilenetv3Small100 | Arch::Mobilenetv3Large100);
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
    fn names_resolve_to_the_default_tag() {
        assert_eq!(
            lookup("efficientnet_b0").unwrap().name,
            "efficientnet_b0.ra_in1k"
        );
        assert_eq!(
            lookup("tf_efficientnetv2_s.in1k").unwrap().arch,
            Arch::TfEfficientnetV2S
        );
        assert!(lookup("efficientnet_b9").is_none());
        for w in HUB {
            assert!(w.known.url.ends_with("/resolve/main/model.safetensors"));
            assert_eq!(lookup(w.name), Some(w));
        }
        assert_eq!(
            default_for(Arch::Mobilenetv3Large100).unwrap().name,
            "mobilenetv3_large_100.ra_in1k"
        );
    }

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

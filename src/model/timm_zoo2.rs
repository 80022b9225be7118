//! timm checkpoints of RegNet, ConvNeXt and ViT: the hub files we know (`timm:NAME[.TAG]`) and the
//! families whose timm layouts are renamed to torchvision's on load, recognised from the keys.
//!
//! The types mirror the zoo's shared timm module (`TimmWeights`, `Family`), so these rows join
//! its tables unchanged; the layout code itself lives in each arch's file.

use super::arch::{IMAGENET_STATS, INCEPTION_STATS};
use super::{convnext, regnet, vit, Arch, KnownWeights};
use std::collections::HashMap;
use tch::Tensor;

pub type Tensors = HashMap<String, Tensor>;
/// Key → shape: what recognising a layout may look at.
pub type Shapes = HashMap<String, Vec<i64>>;

/// One pretrained timm checkpoint on the Hugging Face hub (`timm/<name>`), with the input
/// statistics and size of its `pretrained_cfg`.
#[derive(Debug, Clone, Copy)]
pub struct TimmWeights {
    /// `model.tag`, e.g. `convnext_tiny.fb_in22k`.
    pub name: &'static str,
    pub arch: Arch,
    pub mean: [f64; 3],
    pub std: [f64; 3],
    /// `test_input_size` (else `input_size`) of the pretrained config.
    pub size: i64,
    /// Classes of the checkpoint's own classifier (0: none; 21841/21843/11821: ImageNet-22k/12k).
    pub classes: i64,
    pub known: KnownWeights,
}

impl TimmWeights {
    /// The model name without its tag.
    pub fn model(&self) -> &'static str {
        self.name.split_once('.').map_or(self.name, |(m, _)| m)
    }
}

const IMAGENET: ([f64; 3], [f64; 3]) = IMAGENET_STATS;
const INCEPTION: ([f64; 3], [f64; 3]) = INCEPTION_STATS;

/// A hub row. Sizes are the fp32 state_dict's bytes (the progress bar without a Content-Length);
/// the hub publishes no hash we could pin offline, so a download is checked by strict loading.
macro_rules! hub {
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

/// Known timm checkpoints (values from timm 1.0.31's `pretrained_cfg`); for each model the first
/// row is timm's default tag. timm's `regnety_008` and `regnetx_004` (pycls widths) are other
/// networks than torchvision's: their `_tv` twins are the ones listed.
pub const HUB_ZOO2: &[TimmWeights] = &[
    hub!(
        "convnext_tiny.in12k_ft_in1k",
        Arch::ConvnextTiny,
        IMAGENET,
        288,
        1000,
        114_356_512
    ),
    hub!(
        "convnext_tiny.fb_in1k",
        Arch::ConvnextTiny,
        IMAGENET,
        288,
        1000,
        114_356_512
    ),
    hub!(
        "convnext_tiny.fb_in22k_ft_in1k",
        Arch::ConvnextTiny,
        IMAGENET,
        288,
        1000,
        114_356_512
    ),
    hub!(
        "convnext_tiny.fb_in22k",
        Arch::ConvnextTiny,
        IMAGENET,
        224,
        21841,
        178_463_428
    ),
    hub!(
        "convnext_tiny.in12k",
        Arch::ConvnextTiny,
        IMAGENET,
        224,
        11821,
        147_641_908
    ),
    hub!(
        "convnext_small.in12k_ft_in1k",
        Arch::ConvnextSmall,
        IMAGENET,
        288,
        1000,
        200_894_752
    ),
    hub!(
        "convnext_small.fb_in1k",
        Arch::ConvnextSmall,
        IMAGENET,
        288,
        1000,
        200_894_752
    ),
    hub!(
        "convnext_small.fb_in22k_ft_in1k",
        Arch::ConvnextSmall,
        IMAGENET,
        288,
        1000,
        200_894_752
    ),
    hub!(
        "convnext_small.fb_in22k",
        Arch::ConvnextSmall,
        IMAGENET,
        224,
        21841,
        265_001_668
    ),
    hub!(
        "convnext_small.in12k",
        Arch::ConvnextSmall,
        IMAGENET,
        224,
        11821,
        234_180_148
    ),
    hub!(
        "regnety_004.tv2_in1k",
        Arch::RegnetY400mf,
        IMAGENET,
        224,
        1000,
        17_485_608
    ),
    hub!(
        "regnety_004.pycls_in1k",
        Arch::RegnetY400mf,
        IMAGENET,
        224,
        1000,
        17_485_608
    ),
    hub!(
        "regnety_008_tv.tv2_in1k",
        Arch::RegnetY800mf,
        IMAGENET,
        224,
        1000,
        25_852_152
    ),
    hub!(
        "regnety_016.tv2_in1k",
        Arch::RegnetY1_6gf,
        IMAGENET,
        224,
        1000,
        45_021_096
    ),
    hub!(
        "regnety_016.pycls_in1k",
        Arch::RegnetY1_6gf,
        IMAGENET,
        224,
        1000,
        45_021_096
    ),
    hub!(
        "regnetx_004_tv.tv2_in1k",
        Arch::RegnetX400mf,
        IMAGENET,
        224,
        1000,
        22_135_896
    ),
    hub!(
        "vit_small_patch16_224.augreg_in21k_ft_in1k",
        Arch::VitS16,
        INCEPTION,
        224,
        1000,
        88_202_656
    ),
    hub!(
        "vit_small_patch16_224.augreg_in21k",
        Arch::VitS16,
        INCEPTION,
        224,
        21843,
        120_300_876
    ),
    hub!(
        "vit_base_patch16_224.augreg2_in21k_ft_in1k",
        Arch::VitB16,
        INCEPTION,
        224,
        1000,
        346_270_624
    ),
    hub!(
        "vit_base_patch16_224.augreg_in21k_ft_in1k",
        Arch::VitB16,
        INCEPTION,
        224,
        1000,
        346_270_624
    ),
    hub!(
        "vit_base_patch16_224.augreg_in21k",
        Arch::VitB16,
        INCEPTION,
        224,
        21843,
        410_383_692
    ),
    hub!(
        "vit_base_patch16_224.orig_in21k",
        Arch::VitB16,
        INCEPTION,
        224,
        0,
        343_194_624
    ),
];

/// `NAME` (timm's default tag) or `NAME.TAG`, with or without `timm:`.
pub fn lookup(name: &str) -> Option<&'static TimmWeights> {
    let name = name.to_ascii_lowercase();
    let name = name.strip_prefix("timm:").unwrap_or(&name);
    HUB_ZOO2
        .iter()
        .find(|w| w.name == name)
        .or_else(|| HUB_ZOO2.iter().find(|w| w.model() == name))
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

pub const FAMILIES_ZOO2: &[Family] = &[
    Family {
        name: "RegNet",
        detect: regnet::timm_detect,
        archs: &[
            Arch::RegnetY400mf,
            Arch::RegnetY800mf,
            Arch::RegnetY1_6gf,
            Arch::RegnetX400mf,
        ],
        guess: regnet::guess,
        remap: regnet::timm_remap,
    },
    Family {
        name: "ConvNeXt",
        detect: convnext::timm_detect,
        archs: &[Arch::ConvnextTiny, Arch::ConvnextSmall],
        guess: convnext::guess,
        remap: convnext::timm_remap,
    },
    Family {
        name: "ViT",
        detect: vit::timm_detect,
        archs: &[Arch::VitB16, Arch::VitS16],
        guess: vit::guess,
        remap: vit::timm_remap,
    },
];

pub fn family_of(shapes: &Shapes) -> Option<&'static Family> {
    FAMILIES_ZOO2.iter().find(|f| (f.detect)(shapes))
}

/// The RegNet, ConvNeXt or ViT a checkpoint was saved from, in torchvision's layout or timm's.
pub fn guess(shapes: &Shapes) -> Option<Arch> {
    regnet::guess(shapes)
        .or_else(|| convnext::guess(shapes))
        .or_else(|| vit::guess(shapes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_names_resolve_to_their_arch_and_default_tag() {
        let t = lookup("timm:convnext_tiny.fb_in22k").unwrap();
        assert_eq!((t.arch, t.classes), (Arch::ConvnextTiny, 21841));
        assert_eq!(
            t.known.url,
            "https://huggingface.co/timm/convnext_tiny.fb_in22k/resolve/main/model.safetensors"
        );
        assert_eq!(
            lookup("convnext_tiny").unwrap().name,
            "convnext_tiny.in12k_ft_in1k"
        );
        assert_eq!(lookup("vit_small_patch16_224").unwrap().mean, [0.5; 3]);
        assert!(
            lookup("regnetx_004").is_none(),
            "pycls widths are another network"
        );
        for w in HUB_ZOO2 {
            assert!(
                w.known.file.ends_with(".safetensors") && w.size >= 224,
                "{}",
                w.name
            );
        }
    }
}

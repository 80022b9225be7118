//! timm checkpoints of RegNet, ConvNeXt and ViT: the hub files we know (`timm:NAME[.TAG]`) and the
//! families whose timm layouts are renamed to torchvision's on load, recognised from the keys.
//!
//! The rows use the types of the timm module (`TimmWeights`, `Family`), whose `hub()`, `lookup`
//! and `family_of` read these tables next to its own; the layout code lives in each arch's file.

use super::arch::{IMAGENET_STATS, INCEPTION_STATS};
use super::timm::{hub_row, Family, TimmWeights};
use super::{convnext, regnet, vit, Arch, KnownWeights};

const IMAGENET: ([f64; 3], [f64; 3]) = IMAGENET_STATS;
const INCEPTION: ([f64; 3], [f64; 3]) = INCEPTION_STATS;

/// Known timm checkpoints (values from timm 1.0.31's `pretrained_cfg`); for each model the first
/// row is timm's default tag. timm's `regnety_008` and `regnetx_004` (pycls widths) are other
/// networks than torchvision's: their `_tv` twins are the ones listed.
pub const HUB_ZOO2: &[TimmWeights] = &[
    hub_row!(
        "convnext_tiny.in12k_ft_in1k",
        Arch::ConvnextTiny,
        IMAGENET,
        288,
        1000,
        114_356_512
    ),
    hub_row!(
        "convnext_tiny.fb_in1k",
        Arch::ConvnextTiny,
        IMAGENET,
        288,
        1000,
        114_356_512
    ),
    hub_row!(
        "convnext_tiny.fb_in22k_ft_in1k",
        Arch::ConvnextTiny,
        IMAGENET,
        288,
        1000,
        114_356_512
    ),
    hub_row!(
        "convnext_tiny.fb_in22k",
        Arch::ConvnextTiny,
        IMAGENET,
        224,
        21841,
        178_463_428
    ),
    hub_row!(
        "convnext_tiny.in12k",
        Arch::ConvnextTiny,
        IMAGENET,
        224,
        11821,
        147_641_908
    ),
    hub_row!(
        "convnext_small.in12k_ft_in1k",
        Arch::ConvnextSmall,
        IMAGENET,
        288,
        1000,
        200_894_752
    ),
    hub_row!(
        "convnext_small.fb_in1k",
        Arch::ConvnextSmall,
        IMAGENET,
        288,
        1000,
        200_894_752
    ),
    hub_row!(
        "convnext_small.fb_in22k_ft_in1k",
        Arch::ConvnextSmall,
        IMAGENET,
        288,
        1000,
        200_894_752
    ),
    hub_row!(
        "convnext_small.fb_in22k",
        Arch::ConvnextSmall,
        IMAGENET,
        224,
        21841,
        265_001_668
    ),
    hub_row!(
        "convnext_small.in12k",
        Arch::ConvnextSmall,
        IMAGENET,
        224,
        11821,
        234_180_148
    ),
    hub_row!(
        "regnety_004.tv2_in1k",
        Arch::RegnetY400mf,
        IMAGENET,
        224,
        1000,
        17_485_608
    ),
    hub_row!(
        "regnety_004.pycls_in1k",
        Arch::RegnetY400mf,
        IMAGENET,
        224,
        1000,
        17_485_608
    ),
    hub_row!(
        "regnety_008_tv.tv2_in1k",
        Arch::RegnetY800mf,
        IMAGENET,
        224,
        1000,
        25_852_152
    ),
    hub_row!(
        "regnety_016.tv2_in1k",
        Arch::RegnetY1_6gf,
        IMAGENET,
        224,
        1000,
        45_021_096
    ),
    hub_row!(
        "regnety_016.pycls_in1k",
        Arch::RegnetY1_6gf,
        IMAGENET,
        224,
        1000,
        45_021_096
    ),
    hub_row!(
        "regnetx_004_tv.tv2_in1k",
        Arch::RegnetX400mf,
        IMAGENET,
        224,
        1000,
        22_135_896
    ),
    hub_row!(
        "vit_small_patch16_224.augreg_in21k_ft_in1k",
        Arch::VitS16,
        INCEPTION,
        224,
        1000,
        88_202_656
    ),
    hub_row!(
        "vit_small_patch16_224.augreg_in21k",
        Arch::VitS16,
        INCEPTION,
        224,
        21843,
        120_300_876
    ),
    hub_row!(
        "vit_base_patch16_224.augreg2_in21k_ft_in1k",
        Arch::VitB16,
        INCEPTION,
        224,
        1000,
        346_270_624
    ),
    hub_row!(
        "vit_base_patch16_224.augreg_in21k_ft_in1k",
        Arch::VitB16,
        INCEPTION,
        224,
        1000,
        346_270_624
    ),
    hub_row!(
        "vit_base_patch16_224.augreg_in21k",
        Arch::VitB16,
        INCEPTION,
        224,
        21843,
        410_383_692
    ),
    hub_row!(
        "vit_base_patch16_224.orig_in21k",
        Arch::VitB16,
        INCEPTION,
        224,
        0,
        343_194_624
    ),
];

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

/// The RegNet, ConvNeXt or ViT a checkpoint was saved from, in torchvision's layout or timm's.
pub fn guess(shapes: &super::timm::Shapes) -> Option<Arch> {
    regnet::guess(shapes)
        .or_else(|| convnext::guess(shapes))
        .or_else(|| vit::guess(shapes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::timm::lookup;
    use crate::model::ArchSpec;

    #[test]
    fn hub_names_resolve_to_their_arch_and_default_tag() {
        let spec: ArchSpec = "timm:convnext_tiny.fb_in1k".parse().unwrap();
        assert_eq!(spec.arch, Arch::ConvnextTiny);
        assert_eq!(spec.timm.unwrap().name, "convnext_tiny.fb_in1k");
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

//! timm checkpoints: the hub files we know (`--arch timm:NAME[.TAG]`), and which family file
//! renames each timm layout to ours (torchvision's) on load.
//!
//! A layout is one [`TimmLayout`] row: how to recognise it, which of our archs it loads into, how
//! to rename it (the family's own code), and (for error messages) which arch a file of it was
//! saved from.

use super::{Arch, KnownWeights, IMAGENET_STATS, INCEPTION_STATS};
use crate::model::family::{convnext, efficientnet_timm, regnet, vit};
use crate::model::weights::{Shapes, Tensors};

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

const IMAGENET: ([f64; 3], [f64; 3]) = IMAGENET_STATS;
const INCEPTION: ([f64; 3], [f64; 3]) = INCEPTION_STATS;
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

/// Every known timm checkpoint (values from timm 1.0.31's `pretrained_cfg`); for each model the
/// first row is timm's default tag. timm's `regnety_008` and `regnetx_004` (pycls widths) are other
/// networks than torchvision's: their `_tv` twins are the ones listed.
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

/// Every known timm checkpoint, of every family.
pub fn hub() -> impl Iterator<Item = &'static TimmWeights> {
    HUB.iter()
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

/// A timm layout whose checkpoints a family file renames into our (torchvision's) keys.
pub struct TimmLayout {
    pub name: &'static str,
    /// Whether a checkpoint's keys are this layout.
    pub detect: fn(&Shapes) -> bool,
    /// Our archs that accept this layout (others get a "looks like" error).
    pub archs: &'static [Arch],
    /// The name of the arch a checkpoint was saved from, when the names and shapes tell.
    pub guess: fn(&Shapes) -> Option<&'static str>,
    /// Renames (and reshapes where layouts differ) into `arch`'s torchvision keys.
    pub remap: fn(Arch, Tensors) -> Result<Tensors, String>,
}

pub const LAYOUTS: &[TimmLayout] = &[
    TimmLayout {
        name: "EfficientNet/MobileNetV3",
        detect: efficientnet_timm::timm_detect,
        archs: &[
            Arch::EfficientnetB0,
            Arch::EfficientnetB1,
            Arch::EfficientnetB2,
            Arch::EfficientnetB3,
            Arch::TfEfficientnetV2S,
            Arch::Mobilenetv3Small100,
            Arch::Mobilenetv3Large100,
        ],
        guess: efficientnet_timm::guess,
        remap: |arch, t| {
            let mnv3 = matches!(arch, Arch::Mobilenetv3Small100 | Arch::Mobilenetv3Large100);
            efficientnet_timm::timm_remap(mnv3, t)
        },
    },
    TimmLayout {
        name: "RegNet",
        detect: regnet::timm_detect,
        archs: &[
            Arch::RegnetY400mf,
            Arch::RegnetY800mf,
            Arch::RegnetY1_6gf,
            Arch::RegnetX400mf,
        ],
        guess: regnet::guess,
        remap: |_, t| regnet::timm_remap(t),
    },
    TimmLayout {
        name: "ConvNeXt",
        detect: convnext::timm_detect,
        archs: &[Arch::ConvnextTiny, Arch::ConvnextSmall],
        guess: convnext::guess,
        remap: |_, t| convnext::timm_remap(t),
    },
    TimmLayout {
        name: "ViT",
        detect: vit::timm_detect,
        archs: &[Arch::VitB16, Arch::VitS16],
        guess: vit::guess,
        remap: |_, t| vit::timm_remap(t),
    },
];

/// The timm layout a checkpoint has.
pub fn layout_of(shapes: &Shapes) -> Option<&'static TimmLayout> {
    LAYOUTS.iter().find(|f| (f.detect)(shapes))
}

/// The arch a timm checkpoint was saved from, if it is one we know.
pub fn guess(shapes: &Shapes) -> Option<Arch> {
    layout_of(shapes)
        .and_then(|f| (f.guess)(shapes))
        .and_then(|name| name.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ArchSpec;

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
        for w in HUB {
            assert!(
                w.known.file.ends_with(".safetensors") && w.size >= 224,
                "{}",
                w.name
            );
        }
    }
}

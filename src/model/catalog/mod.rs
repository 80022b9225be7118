//! The catalogue: every architecture we know and the facts the pipeline needs about each
//! (fastai's `model_meta` and more), the known pretrained checkpoints (`weights`), timm's hub
//! files and layouts (`timm`), and recognising a checkpoint's arch (`guess`). It is the only
//! place that lists every arch; the family files below it know only their own networks.

#[macro_use]
mod weights;
mod guess;
pub mod timm;

pub use table::Arch;
pub use weights::KnownWeights;

use crate::model::layers::Part;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use tch::nn;
use weights::Weights;

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

/// One row of the catalogue (`table.rs`).
pub(super) struct Facts {
    name: &'static str,
    family: Family,
    cost: (u64, f64),
    eval_resize: (i64, i64),
    body_channels: i64,
    stats: ([f64; 3], [f64; 3]),
    timm_only: bool,
    weights: Weights,
    body: fn(&nn::Path) -> Box<dyn Part>,
}

impl Facts {
    /// A row with ImageNet statistics, for an arch torchvision (or fastai) has.
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &'static str,
        family: Family,
        cost: (u64, f64),
        eval_resize: (i64, i64),
        body_channels: i64,
        weights: Weights,
        body: fn(&nn::Path) -> Box<dyn Part>,
    ) -> Self {
        Facts {
            name,
            family,
            cost,
            eval_resize,
            body_channels,
            stats: IMAGENET_STATS,
            timm_only: false,
            weights,
            body,
        }
    }

    /// timm's own build of a torchvision network: the twin's facts, timm's checkpoints.
    fn timm_twin(name: &'static str, twin: Arch, body: fn(&nn::Path) -> Box<dyn Part>) -> Self {
        Facts {
            name,
            timm_only: true,
            weights: Weights::TimmDefault,
            body,
            ..twin.facts()
        }
    }
}

/// Writes the `Arch` enum, `Arch::ALL` and `Arch::facts` from the rows of `table.rs`, so that an
/// arch is named in one place only.
macro_rules! catalogue {
    ($($variant:ident => $facts:expr,)*) => {
        /// An architecture of the catalogue (its row is in `catalog/table.rs`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Arch {
            $($variant,)*
        }

        impl Arch {
            pub const ALL: [Arch; [$(stringify!($variant)),*].len()] = [$(Arch::$variant,)*];

            pub(super) fn facts(self) -> Facts {
                match self {
                    $(Arch::$variant => $facts,)*
                }
            }
        }
    };
}

mod table;

impl Arch {
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

    /// The body, built by its family file under `p` with torchvision's key names.
    pub(in crate::model) fn build_body(self, p: &nn::Path) -> Box<dyn Part> {
        (self.facts().body)(p)
    }

    /// Channels coming out of the body, i.e. what the head's pooling sees.
    pub fn body_channels(self) -> i64 {
        self.facts().body_channels
    }

    /// The width of fastai's head input: the concat pool doubles the body's channels; ViT's class
    /// token is not pooled.
    pub fn head_inputs(self) -> i64 {
        if self.is_vit() {
            self.body_channels()
        } else {
            2 * self.body_channels()
        }
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
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `model.json` holds the arch by its name, the one the CLI takes.
impl Serialize for Arch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown architecture `{0}`; choose one of: {names}, or timm:NAME[.TAG] with one of: {timm}", names = Arch::ALL.map(Arch::name).join(", "), timm = timm::hub().map(|w| w.name).collect::<Vec<_>>().join(", "))]
pub struct UnknownArch(pub String);

/// What `--arch` names: an architecture, and for `timm:NAME[.TAG]` which timm checkpoint of it
/// (its hub file, and the input statistics it was trained with).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArchSpec {
    pub arch: Arch,
    pub timm: Option<&'static timm::TimmWeights>,
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
            Some(name) => timm::lookup(name)
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

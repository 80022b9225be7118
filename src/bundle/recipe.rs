//! The training recipe: every setting that decides how a run learns, declared once.
//!
//! `finetune train`'s flags, the Python package's keywords, the bundle's record of a run, the
//! `Learner` and the ranks' agreement check all read one [`Recipe`]; its defaults are fastai's
//! (`Recipe::FASTAI`), and its fields are `model.json`'s `training` keys, so bundles written before
//! it read unchanged. It lives beside the bundle (not in `train/`) because the bundle records it
//! and sits below training in the layer table; `train::Recipe` is the same type. Adding an option:
//! docs/ARCHITECTURE.md, "Adding a training option".

use super::info::EpochRow;
use crate::data::augment::{AugConfig, AugError};
use serde::{Deserialize, Serialize};

/// How a run learns: fastai's `fine_tune` schedule and the callbacks it trains with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// `fine_tune`'s epochs and learning rates.
    pub fine_tune: FineTune,
    /// Decoupled weight decay (none on BatchNorm parameters and biases).
    pub wd: f64,
    /// fastai's `LabelSmoothingCrossEntropyFlat(eps)`.
    pub label_smoothing: f64,
    /// Batch augmentation of training images (fastai's `aug_transforms`).
    #[serde(default)]
    pub augment: bool,
    /// Its magnitudes, recorded only when augmenting; see [`Recipe::augmentation`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aug: Option<AugConfig>,
    /// MixUp or CutMix of training batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<Mix>,
    /// Save-best and early stopping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<Tracking>,
    /// Class weights in the loss (PyTorch's `CrossEntropyLoss(weight=...)`; multi-label: each
    /// label's positive weight, `BCEWithLogitsLoss(pos_weight=...)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weights: Option<ClassWeights>,
    /// Balanced sampling (fastai's `WeightedDL` with each image weighted `1 / n_class`): every
    /// epoch draws as many images as the training set holds, classes equally likely, with
    /// replacement.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub balanced: bool,
}

/// Where the loss's class weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeights {
    /// Inverse class frequency, normalised so that the average training image weighs 1
    /// (`w_c = N / (C · n_c)`, so `Σ_c w_c · n_c = N`). Multi-label: each label's positive weight
    /// `(N − n_j) / n_j`, the ratio of images without it to images with it.
    Auto,
    /// One weight per class, by name (`--class-weights FILE.csv`, Python's dict).
    Given(std::collections::BTreeMap<String, f64>),
}

impl ClassWeights {
    /// `auto`, or a CSV of `class,weight` rows (a header row allowed) read into [`Self::Given`].
    pub fn parse(arg: &str) -> Result<ClassWeights, RecipeError> {
        if arg == "auto" {
            return Ok(ClassWeights::Auto);
        }
        let path = std::path::Path::new(arg);
        // A weights file is a few lines per class: 1 MB is far beyond any real one.
        let bytes = crate::data::files::read_capped(path, 1 << 20).map_err(|e| {
            RecipeError::WeightsFile {
                path: path.to_path_buf(),
                why: e.to_string(),
            }
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let mut map = std::collections::BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| RecipeError::WeightsFile {
                path: path.to_path_buf(),
                why: format!("line {}: {why} (want `class,weight`)", i + 1),
            };
            let (class, w) = line.rsplit_once(',').ok_or_else(|| bad("no comma"))?;
            match w.trim().parse::<f64>() {
                Ok(w) => {
                    map.insert(class.trim().to_string(), w);
                }
                Err(_) if i == 0 => continue, // a header row
                Err(_) => return Err(bad("the weight is not a number")),
            }
        }
        if map.is_empty() {
            return Err(RecipeError::WeightsFile {
                path: path.to_path_buf(),
                why: "no `class,weight` rows".into(),
            });
        }
        Ok(ClassWeights::Given(map))
    }
}

impl Recipe {
    /// fastai's defaults: `vision_learner(dls, arch).fine_tune(3)` with nothing added.
    pub const FASTAI: Recipe = Recipe {
        fine_tune: FineTune::FASTAI,
        wd: 0.01,
        label_smoothing: 0.0,
        augment: false,
        aug: None,
        mix: None,
        tracking: None,
        class_weights: None,
        balanced: false,
    };

    /// The augmentation magnitudes when augmenting; bundles that recorded none predate the warp.
    pub fn augmentation(&self) -> Option<AugConfig> {
        self.augment
            .then(|| self.aug.unwrap_or_else(AugConfig::without_warp))
    }

    /// Refuses values fastai would fail on or silently misuse, before any data is read.
    /// `multi_label`: the data's labels are sets (binary cross-entropy, no smoothing).
    pub fn validate(&self, multi_label: bool) -> Result<(), RecipeError> {
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(RecipeError::LabelSmoothing(self.label_smoothing));
        }
        if multi_label && self.label_smoothing > 0.0 {
            return Err(RecipeError::SmoothingMultiLabel);
        }
        if let Some(m) = self.mix {
            let (flag, alpha) = match m {
                Mix::Mixup(a) => ("mixup", a),
                Mix::Cutmix(a) => ("cutmix", a),
            };
            // `Beta(α, α)` needs `α > 0`.
            if !(alpha.is_finite() && alpha > 0.0) {
                return Err(RecipeError::Mix { flag, alpha });
            }
        }
        if let Some(a) = self.augmentation() {
            a.validate()?;
        }
        if self.tracking.is_some_and(|t| t.patience == Some(0)) {
            return Err(RecipeError::Patience);
        }
        if let Some(ClassWeights::Given(m)) = &self.class_weights {
            if let Some((class, &weight)) = m.iter().find(|(_, w)| !(w.is_finite() && **w > 0.0)) {
                return Err(RecipeError::ClassWeight {
                    class: class.clone(),
                    weight,
                });
            }
        }
        if multi_label && self.balanced {
            return Err(RecipeError::BalancedMultiLabel);
        }
        Ok(())
    }

    /// The loss's weight per class of `classes` (single-label: `w[c]`; multi-label: each label's
    /// positive weight), `None` without class weights. `counts[c]`: training images of class (or
    /// with label) `c`, of `n` in all. A given weight must name exactly the data's classes.
    pub fn class_weight_values(
        &self,
        classes: &[String],
        counts: &[usize],
        n: usize,
        multi_label: bool,
    ) -> Result<Option<Vec<f64>>, RecipeError> {
        let Some(cw) = &self.class_weights else {
            return Ok(None);
        };
        let c = classes.len().max(1) as f64;
        match cw {
            ClassWeights::Auto => Ok(Some(
                counts
                    .iter()
                    .map(|&k| {
                        let k = k.max(1) as f64;
                        if multi_label {
                            (n as f64 - k).max(0.0) / k
                        } else {
                            n as f64 / (c * k)
                        }
                    })
                    .collect(),
            )),
            ClassWeights::Given(m) => {
                if let Some(extra) = m.keys().find(|k| !classes.contains(k)) {
                    return Err(RecipeError::UnknownWeightClass {
                        class: extra.clone(),
                        classes: classes.join(", "),
                    });
                }
                classes
                    .iter()
                    .map(|k| {
                        m.get(k)
                            .copied()
                            .ok_or_else(|| RecipeError::MissingWeight(k.clone()))
                    })
                    .collect::<Result<Vec<f64>, _>>()
                    .map(Some)
            }
        }
    }
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe::FASTAI
    }
}

/// A recipe value no run can train with.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("--label-smoothing must be at least 0 and below 1 (fastai's eps; got {0})")]
    LabelSmoothing(f64),
    #[error(
        "--label-smoothing is for single-label models (fastai's LabelSmoothingCrossEntropy); with \
         --label-delim the loss is binary cross-entropy: drop one of them"
    )]
    SmoothingMultiLabel,
    #[error("--{flag} must be a number above 0 (fastai's alpha; got {alpha})")]
    Mix { flag: &'static str, alpha: f64 },
    #[error(transparent)]
    Augment(#[from] AugError),
    #[error("--early-stop must be at least 1 epoch")]
    Patience,
    #[error("--class-weights: the weight of `{class}` must be a number above 0 (got {weight})")]
    ClassWeight { class: String, weight: f64 },
    #[error("--class-weights {path}: {why}")]
    WeightsFile {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("--class-weights names `{class}`, which is not a class of the data ({classes})")]
    UnknownWeightClass { class: String, classes: String },
    #[error("--class-weights gives no weight for the class `{0}`; give every class one, or pass --class-weights auto")]
    MissingWeight(String),
    #[error(
        "--balanced draws classes equally, which needs one class per image; with --label-delim \
         use --class-weights auto (each label's positive weight) instead"
    )]
    BalancedMultiLabel,
}

/// `fine_tune`'s arguments, with fastai's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FineTune {
    pub epochs: usize,
    pub base_lr: f64,
    pub freeze_epochs: usize,
    pub lr_mult: f64,
    pub pct_start: f64,
    pub div: f64,
}

impl FineTune {
    /// fastai's `fine_tune(3)` with `vision_learner`'s defaults.
    pub const FASTAI: FineTune = FineTune {
        epochs: 3,
        base_lr: 2e-3,
        freeze_epochs: 1,
        lr_mult: 100.0,
        pct_start: 0.3,
        div: 5.0,
    };
}

impl Default for FineTune {
    fn default() -> Self {
        FineTune::FASTAI
    }
}

/// Mixing training samples (fastai's `MixUp` / `CutMix` callbacks); validation is never mixed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "alpha")]
pub enum Mix {
    /// `MixUp(alpha)`: each image blended with a shuffled partner, `λ ~ Beta(α, α)` per image, kept
    /// at least 0.5.
    Mixup(f64),
    /// `CutMix(alpha)`: a box of a shuffled partner pasted into each image, one `λ ~ Beta(α, α)`
    /// per batch.
    Cutmix(f64),
}

/// What the trackers watch (fastai's `monitor`); lower is better for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    ValidLoss,
    ErrorRate,
}

impl Monitor {
    pub fn name(self) -> &'static str {
        match self {
            Monitor::ValidLoss => "valid_loss",
            Monitor::ErrorRate => "error_rate",
        }
    }
    pub fn of(self, row: &EpochRow) -> f64 {
        match self {
            Monitor::ValidLoss => row.valid_loss,
            Monitor::ErrorRate => row.error_rate,
        }
    }
}

impl std::str::FromStr for Monitor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "valid_loss" => Ok(Monitor::ValidLoss),
            "error_rate" => Ok(Monitor::ErrorRate),
            _ => Err(format!("monitor `{s}`: choose valid_loss or error_rate")),
        }
    }
}

/// fastai's `SaveModelCallback` and `EarlyStoppingCallback` on one monitor, per fit (each phase of
/// `fine_tune` starts afresh, as fastai's `reset_on_fit`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tracking {
    pub monitor: Monitor,
    /// Keep the best epoch's weights at the end of each fit (`--save-best`).
    pub save_best: bool,
    /// Stop a fit after this many epochs without improvement (`--early-stop`).
    pub patience: Option<usize>,
}

impl Tracking {
    /// From `--save-best [MONITOR]` and `--early-stop PATIENCE` (Python's `save_best=`,
    /// `early_stop=`): `None` without either; early stopping alone watches `valid_loss`.
    pub fn of(save_best: Option<Monitor>, patience: Option<usize>) -> Option<Tracking> {
        (save_best.is_some() || patience.is_some()).then(|| Tracking {
            monitor: save_best.unwrap_or(Monitor::ValidLoss),
            save_best: save_best.is_some(),
            patience,
        })
    }
}

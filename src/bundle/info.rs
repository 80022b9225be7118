//! What `model.json` and `metrics.csv` hold.

use crate::data::items::SplitKind;
use crate::data::{PadMode, ResizeMethod, Size};
use crate::model::Arch;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Bumped when a bundle written by this version cannot be read by older ones.
pub const FORMAT_VERSION: u32 = 1;

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

impl Default for FineTune {
    fn default() -> Self {
        FineTune {
            epochs: 3,
            base_lr: 2e-3,
            freeze_epochs: 1,
            lr_mult: 100.0,
            pct_start: 0.3,
            div: 5.0,
        }
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

/// The row whose weights a bundle holds: the last one, or under `--save-best` the kept epoch of the
/// fit the last row belongs to, once that fit has ended.
pub fn kept_row(rows: &[EpochRow]) -> Option<&EpochRow> {
    let last = rows.last()?;
    Some(
        rows.iter()
            .rev()
            .find(|r| r.best && r.phase == last.phase)
            .unwrap_or(last),
    )
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

/// One row of the per-epoch table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    /// `frozen` or `unfrozen` for fine_tune's two fits, `fit` otherwise.
    pub phase: String,
    pub epoch: usize,
    pub train_loss: f64,
    pub valid_loss: f64,
    /// Multi-label: 1 − `accuracy`, the share of wrong label decisions.
    pub error_rate: f64,
    /// Multi-label: fastai's `accuracy_multi` (thresh 0.5).
    pub accuracy: f64,
    /// Multi-label: fastai's `F1ScoreMulti(average='samples')`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
    pub seconds: f64,
    /// Under `--save-best`: this epoch's weights are the ones its fit ended with.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub best: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Normalization {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainingInfo {
    pub fine_tune: FineTune,
    pub bs: usize,
    pub seed: u64,
    pub wd: f64,
    pub label_smoothing: f64,
    #[serde(default)]
    pub augment: bool,
    /// `--augment`'s magnitudes (absent: fastai's defaults without the warp, as before `--max-warp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aug: Option<crate::data::augment::AugConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<Mix>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<Tracking>,
    pub pretrained_weights: Option<String>,
    pub device: String,
    /// What the forward passes computed in (absent in bundles from before `--precision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::model::Precision>,
    pub interrupted: bool,
    pub seconds: f64,
    /// A data-parallel run's processes, the batch each step saw (`bs × world_size`) and the
    /// backend (absent for one process).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub distributed: Option<Distributed>,
}

/// How a data-parallel run was spread (`training.world_size`, `training.global_batch`,
/// `training.dist_backend` in model.json).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Distributed {
    pub world_size: usize,
    pub global_batch: usize,
    pub dist_backend: crate::dist::Backend,
}

impl TrainingInfo {
    /// `--augment`'s magnitudes for this run; bundles from before they were recorded had no warp.
    pub fn augmentation(&self) -> crate::data::augment::AugConfig {
        self.aug
            .unwrap_or_else(crate::data::augment::AugConfig::without_warp)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataInfo {
    pub source: PathBuf,
    pub split: SplitKind,
    pub train_images: usize,
    pub valid_images: usize,
    pub skipped_files: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FinalMetrics {
    pub valid_loss: f64,
    pub error_rate: f64,
    pub accuracy: f64,
    /// Multi-label: samples-averaged F1 at the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
}

/// What the model predicts: one class per image (softmax, cross-entropy), or a set of labels
/// (fastai's `MultiCategoryBlock`: one sigmoid per label, binary cross-entropy).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    #[default]
    SingleLabel,
    MultiLabel,
}

impl Task {
    pub fn is_multi(self) -> bool {
        self == Task::MultiLabel
    }
}

/// fastai's default threshold for multi-label decisions (`accuracy_multi(thresh=0.5)`); a label
/// is predicted when its probability is strictly above it.
pub const DEFAULT_THRESH: f64 = 0.5;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    pub format_version: u32,
    pub finetune_version: String,
    pub arch: Arch,
    /// Bundles from before multi-label are single-label.
    #[serde(default)]
    pub task: Task,
    pub classes: Vec<String>,
    pub size: Size,
    pub resize: ResizeMethod,
    pub pad_mode: PadMode,
    pub normalization: Normalization,
    pub training: Option<TrainingInfo>,
    pub data: Option<DataInfo>,
    pub metrics: Option<FinalMetrics>,
    /// The temperature every probability is divided by (absent: bundles from before calibration,
    /// or `finetune calibrate` not run yet; they answer with the raw softmax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<super::trust::Calibration>,
    /// The "unknown" answer's score and threshold (absent: every image gets a class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<super::trust::UnknownInfo>,
}

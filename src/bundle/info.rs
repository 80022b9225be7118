//! What `model.json` and `metrics.csv` hold.

use crate::data::items::SplitKind;
use crate::data::{PadMode, ResizeMethod, Size};
use crate::model::Arch;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Bumped when a bundle written by this version cannot be read by older ones.
pub const FORMAT_VERSION: u32 = 1;

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
    /// How the run learnt; its keys (`fine_tune`, `wd`, `mix`, ...) sit directly in `training`.
    #[serde(flatten)]
    pub recipe: super::Recipe,
    pub bs: usize,
    pub seed: u64,
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

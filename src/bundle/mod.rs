//! The model bundle: the folder `finetune train` writes and every other command reads. This room is
//! the only place that knows its files and their format; training writes through [`save`],
//! evaluate, predict, serve, export and the Python package read through [`load`] and the `read_*`
//! functions.
//!
//! | file | what it holds |
//! |---|---|
//! | `model.safetensors` | every variable, BatchNorm statistics included, contiguous (NCHW) |
//! | `model.json` | [`ModelInfo`]: what is needed to use the model, and how it was made |
//! | `metrics.csv` | one [`EpochRow`] per epoch |
//! | `evaluation.json`, `confusion.svg` | what `evaluate --save` measured (the model card shows it) |
//! | `ood.safetensors` | the training features' statistics behind the "unknown" score ([`FeatureStats`]) |
//! | `resume/` | an unfinished run's [`Checkpoint`]: `checkpoint.safetensors` and `state.json` |

mod checkpoint;
mod info;
mod read;
mod recipe;
mod trust;
mod write;

pub use checkpoint::{Checkpoint, RngState, TrackerState, TrainState};
pub use info::{
    kept_row, DataInfo, Distributed, EpochRow, FinalMetrics, ModelInfo, Normalization, Task,
    TrainingInfo, DEFAULT_THRESH, FORMAT_VERSION,
};
pub use read::{
    load, load_unscored, read_checkpoint, read_confusion_svg, read_evaluation, read_final_metrics,
    read_info, Bundle,
};
pub use recipe::{ClassWeights, FineTune, Mix, Monitor, Recipe, RecipeError, Tracking};
pub use trust::{quantile, Calibration, FeatureStats, Score, UnknownInfo};
pub use write::{check_out_dir, save, write_evaluation, write_trust};

use crate::model::weights::WeightsError;
use std::path::{Path, PathBuf};

/// Every variable of the network.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// [`ModelInfo`] as JSON; its presence is what makes a folder a bundle.
pub const INFO_FILE: &str = "model.json";
/// The epoch table, one row per epoch.
pub const METRICS_FILE: &str = "metrics.csv";
/// Where `evaluate --save` puts its results (the model card and serve read them).
pub const EVALUATION_FILE: &str = "evaluation.json";
pub const CONFUSION_FILE: &str = "confusion.svg";
/// The feature statistics of the "unknown" score (`finetune calibrate`, or the end of `train`).
pub const OOD_FILE: &str = "ood.safetensors";
/// Where an unfinished bundle keeps what `train --resume` needs.
pub const RESUME_DIR: &str = "resume";
const RESUME_WEIGHTS: &str = "checkpoint.safetensors";
const RESUME_STATE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0} is not a model bundle: it has no model.json (make one with `finetune train ... --out DIR`)")]
    NotBundle(PathBuf),
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {msg}")]
    Json { path: PathBuf, msg: String },
    #[error("{path} has bundle format version {found} (written by finetune {made_by}); this finetune ({}) reads versions 1 to {FORMAT_VERSION}: {}", env!("CARGO_PKG_VERSION"), if *found > FORMAT_VERSION { "upgrade finetune to load it (`pip install -U finetune`, or build a newer release)" } else { "retrain it with this finetune" })]
    Version {
        path: PathBuf,
        found: u32,
        made_by: String,
    },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{0} exists and is not a model bundle (it holds other files); choose a new or empty folder for the model; nothing in it was changed")]
    NotReplaceable(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

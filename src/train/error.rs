//! Why a training run cannot start or go on, each naming the file and the fix.

use crate::bundle::BundleError;
use crate::data::DataError;
use crate::model::registry::RegistryError;
use crate::model::weights::WeightsError;
use crate::model::ArchSpec;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    TensorBoard(#[from] TensorBoardError),
    #[error(transparent)]
    Mlflow(#[from] MlflowError),
    #[error("{0} already holds a model; pass --force to overwrite it, --resume {0} to continue it if it was interrupted, or choose another --out")]
    Exists(DisplayPath),
    #[error("a weights file and random initialisation exclude each other; pass one of them")]
    WeightsAndRandom,
    #[error("weights file {0} does not exist")]
    NoWeightsFile(DisplayPath),
    #[error("--size {w}x{h} is too small for {arch}: each side needs at least one 16-pixel patch")]
    TooSmallForVit { w: u32, h: u32, arch: ArchSpec },
    #[error("only {train} training images, fewer than one batch of {bs}; lower --bs")]
    TooFewImages { train: usize, bs: usize },
    #[error("{0} records no training run to resume")]
    NoRecord(DisplayPath),
    #[error("{dir} has nothing to resume: {why}")]
    NothingToResume { dir: DisplayPath, why: &'static str },
    #[error("the data in {data} changed since {out} was trained ({then_classes} classes, {then_train} train + {then_valid} valid images then; {now_classes} classes, {now_train} + {now_valid} now); resume needs the same files, or train anew with --force")]
    DataChanged {
        data: DisplayPath,
        out: DisplayPath,
        then_classes: usize,
        then_train: usize,
        then_valid: usize,
        now_classes: usize,
        now_train: usize,
        now_valid: usize,
    },
    #[error("{out}: {msg}")]
    Resume { out: DisplayPath, msg: String },
    #[error(transparent)]
    Recipe(#[from] crate::bundle::RecipeError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    #[error("{out} was trained on {then} process(es) and this run has {now}: resume it with the same number (the batch each step sees, and so the schedule, depends on it)")]
    WorldChanged {
        out: DisplayPath,
        then: usize,
        now: usize,
    },
}

/// A path shown as `Path::display` shows it, so messages read as they did when the CLI built them.
#[derive(Debug, Clone)]
pub struct DisplayPath(pub PathBuf);

impl std::fmt::Display for DisplayPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.display().fmt(f)
    }
}

pub(super) fn dp(p: &Path) -> DisplayPath {
    DisplayPath(p.to_path_buf())
}

/// `--tensorboard DIR` could not be written (`super::tensorboard`).
#[derive(Debug, thiserror::Error)]
#[error("cannot write TensorBoard events to {path}: {source}")]
pub struct TensorBoardError {
    pub(super) path: PathBuf,
    pub(super) source: std::io::Error,
}

/// The `--mlflow` server did not take a request (`super::mlflow`).
#[derive(Debug, thiserror::Error)]
#[error("MLflow at {uri}: {msg} (is `mlflow server` running there? --mlflow takes its URL, e.g. http://127.0.0.1:5000)")]
pub struct MlflowError {
    pub(super) uri: String,
    pub(super) msg: String,
}

//! Errors as Python exceptions: the messages the CLI prints, the built-in exception types where
//! Python code would test for one (a missing file, a bad value).

use crate::FinetuneError;
use finetune::bundle::BundleError;
use finetune::data::decode::DecodeError;
use finetune::device::DeviceError;
use finetune::train::run::RunError;
use finetune::train::RecipeError;
use pyo3::exceptions::{PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use std::path::{Path, PathBuf};

pub(crate) fn fail(e: impl std::fmt::Display) -> PyErr {
    FinetuneError::new_err(e.to_string())
}

pub(crate) fn bundle_err(e: BundleError, dir: &Path) -> PyErr {
    match e {
        BundleError::NotBundle(_) if !dir.exists() => PyFileNotFoundError::new_err(e.to_string()),
        e => fail(e),
    }
}

pub(crate) fn device_err(e: DeviceError) -> PyErr {
    match e {
        DeviceError::Unknown(_) => PyValueError::new_err(e.to_string()),
        e => fail(e),
    }
}

pub(crate) fn run_err(e: RunError) -> PyErr {
    use finetune::data::items::ItemsError;
    use finetune::data::DataError;
    match e {
        RunError::NoWeightsFile(_) | RunError::Data(DataError::Items(ItemsError::Missing(_))) => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        RunError::Data(DataError::Items(ItemsError::BadPct(_)))
        | RunError::Data(DataError::BatchSize)
        | RunError::WeightsAndRandom => PyValueError::new_err(e.to_string()),
        // A recipe value out of range is a bad argument; smoothing a multi-label model is not.
        RunError::Recipe(ref r) if !matches!(r, RecipeError::SmoothingMultiLabel) => {
            PyValueError::new_err(e.to_string())
        }
        e => fail(e),
    }
}

/// One input's answer before it becomes Python objects: the ranked `(label, score)` list, and the
/// "unknown" score and decision when the model has them.
pub(crate) struct Answered {
    pub top: Vec<(String, f32)>,
    pub score: Option<f64>,
    pub unknown: bool,
}

/// One input's outcome before it becomes Python objects.
pub(crate) type Ranked = Result<Answered, ItemError>;

pub(crate) enum ItemError {
    Missing(PathBuf),
    Decode(DecodeError),
}

impl ItemError {
    pub(crate) fn to_py(&self) -> PyErr {
        match self {
            ItemError::Missing(p) => {
                PyFileNotFoundError::new_err(format!("{} does not exist", p.display()))
            }
            ItemError::Decode(e) => fail(e),
        }
    }
}

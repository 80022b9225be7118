//! Training: fastai's Adam, one-cycle schedules, `fine_tune`, `lr_find`.

pub mod callback;
pub mod checkpoint;
pub mod distributed;
mod error;
pub mod fit;
pub mod grad_scaler;
pub mod launch;
pub mod learner;
pub mod loss;
pub mod lr_find;
pub mod metrics;
pub mod mix;
pub mod mlflow;
pub mod optimizer;
pub mod pipeline;
mod prepare;
pub mod profile;
pub mod report;
pub mod run;
pub mod schedule;
pub mod show_batch;
pub mod smooth_loss;
pub mod strategy;
pub mod tensorboard;
pub mod tracker;
pub mod validate;

pub use crate::bundle::{Checkpoint, EpochRow, FineTune, Recipe, RecipeError, TrainState};
pub use grad_scaler::GradScaler;
pub use launch::{launch, Request};
pub use learner::Learner;
pub use optimizer::AdamConfig;
pub use profile::PhaseTimes;
pub use report::{ConsoleReport, Report, SilentReport};
pub use schedule::{LrSpec, OneCycle};
pub use smooth_loss::SmoothLoss;

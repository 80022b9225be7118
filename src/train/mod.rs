//! Training: fastai's Adam, one-cycle schedules, `fine_tune`, `lr_find`.

pub mod checkpoint;
pub mod distributed;
pub mod grad_scaler;
pub mod learner;
pub mod loss;
pub mod lr_find;
pub mod metrics;
pub mod mix;
pub mod optimizer;
pub mod pipeline;
pub mod profile;
pub mod report;
pub mod run;
pub mod schedule;
pub mod show_batch;
pub mod smooth_loss;
pub mod tracker;

pub use crate::bundle::{Checkpoint, EpochRow, FineTune, TrainState};
pub use grad_scaler::GradScaler;
pub use learner::Learner;
pub use optimizer::AdamConfig;
pub use profile::PhaseTimes;
pub use report::{ConsoleReport, Report, SilentReport};
pub use schedule::{LrSpec, OneCycle};
pub use smooth_loss::SmoothLoss;

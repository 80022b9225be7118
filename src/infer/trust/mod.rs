//! Knowing how far to trust an answer: calibrated probabilities (temperature scaling), an
//! "unknown" answer for images unlike the training data (distance of the penultimate features to
//! the training features), and the measures both are judged by (ECE, NLL, AUROC, FPR at 95 % TPR).
//! The formulas and their sources: `../shared/research/trust.md` and docs/usage.md.

pub mod calibration;
pub mod fit;
pub mod report;
pub mod scores;

pub use fit::{calibrate, Accept, FitOptions, Fitted, TrustError, DEFAULT_ACCEPT, DEFAULT_SCORE};

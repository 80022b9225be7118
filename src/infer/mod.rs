//! Using a trained or pretrained network: bundles, prediction, evaluation, ImageNet classification.

pub mod evaluate;
pub mod imagenet;
pub mod predict;

/// The bundle is written by training and read here; re-exported so users of a trained model find it
/// with the rest of inference.
pub use crate::train::bundle;
pub use bundle::{Bundle, BundleError, ModelInfo};

//! Using a trained or pretrained network: bundles, prediction, evaluation, ImageNet classification.

pub mod bundle;
pub mod evaluate;
pub mod imagenet;
pub mod predict;

pub use bundle::{Bundle, BundleError, ModelInfo};

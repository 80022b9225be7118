//! Using a trained or pretrained network: prediction, evaluation, ImageNet classification.

pub mod cam;
pub mod embed;
pub mod evaluate;
pub mod evaluate_multi;
pub mod features;
pub mod forward;
pub mod imagenet;
pub mod interpret;
pub mod predict;
pub mod splits;
pub mod trust;
pub mod tta;

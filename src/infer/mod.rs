//! Using a trained or pretrained network: ImageNet classification, prediction, evaluation.

pub mod imagenet;

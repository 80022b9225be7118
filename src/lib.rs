//! finetune: turn a folder of images into an image classifier by fine-tuning an
//! ImageNet-pretrained network, with fastai's `vision_learner(...).fine_tune(n)` semantics.

pub mod atomic;
pub mod bundle;
pub mod clean;
pub mod data;
pub mod device;
pub mod dist;
pub mod download;
pub mod export;
pub mod infer;
pub mod model;
pub mod paths;
pub mod search;
pub mod serve;
pub mod train;

/// The test suite's skip helper, so a unit test that cannot run here is recorded like the
/// integration tests' skips (one file for both).
#[cfg(test)]
#[path = "../tests/common/skip.rs"]
pub(crate) mod test_skip;

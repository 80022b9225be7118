//! Architectures, weights and the fastai head.

mod arch;
mod convnext;
pub mod head;
pub mod imagenet;
pub mod load;
mod mobilenet_v2;
pub mod network;
pub mod registry;
mod regnet;
mod resnet;
pub mod timm_zoo2;
mod vit;
pub mod weights;

pub use arch::{Arch, KnownWeights, UnknownArch, IMAGENET_STATS, INCEPTION_STATS};
pub use load::{load_checkpoint, load_tensors, Part};
pub use network::Network;

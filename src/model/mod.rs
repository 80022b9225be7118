//! Architectures, weights and the fastai head.

mod arch;
mod convnext;
mod efficientnet;
mod efficientnet_lite;
pub mod head;
pub mod imagenet;
mod layers;
pub mod load;
pub mod memory_format;
mod mobilenet_v2;
mod mobilenet_v3;
pub mod network;
pub mod onnx;
pub mod precision;
pub mod registry;
mod regnet;
mod resnet;
mod runtime;
pub mod timm_zoo2;
mod vit;
pub mod weights;

pub mod timm;
pub use arch::{
    Arch, ArchSpec, Family, KnownWeights, UnknownArch, IMAGENET_STATS, INCEPTION_STATS,
};
pub use load::{load_checkpoint, load_tensors, Part};
pub use memory_format::{FormatChoice, MemoryFormat};
pub use network::Network;
pub use precision::{Precision, PrecisionChoice};
pub use runtime::Runtime;

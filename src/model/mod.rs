//! Architectures, weights and the fastai head.

mod arch;
pub mod head;
pub mod imagenet;
pub mod load;
pub mod memory_format;
mod mobilenet_v2;
pub mod network;
pub mod registry;
mod resnet;
pub mod weights;

pub use arch::{Arch, KnownWeights, UnknownArch};
pub use load::{load_checkpoint, load_tensors, Part};
pub use memory_format::{FormatChoice, MemoryFormat};
pub use network::Network;

//! Architectures, weights and the fastai head, in three layers (docs/ARCHITECTURE.md):
//! the bottom (`layers`, `onnx`, `weights`, `precision`), the family files (`family/`, one per
//! network family, leaves), the catalogue above them (`catalog/`: every arch and its facts), and
//! on top what assembles and loads a network (`network`, `head`, `load`, `registry`).

pub mod catalog;
pub mod family;
pub mod head;
pub mod imagenet;
pub mod layers;
pub mod load;
pub mod memory_format;
pub mod network;
pub mod onnx;
pub mod plan;
pub use plan::fused;
pub mod precision;
pub mod registry;
mod runtime;
pub mod weights;

pub use catalog::{
    timm, Arch, ArchSpec, Family, KnownWeights, UnknownArch, IMAGENET_STATS, INCEPTION_STATS,
};
pub use head::FEATURES;
pub use load::{load_checkpoint, load_tensors, Portion};
pub use memory_format::{FormatChoice, MemoryFormat};
pub use network::Network;
pub use precision::{Precision, PrecisionChoice};
pub use runtime::Runtime;

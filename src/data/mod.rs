//! Images in: finding and splitting labelled files, decoding, resizing, batching.

pub mod augment;
pub mod cache;
pub mod dataset;
pub mod decode;
pub mod files;
pub mod items;
pub mod labels;
pub mod layout;
pub mod progress;
pub mod resize;
pub mod tensor;
pub mod transform;

pub use cache::CacheConfig;
pub use dataset::{DataConfig, DataError, DataLoaders, ImageSet};
pub use progress::{Progress, Quiet};
pub use transform::{PadMode, ResizeMethod, Size};

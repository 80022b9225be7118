//! Images in: decoding, resizing, batching.

pub mod decode;
pub mod resize;
pub mod tensor;

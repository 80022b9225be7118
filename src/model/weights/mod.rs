//! Weight files: PyTorch checkpoints (zip and legacy) and safetensors, read into named tensors.

pub mod pickle;
mod torch_file;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub type NamedTensors = Vec<(String, Tensor)>;
/// Key → tensor: a checkpoint whose names a layout renaming may change.
pub type Tensors = HashMap<String, Tensor>;
/// Key → shape: what recognising a layout may look at.
pub type Shapes = HashMap<String, Vec<i64>>;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read weights file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error(
        "{path} does not fit {arch}: {msg}{looks_like}",
        looks_like = match looks_like { Some(a) => format!(" (the file looks like {a} weights; pass --arch {a})"), None => String::new() }
    )]
    Mismatch {
        path: PathBuf,
        arch: String,
        msg: String,
        looks_like: Option<String>,
    },
}

impl WeightsError {
    pub(crate) fn format(path: &Path, msg: impl Into<String>) -> Self {
        WeightsError::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

/// Only regular files are read (a FIFO or `/dev/zero` named `.pth` cannot hang or exhaust memory),
/// and none larger than this: 4× the largest ImageNet checkpoint a user is likely to pick.
pub const MAX_WEIGHTS_BYTES: u64 = 8 << 30;

/// Reads every tensor of a weights file, chosen by content (not by extension), converted to f32
/// where it is floating point (fp16/bf16 checkpoints load into the f32 model).
pub fn read_weights(path: &Path) -> Result<NamedTensors, WeightsError> {
    let bytes =
        crate::data::files::read_capped(path, MAX_WEIGHTS_BYTES).map_err(|e| WeightsError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    read_weights_bytes(path, &bytes)
}

/// [`read_weights`] on a file already in memory; `name` is only used in error messages.
///
/// Hostile input ends in a [`WeightsError`], never a panic: every tensor's byte size (shape ×
/// element size, checked for overflow) is compared with the bytes actually present before a tensor
/// is created, and the pickle reader bounds nesting and memo copies (see [`pickle`]).
pub fn read_weights_bytes(name: &Path, bytes: &[u8]) -> Result<NamedTensors, WeightsError> {
    let tensors = if looks_like_safetensors(bytes) {
        read_safetensors(name, bytes)?
    } else if bytes.is_empty() {
        return Err(WeightsError::format(name, "file is empty"));
    } else {
        torch_file::read(name, bytes)?
    };
    tensors
        .into_iter()
        .map(|(k, t)| {
            let t = match t.kind() {
                Kind::Half | Kind::BFloat16 | Kind::Double => t
                    .f_to_kind(Kind::Float)
                    .map_err(|e| WeightsError::format(name, format!("tensor {k}: {e}")))?,
                _ => t,
            };
            Ok((k, t))
        })
        .collect()
}

/// Parses a `.safetensors` file from memory the way `tch::Tensor::read_safetensors` does (the same
/// `safetensors` crate and conversion), with tensors in file order.
fn read_safetensors(name: &Path, bytes: &[u8]) -> Result<NamedTensors, WeightsError> {
    let bad = |e: &dyn std::fmt::Display| {
        WeightsError::format(name, format!("broken safetensors file: {e}"))
    };
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(&e))?;
    let mut views = st.tensors();
    // Views borrow `bytes`, so their start is their offset in the file (names break ties between
    // empty tensors).
    views.sort_by(|(a, va), (b, vb)| {
        (va.data().as_ptr() as usize, a).cmp(&(vb.data().as_ptr() as usize, b))
    });
    views
        .into_iter()
        .map(|(k, v)| {
            // The crate already checked shape × dtype size == data length; checked again here
            // because libtorch copies `shape`'s worth of bytes from the slice.
            let kind = Kind::try_from(v.dtype()).map_err(|e| bad(&format!("tensor {k}: {e}")))?;
            let size: Vec<i64> = v
                .shape()
                .iter()
                .map(|&d| i64::try_from(d).ok())
                .collect::<Option<_>>()
                .ok_or_else(|| bad(&format!("tensor {k}: dimension too large")))?;
            let nbytes = v
                .shape()
                .iter()
                .try_fold(kind.elt_size_in_bytes(), |n, &d| n.checked_mul(d));
            if nbytes != Some(v.data().len()) {
                return Err(bad(&format!("tensor {k}: shape does not match its data")));
            }
            let t = Tensor::f_from_data_size(v.data(), &size, kind)
                .map_err(|e| bad(&format!("tensor {k}: {e}")))?;
            Ok((k, t))
        })
        .collect()
}

/// safetensors starts with a little-endian u64 header length followed by a JSON object.
fn looks_like_safetensors(b: &[u8]) -> bool {
    if b.len() < 10 {
        return false;
    }
    let n = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
    n > 1 && n < 100_000_000 && (n as usize) < b.len() && b[8] == b'{'
}

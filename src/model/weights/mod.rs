//! Weight files: PyTorch checkpoints (zip and legacy) and safetensors, read into named tensors.

pub mod pickle;
mod torch_file;

use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub type NamedTensors = Vec<(String, Tensor)>;

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

/// Reads every tensor of a weights file, chosen by content (not by extension), converted to f32
/// where it is floating point (fp16/bf16 checkpoints load into the f32 model).
pub fn read_weights(path: &Path) -> Result<NamedTensors, WeightsError> {
    let bytes = std::fs::read(path).map_err(|source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let tensors = if looks_like_safetensors(&bytes) {
        Tensor::read_safetensors(path)
            .map_err(|e| WeightsError::format(path, format!("broken safetensors file: {e}")))?
    } else if bytes.is_empty() {
        return Err(WeightsError::format(path, "file is empty"));
    } else {
        torch_file::read(path, &bytes)?
    };
    Ok(tensors
        .into_iter()
        .map(|(k, t)| {
            let t = match t.kind() {
                Kind::Half | Kind::BFloat16 | Kind::Double => t.to_kind(Kind::Float),
                _ => t,
            };
            (k, t)
        })
        .collect())
}

/// safetensors starts with a little-endian u64 header length followed by a JSON object.
fn looks_like_safetensors(b: &[u8]) -> bool {
    if b.len() < 10 {
        return false;
    }
    let n = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
    n > 1 && n < 100_000_000 && (n as usize) < b.len() && b[8] == b'{'
}

//! Embeddings: the head's input (the body's concat-pooled features, `2·nf` values; what the k-NN
//! "unknown" score compares), one row per image, for `finetune embed`, `finetune similar`, serve's
//! `/embed` and Python's `Model.embed`. Cosine similarity between them finds look-alikes.

use crate::bundle::Bundle;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The embeddings of the images that could be read, in input order.
pub struct Embeddings {
    pub paths: Vec<PathBuf>,
    /// `[N, D]` fp32 on the CPU.
    pub matrix: Tensor,
    pub skipped: Vec<(PathBuf, String)>,
}

/// Runs the network over `paths` (the validation transform, as `predict`).
pub fn embed(bundle: &Bundle, paths: &[PathBuf], max_file_bytes: u64) -> Embeddings {
    let p = super::trust::fit::run(bundle, paths, max_file_bytes);
    Embeddings {
        paths: p.paths,
        matrix: p.f.pooled,
        skipped: p.skipped,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct WriteError {
    path: PathBuf,
    source: std::io::Error,
}

/// Writes `e` as `out` (an `.npy` of float32 `[N, D]`, NumPy's format, little-endian) and beside
/// it `out` with the extension `.csv` (`index,path`: row i of the array is the image on line i),
/// each atomically. Returns the CSV's path.
pub fn write(e: &Embeddings, out: &Path) -> Result<PathBuf, WriteError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError { path, source }
    };
    let (n, d) = (e.matrix.size()[0] as u64, e.matrix.size()[1] as u64);
    let mut bytes = crate::data::cache::npy::header("<f4", &[n, d], 64);
    let flat: Vec<f32> =
        Vec::try_from(e.matrix.to_kind(Kind::Float).flatten(0, -1)).unwrap_or_default();
    bytes.reserve(flat.len() * 4);
    for v in flat {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    crate::atomic::write_file(out, &bytes).map_err(err(out))?;
    let csv_path = out.with_extension("csv");
    let mut csv = String::from("index,path\n");
    for (i, p) in e.paths.iter().enumerate() {
        let s = p.display().to_string();
        let field = if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        };
        csv.push_str(&format!("{i},{field}\n"));
    }
    crate::atomic::write_file(&csv_path, csv.as_bytes()).map_err(err(&csv_path))?;
    Ok(csv_path)
}

/// Cosine similarity of every row of `a` with every row of `b`: `[Na, Nb]`.
pub fn cosine(a: &Tensor, b: &Tensor) -> Tensor {
    let n = super::trust::scores::normalize;
    n(a).matmul(&n(b).transpose(0, 1))
}

/// The `k` rows of `bank` most similar to `query` (a `[D]` or `[1, D]` row), best first, as
/// (row, cosine similarity).
pub fn nearest(bank: &Tensor, query: &Tensor, k: usize) -> Vec<(usize, f64)> {
    let n = bank.size()[0] as usize;
    if n == 0 {
        return Vec::new();
    }
    let sims = cosine(&query.reshape([1, -1]), bank).squeeze_dim(0);
    let (v, i) = sims.topk(k.clamp(1, n) as i64, 0, true, true);
    let v: Vec<f64> = Vec::try_from(v.to_kind(Kind::Double)).unwrap_or_default();
    let i: Vec<i64> = Vec::try_from(i).unwrap_or_default();
    i.into_iter().map(|i| i as usize).zip(v).collect()
}

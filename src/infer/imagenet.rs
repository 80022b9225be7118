//! ImageNet top-k with a pretrained checkpoint's own classifier: the end-to-end check that weights,
//! preprocessing and the forward pass agree with torchvision.

use crate::data::decode::{decode_file, DecodeError};
use crate::data::{resize, tensor};
use crate::model::{imagenet, Arch, Network};
use rayon::prelude::*;
use std::path::PathBuf;
use tch::nn::ModuleT;

#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub index: i64,
    pub label: String,
    pub probability: f64,
}

/// The reference eval transform of the arch's weights: resize the short side, centre-crop
/// (256 → 224 for most; see [`Arch::eval_resize`]). Bilinear, where torchvision's EfficientNet
/// presets use bicubic.
pub fn preprocess(
    path: &std::path::Path,
    arch: Arch,
    max_file_bytes: u64,
) -> Result<image::RgbImage, DecodeError> {
    let (short, crop) = arch.eval_resize();
    Ok(resize::resize_short_then_center_crop(
        &decode_file(path, max_file_bytes)?,
        short as u32,
        crop as u32,
    ))
}

/// Images decoded at once, and images per forward pass: memory stays bounded however many paths
/// are given (as in `predict`).
const CHUNK: usize = 256;
const BATCH: usize = 64;

/// Top-`k` per image; images that cannot be decoded come back as their error. `stats`: the
/// mean and std the weights expect.
pub fn classify(
    net: &Network,
    stats: ([f64; 3], [f64; 3]),
    paths: &[PathBuf],
    k: usize,
    max_file_bytes: u64,
) -> Vec<Result<Vec<Scored>, DecodeError>> {
    let labels = imagenet::labels();
    let arch = net.arch;
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(CHUNK) {
        let decoded: Vec<_> = chunk
            .par_iter()
            .map(|p| preprocess(p, arch, max_file_bytes))
            .collect();
        let ok: Vec<&image::RgbImage> = decoded.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut rows: Vec<Vec<Scored>> = Vec::with_capacity(ok.len());
        for batch in ok.chunks(BATCH) {
            let x = net.input(&tensor::stack_u8(batch), stats.0, stats.1);
            let probs = tch::no_grad(|| net.forward_t(&x, false).softmax(-1, tch::Kind::Float))
                .to_device(tch::Device::Cpu);
            let (p, i) = probs.topk(k as i64, -1, true, true);
            rows.extend((0..batch.len() as i64).map(|r| {
                (0..k as i64)
                    .map(|c| {
                        let index = i.int64_value(&[r, c]);
                        Scored {
                            index,
                            label: labels
                                .get(index as usize)
                                .copied()
                                .unwrap_or("?")
                                .to_string(),
                            probability: p.double_value(&[r, c]),
                        }
                    })
                    .collect()
            }));
        }
        let mut rows = rows.into_iter();
        out.extend(
            decoded
                .into_iter()
                .map(|r| r.map(|_| rows.next().unwrap_or_default())),
        );
    }
    out
}

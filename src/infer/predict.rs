//! Batched, parallel inference with a bundle: validation transform, softmax probabilities.

use super::bundle::{Bundle, ModelInfo};
use crate::data::decode::{decode_file, DecodeError};
use crate::data::tensor::stack_u8;
use crate::data::transform::{crop_window, prepare};
use rayon::prelude::*;
use std::path::PathBuf;
use tch::nn::ModuleT;

#[derive(Debug, Clone)]
pub struct Prediction {
    pub path: PathBuf,
    /// Probabilities for every class, in the bundle's class order.
    pub probs: Vec<f32>,
}

impl Prediction {
    /// The `k` most likely (class index, probability), best first.
    pub fn top(&self, k: usize) -> Vec<(usize, f32)> {
        let mut idx: Vec<usize> = (0..self.probs.len()).collect();
        idx.sort_by(|&a, &b| self.probs[b].total_cmp(&self.probs[a]));
        idx.into_iter()
            .take(k)
            .map(|i| (i, self.probs[i]))
            .collect()
    }
}

/// The validation transform of one decoded image: the bundle's resize, then the centred window of
/// its input size. Shared by `predict` and `serve`, so both give the same probabilities.
pub fn preprocess(img: &image::RgbImage, info: &ModelInfo) -> image::RgbImage {
    let mut rng = rand::rngs::mock::StepRng::new(0, 0);
    let prepared = prepare(img, info.resize, info.size, info.pad_mode);
    crop_window(&prepared, info.size, false, &mut rng)
}

/// Softmax probabilities of preprocessed images (all of the bundle's input size), one forward pass;
/// one row per image, in the bundle's class order.
pub fn probabilities(bundle: &Bundle, images: &[&image::RgbImage]) -> Vec<Vec<f32>> {
    if images.is_empty() {
        return Vec::new();
    }
    let info = &bundle.info;
    let x = bundle.net.input(
        &stack_u8(images),
        info.normalization.mean,
        info.normalization.std,
    );
    let p = tch::no_grad(|| {
        bundle
            .net
            .forward_t(&x, false)
            .softmax(-1, tch::Kind::Float)
    })
    .to_device(tch::Device::Cpu);
    let n = p.size()[1] as usize;
    let flat: Vec<f32> = Vec::try_from(p.flatten(0, -1)).unwrap_or_default();
    flat.chunks(n.max(1)).map(|c| c.to_vec()).collect()
}

/// How many images are decoded at once: enough to keep every core busy, few enough that thousands of
/// files never sit in memory together.
const CHUNK: usize = 256;
const BATCH: usize = 64;

/// Predicts every path; `on_result` sees each result in input order as soon as its chunk is done,
/// so callers can stream output for thousands of files.
pub fn predict_each(
    bundle: &Bundle,
    paths: &[PathBuf],
    mut on_result: impl FnMut(Result<Prediction, DecodeError>),
) {
    let info = &bundle.info;
    for chunk in paths.chunks(CHUNK) {
        let decoded: Vec<Result<image::RgbImage, DecodeError>> = chunk
            .par_iter()
            .map(|p| decode_file(p).map(|img| preprocess(&img, info)))
            .collect();
        let ok: Vec<&image::RgbImage> = decoded.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut probs: Vec<Vec<f32>> = Vec::with_capacity(ok.len());
        for b in ok.chunks(BATCH) {
            probs.extend(probabilities(bundle, b));
        }
        let mut it = probs.into_iter();
        for (p, r) in chunk.iter().zip(decoded) {
            on_result(r.map(|_| Prediction {
                path: p.clone(),
                probs: it.next().unwrap_or_default(),
            }));
        }
    }
}

pub fn predict(bundle: &Bundle, paths: &[PathBuf]) -> Vec<Result<Prediction, DecodeError>> {
    let mut out = Vec::with_capacity(paths.len());
    predict_each(bundle, paths, |r| out.push(r));
    out
}

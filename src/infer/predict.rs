//! Batched, parallel inference with a bundle: validation transform, softmax probabilities.

pub use super::forward::{
    answers, answers_of, features, preprocess, probabilities, probabilities_of, Answer,
};
use super::tta::{self, Tta};
use crate::bundle::Bundle;
use crate::data::decode::{decode_file, DecodeError};
use crate::data::transform::presize;
use rayon::prelude::*;
use std::path::PathBuf;

/// How to read and predict images: the file cap (`--max-file-mb`) and test-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    pub max_file_bytes: u64,
    /// `--tta`: fastai's `Learner.tta` (see [`super::tta`]); `None` predicts with the validation
    /// transform alone.
    pub tta: Option<Tta>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_file_bytes: crate::data::files::DEFAULT_MAX_FILE_BYTES,
            tta: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Prediction {
    pub path: PathBuf,
    /// Probabilities for every class, in the bundle's class order.
    pub probs: Vec<f32>,
    /// The "unknown" score, when the bundle has one (see [`Answer`]).
    pub score: Option<f64>,
    /// The image is none of the classes, as far as the model can tell.
    pub unknown: bool,
}

/// What a model answers for one image's probabilities: the `k` most likely classes, or for a
/// multi-label model every label whose probability is above `thresh` (fastai's decoding, strict
/// `>`), best first, however many that is (possibly none).
pub fn decide(
    probs: &[f32],
    task: crate::bundle::Task,
    k: usize,
    thresh: f64,
) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    if task.is_multi() {
        return idx
            .into_iter()
            .filter(|&i| probs[i] as f64 > thresh)
            .map(|i| (i, probs[i]))
            .collect();
    }
    idx.into_iter().take(k).map(|i| (i, probs[i])).collect()
}

/// The most likely class (the first of equals): what a heatmap explains when no class is named.
pub fn best(probs: &[f32]) -> usize {
    probs
        .iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &p)| if p > b.1 { (i, p) } else { b },
        )
        .0
}

/// A multi-label threshold must leave room on both sides: (0, 1).
pub fn check_thresh(thresh: f64) -> Result<(), String> {
    if thresh > 0.0 && thresh < 1.0 {
        Ok(())
    } else {
        Err(format!(
            "threshold {thresh} must be between 0 and 1 (fastai's default: 0.5)"
        ))
    }
}

impl Prediction {
    /// See [`decide`].
    pub fn decide(&self, task: crate::bundle::Task, k: usize, thresh: f64) -> Vec<(usize, f32)> {
        decide(&self.probs, task, k, thresh)
    }

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

/// How many images are decoded at once: enough to keep every core busy, few enough that thousands of
/// files never sit in memory together.
const CHUNK: usize = 256;
const BATCH: usize = 64;

/// Predicts every path; `on_result` sees each result in input order as soon as its chunk is done,
/// so callers can stream output for thousands of files.
/// Files over `opts.max_file_bytes` fail like unreadable ones.
pub fn predict_each(
    bundle: &Bundle,
    paths: &[PathBuf],
    opts: &Options,
    mut on_result: impl FnMut(Result<Prediction, DecodeError>),
) {
    predict_with(
        bundle,
        paths,
        |p| decode_file(p, opts.max_file_bytes),
        opts.tta.as_ref(),
        |p, r| {
            on_result(r.map(|a| Prediction {
                path: p.clone(),
                probs: a.probs,
                score: a.score,
                unknown: a.unknown,
            }))
        },
    );
}

/// Probabilities of any kind of item (files, encoded bytes, pixel arrays): `decode` turns one into
/// RGB pixels (or an error of the caller's kind), in parallel, a chunk at a time; each result
/// reaches `on_result` in input order. Everything that feeds the network goes through here, so
/// all inputs get the same transform; with `tta`, test-time augmentation.
///
/// Decoding runs one chunk ahead of the network, on another thread (training's producer, in
/// small): the network's passes leave a core idle now and then (the softmax, the head, each
/// layer's last rows) and the next chunk's decoding fills it, instead of the two alternating.
/// At most three chunks' pixels exist at once: one in the network, one waiting, one decoding.
pub fn predict_with<T: Sync, E: Send>(
    bundle: &Bundle,
    items: &[T],
    decode: impl Fn(&T) -> Result<image::RgbImage, E> + Sync,
    tta: Option<&Tta>,
    on_result: impl FnMut(&T, Result<Answer, E>),
) {
    let info = &bundle.info;
    // TTA cuts its own crop windows, so it takes the images before the window.
    let prepare_one = |it: &T| {
        decode(it).map(|img| match tta {
            None => preprocess(&img, info),
            Some(_) => presize(&img, info.resize, info.size, info.pad_mode),
        })
    };
    map_batches(
        items,
        prepare_one,
        |b| match tta {
            None => answers(bundle, b),
            Some(t) => tta::answers(bundle, b, t),
        },
        on_result,
    );
}

/// The pipeline under [`predict_with`], for any per-batch computation `run` (answers, features):
/// `prepare` turns an item into the network's image in parallel, a chunk ahead of `run`, which
/// sees batches of at most 64 images and returns one result per image.
pub fn map_batches<T: Sync, E: Send, R: Default>(
    items: &[T],
    prepare: impl Fn(&T) -> Result<image::RgbImage, E> + Sync,
    mut run: impl FnMut(&[&image::RgbImage]) -> Vec<R>,
    mut on_result: impl FnMut(&T, Result<R, E>),
) {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Result<image::RgbImage, E>>>(1);
        let prepare = &prepare;
        scope.spawn(move || {
            for chunk in items.chunks(CHUNK) {
                let decoded = chunk.par_iter().map(prepare).collect();
                // The receiver is gone only when the caller stopped early (a panic in
                // `on_result`): nothing left to decode for.
                if tx.send(decoded).is_err() {
                    break;
                }
            }
        });
        for (chunk, decoded) in items.chunks(CHUNK).zip(rx) {
            let ok: Vec<&image::RgbImage> =
                decoded.iter().filter_map(|r| r.as_ref().ok()).collect();
            let mut results: Vec<R> = Vec::with_capacity(ok.len());
            for b in ok.chunks(BATCH) {
                results.extend(run(b));
            }
            let mut it = results.into_iter();
            for (item, r) in chunk.iter().zip(decoded) {
                on_result(item, r.map(|_| it.next().unwrap_or_default()));
            }
        }
    });
}

pub fn predict(
    bundle: &Bundle,
    paths: &[PathBuf],
    opts: &Options,
) -> Vec<Result<Prediction, DecodeError>> {
    let mut out = Vec::with_capacity(paths.len());
    predict_each(bundle, paths, opts, |r| out.push(r));
    out
}

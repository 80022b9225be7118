//! One forward pass over prepared images: the validation transform and probabilities, the
//! level below `predict` (files, chunks, streaming) and `tta` (augmented passes), which both use it.

pub use super::features::Features;
use crate::bundle::{Bundle, ModelInfo};
use crate::data::tensor::stack_u8;
use crate::data::transform::{crop_window, presize};
use tch::nn::ModuleT;

/// The validation transform of one decoded image: the bundle's resize, then the centred window of
/// its input size. Shared by `predict` and `serve`, so both give the same probabilities.
pub fn preprocess(img: &image::RgbImage, info: &ModelInfo) -> image::RgbImage {
    let mut rng = rand::rngs::mock::StepRng::new(0, 0);
    let prepared = presize(img, info.resize, info.size, info.pad_mode);
    crop_window(&prepared, info.size, false, &mut rng)
}

/// What the model answers for one image: its probabilities (calibrated unless the bundle was told
/// otherwise) and, when the bundle has an "unknown" score, the score and whether it fell below the
/// threshold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// One per class in the bundle's order: softmax of `logits / T`, or for a multi-label model
    /// one sigmoid per label.
    pub probs: Vec<f32>,
    /// How much the image looks like the training data (higher = more); `None` for a bundle
    /// without the score.
    pub score: Option<f64>,
    /// The score is below the threshold: the image is none of the classes, as far as the model
    /// can tell.
    pub unknown: bool,
}

/// Softmax probabilities of preprocessed images (all of the bundle's input size), one forward pass;
/// one row per image, in the bundle's class order.
pub fn probabilities(bundle: &Bundle, images: &[&image::RgbImage]) -> Vec<Vec<f32>> {
    answers(bundle, images)
        .into_iter()
        .map(|a| a.probs)
        .collect()
}

/// [`Answer`]s of preprocessed images (all of the bundle's input size), one forward pass.
pub fn answers(bundle: &Bundle, images: &[&image::RgbImage]) -> Vec<Answer> {
    if images.is_empty() {
        return Vec::new();
    }
    answers_of(bundle, &input(bundle, images))
}

/// [`answers`] with the pass's features (on the CPU), for a caller that wants both from one pass
/// (`clean`'s scores and its look-alikes across splits).
pub fn answers_with_features(
    bundle: &Bundle,
    images: &[&image::RgbImage],
) -> (Vec<Answer>, Features) {
    let f = features_of(bundle, &input(bundle, images));
    (answer(bundle, &f), f.to_cpu())
}

/// Preprocessed images as the network's normalised input.
fn input(bundle: &Bundle, images: &[&image::RgbImage]) -> tch::Tensor {
    let info = &bundle.info;
    bundle.net.input(
        &stack_u8(images),
        info.normalization.mean,
        info.normalization.std,
    )
}

/// The features of preprocessed images, on the CPU.
pub fn features(bundle: &Bundle, images: &[&image::RgbImage]) -> Features {
    features_of(bundle, &input(bundle, images)).to_cpu()
}

/// Features of a normalised batch on the network's device, in the inference plan (empty
/// `[N, 0]` features for a network without fastai's head).
fn features_of(bundle: &Bundle, x: &tch::Tensor) -> Features {
    let x = x.to_device(bundle.net.device());
    // A bundle's weights never change once loaded: its passes run in the inference plan.
    crate::model::plan::folded(|| {
        tch::no_grad(|| match bundle.net.features(&x) {
            Some([pooled, hidden, logits]) => Features {
                pooled,
                hidden,
                logits,
            },
            None => {
                let logits = bundle.net.forward_t(&x, false);
                let empty = || {
                    tch::Tensor::zeros([logits.size()[0], 0], (tch::Kind::Float, logits.device()))
                };
                Features {
                    pooled: empty(),
                    hidden: empty(),
                    logits,
                }
            }
        })
    })
}

/// Probabilities of the network on an already normalised float batch `[N, 3, H, W]` (any device),
/// one row per image: softmax over the classes, or for a multi-label model one sigmoid per label
/// (each label's own probability; they need not sum to 1). Serve's KServe v2 `FP32` input takes
/// this path.
pub fn probabilities_of(bundle: &Bundle, x: &tch::Tensor) -> Vec<Vec<f32>> {
    answers_of(bundle, x).into_iter().map(|a| a.probs).collect()
}

/// [`Answer`]s of an already normalised float batch (see [`probabilities_of`]).
pub fn answers_of(bundle: &Bundle, x: &tch::Tensor) -> Vec<Answer> {
    answer(bundle, &features_of(bundle, x))
}

fn answer(bundle: &Bundle, f: &Features) -> Vec<Answer> {
    let z = &f.logits;
    let t = bundle.temperature();
    // Exactly the old computation when uncalibrated (no division by 1).
    let zt = if t == 1.0 { z.shallow_clone() } else { z / t };
    let p = if bundle.info.task.is_multi() {
        zt.sigmoid()
    } else {
        zt.softmax(-1, tch::Kind::Float)
    }
    .to_device(tch::Device::Cpu);
    let n = p.size()[1] as usize;
    let flat: Vec<f32> = Vec::try_from(p.flatten(0, -1)).unwrap_or_default();
    let scores = match &bundle.info.unknown {
        // `--unknown off`: no score either, so every entry point answers alike.
        Some(u) if f.hidden.size()[1] > 0 && bundle.accept.is_some() => Some(
            super::trust::scores::score(u.score, f, bundle.stats.as_ref(), u.k),
        ),
        _ => None,
    };
    let threshold = bundle.threshold();
    flat.chunks(n.max(1))
        .enumerate()
        .map(|(i, c)| {
            let score = scores.as_ref().and_then(|s| s.get(i).copied());
            Answer {
                probs: c.to_vec(),
                score,
                unknown: matches!((score, threshold), (Some(s), Some(t)) if super::trust::scores::below(s, t)),
            }
        })
        .collect()
}

//! Test-time augmentation, fastai's `Learner.tta(n=4, beta=0.25)`: `n` passes of each image through
//! the *training* transforms (a random crop window for `--resize crop`; with `--augment`, the flip,
//! rotation, zoom and lighting of `aug_transforms`), their softmax probabilities averaged, then mixed
//! with the plain (validation-transform) prediction: `(1 − β)·mean_k P_k + β·P_0` (`torch.lerp(aug,
//! P0, beta)`). Like fastai, a model trained without `--augment` and with squish or pad resizing
//! gets `n` passes equal to the plain one, so TTA changes nothing for it.
//!
//! One difference, on purpose: fastai draws every image's augmentation independently; here each pass
//! draws once (from `seed`) and applies that draw to every image. An image's result is then the same
//! whatever else is in its batch, so `predict --tta`, `evaluate --tta`, `serve ?tta=1` and the Python
//! package agree to the last digit, and a seed reproduces them.

use super::forward::Answer;
use crate::bundle::Bundle;
use crate::data::augment::{self, AugParams};
use crate::data::tensor::{normalize_float, stack_u8};
use crate::data::transform::crop_at;
use rand::{Rng, SeedableRng};

/// How to augment at test time (fastai's defaults).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Tta {
    /// Augmented passes (fastai's `n`).
    pub n: usize,
    /// Weight of the plain prediction (fastai's `beta`).
    pub beta: f64,
    /// Seeds the passes' draws.
    pub seed: u64,
}

impl Default for Tta {
    fn default() -> Self {
        Tta {
            n: 4,
            beta: 0.25,
            seed: 42,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TtaError {
    #[error("--tta-n must be at least 1 (got {0})")]
    Passes(usize),
    #[error("--tta-beta must be between 0 and 1 (got {0})")]
    Beta(f64),
}

impl Tta {
    pub fn validate(&self) -> Result<(), TtaError> {
        if self.n == 0 {
            return Err(TtaError::Passes(self.n));
        }
        if !(0.0..=1.0).contains(&self.beta) {
            return Err(TtaError::Beta(self.beta));
        }
        Ok(())
    }
}

/// One augmented pass: where the crop window sits, and the batch augmentation (when the model was
/// trained with one).
struct Pass {
    crop: (f64, f64),
    aug: Option<AugParams>,
}

/// The passes of `tta` for `bundle`, drawn in a fixed order from `tta.seed`.
fn passes(bundle: &Bundle, tta: &Tta) -> Vec<Pass> {
    let training = bundle.info.training.as_ref();
    // The magnitudes the model was trained with.
    let aug = training.and_then(|t| t.recipe.augmentation());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(tta.seed);
    (0..tta.n)
        .map(|_| {
            let crop = (rng.gen::<f64>(), rng.gen::<f64>());
            let aug = aug.as_ref().map(|cfg| augment::draw(1, cfg, &mut rng));
            Pass { crop, aug }
        })
        .collect()
}

/// fastai's combination of the augmented passes (`augmented[k][i]`: pass k, image i) with the plain
/// prediction `plain[i]`: `(1 − β)·mean_k + β·plain`, per class.
pub fn combine(augmented: &[Vec<Vec<f32>>], plain: &[Vec<f32>], beta: f64) -> Vec<Vec<f32>> {
    let n = augmented.len().max(1) as f64;
    plain
        .iter()
        .enumerate()
        .map(|(i, p0)| {
            p0.iter()
                .enumerate()
                .map(|(c, &p)| {
                    let mean = augmented.iter().map(|pass| pass[i][c] as f64).sum::<f64>() / n;
                    ((1.0 - beta) * mean + beta * p as f64) as f32
                })
                .collect()
        })
        .collect()
}

/// TTA probabilities of images after the bundle's resize but before its crop window
/// ([`crate::data::transform::presize`]); one row per image, in the bundle's class order.
pub fn probabilities(bundle: &Bundle, prepared: &[&image::RgbImage], tta: &Tta) -> Vec<Vec<f32>> {
    answers(bundle, prepared, tta)
        .into_iter()
        .map(|a| a.probs)
        .collect()
}

/// TTA [`Answer`]s: the combined probabilities; the "unknown" score and decision are the plain
/// pass's, the view its threshold was set on.
pub fn answers(bundle: &Bundle, prepared: &[&image::RgbImage], tta: &Tta) -> Vec<Answer> {
    if prepared.is_empty() {
        return Vec::new();
    }
    let info = &bundle.info;
    let norm = &info.normalization;
    let window = |fx: f64, fy: f64| -> Vec<image::RgbImage> {
        prepared
            .iter()
            .map(|img| crop_at(img, info.size, fx, fy))
            .collect()
    };
    let plain_imgs = window(0.5, 0.5);
    let refs: Vec<&image::RgbImage> = plain_imgs.iter().collect();
    let plain_answers = super::forward::answers(bundle, &refs);
    let plain: Vec<Vec<f32>> = plain_answers.iter().map(|a| a.probs.clone()).collect();
    // Squish and pad leave no room for a crop window: an unaugmented pass would only repeat the
    // plain forward pass, so its result is reused.
    let no_room = prepared
        .iter()
        .all(|img| img.dimensions() == (info.size.w, info.size.h));
    let augmented: Vec<Vec<Vec<f32>>> = passes(bundle, tta)
        .iter()
        .map(|pass| {
            if no_room && pass.aug.is_none() {
                return plain.clone();
            }
            let imgs = window(pass.crop.0, pass.crop.1);
            let refs: Vec<&image::RgbImage> = imgs.iter().collect();
            match &pass.aug {
                None => super::forward::probabilities(bundle, &refs),
                Some(aug) => {
                    let xb = stack_u8(&refs).to_device(bundle.net.device());
                    let raw = xb.permute([0, 3, 1, 2]).to_kind(tch::Kind::Float) / 255.0;
                    let aug = aug.repeat_first(refs.len());
                    let x = normalize_float(&augment::apply(&raw, &aug), norm.mean, norm.std);
                    super::forward::probabilities_of(bundle, &x)
                }
            }
        })
        .collect();
    combine(&augmented, &plain, tta.beta)
        .into_iter()
        .zip(plain_answers)
        .map(|(probs, a)| Answer { probs, ..a })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fastai: `torch.lerp(aug, P0, 0.25)` with `aug` the mean of the passes. Worked by hand:
    /// class 0: passes 0.6, 0.8, 0.7, 0.9 → mean 0.75; 0.75·0.75 + 0.25·0.5 = 0.6875.
    #[test]
    fn combination_is_fastais_lerp() {
        let passes = vec![
            vec![vec![0.6, 0.4]],
            vec![vec![0.8, 0.2]],
            vec![vec![0.7, 0.3]],
            vec![vec![0.9, 0.1]],
        ];
        let got = combine(&passes, &[vec![0.5, 0.5]], 0.25);
        assert!((got[0][0] - 0.6875).abs() < 1e-7, "{got:?}");
        assert!((got[0][1] - 0.3125).abs() < 1e-7, "{got:?}");
        // beta 1: the plain prediction alone; beta 0: the passes' mean alone.
        assert_eq!(
            combine(&passes, &[vec![0.5, 0.5]], 1.0),
            vec![vec![0.5, 0.5]]
        );
        let mean = combine(&passes, &[vec![0.5, 0.5]], 0.0);
        assert!((mean[0][0] - 0.75).abs() < 1e-7);
    }

    #[test]
    fn settings_are_checked() {
        assert!(Tta::default().validate().is_ok());
        let bad_n = Tta {
            n: 0,
            ..Tta::default()
        };
        assert!(bad_n
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--tta-n"));
        let bad_beta = Tta {
            beta: 1.5,
            ..Tta::default()
        };
        assert!(bad_beta
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--tta-beta"));
    }
}

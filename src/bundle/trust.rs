//! What a bundle records to say how far to trust an answer: the temperature that calibrates its
//! probabilities and the statistics of its "unknown" score (`model.json`'s `calibration` and
//! `unknown`, and the feature statistics in `ood.safetensors`). Fitted by `infer::trust`; bundles
//! from before this carry neither and answer as they always did (temperature 1, never unknown).

use serde::{Deserialize, Serialize};

/// Guo et al. (2017)'s temperature scaling, fitted on the validation set: `softmax(z / T)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub temperature: f64,
    /// The validation images it was fitted on.
    pub images: usize,
    /// Validation NLL and ECE (15 equal-width bins) with the raw softmax and with `T`.
    pub nll_before: f64,
    pub nll_after: f64,
    pub ece_before: f64,
    pub ece_after: f64,
}

/// How far an image lies from the training data, higher = more like it. Computed from the
/// penultimate features `h` (the 512 values fastai's last Linear reads) or the logits `z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Score {
    /// Hendrycks & Gimpel (2017): the largest softmax probability.
    Msp,
    /// Liu et al. (2020): `logsumexp(z)` (minus the free energy).
    Energy,
    /// Lee et al. (2018): minus the smallest Mahalanobis distance to a class mean under one shared
    /// covariance.
    Mahalanobis,
    /// Sun et al. (2022): minus the cosine distance (of L2-normalised features) to the k-th nearest
    /// training image.
    Knn,
}

impl Score {
    pub const ALL: [Score; 4] = [Score::Msp, Score::Energy, Score::Mahalanobis, Score::Knn];

    /// Whether the score measures distances to the training features (`ood.safetensors`).
    pub fn needs_stats(self) -> bool {
        matches!(self, Score::Mahalanobis | Score::Knn)
    }

    pub fn name(self) -> &'static str {
        match self {
            Score::Msp => "msp",
            Score::Energy => "energy",
            Score::Mahalanobis => "mahalanobis",
            Score::Knn => "knn",
        }
    }
}

/// The "unknown" answer: the score, and the validation images' scores (as quantiles) from which a
/// threshold is read for any acceptance share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnknownInfo {
    pub score: Score,
    /// The neighbour whose distance the k-NN score takes.
    pub k: usize,
    /// The share of validation images accepted by default (`--unknown`): the threshold is the
    /// score below which `1 − accept` of them fall.
    pub accept: f64,
    /// The default score's threshold at `accept` (an image scoring below it is unknown), for
    /// readers of model.json; the answer reads it from `valid_quantiles`.
    pub threshold: f64,
    /// The training images whose features the statistics hold (a seeded sample when there were
    /// more), and the validation images the quantiles come from.
    pub train_images: usize,
    pub valid_images: usize,
    /// Every score of the validation images, sorted ascending (at most 1001 evenly spaced order
    /// statistics), so a threshold for another share, or another score, needs no data.
    pub valid_quantiles: std::collections::BTreeMap<Score, Vec<f64>>,
}

impl UnknownInfo {
    /// The threshold of `score` that accepts `accept` of the validation images: the
    /// `(1 − accept)`-quantile of their scores (linear between order statistics).
    pub fn threshold_of(&self, score: Score, accept: f64) -> Option<f64> {
        let q = self.valid_quantiles.get(&score)?;
        (!q.is_empty()).then(|| quantile(q, 1.0 - accept))
    }

    /// The default score's threshold at `accept`.
    pub fn threshold_for(&self, accept: f64) -> f64 {
        self.threshold_of(self.score, accept)
            .unwrap_or(f64::NEG_INFINITY)
    }
}

/// The `q`-quantile of ascending `sorted` values, linear between neighbours (numpy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NEG_INFINITY,
        1 => sorted[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

/// The feature statistics the distance scores need, as stored in `ood.safetensors`.
#[derive(Debug)]
pub struct FeatureStats {
    /// Class means `[classes, d]` (one row for a multi-label model: the training mean).
    pub means: tch::Tensor,
    /// The inverse of the shared (shrunk) covariance, `[d, d]`.
    pub precision: tch::Tensor,
    /// L2-normalised training features `[n, d]` (a seeded sample of at most `BANK` rows).
    pub bank: tch::Tensor,
}

impl FeatureStats {
    pub const NAMES: [&'static str; 3] = ["means", "precision", "bank"];
}

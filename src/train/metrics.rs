//! The validation metrics of the epoch table: error rate for single-label models; fastai's
//! `accuracy_multi` and `F1ScoreMulti(average='samples')` for multi-label ones.

use tch::{Kind, Tensor};

/// One validation pass's results.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidMetrics {
    pub loss: f64,
    /// Single-label: the share of wrong classes. Multi-label: 1 − `accuracy_multi`, the share of
    /// wrong label decisions over every label of every image.
    pub error_rate: f64,
    /// Multi-label: the mean over images of each image's F1 between its predicted and true labels.
    pub f1: Option<f64>,
    /// Single-label: the confusion matrix (rows actual, columns predicted) over the whole
    /// validation set.
    pub confusion: Option<Vec<Vec<usize>>>,
}

/// The sum over a batch of each image's F1 between predicted and true label sets (bool
/// `[batch, classes]`): `2·|P ∩ T| / (|P| + |T|)`, and 0 for an image with neither, as scikit-learn's
/// `f1_score(average='samples')` (fastai's `F1ScoreMulti`) counts it with its default `zero_division`.
pub fn samples_f1_sum(pred: &Tensor, truth: &Tensor) -> Tensor {
    let tp = pred
        .logical_and(truth)
        .sum_dim_intlist(1, false, Kind::Float);
    let denom =
        pred.sum_dim_intlist(1, false, Kind::Float) + truth.sum_dim_intlist(1, false, Kind::Float);
    let f1 = (&tp * 2.0) / denom.clamp_min(1.0);
    f1.sum(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three images, four labels; F1 per image by hand: {0,1} vs {0}: 2·1/3; {2} vs {3}: 0;
    /// {} vs {}: 0 (scikit-learn's zero_division=0); mean 2/9.
    #[test]
    fn samples_f1_is_scikit_learns() {
        let b = |v: &[i64]| Tensor::from_slice(v).view([3, 4]).gt(0);
        let pred = b(&[1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
        let truth = b(&[1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        let s = samples_f1_sum(&pred, &truth).double_value(&[]);
        assert!((s / 3.0 - 2.0 / 9.0).abs() < 1e-7, "{s}");
    }
}

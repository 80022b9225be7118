//! The classification loss: cross-entropy, with fastai's label smoothing
//! (`LabelSmoothingCrossEntropyFlat(eps)`), mixed for MixUp and CutMix as fastai's `MixHandler` does.
//!
//! fastai's smoothed loss per image is `(ε/C)·Σ_j −log p_j + (1 − ε)·(−log p_y)`, which is libtorch's
//! `cross_entropy(label_smoothing = ε)` when no class weights are given; the validation loss uses
//! the same smoothing, as fastai's does. With class weights (`--class-weights`) the loss is
//! PyTorch's `CrossEntropyLoss(weight=w, label_smoothing=ε)`: each image's loss scaled by
//! `w[y]` and the batch's mean taken as `Σ w[y_i]·l_i / Σ w[y_i]`; multi-label, each label's
//! positive term scaled by its weight (`BCEWithLogitsLoss(pos_weight=w)`).

use super::mix::Mixed;
use tch::{Reduction, Tensor};

/// Mean loss of a batch; `mix` (training batches under `--mixup`/`--cutmix`) weighs each image's
/// loss against its own label by λ and against its partner's by 1 − λ: fastai's
/// `torch.lerp(L(y_perm), L(y), λ)`, then the mean.
///
/// Multi-hot float targets `[batch, classes]` (multi-label) take fastai's `BCEWithLogitsLossFlat`:
/// binary cross-entropy on each logit, averaged over labels and images.
pub fn loss(
    logits: &Tensor,
    y: &Tensor,
    label_smoothing: f64,
    mix: Option<&Mixed>,
    weight: Option<&Tensor>,
) -> Tensor {
    let weight = weight.map(|w| w.to_kind(logits.kind()));
    if y.dim() == 2 {
        let bce = |target: &Tensor, reduction| {
            logits.binary_cross_entropy_with_logits::<&Tensor>(
                &target.to_kind(logits.kind()),
                None,
                weight.as_ref(),
                reduction,
            )
        };
        return match mix {
            None => bce(y, Reduction::Mean),
            Some(m) => {
                let own = bce(y, Reduction::None).mean_dim(1, false, None);
                let other =
                    bce(&y.index_select(0, &m.perm), Reduction::None).mean_dim(1, false, None);
                other
                    .lerp_tensor(&own, &m.lam.to_kind(own.kind()))
                    .mean(None)
            }
        };
    }
    let ce = |target: &Tensor, reduction| {
        logits.cross_entropy_loss::<&Tensor>(
            target,
            weight.as_ref(),
            reduction,
            -100,
            label_smoothing,
        )
    };
    match mix {
        None => ce(y, Reduction::Mean),
        Some(m) => {
            let own = ce(y, Reduction::None);
            let other = ce(&y.index_select(0, &m.perm), Reduction::None);
            other
                .lerp_tensor(&own, &m.lam.to_kind(own.kind()))
                .mean(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn fixed() -> (Tensor, Tensor) {
        let logits = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 0.5, 0.1, -1.0]).view([2, 3]);
        (logits, Tensor::from_slice(&[2i64, 0]))
    }

    /// fastai_recipe.md §3's reference: logits [[1,2,3],[0.5,0.1,−1]], targets [2,0], ε = 0.1 →
    /// mean 0.6046699843 (per image 0.5076059644, 0.7017340041); plain CE 0.5230033176.
    #[test]
    fn label_smoothing_is_fastais() {
        let (logits, y) = fixed();
        let smoothed = loss(&logits, &y, 0.1, None, None).double_value(&[]);
        assert!((smoothed - 0.6046699843).abs() < 1e-6, "{smoothed}");
        let plain = loss(&logits, &y, 0.0, None, None).double_value(&[]);
        assert!((plain - 0.5230033176).abs() < 1e-6, "{plain}");
        // Per image, from fastai's formula written out.
        let lp = logits.log_softmax(1, Kind::Float);
        for (i, want) in [(0i64, 0.5076059644), (1, 0.7017340041)] {
            let row = lp.get(i);
            let t = y.int64_value(&[i]);
            let formula =
                0.1 / 3.0 * -row.sum(Kind::Float).double_value(&[]) + 0.9 * -row.double_value(&[t]);
            assert!((formula - want).abs() < 1e-6, "{formula} vs {want}");
        }
    }

    /// λ = [0.7, 0.6], partners [1, 0]: 0.7·L(2) + 0.3·L(0) for image 0, 0.6·L(0) + 0.4·L(2) for
    /// image 1, averaged (values from PyTorch's `F.cross_entropy(reduction='none')`).
    #[test]
    fn mixed_loss_weighs_own_and_partner_labels() {
        let (logits, y) = fixed();
        let m = Mixed {
            perm: Tensor::from_slice(&[1i64, 0]),
            lam: Tensor::from_slice(&[0.7f32, 0.6]),
        };
        for (eps, want) in [(0.0, 1.1230032444), (0.1, 1.1446698904)] {
            let got = loss(&logits, &y, eps, Some(&m), None).double_value(&[]);
            assert!((got - want).abs() < 1e-6, "ε {eps}: {got} vs {want}");
        }
        // λ = 1 everywhere is the plain loss.
        let ones = Mixed {
            perm: Tensor::from_slice(&[1i64, 0]),
            lam: Tensor::ones([2], (Kind::Float, Device::Cpu)),
        };
        let a = loss(&logits, &y, 0.1, Some(&ones), None).double_value(&[]);
        assert!((a - loss(&logits, &y, 0.1, None, None).double_value(&[])).abs() < 1e-7);
    }

    /// Class weights are PyTorch's `CrossEntropyLoss(weight=w, label_smoothing=ε)`, written out:
    /// `[(1 − ε)·Σ_i w[y_i]·(−log p_i,y_i) + ε/C·Σ_i Σ_c w[c]·(−log p_i,c)] / Σ_i w[y_i]`.
    #[test]
    fn class_weights_are_pytorchs() {
        let (logits, y) = fixed();
        let w = Tensor::from_slice(&[2.0f32, 0.5, 3.0]);
        let lp = logits.log_softmax(1, Kind::Float);
        let wv = [2.0, 0.5, 3.0];
        for eps in [0.0, 0.1] {
            let (mut num, mut den) = (0.0, 0.0);
            for i in 0..2i64 {
                let t = y.int64_value(&[i]) as usize;
                let row: Vec<f64> = (0..3).map(|c| lp.double_value(&[i, c])).collect();
                num += (1.0 - eps) * wv[t] * -row[t];
                num += eps / 3.0 * (0..3).map(|c| wv[c] * -row[c]).sum::<f64>();
                den += wv[t];
            }
            let got = loss(&logits, &y, eps, None, Some(&w)).double_value(&[]);
            assert!(
                (got - num / den).abs() < 1e-6,
                "ε {eps}: {got} vs {}",
                num / den
            );
        }
        // Multi-label: each label's positive term scaled by its weight, the mean over all terms.
        let t = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0]).view([2, 3]);
        let got = loss(&logits, &t, 0.0, None, Some(&w)).double_value(&[]);
        let mut sum = 0.0;
        for i in 0..2i64 {
            for c in 0..3i64 {
                let x = logits.double_value(&[i, c]);
                let s = 1.0 / (1.0 + (-x).exp());
                let yv = t.double_value(&[i, c]);
                sum += -(wv[c as usize] * yv * s.ln() + (1.0 - yv) * (1.0 - s).ln());
            }
        }
        assert!((got - sum / 6.0).abs() < 1e-6, "{got} vs {}", sum / 6.0);
    }
}

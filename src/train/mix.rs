//! fastai's `MixUp` and `CutMix` callbacks (fastai/callback/mixup.py): training batches mixed with a
//! shuffled copy of themselves, and the loss mixed with the same weights
//! (`λ·L(y) + (1 − λ)·L(y_perm)` per image, then the mean; see [`super::loss`]). Validation is never
//! mixed.
//!
//! Both are [`MixHandler`]s, as in fastai: the draws come from the data RNG on the batch producer,
//! after the batch's crops and augmentation, so a seed reproduces a run and the overlapped loop
//! still equals the serial one. fastai draws from torch's generator; the distributions are
//! fastai's, the random streams are not.

use crate::bundle::Mix;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore};
use rand_distr::{Beta, Distribution};
use tch::{Device, Kind, Tensor};

/// One batch's mixing, drawn on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct MixDraw {
    /// Each image's partner (a shuffle of the batch; an image may draw itself, as with
    /// `torch.randperm`).
    pub perm: Vec<i64>,
    /// Weight of each image's own pixels and label.
    pub lam: Vec<f64>,
    /// CutMix's box `[x1, y1, x2, y2]` (pixels, end exclusive), pasted from the partner.
    pub cut: Option<[i64; 4]>,
}

/// fastai's `MixHandler`: a callback that changes each training batch and the loss on it, at
/// fastai's `before_batch` event. Split in two halves so the overlapped loop stays equal, bit for
/// bit, to the serial one: [`Self::draw`] runs on the batch producer with the data RNG, right
/// after the batch's crops and augmentation were drawn; [`Self::before_batch`] runs on the training
/// thread with the finished input on its device. Validation batches never see it.
pub trait MixHandler: Send + Sync {
    /// What this batch's change needs from the data RNG, for a u8 NHWC batch `xb`.
    fn draw(&self, xb: &Tensor, rng: &mut dyn RngCore) -> MixDraw;
    /// The changed network input (`N × C × H × W`, any memory format) and what the loss must weigh.
    fn before_batch(&self, x: &Tensor, draw: &MixDraw) -> (Tensor, Mixed);
}

/// The recipe's mixing is the handler: `Mix::Mixup(α)` is fastai's `MixUp(α)`, `Mix::Cutmix(α)`
/// its `CutMix(α)`.
impl MixHandler for Mix {
    fn draw(&self, xb: &Tensor, rng: &mut dyn RngCore) -> MixDraw {
        let size = xb.size();
        draw(self, size[0] as usize, size[1], size[2], rng)
    }
    fn before_batch(&self, x: &Tensor, d: &MixDraw) -> (Tensor, Mixed) {
        apply(x, d)
    }
}

fn beta<R: Rng + ?Sized>(alpha: f64, rng: &mut R) -> f64 {
    // Settings are validated before a run; an invalid α here mixes nothing rather than panicking.
    Beta::new(alpha, alpha).map_or(1.0, |d| d.sample(rng))
}

/// The draw for a batch of `bs` images of `h × w` pixels.
pub fn draw<R: Rng + ?Sized>(mix: &Mix, bs: usize, h: i64, w: i64, rng: &mut R) -> MixDraw {
    let mut perm: Vec<i64> = (0..bs as i64).collect();
    perm.shuffle(rng);
    match *mix {
        // fastai's MixUp: one λ per image, then max(λ, 1 − λ), so the image itself dominates.
        Mix::Mixup(alpha) => MixDraw {
            perm,
            lam: (0..bs)
                .map(|_| {
                    let l = beta(alpha, rng);
                    l.max(1.0 - l)
                })
                .collect(),
            cut: None,
        },
        // fastai's CutMix: one λ per batch, a box of area ≈ (1 − λ) at a uniform centre, clipped to
        // the image; λ is then recomputed from the clipped box.
        Mix::Cutmix(alpha) => {
            let l = beta(alpha, rng);
            let cut_rat = (1.0 - l).sqrt();
            // torch.round rounds half to even.
            let cut_w = (w as f64 * cut_rat).round_ties_even() as i64;
            let cut_h = (h as f64 * cut_rat).round_ties_even() as i64;
            let cx = rng.gen_range(0..w.max(1));
            let cy = rng.gen_range(0..h.max(1));
            let x1 = (cx - cut_w / 2).clamp(0, w);
            let x2 = (cx + cut_w / 2).clamp(0, w);
            let y1 = (cy - cut_h / 2).clamp(0, h);
            let y2 = (cy + cut_h / 2).clamp(0, h);
            let lam = 1.0 - ((x2 - x1) * (y2 - y1)) as f64 / (w * h).max(1) as f64;
            MixDraw {
                perm,
                lam: vec![lam; bs],
                cut: Some([x1, y1, x2, y2]),
            }
        }
    }
}

/// What the loss needs of a draw, on the batch's device.
pub struct Mixed {
    pub perm: Tensor,
    pub lam: Tensor,
}

/// Mixes the network input `x` (`N × C × H × W`, any memory format) as the draw says.
pub fn apply(x: &Tensor, d: &MixDraw) -> (Tensor, Mixed) {
    let dev: Device = x.device();
    let perm = Tensor::from_slice(&d.perm).to_device(dev);
    let lam = Tensor::from_slice(&d.lam)
        .to_kind(Kind::Float)
        .to_device(dev);
    let partner = x.index_select(0, &perm);
    let out = match d.cut {
        // torch.lerp(x_perm, x, λ) = x_perm + λ·(x − x_perm), as fastai.
        None => partner.lerp_tensor(x, &lam.to_kind(x.kind()).view([-1, 1, 1, 1])),
        Some([x1, y1, x2, y2]) => {
            let out = x.copy();
            if x2 > x1 && y2 > y1 {
                let box_of = |t: &Tensor| t.narrow(2, y1, y2 - y1).narrow(3, x1, x2 - x1);
                box_of(&out).copy_(&box_of(&partner));
            }
            out
        }
    };
    (out, Mixed { perm, lam })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(3)
    }

    /// fastai's reference moments for MixUp(0.4)'s λ' = max(λ, 1 − λ), λ ~ Beta(0.4, 0.4):
    /// E 0.8398, sd 0.1531, P(λ' ≤ 0.75) 0.2873 (fastai_recipe.md §9).
    #[test]
    fn mixup_lambda_has_fastais_distribution() {
        let mut r = rng();
        let lam: Vec<f64> = (0..200)
            .flat_map(|_| draw(&Mix::Mixup(0.4), 100, 8, 8, &mut r).lam)
            .collect();
        let n = lam.len() as f64;
        let mean = lam.iter().sum::<f64>() / n;
        let sd = (lam.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let below = lam.iter().filter(|&&l| l <= 0.75).count() as f64 / n;
        assert!((mean - 0.8398).abs() < 0.01, "mean {mean}");
        assert!((sd - 0.1531).abs() < 0.01, "sd {sd}");
        assert!((below - 0.2873).abs() < 0.01, "P(λ ≤ 0.75) {below}");
        assert!(lam.iter().all(|&l| (0.5..=1.0).contains(&l)));
    }

    #[test]
    fn mixup_blends_each_image_with_its_partner() {
        let x = Tensor::arange(2 * 3 * 2 * 2, (Kind::Float, Device::Cpu)).view([2, 3, 2, 2]);
        let d = MixDraw {
            perm: vec![1, 0],
            lam: vec![0.7, 0.6],
            cut: None,
        };
        let (out, m) = apply(&x, &d);
        let want0 = x.get(0) * 0.7 + x.get(1) * 0.3;
        let want1 = x.get(1) * 0.6 + x.get(0) * 0.4;
        assert!(
            (out.get(0) - want0).abs().max().double_value(&[]) < 1e-5,
            "{out}"
        );
        assert!((out.get(1) - want1).abs().max().double_value(&[]) < 1e-5);
        assert_eq!(Vec::<i64>::try_from(&m.perm).unwrap(), vec![1, 0]);
        // Channels-last input mixes the same.
        let cl = crate::data::layout::MemoryFormat::Nhwc.apply(&x);
        assert!(crate::data::layout::MemoryFormat::Nhwc.holds(&cl));
        assert!(apply(&cl, &d).0.equal(&out));
    }

    /// The pasted box holds the partner's pixels exactly, the rest the image's own, and λ is one minus
    /// the clipped box's share of the image.
    #[test]
    fn cutmix_pastes_the_partners_box_and_weighs_by_its_area() {
        let mut r = rng();
        let (h, w) = (12, 10);
        let x = Tensor::rand([4, 3, h, w], (Kind::Float, Device::Cpu));
        let mut boxes = 0;
        for _ in 0..50 {
            let d = draw(&Mix::Cutmix(1.0), 4, h, w, &mut r);
            let [x1, y1, x2, y2] = d.cut.unwrap();
            assert!(0 <= x1 && x1 <= x2 && x2 <= w && 0 <= y1 && y1 <= y2 && y2 <= h);
            let area = ((x2 - x1) * (y2 - y1)) as f64;
            assert!(d
                .lam
                .iter()
                .all(|&l| (l - (1.0 - area / (h * w) as f64)).abs() < 1e-12));
            let (out, _) = apply(&x, &d);
            let partner = x.index_select(0, &Tensor::from_slice(&d.perm));
            let inside = Tensor::zeros([h, w], (Kind::Bool, Device::Cpu));
            if area > 0.0 {
                boxes += 1;
                let _ = inside
                    .narrow(0, y1, y2 - y1)
                    .narrow(1, x1, x2 - x1)
                    .fill_(1);
            }
            let want = partner.where_self(&inside, &x);
            assert!(out.equal(&want), "box {:?}", d.cut);
        }
        assert!(boxes > 30, "most draws paste a box");
    }

    /// The recipe's check of a mixing setting alone.
    fn validate(m: &Mix) -> Result<(), crate::bundle::RecipeError> {
        crate::bundle::Recipe {
            mix: Some(*m),
            ..crate::bundle::Recipe::FASTAI
        }
        .validate(false)
    }

    #[test]
    fn bad_alphas_are_refused() {
        assert!(validate(&Mix::Mixup(0.4)).is_ok());
        let e = validate(&Mix::Cutmix(0.0)).unwrap_err().to_string();
        assert!(e.contains("--cutmix must be a number above 0"), "{e}");
        assert!(validate(&Mix::Mixup(f64::NAN)).is_err());
    }
}

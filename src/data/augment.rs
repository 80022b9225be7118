//! Batch augmentation, after fastai's `aug_transforms()` defaults: horizontal flip (p 0.5), then with
//! p 0.75 each a rotation of ±10°, a zoom of 1–1.1 and lighting (brightness and contrast, 0.2). The
//! affine parts are composed into one matrix per image and applied with one `grid_sample`
//! (reflection padding, as fastai). fastai's perspective warp (0.2) is not implemented.

use rand::Rng;
use tch::{Kind, Tensor};

pub const P_AFFINE: f64 = 0.75;
pub const P_LIGHTING: f64 = 0.75;
pub const MAX_ROTATE_DEG: f64 = 10.0;
pub const MAX_ZOOM: f64 = 1.1;
pub const MAX_LIGHTING: f64 = 0.2;

/// `x`: float NCHW in `[0, 1]` (before normalisation); returns a batch of the same shape in `[0, 1]`.
pub fn augment<R: Rng>(x: &Tensor, rng: &mut R) -> Tensor {
    apply(x, &draw(x.size()[0] as usize, rng))
}

/// One batch's random draws, as small CPU tensors: what [`apply`] needs. The batch producer draws
/// them in the same order as the serial loop did, so a seed gives the same augmentation wherever it
/// is applied; on CUDA they travel pinned, with the images, so applying them never waits on the host.
#[derive(Debug)]
pub struct AugParams {
    /// `[n, 2, 3]` affine matrices (output → input sampling coordinates).
    theta: Tensor,
    /// `[n, 1, 1, 1]` each.
    bright: Tensor,
    contrast: Tensor,
}

impl AugParams {
    pub fn len(&self) -> usize {
        self.bright.size()[0] as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The first image's draws for each of `n` images (test-time augmentation applies one draw to a
    /// whole batch, so an image's result does not depend on the batch it lands in).
    pub fn repeat_first(&self, n: usize) -> Self {
        let n = n as i64;
        let first = |t: &Tensor| t.narrow(0, 0, 1).repeat([n, 1, 1, 1][..t.dim()].to_vec());
        AugParams {
            theta: first(&self.theta),
            bright: first(&self.bright),
            contrast: first(&self.contrast),
        }
    }

    /// In page-locked memory, for asynchronous copies to `device`.
    pub fn pinned(self, device: tch::Device) -> Self {
        AugParams {
            theta: self.theta.pin_memory(device),
            bright: self.bright.pin_memory(device),
            contrast: self.contrast.pin_memory(device),
        }
    }
}

/// Draws the augmentation of `n` images.
pub fn draw<R: Rng>(n: usize, rng: &mut R) -> AugParams {
    let mut theta = Vec::with_capacity(n * 6);
    let mut bright = Vec::with_capacity(n);
    let mut contrast = Vec::with_capacity(n);
    for _ in 0..n {
        let flip = if rng.gen::<f64>() < 0.5 { -1.0 } else { 1.0 };
        let ang = if rng.gen::<f64>() < P_AFFINE {
            rng.gen_range(-MAX_ROTATE_DEG..=MAX_ROTATE_DEG).to_radians()
        } else {
            0.0
        };
        let (zoom, cx, cy) = if rng.gen::<f64>() < P_AFFINE {
            (
                rng.gen_range(1.0..=MAX_ZOOM),
                rng.gen::<f64>(),
                rng.gen::<f64>(),
            )
        } else {
            (1.0, 0.5, 0.5)
        };
        // Output → input sampling coordinates in [-1,1]: rotate, shrink by the zoom, flip, and shift
        // the zoom window to a random place that stays inside the image.
        let s = 1.0 / zoom;
        let (sin, cos) = ang.sin_cos();
        let tx = (1.0 - s) * (2.0 * cx - 1.0);
        let ty = (1.0 - s) * (2.0 * cy - 1.0);
        theta.extend_from_slice(&[cos * s * flip, -sin * s, tx, sin * s * flip, cos * s, ty]);
        if rng.gen::<f64>() < P_LIGHTING {
            bright.push(rng.gen_range(0.5 - MAX_LIGHTING..=0.5 + MAX_LIGHTING));
            // Contrast: log-uniform between 1-max and 1/(1-max), as fastai's Contrast.
            let lo = (1.0 - MAX_LIGHTING).ln();
            contrast.push(rng.gen_range(lo..=-lo).exp());
        } else {
            bright.push(0.5);
            contrast.push(1.0);
        }
    }
    let n = n as i64;
    let t = |v: &[f64], shape: &[i64]| Tensor::from_slice(v).to_kind(Kind::Float).view(shape);
    AugParams {
        theta: t(&theta, &[n, 2, 3]),
        bright: t(&bright, &[n, 1, 1, 1]),
        contrast: t(&contrast, &[n, 1, 1, 1]),
    }
}

/// Applies drawn augmentations to `x` (float NCHW in `[0, 1]`, `p.len()` images) on `x`'s device.
pub fn apply(x: &Tensor, p: &AugParams) -> Tensor {
    let size = x.size();
    let dev = x.device();
    let to = |t: &Tensor| t.to_device_(dev, Kind::Float, true, false);
    let grid = Tensor::affine_grid_generator(&to(&p.theta), size.as_slice(), false);
    // interpolation 0 = bilinear, padding 2 = reflection.
    let y = Tensor::grid_sampler(x, &grid, 0, 2, false);
    let (b, c) = (to(&p.bright), to(&p.contrast));
    // fastai's lighting works in logit space: brightness adds logit(b), contrast scales.
    let eps = 1e-6;
    ((y.clamp(eps, 1.0 - eps).logit(None) + b.logit(None)) * c).sigmoid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn keeps_shape_and_range_and_is_seeded() {
        let x = Tensor::rand([4, 3, 16, 12], (Kind::Float, tch::Device::Cpu));
        let a = augment(&x, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        let b = augment(&x, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        let c = augment(&x, &mut rand_chacha::ChaCha8Rng::seed_from_u64(2));
        assert_eq!(a.size(), x.size());
        assert!(a.min().double_value(&[]) >= 0.0 && a.max().double_value(&[]) <= 1.0);
        assert_eq!(
            (&a - &b).abs().max().double_value(&[]),
            0.0,
            "same seed, same augmentation"
        );
        assert!((&a - &c).abs().max().double_value(&[]) > 1e-3);
        assert!((&a - &x).abs().max().double_value(&[]) > 1e-3);
    }

    #[test]
    fn identity_matrix_and_neutral_lighting_leave_images_alone() {
        // An rng that always draws the top of every range: no flip (≥0.5), no affine, no lighting.
        let x = Tensor::rand([2, 3, 8, 8], (Kind::Float, tch::Device::Cpu)) * 0.9 + 0.05;
        let mut never = rand::rngs::mock::StepRng::new(u64::MAX, 0);
        let y = augment(&x, &mut never);
        assert!((&y - &x).abs().max().double_value(&[]) < 1e-4);
    }
}

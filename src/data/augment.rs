//! Batch augmentation, fastai's `aug_transforms()`: horizontal flip (p 0.5), then with p 0.75 each
//! a perspective warp (0.2), a rotation of ±10°, a zoom of 1–1.1 and lighting (brightness and
//! contrast, 0.2). The affine parts are composed into one matrix per image, the warp is applied to
//! the sampling grid that matrix makes (fastai's `coord_tfm`), and one `grid_sample` does it all
//! (reflection padding, as fastai): one interpolation per image.

use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The magnitudes of `aug_transforms`, fastai's defaults (`--augment`; each is a flag).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AugConfig {
    /// Probability of each of warp, rotation and zoom (fastai's `p_affine`).
    pub p_affine: f64,
    /// Probability of each of brightness and contrast (`p_lighting`).
    pub p_lighting: f64,
    /// Degrees (`max_rotate`).
    pub max_rotate: f64,
    /// Largest zoom factor, ≥ 1 (`max_zoom`).
    pub max_zoom: f64,
    /// `max_lighting`: brightness ±, contrast ×/÷ (1 − it).
    pub max_lighting: f64,
    /// Perspective warp magnitude (`max_warp`); 0 turns the warp off.
    #[serde(default)]
    pub max_warp: f64,
}

impl Default for AugConfig {
    fn default() -> Self {
        AugConfig {
            p_affine: 0.75,
            p_lighting: 0.75,
            max_rotate: 10.0,
            max_zoom: 1.1,
            max_lighting: 0.2,
            max_warp: 0.2,
        }
    }
}

impl AugConfig {
    /// What `--augment` did before the warp existed: bundles that record no magnitudes.
    pub fn without_warp() -> Self {
        AugConfig {
            max_warp: 0.0,
            ..AugConfig::default()
        }
    }
}

/// Above this, a corner draw can fold the perspective over (its denominator reaches 0 near the
/// image's corners at 0.4); fastai does not check, its users keep to the default 0.2.
pub const MAX_WARP_LIMIT: f64 = 0.3;

#[derive(Debug, thiserror::Error)]
pub enum AugError {
    #[error("--{0} must be between 0 and 1 (got {1})")]
    Probability(&'static str, f64),
    #[error("--max-rotate must be between 0 and 180 degrees (got {0})")]
    Rotate(f64),
    #[error("--max-zoom must be at least 1 (got {0})")]
    Zoom(f64),
    #[error("--max-lighting must be at least 0 and below 1 (got {0})")]
    Lighting(f64),
    #[error("--max-warp must be between 0 and 0.3 (got {0}; fastai's default is 0.2, and larger warps fold the image over)")]
    Warp(f64),
}

impl AugConfig {
    pub fn validate(&self) -> Result<(), AugError> {
        for (name, p) in [("p-affine", self.p_affine), ("p-lighting", self.p_lighting)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(AugError::Probability(name, p));
            }
        }
        if !(0.0..=180.0).contains(&self.max_rotate) {
            return Err(AugError::Rotate(self.max_rotate));
        }
        if !(self.max_zoom >= 1.0 && self.max_zoom.is_finite()) {
            return Err(AugError::Zoom(self.max_zoom));
        }
        if !(0.0..1.0).contains(&self.max_lighting) {
            return Err(AugError::Lighting(self.max_lighting));
        }
        if !(0.0..=MAX_WARP_LIMIT).contains(&self.max_warp) {
            return Err(AugError::Warp(self.max_warp));
        }
        Ok(())
    }
}

/// fastai's `_WarpCoord`: the homography `[a, b, c, d, e, f, g, h]` that maps each target corner
/// back to the original corner (`find_coeffs(orig, targ)`), for the warp draws `x_t`, `y_t`. Points
/// are in grid order `(x, y)`; an 8×8 solve, in f64.
pub fn warp_coeffs(x_t: f64, y_t: f64) -> [f64; 8] {
    let orig = [(-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)];
    let targ = [
        (-1.0 - y_t, -1.0 - x_t),
        (-1.0 + y_t, 1.0 + x_t),
        (1.0 + y_t, -1.0 + x_t),
        (1.0 - y_t, 1.0 - x_t),
    ];
    let mut a = Vec::with_capacity(64);
    let mut b = Vec::with_capacity(8);
    for ((ox, oy), (tx, ty)) in orig.into_iter().zip(targ) {
        a.extend_from_slice(&[tx, ty, 1.0, 0.0, 0.0, 0.0, -ox * tx, -ox * ty]);
        b.push(ox);
        a.extend_from_slice(&[0.0, 0.0, 0.0, tx, ty, 1.0, -oy * tx, -oy * ty]);
        b.push(oy);
    }
    let a = Tensor::from_slice(&a).view([8, 8]);
    let b = Tensor::from_slice(&b).view([8, 1]);
    // For |x_t|, |y_t| ≤ MAX_WARP_LIMIT the corners stay apart and the system is regular; should a
    // solve fail anyway, the image is left unwarped.
    match Tensor::f_linalg_solve(&a, &b, true) {
        Ok(h) => {
            let v = Vec::<f64>::try_from(h.view([8])).unwrap_or_default();
            v.try_into().unwrap_or(IDENTITY_WARP)
        }
        Err(_) => IDENTITY_WARP,
    }
}

pub const IDENTITY_WARP: [f64; 8] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];

/// fastai's `apply_perspective` of coefficients `h` to a point.
pub fn perspective(h: &[f64; 8], x: f64, y: f64) -> (f64, f64) {
    let w = h[6] * x + h[7] * y + 1.0;
    (
        (h[0] * x + h[1] * y + h[2]) / w,
        (h[3] * x + h[4] * y + h[5]) / w,
    )
}

/// `x`: float NCHW in `[0, 1]` (before normalisation); returns a batch of the same shape in `[0, 1]`.
pub fn augment<R: Rng>(x: &Tensor, cfg: &AugConfig, rng: &mut R) -> Tensor {
    apply(x, &draw(x.size()[0] as usize, cfg, rng))
}

/// One batch's random draws, as small CPU tensors: what [`apply`] needs. The batch producer draws
/// them in the same order as the serial loop did, so a seed gives the same augmentation wherever it
/// is applied; on CUDA they travel pinned, with the images, so applying them never waits on the host.
#[derive(Debug)]
pub struct AugParams {
    /// `[n, 2, 3]` affine matrices (output → input sampling coordinates).
    theta: Tensor,
    /// `[n, 8]` perspective coefficients applied to the affine grid (see [`warp_coeffs`]); `None`
    /// when the warp is off.
    warp: Option<Tensor>,
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
            warp: self.warp.as_ref().map(first),
            bright: first(&self.bright),
            contrast: first(&self.contrast),
        }
    }

    /// In page-locked memory, for asynchronous copies to `device`.
    pub fn pinned(self, device: tch::Device) -> Self {
        AugParams {
            theta: self.theta.pin_memory(device),
            warp: self.warp.map(|w| w.pin_memory(device)),
            bright: self.bright.pin_memory(device),
            contrast: self.contrast.pin_memory(device),
        }
    }
}

/// Draws the augmentation of `n` images (per image: flip, rotation, zoom, warp, lighting).
pub fn draw<R: Rng>(n: usize, cfg: &AugConfig, rng: &mut R) -> AugParams {
    let mut theta = Vec::with_capacity(n * 6);
    let mut warp = Vec::with_capacity(n * 8);
    let mut bright = Vec::with_capacity(n);
    let mut contrast = Vec::with_capacity(n);
    for _ in 0..n {
        let flip = if rng.gen::<f64>() < 0.5 { -1.0 } else { 1.0 };
        let ang = if rng.gen::<f64>() < cfg.p_affine {
            rng.gen_range(-cfg.max_rotate..=cfg.max_rotate).to_radians()
        } else {
            0.0
        };
        let (zoom, cx, cy) = if rng.gen::<f64>() < cfg.p_affine {
            (
                rng.gen_range(1.0..=cfg.max_zoom),
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
        if cfg.max_warp > 0.0 {
            // fastai draws x_t and y_t each with its own p_affine mask.
            let mut axis = || {
                if rng.gen::<f64>() < cfg.p_affine {
                    rng.gen_range(-cfg.max_warp..=cfg.max_warp)
                } else {
                    0.0
                }
            };
            let (x_t, y_t) = (axis(), axis());
            warp.extend_from_slice(&if (x_t, y_t) == (0.0, 0.0) {
                IDENTITY_WARP
            } else {
                warp_coeffs(x_t, y_t)
            });
        }
        if rng.gen::<f64>() < cfg.p_lighting {
            bright.push(rng.gen_range(0.5 - cfg.max_lighting..=0.5 + cfg.max_lighting));
            // Contrast: log-uniform between 1-max and 1/(1-max), as fastai's Contrast.
            let lo = (1.0 - cfg.max_lighting).ln();
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
        warp: (cfg.max_warp > 0.0).then(|| t(&warp, &[n, 8])),
        bright: t(&bright, &[n, 1, 1, 1]),
        contrast: t(&contrast, &[n, 1, 1, 1]),
    }
}

/// Applies drawn augmentations to `x` (float NCHW in `[0, 1]`, `p.len()` images) on `x`'s device.
pub fn apply(x: &Tensor, p: &AugParams) -> Tensor {
    let size = x.size();
    let dev = x.device();
    let to = |t: &Tensor| t.to_device_(dev, Kind::Float, true, false);
    let mut grid = Tensor::affine_grid_generator(&to(&p.theta), size.as_slice(), false);
    if let Some(h) = &p.warp {
        // fastai's apply_perspective on every grid point: the warp acts before the affine part in
        // image terms (`S(q) = I(H(M q))`), within the same single resample.
        let h = to(h);
        let c = |i: i64| h.select(1, i).view([-1, 1, 1]);
        let (gx, gy) = (grid.select(3, 0), grid.select(3, 1));
        let w = c(6) * &gx + c(7) * &gy + 1.0;
        let x = (c(0) * &gx + c(1) * &gy + c(2)) / &w;
        let y = (c(3) * &gx + c(4) * &gy + c(5)) / &w;
        grid = Tensor::stack(&[x, y], 3);
    }
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
        let cfg = AugConfig::default();
        let a = augment(&x, &cfg, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        let b = augment(&x, &cfg, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        let c = augment(&x, &cfg, &mut rand_chacha::ChaCha8Rng::seed_from_u64(2));
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
        let y = augment(&x, &AugConfig::default(), &mut never);
        assert!((&y - &x).abs().max().double_value(&[]) < 1e-4);
    }

    /// fastai_recipe.md §9.3: for x_t = 0.1, y_t = −0.05 the coefficients and two mapped points, and
    /// the identity for no warp; H maps each target corner to its original corner.
    #[test]
    fn warp_coefficients_are_fastais() {
        let h = warp_coeffs(0.1, -0.05);
        let want = [
            1.0,
            -0.01012658,
            -0.10050633,
            -0.01012658,
            1.0,
            0.05101266,
            -0.10050633,
            0.05101266,
        ];
        for (g, w) in h.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{h:?}");
        }
        let (x, y) = perspective(&h, 0.0, 0.0);
        assert!((x + 0.10050633).abs() < 1e-5 && (y - 0.05101266).abs() < 1e-5);
        let (x, y) = perspective(&h, 0.5, -0.5);
        assert!((x - 0.43771828).abs() < 1e-5 && (y + 0.49126892).abs() < 1e-5);
        let (xt, yt) = (0.1, -0.05);
        for ((ox, oy), (tx, ty)) in [(-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)]
            .into_iter()
            .zip([
                (-1.0 - yt, -1.0 - xt),
                (-1.0 + yt, 1.0 + xt),
                (1.0 + yt, -1.0 + xt),
                (1.0 - yt, 1.0 - xt),
            ])
        {
            let (x, y) = perspective(&h, tx, ty);
            assert!((x - ox).abs() < 1e-9 && (y - oy).abs() < 1e-9);
        }
        let id = warp_coeffs(0.0, 0.0);
        for (g, w) in id.iter().zip(IDENTITY_WARP) {
            assert!((g - w).abs() < 1e-12);
        }
    }

    /// The warp is applied to the sampling grid: with only a warp drawn, the image is sampled at
    /// H(grid) — checked pixel by pixel against grid_sample on a grid warped by hand.
    #[test]
    fn warp_moves_the_sampling_grid_by_the_homography() {
        let x = Tensor::rand([1, 3, 9, 7], (Kind::Float, tch::Device::Cpu));
        let h = warp_coeffs(0.15, -0.1);
        let p = AugParams {
            theta: Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0]).view([1, 2, 3]),
            warp: Some(Tensor::from_slice(&h.map(|v| v as f32)).view([1, 8])),
            bright: Tensor::full([1, 1, 1, 1], 0.5, (Kind::Float, tch::Device::Cpu)),
            contrast: Tensor::ones([1, 1, 1, 1], (Kind::Float, tch::Device::Cpu)),
        };
        let got = apply(&x, &p);
        let base = Tensor::affine_grid_generator(&p.theta, [1, 3, 9, 7], false);
        let pts = Vec::<f32>::try_from(base.flatten(0, -1)).unwrap();
        let warped: Vec<f32> = pts
            .chunks(2)
            .flat_map(|q| {
                let (a, b) = perspective(&h, q[0] as f64, q[1] as f64);
                [a as f32, b as f32]
            })
            .collect();
        let grid = Tensor::from_slice(&warped).view([1, 9, 7, 2]);
        let eps = 1e-6;
        let want = Tensor::grid_sampler(&x, &grid, 0, 2, false).clamp(eps, 1.0 - eps);
        assert!((&got - &want).abs().max().double_value(&[]) < 1e-5);
        assert!(
            (&got - &x).abs().max().double_value(&[]) > 1e-3,
            "the warp moved pixels"
        );
    }

    #[test]
    fn magnitudes_are_checked() {
        assert!(AugConfig::default().validate().is_ok());
        let bad = |c: AugConfig| c.validate().unwrap_err().to_string();
        let d = AugConfig::default();
        assert!(bad(AugConfig { max_warp: 0.5, ..d }).contains("--max-warp"));
        assert!(bad(AugConfig { p_affine: 1.5, ..d }).contains("--p-affine"));
        assert!(bad(AugConfig { max_zoom: 0.9, ..d }).contains("--max-zoom"));
        assert!(bad(AugConfig {
            max_lighting: 1.0,
            ..d
        })
        .contains("--max-lighting"));
        assert!(bad(AugConfig {
            max_rotate: -1.0,
            ..d
        })
        .contains("--max-rotate"));
    }
}

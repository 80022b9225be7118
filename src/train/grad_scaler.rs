//! Dynamic loss scaling for fp16 training, PyTorch's `torch.amp.GradScaler` with its defaults.
//!
//! fp16 gradients below ~6e-8 flush to zero; multiplying the loss by a large scale before the
//! backward pass keeps them representable. The gradients are divided by the same scale before the
//! optimizer sees them; when any of them overflowed (inf/NaN), the step is skipped and the scale
//! halved, and after `growth_interval` clean steps in a row it doubles. bf16 and fp32 have fp32's
//! range and need none of this: the scaler is then disabled and every call is a no-op.

use super::optimizer::Adam;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub struct GradScaler {
    enabled: bool,
    scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u32,
    /// Clean steps since the scale last changed.
    growth_tracker: u32,
}

impl GradScaler {
    /// PyTorch's defaults: initial scale 2^16, ×2 after 2000 clean steps, ×0.5 on overflow.
    pub fn new(enabled: bool) -> Self {
        GradScaler {
            enabled,
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            growth_tracker: 0,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The scale and clean-step count, for a checkpoint.
    pub fn state(&self) -> (f64, u32) {
        (self.scale, self.growth_tracker)
    }

    pub fn restore(&mut self, scale: f64, growth_tracker: u32) {
        if scale.is_finite() && scale > 0.0 {
            self.scale = scale;
            self.growth_tracker = growth_tracker;
        }
    }

    /// The loss to call `backward` on.
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        if self.enabled {
            loss * self.scale
        } else {
            loss.shallow_clone()
        }
    }

    /// Divides `grads` by the scale in place; returns whether all of them are finite (one read for
    /// all, so one device synchronisation per step, as PyTorch's `GradScaler.step`).
    pub fn unscale(&self, grads: &[Tensor]) -> bool {
        if !self.enabled || grads.is_empty() {
            return true;
        }
        let inv = 1.0 / self.scale;
        let finite: Vec<Tensor> = tch::no_grad(|| {
            grads
                .iter()
                .map(|g| {
                    let _ = g.shallow_clone().g_mul_scalar_(inv);
                    g.isfinite().all()
                })
                .collect()
        });
        Tensor::stack(&finite, 0)
            .all()
            .to_kind(Kind::Int64)
            .int64_value(&[])
            == 1
    }

    /// Unscales the gradients, then takes `opt`'s step unless one overflowed (the schedule goes on,
    /// as in PyTorch), and updates the scale.
    pub fn step(&mut self, opt: &mut Adam, lrs: &[f64], mom: f64) {
        let finite = self.unscale(&opt.grads());
        if finite {
            opt.step(lrs, mom);
        }
        self.update(finite);
    }

    /// After a step: back off on overflow, grow after `growth_interval` clean steps.
    pub fn update(&mut self, all_finite: bool) {
        if !self.enabled {
            return;
        }
        if all_finite {
            self.growth_tracker += 1;
            if self.growth_tracker >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.growth_tracker = 0;
            }
        } else {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_changes_nothing() {
        let mut s = GradScaler::new(false);
        let loss = Tensor::from(2.5f32);
        assert!(s.scale_loss(&loss).equal(&loss));
        let g = Tensor::from_slice(&[f32::INFINITY, 1.0]);
        assert!(s.unscale(&[g.shallow_clone()]));
        assert_eq!(g.double_value(&[1]), 1.0);
        s.update(false);
        assert_eq!(s.scale(), 65536.0);
    }

    #[test]
    fn unscales_detects_overflow_backs_off_and_grows() {
        let mut s = GradScaler::new(true);
        let loss = Tensor::from(0.5f32);
        assert_eq!(s.scale_loss(&loss).double_value(&[]), 32768.0);
        let g = Tensor::from_slice(&[65536.0f32, -131072.0]);
        assert!(s.unscale(&[g.shallow_clone()]));
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), vec![1.0, -2.0]);
        s.update(true);
        assert_eq!(s.state(), (65536.0, 1));
        // One non-finite value anywhere skips the step and halves the scale.
        let bad = Tensor::from_slice(&[1.0f32, f32::NAN]);
        assert!(!s.unscale(&[g.shallow_clone(), bad]));
        s.update(false);
        assert_eq!(s.state(), (32768.0, 0));
        for _ in 0..2000 {
            s.update(true);
        }
        assert_eq!(s.state(), (65536.0, 0));
    }

    /// A gradient fp16 would flush to zero survives the scaled backward and comes out as fp32's.
    #[test]
    fn scaled_fp16_backward_keeps_small_gradients() {
        let w = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let tiny = 1e-8;
        let run = |scaler: &GradScaler| {
            let mut g = w.grad();
            if g.defined() {
                let _ = g.zero_();
            }
            // × 0.5 in fp32 keeps the scaled gradient reaching fp16 (2^15) below its maximum.
            let loss = (w.to_kind(Kind::Half) * tiny)
                .to_kind(Kind::Float)
                .sum(Kind::Float)
                * 0.5;
            scaler.scale_loss(&loss).backward();
            let g = w.grad();
            assert!(scaler.unscale(&[g.shallow_clone()]));
            g.double_value(&[0])
        };
        assert_eq!(run(&GradScaler::new(false)), 0.0, "unscaled fp16 flushes");
        let scaled = run(&GradScaler::new(true));
        assert!((scaled - 0.5 * tiny).abs() < 1e-3 * tiny, "{scaled}");
    }
}

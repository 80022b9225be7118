//! fastai's one-cycle schedules and discriminative learning rates (callback/schedule.py).

use serde::{Deserialize, Serialize};

/// `sched_cos(start, end, pos) = start + (1 + cos(π(1 − pos)))·(end − start)/2`.
pub fn sched_cos(start: f64, end: f64, pos: f64) -> f64 {
    start + (1.0 + (std::f64::consts::PI * (1.0 - pos)).cos()) * (end - start) / 2.0
}

/// `combined_cos(pct, a, b, c)`: cosine a→b over the first `pct` of training, then b→c, the position
/// renormalised inside each phase (fastai `combine_scheds`).
pub fn combined_cos(pct: f64, a: f64, b: f64, c: f64, pos: f64) -> f64 {
    if pct <= 0.0 {
        return sched_cos(b, c, pos);
    }
    if pos < pct || pct >= 1.0 {
        sched_cos(a, b, (pos / pct).min(1.0))
    } else {
        sched_cos(b, c, (pos - pct) / (1.0 - pct))
    }
}

/// `fit_one_cycle`'s hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OneCycle {
    pub div: f64,
    pub div_final: f64,
    pub pct_start: f64,
    pub moms: (f64, f64, f64),
}

impl Default for OneCycle {
    fn default() -> Self {
        OneCycle {
            div: 25.0,
            div_final: 1e5,
            pct_start: 0.25,
            moms: (0.95, 0.85, 0.95),
        }
    }
}

impl OneCycle {
    /// Learning rate at `pos` ∈ [0,1) for a group whose peak is `lr_max`.
    pub fn lr(&self, lr_max: f64, pos: f64) -> f64 {
        combined_cos(
            self.pct_start,
            lr_max / self.div,
            lr_max,
            lr_max / self.div_final,
            pos,
        )
    }
    /// Adam β1 at `pos`.
    pub fn mom(&self, pos: f64) -> f64 {
        combined_cos(self.pct_start, self.moms.0, self.moms.1, self.moms.2, pos)
    }
}

/// A learning rate for every parameter group: fastai's `slice(lr)` or `slice(a, b)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum LrSpec {
    /// `slice(lr)`: `[lr/10, …, lr/10, lr]`.
    Max(f64),
    /// `slice(a, b)`: geometric spacing from a to b (`even_mults`).
    Range(f64, f64),
}

impl LrSpec {
    pub fn per_group(&self, n: usize) -> Vec<f64> {
        match *self {
            LrSpec::Max(lr) => (0..n)
                .map(|i| if i + 1 == n { lr } else { lr / 10.0 })
                .collect(),
            LrSpec::Range(a, b) => even_mults(a, b, n),
        }
    }
}

/// fastcore `even_mults(start, stop, n)`: `start · (stop/start)^(i/(n−1))`.
pub fn even_mults(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n <= 1 {
        return vec![stop];
    }
    let step = (stop / start).powf(1.0 / (n - 1) as f64);
    (0..n).map(|i| start * step.powi(i as i32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_lrs() {
        assert_eq!(LrSpec::Max(2e-3).per_group(3), vec![2e-4, 2e-4, 2e-3]);
        let g = LrSpec::Range(1e-5, 1e-3).per_group(3);
        assert!(
            (g[0] - 1e-5).abs() < 1e-18
                && (g[1] - 1e-4).abs() < 1e-16
                && (g[2] - 1e-3).abs() < 1e-15
        );
        let g = LrSpec::Range(1e-6, 1e-2).per_group(5);
        for w in g.windows(2) {
            assert!((w[1] / w[0] - 10.0).abs() < 1e-9);
        }
    }

    #[test]
    fn one_cycle_endpoints() {
        let s = OneCycle {
            pct_start: 0.3,
            div: 5.0,
            ..Default::default()
        };
        assert!((s.lr(1e-3, 0.0) - 2e-4).abs() < 1e-15);
        assert!((s.lr(1e-3, 0.3) - 1e-3).abs() < 1e-15);
        assert!((s.lr(1e-3, 1.0) - 1e-8).abs() < 1e-18);
        assert!((s.mom(0.0) - 0.95).abs() < 1e-12 && (s.mom(0.3) - 0.85).abs() < 1e-12);
    }
}

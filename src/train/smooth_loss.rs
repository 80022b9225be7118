//! The loss the progress bar and the epoch table show.

/// Exponentially smoothed, debiased loss (fastai `AvgSmoothLoss(beta=0.98)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SmoothLoss {
    pub val: f64,
    pub count: i32,
}

impl SmoothLoss {
    pub const BETA: f64 = 0.98;
    pub fn add(&mut self, loss: f64) -> f64 {
        self.count += 1;
        self.val = Self::BETA * self.val + (1.0 - Self::BETA) * loss;
        self.value()
    }
    pub fn value(&self) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        self.val / (1.0 - Self::BETA.powi(self.count))
    }
}

//! fastai's learning-rate finder (`lr_find`, callback/schedule.py `LRFinder`) and its `valley`
//! suggestion.

use super::learner::{Learner, SmoothLoss};
use super::report::Report;
use tch::Tensor;

#[derive(Debug, Clone, serde::Serialize)]
pub struct LrFind {
    pub lrs: Vec<f64>,
    /// Smoothed (debiased EMA) training loss after each batch.
    pub losses: Vec<f64>,
    /// fastai `valley`, or `None` when the sweep was too short to judge.
    pub valley: Option<f64>,
}

/// fastai `valley(lrs, losses)`: the longest decreasing run of the loss (as a longest decreasing
/// subsequence), and the point 1/3 + 1/6 of the way into it.
pub fn valley(lrs: &[f64], losses: &[f64]) -> Option<f64> {
    let n = losses.len();
    if n < 2 {
        return None;
    }
    let (mut max_start, mut max_end) = (0usize, 0usize);
    let mut lds = vec![1usize; n];
    for i in 1..n {
        for j in 0..i {
            if losses[i] < losses[j] && lds[i] < lds[j] + 1 {
                lds[i] = lds[j] + 1;
            }
            if lds[max_end] < lds[i] {
                max_end = i;
                max_start = max_end - lds[max_end];
            }
        }
    }
    let sections = (max_end - max_start) as f64 / 3.0;
    let idx = max_start + sections as usize + (sections / 2.0) as usize;
    lrs.get(idx).copied()
}

impl Learner {
    /// Exponential sweep from `start` to `end` over at most `num_it` batches (β1 fixed at Adam's 0.9),
    /// stopping when the smoothed loss exceeds 4× its best; the weights, BatchNorm statistics and
    /// optimizer state are restored afterwards.
    pub fn lr_find(
        &mut self,
        start: f64,
        end: f64,
        num_it: usize,
        report: &mut dyn Report,
    ) -> LrFind {
        let saved: Vec<(String, Tensor)> = self
            .net
            .vs
            .variables()
            .into_iter()
            .map(|(k, v)| (k, v.copy()))
            .collect();
        let groups = self.net.arch.n_groups();
        let mut smooth = SmoothLoss::default();
        let mut best = f64::INFINITY;
        let (mut lrs, mut losses) = (Vec::new(), Vec::new());
        let mut it = 0usize;
        report.begin_epoch(0, num_it);
        'outer: while it < num_it {
            let order = self.epoch_order();
            if order.is_empty() {
                break;
            }
            for idx in &order {
                let (xb, yb) = self.load_batch(idx);
                let lr = start * (end / start).powf(it as f64 / num_it as f64);
                let loss = self.train_batch(&xb, &yb, &vec![lr; groups], 0.9);
                let s = smooth.add(loss);
                lrs.push(lr);
                losses.push(s);
                report.batch(it, s);
                it += 1;
                if s < best {
                    best = s;
                }
                if s > 4.0 * best || !s.is_finite() || it >= num_it {
                    break 'outer;
                }
            }
        }
        tch::no_grad(|| {
            let vars = self.net.vs.variables();
            for (k, v) in &saved {
                vars[k].shallow_clone().copy_(v);
            }
        });
        self.opt.clear_state();
        // fastai drops the first tenth and the last five points before suggesting.
        let skip = num_it / 10;
        let valley = if lrs.len() > skip + 5 {
            let end = lrs.len() - 5;
            valley(&lrs[skip..end], &losses[skip..end])
        } else {
            None
        };
        LrFind {
            lrs,
            losses,
            valley,
        }
    }
}

/// A log-x line plot of the sweep as SVG (plotting crates need font files for their text layout;
/// this chart needs only a polyline and a few labels, so it is written directly).
pub fn plot_svg(r: &LrFind) -> String {
    let (w, h, m) = (640.0, 400.0, 50.0);
    let pts: Vec<(f64, f64)> = r
        .lrs
        .iter()
        .zip(&r.losses)
        .filter(|(_, l)| l.is_finite())
        .map(|(a, b)| (a.log10(), *b))
        .collect();
    let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n");
    if pts.len() >= 2 {
        let (x0, x1) = (pts[0].0, pts[pts.len() - 1].0.max(pts[0].0 + 1e-9));
        let y0 = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let y1 = pts
            .iter()
            .map(|p| p.1)
            .fold(f64::NEG_INFINITY, f64::max)
            .max(y0 + 1e-9);
        let px = |x: f64| m + (x - x0) / (x1 - x0) * (w - 2.0 * m);
        let py = |y: f64| h - m - (y - y0) / (y1 - y0) * (h - 2.0 * m);
        let line: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        s.push_str(&format!(
            "<polyline fill='none' stroke='steelblue' stroke-width='2' points='{}'/>\n",
            line.join(" ")
        ));
        s.push_str(&format!(
            "<line x1='{m}' y1='{}' x2='{}' y2='{}' stroke='black'/>\n",
            h - m,
            w - m,
            h - m
        ));
        s.push_str(&format!(
            "<line x1='{m}' y1='{m}' x2='{m}' y2='{}' stroke='black'/>\n",
            h - m
        ));
        for e in (x0.ceil() as i32)..=(x1.floor() as i32) {
            s.push_str(&format!(
                "<text x='{:.1}' y='{}' text-anchor='middle'>1e{e}</text>\n",
                px(e as f64),
                h - m + 16.0
            ));
        }
        s.push_str(&format!(
            "<text x='4' y='{}'>{y1:.2}</text><text x='4' y='{}'>{y0:.2}</text>\n",
            m,
            h - m
        ));
        if let Some(v) = r.valley {
            let x = px(v.log10());
            s.push_str(&format!("<line x1='{x:.1}' y1='{m}' x2='{x:.1}' y2='{}' stroke='red' stroke-dasharray='4'/>\n", h - m));
            s.push_str(&format!(
                "<text x='{x:.1}' y='{}' fill='red'>valley {v:.2e}</text>\n",
                m - 8.0
            ));
        }
    }
    s.push_str(&format!(
        "<text x='{}' y='{}' text-anchor='middle'>learning rate (log)</text>\n</svg>\n",
        w / 2.0,
        h - 12.0
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valley_matches_fastai() {
        // fastai 2.8.12 `valley` on the same input returns lrs[3] (checked in its venv):
        // losses fall over indices 2..=8 then rise.
        let lrs: Vec<f64> = (0..12).map(|i| 10f64.powi(i - 7)).collect();
        let losses = [3.0, 3.1, 2.9, 2.5, 2.0, 1.5, 1.2, 1.0, 0.9, 1.5, 3.0, 9.0];
        // lds ends at index 8 with length 8 (3.0,2.9,2.5,2.0,1.5,1.2,1.0,0.9): max_start = 0,
        // sections = 8/3 → idx = 0 + 2 + 1 = 3.
        assert_eq!(valley(&lrs, &losses), Some(lrs[3]));
        assert_eq!(valley(&lrs[..1], &losses[..1]), None);
    }
}

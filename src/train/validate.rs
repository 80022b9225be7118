//! Validation after each epoch: fastai's `valid_loss`, `error_rate` (or `accuracy_multi`) and
//! the multi-label F1, each rank over its share and summed by the run's strategy.

use super::learner::Learner;
use super::metrics::samples_f1_sum;
pub use super::metrics::ValidMetrics;
use super::pipeline::overlapped;
use crate::bundle::DEFAULT_THRESH;
use tch::nn::ModuleT;
use tch::{Kind, Tensor};

impl Learner {
    /// Size-weighted mean validation loss and error rate, in eval mode.
    pub fn validate(&self) -> (f64, f64) {
        let v = self.validate_metrics();
        (v.loss, v.error_rate)
    }

    /// The validation metrics of the epoch table, in eval mode. Batches are prepared on a
    /// producer thread; the per-batch results stay on the device until the end. Multi-label:
    /// `error_rate` is 1 − fastai's `accuracy_multi` (sigmoid > 0.5 agreeing with the target,
    /// over every label of every image) and `f1` its samples-averaged F1 (`F1ScoreMulti`).
    pub fn validate_metrics(&self) -> ValidMetrics {
        let spec = self.input_spec();
        let (rank, world) = (self.strategy.rank(), self.strategy.world());
        let mine = self.dls.valid.len().saturating_sub(rank).div_ceil(world);
        let n_batches = mine.div_ceil(self.dls.cfg.bs.max(1));
        let mut batches = self.dls.valid_shard(rank, world);
        let mut results: Vec<(Tensor, Tensor, Option<Tensor>, i64, i64)> = Vec::new();
        // Single-label: the confusion counts (actual · n + predicted), summed on the device.
        let n_classes = self.dls.classes.len() as i64;
        let mut confusion: Option<Tensor> = None;
        tch::no_grad(|| {
            overlapped(
                n_batches,
                |_| batches.next().map(|(xb, yb)| spec.prepare(xb, yb, None)),
                |_, b| {
                    let Some(b) = b else { return false };
                    let (x, y) = spec.finish(b);
                    let logits = self.net.forward_t(&x, false);
                    let bs = y.size()[0];
                    let (correct, f1_sum) = if y.dim() == 2 {
                        let pred = logits.sigmoid().gt(DEFAULT_THRESH);
                        let truth = y.gt(0.5);
                        let agree = pred.eq_tensor(&truth).sum(Kind::Int64);
                        (agree, Some(samples_f1_sum(&pred, &truth)))
                    } else {
                        let pred = logits.argmax(-1, false);
                        let cells = (&y * n_classes + &pred)
                            .bincount::<Tensor>(None, n_classes * n_classes);
                        confusion = Some(match confusion.take() {
                            Some(c) => c + cells,
                            None => cells,
                        });
                        (pred.eq_tensor(&y).sum(Kind::Int64), None)
                    };
                    let decisions = if y.dim() == 2 { y.numel() as i64 } else { bs };
                    results.push((self.loss(&logits, &y), correct, f1_sum, bs, decisions));
                    true
                },
            );
        });
        let mut loss_sum = 0.0;
        let (mut correct, mut decisions, mut n) = (0i64, 0i64, 0i64);
        let mut f1: Option<f64> = None;
        for (loss, c, f, bs, d) in results {
            loss_sum += loss.double_value(&[]) * bs as f64;
            correct += c.int64_value(&[]);
            if let Some(f) = f {
                *f1.get_or_insert(0.0) += f.double_value(&[]);
            }
            n += bs;
            decisions += d;
        }
        let mut matrix = None;
        {
            // Every rank validated its share: the sums are the whole set's (counts stay exact in
            // f64; alone, the sums are the local ones).
            let multi = self.dls.is_multi_label();
            let mut local = vec![
                loss_sum,
                correct as f64,
                decisions as f64,
                n as f64,
                f1.unwrap_or(0.0),
            ];
            let cells = (n_classes * n_classes) as usize;
            if !multi {
                let c: Vec<i64> = confusion
                    .as_ref()
                    .and_then(|c| Vec::try_from(c.to_device(tch::Device::Cpu)).ok())
                    .unwrap_or_else(|| vec![0; cells]);
                local.extend(c.iter().map(|&v| v as f64));
            }
            match self.strategy.sum(&local) {
                Ok(s) if s.len() == local.len() => {
                    loss_sum = s[0];
                    (correct, decisions, n) = (s[1] as i64, s[2] as i64, s[3] as i64);
                    f1 = multi.then_some(s[4]);
                    matrix = (!multi).then(|| {
                        s[5..]
                            .chunks(n_classes.max(1) as usize)
                            .map(|r| r.iter().map(|&v| v as usize).collect())
                            .collect()
                    });
                }
                Ok(_) => {}
                Err(e) => self.fail(e),
            }
        }
        if n == 0 {
            return ValidMetrics {
                loss: f64::NAN,
                error_rate: f64::NAN,
                f1: None,
                confusion: None,
            };
        }
        ValidMetrics {
            loss: loss_sum / n as f64,
            error_rate: 1.0 - correct as f64 / decisions as f64,
            f1: f1.map(|s| s / n as f64),
            confusion: matrix,
        }
    }
}

//! fastai's tracker callbacks (fastai/callback/tracker.py) on one monitor: `SaveModelCallback`
//! (`--save-best`: the best epoch's weights are the ones a fit ends with) and
//! `EarlyStoppingCallback` (`--early-stop PATIENCE`: a fit stops after that many epochs without
//! improvement). As in fastai: both monitors are "lower is better", an improvement is strict
//! (`value < best`, `min_delta` 0), NaN never improves, and each fit of `fine_tune` starts afresh
//! (`reset_on_fit`), so early stopping in the frozen phase does not skip the unfrozen one.

use super::report::Report;
use super::Learner;
use crate::bundle::{EpochRow, TrackerState, Tracking};

/// What one completed epoch did to the tracker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// A new best (`Better model found at epoch ...`).
    Better,
    /// No improvement, the fit goes on.
    Same,
    /// No improvement for `patience` epochs: stop this fit.
    Stop,
}

/// Updates `state` with a completed epoch's row.
pub fn update(t: &Tracking, state: &mut TrackerState, row: &EpochRow) -> Verdict {
    let v = t.monitor.of(row);
    let better = match state.best {
        None => !v.is_nan(),
        Some((best, _)) => v < best,
    };
    if better {
        state.best = Some((v, row.epoch));
        state.wait = 0;
        return Verdict::Better;
    }
    state.wait += 1;
    match t.patience {
        Some(p) if state.wait >= p => {
            state.stopped = true;
            Verdict::Stop
        }
        _ => Verdict::Same,
    }
}

impl Learner {
    /// fastai's trackers after a completed epoch (the last row): a new best is remembered (its
    /// weights under `--save-best`), and `--early-stop` ends the fit after `patience` epochs
    /// without one.
    pub(super) fn track(&mut self, report: &mut dyn Report) {
        let (Some(t), Some(row)) = (self.recipe.tracking, self.rows.last()) else {
            return;
        };
        let epoch = row.epoch;
        match update(&t, &mut self.tracker, row) {
            Verdict::Better if t.save_best => {
                let value = t.monitor.of(row);
                self.best_weights = Some(
                    self.net
                        .vs
                        .variables()
                        .into_iter()
                        .map(|(k, v)| (k, super::checkpoint::cpu_copy(&v.detach())))
                        .collect(),
                );
                report.message(&format!(
                    "Better model found at epoch {epoch} with {} value: {value}.",
                    t.monitor.name()
                ));
            }
            Verdict::Stop => report.notice(&format!(
                "No improvement since epoch {}: early stopping",
                epoch - self.tracker.wait
            )),
            _ => {}
        }
    }

    /// `--save-best` at the end of a fit: the best epoch's weights back into the network (fastai's
    /// `SaveModelCallback.after_fit`), and its row marked.
    pub(super) fn keep_best(&mut self, phase: &str, report: &mut dyn Report) {
        let Some(t) = self.recipe.tracking.filter(|t| t.save_best) else {
            return;
        };
        let (Some(best), Some((value, epoch))) = (self.best_weights.take(), self.tracker.best)
        else {
            return;
        };
        let vars = self.net.vs.variables();
        tch::no_grad(|| {
            for (k, w) in &best {
                if let Some(v) = vars.get(k) {
                    v.shallow_clone().copy_(&w.to_device(v.device()));
                }
            }
        });
        for r in self.rows.iter_mut().filter(|r| r.phase == phase) {
            r.best = r.epoch == epoch;
        }
        report.notice(&format!(
            "{phase}: kept the weights of epoch {epoch} ({} {value:.6})",
            t.monitor.name()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Monitor;

    fn row(epoch: usize, valid_loss: f64, error_rate: f64) -> EpochRow {
        EpochRow {
            phase: "unfrozen".into(),
            epoch,
            train_loss: 1.0,
            valid_loss,
            error_rate,
            accuracy: 1.0 - error_rate,
            f1: None,
            seconds: 0.0,
            best: false,
        }
    }

    /// fastai's rules: strict improvement, `wait` counts epochs since the last one, stop when
    /// `wait >= patience`; a tie is no improvement; NaN never is.
    #[test]
    fn trackers_follow_fastais_rules() {
        let t = Tracking {
            monitor: Monitor::ValidLoss,
            save_best: true,
            patience: Some(2),
        };
        let mut s = TrackerState::default();
        let seq = [
            (f64::NAN, Verdict::Same),
            (0.9, Verdict::Better),
            (0.9, Verdict::Same),
            (0.5, Verdict::Better),
            (0.7, Verdict::Same),
            (0.5, Verdict::Stop),
        ];
        for (e, (v, want)) in seq.iter().enumerate() {
            assert_eq!(update(&t, &mut s, &row(e, *v, 0.1)), *want, "epoch {e}");
        }
        assert_eq!(s.best, Some((0.5, 3)));
        assert!(s.stopped && s.wait == 2);

        // error_rate is watched when asked; without patience nothing stops.
        let t = Tracking {
            monitor: Monitor::ErrorRate,
            save_best: true,
            patience: None,
        };
        let mut s = TrackerState::default();
        for (e, err) in [0.3, 0.2, 0.25, 0.4, 0.5].iter().enumerate() {
            assert_ne!(
                update(&t, &mut s, &row(e, 1.0 - e as f64, *err)),
                Verdict::Stop
            );
        }
        assert_eq!(s.best, Some((0.2, 1)));
    }
}

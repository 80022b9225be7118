//! Checkpoints of a [`Learner`] (the format is the bundle's, `crate::bundle::Checkpoint`): taking a
//! snapshot at the end of an epoch, checking and applying one to resume, deep CPU copies of tensors,
//! and the per-epoch seed that makes dropout resumable.

use super::smooth_loss::SmoothLoss;
use super::Learner;
use crate::bundle::{Checkpoint, RngState, TrainState};
use tch::{Device, Tensor};

impl Learner {
    /// The state right now, as a checkpoint that `phase` has `epochs_done` epochs done.
    /// Tensors are contiguous CPU copies whatever the network's memory format.
    pub(super) fn snapshot(
        &self,
        phase: &str,
        epochs_done: usize,
        smooth: SmoothLoss,
    ) -> Checkpoint {
        let (mut tensors, steps) = self.opt.state();
        for (k, v) in self.net.vs.variables() {
            tensors.push((format!("model.{k}"), cpu_copy(&v.detach())));
        }
        for (k, v) in self.best_weights.iter().flatten() {
            tensors.push((format!("best.{k}"), v.copy()));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Checkpoint {
            state: TrainState {
                phase: phase.to_string(),
                epochs_done,
                rows: self.rows.clone(),
                smooth_val: smooth.val,
                smooth_count: smooth.count,
                rng: RngState::of(&self.rng),
                steps,
                loss_scale: self.scaler.is_enabled().then(|| self.scaler.state()),
                tracker: self.recipe.tracking.map(|_| self.tracker),
            },
            tensors,
        }
    }

    /// Continue from `ck` (made by a run with the same data, seed and settings): weights, optimizer
    /// state, RNG and epoch rows are restored when the fit it was in starts again.
    pub fn resume_from(&mut self, ck: Checkpoint) -> Result<(), String> {
        let vars = self.net.vs.variables();
        let shape_of = |name: &str| {
            ck.tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.size())
        };
        for (k, v) in &vars {
            match shape_of(&format!("model.{k}")) {
                Some(s) if s == v.size() => {}
                Some(s) => {
                    return Err(format!(
                        "the checkpoint's {k} has shape {s:?}, the network's {:?}",
                        v.size()
                    ))
                }
                None => return Err(format!("the checkpoint lacks the network variable {k}")),
            }
        }
        // Every parameter with a step count needs both moments, shaped like the parameter.
        for name in ck.state.steps.keys() {
            let want = vars.get(name).map(|v| v.size());
            for m in ["grad_avg", "sqr_avg"] {
                if shape_of(&format!("{m}.{name}")) != want || want.is_none() {
                    return Err(format!(
                        "the checkpoint's optimizer state for {name} is missing or misshapen"
                    ));
                }
            }
        }
        if ck.state.rng.restore().is_none() {
            return Err("the checkpoint's RNG state is not valid".into());
        }
        self.pending = Some(ck);
        Ok(())
    }

    /// Applies a pending checkpoint of `phase`: returns the epoch to start from and the smoothed
    /// loss to continue, (0, fresh) when there is none.
    pub(super) fn apply_pending(&mut self, phase: &str) -> (usize, SmoothLoss) {
        if self.pending.as_ref().is_none_or(|c| c.state.phase != phase) {
            return (0, SmoothLoss::default());
        }
        let Some(ck) = self.pending.take() else {
            return (0, SmoothLoss::default());
        };
        let map: std::collections::HashMap<String, Tensor> = ck.tensors.into_iter().collect();
        let vars = self.net.vs.variables();
        tch::no_grad(|| {
            for (k, mut v) in vars {
                if let Some(t) = map.get(&format!("model.{k}")) {
                    v.copy_(&t.to_device(v.device()));
                }
            }
        });
        // resume_from checked every shape, so this cannot fail.
        let _ = self.opt.load_state(&map, &ck.state.steps);
        if let Some(r) = ck.state.rng.restore() {
            self.rng = r;
        }
        if let Some((scale, tracker)) = ck.state.loss_scale {
            self.scaler.restore(scale, tracker);
        }
        self.rows = ck.state.rows;
        if let Some(t) = ck.state.tracker {
            self.tracker = t;
        }
        let best: Vec<(String, Tensor)> = map
            .iter()
            .filter_map(|(k, t)| Some((k.strip_prefix("best.")?.to_string(), t.shallow_clone())))
            .collect();
        self.best_weights = (!best.is_empty()).then_some(best);
        (
            ck.state.epochs_done,
            SmoothLoss {
                val: ck.state.smooth_val,
                count: ck.state.smooth_count,
            },
        )
    }
}

/// Libtorch's generator seed for one epoch, so dropout masks depend only on (seed, phase, epoch)
/// and a resumed run draws the same ones.
pub fn epoch_seed(seed: u64, phase: &str, epoch: usize) -> i64 {
    let mut h: u64 = seed ^ 0x9E37_79B9_7F4A_7C15;
    for b in phase.bytes().chain((epoch as u64).to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
    }
    (h >> 1) as i64
}

/// A deep, contiguous (NCHW for 4-D) copy on the CPU: what checkpoints and files hold.
pub(crate) fn cpu_copy(t: &Tensor) -> Tensor {
    let out = Tensor::empty(t.size(), (t.kind(), Device::Cpu));
    tch::no_grad(|| out.shallow_clone().copy_(t));
    out
}

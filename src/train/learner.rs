//! The `Learner`: a network, its data and fastai's optimizer, trained with `fit_one_cycle` and
//! `fine_tune` exactly as fastai schedules them.

use super::checkpoint::{epoch_seed, Checkpoint, RngState, TrainState};
use super::optimizer::{Adam, AdamConfig};
use super::report::{EpochRow, Report};
use super::schedule::{LrSpec, OneCycle};
use crate::data::tensor::{normalize, normalize_float};
use crate::data::DataLoaders;
use crate::model::Network;
use rand::SeedableRng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::nn::ModuleT;
use tch::{Kind, Reduction, Tensor};

/// `fine_tune`'s arguments, with fastai's defaults.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FineTune {
    pub epochs: usize,
    pub base_lr: f64,
    pub freeze_epochs: usize,
    pub lr_mult: f64,
    pub pct_start: f64,
    pub div: f64,
}

impl Default for FineTune {
    fn default() -> Self {
        FineTune {
            epochs: 3,
            base_lr: 2e-3,
            freeze_epochs: 1,
            lr_mult: 100.0,
            pct_start: 0.3,
            div: 5.0,
        }
    }
}

/// The hyper-parameters used for one training batch (kept so tests and users can check schedules).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchHypers {
    pub lrs: Vec<f64>,
    pub mom: f64,
}

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

pub struct Learner {
    pub net: Network,
    pub dls: DataLoaders,
    pub opt: Adam,
    pub label_smoothing: f64,
    /// Batch augmentation of training batches (`--augment`, fastai's aug_transforms).
    pub augment: bool,
    /// Every epoch row so far, over all fits.
    pub rows: Vec<EpochRow>,
    /// Hyper-parameters of every training batch, with the phase name of its fit.
    pub hypers: Vec<(String, BatchHypers)>,
    /// Set (e.g. by Ctrl-C) to stop after the current batch.
    pub stop: Arc<AtomicBool>,
    pub interrupted: bool,
    /// The state at the end of the last completed epoch (what `train --resume` continues from).
    pub last_checkpoint: Option<Checkpoint>,
    /// A checkpoint to continue from, applied when its fit starts (see [`Self::resume_from`]).
    pending: Option<Checkpoint>,
    /// Called after every completed epoch, with [`Self::last_checkpoint`] up to date (the CLI
    /// saves the bundle there, so a killed run loses at most one epoch).
    pub on_epoch_end: Option<EpochHook>,
    seed: u64,
    rng: rand_chacha::ChaCha8Rng,
    /// Input statistics the pretrained weights expect (the arch's by default; a timm tag or a
    /// resumed bundle may set others). Recorded in the bundle, which predict and serve use.
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

pub type EpochHook = Box<dyn FnMut(&Learner, &mut dyn Report)>;

/// (name, tensor, group, do_wd, is_bn) for every learnable parameter, in fastai's terms:
/// BatchNorm parameters and biases get no weight decay.
pub fn opt_params(net: &Network) -> Vec<(String, Tensor, usize, bool, bool)> {
    let vars = net.vs.variables();
    net.param_names()
        .iter()
        .map(|n| {
            let is_bn = net.is_bn_param(n);
            let do_wd = !(is_bn || n.ends_with(".bias"));
            (
                n.clone(),
                vars[n].shallow_clone(),
                net.arch.group_of(n),
                do_wd,
                is_bn,
            )
        })
        .collect()
}

impl Learner {
    pub fn new(net: Network, dls: DataLoaders, adam: AdamConfig, seed: u64) -> Self {
        let opt = Adam::new(opt_params(&net), adam);
        let net_stats = net.arch.normalization();
        Learner {
            net,
            dls,
            opt,
            label_smoothing: 0.0,
            augment: false,
            rows: Vec::new(),
            hypers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            interrupted: false,
            last_checkpoint: None,
            pending: None,
            on_epoch_end: None,
            seed,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_add(1)),
            mean: net_stats.0,
            std: net_stats.1,
        }
    }

    /// The next epoch's training batches, as index lists (seeded shuffle).
    pub(crate) fn epoch_order(&mut self) -> Vec<Vec<usize>> {
        self.dls.train_order(&mut self.rng)
    }

    /// Images and labels of one training batch.
    pub(crate) fn load_batch(&mut self, idx: &[usize]) -> (Tensor, Tensor) {
        self.dls.train_batch(idx, &mut self.rng)
    }

    /// Trains only the head (and every BatchNorm), as a freshly created fastai learner.
    pub fn freeze(&mut self) {
        let n = self.net.arch.n_groups();
        self.opt.freeze_to(n - 1);
    }

    pub fn unfreeze(&mut self) {
        self.opt.freeze_to(0);
    }

    fn n_groups(&self) -> usize {
        self.net.arch.n_groups()
    }

    pub fn input(&self, batch_u8: &Tensor) -> Tensor {
        normalize(batch_u8, self.net.device(), self.mean, self.std)
    }

    fn loss(&self, logits: &Tensor, y: &Tensor) -> Tensor {
        logits.cross_entropy_loss::<Tensor>(y, None, Reduction::Mean, -100, self.label_smoothing)
    }

    /// Runs one training batch with the given hypers; returns the batch loss.
    pub fn train_batch(&mut self, xb: &Tensor, yb: &Tensor, lrs: &[f64], mom: f64) -> f64 {
        let x = if self.augment {
            let raw = xb
                .to_device(self.net.device())
                .permute([0, 3, 1, 2])
                .to_kind(Kind::Float)
                / 255.0;
            let aug = crate::data::augment::augment(&raw, &mut self.rng);
            normalize_float(&aug, self.mean, self.std)
        } else {
            self.input(xb)
        };
        let y = yb.to_device(self.net.device());
        let loss = self.loss(&self.net.forward_t(&x, true), &y);
        self.opt.zero_grad();
        loss.backward();
        self.opt.step(lrs, mom);
        loss.double_value(&[])
    }

    /// Size-weighted mean validation loss and error rate, in eval mode.
    pub fn validate(&self) -> (f64, f64) {
        let mut loss_sum = 0.0;
        let mut correct = 0i64;
        let mut n = 0i64;
        tch::no_grad(|| {
            for (xb, yb) in self.dls.valid_batches() {
                let x = self.input(&xb);
                let y = yb.to_device(self.net.device());
                let logits = self.net.forward_t(&x, false);
                let bs = y.size()[0];
                loss_sum += self.loss(&logits, &y).double_value(&[]) * bs as f64;
                correct += logits
                    .argmax(-1, false)
                    .eq_tensor(&y)
                    .sum(Kind::Int64)
                    .int64_value(&[]);
                n += bs;
            }
        });
        if n == 0 {
            return (f64::NAN, f64::NAN);
        }
        (loss_sum / n as f64, 1.0 - correct as f64 / n as f64)
    }

    /// fastai `fit_one_cycle(n_epochs, lr, ...)`: per training batch, lr and β1 follow the
    /// one-cycle cosines at position `i / (n_batches · n_epochs)`.
    pub fn fit_one_cycle(
        &mut self,
        phase: &str,
        n_epochs: usize,
        lr: LrSpec,
        sched: OneCycle,
        report: &mut dyn Report,
    ) {
        let lr_max = lr.per_group(self.n_groups());
        let n_batches = self.dls.n_train_batches();
        let total = (n_batches * n_epochs).max(1) as f64;
        let (start, mut smooth) = self.apply_pending(phase);
        report.begin_fit(phase, n_epochs);
        for row in self.rows.iter().filter(|r| r.phase == phase) {
            report.end_epoch(row);
        }
        for epoch in start..n_epochs {
            let t0 = Instant::now();
            tch::manual_seed(epoch_seed(self.seed, phase, epoch));
            report.begin_epoch(epoch, n_batches);
            let mut ran = 0;
            for (i, idx) in self.epoch_order().iter().enumerate() {
                let (xb, yb) = self.load_batch(idx);
                let pos = (epoch * n_batches + i) as f64 / total;
                let lrs: Vec<f64> = lr_max.iter().map(|&l| sched.lr(l, pos)).collect();
                let mom = sched.mom(pos);
                let loss = self.train_batch(&xb, &yb, &lrs, mom);
                self.hypers
                    .push((phase.to_string(), BatchHypers { lrs, mom }));
                report.batch(i, smooth.add(loss));
                ran += 1;
                if self.stop.load(Ordering::Relaxed) {
                    self.interrupted = true;
                    break;
                }
            }
            report.begin_validate();
            let (valid_loss, error_rate) = self.validate();
            let row = EpochRow {
                phase: phase.to_string(),
                epoch,
                train_loss: smooth.value(),
                valid_loss,
                error_rate,
                accuracy: 1.0 - error_rate,
                seconds: t0.elapsed().as_secs_f64(),
            };
            report.end_epoch(&row);
            self.rows.push(row);
            if ran == n_batches {
                self.last_checkpoint = Some(self.snapshot(phase, epoch + 1, smooth));
                if let Some(mut hook) = self.on_epoch_end.take() {
                    hook(self, report);
                    self.on_epoch_end = Some(hook);
                }
            }
            if self.interrupted {
                report.message("interrupted: stopped after the current batch");
                return;
            }
        }
    }

    /// The state right now, as a checkpoint that `phase` has `epochs_done` epochs done.
    fn snapshot(&self, phase: &str, epochs_done: usize, smooth: SmoothLoss) -> Checkpoint {
        let (mut tensors, steps) = self.opt.state();
        for (k, v) in self.net.vs.variables() {
            tensors.push((
                format!("model.{k}"),
                v.detach().to_device(tch::Device::Cpu).copy(),
            ));
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
    fn apply_pending(&mut self, phase: &str) -> (usize, SmoothLoss) {
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
        self.rows = ck.state.rows;
        (
            ck.state.epochs_done,
            SmoothLoss {
                val: ck.state.smooth_val,
                count: ck.state.smooth_count,
            },
        )
    }

    /// fastai `fine_tune`: one frozen fit (head + BatchNorm, `pct_start` 0.99, div 25), then the whole
    /// network with discriminative rates `slice(base_lr/2/lr_mult, base_lr/2)`.
    pub fn fine_tune(&mut self, ft: FineTune, report: &mut dyn Report) {
        self.freeze();
        let resume_unfrozen = self
            .pending
            .as_ref()
            .is_some_and(|c| c.state.phase == "unfrozen");
        if ft.freeze_epochs > 0 && !resume_unfrozen {
            let frozen = OneCycle {
                pct_start: 0.99,
                ..OneCycle::default()
            };
            self.fit_one_cycle(
                "frozen",
                ft.freeze_epochs,
                LrSpec::Max(ft.base_lr),
                frozen,
                report,
            );
        }
        if self.interrupted || ft.epochs == 0 {
            return;
        }
        let base = ft.base_lr / 2.0;
        self.unfreeze();
        let sched = OneCycle {
            pct_start: ft.pct_start,
            div: ft.div,
            ..OneCycle::default()
        };
        self.fit_one_cycle(
            "unfrozen",
            ft.epochs,
            LrSpec::Range(base / ft.lr_mult, base),
            sched,
            report,
        );
    }
}

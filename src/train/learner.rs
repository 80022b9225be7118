//! The `Learner`: a network, its data and fastai's optimizer, trained with `fit_one_cycle` and
//! `fine_tune` exactly as fastai schedules them.

use super::checkpoint::epoch_seed;
use super::grad_scaler::GradScaler;
use super::metrics::samples_f1_sum;
pub use super::metrics::ValidMetrics;
use super::mix::Mixed;
use super::optimizer::{Adam, AdamConfig};
use super::pipeline::{overlapped, InputSpec};
use super::profile::{PhaseTimes, Timer};
use super::report::Report;
use super::schedule::{LrSpec, OneCycle};
pub use super::smooth_loss::SmoothLoss;
use crate::bundle::{Checkpoint, EpochRow, FineTune, Mix, TrackerState, Tracking, DEFAULT_THRESH};
use crate::data::augment::{self, AugConfig};
use crate::data::DataLoaders;
use crate::dist::{DistError, Replica};
use crate::model::{Network, Precision};
use rand::SeedableRng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

/// The hyper-parameters used for one training batch (kept so tests and users can check schedules).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchHypers {
    pub lrs: Vec<f64>,
    pub mom: f64,
}

pub struct Learner {
    pub net: Network,
    pub dls: DataLoaders,
    pub opt: Adam,
    /// Loss scaling, enabled when the network computes in fp16.
    pub scaler: GradScaler,
    pub label_smoothing: f64,
    /// Batch augmentation of training batches (`--augment`, fastai's aug_transforms), with these
    /// magnitudes.
    pub augment: bool,
    pub aug_config: AugConfig,
    /// MixUp or CutMix of training batches (`--mixup`, `--cutmix`).
    pub mix: Option<Mix>,
    /// `--save-best` / `--early-stop` (fastai's tracker callbacks).
    pub tracking: Option<Tracking>,
    /// The trackers' state in the current fit.
    pub(super) tracker: TrackerState,
    /// Under `--save-best`: CPU copies of the best epoch's variables in the current fit.
    pub(super) best_weights: Option<Vec<(String, Tensor)>>,
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
    pub(super) pending: Option<Checkpoint>,
    /// Called after every completed epoch, with [`Self::last_checkpoint`] up to date (the CLI
    /// saves the bundle there, so a killed run loses at most one epoch).
    pub on_epoch_end: Option<EpochHook>,
    seed: u64,
    pub(super) rng: rand_chacha::ChaCha8Rng,
    /// Input statistics the pretrained weights expect (the arch's by default; a timm tag or a
    /// resumed bundle may set others). Recorded in the bundle, which predict and serve use.
    pub mean: [f64; 3],
    pub std: [f64; 3],
    /// `FINETUNE_PROFILE`: time every part of the loop (see [`PhaseTimes`]).
    profile: bool,
    /// This process's place in a data-parallel run (see [`Self::distribute`]); `None` alone.
    pub replica: Option<Replica>,
    /// Why a data-parallel run stopped (a lost rank, diverged weights): training ends at once
    /// and the run reports it.
    pub dist_error: std::sync::Mutex<Option<DistError>>,
}

/// The data generator of a run with `seed` (shuffles, crops, augmentation and mixing draws); kept
/// apart from the split's, which uses `seed` itself.
pub fn data_rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_add(1))
}

pub type EpochHook = Box<dyn FnMut(&Learner, &mut dyn Report)>;

/// How many training losses stay on the device before they are read for the progress bar: reading
/// one waits for the GPU to finish everything queued before it.
fn loss_read_every(device: Device) -> usize {
    if device.is_cuda() {
        8
    } else {
        1
    }
}

/// One optimisation step on a batch already on the device; returns the loss (detached, on the
/// device, not read: reading it would synchronise with a GPU).
///
/// Data-parallel (`sync`): between backward and the step, the gradients are averaged over the
/// ranks, so every replica takes the step one process would take on the global batch; the loss
/// returned is the global batch's, and `stop` votes are summed in the same collective (the
/// returned second tensor), so every rank stops after the same batch.
#[allow(clippy::too_many_arguments)]
fn step(
    net: &Network,
    opt: &mut Adam,
    scaler: &mut GradScaler,
    label_smoothing: f64,
    (x, y, mix): (&Tensor, &Tensor, Option<&Mixed>),
    lrs: &[f64],
    mom: f64,
    times: &mut PhaseTimes,
    profile: bool,
    sync: Option<(&Replica, bool)>,
) -> Result<(Tensor, Option<Tensor>), DistError> {
    let mut t = Timer::start(profile, net.device());
    let logits = net.forward_t(x, true);
    let loss = super::loss::loss(&logits, y, label_smoothing, mix);
    t.lap(&mut times.forward);
    opt.zero_grad();
    scaler.scale_loss(&loss).backward();
    t.lap(&mut times.backward);
    let mut out = (loss.detach(), None);
    if let Some((replica, stop)) = sync {
        let grads = opt.grads();
        let local = Tensor::stack(
            &[
                loss.detach().to_kind(Kind::Float),
                Tensor::from(stop as i32 as f32).to_device(loss.device()),
            ],
            0,
        );
        let summed = replica.average_grads(&grads, &local)?;
        out = (summed.get(0) / replica.world() as f64, Some(summed.get(1)));
        t.lap(&mut times.sync);
    }
    scaler.step(opt, lrs, mom);
    t.lap(&mut times.step);
    Ok(out)
}

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
        let scaler = GradScaler::new(net.precision() == Precision::Fp16);
        Learner {
            net,
            dls,
            opt,
            scaler,
            label_smoothing: 0.0,
            augment: false,
            aug_config: AugConfig::default(),
            mix: None,
            tracking: None,
            tracker: TrackerState::default(),
            best_weights: None,
            rows: Vec::new(),
            hypers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            interrupted: false,
            last_checkpoint: None,
            pending: None,
            on_epoch_end: None,
            seed,
            rng: data_rng(seed),
            mean: net_stats.0,
            std: net_stats.1,
            profile: std::env::var_os("FINETUNE_PROFILE").is_some_and(|v| !v.is_empty()),
            replica: None,
            dist_error: std::sync::Mutex::new(None),
        }
    }

    /// Makes this learner one replica of a data-parallel run: every variable (parameters and
    /// BatchNorm statistics) becomes rank 0's, and from now on each epoch takes this rank's share
    /// of every global batch of `bs × world` images, averages gradients and sums metrics.
    pub fn distribute(&mut self, replica: Replica) -> Result<(), DistError> {
        let vars: Vec<Tensor> = self.vars();
        replica.broadcast_vars(&vars)?;
        self.replica = Some(replica);
        Ok(())
    }

    /// Every variable of the network, in a fixed order (the same on every rank).
    fn vars(&self) -> Vec<Tensor> {
        self.sorted_vars(|_| true)
    }

    /// The variables that are not parameters (BatchNorm's running statistics), in a fixed order.
    fn buffers(&self) -> Vec<Tensor> {
        let params: std::collections::HashSet<&String> = self.net.param_names().iter().collect();
        self.sorted_vars(|k| !params.contains(k))
    }

    /// The variables whose names `keep` accepts, sorted by name.
    fn sorted_vars(&self, keep: impl Fn(&String) -> bool) -> Vec<Tensor> {
        let mut v: Vec<(String, Tensor)> = self
            .net
            .vs
            .variables()
            .into_iter()
            .filter(|(k, _)| keep(k))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(_, t)| t).collect()
    }

    /// Training batches per epoch: global batches of `bs × world` (last incomplete one dropped).
    pub fn n_batches(&self) -> usize {
        self.dls.train.len() / self.global_bs().max(1)
    }

    /// The batch one optimisation step sees: `bs` alone, `bs × world` data-parallel.
    pub fn global_bs(&self) -> usize {
        self.dls.cfg.bs * self.replica.as_ref().map_or(1, Replica::world)
    }

    /// The error that stopped a data-parallel run, if one did.
    pub fn dist_failure(&self) -> Option<DistError> {
        self.dist_error.lock().ok().and_then(|mut e| e.take())
    }

    fn dist_failed(&self) -> bool {
        self.dist_error.lock().is_ok_and(|e| e.is_some())
    }

    fn fail(&self, e: DistError) {
        if let Ok(mut slot) = self.dist_error.lock() {
            slot.get_or_insert(e);
        }
    }

    /// How batches become this network's input (device, memory format, normalisation).
    pub fn input_spec(&self) -> InputSpec {
        InputSpec {
            device: self.net.device(),
            format: self.net.memory_format(),
            mean: self.mean,
            std: self.std,
        }
    }

    /// The next epoch's training batches, as index lists (seeded shuffle). Data-parallel: every
    /// rank draws the same permutation into global batches and takes its `bs` of each (rank 0
    /// the first), so the ranks together see exactly the batches one process would.
    pub(crate) fn epoch_order(&mut self) -> Vec<Vec<usize>> {
        let Some(r) = &self.replica else {
            return self.dls.train_order(&mut self.rng);
        };
        let (rank, bs, global) = (r.rank(), self.dls.cfg.bs, self.global_bs());
        self.dls
            .train_order_by(&mut self.rng, global)
            .into_iter()
            .map(|b| b[rank * bs..(rank + 1) * bs].to_vec())
            .collect()
    }

    /// The generator of this epoch's crops, augmentation and mixing draws: the data RNG alone;
    /// data-parallel, one per (rank, phase, epoch), so ranks draw differently while the shared
    /// RNG, used only for the shuffle, stays the same on all of them (and resumes exactly).
    fn draw_rng(&self, phase: &str, epoch: usize) -> Option<rand_chacha::ChaCha8Rng> {
        let r = self.replica.as_ref()?;
        let base = epoch_seed(self.seed, phase, epoch) as u64;
        Some(data_rng(
            base ^ (r.rank() as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ))
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

    /// A u8 NHWC batch as the network's normalised input, on its device, in its memory format.
    pub fn input(&self, batch_u8: &Tensor) -> Tensor {
        self.net.input(batch_u8, self.mean, self.std)
    }

    /// The validation loss (never mixed).
    fn loss(&self, logits: &Tensor, y: &Tensor) -> Tensor {
        super::loss::loss(logits, y, self.label_smoothing, None)
    }

    /// Runs one training batch (u8 NHWC images, labels) with the given hypers, serially; returns the
    /// batch loss. [`Self::fit_one_cycle`] does the same with the input prepared ahead.
    pub fn train_batch(&mut self, xb: &Tensor, yb: &Tensor, lrs: &[f64], mom: f64) -> f64 {
        let aug = self
            .augment
            .then(|| augment::draw(xb.size()[0] as usize, &self.aug_config, &mut self.rng));
        let mix = self
            .mix
            .map(|m| super::pipeline::draw_mix(&m, xb, &mut self.rng));
        let spec = self.input_spec();
        let batch = spec.prepare_mixed(xb.shallow_clone(), yb.shallow_clone(), aug, mix);
        let (x, y, mixed) = spec.finish_train(batch);
        let mut times = PhaseTimes::default();
        let ls = self.label_smoothing;
        let sync = self.replica.as_ref().map(|r| (r, false));
        match step(
            &self.net,
            &mut self.opt,
            &mut self.scaler,
            ls,
            (&x, &y, mixed.as_ref()),
            lrs,
            mom,
            &mut times,
            false,
            sync,
        ) {
            Ok((loss, _)) => loss.double_value(&[]),
            Err(e) => {
                self.fail(e);
                f64::NAN
            }
        }
    }

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
        let (rank, world) = self
            .replica
            .as_ref()
            .map_or((0, 1), |r| (r.rank(), r.world()));
        let mine = self.dls.valid.len().saturating_sub(rank).div_ceil(world);
        let n_batches = mine.div_ceil(self.dls.cfg.bs.max(1));
        let mut batches = self.dls.valid_shard(rank, world);
        let mut results: Vec<(Tensor, Tensor, Option<Tensor>, i64, i64)> = Vec::new();
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
                        (
                            logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64),
                            None,
                        )
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
        if let Some(r) = &self.replica {
            // Every rank validated its share: the sums are the whole set's (counts stay exact in f64).
            let multi = self.dls.is_multi_label();
            let local = [
                loss_sum,
                correct as f64,
                decisions as f64,
                n as f64,
                f1.unwrap_or(0.0),
            ];
            match r.sum(&local) {
                Ok(s) if s.len() == 5 => {
                    loss_sum = s[0];
                    (correct, decisions, n) = (s[1] as i64, s[2] as i64, s[3] as i64);
                    f1 = multi.then_some(s[4]);
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
            };
        }
        ValidMetrics {
            loss: loss_sum / n as f64,
            error_rate: 1.0 - correct as f64 / decisions as f64,
            f1: f1.map(|s| s / n as f64),
        }
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
        let n_batches = self.n_batches();
        let total = (n_batches * n_epochs).max(1) as f64;
        // Each fit tracks afresh (fastai's reset_on_fit); a checkpoint of this fit restores its state.
        self.tracker = TrackerState::default();
        self.best_weights = None;
        let (start, mut smooth) = self.apply_pending(phase);
        report.task(self.dls.is_multi_label());
        report.begin_fit(phase, n_epochs);
        for row in self.rows.iter().filter(|r| r.phase == phase) {
            report.end_epoch(row);
        }
        for epoch in start..n_epochs {
            if self.tracker.stopped || self.dist_failed() {
                break;
            }
            let t0 = Instant::now();
            // Dropout masks: per rank too, so replicas do not drop the same units.
            let rank = self.replica.as_ref().map_or(0, Replica::rank) as i64;
            tch::manual_seed(epoch_seed(self.seed, phase, epoch).wrapping_add(rank));
            report.begin_epoch(epoch, n_batches);
            let order = self.epoch_order();
            let mut own_draws = self.draw_rng(phase, epoch);
            let spec = self.input_spec();
            let read_every = loss_read_every(spec.device);
            let profile = self.profile;
            let mut times = PhaseTimes::default();
            // Losses not yet read back, with their batch index.
            let mut unread: Vec<(usize, Tensor)> = Vec::new();
            // Data-parallel: the summed stop votes not yet read, and whether any rank asked.
            let mut votes: Vec<Tensor> = Vec::new();
            let mut voted_stop = false;
            let mut failed: Option<DistError> = None;
            let Learner {
                net,
                dls,
                opt,
                scaler,
                rng,
                hypers,
                stop,
                augment: do_augment,
                aug_config,
                label_smoothing,
                mix,
                replica,
                ..
            } = &mut *self;
            let aug = do_augment.then_some(*aug_config);
            let (dls, label_smoothing, mix) = (&*dls, *label_smoothing, *mix);
            let draws = match own_draws.as_mut() {
                Some(r) => r,
                None => rng,
            };
            let replica = replica.as_ref();
            let (ran, overlap) = overlapped(
                order.len(),
                |i| spec.prepare_train(dls, &order[i], draws, aug.as_ref(), mix.as_ref()),
                |i, batch| {
                    let (x, y, mixed) = spec.finish_train(batch);
                    let pos = (epoch * n_batches + i) as f64 / total;
                    let lrs: Vec<f64> = lr_max.iter().map(|&l| sched.lr(l, pos)).collect();
                    let mom = sched.mom(pos);
                    let asked = stop.load(Ordering::Relaxed);
                    let (loss, vote) = match step(
                        net,
                        opt,
                        scaler,
                        label_smoothing,
                        (&x, &y, mixed.as_ref()),
                        &lrs,
                        mom,
                        &mut times,
                        profile,
                        replica.map(|r| (r, asked)),
                    ) {
                        Ok(v) => v,
                        Err(e) => {
                            failed = Some(e);
                            return false;
                        }
                    };
                    hypers.push((phase.to_string(), BatchHypers { lrs, mom }));
                    unread.push((i, loss));
                    votes.extend(vote);
                    // Alone, this process's flag; data-parallel, the votes every rank reads at
                    // the same batch, so all stop together (never one waiting on the others).
                    let read_now = unread.len() >= read_every || i + 1 == n_batches;
                    let stopping = match replica {
                        // Alone: a Ctrl-C during this step stops after it, as before.
                        None => stop.load(Ordering::Relaxed),
                        Some(_) if read_now => {
                            voted_stop |= votes.drain(..).any(|v| v.double_value(&[]) > 0.0);
                            voted_stop
                        }
                        Some(_) => false,
                    };
                    if read_now || stopping {
                        let t = Instant::now();
                        read_losses(&mut unread, &mut smooth, report);
                        times.read += t.elapsed();
                    }
                    !stopping
                },
            );
            if let Some(e) = failed {
                self.fail(e);
                report.message("distributed training failed: stopping");
                return;
            }
            if voted_stop {
                self.stop.store(true, Ordering::Relaxed);
            }
            let t = Instant::now();
            read_losses(&mut unread, &mut smooth, report);
            times.read += t.elapsed();
            times.batches = ran;
            times.prepare = overlap.produce;
            times.wait = overlap.wait;
            if self.stop.load(Ordering::Relaxed) {
                self.interrupted = true;
            }
            if let Some(r) = &self.replica {
                // BatchNorm's running statistics saw only this rank's images: rank 0's become
                // everyone's, as DDP's broadcast_buffers does before each forward.
                if let Err(e) = r.broadcast_vars(&self.buffers()) {
                    self.fail(e);
                    return;
                }
            }
            report.begin_validate();
            let t = Instant::now();
            let v = self.validate_metrics();
            times.validate = t.elapsed();
            if let Some(r) = &self.replica {
                // Cheap next to an epoch, and the proof that the replicas are one model.
                match r.same_weights(&self.vars()) {
                    Ok(true) => {}
                    Ok(false) => self.fail(DistError::Diverged {
                        phase: phase.to_string(),
                        epoch,
                    }),
                    Err(e) => self.fail(e),
                }
            }
            if self.dist_failed() {
                return;
            }
            let row = EpochRow {
                phase: phase.to_string(),
                epoch,
                train_loss: smooth.value(),
                valid_loss: v.loss,
                error_rate: v.error_rate,
                accuracy: 1.0 - v.error_rate,
                f1: v.f1,
                seconds: t0.elapsed().as_secs_f64(),
                best: false,
            };
            report.end_epoch(&row);
            if self.profile {
                eprintln!("{}", times.line(phase, epoch, row.seconds));
            }
            self.rows.push(row);
            if ran == n_batches {
                self.track(report);
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
        self.keep_best(phase, report);
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
        if self.interrupted || ft.epochs == 0 || self.dist_failed() {
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

/// Reads the losses still on the device (one synchronisation for all of them) and reports each,
/// in batch order, through the smoothed loss.
fn read_losses(
    unread: &mut Vec<(usize, Tensor)>,
    smooth: &mut SmoothLoss,
    report: &mut dyn Report,
) {
    if unread.is_empty() {
        return;
    }
    let values: Vec<f64> = if unread.len() == 1 {
        vec![unread[0].1.double_value(&[])]
    } else {
        let all = Tensor::stack(
            &unread
                .iter()
                .map(|(_, l)| l.shallow_clone())
                .collect::<Vec<_>>(),
            0,
        )
        .to_device(Device::Cpu);
        Vec::<f64>::try_from(all.to_kind(Kind::Double)).unwrap_or_default()
    };
    for ((i, _), v) in unread.drain(..).zip(values) {
        report.batch(i, smooth.add(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::RngState;
    use crate::data::{DataConfig, ResizeMethod, Size};
    use crate::model::{Arch, MemoryFormat};
    use crate::train::SilentReport;

    /// Two classes of small noisy PNGs, `n` each.
    fn images(dir: &std::path::Path, n: u32) {
        for (c, base) in [("red", [200u8, 40, 40]), ("blue", [40u8, 40, 200])] {
            std::fs::create_dir_all(dir.join(c)).unwrap();
            for i in 0..n {
                image::RgbImage::from_fn(20, 18, |x, y| {
                    let v = ((x * 7 + y * 13 + i * 31) % 50) as u8;
                    image::Rgb(base.map(|b| b.saturating_add(v)))
                })
                .save(dir.join(c).join(format!("{i}.png")))
                .unwrap();
            }
        }
    }

    fn learner(dir: &std::path::Path, format: MemoryFormat, mix: Mix) -> Learner {
        tch::manual_seed(0);
        let cfg = DataConfig {
            size: Size { w: 16, h: 16 },
            // Random crops and augmentation: both draw from the data RNG.
            method: ResizeMethod::Crop,
            bs: 4,
            ..Default::default()
        };
        let dls = DataLoaders::from_folder(dir, cfg, &indicatif::ProgressBar::hidden()).unwrap();
        let mut net = Network::classifier(Arch::Resnet18, 2, Device::Cpu);
        net.set_memory_format(format);
        let mut l = Learner::new(net, dls, AdamConfig::default(), 5);
        l.augment = true;
        l.mix = Some(mix);
        l
    }

    /// The overlapped loop trains on exactly the batches the serial loop made (same shuffle, crops,
    /// augmentation and mixing draws, in the same order), so losses and weights are bit-identical.
    #[test]
    fn overlapped_input_gives_the_serial_runs_losses_and_weights() {
        let dir = tempfile::tempdir().unwrap();
        images(dir.path(), 10);
        for (format, mix) in [
            (MemoryFormat::Nhwc, Mix::Mixup(0.4)),
            (MemoryFormat::Nchw, Mix::Cutmix(1.0)),
        ] {
            let mut a = learner(dir.path(), format, mix);
            let mut b = learner(dir.path(), format, mix);
            let sched = OneCycle::default();
            let lr = LrSpec::Max(1e-3);
            a.fit_one_cycle("frozen", 2, lr, sched, &mut SilentReport);

            // The serial loop, written out: what fit_one_cycle did before the producer thread.
            let lr_max = lr.per_group(b.n_groups());
            let n_batches = b.n_batches();
            let total = (n_batches * 2) as f64;
            let mut smooth = SmoothLoss::default();
            for epoch in 0..2 {
                tch::manual_seed(epoch_seed(b.seed, "frozen", epoch));
                for (i, idx) in b.epoch_order().iter().enumerate() {
                    let (xb, yb) = b.load_batch(idx);
                    let pos = (epoch * n_batches + i) as f64 / total;
                    let lrs: Vec<f64> = lr_max.iter().map(|&l| sched.lr(l, pos)).collect();
                    smooth.add(b.train_batch(&xb, &yb, &lrs, sched.mom(pos)));
                }
                let (valid_loss, error_rate) = b.validate();
                let row = &a.rows[epoch];
                assert_eq!(row.valid_loss.to_bits(), valid_loss.to_bits(), "{format}");
                assert_eq!(row.error_rate.to_bits(), error_rate.to_bits());
            }
            assert_eq!(a.rows[1].train_loss.to_bits(), smooth.value().to_bits());
            let vb = b.net.vs.variables();
            for (k, v) in a.net.vs.variables() {
                assert!(v.equal(&vb[&k]), "{format}: {k} differs");
            }
            assert_eq!(
                RngState::of(&a.rng),
                RngState::of(&b.rng),
                "the data RNG ends in the same place"
            );
        }
    }
}

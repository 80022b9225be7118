//! fastai's `fit_one_cycle` as a short loop of events (fastai/learner.py's `_do_fit`): each epoch
//! trains its batches, validates and records a row, then the callbacks act on it — the trackers
//! (save-best, early stop), the checkpoint, the profiler and whatever the caller added (saving the
//! bundle). The batch loop itself is `Learner::train_batches`, with the inputs prepared ahead.

pub use super::callback::{BatchEnd, Callback, EpochEnd};
use super::checkpoint::epoch_seed;
use super::learner::{BatchHypers, Learner};
use super::mix::{MixHandler, Mixed};
use super::optimizer::Adam;
use super::pipeline::overlapped;
use super::profile::{PhaseTimes, Timer};
use super::report::Report;
use super::schedule::{LrSpec, OneCycle};
use super::smooth_loss::SmoothLoss;
use super::strategy::Strategy;
use super::GradScaler;
use crate::bundle::{EpochRow, TrackerState};
use crate::data::augment;
use crate::dist::DistError;
use crate::model::Network;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

/// A user's action after every completed epoch, with the learner's `last_checkpoint` up to date
/// (the run saves its bundle there, so a killed run loses at most one epoch).
pub struct AfterEpoch<F>(pub F);

impl<F: FnMut(&Learner, &mut dyn Report)> Callback<Learner> for AfterEpoch<F> {
    fn after_epoch(&mut self, learn: &mut Learner, end: &EpochEnd, report: &mut dyn Report) {
        if end.complete {
            (self.0)(learn, report);
        }
    }
}

/// fastai's `SaveModelCallback` and `EarlyStoppingCallback` (see `super::tracker`).
struct Trackers;

impl Callback<Learner> for Trackers {
    fn after_epoch(&mut self, learn: &mut Learner, end: &EpochEnd, report: &mut dyn Report) {
        if end.complete {
            learn.track(report);
        }
    }
    fn after_fit(&mut self, learn: &mut Learner, phase: &str, report: &mut dyn Report) {
        learn.keep_best(phase, report);
    }
}

/// The state a resumed run continues from, taken at the end of every completed epoch.
struct Checkpoints;

impl Callback<Learner> for Checkpoints {
    fn after_epoch(&mut self, learn: &mut Learner, end: &EpochEnd, _report: &mut dyn Report) {
        if end.complete {
            learn.last_checkpoint = Some(learn.snapshot(&end.phase, end.epoch + 1, end.smooth));
        }
    }
}

/// `FINETUNE_PROFILE`: one line per epoch on every rank's stderr (a developer's tool, outside the
/// report: bench/ddp_bench.py reads each rank's lines).
struct Profiler;

impl Callback<Learner> for Profiler {
    fn after_epoch(&mut self, _learn: &mut Learner, end: &EpochEnd, _report: &mut dyn Report) {
        eprintln!("{}", end.times.line(&end.phase, end.epoch, end.seconds));
    }
}

/// A fit's time in its callbacks (after each batch, after each epoch) and in all, which
/// `FINETUNE_PROFILE` prints once a fit: what tracking, checkpoints and the caller's hooks cost.
struct CallbackClock {
    fit: Instant,
    batch: Duration,
    epoch: Duration,
}

impl CallbackClock {
    fn start() -> Self {
        CallbackClock {
            fit: Instant::now(),
            batch: Duration::ZERO,
            epoch: Duration::ZERO,
        }
    }
    fn add(&mut self, batch: Duration, epoch: Duration) {
        self.batch += batch;
        self.epoch += epoch;
    }
    fn line(&self, phase: &str) -> String {
        let total = self.fit.elapsed().as_secs_f64();
        let cb = (self.batch + self.epoch).as_secs_f64();
        format!(
            "PROFILE {phase}: callbacks {cb:.3}s of {total:.2}s ({:.2} %): after each batch {:.3}s, after each epoch {:.3}s",
            100.0 * cb / total.max(1e-9),
            self.batch.as_secs_f64(),
            self.epoch.as_secs_f64()
        )
    }
}

/// One fit's one-cycle schedule: per batch, lr and β1 follow the cosines at position
/// `i / (n_batches · n_epochs)`.
pub(super) struct Cycle {
    phase: String,
    lr_max: Vec<f64>,
    sched: OneCycle,
    n_batches: usize,
    total: f64,
}

impl Cycle {
    fn at(&self, epoch: usize, i: usize) -> BatchHypers {
        let pos = (epoch * self.n_batches + i) as f64 / self.total;
        BatchHypers {
            lrs: self.lr_max.iter().map(|&l| self.sched.lr(l, pos)).collect(),
            mom: self.sched.mom(pos),
        }
    }
}

impl Learner {
    /// Runs one training batch (u8 NHWC images, labels) with the given hypers, serially; returns the
    /// batch loss. [`Self::fit_one_cycle`] does the same with the input prepared ahead.
    pub fn train_batch(&mut self, xb: &Tensor, yb: &Tensor, lrs: &[f64], mom: f64) -> f64 {
        let aug = self
            .recipe
            .augmentation()
            .map(|cfg| augment::draw(xb.size()[0] as usize, &cfg, &mut self.rng));
        let mix_handler = self.recipe.mix;
        let cb = mix_handler.as_ref().map(|m| m as &dyn MixHandler);
        let mix = cb.map(|c| c.draw(xb, &mut self.rng));
        let spec = self.input_spec();
        let batch = spec.prepare_mixed(xb.shallow_clone(), yb.shallow_clone(), aug, mix);
        let (x, y, mixed) = spec.finish_train(batch, cb);
        let mut stepper = Stepper {
            net: &self.net,
            opt: &mut self.opt,
            scaler: &mut self.scaler,
            label_smoothing: self.recipe.label_smoothing,
            class_weights: self.class_weights.as_ref(),
            strategy: self.strategy.as_ref(),
            profile: false,
        };
        let h = BatchHypers {
            lrs: lrs.to_vec(),
            mom,
        };
        match stepper.step(
            (&x, &y, mixed.as_ref()),
            &h,
            false,
            &mut PhaseTimes::default(),
        ) {
            Ok((loss, _)) => loss.double_value(&[]),
            Err(e) => {
                self.fail(e);
                f64::NAN
            }
        }
    }

    /// fastai `fit_one_cycle(n_epochs, lr, ...)`.
    pub fn fit_one_cycle(
        &mut self,
        phase: &str,
        n_epochs: usize,
        lr: LrSpec,
        sched: OneCycle,
        report: &mut dyn Report,
    ) {
        let n_batches = self.n_batches();
        let cycle = Cycle {
            phase: phase.to_string(),
            lr_max: lr.per_group(self.n_groups()),
            sched,
            n_batches,
            total: (n_batches * n_epochs).max(1) as f64,
        };
        // Each fit tracks afresh (fastai's reset_on_fit); a checkpoint of this fit restores its state.
        self.tracker = TrackerState::default();
        self.best_weights = None;
        let (start, mut smooth) = self.apply_pending(phase);
        report.task(self.dls.is_multi_label());
        report.begin_fit(phase, n_epochs);
        for row in self.rows.iter().filter(|r| r.phase == phase) {
            report.end_epoch(row);
        }
        let (mut cbs, own) = self.fit_callbacks();
        let mut ended = true;
        let mut clock = CallbackClock::start();
        for epoch in start..n_epochs {
            if self.tracker.stopped || self.dist_failed() {
                break;
            }
            let Some(end) = self.one_epoch(&cycle, epoch, &mut smooth, &mut cbs, report) else {
                ended = false;
                break;
            };
            let t = Instant::now();
            cbs.iter_mut()
                .for_each(|cb| cb.after_epoch(self, &end, report));
            clock.add(end.times.callbacks, t.elapsed());
            if self.interrupted {
                report.message("interrupted: stopped after the current batch");
                ended = false;
                break;
            }
        }
        if ended {
            cbs.iter_mut()
                .for_each(|cb| cb.after_fit(self, phase, report));
        }
        if self.profile {
            eprintln!("{}", clock.line(phase));
        }
        self.callbacks = cbs.split_off(own);
    }

    /// The fit's callbacks: the recipe's, then the ones the caller added (taken out of the
    /// learner for the fit; [`Self::fit_one_cycle`] puts them back).
    fn fit_callbacks(&mut self) -> (Vec<Box<dyn Callback<Learner>>>, usize) {
        let mut cbs: Vec<Box<dyn Callback<Learner>>> = Vec::new();
        if self.recipe.tracking.is_some() {
            cbs.push(Box::new(Trackers));
        }
        cbs.push(Box::new(Checkpoints));
        if self.profile {
            cbs.push(Box::new(Profiler));
        }
        let own = cbs.len();
        cbs.append(&mut self.callbacks);
        (cbs, own)
    }

    /// Trains one epoch, shares what the ranks must share, validates and records the row;
    /// `None` when a data-parallel run failed (the error is kept for the run to report).
    fn one_epoch(
        &mut self,
        cycle: &Cycle,
        epoch: usize,
        smooth: &mut SmoothLoss,
        cbs: &mut [Box<dyn Callback<Learner>>],
        report: &mut dyn Report,
    ) -> Option<EpochEnd> {
        let t0 = Instant::now();
        let phase = cycle.phase.as_str();
        // Dropout masks: per rank too, so replicas do not drop the same units.
        let rank = self.strategy.rank() as i64;
        tch::manual_seed(epoch_seed(self.seed, phase, epoch).wrapping_add(rank));
        report.begin_epoch(epoch, cycle.n_batches);
        let mut times = PhaseTimes::default();
        if let Err(e) = self.train_batches(cycle, epoch, smooth, &mut times, cbs, report) {
            self.fail(e);
            report.message("distributed training failed: stopping");
            return None;
        }
        if self.stop.load(Ordering::Relaxed) {
            self.interrupted = true;
        }
        if let Err(e) = self.strategy.share_buffers(&self.buffers()) {
            self.fail(e);
            return None;
        }
        report.begin_validate();
        let t = Instant::now();
        let mut v = self.validate_metrics();
        self.confusion = v.confusion.take();
        times.validate = t.elapsed();
        // Cheap next to an epoch, and the proof that the replicas are one model.
        match self.strategy.same_weights(&self.vars()) {
            Ok(true) => {}
            Ok(false) => self.fail(DistError::Diverged {
                phase: phase.to_string(),
                epoch,
            }),
            Err(e) => self.fail(e),
        }
        if self.dist_failed() {
            return None;
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
        let seconds = row.seconds;
        self.rows.push(row);
        Some(EpochEnd {
            phase: phase.to_string(),
            epoch,
            complete: times.batches == cycle.n_batches,
            smooth: *smooth,
            times,
            seconds,
        })
    }

    /// The epoch's training batches, each prepared on a producer thread while the previous one
    /// computes. Losses stay on the device until read in groups (reading one waits for the GPU).
    fn train_batches(
        &mut self,
        cycle: &Cycle,
        epoch: usize,
        smooth: &mut SmoothLoss,
        times: &mut PhaseTimes,
        cbs: &mut [Box<dyn Callback<Learner>>],
        report: &mut dyn Report,
    ) -> Result<(), DistError> {
        let order = self.epoch_order();
        let mut own_draws = self.draw_rng(&cycle.phase, epoch);
        let spec = self.input_spec();
        let read_every = loss_read_every(spec.device);
        let profile = self.profile;
        // Losses not yet read back, with their batch; the summed stop votes not yet read.
        let mut unread: Vec<(Unread, Tensor)> = Vec::new();
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
            recipe,
            strategy,
            class_weights,
            ..
        } = &mut *self;
        let aug = recipe.augmentation();
        // fastai's MixHandler: the recipe's batch callback (one at a time: MixUp or CutMix).
        let mix_handler = recipe.mix;
        let batch_cb = mix_handler.as_ref().map(|m| m as &dyn MixHandler);
        let mut stepper = Stepper {
            net,
            opt,
            scaler,
            label_smoothing: recipe.label_smoothing,
            class_weights: class_weights.as_ref(),
            strategy: strategy.as_ref(),
            profile,
        };
        let draws = match own_draws.as_mut() {
            Some(r) => r,
            None => rng,
        };
        let dls = &*dls;
        let (ran, overlap) = overlapped(
            order.len(),
            |i| spec.prepare_train(dls, &order[i], draws, aug.as_ref(), batch_cb),
            |i, batch| {
                let (x, y, mixed) = spec.finish_train(batch, batch_cb);
                let h = cycle.at(epoch, i);
                let asked = stop.load(Ordering::Relaxed);
                let (loss, vote) = match stepper.step((&x, &y, mixed.as_ref()), &h, asked, times) {
                    Ok(v) => v,
                    Err(e) => {
                        failed = Some(e);
                        return false;
                    }
                };
                let lr = h.lrs.last().copied().unwrap_or(0.0);
                hypers.push((cycle.phase.clone(), h));
                let at = Unread {
                    phase: &cycle.phase,
                    epoch,
                    batch: i,
                    step: hypers.len(),
                    lr,
                };
                unread.push((at, loss));
                votes.extend(vote);
                let read_now = unread.len() >= read_every || i + 1 == cycle.n_batches;
                // Alone: a Ctrl-C during this step stops after it; data-parallel: all ranks stop
                // after the same batch (never one waiting on the others).
                let asked = stop.load(Ordering::Relaxed);
                let stopping =
                    stepper
                        .strategy
                        .stop_now(asked, &mut votes, read_now, &mut voted_stop);
                if read_now || stopping {
                    let t = Instant::now();
                    times.callbacks += read_losses(&mut unread, smooth, cbs, report);
                    times.read += t.elapsed();
                }
                !stopping
            },
        );
        if let Some(e) = failed {
            return Err(e);
        }
        if voted_stop {
            self.stop.store(true, Ordering::Relaxed);
        }
        let t = Instant::now();
        times.callbacks += read_losses(&mut unread, smooth, cbs, report);
        times.read += t.elapsed();
        times.batches = ran;
        times.prepare = overlap.produce;
        times.wait = overlap.wait;
        Ok(())
    }
}

/// How many training losses stay on the device before they are read for the progress bar: reading
/// one waits for the GPU to finish everything queued before it.
fn loss_read_every(device: Device) -> usize {
    if device.is_cuda() {
        8
    } else {
        1
    }
}

/// What one optimisation step needs, borrowed from the learner for an epoch.
pub(super) struct Stepper<'a> {
    pub net: &'a Network,
    pub opt: &'a mut Adam,
    pub scaler: &'a mut GradScaler,
    pub label_smoothing: f64,
    pub class_weights: Option<&'a Tensor>,
    pub strategy: &'a dyn Strategy,
    pub profile: bool,
}

impl Stepper<'_> {
    /// One step on a batch already on the device; returns the loss (detached, on the device, not
    /// read: reading it would synchronise with a GPU) and, data-parallel, the summed stop votes.
    /// The strategy makes the gradients the global batch's between backward and the step, so
    /// every replica takes the step one process would take on the global batch.
    pub fn step(
        &mut self,
        (x, y, mix): (&Tensor, &Tensor, Option<&Mixed>),
        h: &BatchHypers,
        stop: bool,
        times: &mut PhaseTimes,
    ) -> Result<(Tensor, Option<Tensor>), DistError> {
        let mut t = Timer::start(self.profile, self.net.device());
        let logits = self.net.forward_t(x, true);
        let loss = super::loss::loss(&logits, y, self.label_smoothing, mix, self.class_weights);
        t.lap(&mut times.forward);
        self.opt.zero_grad();
        self.scaler.scale_loss(&loss).backward();
        t.lap(&mut times.backward);
        let out = match self.strategy.sync_grads(self.opt, &loss, stop)? {
            Some((global, votes)) => {
                t.lap(&mut times.sync);
                (global, Some(votes))
            }
            None => (loss.detach(), None),
        };
        self.scaler.step(self.opt, &h.lrs, h.mom);
        t.lap(&mut times.step);
        Ok(out)
    }
}

/// Where an unread loss came from, for the report and the batch callbacks.
struct Unread<'a> {
    phase: &'a str,
    epoch: usize,
    batch: usize,
    step: usize,
    lr: f64,
}

/// Reads the losses still on the device (one synchronisation for all of them) and reports each,
/// in batch order, through the smoothed loss; then the batch callbacks hear of it. Returns the
/// time spent in those callbacks (always measured: two clock reads a batch).
fn read_losses(
    unread: &mut Vec<(Unread, Tensor)>,
    smooth: &mut SmoothLoss,
    cbs: &mut [Box<dyn Callback<Learner>>],
    report: &mut dyn Report,
) -> Duration {
    let mut in_callbacks = Duration::ZERO;
    if unread.is_empty() {
        return in_callbacks;
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
    for ((at, _), v) in unread.drain(..).zip(values) {
        let s = smooth.add(v);
        report.batch(at.batch, s);
        let end = BatchEnd {
            phase: at.phase,
            epoch: at.epoch,
            batch: at.batch,
            step: at.step,
            loss: v,
            smooth: s,
            lr: at.lr,
        };
        let t = Instant::now();
        cbs.iter_mut().for_each(|cb| cb.after_batch(&end));
        in_callbacks += t.elapsed();
    }
    in_callbacks
}

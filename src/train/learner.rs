//! The `Learner`: a network, its data, fastai's optimizer and the recipe it trains with, as
//! fastai's `Learner`. Its loop is `super::fit` (events and callbacks), its validation
//! `super::validate`, its checkpoints `super::checkpoint`, its trackers `super::tracker`.

use super::callback::Callback;
use super::checkpoint::epoch_seed;
use super::grad_scaler::GradScaler;
use super::optimizer::{Adam, AdamConfig};
use super::pipeline::InputSpec;
use super::report::Report;
use super::schedule::{LrSpec, OneCycle};
pub use super::smooth_loss::SmoothLoss;
use super::strategy::{DataParallel, Single, Strategy};
use crate::bundle::{Checkpoint, EpochRow, FineTune, Recipe, RecipeError, TrackerState};
use crate::data::DataLoaders;
use crate::dist::{DistError, Replica};
use crate::model::{Network, Precision};
use rand::SeedableRng;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tch::Tensor;

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
    /// How it learns: label smoothing, augmentation, mixing, trackers (its schedule is the
    /// argument of [`Self::fine_tune`], its weight decay the optimizer's).
    pub recipe: Recipe,
    /// The recipe's class weights as the loss takes them (on the network's device).
    pub class_weights: Option<Tensor>,
    /// The trackers' state in the current fit.
    pub(super) tracker: TrackerState,
    /// Under `--save-best`: CPU copies of the best epoch's variables in the current fit.
    pub(super) best_weights: Option<Vec<(String, Tensor)>>,
    /// Every epoch row so far, over all fits.
    pub rows: Vec<EpochRow>,
    /// The last validation's confusion matrix (single-label; rows actual, columns predicted).
    pub confusion: Option<Vec<Vec<usize>>>,
    /// Hyper-parameters of every training batch, with the phase name of its fit.
    pub hypers: Vec<(String, BatchHypers)>,
    /// Set (e.g. by Ctrl-C) to stop after the current batch.
    pub stop: Arc<AtomicBool>,
    pub interrupted: bool,
    /// The state at the end of the last completed epoch (what `train --resume` continues from).
    pub last_checkpoint: Option<Checkpoint>,
    /// A checkpoint to continue from, applied when its fit starts (see [`Self::resume_from`]).
    pub(super) pending: Option<Checkpoint>,
    /// The caller's callbacks, after the recipe's at every event (see [`Self::add_callback`]).
    pub(super) callbacks: Vec<Box<dyn Callback<Learner>>>,
    pub(super) seed: u64,
    pub(super) rng: rand_chacha::ChaCha8Rng,
    /// Input statistics the pretrained weights expect (the arch's by default; a timm tag or a
    /// resumed bundle may set others). Recorded in the bundle, which predict and serve use.
    pub mean: [f64; 3],
    pub std: [f64; 3],
    /// `FINETUNE_PROFILE`: time every part of the loop (see [`PhaseTimes`]).
    pub(super) profile: bool,
    /// One process, or a replica of a data-parallel run (see [`Self::distribute`]).
    pub strategy: Box<dyn Strategy>,
    /// Why a data-parallel run stopped (a lost rank, diverged weights): training ends at once
    /// and the run reports it.
    pub dist_error: std::sync::Mutex<Option<DistError>>,
}

/// The data generator of a run with `seed` (shuffles, crops, augmentation and mixing draws); kept
/// apart from the split's, which uses `seed` itself.
pub fn data_rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_add(1))
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
    /// A learner that trains `net` on `dls` with `recipe`, drawing from `seed`.
    /// Refuses class weights that do not name exactly the data's classes.
    pub fn new(
        net: Network,
        dls: DataLoaders,
        recipe: Recipe,
        seed: u64,
    ) -> Result<Self, RecipeError> {
        let class_weights = recipe
            .class_weight_values(
                &dls.classes,
                &dls.class_counts(),
                dls.train.len(),
                dls.is_multi_label(),
            )?
            .map(|w| {
                Tensor::from_slice(&w)
                    .to_kind(tch::Kind::Float)
                    .to_device(net.device())
            });
        let adam = AdamConfig {
            wd: recipe.wd,
            ..Default::default()
        };
        let opt = Adam::new(opt_params(&net), adam);
        let net_stats = net.arch.normalization();
        let scaler = GradScaler::new(net.precision() == Precision::Fp16);
        Ok(Learner {
            net,
            dls,
            opt,
            scaler,
            recipe,
            class_weights,
            tracker: TrackerState::default(),
            best_weights: None,
            rows: Vec::new(),
            confusion: None,
            hypers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            interrupted: false,
            last_checkpoint: None,
            pending: None,
            callbacks: Vec::new(),
            seed,
            rng: data_rng(seed),
            mean: net_stats.0,
            std: net_stats.1,
            profile: std::env::var_os("FINETUNE_PROFILE").is_some_and(|v| !v.is_empty()),
            strategy: Box::new(Single),
            dist_error: std::sync::Mutex::new(None),
        })
    }

    /// Makes this learner one replica of a data-parallel run: every variable (parameters and
    /// BatchNorm statistics) becomes rank 0's, and from now on each epoch takes this rank's share
    /// of every global batch of `bs × world` images, averages gradients and sums metrics.
    pub fn distribute(&mut self, replica: Replica) -> Result<(), DistError> {
        let vars: Vec<Tensor> = self.vars();
        replica.broadcast_vars(&vars)?;
        self.strategy = Box::new(DataParallel(replica));
        Ok(())
    }

    /// Adds a callback, called at every event after the recipe's (fastai's `add_cb`).
    pub fn add_callback(&mut self, cb: impl Callback<Learner> + 'static) {
        self.callbacks.push(Box::new(cb));
    }

    /// Removes the callbacks the caller added.
    pub fn clear_callbacks(&mut self) {
        self.callbacks.clear();
    }

    /// Every variable of the network, in a fixed order (the same on every rank).
    pub(super) fn vars(&self) -> Vec<Tensor> {
        self.sorted_vars(|_| true)
    }

    /// The variables that are not parameters (BatchNorm's running statistics), in a fixed order.
    pub(super) fn buffers(&self) -> Vec<Tensor> {
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
        self.dls.cfg.bs * self.strategy.world()
    }

    /// The error that stopped a data-parallel run, if one did.
    pub fn dist_failure(&self) -> Option<DistError> {
        self.dist_error.lock().ok().and_then(|mut e| e.take())
    }

    pub(super) fn dist_failed(&self) -> bool {
        self.dist_error.lock().is_ok_and(|e| e.is_some())
    }

    pub(super) fn fail(&self, e: DistError) {
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
        self.strategy
            .epoch_order(&self.dls, &mut self.rng, self.recipe.balanced)
    }

    /// The generator of this epoch's crops, augmentation and mixing draws: the data RNG alone;
    /// data-parallel, one per (rank, phase, epoch), so ranks draw differently while the shared
    /// RNG, used only for the shuffle, stays the same on all of them (and resumes exactly).
    pub(super) fn draw_rng(&self, phase: &str, epoch: usize) -> Option<rand_chacha::ChaCha8Rng> {
        let seed = self
            .strategy
            .draw_seed(epoch_seed(self.seed, phase, epoch) as u64)?;
        Some(data_rng(seed))
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

    pub(super) fn n_groups(&self) -> usize {
        self.net.arch.n_groups()
    }

    /// A u8 NHWC batch as the network's normalised input, on its device, in its memory format.
    pub fn input(&self, batch_u8: &Tensor) -> Tensor {
        self.net.input(batch_u8, self.mean, self.std)
    }

    /// The validation loss (never mixed).
    pub(super) fn loss(&self, logits: &Tensor, y: &Tensor) -> Tensor {
        super::loss::loss(
            logits,
            y,
            self.recipe.label_smoothing,
            None,
            self.class_weights.as_ref(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{Mix, RngState};
    use crate::data::{DataConfig, ResizeMethod, Size};
    use crate::model::{Arch, MemoryFormat};
    use crate::train::SilentReport;
    use tch::Device;

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
        let dls = DataLoaders::from_folder(dir, cfg, &crate::data::Quiet).unwrap();
        let mut net = Network::classifier(Arch::Resnet18, 2, Device::Cpu);
        net.set_memory_format(format);
        let mut l = Learner::new(net, dls, Recipe::default(), 5).unwrap();
        l.recipe.augment = true;
        l.recipe.aug = Some(crate::data::augment::AugConfig::default());
        l.recipe.mix = Some(mix);
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

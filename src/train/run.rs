//! One `fine_tune` run from a data folder to a saved bundle. `finetune train` and the Python
//! package both go through here, so they refuse the same folders, save after every epoch, resume
//! the same way and write the same bundle.

use super::error::dp;
pub use super::error::{DisplayPath, RunError};
use super::fit::AfterEpoch;
pub use super::prepare::{load_run_inputs, Feedback, Pretrained};
use super::{Learner, Recipe, Report};
use crate::bundle::{self, DataInfo, FinalMetrics, ModelInfo, Normalization, TrainingInfo};
use crate::bundle::{Checkpoint, EpochRow};
use crate::data::items::SplitKind;
use crate::data::{CacheConfig, DataConfig};
use crate::model::{ArchSpec, Runtime};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// What a run trains with: from arguments ([`Plan::new`]), or from the bundle being resumed
/// ([`Plan::resume`]).
#[derive(Debug)]
pub struct Plan {
    pub data: PathBuf,
    pub out: PathBuf,
    pub arch: ArchSpec,
    pub pretrained: Pretrained,
    pub cfg: DataConfig,
    /// The on-disk image cache (default: [`CacheConfig::default_dir`]); `None` decodes every
    /// image into memory.
    pub cache: Option<CacheConfig>,
    pub recipe: Recipe,
    /// The bundle's record and checkpoint when resuming.
    pub resume: Option<(ModelInfo, Checkpoint)>,
    /// How many data-parallel processes run this plan (1 alone; see `train::distributed`).
    pub world: usize,
}

/// How a run starts: anew from its settings, or continuing an interrupted bundle.
// Made once per run and moved, never stored in bulk: boxing `New` would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Start {
    New {
        data: PathBuf,
        /// Default: [`default_out`].
        out: Option<PathBuf>,
        /// Replace a bundle already in `out`.
        force: bool,
        arch: ArchSpec,
        pretrained: Pretrained,
        cfg: DataConfig,
        recipe: Recipe,
    },
    /// The bundle in `dir`, with its data folder (the same files, moved) when given.
    Resume { dir: PathBuf, data: Option<PathBuf> },
}

/// `models/<data folder name>`, where a bundle goes when no `--out` is given.
pub fn default_out(data: &Path) -> PathBuf {
    PathBuf::from("models").join(
        data.file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "model".into()),
    )
}

impl Plan {
    /// The plan `start` asks for; `max_file_bytes` is this run's cap on one image file (not a
    /// property of the bundle).
    pub fn of(start: Start, max_file_bytes: u64) -> Result<Plan, RunError> {
        match start {
            Start::Resume { dir, data } => Plan::resume(&dir, data, max_file_bytes),
            Start::New {
                data,
                out,
                force,
                arch,
                pretrained,
                cfg,
                recipe,
            } => {
                let cfg = DataConfig {
                    max_file_bytes,
                    ..cfg
                };
                Plan::new(data, out, force, arch, pretrained, cfg, recipe)
            }
        }
    }

    /// A new run of `data` into `out` (default [`default_out`]); an existing bundle there is
    /// replaced only with `force`, and a folder holding anything else never.
    pub fn new(
        data: PathBuf,
        out: Option<PathBuf>,
        force: bool,
        arch: ArchSpec,
        pretrained: Pretrained,
        cfg: DataConfig,
        recipe: Recipe,
    ) -> Result<Plan, RunError> {
        cfg.validate()?;
        let multi = cfg.labels.as_ref().is_some_and(|l| l.label_delim.is_some());
        recipe.validate(multi)?;
        let out = out.unwrap_or_else(|| default_out(&data));
        if out.join(bundle::INFO_FILE).exists() && !force {
            return Err(RunError::Exists(dp(&out)));
        }
        bundle::check_out_dir(&out)?;
        Ok(Plan {
            data,
            out,
            arch,
            pretrained,
            cfg,
            cache: Some(CacheConfig::new(CacheConfig::default_dir())),
            recipe,
            resume: None,
            world: 1,
        })
    }

    /// The settings and checkpoint of an interrupted bundle; only the data folder may be given anew
    /// (the same files, moved).
    /// `max_file_bytes` is this run's (the cap is not a property of the bundle).
    pub fn resume(
        dir: &Path,
        data: Option<PathBuf>,
        max_file_bytes: u64,
    ) -> Result<Plan, RunError> {
        let info = bundle::read_info(dir)?;
        let (Some(t), Some(d)) = (info.training.clone(), info.data.clone()) else {
            return Err(RunError::NoRecord(dp(dir)));
        };
        let Some(ck) = bundle::read_checkpoint(dir)? else {
            return Err(RunError::NothingToResume {
                dir: dp(dir),
                why: if t.interrupted {
                    "it was stopped before its first epoch completed; train it again with --force"
                } else {
                    "its training finished"
                },
            });
        };
        let (valid_pct, labels) = match d.split {
            SplitKind::Random { valid_pct, .. } => (valid_pct, None),
            SplitKind::Folders { .. } => (0.2, None),
            SplitKind::Csv {
                labels, valid_pct, ..
            } => (valid_pct.unwrap_or(0.2), Some(labels)),
        };
        Ok(Plan {
            data: data.unwrap_or(d.source),
            out: dir.to_path_buf(),
            arch: info.arch.into(),
            pretrained: Pretrained::Random,
            cfg: DataConfig {
                size: info.size,
                method: info.resize,
                pad: info.pad_mode,
                bs: t.bs,
                valid_pct,
                seed: t.seed,
                strict: false,
                max_file_bytes,
                labels,
            },
            cache: Some(CacheConfig::new(CacheConfig::default_dir())),
            recipe: t.recipe,
            resume: Some((info, ck)),
            world: 1,
        })
    }

    /// The bundle's record of this run, as of now.
    fn model_info(
        &self,
        learn: &Learner,
        weights: &Option<PathBuf>,
        device: tch::Device,
        interrupted: bool,
        seconds: f64,
    ) -> ModelInfo {
        let last = bundle::kept_row(&learn.rows);
        let pretrained = match &self.resume {
            Some((info, _)) => info
                .training
                .as_ref()
                .and_then(|t| t.pretrained_weights.clone()),
            None => weights.as_ref().map(|w| w.display().to_string()),
        };
        ModelInfo {
            format_version: bundle::FORMAT_VERSION,
            finetune_version: env!("CARGO_PKG_VERSION").into(),
            arch: self.arch.arch,
            task: if learn.dls.is_multi_label() {
                bundle::Task::MultiLabel
            } else {
                bundle::Task::SingleLabel
            },
            classes: learn.dls.classes.clone(),
            size: learn.dls.cfg.size,
            resize: learn.dls.cfg.method,
            pad_mode: learn.dls.cfg.pad,
            normalization: Normalization {
                mean: learn.mean,
                std: learn.std,
            },
            calibration: None,
            unknown: None,
            training: Some(TrainingInfo {
                recipe: self.recipe.clone(),
                bs: learn.dls.cfg.bs,
                seed: self.cfg.seed,
                pretrained_weights: pretrained,
                device: crate::device::describe(device),
                precision: Some(learn.net.precision()),
                interrupted,
                seconds,
                distributed: learn.strategy.record(learn.global_bs()),
            }),
            data: Some(DataInfo {
                // Absolute, so `--resume` finds the data from any working folder.
                source: std::fs::canonicalize(&self.data).unwrap_or_else(|_| self.data.clone()),
                split: learn.dls.split.clone(),
                train_images: learn.dls.train.len(),
                valid_images: learn.dls.valid.len(),
                skipped_files: learn.dls.skipped.len(),
            }),
            metrics: last.map(|r| FinalMetrics {
                valid_loss: r.valid_loss,
                error_rate: r.error_rate,
                accuracy: r.accuracy,
                f1: r.f1,
            }),
        }
    }
}

/// A run with its data decoded and its network loaded, ready to train. Set `learn.stop` (e.g. from
/// a Ctrl-C handler) to end it after the current batch with a resumable bundle.
pub struct Session {
    pub learn: Learner,
    pub(super) plan: Rc<Plan>,
    weights: Option<PathBuf>,
    device: tch::Device,
}

/// How a run ended; the bundle in `out` holds the same.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub out: PathBuf,
    pub info: ModelInfo,
    /// Every epoch row, as in the bundle's `metrics.csv`.
    pub rows: Vec<EpochRow>,
    pub interrupted: bool,
    /// Whether the bundle holds a checkpoint that `train --resume` continues.
    pub resumable: bool,
    pub skipped_files: usize,
    /// This session's training time (without earlier sessions of a resumed run).
    pub seconds: f64,
    /// This process wrote the bundle and speaks for the run (always, but on the other ranks of
    /// a data-parallel run).
    pub leader: bool,
}

impl Session {
    /// Decodes the data, loads the pretrained body (or the checkpoint being resumed) and checks that
    /// resumed data is unchanged.
    /// `rt`: where and how to compute (a device alone: the `auto` memory format and precision).
    pub fn start(
        plan: Plan,
        rt: impl Into<Runtime>,
        fb: &mut Feedback,
    ) -> Result<Session, RunError> {
        let rt: Runtime = rt.into();
        let device = rt.device;
        let (net, dls, weights) = load_run_inputs(
            plan.arch,
            &plan.pretrained,
            &plan.data,
            plan.cfg.clone(),
            plan.cache.as_ref(),
            rt,
            fb,
        )?;
        if let Some((info, ck)) = &plan.resume {
            let then = info
                .training
                .as_ref()
                .and_then(|t| t.distributed)
                .map_or(1, |d| d.world_size);
            if then != plan.world {
                return Err(RunError::WorldChanged {
                    out: dp(&plan.out),
                    then,
                    now: plan.world,
                });
            }
            let d = info.data.as_ref();
            let same = info.classes == dls.classes
                && d.is_some_and(|d| {
                    d.train_images == dls.train.len() && d.valid_images == dls.valid.len()
                });
            if !same {
                return Err(RunError::DataChanged {
                    data: dp(&plan.data),
                    out: dp(&plan.out),
                    then_classes: info.classes.len(),
                    then_train: d.map_or(0, |d| d.train_images),
                    then_valid: d.map_or(0, |d| d.valid_images),
                    now_classes: dls.classes.len(),
                    now_train: dls.train.len(),
                    now_valid: dls.valid.len(),
                });
            }
            (fb.log)(&format!(
                "resuming {} after {} epoch(s) of its {} phase",
                plan.out.display(),
                ck.state.epochs_done,
                ck.state.phase
            ));
        }
        (fb.log)(&format!(
            "model: {} ({}), device {}, {}, {}",
            plan.arch,
            match (&plan.resume, &weights) {
                (Some(_), _) => "resumed checkpoint".to_string(),
                (None, Some(w)) => format!("pretrained {}", w.display()),
                (None, None) => "random init".into(),
            },
            crate::device::describe(device),
            net.memory_format(),
            net.precision()
        ));
        if let Some(w) = imbalance_warning(&dls, &plan.recipe) {
            (fb.log)(&w);
        }
        let mut learn = Learner::new(net, dls, plan.recipe.clone(), plan.cfg.seed)?;
        // The statistics the pretrained weights expect (a resumed run keeps its bundle's).
        (learn.mean, learn.std) = match &plan.resume {
            Some((info, _)) => (info.normalization.mean, info.normalization.std),
            None => plan.arch.normalization(),
        };
        if let Some((_, ck)) = &plan.resume {
            learn
                .resume_from(ck.clone())
                .map_err(|msg| RunError::Resume {
                    out: dp(&plan.out),
                    msg,
                })?;
        }
        Ok(Session {
            learn,
            plan: Rc::new(plan),
            weights,
            device,
        })
    }

    /// The flag that stops training after the current batch.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.learn.stop.clone()
    }

    /// fastai's `fine_tune`, saving the bundle (with its checkpoint) after every completed epoch,
    /// so a killed run loses at most the epoch in progress; then the final bundle.
    pub fn run(mut self, report: &mut dyn Report) -> Result<Outcome, RunError> {
        let t0 = std::time::Instant::now();
        let prior = self
            .plan
            .resume
            .as_ref()
            .and_then(|(i, _)| i.training.as_ref().map(|t| t.seconds))
            .unwrap_or(0.0);
        let (plan, weights, device) = (self.plan.clone(), self.weights.clone(), self.device);
        // Data-parallel, only rank 0 writes: the replicas hold the same model.
        let leader = self.learn.strategy.is_leader();
        self.learn
            .add_callback(AfterEpoch(move |l: &Learner, report: &mut dyn Report| {
                if !leader {
                    return;
                }
                let info = plan.model_info(
                    l,
                    &weights,
                    device,
                    true,
                    prior + t0.elapsed().as_secs_f64(),
                );
                if let Err(e) = bundle::save(
                    &plan.out,
                    &l.net,
                    &info,
                    &l.rows,
                    l.last_checkpoint.as_ref(),
                ) {
                    report.message(&format!(
                        "warning: could not save the epoch checkpoint ({e}); training goes on"
                    ));
                }
            }));
        let learn = &mut self.learn;
        learn.fine_tune(self.plan.recipe.fine_tune, report);
        learn.clear_callbacks();
        if let Some(e) = learn.dist_failure() {
            return Err(e.into());
        }
        let info = self.plan.model_info(
            learn,
            &self.weights,
            self.device,
            learn.interrupted,
            prior + t0.elapsed().as_secs_f64(),
        );
        let resume = if learn.interrupted {
            learn.last_checkpoint.as_ref()
        } else {
            None
        };
        if leader {
            bundle::save(&self.plan.out, &learn.net, &info, &learn.rows, resume)?;
        }
        Ok(Outcome {
            out: self.plan.out.clone(),
            info,
            rows: learn.rows.clone(),
            interrupted: learn.interrupted,
            resumable: resume.is_some(),
            skipped_files: learn.dls.skipped.len(),
            seconds: t0.elapsed().as_secs_f64(),
            leader,
        })
    }
}

/// Above this ratio of the largest class's training images to the smallest's, `train` says so.
pub const IMBALANCE_RATIO: f64 = 5.0;

/// A warning when the training set is skewed (the largest class over [`IMBALANCE_RATIO`] times
/// the smallest) and the recipe does nothing about it, naming the options.
pub fn imbalance_warning(dls: &crate::data::DataLoaders, recipe: &Recipe) -> Option<String> {
    if recipe.class_weights.is_some() || recipe.balanced {
        return None;
    }
    let counts = dls.class_counts();
    let (lo, hi) = (
        counts.iter().enumerate().min_by_key(|(_, &n)| n)?,
        counts.iter().enumerate().max_by_key(|(_, &n)| n)?,
    );
    if (*hi.1 as f64) <= IMBALANCE_RATIO * (*lo.1).max(1) as f64 {
        return None;
    }
    Some(format!(
        "warning: skewed classes: `{}` has {} training images, `{}` only {} (over {IMBALANCE_RATIO}x); \
         the model may rarely predict the small ones. Consider --class-weights auto (the loss \
         weighs classes by inverse frequency) or --balanced (each epoch draws classes equally); \
         evaluate reports balanced accuracy and macro F1",
        dls.classes[hi.0], hi.1, dls.classes[lo.0], lo.1
    ))
}

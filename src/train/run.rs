//! One `fine_tune` run from a data folder to a saved bundle. `finetune train` and the Python
//! package both go through here, so they refuse the same folders, save after every epoch, resume
//! the same way and write the same bundle.

use super::{AdamConfig, Learner, Report};
use crate::bundle::{
    self, BundleError, DataInfo, FinalMetrics, ModelInfo, Normalization, TrainingInfo,
};
use crate::bundle::{Checkpoint, EpochRow, FineTune, Mix, Tracking};
use crate::data::augment::AugConfig;
use crate::data::items::SplitKind;
use crate::data::{CacheConfig, DataConfig, DataError, DataLoaders};
use crate::model::registry::RegistryError;
use crate::model::weights::WeightsError;
use crate::model::{load_checkpoint, ArchSpec, Network, Part, Runtime};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0} already holds a model; pass --force to overwrite it, --resume {0} to continue it if it was interrupted, or choose another --out")]
    Exists(DisplayPath),
    #[error("a weights file and random initialisation exclude each other; pass one of them")]
    WeightsAndRandom,
    #[error("weights file {0} does not exist")]
    NoWeightsFile(DisplayPath),
    #[error("--size {w}x{h} is too small for {arch}: each side needs at least one 16-pixel patch")]
    TooSmallForVit { w: u32, h: u32, arch: ArchSpec },
    #[error("only {train} training images, fewer than one batch of {bs}; lower --bs")]
    TooFewImages { train: usize, bs: usize },
    #[error("{0} records no training run to resume")]
    NoRecord(DisplayPath),
    #[error("{dir} has nothing to resume: {why}")]
    NothingToResume { dir: DisplayPath, why: &'static str },
    #[error("the data in {data} changed since {out} was trained ({then_classes} classes, {then_train} train + {then_valid} valid images then; {now_classes} classes, {now_train} + {now_valid} now); resume needs the same files, or train anew with --force")]
    DataChanged {
        data: DisplayPath,
        out: DisplayPath,
        then_classes: usize,
        then_train: usize,
        then_valid: usize,
        now_classes: usize,
        now_train: usize,
        now_valid: usize,
    },
    #[error("{out}: {msg}")]
    Resume { out: DisplayPath, msg: String },
    #[error("--label-smoothing must be at least 0 and below 1 (fastai's eps; got {0})")]
    LabelSmoothing(f64),
    #[error(
        "--label-smoothing is for single-label models (fastai's LabelSmoothingCrossEntropy); with \
         --label-delim the loss is binary cross-entropy: drop one of them"
    )]
    SmoothingMultiLabel,
    #[error(transparent)]
    Mix(#[from] super::mix::MixError),
    #[error(transparent)]
    Augment(#[from] crate::data::augment::AugError),
    #[error("--early-stop must be at least 1 epoch")]
    Patience,
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    #[error("{out} was trained on {then} process(es) and this run has {now}: resume it with the same number (the batch each step sees, and so the schedule, depends on it)")]
    WorldChanged {
        out: DisplayPath,
        then: usize,
        now: usize,
    },
}

/// A path shown as `Path::display` shows it, so messages read as they did when the CLI built them.
#[derive(Debug, Clone)]
pub struct DisplayPath(pub PathBuf);

impl std::fmt::Display for DisplayPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.display().fmt(f)
    }
}

fn dp(p: &Path) -> DisplayPath {
    DisplayPath(p.to_path_buf())
}

/// Where the pretrained body comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Pretrained {
    /// The known ImageNet file for the architecture: from the cache, else downloaded.
    Known,
    File(PathBuf),
    /// Random weights (for tests; accuracy will be poor).
    Random,
}

impl Pretrained {
    /// From `--weights FILE` and `--random-init` (or the Python package's `weights=`,
    /// `random_init=`): at most one of them.
    pub fn choose(weights: Option<PathBuf>, random_init: bool) -> Result<Self, RunError> {
        match (weights, random_init) {
            (Some(_), true) => Err(RunError::WeightsAndRandom),
            (None, true) => Ok(Pretrained::Random),
            (Some(w), false) => Ok(Pretrained::File(w)),
            (None, false) => Ok(Pretrained::Known),
        }
    }

    /// The weights file, `None` for random weights; `progress` shows a download bar.
    pub fn resolve(&self, arch: ArchSpec, progress: bool) -> Result<Option<PathBuf>, RunError> {
        match self {
            Pretrained::Random => Ok(None),
            Pretrained::File(p) if p.is_file() => Ok(Some(p.clone())),
            Pretrained::File(p) => Err(RunError::NoWeightsFile(dp(p))),
            Pretrained::Known => Ok(Some(crate::model::registry::resolve(arch, progress)?)),
        }
    }
}

/// What a run shows while it gets ready.
pub struct Feedback<'a> {
    /// Advanced while images decode.
    pub bar: &'a indicatif::ProgressBar,
    /// Show a bar while pretrained weights download.
    pub download_bar: bool,
    /// Receives the summary lines (data, model, resuming).
    pub log: &'a mut dyn FnMut(&str),
}

/// Loads data (through the image cache `cache` when given) and a pretrained network ready for a
/// [`Learner`] (used by train and lr-find).
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    arch: ArchSpec,
    pretrained: &Pretrained,
    data: &Path,
    cfg: DataConfig,
    cache: Option<&CacheConfig>,
    rt: Runtime,
    fb: &mut Feedback,
) -> Result<(Network, DataLoaders, Option<PathBuf>), RunError> {
    cfg.validate()?;
    tch::manual_seed(cfg.seed as i64);
    // A ViT cuts the image into 16-pixel patches: a smaller side would leave no patch at all.
    if arch.arch.is_vit() && (cfg.size.w < 16 || cfg.size.h < 16) {
        return Err(RunError::TooSmallForVit {
            w: cfg.size.w,
            h: cfg.size.h,
            arch,
        });
    }
    let weights = pretrained.resolve(arch, fb.download_bar)?;
    let t0 = std::time::Instant::now();
    let dls = DataLoaders::from_folder_cached(data, cfg, cache, fb.bar)?;
    (fb.log)(&format!(
        "data: {} classes, {} train + {} valid images ({}), {} skipped, {} in {:.1}s",
        dls.classes.len(),
        dls.train.len(),
        dls.valid.len(),
        match &dls.split {
            SplitKind::Folders { .. } => "train/valid folders".to_string(),
            SplitKind::Random { valid_pct, seed } =>
                format!("random {:.0}% split, seed {seed}", valid_pct * 100.0),
            SplitKind::Csv {
                labels,
                valid_pct,
                seed,
            } => match (valid_pct, seed) {
                (Some(p), Some(s)) => format!(
                    "labels from {}, random {:.0}% split, seed {s}",
                    labels.path.display(),
                    p * 100.0
                ),
                _ => format!(
                    "labels from {}, valid rows by its `{}` column",
                    labels.path.display(),
                    labels.valid_col.as_deref().unwrap_or("")
                ),
            },
        },
        dls.skipped.len(),
        match &dls.cache {
            Some(c) => format!(
                "image cache {} ({} reused, {} decoded)",
                c.dir.display(),
                c.reused,
                c.decoded
            ),
            None => "decoded into memory".to_string(),
        },
        t0.elapsed().as_secs_f64()
    ));
    if dls.n_train_batches() == 0 {
        return Err(RunError::TooFewImages {
            train: dls.train.len(),
            bs: dls.cfg.bs,
        });
    }
    let net = Network::classifier(arch.arch, dls.classes.len() as i64, rt);
    if let Some(w) = &weights {
        load_checkpoint(&net, w, Part::Body)?;
    }
    Ok((net, dls, weights))
}

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
    pub ft: FineTune,
    pub wd: f64,
    pub label_smoothing: f64,
    pub augment: bool,
    pub aug: AugConfig,
    pub mix: Option<Mix>,
    pub tracking: Option<Tracking>,
    /// The bundle's record and checkpoint when resuming.
    pub resume: Option<(ModelInfo, Checkpoint)>,
    /// How many data-parallel processes run this plan (1 alone; see `train::distributed`).
    pub world: usize,
}

/// The settings of a new run (what `finetune train` takes on its command line).
#[derive(Debug, Clone)]
pub struct Settings {
    pub arch: ArchSpec,
    pub pretrained: Pretrained,
    pub cfg: DataConfig,
    pub ft: FineTune,
    pub wd: f64,
    pub label_smoothing: f64,
    pub augment: bool,
    /// `--augment`'s magnitudes (`--max-warp`, ...).
    pub aug: AugConfig,
    /// `--mixup` / `--cutmix`.
    pub mix: Option<Mix>,
    /// `--save-best` / `--early-stop`.
    pub tracking: Option<Tracking>,
}

impl Settings {
    /// The checks `Plan::new` makes, for callers that want them before anything else.
    pub fn validate(&self) -> Result<(), RunError> {
        self.cfg.validate()?;
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(RunError::LabelSmoothing(self.label_smoothing));
        }
        let multi = self
            .cfg
            .labels
            .as_ref()
            .is_some_and(|l| l.label_delim.is_some());
        if multi && self.label_smoothing > 0.0 {
            return Err(RunError::SmoothingMultiLabel);
        }
        if let Some(m) = &self.mix {
            super::mix::validate(m)?;
        }
        self.aug.validate()?;
        if self.tracking.is_some_and(|t| t.patience == Some(0)) {
            return Err(RunError::Patience);
        }
        Ok(())
    }
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
    /// A new run of `data` into `out` (default [`default_out`]); an existing bundle there is
    /// replaced only with `force`, and a folder holding anything else never.
    pub fn new(
        data: PathBuf,
        out: Option<PathBuf>,
        force: bool,
        s: Settings,
    ) -> Result<Plan, RunError> {
        s.validate()?;
        let out = out.unwrap_or_else(|| default_out(&data));
        if out.join(bundle::INFO_FILE).exists() && !force {
            return Err(RunError::Exists(dp(&out)));
        }
        bundle::check_out_dir(&out)?;
        Ok(Plan {
            data,
            out,
            arch: s.arch,
            pretrained: s.pretrained,
            cfg: s.cfg,
            cache: Some(CacheConfig::new(CacheConfig::default_dir())),
            ft: s.ft,
            wd: s.wd,
            label_smoothing: s.label_smoothing,
            augment: s.augment,
            aug: s.aug,
            mix: s.mix,
            tracking: s.tracking,
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
            ft: t.fine_tune,
            wd: t.wd,
            label_smoothing: t.label_smoothing,
            augment: t.augment,
            aug: t.augmentation(),
            mix: t.mix,
            tracking: t.tracking,
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
                fine_tune: self.ft,
                bs: learn.dls.cfg.bs,
                seed: self.cfg.seed,
                wd: self.wd,
                label_smoothing: self.label_smoothing,
                augment: self.augment,
                aug: self.augment.then_some(self.aug),
                mix: self.mix,
                tracking: self.tracking,
                pretrained_weights: pretrained,
                device: crate::device::describe(device),
                precision: Some(learn.net.precision()),
                interrupted,
                seconds,
                distributed: learn.replica.as_ref().map(|r| bundle::Distributed {
                    world_size: r.world(),
                    global_batch: learn.global_bs(),
                    dist_backend: r.group.backend,
                }),
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
        let (net, dls, weights) = prepare(
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
        let mut learn = Learner::new(
            net,
            dls,
            AdamConfig {
                wd: plan.wd,
                ..Default::default()
            },
            plan.cfg.seed,
        );
        // The statistics the pretrained weights expect (a resumed run keeps its bundle's).
        (learn.mean, learn.std) = match &plan.resume {
            Some((info, _)) => (info.normalization.mean, info.normalization.std),
            None => plan.arch.normalization(),
        };
        learn.label_smoothing = plan.label_smoothing;
        learn.augment = plan.augment;
        learn.aug_config = plan.aug;
        learn.mix = plan.mix;
        learn.tracking = plan.tracking;
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
        let leader = self.learn.replica.as_ref().is_none_or(|r| r.is_leader());
        self.learn.on_epoch_end = Some(Box::new(move |l, report| {
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
        learn.fine_tune(self.plan.ft, report);
        learn.on_epoch_end = None;
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
        })
    }
}

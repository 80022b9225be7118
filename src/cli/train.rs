use finetune::data::{DataConfig, DataLoaders, PadMode, ResizeMethod, Size};
use finetune::infer::bundle::{
    self, DataInfo, FinalMetrics, ModelInfo, Normalization, TrainingInfo,
};
use finetune::model::{load_checkpoint, Arch, Network, Part};
use finetune::train::FineTune;
use finetune::train::{AdamConfig, ConsoleReport, Learner};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder with one subfolder per class (or with train/ and valid/ subfolders). With --resume,
    /// the bundle's own data folder unless given.
    #[arg(required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Where the model bundle goes (default: models/<data folder name>).
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Overwrite an existing bundle in --out.
    #[arg(long)]
    force: bool,
    /// Continue an interrupted bundle (Ctrl-C or killed) from its last completed epoch, with the
    /// settings it was started with; the result equals an uninterrupted run.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data_opts: DataArgs,
    /// Unfrozen epochs of fine_tune.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 2e-3)]
    base_lr: f64,
    #[arg(long, default_value_t = 1)]
    freeze_epochs: usize,
    #[arg(long, default_value_t = 100.0)]
    lr_mult: f64,
    #[arg(long, default_value_t = 0.3)]
    pct_start: f64,
    #[arg(long, default_value_t = 5.0)]
    div: f64,
    /// Decoupled weight decay (none on BatchNorm parameters and biases).
    #[arg(long, default_value_t = 0.01)]
    wd: f64,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Augment training batches (fastai aug_transforms: flip, rotate ±10°, zoom 1-1.1, lighting 0.2).
    #[arg(long)]
    augment: bool,
    /// Only the epoch tables, no progress bars.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// resnet18/34/50/101/152, resnext50_32x4d, wide_resnet50_2 or mobilenet_v2.
    #[arg(long, default_value = "resnet18")]
    pub arch: Arch,
    /// Pretrained weights file; default: the known ImageNet file (cache or download).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Start from random weights instead of ImageNet ones (for testing; accuracy will be poor).
    #[arg(long, conflicts_with = "weights")]
    pub random_init: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// Image size: an integer or WxH.
    #[arg(long, default_value = "192")]
    pub size: Size,
    #[arg(long, value_enum, default_value_t = ResizeMethod::Squish)]
    pub resize: ResizeMethod,
    #[arg(long, value_enum, default_value_t = PadMode::Reflection)]
    pub pad_mode: PadMode,
    #[arg(long, default_value_t = 64)]
    pub bs: usize,
    /// Fraction held out for validation when there is no valid/ folder.
    #[arg(long, default_value_t = 0.2)]
    pub valid_pct: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Make any unreadable image an error instead of a skipped file.
    #[arg(long)]
    pub strict: bool,
}

impl DataArgs {
    pub fn config(&self) -> anyhow::Result<DataConfig> {
        anyhow::ensure!(self.bs >= 1, "--bs must be at least 1");
        Ok(DataConfig {
            size: self.size,
            method: self.resize,
            pad: self.pad_mode,
            bs: self.bs,
            valid_pct: self.valid_pct,
            seed: self.seed,
            strict: self.strict,
        })
    }
}

/// Loads data and a pretrained network ready for a Learner (shared by train and lr-find).
pub fn prepare(
    model: &ModelArgs,
    data: &std::path::Path,
    cfg: DataConfig,
    device: tch::Device,
    quiet: bool,
) -> anyhow::Result<(Network, DataLoaders, Option<PathBuf>)> {
    tch::manual_seed(cfg.seed as i64);
    let weights = if model.random_init {
        None
    } else {
        Some(super::weights_path(model.arch, model.weights.as_deref())?)
    };
    let bar = if quiet || !super::console::stderr_is_tty() {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "decoding images [{bar:30}] {pos}/{len} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    };
    let t0 = std::time::Instant::now();
    let dls = DataLoaders::from_folder(data, cfg, &bar)?;
    eprintln!(
        "data: {} classes, {} train + {} valid images ({}), {} skipped, decoded in {:.1}s",
        dls.classes.len(),
        dls.train.len(),
        dls.valid.len(),
        match &dls.split {
            finetune::data::items::SplitKind::Folders { .. } => "train/valid folders".to_string(),
            finetune::data::items::SplitKind::Random { valid_pct, seed } =>
                format!("random {:.0}% split, seed {seed}", valid_pct * 100.0),
        },
        dls.skipped.len(),
        t0.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        dls.n_train_batches() > 0,
        "only {} training images, fewer than one batch of {}; lower --bs",
        dls.train.len(),
        dls.cfg.bs
    );
    let net = Network::classifier(model.arch, dls.classes.len() as i64, device);
    if let Some(w) = &weights {
        load_checkpoint(&net, w, Part::Body)?;
    }
    Ok((net, dls, weights))
}

/// What a run trains with: from the command line, or from the bundle being resumed.
struct Plan {
    data: PathBuf,
    out: PathBuf,
    model: ModelArgs,
    cfg: DataConfig,
    ft: FineTune,
    wd: f64,
    label_smoothing: f64,
    augment: bool,
    /// The bundle's record and checkpoint when resuming.
    resume: Option<(ModelInfo, finetune::train::Checkpoint)>,
}

fn plan_from_args(a: &Args) -> anyhow::Result<Plan> {
    let data = a.data.clone().unwrap_or_default();
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("models").join(
            data.file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| "model".into()),
        )
    });
    if out.join("model.json").exists() && !a.force {
        anyhow::bail!(
            "{} already holds a model; pass --force to overwrite it, --resume {} to continue it if it was interrupted, or choose another --out",
            out.display(),
            out.display()
        );
    }
    bundle::check_out_dir(&out)?;
    Ok(Plan {
        data,
        out,
        model: a.model.clone(),
        cfg: a.data_opts.config()?,
        ft: FineTune {
            epochs: a.epochs,
            base_lr: a.base_lr,
            freeze_epochs: a.freeze_epochs,
            lr_mult: a.lr_mult,
            pct_start: a.pct_start,
            div: a.div,
        },
        wd: a.wd,
        label_smoothing: a.label_smoothing,
        augment: a.augment,
        resume: None,
    })
}

/// The settings and checkpoint of an interrupted bundle; only the data folder may be given anew
/// (the same files, moved).
fn plan_from_bundle(dir: &std::path::Path, data: Option<PathBuf>) -> anyhow::Result<Plan> {
    let info = bundle::read_info(dir)?;
    let (Some(t), Some(d)) = (info.training.clone(), info.data.clone()) else {
        anyhow::bail!("{} records no training run to resume", dir.display());
    };
    let Some(ck) = bundle::read_checkpoint(dir)? else {
        anyhow::bail!(
            "{} has nothing to resume: {}",
            dir.display(),
            if t.interrupted {
                "it was stopped before its first epoch completed; train it again with --force"
            } else {
                "its training finished"
            }
        );
    };
    let valid_pct = match d.split {
        finetune::data::items::SplitKind::Random { valid_pct, .. } => valid_pct,
        finetune::data::items::SplitKind::Folders { .. } => 0.2,
    };
    Ok(Plan {
        data: data.unwrap_or(d.source),
        out: dir.to_path_buf(),
        model: ModelArgs {
            arch: info.arch,
            weights: None,
            random_init: true,
        },
        cfg: DataConfig {
            size: info.size,
            method: info.resize,
            pad: info.pad_mode,
            bs: t.bs,
            valid_pct,
            seed: t.seed,
            strict: false,
        },
        ft: t.fine_tune,
        wd: t.wd,
        label_smoothing: t.label_smoothing,
        augment: t.augment,
        resume: Some((info, ck)),
    })
}

/// The bundle's record of this run, as of now.
fn model_info(
    p: &Plan,
    learn: &Learner,
    weights: &Option<PathBuf>,
    device: tch::Device,
    interrupted: bool,
    seconds: f64,
) -> ModelInfo {
    let last = learn.rows.last();
    let pretrained = match &p.resume {
        Some((info, _)) => info
            .training
            .as_ref()
            .and_then(|t| t.pretrained_weights.clone()),
        None => weights.as_ref().map(|w| w.display().to_string()),
    };
    ModelInfo {
        format_version: bundle::FORMAT_VERSION,
        finetune_version: env!("CARGO_PKG_VERSION").into(),
        arch: p.model.arch,
        classes: learn.dls.classes.clone(),
        size: learn.dls.cfg.size,
        resize: learn.dls.cfg.method,
        pad_mode: learn.dls.cfg.pad,
        normalization: Normalization {
            mean: finetune::data::tensor::IMAGENET_MEAN,
            std: finetune::data::tensor::IMAGENET_STD,
        },
        training: Some(TrainingInfo {
            fine_tune: p.ft,
            bs: learn.dls.cfg.bs,
            seed: p.cfg.seed,
            wd: p.wd,
            label_smoothing: p.label_smoothing,
            augment: p.augment,
            pretrained_weights: pretrained,
            device: finetune::device::describe(device),
            interrupted,
            seconds,
        }),
        data: Some(DataInfo {
            // Absolute, so `--resume` finds the data from any working folder.
            source: std::fs::canonicalize(&p.data).unwrap_or_else(|_| p.data.clone()),
            split: learn.dls.split.clone(),
            train_images: learn.dls.train.len(),
            valid_images: learn.dls.valid.len(),
            skipped_files: learn.dls.skipped.len(),
        }),
        metrics: last.map(|r| FinalMetrics {
            valid_loss: r.valid_loss,
            error_rate: r.error_rate,
            accuracy: r.accuracy,
        }),
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let device = a.compute.device()?;
    let plan = match &a.resume {
        Some(dir) => plan_from_bundle(dir, a.data.clone())?,
        None => plan_from_args(&a)?,
    };
    let (net, dls, weights) = prepare(&plan.model, &plan.data, plan.cfg.clone(), device, a.quiet)?;
    if let Some((info, ck)) = &plan.resume {
        let d = info.data.as_ref();
        anyhow::ensure!(
            info.classes == dls.classes
                && d.is_some_and(|d| d.train_images == dls.train.len()
                    && d.valid_images == dls.valid.len()),
            "the data in {} changed since {} was trained ({} classes, {} train + {} valid images then; {} classes, {} + {} now); resume needs the same files, or train anew with --force",
            plan.data.display(),
            plan.out.display(),
            info.classes.len(),
            d.map_or(0, |d| d.train_images),
            d.map_or(0, |d| d.valid_images),
            dls.classes.len(),
            dls.train.len(),
            dls.valid.len()
        );
        eprintln!(
            "resuming {} after {} epoch(s) of its {} phase",
            plan.out.display(),
            ck.state.epochs_done,
            ck.state.phase
        );
    }
    eprintln!(
        "model: {} ({}), device {}, {}",
        plan.model.arch,
        match (&plan.resume, &weights) {
            (Some(_), _) => "resumed checkpoint".to_string(),
            (None, Some(w)) => format!("pretrained {}", w.display()),
            (None, None) => "random init".into(),
        },
        finetune::device::describe(device),
        net.memory_format()
    );
    let mut learn = Learner::new(
        net,
        dls,
        AdamConfig {
            wd: plan.wd,
            ..Default::default()
        },
        plan.cfg.seed,
    );
    learn.label_smoothing = plan.label_smoothing;
    learn.augment = plan.augment;
    let plan = std::rc::Rc::new(plan);
    if let Some((_, ck)) = &plan.resume {
        learn
            .resume_from(ck.clone())
            .map_err(|e| anyhow::anyhow!("{}: {e}", plan.out.display()))?;
    }
    let stop = learn.stop.clone();
    let _ = ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!(
            "\nCtrl-C: finishing the current batch, then saving (press again to quit at once)"
        );
    });
    let t0 = std::time::Instant::now();
    let prior = plan
        .resume
        .as_ref()
        .and_then(|(i, _)| i.training.as_ref().map(|t| t.seconds))
        .unwrap_or(0.0);
    // After every completed epoch the bundle is saved with its checkpoint: a killed run loses at
    // most the epoch in progress and continues with --resume.
    let (hook_plan, hook_weights) = (plan.clone(), weights.clone());
    learn.on_epoch_end = Some(Box::new(move |l, report| {
        let info = model_info(
            &hook_plan,
            l,
            &hook_weights,
            device,
            true,
            prior + t0.elapsed().as_secs_f64(),
        );
        if let Err(e) = bundle::save(
            &hook_plan.out,
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
    let mut report = ConsoleReport::new(a.quiet);
    learn.fine_tune(plan.ft, &mut report);
    learn.on_epoch_end = None;
    let info = model_info(
        &plan,
        &learn,
        &weights,
        device,
        learn.interrupted,
        prior + t0.elapsed().as_secs_f64(),
    );
    let resume = if learn.interrupted {
        learn.last_checkpoint.as_ref()
    } else {
        None
    };
    bundle::save(&plan.out, &learn.net, &info, &learn.rows, resume)?;
    println!();
    if let Some(r) = learn.rows.last() {
        println!(
            "{}: valid error_rate {:.4} (accuracy {:.2}%) after {:.0}s; {} skipped file(s)",
            if learn.interrupted {
                "interrupted"
            } else {
                "done"
            },
            r.error_rate,
            r.accuracy * 100.0,
            t0.elapsed().as_secs_f64(),
            learn.dls.skipped.len()
        );
    }
    println!("model saved to {}", plan.out.display());
    if learn.interrupted && resume.is_some() {
        println!(
            "continue it with: finetune train --resume {}",
            plan.out.display()
        );
    }
    Ok(())
}

use finetune::data::{DataConfig, DataLoaders, PadMode, ResizeMethod, Size};
use finetune::infer::bundle::{
    self, DataInfo, FinalMetrics, ModelInfo, Normalization, TrainingInfo,
};
use finetune::model::{load_checkpoint, Arch, Network, Part};
use finetune::train::{AdamConfig, ConsoleReport, FineTune, Learner};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder with one subfolder per class (or with train/ and valid/ subfolders).
    data: PathBuf,
    /// Where the model bundle goes (default: models/<data folder name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overwrite an existing bundle in --out.
    #[arg(long)]
    force: bool,
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
    /// resnet18, resnet34, resnet50 or mobilenet_v2.
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

pub fn run(a: Args) -> anyhow::Result<()> {
    let device = a.compute.device()?;
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("models").join(
            a.data
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| "model".into()),
        )
    });
    if out.join("model.json").exists() && !a.force {
        anyhow::bail!(
            "{} already holds a model; pass --force to overwrite it or choose another --out",
            out.display()
        );
    }
    let cfg = a.data_opts.config()?;
    let (net, dls, weights) = prepare(&a.model, &a.data, cfg, device, a.quiet)?;
    eprintln!(
        "model: {} ({}), device {}",
        a.model.arch,
        weights
            .as_ref()
            .map(|w| format!("pretrained {}", w.display()))
            .unwrap_or_else(|| "random init".into()),
        finetune::device::describe(device)
    );
    let mut learn = Learner::new(
        net,
        dls,
        AdamConfig {
            wd: a.wd,
            ..Default::default()
        },
        a.data_opts.seed,
    );
    learn.label_smoothing = a.label_smoothing;
    learn.augment = a.augment;
    let stop = learn.stop.clone();
    let _ = ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!(
            "\nCtrl-C: finishing the current batch, then saving (press again to quit at once)"
        );
    });
    let ft = FineTune {
        epochs: a.epochs,
        base_lr: a.base_lr,
        freeze_epochs: a.freeze_epochs,
        lr_mult: a.lr_mult,
        pct_start: a.pct_start,
        div: a.div,
    };
    let t0 = std::time::Instant::now();
    let mut report = ConsoleReport::new(a.quiet);
    learn.fine_tune(ft, &mut report);
    let last = learn.rows.last().cloned();
    let info = ModelInfo {
        format_version: bundle::FORMAT_VERSION,
        finetune_version: env!("CARGO_PKG_VERSION").into(),
        arch: a.model.arch,
        classes: learn.dls.classes.clone(),
        size: learn.dls.cfg.size,
        resize: learn.dls.cfg.method,
        pad_mode: learn.dls.cfg.pad,
        normalization: Normalization {
            mean: finetune::data::tensor::IMAGENET_MEAN,
            std: finetune::data::tensor::IMAGENET_STD,
        },
        training: Some(TrainingInfo {
            fine_tune: ft,
            bs: learn.dls.cfg.bs,
            seed: a.data_opts.seed,
            wd: a.wd,
            label_smoothing: a.label_smoothing,
            augment: a.augment,
            pretrained_weights: weights.map(|w| w.display().to_string()),
            device: finetune::device::describe(device),
            interrupted: learn.interrupted,
            seconds: t0.elapsed().as_secs_f64(),
        }),
        data: Some(DataInfo {
            source: a.data.clone(),
            split: learn.dls.split.clone(),
            train_images: learn.dls.train.len(),
            valid_images: learn.dls.valid.len(),
            skipped_files: learn.dls.skipped.len(),
        }),
        metrics: last.as_ref().map(|r| FinalMetrics {
            valid_loss: r.valid_loss,
            error_rate: r.error_rate,
            accuracy: r.accuracy,
        }),
    };
    bundle::save(&out, &learn.net, &info, &learn.rows)?;
    println!();
    if let Some(r) = last {
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
    println!("model saved to {}", out.display());
    Ok(())
}

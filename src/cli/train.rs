use finetune::bundle::{Mix, Monitor, Tracking};
use finetune::data::{DataConfig, DataLoaders, PadMode, ResizeMethod, Size};
use finetune::model::{ArchSpec, Network};
use finetune::train::distributed::DistOptions;
use finetune::train::run::{self, Feedback, Pretrained, Start};
use finetune::train::{launch, ConsoleReport, FineTune, Recipe, Report, Request};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Only the epoch tables, no progress bars.
    #[arg(long, short)]
    quiet: bool,
    /// The "unknown" answer: fit it at the end of training with a threshold that accepts this
    /// share of the validation images (0.95 by default), or `off` for none.
    #[arg(long, value_name = "SHARE|off")]
    unknown: Option<finetune::infer::trust::Accept>,
    #[command(flatten)]
    compute: super::ComputeArgs,
    /// Under torchrun: the c10d backend (auto: NCCL on CUDA when built in, else Gloo).
    #[arg(long, default_value = "auto", value_parser = ["auto", "gloo", "nccl"])]
    dist_backend: String,
    /// Under torchrun: seconds any rank waits for the others (joining, each collective) before
    /// it stops with an error naming the lost rank.
    #[arg(long, value_name = "SECONDS", default_value_t = finetune::dist::DEFAULT_TIMEOUT_S)]
    dist_timeout: u64,
    /// Write TensorBoard event files into this folder as training runs: per step the loss and
    /// learning rate, per epoch the table's columns, the first batch and the confusion matrix
    /// as images, the run's settings as hparams (`tensorboard --logdir DIR` shows them).
    #[arg(long, value_name = "DIR")]
    tensorboard: Option<PathBuf>,
    /// Log the run to this MLflow tracking server (e.g. http://127.0.0.1:5000): the settings as
    /// parameters, per step and per epoch the metrics, the bundle's path as a tag; the
    /// experiment is $MLFLOW_EXPERIMENT_NAME's (made if missing), else the Default one.
    #[arg(long, value_name = "URI")]
    mlflow: Option<String>,
}

/// The training recipe's flags, one per [`Recipe`] field; their defaults are [`Recipe::FASTAI`]'s.
#[derive(clap::Args, Debug)]
pub struct RecipeArgs {
    /// Unfrozen epochs of fine_tune.
    #[arg(long, default_value_t = FASTAI.fine_tune.epochs)]
    epochs: usize,
    #[arg(long, default_value_t = FASTAI.fine_tune.base_lr)]
    base_lr: f64,
    #[arg(long, default_value_t = FASTAI.fine_tune.freeze_epochs)]
    freeze_epochs: usize,
    #[arg(long, default_value_t = FASTAI.fine_tune.lr_mult)]
    lr_mult: f64,
    #[arg(long, default_value_t = FASTAI.fine_tune.pct_start)]
    pct_start: f64,
    #[arg(long, default_value_t = FASTAI.fine_tune.div)]
    div: f64,
    /// Decoupled weight decay (none on BatchNorm parameters and biases).
    #[arg(long, default_value_t = FASTAI.wd)]
    wd: f64,
    /// fastai's LabelSmoothingCrossEntropyFlat(eps): the target gets 1 − eps + eps/C, every other
    /// class eps/C (fastai's lessons use 0.1).
    #[arg(long, default_value_t = FASTAI.label_smoothing, allow_negative_numbers = true)]
    label_smoothing: f64,
    #[command(flatten)]
    aug: AugArgs,
    /// fastai's MixUp(alpha): blend each training image and its label with a shuffled partner,
    /// λ ~ Beta(alpha, alpha) per image, kept ≥ 0.5 (fastai's default alpha: 0.4).
    #[arg(
        long,
        value_name = "ALPHA",
        conflicts_with = "cutmix",
        allow_negative_numbers = true
    )]
    mixup: Option<f64>,
    /// fastai's CutMix(alpha): paste a box of a shuffled partner into each training image, labels
    /// weighted by area, λ ~ Beta(alpha, alpha) per batch (fastai's default alpha: 1.0).
    #[arg(long, value_name = "ALPHA", allow_negative_numbers = true)]
    cutmix: Option<f64>,
    /// fastai's SaveModelCallback: each fit (frozen, unfrozen) ends with the weights of its best
    /// epoch by MONITOR (valid_loss when not given; or error_rate); metrics.csv's `best` column
    /// marks them.
    #[arg(long, value_name = "MONITOR", num_args = 0..=1, default_missing_value = "valid_loss")]
    save_best: Option<Monitor>,
    /// fastai's EarlyStoppingCallback: stop a fit after PATIENCE epochs without improvement of the
    /// --save-best monitor (valid_loss by default).
    #[arg(long, value_name = "PATIENCE")]
    early_stop: Option<usize>,
    /// Weigh each class's loss: `auto` (inverse class frequency, the average training image
    /// weighing 1; multi-label: each label's positive weight, images without it over images
    /// with it) or a CSV of `class,weight` rows. For skewed classes.
    #[arg(long, value_name = "auto|CSV")]
    class_weights: Option<String>,
    /// Draw classes equally each epoch (fastai's WeightedDL with 1/class-size weights, with
    /// replacement). For skewed classes.
    #[arg(long)]
    balanced: bool,
}

const FASTAI: Recipe = Recipe::FASTAI;

impl RecipeArgs {
    pub fn recipe(&self) -> Result<Recipe, finetune::train::RecipeError> {
        Ok(Recipe {
            fine_tune: FineTune {
                epochs: self.epochs,
                base_lr: self.base_lr,
                freeze_epochs: self.freeze_epochs,
                lr_mult: self.lr_mult,
                pct_start: self.pct_start,
                div: self.div,
            },
            wd: self.wd,
            label_smoothing: self.label_smoothing,
            augment: self.aug.augment,
            aug: self.aug.augment.then(|| self.aug.config()),
            mix: self.mixup.map(Mix::Mixup).or(self.cutmix.map(Mix::Cutmix)),
            tracking: Tracking::of(self.save_best, self.early_stop),
            class_weights: self
                .class_weights
                .as_deref()
                .map(finetune::bundle::ClassWeights::parse)
                .transpose()?,
            balanced: self.balanced,
        })
    }
}

/// `--augment` and its magnitudes, for train and show-batch.
#[derive(clap::Args, Debug, Clone)]
pub struct AugArgs {
    /// Augment training batches (fastai's aug_transforms: flip, perspective warp 0.2, rotate ±10°,
    /// zoom 1–1.1, lighting 0.2; each magnitude below).
    #[arg(long)]
    pub augment: bool,
    /// Perspective warp magnitude (fastai's max_warp; 0 = none; at most 0.3).
    #[arg(long, default_value_t = 0.2, requires = "augment")]
    pub max_warp: f64,
    /// Rotation range in degrees (max_rotate).
    #[arg(long, default_value_t = 10.0, requires = "augment")]
    pub max_rotate: f64,
    /// Largest zoom (max_zoom; 1 = none).
    #[arg(long, default_value_t = 1.1, requires = "augment")]
    pub max_zoom: f64,
    /// Brightness and contrast change (max_lighting; 0 = none).
    #[arg(long, default_value_t = 0.2, requires = "augment")]
    pub max_lighting: f64,
    /// Probability of each of warp, rotation and zoom per image (p_affine).
    #[arg(long, default_value_t = 0.75, requires = "augment")]
    pub p_affine: f64,
    /// Probability of each of brightness and contrast per image (p_lighting).
    #[arg(long, default_value_t = 0.75, requires = "augment")]
    pub p_lighting: f64,
}

impl AugArgs {
    pub fn config(&self) -> finetune::data::augment::AugConfig {
        finetune::data::augment::AugConfig {
            p_affine: self.p_affine,
            p_lighting: self.p_lighting,
            max_rotate: self.max_rotate,
            max_zoom: self.max_zoom,
            max_lighting: self.max_lighting,
            max_warp: self.max_warp,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// resnet18/34/50/101/152, resnext50_32x4d, wide_resnet50_2, mobilenet_v2,
    /// mobilenet_v3_small/large, efficientnet_b0..b3, efficientnet_v2_s, efficientnet_lite0,
    /// mobilenetv3_small_100/large_100, tf_efficientnetv2_s, regnet_y_400mf/800mf/1_6gf,
    /// regnet_x_400mf, convnext_tiny/small, vit_b_16, vit_s_16, or timm:NAME[.TAG] (a timm
    /// checkpoint: its hub file and input statistics; see `finetune weights list`).
    #[arg(long, default_value = "resnet18")]
    pub arch: ArchSpec,
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
    #[arg(long, value_parser = super::names::<ResizeMethod>(ResizeMethod::NAMES), default_value = "squish")]
    pub resize: ResizeMethod,
    #[arg(long, value_parser = super::names::<PadMode>(PadMode::NAMES), default_value = "reflection")]
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
    /// Where decoded, resized images are cached between runs (default: the finetune cache
    /// folder's images/, e.g. ~/.cache/finetune/images).
    #[arg(long, env = "FINETUNE_IMAGE_CACHE", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Decode every image into memory on each run, without the on-disk cache.
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub labels: LabelsArgs,
}

/// Labels from a CSV (fastai's `ImageDataLoaders.from_csv`), for train, lr-find and evaluate.
#[derive(clap::Args, Debug, Clone)]
pub struct LabelsArgs {
    /// A CSV with one row per image (a header row first): the file (relative to the image folder)
    /// and its label, instead of one folder per class.
    #[arg(long, value_name = "CSV")]
    pub labels: Option<PathBuf>,
    /// The file column: a header name or a 0-based position (fastai's fn_col).
    #[arg(long, default_value = "0", requires = "labels")]
    pub fn_col: String,
    /// The label column: a header name or a 0-based position (label_col).
    #[arg(long, default_value = "1", requires = "labels")]
    pub label_col: String,
    /// A column marking validation rows with true/1 (valid_col, fastai's ColSplitter); without it
    /// the seeded random split (--valid-pct, --seed).
    #[arg(long, requires = "labels")]
    pub valid_col: Option<String>,
    /// Multi-label (fastai's label_delim): each label cell is a set of labels separated by this
    /// (e.g. " "); trains one sigmoid per label with binary cross-entropy.
    #[arg(long, requires = "labels", value_name = "DELIM")]
    pub label_delim: Option<String>,
}

impl LabelsArgs {
    pub fn csv(&self) -> Option<finetune::data::labels::LabelsCsv> {
        self.labels
            .as_ref()
            .map(|p| finetune::data::labels::LabelsCsv {
                path: p.clone(),
                fn_col: self.fn_col.clone(),
                label_col: self.label_col.clone(),
                valid_col: self.valid_col.clone(),
                label_delim: self.label_delim.clone(),
            })
    }
}

impl DataArgs {
    /// Checked where it is used (`DataConfig::validate`), for the CLI and Python alike.
    pub fn config(&self, max_file_bytes: u64) -> DataConfig {
        DataConfig {
            size: self.size,
            method: self.resize,
            pad: self.pad_mode,
            bs: self.bs,
            valid_pct: self.valid_pct,
            seed: self.seed,
            strict: self.strict,
            max_file_bytes,
            labels: self.labels.csv(),
        }
    }

    /// The image cache to use, `None` with --no-cache.
    pub fn cache(&self) -> Option<finetune::data::CacheConfig> {
        (!self.no_cache).then(|| {
            finetune::data::CacheConfig::new(
                self.cache_dir
                    .clone()
                    .unwrap_or_else(finetune::data::CacheConfig::default_dir),
            )
        })
    }
}

impl ModelArgs {
    pub fn pretrained(&self) -> Result<Pretrained, run::RunError> {
        Pretrained::choose(self.weights.clone(), self.random_init)
    }
}

/// Loads data and a pretrained network ready for a Learner (shared by train and lr-find).
pub fn load_inputs(
    model: &ModelArgs,
    data: &std::path::Path,
    cfg: DataConfig,
    cache: Option<&finetune::data::CacheConfig>,
    rt: finetune::model::Runtime,
    quiet: bool,
) -> anyhow::Result<(Network, DataLoaders, Option<PathBuf>)> {
    let mut report = ConsoleReport::new(quiet);
    Ok(run::load_run_inputs(
        model.arch,
        &model.pretrained()?,
        data,
        cfg,
        cache,
        rt,
        &mut Feedback {
            progress: report.data_progress().as_ref(),
            download_bar: report.interactive(),
            log: &mut |m| eprintln!("{m}"),
        },
    )?)
}

/// `max_file_bytes`: the global `--max-file-mb`.
pub fn run(a: Args, max_file_bytes: u64) -> anyhow::Result<()> {
    let start = match &a.resume {
        Some(dir) => Start::Resume {
            dir: dir.clone(),
            data: a.data.clone(),
        },
        None => Start::New {
            data: a.data.clone().unwrap_or_default(),
            out: a.out.clone(),
            force: a.force,
            arch: a.model.arch,
            pretrained: a.model.pretrained()?,
            cfg: a.data_opts.config(max_file_bytes),
            recipe: a.recipe.recipe()?,
        },
    };
    let rt = a.compute.runtime()?;
    let mut report = ConsoleReport::new(a.quiet);
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, training) = (stop.clone(), report.training());
    let _ = ctrlc::set_handler(move || {
        // Before training, nothing is worth saving: end at once, as the default handler would.
        if !training.load(Ordering::SeqCst) || flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!(
            "\nCtrl-C: finishing the current batch, then saving (press again to quit at once)"
        );
    });
    let o = launch(
        Request {
            start,
            cache: a.data_opts.cache(),
            max_file_bytes,
            runtime: rt,
            dist: DistOptions {
                backend: a.dist_backend.clone(),
                timeout: std::time::Duration::from_secs(a.dist_timeout.max(1)),
            },
            stop,
            tensorboard: a.tensorboard.clone(),
            mlflow: a.mlflow.clone(),
        },
        &mut report,
    )?;
    if !o.leader {
        return Ok(());
    }
    println!();
    if let Some(r) = finetune::bundle::kept_row(&o.rows) {
        println!(
            "{}: valid error_rate {:.4} (accuracy {:.2}%) after {:.0}s; {} skipped file(s)",
            if o.interrupted { "interrupted" } else { "done" },
            r.error_rate,
            r.accuracy * 100.0,
            o.seconds,
            o.skipped_files
        );
    }
    println!("model saved to {}", o.out.display());
    if !o.interrupted {
        let fit = finetune::infer::trust::FitOptions {
            accept: a
                .unknown
                .map_or(Some(finetune::infer::trust::DEFAULT_ACCEPT), |u| u.0),
            max_file_bytes,
            after_training: true,
            ..Default::default()
        };
        super::calibrate::fit_and_report(&o.out, None, rt, &fit, false)?;
    }
    if o.interrupted && o.resumable {
        println!(
            "continue it with: finetune train --resume {}",
            o.out.display()
        );
    }
    Ok(())
}

//! The command line: a thin layer over the library.

mod cache;
mod calibrate;
mod clean;
mod download;
mod embed;
mod evaluate;
mod export;
mod imagenet;
mod interpret;
mod lr_find;
mod predict;
mod quickstart;
mod serve;
mod show_batch;
mod similar;
mod train;
pub mod version;
mod weights;

use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand};

/// A flag whose values are a library type's names (its `FromStr`), listed in `--help` and in
/// clap's error: the library's choice types stay free of clap.
pub fn names<T>(names: &'static [&'static str]) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    clap::builder::PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}

#[derive(Parser, Debug)]
#[command(
    name = "finetune",
    version,
    about = "Fine-tune an ImageNet-pretrained network into an image classifier"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Largest image file any command reads, in MB; bigger files are skipped with a warning.
    #[arg(
        long,
        global = true,
        env = "FINETUNE_MAX_FILE_MB",
        default_value_t = 64
    )]
    pub max_file_mb: u64,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build a dataset from search terms: search, download, resize, verify, de-duplicate, split.
    Download(download::Args),
    /// Download 10 animals, fetch resnet18, fine-tune and evaluate, in one command (needs the internet).
    Quickstart(quickstart::Args),
    /// Fine-tune a pretrained network on a folder of images (fastai's fine_tune).
    Train(Box<train::Args>),
    /// Fit a model's calibration and "unknown" answer on the data it was trained on (done by
    /// `train` already; for bundles made before, or another acceptance share).
    Calibrate(calibrate::Args),
    /// Test accuracy, per-class report and confusion matrix of a model on a labelled folder.
    Evaluate(evaluate::Args),
    /// An HTML report of what a model gets wrong: top losses as images, confusion matrix, per class.
    Interpret(interpret::Args),
    /// Sweep learning rates (fastai lr_find) and suggest one (valley).
    LrFind(lr_find::Args),
    /// Show a grid of training images as the network will see them (fastai's show_batch).
    ShowBatch(show_batch::Args),
    /// A local web page to delete or relabel images, worst losses first (fastai's ImageClassifierCleaner).
    Clean(clean::Args),
    /// Predict the class of images with a trained model.
    Predict(predict::Args),
    /// Write the embeddings of images (the network's features before its head) as .npy + .csv.
    Embed(embed::Args),
    /// List the images that look most like a query image (cosine similarity of embeddings).
    Similar(similar::Args),
    /// Classify images into the 1000 ImageNet classes with a pretrained checkpoint (top-5).
    ClassifyImagenet(imagenet::Args),
    /// Export a model bundle to another format (ONNX) for other runtimes.
    Export(export::Args),
    /// Serve models over HTTP (predictions, model cards, metrics) with dynamic batching.
    Serve(serve::Args),
    /// List or download known pretrained weights.
    #[command(subcommand)]
    Weights(weights::Cmd),
    /// Show or clear the on-disk cache of decoded images.
    #[command(subcommand)]
    Cache(cache::Cmd),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // Passed to every command that reads image files (never a process-wide setting).
    let cap = finetune::data::files::mb_cap(cli.max_file_mb);
    match cli.command {
        Command::Download(a) => download::run(a).map(|_| ()),
        Command::Quickstart(a) => quickstart::run(a),
        Command::Train(a) => train::run(*a, cap),
        Command::Calibrate(a) => calibrate::run(a, cap),
        Command::Evaluate(a) => evaluate::run(a, cap),
        Command::Interpret(a) => interpret::run(a, cap),
        Command::Clean(a) => clean::run(a, cap),
        Command::Predict(a) => predict::run(a, cap),
        Command::Embed(a) => embed::run(a, cap),
        Command::Similar(a) => similar::run(a, cap),
        Command::LrFind(a) => lr_find::run(a, cap),
        Command::ShowBatch(a) => show_batch::run(a, cap),
        Command::ClassifyImagenet(a) => imagenet::run(a, cap),
        Command::Serve(a) => serve::run(a),
        Command::Export(a) => export::run(a),
        Command::Weights(c) => weights::run(c),
        Command::Cache(c) => cache::run(c),
    }
}

/// Runs an argument vector through the same parser, so composite commands reuse the real ones.
pub fn run_argv(argv: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    run(Cli::try_parse_from(argv)?)
}

/// Options shared by every command that computes.
#[derive(clap::Args, Debug, Clone)]
pub struct ComputeArgs {
    /// auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Memory format of activations and convolution weights: nhwc (channels-last), nchw, or auto
    /// (per device and architecture, from measurements). Files are written NCHW either way.
    #[arg(
        long,
        value_parser = names::<finetune::model::FormatChoice>(finetune::model::FormatChoice::NAMES),
        env = "FINETUNE_MEMORY_FORMAT",
        default_value = "auto"
    )]
    pub memory_format: finetune::model::FormatChoice,
    /// Numeric precision: fp32, bf16 or fp16 mixed precision (autocast; fp16 adds loss scaling),
    /// or auto (bf16 on GPUs with bf16 tensor cores, fp16 on older GPUs, fp32 on the CPU).
    #[arg(
        long,
        value_parser = names::<finetune::model::PrecisionChoice>(finetune::model::PrecisionChoice::NAMES),
        env = "FINETUNE_PRECISION",
        default_value = "auto"
    )]
    pub precision: finetune::model::PrecisionChoice,
}

impl ComputeArgs {
    /// Where and how networks compute, passed to whatever builds one. The thread count is
    /// libtorch's own process-wide setting, so it is set here, once.
    pub fn runtime(&self) -> anyhow::Result<finetune::model::Runtime> {
        if let Some(t) = self.threads {
            tch::set_num_threads(t.max(1));
        }
        Ok(finetune::model::Runtime {
            device: finetune::device::select(&self.device)?,
            memory_format: self.memory_format,
            precision: self.precision,
        })
    }
}

/// The weights file for `arch`: `--weights`, else the cache, else a download.
pub fn weights_path(
    arch: impl Into<finetune::model::ArchSpec>,
    explicit: Option<&std::path::Path>,
) -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = explicit {
        anyhow::ensure!(p.is_file(), "weights file {} does not exist", p.display());
        return Ok(p.to_path_buf());
    }
    Ok(finetune::model::registry::resolve(
        arch,
        console::stderr_is_tty(),
    )?)
}

pub mod console {
    use std::io::IsTerminal;
    pub fn stderr_is_tty() -> bool {
        std::io::stderr().is_terminal()
    }
}

/// Test-time augmentation (fastai's `Learner.tta`), for evaluate and predict.
#[derive(clap::Args, Debug, Clone)]
pub struct TtaArgs {
    /// Average the predictions of the training transforms (random crop window; with a model trained
    /// with --augment, flip, rotation, zoom and lighting) with the plain one, as fastai's `tta`.
    #[arg(long)]
    pub tta: bool,
    /// Augmented passes (fastai's `n`).
    #[arg(long, default_value_t = 4, requires = "tta")]
    pub tta_n: usize,
    /// Weight of the plain prediction (fastai's `beta`): (1 − beta)·mean(passes) + beta·plain.
    #[arg(long, default_value_t = 0.25, requires = "tta")]
    pub tta_beta: f64,
    /// Seeds the passes' random draws (the same seed gives the same probabilities).
    #[arg(long, default_value_t = 42, requires = "tta")]
    pub tta_seed: u64,
}

impl TtaArgs {
    /// With the global `--max-file-mb` cap: the inference options of evaluate and predict.
    pub fn options(
        &self,
        max_file_bytes: u64,
    ) -> anyhow::Result<finetune::infer::predict::Options> {
        let tta = self.tta.then_some(finetune::infer::tta::Tta {
            n: self.tta_n,
            beta: self.tta_beta,
            seed: self.tta_seed,
        });
        if let Some(t) = &tta {
            t.validate()?;
        }
        Ok(finetune::infer::predict::Options {
            max_file_bytes,
            tta,
        })
    }
}

/// How far to trust an answer, for every command that predicts: calibrated probabilities (the
/// default) or the raw softmax, and the "unknown" answer's acceptance share.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrustArgs {
    /// Print the raw softmax instead of the calibrated probabilities (the model's temperature
    /// ignored). Never changes a predicted class.
    #[arg(long)]
    pub raw_probs: bool,
    /// The "unknown" answer: the share of validation images the threshold accepts (default: the
    /// share the model was calibrated with, 0.95), or `off` to always answer a class.
    #[arg(long, value_name = "SHARE|off")]
    pub unknown: Option<finetune::infer::trust::Accept>,
}

impl TrustArgs {
    pub fn apply(&self, b: &mut finetune::bundle::Bundle) {
        b.calibrated = !self.raw_probs;
        if let Some(accept) = self.unknown {
            b.set_accept(accept.0);
        }
    }
}

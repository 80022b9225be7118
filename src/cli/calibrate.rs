use finetune::infer::trust::{self, Accept, FitOptions, Fitted};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model bundle folder (from `finetune train --out`).
    model: PathBuf,
    /// The folder the model was trained on (default: the one its model.json records); its
    /// recorded split is rebuilt: the temperature and threshold are fitted on the validation
    /// images, the distance statistics on the training images.
    data: Option<PathBuf>,
    /// The share of validation images the "unknown" threshold accepts, or `off`.
    #[arg(long, value_name = "SHARE|off", default_value = "0.95")]
    unknown: Accept,
    /// The neighbour whose distance the k-NN score takes.
    #[arg(long, default_value_t = trust::scores::DEFAULT_K)]
    k: usize,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

pub fn run(a: Args, max_file_bytes: u64) -> anyhow::Result<()> {
    anyhow::ensure!(a.k >= 1, "--k must be at least 1");
    let opts = FitOptions {
        accept: a.unknown.0,
        k: a.k,
        max_file_bytes,
        after_training: false,
    };
    fit_and_report(
        &a.model,
        a.data.as_deref(),
        a.compute.runtime()?,
        &opts,
        true,
    )?;
    Ok(())
}

/// Fits and prints what was fitted (also the end of `finetune train`, which has warned about the
/// files it skipped already: `warn` false).
pub fn fit_and_report(
    model: &Path,
    data: Option<&Path>,
    rt: finetune::model::Runtime,
    opts: &FitOptions,
    warn: bool,
) -> anyhow::Result<Fitted> {
    let data = match data {
        Some(d) => d.to_path_buf(),
        None => finetune::bundle::read_info(model)?
            .data
            .map(|d| d.source)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} records no data folder: give it, `finetune calibrate {} DATA`",
                    model.display(),
                    model.display()
                )
            })?,
    };
    let f = trust::calibrate(model, &data, rt, opts).map_err(|e| {
        anyhow::anyhow!("calibrating {} on {}: {e}", model.display(), data.display())
    })?;
    for (p, why) in f.skipped.iter().filter(|_| warn) {
        eprintln!("warning: skipped {}: {why}", p.display());
    }
    let c = &f.calibration;
    println!(
        "calibrated on {} valid images: temperature {:.3} (NLL {:.4} -> {:.4}, ECE {:.4} -> {:.4}){}",
        c.images,
        c.temperature,
        c.nll_before,
        c.nll_after,
        c.ece_before,
        c.ece_after,
        // The fit never lands on exactly 1: this is the "nothing to fit" answer.
        if c.temperature == 1.0 {
            "; every valid image was answered right, which leaves nothing to fit, so the \
             probabilities stay the softmax's"
        } else {
            ""
        }
    );
    match &f.unknown {
        Some(u) => println!(
            "unknown: {} score (k = {}) over {} training images; an image scoring below {:.4} is \
             unknown, which accepts {:.1}% of the valid images",
            u.score.name(),
            u.k,
            u.train_images,
            u.threshold,
            u.accept * 100.0
        ),
        None => println!("unknown: off (every image gets a class)"),
    }
    Ok(f)
}

use finetune::train::lr_find::plot_svg;
use finetune::train::{ConsoleReport, Learner, Recipe};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder with one subfolder per class.
    data: PathBuf,
    #[command(flatten)]
    model: super::train::ModelArgs,
    #[command(flatten)]
    data_opts: super::train::DataArgs,
    #[arg(long, default_value_t = 1e-7)]
    start_lr: f64,
    #[arg(long, default_value_t = 10.0)]
    end_lr: f64,
    #[arg(long, default_value_t = 100)]
    num_it: usize,
    /// Where to write the plot (SVG) and the sweep (CSV next to it).
    #[arg(long, default_value = "lr_find.svg")]
    plot: PathBuf,
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

/// `max_file_bytes`: the global `--max-file-mb`.
pub fn run(a: Args, max_file_bytes: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.start_lr > 0.0 && a.end_lr > a.start_lr,
        "need 0 < --start-lr < --end-lr"
    );
    let rt = a.compute.runtime()?;
    let (net, dls, _) = super::train::load_inputs(
        &a.model,
        &a.data,
        a.data_opts.config(max_file_bytes),
        a.data_opts.cache().as_ref(),
        rt,
        a.quiet,
    )?;
    let mut learn = Learner::new(net, dls, Recipe::default(), a.data_opts.seed)?;
    (learn.mean, learn.std) = a.model.arch.normalization();
    // As on a fresh fastai vision_learner: the pretrained body is frozen.
    learn.freeze();
    let mut report = ConsoleReport::new(a.quiet);
    let r = learn.lr_find(a.start_lr, a.end_lr, a.num_it.max(2), &mut report);
    std::fs::write(&a.plot, plot_svg(&r))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", a.plot.display()))?;
    let csv = a.plot.with_extension("csv");
    let mut text = String::from("lr,smoothed_loss\n");
    for (lr, l) in r.lrs.iter().zip(&r.losses) {
        text.push_str(&format!("{lr:.6e},{l:.6}\n"));
    }
    std::fs::write(&csv, text)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", csv.display()))?;
    println!(
        "swept {} learning rates from {:.1e} to {:.1e}",
        r.lrs.len(),
        r.lrs.first().unwrap_or(&0.0),
        r.lrs.last().unwrap_or(&0.0)
    );
    match r.valley {
        Some(v) => println!("suggested learning rate (valley): {v:.2e}"),
        None => println!("too few batches for a suggestion; use more data or a smaller --bs"),
    }
    println!("plot: {}  data: {}", a.plot.display(), csv.display());
    Ok(())
}

use finetune::bundle;
use finetune::infer::evaluate;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model bundle folder (from `finetune train --out`).
    model: PathBuf,
    /// Folder with one subfolder per class.
    test_dir: PathBuf,
    /// How many top losses to list.
    #[arg(long, default_value_t = 9)]
    top_losses: usize,
    /// Also write the confusion matrix as an SVG heat map to this file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Store the evaluation in the bundle (evaluation.json, confusion.svg) for its model card.
    #[arg(long)]
    save: bool,
    #[command(flatten)]
    tta: super::TtaArgs,
    #[command(flatten)]
    labels: super::train::LabelsArgs,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

/// `max_file_bytes`: the global `--max-file-mb`.
pub fn run(a: Args, max_file_bytes: u64) -> anyhow::Result<()> {
    let b = bundle::load(&a.model, a.compute.runtime()?)?;
    let opts = a.tta.options(max_file_bytes)?;
    let ev = evaluate::evaluate(
        &b,
        &a.test_dir,
        a.top_losses,
        &opts,
        a.labels.csv().as_ref(),
    )?;
    for (p, why) in &ev.skipped {
        eprintln!("warning: skipped {}: {why}", p.display());
    }
    if let Some(p) = &a.plot {
        std::fs::write(p, ev.confusion_svg())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
        eprintln!("confusion matrix plot: {}", p.display());
    }
    if a.save {
        ev.save(&a.model, &a.test_dir).map_err(|e| {
            anyhow::anyhow!("cannot save the evaluation in {}: {e}", a.model.display())
        })?;
        eprintln!("evaluation saved in {}", a.model.display());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&ev)?);
    } else {
        print!("{}", ev.to_text());
    }
    Ok(())
}

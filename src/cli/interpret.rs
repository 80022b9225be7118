use finetune::bundle;
use finetune::infer::evaluate::{evaluate, evaluate_scan};
use finetune::infer::interpret::{contact_sheet, html, pictures, Context};
use finetune::infer::splits::{self, SplitChoice};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model bundle folder (from `finetune train --out`).
    model: PathBuf,
    /// A labelled test folder (one subfolder per class), or with --split the training folder.
    data: PathBuf,
    /// The HTML report to write (self-contained: images embedded, nothing loaded from the network).
    #[arg(long, default_value = "report.html")]
    out: PathBuf,
    /// How many top losses to show.
    #[arg(long, default_value_t = 16)]
    top: usize,
    /// DATA is the folder the model was trained on: show this part of the split its bundle
    /// records (valid: the images the epoch table was measured on).
    #[arg(long, value_parser = super::names::<SplitChoice>(SplitChoice::NAMES))]
    split: Option<SplitChoice>,
    /// Also write the top losses as a PNG contact sheet (for terminals and CI logs).
    #[arg(long, value_name = "PNG")]
    png: Option<PathBuf>,
    #[command(flatten)]
    tta: super::TtaArgs,
    #[command(flatten)]
    trust: super::TrustArgs,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

/// `max_file_bytes`: the global `--max-file-mb`.
pub fn run(a: Args, max_file_bytes: u64) -> anyhow::Result<()> {
    anyhow::ensure!(a.top > 0, "--top must be at least 1");
    let mut b = bundle::load(&a.model, a.compute.runtime()?)?;
    a.trust.apply(&mut b);
    anyhow::ensure!(
        !b.info.task.is_multi(),
        "{} is a multi-label model: it has no confusion matrix or single top-loss class; \
         `finetune evaluate MODEL IMAGES --labels CSV` reports it per label",
        a.model.display()
    );
    let opts = a.tta.options(max_file_bytes)?;
    let ev = match a.split {
        None => evaluate(&b, &a.data, a.top, &opts, None)?,
        Some(which) => {
            let scan = splits::choose(&b.info, &a.data, which)?;
            evaluate_scan(&b, scan, &a.data, a.top, &opts)?
        }
    };
    for (p, why) in &ev.skipped {
        eprintln!("warning: skipped {}: {why}", p.display());
    }
    let pics = pictures(&b, &ev, max_file_bytes);
    let ctx = Context {
        model: &a.model,
        data: &a.data,
        split: a.split,
    };
    finetune::atomic::write_file(&a.out, html(&ev, &ctx, &pics).as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", a.out.display()))?;
    println!(
        "wrote {} (accuracy {:.2}% on {} images, top {} losses)",
        a.out.display(),
        ev.accuracy * 100.0,
        ev.total,
        ev.top_losses.len()
    );
    if let Some(p) = &a.png {
        let mut png = std::io::Cursor::new(Vec::new());
        contact_sheet(&ev, &pics).write_to(&mut png, image::ImageFormat::Png)?;
        finetune::atomic::write_file(p, png.get_ref())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

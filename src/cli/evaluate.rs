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
    /// Multi-label models: a label is predicted when its probability is above this.
    #[arg(long, default_value_t = finetune::bundle::DEFAULT_THRESH)]
    thresh: f64,
    /// A folder of images of none of the model's classes: report how well each "unknown" score
    /// tells them from the test images (AUROC, FPR at 95 % TPR, the share flagged unknown).
    #[arg(long, value_name = "DIR")]
    ood: Option<PathBuf>,
    #[command(flatten)]
    trust: super::TrustArgs,
    #[command(flatten)]
    tta: super::TtaArgs,
    #[command(flatten)]
    labels: super::train::LabelsArgs,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

/// `max_file_bytes`: the global `--max-file-mb`.
pub fn run(a: Args, max_file_bytes: u64) -> anyhow::Result<()> {
    let mut b = bundle::load(&a.model, a.compute.runtime()?)?;
    a.trust.apply(&mut b);
    let opts = a.tta.options(max_file_bytes)?;
    if b.info.task.is_multi() {
        return run_multi(&a, &b, &opts);
    }
    let ev = evaluate::evaluate(
        &b,
        &a.test_dir,
        a.top_losses,
        &opts,
        a.labels.csv().as_ref(),
    )?;
    if let Some(p) = &a.plot {
        std::fs::write(p, ev.confusion_svg())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
        eprintln!("confusion matrix plot: {}", p.display());
    }
    let mut text = ev.to_text();
    let mut value = serde_json::to_value(&ev)?;
    if let Some(dir) = &a.ood {
        let test: Vec<PathBuf> = ev_paths(&a)?;
        let r = finetune::infer::trust::report::ood_report(&b, &test, dir, max_file_bytes)?;
        text.push_str(&r.to_text());
        value["ood"] = serde_json::to_value(&r)?;
    }
    let save = || ev.save(&a.model, &a.test_dir);
    report(&a, &ev.skipped, save, &value, text)
}

/// The test images `evaluate` read, for the `--ood` comparison.
fn ev_paths(a: &Args) -> anyhow::Result<Vec<PathBuf>> {
    Ok(match a.labels.csv() {
        None => finetune::data::items::scan(&a.test_dir, &[])?.items,
        Some(l) => finetune::data::labels::items(&a.test_dir, &l)?.0,
    }
    .into_iter()
    .map(|i| i.path)
    .collect())
}

/// What both kinds of evaluation end with: a warning per skipped file, `--save` into the bundle,
/// then the report as JSON or text.
fn report(
    a: &Args,
    skipped: &[(PathBuf, String)],
    save: impl FnOnce() -> Result<(), bundle::BundleError>,
    ev: &impl serde::Serialize,
    text: String,
) -> anyhow::Result<()> {
    for (p, why) in skipped {
        eprintln!("warning: skipped {}: {why}", p.display());
    }
    if a.save {
        save().map_err(|e| {
            anyhow::anyhow!("cannot save the evaluation in {}: {e}", a.model.display())
        })?;
        eprintln!("evaluation saved in {}", a.model.display());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(ev)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

/// A multi-label model: its labels come from a CSV (`--labels`), split by `--label-delim` or else
/// by the delimiter the model was trained with.
fn run_multi(
    a: &Args,
    b: &bundle::Bundle,
    opts: &finetune::infer::predict::Options,
) -> anyhow::Result<()> {
    finetune::infer::predict::check_thresh(a.thresh)
        .map_err(|e| anyhow::anyhow!("--thresh: {e}"))?;
    anyhow::ensure!(
        a.plot.is_none(),
        "--plot draws a confusion matrix, which a multi-label model has not; see the per-label table"
    );
    let recorded = b.info.data.as_ref().and_then(|d| match &d.split {
        finetune::data::items::SplitKind::Csv { labels, .. } => labels.label_delim.clone(),
        _ => None,
    });
    let Some(mut csv) = a.labels.csv() else {
        anyhow::bail!(
            "{} is a multi-label model: give the test images' labels with --labels CSV",
            a.model.display()
        );
    };
    let delim = csv
        .label_delim
        .clone()
        .or(recorded)
        .unwrap_or_else(|| " ".to_string());
    csv.label_delim = Some(delim.clone());
    let (items, skipped) = finetune::data::labels::items(&a.test_dir, &csv)?;
    let mut ev = finetune::infer::evaluate_multi::evaluate_multi(
        b,
        &items,
        &delim,
        a.thresh,
        opts,
        &a.test_dir,
    )?;
    ev.skipped
        .extend(skipped.into_iter().map(|s| (s.path, s.reason)));
    let mut v = serde_json::to_value(&ev)?;
    v["test_dir"] = serde_json::json!(a.test_dir.display().to_string());
    let save = || bundle::write_evaluation(&a.model, &v, "");
    report(a, &ev.skipped, save, &ev, ev.to_text())
}

use anyhow::Context;
use finetune::bundle;
use finetune::infer::predict;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model bundle folder (from `finetune train --out`).
    model: PathBuf,
    /// Image files or folders (searched recursively).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Show the k most likely classes per image.
    #[arg(long, default_value_t = 1)]
    top_k: usize,
    /// Multi-label models: every label whose probability is above this is listed (--top-k is
    /// for single-label models).
    #[arg(long, default_value_t = finetune::bundle::DEFAULT_THRESH)]
    thresh: f64,
    /// One JSON array on stdout.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// CSV on stdout: path,label,probability (top_k rows per image).
    #[arg(long)]
    csv: bool,
    /// Write a Grad-CAM heatmap over each image (as the model saw it) into this folder, one PNG
    /// per image named after it: the regions that drove the predicted class.
    #[arg(long, value_name = "DIR")]
    cam: Option<PathBuf>,
    #[command(flatten)]
    tta: super::TtaArgs,
    #[command(flatten)]
    trust: super::TrustArgs,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

/// The images named or found under `inputs`; what a folder walk leaves out is warned about here,
/// the same way `evaluate` does, so no file disappears silently.
pub(super) fn expand(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let (files, skipped) = finetune::data::items::image_files(p)?;
            for s in skipped {
                eprintln!("warning: skipped {s}");
            }
            out.extend(files);
        } else {
            anyhow::ensure!(p.exists(), "{} does not exist", p.display());
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `max_file_bytes`: the global `--max-file-mb`.
pub fn run(a: Args, max_file_bytes: u64) -> anyhow::Result<()> {
    let mut b = bundle::load(&a.model, a.compute.runtime()?)?;
    a.trust.apply(&mut b);
    let scored = b.info.unknown.is_some() && b.accept.is_some();
    let paths = expand(&a.inputs)?;
    anyhow::ensure!(!paths.is_empty(), "no images found in the given inputs");
    let k = a.top_k.clamp(1, b.info.classes.len());
    predict::check_thresh(a.thresh).map_err(|e| anyhow::anyhow!("--thresh: {e}"))?;
    let task = b.info.task;
    let classes = b.info.classes.clone();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if a.csv {
        writeln!(
            out,
            "path,label,probability{}",
            if scored { ",unknown,score" } else { "" }
        )?;
    }
    let mut json = Vec::new();
    let mut failed = 0usize;
    let mut io_err = None;
    if let Some(dir) = &a.cam {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the --cam folder {}", dir.display()))?;
    }
    let mut explain = Vec::new();
    predict::predict_each(&b, &paths, &a.tta.options(max_file_bytes)?, |r| match r {
        Ok(p) => {
            let top = p.decide(task, k, a.thresh);
            if a.cam.is_some() {
                explain.push((p.path.clone(), predict::best(&p.probs)));
            }
            let path = p.path.display().to_string();
            let score = p.score.filter(|_| scored);
            let res = if a.json {
                let mut v = serde_json::json!({
                    "path": path,
                    "predictions": top.iter().map(|(i, pr)| serde_json::json!({"label": classes[*i], "probability": pr})).collect::<Vec<_>>(),
                });
                if let Some(s) = score {
                    v["unknown"] = p.unknown.into();
                    v["score"] = s.into();
                }
                json.push(v);
                Ok(())
            } else if a.csv {
                let tail = score.map_or(String::new(), |s| format!(",{},{s:.6}", p.unknown));
                top.iter().try_for_each(|(i, pr)| {
                    writeln!(
                        out,
                        "{},{},{:.6}{tail}",
                        csv_field(&path),
                        csv_field(&classes[*i]),
                        pr
                    )
                })
            } else {
                let cols: Vec<String> = top
                    .iter()
                    .map(|(i, pr)| format!("{}  {:.4}", classes[*i], pr))
                    .collect();
                match score {
                    // The closest classes stay visible: "unknown" is a decision about the
                    // image, not a class.
                    Some(s) if p.unknown => writeln!(
                        out,
                        "{path}  unknown  (closest: {}; score {s:.4})",
                        cols.join("  ")
                    ),
                    _ => writeln!(out, "{path}  {}", cols.join("  ")),
                }
            };
            if let Err(e) = res {
                io_err.get_or_insert(e);
            }
        }
        Err(e) => {
            failed += 1;
            eprintln!("warning: skipped {}: {}", e.path().display(), e.reason());
        }
    });
    if let Some(e) = io_err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
    }
    out.flush().ok();
    if let Some(dir) = &a.cam {
        let o = finetune::infer::cam::write_overlays(&b, &explain, dir, max_file_bytes)?;
        for (p, why) in &o.skipped {
            eprintln!("warning: no heatmap for {}: {why}", p.display());
        }
        eprintln!("wrote {} heatmap(s) to {}", o.written.len(), dir.display());
    }
    anyhow::ensure!(
        failed < paths.len(),
        "none of the {} images could be read",
        paths.len()
    );
    if failed > 0 {
        eprintln!("{failed} of {} file(s) could not be read", paths.len());
    }
    Ok(())
}

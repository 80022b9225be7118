use finetune::infer::imagenet;
use finetune::model::{load_checkpoint, ArchSpec, Network, Portion};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Any arch of `finetune weights list`, or timm:NAME[.TAG].
    #[arg(long)]
    arch: ArchSpec,
    /// Weights file (.pth, .pt or .safetensors); default: the known file from the cache or its URL.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    compute: super::ComputeArgs,
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// `max_file_bytes`: the global `--max-file-mb`.
pub fn run(a: Args, max_file_bytes: u64) -> anyhow::Result<()> {
    let rt = a.compute.runtime()?;
    let path = super::weights_path(a.arch, a.weights.as_deref())?;
    let net = Network::imagenet(a.arch.arch, rt);
    load_checkpoint(&net, &path, Portion::BodyAndClassifier)?;
    let results = imagenet::classify(
        &net,
        a.arch.normalization(),
        &a.images,
        a.top_k.clamp(1, 1000),
        max_file_bytes,
    );
    let mut failed = 0;
    let mut json = Vec::new();
    for (p, r) in a.images.iter().zip(results) {
        match r {
            Ok(top) => {
                if a.json {
                    json.push(serde_json::json!({
                        "path": p.display().to_string(),
                        "top": top.iter().map(|s| serde_json::json!({"index": s.index, "label": s.label, "probability": s.probability})).collect::<Vec<_>>(),
                    }));
                } else {
                    println!("{}", p.display());
                    for s in top {
                        println!(
                            "  {:6.2}%  {} ({})",
                            s.probability * 100.0,
                            s.label,
                            s.index
                        );
                    }
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("warning: skipped {e}");
            }
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    anyhow::ensure!(
        failed < a.images.len(),
        "none of the {} images could be read",
        a.images.len()
    );
    Ok(())
}

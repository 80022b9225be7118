use finetune::bundle;
use finetune::infer::embed;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model bundle folder (from `finetune train --out`).
    model: PathBuf,
    /// Image files or folders (searched recursively) to search in.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The image to find look-alikes of.
    #[arg(long)]
    query: PathBuf,
    /// How many to list.
    #[arg(short, long, default_value_t = 5)]
    k: usize,
    /// One JSON array on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

pub fn run(a: Args, max_file_bytes: u64) -> anyhow::Result<()> {
    anyhow::ensure!(a.k >= 1, "-k must be at least 1");
    let b = bundle::load(&a.model, a.compute.runtime()?)?;
    let q = embed::embed(&b, std::slice::from_ref(&a.query), max_file_bytes);
    if let Some((p, why)) = q.skipped.first() {
        anyhow::bail!("cannot read the query image {}: {why}", p.display());
    }
    anyhow::ensure!(!q.paths.is_empty(), "{} does not exist", a.query.display());
    let paths = super::predict::expand(&a.inputs)?;
    anyhow::ensure!(!paths.is_empty(), "no images found in the given inputs");
    let e = embed::embed(&b, &paths, max_file_bytes);
    for (p, why) in &e.skipped {
        eprintln!("warning: skipped {}: {why}", p.display());
    }
    let best = embed::nearest(&e.matrix, &q.matrix, a.k);
    if a.json {
        let v: Vec<serde_json::Value> = best
            .iter()
            .map(|(i, s)| serde_json::json!({"path": e.paths[*i].display().to_string(), "similarity": s}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (i, s) in best {
            println!("{:.4}  {}", s, e.paths[i].display());
        }
    }
    Ok(())
}

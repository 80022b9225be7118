use finetune::bundle;
use finetune::infer::embed;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model bundle folder (from `finetune train --out`).
    model: PathBuf,
    /// Image files or folders (searched recursively).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The `.npy` file to write (float32, one row per image); the image paths go beside it in
    /// the same name with `.csv` (`index,path`).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

pub fn run(a: Args, max_file_bytes: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.out.extension().is_some_and(|e| e == "npy"),
        "--out {}: name the embeddings file with .npy (the paths go beside it as .csv)",
        a.out.display()
    );
    let b = bundle::load(&a.model, a.compute.runtime()?)?;
    let paths = super::predict::expand(&a.inputs)?;
    anyhow::ensure!(!paths.is_empty(), "no images found in the given inputs");
    let e = embed::embed(&b, &paths, max_file_bytes);
    for (p, why) in &e.skipped {
        eprintln!("warning: skipped {}: {why}", p.display());
    }
    anyhow::ensure!(
        !e.paths.is_empty(),
        "none of the {} images could be read",
        paths.len()
    );
    let csv = embed::write(&e, &a.out)?;
    println!(
        "{} embeddings of {} values: {} (paths: {})",
        e.paths.len(),
        e.matrix.size()[1],
        a.out.display(),
        csv.display()
    );
    Ok(())
}

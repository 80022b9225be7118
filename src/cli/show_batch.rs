use finetune::data::DataLoaders;
use finetune::train::show_batch::{first_batch, grid, grid_shape};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The data folder, as `finetune train` takes it.
    data: PathBuf,
    #[command(flatten)]
    data_opts: super::train::DataArgs,
    #[command(flatten)]
    aug: super::train::AugArgs,
    /// How many images (at most --bs): fastai's grid, 9 → 3×3.
    #[arg(long, default_value_t = 9)]
    n: usize,
    /// The PNG to write.
    #[arg(long, default_value = "batch.png")]
    out: PathBuf,
}

/// `max_file_bytes`: the global `--max-file-mb`.
pub fn run(a: Args, max_file_bytes: u64) -> anyhow::Result<()> {
    let cfg = a.data_opts.config(max_file_bytes);
    cfg.validate()?;
    let aug = a.aug.augment.then(|| a.aug.config());
    if let Some(c) = &aug {
        c.validate()?;
    }
    // No bar (show-batch decodes only to draw one batch), but the warnings about skipped files.
    let progress = finetune::train::report::ConsoleProgress::new("", true);
    let dls =
        DataLoaders::from_folder_cached(&a.data, cfg, a.data_opts.cache().as_ref(), &progress)?;
    let items = first_batch(&dls, a.n, aug.as_ref())?;
    let img = grid(&items);
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)?;
    finetune::atomic::write_file(&a.out, png.get_ref())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", a.out.display()))?;
    let (rows, cols) = grid_shape(items.len());
    println!(
        "wrote {} ({rows}×{cols}: the first {} images of the first training batch{})",
        a.out.display(),
        items.len(),
        if aug.is_some() { ", augmented" } else { "" }
    );
    Ok(())
}

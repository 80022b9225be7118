use finetune::clean::{self, Cleaner, Scoring};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The data folder the model was trained on (one subfolder per class, or train/ valid/ test/).
    data: PathBuf,
    /// The model bundle whose losses sort the images (from `finetune train --out`).
    #[arg(long, required_unless_present = "restore")]
    model: Option<PathBuf>,
    /// Put back every image deleted or moved by earlier cleaning (from DATA/.finetune-trash/actions.jsonl).
    #[arg(long, conflicts_with = "model")]
    restore: bool,
    /// Address to listen on; the page changes files, so only this machine by default.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port).
    #[arg(long, default_value_t = 8766)]
    port: u16,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

/// `max_file_bytes`: the global `--max-file-mb`.
pub fn run(a: Args, max_file_bytes: u64) -> anyhow::Result<()> {
    if a.restore {
        let done = clean::restore(&a.data)?;
        let lost = done.iter().filter(|e| e.missing).count();
        println!(
            "restored {} image(s) in {}",
            done.len() - lost,
            a.data.display()
        );
        for e in done.iter().filter(|e| e.missing) {
            eprintln!(
                "warning: {} was no longer in {} (moved or removed outside finetune)",
                e.from,
                a.data.display()
            );
        }
        return Ok(());
    }
    let model = a
        .model
        .ok_or_else(|| anyhow::anyhow!("pass --model MODEL (or --restore)"))?;
    let scoring = Scoring {
        model,
        runtime: a.compute.runtime()?,
        opts: finetune::infer::predict::Options {
            max_file_bytes,
            tta: None,
        },
    };
    eprintln!("scoring the images of {} ...", a.data.display());
    let cleaner = Cleaner::open(&a.data, scoring)?;
    let n = cleaner.items(
        None,
        finetune::infer::splits::SplitChoice::All,
        clean::Sort::Path,
    );
    let changes = cleaner.changes();
    let leaks = cleaner.leaks();
    if !leaks.is_empty() {
        eprintln!(
            "warning: {} pair(s) of images look like one photo in two splits (cosine similarity of \
             their embeddings >= {}; the page lists them under \"look-alikes across splits\"), e.g.",
            leaks.len(),
            clean::LEAK_SIMILARITY
        );
        for l in leaks.iter().take(3) {
            eprintln!(
                "  {} ({:?}) ~ {} ({:?}): {:.3}",
                l.a.path, l.a.split, l.b.path, l.b.split, l.similarity
            );
        }
    }
    let app = clean::router(cleaner, max_file_bytes);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let addr = format!("{}:{}", a.host, a.port);
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}; choose another --port"))?;
        let at = listener.local_addr()?;
        println!(
            "cleaning {} ({} images, {changes} earlier change(s)): open http://{at}/ (Ctrl-C to stop)",
            a.data.display(),
            n.len()
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        clean::serve(listener, app).await;
        Ok::<(), anyhow::Error>(())
    })
}

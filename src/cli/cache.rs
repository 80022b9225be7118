use finetune::data::cache::{self, Clear};
use finetune::data::CacheConfig;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// List the cached data sets: source folder, transform, images, shards, size on disk.
    Info {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Delete cached images: all of them, those of DATA, or with --missing those whose data
    /// folder is gone. Runs that are training keep their mapped shards until they exit.
    Clear {
        /// Only this data folder's cache (every size and resize method).
        data: Option<PathBuf>,
        /// Only caches whose data folder no longer exists (or whose index is unreadable).
        #[arg(long, conflicts_with = "data")]
        missing: bool,
        #[command(flatten)]
        dir: DirArg,
    },
}

#[derive(clap::Args, Debug)]
pub struct DirArg {
    /// The image cache folder (default: the finetune cache folder's images/).
    #[arg(long, env = "FINETUNE_IMAGE_CACHE", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

impl DirArg {
    fn path(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(CacheConfig::default_dir)
    }
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

pub fn run(c: Cmd) -> anyhow::Result<()> {
    match c {
        Cmd::Info { dir } => {
            let dir = dir.path();
            let sets = cache::info(&dir).map_err(|e| {
                anyhow::anyhow!("cannot read the image cache {}: {e}", dir.display())
            })?;
            println!("image cache: {}", dir.display());
            let total: u64 = sets.iter().map(|d| d.bytes).sum();
            for d in &sets {
                let name = d
                    .dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                println!("{name}");
                match &d.problem {
                    Some(p) => println!("  {p}"),
                    None => {
                        let root = d.root.as_ref().map(|r| r.display().to_string());
                        println!(
                            "  data {}{}",
                            root.unwrap_or_default(),
                            if d.root_exists { "" } else { " (gone)" }
                        );
                        if let Some(t) = d.transform {
                            println!(
                                "  --size {} --resize {} --pad-mode {}",
                                t.size,
                                t.method.name(),
                                t.pad.name()
                            );
                        }
                        println!(
                            "  {} images of {} classes in {} shard(s), {} ({} stale)",
                            d.images,
                            d.classes,
                            d.shards,
                            mb(d.bytes),
                            mb(d.stale_bytes)
                        );
                    }
                }
            }
            println!("{} cached data set(s), {} in all", sets.len(), mb(total));
        }
        Cmd::Clear { data, missing, dir } => {
            let dir = dir.path();
            let which = match (data, missing) {
                (Some(d), _) => Clear::Root(d),
                (None, true) => Clear::Missing,
                (None, false) => Clear::All,
            };
            let removed = cache::clear(&dir, &which).map_err(|e| {
                anyhow::anyhow!("cannot clear the image cache {}: {e}", dir.display())
            })?;
            for d in &removed {
                println!("removed {} ({})", d.dir.display(), mb(d.bytes));
            }
            println!(
                "{} cached data set(s) removed, {} freed",
                removed.len(),
                mb(removed.iter().map(|d| d.bytes).sum())
            );
        }
    }
    Ok(())
}

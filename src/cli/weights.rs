use finetune::model::{registry, Arch};

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Show the known weights, their size and whether they are cached.
    List,
    /// Download the known weights of ARCH into the cache (checks the SHA-256).
    Fetch { arch: Arch },
}

pub fn run(c: Cmd) -> anyhow::Result<()> {
    match c {
        Cmd::List => {
            println!("cache: {}", registry::cache_dir().display());
            println!("{:<16} {:>8}  {:<8} file", "arch", "size", "cached");
            for arch in Arch::ALL {
                let k = arch.known_weights();
                let cached = registry::cached(arch).is_some();
                println!(
                    "{:<16} {:>6.1}MB  {:<8} {}",
                    arch.name(),
                    k.size_bytes as f64 / 1e6,
                    if cached { "yes" } else { "no" },
                    k.file
                );
            }
        }
        Cmd::Fetch { arch } => {
            let p = registry::fetch(arch, super::console::stderr_is_tty())?;
            println!("{}", p.display());
        }
    }
    Ok(())
}

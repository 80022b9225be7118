//! EfficientNet-Lite0 with lukemelas' EfficientNet-PyTorch key names (`_conv_stem`, `_bn0`,
//! `_blocks.N._expand_conv`, ..., `_conv_head`, `_bn1`, classifier `_fc`), as in the
//! `efficientnet_lite_pytorch` package the real weights were converted for. Lite differs from
//! EfficientNet-B0 in: no squeeze-excite, ReLU6 instead of SiLU, and TensorFlow "SAME" padding
//! (the weights come from TensorFlow); BatchNorm eps 1e-3, momentum 0.01.

use crate::model::layers::{Act, ConvBnAct, ConvSpec, MbConv, Norm, Pad};
use crate::model::onnx::{Graph, OnnxExport};
use tch::nn::{self, ModuleT};
use tch::Tensor;

const NORM: Norm = Norm {
    eps: 1e-3,
    momentum: 0.01,
};

/// Channels out of the body (`_conv_head`).
pub const BODY_CHANNELS: i64 = 1280;

/// (repeats, kernel, stride, expansion, in, out) per stage, from TensorFlow's
/// `efficientnet_lite_builder.py` (width and depth multipliers 1.0 for Lite0).
const STAGES: [(i64, i64, i64, i64, i64, i64); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

#[derive(Debug)]
pub struct EfficientnetLiteBody {
    stem: ConvBnAct,
    blocks: Vec<MbConv>,
    head: ConvBnAct,
}

impl EfficientnetLiteBody {
    pub fn new(p: &nn::Path) -> Self {
        let conv = |at: &nn::Path, name: &str, bn: &str, c_in, c_out, k, stride, groups, act| {
            ConvBnAct::named(
                at / name,
                at / bn,
                c_in,
                c_out,
                ConvSpec::new(k, stride, groups, act),
                NORM,
                Pad::Same,
            )
        };
        let total: i64 = STAGES.iter().map(|s| s.0).sum();
        let mut blocks = Vec::new();
        for (n, k, s, e, c_in, c_out) in STAGES {
            for i in 0..n {
                let (c_in, stride) = if i == 0 { (c_in, s) } else { (c_out, 1) };
                let b = p / "_blocks" / blocks.len();
                let hidden = c_in * e;
                let mut convs = Vec::new();
                if e != 1 {
                    convs.push(conv(
                        &b,
                        "_expand_conv",
                        "_bn0",
                        c_in,
                        hidden,
                        1,
                        1,
                        1,
                        Act::Relu6,
                    ));
                }
                convs.push(conv(
                    &b,
                    "_depthwise_conv",
                    "_bn1",
                    hidden,
                    hidden,
                    k,
                    stride,
                    hidden,
                    Act::Relu6,
                ));
                convs.push(conv(
                    &b,
                    "_project_conv",
                    "_bn2",
                    hidden,
                    c_out,
                    1,
                    1,
                    1,
                    Act::None,
                ));
                // lukemelas' `MBConvBlock` without squeeze-excite; drop-connect is its
                // stochastic depth.
                blocks.push(MbConv {
                    convs,
                    se: None,
                    residual: stride == 1 && c_in == c_out,
                    sd_prob: 0.2 * blocks.len() as f64 / total as f64,
                });
            }
        }
        EfficientnetLiteBody {
            stem: conv(p, "_conv_stem", "_bn0", 3, 32, 3, 2, 1, Act::Relu6),
            blocks,
            head: conv(
                p,
                "_conv_head",
                "_bn1",
                320,
                BODY_CHANNELS,
                1,
                1,
                1,
                Act::Relu6,
            ),
        }
    }
}

impl ModuleT for EfficientnetLiteBody {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = self.stem.forward_t(x, train);
        for b in &self.blocks {
            y = b.forward_t(&y, train);
        }
        self.head.forward_t(&y, train)
    }
}

impl OnnxExport for EfficientnetLiteBody {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let mut y = self.stem.onnx(g, x);
        for b in &self.blocks {
            y = b.onnx(g, &y);
        }
        self.head.onnx(g, &y)
    }
}

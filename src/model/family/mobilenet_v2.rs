//! torchvision MobileNetV2 (width 1.0), with torchvision's key names.

use crate::model::layers::{Act, ConvBnAct, ConvSpec, Norm, Pad, Sequential};
use crate::model::onnx::{Graph, OnnxExport};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// `Conv2dNormActivation` (BatchNorm at PyTorch's defaults), keys `.0` and `.1`, with ReLU6 or none.
fn conv_bn(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    groups: i64,
    relu6: bool,
) -> ConvBnAct {
    let act = if relu6 { Act::Relu6 } else { Act::None };
    ConvBnAct::new(
        &p,
        c_in,
        c_out,
        ConvSpec::new(k, stride, groups, act),
        Norm::TORCH,
        Pad::Torch,
    )
}

/// torchvision's `InvertedResidual`: expand (unless the ratio is 1), depthwise, project. The
/// projection is a bare conv (`conv.K`) then a BN (`conv.K+1`), not a `Conv2dNormActivation`.
#[derive(Debug)]
struct InvertedResidual {
    convs: Vec<ConvBnAct>,
    residual: bool,
}

impl InvertedResidual {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64, expand: i64) -> Self {
        let hidden = c_in * expand;
        let c = &p / "conv";
        let mut convs = Vec::new();
        if expand != 1 {
            convs.push(conv_bn(&c / "0", c_in, hidden, 1, 1, 1, true));
        }
        let k = convs.len();
        convs.push(conv_bn(
            &c / k.to_string(),
            hidden,
            hidden,
            3,
            stride,
            hidden,
            true,
        ));
        convs.push(ConvBnAct::named(
            &c / (k + 1).to_string(),
            &c / (k + 2).to_string(),
            hidden,
            c_out,
            ConvSpec::pointwise(Act::None),
            Norm::TORCH,
            Pad::Torch,
        ));
        InvertedResidual {
            convs,
            residual: stride == 1 && c_in == c_out,
        }
    }
}

impl ModuleT for InvertedResidual {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let (last, rest) = self.convs.split_last().expect("a projection");
        let mut y = x.shallow_clone();
        for c in rest {
            y = c.forward_t(&y, train);
        }
        // The skip connection joins the projection (one fused kernel in the inference plan).
        if self.residual {
            last.forward_add(&y, x, false, train)
        } else {
            last.forward_t(&y, train)
        }
    }
}

impl OnnxExport for InvertedResidual {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let mut y = x.to_string();
        for c in &self.convs {
            y = c.onnx(g, &y);
        }
        if self.residual {
            g.add(&y, x)
        } else {
            y
        }
    }
}

/// `features`: fastai's body for mobilenet_v2.
pub fn body(p: &nn::Path) -> Sequential {
    let f = p / "features";
    let mut layers = Sequential::default();
    layers.push(conv_bn(&f / "0", 3, 32, 3, 2, 1, true));
    let settings = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    let mut c_in = 32;
    for (t, c, n, s) in settings {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let idx = layers.len().to_string();
            layers.push(InvertedResidual::new(&f / idx, c_in, c, stride, t));
            c_in = c;
        }
    }
    let idx = layers.len().to_string();
    layers.push(conv_bn(&f / idx, c_in, 1280, 1, 1, 1, true));
    layers
}

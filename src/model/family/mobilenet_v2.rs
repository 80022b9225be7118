//! torchvision MobileNetV2 (width 1.0), with torchvision's key names.

use crate::model::layers::Part;
use crate::model::onnx::{Graph, OnnxExport, BN_EPS};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Conv2d + BatchNorm (+ ReLU6): torchvision's `Conv2dNormActivation`, keys `.0` and `.1`.
#[derive(Debug)]
struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    relu6: bool,
    stride: i64,
    groups: i64,
}

impl ConvBn {
    fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        groups: i64,
        relu6: bool,
    ) -> Self {
        let cfg = nn::ConvConfig {
            stride,
            padding: (k - 1) / 2,
            groups,
            bias: false,
            ..Default::default()
        };
        ConvBn {
            conv: nn::conv2d(&p / "0", c_in, c_out, k, cfg),
            bn: nn::batch_norm2d(&p / "1", c_out, Default::default()),
            relu6,
            stride,
            groups,
        }
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.apply(&self.conv).apply_t(&self.bn, train);
        if self.relu6 {
            // torchvision's nn.ReLU6(inplace=True), i.e. hardtanh(0, 6) in place: one fused
            // backward kernel (clamp's backward is ge + le + and + where, a quarter of a frozen
            // epoch's time here) and no extra activation buffer.
            let _ = y.relu6_();
        }
        y
    }
}

impl OnnxExport for ConvBn {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let pad = (self.conv.ws.size()[2] - 1) / 2;
        let y = g.conv(x, &self.conv, self.stride, pad, self.groups);
        let y = g.batch_norm(&y, &self.bn, BN_EPS);
        if self.relu6 {
            g.clip(&y, 0.0, 6.0)
        } else {
            y
        }
    }
}

/// The projection of an inverted residual is a bare conv (`conv.K`) then a BN (`conv.K+1`), not a
/// `Conv2dNormActivation`, hence its own key layout.
#[derive(Debug)]
struct InvertedResidual {
    stages: Vec<ConvBn>,
    project: nn::Conv2D,
    project_bn: nn::BatchNorm,
    residual: bool,
}

impl InvertedResidual {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64, expand: i64) -> Self {
        let hidden = c_in * expand;
        let c = &p / "conv";
        let mut stages = Vec::new();
        if expand != 1 {
            stages.push(ConvBn::new(&c / "0", c_in, hidden, 1, 1, 1, true));
        }
        let k = stages.len();
        stages.push(ConvBn::new(
            &c / k.to_string(),
            hidden,
            hidden,
            3,
            stride,
            hidden,
            true,
        ));
        let cfg = nn::ConvConfig {
            bias: false,
            ..Default::default()
        };
        InvertedResidual {
            stages,
            project: nn::conv2d(&c / (k + 1).to_string(), hidden, c_out, 1, cfg),
            project_bn: nn::batch_norm2d(&c / (k + 2).to_string(), c_out, Default::default()),
            residual: stride == 1 && c_in == c_out,
        }
    }
}

impl ModuleT for InvertedResidual {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for s in &self.stages {
            y = s.forward_t(&y, train);
        }
        let y = y.apply(&self.project).apply_t(&self.project_bn, train);
        if self.residual {
            y + x
        } else {
            y
        }
    }
}

impl OnnxExport for InvertedResidual {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let mut y = x.to_string();
        for s in &self.stages {
            y = s.onnx(g, &y);
        }
        let y = g.conv(&y, &self.project, 1, 0, 1);
        let y = g.batch_norm(&y, &self.project_bn, BN_EPS);
        if self.residual {
            g.add(&y, x)
        } else {
            y
        }
    }
}

/// `features`: fastai's body for mobilenet_v2.
#[derive(Debug)]
pub struct MobilenetV2Body {
    layers: Vec<Box<dyn Part>>,
}

impl MobilenetV2Body {
    pub fn new(p: &nn::Path) -> Self {
        let f = p / "features";
        let mut layers: Vec<Box<dyn Part>> =
            vec![Box::new(ConvBn::new(&f / "0", 3, 32, 3, 2, 1, true))];
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
                layers.push(Box::new(InvertedResidual::new(
                    &f / idx,
                    c_in,
                    c,
                    stride,
                    t,
                )));
                c_in = c;
            }
        }
        let idx = layers.len().to_string();
        layers.push(Box::new(ConvBn::new(&f / idx, c_in, 1280, 1, 1, 1, true)));
        MobilenetV2Body { layers }
    }
}

impl ModuleT for MobilenetV2Body {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for l in &self.layers {
            y = l.forward_t(&y, train);
        }
        y
    }
}

impl OnnxExport for MobilenetV2Body {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let mut y = x.to_string();
        for l in &self.layers {
            y = l.onnx(g, &y);
        }
        y
    }
}

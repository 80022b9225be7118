//! fastai's classification head (`create_head` with its defaults) and torchvision's ImageNet
//! classifiers, which `classify-imagenet` uses instead of a head.

use super::onnx::{Graph, OnnxExport, BN_EPS};
use super::Arch;
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// `AdaptiveConcatPool2d → Flatten → BN(2nf) → Dropout(.25) → Linear(2nf,512) → ReLU → BN(512) →
/// Dropout(.5) → Linear(512,n)`. Variable names are fastai's Sequential indices (`2`, `4`, `6`, `8`),
/// so a bundle's keys read like `learn.model[1].state_dict()`.
#[derive(Debug)]
pub struct FastaiHead {
    bn1: nn::BatchNorm,
    lin1: nn::Linear,
    bn2: nn::BatchNorm,
    lin2: nn::Linear,
}

fn head_bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    // fastai's BatchNorm init: weight 1, bias 1e-3.
    let cfg = nn::BatchNormConfig {
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(1e-3),
        ..Default::default()
    };
    nn::batch_norm1d(p, c, cfg)
}

fn kaiming_linear(p: nn::Path, n_in: i64, n_out: i64) -> nn::Linear {
    // kaiming_normal_ (fan_in, gain √2) and no bias, because each Linear follows a BatchNorm.
    let std = (2.0 / n_in as f64).sqrt();
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
        bs_init: None,
        bias: false,
    };
    nn::linear(p, n_in, n_out, cfg)
}

impl FastaiHead {
    pub fn new(p: &nn::Path, n_features: i64, n_classes: i64) -> Self {
        let nf = 2 * n_features;
        FastaiHead {
            bn1: head_bn(p / "2", nf),
            lin1: kaiming_linear(p / "4", nf, 512),
            bn2: head_bn(p / "6", 512),
            lin2: kaiming_linear(p / "8", 512, n_classes),
        }
    }
}

/// Max-pool first, then average-pool, as fastai's `AdaptiveConcatPool2d`.
pub fn concat_pool(x: &Tensor) -> Tensor {
    let mx = x.adaptive_max_pool2d([1, 1]).0;
    let avg = x.adaptive_avg_pool2d([1, 1]);
    Tensor::cat(&[mx, avg], 1).flatten(1, -1)
}

impl ModuleT for FastaiHead {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        concat_pool(x)
            .apply_t(&self.bn1, train)
            .dropout(0.25, train)
            .apply(&self.lin1)
            .relu()
            .apply_t(&self.bn2, train)
            .dropout(0.5, train)
            .apply(&self.lin2)
    }
}

/// fastai's `AdaptiveConcatPool2d` + `Flatten` in ONNX: `Concat(GlobalMaxPool, GlobalAveragePool)`,
/// max first.
pub fn concat_pool_onnx(g: &mut Graph, x: &str) -> String {
    let mx = g.node("GlobalMaxPool", &[x], vec![]);
    let avg = g.node("GlobalAveragePool", &[x], vec![]);
    let cat = g.node(
        "Concat",
        &[&mx, &avg],
        vec![("axis", super::onnx::Attr::Int(1))],
    );
    g.flatten(&cat)
}

impl OnnxExport for FastaiHead {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let y = concat_pool_onnx(g, x);
        let y = g.batch_norm(&y, &self.bn1, BN_EPS);
        let y = g.linear(&y, &self.lin1);
        let y = g.relu(&y);
        let y = g.batch_norm(&y, &self.bn2, BN_EPS);
        g.linear(&y, &self.lin2)
    }
}

/// torchvision's own pooling + 1000-class classifier (`fc` for resnet, `classifier.1` for mobilenet_v2).
#[derive(Debug)]
pub struct ImagenetClassifier {
    fc: nn::Linear,
    /// mobilenet_v2's classifier starts with Dropout(0.2); resnet's `fc` has none.
    dropout: f64,
}

impl ImagenetClassifier {
    pub fn new(p: &nn::Path, arch: Arch) -> Self {
        let path = match arch {
            Arch::MobilenetV2 => p / "classifier" / "1",
            _ => p / "fc",
        };
        let dropout = if arch == Arch::MobilenetV2 { 0.2 } else { 0.0 };
        ImagenetClassifier {
            fc: nn::linear(path, arch.body_channels(), 1000, Default::default()),
            dropout,
        }
    }
}

impl ModuleT for ImagenetClassifier {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        x.adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .dropout(self.dropout, train)
            .apply(&self.fc)
    }
}

impl OnnxExport for ImagenetClassifier {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let y = g.node("GlobalAveragePool", &[x], vec![]);
        let y = g.flatten(&y);
        g.linear(&y, &self.fc)
    }
}

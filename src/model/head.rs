//! fastai's classification head (`create_head` with its defaults) and torchvision's ImageNet
//! classifiers, which `classify-imagenet` uses instead of a head.

use super::onnx::{Attr, Graph, OnnxExport, BN_EPS};
use super::{Arch, Family};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// `AdaptiveConcatPool2d → Flatten → BN(2nf) → Dropout(.25) → Linear(2nf,512) → ReLU → BN(512) →
/// Dropout(.5) → Linear(512,n)`. Variable names are fastai's Sequential indices (`2`, `4`, `6`, `8`),
/// so a bundle's keys read like `learn.model[1].state_dict()`.
#[derive(Debug)]
pub struct FastaiHead {
    /// fastai's `create_head(pool=...)`: false for bodies that already give a feature vector.
    pool: bool,
    bn1: nn::BatchNorm,
    lin1: nn::Linear,
    bn2: nn::BatchNorm,
    lin2: nn::Linear,
}

/// The width of the head's hidden layer: the penultimate features (`Network::features`).
pub const FEATURES: i64 = 512;

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
        Self::build(p, n_features, n_classes, true)
    }

    /// The head fastai builds for a timm model without a pooling map (ViT: `TimmBody` returns the
    /// class token's features, `needs_pool` is false): `create_head(nf, n, pool=False)`, i.e. no
    /// concat pool, `nf` (not 2·nf) inputs, and every Sequential index two lower (`0`, `2`, `4`, `6`).
    pub fn unpooled(p: &nn::Path, n_features: i64, n_classes: i64) -> Self {
        Self::build(p, n_features, n_classes, false)
    }

    fn build(p: &nn::Path, n_features: i64, n_classes: i64, pool: bool) -> Self {
        let (nf, first) = if pool {
            (2 * n_features, 2)
        } else {
            (n_features, 0)
        };
        let idx = |i: usize| p / (first + i).to_string();
        FastaiHead {
            pool,
            bn1: head_bn(idx(0), nf),
            lin1: kaiming_linear(idx(2), nf, FEATURES),
            bn2: head_bn(idx(4), FEATURES),
            lin2: kaiming_linear(idx(6), FEATURES, n_classes),
        }
    }
}

/// Max-pool first, then average-pool, as fastai's `AdaptiveConcatPool2d`.
pub fn concat_pool(x: &Tensor) -> Tensor {
    let mx = x.adaptive_max_pool2d([1, 1]).0;
    let avg = x.adaptive_avg_pool2d([1, 1]);
    Tensor::cat(&[mx, avg], 1).flatten(1, -1)
}

impl FastaiHead {
    /// An eval-mode pass that keeps what the "unknown" scores and embeddings read: the head's
    /// input (the concat-pooled body features, `2·nf` values; `nf` for ViT's class token), the
    /// hidden features the last Linear reads (512, after ReLU and BatchNorm), and the logits.
    pub fn features(&self, x: &Tensor) -> [Tensor; 3] {
        let pooled = if self.pool {
            concat_pool(x)
        } else {
            x.shallow_clone()
        };
        let h = pooled
            .apply_t(&self.bn1, false)
            .apply(&self.lin1)
            .relu()
            .apply_t(&self.bn2, false);
        let logits = h.apply(&self.lin2);
        [pooled, h, logits]
    }
}

impl ModuleT for FastaiHead {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let x = if self.pool {
            concat_pool(x)
        } else {
            x.shallow_clone()
        };
        x.apply_t(&self.bn1, train)
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
    let cat = g.node("Concat", &[&mx, &avg], vec![("axis", Attr::Int(1))]);
    g.flatten(&cat)
}

impl OnnxExport for FastaiHead {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let y = if self.pool {
            concat_pool_onnx(g, x)
        } else {
            x.to_string()
        };
        let y = g.batch_norm(&y, &self.bn1, BN_EPS);
        let y = g.linear(&y, &self.lin1);
        let y = g.relu(&y);
        let y = g.batch_norm(&y, &self.bn2, BN_EPS);
        g.linear(&y, &self.lin2)
    }
}

/// The checkpoint's own pooling + 1000-class classifier, with its key names: `fc` (resnet, RegNet),
/// `classifier.1` (mobilenet_v2, EfficientNet), `classifier.0` + Hardswish + `classifier.3`
/// (MobileNetV3), `_fc` (EfficientNet-Lite, lukemelas), `classifier.0` LayerNorm2d + `classifier.2`
/// (ConvNeXt), `heads.head` on the class token (ViT).
#[derive(Debug)]
pub struct ImagenetClassifier {
    /// MobileNetV3's hidden Linear (followed by Hardswish).
    hidden: Option<nn::Linear>,
    /// ConvNeXt's final LayerNorm (on the pooled features), which fastai's body leaves out.
    norm: Option<nn::LayerNorm>,
    fc: nn::Linear,
    /// Dropout before the last Linear (training only); resnet's `fc` has none.
    dropout: f64,
    /// ViT bodies already give [N, C] (the class token): nothing to pool.
    pool: bool,
}

/// ConvNeXt's classifier LayerNorm epsilon.
const CLASSIFIER_LN_EPS: f64 = 1e-6;

impl ImagenetClassifier {
    pub fn new(p: &nn::Path, arch: Arch) -> Self {
        let c = arch.body_channels();
        let lin = |path, n_in| nn::linear(path, n_in, 1000, Default::default());
        let mut norm = None;
        let (hidden, fc, dropout) = match arch.family() {
            Family::MobilenetV3 => {
                let large = matches!(arch, Arch::MobilenetV3Large | Arch::Mobilenetv3Large100);
                let h = super::family::mobilenet_v3::last_channel(large);
                let hidden = nn::linear(p / "classifier" / "0", c, h, Default::default());
                (Some(hidden), lin(p / "classifier" / "3", h), 0.2)
            }
            Family::MobilenetV2 | Family::Efficientnet => {
                let dropout = match arch {
                    Arch::EfficientnetB2 | Arch::EfficientnetB3 => 0.3,
                    _ => 0.2,
                };
                (None, lin(p / "classifier" / "1", c), dropout)
            }
            Family::EfficientnetLite => (None, lin(p / "_fc", c), 0.2),
            Family::Convnext => {
                let cfg = nn::LayerNormConfig {
                    eps: CLASSIFIER_LN_EPS,
                    ..Default::default()
                };
                norm = Some(nn::layer_norm(p / "classifier" / "0", vec![c], cfg));
                (None, lin(p / "classifier" / "2", c), 0.0)
            }
            Family::Vit => (None, lin(p / "heads" / "head", c), 0.0),
            Family::Resnet | Family::Regnet => (None, lin(p / "fc", c), 0.0),
        };
        ImagenetClassifier {
            hidden,
            norm,
            fc,
            dropout,
            pool: !arch.is_vit(),
        }
    }
}

impl ModuleT for ImagenetClassifier {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = if self.pool {
            x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
        } else {
            x.shallow_clone()
        };
        if let Some(n) = &self.norm {
            // LayerNorm2d on a 1×1 map is a LayerNorm over the channels.
            y = y.apply(n);
        }
        if let Some(h) = &self.hidden {
            y = y.apply(h).hardswish();
        }
        y.dropout(self.dropout, train).apply(&self.fc)
    }
}

impl OnnxExport for ImagenetClassifier {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let mut y = x.to_string();
        if self.pool {
            let p = g.node("GlobalAveragePool", &[&y], vec![]);
            y = g.flatten(&p);
        }
        if let Some(n) = &self.norm {
            y = g.layer_norm(&y, n, CLASSIFIER_LN_EPS);
        }
        if let Some(h) = &self.hidden {
            let z = g.linear(&y, h);
            y = g.hardswish(&z);
        }
        g.linear(&y, &self.fc)
    }
}

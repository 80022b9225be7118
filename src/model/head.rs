//! fastai's classification head (`create_head` with its defaults) and torchvision's ImageNet
//! classifiers, which `classify-imagenet` uses instead of a head.

use super::Arch;
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
            lin1: kaiming_linear(idx(2), nf, 512),
            bn2: head_bn(idx(4), 512),
            lin2: kaiming_linear(idx(6), 512, n_classes),
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

/// torchvision's own pooling + 1000-class classifier (`fc` for resnet and RegNet, `classifier.1` for
/// mobilenet_v2, `classifier.0` LayerNorm2d + `classifier.2` for ConvNeXt, `heads.head` on the
/// class token for ViT).
#[derive(Debug)]
pub struct ImagenetClassifier {
    fc: nn::Linear,
    /// ConvNeXt's final LayerNorm (on the pooled features), which fastai's body leaves out.
    norm: Option<nn::LayerNorm>,
    /// mobilenet_v2's classifier starts with Dropout(0.2); resnet's `fc` has none.
    dropout: f64,
    /// ViT bodies already give [N, C] (the class token): nothing to pool.
    pool: bool,
}

impl ImagenetClassifier {
    pub fn new(p: &nn::Path, arch: Arch) -> Self {
        let c = arch.body_channels();
        let path = match arch {
            Arch::MobilenetV2 => p / "classifier" / "1",
            a if a.is_convnext() => p / "classifier" / "2",
            a if a.is_vit() => p / "heads" / "head",
            _ => p / "fc",
        };
        let norm = arch.is_convnext().then(|| {
            let cfg = nn::LayerNormConfig {
                eps: 1e-6,
                ..Default::default()
            };
            nn::layer_norm(p / "classifier" / "0", vec![c], cfg)
        });
        let dropout = if arch == Arch::MobilenetV2 { 0.2 } else { 0.0 };
        ImagenetClassifier {
            fc: nn::linear(path, c, 1000, Default::default()),
            norm,
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
        y.dropout(self.dropout, train).apply(&self.fc)
    }
}

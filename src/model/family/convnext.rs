//! torchvision ConvNeXt (`convnext_tiny`, `convnext_small`), with torchvision's key names. timm's
//! `convnext_*` layout is mapped onto these names on load ([`timm_remap`]).

use crate::model::onnx::{Graph, OnnxExport};
use crate::model::weights::{Shapes, Tensors};
use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy)]
pub struct ConvnextConfig {
    pub depths: [usize; 4],
    pub dims: [i64; 4],
    /// torchvision's default `stochastic_depth_prob`: what fastai's `vision_learner(dls,
    /// convnext_tiny)` trains with (timm's `drop_path_rate` defaults to 0 instead).
    pub stochastic_depth: f64,
}

pub const TINY: ConvnextConfig = ConvnextConfig {
    depths: [3, 3, 9, 3],
    dims: [96, 192, 384, 768],
    stochastic_depth: 0.1,
};
pub const SMALL: ConvnextConfig = ConvnextConfig {
    depths: [3, 3, 27, 3],
    dims: [96, 192, 384, 768],
    stochastic_depth: 0.4,
};

const EPS: f64 = 1e-6;

fn layer_norm(p: nn::Path, c: i64) -> nn::LayerNorm {
    crate::model::layers::layer_norm(p, c, EPS)
}

/// torchvision's init: normal(0, 0.02) weights (truncated there; the tails do not matter), zero bias.
fn init_cfg() -> (nn::Init, nn::Init) {
    (
        nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
        nn::Init::Const(0.0),
    )
}

fn conv(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    padding: i64,
    groups: i64,
) -> nn::Conv2D {
    let (ws_init, bs_init) = init_cfg();
    let cfg = nn::ConvConfig {
        stride,
        padding,
        groups,
        ws_init,
        bs_init,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

fn linear(p: nn::Path, n_in: i64, n_out: i64) -> nn::Linear {
    let (ws_init, bs_init) = init_cfg();
    let cfg = nn::LinearConfig {
        ws_init,
        bs_init: Some(bs_init),
        bias: true,
    };
    nn::linear(p, n_in, n_out, cfg)
}

/// `LayerNorm2d`: LayerNorm over the channels of an NCHW map.
#[derive(Debug)]
pub struct LayerNorm2d(nn::LayerNorm);

impl LayerNorm2d {
    pub fn new(p: nn::Path, c: i64) -> Self {
        LayerNorm2d(layer_norm(p, c))
    }
}

impl Module for LayerNorm2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.permute([0, 2, 3, 1]).apply(&self.0).permute([0, 3, 1, 2])
    }
}

impl OnnxExport for LayerNorm2d {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let y = g.transpose(x, &[0, 2, 3, 1]);
        let y = g.layer_norm(&y, &self.0, EPS);
        g.transpose(&y, &[0, 3, 1, 2])
    }
}

/// torchvision's `StochasticDepth(p, "row")`: in training, each sample's residual branch is dropped
/// with probability `p` and the survivors scaled by 1/(1-p); identity in eval mode.
fn stochastic_depth(x: Tensor, p: f64, train: bool) -> Tensor {
    if !train || p == 0.0 {
        return x;
    }
    let survival = 1.0 - p;
    let mut noise = Tensor::empty([x.size()[0], 1, 1, 1], (Kind::Float, x.device()));
    let noise = noise.bernoulli_float_(survival);
    if survival > 0.0 {
        x * (noise / survival)
    } else {
        x * noise
    }
}

/// `CNBlock`: depthwise 7×7 (`block.0`), LayerNorm (`block.2`, channels last), Linear 4× (`block.3`),
/// GELU, Linear back (`block.5`), times `layer_scale`, stochastic depth, plus the input.
#[derive(Debug)]
struct Block {
    dwconv: nn::Conv2D,
    norm: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    layer_scale: Tensor,
    sd_prob: f64,
}

impl Block {
    fn new(p: nn::Path, dim: i64, sd_prob: f64) -> Self {
        let b = &p / "block";
        Block {
            dwconv: conv(&b / "0", dim, dim, 7, 1, 3, dim),
            norm: layer_norm(&b / "2", dim),
            fc1: linear(&b / "3", dim, 4 * dim),
            fc2: linear(&b / "5", 4 * dim, dim),
            layer_scale: p.var("layer_scale", &[dim, 1, 1], nn::Init::Const(1e-6)),
            sd_prob,
        }
    }
}

impl ModuleT for Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = x
            .apply(&self.dwconv)
            .permute([0, 2, 3, 1])
            .apply(&self.norm)
            .apply(&self.fc1)
            .gelu("none")
            .apply(&self.fc2)
            .permute([0, 3, 1, 2]);
        stochastic_depth(&self.layer_scale * y, self.sd_prob, train) + x
    }
}

impl OnnxExport for Block {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let dim = self.dwconv.ws.size()[0];
        let y = g.conv(x, &self.dwconv, 1, 3, dim);
        let y = g.transpose(&y, &[0, 2, 3, 1]);
        let y = g.layer_norm(&y, &self.norm, EPS);
        let y = g.linear_nd(&y, &self.fc1);
        let y = g.gelu(&y);
        let y = g.linear_nd(&y, &self.fc2);
        let y = g.transpose(&y, &[0, 3, 1, 2]);
        let scale = g.weight("layer_scale", &self.layer_scale);
        let y = g.mul(&y, &scale);
        g.add(&y, x)
    }
}

#[derive(Debug)]
enum Layer {
    /// Stem (conv 4×4/4 then norm) or downsampling (norm then conv 2×2/2).
    Conv(nn::Conv2D),
    Norm(LayerNorm2d),
    Block(Block),
}

/// `features`: fastai's body (its default cut, before `avgpool`; the final LayerNorm sits in
/// `classifier`, as in timm's `forward_features`, so neither fastai path applies it).
#[derive(Debug)]
pub struct ConvnextBody {
    layers: Vec<Layer>,
}

impl ConvnextBody {
    pub fn new(p: &nn::Path, cfg: ConvnextConfig) -> Self {
        let f = p / "features";
        let mut layers = vec![
            Layer::Conv(conv(&f / "0" / "0", 3, cfg.dims[0], 4, 4, 0, 1)),
            Layer::Norm(LayerNorm2d::new(&f / "0" / "1", cfg.dims[0])),
        ];
        let total: usize = cfg.depths.iter().sum();
        let mut block_id = 0;
        for s in 0..4 {
            let dim = cfg.dims[s];
            if s > 0 {
                let d = &f / (2 * s).to_string();
                layers.push(Layer::Norm(LayerNorm2d::new(&d / "0", cfg.dims[s - 1])));
                layers.push(Layer::Conv(conv(
                    &d / "1",
                    cfg.dims[s - 1],
                    dim,
                    2,
                    2,
                    0,
                    1,
                )));
            }
            let stage = &f / (2 * s + 1).to_string();
            for i in 0..cfg.depths[s] {
                // Linearly increasing drop probability over all blocks, as torchvision.
                let sd = cfg.stochastic_depth * block_id as f64 / (total - 1) as f64;
                layers.push(Layer::Block(Block::new(&stage / i.to_string(), dim, sd)));
                block_id += 1;
            }
        }
        ConvnextBody { layers }
    }
}

impl ModuleT for ConvnextBody {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for l in &self.layers {
            y = match l {
                Layer::Conv(c) => y.apply(c),
                Layer::Norm(n) => y.apply(n),
                Layer::Block(b) => b.forward_t(&y, train),
            };
        }
        y
    }
}

impl OnnxExport for ConvnextBody {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let mut y = x.to_string();
        for l in &self.layers {
            y = match l {
                // The stem (4×4/4) and the downsampling convs (2×2/2): stride = kernel, no padding.
                Layer::Conv(c) => g.conv(&y, c, c.ws.size()[2], 0, 1),
                Layer::Norm(n) => n.onnx(g, &y),
                Layer::Block(b) => b.onnx(g, &y),
            };
        }
        y
    }
}

/// Whether a body or top layer (torchvision name, no `body.` prefix) is a LayerNorm: fastai counts
/// LayerNorm among its `norm_types`, so these train in frozen groups (`train_bn`) and get no
/// weight decay.
pub fn is_layer_norm(layer: &str) -> bool {
    let parts: Vec<&str> = layer.split('.').collect();
    match parts.as_slice() {
        ["features", "0", "1"] | ["classifier", "0"] => true,
        ["features", s, "0"] => matches!(*s, "2" | "4" | "6"),
        ["features", _, _, "block", "2"] => true,
        _ => false,
    }
}

/// Whether a checkpoint uses timm's ConvNeXt names (`stem.0`, `stages.N`).
pub fn timm_detect(s: &Shapes) -> bool {
    s.contains_key("stem.0.weight") && s.contains_key("stages.0.blocks.0.conv_dw.weight")
}

/// The ConvNeXt a checkpoint (torchvision's or timm's names) was saved from, by the third stage's
/// depth (9 blocks: tiny, 27: small) and the stem's width (96 for both).
pub fn guess(s: &Shapes) -> Option<&'static str> {
    let tv = s.contains_key("features.0.0.weight");
    let stem = if tv {
        "features.0.0.weight"
    } else {
        "stem.0.weight"
    };
    let block = |b: usize| {
        if tv {
            format!("features.5.{b}.block.0.weight")
        } else {
            format!("stages.2.blocks.{b}.conv_dw.weight")
        }
    };
    if s.get(stem)?.first() != Some(&96) {
        return None;
    }
    match (0..).take_while(|&b| s.contains_key(&block(b))).count() {
        9 => Some("convnext_tiny"),
        27 => Some("convnext_small"),
        _ => None,
    }
}

/// timm → torchvision: `stem.{0,1}` → `features.0.{0,1}`, `stages.S.downsample.I` →
/// `features.{2S}.I`, `stages.S.blocks.B.{conv_dw,norm,mlp.fc1,mlp.fc2}` →
/// `features.{2S+1}.B.block.{0,2,3,5}`, `gamma` `[C]` → `layer_scale` `[C,1,1]`, `head.norm`/`head.fc`
/// → `classifier.0`/`classifier.2`.
pub fn timm_remap(t: Tensors) -> Result<Tensors, String> {
    t.into_iter()
        .map(|(k, v)| match from_timm_key(&k) {
            Some(name) if name.ends_with("layer_scale") => {
                let c = v.numel() as i64;
                Ok((name, v.reshape([c, 1, 1])))
            }
            Some(name) => Ok((name, v)),
            None => Err(format!("unexpected key `{k}` for timm's ConvNeXt")),
        })
        .collect()
}

fn from_timm_key(key: &str) -> Option<String> {
    if let Some(rest) = key.strip_prefix("stem.") {
        return Some(format!("features.0.{rest}"));
    }
    if let Some(rest) = key.strip_prefix("head.norm.") {
        return Some(format!("classifier.0.{rest}"));
    }
    if let Some(rest) = key.strip_prefix("head.fc.") {
        return Some(format!("classifier.2.{rest}"));
    }
    let rest = key.strip_prefix("stages.")?;
    let (stage, rest) = rest.split_once('.')?;
    let stage: usize = stage.parse().ok()?;
    if let Some(rest) = rest.strip_prefix("downsample.") {
        return Some(format!("features.{}.{rest}", 2 * stage));
    }
    let rest = rest.strip_prefix("blocks.")?;
    let (block, rest) = rest.split_once('.')?;
    let block: usize = block.parse().ok()?;
    let prefix = format!("features.{}.{block}", 2 * stage + 1);
    if rest == "gamma" {
        return Some(format!("{prefix}.layer_scale"));
    }
    let (layer, param) = [
        ("conv_dw.", "0"),
        ("norm.", "2"),
        ("mlp.fc1.", "3"),
        ("mlp.fc2.", "5"),
    ]
    .iter()
    .find_map(|(from, to)| rest.strip_prefix(from).map(|p| (*to, p)))?;
    Some(format!("{prefix}.block.{layer}.{param}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timm_keys_map_to_torchvision_names() {
        for (timm, tv) in [
            ("stem.0.weight", "features.0.0.weight"),
            ("stem.1.bias", "features.0.1.bias"),
            ("stages.0.blocks.2.gamma", "features.1.2.layer_scale"),
            (
                "stages.2.blocks.26.conv_dw.weight",
                "features.5.26.block.0.weight",
            ),
            ("stages.1.blocks.0.norm.bias", "features.3.0.block.2.bias"),
            (
                "stages.3.blocks.1.mlp.fc2.weight",
                "features.7.1.block.5.weight",
            ),
            ("stages.3.downsample.1.weight", "features.6.1.weight"),
            ("head.norm.weight", "classifier.0.weight"),
            ("head.fc.bias", "classifier.2.bias"),
        ] {
            assert_eq!(from_timm_key(timm).as_deref(), Some(tv), "{timm}");
        }
        assert_eq!(from_timm_key("stages.0.blocks.0.mlp.grn.weight"), None);
    }

    #[test]
    fn layer_norms_are_found_by_name() {
        for l in [
            "features.0.1",
            "features.4.0",
            "features.5.3.block.2",
            "classifier.0",
        ] {
            assert!(is_layer_norm(l), "{l}");
        }
        for l in [
            "features.0.0",
            "features.4.1",
            "features.5.3.block.3",
            "features.5.0",
        ] {
            assert!(!is_layer_norm(l), "{l}");
        }
    }
}

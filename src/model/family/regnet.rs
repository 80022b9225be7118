//! torchvision RegNetX/RegNetY (`regnet_x_400mf`, `regnet_y_400mf/800mf/1_6gf`), with torchvision's
//! key names. timm's `regnetx_*`/`regnety_*` key layout is mapped onto these names on load
//! ([`from_timm_key`]).

use crate::model::layers::{Act, ConvBnAct, ConvSpec, Norm, Pad};
use crate::model::onnx::{Graph, OnnxExport};
use crate::model::weights::{Shapes, Tensors};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// One network's stages, as torchvision's `BlockParams.from_init_params` quantises them (the
/// widths after `_adjust_widths_groups_compatibilty`, read from torchvision 0.26; the parity test
/// catches any mistake here). Bottleneck multiplier 1 and stride 2 in every stage.
#[derive(Debug, Clone, Copy)]
pub struct RegnetConfig {
    pub depths: [usize; 4],
    pub widths: [i64; 4],
    pub group_width: i64,
    /// RegNetY: squeeze-excitation with `round(0.25 · block input width)` channels.
    pub se: bool,
}

pub const Y_400MF: RegnetConfig = RegnetConfig {
    depths: [1, 3, 6, 6],
    widths: [48, 104, 208, 440],
    group_width: 8,
    se: true,
};
pub const Y_800MF: RegnetConfig = RegnetConfig {
    depths: [1, 3, 8, 2],
    widths: [64, 144, 320, 784],
    group_width: 16,
    se: true,
};
pub const Y_1_6GF: RegnetConfig = RegnetConfig {
    depths: [2, 6, 17, 2],
    widths: [48, 120, 336, 888],
    group_width: 24,
    se: true,
};
pub const X_400MF: RegnetConfig = RegnetConfig {
    depths: [1, 2, 7, 12],
    widths: [32, 64, 160, 400],
    group_width: 16,
    se: false,
};

const STEM_WIDTH: i64 = 32;

/// torchvision's ResNet-style init: normal(0, √(2/fan_out)) for every conv (the squeeze-excitation's
/// here; the others through [`ConvSpec::fan_out_init`]).
fn conv(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    groups: i64,
    bias: bool,
) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: (k - 1) / 2,
        groups,
        bias,
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: (2.0 / (k * k * c_out) as f64).sqrt(),
        },
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// `Conv2dNormActivation` without activation: keys `.0` (conv) and `.1` (BatchNorm).
fn conv_bn(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, groups: i64) -> ConvBnAct {
    let spec = ConvSpec::new(k, stride, groups, Act::None).fan_out_init();
    ConvBnAct::new(&p, c_in, c_out, spec, Norm::TORCH, Pad::Torch)
}

#[derive(Debug)]
struct SqueezeExcitation {
    fc1: nn::Conv2D,
    fc2: nn::Conv2D,
}

impl SqueezeExcitation {
    fn forward(&self, x: &Tensor) -> Tensor {
        let s = x
            .adaptive_avg_pool2d([1, 1])
            .apply(&self.fc1)
            .relu()
            .apply(&self.fc2)
            .sigmoid();
        x * s
    }

    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let s = g.global_avg_pool(x);
        let s = g.conv(&s, &self.fc1, 1, 0, 1);
        let s = g.relu(&s);
        let s = g.conv(&s, &self.fc2, 1, 0, 1);
        let s = g.sigmoid(&s);
        g.mul(x, &s)
    }
}

/// `ResBottleneckBlock`: `f` = 1×1 (a), grouped 3×3 (b), optional SE, 1×1 (c); `proj` when the
/// shape changes.
#[derive(Debug)]
struct Block {
    a: ConvBnAct,
    b: ConvBnAct,
    se: Option<SqueezeExcitation>,
    c: ConvBnAct,
    proj: Option<ConvBnAct>,
}

impl Block {
    fn new(p: nn::Path, w_in: i64, w_out: i64, stride: i64, cfg: &RegnetConfig) -> Self {
        let f = &p / "f";
        let groups = w_out / cfg.group_width;
        let se = cfg.se.then(|| {
            // Widths are multiples of 8, so 0.25 · width is exact (no rounding question).
            let squeeze = w_in / 4;
            SqueezeExcitation {
                fc1: conv(&f / "se" / "fc1", w_out, squeeze, 1, 1, 1, true),
                fc2: conv(&f / "se" / "fc2", squeeze, w_out, 1, 1, 1, true),
            }
        });
        Block {
            a: conv_bn(&f / "a", w_in, w_out, 1, 1, 1),
            b: conv_bn(&f / "b", w_out, w_out, 3, stride, groups),
            se,
            c: conv_bn(&f / "c", w_out, w_out, 1, 1, 1),
            proj: (w_in != w_out || stride != 1)
                .then(|| conv_bn(&p / "proj", w_in, w_out, 1, stride, 1)),
        }
    }
}

impl ModuleT for Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let shortcut = match &self.proj {
            Some(p) => p.forward_t(x, train),
            None => x.shallow_clone(),
        };
        let mut y = self.a.forward_relu(x, train);
        y = self.b.forward_relu(&y, train);
        if let Some(se) = &self.se {
            y = se.forward(&y);
        }
        // relu(shortcut + c(y)); in the inference plan the add and the ReLU run inside c.
        self.c.forward_add(&y, &shortcut, true, train)
    }
}

impl OnnxExport for Block {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let y = self.a.onnx(g, x);
        let y = g.relu(&y);
        let y = self.b.onnx(g, &y);
        let mut y = g.relu(&y);
        if let Some(se) = &self.se {
            y = se.onnx(g, &y);
        }
        let y = self.c.onnx(g, &y);
        let shortcut = match &self.proj {
            Some(p) => p.onnx(g, x),
            None => x.to_string(),
        };
        let sum = g.add(&shortcut, &y);
        g.relu(&sum)
    }
}

/// `stem` + `trunk_output`: fastai's body (its default cut, before the `avgpool` child).
#[derive(Debug)]
pub struct RegnetBody {
    stem: ConvBnAct,
    blocks: Vec<Block>,
}

impl RegnetBody {
    pub fn new(p: &nn::Path, cfg: RegnetConfig) -> Self {
        let mut blocks = Vec::new();
        let mut w_in = STEM_WIDTH;
        for (s, (&depth, &w_out)) in cfg.depths.iter().zip(&cfg.widths).enumerate() {
            let stage = p / "trunk_output" / format!("block{}", s + 1);
            for i in 0..depth {
                let bp = &stage / format!("block{}-{i}", s + 1);
                blocks.push(Block::new(
                    bp,
                    w_in,
                    w_out,
                    if i == 0 { 2 } else { 1 },
                    &cfg,
                ));
                w_in = w_out;
            }
        }
        RegnetBody {
            stem: conv_bn(p / "stem", 3, STEM_WIDTH, 3, 2, 1),
            blocks,
        }
    }
}

impl ModuleT for RegnetBody {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = self.stem.forward_t(x, train).relu();
        for b in &self.blocks {
            y = b.forward_t(&y, train);
        }
        y
    }
}

impl OnnxExport for RegnetBody {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let y = self.stem.onnx(g, x);
        let mut y = g.relu(&y);
        for b in &self.blocks {
            y = b.onnx(g, &y);
        }
        y
    }
}

/// Whether a checkpoint uses timm's RegNet names (`stem.conv`, `s1.b1...`).
pub fn timm_detect(s: &Shapes) -> bool {
    s.contains_key("stem.conv.weight") && s.keys().any(|k| k.starts_with("s1.b1."))
}

/// The RegNet a checkpoint (torchvision's or timm's names) was saved from: the one whose stage
/// depths, widths and squeeze-excitation all match (timm's `regnetx_004`, unlike
/// `regnetx_004_tv`, has other widths: no match).
pub fn guess(s: &Shapes) -> Option<&'static str> {
    let tv = s.contains_key("stem.0.weight");
    let first_conv = |stage: usize, block: usize| {
        if tv {
            format!("trunk_output.block{stage}.block{stage}-{block}.f.a.0.weight")
        } else {
            format!("s{stage}.b{}.conv1.conv.weight", block + 1)
        }
    };
    let se = s.keys().any(|k| k.contains("se.fc1.weight"));
    let mut depths = [0usize; 4];
    let mut widths = [0i64; 4];
    for st in 0..4 {
        widths[st] = s.get(&first_conv(st + 1, 0))?.first().copied()?;
        depths[st] = (0..)
            .take_while(|&b| s.contains_key(&first_conv(st + 1, b)))
            .count();
    }
    [
        ("regnet_y_400mf", Y_400MF),
        ("regnet_y_800mf", Y_800MF),
        ("regnet_y_1_6gf", Y_1_6GF),
        ("regnet_x_400mf", X_400MF),
    ]
    .into_iter()
    .find(|(_, c)| c.depths == depths && c.widths == widths && c.se == se)
    .map(|(a, _)| a)
}

/// Renames a timm checkpoint's tensors (see [`from_timm_key`]); the architecture is checked by
/// strict loading afterwards.
pub fn timm_remap(t: Tensors) -> Result<Tensors, String> {
    t.into_iter()
        .map(|(k, v)| match from_timm_key(&k) {
            Some(name) => Ok((name, v)),
            None => Err(format!("unexpected key `{k}` for timm's RegNet")),
        })
        .collect()
}

/// timm → torchvision key: `stem.conv` → `stem.0`, `s{S}.b{B}.conv1.conv` →
/// `trunk_output.block{S}.block{S}-{B-1}.f.a.0`, `conv2`/`conv3` → `f.b`/`f.c`, `se.fc*` →
/// `f.se.fc*`, `downsample` → `proj`, `head.fc` → `fc`. `None` for keys outside that layout.
pub fn from_timm_key(key: &str) -> Option<String> {
    if let Some(rest) = key.strip_prefix("stem.") {
        return Some(format!("stem.{}", conv_bn_index(rest)?));
    }
    if let Some(rest) = key.strip_prefix("head.fc.") {
        return Some(format!("fc.{rest}"));
    }
    let rest = key.strip_prefix('s')?;
    let (stage, rest) = rest.split_once(".b")?;
    let (block, rest) = rest.split_once('.')?;
    let stage: usize = stage.parse().ok()?;
    let block: usize = block.parse().ok()?;
    let prefix = format!(
        "trunk_output.block{stage}.block{stage}-{}",
        block.checked_sub(1)?
    );
    let (layer, rest) = rest.split_once('.')?;
    let mapped = match layer {
        "conv1" => format!("f.a.{}", conv_bn_index(rest)?),
        "conv2" => format!("f.b.{}", conv_bn_index(rest)?),
        "conv3" => format!("f.c.{}", conv_bn_index(rest)?),
        "downsample" => format!("proj.{}", conv_bn_index(rest)?),
        "se" => format!("f.se.{rest}"),
        _ => return None,
    };
    Some(format!("{prefix}.{mapped}"))
}

/// timm's `ConvNormAct` names (`conv.weight`, `bn.*`) as torchvision's indices (`0.weight`, `1.*`).
fn conv_bn_index(rest: &str) -> Option<String> {
    if let Some(r) = rest.strip_prefix("conv.") {
        Some(format!("0.{r}"))
    } else {
        rest.strip_prefix("bn.").map(|r| format!("1.{r}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timm_keys_map_to_torchvision_names() {
        for (timm, tv) in [
            ("stem.conv.weight", "stem.0.weight"),
            ("stem.bn.running_var", "stem.1.running_var"),
            (
                "s1.b1.conv1.conv.weight",
                "trunk_output.block1.block1-0.f.a.0.weight",
            ),
            (
                "s3.b17.conv2.bn.bias",
                "trunk_output.block3.block3-16.f.b.1.bias",
            ),
            (
                "s2.b1.se.fc2.bias",
                "trunk_output.block2.block2-0.f.se.fc2.bias",
            ),
            (
                "s4.b1.downsample.bn.weight",
                "trunk_output.block4.block4-0.proj.1.weight",
            ),
            ("head.fc.weight", "fc.weight"),
        ] {
            assert_eq!(from_timm_key(timm).as_deref(), Some(tv), "{timm}");
        }
        assert_eq!(from_timm_key("s1.b0.conv1.conv.weight"), None);
        assert_eq!(from_timm_key("layer1.0.conv1.weight"), None);
    }
}

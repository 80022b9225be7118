//! torchvision ResNet (v1.5: stride in the 3x3 conv of bottlenecks), with torchvision's key names.

use crate::model::layers::{Act, ConvBnAct, ConvSpec, Norm, Pad};
use crate::model::onnx::{Graph, OnnxExport};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// A conv (bias-free, padding `(k-1)/2`) and its BatchNorm at the keys torchvision gives them.
#[allow(clippy::too_many_arguments)]
fn conv_bn(
    p: &nn::Path,
    conv: &str,
    bn: &str,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    groups: i64,
) -> ConvBnAct {
    let spec = ConvSpec::new(k, stride, groups, Act::None);
    ConvBnAct::named(p / conv, p / bn, c_in, c_out, spec, Norm::TORCH, Pad::Torch)
}

/// torchvision's `groups` and `width_per_group` (64 for plain ResNet).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub groups: i64,
    pub width_per_group: i64,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            groups: 1,
            width_per_group: 64,
        }
    }
}

#[derive(Debug)]
struct Block {
    convs: Vec<ConvBnAct>,
    downsample: Option<ConvBnAct>,
}

impl ModuleT for Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let identity = match &self.downsample {
            Some(d) => d.forward_t(x, train),
            None => x.shallow_clone(),
        };
        let mut y = x.shallow_clone();
        let last = self.convs.len() - 1;
        for c in &self.convs[..last] {
            y = c.forward_relu(&y, train);
        }
        // `out += identity; relu(inplace=True)` as torchvision, in place (BatchNorm's backward
        // does not need its output, so two activation-sized buffers per block are never made);
        // in the inference plan the add and the ReLU run inside the last convolution.
        self.convs[last].forward_add(&y, &identity, true, train)
    }
}

impl OnnxExport for Block {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let mut y = x.to_string();
        let last = self.convs.len() - 1;
        for (i, c) in self.convs.iter().enumerate() {
            y = c.onnx(g, &y);
            if i != last {
                y = g.relu(&y);
            }
        }
        let identity = match &self.downsample {
            Some(d) => d.onnx(g, x),
            None => x.to_string(),
        };
        let sum = g.add(&y, &identity);
        g.relu(&sum)
    }
}

fn basic_block(p: nn::Path, c_in: i64, planes: i64, stride: i64) -> Block {
    let convs = vec![
        conv_bn(&p, "conv1", "bn1", c_in, planes, 3, stride, 1),
        conv_bn(&p, "conv2", "bn2", planes, planes, 3, 1, 1),
    ];
    let downsample = (stride != 1 || c_in != planes)
        .then(|| conv_bn(&(&p / "downsample"), "0", "1", c_in, planes, 1, stride, 1));
    Block { convs, downsample }
}

/// torchvision's `Bottleneck`: the 3×3 conv is `width = planes · width_per_group / 64 · groups`
/// wide and grouped (ResNeXt: 32 groups of 4; Wide ResNet: one group, twice as wide).
fn bottleneck(p: nn::Path, c_in: i64, planes: i64, stride: i64, shape: Shape) -> Block {
    let out = planes * 4;
    let width = planes * shape.width_per_group / 64 * shape.groups;
    let convs = vec![
        conv_bn(&p, "conv1", "bn1", c_in, width, 1, 1, 1),
        conv_bn(&p, "conv2", "bn2", width, width, 3, stride, shape.groups),
        conv_bn(&p, "conv3", "bn3", width, out, 1, 1, 1),
    ];
    let downsample = (stride != 1 || c_in != out)
        .then(|| conv_bn(&(&p / "downsample"), "0", "1", c_in, out, 1, stride, 1));
    Block { convs, downsample }
}

/// Everything up to and including `layer4`: fastai's body (`children()[:-2]`).
#[derive(Debug)]
pub struct ResnetBody {
    stem: ConvBnAct,
    layers: Vec<Block>,
}

impl ResnetBody {
    /// `bottleneck` selects resnet50-style blocks; `blocks` is the block count per stage.
    pub fn new(p: &nn::Path, blocks: [usize; 4], use_bottleneck: bool) -> Self {
        Self::with_shape(p, blocks, use_bottleneck, Shape::default())
    }

    /// Bottleneck networks with grouped or widened 3×3 convolutions (ResNeXt, Wide ResNet).
    pub fn with_shape(
        p: &nn::Path,
        blocks: [usize; 4],
        use_bottleneck: bool,
        shape: Shape,
    ) -> Self {
        let expansion = if use_bottleneck { 4 } else { 1 };
        let mut layers = Vec::new();
        let mut c_in = 64;
        for (stage, &n) in blocks.iter().enumerate() {
            let planes = 64 << stage;
            let lp = p / format!("layer{}", stage + 1);
            for i in 0..n {
                let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                let bp = &lp / i.to_string();
                layers.push(if use_bottleneck {
                    bottleneck(bp, c_in, planes, stride, shape)
                } else {
                    basic_block(bp, c_in, planes, stride)
                });
                c_in = planes * expansion;
            }
        }
        ResnetBody {
            stem: conv_bn(p, "conv1", "bn1", 3, 64, 7, 2, 1),
            layers,
        }
    }
}

impl ModuleT for ResnetBody {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y =
            self.stem
                .forward_relu(x, train)
                .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for b in &self.layers {
            y = b.forward_t(&y, train);
        }
        y
    }
}

impl OnnxExport for ResnetBody {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let y = self.stem.onnx(g, x);
        let y = g.relu(&y);
        let mut y = g.max_pool(&y, 3, 2, 1);
        for b in &self.layers {
            y = b.onnx(g, &y);
        }
        y
    }
}

//! torchvision ResNet (v1.5: stride in the 3x3 conv of bottlenecks), with torchvision's key names.

use tch::nn::{self, ModuleT};
use tch::Tensor;

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, pad: i64) -> nn::Conv2D {
    grouped_conv(p, c_in, c_out, k, stride, pad, 1)
}

fn grouped_conv(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    pad: i64,
    groups: i64,
) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: pad,
        bias: false,
        groups,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, Default::default())
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
struct Downsample {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

#[derive(Debug)]
struct Block {
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    downsample: Option<Downsample>,
}

impl ModuleT for Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (c, b)) in self.convs.iter().enumerate() {
            y = y.apply(c).apply_t(b, train);
            if i != last {
                let _ = y.relu_();
            }
        }
        let identity = match &self.downsample {
            Some(d) => x.apply(&d.conv).apply_t(&d.bn, train),
            None => x.shallow_clone(),
        };
        // In place, as torchvision (`out += identity; relu(inplace=True)`): BatchNorm's backward
        // does not need its output, so two activation-sized buffers per block are never made.
        let _ = y.g_add_(&identity);
        let _ = y.relu_();
        y
    }
}

fn basic_block(p: nn::Path, c_in: i64, planes: i64, stride: i64) -> Block {
    let convs = vec![
        (
            conv(&p / "conv1", c_in, planes, 3, stride, 1),
            bn(&p / "bn1", planes),
        ),
        (
            conv(&p / "conv2", planes, planes, 3, 1, 1),
            bn(&p / "bn2", planes),
        ),
    ];
    let downsample = (stride != 1 || c_in != planes).then(|| Downsample {
        conv: conv(&p / "downsample" / "0", c_in, planes, 1, stride, 0),
        bn: bn(&p / "downsample" / "1", planes),
    });
    Block { convs, downsample }
}

/// torchvision's `Bottleneck`: the 3×3 conv is `width = planes · width_per_group / 64 · groups`
/// wide and grouped (ResNeXt: 32 groups of 4; Wide ResNet: one group, twice as wide).
fn bottleneck(p: nn::Path, c_in: i64, planes: i64, stride: i64, shape: Shape) -> Block {
    let out = planes * 4;
    let width = planes * shape.width_per_group / 64 * shape.groups;
    let convs = vec![
        (
            conv(&p / "conv1", c_in, width, 1, 1, 0),
            bn(&p / "bn1", width),
        ),
        (
            grouped_conv(&p / "conv2", width, width, 3, stride, 1, shape.groups),
            bn(&p / "bn2", width),
        ),
        (conv(&p / "conv3", width, out, 1, 1, 0), bn(&p / "bn3", out)),
    ];
    let downsample = (stride != 1 || c_in != out).then(|| Downsample {
        conv: conv(&p / "downsample" / "0", c_in, out, 1, stride, 0),
        bn: bn(&p / "downsample" / "1", out),
    });
    Block { convs, downsample }
}

/// Everything up to and including `layer4`: fastai's body (`children()[:-2]`).
#[derive(Debug)]
pub struct ResnetBody {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
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
            conv1: conv(p / "conv1", 3, 64, 7, 2, 3),
            bn1: bn(p / "bn1", 64),
            layers,
        }
    }
}

impl ModuleT for ResnetBody {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu_()
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for b in &self.layers {
            y = b.forward_t(&y, train);
        }
        y
    }
}

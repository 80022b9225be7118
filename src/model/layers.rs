//! The kit every family builds with: [`Part`], torchvision's `Conv2dNormActivation` and
//! `SqueezeExcitation`, "SAME" padding, stochastic depth, `_make_divisible`. Below it only the
//! ONNX writer and the inference plan (`super::plan`), so the families stay leaves.

use super::onnx::{Graph, OnnxExport};
use super::plan::fused::{self, Geometry, Post};
use super::plan::{FoldCache, Planned};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// A part of a network: trainable with tch, and exportable to ONNX by the same definition.
pub trait Part: ModuleT + OnnxExport {}
impl<T: ModuleT + OnnxExport> Part for T {}

/// Parts applied one after the other (PyTorch's `nn.Sequential`), in tch and in ONNX.
#[derive(Debug, Default)]
pub struct Sequential(pub Vec<Box<dyn Part>>);

impl Sequential {
    pub fn push(&mut self, part: impl Part + 'static) {
        self.0.push(Box::new(part));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl ModuleT for Sequential {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for l in &self.0 {
            y = l.forward_t(&y, train);
        }
        y
    }
}

impl OnnxExport for Sequential {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let mut y = x.to_string();
        for l in &self.0 {
            y = l.onnx(g, &y);
        }
        y
    }
}

/// A LayerNorm over the last dimension of width `c` (ConvNeXt and ViT both use eps 1e-6).
pub fn layer_norm(p: nn::Path, c: i64, eps: f64) -> nn::LayerNorm {
    let cfg = nn::LayerNormConfig {
        eps,
        ..Default::default()
    };
    nn::layer_norm(p, vec![c], cfg)
}

/// torchvision's `_make_divisible(v, 8)`: round to the nearest multiple of 8, never more than 10%
/// below `v`.
pub fn make_divisible(v: f64, divisor: i64) -> i64 {
    let d = divisor as f64;
    let mut new = ((v + d / 2.0) as i64 / divisor * divisor).max(divisor);
    if (new as f64) < 0.9 * v {
        new += divisor;
    }
    new
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Relu6,
    Hardswish,
    Silu,
}

impl Act {
    /// The same activation as a oneDNN post-op (the inference plan's fused convolutions).
    fn post(self) -> Post {
        match self {
            Act::None => Post::None,
            Act::Relu => Post::Relu,
            Act::Relu6 => Post::Clamp(0.0, 6.0),
            Act::Hardswish => Post::Hardswish,
            Act::Silu => Post::Silu,
        }
    }

    /// The activation in ONNX.
    pub fn onnx(self, g: &mut Graph, x: &str) -> String {
        match self {
            Act::None => x.to_string(),
            Act::Relu => g.relu(x),
            Act::Relu6 => g.clip(x, 0.0, 6.0),
            Act::Hardswish => g.hardswish(x),
            Act::Silu => g.silu(x),
        }
    }

    pub fn apply(self, x: Tensor) -> Tensor {
        match self {
            Act::None => x,
            Act::Relu => x.relu(),
            // torchvision's nn.ReLU6(inplace=True), i.e. hardtanh(0, 6) in place on a tensor
            // nobody else holds: one fused backward kernel (clamp's backward is ge + le + and +
            // where, a quarter of a frozen MobileNetV2 epoch's time here) and no extra buffer.
            Act::Relu6 => {
                let mut x = x;
                let _ = x.relu6_();
                x
            }
            Act::Hardswish => x.hardswish(),
            Act::Silu => x.silu(),
        }
    }
}

/// How a convolution pads: PyTorch's symmetric `(k-1)/2`, or TensorFlow's "SAME" (output
/// `ceil(in/stride)`, the odd pixel of padding on the bottom/right). Checkpoints converted from
/// TensorFlow (EfficientNet-Lite, timm's `tf_*`) were trained with "SAME"; at stride 2 it shifts
/// the sampling grid by one pixel, which changes every output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pad {
    Torch,
    Same,
}

/// BatchNorm settings of a family (they differ: torchvision MobileNetV3 uses eps 1e-3 and
/// momentum 0.01, EfficientNet-B* the PyTorch defaults, TensorFlow ports eps 1e-3).
#[derive(Debug, Clone, Copy)]
pub struct Norm {
    pub eps: f64,
    pub momentum: f64,
}

impl Norm {
    pub const TORCH: Norm = Norm {
        eps: 1e-5,
        momentum: 0.1,
    };

    pub fn bn(self, p: nn::Path, c: i64) -> nn::BatchNorm {
        nn::batch_norm2d(
            p,
            c,
            nn::BatchNormConfig {
                eps: self.eps,
                momentum: self.momentum,
                ..Default::default()
            },
        )
    }
}

/// A bias-free (unless `bias`) 2-D convolution with either padding rule.
#[derive(Debug)]
pub struct Conv {
    conv: nn::Conv2D,
    k: i64,
    stride: i64,
    groups: i64,
    pad: Pad,
}

#[allow(clippy::too_many_arguments)]
fn conv(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    groups: i64,
    bias: bool,
    pad: Pad,
    fan_out_init: bool,
) -> Conv {
    let default = nn::ConvConfig::default();
    let ws_init = if fan_out_init {
        nn::Init::Randn {
            mean: 0.0,
            stdev: (2.0 / (k * k * c_out) as f64).sqrt(),
        }
    } else {
        default.ws_init
    };
    let cfg = nn::ConvConfig {
        stride,
        padding: (k - 1) / 2,
        groups,
        bias,
        ws_init,
        ..default
    };
    Conv {
        conv: nn::conv2d(p, c_in, c_out, k, cfg),
        k,
        stride,
        groups,
        pad,
    }
}

/// TensorFlow "SAME": total padding so that the output is `ceil(i / s)`, split floor/ceil.
pub fn same_padding(i: i64, k: i64, s: i64) -> (i64, i64) {
    let out = (i + s - 1) / s;
    let total = ((out - 1) * s + k - i).max(0);
    (total / 2, total - total / 2)
}

impl Conv {
    /// The geometry this convolution runs with on an input of `size`, and TensorFlow's uneven
    /// "SAME" padding `[l, r, t, b]` to apply to the input first, if it needs one (even padding
    /// is left to the convolution).
    fn geometry(&self, size: &[i64]) -> (Geometry, Option<[i64; 4]>) {
        let geometry = |padding| Geometry {
            stride: self.stride,
            padding,
            groups: self.groups,
        };
        match self.pad {
            Pad::Torch => (geometry([(self.k - 1) / 2; 2]), None),
            Pad::Same => {
                let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
                let (t, b) = same_padding(h, self.k, self.stride);
                let (l, r) = same_padding(w, self.k, self.stride);
                if t == b && l == r {
                    (geometry([t, l]), None)
                } else {
                    (geometry([0, 0]), Some([l, r, t, b]))
                }
            }
        }
    }

    /// The input as this convolution reads it and its geometry.
    fn prepare(&self, x: &Tensor) -> (Tensor, Geometry) {
        match self.geometry(&x.size()) {
            (g, Some(pad)) => (x.constant_pad_nd(pad), g),
            (g, None) => (x.shallow_clone(), g),
        }
    }

    /// The inference plan's weight packed for oneDNN's kernel on inputs like `x`.
    fn pack(&self, x: &Tensor, ws: &Tensor) -> Option<Tensor> {
        let (g, pad) = self.geometry(&x.size());
        super::plan::pack(x, ws, g, pad)
    }

    /// `act(conv(x, p.w) + p.b)` with the inference plan's folded weights: one fused oneDNN
    /// kernel (given the packed weight) where it applies, else the eager ops.
    fn forward_with(&self, x: &Tensor, p: &Planned, act: Act) -> Tensor {
        let (x, g) = self.prepare(x);
        if let Some(y) = fused::conv(&x, p.kernel_weight(), &p.b, g, act.post()) {
            return y;
        }
        act.apply(x.conv2d(&p.w, Some(&p.b), [g.stride; 2], g.padding, [1, 1], g.groups))
    }

    /// `relu?(conv(x, p.w) + p.b + residual)` likewise (a residual block's last convolution).
    fn forward_add(&self, x: &Tensor, p: &Planned, residual: &Tensor, relu: bool) -> Tensor {
        let (x, g) = self.prepare(x);
        if let Some(y) = fused::conv_add(&x, residual, p.kernel_weight(), &p.b, g, relu) {
            return y;
        }
        let y = x.conv2d(&p.w, Some(&p.b), [g.stride; 2], g.padding, [1, 1], g.groups);
        add_residual(y, residual, relu)
    }
}

/// `relu?(y + residual)` in place on `y`, as torchvision's `out += identity; relu(inplace=True)`
/// (the layer that made `y` does not need it for its backward).
fn add_residual(mut y: Tensor, residual: &Tensor, relu: bool) -> Tensor {
    let _ = y.g_add_(residual);
    if relu {
        let _ = y.relu_();
    }
    y
}

impl nn::Module for Conv {
    fn forward(&self, x: &Tensor) -> Tensor {
        if self.pad == Pad::Torch {
            return x.apply(&self.conv);
        }
        let (x, g) = self.prepare(x);
        x.conv2d(
            &self.conv.ws,
            self.conv.bs.as_ref(),
            [g.stride; 2],
            g.padding,
            [1, 1],
            g.groups,
        )
    }
}

impl OnnxExport for Conv {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        match self.pad {
            Pad::Torch => g.conv(x, &self.conv, self.stride, (self.k - 1) / 2, self.groups),
            Pad::Same => g.conv_same(x, &self.conv, self.stride, self.groups),
        }
    }
}

/// torchvision's `Conv2dNormActivation`: conv `.0`, BatchNorm `.1`, then the activation; with
/// `Act::None`, the conv+BN pair every family uses (ResNet's `conv1`/`bn1`, RegNet's `a`/`b`/`c`).
#[derive(Debug)]
pub struct ConvBnAct {
    conv: Conv,
    bn: nn::BatchNorm,
    /// The BatchNorm's epsilon, for the export (tch keeps its own private).
    eps: f64,
    act: Act,
    /// The inference plan's weights, made at the first pass in the plan.
    folded: FoldCache,
}

#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub k: i64,
    pub stride: i64,
    pub groups: i64,
    pub act: Act,
    /// torchvision's RegNet init, normal(0, √(2/fan_out)), instead of PyTorch's default (kaiming
    /// uniform). Only a network trained from scratch sees it: pretrained weights replace it.
    pub fan_out_init: bool,
}

impl ConvSpec {
    pub const fn new(k: i64, stride: i64, groups: i64, act: Act) -> Self {
        ConvSpec {
            k,
            stride,
            groups,
            act,
            fan_out_init: false,
        }
    }

    /// A 1×1 convolution (expansion, projection, head).
    pub const fn pointwise(act: Act) -> Self {
        Self::new(1, 1, 1, act)
    }

    pub const fn fan_out_init(self) -> Self {
        ConvSpec {
            fan_out_init: true,
            ..self
        }
    }
}

impl ConvBnAct {
    /// With torchvision's keys `.0` (conv) and `.1` (BatchNorm) under `p`.
    pub fn new(p: &nn::Path, c_in: i64, c_out: i64, s: ConvSpec, norm: Norm, pad: Pad) -> Self {
        Self::named(p / "0", p / "1", c_in, c_out, s, norm, pad)
    }

    /// With the conv and BatchNorm at paths of the caller's choosing (other key layouts).
    pub fn named(
        conv_path: nn::Path,
        bn_path: nn::Path,
        c_in: i64,
        c_out: i64,
        s: ConvSpec,
        norm: Norm,
        pad: Pad,
    ) -> Self {
        ConvBnAct {
            conv: conv(
                conv_path,
                c_in,
                c_out,
                s.k,
                s.stride,
                s.groups,
                false,
                pad,
                s.fan_out_init,
            ),
            bn: norm.bn(bn_path, c_out),
            eps: norm.eps,
            act: s.act,
            folded: FoldCache::default(),
        }
    }

    /// The BatchNorm folded into the convolution (see [`super::plan::fold_bn`]).
    pub fn fold(&self) -> (Tensor, Tensor) {
        super::plan::fold_bn(&self.conv.conv.ws, &self.bn, self.eps)
    }
}

impl ConvBnAct {
    /// The folded (and packed) weights, kept between passes (see [`FoldCache`]).
    fn planned(&self, x: &Tensor) -> Planned {
        self.folded.get_or_make(|| {
            let (w, b) = self.fold();
            let packed = self.conv.pack(x, &w);
            Planned { w, b, packed }
        })
    }

    fn in_plan(train: bool) -> bool {
        !train && super::plan::active()
    }

    /// This layer, then a ReLU that its family applies outside it (ResNet's `relu(bn(conv(x)))`
    /// with an activation-free `ConvBnAct`); in the plan one fused kernel.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Tensor {
        if Self::in_plan(train) && self.act == Act::None {
            return self.conv.forward_with(x, &self.planned(x), Act::Relu);
        }
        let mut y = self.forward_t(x, train);
        let _ = y.relu_();
        y
    }

    /// `relu?(self(x) + residual)`: a residual block's last layer and its skip connection, added
    /// in place as torchvision does; in the plan, one fused kernel where oneDNN has it.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor, relu: bool, train: bool) -> Tensor {
        if Self::in_plan(train) && self.act == Act::None {
            return self.conv.forward_add(x, &self.planned(x), residual, relu);
        }
        add_residual(self.forward_t(x, train), residual, relu)
    }
}

impl ModuleT for ConvBnAct {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        if Self::in_plan(train) {
            return self.conv.forward_with(x, &self.planned(x), self.act);
        }
        self.act.apply(x.apply(&self.conv).apply_t(&self.bn, train))
    }
}

impl OnnxExport for ConvBnAct {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let y = self.conv.onnx(g, x);
        let y = g.batch_norm(&y, &self.bn, self.eps);
        self.act.onnx(g, &y)
    }
}

/// torchvision's `SqueezeExcitation`: `x · gate(fc2(act(fc1(avgpool(x)))))`, keys `fc1`, `fc2`.
#[derive(Debug)]
pub struct SqueezeExcite {
    fc1: nn::Conv2D,
    fc2: nn::Conv2D,
    act: Act,
    /// MobileNetV3 gates with hard-sigmoid, EfficientNet with sigmoid.
    hard_gate: bool,
}

impl SqueezeExcite {
    pub fn new(p: &nn::Path, c: i64, squeeze: i64, act: Act, hard_gate: bool) -> Self {
        SqueezeExcite {
            fc1: nn::conv2d(p / "fc1", c, squeeze, 1, Default::default()),
            fc2: nn::conv2d(p / "fc2", squeeze, c, 1, Default::default()),
            act,
            hard_gate,
        }
    }
}

impl nn::Module for SqueezeExcite {
    fn forward(&self, x: &Tensor) -> Tensor {
        let s = self
            .act
            .apply(x.adaptive_avg_pool2d([1, 1]).apply(&self.fc1))
            .apply(&self.fc2);
        let g = if self.hard_gate {
            s.hardsigmoid()
        } else {
            s.sigmoid()
        };
        x * g
    }
}

impl OnnxExport for SqueezeExcite {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let s = g.global_avg_pool(x);
        let s = g.conv(&s, &self.fc1, 1, 0, 1);
        let s = self.act.onnx(g, &s);
        let s = g.conv(&s, &self.fc2, 1, 0, 1);
        let gate = if self.hard_gate {
            g.hardsigmoid(&s)
        } else {
            g.sigmoid(&s)
        };
        g.mul(x, &gate)
    }
}

/// The inverted-residual block of MobileNetV3, EfficientNet and EfficientNet-Lite (`MBConv`,
/// `FusedMBConv`, lukemelas' `MBConvBlock` with drop-connect as `sd_prob`): its convolutions in
/// order (expansion, depthwise, projection; fused: k×k expansion, projection), a squeeze-excite
/// before the convolution at index `se.0`, and the residual when the shape is kept, with
/// stochastic depth `sd_prob` (0 for MobileNetV3). The families differ in how they build it.
#[derive(Debug)]
pub struct MbConv {
    pub convs: Vec<ConvBnAct>,
    pub se: Option<(usize, SqueezeExcite)>,
    pub residual: bool,
    pub sd_prob: f64,
}

impl ModuleT for MbConv {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for (i, c) in self.convs.iter().enumerate() {
            if let Some((at, se)) = &self.se {
                if *at == i {
                    y = y.apply(se);
                }
            }
            // In eval mode stochastic depth is the identity, so the skip connection can join the
            // last convolution (one fused kernel in the inference plan).
            y = if i + 1 == self.convs.len() && self.residual && !train {
                c.forward_add(&y, x, false, train)
            } else {
                c.forward_t(&y, train)
            };
        }
        if self.residual && train {
            stochastic_depth(y, self.sd_prob, train) + x
        } else {
            y
        }
    }
}

impl OnnxExport for MbConv {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let mut y = x.to_string();
        for (i, c) in self.convs.iter().enumerate() {
            if let Some((at, se)) = &self.se {
                if *at == i {
                    y = se.onnx(g, &y);
                }
            }
            y = c.onnx(g, &y);
        }
        // Stochastic depth is the identity in eval mode.
        if self.residual {
            g.add(&y, x)
        } else {
            y
        }
    }
}

/// torchvision's `StochasticDepth(p, "row")` (= lukemelas' `drop_connect`): in training, each
/// sample's residual branch is dropped with probability `p` and the survivors scaled by
/// `1/(1-p)`; identity in eval mode. Draws from libtorch's generator, like dropout.
pub fn stochastic_depth(x: Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x;
    }
    let survival = 1.0 - p;
    let n = x.size()[0];
    let noise = Tensor::zeros([n, 1, 1, 1], (x.kind(), x.device())).bernoulli_p(survival);
    x * (noise / survival)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // Even input, stride 2: the extra pixel goes after (TF), unlike PyTorch's symmetric pad.
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(224, 5, 2), (1, 2));
        // Odd input, stride 2: symmetric.
        assert_eq!(same_padding(35, 3, 2), (1, 1));
        // Stride 1: always (k-1)/2 on both sides.
        assert_eq!(same_padding(17, 5, 1), (2, 2));
        assert_eq!(same_padding(8, 1, 1), (0, 0));
    }

    #[test]
    fn make_divisible_matches_torchvision() {
        assert_eq!(make_divisible(4.0, 8), 8);
        assert_eq!(make_divisible(18.0, 8), 24);
        assert_eq!(make_divisible(120.0, 8), 120);
        assert_eq!(make_divisible(168.0, 8), 168);
        assert_eq!(make_divisible(35.2, 8), 32);
        assert_eq!(make_divisible(38.4, 8), 40);
        assert_eq!(make_divisible(17.6, 8), 16);
    }
}

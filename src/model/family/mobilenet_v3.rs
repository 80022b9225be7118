//! torchvision MobileNetV3 small/large (width 1.0), with torchvision's key names. timm's
//! `mobilenetv3_*_100` is the same network with PyTorch-default BatchNorm (eps 1e-5); its
//! checkpoints are renamed to these keys on load (`efficientnet_timm.rs`).

use crate::model::layers::{
    make_divisible, Act, ConvBnAct, ConvSpec, MbConv, Norm, Pad, Sequential, SqueezeExcite,
};
use tch::nn;

/// One row of torchvision's `inverted_residual_setting`.
struct Cfg {
    c_in: i64,
    k: i64,
    expanded: i64,
    c_out: i64,
    se: bool,
    hardswish: bool,
    stride: i64,
}

const fn cfg(c_in: i64, k: i64, expanded: i64, c_out: i64, se: bool, hs: bool, stride: i64) -> Cfg {
    Cfg {
        c_in,
        k,
        expanded,
        c_out,
        se,
        hardswish: hs,
        stride,
    }
}

const LARGE: [Cfg; 15] = [
    cfg(16, 3, 16, 16, false, false, 1),
    cfg(16, 3, 64, 24, false, false, 2),
    cfg(24, 3, 72, 24, false, false, 1),
    cfg(24, 5, 72, 40, true, false, 2),
    cfg(40, 5, 120, 40, true, false, 1),
    cfg(40, 5, 120, 40, true, false, 1),
    cfg(40, 3, 240, 80, false, true, 2),
    cfg(80, 3, 200, 80, false, true, 1),
    cfg(80, 3, 184, 80, false, true, 1),
    cfg(80, 3, 184, 80, false, true, 1),
    cfg(80, 3, 480, 112, true, true, 1),
    cfg(112, 3, 672, 112, true, true, 1),
    cfg(112, 5, 672, 160, true, true, 2),
    cfg(160, 5, 960, 160, true, true, 1),
    cfg(160, 5, 960, 160, true, true, 1),
];

const SMALL: [Cfg; 11] = [
    cfg(16, 3, 16, 16, true, false, 2),
    cfg(16, 3, 72, 24, false, false, 2),
    cfg(24, 3, 88, 24, false, false, 1),
    cfg(24, 5, 96, 40, true, true, 2),
    cfg(40, 5, 240, 40, true, true, 1),
    cfg(40, 5, 240, 40, true, true, 1),
    cfg(40, 5, 120, 48, true, true, 1),
    cfg(48, 5, 144, 48, true, true, 1),
    cfg(48, 5, 288, 96, true, true, 2),
    cfg(96, 5, 576, 96, true, true, 1),
    cfg(96, 5, 576, 96, true, true, 1),
];

/// Output channels of the body (`features`): 6 × the last block's.
pub fn body_channels(large: bool) -> i64 {
    if large {
        960
    } else {
        576
    }
}

/// Width of the classifier's hidden layer (`classifier.0`).
pub fn last_channel(large: bool) -> i64 {
    if large {
        1280
    } else {
        1024
    }
}

/// Expansion conv (when widening), depthwise conv, squeeze-excite, projection: `block.N`.
fn inverted_residual(p: &nn::Path, c: &Cfg, norm: Norm) -> MbConv {
    let b = p / "block";
    let act = if c.hardswish {
        Act::Hardswish
    } else {
        Act::Relu
    };
    let mut convs = Vec::new();
    let mut idx = 0;
    if c.expanded != c.c_in {
        convs.push(ConvBnAct::new(
            &(&b / "0"),
            c.c_in,
            c.expanded,
            ConvSpec::pointwise(act),
            norm,
            Pad::Torch,
        ));
        idx += 1;
    }
    convs.push(ConvBnAct::new(
        &(&b / idx.to_string()),
        c.expanded,
        c.expanded,
        ConvSpec::new(c.k, c.stride, c.expanded, act),
        norm,
        Pad::Torch,
    ));
    idx += 1;
    let se = c.se.then(|| {
        let squeeze = make_divisible((c.expanded / 4) as f64, 8);
        let m = SqueezeExcite::new(
            &(&b / idx.to_string()),
            c.expanded,
            squeeze,
            Act::Relu,
            true,
        );
        idx += 1;
        (convs.len(), m)
    });
    convs.push(ConvBnAct::new(
        &(&b / idx.to_string()),
        c.expanded,
        c.c_out,
        ConvSpec::pointwise(Act::None),
        norm,
        Pad::Torch,
    ));
    MbConv {
        convs,
        se,
        residual: c.stride == 1 && c.c_in == c.c_out,
        sd_prob: 0.0,
    }
}

/// `features`: fastai's body (cut before `avgpool`).
/// `norm`: torchvision's (eps 1e-3, momentum 0.01) or timm's (PyTorch defaults).
pub fn body(p: &nn::Path, large: bool, norm: Norm) -> Sequential {
    let f = p / "features";
    let settings: &[Cfg] = if large { &LARGE } else { &SMALL };
    let stem = ConvSpec::new(3, 2, 1, Act::Hardswish);
    let mut layers = Sequential::default();
    layers.push(ConvBnAct::new(&(&f / "0"), 3, 16, stem, norm, Pad::Torch));
    for c in settings {
        let idx = layers.len().to_string();
        layers.push(inverted_residual(&(&f / idx), c, norm));
    }
    let last = settings[settings.len() - 1].c_out;
    let idx = layers.len().to_string();
    layers.push(ConvBnAct::new(
        &(&f / idx),
        last,
        body_channels(large),
        ConvSpec::pointwise(Act::Hardswish),
        norm,
        Pad::Torch,
    ));
    layers
}

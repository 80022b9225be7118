//! torchvision EfficientNet B0–B3 and EfficientNetV2-S, with torchvision's key names
//! (`features.S.I.block.J...`). timm's `efficientnet_b*` is the same network; timm's
//! `tf_efficientnetv2_s` is V2-S with TensorFlow "SAME" padding (built here with [`Pad::Same`]).
//! Their checkpoints are renamed to these keys on load (`efficientnet_timm.rs`).

use crate::model::layers::{
    make_divisible, Act, ConvBnAct, ConvSpec, MbConv, Norm, Pad, Part, Sequential, SqueezeExcite,
};
use tch::nn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    B0,
    B1,
    B2,
    B3,
    V2S,
}

/// One stage: fused (V2's `FusedMBConv`) or not, expansion, kernel, stride, in, out, repeats.
#[derive(Clone, Copy)]
struct Stage {
    fused: bool,
    expand: i64,
    k: i64,
    stride: i64,
    c_in: i64,
    c_out: i64,
    n: i64,
}

const fn mb(expand: i64, k: i64, stride: i64, c_in: i64, c_out: i64, n: i64) -> Stage {
    Stage {
        fused: false,
        expand,
        k,
        stride,
        c_in,
        c_out,
        n,
    }
}

const fn fused(expand: i64, k: i64, stride: i64, c_in: i64, c_out: i64, n: i64) -> Stage {
    Stage {
        fused: true,
        ..mb(expand, k, stride, c_in, c_out, n)
    }
}

const B_STAGES: [Stage; 7] = [
    mb(1, 3, 1, 32, 16, 1),
    mb(6, 3, 2, 16, 24, 2),
    mb(6, 5, 2, 24, 40, 2),
    mb(6, 3, 2, 40, 80, 3),
    mb(6, 5, 1, 80, 112, 3),
    mb(6, 5, 2, 112, 192, 4),
    mb(6, 3, 1, 192, 320, 1),
];

const V2S_STAGES: [Stage; 6] = [
    fused(1, 3, 1, 24, 24, 2),
    fused(4, 3, 2, 24, 48, 4),
    fused(4, 3, 2, 48, 64, 4),
    mb(4, 3, 2, 64, 128, 6),
    mb(6, 3, 1, 128, 160, 9),
    mb(6, 3, 2, 160, 256, 15),
];

impl Variant {
    /// (width, depth) multipliers of the compound scaling.
    fn scale(self) -> (f64, f64) {
        match self {
            Variant::B0 | Variant::V2S => (1.0, 1.0),
            Variant::B1 => (1.0, 1.1),
            Variant::B2 => (1.1, 1.2),
            Variant::B3 => (1.2, 1.4),
        }
    }

    /// The stages after width/depth scaling (torchvision's `MBConvConfig`).
    fn stages(self) -> Vec<Stage> {
        let (w, d) = self.scale();
        let base: &[Stage] = if self == Variant::V2S {
            &V2S_STAGES
        } else {
            &B_STAGES
        };
        base.iter()
            .map(|s| Stage {
                c_in: make_divisible(s.c_in as f64 * w, 8),
                c_out: make_divisible(s.c_out as f64 * w, 8),
                n: (s.n as f64 * d).ceil() as i64,
                ..*s
            })
            .collect()
    }

    /// Channels out of `features` (the last 1×1 conv): 4 × the last stage's, or 1280 for V2.
    pub fn body_channels(self) -> i64 {
        match self {
            Variant::V2S => 1280,
            v => 4 * v.stages()[6].c_out,
        }
    }

    /// torchvision: PyTorch-default BatchNorm for B0–B3, eps 1e-3 for V2.
    pub fn norm(self) -> Norm {
        match self {
            Variant::V2S => Norm {
                eps: 1e-3,
                momentum: 0.1,
            },
            _ => Norm::TORCH,
        }
    }
}

/// `MBConv` (expand 1×1, depthwise k×k, squeeze-excite, project 1×1) or `FusedMBConv`
/// (k×k expansion, project 1×1), with the residual and its stochastic depth.
fn block(p: &nn::Path, s: &Stage, c_in: i64, stride: i64, norm: Norm, pad: Pad, sd: f64) -> MbConv {
    let b = p / "block";
    let expanded = make_divisible((c_in * s.expand) as f64, 8);
    let mut convs = Vec::new();
    let mut se = None;
    let path = |i: usize| &b / i.to_string();
    let spec = |k, stride, groups, act| ConvSpec::new(k, stride, groups, act);
    if s.fused {
        if expanded != c_in {
            convs.push(ConvBnAct::new(
                &path(0),
                c_in,
                expanded,
                spec(s.k, stride, 1, Act::Silu),
                norm,
                pad,
            ));
            convs.push(ConvBnAct::new(
                &path(1),
                expanded,
                s.c_out,
                ConvSpec::pointwise(Act::None),
                norm,
                pad,
            ));
        } else {
            convs.push(ConvBnAct::new(
                &path(0),
                c_in,
                s.c_out,
                spec(s.k, stride, 1, Act::Silu),
                norm,
                pad,
            ));
        }
    } else {
        if expanded != c_in {
            convs.push(ConvBnAct::new(
                &path(0),
                c_in,
                expanded,
                ConvSpec::pointwise(Act::Silu),
                norm,
                pad,
            ));
        }
        convs.push(ConvBnAct::new(
            &path(convs.len()),
            expanded,
            expanded,
            spec(s.k, stride, expanded, Act::Silu),
            norm,
            pad,
        ));
        let squeeze = (c_in / 4).max(1);
        se = Some((
            convs.len(),
            SqueezeExcite::new(&path(convs.len()), expanded, squeeze, Act::Silu, false),
        ));
        convs.push(ConvBnAct::new(
            &path(convs.len() + 1),
            expanded,
            s.c_out,
            ConvSpec::pointwise(Act::None),
            norm,
            pad,
        ));
    }
    MbConv {
        convs,
        se,
        residual: stride == 1 && c_in == s.c_out,
        sd_prob: sd,
    }
}

/// `features`: fastai's body (cut before `avgpool`).
/// `pad`: [`Pad::Same`] for TensorFlow ports (timm `tf_*`); `norm`: the variant's BatchNorm;
/// `drop_path`: stochastic depth of the last block (torchvision 0.2, timm 0 by default),
/// linearly smaller for earlier blocks.
pub fn body(p: &nn::Path, v: Variant, norm: Norm, pad: Pad, drop_path: f64) -> Sequential {
    let f = p / "features";
    let stages = v.stages();
    let stem = ConvSpec::new(3, 2, 1, Act::Silu);
    let mut layers = Sequential::default();
    layers.push(ConvBnAct::new(
        &(&f / "0"),
        3,
        stages[0].c_in,
        stem,
        norm,
        pad,
    ));
    let total: i64 = stages.iter().map(|s| s.n).sum();
    let mut id = 0;
    for (si, s) in stages.iter().enumerate() {
        let sp = &f / (si + 1).to_string();
        let blocks: Vec<Box<dyn Part>> = (0..s.n)
            .map(|i| {
                let (c_in, stride) = if i == 0 {
                    (s.c_in, s.stride)
                } else {
                    (s.c_out, 1)
                };
                let sd = drop_path * id as f64 / total as f64;
                id += 1;
                Box::new(block(
                    &(&sp / i.to_string()),
                    s,
                    c_in,
                    stride,
                    norm,
                    pad,
                    sd,
                )) as Box<dyn Part>
            })
            .collect();
        layers.push(Sequential(blocks));
    }
    let idx = layers.len().to_string();
    layers.push(ConvBnAct::new(
        &(&f / idx),
        stages[stages.len() - 1].c_out,
        v.body_channels(),
        ConvSpec::pointwise(Act::Silu),
        norm,
        pad,
    ));
    layers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_widths_match_torchvision() {
        assert_eq!(Variant::B0.body_channels(), 1280);
        assert_eq!(Variant::B1.body_channels(), 1280);
        assert_eq!(Variant::B2.body_channels(), 1408);
        assert_eq!(Variant::B3.body_channels(), 1536);
        let b3 = Variant::B3.stages();
        assert_eq!(b3[0].c_in, 40);
        assert_eq!(
            b3.iter().map(|s| s.n).collect::<Vec<_>>(),
            [2, 3, 3, 5, 5, 6, 2]
        );
    }
}

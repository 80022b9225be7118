//! Vision Transformers ViT-B/16 (torchvision `vit_b_16`) and ViT-S/16 (timm's
//! `vit_small_patch16_224` configuration: torchvision has none), both with torchvision's key names.
//! timm's `vit_*_patch16_224` layout is mapped onto these names on load ([`timm_remap`]).
//!
//! The position embedding keeps the checkpoint's grid (14×14 for 224 px), so checkpoints and
//! bundles load strictly at any `--size`; when the input's patch grid differs it is resampled in
//! each forward pass exactly as timm's `resample_abs_pos_embed` does (bicubic, antialiased, the
//! class token's entry kept apart), i.e. timm's `dynamic_img_size` behaviour.

use crate::model::onnx::{Attr, Graph, OnnxExport};
use crate::model::weights::{Shapes, Tensors};
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

#[derive(Debug, Clone, Copy)]
pub struct VitConfig {
    pub hidden: i64,
    pub layers: usize,
    pub heads: i64,
    pub mlp: i64,
    pub patch: i64,
    /// The input size the position embedding was made for.
    pub image: i64,
}

pub const B16: VitConfig = VitConfig {
    hidden: 768,
    layers: 12,
    heads: 12,
    mlp: 3072,
    patch: 16,
    image: 224,
};
pub const S16: VitConfig = VitConfig {
    hidden: 384,
    layers: 12,
    heads: 6,
    mlp: 1536,
    patch: 16,
    image: 224,
};

const EPS: f64 = 1e-6;

fn layer_norm(p: nn::Path, c: i64) -> nn::LayerNorm {
    crate::model::layers::layer_norm(p, c, EPS)
}

fn xavier(n_in: i64, n_out: i64) -> nn::Init {
    let bound = (6.0 / (n_in + n_out) as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

fn linear(p: nn::Path, n_in: i64, n_out: i64) -> nn::Linear {
    let cfg = nn::LinearConfig {
        ws_init: xavier(n_in, n_out),
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p, n_in, n_out, cfg)
}

/// `nn.MultiheadAttention` (batch first, self-attention): one packed q/k/v projection
/// (`in_proj_weight` [3C, C], q first), scaled dot-product attention per head, `out_proj`.
#[derive(Debug)]
struct SelfAttention {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    heads: i64,
}

impl SelfAttention {
    fn new(p: nn::Path, c: i64, heads: i64) -> Self {
        SelfAttention {
            in_proj_weight: p.var("in_proj_weight", &[3 * c, c], xavier(c, 3 * c)),
            in_proj_bias: p.var("in_proj_bias", &[3 * c], nn::Init::Const(0.0)),
            out_proj: linear(&p / "out_proj", c, c),
            heads,
        }
    }
}

impl Module for SelfAttention {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (n, l, c) = x.size3().expect("tokens are [N, L, C]");
        let qkv = x
            .linear(&self.in_proj_weight, Some(&self.in_proj_bias))
            .reshape([n, l, 3, self.heads, c / self.heads])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false)
            .transpose(1, 2)
            .reshape([n, l, c])
            .apply(&self.out_proj)
    }
}

impl OnnxExport for SelfAttention {
    /// Tokens `[N, L, C]` with a free batch: q, k and v from the three row blocks of
    /// `in_proj_weight`, heads split by Reshape/Transpose, `softmax(q·kᵀ/√d)·v`.
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let c = self.in_proj_weight.size()[1];
        let d = c / self.heads;
        let part = |i: i64| {
            (
                self.in_proj_weight.narrow(0, i * c, c),
                self.in_proj_bias.narrow(0, i * c, c),
            )
        };
        let heads = |g: &mut Graph, i: i64, perm: &[i64]| {
            let (w, b) = part(i);
            let wt = g.derived(
                &self.in_proj_weight,
                &format!(".{}.T", ["q", "k", "v"][i as usize]),
                &w.tr(),
            );
            let bn = g.derived(
                &self.in_proj_bias,
                &format!(".{}", ["q", "k", "v"][i as usize]),
                &b,
            );
            let y = g.node("MatMul", &[x, &wt], vec![]);
            let y = g.add(&y, &bn);
            let y = g.reshape(&y, &[0, -1, self.heads, d]);
            g.transpose(&y, perm)
        };
        let q = heads(g, 0, &[0, 2, 1, 3]);
        let kt = heads(g, 1, &[0, 2, 3, 1]);
        let v = heads(g, 2, &[0, 2, 1, 3]);
        let scores = g.node("MatMul", &[&q, &kt], vec![]);
        let scale = g.constant("attn.scale", &[], &[1.0 / (d as f32).sqrt()]);
        let scores = g.mul(&scores, &scale);
        let attn = g.node("Softmax", &[&scores], vec![("axis", Attr::Int(-1))]);
        let y = g.node("MatMul", &[&attn, &v], vec![]);
        let y = g.transpose(&y, &[0, 2, 1, 3]);
        let y = g.reshape(&y, &[0, -1, c]);
        g.linear_nd(&y, &self.out_proj)
    }
}

/// Pre-norm encoder block: `x + attn(ln_1(x))`, then `+ mlp(ln_2(·))` (`mlp.0`, GELU, `mlp.3`).
#[derive(Debug)]
struct EncoderBlock {
    ln_1: nn::LayerNorm,
    attn: SelfAttention,
    ln_2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl EncoderBlock {
    fn new(p: nn::Path, cfg: &VitConfig) -> Self {
        EncoderBlock {
            ln_1: layer_norm(&p / "ln_1", cfg.hidden),
            attn: SelfAttention::new(&p / "self_attention", cfg.hidden, cfg.heads),
            ln_2: layer_norm(&p / "ln_2", cfg.hidden),
            fc1: linear(&p / "mlp" / "0", cfg.hidden, cfg.mlp),
            fc2: linear(&p / "mlp" / "3", cfg.mlp, cfg.hidden),
        }
    }
}

impl Module for EncoderBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let x = x + x.apply(&self.ln_1).apply(&self.attn);
        let y = x
            .apply(&self.ln_2)
            .apply(&self.fc1)
            .gelu("none")
            .apply(&self.fc2);
        x + y
    }
}

impl OnnxExport for EncoderBlock {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let y = g.layer_norm(x, &self.ln_1, EPS);
        let y = self.attn.onnx(g, &y);
        let x = g.add(x, &y);
        let y = g.layer_norm(&x, &self.ln_2, EPS);
        let y = g.linear_nd(&y, &self.fc1);
        let y = g.gelu(&y);
        let y = g.linear_nd(&y, &self.fc2);
        g.add(&x, &y)
    }
}

/// Patch embedding, class token, position embedding, encoder and its final LayerNorm; returns the
/// class token's features [N, C]. That is fastai's body for a timm ViT (`TimmBody` runs the model
/// with `num_classes=0`: no pooling map, so the head is built with `pool=False`).
#[derive(Debug)]
pub struct VitBody {
    conv_proj: nn::Conv2D,
    class_token: Tensor,
    pos_embedding: Tensor,
    layers: Vec<EncoderBlock>,
    ln: nn::LayerNorm,
    patch: i64,
}

impl VitBody {
    pub fn new(p: &nn::Path, cfg: VitConfig) -> Self {
        let grid = cfg.image / cfg.patch;
        let fan_in = 3 * cfg.patch * cfg.patch;
        let conv_cfg = nn::ConvConfig {
            stride: cfg.patch,
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: (1.0 / fan_in as f64).sqrt(),
            },
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let enc = p / "encoder";
        VitBody {
            conv_proj: nn::conv2d(p / "conv_proj", 3, cfg.hidden, cfg.patch, conv_cfg),
            class_token: p.var("class_token", &[1, 1, cfg.hidden], nn::Init::Const(0.0)),
            pos_embedding: enc.var(
                "pos_embedding",
                &[1, grid * grid + 1, cfg.hidden],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
            layers: (0..cfg.layers)
                .map(|i| EncoderBlock::new(&enc / "layers" / format!("encoder_layer_{i}"), &cfg))
                .collect(),
            ln: layer_norm(&enc / "ln", cfg.hidden),
            patch: cfg.patch,
        }
    }
}

/// timm's `resample_abs_pos_embed(posemb, (gh, gw), num_prefix_tokens=1)`: the class token's entry
/// is kept, the square grid of the others is resized bicubically with antialiasing.
pub fn resample_pos_embedding(pos: &Tensor, gh: i64, gw: i64) -> Tensor {
    let (_, l, c) = pos.size3().expect("position embedding is [1, L, C]");
    let old = ((l - 1) as f64).sqrt().round() as i64;
    if gh == old && gw == old {
        return pos.shallow_clone();
    }
    let cls = pos.narrow(1, 0, 1);
    let grid = pos
        .narrow(1, 1, l - 1)
        .reshape([1, old, old, c])
        .permute([0, 3, 1, 2])
        .internal_upsample_bicubic2d_aa([gh, gw], false, None, None)
        .permute([0, 2, 3, 1])
        .reshape([1, gh * gw, c]);
    Tensor::cat(&[cls, grid], 1)
}

impl ModuleT for VitBody {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Tensor {
        let n = x.size()[0];
        let y = x.apply(&self.conv_proj);
        let (gh, gw) = (y.size()[2], y.size()[3]);
        assert!(
            gh > 0 && gw > 0,
            "ViT input must be at least {p}×{p} pixels",
            p = self.patch
        );
        let tokens = y.flatten(2, 3).transpose(1, 2);
        let cls = self.class_token.expand([n, 1, -1], false);
        let mut t =
            Tensor::cat(&[cls, tokens], 1) + resample_pos_embedding(&self.pos_embedding, gh, gw);
        for l in &self.layers {
            t = l.forward(&t);
        }
        t.apply(&self.ln).select(1, 0)
    }
}

impl OnnxExport for VitBody {
    /// The input size is fixed in the file, so the position embedding is resampled for its patch
    /// grid here, once, by the same function the forward pass uses.
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let (h, w) = g.input_hw();
        let (gh, gw) = (
            (h - self.patch) / self.patch + 1,
            (w - self.patch) / self.patch + 1,
        );
        let c = self.class_token.size()[2];
        let y = g.conv(x, &self.conv_proj, self.patch, 0, 1);
        let y = g.reshape(&y, &[0, c, -1]);
        let tokens = g.transpose(&y, &[0, 2, 1]);
        // The class token, expanded to the free batch size: Expand to Shape(x)[0:1] ++ [1, 1].
        let shape = g.node("Shape", &[x], vec![]);
        let (zero, one) = (g.int64s("zero", &[0]), g.int64s("one", &[1]));
        let n = g.node("Slice", &[&shape, &zero, &one], vec![]);
        let ones = g.int64s("ones", &[1, 1]);
        let target = g.node("Concat", &[&n, &ones], vec![("axis", Attr::Int(0))]);
        let cls = g.weight("class_token", &self.class_token);
        let cls = g.node("Expand", &[&cls, &target], vec![]);
        let t = g.node("Concat", &[&cls, &tokens], vec![("axis", Attr::Int(1))]);
        let pos = resample_pos_embedding(&self.pos_embedding, gh, gw);
        let pos = g.derived(&self.pos_embedding, &format!(".{gh}x{gw}"), &pos);
        let mut t = g.add(&t, &pos);
        for l in &self.layers {
            t = l.onnx(g, &t);
        }
        let t = g.layer_norm(&t, &self.ln, EPS);
        let first = g.int64_tensor("class_index", &[], &[0]);
        g.node("Gather", &[&t, &first], vec![("axis", Attr::Int(1))])
    }
}

/// Whether a layer (torchvision name, no `body.` prefix) is a LayerNorm (fastai `norm_types`).
pub fn is_layer_norm(layer: &str) -> bool {
    layer == "encoder.ln" || layer.ends_with(".ln_1") || layer.ends_with(".ln_2")
}

/// Whether a checkpoint uses timm's ViT names (`cls_token`, `blocks.N.attn.qkv`).
pub fn timm_detect(s: &Shapes) -> bool {
    s.contains_key("cls_token") && s.contains_key("blocks.0.attn.qkv.weight")
}

/// The ViT a checkpoint (torchvision's or timm's names) was saved from: 12 layers of width 768
/// (B/16) or 384 (S/16), 16-pixel patches.
pub fn guess(s: &Shapes) -> Option<&'static str> {
    let tv = s.contains_key("class_token");
    let (token, patch, layer) = if tv {
        (
            "class_token",
            "conv_proj.weight",
            "encoder.layers.encoder_layer_",
        )
    } else {
        ("cls_token", "patch_embed.proj.weight", "blocks.")
    };
    let width = *s.get(token)?.last()?;
    let patch = s.get(patch)?.last().copied()?;
    let layers = (0..)
        .take_while(|i| s.keys().any(|k| k.starts_with(&format!("{layer}{i}."))))
        .count();
    [("vit_b_16", B16), ("vit_s_16", S16)]
        .into_iter()
        .find(|(_, c)| c.hidden == width && c.patch == patch && c.layers == layers)
        .map(|(a, _)| a)
}

/// Renames a timm checkpoint's tensors to torchvision's names. timm's packed `attn.qkv` Linear has
/// the same [q; k; v] row order as `nn.MultiheadAttention`'s `in_proj_weight`, so only names
/// change. Keys of other ViT variants (`fc_norm`, layer scale `ls1`, register tokens) are refused.
pub fn timm_remap(t: Tensors) -> Result<Tensors, String> {
    t.into_iter()
        .map(|(k, v)| match from_timm_key(&k) {
            Some(name) => Ok((name, v)),
            None => Err(format!("unexpected key `{k}` for timm's ViT")),
        })
        .collect()
}

fn from_timm_key(key: &str) -> Option<String> {
    match key {
        "cls_token" => return Some("class_token".into()),
        "pos_embed" => return Some("encoder.pos_embedding".into()),
        _ => {}
    }
    for (from, to) in [
        ("patch_embed.proj.", "conv_proj."),
        ("norm.", "encoder.ln."),
        ("head.", "heads.head."),
    ] {
        if let Some(rest) = key.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    let rest = key.strip_prefix("blocks.")?;
    let (i, rest) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let prefix = format!("encoder.layers.encoder_layer_{i}");
    let mapped = match rest {
        "attn.qkv.weight" => "self_attention.in_proj_weight".to_string(),
        "attn.qkv.bias" => "self_attention.in_proj_bias".to_string(),
        _ => {
            let (to, param) = [
                ("norm1.", "ln_1"),
                ("norm2.", "ln_2"),
                ("attn.proj.", "self_attention.out_proj"),
                ("mlp.fc1.", "mlp.0"),
                ("mlp.fc2.", "mlp.3"),
            ]
            .iter()
            .find_map(|(from, to)| rest.strip_prefix(from).map(|p| (*to, p)))?;
            format!("{to}.{param}")
        }
    };
    Some(format!("{prefix}.{mapped}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timm_keys_map_to_torchvision_names() {
        let l = "encoder.layers.encoder_layer_11";
        for (timm, tv) in [
            ("cls_token", "class_token".to_string()),
            ("pos_embed", "encoder.pos_embedding".into()),
            ("patch_embed.proj.weight", "conv_proj.weight".into()),
            (
                "blocks.11.attn.qkv.weight",
                format!("{l}.self_attention.in_proj_weight"),
            ),
            (
                "blocks.11.attn.qkv.bias",
                format!("{l}.self_attention.in_proj_bias"),
            ),
            (
                "blocks.11.attn.proj.bias",
                format!("{l}.self_attention.out_proj.bias"),
            ),
            ("blocks.11.norm2.weight", format!("{l}.ln_2.weight")),
            ("blocks.11.mlp.fc2.weight", format!("{l}.mlp.3.weight")),
            ("norm.bias", "encoder.ln.bias".into()),
            ("head.weight", "heads.head.weight".into()),
        ] {
            assert_eq!(from_timm_key(timm), Some(tv), "{timm}");
        }
        assert_eq!(from_timm_key("fc_norm.weight"), None);
        assert_eq!(from_timm_key("blocks.0.ls1.gamma"), None);
    }
}

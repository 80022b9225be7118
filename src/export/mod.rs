//! `finetune export`: a bundle as a self-contained ONNX file, written from the same network
//! definition the trainer runs (no Python, no tracing).
//!
//! The file has one input, `input` `[batch, 3, H, W]` (float, RGB, `(pixel/255 − mean)/std`), and two
//! outputs: `logits` `[batch, classes]` (what the network computes; what `finetune`'s parity is
//! checked on) and `probabilities` (their softmax, what `predict` prints). `metadata_props` carry what
//! is needed to prepare an image and read the answer, so the file alone is enough.

use crate::bundle::{self, BundleError, ModelInfo};
use crate::model::onnx::{Graph, GraphError, OnnxExport};
use crate::model::Network;
use prost::Message;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

pub const DEFAULT_OPSET: i64 = 17;
/// Opsets the emitted ops are written for (13: Softmax/Flatten/Clip in today's form; 21: the newest
/// widely deployed runtimes read).
pub const OPSETS: RangeInclusive<i64> = 13..=21;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("ONNX opset {0} is not supported: choose one from {min} to {max} (default {DEFAULT_OPSET})", min = OPSETS.start(), max = OPSETS.end())]
    Opset(i64),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Exported {
    pub path: PathBuf,
    pub bytes: usize,
    pub nodes: usize,
    pub initializers: usize,
    pub opset: i64,
}

/// The `metadata_props` of an exported model: strings, JSON where a value is a list.
pub fn metadata(info: &ModelInfo) -> Vec<(String, String)> {
    vec![
        ("classes".into(), json(&info.classes)),
        ("input_width".into(), info.size.w.to_string()),
        ("input_height".into(), info.size.h.to_string()),
        ("resize_method".into(), name(&info.resize)),
        ("pad_mode".into(), name(&info.pad_mode)),
        ("mean".into(), json(&info.normalization.mean)),
        ("std".into(), json(&info.normalization.std)),
        (
            "preprocessing".into(),
            "RGB; resize to input_width x input_height by resize_method (squish: whole image, \
             ignoring aspect ratio; crop: short side to size, centre crop; pad: fit inside, \
             pad by pad_mode); x = (pixel / 255 - mean) / std; NCHW float32"
                .into(),
        ),
        (
            "outputs".into(),
            if info.task.is_multi() {
                "logits [batch, classes] (raw); probabilities = sigmoid(logits / temperature) \
                 [batch, classes], one independent probability per label (multi-label; a label \
                 applies above 0.5); class i is classes[i]"
            } else {
                "logits [batch, classes] (raw); probabilities = softmax(logits / temperature) \
                 [batch, classes], calibrated as finetune predict prints them; class i is \
                 classes[i]"
            }
            .into(),
        ),
        (
            "temperature".into(),
            info.calibration.map_or(1.0, |c| c.temperature).to_string(),
        ),
        ("task".into(), name(&info.task)),
        ("arch".into(), info.arch.name().into()),
        ("finetune_version".into(), env!("CARGO_PKG_VERSION").into()),
        ("trained_with".into(), info.finetune_version.clone()),
    ]
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A unit enum's name as model.json spells it (`squish`, `reflection`).
fn name<T: serde::Serialize>(v: &T) -> String {
    json(v).trim_matches('"').to_string()
}

/// The network as an ONNX model (eval mode) with the bundle's metadata.
pub fn onnx_model(
    net: &Network,
    info: &ModelInfo,
    opset: i64,
) -> Result<crate::model::onnx::proto::ModelProto, ExportError> {
    if !OPSETS.contains(&opset) {
        return Err(ExportError::Opset(opset));
    }
    let mut g = Graph::new(opset, (info.size.h as i64, info.size.w as i64));
    let logits = tch::no_grad(|| net.onnx(&mut g, "input"));
    g.rename(&logits, "logits");
    // The calibrated probabilities `predict` prints: the logits divided by the bundle's
    // temperature first (a scalar Div, in fp32 like libtorch's), when it has one.
    let scaled = match &info.calibration {
        Some(c) => {
            let t = g.constant("temperature", &[], &[c.temperature as f32]);
            g.node("Div", &["logits", &t], vec![])
        }
        None => "logits".to_string(),
    };
    // A multi-label model's labels are independent: one sigmoid each, as `predict` computes them.
    let probs = if info.task.is_multi() {
        g.node("Sigmoid", &[&scaled], vec![])
    } else {
        g.node(
            "Softmax",
            &[&scaled],
            vec![("axis", crate::model::onnx::Attr::Int(1))],
        )
    };
    g.rename(&probs, "probabilities");
    let n = info.classes.len() as i64;
    let doc = format!(
        "{} fine-tuned by finetune into {} classes; input [batch, 3, {}, {}] normalised RGB; \
         outputs logits and probabilities. See metadata_props.",
        info.arch, n, info.size.h, info.size.w
    );
    Ok(g.finish(
        (info.size.h as i64, info.size.w as i64),
        &[("logits", n), ("probabilities", n)],
        metadata(info),
        &doc,
    )?)
}

/// Exports the bundle in `model_dir` to `out` (atomically: a crash never leaves half a file).
pub fn export_onnx(model_dir: &Path, out: &Path, opset: i64) -> Result<Exported, ExportError> {
    if !OPSETS.contains(&opset) {
        return Err(ExportError::Opset(opset));
    }
    let b = bundle::load(model_dir, tch::Device::Cpu)?;
    let model = onnx_model(&b.net, &b.info, opset)?;
    let (nodes, initializers) = model
        .graph
        .as_ref()
        .map_or((0, 0), |g| (g.node.len(), g.initializer.len()));
    let bytes = model.encode_to_vec();
    drop(model);
    crate::atomic::remove_stale_siblings(out);
    crate::atomic::write_file(out, &bytes).map_err(|source| ExportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(Exported {
        path: out.to_path_buf(),
        bytes: bytes.len(),
        nodes,
        initializers,
        opset,
    })
}

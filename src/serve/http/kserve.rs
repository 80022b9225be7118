//! KServe v2 / Open Inference Protocol: health, metadata and `infer` with BYTES (encoded images)
//! or FP32 (ready tensors) inputs, and Triton's classification extension.

use super::body::{decode_b64, read_body};
use super::{model, timed, ApiError, St};
use crate::serve::facade;
use crate::serve::worker::Input;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};
use std::time::Instant;

pub async fn v2_live() -> Json<Value> {
    Json(json!({"live": true}))
}

pub async fn v2_ready() -> Json<Value> {
    Json(json!({"ready": true}))
}

pub async fn v2_metadata(State(st): St, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let m = model(&st, &name)?;
    Ok(Json(json!({
        "name": m.name,
        "versions": ["1"],
        "platform": "finetune_libtorch",
        // Either input may be sent: encoded images, or tensors already resized and normalised.
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "input", "datatype": "FP32", "shape": [-1, 3, m.info.size.h, m.info.size.w]},
        ],
        "outputs": outputs_meta(m),
    })))
}

/// The outputs a model offers: its probabilities; with the "unknown" answer, whether each image is
/// unknown and its score; on request (`"outputs": [{"name": "embedding"}]`) the embedding.
fn outputs_meta(m: &crate::serve::Model) -> Value {
    let mut o = vec![
        json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, m.info.classes.len()]}),
    ];
    if m.accept.is_some() {
        o.push(json!({"name": "unknown", "datatype": "BOOL", "shape": [-1]}));
        o.push(json!({"name": "unknown_score", "datatype": "FP64", "shape": [-1]}));
    }
    o.push(
        json!({"name": "embedding", "datatype": "FP32", "shape": [-1, m.info.arch.head_inputs()]}),
    );
    Value::Array(o)
}

/// Whether the request names the `embedding` output.
fn wants_embedding(v: &Value) -> bool {
    v.get("outputs")
        .and_then(|o| o.as_array())
        .is_some_and(|o| {
            o.iter()
                .any(|o| o.get("name").and_then(|n| n.as_str()) == Some("embedding"))
        })
}

pub async fn v2_model_ready(
    State(st): St,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let m = model(&st, &name)?;
    Ok(Json(json!({"name": m.name, "ready": true})))
}

/// `{"inputs": [{"name", "datatype": "BYTES", "shape": [N], "data": ["<base64 image>", ...]}]}` or an
/// `FP32` input of shape `[N, 3, H, W]` (normalised, at the model's size; `data` flat or nested) →
/// `{"model_name", "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [N, C], "data": [...]}]}`.
/// With `"parameters": {"classification": K}` on the requested output (or on the request), the output
/// is Triton's classification extension instead: `BYTES [N, K]` strings `"<score>:<index>:<label>"`.
pub async fn v2_infer(
    State(st): St,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let m = model(&st, &name)?;
    let way = m.queue.arriving();
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, &parts.headers, st.body_timeout).await?;
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad(format!("bad JSON: {e}")))?;
    drop(bytes);
    let input = match v
        .get("inputs")
        .and_then(|i| i.as_array())
        .map(|a| a.as_slice())
    {
        Some([one]) => one,
        _ => {
            return Err(ApiError::bad(
                "\"inputs\" must be a list with exactly one input",
            ))
        }
    };
    let data = input
        .get("data")
        .and_then(|d| d.as_array())
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::bad("the input's \"data\" must be a non-empty list"))?;
    let classification = classification_k(&v)?;
    let embedding = wants_embedding(&v);
    let t = Instant::now();
    if embedding && input.get("datatype").and_then(|d| d.as_str()) != Some("BYTES") {
        return Err(ApiError::bad(
            "the embedding output takes BYTES input (base64-encoded images)",
        ));
    }
    let answers = match input.get("datatype").and_then(|d| d.as_str()) {
        Some("BYTES") => {
            let mut images = Vec::with_capacity(data.len());
            for (i, d) in data.iter().enumerate() {
                let s = d
                    .as_str()
                    .ok_or_else(|| ApiError::bad(format!("data[{i}] must be a base64 string")))?;
                let b = decode_b64(s).map_err(|e| ApiError::bad(format!("data[{i}]: {e}")))?;
                images.push(Bytes::from(b));
            }
            if embedding {
                let e = facade::embeddings(m, images, way).await?;
                let (n, d) = (e.len(), e.first().map_or(0, Vec::len));
                let flat: Vec<f32> = e.into_iter().flatten().collect();
                let output =
                    json!({"name": "embedding", "datatype": "FP32", "shape": [n, d], "data": flat});
                let mut out = json!({"model_name": m.name, "model_version": "1", "outputs": [output]});
                if let Some(id) = v.get("id") {
                    out["id"] = id.clone();
                }
                return Ok(timed(t, Json(out)));
            }
            facade::images(m, images, false, way).await?
        }
        Some("FP32") => facade::inputs(m, fp32_inputs(input, data, &m.info)?, way).await?,
        other => {
            return Err(ApiError::bad(format!(
                "datatype {} is not accepted: send BYTES (base64-encoded images) or FP32 [N,3,{},{}] (normalised)",
                other.map(|o| format!("{o:?}")).unwrap_or_else(|| "(missing)".into()),
                m.info.size.h,
                m.info.size.w
            )))
        }
    };
    let n = answers.len();
    let probs: Vec<&Vec<f32>> = answers.iter().map(|a| &a.probs).collect();
    let classes = &m.info.classes;
    let c = classes.len();
    let output = match classification {
        Some(k) => {
            let k = k.clamp(1, c.max(1));
            let data: Vec<String> = probs
                .iter()
                .flat_map(|p| {
                    let mut idx: Vec<usize> = (0..p.len()).collect();
                    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                    idx.into_iter()
                        .take(k)
                        .map(|i| format!("{:.6}:{i}:{}", p[i], classes[i]))
                        .collect::<Vec<_>>()
                })
                .collect();
            json!({"name": "probabilities", "datatype": "BYTES", "shape": [n, k], "data": data})
        }
        None => {
            let flat: Vec<f32> = probs.into_iter().flatten().copied().collect();
            json!({"name": "probabilities", "datatype": "FP32", "shape": [n, c], "data": flat})
        }
    };
    let mut outputs = vec![output];
    if m.accept.is_some() {
        let unknown: Vec<bool> = answers.iter().map(|a| a.unknown).collect();
        let score: Vec<f64> = answers
            .iter()
            .map(|a| a.score.unwrap_or(f64::NAN))
            .collect();
        outputs.push(json!({"name": "unknown", "datatype": "BOOL", "shape": [n], "data": unknown}));
        outputs.push(
            json!({"name": "unknown_score", "datatype": "FP64", "shape": [n], "data": score}),
        );
    }
    let mut out = json!({"model_name": m.name, "model_version": "1", "outputs": outputs});
    if let Some(id) = v.get("id") {
        out["id"] = id.clone();
    }
    Ok(timed(t, Json(out)))
}

/// Triton's classification extension: `"parameters": {"classification": K}` on the requested
/// output, or (accepted too) on the request itself.
fn classification_k(v: &Value) -> Result<Option<usize>, ApiError> {
    let on_output = v
        .get("outputs")
        .and_then(|o| o.as_array())
        .and_then(|o| o.first())
        .and_then(|o| o.get("parameters"));
    let Some(k) = on_output
        .or_else(|| v.get("parameters"))
        .and_then(|p| p.get("classification"))
    else {
        return Ok(None);
    };
    k.as_u64()
        .filter(|&k| k > 0)
        .map(|k| Some(k as usize))
        .ok_or_else(|| {
            ApiError::bad(format!(
                "\"classification\" must be a positive integer, not {k}"
            ))
        })
}

/// Checks an `FP32` input's shape against the model and cuts its data into one tensor per image.
fn fp32_inputs(
    input: &Value,
    data: &[Value],
    info: &crate::bundle::ModelInfo,
) -> Result<Vec<Input>, ApiError> {
    let (h, w) = (info.size.h as usize, info.size.w as usize);
    let shape: Vec<usize> = input
        .get("shape")
        .and_then(|s| s.as_array())
        .map(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
        .unwrap_or(None)
        .ok_or_else(|| ApiError::bad("the FP32 input needs \"shape\": [N, 3, H, W]"))?;
    let n = match shape.as_slice() {
        [n, 3, hh, ww] if *hh == h && *ww == w && *n > 0 => *n,
        _ => {
            return Err(ApiError::bad(format!(
                "FP32 input shape {shape:?} does not fit this model: send [N, 3, {h}, {w}] (normalised with mean {:?}, std {:?})",
                info.normalization.mean, info.normalization.std
            )))
        }
    };
    let mut flat = Vec::with_capacity(n * 3 * h * w);
    flatten_numbers(data, &mut flat, n * 3 * h * w)?;
    if flat.len() != n * 3 * h * w {
        return Err(ApiError::bad(format!(
            "the FP32 input has {} numbers; shape {shape:?} needs {}",
            flat.len(),
            n * 3 * h * w
        )));
    }
    Ok(flat
        .chunks(3 * h * w)
        .map(|c| Input::Tensor(c.to_vec()))
        .collect())
}

/// Row-major `data`, flat or nested as the protocol allows; stops past `cap` numbers.
fn flatten_numbers(data: &[Value], out: &mut Vec<f32>, cap: usize) -> Result<(), ApiError> {
    for d in data {
        if out.len() > cap {
            return Ok(());
        }
        match d {
            Value::Array(a) => flatten_numbers(a, out, cap)?,
            Value::Number(x) => {
                let x = x.as_f64().unwrap_or(f64::NAN) as f32;
                if !x.is_finite() {
                    return Err(ApiError::bad(
                        "the FP32 input holds a number that is not finite",
                    ));
                }
                out.push(x);
            }
            _ => {
                return Err(ApiError::bad(
                    "the FP32 input's data must hold only numbers",
                ))
            }
        }
    }
    Ok(())
}

//! The router: one handler per endpoint, JSON errors everywhere.

use super::worker::{Input, Job};
use super::{AppState, Model, MAX_BODY};
use crate::data::decode::decode_bytes;
use crate::infer::predict::preprocess;
use axum::body::{Body, Bytes};
use axum::extract::{
    DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Path, RawQuery, Request, State,
};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

type St = State<Arc<AppState>>;

/// An error answered as `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    msg: String,
}

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            msg: msg.into(),
        }
    }
    fn bad(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }
    fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {} MB", MAX_BODY >> 20),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.msg }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/ping", get(ping))
        .route("/models", get(list_models))
        .route("/models/{model}", get(model_card))
        .route("/models/{model}/confusion.svg", get(confusion_svg))
        .route("/predictions/{model}", post(predictions).put(predictions))
        .route("/metrics", get(metrics))
        .route("/v2/health/live", get(v2_live))
        .route("/v2/health/ready", get(v2_ready))
        .route("/v2/models/{model}", get(v2_metadata))
        .route("/v2/models/{model}/ready", get(v2_model_ready))
        .route("/v2/models/{model}/infer", post(v2_infer))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// `--cors ORIGIN`: lets pages from that origin (or any, with `*`) call the API, token included.
pub fn cors(origin: &str) -> Result<tower_http::cors::CorsLayer, super::ServeError> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = if origin == "*" {
        AllowOrigin::any()
    } else {
        let origin = origin.trim_end_matches('/');
        // An origin is scheme://host[:port]: nothing after the authority.
        let ok = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
        let v = HeaderValue::from_str(origin)
            .ok()
            .filter(|_| ok)
            .ok_or_else(|| super::ServeError::BadOrigin(origin.to_string()))?;
        AllowOrigin::exact(v)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::PUT,
        ])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .expose_headers([
            header::RETRY_AFTER,
            axum::http::HeaderName::from_static("x-compute-time"),
            axum::http::HeaderName::from_static("server-timing"),
        ]))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route (predictions are POST, the rest GET)",
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route; see GET /models and POST /predictions/{model}",
    )
}

/// Records every request's route, status and latency.
async fn track(State(st): St, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let t = Instant::now();
    let resp = next.run(req).await;
    st.metrics.observe_request(
        &method,
        &route,
        resp.status().as_u16(),
        t.elapsed().as_secs_f64(),
    );
    resp
}

/// With `--token`, every route but the health probes needs `Authorization: Bearer <token>`.
async fn auth(State(st): St, req: Request, next: Next) -> Response {
    if let Some(token) = &st.token {
        let path = req.uri().path();
        // The page holds no data (it asks for the token when the API answers 401); probes stay open.
        let open = path == "/" || path == "/ping" || path.starts_with("/v2/health/");
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !open && !same(given.as_bytes(), token.as_bytes()) {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: send the header `Authorization: Bearer <token>`",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn model<'a>(st: &'a AppState, name: &str) -> Result<&'a Model, ApiError> {
    st.models.get(name).ok_or_else(|| {
        let known: Vec<&str> = st.models.keys().map(|s| s.as_str()).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no model named {name:?}; served models: {}",
                known.join(", ")
            ),
        )
    })
}

/// The web page: one embedded file, no CDN, works offline.
const PAGE: &str = include_str!("page.html");

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

/// The confusion matrix that `evaluate --save` put in the bundle. Served as an image with a policy
/// that keeps any script in it from running, even when opened directly.
async fn confusion_svg(State(st): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    let m = model(&st, &name)?;
    let svg = m.confusion_svg.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{name} has no saved evaluation; run `finetune evaluate MODEL TESTDIR --save`"),
        )
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
        svg,
    )
        .into_response())
}

async fn ping() -> Json<Value> {
    Json(json!({"status": "Healthy"}))
}

async fn list_models(State(st): St) -> Json<Value> {
    let models: Vec<Value> = st
        .models
        .values()
        .map(|m| {
            json!({
                "name": m.name,
                "arch": m.info.arch,
                "num_classes": m.info.classes.len(),
                "predictions": format!("/predictions/{}", m.name),
            })
        })
        .collect();
    Json(json!({ "models": models }))
}

async fn model_card(State(st): St, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let m = model(&st, &name)?;
    let i = &m.info;
    let valid_error = i.metrics.as_ref().map(|x| x.error_rate).or_else(|| {
        m.final_metrics
            .as_ref()
            .and_then(|r| r.get("error_rate"))
            .and_then(|v| v.parse().ok())
    });
    let s = &m.queue.stats;
    use std::sync::atomic::Ordering::Relaxed;
    Ok(Json(json!({
        "name": m.name,
        "arch": i.arch,
        "classes": i.classes,
        "num_classes": i.classes.len(),
        "input_size": {"width": i.size.w, "height": i.size.h},
        "resize": i.resize,
        "pad_mode": i.pad_mode,
        "normalization": i.normalization,
        "training": i.training,
        // The folder name only: the server's paths are not the client's business.
        "data": i.data.as_ref().map(|d| {
            let mut v = json!(d);
            v["source"] = json!(d.source.file_name().map(|n| n.to_string_lossy()));
            v
        }),
        "metrics": i.metrics,
        "final_epoch": m.final_metrics,
        "valid_error_rate": valid_error,
        // From `finetune evaluate MODEL TESTDIR --save`, when it was run.
        "confusion_svg": m.confusion_svg.as_ref().map(|_| format!("/models/{}/confusion.svg", m.name)),
        "test_accuracy": m.evaluation.as_ref().and_then(|e| e.get("accuracy").cloned()),
        "evaluation": m.evaluation.as_ref().map(|e| json!({
            "accuracy": e.get("accuracy"),
            "correct": e.get("correct"),
            "total": e.get("total"),
            "test_dir": e.get("test_dir"),
            "per_class": e.get("per_class"),
            "confusion": e.get("confusion"),
        })),
        "finetune_version": i.finetune_version,
        "serving": {
            "batches": s.batches.load(Relaxed),
            "images": s.images.load(Relaxed),
            "largest_batch": s.largest_batch.load(Relaxed),
            "queued": s.queued.load(Relaxed),
        },
    })))
}

async fn metrics(State(st): St) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let queues: Vec<(String, usize, u64)> = st
        .models
        .values()
        .map(|m| {
            let s = &m.queue.stats;
            (
                m.name.clone(),
                s.queued.load(Relaxed),
                s.images.load(Relaxed),
            )
        })
        .collect();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(&queues),
    )
        .into_response()
}

fn parse_top_k(query: Option<&str>) -> Result<Option<usize>, ApiError> {
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("top_k=") {
            return v.parse::<usize>().map(Some).map_err(|_| {
                ApiError::bad(format!("top_k must be a positive integer, not {v:?}"))
            });
        }
    }
    Ok(None)
}

/// Reads the whole body, at most [`MAX_BODY`] bytes. A larger body is still read (and thrown away)
/// up to [`DRAIN_CAP`], so that clients which send the whole body before reading the answer (Python
/// `requests`, `ureq`) see the 413 instead of a broken pipe; past that the connection is dropped.
async fn read_body(
    body: Body,
    headers: &axum::http::HeaderMap,
    limit: std::time::Duration,
) -> Result<Bytes, ApiError> {
    // A client that stops sending mid-body must not hold a connection (and its buffer) forever.
    tokio::time::timeout(limit, read_body_inner(body, headers))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    limit.as_secs_f64()
                ),
            ))
        })
}

async fn read_body_inner(body: Body, headers: &axum::http::HeaderMap) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_CAP as u64) {
        return Err(ApiError::too_large());
    }
    let mut body = body;
    let mut buf: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad(format!("cannot read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total > DRAIN_CAP {
                break;
            }
            if total <= MAX_BODY {
                buf.extend_from_slice(&data);
            }
        }
    }
    if total > MAX_BODY {
        return Err(ApiError::too_large());
    }
    Ok(Bytes::from(buf))
}

/// How much of an oversized body is read before answering 413.
const DRAIN_CAP: usize = 64 * 1024 * 1024;

fn decode_b64(s: &str) -> Result<Vec<u8>, String> {
    // A data URL (`data:image/png;base64,...`) is accepted as well as plain base64.
    let s = match s.split_once(";base64,") {
        Some((head, rest)) if head.starts_with("data:") => rest,
        _ => s,
    };
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(&clean)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&clean))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(&clean))
        .map_err(|e| format!("not valid base64: {e}"))
}

/// The images of a request and whether the answer is one list per image (several were sent).
async fn read_images(
    req: Request,
    limit: std::time::Duration,
) -> Result<(Vec<Bytes>, bool), ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, &parts.headers, limit).await?;
    if bytes.is_empty() {
        return Err(ApiError::bad(
            "empty body: send an image as the body, as multipart parts, or as JSON {\"inputs\": \"<base64>\"}",
        ));
    }
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase())
        .unwrap_or_default();
    let mime = ct.split(';').next().unwrap_or("").trim().to_string();
    match mime.as_str() {
        "multipart/form-data" => {
            let req = Request::from_parts(parts, Body::from(bytes));
            let mut mp = Multipart::from_request(req, &())
                .await
                .map_err(|e| ApiError::bad(e.body_text()))?;
            let mut out = Vec::new();
            while let Some(field) = mp
                .next_field()
                .await
                .map_err(|e| ApiError::bad(format!("bad multipart body: {}", e.body_text())))?
            {
                let data = field
                    .bytes()
                    .await
                    .map_err(|e| ApiError::bad(format!("bad multipart body: {}", e.body_text())))?;
                if !data.is_empty() {
                    out.push(data);
                }
            }
            if out.is_empty() {
                return Err(ApiError::bad("the multipart body has no non-empty part"));
            }
            let several = out.len() > 1;
            Ok((out, several))
        }
        "application/json" => {
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::bad(format!("bad JSON: {e}")))?;
            let inputs = v.get("inputs").ok_or_else(|| {
                ApiError::bad("the JSON body needs \"inputs\": a base64 string or a list of them")
            })?;
            let (list, several) = match inputs {
                Value::String(s) => (vec![s.as_str()], false),
                Value::Array(a) if !a.is_empty() => (
                    a.iter()
                        .map(|x| {
                            x.as_str()
                                .ok_or_else(|| ApiError::bad("\"inputs\" must hold base64 strings"))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    true,
                ),
                _ => {
                    return Err(ApiError::bad(
                        "\"inputs\" must be a base64 string or a non-empty list of them",
                    ))
                }
            };
            let mut out = Vec::with_capacity(list.len());
            for (i, s) in list.iter().enumerate() {
                let b = decode_b64(s).map_err(|e| {
                    ApiError::bad(if several {
                        format!("inputs[{i}]: {e}")
                    } else {
                        format!("inputs: {e}")
                    })
                })?;
                if b.is_empty() {
                    return Err(ApiError::bad("an input is empty"));
                }
                out.push(Bytes::from(b));
            }
            Ok((out, several))
        }
        "" | "application/octet-stream" | "application/x-www-form-urlencoded" => {
            Ok((vec![bytes], false))
        }
        m if m.starts_with("image/") => Ok((vec![bytes], false)),
        m => Err(ApiError::bad(format!(
            "unsupported content type {m:?}: send image/* or application/octet-stream bytes, multipart/form-data, or application/json"
        ))),
    }
}

/// Decodes on the blocking pool, queues each image to the model's worker, waits for the answers.
async fn infer(m: &Model, images: Vec<Bytes>) -> Result<Vec<Vec<f32>>, ApiError> {
    let info = m.info.clone();
    let several = images.len() > 1;
    let prepared = tokio::task::spawn_blocking(move || {
        images
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let name = format!("image {}", i + 1);
                decode_bytes(std::path::Path::new(&name), b)
                    .map(|img| preprocess(&img, &info))
                    .map_err(|e| if several { e.to_string() } else { e.reason() })
            })
            .collect::<Result<Vec<_>, String>>()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(ApiError::bad)?;
    run_inputs(m, prepared.into_iter().map(Input::Image).collect()).await
}

/// Queues each input to the model's worker and waits for the answers, in order.
async fn run_inputs(m: &Model, inputs: Vec<Input>) -> Result<Vec<Vec<f32>>, ApiError> {
    let mut waits = Vec::with_capacity(inputs.len());
    for input in inputs {
        let (tx, rx) = tokio::sync::oneshot::channel();
        m.queue.submit(Job { input, reply: tx }).map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the model's queue is full; retry later",
            )
        })?;
        waits.push(rx);
    }
    let mut out = Vec::with_capacity(waits.len());
    for rx in waits {
        out.push(rx.await.map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the inference worker stopped",
            )
        })?);
    }
    Ok(out)
}

fn top(probs: &[f32], classes: &[String], k: usize) -> Value {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    Value::Array(
        idx.into_iter()
            .take(k)
            .map(|i| json!({"label": classes.get(i), "score": probs[i]}))
            .collect(),
    )
}

async fn predictions(
    State(st): St,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let m = model(&st, &name)?;
    let classes = &m.info.classes;
    let k = parse_top_k(q.as_deref())?
        .unwrap_or(5)
        .clamp(1, classes.len().max(1));
    let (images, several) = read_images(req, st.body_timeout).await?;
    let t = Instant::now();
    let probs = infer(m, images).await?;
    let lists: Vec<Value> = probs.iter().map(|p| top(p, classes, k)).collect();
    Ok(timed(
        t,
        Json(if several {
            Value::Array(lists)
        } else {
            lists.into_iter().next().unwrap_or(Value::Array(vec![]))
        }),
    ))
}

/// Adds the server-side time since `t` (decode, queue, forward) as `x-compute-time` (ms, what the
/// Hugging Face widget and text-embeddings-inference use) and `Server-Timing` (browser devtools).
fn timed(t: Instant, body: impl IntoResponse) -> Response {
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let mut r = body.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("{ms:.1}")) {
        h.insert("x-compute-time", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("inference;dur={ms:.1}")) {
        h.insert("server-timing", v);
    }
    r
}

// ---- KServe v2 (Open Inference Protocol) subset ----

async fn v2_live() -> Json<Value> {
    Json(json!({"live": true}))
}

async fn v2_ready() -> Json<Value> {
    Json(json!({"ready": true}))
}

async fn v2_metadata(State(st): St, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
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
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, m.info.classes.len()]}],
    })))
}

async fn v2_model_ready(State(st): St, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let m = model(&st, &name)?;
    Ok(Json(json!({"name": m.name, "ready": true})))
}

/// `{"inputs": [{"name", "datatype": "BYTES", "shape": [N], "data": ["<base64 image>", ...]}]}` or an
/// `FP32` input of shape `[N, 3, H, W]` (normalised, at the model's size; `data` flat or nested) →
/// `{"model_name", "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [N, C], "data": [...]}]}`.
/// With `"parameters": {"classification": K}` on the requested output (or on the request), the output
/// is Triton's classification extension instead: `BYTES [N, K]` strings `"<score>:<index>:<label>"`.
async fn v2_infer(
    State(st): St,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let m = model(&st, &name)?;
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
    let t = Instant::now();
    let probs = match input.get("datatype").and_then(|d| d.as_str()) {
        Some("BYTES") => {
            let mut images = Vec::with_capacity(data.len());
            for (i, d) in data.iter().enumerate() {
                let s = d
                    .as_str()
                    .ok_or_else(|| ApiError::bad(format!("data[{i}] must be a base64 string")))?;
                let b = decode_b64(s).map_err(|e| ApiError::bad(format!("data[{i}]: {e}")))?;
                images.push(Bytes::from(b));
            }
            infer(m, images).await?
        }
        Some("FP32") => run_inputs(m, fp32_inputs(input, data, &m.info)?).await?,
        other => {
            return Err(ApiError::bad(format!(
                "datatype {} is not accepted: send BYTES (base64-encoded images) or FP32 [N,3,{},{}] (normalised)",
                other.map(|o| format!("{o:?}")).unwrap_or_else(|| "(missing)".into()),
                m.info.size.h,
                m.info.size.w
            )))
        }
    };
    let n = probs.len();
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
            let flat: Vec<f32> = probs.into_iter().flatten().collect();
            json!({"name": "probabilities", "datatype": "FP32", "shape": [n, c], "data": flat})
        }
    };
    let mut out = json!({"model_name": m.name, "model_version": "1", "outputs": [output]});
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
    info: &crate::infer::ModelInfo,
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

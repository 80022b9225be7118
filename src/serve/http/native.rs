//! The native and TorchServe-style routes: the page, health, the model list and card, metrics, and
//! `POST /predictions/{model}`.

use super::body::read_images;
use super::{model, timed, ApiError, St};
use crate::infer::predict::Answer;
use crate::serve::facade;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::time::Instant;

/// The web page: one embedded file, no CDN, works offline.
const PAGE: &str = include_str!("../page.html");

pub async fn page() -> Response {
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
pub async fn confusion_svg(State(st): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    let m = model(&st, &name)?;
    let svg = m.confusion_svg.clone().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
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

pub async fn ping() -> Json<Value> {
    Json(json!({"status": "Healthy"}))
}

pub async fn list_models(State(st): St) -> Json<Value> {
    let models: Vec<Value> = st
        .models
        .values()
        .map(|m| {
            json!({
                "name": m.name,
                "arch": m.info.arch,
                "num_classes": m.info.classes.len(),
                "predictions": format!("/predictions/{}", m.name),
                "embed": format!("/embed/{}", m.name),
            })
        })
        .collect();
    Json(json!({ "models": models }))
}

pub async fn model_card(State(st): St, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
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
        // How far to trust an answer: the temperature and the "unknown" threshold in use.
        "calibration": i.calibration.filter(|_| m.calibrated),
        "unknown": i.unknown.as_ref().filter(|_| m.accept.is_some()).map(|u| json!({
            "score": u.score,
            "accept": m.accept,
            "threshold": u.threshold_of(u.score, m.accept.unwrap_or(u.accept)),
        })),
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
            "batches": s.batches(),
            "workers": s.worker_batches.len(),
            "worker_batches": s.worker_batches.iter().map(|b| b.load(Relaxed)).collect::<Vec<_>>(),
            "images": s.images.load(Relaxed),
            "largest_batch": s.largest_batch.load(Relaxed),
            "queued": s.queued.load(Relaxed),
            "arriving": s.arriving.load(Relaxed),
        },
    })))
}

pub async fn metrics(State(st): St) -> Response {
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

/// `?tta=1` (or `true`): test-time augmentation, as `finetune predict --tta`; `0`/`false`: none.
fn parse_tta(query: Option<&str>) -> Result<bool, ApiError> {
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("tta=") {
            return match v {
                "1" | "true" => Ok(true),
                "0" | "false" => Ok(false),
                _ => Err(ApiError::bad(format!("tta must be 1 or 0, not {v:?}"))),
            };
        }
    }
    Ok(false)
}

/// `?cam=1`: the Grad-CAM overlay (a PNG) instead of the answer; `&class=NAME` (or an index)
/// explains that class rather than the predicted one.
fn parse_cam(query: Option<&str>, classes: &[String]) -> Result<Option<Option<usize>>, ApiError> {
    let mut on = false;
    let mut class = None;
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("cam=") {
            on = match v {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => return Err(ApiError::bad(format!("cam must be 1 or 0, not {v:?}"))),
            };
        } else if let Some(v) = pair.strip_prefix("class=") {
            let name = percent_decode(v);
            class = Some(
                crate::infer::cam::class_index(classes, &name)
                    .map_err(|e| ApiError::bad(e.to_string()))?,
            );
        }
    }
    Ok(on.then_some(class))
}

/// `%XX` escapes and `+` of a query value (class names may hold spaces or non-ASCII letters).
fn percent_decode(v: &str) -> String {
    percent_encoding::percent_decode_str(&v.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
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

fn parse_thresh(query: Option<&str>) -> Result<f64, ApiError> {
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("thresh=") {
            let t: f64 = v
                .parse()
                .map_err(|_| ApiError::bad(format!("thresh must be a number, not {v:?}")))?;
            crate::infer::predict::check_thresh(t).map_err(ApiError::bad)?;
            return Ok(t);
        }
    }
    Ok(crate::bundle::DEFAULT_THRESH)
}

/// The answer for one image: the top `k`, or for a multi-label model every label above `thresh`.
/// TorchServe's shape (a list of `{label, score}`) is kept; a model with the "unknown" answer adds
/// `unknown` and `unknown_score` to each entry (the same for all of an image's entries).
fn top(a: &Answer, info: &crate::bundle::ModelInfo, k: usize, thresh: f64) -> Value {
    Value::Array(
        crate::infer::predict::decide(&a.probs, info.task, k, thresh)
            .into_iter()
            .map(|(i, p)| {
                let mut v = json!({"label": info.classes.get(i), "score": p});
                if let Some(s) = a.score {
                    v["unknown"] = a.unknown.into();
                    v["unknown_score"] = s.into();
                }
                v
            })
            .collect(),
    )
}

/// `POST /embed/{model}`: one image's embedding (a list of floats), or a list of them for
/// several images, in the same body shapes as `/predictions`.
pub async fn embed(
    State(st): St,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let m = model(&st, &name)?;
    let way = m.queue.arriving();
    let (images, several) = read_images(req, st.body_timeout).await?;
    let t = Instant::now();
    let e = facade::embeddings(m, images, way).await?;
    Ok(timed(
        t,
        Json(if several {
            json!(e)
        } else {
            json!(e.into_iter().next().unwrap_or_default())
        }),
    ))
}

/// The overlay as `image/png`; the class it explains in `X-Cam-Class` (its index) and
/// `X-Cam-Label` (percent-encoded UTF-8, as a header carries only ASCII).
fn cam_response(png: Vec<u8>, class: usize, classes: &[String]) -> Response {
    let label = classes
        .get(class)
        .map(|l| {
            percent_encoding::utf8_percent_encode(l, percent_encoding::NON_ALPHANUMERIC).to_string()
        })
        .unwrap_or_default();
    (
        [
            (header::CONTENT_TYPE, "image/png".to_string()),
            (
                header::HeaderName::from_static("x-cam-class"),
                class.to_string(),
            ),
            (header::HeaderName::from_static("x-cam-label"), label),
        ],
        png,
    )
        .into_response()
}

pub async fn predictions(
    State(st): St,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let m = model(&st, &name)?;
    let way = m.queue.arriving();
    let classes = &m.info.classes;
    let k = parse_top_k(q.as_deref())?
        .unwrap_or(5)
        .clamp(1, classes.len().max(1));
    let tta = parse_tta(q.as_deref())?;
    let thresh = parse_thresh(q.as_deref())?;
    let cam = parse_cam(q.as_deref(), classes)?;
    let (mut images, several) = read_images(req, st.body_timeout).await?;
    let t = Instant::now();
    if let Some(class) = cam {
        if several || images.len() != 1 {
            return Err(ApiError::bad(
                "cam=1 explains one image; send one per request",
            ));
        }
        let image = images.pop().unwrap_or_default();
        let (png, c) = facade::cam(m, image, class, way).await?;
        return Ok(timed(t, cam_response(png, c, classes)));
    }
    let answers = facade::images(m, images, tta, way).await?;
    let lists: Vec<Value> = answers.iter().map(|a| top(a, &m.info, k, thresh)).collect();
    Ok(timed(
        t,
        Json(if several {
            Value::Array(lists)
        } else {
            lists.into_iter().next().unwrap_or(Value::Array(vec![]))
        }),
    ))
}

//! The cleaner's HTTP side: the page and the JSON API it uses (scripts may use it too).
//! Every answer about a file goes through the [`Cleaner`], which maps opaque ids to files; requests
//! never name a path. A page on another web site cannot drive this API from the user's browser:
//! changes need `Content-Type: application/json` (which a cross-site form cannot send without a
//! CORS preflight, never granted here) and a foreign `Origin` is refused.

use super::{Action, CleanError, Cleaner, Sort};
use crate::infer::splits::SplitChoice;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const PAGE: &str = include_str!("page.html");

struct AppState {
    cleaner: Mutex<Cleaner>,
    max_file_bytes: u64,
}

type Shared = Arc<AppState>;

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

impl From<CleanError> for ApiError {
    fn from(e: CleanError) -> Self {
        use super::trash::TrashError as T;
        let status = match &e {
            CleanError::UnknownId(_) => StatusCode::NOT_FOUND,
            CleanError::Deleted(_) | CleanError::Trash(T::NothingToUndo) => StatusCode::CONFLICT,
            CleanError::UnknownClass(..)
            | CleanError::SameClass { .. }
            | CleanError::CsvLabels(_)
            | CleanError::Trash(T::BadLabel(_) | T::Outside { .. } | T::NotUtf8(_)) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Cleaner> {
    // A panic in another request leaves the state as consistent as the files (each action is one
    // move and one log line), so the lock stays usable.
    s.cleaner.lock().unwrap_or_else(|p| p.into_inner())
}

/// The router over `cleaner`; image reads are capped at `max_file_bytes` (`--max-file-mb`).
pub fn router(cleaner: Cleaner, max_file_bytes: u64) -> Router {
    let state = Arc::new(AppState {
        cleaner: Mutex::new(cleaner),
        max_file_bytes,
    });
    Router::new()
        .route("/", get(|| async { axum::response::Html(PAGE) }))
        .route("/api/classes", get(classes))
        .route("/api/summary", get(summary))
        .route("/api/items", get(items))
        .route("/api/items/{id}/image", get(image))
        .route("/api/items/{id}", post(act))
        .route("/api/undo", post(undo))
        .route("/api/rescore", post(rescore))
        .route("/api/leaks", get(leaks))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such page".into()) })
        .layer(axum::middleware::from_fn(guard))
        .with_state(state)
}

/// Serves `app` on `listener` until Ctrl-C (or SIGTERM), with serve's header deadline.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) {
    crate::serve::listen::serve(
        listener,
        app,
        std::time::Duration::from_secs(30),
        crate::serve::shutdown_signal(),
    )
    .await;
}

/// Refuses, before any handler runs, a path that tries to climb (`..`, also percent-encoded, or
/// backslashes and NULs), changes without a JSON content type, and requests from another origin.
async fn guard(req: Request, next: Next) -> Response {
    let raw = req.uri().path();
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let climbs = decoded
        .split(['/', '\\'])
        .any(|seg| seg == ".." || seg == ".")
        || decoded.contains(['\\', '\0'])
        || decoded.contains("//");
    if climbs {
        return bad(format!("path `{raw}` is not allowed")).into_response();
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let o = origin.to_str().unwrap_or("");
        let same = o.strip_prefix("http://").is_some_and(|rest| rest == host);
        if !same {
            return ApiError(
                StatusCode::FORBIDDEN,
                format!("requests from origin {o} are not allowed"),
            )
            .into_response();
        }
    }
    if req.method() == axum::http::Method::POST {
        let json_body = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json_body {
            return ApiError(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send a JSON body with Content-Type: application/json".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

fn parse_id(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| {
        bad(format!(
            "`{s}` is not an image id (ids are numbers from /api/items)"
        ))
    })
}

async fn classes(State(s): State<Shared>) -> Json<Value> {
    Json(json!(lock(&s).classes()))
}

fn summary_of(c: &Cleaner) -> Value {
    let (images, counts) = c.counts();
    let classes: Vec<Value> = counts
        .into_iter()
        .map(|(k, n)| json!({"name": k, "count": n}))
        .collect();
    json!({
        "data": c.root().display().to_string(),
        "classes": classes,
        "images": images,
        "changes": c.changes(),
        "splits": ["all", "train", "valid", "test"],
    })
}

/// Images that look like one photo in two splits (train/valid/test): a leak that flatters the
/// validation or test figures.
async fn leaks(State(s): State<Shared>) -> Json<Value> {
    Json(json!({
        "threshold": crate::clean::LEAK_SIMILARITY,
        "pairs": lock(&s).leaks(),
    }))
}

async fn summary(State(s): State<Shared>) -> Json<Value> {
    Json(summary_of(&lock(&s)))
}

async fn items(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    for k in q.keys() {
        if !["class", "split", "sort"].contains(&k.as_str()) {
            return Err(bad(format!("unknown parameter `{k}` (class, split, sort)")));
        }
    }
    let split = match q.get("split").map(String::as_str) {
        None | Some("") => SplitChoice::All,
        Some(x) => SplitChoice::parse(x)
            .ok_or_else(|| bad(format!("split `{x}`: choose train, valid, test or all")))?,
    };
    let sort = match q.get("sort").map(String::as_str) {
        None | Some("") | Some("loss") => Sort::Loss,
        Some("path") => Sort::Path,
        Some(x) => return Err(bad(format!("sort `{x}`: choose loss or path"))),
    };
    let c = lock(&s);
    let class = match q.get("class").map(String::as_str) {
        None | Some("") => None,
        Some(k) if c.classes().iter().any(|x| x == k) => Some(k),
        Some(k) => return Err(bad(format!("unknown class `{k}`"))),
    };
    Ok(Json(json!(c.items(class, split, sort))))
}

async fn image(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let path = lock(&s).image_path(id)?;
    let cap = s.max_file_bytes;
    let bytes = tokio::task::spawn_blocking(move || crate::data::files::read_capped(&path, cap))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mime = image::guess_format(&bytes)
        .map(|f| f.to_mime_type())
        .unwrap_or("application/octet-stream");
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, mime.parse().map_err(|_| bad("type"))?);
    h.insert(
        header::CACHE_CONTROL,
        "no-store".parse().map_err(|_| bad("cache"))?,
    );
    Ok((h, bytes).into_response())
}

async fn act(
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| bad(format!("bad JSON: {e}")))?;
    let action = match (v["action"].as_str(), v["label"].as_str()) {
        (Some("delete"), _) => Action::Delete,
        (Some("move"), Some(l)) => Action::Move(l.to_string()),
        (Some("move"), None) => return Err(bad("a move needs \"label\": the new class")),
        _ => {
            return Err(bad(
                "send {\"action\": \"delete\"} or {\"action\": \"move\", \"label\": CLASS}",
            ))
        }
    };
    let mut c = lock(&s);
    let item = c.act(id, &action)?;
    Ok(Json(json!({"item": item, "changes": c.changes()})))
}

async fn undo(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let mut c = lock(&s);
    let (u, item) = c.undo()?;
    Ok(Json(
        json!({"undone": u, "item": item, "changes": c.changes()}),
    ))
}

async fn rescore(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = lock(&s2);
        c.rescore()?;
        Ok::<Value, CleanError>(summary_of(&c))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map(Json)
    .map_err(ApiError::from)
}

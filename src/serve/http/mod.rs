//! The HTTP layer, one file per job: the router (here), errors, middleware, body parsing, the native
//! and TorchServe-style routes, KServe v2. A new protocol is one new file of handlers over
//! [`crate::serve::facade`] and its routes below.

mod body;
mod error;
mod kserve;
mod middleware;
mod native;

pub use error::ApiError;
pub use middleware::cors;

use super::{AppState, Model};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use kserve::*;
use native::*;
use std::sync::Arc;
use std::time::Instant;

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/ping", get(ping))
        .route("/models", get(list_models))
        .route("/models/{model}", get(model_card))
        .route("/models/{model}/confusion.svg", get(confusion_svg))
        .route("/predictions/{model}", post(predictions).put(predictions))
        .route("/embed/{model}", post(embed))
        .route("/metrics", get(metrics))
        .route("/v2/health/live", get(v2_live))
        .route("/v2/health/ready", get(v2_ready))
        .route("/v2/models/{model}", get(v2_metadata))
        .route("/v2/models/{model}/ready", get(v2_model_ready))
        .route("/v2/models/{model}/infer", post(v2_infer))
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::auth,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::track,
        ))
        .with_state(state)
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

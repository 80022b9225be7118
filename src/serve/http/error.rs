//! The one error type of the HTTP layer: every failure is answered as JSON `{"error": "..."}`.

use super::super::facade::InferError;
use super::super::MAX_BODY;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answered as `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    msg: String,
}

impl ApiError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            msg: msg.into(),
        }
    }
    pub fn bad(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }
    pub fn too_large() -> Self {
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

/// What the inference facade reports, as the client should see it: a full queue is the client's
/// cue to retry (503 with `Retry-After`), an image that does not decode is its own fault (400).
impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        let status = match e {
            InferError::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
            InferError::Decode(_) => StatusCode::BAD_REQUEST,
            // Asked of a model that cannot give it (a heatmap of a ViT): 422, the request was
            // well formed.
            InferError::Unsupported(_) => StatusCode::UNPROCESSABLE_ENTITY,
            InferError::WorkerGone | InferError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

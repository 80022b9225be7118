//! What wraps every route: metrics, the token check, CORS, and the JSON answers for unknown routes
//! and methods.

use super::{ApiError, St};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Instant;

/// `--cors ORIGIN`: lets pages from that origin (or any, with `*`) call the API, token included.
pub fn cors(origin: &str) -> Result<tower_http::cors::CorsLayer, crate::serve::ServeError> {
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
            .ok_or_else(|| crate::serve::ServeError::BadOrigin(origin.to_string()))?;
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

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route (predictions are POST, the rest GET)",
    )
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route; see GET /models and POST /predictions/{model}",
    )
}

/// Records every request's route, status and latency.
pub async fn track(State(st): St, req: Request, next: Next) -> Response {
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
pub async fn auth(State(st): St, req: Request, next: Next) -> Response {
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

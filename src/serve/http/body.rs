//! Reading request bodies: bounded in size and in time, and the image encodings a prediction may
//! arrive in (raw bytes, multipart parts, JSON base64).

use super::super::MAX_BODY;
use super::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, StatusCode};
use base64::Engine;
use serde_json::Value;

/// Reads the whole body, at most [`MAX_BODY`] bytes. A larger body is still read (and thrown away)
/// up to [`DRAIN_CAP`], so that clients which send the whole body before reading the answer (Python
/// `requests`, `ureq`) see the 413 instead of a broken pipe; past that the connection is dropped.
pub async fn read_body(
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

pub fn decode_b64(s: &str) -> Result<Vec<u8>, String> {
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
pub async fn read_images(
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

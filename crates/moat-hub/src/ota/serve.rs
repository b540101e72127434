//! `/tuf/...`: the image repository's metadata and targets from disk, the director's metadata
//! for the device named by the client certificate.
//!
//! Reads need a device certificate (mutual TLS) or an API token; a device's director
//! metadata needs that device's certificate. Targets support one HTTP range
//! (`Range: bytes=A-`, `A-B`, `-N`), so an interrupted download resumes; files are streamed
//! from disk in [`CHUNK`]-byte pieces.

use std::path::PathBuf;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::rest::error_response;
use crate::api::{AppState, Peer, bearer};

/// Bytes read from disk per chunk of a streamed file: 64 KiB.
pub const CHUNK: usize = 64 * 1024;

/// Who reads the repository.
enum Reader {
    Device(moat_types::DeviceId),
    Operator,
}

async fn reader(s: &AppState, peer: &Peer, headers: &HeaderMap) -> Result<Reader, Response> {
    if let Some(d) = &peer.device {
        return Ok(Reader::Device(d.clone()));
    }
    let Some(token) = bearer(headers).map(str::to_owned) else {
        return Err(unauthorized());
    };
    let access = s.access.clone();
    match tokio::task::spawn_blocking(move || access.authenticate(&token)).await {
        Ok(Some(_)) => Ok(Reader::Operator),
        _ => Err(unauthorized()),
    }
}

fn unauthorized() -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the update repository needs a device certificate (mutual TLS) or an API token",
    )
}

fn not_found(what: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("{what} not found"),
    )
}

fn json(bytes: Vec<u8>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        bytes,
    )
        .into_response()
}

pub(super) async fn image_metadata(
    State(s): State<AppState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Response {
    if let Err(r) = reader(&s, &peer, &headers).await {
        return r;
    }
    let Some(path) = s.ota.image_metadata_path(&file) else {
        return not_found(&format!("metadata {file}"));
    };
    match tokio::fs::read(&path).await {
        Ok(b) => json(b),
        Err(_) => not_found(&format!("metadata {file}")),
    }
}

pub(super) async fn director_metadata(
    State(s): State<AppState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Response {
    let who = match reader(&s, &peer, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if let Some(root) = s.ota.director_root(&file) {
        return json(root);
    }
    let Reader::Device(device) = who else {
        return error_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            "director metadata is per device: it needs the device's certificate",
        );
    };
    let ota = s.ota.clone();
    let name = file.clone();
    match tokio::task::spawn_blocking(move || ota.director_file(&device, &name)).await {
        Ok(Ok(Some(b))) => json(b),
        Ok(Ok(None)) => not_found(&format!("director metadata {file}")),
        Ok(Err(super::OtaError::NotInitialised)) => not_found("director (not initialised)"),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "director metadata failed");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
        Err(_) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        ),
    }
}

/// A parsed single byte range, inclusive.
fn parse_range(value: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        // Multiple ranges: serve the whole file (allowed by RFC 9110).
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let r = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || len == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse::<u64>().ok()?.min(len.saturating_sub(1))
        };
        if start >= len || end < start {
            return Some(Err(()));
        }
        (start, end)
    };
    Some(Ok(r))
}

pub(super) async fn target(
    State(s): State<AppState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Response {
    serve_target(&s, &peer, &headers, file).await
}

/// A hardware class's target: `/tuf/targets/{class}/{sha256}.{basename}`.
pub(super) async fn target_in_dir(
    State(s): State<AppState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((dir, file)): Path<(String, String)>,
) -> Response {
    serve_target(&s, &peer, &headers, format!("{dir}/{file}")).await
}

async fn serve_target(s: &AppState, peer: &Peer, headers: &HeaderMap, path: String) -> Response {
    if let Err(r) = reader(s, peer, headers).await {
        return r;
    }
    let Some(file) = s.ota.target_path(&path) else {
        return not_found(&format!("target {path}"));
    };
    stream_file(file, headers).await
}

async fn stream_file(path: PathBuf, headers: &HeaderMap) -> Response {
    let Ok(mut f) = tokio::fs::File::open(&path).await else {
        return not_found("target");
    };
    let Ok(len) = f.metadata().await.map(|m| m.len()) else {
        return not_found("target");
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_range(v, len));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Ok((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
        Some(Err(())) => {
            let mut r = error_response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "bad_request",
                "range not satisfiable",
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    if start > 0 && f.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return not_found("target");
    }
    let remaining = end - start;
    let stream = futures_util::stream::unfold((f, remaining), |(mut f, left)| async move {
        if left == 0 {
            return None;
        }
        let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        let mut buf = vec![0u8; want];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)),
                    (f, left - n as u64),
                ))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&remaining.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=4-6", 10), Some(Ok((4, 6))));
        assert_eq!(parse_range("bytes=4-100", 10), Some(Ok((4, 9))));
        assert_eq!(parse_range("bytes=-3", 10), Some(Ok((7, 9))));
        assert_eq!(parse_range("bytes=10-", 10), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
    }
}

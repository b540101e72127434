//! REST operations under `/api/v1/ota/` and the repository reads under `/tuf/`.
//!
//! | operation | role | audited as |
//! |---|---|---|
//! | `GET /api/v1/ota/online-keys` | auditor | - |
//! | `GET /api/v1/ota/status` | auditor | - |
//! | `PUT /api/v1/ota/root` | admin | `ota.root.install` / `ota.root.rotate` |
//! | `POST /api/v1/ota/uploads` (image bytes) | operator | `ota.upload` |
//! | `POST /api/v1/ota/targets` (signed metadata) | operator | `ota.target.publish` |
//! | `GET /api/v1/ota/targets` | auditor | - |
//! | `GET /tuf/metadata/{file}`, `/tuf/targets/{path}` | device certificate or token | - |
//! | `GET /tuf/director/metadata/{file}` | device certificate (roots: token too) | - |
//!
//! Refusals of operator-signed metadata (bad signature, version not increasing, expired) are
//! audited with outcome `denied` too: they may be an attack on the ceremony.

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post, put};
use futures_util::StreamExt;
use moat_audit::{Entry, Outcome};
use moat_ota::image::{MAX_UPLOAD_METADATA_BYTES, SignedUpdate};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::serve;
use super::{MAX_IMAGE_UPLOAD_BYTES, MAX_UPLOADS_IN_PROGRESS, OtaError, UPLOAD_STALL_TIMEOUT};
use crate::access::Caller;
use crate::api::{ADMIN, AUDITOR, ApiError, ApiResult, AppState, Authed, Json, OPERATOR};
use crate::identity::now_ms;

/// Largest JSON body of `PUT /api/v1/ota/root` and `POST /api/v1/ota/targets`: two metadata
/// documents of [`MAX_UPLOAD_METADATA_BYTES`] plus framing.
pub const MAX_OTA_JSON_BODY: usize = 3 * MAX_UPLOAD_METADATA_BYTES;

/// The OTA routes (merged into the API router).
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/ota/online-keys", get(online_keys))
        .route("/api/v1/ota/status", get(status))
        .route("/api/v1/ota/root", put(put_root))
        .route(
            "/api/v1/ota/targets",
            get(list_targets).post(publish_target),
        )
        .route("/api/v1/ota/uploads", post(upload))
        .route("/tuf/metadata/{file}", get(serve::image_metadata))
        .route("/tuf/targets/{file}", get(serve::target))
        .route("/tuf/targets/{dir}/{file}", get(serve::target_in_dir))
        .route(
            "/tuf/director/metadata/{file}",
            get(serve::director_metadata),
        )
        .layer(DefaultBodyLimit::max(MAX_OTA_JSON_BODY))
}

impl From<OtaError> for ApiError {
    fn from(e: OtaError) -> Self {
        match e {
            OtaError::NotInitialised => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            OtaError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            OtaError::Invalid(m) => ApiError::bad_request(m),
            OtaError::Refused(r) => match r {
                moat_ota::Error::Conflict(_) | moat_ota::Error::NotInitialised(_) => {
                    ApiError::new(StatusCode::CONFLICT, "conflict", r.to_string())
                }
                _ => ApiError::bad_request(r.to_string()),
            },
            OtaError::Io(io) => {
                tracing::error!(error = %io, "OTA storage failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the hub's log has the details",
                )
            }
        }
    }
}

async fn audit(s: &AppState, entry: Entry) -> ApiResult<()> {
    s.identity.audit_now(entry).await.map_err(ApiError::from)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OtaError> + Send + 'static,
) -> Result<T, OtaError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OtaError::Io(std::io::Error::other(e)))?
}

async fn online_keys(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
) -> ApiResult<axum::Json<Value>> {
    let keys = s.ota.online_keys();
    let ids = |k: &moat_ota::tough::schema::key::Key| moat_ota::keys::key_id(k).unwrap_or_default();
    Ok(axum::Json(json!({
        "keys": keys,
        "key_ids": {
            "image_snapshot": ids(&keys.image_snapshot),
            "image_timestamp": ids(&keys.image_timestamp),
            "director_targets": ids(&keys.director_targets),
            "director_snapshot": ids(&keys.director_snapshot),
            "director_timestamp": ids(&keys.director_timestamp),
        }
    })))
}

async fn status(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
) -> ApiResult<axum::Json<Value>> {
    let (image, director) = s.ota.root_versions();
    Ok(axum::Json(json!({
        "initialised": image.is_some() && director.is_some(),
        "image_root_version": image,
        "director_root_version": director,
        "targets": s.ota.targets().len(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RootBody {
    image_root: Option<Value>,
    director_root: Option<Value>,
    targets: Option<Value>,
}

fn to_bytes(v: Option<Value>) -> ApiResult<Option<Vec<u8>>> {
    v.map(|v| serde_json::to_vec(&v))
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn refused(s: &AppState, caller: &Caller, action: &str, target: &str, e: &OtaError) {
    if matches!(e, OtaError::Refused(_)) {
        let entry = Entry::new(now_ms(), &caller.actor, action, target, Outcome::Denied)
            .with("reason", e.to_string());
        let _ = s.identity.audit_now(entry).await;
    }
}

async fn put_root(
    State(s): State<AppState>,
    Authed(caller): Authed<ADMIN>,
    Json(body): Json<RootBody>,
) -> ApiResult<axum::Json<Value>> {
    let image = to_bytes(body.image_root)?;
    let director = to_bytes(body.director_root)?;
    let targets = to_bytes(body.targets)?;
    if image.is_none() && director.is_none() {
        return Err(ApiError::bad_request(
            "give image_root and/or director_root (signed root metadata)",
        ));
    }
    let first = !s.ota.initialised();
    let action = if first {
        "ota.root.install"
    } else {
        "ota.root.rotate"
    };
    let ota = s.ota.clone();
    let result = blocking(move || {
        ota.install_root(image.as_deref(), director.as_deref(), targets.as_deref())
    })
    .await;
    let (iv, dv) = match result {
        Ok(v) => v,
        Err(e) => {
            refused(&s, &caller, action, "ota:root", &e).await;
            return Err(e.into());
        }
    };
    audit(
        &s,
        Entry::new(
            now_ms(),
            &caller.actor,
            action,
            "ota:root",
            Outcome::Success,
        )
        .with("image_root_version", iv.to_string())
        .with("director_root_version", dv.to_string()),
    )
    .await?;
    Ok(axum::Json(json!({
        "image_root_version": iv,
        "director_root_version": dv,
    })))
}

fn random_id() -> ApiResult<String> {
    let bytes = crate::access::random_bytes::<16>()?;
    Ok(crate::access::hex(&bytes))
}

async fn upload(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("images are at most {MAX_IMAGE_UPLOAD_BYTES} bytes"),
        )
    };
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_IMAGE_UPLOAD_BYTES)
    {
        return Err(too_large());
    }
    // Held until the body is on disk (or abandoned): bounds the disk a set of slow or
    // concurrent uploads can hold.
    let Some(_slot) = s.ota.upload_slot() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_uploads",
            format!(
                "{MAX_UPLOADS_IN_PROGRESS} uploads are already in progress; retry when one ends"
            ),
        ));
    };
    let id = random_id()?;
    let path = s.ota.upload_path(&id);
    let part = path.with_extension("part");
    let io = |e: std::io::Error| ApiError::from(OtaError::Io(e));
    let mut file = tokio::fs::File::create(&part).await.map_err(io)?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut length = 0u64;
    let mut stream = body.into_data_stream();
    let outcome: ApiResult<()> = async {
        loop {
            let next = tokio::time::timeout(UPLOAD_STALL_TIMEOUT, stream.next()).await;
            let Ok(next) = next else {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "upload_stalled",
                    format!(
                        "no data for {} s; the upload was abandoned",
                        UPLOAD_STALL_TIMEOUT.as_secs()
                    ),
                ));
            };
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
            length += chunk.len() as u64;
            if length > MAX_IMAGE_UPLOAD_BYTES {
                return Err(too_large());
            }
            ctx.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        Ok(())
    }
    .await;
    drop(file);
    if let Err(e) = outcome {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e);
    }
    tokio::fs::rename(&part, &path).await.map_err(io)?;
    let digest = ctx.finish();
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(digest.as_ref());
    s.ota.finish_upload(&id, length, sha256);
    let sha_hex = moat_ota::keys::hex(&sha256);
    audit(
        &s,
        Entry::new(
            now_ms(),
            &caller.actor,
            "ota.upload",
            format!("ota-upload:{id}"),
            Outcome::Success,
        )
        .with("length", length.to_string())
        .with("sha256", &sha_hex),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"upload": id, "length": length, "sha256": sha_hex})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    upload: String,
    name: String,
    metadata: SignedUpdate,
}

async fn publish_target(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Json(body): Json<PublishBody>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    if body.upload.len() != 32 || !body.upload.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(
            "upload must be the id POST /api/v1/ota/uploads returned",
        ));
    }
    let ota = s.ota.clone();
    let name = body.name.clone();
    let result = blocking(move || ota.publish(&body.upload, &body.name, body.metadata)).await;
    let info = match result {
        Ok(i) => i,
        Err(e) => {
            refused(
                &s,
                &caller,
                "ota.target.publish",
                &format!("ota-target:{name}"),
                &e,
            )
            .await;
            return Err(e.into());
        }
    };
    audit(
        &s,
        Entry::new(
            now_ms(),
            &caller.actor,
            "ota.target.publish",
            format!("ota-target:{}", info.name),
            Outcome::Success,
        )
        .with("version", &info.version)
        .with("sha256", &info.sha256)
        .with("length", info.length.to_string())
        .with("role", &info.role),
    )
    .await?;
    let v = serde_json::to_value(&info).map_err(|e| ApiError::from(OtaError::Io(e.into())))?;
    Ok((StatusCode::CREATED, axum::Json(v)))
}

async fn list_targets(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(json!({"targets": s.ota.targets()})))
}

/// Kept for `serve.rs`: an error response in the API's JSON format.
pub(super) fn error_response(status: StatusCode, code: &'static str, message: &str) -> Response {
    use axum::response::IntoResponse;
    ApiError::new(status, code, message).into_response()
}

//! The HTTPS API on `--api-listen`: REST under `/api/v1`, the OpenAPI document at
//! `/api/openapi.json`, EST under `/.well-known/est/`, the CA certificate and CRL under
//! `/pki/`, and `/metrics`, `/healthz`.
//!
//! Every `/api/v1` operation except `login` needs `Authorization: Bearer TOKEN` (an API token
//! or a login session) with a role that allows it; errors are JSON
//! `{"error": {"code": "...", "message": "..."}}` with stable codes (see [`ApiError`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use moat_audit::{Entry, Outcome};
use moat_broker::Broker;
use moat_net::NetStats;
use moat_policy::Action;
use moat_store::registry::{AlertRecord, AlertState, DeviceStatus};
use moat_types::DeviceId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::{Access, Caller, Role};
use crate::defence::Verdict;
use crate::enroll::DEFAULT_TOKEN_TTL;
use crate::identity::{Identity, IdentityError, now_ms};

/// Largest request body the REST API reads (policy documents are at most 64 KiB).
pub const MAX_API_BODY: usize = 96 * 1024;
/// Default and largest page size of list operations.
pub const DEFAULT_PAGE: usize = 100;

/// Who is on the other end of an API connection (set per connection).
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    /// The device a verified client certificate names (mutual TLS is optional here; EST
    /// renewal requires it).
    pub device: Option<DeviceId>,
    /// A registered manufacturer's factory certificate (just-in-time enrollment only).
    pub factory: Option<crate::jit::Factory>,
}

/// Shared by every handler.
#[derive(Clone, Debug)]
pub(crate) struct AppState {
    pub identity: Arc<Identity>,
    pub access: Arc<Access>,
    pub broker: Broker,
    pub net: Arc<NetStats>,
    pub events: Arc<crate::identity::NetEvents>,
    /// The ban list.
    pub bans: Arc<crate::bans::Bans>,
    /// Detection and responses (`None` in tests that build an API without them).
    pub defence: Option<Arc<crate::defence::DefenceHandle>>,
    /// Signed updates: image repository, director, campaigns (`ota/`).
    pub ota: Arc<crate::ota::OtaService>,
    /// Update campaigns and device update reports (`ota/campaigns.rs`).
    pub campaigns: Arc<crate::ota::campaigns::Campaigns>,
    /// Turns true when the hub stops (shutdown, or a failed store): not ready any more.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// An API error: status, stable code, message.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        let (status, code) = match &e {
            IdentityError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            IdentityError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            IdentityError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            IdentityError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            IdentityError::Store(_) | IdentityError::Pki(_) | IdentityError::Internal(_) => {
                // The details go to the log, not to the caller.
                tracing::error!(error = %e, "API operation failed");
                return Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the hub's log has the details",
                );
            }
        };
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// An authenticated caller with at least role `R`.
pub(crate) struct Authed<const R: u8>(pub(crate) Caller);

pub(crate) const AUDITOR: u8 = 0;
pub(crate) const OPERATOR: u8 = 1;
pub(crate) const ADMIN: u8 = 2;

fn role_of(level: u8) -> Role {
    match level {
        AUDITOR => Role::Auditor,
        OPERATOR => Role::Operator,
        _ => Role::Admin,
    }
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

impl<const R: u8> FromRequestParts<AppState> for Authed<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing Authorization: Bearer TOKEN",
            )
        })?;
        let access = state.access.clone();
        let token = token.to_owned();
        let caller = tokio::task::spawn_blocking(move || access.authenticate(&token))
            .await
            .ok()
            .flatten()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "invalid or expired token",
                )
            })?;
        let needed = role_of(R);
        if caller.role < needed {
            state.identity.audit.record_limited(
                crate::identity::AuditKey::Actor(caller.actor.clone()),
                crate::identity::MAX_UNAUTHENTICATED_AUDIT_PER_MINUTE,
                Entry::new(
                    now_ms(),
                    &caller.actor,
                    "api.forbidden",
                    format!("{} {}", parts.method, parts.uri.path()),
                    Outcome::Denied,
                )
                .with("role", caller.role.as_str())
                .with("needed", needed.as_str()),
            );
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "role {} may not do this; it needs {}",
                    caller.role.as_str(),
                    needed.as_str()
                ),
            ));
        }
        Ok(Self(caller))
    }
}

/// JSON body with the API's error format on failure.
pub(crate) struct Json<T>(pub(crate) T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> ApiResult<Self> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
        let v = if bytes.is_empty() {
            serde_json::from_slice(b"{}")
        } else {
            serde_json::from_slice(&bytes)
        };
        v.map(Json)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Query string with the API's error format on failure (axum's own rejection is plain text).
pub(crate) struct Query<T>(pub(crate) T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::bad_request(format!("query string: {}", e.body_text())))
    }
}

fn device_id(s: &str) -> ApiResult<DeviceId> {
    DeviceId::parse(s).map_err(|e| ApiError::bad_request(format!("device id {s:?}: {e}")))
}

#[derive(Deserialize)]
struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

/// The router.
pub(crate) fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/login", post(login))
        .route("/devices", get(list_devices).post(create_device))
        .route("/devices/{id}", get(get_device).put(update_device))
        .route("/devices/{id}/certificate", post(issue_certificate))
        .route("/devices/{id}/rates", get(device_rates))
        .route("/devices/{id}/revoke", post(revoke_device))
        .route("/devices/{id}/disable", post(disable_device))
        .route("/devices/{id}/enable", post(enable_device))
        .route("/devices/{id}/approve", post(approve_device))
        .route("/certificates/{serial}/revoke", post(revoke_certificate))
        .route("/manufacturers", get(list_manufacturers))
        .route("/identity-conflicts", get(identity_conflicts))
        .route("/alerts", get(list_alerts))
        .route("/alerts/{id}", get(get_alert))
        .route("/alerts/{id}/confirm", post(confirm_alert))
        .route("/alerts/{id}/release", post(release_alert))
        .route("/alerts/{id}/false-positive", post(false_positive_alert))
        .route("/bans", get(list_bans).post(add_ban))
        .route("/bans/{id}", axum::routing::delete(remove_ban))
        .route("/ca", get(ca_info))
        .route("/ca/rotate", post(ca_rotate))
        .route("/ca/reload", post(ca_reload))
        .route("/ca/discard-previous", post(ca_discard_previous))
        .route(
            "/manufacturers/{name}",
            put(put_manufacturer).delete(delete_manufacturer),
        )
        .route("/groups", get(list_groups))
        .route("/groups/{name}", put(put_group).delete(delete_group))
        .route("/policies", get(list_policies))
        .route("/policy-decisions", post(test_policy))
        .route(
            "/policies/{name}",
            get(get_policy).put(put_policy).delete(delete_policy),
        )
        .route(
            "/enrollment-tokens",
            get(list_enrollment_tokens).post(create_enrollment_token),
        )
        .route(
            "/enrollment-tokens/{id}/revoke",
            post(revoke_enrollment_token),
        )
        .route("/api-tokens", get(list_api_tokens).post(create_api_token))
        .route("/api-tokens/{id}/revoke", post(revoke_api_token))
        .route("/audit", get(list_audit))
        .route("/audit/verify", get(verify_audit))
        .route("/audit/export", get(export_audit))
        .layer(DefaultBodyLimit::max(MAX_API_BODY));
    Router::new()
        .nest("/api/v1", v1)
        .route("/api/openapi.json", get(openapi))
        .route("/pki/ca.pem", get(ca_pem))
        .route("/pki/crl", get(crl))
        .route("/pki/crl/previous", get(crl_previous))
        .merge(crate::est::router())
        .merge(crate::ota::router())
        .merge(crate::ota::campaign_router())
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Ready while the hub accepts work: 503 once it is stopping or its store failed.
async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if *s.stopping.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut body = crate::metrics::render(
        &s.broker,
        &s.net,
        s.identity.audit.dropped(),
        s.identity.audit.suppressed(),
    );
    if let Some(d) = &s.defence {
        d.defence
            .render_metrics(&mut body, d.actors.webhook.as_ref());
    }
    s.campaigns.report_stats.render(&mut body);
    s.ota.render_metrics(&mut body);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
}

async fn ca_pem(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        s.identity.ca.load().root_cert_pem().to_owned(),
    )
}

async fn crl(State(s): State<AppState>) -> ApiResult<Response> {
    crl_of(&s, moat_pki::IssuerSlot::Current).await
}

async fn crl_previous(State(s): State<AppState>) -> ApiResult<Response> {
    crl_of(&s, moat_pki::IssuerSlot::Previous).await
}

async fn crl_of(s: &AppState, slot: moat_pki::IssuerSlot) -> ApiResult<Response> {
    let der = s.identity.crl(slot).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no previous issuing CA: no rotation is in its overlap",
        )
    })?;
    Ok((
        [(header::CONTENT_TYPE, "application/pkix-crl")],
        der.as_ref().clone(),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    user: String,
    password: String,
}

async fn login(
    State(s): State<AppState>,
    axum::Extension(peer): axum::Extension<Peer>,
    Json(body): Json<LoginBody>,
) -> ApiResult<axum::Json<Value>> {
    let access = s.access.clone();
    let user = body.user.clone();
    let ip = peer.addr.ip();
    let result = tokio::task::spawn_blocking(move || access.login(&user, &body.password, ip))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    match result {
        Ok((token, caller)) => {
            s.identity
                .audit_now(
                    Entry::new(
                        now_ms(),
                        &caller.actor,
                        "operator.login",
                        &caller.actor,
                        Outcome::Success,
                    )
                    .with("peer", peer.addr),
                )
                .await?;
            ok(json!({"token": token, "role": caller.role.as_str(),
                      "expires_in": crate::access::SESSION_TTL.as_secs()}))
        }
        Err(e) => {
            s.identity.audit.record_unauthenticated(
                Some(peer.addr.ip()),
                Entry::new(
                    now_ms(),
                    format!("peer:{}", peer.addr),
                    "operator.login",
                    format!("operator:{}", body.user.escape_debug()),
                    Outcome::Denied,
                )
                .with("reason", &e),
            );
            Err(e.into())
        }
    }
}

fn ok(v: Value) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(v))
}

async fn list_devices(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
    Query(page): Query<Page>,
) -> ApiResult<axum::Json<Value>> {
    let limit = page
        .limit
        .unwrap_or(DEFAULT_PAGE)
        .clamp(1, moat_store::registry::MAX_PAGE);
    let devices = s.identity.devices(page.after, limit).await?;
    let next = (devices.len() == limit)
        .then(|| devices.last().map(|d| d.id.clone()))
        .flatten();
    ok(json!({"items": devices, "next_after": next}))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeviceBody {
    id: Option<String>,
    group: Option<String>,
    #[serde(default)]
    attrs: BTreeMap<String, String>,
    #[serde(default)]
    policies: Vec<String>,
}

fn check_attrs(attrs: &BTreeMap<String, String>) -> ApiResult<()> {
    const MAX_ATTRS: usize = 64;
    if attrs.len() > MAX_ATTRS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ATTRS} attributes"
        )));
    }
    for (k, v) in attrs {
        let name_ok = !k.is_empty()
            && k.len() <= moat_policy::limits::MAX_ATTRIBUTE_NAME_LEN
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(ApiError::bad_request(format!(
                "attribute name {k:?} must be 1-64 of A-Z a-z 0-9 _ -"
            )));
        }
        if v.len() > moat_policy::limits::MAX_VARIABLE_VALUE_LEN {
            return Err(ApiError::bad_request(format!(
                "attribute {k} is longer than {} bytes",
                moat_policy::limits::MAX_VARIABLE_VALUE_LEN
            )));
        }
    }
    Ok(())
}

async fn create_device(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Json(body): Json<DeviceBody>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let id = device_id(
        body.id
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("id is required"))?,
    )?;
    check_attrs(&body.attrs)?;
    if s.identity.device(id.as_str()).is_ok() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("device {id} exists"),
        ));
    }
    let d = s
        .identity
        .put_device(&caller.actor, &id, body.group, body.attrs, body.policies)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(json!(d))))
}

async fn get_device(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let d = s.identity.device(&id)?;
    let certs = s.identity.certificates_of(id).await?;
    ok(json!({"device": d, "certificates": certs}))
}

/// The device's messages per minute over the last hour (`rates.rs`).
async fn device_rates(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    s.identity.device(&id)?;
    let minutes = s.events.activity.rates.series(&id, now_ms());
    ok(json!({"device": id, "minutes": minutes}))
}

async fn update_device(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(id): Path<String>,
    Json(body): Json<DeviceBody>,
) -> ApiResult<axum::Json<Value>> {
    let id = device_id(&id)?;
    if body.id.as_deref().is_some_and(|b| b != id.as_str()) {
        return Err(ApiError::bad_request(
            "the body's id differs from the path's",
        ));
    }
    check_attrs(&body.attrs)?;
    s.identity.device(id.as_str())?;
    let d = s
        .identity
        .put_device(&caller.actor, &id, body.group, body.attrs, body.policies)
        .await?;
    ok(json!(d))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    validity_days: Option<u32>,
}

async fn issue_certificate(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(id): Path<String>,
    Json(body): Json<IssueBody>,
) -> ApiResult<axum::Json<Value>> {
    let id = device_id(&id)?;
    let validity = body
        .validity_days
        .map_or(s.identity.device_validity(), |d| {
            Duration::from_secs(u64::from(d) * 86_400)
        });
    let issued = s
        .identity
        .issue_device(&caller.actor, &id, validity)
        .await?;
    ok(json!({
        "certificate_pem": issued.certificate.cert_pem,
        "key_pem": issued.key.pem(),
        "ca_pem": s.identity.ca.load().root_cert_pem(),
        "serial": moat_pki::serial_hex(&issued.certificate.serial),
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: Option<String>,
}

async fn set_status(
    s: &AppState,
    caller: &Caller,
    id: &str,
    status: DeviceStatus,
    reason: Option<String>,
) -> ApiResult<axum::Json<Value>> {
    let id = device_id(id)?;
    let reason = reason.unwrap_or_else(|| "unspecified".into());
    if status == DeviceStatus::Revoked && crate::identity::reason_from_name(&reason).is_none() {
        return Err(ApiError::bad_request(format!(
            "reason {reason:?} is not one of unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn"
        )));
    }
    let closed = s
        .identity
        .set_status(&caller.actor, &id, status, &reason)
        .await?;
    ok(json!({"device": id.as_str(), "status": status.as_str(), "sessions_closed": closed}))
}

async fn revoke_device(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(id): Path<String>,
    Json(body): Json<ReasonBody>,
) -> ApiResult<axum::Json<Value>> {
    set_status(&s, &caller, &id, DeviceStatus::Revoked, body.reason).await
}

async fn disable_device(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(id): Path<String>,
    Json(body): Json<ReasonBody>,
) -> ApiResult<axum::Json<Value>> {
    set_status(&s, &caller, &id, DeviceStatus::Disabled, body.reason).await
}

async fn enable_device(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    set_status(&s, &caller, &id, DeviceStatus::Active, None).await
}

async fn revoke_certificate(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(serial): Path<String>,
    Json(body): Json<ReasonBody>,
) -> ApiResult<axum::Json<Value>> {
    let reason = body.reason.unwrap_or_else(|| "unspecified".into());
    if crate::identity::reason_from_name(&reason).is_none() {
        return Err(ApiError::bad_request(format!(
            "reason {reason:?} is not one of unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn"
        )));
    }
    ok(json!(
        s.identity
            .revoke_certificate(&caller.actor, &serial, &reason)
            .await?
    ))
}

async fn approve_device(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let id = device_id(&id)?;
    s.identity.approve(&caller.actor, &id).await?;
    ok(json!({"device": id.as_str(), "status": "active"}))
}

async fn ca_info(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
) -> ApiResult<axum::Json<Value>> {
    ok(s.identity.ca_info())
}

async fn ca_rotate(
    State(s): State<AppState>,
    Authed(caller): Authed<ADMIN>,
) -> ApiResult<axum::Json<Value>> {
    ok(s.identity.rotate_ca(&caller.actor).await?)
}

async fn ca_reload(
    State(s): State<AppState>,
    Authed(caller): Authed<ADMIN>,
) -> ApiResult<axum::Json<Value>> {
    ok(s.identity.reload_ca(&caller.actor).await?)
}

async fn ca_discard_previous(
    State(s): State<AppState>,
    Authed(caller): Authed<ADMIN>,
) -> ApiResult<axum::Json<Value>> {
    ok(s.identity.discard_previous_ca(&caller.actor).await?)
}

async fn identity_conflicts(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
) -> ApiResult<axum::Json<Value>> {
    ok(json!({"items": s.events.conflicts()}))
}

async fn list_manufacturers(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
) -> ApiResult<axum::Json<Value>> {
    ok(json!({"items": s.identity.manufacturers()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManufacturerBody {
    ca_pem: String,
    group: Option<String>,
    #[serde(default)]
    require_approval: bool,
}

async fn put_manufacturer(
    State(s): State<AppState>,
    Authed(caller): Authed<ADMIN>,
    Path(name): Path<String>,
    Json(body): Json<ManufacturerBody>,
) -> ApiResult<axum::Json<Value>> {
    let m = s
        .identity
        .put_manufacturer(
            &caller.actor,
            name,
            body.ca_pem,
            body.group,
            body.require_approval,
        )
        .await?;
    ok(json!(m))
}

async fn delete_manufacturer(
    State(s): State<AppState>,
    Authed(caller): Authed<ADMIN>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.identity.delete_manufacturer(&caller.actor, name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_groups(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
) -> ApiResult<axum::Json<Value>> {
    ok(json!({"items": s.identity.groups()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    #[serde(default)]
    policies: Vec<String>,
}

async fn put_group(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(name): Path<String>,
    Json(body): Json<GroupBody>,
) -> ApiResult<axum::Json<Value>> {
    ok(json!(
        s.identity
            .put_group(&caller.actor, name, body.policies)
            .await?
    ))
}

async fn delete_group(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.identity.delete_group(&caller.actor, name).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn policy_json(name: &str, doc: &str) -> Value {
    json!({"name": name, "document": serde_json::from_str::<Value>(doc).unwrap_or(Value::Null)})
}

async fn list_policies(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
) -> ApiResult<axum::Json<Value>> {
    let items: Vec<Value> = s
        .identity
        .policies()
        .iter()
        .map(|(n, d)| policy_json(n, d))
        .collect();
    ok(json!({"items": items}))
}

async fn get_policy(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    s.identity
        .policies()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, d)| axum::Json(policy_json(n, d)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("policy {name} not found"),
            )
        })
}

async fn put_policy(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<axum::Json<Value>> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the policy document is not UTF-8"))?;
    let closed = s
        .identity
        .put_policy(&caller.actor, name.clone(), text)
        .await?;
    ok(json!({"name": name, "sessions_closed": closed}))
}

async fn delete_policy(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let closed = s
        .identity
        .delete_policy(&caller.actor, name.clone())
        .await?;
    ok(json!({"name": name, "sessions_closed": closed}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestBody {
    device: String,
    action: String,
    topic: String,
}

async fn test_policy(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
    Json(body): Json<TestBody>,
) -> ApiResult<axum::Json<Value>> {
    let action: Action = body.action.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "action {:?} is not one of connect, publish, subscribe, receive, retain",
            body.action
        ))
    })?;
    let (d, quota) = s.identity.test_policy(&body.device, action, &body.topic)?;
    let quota: serde_json::Map<String, Value> = moat_types::QuotaLimit::ALL
        .iter()
        .filter_map(|l| quota.get(*l).map(|v| (l.as_str().to_owned(), v.into())))
        .collect();
    ok(json!({
        "allowed": d.allowed,
        "statement": d.by.as_ref().map(|b| json!({"policy": b.policy, "statement": b.statement, "effect": b.effect.as_str()})),
        "explanation": d.to_string(),
        "quota": quota,
    }))
}

async fn list_enrollment_tokens(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
) -> ApiResult<axum::Json<Value>> {
    let items = s
        .identity
        .registry
        .enrollment_tokens()
        .map_err(IdentityError::from)?;
    ok(json!({"items": items}))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    group: Option<String>,
    uses: Option<u32>,
    ttl_secs: Option<u64>,
}

async fn create_enrollment_token(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Json(body): Json<TokenBody>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let ttl = body.ttl_secs.map_or(DEFAULT_TOKEN_TTL, Duration::from_secs);
    let (token, record) = s
        .identity
        .create_enrollment_token(
            &s.access,
            &caller.actor,
            body.group,
            body.uses.unwrap_or(1),
            ttl,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(
            json!({"token": token, "id": record.id, "group": record.group,
                          "uses": record.max_uses, "expires_at_ms": record.expires_at_ms}),
        ),
    ))
}

async fn revoke_enrollment_token(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.identity
        .revoke_enrollment_token(&caller.actor, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_api_tokens(
    State(s): State<AppState>,
    Authed(_): Authed<ADMIN>,
) -> ApiResult<axum::Json<Value>> {
    let items = s
        .identity
        .registry
        .api_tokens()
        .map_err(IdentityError::from)?;
    ok(json!({"items": items}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiTokenBody {
    name: String,
    role: String,
    ttl_secs: Option<u64>,
}

async fn create_api_token(
    State(s): State<AppState>,
    Authed(caller): Authed<ADMIN>,
    Json(body): Json<ApiTokenBody>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let role = Role::parse(&body.role)
        .ok_or_else(|| ApiError::bad_request("role must be admin, operator or auditor"))?;
    if body.name.is_empty() || body.name.len() > 64 {
        return Err(ApiError::bad_request("name must be 1-64 bytes"));
    }
    let (token, record) =
        s.access
            .create_api_token(&body.name, role, body.ttl_secs.map(Duration::from_secs))?;
    s.identity
        .audit_now(
            Entry::new(
                now_ms(),
                &caller.actor,
                "api_token.create",
                format!("token:{}", record.id),
                Outcome::Success,
            )
            .with("role", role.as_str())
            .with("name", &body.name),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"token": token, "id": record.id, "role": role.as_str()})),
    ))
}

async fn revoke_api_token(
    State(s): State<AppState>,
    Authed(caller): Authed<ADMIN>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if !s
        .identity
        .registry
        .revoke_api_token(&id)
        .map_err(IdentityError::from)?
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("API token {id} not found"),
        ));
    }
    s.identity
        .audit_now(Entry::new(
            now_ms(),
            &caller.actor,
            "api_token.revoke",
            format!("token:{id}"),
            Outcome::Success,
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct AuditPage {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn list_audit(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
    Query(page): Query<AuditPage>,
) -> ApiResult<Response> {
    let limit = page
        .limit
        .unwrap_or(DEFAULT_PAGE)
        .clamp(1, moat_store::registry::MAX_PAGE);
    let registry = s.identity.registry.clone();
    let records =
        tokio::task::spawn_blocking(move || registry.audit_records(page.after.unwrap_or(0), limit))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?
            .map_err(IdentityError::from)?;
    let items: Vec<Value> = records
        .iter()
        .map(|r| serde_json::from_str(&r.to_json_line()).unwrap_or(Value::Null))
        .collect();
    let next = (records.len() == limit)
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    Ok(axum::Json(json!({"items": items, "next_after": next})).into_response())
}

async fn verify_audit(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
) -> ApiResult<axum::Json<Value>> {
    let registry = s.identity.registry.clone();
    let result = tokio::task::spawn_blocking(move || registry.verify_audit())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(IdentityError::from)?;
    ok(match result {
        Ok(v) => json!({"intact": true, "entries": v.count, "head": moat_audit::hex(&v.head)}),
        Err(t) => json!({"intact": false, "problem": t.to_string()}),
    })
}

async fn export_audit(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
) -> ApiResult<Response> {
    let registry = s.identity.registry.clone();
    let body = tokio::task::spawn_blocking(move || -> Result<String, moat_store::StoreError> {
        let mut out = String::new();
        let mut after = 0;
        loop {
            let page = registry.audit_records(after, moat_store::registry::MAX_PAGE)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for r in &page {
                out.push_str(&r.to_json_line());
                out.push('\n');
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(IdentityError::from)?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

async fn list_bans(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
) -> ApiResult<axum::Json<Value>> {
    let items = s.bans.list().await?;
    ok(json!({"items": items}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanBody {
    /// `address`, `cidr`, `device` or `client-id`.
    kind: String,
    value: String,
    /// None: permanent.
    duration_secs: Option<u64>,
    reason: String,
}

async fn add_ban(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Json(body): Json<BanBody>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let kind = moat_store::registry::BanKind::parse(&body.kind)
        .ok_or_else(|| ApiError::bad_request("kind must be address, cidr, device or client-id"))?;
    let (mut ban, closed) = s
        .bans
        .add(
            &caller.actor,
            kind,
            &body.value,
            body.duration_secs.map(Duration::from_secs),
            &body.reason,
        )
        .await?;
    ban["closed_connections"] = json!(closed);
    Ok((StatusCode::CREATED, axum::Json(ban)))
}

async fn remove_ban(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.bans.remove(&caller.actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- alerts ------------------------------------------------------------------------------

/// Alerts one list returns by default.
const DEFAULT_ALERTS: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertQuery {
    /// Only alerts raised in the last this many seconds.
    since_secs: Option<u64>,
    /// Only alerts in this state: open, confirmed, released or false_positive.
    state: Option<String>,
    limit: Option<usize>,
}

/// The stored alert with the engine's explanation spread out: the fields scripts rely on
/// (`time`, `detector`, `severity`, `device`, `address`, `explanation`, `response`) plus
/// the registry's id and the alert's standing.
pub(crate) fn alert_json(a: &AlertRecord) -> Value {
    let body: Value = serde_json::from_str(&a.body).unwrap_or(Value::Null);
    json!({
        "id": a.id,
        "time": a.time_ms,
        "detector": a.detector,
        "severity": a.severity,
        "device": a.device,
        "address": a.address,
        "group": body.get("group").cloned().unwrap_or(Value::Null),
        "explanation": body.get("explanation").cloned().unwrap_or(Value::Null),
        "response": a.response,
        "intended": body
            .get("intended")
            .and_then(|i| i.get("action"))
            .cloned()
            .unwrap_or(Value::Null),
        "until": body.get("until_ms").cloned().unwrap_or(Value::Null),
        "state": a.state.as_str(),
        "state_at": a.state_at_ms,
        "state_by": a.state_by,
    })
}

async fn list_alerts(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
    Query(q): Query<AlertQuery>,
) -> ApiResult<axum::Json<Value>> {
    let states = match q.state.as_deref() {
        None => Vec::new(),
        Some(name) => vec![AlertState::parse(name).ok_or_else(|| {
            ApiError::bad_request("state must be open, confirmed, released or false_positive")
        })?],
    };
    let since = q.since_secs.map_or(0, |secs| {
        crate::identity::now_ms().saturating_sub(secs.saturating_mul(1000))
    });
    let limit = q
        .limit
        .unwrap_or(DEFAULT_ALERTS)
        .clamp(1, moat_store::registry::MAX_PAGE);
    let registry = s.identity.registry.clone();
    let records = tokio::task::spawn_blocking(move || registry.alerts(since, &states, limit))
        .await
        .map_err(|e| IdentityError::Internal(e.to_string()))?
        .map_err(IdentityError::from)?;
    ok(json!({"items": records.iter().map(alert_json).collect::<Vec<_>>()}))
}

async fn get_alert(
    State(s): State<AppState>,
    Authed(_): Authed<AUDITOR>,
    Path(id): Path<u64>,
) -> ApiResult<axum::Json<Value>> {
    let registry = s.identity.registry.clone();
    let record = tokio::task::spawn_blocking(move || registry.alert(id))
        .await
        .map_err(|e| IdentityError::Internal(e.to_string()))?
        .map_err(IdentityError::from)?
        .ok_or_else(|| IdentityError::NotFound(format!("alert {id}")))?;
    ok(alert_json(&record))
}

async fn verdict(s: &AppState, actor: &str, id: u64, v: Verdict) -> ApiResult<axum::Json<Value>> {
    let Some(defence) = &s.defence else {
        return Err(IdentityError::NotFound(format!("alert {id}")).into());
    };
    let record = defence
        .defence
        .verdict(&defence.actors, actor, id, v)
        .await?
        .ok_or_else(|| IdentityError::NotFound(format!("alert {id}")))?;
    ok(alert_json(&record))
}

async fn confirm_alert(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(id): Path<u64>,
) -> ApiResult<axum::Json<Value>> {
    verdict(&s, &caller.actor, id, Verdict::Confirm).await
}

async fn release_alert(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(id): Path<u64>,
) -> ApiResult<axum::Json<Value>> {
    verdict(&s, &caller.actor, id, Verdict::Release).await
}

async fn false_positive_alert(
    State(s): State<AppState>,
    Authed(caller): Authed<OPERATOR>,
    Path(id): Path<u64>,
) -> ApiResult<axum::Json<Value>> {
    verdict(&s, &caller.actor, id, Verdict::FalsePositive).await
}

//! EST (RFC 7030) under `/.well-known/est/`: `cacerts`, `simpleenroll` (authenticated with an
//! enrollment token as the HTTP Basic password, or as a Bearer token), `simplereenroll`
//! (authenticated by the device's current certificate over mutual TLS) and `csrattrs`.
//!
//! Bodies are base64 DER as the RFC says (PKCS#10 in, certs-only PKCS#7 out), at most
//! [`moat_pki::MAX_EST_BODY_SIZE`] bytes.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use moat_pki::IssuedCertificate;
use rustls_pki_types::CertificateDer;

use crate::api::{AppState, Peer};
use crate::identity::IdentityError;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/est/cacerts", get(cacerts))
        .route("/.well-known/est/simpleenroll", post(simpleenroll))
        .route("/.well-known/est/simplereenroll", post(simplereenroll))
        .route("/.well-known/est/csrattrs", get(csrattrs))
        .layer(DefaultBodyLimit::max(moat_pki::MAX_EST_BODY_SIZE))
}

fn pkcs7_response(certs: &[CertificateDer<'_>]) -> Response {
    let body = moat_pki::encode_est_base64(&moat_pki::certs_only(certs));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/pkcs7-mime; smime-type=certs-only"),
            ),
            (
                header::HeaderName::from_static("content-transfer-encoding"),
                HeaderValue::from_static("base64"),
            ),
        ],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let mut r = (status, format!("{}\n", message.into())).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"moat-est\""),
        );
    }
    r
}

fn identity_error(e: &IdentityError) -> Response {
    let status = match e {
        IdentityError::NotFound(_) | IdentityError::Invalid(_) => StatusCode::BAD_REQUEST,
        IdentityError::Conflict(_) => StatusCode::CONFLICT,
        IdentityError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        IdentityError::Store(_) | IdentityError::Pki(_) | IdentityError::Internal(_) => {
            tracing::error!(error = %e, "EST operation failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    error(status, e.to_string())
}

async fn cacerts(State(s): State<AppState>) -> Response {
    // The current issuing CA, the previous one during a rotation overlap, and the root.
    let ca = s.identity.ca.load();
    let mut certs = ca.trusted_issuing_certs();
    certs.push(ca.root_cert_der());
    pkcs7_response(&certs)
}

async fn csrattrs() -> StatusCode {
    // No attributes are required: the hub builds every certificate field itself.
    StatusCode::NO_CONTENT
}

/// The enrollment token from `Authorization: Basic base64(any:TOKEN)` or `Bearer TOKEN`.
fn token_from(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = value.strip_prefix("Bearer ") {
        return Some(t.trim().to_owned());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = moat_pki::decode_est_base64(encoded.trim().as_bytes()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_owned())
}

fn csr_from(body: &[u8]) -> Result<Vec<u8>, Box<Response>> {
    moat_pki::decode_est_base64(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("body is not base64 DER: {e}"),
        ))
    })
}

fn issued(cert: &IssuedCertificate) -> Response {
    pkcs7_response(std::slice::from_ref(&cert.cert_der))
}

async fn simpleenroll(
    State(s): State<AppState>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Authentication before the body is parsed.
    let token = token_from(&headers);
    if token.is_none() && peer.factory.is_none() {
        return error(
            StatusCode::UNAUTHORIZED,
            "an enrollment token (HTTP Basic password or Bearer) or a registered manufacturer's factory certificate is required",
        );
    }
    let csr = match csr_from(&body) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if let Some(token) = token {
        return match s
            .identity
            .enroll(&s.access, &token, &csr, peer.addr.ip())
            .await
        {
            Ok(cert) => issued(&cert),
            Err(e) => identity_error(&e),
        };
    }
    let Some(factory) = &peer.factory else {
        return error(StatusCode::UNAUTHORIZED, "no credentials");
    };
    match s.identity.enroll_jit(factory, &csr, peer.addr.ip()).await {
        Ok(crate::jit::JitOutcome::Issued(cert)) => issued(&cert),
        Ok(crate::jit::JitOutcome::Pending) => {
            let mut r = (
                StatusCode::ACCEPTED,
                "held for an operator's approval; ask again later\n",
            )
                .into_response();
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::jit::APPROVAL_RETRY_AFTER_SECS),
            );
            r
        }
        Err(e) => identity_error(&e),
    }
}

async fn simplereenroll(
    State(s): State<AppState>,
    axum::Extension(peer): axum::Extension<Peer>,
    body: Bytes,
) -> Response {
    let Some(device) = peer.device else {
        return error(
            StatusCode::UNAUTHORIZED,
            "renewal needs the device's current certificate (mutual TLS)",
        );
    };
    let csr = match csr_from(&body) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match s.identity.reenroll(&device, &csr, peer.addr.ip()).await {
        Ok(cert) => issued(&cert),
        Err(e) => identity_error(&e),
    }
}

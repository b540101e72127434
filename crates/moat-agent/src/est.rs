//! The EST client (RFC 7030): `cacerts`, `simpleenroll` and `simplereenroll` over HTTPS/1.1
//! with rustls, verifying the hub against the CA file and, for renewal, presenting the
//! device's current certificate.
//!
//! Every response is bounded ([`MAX_EST_RESPONSE_SIZE`]) and timed ([`EST_TIMEOUT`]); bodies
//! are base64 certs-only PKCS#7 ([`crate::pkcs7`]). An HTTP error becomes
//! [`AgentError::Refused`] with the hub's one-line explanation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use moat_types::DeviceId;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::AgentError;

/// Largest EST response body read, in bytes: 64 KiB of base64 (a certs-only message of up to
/// [`MAX_PKCS7_SIZE`](crate::MAX_PKCS7_SIZE) bytes with line breaks).
pub const MAX_EST_RESPONSE_SIZE: usize = 64 * 1024;
/// Most characters of a hub's error message kept for [`AgentError::Refused`]: 256.
pub const MAX_ERROR_MESSAGE_LEN: usize = 256;
/// Longest accepted hub URL, in bytes: 512.
pub const MAX_URL_LEN: usize = 512;
/// Longest accepted enrollment token, in bytes: 512.
pub const MAX_TOKEN_LEN: usize = 512;
/// How long connecting to the hub (TCP) may take: 10 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one EST exchange may take, connection and TLS handshake included: 30 s.
pub const EST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a hub URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hub URL {url:?}: {reason}")]
pub struct UrlError {
    url: String,
    reason: &'static str,
}

/// The hub's EST base: `https://HOST[:PORT]` (port 443 if omitted), where HOST is a DNS
/// name or an IP address (IPv6 in brackets). No path, query, fragment or user info: the EST
/// paths are fixed (`/.well-known/est/...`).
#[derive(Clone, PartialEq, Eq)]
pub struct HubUrl {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

impl HubUrl {
    /// Parses a hub URL.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let fail = |reason| UrlError {
            url: text.chars().take(64).collect(),
            reason,
        };
        if text.len() > MAX_URL_LEN {
            return Err(fail("longer than 512 bytes"));
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(fail("not of the form https://HOST:PORT"));
        };
        if !scheme.eq_ignore_ascii_case("https") {
            return Err(fail("the scheme must be https (EST runs over TLS)"));
        }
        let authority = match rest.split_once('/') {
            Some((a, "")) => a,
            Some(_) => return Err(fail("a path is not allowed (the EST paths are fixed)")),
            None => rest,
        };
        if authority.contains(['@', '?', '#']) {
            return Err(fail("user info, query and fragment are not allowed"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| fail("unclosed '['"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or_else(|| fail("bad port"))?),
                ),
            }
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => 443,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(fail("bad port")),
            },
        };
        let host = host.to_ascii_lowercase();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| fail("the host is neither a DNS name nor an IP address"))?;
        Ok(HubUrl {
            host,
            port,
            server_name,
        })
    }

    /// The host: a DNS name or an IP address (without brackets).
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The name the hub's TLS certificate must carry.
    pub(crate) fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// `HOST:PORT` as the Host header wants it.
    pub(crate) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for HubUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}", self.authority())
    }
}

impl fmt::Debug for HubUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HubUrl({self})")
    }
}

impl std::str::FromStr for HubUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// An enrollment token (`moat token create` prints one). A secret: its `Debug` shows no
/// content and the agent never logs it; it is sent only to a hub that verified against the
/// CA file.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentToken(String);

impl EnrollmentToken {
    /// Checks the token's shape: 1 to [`MAX_TOKEN_LEN`] visible ASCII characters.
    pub fn new(token: impl Into<String>) -> Result<Self, AgentError> {
        let token = token.into();
        let token = token.trim();
        if token.is_empty()
            || token.len() > MAX_TOKEN_LEN
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(AgentError::Misconfigured(format!(
                "the enrollment token must be 1 to {MAX_TOKEN_LEN} visible ASCII characters"
            )));
        }
        Ok(EnrollmentToken(token.to_owned()))
    }
}

impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnrollmentToken(<secret>)")
    }
}

impl std::str::FromStr for EnrollmentToken {
    type Err = AgentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl ClientAuth {
    /// The same credentials again (a second connection's configuration).
    pub(crate) fn clone_key(&self) -> Self {
        match self {
            ClientAuth::None => ClientAuth::None,
            ClientAuth::Device { chain, key } => ClientAuth::Device {
                chain: chain.clone(),
                key: key.clone_key(),
            },
        }
    }
}

/// A TLS client configuration trusting only `roots` for the hub's certificate, presenting
/// `auth`, offering the ALPN protocols `alpn` (`http/1.1`; none for raw MQTT).
pub(crate) fn client_config(
    roots: &[CertificateDer<'static>],
    auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<ClientConfig, AgentError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| AgentError::Misconfigured(format!("a CA certificate is unusable: {e}")))?;
    }
    let builder = ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Crypto(e.to_string()))?
        .with_root_certificates(store);
    let mut config = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Device { chain, key } => {
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                AgentError::Misconfigured(format!("the device key or certificate: {e}"))
            })?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// An EST client bound to one hub and one TLS configuration.
pub(crate) struct EstClient {
    url: HubUrl,
    tls: TlsConnector,
}

impl fmt::Debug for EstClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EstClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// How the client authenticates itself at the TLS layer.
pub(crate) enum ClientAuth {
    /// No client certificate (enrollment, `cacerts`).
    None,
    /// The device's current certificate chain and key (renewal).
    Device {
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    },
}

impl EstClient {
    /// A client trusting only `roots` for the hub's certificate.
    pub(crate) fn new(
        url: HubUrl,
        roots: &[CertificateDer<'static>],
        auth: ClientAuth,
    ) -> Result<Self, AgentError> {
        let config = client_config(roots, auth, &[b"http/1.1"])?;
        Ok(EstClient {
            url,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// `GET /.well-known/est/cacerts` (RFC 7030 4.1): the hub's CA certificates.
    pub(crate) async fn cacerts(&self) -> Result<Vec<CertificateDer<'static>>, AgentError> {
        self.exchange("cacerts", Method::GET, None, None).await
    }

    /// `POST /.well-known/est/simpleenroll` (RFC 7030 4.2.1) with the token as the HTTP Basic
    /// password; returns the certificates of the response (the issued leaf first).
    pub(crate) async fn simpleenroll(
        &self,
        csr_der: &[u8],
        id: &DeviceId,
        token: &EnrollmentToken,
    ) -> Result<Vec<CertificateDer<'static>>, AgentError> {
        let credentials = crate::base64::encode(format!("{id}:{}", token.0).as_bytes());
        let mut auth = HeaderValue::from_str(&format!("Basic {credentials}"))
            .map_err(|_| AgentError::Misconfigured("the token is not a valid header".into()))?;
        // Keeps the value out of hyper's debug output and HPACK tables.
        auth.set_sensitive(true);
        self.exchange("simpleenroll", Method::POST, Some(csr_der), Some(auth))
            .await
    }

    /// `POST /.well-known/est/simplereenroll` (RFC 7030 4.2.2), authenticated by the client
    /// certificate this client was built with.
    pub(crate) async fn simplereenroll(
        &self,
        csr_der: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, AgentError> {
        self.exchange("simplereenroll", Method::POST, Some(csr_der), None)
            .await
    }

    async fn exchange(
        &self,
        operation: &'static str,
        method: Method,
        csr_der: Option<&[u8]>,
        authorization: Option<HeaderValue>,
    ) -> Result<Vec<CertificateDer<'static>>, AgentError> {
        let body = tokio::time::timeout(
            EST_TIMEOUT,
            self.request(operation, method, csr_der, authorization),
        )
        .await
        .map_err(|_| AgentError::Timeout {
            operation,
            after: EST_TIMEOUT,
        })??;
        let malformed = |reason: String| AgentError::Malformed { operation, reason };
        let der = crate::base64::decode(&body).map_err(|e| malformed(format!("base64: {e}")))?;
        crate::pkcs7::parse_certs_only(&der).map_err(|e| malformed(e.to_string()))
    }

    /// One HTTP/1.1 request on a fresh TLS connection; returns the body of a 200 response.
    async fn request(
        &self,
        operation: &'static str,
        method: Method,
        csr_der: Option<&[u8]>,
        authorization: Option<HeaderValue>,
    ) -> Result<Bytes, AgentError> {
        let unreachable = |reason: String| AgentError::Unreachable {
            url: self.url.to_string(),
            reason,
        };
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.url.host.as_str(), self.url.port)),
        )
        .await
        .map_err(|_| AgentError::Timeout {
            operation: "connecting to the hub",
            after: CONNECT_TIMEOUT,
        })?
        .map_err(|e| unreachable(e.to_string()))?;
        let tls = self
            .tls
            .connect(self.url.server_name.clone(), tcp)
            .await
            .map_err(|e| tls_error(&self.url, e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(format!("HTTP: {e}")))?;
        let driver = tokio::spawn(connection);
        let result = async {
            let mut request = Request::builder()
                .method(method)
                .uri(format!("/.well-known/est/{operation}"))
                .header(header::HOST, self.url.authority())
                .header(header::USER_AGENT, "moat-agent");
            if let Some(auth) = authorization {
                request = request.header(header::AUTHORIZATION, auth);
            }
            let body = match csr_der {
                Some(der) => {
                    request = request
                        .header(header::CONTENT_TYPE, "application/pkcs10")
                        .header("content-transfer-encoding", "base64");
                    Full::new(Bytes::from(crate::base64::encode(der)))
                }
                None => Full::new(Bytes::new()),
            };
            let request = request
                .body(body)
                .map_err(|e| AgentError::Misconfigured(format!("building the request: {e}")))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unreachable(format!("HTTP: {e}")))?;
            let status = response.status();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_ascii_lowercase);
            let body = Limited::new(response.into_body(), MAX_EST_RESPONSE_SIZE)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        AgentError::LimitExceeded {
                            what: format!("the response to {operation}"),
                            limit: MAX_EST_RESPONSE_SIZE as u64,
                        }
                    } else {
                        unreachable(format!("reading the response: {e}"))
                    }
                })?
                .to_bytes();
            if status != StatusCode::OK {
                return Err(AgentError::Refused {
                    operation,
                    status: status.as_u16(),
                    message: one_line(&body, status),
                });
            }
            match content_type {
                Some(ct) if ct.starts_with("application/pkcs7-mime") => Ok(body),
                other => Err(AgentError::Malformed {
                    operation,
                    reason: format!(
                        "content type {:?}, expected application/pkcs7-mime",
                        other.unwrap_or_default()
                    ),
                }),
            }
        }
        .await;
        driver.abort();
        result
    }
}

/// The hub's error body as one printable line of at most [`MAX_ERROR_MESSAGE_LEN`]
/// characters (it comes from the network: no control characters reach a terminal or log).
fn one_line(body: &[u8], status: StatusCode) -> String {
    let text: String = String::from_utf8_lossy(body)
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_ERROR_MESSAGE_LEN)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_owned()
    } else {
        text.to_owned()
    }
}

/// A failed TLS connection: an untrusted hub certificate is [`AgentError::HubNotTrusted`];
/// anything else (an alert from the hub, a reset) is [`AgentError::Unreachable`].
pub(crate) fn tls_error(url: &HubUrl, e: std::io::Error) -> AgentError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(reason)) => {
            AgentError::HubNotTrusted(format!("{reason:?}"))
        }
        Some(rustls::Error::AlertReceived(alert)) => AgentError::Unreachable {
            url: url.to_string(),
            reason: format!(
                "the hub ended the TLS handshake ({alert:?}); for a renewal, the device \
                 certificate may be expired or revoked"
            ),
        },
        _ => AgentError::Unreachable {
            url: url.to_string(),
            reason: format!("TLS: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_parse_strictly() -> Result<(), UrlError> {
        let u = HubUrl::parse("https://localhost:8443")?;
        assert_eq!(u.to_string(), "https://localhost:8443");
        assert_eq!(
            HubUrl::parse("HTTPS://Hub.Example/")?.to_string(),
            "https://hub.example:443"
        );
        assert_eq!(
            HubUrl::parse("https://[::1]:9000")?.to_string(),
            "https://[::1]:9000"
        );
        assert_eq!(
            HubUrl::parse("https://10.0.0.1:1")?.authority(),
            "10.0.0.1:1"
        );
        for bad in [
            "http://localhost:8443",
            "localhost:8443",
            "https://",
            "https://localhost:0",
            "https://localhost:65536",
            "https://localhost:+1",
            "https://localhost:8443/est",
            "https://user@localhost",
            "https://localhost?x",
            "https://[::1",
            "https://bad_host!:1",
        ] {
            assert!(HubUrl::parse(bad).is_err(), "{bad} parsed");
        }
        assert!(HubUrl::parse(&format!("https://{}", "a".repeat(600))).is_err());
        Ok(())
    }

    #[test]
    fn tokens_are_checked_and_never_shown() -> Result<(), AgentError> {
        let t = EnrollmentToken::new("moat_et_abc.hunter2")?;
        assert!(!format!("{t:?}").contains("hunter2"));
        for bad in ["", "   ", "a b", "tab\there", "é"] {
            assert!(EnrollmentToken::new(bad).is_err(), "{bad:?}");
        }
        assert!(EnrollmentToken::new("a".repeat(MAX_TOKEN_LEN + 1)).is_err());
        Ok(())
    }

    #[test]
    fn error_bodies_become_one_printable_bounded_line() {
        assert_eq!(
            one_line(
                b"invalid or expired enrollment token\n",
                StatusCode::UNAUTHORIZED
            ),
            "invalid or expired enrollment token"
        );
        assert_eq!(one_line(b"", StatusCode::CONFLICT), "Conflict");
        assert_eq!(
            one_line(b"a\x1b[31mb\nsecond", StatusCode::BAD_REQUEST),
            "a?[31mb"
        );
        let long = vec![b'x'; 10_000];
        assert_eq!(
            one_line(&long, StatusCode::BAD_REQUEST).len(),
            MAX_ERROR_MESSAGE_LEN
        );
    }
}

//! The operator CLI's connection to a hub's API: found from the data directory on the hub's
//! own machine (`hub.json`, the root CA, `secrets/cli.token`), or given as `--hub URL` with a
//! token and the CA to trust.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};

/// Longest the CLI waits for one API call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response the CLI reads (an audit export of a big trail can be large).
pub const MAX_RESPONSE: usize = 256 * 1024 * 1024;

/// Why a call could not be made (not an API error response: those come back as a status).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub could not be found or reached; the message says what to do.
    #[error("{0}")]
    Unreachable(String),
    /// Local files (token, CA) are missing or unreadable.
    #[error("{0}")]
    Setup(String),
}

/// How to reach a hub.
#[derive(Debug, Clone)]
pub struct HubClient {
    addr: SocketAddr,
    host: String,
    roots: Arc<RootCertStore>,
    token: String,
}

pub(crate) fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Setup(format!("cannot read {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for block in text.split("-----BEGIN CERTIFICATE-----").skip(1) {
        let body: String = block
            .split("-----END CERTIFICATE-----")
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = moat_pki::decode_est_base64(body.as_bytes())
            .map_err(|e| ClientError::Setup(format!("{}: bad certificate: {e}", path.display())))?;
        out.push(CertificateDer::from(der));
    }
    if out.is_empty() {
        return Err(ClientError::Setup(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(out)
}

impl HubClient {
    /// The hub running from `data_dir` on this machine, with the local CLI's admin token.
    pub fn local(data_dir: &Path) -> Result<Self, ClientError> {
        let hub_file = data_dir.join(crate::run::HUB_FILE);
        let text = std::fs::read_to_string(&hub_file).map_err(|_| {
            ClientError::Unreachable(format!(
                "no hub is running from {} (no {}); start it with `moat serve --data-dir {}`, or pass --hub URL --token TOKEN",
                data_dir.display(),
                hub_file.display(),
                data_dir.display()
            ))
        })?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ClientError::Setup(format!("{}: {e}", hub_file.display())))?;
        let addr: SocketAddr = v["api"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                ClientError::Setup(format!("{} names no API address", hub_file.display()))
            })?;
        // A hub bound to 0.0.0.0 is reached on loopback.
        let addr = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        let token_path = crate::access::cli_token_path(data_dir);
        let token = std::fs::read_to_string(&token_path)
            .map_err(|e| {
                ClientError::Setup(format!(
                    "cannot read {}: {e} (run the CLI as the hub's user)",
                    token_path.display()
                ))
            })?
            .trim()
            .to_owned();
        let ca = data_dir.join("pki").join(moat_pki::ROOT_CA_CERT_FILE);
        Self::new(addr, "localhost".into(), &ca, token)
    }

    /// A hub at `url` (`https://HOST:PORT`), trusting the CA certificate(s) in `ca_file`.
    pub fn remote(url: &str, ca_file: &Path, token: String) -> Result<Self, ClientError> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| ClientError::Setup(format!("--hub {url:?} must start with https://")))?
            .trim_end_matches('/');
        let addr = std::net::ToSocketAddrs::to_socket_addrs(rest)
            .map_err(|e| ClientError::Unreachable(format!("cannot resolve {rest}: {e}")))?
            .next()
            .ok_or_else(|| ClientError::Unreachable(format!("{rest} resolves to nothing")))?;
        let host = rest
            .rsplit_once(':')
            .map_or(rest, |(h, _)| h)
            .trim_matches(['[', ']']);
        Self::new(addr, host.to_owned(), ca_file, token)
    }

    fn new(addr: SocketAddr, host: String, ca: &Path, token: String) -> Result<Self, ClientError> {
        let mut roots = RootCertStore::empty();
        for c in read_pem_certs(ca)? {
            roots
                .add(c)
                .map_err(|e| ClientError::Setup(format!("{}: {e}", ca.display())))?;
        }
        Ok(Self {
            addr,
            host,
            roots: Arc::new(roots),
            token,
        })
    }

    /// Where the CA file of a data directory is.
    pub fn ca_file(data_dir: &Path) -> PathBuf {
        data_dir.join("pki").join(moat_pki::ROOT_CA_CERT_FILE)
    }

    /// Calls the API; returns the status and the body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_inner(method, path, body))
            .await
            .map_err(|_| {
                ClientError::Unreachable(format!(
                    "the hub at {} did not answer within {CALL_TIMEOUT:?}",
                    self.addr
                ))
            })?
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ClientError::Unreachable(format!("cannot reach the hub at {}: {e}", self.addr))
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| unreachable(&e))?
        .with_root_certificates(self.roots.clone())
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| unreachable(&e))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| unreachable(&e))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(conn);
        let has_body = body.is_some();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("authorization", format!("Bearer {}", self.token));
        if has_body {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unreachable(&e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Ok((status, bytes.to_vec()))
    }

    /// Streams `length` bytes of `file` as the body of `POST path` (raw bytes, for image
    /// uploads), adding each chunk sent to `sent`. No overall timeout (a large image over a
    /// slow link takes as long as it takes); [`CALL_TIMEOUT`] applies to connecting and to
    /// each chunk.
    pub async fn upload(
        &self,
        path: &str,
        file: tokio::fs::File,
        length: u64,
        sent: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        use tokio::io::AsyncReadExt;
        let unreachable = |e: &dyn std::fmt::Display| {
            ClientError::Unreachable(format!("cannot reach the hub at {}: {e}", self.addr))
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| unreachable(&e))?
        .with_root_certificates(self.roots.clone())
        .with_no_client_auth();
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| unreachable(&e))?;
            let name = ServerName::try_from(self.host.clone()).map_err(|e| unreachable(&e))?;
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(&e))
        };
        let tls = tokio::time::timeout(CALL_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable(&"connection timed out"))??;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(conn);
        const CHUNK: usize = 256 * 1024;
        let stream = futures_util::stream::unfold((file, length), move |(mut f, left)| {
            let sent = sent.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                let mut buf = vec![0u8; want];
                let read = tokio::time::timeout(CALL_TIMEOUT, f.read(&mut buf)).await;
                match read {
                    Ok(Ok(n)) if n > 0 => {
                        buf.truncate(n);
                        sent.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        Some((
                            Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(buf))),
                            (f, left - n as u64),
                        ))
                    }
                    Ok(Ok(_)) => Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the file got shorter while it was uploaded",
                        )),
                        (f, 0),
                    )),
                    Ok(Err(e)) => Some((Err(e), (f, 0))),
                    Err(_) => Some((
                        Err(std::io::Error::other("reading the file timed out")),
                        (f, 0),
                    )),
                }
            }
        });
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("host", &self.host)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/octet-stream")
            .header("content-length", length.to_string())
            .body(http_body_util::StreamBody::new(stream))
            .map_err(|e| unreachable(&e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE);
        let bytes = tokio::time::timeout(CALL_TIMEOUT, limited.collect())
            .await
            .map_err(|_| unreachable(&"no response in time"))?
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Ok((status, bytes.to_vec()))
    }
}

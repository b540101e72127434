//! The webhook alert sink: every alert POSTed as JSON to one URL, signed with HMAC-SHA256 so
//! that the receiver can tell it came from this hub and was not replayed.
//!
//! The request carries `X-Moat-Signature: t=<ms since the epoch>,v1=<hex>`, where `<hex>`
//! is HMAC-SHA256 with the shared secret over `<t>.<body>` (the decimal timestamp, a dot,
//! and the exact body bytes). A receiver recomputes it, compares in constant time and
//! rejects timestamps older than it tolerates.
//!
//! Delivery runs in its own task off a bounded queue ([`WEBHOOK_QUEUE`]); each alert gets
//! [`ATTEMPTS`] tries, each bounded by [`ATTEMPT_TIMEOUT`]. Alerts that do not fit in the
//! queue or exhaust their tries are counted, never waited for: a slow or dead receiver
//! cannot slow detection.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_lc_rs::hmac;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::sync::{mpsc, watch};

/// Alerts waiting for delivery. 1,024; when full, new ones are dropped and counted.
pub const WEBHOOK_QUEUE: usize = 1_024;
/// Tries per alert (the first and two retries, 1 s and 4 s later).
pub const ATTEMPTS: u32 = 3;
/// Longest one delivery attempt may take, connection included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body read from the receiver (it is discarded).
const MAX_RESPONSE: usize = 64 * 1024;
/// Shortest accepted shared secret, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Where and how to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// `https://host:port/path` (or `http://` with `danger_plaintext`).
    pub url: String,
    /// File holding the shared secret (its content, trimmed; at least
    /// [`MIN_SECRET_LEN`] bytes).
    pub secret_file: PathBuf,
    /// PEM file of the CAs that may sign the receiver's certificate (required for https).
    pub ca_file: Option<PathBuf>,
    /// Allow `http://`: alerts then travel unencrypted (the signature still authenticates
    /// them).
    pub danger_plaintext: bool,
}

/// A parsed target.
#[derive(Debug, Clone)]
struct Target {
    tls: Option<Arc<rustls::ClientConfig>>,
    host: String,
    port: u16,
    path: String,
}

impl WebhookSettings {
    fn target(&self) -> Result<Target, String> {
        let (tls, rest) = if let Some(rest) = self.url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = self.url.strip_prefix("http://") {
            if !self.danger_plaintext {
                return Err(format!(
                    "alert-webhook url {:?} is plaintext: use https://, or set danger-plaintext = true",
                    self.url
                ));
            }
            (false, rest)
        } else {
            return Err(format!(
                "alert-webhook url {:?} must start with https://",
                self.url
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_matches(['[', ']']),
                p.parse::<u16>()
                    .map_err(|_| format!("alert-webhook url {:?}: bad port", self.url))?,
            ),
            _ => (
                authority.trim_matches(['[', ']']),
                if tls { 443 } else { 80 },
            ),
        };
        if host.is_empty() {
            return Err(format!("alert-webhook url {:?} names no host", self.url));
        }
        let tls = if tls {
            let ca = self.ca_file.as_ref().ok_or_else(|| {
                "alert-webhook: an https url needs ca-file (the CAs that sign the receiver's certificate; the system bundle works, e.g. /etc/ssl/certs/ca-certificates.crt)".to_owned()
            })?;
            let mut roots = RootCertStore::empty();
            for c in crate::client::read_pem_certs(ca).map_err(|e| e.to_string())? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Target {
            tls,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    fn key(&self) -> Result<hmac::Key, String> {
        let secret = std::fs::read_to_string(&self.secret_file).map_err(|e| {
            format!(
                "alert-webhook secret-file {}: {e}",
                self.secret_file.display()
            )
        })?;
        let secret = secret.trim();
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "alert-webhook secret-file {} holds {} bytes; at least {MIN_SECRET_LEN} are needed",
                self.secret_file.display(),
                secret.len()
            ));
        }
        Ok(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()))
    }

    /// Checks the settings (url, secret, CA file) as the hub starts.
    pub fn check(&self) -> Result<(), String> {
        self.target()?;
        self.key()?;
        Ok(())
    }
}

/// `t=<ms>,v1=<hex>` for `body` sent at `t_ms`.
pub(crate) fn signature(key: &hmac::Key, t_ms: u64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(t_ms.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t_ms},v1={hex}")
}

/// The sending end the defence task holds.
#[derive(Debug, Clone)]
pub(crate) struct Webhook {
    tx: mpsc::Sender<Vec<u8>>,
    pub(crate) stats: Arc<WebhookStats>,
}

/// Delivery counters.
#[derive(Debug, Default)]
pub(crate) struct WebhookStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

impl Webhook {
    /// Queues one alert's JSON; never waits.
    pub(crate) fn send(&self, body: Vec<u8>) {
        if self.tx.try_send(body).is_err() {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts the delivery task.
pub(crate) fn start(
    settings: &WebhookSettings,
    stop: watch::Receiver<bool>,
) -> Result<(Webhook, tokio::task::JoinHandle<()>), String> {
    let target = settings.target()?;
    let key = settings.key()?;
    let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
    let stats = Arc::new(WebhookStats::default());
    let task = tokio::spawn(deliver(target, key, rx, stats.clone(), stop));
    Ok((Webhook { tx, stats }, task))
}

async fn deliver(
    target: Target,
    key: hmac::Key,
    mut rx: mpsc::Receiver<Vec<u8>>,
    stats: Arc<WebhookStats>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let body = tokio::select! {
            body = rx.recv() => match body {
                Some(b) => b,
                None => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let mut delivered = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                // 1 s, then 4 s.
                tokio::time::sleep(Duration::from_secs(1 << (2 * (attempt - 1)))).await;
            }
            let signature = signature(&key, crate::identity::now_ms(), &body);
            match tokio::time::timeout(ATTEMPT_TIMEOUT, post(&target, &body, &signature)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    delivered = true;
                    break;
                }
                Ok(Ok(status)) => {
                    tracing::warn!(status, attempt, "alert webhook refused the alert");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, attempt, "alert webhook unreachable"),
                Err(_) => tracing::warn!(attempt, "alert webhook timed out"),
            }
        }
        let counter = if delivered {
            &stats.delivered
        } else {
            &stats.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

async fn post(target: &Target, body: &[u8], signature: &str) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let request = Request::builder()
        .method(Method::POST)
        .uri(&target.path)
        .header("host", &target.host)
        .header("content-type", "application/json")
        .header("user-agent", "moat-alert-webhook")
        .header("x-moat-signature", signature)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    match &target.tls {
        Some(config) => {
            let name = ServerName::try_from(target.host.clone()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            send(TokioIo::new(tls), request).await
        }
        None => send(TokioIo::new(tcp), request).await,
    }
}

async fn send<I>(io: I, request: Request<Full<Bytes>>) -> Result<u16, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    // Read (and discard) a bounded body so the connection ends cleanly.
    let _ = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
        .collect()
        .await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_covers_timestamp_and_body() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef");
        let a = signature(&key, 1_000, b"{}");
        assert!(a.starts_with("t=1000,v1="));
        assert_eq!(a.len(), "t=1000,v1=".len() + 64);
        assert_ne!(a, signature(&key, 1_001, b"{}"));
        assert_ne!(a, signature(&key, 1_000, b"{ }"));
        // Known answer: HMAC-SHA256("0123456789abcdef", "1000.{}") computed independently
        // (python3 -c 'import hmac,hashlib;print(hmac.new(b"0123456789abcdef",b"1000.{}",hashlib.sha256).hexdigest())').
        assert_eq!(
            a,
            "t=1000,v1=bd3e8b6d13803a2406a848a68bc7a2e80b251fb9d894858564c77ce80a4aa634"
        );
    }

    #[test]
    fn urls_are_checked() {
        let s = |url: &str, plain: bool| WebhookSettings {
            url: url.to_owned(),
            secret_file: PathBuf::from("/nonexistent"),
            ca_file: None,
            danger_plaintext: plain,
        };
        assert!(s("http://127.0.0.1:9/x", false).target().is_err());
        let t = s("http://127.0.0.1:9/hook", true)
            .target()
            .expect("plaintext allowed");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 9, "/hook")
        );
        let t = s("http://[::1]:8080", true).target().expect("v6");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 8080, "/")
        );
        assert!(
            s("https://example.com/x", false).target().is_err(),
            "https needs ca-file"
        );
        assert!(s("ftp://example.com/x", true).target().is_err());
        assert!(s("http://:80/", true).target().is_err());
    }
}

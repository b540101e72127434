//! GET requests to the hub over mutual TLS (the device certificate, the hub checked against
//! `ca.crt`), for the update metadata and images under `/tuf/...`, and [`HubTransport`]: the
//! tough `Transport` the update verifier fetches metadata through.
//!
//! Every response is bounded: the head must arrive within [`RESPONSE_TIMEOUT`], each body
//! chunk within [`READ_IDLE_TIMEOUT`], and no body may exceed the limit its caller names
//! ([`MAX_METADATA_RESPONSE_SIZE`] for metadata; the signed length for an image). Only URLs
//! on the configured hub are fetched: a redirect or an absolute URL elsewhere is refused.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use moat_ota::tough::{Transport, TransportError, TransportErrorKind, TransportStream};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use crate::est::{CONNECT_TIMEOUT, ClientAuth};
use crate::{AgentError, HubUrl};

/// Largest metadata file fetched through [`HubTransport`], in bytes: 16 MiB. The verifier's
/// own per-role limits (tough `Limits`) are smaller; this bounds what the transport buffers
/// before tough sees it.
pub const MAX_METADATA_RESPONSE_SIZE: u64 = 16 * 1024 * 1024;
/// How long the hub may take to send a response's head (TCP and TLS included): 30 s.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause between two chunks of a response body: 30 s. A hub that stalls longer is
/// treated as gone (a freeze or slow-retrieval attack ends here, the download resumes later).
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunks buffered between the connection task and the reader.
const CHUNK_QUEUE: usize = 4;

/// A mutual-TLS HTTPS client for one hub.
#[derive(Clone)]
pub(crate) struct HubClient {
    url: HubUrl,
    tls: TlsConnector,
}

impl fmt::Debug for HubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A response whose body is read chunk by chunk, bounded.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    body: mpsc::Receiver<Result<Bytes, AgentError>>,
    limit: u64,
    read: u64,
    what: String,
}

impl Response {
    /// The next chunk, `None` at the end. Fails when the body exceeds its limit (nothing
    /// beyond the limit is returned), the connection breaks or a chunk is late.
    pub(crate) async fn chunk(&mut self) -> Option<Result<Bytes, AgentError>> {
        let next = self.body.recv().await?;
        Some(next.and_then(|bytes| {
            self.read = self.read.saturating_add(bytes.len() as u64);
            if self.read > self.limit {
                Err(AgentError::LimitExceeded {
                    what: self.what.clone(),
                    limit: self.limit,
                })
            } else {
                Ok(bytes)
            }
        }))
    }
}

impl HubClient {
    pub(crate) fn new(
        url: HubUrl,
        roots: &[rustls_pki_types::CertificateDer<'static>],
        auth: ClientAuth,
    ) -> Result<Self, AgentError> {
        let config = crate::est::client_config(roots, auth, &[b"http/1.1"])?;
        Ok(HubClient {
            url,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    pub(crate) fn url(&self) -> &HubUrl {
        &self.url
    }

    /// `GET path` (absolute path on the hub, e.g. `/tuf/metadata/1.root.json`), with
    /// `Range: bytes=FROM-` when `range_from` is given. Returns once the head arrived; the
    /// body (at most `limit` bytes) is read through [`Response::chunk`].
    pub(crate) async fn get(
        &self,
        path: &str,
        range_from: Option<u64>,
        limit: u64,
    ) -> Result<Response, AgentError> {
        if !path.starts_with('/') || path.starts_with("//") || path.contains(['#', ' ']) {
            return Err(AgentError::Misconfigured(format!(
                "not a path on the hub: {path:?}"
            )));
        }
        tokio::time::timeout(RESPONSE_TIMEOUT, self.get_head(path, range_from, limit))
            .await
            .map_err(|_| AgentError::Timeout {
                operation: "waiting for the hub's response",
                after: RESPONSE_TIMEOUT,
            })?
    }

    async fn get_head(
        &self,
        path: &str,
        range_from: Option<u64>,
        limit: u64,
    ) -> Result<Response, AgentError> {
        let unreachable = |reason: String| AgentError::Unreachable {
            url: self.url.to_string(),
            reason,
        };
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.url.host(), self.url.port())),
        )
        .await
        .map_err(|_| AgentError::Timeout {
            operation: "connecting to the hub",
            after: CONNECT_TIMEOUT,
        })?
        .map_err(|e| unreachable(e.to_string()))?;
        let tls = self
            .tls
            .connect(self.url.server_name().clone(), tcp)
            .await
            .map_err(|e| crate::est::tls_error(&self.url, e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(format!("HTTP: {e}")))?;
        let driver = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, self.url.authority())
            .header(header::USER_AGENT, "moat-agent");
        if let Some(from) = range_from {
            request = request.header(header::RANGE, format!("bytes={from}-"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| AgentError::Misconfigured(format!("building the request: {e}")))?;
        let response = match sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => {
                driver.abort();
                return Err(unreachable(format!("HTTP: {e}")));
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let (tx, rx) = mpsc::channel(CHUNK_QUEUE);
        let url = self.url.to_string();
        // Reads the body into the queue; ends when the body ends, the reader goes away (the
        // send fails) or the connection breaks. The connection task goes with it.
        tokio::spawn(async move {
            let mut body = response.into_body();
            loop {
                let item = match tokio::time::timeout(READ_IDLE_TIMEOUT, body.frame()).await {
                    Err(_) => Err(AgentError::Timeout {
                        operation: "reading from the hub",
                        after: READ_IDLE_TIMEOUT,
                    }),
                    Ok(None) => break,
                    Ok(Some(Err(e))) => Err(AgentError::Unreachable {
                        url: url.clone(),
                        reason: format!("reading the response: {e}"),
                    }),
                    Ok(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) if data.is_empty() => continue,
                        Ok(data) => Ok(data),
                        Err(_) => continue,
                    },
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
            driver.abort();
        });
        Ok(Response {
            status,
            headers,
            body: rx,
            limit,
            read: 0,
            what: format!("the response to GET {path}"),
        })
    }
}

/// The tough `Transport` over the agent's mutual-TLS HTTPS client: fetches `https://` URLs on
/// the configured hub only, maps 404 to `FileNotFound` (TUF 5.3.2: the next root does not
/// exist) and bounds every body by [`MAX_METADATA_RESPONSE_SIZE`].
#[derive(Clone, Debug)]
pub struct HubTransport {
    client: HubClient,
}

impl HubTransport {
    pub(crate) fn new(client: HubClient) -> Self {
        HubTransport { client }
    }

    /// The path of `url` on the hub, if `url` points at the hub.
    fn path_on_hub(&self, url: &url::Url) -> Result<String, TransportError> {
        let hub = self.client.url();
        if url.scheme() != "https" {
            return Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url,
            ));
        }
        let same_host = match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case(hub.host()),
            Some(url::Host::Ipv4(a)) => a.to_string() == hub.host(),
            Some(url::Host::Ipv6(a)) => a.to_string() == hub.host(),
            None => false,
        };
        if !same_host
            || url.port_or_known_default() != Some(hub.port())
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(TransportError::new_with_cause(
                TransportErrorKind::Other,
                url,
                format!("not on the configured hub {hub}"),
            ));
        }
        let mut path = url.path().to_owned();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        Ok(path)
    }
}

/// A body as a `Stream` for tough.
struct BodyStream(Response);

impl futures_util::Stream for BodyStream {
    type Item = Result<Bytes, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut self.0;
        match this.body.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(item)) => {
                let item = item.and_then(|bytes| {
                    this.read = this.read.saturating_add(bytes.len() as u64);
                    if this.read > this.limit {
                        Err(AgentError::LimitExceeded {
                            what: this.what.clone(),
                            limit: this.limit,
                        })
                    } else {
                        Ok(bytes)
                    }
                });
                Poll::Ready(Some(item.map_err(|e| {
                    TransportError::new_with_cause(TransportErrorKind::Other, &this.what, e)
                })))
            }
        }
    }
}

impl Transport for HubTransport {
    // Written out instead of `#[async_trait]` (what the trait is declared with) to avoid a
    // macro dependency; the signature is exactly the one the macro generates.
    fn fetch<'life0, 'async_trait>(
        &'life0 self,
        url: url::Url,
    ) -> Pin<
        Box<
            dyn std::future::Future<Output = Result<TransportStream, TransportError>>
                + Send
                + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let path = self.path_on_hub(&url)?;
            let response = self
                .client
                .get(&path, None, MAX_METADATA_RESPONSE_SIZE)
                .await
                .map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, &url, e))?;
            match response.status {
                StatusCode::OK => Ok(Box::pin(BodyStream(response)) as TransportStream),
                StatusCode::NOT_FOUND => {
                    Err(TransportError::new(TransportErrorKind::FileNotFound, &url))
                }
                other => Err(TransportError::new_with_cause(
                    TransportErrorKind::Other,
                    &url,
                    format!("HTTP {other}"),
                )),
            }
        })
    }
}

//! A small MQTT client for load generation, on the workspace codec (`moat-mqtt`).
//!
//! One [`Connection`] owns a byte stream (TCP or TLS) and two buffers. Writes are queued into
//! a `BytesMut` and sent with one `write_all`; reads pull up to [`READ_CHUNK`] bytes at a
//! time and decode every whole packet in them, so that on a 2-core machine the client spends
//! as little CPU as it can next to the broker it measures.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use moat_mqtt::{
    Connect, ConnectProperties, Disconnect, Limits, Packet, PacketId, ProtocolVersion, Publish,
    PublishProperties, ReasonCode, Subscribe, SubscriptionOptions,
};
use moat_types::{QoS, TopicName};
use rustls::client::Resumption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Bytes asked of the socket per read on a busy connection.
pub const READ_CHUNK: usize = 256 * 1024;

/// The protocol every side-by-side run speaks (both brokers get the same).
pub const VERSION: ProtocolVersion = ProtocolVersion::V311;

/// Bytes read but not yet decoded, and the decoder's limits.
#[derive(Debug)]
pub(crate) struct Inbound {
    buf: BytesMut,
    limits: Limits,
}

impl Inbound {
    pub(crate) fn new(buf: BytesMut) -> Self {
        Self {
            buf,
            // The broker is trusted here; accept any size the protocol allows.
            limits: Limits {
                max_packet_size: Limits::PROTOCOL_MAX_PACKET_SIZE,
                ..Limits::default()
            },
        }
    }

    /// Reads once, keeping at least `want / 4` bytes of room (growing by `want`).
    async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R, want: usize) -> Result<(), String> {
        if self.buf.capacity() - self.buf.len() < want / 4 {
            self.buf.reserve(want);
        }
        let n = io
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by the broker".to_owned());
        }
        Ok(())
    }

    /// Appends bytes read elsewhere (the latency subscriber reads with `recvmsg`).
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub(crate) fn decode(&mut self) -> Result<Option<Packet>, String> {
        moat_mqtt::decode(&mut self.buf, VERSION, &self.limits)
            .map_err(|e| format!("decoding from the broker: {e}"))
    }

    /// Reads once with a large buffer and hands every whole packet to `on_packet`.
    async fn read_batch<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        mut on_packet: impl FnMut(Packet),
    ) -> Result<usize, String> {
        self.fill(io, READ_CHUNK).await?;
        let mut handled = 0;
        while let Some(packet) = self.decode()? {
            on_packet(packet);
            handled += 1;
        }
        Ok(handled)
    }
}

/// An MQTT connection over any byte stream.
#[derive(Debug)]
pub struct Connection<S> {
    io: S,
    inbound: Inbound,
    write_buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Sends CONNECT (clean session) and waits for a successful CONNACK.
    pub async fn open(io: S, client_id: &str, keep_alive_secs: u16) -> Result<Self, String> {
        let mut conn = Self {
            io,
            inbound: Inbound::new(BytesMut::new()),
            write_buf: BytesMut::new(),
        };
        conn.queue(&Packet::Connect(Box::new(Connect {
            protocol: VERSION,
            clean_start: true,
            keep_alive: keep_alive_secs,
            properties: ConnectProperties::default(),
            client_id: client_id.to_owned(),
            will: None,
            username: None,
            password: None,
        })));
        conn.flush().await?;
        match conn.next_packet().await? {
            Packet::ConnAck(ack) if ack.reason_code == ReasonCode::Success => Ok(conn),
            Packet::ConnAck(ack) => Err(format!(
                "{client_id}: CONNACK refused with {:?}",
                ack.reason_code
            )),
            other => Err(format!("{client_id}: expected CONNACK, got {other:?}")),
        }
    }

    /// Subscribes to one filter and waits for its SUBACK; a refused filter is an error.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), String> {
        let packet_id = NonZeroU16::MIN;
        self.queue(&Packet::Subscribe(Subscribe {
            packet_id,
            subscription_identifier: None,
            user_properties: Vec::new(),
            filters: vec![(
                filter.to_owned(),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            )],
        }));
        self.flush().await?;
        loop {
            match self.next_packet().await? {
                Packet::SubAck(ack) if ack.packet_id == packet_id => {
                    return match ack.reason_codes.first() {
                        Some(
                            ReasonCode::Success | ReasonCode::GrantedQoS1 | ReasonCode::GrantedQoS2,
                        ) => Ok(()),
                        other => Err(format!("subscription to {filter} refused: {other:?}")),
                    };
                }
                // Anything else (a retained message, say) is not what we wait for.
                _ => continue,
            }
        }
    }

    /// Encodes `packet` at the end of the write buffer.
    pub fn queue(&mut self, packet: &Packet) {
        moat_mqtt::encode(packet, VERSION, &mut self.write_buf);
    }

    /// Sends everything queued in one `write_all`.
    pub async fn flush(&mut self) -> Result<(), String> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        self.io
            .write_all(&self.write_buf)
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.write_buf.clear();
        Ok(())
    }

    /// Waits until the socket yields bytes, then hands every whole packet buffered to
    /// `on_packet`. Returns how many packets were handled (possibly 0 when only part of a
    /// packet arrived).
    pub async fn read_batch(&mut self, on_packet: impl FnMut(Packet)) -> Result<usize, String> {
        self.inbound.read_batch(&mut self.io, on_packet).await
    }

    /// The next packet, reading as needed (with a small buffer: for handshakes, not floods).
    pub async fn next_packet(&mut self) -> Result<Packet, String> {
        loop {
            if let Some(packet) = self.inbound.decode()? {
                return Ok(packet);
            }
            self.inbound.fill(&mut self.io, 1024).await?;
        }
    }

    /// Sends DISCONNECT and shuts the write side down.
    pub async fn close(mut self) -> Result<(), String> {
        self.queue(&Packet::Disconnect(Disconnect::with_reason(
            ReasonCode::Success,
        )));
        self.flush().await?;
        self.io
            .shutdown()
            .await
            .map_err(|e| format!("shutdown: {e}"))
    }

    /// The stream and whatever was read but not yet decoded.
    pub fn into_parts(self) -> (S, BytesMut) {
        (self.io, self.inbound.buf)
    }
}

/// The read half of a connection split for concurrent reading and writing.
#[derive(Debug)]
pub struct Reader<R> {
    io: R,
    inbound: Inbound,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Wraps the read half and the bytes already buffered.
    pub fn new(io: R, buffered: BytesMut) -> Self {
        Self {
            io,
            inbound: Inbound::new(buffered),
        }
    }

    /// As [`Connection::read_batch`].
    pub async fn read_batch(&mut self, on_packet: impl FnMut(Packet)) -> Result<usize, String> {
        self.inbound.read_batch(&mut self.io, on_packet).await
    }
}

/// A PUBLISH without properties.
pub fn publish(topic: &TopicName, qos: QoS, packet_id: Option<PacketId>, payload: Bytes) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: Some(topic.clone()),
        packet_id,
        properties: PublishProperties::default(),
        payload,
    })
}

/// A TCP connection to `addr` with Nagle off: the client batches its own writes.
pub async fn tcp(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    Ok(stream)
}

/// A full TLS handshake to `addr`, presenting the client certificate in `config`.
pub async fn tls(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, String> {
    let stream = tcp(addr).await?;
    TlsConnector::from(Arc::clone(config))
        .connect(
            ServerName::try_from("localhost").map_err(|e| e.to_string())?,
            stream,
        )
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))
}

/// A client TLS configuration that trusts `ca` and authenticates with `chain` and `key`.
///
/// Both brokers see the same offer: TLS 1.3 or 1.2, key exchange X25519 only (so a
/// post-quantum hybrid group that only one side supports does not skew handshake cost), and
/// no session resumption, so every connection is a full handshake.
pub fn tls_config(
    ca: &Path,
    chain: &Path,
    key: &Path,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let chain = CertificateDer::pem_file_iter(chain)
        .map_err(|e| format!("{}: {e}", chain.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", chain.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;

    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("client certificate: {e}"))?;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

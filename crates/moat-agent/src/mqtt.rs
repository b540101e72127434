//! A minimal MQTT 5 publisher over the device's mutual TLS, for update reports: CONNECT with
//! the device id as client id, PUBLISH at QoS 1 and wait for the PUBACK, DISCONNECT. The wire
//! format is `moat-mqtt`'s codec; this module only sequences packets, with a deadline on each
//! exchange ([`MQTT_TIMEOUT`]) and a bound on what the broker can make it buffer
//! ([`MAX_INBOUND_PACKET_SIZE`]).
//!
//! The reporter runs the publisher in a background task fed by a bounded queue, so that a
//! slow or unreachable broker never blocks or fails an update: reports that cannot be
//! delivered are logged and dropped.

use std::fmt;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use moat_mqtt::{
    Connect, ConnectProperties, Disconnect, Limits, Packet, ProtocolVersion, Publish,
    PublishProperties, ReasonCode,
};
use moat_types::{DeviceId, QoS, TopicName};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::AgentError;
use crate::est::{CONNECT_TIMEOUT, ClientAuth};

/// How long one MQTT exchange (connect with TLS and CONNACK, or PUBLISH and PUBACK) may
/// take: 10 s.
pub const MQTT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest packet accepted from the broker, in bytes: 64 KiB (a CONNACK or PUBACK is tiny).
pub const MAX_INBOUND_PACKET_SIZE: u32 = 64 * 1024;
/// Reports queued for the background publisher before new ones are dropped: 64.
pub const MAX_QUEUED_REPORTS: usize = 64;
/// Consecutive failed reports after which the rest of a cycle's reports are dropped without
/// trying (a broker that is down does not cost every report its timeout): 2.
pub const MAX_REPORT_FAILURES: u32 = 2;
/// Keep alive announced in CONNECT: 60 s (a report connection lives for seconds).
const KEEP_ALIVE_SECS: u16 = 60;

/// Where the broker listens: `mqtts://HOST:PORT` (port 8883 if omitted).
#[derive(Clone, PartialEq, Eq)]
pub struct MqttUrl {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

impl MqttUrl {
    /// Parses `mqtts://HOST[:PORT]`.
    pub fn parse(text: &str) -> Result<Self, AgentError> {
        let bad = |why: &str| {
            AgentError::Misconfigured(format!(
                "MQTT URL {:?}: {why} (expected mqtts://HOST:PORT)",
                text.chars().take(64).collect::<String>()
            ))
        };
        let rest = text
            .strip_prefix("mqtts://")
            .ok_or_else(|| bad("the scheme must be mqtts"))?;
        // The same grammar as the hub URL: reuse its parser.
        let https =
            crate::HubUrl::parse(&format!("https://{rest}")).map_err(|e| bad(&e.to_string()))?;
        let port = if rest.trim_end_matches('/').contains("]:")
            || (!rest.starts_with('[') && rest.contains(':'))
        {
            https.port()
        } else {
            8883
        };
        Ok(MqttUrl {
            host: https.host().to_owned(),
            port,
            server_name: https.server_name().clone(),
        })
    }

    /// The broker on the hub's host at the standard MQTT over TLS port, 8883.
    pub fn default_for(hub: &crate::HubUrl) -> Self {
        MqttUrl {
            host: hub.host().to_owned(),
            port: 8883,
            server_name: hub.server_name().clone(),
        }
    }
}

impl fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "mqtts://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "mqtts://{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MqttUrl({self})")
    }
}

impl std::str::FromStr for MqttUrl {
    type Err = AgentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// One MQTT 5 session on a TLS connection.
struct Session {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    next_id: u16,
    url: String,
}

fn mqtt_error(url: &str, reason: impl fmt::Display) -> AgentError {
    AgentError::Unreachable {
        url: url.to_owned(),
        reason: format!("MQTT: {reason}"),
    }
}

impl Session {
    async fn connect(
        url: &MqttUrl,
        tls: &TlsConnector,
        client_id: &DeviceId,
    ) -> Result<Self, AgentError> {
        let name = url.to_string();
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((url.host.as_str(), url.port)),
        )
        .await
        .map_err(|_| AgentError::Timeout {
            operation: "connecting to the broker",
            after: CONNECT_TIMEOUT,
        })?
        .map_err(|e| mqtt_error(&name, e))?;
        let stream = tls
            .connect(url.server_name.clone(), tcp)
            .await
            .map_err(|e| mqtt_error(&name, format!("TLS: {e}")))?;
        let mut session = Session {
            stream,
            buf: BytesMut::new(),
            next_id: 0,
            url: name,
        };
        let connect = Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: KEEP_ALIVE_SECS,
            properties: ConnectProperties {
                maximum_packet_size: Some(MAX_INBOUND_PACKET_SIZE),
                ..ConnectProperties::default()
            },
            // Its own session beside the device application's (`{id}/agent`, which the hub
            // accepts for the same certificate): a report never takes over the application.
            client_id: format!("{client_id}{}", moat_types::AGENT_CLIENT_SUFFIX),
            will: None,
            username: None,
            password: None,
        }));
        session.send(&connect).await?;
        loop {
            match session.receive().await? {
                Packet::ConnAck(ack) if ack.reason_code.is_error() => {
                    return Err(AgentError::Refused {
                        operation: "MQTT CONNECT",
                        status: u16::from(ack.reason_code as u8),
                        message: ack
                            .properties
                            .reason_string
                            .unwrap_or_else(|| format!("{:?}", ack.reason_code)),
                    });
                }
                Packet::ConnAck(_) => return Ok(session),
                Packet::Auth(_) | Packet::Disconnect(_) => {
                    return Err(mqtt_error(&session.url, "the broker ended the session"));
                }
                _ => {}
            }
        }
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), AgentError> {
        let mut out = BytesMut::new();
        moat_mqtt::encode(packet, ProtocolVersion::V5, &mut out);
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| mqtt_error(&self.url, e))?;
        self.stream
            .flush()
            .await
            .map_err(|e| mqtt_error(&self.url, e))
    }

    async fn receive(&mut self) -> Result<Packet, AgentError> {
        let limits = Limits {
            max_packet_size: MAX_INBOUND_PACKET_SIZE,
            ..Limits::default()
        };
        loop {
            if let Some(p) = moat_mqtt::decode(&mut self.buf, ProtocolVersion::V5, &limits)
                .map_err(|e| mqtt_error(&self.url, e))?
            {
                return Ok(p);
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| mqtt_error(&self.url, e))?;
            if n == 0 {
                return Err(mqtt_error(&self.url, "the broker closed the connection"));
            }
        }
    }

    /// PUBLISH at QoS 1 and wait for its PUBACK.
    async fn publish(
        &mut self,
        topic: TopicName,
        payload: Bytes,
        retain: bool,
    ) -> Result<(), AgentError> {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let id = NonZeroU16::new(self.next_id).unwrap_or(NonZeroU16::MIN);
        let publish = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain,
            topic: Some(topic),
            packet_id: Some(id),
            properties: PublishProperties {
                payload_format_indicator: Some(1),
                content_type: Some("application/json".into()),
                ..PublishProperties::default()
            },
            payload,
        });
        self.send(&publish).await?;
        loop {
            match self.receive().await? {
                Packet::PubAck(ack) if ack.packet_id == id => {
                    if ack.reason_code.is_error() {
                        return Err(AgentError::Refused {
                            operation: "MQTT PUBLISH",
                            status: u16::from(ack.reason_code as u8),
                            message: ack
                                .properties
                                .reason_string
                                .unwrap_or_else(|| format!("{:?}", ack.reason_code)),
                        });
                    }
                    return Ok(());
                }
                Packet::Disconnect(d) => {
                    return Err(mqtt_error(
                        &self.url,
                        format!("the broker disconnected: {:?}", d.reason_code),
                    ));
                }
                // PINGRESP or a message for a subscription this client never made: ignored.
                _ => {}
            }
        }
    }

    async fn disconnect(mut self) {
        let _ = self
            .send(&Packet::Disconnect(Disconnect::with_reason(
                ReasonCode::Success,
            )))
            .await;
        let _ = self.stream.shutdown().await;
    }
}

/// One message for the broker.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) topic: TopicName,
    pub(crate) payload: Bytes,
    pub(crate) retain: bool,
}

/// What the background publisher is asked to do.
#[derive(Debug)]
enum Job {
    Publish(Report),
    /// Answer once everything queued before is done.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Publishes reports in the background (see the module docs).
#[derive(Debug)]
pub(crate) struct Reporter {
    queue: Option<mpsc::Sender<Job>>,
    task: Option<tokio::task::JoinHandle<u32>>,
}

impl Reporter {
    /// A reporter publishing to `url` as `device`; `None` for `url` reports nowhere.
    pub(crate) fn start(
        url: Option<MqttUrl>,
        roots: &[rustls_pki_types::CertificateDer<'static>],
        auth: ClientAuth,
        device: DeviceId,
    ) -> Self {
        let Some(url) = url else {
            return Reporter {
                queue: None,
                task: None,
            };
        };
        let tls = match crate::est::client_config(roots, auth, &[]) {
            Ok(c) => TlsConnector::from(Arc::new(c)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot report over MQTT");
                return Reporter {
                    queue: None,
                    task: None,
                };
            }
        };
        let (tx, rx) = mpsc::channel(MAX_QUEUED_REPORTS);
        let task = tokio::spawn(publish_all(url, tls, device, rx));
        Reporter {
            queue: Some(tx),
            task: Some(task),
        }
    }

    /// Queues `report`; drops it (with a log line) if the queue is full.
    pub(crate) fn send(&self, report: Report) {
        if let Some(q) = &self.queue
            && q.try_send(Job::Publish(report)).is_err()
        {
            tracing::warn!("too many update reports queued; one was dropped");
        }
    }

    /// Waits (at most `deadline`) until what is queued now was delivered or given up.
    pub(crate) async fn flush(&self, deadline: Duration) {
        let Some(q) = &self.queue else { return };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = async {
            if q.send(Job::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(deadline, done).await.is_err() {
            tracing::warn!("update reports not delivered within {deadline:?}");
        }
    }

    /// Delivers what is queued, waiting at most `deadline`; returns how many were published.
    pub(crate) async fn finish(mut self, deadline: Duration) -> u32 {
        self.queue = None;
        match self.task.take() {
            None => 0,
            Some(mut task) => match tokio::time::timeout(deadline, &mut task).await {
                Ok(Ok(n)) => n,
                _ => {
                    task.abort();
                    tracing::warn!("update reports not delivered within {deadline:?}");
                    0
                }
            },
        }
    }
}

/// The background publisher: one session while reports keep coming, a new one after a
/// failure. Returns how many reports were acknowledged.
async fn publish_all(
    url: MqttUrl,
    tls: TlsConnector,
    device: DeviceId,
    mut rx: mpsc::Receiver<Job>,
) -> u32 {
    let mut session: Option<Session> = None;
    let mut delivered = 0u32;
    let mut failures = 0u32;
    while let Some(job) = rx.recv().await {
        let report = match job {
            Job::Publish(r) => r,
            Job::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let topic = report.topic.to_string();
        if failures >= MAX_REPORT_FAILURES {
            tracing::debug!(topic, "update report dropped: the broker is not reachable");
            continue;
        }
        let result = tokio::time::timeout(MQTT_TIMEOUT.saturating_mul(2), async {
            let s = match session.take() {
                Some(s) => s,
                None => Session::connect(&url, &tls, &device).await?,
            };
            let s = session.insert(s);
            s.publish(report.topic, report.payload, report.retain).await
        })
        .await
        .unwrap_or(Err(AgentError::Timeout {
            operation: "publishing an update report",
            after: MQTT_TIMEOUT.saturating_mul(2),
        }));
        match result {
            Ok(()) => {
                delivered = delivered.saturating_add(1);
                failures = 0;
                tracing::debug!(topic, "update report published");
            }
            Err(e) => {
                session = None;
                failures += 1;
                tracing::warn!(topic, broker = %url, error = %e, "update report not delivered");
            }
        }
    }
    if let Some(s) = session {
        let _ = tokio::time::timeout(MQTT_TIMEOUT, s.disconnect()).await;
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls_parse() -> Result<(), AgentError> {
        assert_eq!(
            MqttUrl::parse("mqtts://localhost:1883")?.to_string(),
            "mqtts://localhost:1883"
        );
        assert_eq!(
            MqttUrl::parse("mqtts://hub.example")?.to_string(),
            "mqtts://hub.example:8883"
        );
        assert_eq!(
            MqttUrl::parse("mqtts://[::1]:9")?.to_string(),
            "mqtts://[::1]:9"
        );
        for bad in ["mqtt://x:1", "https://x:1", "mqtts://x:0", "mqtts://x/y"] {
            assert!(MqttUrl::parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }
}

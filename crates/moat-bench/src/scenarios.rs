//! The scenarios of issue 2's "How we know", each run with the same client code against
//! whichever broker it is given.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use moat_mqtt::{Packet, PacketId, PubResponse};
use moat_types::{QoS, TopicName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::brokers::RunningBroker;
use crate::client::{self, Connection, Reader};
use crate::pki::ClientPki;
use crate::procfs;
use crate::stamp::{Burst, GapCounter, Stamp};
use crate::stats::{LatencySummary, percentile};

/// Which scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    /// Every scenario below, in this order.
    All,
    /// 4 publishers → 1 wildcard subscriber, QoS 0, plaintext.
    FanInQos0,
    /// 4 publishers → 1 wildcard subscriber, QoS 1 with a window of in-flight messages.
    FanInQos1,
    /// 1 publisher → 100 subscribers of one topic, QoS 0, plaintext.
    FanOut,
    /// Paced publisher, 1 subscriber: publish-to-delivery latency.
    Latency,
    /// The latency scenario against every broker at once, their messages interleaved half a
    /// period apart, so that all brokers are measured under the same machine conditions
    /// (on a shared or virtual machine the host's noise between two sequential runs is
    /// larger than the difference between brokers).
    LatencyPaired,
    /// The latency scenario in alternating rounds: every broker started at once, and the
    /// paced publisher moves from one broker to the next each round (order reversed every
    /// other round: ABBA), so that drift in the machine's noise falls on all brokers alike
    /// and only one broker carries load at any moment. Figures pool every round's samples;
    /// the notes give each round's.
    LatencyRounds,
    /// Mutual TLS, one certificate per device, each publishing into its own namespace and
    /// subscribed to it.
    SecureNamespaces,
    /// Idle plaintext connections: broker memory per connection.
    IdleTcp,
    /// Idle mutual-TLS connections: broker memory per connection.
    IdleTls,
    /// Full mutual-TLS handshakes + CONNECT/CONNACK: broker CPU per handshake.
    Handshakes,
    /// The detection engine alone (no broker): a synthetic fleet's events through
    /// moat-detect on one thread. Not part of `all`.
    Detect,
    /// Signed updates: metadata verification per device (in process) and the update
    /// repository's serving throughput with many devices at once (Moat only). Not part of
    /// `all`.
    Ota,
}

impl Scenario {
    /// How long the scenario runs by its own plan against `brokers` brokers: the paced
    /// latency scenarios last as long as they are asked to, plus [`pacing_slack`] (zero for
    /// the others, which end when their measurement window does). Their subscribers wait
    /// this long; the harness never gives a scenario less time.
    pub fn planned(&self, settings: &Settings, brokers: usize) -> Duration {
        let rate = f64::from(settings.latency_rate.max(1));
        let sending = match self {
            Self::Latency | Self::LatencyPaired => settings.warmup + settings.latency_duration,
            Self::LatencyRounds => {
                let per_broker = RoundPlan::new(settings).total() as f64 / rate;
                Duration::from_secs_f64(per_broker * brokers.max(1) as f64)
            }
            _ => return Duration::ZERO,
        };
        sending + pacing_slack(sending)
    }

    /// Every concrete scenario, in run order.
    pub const EACH: [Scenario; 10] = [
        Self::FanInQos0,
        Self::FanInQos1,
        Self::FanOut,
        Self::Latency,
        Self::LatencyPaired,
        Self::LatencyRounds,
        Self::SecureNamespaces,
        Self::IdleTcp,
        Self::IdleTls,
        Self::Handshakes,
    ];

    /// A short human title.
    pub fn title(self, settings: &Settings) -> String {
        match self {
            Self::All => "all".to_owned(),
            Self::FanInQos0 => format!(
                "fan-in QoS 0 ({} pub → 1 sub on a wildcard, {} B)",
                settings.publishers, settings.payload_size
            ),
            Self::FanInQos1 => format!(
                "fan-in QoS 1 ({} pub → 1 sub on a wildcard, {} B, window {})",
                settings.publishers, settings.payload_size, settings.qos1_window
            ),
            Self::FanOut => format!(
                "fan-out QoS 0 (1 pub → {} subs, {} B)",
                settings.fan_out_subscribers, settings.payload_size
            ),
            Self::Latency => format!(
                "latency QoS 0 ({} msg/s paced, 1 sub)",
                settings.latency_rate
            ),
            Self::LatencyPaired => format!(
                "latency QoS 0, brokers at once ({} msg/s paced to each, interleaved, 1 sub each)",
                settings.latency_rate
            ),
            Self::LatencyRounds => format!(
                "latency QoS 0, {} alternating rounds ({} msg/s paced, 1 sub each)",
                settings.latency_rounds, settings.latency_rate
            ),
            Self::SecureNamespaces => format!(
                "mutual TLS, {} devices each pub+sub in devices/{{id}}/#, QoS 0",
                settings.devices
            ),
            Self::IdleTcp => format!("{} idle plaintext connections", settings.idle_tcp),
            Self::IdleTls => format!("{} idle mutual-TLS connections", settings.idle_tls),
            Self::Handshakes => format!(
                "{} full mutual-TLS handshakes + CONNECT ({} at a time, {} devices)",
                settings.handshakes,
                settings.handshake_concurrency,
                settings.handshake_devices()
            ),
            Self::Detect => "detection engine (no broker)".to_owned(),
            Self::Ota => "signed updates (verification, serving)".to_owned(),
        }
    }
}

/// Counts, durations and sizes of the scenarios.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Load before measuring starts.
    pub warmup: Duration,
    /// Measuring window of the throughput scenarios.
    pub window: Duration,
    /// Publishers in fan-in.
    pub publishers: usize,
    /// Payload bytes of every message.
    pub payload_size: usize,
    /// Unacknowledged QoS 1 messages each publisher keeps in flight.
    pub qos1_window: usize,
    /// Subscribers in fan-out.
    pub fan_out_subscribers: usize,
    /// Messages per second in the latency scenario.
    pub latency_rate: u32,
    /// Measured duration of the latency scenario (after the warm-up); in the rounds
    /// scenario, each broker's, split over its rounds.
    pub latency_duration: Duration,
    /// Rounds per broker of the alternating latency scenario.
    pub latency_rounds: u32,
    /// Devices in the mutual-TLS namespace scenario.
    pub devices: usize,
    /// Idle plaintext connections.
    pub idle_tcp: usize,
    /// Idle mutual-TLS connections.
    pub idle_tls: usize,
    /// Handshakes in the handshake scenario.
    pub handshakes: usize,
    /// Handshakes in progress at once.
    pub handshake_concurrency: usize,
    /// Device certificates the handshakes take turns with (at least one per handshake in
    /// progress).
    pub handshake_devices: usize,
    /// Connections being opened at once in the idle scenarios.
    pub connect_concurrency: usize,
}

impl Settings {
    /// How many device certificates `scenarios` need (0 when none uses mutual TLS).
    pub fn devices_needed(&self, scenarios: &[Scenario]) -> usize {
        scenarios
            .iter()
            .map(|scenario| match scenario {
                Scenario::SecureNamespaces => self.devices,
                Scenario::IdleTls => self.idle_tls,
                Scenario::Handshakes => self.handshake_devices(),
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }

    /// The device certificates the handshake scenario uses: `handshake_devices`, and at least
    /// one per handshake in progress.
    pub fn handshake_devices(&self) -> usize {
        self.handshake_devices
            .max(self.handshake_concurrency)
            .max(1)
    }
}

/// Which direction of a figure is good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    /// More is better (throughput).
    Higher,
    /// Less is better (latency, CPU, memory).
    Lower,
    /// Context only (client CPU, delivery ratio).
    Neither,
}

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Figure {
    /// What was measured.
    pub metric: &'static str,
    /// Unit, as printed.
    pub unit: &'static str,
    /// The value.
    pub value: f64,
    /// Which way is good.
    pub better: Better,
}

impl Figure {
    /// A figure.
    pub fn new(metric: &'static str, unit: &'static str, value: f64, better: Better) -> Self {
        Self {
            metric,
            unit,
            value,
            better,
        }
    }
}

/// What a scenario produced on one broker.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Figures, in display order.
    pub figures: Vec<Figure>,
    /// Remarks worth printing under the table (a failed sanity check, say).
    pub notes: Vec<String>,
}

impl From<Vec<Figure>> for Outcome {
    fn from(figures: Vec<Figure>) -> Self {
        Self {
            figures,
            notes: Vec::new(),
        }
    }
}

/// Runs `scenario` against `broker`.
pub async fn run(
    scenario: Scenario,
    broker: &RunningBroker,
    pki: &ClientPki,
    settings: &Settings,
) -> Result<Outcome, String> {
    match scenario {
        Scenario::All => Err("`all` is not a single scenario".to_owned()),
        Scenario::Detect => Err("`detect` runs without a broker".to_owned()),
        Scenario::Ota => Err("`ota` runs on its own".to_owned()),
        Scenario::FanInQos0 => fan_in(broker, settings, QoS::AtMostOnce)
            .await
            .map(Into::into),
        Scenario::FanInQos1 => fan_in(broker, settings, QoS::AtLeastOnce)
            .await
            .map(Into::into),
        Scenario::FanOut => fan_out(broker, settings).await.map(Into::into),
        Scenario::Latency => latency(broker, settings).await.map(Into::into),
        Scenario::LatencyPaired | Scenario::LatencyRounds => {
            Err("the paired and rounds latency scenarios run every broker at once".to_owned())
        }
        Scenario::SecureNamespaces => secure_namespaces(broker, pki, settings).await,
        Scenario::IdleTcp => idle(broker, pki, settings, Transport::Tcp)
            .await
            .map(Into::into),
        Scenario::IdleTls => idle(broker, pki, settings, Transport::Tls)
            .await
            .map(Into::into),
        Scenario::Handshakes => handshakes(broker, pki, settings).await.map(Into::into),
    }
}

/// Message counters shared by the load tasks and the measuring loop.
#[derive(Clone, Debug, Default)]
struct Counters {
    /// Messages received by subscribers.
    delivered: Arc<AtomicU64>,
    /// Messages missing from the sequences subscribers saw.
    lost: Arc<AtomicU64>,
    /// QoS 1 messages acknowledged to publishers.
    acknowledged: Arc<AtomicU64>,
}

/// What the measuring loop reads at the start and the end of the window.
#[derive(Clone, Copy, Debug)]
struct Snapshot {
    at: Instant,
    delivered: u64,
    lost: u64,
    acknowledged: u64,
    broker_cpu: Duration,
    client_cpu: Duration,
}

impl Snapshot {
    fn take(counters: &Counters, broker_pid: u32) -> Result<Self, String> {
        Ok(Self {
            at: Instant::now(),
            delivered: counters.delivered.load(Ordering::Relaxed),
            lost: counters.lost.load(Ordering::Relaxed),
            acknowledged: counters.acknowledged.load(Ordering::Relaxed),
            broker_cpu: procfs::cpu_time(broker_pid)?,
            client_cpu: procfs::own_cpu_time()?,
        })
    }
}

/// Lets the load run for the warm-up, then measures over the window, then stops every task.
/// A task that failed (the broker closed a connection, say) fails the scenario.
async fn measure_throughput(
    tasks: &mut JoinSet<Result<(), String>>,
    counters: &Counters,
    broker_pid: u32,
    settings: &Settings,
) -> Result<Vec<Figure>, String> {
    tokio::time::sleep(settings.warmup).await;
    let start = Snapshot::take(counters, broker_pid)?;
    tokio::time::sleep(settings.window).await;
    let end = Snapshot::take(counters, broker_pid)?;
    stop(tasks).await?;

    let seconds = end.at.duration_since(start.at).as_secs_f64();
    let delivered = (end.delivered - start.delivered) as f64;
    let lost = (end.lost - start.lost) as f64;
    let acknowledged = (end.acknowledged - start.acknowledged) as f64;
    let broker_cpu = (end.broker_cpu - start.broker_cpu).as_secs_f64();
    let client_cpu = (end.client_cpu - start.client_cpu).as_secs_f64();
    if delivered == 0.0 {
        return Err("no message was delivered during the window".to_owned());
    }
    let mut figures = vec![
        Figure::new("delivered", "msg/s", delivered / seconds, Better::Higher),
        Figure::new(
            "broker CPU per delivered msg",
            "µs",
            broker_cpu * 1e6 / delivered,
            Better::Lower,
        ),
        Figure::new(
            "lost (sequence gaps)",
            "%",
            100.0 * lost / (delivered + lost),
            Better::Lower,
        ),
    ];
    if end.acknowledged > 0 {
        figures.push(Figure::new(
            "PUBACKed to publishers",
            "msg/s",
            acknowledged / seconds,
            Better::Neither,
        ));
    }
    figures.extend([
        Figure::new("broker CPU", "cores", broker_cpu / seconds, Better::Neither),
        Figure::new("client CPU", "cores", client_cpu / seconds, Better::Neither),
    ]);
    Ok(figures)
}

/// Aborts every task and reports the first real failure among them.
async fn stop(tasks: &mut JoinSet<Result<(), String>>) -> Result<(), String> {
    tasks.abort_all();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                first_error.get_or_insert(format!("load task panicked: {e}"));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn topic(name: &str) -> Result<TopicName, String> {
    TopicName::parse(name).map_err(|e| format!("topic {name}: {e}"))
}

/// Bytes per write of a QoS 0 flood: large enough that syscalls are not the limit.
const BURST_BYTES: usize = 16 * 1024;

/// Writes stamped bursts of QoS 0 messages for ever.
async fn flood<W: AsyncWrite + Unpin>(mut io: W, mut burst: Burst) -> Result<(), String> {
    loop {
        io.write_all(burst.next())
            .await
            .map_err(|e| format!("publishing: {e}"))?;
    }
}

/// Publishes QoS 1 messages keeping between `window / 2` and `window` of them
/// unacknowledged; counts PUBACKs.
async fn publish_windowed<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: Connection<S>,
    publisher: u32,
    topic: TopicName,
    payload_size: usize,
    window: usize,
    acknowledged: Arc<AtomicU64>,
) -> Result<(), String> {
    let mut in_flight = 0;
    let mut sequence = 0;
    loop {
        while in_flight < window {
            let payload = Stamp {
                publisher,
                sequence,
                sent: Duration::ZERO,
            }
            .payload(payload_size);
            sequence += 1;
            // Packet ids cycle through 1..=65535; the window is far smaller.
            let packet_id = NonZeroU16::new((sequence % 65_535 + 1) as u16);
            conn.queue(&client::publish(
                &topic,
                QoS::AtLeastOnce,
                packet_id,
                payload,
            ));
            in_flight += 1;
        }
        conn.flush().await?;
        // Refill only once half the window is acknowledged: a broker that sends one PUBACK
        // per segment would otherwise make the client write one message per syscall.
        while in_flight > window / 2 {
            let mut acked = 0;
            conn.read_batch(|packet| {
                if matches!(packet, Packet::PubAck(_)) {
                    acked += 1;
                }
            })
            .await?;
            in_flight -= acked.min(in_flight);
            acknowledged.fetch_add(acked as u64, Ordering::Relaxed);
        }
    }
}

/// Counts deliveries and sequence gaps of one batch of packets; collects what needs a PUBACK.
fn tally(
    packet: Packet,
    gaps: &mut GapCounter,
    received: &mut u64,
    lost: &mut u64,
    to_ack: &mut Vec<PacketId>,
) {
    if let Packet::Publish(publish) = packet {
        *received += 1;
        if let Some(stamp) = Stamp::read(&publish.payload) {
            *lost += gaps.observe(&stamp);
        }
        if let Some(id) = publish.packet_id {
            to_ack.push(id);
        }
    }
}

/// Counts PUBLISH packets and sequence gaps, acknowledging those that ask for it.
async fn count_deliveries<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: Connection<S>,
    counters: Counters,
) -> Result<(), String> {
    let mut gaps = GapCounter::default();
    let mut to_ack = Vec::new();
    loop {
        let (mut received, mut lost) = (0, 0);
        conn.read_batch(|p| tally(p, &mut gaps, &mut received, &mut lost, &mut to_ack))
            .await?;
        counters.delivered.fetch_add(received, Ordering::Relaxed);
        if lost > 0 {
            counters.lost.fetch_add(lost, Ordering::Relaxed);
        }
        if !to_ack.is_empty() {
            for id in to_ack.drain(..) {
                conn.queue(&Packet::PubAck(PubResponse::success(id)));
            }
            conn.flush().await?;
        }
    }
}

/// As [`count_deliveries`] on the read half of a split connection (QoS 0 only).
async fn count_deliveries_split<R: AsyncRead + Unpin>(
    mut reader: Reader<R>,
    counters: Counters,
) -> Result<(), String> {
    let mut gaps = GapCounter::default();
    let mut to_ack = Vec::new();
    loop {
        let (mut received, mut lost) = (0, 0);
        reader
            .read_batch(|p| tally(p, &mut gaps, &mut received, &mut lost, &mut to_ack))
            .await?;
        counters.delivered.fetch_add(received, Ordering::Relaxed);
        if lost > 0 {
            counters.lost.fetch_add(lost, Ordering::Relaxed);
        }
        to_ack.clear();
    }
}

async fn plaintext(addr: SocketAddr, client_id: &str) -> Result<Connection<TcpStream>, String> {
    Connection::open(client::tcp(addr).await?, client_id, 60).await
}

async fn fan_in(
    broker: &RunningBroker,
    settings: &Settings,
    qos: QoS,
) -> Result<Vec<Figure>, String> {
    let counters = Counters::default();
    let mut tasks = JoinSet::new();
    let mut subscriber = plaintext(broker.plaintext, "bench-fan-in-sub").await?;
    subscriber.subscribe("bench/fan-in/#", qos).await?;
    tasks.spawn(count_deliveries(subscriber, counters.clone()));

    for i in 0..settings.publishers {
        let conn = plaintext(broker.plaintext, &format!("bench-fan-in-pub-{i}")).await?;
        let topic = topic(&format!("bench/fan-in/{i}"))?;
        let publisher = i as u32;
        if qos == QoS::AtMostOnce {
            let burst = Burst::new(publisher, &topic, settings.payload_size, BURST_BYTES);
            tasks.spawn(flood(conn.into_parts().0, burst));
        } else {
            tasks.spawn(publish_windowed(
                conn,
                publisher,
                topic,
                settings.payload_size,
                settings.qos1_window,
                Arc::clone(&counters.acknowledged),
            ));
        }
    }
    measure_throughput(&mut tasks, &counters, broker.pid, settings).await
}

async fn fan_out(broker: &RunningBroker, settings: &Settings) -> Result<Vec<Figure>, String> {
    let counters = Counters::default();
    let mut tasks = JoinSet::new();
    for i in 0..settings.fan_out_subscribers {
        let mut conn = plaintext(broker.plaintext, &format!("bench-fan-out-sub-{i}")).await?;
        conn.subscribe("bench/fan-out", QoS::AtMostOnce).await?;
        tasks.spawn(count_deliveries(conn, counters.clone()));
    }
    let conn = plaintext(broker.plaintext, "bench-fan-out-pub").await?;
    let burst = Burst::new(
        0,
        &topic("bench/fan-out")?,
        settings.payload_size,
        BURST_BYTES,
    );
    tasks.spawn(flood(conn.into_parts().0, burst));
    measure_throughput(&mut tasks, &counters, broker.pid, settings).await
}

/// How many messages a latency run sends (warm-up included), and how many of them warm up.
fn latency_counts(settings: &Settings) -> (u64, u64) {
    let warmup_messages = messages_in(settings.warmup, settings);
    let total = warmup_messages + messages_in(settings.latency_duration, settings).max(1);
    (total, warmup_messages)
}

/// How many messages the paced publisher sends in `period`.
fn messages_in(period: Duration, settings: &Settings) -> u64 {
    (period.as_secs_f64() * f64::from(settings.latency_rate.max(1))) as u64
}

/// The clock of a latency run: wall-clock time since the run's origin. The kernel stamps
/// what a socket receives with the wall clock (`SO_TIMESTAMPNS`), so the publishers stamp
/// their messages with it too; a run is seconds long, so the clock's slewing does not count.
#[derive(Clone, Copy, Debug)]
struct Clock {
    origin: SystemTime,
}

impl Clock {
    fn start() -> Self {
        Self {
            origin: SystemTime::now(),
        }
    }

    fn since_origin(&self, at: SystemTime) -> Duration {
        at.duration_since(self.origin).unwrap_or_default()
    }

    fn elapsed(&self) -> Duration {
        self.since_origin(SystemTime::now())
    }
}

/// One latency sample: the message's sequence number, and its time from the publisher's
/// write to the subscriber's thread reading it (`read`, the latency figures), and to the
/// subscriber's socket (`delivered`, the kernel's receive stamp of the segment that completed
/// it). The difference is the subscriber's wake-up, which the broker also moves: a broker that
/// keeps the CPU after its write delays a subscriber woken on that CPU.
///
/// `delivered` is `None` when the kernel stamped nothing: it turns receive timestamps on for
/// the whole machine lazily, from a work queue, so the first segments after the first socket
/// asks for them may arrive unstamped ([`kernel_stamps_on`] waits for that).
#[derive(Clone, Copy, Debug)]
struct Sample {
    sequence: u64,
    delivered: Option<Duration>,
    read: Duration,
}

/// Waits until the kernel stamps what loopback sockets receive (`SO_TIMESTAMPNS`), or fails
/// at `deadline`.
///
/// The first socket to ask for receive stamps while no other socket has them makes Linux
/// switch them on for the whole machine, and it does that later, from a work queue; until
/// then segments arrive unstamped. This probes with a socket pair of its own, one byte at a
/// time, until a byte arrives stamped. Call it after the sockets that need stamps have asked
/// for them, so that they keep the machine's stamping on once the probe's sockets close.
fn kernel_stamps_on(deadline: Instant) -> Result<(), String> {
    use nix::sys::socket::{setsockopt, sockopt};
    use std::io::Write;
    let fail = |e: &dyn std::fmt::Display| format!("receive timestamps: {e}");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| fail(&e))?;
    let mut sender = std::net::TcpStream::connect(listener.local_addr().map_err(|e| fail(&e))?)
        .map_err(|e| fail(&e))?;
    let (receiver, _) = listener.accept().map_err(|e| fail(&e))?;
    setsockopt(&receiver, sockopt::ReceiveTimestampns, &true).map_err(|e| fail(&e))?;
    sender.set_nodelay(true).map_err(|e| fail(&e))?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail(&"the kernel stamped nothing this socket received"));
        }
        receiver
            .set_read_timeout(Some(left))
            .map_err(|e| fail(&e))?;
        sender.write_all(&[0]).map_err(|e| fail(&e))?;
        let mut byte = [0u8; 1];
        match stamped_read(&receiver, &mut byte) {
            Ok((_, Some(_))) => return Ok(()),
            Ok((0, None)) => return Err(fail(&"the probe's connection closed")),
            Ok((_, None)) | Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
            Err(e) => return Err(fail(&e)),
        }
    }
}

/// [`kernel_stamps_on`] for a latency run, given 10 s. Without the kernel's stamps a run
/// still measures to the subscriber's read; it only loses the "to the socket" figures.
async fn await_kernel_stamps() {
    let deadline = Instant::now() + Duration::from_secs(10);
    let waited = tokio::task::spawn_blocking(move || kernel_stamps_on(deadline))
        .await
        .map_err(|e| e.to_string())
        .and_then(|waited| waited);
    if let Err(e) = waited {
        eprintln!("warning: {e}; no \"to the socket\" figures");
    }
}

/// One `recvmsg` into `buffer`: how many bytes, and the kernel's receive stamp of the last
/// segment read, if it stamped it.
fn stamped_read(
    stream: &std::net::TcpStream,
    buffer: &mut [u8],
) -> nix::Result<(usize, Option<nix::sys::time::TimeSpec>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::AsRawFd;
    let mut control = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut iov = [std::io::IoSliceMut::new(buffer)];
    let message = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::empty(),
    )?;
    let stamp = message.cmsgs()?.find_map(|c| match c {
        ControlMessageOwned::ScmTimestampns(t) => Some(t),
        _ => None,
    });
    Ok((message.bytes, stamp))
}

/// Receives one latency subscriber's stamped messages on a thread of its own, with blocking
/// reads, until the last of `total` (or `deadline`), sending PINGREQ after a read once
/// `ping_every` has passed since the last. Returns a sample of each message from
/// `first_sampled` on, and how many arrived.
///
/// A thread per subscriber, not a task: in one task scheduler, two brokers' deliveries that
/// arrive together are handled one after the other, and which comes second depends on the
/// scheduler, not on the brokers.
/// How much later than planned a paced publisher may finish: each sleep that overshoots its
/// slot moves the rest of the schedule (a 480 s paired run finished about 2 % late, and its
/// subscribers, which waited 5 s past the plan, missed the last 0.9 % of the messages).
fn pacing_slack(sending: Duration) -> Duration {
    Duration::from_secs(5) + sending / 10
}

/// How often a latency subscriber, which otherwise only receives, sends PINGREQ: a broker
/// may hold keep alive 0 to a maximum of its own (Moat: its `max-keepalive`, 300 s, closing
/// after 1.5 times that), which a long run would outlast.
const LATENCY_PING_INTERVAL: Duration = Duration::from_secs(60);

fn receive_stamped(
    subscriber: Connection<TcpStream>,
    clock: Clock,
    (total, first_sampled): (u64, u64),
    deadline: tokio::time::Instant,
    ping_every: Duration,
) -> Receiving {
    use nix::sys::socket::{setsockopt, sockopt};
    let fail = |e: &dyn std::fmt::Display| format!("latency subscriber: {e}");
    // Timestamps on before this returns, so before anything is published: the kernel stamps
    // only what arrives after.
    let (io, buffered) = subscriber.into_parts();
    let stream = blocking(io).map_err(|e| fail(&e)).and_then(|stream| {
        setsockopt(&stream, sockopt::ReceiveTimestampns, &true)
            .map(|()| stream)
            .map_err(|e| fail(&e))
    });
    tokio::task::spawn_blocking(move || {
        let stream = stream?;
        let deadline = deadline.into_std();
        let mut inbound = client::Inbound::new(buffered);
        let mut chunk = vec![0u8; 64 * 1024];
        let mut samples = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        let mut received = 0u64;
        let mut last = 0;
        let mut pinged = Instant::now();
        while last + 1 < total {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            stream.set_read_timeout(Some(left)).map_err(|e| fail(&e))?;
            let (n, stamped) = match stamped_read(&stream, &mut chunk) {
                Ok(read) => read,
                Err(nix::errno::Errno::EAGAIN) => break, // the read timeout: the deadline
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(fail(&e)),
            };
            // One clock reading per read: the time this thread has the data. The messages of
            // one read share it, and the kernel's stamp of its last segment.
            let read = clock.elapsed();
            if n == 0 {
                return Err(fail(&"the broker closed the connection"));
            }
            let delivered = stamped.map(|stamped| {
                clock.since_origin(
                    SystemTime::UNIX_EPOCH
                        + Duration::new(
                            u64::try_from(stamped.tv_sec()).unwrap_or(0),
                            u32::try_from(stamped.tv_nsec()).unwrap_or(0),
                        ),
                )
            });
            inbound.extend(&chunk[..n]);
            while let Some(packet) = inbound.decode()? {
                if let Packet::Publish(publish) = packet
                    && let Some(stamp) = Stamp::read(&publish.payload)
                {
                    received += 1;
                    last = stamp.sequence;
                    if stamp.sequence >= first_sampled {
                        samples.push(Sample {
                            sequence: stamp.sequence,
                            delivered: delivered.map(|d| d.saturating_sub(stamp.sent)),
                            read: read.saturating_sub(stamp.sent),
                        });
                    }
                }
            }
            // After the messages are stamped, so off their path.
            if pinged.elapsed() >= ping_every {
                use std::io::Write;
                (&stream)
                    .write_all(&[0xC0, 0x00])
                    .map_err(|e| fail(&format!("PINGREQ: {e}")))?;
                pinged = Instant::now();
            }
        }
        Ok((samples, received))
    })
}

/// The latency figures of one broker's samples.
fn latency_figures(samples: &[Sample], received: u64, total: u64) -> Result<Vec<Figure>, String> {
    let mut durations: Vec<Duration> = samples.iter().map(|s| s.read).collect();
    let summary = LatencySummary::of(&mut durations)
        .ok_or_else(|| "no latency sample was received".to_owned())?;
    // `of` sorted the samples.
    let at = |p: f64| percentile(&durations, p).map_or(f64::NAN, micros);
    // To the socket only if the kernel stamped every sample: a partial set would leave out
    // the earliest messages of one broker and not of the other.
    let mut stamped: Vec<Duration> = samples.iter().filter_map(|s| s.delivered).collect();
    let socket = if stamped.len() == samples.len() {
        LatencySummary::of(&mut stamped)
    } else {
        None
    };
    let mut figures = vec![
        Figure::new("p50 latency", "µs", micros(summary.p50), Better::Lower),
        Figure::new("p90 latency", "µs", at(90.0), Better::Lower),
        Figure::new("p99 latency", "µs", micros(summary.p99), Better::Lower),
        Figure::new("p99.9 latency", "µs", at(99.9), Better::Lower),
        Figure::new("max latency", "µs", micros(summary.max), Better::Lower),
    ];
    if let Some(socket) = socket {
        figures.extend([
            Figure::new("p50 to the socket", "µs", micros(socket.p50), Better::Lower),
            Figure::new("p99 to the socket", "µs", micros(socket.p99), Better::Lower),
        ]);
    }
    figures.push(Figure::new(
        "lost",
        "%",
        100.0 * (total - received.min(total)) as f64 / total as f64,
        Better::Lower,
    ));
    Ok(figures)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A connected socket taken out of tokio for a thread of its own, with blocking I/O.
fn blocking(io: TcpStream) -> std::io::Result<std::net::TcpStream> {
    let stream = io.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// The latency publishers, one per broker, written with blocking writes from a thread of
/// their own and paced by the OS clock.
///
/// Tokio's timers have millisecond resolution: a 0.5 ms interval (two brokers at 1,000 msg/s
/// each) fired its ticks in pairs at each millisecond, which put two brokers' messages on the
/// machine at the same instant, or two of one broker's back to back.
struct Publishers(Vec<std::net::TcpStream>);

impl Publishers {
    fn new(connections: Vec<Connection<TcpStream>>) -> Result<Self, String> {
        let mut streams = Vec::new();
        for connection in connections {
            let (io, _) = connection.into_parts();
            streams.push(blocking(io).map_err(|e| format!("latency publisher: {e}"))?);
        }
        Ok(Self(streams))
    }

    /// Publishes the stamped messages `sequences` through the publishers `active`, paced:
    /// one message every `1 / (rate × active)` seconds, so that each sends at `rate` and no
    /// two messages are in flight at the same moment. Each period every active publisher
    /// sends once, in an order drawn at random per period: a fixed order would tie each
    /// publisher to one phase of the period, and periodic machine noise (timer ticks, the
    /// host) to one broker. A slot missed (the thread ran late) is sent at once and the
    /// schedule moves on from there, rather than catching up in a burst.
    async fn send(
        mut self,
        mut active: Vec<usize>,
        clock: Clock,
        sequences: Range<u64>,
        settings: &Settings,
    ) -> Result<Self, String> {
        let rate = f64::from(settings.latency_rate.max(1));
        let spacing = Duration::from_secs_f64(1.0 / (rate * active.len().max(1) as f64));
        let payload_size = settings.payload_size;
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let latency_topic = topic("bench/latency")?;
            let mut shuffle = Shuffle::seeded(sequences.start);
            let mut wire = bytes::BytesMut::new();
            let mut slot = Instant::now();
            for sequence in sequences {
                shuffle.apply(&mut active);
                for &i in &active {
                    let now = Instant::now();
                    if slot > now {
                        std::thread::sleep(slot - now);
                    } else {
                        slot = now;
                    }
                    slot += spacing;
                    let stamp = Stamp {
                        publisher: 0,
                        sequence,
                        sent: clock.elapsed(),
                    };
                    let packet = client::publish(
                        &latency_topic,
                        QoS::AtMostOnce,
                        None,
                        stamp.payload(payload_size),
                    );
                    wire.clear();
                    moat_mqtt::encode(&packet, client::VERSION, &mut wire);
                    self.0[i]
                        .write_all(&wire)
                        .map_err(|e| format!("latency publisher: {e}"))?;
                }
            }
            Ok(self)
        })
        .await
        .map_err(|e| format!("latency publisher thread: {e}"))?
    }

    fn all(&self) -> Vec<usize> {
        (0..self.0.len()).collect()
    }
}

/// A small deterministic shuffler (xorshift64*): the publishing order needs no more than
/// an even spread, and a seed makes a run's order reproducible.
struct Shuffle(u64);

impl Shuffle {
    fn seeded(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fisher–Yates.
    fn apply<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// A subscriber and a publisher on the latency topic of `broker`.
async fn latency_pair(
    broker: &RunningBroker,
) -> Result<(Connection<TcpStream>, Connection<TcpStream>), String> {
    // Keep alive 0: the publisher sends all the time, and the subscriber pings every
    // `LATENCY_PING_INTERVAL` for brokers that hold keep alive 0 to a maximum.
    let open =
        |id| async move { Connection::open(client::tcp(broker.plaintext).await?, id, 0).await };
    let mut subscriber = open("bench-latency-sub").await?;
    subscriber
        .subscribe("bench/latency", QoS::AtMostOnce)
        .await?;
    let publisher = open("bench-latency-pub").await?;
    Ok((subscriber, publisher))
}

async fn latency(broker: &RunningBroker, settings: &Settings) -> Result<Vec<Figure>, String> {
    let counts = latency_counts(settings);
    let clock = Clock::start();
    let (subscriber, publisher) = latency_pair(broker).await?;
    let deadline = tokio::time::Instant::now() + Scenario::Latency.planned(settings, 1);
    let receiving = receive_stamped(subscriber, clock, counts, deadline, LATENCY_PING_INTERVAL);
    await_kernel_stamps().await;
    Publishers::new(vec![publisher])?
        .send(vec![0], clock, 0..counts.0, settings)
        .await?;
    let (samples, received) = receiving
        .await
        .map_err(|e| format!("latency subscriber: {e}"))??;
    latency_figures(&samples, received, counts.0)
}

/// Opens a latency pair on every broker and starts each subscriber's receiving task, which
/// expects `counts` messages by `deadline`.
async fn open_latency_pairs(
    brokers: &[&RunningBroker],
    clock: Clock,
    counts: (u64, u64),
    deadline: tokio::time::Instant,
) -> Result<(Vec<Receiving>, Vec<Connection<TcpStream>>), String> {
    let mut receivers = Vec::new();
    let mut publishers = Vec::new();
    for broker in brokers {
        let (subscriber, publisher) = latency_pair(broker).await?;
        receivers.push(receive_stamped(
            subscriber,
            clock,
            counts,
            deadline,
            LATENCY_PING_INTERVAL,
        ));
        publishers.push(publisher);
    }
    Ok((receivers, publishers))
}

type Receiving = tokio::task::JoinHandle<Result<(Vec<Sample>, u64), String>>;

/// Each receiver's samples made into its broker's result, in the brokers' order.
async fn outcomes(
    receivers: Vec<Receiving>,
    outcome: impl Fn(&[Sample], u64) -> Result<Outcome, String>,
) -> Vec<Result<Outcome, String>> {
    let mut outcomes = Vec::new();
    for receiver in receivers {
        outcomes.push(
            received(receiver)
                .await
                .and_then(|(samples, n)| outcome(&samples, n)),
        );
    }
    outcomes
}

/// Waits for one receiving task.
async fn received(receiver: Receiving) -> Result<(Vec<Sample>, u64), String> {
    receiver
        .await
        .map_err(|e| format!("latency subscriber: {e}"))?
}

/// The latency scenario against all `brokers` at once: each broker has its own subscriber
/// and publisher, and the publishers take turns, half a period apart (with two brokers),
/// so that every broker meets the same machine conditions. One result per broker.
pub async fn latency_paired(
    brokers: &[&RunningBroker],
    settings: &Settings,
) -> Vec<Result<Outcome, String>> {
    let counts = latency_counts(settings);
    let clock = Clock::start();
    let deadline =
        tokio::time::Instant::now() + Scenario::LatencyPaired.planned(settings, brokers.len());
    let all_failed = |e: String| brokers.iter().map(|_| Err(e.clone())).collect();
    let (receivers, publishers) = match open_latency_pairs(brokers, clock, counts, deadline).await {
        Ok(opened) => opened,
        Err(e) => return all_failed(e),
    };
    await_kernel_stamps().await;
    let sending = async {
        let publishers = Publishers::new(publishers)?;
        let all = publishers.all();
        publishers.send(all, clock, 0..counts.0, settings).await
    };
    if let Err(e) = sending.await {
        return all_failed(e);
    }
    outcomes(receivers, |samples, n| {
        latency_figures(samples, n, counts.0).map(Into::into)
    })
    .await
}

/// Messages at the start of each round that are sent but not sampled: the broker was idle
/// while the others had their turn, and its first messages meet cold caches.
const ROUND_SETTLE: Duration = Duration::from_millis(50);

/// Where each round's messages fall in a broker's sequence numbers.
#[derive(Clone, Copy, Debug)]
struct RoundPlan {
    warmup: u64,
    settle: u64,
    sampled: u64,
    rounds: u64,
}

impl RoundPlan {
    fn new(settings: &Settings) -> Self {
        let rounds = u64::from(settings.latency_rounds.max(1));
        Self {
            warmup: messages_in(settings.warmup, settings),
            settle: messages_in(ROUND_SETTLE, settings),
            sampled: (messages_in(settings.latency_duration, settings) / rounds).max(1),
            rounds,
        }
    }

    /// Every message round `round` sends, settling ones first.
    fn round(&self, round: u64) -> Range<u64> {
        let start = self.warmup + round * (self.settle + self.sampled);
        start..start + self.settle + self.sampled
    }

    /// The round a sampled sequence number belongs to (`None` for warm-up and settling).
    fn round_of(&self, sequence: u64) -> Option<usize> {
        let offset = sequence.checked_sub(self.warmup)?;
        let per_round = self.settle + self.sampled;
        (offset % per_round >= self.settle && offset / per_round < self.rounds)
            .then(|| usize::try_from(offset / per_round).ok())
            .flatten()
    }

    fn total(&self) -> u64 {
        self.warmup + self.rounds * (self.settle + self.sampled)
    }
}

/// The order of the brokers in round `round`: as given in even rounds, reversed in odd ones
/// (ABBA), so that a broker is as often first as last.
fn round_order(brokers: usize, round: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..brokers).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// The latency scenario in rounds: every broker is started and connected, each warms up in
/// turn, then each round sends `latency_duration / rounds` of paced messages to one broker
/// after another (ABBA order). Only one broker has traffic at any moment. One result per
/// broker: figures over all rounds' samples, the median of the rounds' percentiles, and a
/// note with each round's.
pub async fn latency_rounds(
    brokers: &[&RunningBroker],
    settings: &Settings,
) -> Vec<Result<Outcome, String>> {
    let plan = RoundPlan::new(settings);
    let clock = Clock::start();
    let deadline =
        tokio::time::Instant::now() + Scenario::LatencyRounds.planned(settings, brokers.len());
    let counts = (plan.total(), plan.warmup);
    let all_failed = |e: String| brokers.iter().map(|_| Err(e.clone())).collect();
    let (receivers, publishers) = match open_latency_pairs(brokers, clock, counts, deadline).await {
        Ok(opened) => opened,
        Err(e) => return all_failed(e),
    };
    await_kernel_stamps().await;
    let sending = async {
        let mut publishers = Publishers::new(publishers)?;
        for i in publishers.all() {
            publishers = publishers
                .send(vec![i], clock, 0..plan.warmup, settings)
                .await?;
        }
        for round in 0..plan.rounds {
            for i in round_order(publishers.0.len(), round) {
                publishers = publishers
                    .send(vec![i], clock, plan.round(round), settings)
                    .await?;
            }
        }
        Ok::<_, String>(())
    };
    if let Err(e) = sending.await {
        return all_failed(e);
    }
    outcomes(receivers, |samples, n| rounds_outcome(&plan, samples, n)).await
}

/// One broker's result of the rounds scenario.
fn rounds_outcome(plan: &RoundPlan, samples: &[Sample], received: u64) -> Result<Outcome, String> {
    let sampled: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| plan.round_of(s.sequence).is_some())
        .collect();
    let mut figures = latency_figures(&sampled, received, plan.total())?;
    let mut per_round = vec![Vec::new(); usize::try_from(plan.rounds).unwrap_or(0)];
    for sample in &sampled {
        if let Some(round) = plan.round_of(sample.sequence) {
            per_round[round].push(sample.read);
        }
    }
    let summaries: Vec<LatencySummary> = per_round
        .iter_mut()
        .filter_map(|round| LatencySummary::of(round))
        .collect();
    let median_of = |pick: fn(&LatencySummary) -> Duration| {
        let mut values: Vec<Duration> = summaries.iter().map(pick).collect();
        values.sort_unstable();
        percentile(&values, 50.0).map_or(f64::NAN, micros)
    };
    figures.push(Figure::new(
        "median round p50",
        "µs",
        median_of(|s| s.p50),
        Better::Lower,
    ));
    figures.push(Figure::new(
        "median round p99",
        "µs",
        median_of(|s| s.p99),
        Better::Lower,
    ));
    let list = |pick: fn(&LatencySummary) -> Duration| {
        summaries
            .iter()
            .map(|s| format!("{:.0}", micros(pick(s))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Ok(Outcome {
        figures,
        notes: vec![
            format!("p50 of each round (µs): {}", list(|s| s.p50)),
            format!("p99 of each round (µs): {}", list(|s| s.p99)),
        ],
    })
}

/// What the namespace probe saw.
#[derive(Debug, Default)]
struct NamespaceProbe {
    /// B received its own message: the probe can see deliveries at all.
    control_delivered: bool,
    foreign_subscribe_granted: bool,
    foreign_publish_delivered: bool,
    foreign_subscription_delivered: bool,
}

/// Checks that the namespace rule is on: device A asks to subscribe to B's namespace and
/// publishes into it, B publishes into its own; A must receive nothing and B nothing from A.
/// A broker may refuse with a SUBACK failure, by dropping the message, or by closing the
/// connection; all count as enforced.
async fn probe_namespaces(
    broker: &RunningBroker,
    pki: &ClientPki,
) -> Result<NamespaceProbe, String> {
    let [a, b] = [&pki.devices[0], &pki.devices[1]];
    let config_a = client::tls_config(&pki.ca, &a.chain, &a.key)?;
    let config_b = client::tls_config(&pki.ca, &b.chain, &b.key)?;
    let mut conn_b = Connection::open(client::tls(broker.tls, &config_b).await?, &b.id, 60).await?;
    conn_b
        .subscribe(&format!("devices/{}/#", b.id), QoS::AtMostOnce)
        .await?;
    let mut conn_a = Connection::open(client::tls(broker.tls, &config_a).await?, &a.id, 60).await?;
    let mut probe = NamespaceProbe {
        foreign_subscribe_granted: conn_a
            .subscribe(&format!("devices/{}/#", b.id), QoS::AtMostOnce)
            .await
            .is_ok(),
        ..NamespaceProbe::default()
    };
    let foreign = topic(&format!("devices/{}/from-a", b.id))?;
    let own = topic(&format!("devices/{}/from-b", b.id))?;
    conn_a.queue(&client::publish(
        &foreign,
        QoS::AtMostOnce,
        None,
        Bytes::from_static(b"a"),
    ));
    // A broker that closes the connection has refused; that is not a failure of the probe.
    let _ = conn_a.flush().await;
    conn_b.queue(&client::publish(
        &own,
        QoS::AtMostOnce,
        None,
        Bytes::from_static(b"b"),
    ));
    conn_b.flush().await?;
    let window = Duration::from_millis(500);
    let read_a = async {
        let mut got = false;
        while let Ok(Ok(packet)) = tokio::time::timeout(window, conn_a.next_packet()).await {
            got |= matches!(packet, Packet::Publish(_));
        }
        got
    };
    let read_b = async {
        let (mut from_a, mut from_b) = (false, false);
        while let Ok(Ok(packet)) = tokio::time::timeout(window, conn_b.next_packet()).await {
            if let Packet::Publish(publish) = packet {
                from_a |= publish.topic.as_ref() == Some(&foreign);
                from_b |= publish.topic.as_ref() == Some(&own);
            }
        }
        (from_a, from_b)
    };
    let (a_received, (b_received_from_a, b_received_own)) = tokio::join!(read_a, read_b);
    probe.foreign_subscription_delivered = a_received;
    probe.foreign_publish_delivered = b_received_from_a;
    probe.control_delivered = b_received_own;
    Ok(probe)
}

async fn secure_namespaces(
    broker: &RunningBroker,
    pki: &ClientPki,
    settings: &Settings,
) -> Result<Outcome, String> {
    let devices = pki
        .devices
        .get(..settings.devices)
        .ok_or_else(|| format!("only {} device certificates", pki.devices.len()))?;
    let mut notes = Vec::new();
    if devices.len() >= 2 {
        let probe = probe_namespaces(broker, pki).await?;
        let verdict = |bad: bool| {
            if bad {
                "DELIVERED (rule not enforced)"
            } else {
                "not delivered"
            }
        };
        notes.push(if probe.control_delivered {
            format!(
                "namespace probe: SUBSCRIBE to another device's namespace {}; \
                 its messages {}; PUBLISH into another device's namespace {}",
                if probe.foreign_subscribe_granted {
                    "granted"
                } else {
                    "refused"
                },
                verdict(probe.foreign_subscription_delivered),
                verdict(probe.foreign_publish_delivered),
            )
        } else {
            "namespace probe inconclusive: a device did not receive its own message within \
             500 ms"
                .to_owned()
        });
    }
    let counters = Counters::default();
    let mut tasks = JoinSet::new();
    for (index, device) in devices.iter().enumerate() {
        let config = client::tls_config(&pki.ca, &device.chain, &device.key)?;
        let stream = client::tls(broker.tls, &config).await?;
        let mut conn = Connection::open(stream, &device.id, 60).await?;
        conn.subscribe(&format!("devices/{}/#", device.id), QoS::AtMostOnce)
            .await?;
        let topic = topic(&format!("devices/{}/telemetry", device.id))?;
        let burst = Burst::new(index as u32, &topic, settings.payload_size, BURST_BYTES);
        let (io, buffered) = conn.into_parts();
        let (read_half, write_half) = tokio::io::split(io);
        tasks.spawn(count_deliveries_split(
            Reader::new(read_half, buffered),
            counters.clone(),
        ));
        tasks.spawn(flood(write_half, burst));
    }
    let figures = measure_throughput(&mut tasks, &counters, broker.pid, settings).await?;
    Ok(Outcome { figures, notes })
}

/// Which listener the idle scenario connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Tcp,
    Tls,
}

/// A connection held open and idle; only its stream is kept, and never read.
#[expect(
    dead_code,
    reason = "the streams are held only to keep the connections open"
)]
enum IdleStream {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

async fn idle(
    broker: &RunningBroker,
    pki: &ClientPki,
    settings: &Settings,
    transport: Transport,
) -> Result<Vec<Figure>, String> {
    let count = match transport {
        Transport::Tcp => settings.idle_tcp,
        Transport::Tls => settings.idle_tls,
    };
    if transport == Transport::Tls && pki.devices.len() < count {
        return Err(format!("only {} device certificates", pki.devices.len()));
    }
    let pki = Arc::new(pki.clone());
    let rss_before = procfs::rss_bytes(broker.pid)?;
    let cpu_before = procfs::cpu_time(broker.pid)?;
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..settings.connect_concurrency.max(1) {
        let next = Arc::clone(&next);
        let pki = Arc::clone(&pki);
        let (plaintext_addr, tls_addr) = (broker.plaintext, broker.tls);
        workers.spawn(async move {
            let mut held = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, String>(held);
                }
                let stream = match transport {
                    Transport::Tcp => {
                        let stream = client::tcp(plaintext_addr).await?;
                        let conn = Connection::open(stream, &format!("bench-idle-{i}"), 0).await?;
                        IdleStream::Tcp(conn.into_parts().0)
                    }
                    Transport::Tls => {
                        let device = &pki.devices[i];
                        let config = client::tls_config(&pki.ca, &device.chain, &device.key)?;
                        let stream = client::tls(tls_addr, &config).await?;
                        let conn = Connection::open(stream, &device.id, 0).await?;
                        IdleStream::Tls(Box::new(conn.into_parts().0))
                    }
                };
                held.push(stream);
            }
        });
    }
    let mut held = Vec::with_capacity(count);
    while let Some(joined) = workers.join_next().await {
        let mut streams = joined.map_err(|e| format!("connecting task: {e}"))??;
        held.append(&mut streams);
    }
    let connect_time = started.elapsed();
    // Let the broker finish whatever it does after CONNACK before reading its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = procfs::rss_bytes(broker.pid)?;
    let cpu_after = procfs::cpu_time(broker.pid)?;
    drop(held);
    let per_connection = rss_after.saturating_sub(rss_before) as f64 / count as f64;
    Ok(vec![
        Figure::new(
            "broker RSS per connection",
            "KiB",
            per_connection / 1024.0,
            Better::Lower,
        ),
        Figure::new(
            "broker RSS with all connected",
            "MiB",
            rss_after as f64 / (1024.0 * 1024.0),
            Better::Lower,
        ),
        Figure::new(
            "broker CPU per connect",
            "µs",
            (cpu_after - cpu_before).as_secs_f64() * 1e6 / count as f64,
            Better::Lower,
        ),
        Figure::new(
            "connects",
            "conn/s",
            count as f64 / connect_time.as_secs_f64(),
            Better::Neither,
        ),
    ])
}

async fn handshakes(
    broker: &RunningBroker,
    pki: &ClientPki,
    settings: &Settings,
) -> Result<Vec<Figure>, String> {
    let workers_count = settings.handshake_concurrency.max(1);
    let devices = settings.handshake_devices();
    if pki.devices.len() < devices {
        return Err(format!("only {} device certificates", pki.devices.len()));
    }
    let total = settings.handshakes;
    let next = Arc::new(AtomicUsize::new(0));
    let broker_before = procfs::cpu_time(broker.pid)?;
    let client_before = procfs::own_cpu_time()?;
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for worker in 0..workers_count {
        // Each worker takes turns with devices of its own (every `workers_count`-th): a client
        // id in use twice at once would be taken over.
        let mut own = Vec::new();
        for device in pki.devices[..devices]
            .iter()
            .skip(worker)
            .step_by(workers_count)
        {
            let config = client::tls_config(&pki.ca, &device.chain, &device.key)?;
            own.push((device.id.clone(), config));
        }
        let next = Arc::clone(&next);
        let addr = broker.tls;
        workers.spawn(async move {
            for (id, config) in own.iter().cycle() {
                if next.fetch_add(1, Ordering::Relaxed) >= total {
                    break;
                }
                let stream = client::tls(addr, config).await?;
                let conn = Connection::open(stream, id, 0).await?;
                conn.close().await?;
            }
            Ok::<_, String>(())
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|e| format!("handshake task: {e}"))??;
    }
    let elapsed = started.elapsed();
    // Let the broker tear the last connections down before reading its CPU time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let broker_cpu = procfs::cpu_time(broker.pid)? - broker_before;
    let client_cpu = procfs::own_cpu_time()? - client_before;
    Ok(vec![
        Figure::new(
            "broker CPU per handshake",
            "µs",
            broker_cpu.as_secs_f64() * 1e6 / total as f64,
            Better::Lower,
        ),
        Figure::new(
            "handshakes",
            "1/s",
            total as f64 / elapsed.as_secs_f64(),
            Better::Higher,
        ),
        Figure::new(
            "client CPU per handshake",
            "µs",
            client_cpu.as_secs_f64() * 1e6 / total as f64,
            Better::Neither,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rounds: u32) -> Settings {
        Settings {
            warmup: Duration::from_secs(2),
            window: Duration::from_secs(10),
            publishers: 4,
            payload_size: 64,
            qos1_window: 100,
            fan_out_subscribers: 100,
            latency_rate: 1000,
            latency_duration: Duration::from_secs(10),
            latency_rounds: rounds,
            devices: 8,
            idle_tcp: 10,
            idle_tls: 10,
            handshakes: 10,
            handshake_concurrency: 2,
            handshake_devices: 2,
            connect_concurrency: 2,
        }
    }

    #[test]
    fn rounds_partition_the_sequence_numbers() {
        let plan = RoundPlan::new(&settings(10));
        assert_eq!((plan.warmup, plan.settle, plan.sampled), (2000, 50, 1000));
        assert_eq!(plan.total(), 2000 + 10 * 1050);
        let mut sampled = [0u64; 10];
        let mut next = plan.warmup;
        for round in 0..plan.rounds {
            let range = plan.round(round);
            // Rounds follow each other without gaps or overlap.
            assert_eq!(range.start, next);
            next = range.end;
            for sequence in range {
                if let Some(r) = plan.round_of(sequence) {
                    assert_eq!(r as u64, round);
                    sampled[r] += 1;
                }
            }
        }
        assert_eq!(next, plan.total());
        assert!(sampled.iter().all(|&n| n == plan.sampled));
        // Warm-up, each round's settling messages and anything past the end are not sampled.
        assert_eq!(plan.round_of(0), None);
        assert_eq!(plan.round_of(plan.warmup - 1), None);
        assert_eq!(plan.round_of(plan.warmup), None);
        assert_eq!(plan.round_of(plan.warmup + plan.settle), Some(0));
        assert_eq!(plan.round_of(plan.total()), None);
    }

    #[test]
    fn shuffled_orders_are_permutations_and_spread_evenly() {
        let mut shuffle = Shuffle::seeded(7);
        let mut first = [0u32; 2];
        for _ in 0..10_000 {
            let mut order = vec![0, 1];
            shuffle.apply(&mut order);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1]);
            first[order[0]] += 1;
        }
        // Each publisher goes first in about half the periods.
        assert!(
            first.iter().all(|&n| (4_700..=5_300).contains(&n)),
            "{first:?}"
        );
    }

    #[test]
    fn every_broker_is_first_as_often_as_last() {
        assert_eq!(round_order(2, 0), vec![0, 1]);
        assert_eq!(round_order(2, 1), vec![1, 0]);
        let firsts = (0..10).filter(|&r| round_order(2, r)[0] == 0).count();
        assert_eq!(firsts, 5);
    }

    #[test]
    fn paced_latency_scenarios_plan_for_their_whole_duration() {
        let mut long = settings(10);
        long.latency_duration = Duration::from_secs(300);
        // 2 s of warm-up and 300 s sampled, and the slack for a publisher running late.
        let sending = Duration::from_secs(302);
        assert_eq!(
            Scenario::LatencyPaired.planned(&long, 2),
            sending + pacing_slack(sending)
        );
        assert_eq!(
            Scenario::Latency.planned(&long, 1),
            sending + pacing_slack(sending)
        );
        assert!(pacing_slack(sending) >= sending / 20, "room for 5 % late");
        // One broker at a time: each sends its warm-up, its rounds and their settling.
        let rounds = Scenario::LatencyRounds.planned(&long, 2);
        assert!(
            rounds >= Duration::from_secs(2 * 302),
            "rounds planned for {rounds:?}"
        );
        assert_eq!(Scenario::FanInQos0.planned(&long, 2), Duration::ZERO);
    }

    /// The "to the socket" rows need every sample stamped by the kernel; the latency rows
    /// do not.
    #[test]
    fn latency_figures_report_the_socket_only_when_every_sample_is_stamped() {
        let sample = |sequence: u64, delivered: Option<u64>| Sample {
            sequence,
            delivered: delivered.map(Duration::from_micros),
            read: Duration::from_micros(100 + sequence),
        };
        let metrics = |samples: &[Sample]| -> Vec<&'static str> {
            latency_figures(samples, 3, 4)
                .expect("figures")
                .iter()
                .map(|f| f.metric)
                .collect()
        };
        let all = [
            sample(0, Some(90)),
            sample(1, Some(91)),
            sample(2, Some(80)),
        ];
        let stamped = metrics(&all);
        assert!(stamped.contains(&"p50 to the socket"), "{stamped:?}");
        assert!(stamped.contains(&"p99 to the socket"), "{stamped:?}");
        let figures = latency_figures(&all, 3, 4).expect("figures");
        let value = |metric| figures.iter().find(|f| f.metric == metric).map(|f| f.value);
        assert_eq!(value("p50 to the socket"), Some(90.0));
        assert_eq!(value("p50 latency"), Some(101.0));
        assert_eq!(value("lost"), Some(25.0));
        let partly = [sample(0, None), sample(1, Some(91)), sample(2, Some(80))];
        let unstamped = metrics(&partly);
        assert!(
            !unstamped.iter().any(|m| m.contains("socket")),
            "{unstamped:?}"
        );
        assert!(unstamped.contains(&"p99 latency"), "{unstamped:?}");
    }

    /// The latency subscriber over a real loopback socket, against a stand-in broker that
    /// accepts the CONNECT and then writes stamped PUBLISH packets, some split across writes:
    /// every message is counted once, the warm-up ones are not sampled, each sample's
    /// kernel receive stamp comes before the subscriber's read of it, and the subscriber
    /// pings as told.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_latency_subscriber_stamps_deliveries_with_the_kernel_receive_time() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let clock = Clock::start();
        let total = 20u64;
        let (go, publish) = tokio::sync::oneshot::channel::<()>();
        let broker = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut connect = [0u8; 256];
            let n = socket.read(&mut connect).await.expect("CONNECT");
            assert!(
                n > 0 && connect[0] == 0x10,
                "the client sends CONNECT first"
            );
            socket
                .write_all(&[0x20, 0x02, 0x00, 0x00])
                .await
                .expect("CONNACK");
            publish.await.expect("the subscriber is ready");
            let latency_topic = topic("bench/latency").expect("topic");
            for sequence in 0..total {
                let stamp = Stamp {
                    publisher: 0,
                    sequence,
                    sent: clock.elapsed(),
                };
                let packet =
                    client::publish(&latency_topic, QoS::AtMostOnce, None, stamp.payload(64));
                let mut wire = bytes::BytesMut::new();
                moat_mqtt::encode(&packet, client::VERSION, &mut wire);
                if sequence % 3 == 0 {
                    // Split: the message is complete only with the second write.
                    let (head, tail) = wire.split_at(10);
                    socket.write_all(head).await.expect("write");
                    socket.flush().await.expect("flush");
                    tokio::task::yield_now().await;
                    socket.write_all(tail).await.expect("write");
                } else {
                    socket.write_all(&wire).await.expect("write");
                }
            }
            socket
        });
        let subscriber = Connection::open(client::tcp(addr).await.expect("connect"), "sub", 0)
            .await
            .expect("CONNACK");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // Pinging after every read: the stand-in broker must find PINGREQs after the run.
        let receiving = receive_stamped(subscriber, clock, (total, 5), deadline, Duration::ZERO);
        tokio::task::spawn_blocking(|| kernel_stamps_on(Instant::now() + Duration::from_secs(30)))
            .await
            .expect("the probe ran")
            .expect("the kernel stamps loopback segments");
        go.send(()).expect("the stand-in broker waits");
        let (samples, received) = receiving
            .await
            .expect("the receiving thread ran")
            .expect("received");
        let mut socket = broker.await.expect("the stand-in broker ran");
        let mut ping = [0u8; 2];
        socket.read_exact(&mut ping).await.expect("PINGREQ");
        assert_eq!(ping, [0xC0, 0x00], "the subscriber pings");
        assert_eq!(received, total);
        let sequences: Vec<u64> = samples.iter().map(|s| s.sequence).collect();
        assert_eq!(sequences, (5..total).collect::<Vec<_>>());
        for sample in &samples {
            let delivered = sample.delivered.expect("every sample is stamped");
            assert!(
                delivered <= sample.read,
                "the kernel received {sample:?} before the thread read it"
            );
            assert!(sample.read < Duration::from_secs(30), "{sample:?}");
        }
    }
}

//! The per-connection task: CONNECT deadline, then a loop that reads packets into the
//! broker's [`Connection`], writes what its [`Outbox`] releases, and enforces keep alive.

use bytes::BytesMut;
use futures_util::task::AtomicWaker;
use moat_broker::{
    Broker, Close, CloseKind, ConnectOutcome, Connection, Outbox, Outgoing, Principal, Wake,
};
use moat_mqtt::{ConnAck, ConnAckProperties, DecodeError, Packet, ProtocolVersion, ReasonCode};
use moat_types::Timestamp;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::NetStats;
use crate::events::SecurityEvents;
use crate::listener::{Admission, NetLimits};
use crate::stats::HandshakeFailure;
use crate::transport::Transport;

/// The highest durable commit sequence, published by the storage layer.
pub type Committed = watch::Receiver<u64>;

/// Longest a connection stays unread because sessions it publishes to are backed up; then
/// it is read again whatever their state (their queue limit then drops, counted).
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// The wake-up branch of the connection loop checks the keep alive on every this many
/// wake-ups: deliveries can keep it ready ahead of the keep alive timer.
const KEEP_ALIVE_CHECK_WAKE_UPS: u32 = 64;

/// Smallest read reservation, what an idle connection's read waits in (see
/// [`crate::transport::SMALL_READ`]).
const MIN_READ_HINT: usize = crate::transport::SMALL_READ;
/// Largest read reservation, reached by doubling while reads fill what was reserved.
const MAX_READ_HINT: usize = 64 * 1024;

/// Adapts the next read's reservation to the traffic: grow while reads fill it, shrink when
/// they fill less than half, so busy publishers read in large chunks and a client sending
/// one small packet at a time comes back to the smallest reservation (and its own buffer).
fn next_read_hint(hint: usize, read: usize) -> usize {
    if read >= hint {
        (hint * 4).min(MAX_READ_HINT)
    } else if read < hint / 2 {
        (hint / 2).max(MIN_READ_HINT)
    } else {
        hint
    }
}

/// A write buffer larger than this is released after a write, so that an idle connection
/// does not keep a burst-sized buffer.
const MAX_IDLE_WRITE_BUFFER: usize = 16 * 1024;

/// Most batches of deliveries (each at most the broker's poll budget, 256 messages) written
/// in one turn of a connection's loop before it reads from the client and checks its keep
/// alive again. A full queue at the default limit of 1,000 messages takes 4 batches; reading
/// after every batch instead let a client that publishes to itself read faster than it was
/// written to, and its queue overflowed.
const MAX_BATCHES_PER_TURN: u32 = 16;

/// How the broker wakes a connection's task when something is queued for it: a flag and
/// the task's waker. A wake is one atomic store and a task wake-up, with no lock; a wake that
/// comes while the task is busy is kept in the flag for its next wait.
#[derive(Default)]
struct NotifyWaker {
    pending: AtomicBool,
    task: AtomicWaker,
}

impl Wake for NotifyWaker {
    fn wake(&self) {
        self.pending.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl NotifyWaker {
    /// Completes once [`Wake::wake`] has been called since it last completed. Dropping it
    /// loses nothing.
    fn notified(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.take() {
                return Poll::Ready(());
            }
            self.task.register(cx.waker());
            // A wake between the check and the registration found no waker to wake.
            if self.take() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    fn take(&self) -> bool {
        self.pending.load(Ordering::Acquire) && self.pending.swap(false, Ordering::AcqRel)
    }

    /// Makes the next [`Self::notified`] complete at once: called by the task itself when
    /// it stops with work left, to come back to it after its other checks.
    fn again(&self) {
        self.pending.store(true, Ordering::Release);
    }
}

/// Everything a connection task needs from the listener.
#[derive(Clone)]
pub(crate) struct DriverContext {
    pub broker: Broker,
    pub limits: NetLimits,
    pub stats: Arc<NetStats>,
    pub committed: Committed,
    pub events: Arc<dyn SecurityEvents>,
    pub shield: Arc<crate::shield::Shield>,
}

/// Runs one MQTT connection to its end; `admission` (the connection's place in the shield
/// and the open count) is released when it does.
///
/// The task's own state is the transport, two buffers and a few pointers: each phase is a
/// boxed future borrowing them, so an idle connection holds only the phase it is in. This is
/// a function returning an `async move` block rather than an `async fn`: an `async fn` keeps
/// each argument twice in its state (the argument and the local it is moved to), a block
/// uses what it captured in place.
#[allow(clippy::manual_async_fn)] // an `async fn` would store its arguments twice
pub(crate) fn run<T: Transport>(
    mut io: T,
    peer: SocketAddr,
    principal: Principal,
    ctx: Arc<DriverContext>,
    admission: Admission,
) -> impl Future<Output = ()> {
    async move {
        let mut rbuf = BytesMut::new();
        let mut wbuf = BytesMut::new();
        let notify = Arc::new(NotifyWaker::default());
        let mut outbox = Outbox::new();
        let accepted = Box::pin(accept_connect(
            &mut io,
            &mut rbuf,
            &mut wbuf,
            (peer, principal),
            &notify,
            &mut outbox,
            &ctx,
        ))
        .await;
        let Some(mut conn) = accepted else {
            io.close().await;
            drop(admission);
            return;
        };
        // The CONNECT's buffer may be large (a long password, many properties); the session
        // starts from none (see `read_from_empty` in `session`).
        if rbuf.is_empty() {
            rbuf = BytesMut::new();
        }
        let connected_at = Instant::now();
        let span =
            tracing::info_span!("mqtt", client = %conn.client_id(), principal = %conn.principal());
        let close = Box::pin(session(
            &mut io,
            &mut conn,
            &mut outbox,
            &mut rbuf,
            &mut wbuf,
            &notify,
            &ctx,
        ))
        .instrument(span.clone())
        .await;
        let principal_of_closed = conn.principal().clone();
        let connection = conn.id();
        Box::pin(finish(&mut io, conn, close, &mut wbuf, &ctx))
            .instrument(span)
            .await;
        ctx.events.disconnected(
            peer,
            &principal_of_closed,
            connection,
            &close,
            connected_at.elapsed(),
        );
        drop(admission);
    }
}

/// Reads CONNECT within the deadline and asks the broker. On success the CONNACK is in
/// `outbox`; on refusal it has been written and `None` is returned.
async fn accept_connect<T: Transport>(
    io: &mut T,
    rbuf: &mut BytesMut,
    wbuf: &mut BytesMut,
    (peer, principal): (SocketAddr, Principal),
    notify: &Arc<NotifyWaker>,
    outbox: &mut Outbox,
    ctx: &DriverContext,
) -> Option<Box<Connection>> {
    let decode_limits = moat_mqtt::Limits {
        max_packet_size: ctx.broker.config().max_packet_size,
        ..moat_mqtt::Limits::default()
    };
    // CONNECT must arrive before the deadline (MQTT-3.1.4-1 allows closing otherwise).
    let deadline = Instant::now() + ctx.limits.connect_timeout;
    let connect = loop {
        match moat_mqtt::decode_connect(rbuf, &decode_limits) {
            Ok(Some(Packet::Connect(c))) => break c,
            Ok(Some(_)) => {
                ctx.stats.fail(HandshakeFailure::BadConnect);
                ctx.events.malformed_before_connect(
                    peer,
                    &principal,
                    "first packet is not CONNECT",
                );
                return None;
            }
            Ok(None) => {}
            Err(e) => {
                ctx.stats.fail(HandshakeFailure::BadConnect);
                ctx.events
                    .malformed_before_connect(peer, &principal, &e.to_string());
                if e == DecodeError::UnsupportedProtocolVersion {
                    // MQTT-3.1.2-2: CONNACK 0x01 (3.1.1 form), then close.
                    let connack = Packet::ConnAck(ConnAck {
                        session_present: false,
                        reason_code: ReasonCode::UnsupportedProtocolVersion,
                        properties: ConnAckProperties::default(),
                    });
                    moat_mqtt::encode(&connack, ProtocolVersion::V311, wbuf);
                    let _ = io.write_all_from(wbuf).await;
                }
                tracing::debug!(error = %e, "bad CONNECT");
                return None;
            }
        }
        match tokio::time::timeout_at(deadline, io.read_into(rbuf, MIN_READ_HINT)).await {
            Ok(Ok(n)) if n > 0 => {
                ctx.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(_) => {
                ctx.events.closed_before_connect(peer);
                return None;
            }
            Err(_) => {
                // One deadline for the whole CONNECT, however slowly its bytes arrive.
                ctx.stats.fail(HandshakeFailure::ConnectTimeout);
                ctx.events.deadline_missed(peer, "CONNECT");
                return None;
            }
        }
    };
    let protocol = connect.protocol;
    let client_id = connect.client_id.clone();
    let device = match &principal {
        Principal::Device(id) => Some(id.as_str()),
        _ => None,
    };
    if ctx
        .shield
        .bans()
        .identity_banned(device, &client_id, crate::listener::now_ms())
    {
        // MQTT 5: 0x8A Banned; MQTT 3.1.1 has no such code and gets 0x05 "not authorized".
        tracing::info!(%principal, "connection refused: banned");
        ctx.events
            .connect_refused(peer, &principal, &client_id, ReasonCode::Banned);
        crate::listener::authentication_failed(ctx, peer, device);
        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::Banned,
            properties: ConnAckProperties::default(),
        });
        moat_mqtt::encode(&connack, protocol, wbuf);
        let _ = io.write_all_from(wbuf).await;
        return None;
    }
    let waker: Arc<dyn Wake> = notify.clone();
    let outcome = ctx
        .broker
        .connect(*connect, principal.clone(), waker, Timestamp::now());
    match outcome {
        ConnectOutcome::Refused { connack, reason } => {
            tracing::info!(%principal, ?reason, "connection refused");
            ctx.events
                .connect_refused(peer, &principal, &client_id, reason);
            if reason == ReasonCode::NotAuthorized {
                // Not authorized or a client id that is not the certificate's: counted against
                // the address and, for a device (its identity is proven), against the device.
                let device = match &principal {
                    Principal::Device(id) => Some(id.as_str()),
                    _ => None,
                };
                crate::listener::authentication_failed(ctx, peer, device);
            }
            moat_mqtt::encode(&Packet::ConnAck(connack), protocol, wbuf);
            let _ = io.write_all_from(wbuf).await;
            None
        }
        ConnectOutcome::Accepted {
            connection,
            connack,
            commit,
        } => {
            tracing::debug!(session_present = connack.session_present, "connected");
            ctx.events.connected(
                peer,
                connection.principal(),
                connection.client_id(),
                connection.id(),
            );
            outbox.push(Packet::ConnAck(connack), commit);
            Some(connection)
        }
    }
}

/// Counts why the connection ended, sends DISCONNECT where the protocol allows, closes the
/// transport and hands the session back to the broker.
async fn finish<T: Transport>(
    io: &mut T,
    mut conn: Box<Connection>,
    close: Close,
    wbuf: &mut BytesMut,
    ctx: &DriverContext,
) {
    // Subscribers this connection's last messages went to are woken before anything here
    // can wait on the peer.
    conn.flush_wakes();
    match close.kind {
        CloseKind::Violation => {
            ctx.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        }
        CloseKind::Lost if close.reason == ReasonCode::KeepAliveTimeout => {
            ctx.stats
                .keep_alive_timeouts
                .fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    tracing::debug!(reason = ?close.reason, kind = ?close.kind, "closing");
    if let Some(packet) = conn.disconnect_packet(&close) {
        wbuf.clear();
        moat_mqtt::encode(&packet, conn.protocol(), wbuf);
        let n = wbuf.len();
        let write = tokio::time::timeout(ctx.limits.write_timeout, io.write_all_from(wbuf));
        if let Ok(Ok(())) = write.await {
            ctx.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    // The session is released before the polite close, which waits on the peer (a TLS
    // close_notify cannot be flushed to a peer that stopped reading) and is bounded.
    conn.closed(&close, Timestamp::now());
    let _ = tokio::time::timeout(ctx.limits.write_timeout, io.close()).await;
}

/// Writes all of `wbuf`; false if the write failed or the peer took longer than `limit` to
/// accept it. Most writes complete at once, and those skip the timer.
async fn write_bounded<T: Transport>(io: &mut T, wbuf: &mut BytesMut, limit: Duration) -> bool {
    let mut write = std::pin::pin!(io.write_all_from(wbuf));
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(result) => result.is_ok(),
        Poll::Pending => matches!(tokio::time::timeout(limit, write).await, Ok(Ok(()))),
    }
}

/// The connected phase. Returns why it ended.
#[allow(clippy::manual_async_fn)] // an `async fn` would store its arguments twice
fn session<T: Transport>(
    io: &mut T,
    conn: &mut Connection,
    outbox: &mut Outbox,
    rbuf: &mut BytesMut,
    wbuf: &mut BytesMut,
    notify: &NotifyWaker,
    ctx: &DriverContext,
) -> impl Future<Output = Close> {
    async move {
        let limits = conn.decode_limits();
        let protocol = conn.protocol();
        let keep_alive = conn.keep_alive_timeout();
        let mut committed = ctx.committed.clone();
        let mut last_heard = Instant::now();
        let mut read_hint = MIN_READ_HINT;
        let mut paused_since: Option<Instant> = None;
        // One timer for the connection's life, re-armed only when it fires early, rather than a
        // new timer registration per loop turn.
        let keep_alive_timer = tokio::time::sleep_until(last_heard + keep_alive);
        tokio::pin!(keep_alive_timer);
        // Allocated the first time a rate quota throttles the connection (most never are: an
        // idle connection does not carry a second timer).
        let mut throttle_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut wake_ups: u32 = 0;
        // Whether the bytes in the read buffer came from a read into an empty one. Only such
        // a buffer, when it is also minimal, is kept after its packets are decoded: an empty
        // buffer's spare room is either a fresh reservation or the tail of a buffer kept the
        // same way, never the tail of a large buffer, which would stay allocated.
        let mut read_from_empty = false;
        loop {
            // One clock reading per turn of the loop, for the packets handled and the first
            // batch written; a later batch, after a write that may have waited, reads it again.
            let mut now = Timestamp::now();
            // Handle what has been read, stopping as soon as a session this client publishes
            // to is backed up: the rest waits in the buffer until it drains.
            let mut stopped_early = false;
            if !conn.is_paused() {
                let mut decoded = false;
                let batch_capacity = rbuf.capacity();
                loop {
                    if conn.has_congestion() || conn.is_throttled() {
                        stopped_early = true;
                        break;
                    }
                    match moat_mqtt::decode(rbuf, protocol, &limits) {
                        Ok(Some(packet)) => {
                            decoded = true;
                            if let Err(close) = conn.handle(packet, now, outbox) {
                                return close;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "decode error");
                            return Close::violation(e.reason_code());
                        }
                    }
                }
                conn.flush_wakes();
                // Decoded payloads share the read buffer's allocation until delivered, so an
                // emptied buffer is let go (the next read allocates one) rather than pinning
                // them, unless it is a minimal one: a client sending small packets now and
                // then keeps its one small buffer, which the next read takes back whole once
                // the payloads cut from it are delivered, instead of allocating a buffer per
                // packet. A buffer nothing was decoded from, only reserved by a read that
                // found no bytes (a turn woken for a delivery), is kept: it holds what the
                // next read would reserve anyway.
                let minimal = read_from_empty && batch_capacity <= MIN_READ_HINT;
                if rbuf.is_empty() && ((decoded && !minimal) || rbuf.capacity() > read_hint) {
                    *rbuf = BytesMut::new();
                }
            }
            // Move what is ready into the write buffer and write it, a batch at a time.
            let mut batches = 0;
            let mut more_to_write = false;
            loop {
                batches += 1;
                let more = match conn.poll_outbound(now, outbox) {
                    Ok(more) => more,
                    Err(close) => return close,
                };
                let done = *committed.borrow();
                outbox.take_direct(wbuf);
                while let Some(out) = outbox.pop_ready(done) {
                    match out {
                        Outgoing::Packet(packet) => moat_mqtt::encode(&packet, protocol, wbuf),
                        Outgoing::Encoded(bytes) => wbuf.extend_from_slice(&bytes),
                    }
                }
                if !wbuf.is_empty() {
                    let n = wbuf.len();
                    if !write_bounded(io, wbuf, ctx.limits.write_timeout).await {
                        return Close::lost(ReasonCode::UnspecifiedError);
                    }
                    ctx.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    if wbuf.capacity() > MAX_IDLE_WRITE_BUFFER {
                        *wbuf = BytesMut::new();
                    }
                }
                if !more {
                    break;
                }
                if batches == MAX_BATCHES_PER_TURN {
                    // The rest is written after a turn through the wait below, which reads
                    // from the client first and checks its keep alive. A queue that refills
                    // as fast as it drains would otherwise keep this loop writing forever,
                    // with the client unread and its keep alive never checked.
                    notify.again();
                    more_to_write = true;
                    break;
                }
                now = Timestamp::now();
            }
            outbox.release_if_empty();
            // One reading of the commit watermark for both questions: a commit that lands after
            // the packets above were popped makes the head ready now, and it must be written
            // now, not after the next read (waiting on the socket would leave a CONNACK or
            // PUBACK unsent until the client gives up).
            let now_committed = *committed.borrow();
            let waiting_commit = outbox.blocked_on(now_committed).is_some();
            if !waiting_commit && !outbox.is_empty() {
                continue;
            }
            // Rate quotas: while the client is over its messages or bytes per second, its
            // socket is not read either (nothing is lost; TCP slows the client down), and its
            // keep alive is not held against it.
            let throttled = if conn.is_throttled() {
                conn.throttled_for(Timestamp::now())
            } else {
                None
            };
            if let Some(wait) = throttled {
                // Packets already read wait behind the quota: the client offers more than it
                // may. Counted as held time (once per stretch), which the detection engine
                // reads as offered load it cannot see.
                if !rbuf.is_empty() {
                    conn.note_held(Timestamp::now());
                }
                let until = Instant::now() + wait;
                match &mut throttle_timer {
                    Some(t) => t.as_mut().reset(until),
                    None => throttle_timer = Some(Box::pin(tokio::time::sleep_until(until))),
                }
                last_heard = Instant::now();
            }
            // Flow control: while sessions this client publishes to are backed up, its socket is
            // not read (TCP pushes back on it) and its keep alive is not held against it.
            let mut paused = conn.is_paused();
            if !paused {
                paused_since = None;
            }
            if paused {
                let since = *paused_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= MAX_PAUSE {
                    // Backstop: a cycle of clients publishing to each other can hold each
                    // other paused; read again and let the queue limit decide.
                    conn.clear_congestion();
                    paused = false;
                    paused_since = None;
                    continue;
                }
                last_heard = Instant::now();
            } else if stopped_early && throttled.is_none() {
                // The congestion cleared already: handle the rest of the buffer before reading.
                continue;
            }
            let reading = !paused && throttled.is_none();
            let empty_before_read = rbuf.is_empty();

            // Biased: polled in this order, with no random draw. Every turn of the loop handles
            // the read buffer and the outbox whatever woke it, so an earlier branch that is
            // always ready starves nothing but the keep alive timer, which the wake-up branch
            // checks itself.
            tokio::select! {
                biased;
                read = io.read_into(rbuf, read_hint), if reading => {
                    match read {
                        Ok(0) | Err(_) => return Close::lost(ReasonCode::UnspecifiedError),
                        Ok(n) => {
                            read_from_empty = empty_before_read;
                            read_hint = next_read_hint(read_hint, n);
                            ctx.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                            last_heard = Instant::now();
                        }
                    }
                }
                () = notify.notified() => {
                    // Deliveries can keep this branch ready on every turn, and it comes
                    // before the keep alive timer: check the keep alive here as well, on
                    // every 64th wake-up (a clock read per delivery would cost more), and
                    // after every turn that stopped writing with more to write (the read
                    // above found nothing from the client).
                    wake_ups = wake_ups.wrapping_add(1);
                    if reading
                        && (more_to_write || wake_ups.is_multiple_of(KEEP_ALIVE_CHECK_WAKE_UPS))
                        && Instant::now() >= last_heard + keep_alive
                    {
                        return Close::lost(ReasonCode::KeepAliveTimeout);
                    }
                }
                changed = committed.changed(), if waiting_commit => {
                    if changed.is_err() {
                        return Close {
                            reason: ReasonCode::ServerUnavailable,
                            kind: CloseKind::Kicked,
                        };
                    }
                }
                () = async {
                    match throttle_timer.as_mut() {
                        Some(t) => t.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if throttled.is_some() => {}
                () = &mut keep_alive_timer, if reading => {
                    // Re-armed lazily: reads only record when they happened.
                    let deadline = last_heard + keep_alive;
                    if deadline > Instant::now() {
                        keep_alive_timer.as_mut().reset(deadline);
                    } else {
                        return Close::lost(ReasonCode::KeepAliveTimeout);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose reads once came together in a larger one returns to the smallest
    /// reservation, the one whose read waits in its own buffer; reads that fill the
    /// reservation grow it up to the maximum.
    #[test]
    fn the_read_reservation_follows_the_reads() {
        let mut hint = MIN_READ_HINT;
        // Two 81-byte packets read together, then one at a time.
        hint = next_read_hint(hint, 162);
        assert!(hint > MIN_READ_HINT);
        for _ in 0..8 {
            hint = next_read_hint(hint, 81);
        }
        assert_eq!(hint, MIN_READ_HINT);
        for _ in 0..16 {
            hint = next_read_hint(hint, hint);
        }
        assert_eq!(hint, MAX_READ_HINT);
        // Reads that fill more than half keep it; less than half halve it.
        assert_eq!(
            next_read_hint(MAX_READ_HINT, MAX_READ_HINT / 2),
            MAX_READ_HINT
        );
        assert_eq!(
            next_read_hint(MAX_READ_HINT, MAX_READ_HINT / 2 - 1),
            MAX_READ_HINT / 2
        );
        assert_eq!(next_read_hint(MIN_READ_HINT, 1), MIN_READ_HINT);
    }
}

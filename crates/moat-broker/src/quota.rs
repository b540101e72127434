//! Enforcing a connection's rate quotas (`messages_per_second`, `bytes_per_second`) without
//! losing messages: a publish that overdraws a token bucket is still handled, and the
//! connection is then not read until the bucket is back to zero. TCP pushes back on the
//! client, which is slowed to its quota; nothing it sent is dropped.
//!
//! Each bucket holds at most one second's worth of tokens (the burst), so a device that was
//! quiet may send one second's quota at once, then its rate.

use moat_types::{Quota, QuotaLimit, Timestamp};
use std::time::Duration;

/// One token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens added per millisecond.
    per_ms: f64,
    /// Most tokens held: one second's worth.
    capacity: f64,
    /// Tokens now; negative while in debt.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Timestamp,
}

impl Bucket {
    fn new(per_second: u32, now: Timestamp) -> Self {
        let capacity = f64::from(per_second.max(1));
        Self {
            per_ms: capacity / 1000.0,
            capacity,
            tokens: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Timestamp) {
        let elapsed = now.as_millis().saturating_sub(self.at.as_millis());
        if elapsed > 0 {
            // u64 → f64 loses precision only beyond 2^53 ms, far past any real gap.
            self.tokens = (self.tokens + elapsed as f64 * self.per_ms).min(self.capacity);
            self.at = now;
        }
    }

    /// Takes `cost` tokens; returns how long until the bucket is out of debt (zero if it is
    /// not in debt).
    fn take(&mut self, cost: f64, now: Timestamp) -> Duration {
        self.refill(now);
        self.tokens -= cost;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            // Rounded up, so that the connection is read again only once the debt is paid.
            Duration::from_millis((-self.tokens / self.per_ms).ceil() as u64)
        }
    }
}

/// The rate quotas of one connection: nothing at all (one null pointer) when its quota sets
/// no rate, which is most connections.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rates(Option<Box<Buckets>>);

/// The token buckets of a connection with a rate quota.
#[derive(Debug, Clone, Default)]
struct Buckets {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    /// While throttled: until when, and which limit caused it.
    throttled: Option<(Timestamp, QuotaLimit)>,
    /// The end of the throttled time already counted as held ([`Rates::held`]).
    held_until: Timestamp,
}

impl Rates {
    /// Buckets for `quota`'s rates, full.
    pub(crate) fn new(quota: &Quota, now: Timestamp) -> Self {
        if quota.messages_per_second.is_none() && quota.bytes_per_second.is_none() {
            return Self(None);
        }
        Self(Some(Box::new(Buckets {
            messages: quota.messages_per_second.map(|r| Bucket::new(r, now)),
            bytes: quota.bytes_per_second.map(|r| Bucket::new(r, now)),
            throttled: None,
            held_until: now,
        })))
    }

    /// Whether any rate is limited (when not, publishes skip this module).
    pub(crate) fn is_limited(&self) -> bool {
        self.0.is_some()
    }

    /// Charges one PUBLISH of `payload` bytes. Returns the limit that newly throttles the
    /// connection, if this publish started a throttling episode.
    pub(crate) fn charge(&mut self, payload: usize, now: Timestamp) -> Option<QuotaLimit> {
        self.0.as_mut()?.charge(payload, now)
    }

    /// How long the connection must stay unread, if it is throttled at `now`. Ends the
    /// episode once it is over.
    pub(crate) fn throttled_for(&mut self, now: Timestamp) -> Option<Duration> {
        self.0.as_mut()?.throttled_for(now)
    }

    /// The driver holds the connection unread at `now` with packets waiting: the part of the
    /// throttle not counted before (zero when not throttled, or when asked again within the
    /// same stretch), so that held time adds up to the time actually held.
    pub(crate) fn held(&mut self, now: Timestamp) -> Duration {
        let Some(b) = self.0.as_mut() else {
            return Duration::ZERO;
        };
        let Some((until, _)) = b.throttled else {
            return Duration::ZERO;
        };
        let from = now.max(b.held_until);
        b.held_until = b.held_until.max(until);
        until.saturating_since(from)
    }

    /// Whether a throttling episode is under way (cheap; no clock).
    pub(crate) fn is_throttled(&self) -> bool {
        self.0.as_ref().is_some_and(|b| b.throttled.is_some())
    }
}

impl Buckets {
    fn charge(&mut self, payload: usize, now: Timestamp) -> Option<QuotaLimit> {
        let mut wait = Duration::ZERO;
        let mut cause = None;
        if let Some(b) = &mut self.messages {
            let w = b.take(1.0, now);
            if w > wait {
                wait = w;
                cause = Some(QuotaLimit::MessagesPerSecond);
            }
        }
        if let Some(b) = &mut self.bytes {
            // usize → f64 is exact for any payload MQTT allows (< 2^28 bytes).
            let w = b.take(payload as f64, now);
            if w > wait {
                wait = w;
                cause = Some(QuotaLimit::BytesPerSecond);
            }
        }
        let cause = cause?;
        let until = now.saturating_add(wait);
        let started = self.throttled.is_none();
        match &mut self.throttled {
            Some((t, _)) if *t >= until => {}
            slot => *slot = Some((until, cause)),
        }
        started.then_some(cause)
    }

    fn throttled_for(&mut self, now: Timestamp) -> Option<Duration> {
        let (until, _) = self.throttled?;
        if until <= now {
            self.throttled = None;
            return None;
        }
        Some(until.saturating_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let quota = Quota {
            messages_per_second: Some(10),
            ..Quota::UNLIMITED
        };
        let mut r = Rates::new(&quota, at(0));
        for _ in 0..10 {
            assert_eq!(r.charge(1, at(0)), None);
        }
        assert!(!r.is_throttled());
        // The 11th message overdraws by one token: 100 ms at 10 per second.
        assert_eq!(r.charge(1, at(0)), Some(QuotaLimit::MessagesPerSecond));
        assert_eq!(r.throttled_for(at(0)), Some(Duration::from_millis(100)));
        assert_eq!(r.throttled_for(at(60)), Some(Duration::from_millis(40)));
        // A further charge during the episode extends it without starting a new one.
        assert_eq!(r.charge(1, at(60)), None);
        assert_eq!(r.throttled_for(at(60)), Some(Duration::from_millis(140)));
        assert_eq!(r.throttled_for(at(200)), None);
        assert!(!r.is_throttled());
    }

    #[test]
    fn held_time_counts_each_stretch_of_a_throttle_once() {
        let quota = Quota {
            messages_per_second: Some(10),
            ..Quota::UNLIMITED
        };
        let mut r = Rates::new(&quota, at(0));
        assert_eq!(r.held(at(0)), Duration::ZERO, "not throttled");
        for _ in 0..11 {
            r.charge(1, at(0));
        }
        assert_eq!(r.held(at(0)), Duration::from_millis(100));
        // Asked again within the same stretch (the driver woke for something else).
        assert_eq!(r.held(at(40)), Duration::ZERO);
        // Extended by a further charge (0.6 tokens of debt left at 40 ms, one more taken):
        // only the extension counts.
        r.charge(1, at(40));
        assert_eq!(r.held(at(40)), Duration::from_millis(100));
        assert_eq!(r.throttled_for(at(300)), None);
        assert_eq!(r.held(at(300)), Duration::ZERO);
        assert_eq!(
            Rates::new(&Quota::UNLIMITED, at(0)).held(at(0)),
            Duration::ZERO
        );
    }

    #[test]
    fn bytes_throttle_in_proportion_to_the_payload() {
        let quota = Quota {
            bytes_per_second: Some(1000),
            ..Quota::UNLIMITED
        };
        let mut r = Rates::new(&quota, at(0));
        assert_eq!(r.charge(1000, at(0)), None);
        assert_eq!(r.charge(500, at(0)), Some(QuotaLimit::BytesPerSecond));
        assert_eq!(r.throttled_for(at(0)), Some(Duration::from_millis(500)));
        // Refilled after the wait, but never above one second's worth.
        assert_eq!(r.throttled_for(at(10_000)), None);
        assert_eq!(r.charge(1000, at(10_000)), None);
        assert_eq!(r.charge(1, at(10_000)), Some(QuotaLimit::BytesPerSecond));
    }

    #[test]
    fn sustained_rate_matches_the_quota() {
        // A client that sends whenever it is allowed to gets its quota, not more.
        let quota = Quota {
            messages_per_second: Some(50),
            ..Quota::UNLIMITED
        };
        let mut r = Rates::new(&quota, at(0));
        let mut now = 0;
        let mut sent = 0u32;
        while now < 10_000 {
            match r.throttled_for(at(now)) {
                Some(wait) => now += u64::try_from(wait.as_millis()).expect("small"),
                None => {
                    r.charge(10, at(now));
                    sent += 1;
                }
            }
        }
        // 50 a second for 10 s, plus the initial burst of one second's worth.
        assert!((549..=551).contains(&sent), "{sent}");
    }

    #[test]
    fn unlimited_is_not_limited() {
        let r = Rates::new(&Quota::UNLIMITED, at(0));
        assert!(!r.is_limited());
    }
}

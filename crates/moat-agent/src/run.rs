//! The renewal loop of `moat-agent run`: sleep until renewal is due (plus a random delay),
//! renew, and on failure retry with exponential backoff. Errors are logged, never fatal: a
//! device that cannot reach its hub today may reach it tomorrow, before its certificate
//! expires.
//!
//! ```text
//!   read status --not due--> sleep min(time to due + jitter, MAX_SLEEP) --> read status
//!        |                                                                    ^
//!        +--due--> renew --ok----> sleep MIN_RETRY_DELAY ----------------------+
//!                     +--error--> sleep backoff (MIN_RETRY_DELAY doubling, capped) +
//! ```

use std::convert::Infallible;
use std::path::Path;
use std::time::Duration;

use time::OffsetDateTime;

use crate::lifecycle::{Overrides, RenewMode, RenewOutcome, renew_with, status};

/// First retry delay after a failure, and the pause after a successful renewal (so that a
/// hub issuing certificates that are due at once cannot make the loop spin): 30 s.
pub const MIN_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Longest retry delay: 1 h. The delay doubles per consecutive failure up to this.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// Longest single sleep: 1 h. The loop wakes at least this often to re-read the certificate
/// and the wall clock (a device may suspend, its clock may be set, a file may be replaced).
pub const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// Most random delay added to a certificate's due time, so that devices enrolled together do
/// not all renew in the same second: 15 min, and never more than a tenth of the time between
/// the due time and expiry.
pub const MAX_RENEWAL_JITTER: Duration = Duration::from_secs(15 * 60);

/// A uniformly random duration below `bound` (zero if the system has no randomness).
pub(crate) fn random_below(bound: Duration) -> Duration {
    let bound_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
    if bound_ms == 0 {
        return Duration::ZERO;
    }
    let mut bytes = [0u8; 8];
    if crate::provider().secure_random.fill(&mut bytes).is_err() {
        return Duration::ZERO;
    }
    Duration::from_millis(u64::from_le_bytes(bytes) % bound_ms)
}

/// The delay before retry number `failures` (1 = first): `MIN_RETRY_DELAY * 2^(failures-1)`
/// plus up to a quarter of it at random, capped at [`MAX_RETRY_DELAY`].
pub fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = MIN_RETRY_DELAY
        .saturating_mul(1 << doublings)
        .min(MAX_RETRY_DELAY);
    (base + random_below(base / 4)).min(MAX_RETRY_DELAY)
}

/// The jitter for one certificate, fixed per serial so the due time does not move on every
/// wake-up.
fn jitter_for(schedule: &crate::RenewalSchedule) -> Duration {
    let window = std::time::Duration::try_from(schedule.not_after - schedule.due_at)
        .unwrap_or_default()
        / 10;
    random_below(window.min(MAX_RENEWAL_JITTER))
}

/// Runs the renewal loop for the identity in `dir` until the future is dropped. Never
/// returns; every error is logged and retried.
pub async fn run(dir: &Path, overrides: &Overrides) -> Infallible {
    let mut failures: u32 = 0;
    let mut jitter: Option<(String, Duration)> = None;
    loop {
        let wait = match status(dir, overrides) {
            Err(e) => {
                failures = failures.saturating_add(1);
                let retry = retry_delay(failures);
                tracing::warn!(error = %e, retry_in = ?retry, "cannot read the identity");
                retry
            }
            Ok(st) => {
                let extra = match &jitter {
                    Some((serial, j)) if *serial == st.identity.serial => *j,
                    _ => {
                        let j = jitter_for(&st.schedule);
                        jitter = Some((st.identity.serial.clone(), j));
                        j
                    }
                };
                let due_at = st.schedule.due_at + extra;
                let now = OffsetDateTime::now_utc();
                if now < due_at {
                    let until = std::time::Duration::try_from(due_at - now).unwrap_or_default();
                    tracing::debug!(
                        device = %st.identity.device_id,
                        serial = %st.identity.serial,
                        due_at = %crate::format_utc(due_at),
                        "renewal not due"
                    );
                    until.min(MAX_SLEEP)
                } else {
                    match renew_with(dir, RenewMode::Now, overrides).await {
                        Ok(RenewOutcome::Renewed { .. } | RenewOutcome::NotDue { .. }) => {
                            failures = 0;
                            MIN_RETRY_DELAY
                        }
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            let retry = retry_delay(failures);
                            tracing::warn!(
                                device = %st.identity.device_id,
                                error = %e,
                                failures,
                                retry_in = ?retry,
                                "renewal failed"
                            );
                            retry
                        }
                    }
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        for (failures, low) in [(1, 30), (2, 60), (3, 120), (7, 1920)] {
            let d = retry_delay(failures);
            let low = Duration::from_secs(low);
            assert!(d >= low && d <= low + low / 4, "{failures}: {d:?}");
        }
        for failures in [8, 9, 20, u32::MAX] {
            assert!(retry_delay(failures) <= MAX_RETRY_DELAY);
            assert!(retry_delay(failures) >= MAX_RETRY_DELAY * 3 / 4);
        }
    }

    #[test]
    fn jitter_stays_small_and_before_expiry() -> Result<(), crate::ScheduleError> {
        let start = OffsetDateTime::UNIX_EPOCH;
        let s = crate::RenewalSchedule::new(
            start,
            start + time::Duration::days(30),
            crate::RenewalThreshold::DEFAULT,
        )?;
        let short = crate::RenewalSchedule::new(
            start,
            start + time::Duration::minutes(30),
            crate::RenewalThreshold::DEFAULT,
        )?;
        for _ in 0..100 {
            assert!(jitter_for(&s) < MAX_RENEWAL_JITTER);
            assert!(jitter_for(&short) < Duration::from_secs(60));
        }
        assert!(random_below(Duration::ZERO).is_zero());
        Ok(())
    }
}

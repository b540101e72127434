//! When a certificate is due for renewal. Pure arithmetic on validity dates and `now`: no
//! clock, no I/O.
//!
//! A certificate is due once less than a fraction of its lifetime remains (by default
//! [`RenewalThreshold::DEFAULT`], a third): with Moat's 30-day certificates that is ten days
//! before expiry, time enough for a device that is offline for a week to still renew over
//! mutual TLS with a valid certificate.

use std::fmt;
use std::str::FromStr;

use time::{Duration, OffsetDateTime};

/// Why a threshold or a validity period is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// Not a fraction strictly between 0 and 1.
    #[error("renewal threshold {0:?} is not a fraction between 0 and 1 (like 1/3 or 25%)")]
    BadThreshold(String),
    /// The certificate's `notAfter` is not after its `notBefore`.
    #[error("the certificate's validity period is empty (notAfter is not after notBefore)")]
    EmptyValidity,
}

/// The fraction of a certificate's lifetime that may remain before renewal is due: renew
/// when less than `numerator / denominator` of it is left. Always strictly between 0 and 1.
///
/// Written `1/3` or `33%` on the command line and in `agent.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalThreshold {
    numerator: u32,
    denominator: u32,
}

impl RenewalThreshold {
    /// One third of the lifetime: ten days for a 30-day certificate.
    pub const DEFAULT: RenewalThreshold = RenewalThreshold {
        numerator: 1,
        denominator: 3,
    };
    /// Largest denominator accepted (keeps the arithmetic far from overflow).
    pub const MAX_DENOMINATOR: u32 = 1_000_000;

    /// `numerator / denominator`, which must be strictly between 0 and 1; kept in lowest
    /// terms, so `25%` equals `1/4`.
    pub fn new(numerator: u32, denominator: u32) -> Result<Self, ScheduleError> {
        if numerator == 0 || numerator >= denominator || denominator > Self::MAX_DENOMINATOR {
            return Err(ScheduleError::BadThreshold(format!(
                "{numerator}/{denominator}"
            )));
        }
        let (mut a, mut b) = (numerator, denominator);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        Ok(RenewalThreshold {
            numerator: numerator / a,
            denominator: denominator / a,
        })
    }

    /// Parses `N/D` or `P%`.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let bad = || ScheduleError::BadThreshold(text.chars().take(32).collect());
        let t = text.trim();
        let (n, d) = if let Some(p) = t.strip_suffix('%') {
            (p.trim().parse().map_err(|_| bad())?, 100)
        } else {
            let (n, d) = t.split_once('/').ok_or_else(bad)?;
            (
                n.trim().parse().map_err(|_| bad())?,
                d.trim().parse().map_err(|_| bad())?,
            )
        };
        Self::new(n, d).map_err(|_| bad())
    }

    /// How long before `not_after` renewal becomes due for a certificate living `lifetime`.
    fn lead(self, lifetime: Duration) -> Duration {
        // Whole seconds in i128: a lifetime of i64::MAX seconds times MAX_DENOMINATOR fits.
        let secs = i128::from(lifetime.whole_seconds()) * i128::from(self.numerator)
            / i128::from(self.denominator);
        // The quotient is at most the lifetime, which came from an i64.
        Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX))
    }
}

impl Default for RenewalThreshold {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for RenewalThreshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.numerator, self.denominator)
    }
}

impl FromStr for RenewalThreshold {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A certificate's validity and the moment its renewal falls due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalSchedule {
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// From this moment on, less than the threshold's fraction of the lifetime remains.
    pub due_at: OffsetDateTime,
}

impl RenewalSchedule {
    /// The schedule of a certificate valid from `not_before` to `not_after`.
    pub fn new(
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        threshold: RenewalThreshold,
    ) -> Result<Self, ScheduleError> {
        if not_after <= not_before {
            return Err(ScheduleError::EmptyValidity);
        }
        let due_at = not_after
            .checked_sub(threshold.lead(not_after - not_before))
            .unwrap_or(not_before);
        Ok(RenewalSchedule {
            not_before,
            not_after,
            due_at,
        })
    }

    /// Whether renewal is due at `now` (also when the certificate has expired already).
    pub fn is_due(&self, now: OffsetDateTime) -> bool {
        now >= self.due_at
    }

    /// Whether the certificate has expired at `now` (renewal over mutual TLS is then
    /// impossible: the device must enroll again with a new token).
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        now > self.not_after
    }

    /// Time from `now` until renewal is due; zero when due.
    pub fn time_until_due(&self, now: OffsetDateTime) -> std::time::Duration {
        std::time::Duration::try_from(self.due_at - now).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::seconds(secs)
    }

    const DAY: i64 = 86_400;

    #[test]
    fn a_thirty_day_certificate_is_due_ten_days_before_expiry() -> Result<(), ScheduleError> {
        let s = RenewalSchedule::new(at(0), at(30 * DAY), RenewalThreshold::DEFAULT)?;
        assert_eq!(s.due_at, at(20 * DAY));
        assert!(!s.is_due(at(0)));
        assert!(!s.is_due(at(20 * DAY - 1)));
        assert!(s.is_due(at(20 * DAY)));
        assert!(s.is_due(at(31 * DAY)), "an expired certificate is due");
        assert!(s.is_expired(at(30 * DAY + 1)));
        assert!(!s.is_expired(at(30 * DAY)));
        assert_eq!(
            s.time_until_due(at(19 * DAY)),
            std::time::Duration::from_secs(DAY as u64)
        );
        assert_eq!(s.time_until_due(at(25 * DAY)), std::time::Duration::ZERO);
        Ok(())
    }

    #[test]
    fn thresholds_parse_as_fractions_or_percentages() -> Result<(), ScheduleError> {
        assert_eq!(RenewalThreshold::parse("1/3")?, RenewalThreshold::DEFAULT);
        assert_eq!(
            RenewalThreshold::parse(" 1 / 3 ")?,
            RenewalThreshold::DEFAULT
        );
        assert_eq!(
            RenewalThreshold::parse("25%")?,
            RenewalThreshold::new(1, 4)?
        );
        let s = RenewalSchedule::new(at(0), at(100), RenewalThreshold::parse("25%")?)?;
        assert_eq!(s.due_at, at(75));
        for bad in [
            "0/3",
            "3/3",
            "4/3",
            "1/0",
            "0%",
            "100%",
            "abc",
            "",
            "1/",
            "-1/3",
            "1/9999999",
        ] {
            assert!(RenewalThreshold::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(RenewalThreshold::DEFAULT.to_string(), "1/3");
        Ok(())
    }

    #[test]
    fn empty_or_inverted_validity_is_an_error() {
        assert_eq!(
            RenewalSchedule::new(at(10), at(10), RenewalThreshold::DEFAULT),
            Err(ScheduleError::EmptyValidity)
        );
        assert_eq!(
            RenewalSchedule::new(at(10), at(5), RenewalThreshold::DEFAULT),
            Err(ScheduleError::EmptyValidity)
        );
    }

    #[test]
    fn extreme_validity_does_not_overflow() -> Result<(), ScheduleError> {
        let s = RenewalSchedule::new(
            OffsetDateTime::new_utc(time::Date::MIN, time::Time::MIDNIGHT),
            OffsetDateTime::new_utc(time::Date::MAX, time::Time::MIDNIGHT),
            RenewalThreshold::new(999_999, 1_000_000)?,
        )?;
        assert!(s.due_at > s.not_before && s.due_at < s.not_after);
        Ok(())
    }
}

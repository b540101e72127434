//! Pure arithmetic on measurements: percentiles and the duration syntax of the flags.

use std::time::Duration;

/// Latency summary of a sample set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencySummary {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl LatencySummary {
    /// Summarises `samples` (sorted in place). `None` when there are no samples.
    pub fn of(samples: &mut [Duration]) -> Option<Self> {
        samples.sort_unstable();
        Some(Self {
            p50: percentile(samples, 50.0)?,
            p99: percentile(samples, 99.0)?,
            max: *samples.last()?,
        })
    }
}

/// Nearest-rank percentile of sorted samples: the smallest sample such that at least `p`
/// percent of the samples are less than or equal to it. `None` for an empty slice.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

/// Parses a flag duration: a number followed by `ms`, `s` or `m` (`500ms`, `2s`, `1.5m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} needs a unit: ms, s or m"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit {unit:?}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(percentile(&samples, 50.0), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&samples, 99.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&samples, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&samples, 100.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn p99_of_a_thousand_samples_is_the_990th() {
        let samples: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        assert_eq!(percentile(&samples, 99.0), Some(Duration::from_micros(990)));
    }

    #[test]
    fn summary_sorts_first() {
        let mut samples = ms(&[9, 1, 5, 3, 7]);
        let summary = LatencySummary::of(&mut samples);
        assert_eq!(
            summary,
            Some(LatencySummary {
                p50: Duration::from_millis(5),
                p99: Duration::from_millis(9),
                max: Duration::from_millis(9),
            })
        );
        assert_eq!(LatencySummary::of(&mut []), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("s").is_err());
    }
}

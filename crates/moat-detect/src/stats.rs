//! Small streaming estimators: a winsorized log-scale baseline, an exponentially weighted
//! median, and fixed-key fingerprints.

use std::hash::{Hash, Hasher};

/// A robust baseline of a non-negative feature, on `ln(1 + x)`: an exponentially weighted
/// mean and variance whose updates are winsorized at ±[`WINSOR_Z`] standard deviations once
/// warmed up, so a single outlier moves it by a bounded amount. Until `n` reaches the time
/// constant it is a plain running average, so the first windows count fully.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Baseline {
    pub mean: f32,
    pub var: f32,
    /// Windows learned (saturating).
    pub n: u32,
}

/// Winsorization bound of [`Baseline::learn`], in standard deviations.
pub(crate) const WINSOR_Z: f32 = 3.0;

impl Baseline {
    /// Learns one value (already on the log scale) with time constant `tau` updates.
    pub fn learn(&mut self, y: f32, tau: u32, min_sd: f32) {
        let n = self.n.saturating_add(1);
        let alpha = 1.0 / (n.min(tau.max(1)) as f32);
        let y = if self.n >= 8 {
            let sd = self.var.sqrt().max(min_sd);
            y.clamp(self.mean - WINSOR_Z * sd, self.mean + WINSOR_Z * sd)
        } else {
            y
        };
        let d = y - self.mean;
        self.mean += alpha * d;
        // West's weighted incremental variance, exponentially weighted.
        self.var = (1.0 - alpha) * (self.var + alpha * d * d);
        self.n = n;
    }
}

/// `ln(1 + x)` as f32.
pub(crate) fn log1p(x: f64) -> f32 {
    x.max(0.0).ln_1p() as f32
}

/// A baseline as used for a decision: the device's own, shrunk towards its group's prior.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Effective {
    pub mean: f32,
    pub sd: f32,
    /// Weight of the group prior, in [0, 1].
    pub group_weight: f32,
    pub device_n: u32,
    /// Whether anything was learned (device or group).
    pub known: bool,
}

impl Effective {
    pub fn shrink(device: &Baseline, group: &Baseline, prior_windows: u32, min_sd: f32) -> Self {
        let known = device.n > 0 || group.n > 0;
        let (dw, gw) = match (device.n, group.n) {
            (0, 0) => (0.0, 0.0),
            (_, 0) => (1.0, 0.0),
            (n, _) => {
                let w = n as f32 / (n as f32 + prior_windows as f32);
                (w, 1.0 - w)
            }
        };
        let mean = dw * device.mean + gw * group.mean;
        // Mixture variance: the spread of each plus the disagreement between the two.
        let var = dw * device.var
            + gw * group.var
            + dw * gw * (device.mean - group.mean) * (device.mean - group.mean);
        // Young baselines are uncertain: widen them.
        let young = 1.0 + 4.0 / (1.0 + device.n.max(group.n.min(64)) as f32);
        Self {
            mean,
            sd: var.sqrt().max(min_sd) * young,
            group_weight: gw,
            device_n: device.n,
            known,
        }
    }

    /// The value (in the feature's unit) `z` standard deviations above the centre.
    pub fn upper(&self, z: f32) -> f64 {
        f64::from(self.mean + z * self.sd).exp_m1()
    }

    pub fn typical(&self) -> f64 {
        f64::from(self.mean).exp_m1()
    }
}

/// An exponentially weighted median by stochastic approximation: moves `step` towards each
/// sample. Used for the group's common drift.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct EwMedian(pub f32);

impl EwMedian {
    pub fn learn(&mut self, x: f32, step: f32) {
        if x > self.0 {
            self.0 += step.min(x - self.0);
        } else {
            self.0 -= step.min(self.0 - x);
        }
    }
}

/// Decay factor of a per-minute counter over one 10 s window: `exp(-10/60)`.
pub(crate) const MINUTE_DECAY: f32 = 0.846_481_7;
/// Decay factor of a per-hour accumulator over one 10 s window: `exp(-10/3600)`.
pub(crate) const HOUR_DECAY: f32 = 0.997_226_4;
/// Steady-state sum of an hour accumulator fed 1 per window: `1 / (1 - HOUR_DECAY)`.
pub(crate) const HOUR_WINDOWS: f32 = 360.5;

/// `factor^windows`, cheap for the common case of one window.
pub(crate) fn decay(factor: f32, windows: u64) -> f32 {
    match windows {
        0 => 1.0,
        1 => factor,
        w if w > 4_000 => 0.0,
        w => factor.powi(w as i32),
    }
}

/// A 32-bit fingerprint with fixed keys (deterministic across runs; collisions only blur
/// novelty and distinct counts, never identity decisions).
pub(crate) fn fingerprint<T: Hash + ?Sized>(value: &T) -> u32 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    value.hash(&mut h);
    let x = h.finish();
    // Never 0, so 0 can mean "empty slot".
    ((x >> 32) as u32 ^ x as u32) | 1
}

/// FNV-1a: fast on short keys, fixed, no allocation.
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        // Final avalanche so that close keys spread over the 32 bits we keep.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A small set of fingerprints kept in insertion order; `insert` reports novelty. When full,
/// the oldest is replaced (so "novel" means "not among the last `N`").
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FpRing<const N: usize> {
    slots: [u32; N],
    next: u8,
}

impl<const N: usize> Default for FpRing<N> {
    fn default() -> Self {
        Self {
            slots: [0; N],
            next: 0,
        }
    }
}

impl<const N: usize> FpRing<N> {
    pub fn contains(&self, fp: u32) -> bool {
        self.slots.contains(&fp)
    }

    /// Inserts; true if it was not there.
    pub fn insert(&mut self, fp: u32) -> bool {
        if self.contains(fp) {
            return false;
        }
        self.slots[usize::from(self.next)] = fp;
        self.next = ((usize::from(self.next) + 1) % N) as u8;
        true
    }

    pub fn len(&self) -> usize {
        self.slots.iter().filter(|&&s| s != 0).count()
    }

    pub fn is_full(&self) -> bool {
        self.slots.iter().all(|&s| s != 0)
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.iter().copied().filter(|&s| s != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_converges_and_resists_outliers() {
        let mut b = Baseline::default();
        for i in 0..500 {
            b.learn(log1p(100.0 + f64::from(i % 7)), 360, 0.2);
        }
        let before = b.mean;
        assert!((before.exp_m1() - 103.0).abs() < 5.0, "{}", before.exp_m1());
        b.learn(log1p(1e9), 360, 0.2);
        assert!(
            b.mean - before < 0.01,
            "one outlier moved the mean by {}",
            b.mean - before
        );
    }

    #[test]
    fn decay_constants() {
        assert!((MINUTE_DECAY - (-10.0f32 / 60.0).exp()).abs() < 1e-6);
        assert!((HOUR_DECAY - (-10.0f32 / 3600.0).exp()).abs() < 1e-6);
        assert!((HOUR_WINDOWS - 1.0 / (1.0 - HOUR_DECAY)).abs() < 0.5);
        use crate::state::{ENVELOPE_DECAY, TEN_MINUTE_DECAY, TEN_MINUTE_WINDOWS};
        assert!((TEN_MINUTE_WINDOWS - 1.0 / (1.0 - TEN_MINUTE_DECAY)).abs() < 0.5);
        let month = (-10.0f64 / (30.0 * 86_400.0)).exp();
        assert!((f64::from(ENVELOPE_DECAY) - month).abs() < 1e-7);
    }

    #[test]
    fn ring_novelty() {
        let mut r = FpRing::<2>::default();
        assert!(r.insert(5));
        assert!(!r.insert(5));
        assert!(r.insert(7));
        assert!(r.is_full());
        assert!(r.insert(9));
        assert!(!r.contains(5));
    }
}

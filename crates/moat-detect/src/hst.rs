//! Half-Space Trees (Tan, Ting and Liu, "Fast anomaly detection for streaming data", IJCAI
//! 2011): a streaming anomaly model of bounded size. The random structure (split dimension
//! and value of every node) is generated once from a seed and shared by every group; a group
//! owns only its mass counters, [`MASS_BYTES`] bytes.
//!
//! Points are vectors of [`DIMS`] values in [0, 1]. Masses are counted in the *latest*
//! window; every `window` points the latest masses become the *reference* masses. A point is
//! scored against the reference: a tree *isolates* it when its leaf cell holds at most
//! `ISOLATED_MASS` (1) reference point.

/// Trees in the ensemble.
pub(crate) const TREES: usize = 16;
/// Depth of each tree (leaves at this depth).
pub(crate) const DEPTH: usize = 6;
/// Dimensions of a point.
pub(crate) const DIMS: usize = 8;
/// Nodes per tree (complete binary tree).
const NODES: usize = (1 << (DEPTH + 1)) - 1;
/// Internal nodes per tree.
const INTERNAL: usize = (1 << DEPTH) - 1;
/// A leaf cell with at most this many reference points isolates a point.
const ISOLATED_MASS: u16 = 1;
/// Bytes of mass counters per group.
pub(crate) const MASS_BYTES: usize = 2 * TREES * NODES * std::mem::size_of::<u16>();

/// The shared random structure.
#[derive(Debug, Clone)]
pub(crate) struct Forest {
    dim: Vec<u8>,
    split: Vec<f32>,
}

impl Forest {
    pub fn new(seed: u64) -> Self {
        let mut rng = SplitMix(seed);
        let mut dim = vec![0u8; TREES * INTERNAL];
        let mut split = vec![0f32; TREES * INTERNAL];
        for t in 0..TREES {
            // Per-tree perturbed workspace. The paper uses [s - 2r, s + 2r] with
            // r = max(s, 1 - s) because it does not know the data's range; ours is [0, 1] by
            // construction, so [s - r, s + r] (which still covers it) puts more splits where
            // the points are.
            let mut lo = [0f32; DIMS];
            let mut hi = [0f32; DIMS];
            for d in 0..DIMS {
                let s = rng.unit();
                let r = s.max(1.0 - s);
                lo[d] = s - r;
                hi[d] = s + r;
            }
            build(t, 0, &mut lo, &mut hi, &mut rng, &mut dim, &mut split);
        }
        Self { dim, split }
    }

    fn leaf_path(&self, tree: usize, x: &[f32; DIMS], mut visit: impl FnMut(usize)) -> usize {
        let mut node = 0usize;
        visit(node);
        while node < INTERNAL {
            let i = tree * INTERNAL + node;
            let d = usize::from(self.dim[i]);
            node = if x[d] < self.split[i] {
                2 * node + 1
            } else {
                2 * node + 2
            };
            visit(node);
        }
        node
    }
}

fn build(
    tree: usize,
    node: usize,
    lo: &mut [f32; DIMS],
    hi: &mut [f32; DIMS],
    rng: &mut SplitMix,
    dim: &mut [u8],
    split: &mut [f32],
) {
    if node >= INTERNAL {
        return;
    }
    let d = (rng.next() % DIMS as u64) as usize;
    let mid = (lo[d] + hi[d]) / 2.0;
    dim[tree * INTERNAL + node] = d as u8;
    split[tree * INTERNAL + node] = mid;
    let saved = hi[d];
    hi[d] = mid;
    build(tree, 2 * node + 1, lo, hi, rng, dim, split);
    hi[d] = saved;
    let saved = lo[d];
    lo[d] = mid;
    build(tree, 2 * node + 2, lo, hi, rng, dim, split);
    lo[d] = saved;
}

/// One group's masses.
#[derive(Debug, Clone)]
pub(crate) struct Masses {
    reference: Box<[u16]>,
    latest: Box<[u16]>,
    count: u32,
    reference_total: u32,
}

impl Default for Masses {
    fn default() -> Self {
        Self {
            reference: vec![0; TREES * NODES].into_boxed_slice(),
            latest: vec![0; TREES * NODES].into_boxed_slice(),
            count: 0,
            reference_total: 0,
        }
    }
}

impl Masses {
    /// Whether a reference window exists.
    pub fn ready(&self) -> bool {
        self.reference_total > 0
    }

    /// Fraction of trees whose leaf cell for `x` holds no reference point.
    pub fn isolation(&self, forest: &Forest, x: &[f32; DIMS]) -> f32 {
        if !self.ready() {
            return 0.0;
        }
        let mut isolated = 0;
        for t in 0..TREES {
            let leaf = forest.leaf_path(t, x, |_| {});
            if self.reference[t * NODES + leaf] <= ISOLATED_MASS {
                isolated += 1;
            }
        }
        isolated as f32 / TREES as f32
    }

    /// Adds `x` to the latest window, rolling it into the reference every `window` points.
    pub fn learn(&mut self, forest: &Forest, x: &[f32; DIMS], window: u32) {
        for t in 0..TREES {
            let latest = &mut self.latest[t * NODES..(t + 1) * NODES];
            forest.leaf_path(t, x, |n| latest[n] = latest[n].saturating_add(1));
        }
        self.count += 1;
        if self.count >= window.min(u32::from(u16::MAX)) {
            std::mem::swap(&mut self.reference, &mut self.latest);
            self.latest.fill(0);
            self.reference_total = self.count;
            self.count = 0;
        }
    }
}

/// SplitMix64: a tiny deterministic generator for the structure.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolates_outliers_not_inliers() {
        let forest = Forest::new(7);
        let mut m = Masses::default();
        let mut rng = SplitMix(1);
        for _ in 0..512 {
            let mut x = [0.5f32; DIMS];
            for v in &mut x {
                *v += (rng.unit() - 0.5) * 0.1;
            }
            m.learn(&forest, &x, 256);
        }
        assert!(m.isolation(&forest, &[0.5; DIMS]) < 0.2);
        let mut far = [0.5f32; DIMS];
        far[0] = 1.0;
        far[3] = 0.0;
        assert!(
            m.isolation(&forest, &far) >= 0.5,
            "{}",
            m.isolation(&forest, &far)
        );
    }
}

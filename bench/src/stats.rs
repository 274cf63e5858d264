//! Latency histogram with bounded memory and nearest-rank percentiles.
//!
//! Values (nanoseconds) below 128 are counted exactly; above that each power of two is split
//! into 64 buckets, so a reported percentile is at most 1/64 (1.6 %) above the true sample.
//! Buckets are allocated on demand, so a histogram that only saw small values stays small.

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS; // 64 buckets per power of two
const LINEAR: u64 = SUB * 2; // values below this get a bucket each

/// Log-linear histogram of `u64` samples.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let mantissa = v >> shift; // in SUB..2*SUB
    (u64::from(shift) * SUB + mantissa) as usize
}

/// Highest value that falls in bucket `idx`.
fn bucket_high(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < LINEAR {
        return idx;
    }
    let shift = idx / SUB - 1;
    let mantissa = idx % SUB + SUB;
    // The top bucket's upper bound is u64::MAX.
    ((mantissa + 1) << shift)
        .wrapping_sub(1)
        .max(mantissa << shift)
}

impl Histogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample.
    pub fn record(&mut self, v: u64) {
        let b = bucket_of(v);
        if b >= self.counts.len() {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        if self.total == 0 || v < self.min {
            self.min = v;
        }
        if v > self.max {
            self.max = v;
        }
        self.total += 1;
    }

    /// Adds all samples of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += *b;
        }
        if self.total == 0 || other.min < self.min {
            self.min = other.min;
        }
        self.max = self.max.max(other.max);
        self.total += other.total;
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest sample, if any.
    pub fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    /// Smallest sample, if any.
    pub fn min(&self) -> Option<u64> {
        (self.total > 0).then_some(self.min)
    }

    /// Nearest-rank percentile given in per-mille (500 = p50, 990 = p99, 999 = p99.9): the
    /// smallest recorded value such that at least `ceil(n * permille / 1000)` samples are at
    /// or below it, rounded up to its bucket's upper bound (never above the maximum).
    pub fn percentile_permille(&self, permille: u32) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let pm = u128::from(permille.min(1000));
        let rank = (u128::from(self.total) * pm).div_ceil(1000).max(1);
        let mut seen = 0u128;
        for (idx, &c) in self.counts.iter().enumerate() {
            seen += u128::from(c);
            if seen >= rank {
                return Some(bucket_high(idx).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_histogram_has_no_percentiles() {
        let h = Histogram::new();
        assert_eq!(h.percentile_permille(500), None);
        assert_eq!(h.count(), 0);
        assert_eq!(h.max(), None);
        assert_eq!(h.min(), None);
    }

    #[test]
    fn exact_for_one_to_hundred() {
        let mut h = Histogram::new();
        // Insert in reverse to show order does not matter.
        for v in (1..=100).rev() {
            h.record(v);
        }
        assert_eq!(h.percentile_permille(500), Some(50));
        assert_eq!(h.percentile_permille(990), Some(99));
        assert_eq!(h.percentile_permille(999), Some(100));
        assert_eq!(h.percentile_permille(0), Some(1));
        assert_eq!(h.percentile_permille(1000), Some(100));
        assert_eq!(h.min(), Some(1));
        assert_eq!(h.max(), Some(100));
    }

    #[test]
    fn nearest_rank_on_thousand_samples() {
        let mut h = Histogram::new();
        // 990 samples of 10, 9 of 50, 1 of 120.
        for _ in 0..990 {
            h.record(10);
        }
        for _ in 0..9 {
            h.record(50);
        }
        h.record(120);
        assert_eq!(h.percentile_permille(500), Some(10));
        assert_eq!(h.percentile_permille(990), Some(10));
        assert_eq!(h.percentile_permille(999), Some(50));
        assert_eq!(h.percentile_permille(1000), Some(120));
    }

    #[test]
    fn single_sample_is_every_percentile() {
        let mut h = Histogram::new();
        h.record(123_456_789);
        for pm in [0, 500, 990, 999, 1000] {
            assert_eq!(h.percentile_permille(pm), Some(123_456_789));
        }
    }

    #[test]
    fn bucket_bounds_are_contiguous() {
        assert_eq!(bucket_of(127), 127);
        assert_eq!(bucket_of(128), 128);
        assert_eq!(bucket_high(128), 129);
        assert_eq!(bucket_of(129), 128);
        assert_eq!(bucket_of(130), 129);
        assert_eq!(bucket_of(255), 191);
        assert_eq!(bucket_high(191), 255);
        assert_eq!(bucket_of(256), 192);
        assert_eq!(bucket_high(192), 259);
        // Every bucket's high value maps back to it, and high+1 maps to the next one.
        for idx in 0..bucket_of(u64::MAX) {
            let hi = bucket_high(idx);
            assert_eq!(bucket_of(hi), idx, "bucket {idx}");
            assert_eq!(bucket_of(hi + 1), idx + 1, "bucket {idx}");
        }
        assert_eq!(bucket_high(bucket_of(u64::MAX)), u64::MAX);
    }

    #[test]
    fn relative_error_is_bounded_for_large_values() {
        // 1 µs .. 1 s in microsecond steps of 997 ns: p50 is within 1/64 above the true value.
        let mut h = Histogram::new();
        let values: Vec<u64> = (0..10_000u64).map(|i| 1_000 + i * 997).collect();
        for &v in &values {
            h.record(v);
        }
        let exact = values[4_999];
        let got = h.percentile_permille(500).unwrap();
        assert!(got >= exact, "{got} < {exact}");
        assert!(got - exact <= exact / 64, "{got} vs {exact}");
        assert_eq!(h.percentile_permille(1000), Some(*values.last().unwrap()));
    }

    #[test]
    fn merge_equals_recording_everything() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        let mut all = Histogram::new();
        for v in 1..=50 {
            a.record(v * 1000);
            all.record(v * 1000);
        }
        for v in 51..=100 {
            b.record(v * 1000);
            all.record(v * 1000);
        }
        let mut m = Histogram::new();
        m.merge(&a);
        m.merge(&b);
        m.merge(&Histogram::new());
        assert_eq!(m.count(), 100);
        for pm in [500, 990, 999] {
            assert_eq!(m.percentile_permille(pm), all.percentile_permille(pm));
        }
        assert_eq!(m.min(), Some(1000));
        assert_eq!(m.max(), Some(100_000));
    }
}

//! A small fixed-bucket latency histogram: 10 µs buckets up to 100 ms, 1 ms
//! buckets up to 10 s, then one overflow bucket; exact min, max and mean.
//! Percentiles are reported as the upper edge of the bucket holding the
//! rank (capped at the exact maximum), so they are at most one bucket high.

const FINE_NS: u64 = 10_000; // 10 µs
const FINE_LIMIT_NS: u64 = 100_000_000; // 100 ms
const COARSE_NS: u64 = 1_000_000; // 1 ms
const COARSE_LIMIT_NS: u64 = 10_000_000_000; // 10 s
const FINE_BUCKETS: usize = (FINE_LIMIT_NS / FINE_NS) as usize; // 10 000
const COARSE_BUCKETS: usize = ((COARSE_LIMIT_NS - FINE_LIMIT_NS) / COARSE_NS) as usize; // 9 900

#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    overflow: u64,
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; FINE_BUCKETS + COARSE_BUCKETS],
            overflow: 0,
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        self.count += 1;
        self.sum_ns += ns as u128;
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
        if ns < FINE_LIMIT_NS {
            self.buckets[(ns / FINE_NS) as usize] += 1;
        } else if ns < COARSE_LIMIT_NS {
            self.buckets[FINE_BUCKETS + ((ns - FINE_LIMIT_NS) / COARSE_NS) as usize] += 1;
        } else {
            self.overflow += 1;
        }
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    #[cfg(test)]
    pub fn min_ns(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min_ns
        }
    }

    pub fn mean_ns(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            (self.sum_ns / self.count as u128) as u64
        }
    }

    fn upper_edge(i: usize) -> u64 {
        if i < FINE_BUCKETS {
            (i as u64 + 1) * FINE_NS
        } else {
            FINE_LIMIT_NS + (i - FINE_BUCKETS) as u64 * COARSE_NS + COARSE_NS
        }
    }

    /// The `p`-th percentile (0 < p <= 100) in nanoseconds; 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let rank = rank.min(self.count);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::upper_edge(i).min(self.max_ns);
            }
        }
        self.max_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty() {
        let h = Histogram::default();
        assert_eq!(h.percentile(50.0), 0);
        assert_eq!((h.count(), h.max_ns(), h.min_ns(), h.mean_ns()), (0, 0, 0, 0));
    }

    #[test]
    fn percentiles_uniform() {
        let mut h = Histogram::default();
        // 1..=1000 ms in 1 ms steps: p50 = 500 ms, p90 = 900 ms, p99 = 990 ms
        for ms in 1..=1000u64 {
            h.record(ms * 1_000_000);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.percentile(50.0), 501_000_000);
        assert_eq!(h.percentile(90.0), 901_000_000);
        assert_eq!(h.percentile(99.0), 991_000_000);
        assert_eq!(h.percentile(100.0), 1_000_000_000);
        assert_eq!(h.max_ns(), 1_000_000_000);
        assert_eq!(h.min_ns(), 1_000_000);
        assert_eq!(h.mean_ns(), 500_500_000);
    }

    #[test]
    fn fine_resolution_and_overflow() {
        let mut h = Histogram::default();
        for _ in 0..98 {
            h.record(123_456); // 123.456 µs -> bucket edge 130 µs
        }
        h.record(55_000_000_000); // 55 s: overflow
        h.record(0);
        assert_eq!(h.percentile(50.0), 130_000);
        assert_eq!(h.percentile(1.0), 10_000);
        assert_eq!(h.percentile(99.0), 130_000);
        assert_eq!(h.percentile(100.0), 55_000_000_000);
        assert_eq!(h.max_ns(), 55_000_000_000);
        // a single sample: percentile capped by the exact max
        let mut h = Histogram::default();
        h.record(3_000);
        assert_eq!(h.percentile(99.0), 3_000);
    }
}

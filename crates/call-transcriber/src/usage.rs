//! [`ProcessUsage`]: this process's CPU time and peak memory, as Lambda bills and limits them
//! (for reports and benchmarks; Linux `/proc`); [`Latencies`]: a bounded record of many
//! latencies.

use std::time::Duration;

/// CPU and memory used by this process so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessUsage {
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Peak resident set (VmHWM), KiB.
    pub peak_rss_kb: u64,
}

impl ProcessUsage {
    /// Reads `/proc/self`; zeros where it is not available.
    pub fn current() -> Self {
        Self::read("/proc/self")
    }

    /// Reads another process's usage (`/proc/<pid>`), e.g. a child being measured.
    pub fn of(pid: u32) -> Self {
        Self::read(&format!("/proc/{pid}"))
    }

    fn read(dir: &str) -> Self {
        let stat = std::fs::read_to_string(format!("{dir}/stat")).unwrap_or_default();
        // Fields after the command name's ')': index 11 and 12 are utime and stime, in
        // USER_HZ ticks (100 per second on Linux).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let peak_rss_kb = std::fs::read_to_string(format!("{dir}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Self {
            cpu_seconds: (ticks(11) + ticks(12)) / 100.0,
            peak_rss_kb,
        }
    }
}

/// Latencies recorded as a histogram (HdrHistogram, 3 significant digits, 1 µs to 1 hour;
/// longer ones count as an hour): a fixed few tens of KB however many are recorded, where a
/// list of one per 100 ms chunk grew by megabytes an hour of call read in one invocation.
#[derive(Debug, Clone)]
pub struct Latencies(hdrhistogram::Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self(
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("1 µs to 1 h at 3 significant digits is a valid histogram"),
        )
    }
}

impl Latencies {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        self.0.saturating_record(
            u64::try_from(latency.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        );
    }

    /// How many were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `q`-quantile (0..=1) in milliseconds, within 0.1% (0 when empty).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(q.clamp(0.0, 1.0)) as f64 / 1000.0
    }
}

/// The `q`-quantile (0..=1) of `values` in milliseconds (0 when empty).
pub fn quantile_ms(values: &[std::time::Duration], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted[index]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_and_quantiles_pick_the_right_values() {
        let busy: u64 = (0..5_000_000u64).map(|i| i % 7).sum();
        assert!(busy > 0);
        let usage = ProcessUsage::current();
        assert!(usage.peak_rss_kb > 0);
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&values, 0.5), 51.0);
        assert_eq!(quantile_ms(&values, 0.99), 99.0);
        assert_eq!(quantile_ms(&values, 1.0), 100.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
        let mut recorded = Latencies::default();
        assert_eq!(recorded.quantile_ms(0.5), 0.0);
        for value in &values {
            recorded.record(*value);
        }
        assert_eq!(recorded.count(), 100);
        for q in [0.5, 0.99, 1.0] {
            let (exact, near) = (quantile_ms(&values, q), recorded.quantile_ms(q));
            assert!(
                (exact - near).abs() <= exact * 0.001 + 1.0,
                "{q}: {exact} {near}"
            );
        }
    }
}

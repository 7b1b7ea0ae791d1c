//! [`ProcessUsage`]: this process's CPU time and peak memory, as Lambda bills and limits them
//! (for reports and benchmarks; Linux `/proc`).

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
    use std::time::Duration;

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
    }
}

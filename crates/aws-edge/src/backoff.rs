//! [`Backoff`]: the one pause policy between a failed attempt and the next, for the retries
//! our code makes itself (the SDK's own retries, for the requests left to them, use its
//! standard mode: exponential with full jitter, at most 20 s a pause; AWS SDKs and Tools
//! Reference Guide, "Retry behavior"). Each use states its parameters where it is defined.

use std::time::Duration;

/// Pauses that double from `first` up to `max`, with or without jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The pause after the first failed attempt.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
    /// Whether pauses are spread at random.
    pub jitter: Jitter,
}

/// How pauses are spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the doubling pause: for a retry no other caller competes with (one call's own
    /// stream, one call's own records).
    None,
    /// "Equal jitter": half the pause fixed, half random (AWS Architecture Blog, "Exponential
    /// Backoff And Jitter"), so callers turned away by the same quota at the same moment do
    /// not all come back at once.
    Equal,
}

impl Backoff {
    /// The pause before the attempt after `failed` failed attempts (1 = after the first).
    pub fn pause(&self, failed: u32) -> Duration {
        let ceiling = self
            .first
            .saturating_mul(1 << failed.saturating_sub(1).min(16))
            .min(self.max);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Equal => {
                let millis = ceiling.as_millis() as u64;
                Duration::from_millis(millis / 2 + fastrand::u64(0..=millis / 2))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_from_the_first_up_to_the_cap() {
        let backoff = Backoff {
            first: Duration::from_millis(50),
            max: Duration::from_secs(2),
            jitter: Jitter::None,
        };
        let pauses: Vec<u64> = (1..=8)
            .map(|n| backoff.pause(n).as_millis() as u64)
            .collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff.pause(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn equal_jitter_keeps_half_and_spreads_the_rest() {
        let backoff = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(20),
            jitter: Jitter::Equal,
        };
        for failed in 1..10 {
            let ceiling = (Duration::from_secs(1) * (1 << (failed - 1))).min(backoff.max);
            for _ in 0..50 {
                let pause = backoff.pause(failed);
                assert!(pause >= ceiling / 2 && pause <= ceiling, "{pause:?}");
            }
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff.pause(5)).collect();
        assert!(
            spread.len() > 1,
            "callers turned away together come back apart"
        );
    }
}

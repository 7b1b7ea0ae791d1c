//! Calls nobody holds. Lambda may lose an asynchronous event ("events might also be deleted
//! from the queue without being sent to the function"; an event older than the maximum event
//! age is discarded), and the last attempt Lambda makes may be stopped (a timeout, out of
//! memory) with no retry to follow (Lambda developer guide, "How Lambda handles errors and
//! retries with asynchronous invocation"). Such a call's lease stays open with nobody to
//! finish it. A scheduled sweep finds it and delivers a rescue event; the rescued delivery
//! claims the lease as any other ([`crate::decide`]): it resumes the call as the next attempt,
//! or gives it up when every attempt is used.
//!
//! The sweep must not read every call each time: an open lease carries [`SweepAt`], the time
//! after which nobody is looking after it, in a sparse index of open calls keyed by it. A
//! holder pushes it forward only every [`Limits::sweep_grace_ms`] or so (not at every
//! renewal), so the index costs one write per call per few minutes, and the sweep reads only
//! the calls that are due.
//!
//! [`SweepAt`]: LeaseRecord::sweep_at_ms

use crate::lease::{LeaseRecord, Limits};

/// When an open lease is due for the sweep, written now: `2 × sweep_grace_ms` from now, so a
/// holder that refreshes it once it is less than `sweep_grace_ms` away ([`refresh_sweep_at`])
/// is never due while it lives, and a dead one is due within `2 × sweep_grace_ms`.
pub fn sweep_at(now_ms: u64, limits: Limits) -> u64 {
    now_ms + 2 * limits.sweep_grace_ms
}

/// A new [`sweep_at`] for a holder's renewal when the one it wrote last (`written_ms`) is
/// less than `sweep_grace_ms` away; `None`: leave it (most renewals).
pub fn refresh_sweep_at(written_ms: u64, now_ms: u64, limits: Limits) -> Option<u64> {
    (written_ms < now_ms + limits.sweep_grace_ms).then(|| sweep_at(now_ms, limits))
}

/// When a lease nobody holds any more (handed over, or released after a failure) is due: the
/// next invocation or Lambda's retry claims it well before then (Lambda retries after about
/// one and then two more minutes), so only a lost event leaves it to the sweep.
pub fn sweep_at_unheld(now_ms: u64, limits: Limits) -> u64 {
    now_ms + limits.sweep_grace_ms
}

/// Why the sweep rescues a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RescueReason {
    /// StartLCA wrote the lease and invoked the transcriber, and no delivery ever claimed it
    /// (its event lost, or every attempt stopped before claiming).
    StartLost,
    /// Handed over, and the next invocation never claimed it (its event lost, or its Invoke
    /// failed on every attempt).
    HandOverLost,
    /// An attempt failed cleanly and released the call; Lambda's retry never came (retries
    /// used up, or the retry event lost).
    RetryLost,
    /// The holder stopped without a word (a timeout, out of memory, a crash) and no retry
    /// took the call over.
    HolderStopped,
    /// The call was given up but its END or its recording's URL could not be delivered yet
    /// (Kinesis refusing them): delivered again until they are.
    EndPending,
}

impl RescueReason {
    /// The reason's name, as the `Reason` dimension of `CallsRescued` carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StartLost => "StartLost",
            Self::HandOverLost => "HandOverLost",
            Self::RetryLost => "RetryLost",
            Self::HolderStopped => "HolderStopped",
            Self::EndPending => "EndPending",
        }
    }
}

/// What the sweep does with a lease it found due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepVerdict {
    /// Deliver a rescue event for invocation `lambda_count`.
    Rescue {
        /// Why.
        reason: RescueReason,
        /// The invocation the lease names.
        lambda_count: u32,
    },
    /// The call is over: take it out of the index of open calls.
    Closed,
    /// Somebody holds it (the index lags a renewal): leave it.
    Held,
}

/// The verdict on `record`, found due at `now_ms`.
pub fn verdict(record: &LeaseRecord, now_ms: u64) -> SweepVerdict {
    if record.ended || record.failed {
        return SweepVerdict::Closed;
    }
    let reason = if record.giving_up && record.lease_until_ms <= now_ms {
        RescueReason::EndPending
    } else if record.owner.is_empty() && record.contact_event.is_some() {
        RescueReason::StartLost
    } else if record.owner.is_empty() {
        RescueReason::HandOverLost
    } else if record.lease_until_ms == 0 {
        RescueReason::RetryLost
    } else if record.lease_until_ms <= now_ms {
        RescueReason::HolderStopped
    } else {
        return SweepVerdict::Held;
    };
    SweepVerdict::Rescue {
        reason,
        lambda_count: record.lambda_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CallData, Held};

    const LIMITS: Limits = Limits {
        max_attempts: 3,
        stall_timeout_ms: 60_000,
        sweep_grace_ms: 300_000,
    };

    fn record(owner: &str, until: u64) -> LeaseRecord {
        let held = Held {
            contact_id: "c".into(),
            owner: owner.into(),
            lambda_count: 4,
            attempt: 1,
        };
        LeaseRecord::created(&held, CallData::new("c", "arn", "1"), until)
    }

    #[test]
    fn a_holder_refreshes_its_sweep_time_rarely_and_is_never_due_while_it_lives() {
        let written = sweep_at(0, LIMITS);
        assert_eq!(written, 600_000);
        // Renewals every 10 s leave it until it is less than the grace away.
        for now in (0..300_000).step_by(10_000) {
            assert_eq!(refresh_sweep_at(written, now, LIMITS), None, "{now}");
        }
        let next = refresh_sweep_at(written, 300_010, LIMITS).unwrap();
        assert_eq!(next, 900_010);
        assert!(next > 300_010 + LIMITS.sweep_grace_ms);
    }

    #[test]
    fn a_lease_found_due_is_rescued_for_what_happened_to_it() {
        let rescue = |reason| SweepVerdict::Rescue {
            reason,
            lambda_count: 4,
        };
        assert_eq!(
            verdict(&record("", 1_000), 5_000),
            rescue(RescueReason::HandOverLost)
        );
        assert_eq!(
            verdict(&record("r1", 0), 5_000),
            rescue(RescueReason::RetryLost)
        );
        assert_eq!(
            verdict(&record("r1", 4_000), 5_000),
            rescue(RescueReason::HolderStopped)
        );
        assert_eq!(verdict(&record("r1", 9_000), 5_000), SweepVerdict::Held);
        let pending = LeaseRecord {
            giving_up: true,
            ..record("", 1_000)
        };
        assert_eq!(verdict(&pending, 5_000), rescue(RescueReason::EndPending));
        let ended = LeaseRecord {
            ended: true,
            ..record("", 0)
        };
        assert_eq!(verdict(&ended, 5_000), SweepVerdict::Closed);
        // StartLCA's lease that no delivery claimed: the first event was lost.
        let unstarted = LeaseRecord::pending(CallData::new("c", "arn", "1"), Some("{}".into()));
        assert_eq!(
            verdict(&unstarted, 5_000),
            SweepVerdict::Rescue {
                reason: RescueReason::StartLost,
                lambda_count: 0
            }
        );
        assert_eq!(RescueReason::RetryLost.as_str(), "RetryLost");
    }
}

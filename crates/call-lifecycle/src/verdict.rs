//! What becomes of a call after a run that did not end it well: a failed attempt is left to
//! Lambda's retry or, on the last attempt, the call is given up; a run that could not advance
//! for want of room at a service hands the call on, until it has waited for longer than
//! `CALL_STALL_TIMEOUT`. Hand-overs make the next invocation's [`CallData`].

use crate::call::CallData;
use crate::lease::Limits;

/// What to do after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Return the error: Lambda retries the event, and the retry takes the call over.
    Retry,
    /// This was the invocation's last attempt: give the call up (END, what was recorded
    /// joined, its URL, the lease FAILED), then return the error for the on-failure
    /// destination.
    GiveUp,
}

/// The verdict after attempt `attempt` of an invocation failed (`None`: attempts are not
/// counted, as without a lease table, so every failure is the last).
pub fn after_failure(attempt: Option<u32>, limits: Limits) -> AfterFailure {
    match attempt {
        Some(attempt) if attempt < limits.max_attempts => AfterFailure::Retry,
        _ => AfterFailure::GiveUp,
    }
}

/// What to do after a run that could not advance the call (no room at a service).
#[derive(Debug, Clone, PartialEq)]
pub enum AfterStall {
    /// Hand the call to a fresh invocation at the same position (its audio waits in KVS):
    /// not a failure, so Lambda's retries are kept for real ones.
    HandOn(Box<CallData>),
    /// The call has waited for longer than `CALL_STALL_TIMEOUT`: give it up.
    GiveUp {
        /// How long it has waited, in milliseconds.
        stalled_ms: u64,
    },
}

/// The verdict for `call` after a run that began at `began_ms` stalled, at `now_ms`.
pub fn after_stall(call: &CallData, began_ms: u64, now_ms: u64, limits: Limits) -> AfterStall {
    let since = call.stalled_since_ms.unwrap_or(began_ms);
    let stalled_ms = now_ms.saturating_sub(since);
    if stalled_ms >= limits.stall_timeout_ms {
        return AfterStall::GiveUp { stalled_ms };
    }
    AfterStall::HandOn(Box::new(CallData {
        lambda_count: call.lambda_count + 1,
        stalled_since_ms: Some(since),
        ..call.clone()
    }))
}

/// Where a run stopped that hands its call over at a fragment boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuation {
    /// The last fragment fully processed.
    pub last_fragment: String,
    /// The Transcribe session id to reuse.
    pub session_id: Option<String>,
    /// Producer timestamp (ns) of the call's first sample.
    pub origin_ns: Option<i64>,
    /// Samples of the call transcribed so far.
    pub start_sample: u64,
}

impl CallData {
    /// The call as the next invocation takes it after a run that advanced it to `at`: no
    /// longer stalled.
    pub fn continued(&self, at: Continuation) -> CallData {
        CallData {
            last_fragment: Some(at.last_fragment),
            session_id: at.session_id,
            origin_ns: at.origin_ns,
            start_sample: at.start_sample,
            lambda_count: self.lambda_count + 1,
            stalled_since_ms: None,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_attempts: 3,
        stall_timeout_ms: 10_000,
        sweep_grace_ms: 300_000,
    };

    #[test]
    fn the_last_attempt_gives_the_call_up() {
        assert_eq!(after_failure(Some(1), LIMITS), AfterFailure::Retry);
        assert_eq!(after_failure(Some(2), LIMITS), AfterFailure::Retry);
        assert_eq!(after_failure(Some(3), LIMITS), AfterFailure::GiveUp);
        assert_eq!(after_failure(Some(4), LIMITS), AfterFailure::GiveUp);
        assert_eq!(after_failure(None, LIMITS), AfterFailure::GiveUp);
        assert_eq!(
            after_failure(Some(1), Limits::new(0, 1)),
            AfterFailure::GiveUp
        );
    }

    #[test]
    fn a_stall_is_counted_from_its_first_run_until_the_limit() {
        let call = CallData::new("c", "arn", "1");
        let AfterStall::HandOn(next) = after_stall(&call, 1_000, 4_000, LIMITS) else {
            panic!("handed on");
        };
        assert_eq!((next.lambda_count, next.stalled_since_ms), (1, Some(1_000)));
        // The next run began later, but the stall is counted from the first.
        let AfterStall::HandOn(again) = after_stall(&next, 6_000, 10_999, LIMITS) else {
            panic!("handed on");
        };
        assert_eq!(again.stalled_since_ms, Some(1_000));
        assert_eq!(
            after_stall(&again, 11_000, 11_000, LIMITS),
            AfterStall::GiveUp { stalled_ms: 10_000 }
        );
        // A run that advanced clears it.
        let moved = again.continued(Continuation {
            last_fragment: "9".into(),
            session_id: None,
            origin_ns: Some(5),
            start_sample: 80,
        });
        assert_eq!(moved.stalled_since_ms, None);
        assert_eq!(moved.lambda_count, 3);
        assert_eq!(moved.last_fragment.as_deref(), Some("9"));
    }
}

//! What becomes of a call after a run that did not end it well: a failed attempt is left to
//! Lambda's retry or, on the last attempt, the call is given up; a run that could not advance
//! for want of room at a service hands the call on, until it has waited for longer than
//! `CALL_STALL_TIMEOUT` (at the point it reached, carrying what it could not deliver, when
//! only Kinesis held it back). Hand-overs make the next invocation's [`CallData`].

use lca_events::LcaMessage;

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

/// The most a stalled call carries of what its runs could not deliver ([`CallData::pending`],
/// serialized): DynamoDB items are at most 400 KB, and the lease item holds the call's data
/// and what was delivered besides. About half an hour of conversation's final segments.
pub const MAX_PENDING_BYTES: usize = 256 * 1024;

/// How far a run got that stalled on Kinesis: it transcribed its share up to a hand-over
/// point, but Kinesis did not take `messages` in the time it had.
#[derive(Debug, Clone, PartialEq)]
pub struct Unpublished {
    /// The hand-over point the run reached.
    pub at: Continuation,
    /// What Kinesis did not take, in the order produced (partials may be among them).
    pub messages: Vec<LcaMessage>,
}

impl Unpublished {
    /// The messages a call carries on: partial results left out (their finals follow).
    fn carried(&self) -> Vec<LcaMessage> {
        self.messages
            .iter()
            .filter(|m| !m.is_partial())
            .cloned()
            .collect()
    }

    /// Their size as the lease keeps them, in bytes.
    pub fn carried_bytes(&self) -> usize {
        serde_json::to_vec(&self.carried()).map_or(usize::MAX, |bytes| bytes.len())
    }

    /// Whether the lease can keep them ([`MAX_PENDING_BYTES`]): only then does the call go
    /// on from `at` ([`after_stall`]).
    pub fn fits(&self) -> bool {
        self.carried_bytes() <= MAX_PENDING_BYTES
    }
}

/// The verdict for `call` after a run that began at `began_ms` stalled, at `now_ms`.
/// `reached`: how far the run got when it stalled on Kinesis after transcribing its share;
/// the call then moves on to that point carrying the undelivered messages (no audio is
/// transcribed twice), unless they exceed [`MAX_PENDING_BYTES`]: then, as after any other
/// stall, it stays where it was (with what it carried already) and the share is run again.
pub fn after_stall(
    call: &CallData,
    began_ms: u64,
    now_ms: u64,
    limits: Limits,
    reached: Option<Unpublished>,
) -> AfterStall {
    let since = call.stalled_since_ms.unwrap_or(began_ms);
    let stalled_ms = now_ms.saturating_sub(since);
    if stalled_ms >= limits.stall_timeout_ms {
        return AfterStall::GiveUp { stalled_ms };
    }
    let stalled = CallData {
        lambda_count: call.lambda_count + 1,
        stalled_since_ms: Some(since),
        ..call.clone()
    };
    let next = match reached {
        Some(reached) if reached.fits() => CallData {
            pending: reached.carried(),
            ..stalled.at(reached.at)
        },
        _ => stalled,
    };
    AfterStall::HandOn(Box::new(next))
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
            lambda_count: self.lambda_count + 1,
            stalled_since_ms: None,
            // A run that advanced normally delivered everything, what it carried included.
            pending: Vec::new(),
            ..self.at(at)
        }
    }

    /// The call with its reading position moved to `at`.
    fn at(&self, at: Continuation) -> CallData {
        CallData {
            last_fragment: Some(at.last_fragment),
            session_id: at.session_id,
            origin_ns: at.origin_ns,
            start_sample: at.start_sample,
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
        let AfterStall::HandOn(next) = after_stall(&call, 1_000, 4_000, LIMITS, None) else {
            panic!("handed on");
        };
        assert_eq!((next.lambda_count, next.stalled_since_ms), (1, Some(1_000)));
        // The next run began later, but the stall is counted from the first.
        let AfterStall::HandOn(again) = after_stall(&next, 6_000, 10_999, LIMITS, None) else {
            panic!("handed on");
        };
        assert_eq!(again.stalled_since_ms, Some(1_000));
        assert_eq!(
            after_stall(&again, 11_000, 11_000, LIMITS, None),
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

    fn segment(channel: &str, end: f64, partial: bool, text_bytes: usize) -> LcaMessage {
        serde_json::from_value(serde_json::json!({"EventType": "ADD_TRANSCRIPT_SEGMENT",
            "CallId": "c", "Channel": channel, "SegmentId": format!("{channel}-{end}"),
            "StartTime": end - 1.0, "EndTime": end, "Transcript": "x".repeat(text_bytes),
            "IsPartial": partial, "CreatedAt": "now"}))
        .unwrap()
    }

    fn reached(messages: Vec<LcaMessage>) -> Unpublished {
        Unpublished {
            at: Continuation {
                last_fragment: "42".into(),
                session_id: Some("s".into()),
                origin_ns: Some(5),
                start_sample: 96_000,
            },
            messages,
        }
    }

    #[test]
    fn a_kinesis_stall_moves_the_call_on_with_what_it_could_not_deliver() {
        let call = CallData::new("c", "arn", "1");
        let messages = vec![
            segment("CALLER", 2.0, true, 10),
            segment("CALLER", 2.5, false, 10),
            segment("AGENT", 4.0, false, 10),
        ];
        let AfterStall::HandOn(next) =
            after_stall(&call, 1_000, 4_000, LIMITS, Some(reached(messages.clone())))
        else {
            panic!("handed on");
        };
        assert_eq!(
            (next.last_fragment.as_deref(), next.start_sample),
            (Some("42"), 96_000),
            "the call moved to where its run got"
        );
        assert_eq!(next.session_id.as_deref(), Some("s"));
        assert_eq!((next.lambda_count, next.stalled_since_ms), (1, Some(1_000)));
        assert_eq!(
            next.pending,
            messages[1..],
            "the finals, without the partial"
        );
        // The lease keeps them through its JSON.
        let kept: CallData = serde_json::from_str(&serde_json::to_string(&next).unwrap()).unwrap();
        assert_eq!(kept, *next);
        // A run that advances normally delivered them.
        let moved = next.continued(reached(Vec::new()).at);
        assert!(moved.pending.is_empty());
        // The stall is still counted from its first run, and gives up at the limit.
        assert_eq!(
            after_stall(&next, 6_000, 11_000, LIMITS, Some(reached(Vec::new()))),
            AfterStall::GiveUp { stalled_ms: 10_000 }
        );
    }

    #[test]
    fn more_undelivered_than_the_lease_holds_keeps_the_call_where_it_was() {
        let mut call = CallData::new("c", "arn", "1");
        call.last_fragment = Some("7".into());
        call.pending = vec![segment("CALLER", 1.0, false, 10)];
        let messages: Vec<LcaMessage> = (0..40)
            .map(|i| segment("AGENT", 10.0 + i as f64, false, 8 * 1024))
            .collect();
        assert!(reached(messages.clone()).carried_bytes() > MAX_PENDING_BYTES);
        let AfterStall::HandOn(next) =
            after_stall(&call, 1_000, 4_000, LIMITS, Some(reached(messages)))
        else {
            panic!("handed on");
        };
        assert_eq!(next.last_fragment.as_deref(), Some("7"), "not moved");
        assert_eq!(next.pending, call.pending, "what it carried is kept");
        assert_eq!(next.lambda_count, 1);
    }
}

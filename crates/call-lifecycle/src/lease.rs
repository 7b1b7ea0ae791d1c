//! One transcriber per call at a time. Lambda retries a failed asynchronous invocation (with
//! the same request id) after a function error, a timeout or a runtime error such as running
//! out of memory, its event queue can deliver an event twice, and a contact flow can invoke
//! StartLCA twice (Lambda developer guide, "How Lambda handles errors and retries with
//! asynchronous invocation"); without a guard two invocations would read the same call and
//! publish everything twice.
//!
//! The guard is a lease on the ContactId (in DynamoDB; the edge is the transcriber's
//! `lease::CallLease`): created with a conditional write by the first invocation, renewed
//! while it runs together with what Kinesis has acknowledged ([`Delivered`]), handed to the
//! next invocation at a hand-over, and closed when the call ends or is given up. [`decide`] is
//! the rule for what an attempt may do with the lease it finds.
//!
//! Attempts are counted when they claim the lease ([`LeaseRecord::attempts`]): an attempt that
//! never comes back to say it failed (Lambda stopped it at its timeout, it ran out of memory,
//! its environment crashed) has been counted all the same, so the call is given up after
//! exactly [`Limits::max_attempts`] attempts of one invocation, however they ended.

use crate::call::CallData;
use crate::delivered::Delivered;

/// The lease as stored for one contact.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRecord {
    /// Request id of the attempt holding the call; empty while it is handed over or over.
    pub owner: String,
    /// Epoch milliseconds until which the owner's hold is valid without renewal.
    pub lease_until_ms: u64,
    /// The invocation (0 = first) that holds, or is to take, the call.
    pub lambda_count: u32,
    /// Where that invocation starts.
    pub call: CallData,
    /// What Kinesis has acknowledged for the call.
    pub delivered: Delivered,
    /// The call has ended (END and the recording are done).
    pub ended: bool,
    /// The call was given up (every attempt used, or stalled past its limit).
    pub failed: bool,
    /// The call is being given up, and what that owes LCA (END, the recording's URL) could
    /// not all be delivered yet (Kinesis refusing them): the next claim finishes giving it up.
    pub giving_up: bool,
    /// Attempts that have claimed invocation `lambda_count` so far, however they ended;
    /// 0 after a hand-over, until the next invocation claims the call.
    pub attempts: u32,
    /// Request id of the invocation that last handed the call over.
    pub handed_over_by: Option<String>,
    /// The contact-flow event StartLCA kept with the lease it wrote (JSON), for the lambda
    /// hook: present until the call's first attempt has run the hook (a lease StartLCA wrote
    /// and no attempt has started yet).
    pub contact_event: Option<String>,
}

impl LeaseRecord {
    /// The lease as a call's first attempt `held` creates it for `call`, holding it until
    /// `until_ms`: nothing delivered yet, one attempt counted.
    pub fn created(held: &Held, call: CallData, until_ms: u64) -> Self {
        Self {
            owner: held.owner.clone(),
            lease_until_ms: until_ms,
            lambda_count: held.lambda_count,
            call,
            delivered: Delivered::default(),
            ended: false,
            failed: false,
            giving_up: false,
            attempts: held.attempt,
            handed_over_by: None,
            contact_event: None,
        }
    }

    /// The lease StartLCA writes before it invokes the transcriber for a new call: nobody
    /// holds it, no attempt counted, `contact_event` kept for the hook. The first delivery
    /// takes it over as attempt 1; if that delivery is lost, the sweep finds it as it finds a
    /// lost hand-over.
    pub fn pending(call: CallData, contact_event: Option<String>) -> Self {
        Self {
            owner: String::new(),
            lease_until_ms: 0,
            lambda_count: call.lambda_count,
            call,
            delivered: Delivered::default(),
            ended: false,
            failed: false,
            giving_up: false,
            attempts: 0,
            handed_over_by: None,
            contact_event,
        }
    }
}

/// The limits the rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Attempts of one invocation before the call is given up: Lambda's first attempt plus
    /// the function's `MaximumRetryAttempts` (0 to 2; Lambda developer guide, "Configuring
    /// error handling for asynchronous invocation").
    pub max_attempts: u32,
    /// How long a call may wait, invocation after invocation, for a service with no room for
    /// it before it is given up (`CALL_STALL_TIMEOUT`), in milliseconds.
    pub stall_timeout_ms: u64,
    /// How long an open call may go unlooked-after before the sweep takes it up
    /// (`SWEEP_GRACE`), in milliseconds: longer than Lambda takes to retry a failed event
    /// (about one, then two more minutes), so the sweep rescues only what Lambda lost.
    pub sweep_grace_ms: u64,
}

/// The default `SWEEP_GRACE`: five minutes.
pub const DEFAULT_SWEEP_GRACE_MS: u64 = 300_000;

impl Limits {
    /// The limits for a function with `maximum_retry_attempts` retries, the default sweep
    /// grace.
    pub fn new(maximum_retry_attempts: u32, stall_timeout_ms: u64) -> Self {
        Self {
            max_attempts: maximum_retry_attempts.saturating_add(1),
            stall_timeout_ms,
            sweep_grace_ms: DEFAULT_SWEEP_GRACE_MS,
        }
    }
}

/// What an attempt may do, given the lease it found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// No lease: create it (this is the call's first attempt) and start the call.
    Create,
    /// Take this lease over as attempt `attempt` of its invocation and continue the call from
    /// its call data: it was handed to this invocation, or its holder stopped (this
    /// invocation's own crashed or timed-out attempt, or a lease that was not renewed in time).
    TakeOver {
        /// The lease as read (the take-over is conditional on it).
        record: Box<LeaseRecord>,
        /// The attempt this one is (1 = the invocation's first).
        attempt: u32,
    },
    /// Every attempt the invocation has was used (the last ones stopped without giving the
    /// call up: a timeout, a crash), or an attempt began giving the call up and could not
    /// deliver all it owes (END, the URL): take the lease over as attempt `attempt` only to
    /// give the call up (END, what was recorded, FAILED), without running it again.
    GiveUp {
        /// The lease as read (the take-over is conditional on it).
        record: Box<LeaseRecord>,
        /// The attempt this one is (beyond [`Limits::max_attempts`]).
        attempt: u32,
    },
    /// The lease is held, unexpired, by an attempt with this request id: Lambda's retry of
    /// a crashed attempt, or the same event delivered twice while the first delivery still
    /// runs. Which one cannot be told from the request id (Lambda's retries keep it), so wait
    /// until the hold expires (at most `CALL_LEASE_TIMEOUT`) and decide again: a live holder
    /// renews it meanwhile.
    WaitForExpiry(Box<LeaseRecord>),
    /// This invocation handed the call over (to this lease's call data), then failed before
    /// it could say so: start the next invocation again (the lease lets only one of them run).
    RepeatHandOver(Box<LeaseRecord>),
    /// Another invocation has the call, or it is over: leave it untouched.
    Leave(&'static str),
}

/// The rule for an attempt of invocation `lambda_count` with `request_id` at `now_ms`.
pub fn decide(
    record: Option<LeaseRecord>,
    lambda_count: u32,
    request_id: &str,
    now_ms: u64,
    limits: Limits,
) -> Claim {
    let Some(record) = record else {
        return Claim::Create;
    };
    if record.ended {
        return Claim::Leave("the call has already ended");
    }
    if record.failed {
        return Claim::Leave("the call was given up after failed attempts");
    }
    if record.lambda_count > lambda_count {
        let ours = record.handed_over_by.as_deref() == Some(request_id);
        return if ours && record.owner.is_empty() && record.lambda_count == lambda_count + 1 {
            Claim::RepeatHandOver(Box::new(record))
        } else {
            Claim::Leave("a later invocation has the call")
        };
    }
    if !record.owner.is_empty() && record.lease_until_ms > now_ms {
        return if record.owner == request_id {
            Claim::WaitForExpiry(Box::new(record))
        } else {
            Claim::Leave("another invocation holds the call")
        };
    }
    // Free, or its holder stopped: this attempt is the invocation's next one. (An event of a
    // later invocation than the lease names starts that invocation's count.) A call being
    // given up is only finished being given up, whatever its attempts.
    let before = if record.lambda_count == lambda_count {
        record.attempts
    } else {
        0
    };
    let attempt = before.saturating_add(1);
    let record = Box::new(record);
    if attempt > limits.max_attempts || record.giving_up {
        Claim::GiveUp { record, attempt }
    } else {
        Claim::TakeOver { record, attempt }
    }
}

/// A lease an attempt holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The contact.
    pub contact_id: String,
    /// This attempt's request id.
    pub owner: String,
    /// This invocation's number.
    pub lambda_count: u32,
    /// Which attempt of the invocation this is (1 = the first), as counted when it claimed.
    pub attempt: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_attempts: 3,
        stall_timeout_ms: 60_000,
        sweep_grace_ms: 300_000,
    };

    fn record(owner: &str, until: u64, count: u32) -> LeaseRecord {
        let held = Held {
            contact_id: "c".into(),
            owner: owner.into(),
            lambda_count: count,
            attempt: 1,
        };
        LeaseRecord::created(&held, CallData::new("c", "arn", "1"), until)
    }

    fn take_over(record: &LeaseRecord, attempt: u32) -> Claim {
        Claim::TakeOver {
            record: Box::new(record.clone()),
            attempt,
        }
    }

    #[test]
    fn a_new_call_creates_the_lease() {
        assert_eq!(decide(None, 0, "r1", 1000, LIMITS), Claim::Create);
    }

    #[test]
    fn the_lease_startlca_wrote_is_taken_over_by_the_first_delivery_as_attempt_one() {
        let pending = LeaseRecord::pending(CallData::new("c", "arn", "1"), Some("{}".into()));
        assert_eq!(
            decide(Some(pending.clone()), 0, "r1", 1000, LIMITS),
            take_over(&pending, 1)
        );
        // A second delivery of StartLCA's event while the first runs leaves it alone.
        let held = LeaseRecord {
            owner: "r1".into(),
            lease_until_ms: 5000,
            attempts: 1,
            contact_event: None,
            ..pending
        };
        assert_eq!(
            decide(Some(held), 0, "r2", 1000, LIMITS),
            Claim::Leave("another invocation holds the call")
        );
    }

    #[test]
    fn a_duplicate_leaves_a_live_lease_alone() {
        let held = record("r1", 5000, 0);
        assert_eq!(
            decide(Some(held), 0, "r2", 1000, LIMITS),
            Claim::Leave("another invocation holds the call")
        );
    }

    #[test]
    fn the_same_request_id_waits_for_a_live_hold_to_expire() {
        // A retry after a crash and a second delivery while the first runs look alike: the
        // hold must expire (a live holder renews it) before the call is taken over.
        let held = record("r1", 5000, 2);
        assert_eq!(
            decide(Some(held.clone()), 2, "r1", 1000, LIMITS),
            Claim::WaitForExpiry(Box::new(held.clone()))
        );
        assert_eq!(
            decide(Some(held.clone()), 2, "r1", 5000, LIMITS),
            take_over(&held, 2)
        );
        // A failed attempt ends its hold at once: the retry need not wait.
        let failed = record("r1", 0, 2);
        assert_eq!(
            decide(Some(failed.clone()), 2, "r1", 1000, LIMITS),
            take_over(&failed, 2)
        );
    }

    #[test]
    fn an_expired_hold_is_taken_over_as_the_next_attempt() {
        let expired = record("r1", 999, 0);
        assert_eq!(
            decide(Some(expired.clone()), 0, "r2", 1000, LIMITS),
            take_over(&expired, 2)
        );
    }

    #[test]
    fn attempts_that_never_said_they_failed_count() {
        // Two attempts stopped by Lambda (timeout, crash): each claimed, neither came back.
        let twice = LeaseRecord {
            attempts: 2,
            ..record("r1", 999, 1)
        };
        assert_eq!(
            decide(Some(twice.clone()), 1, "r1", 1000, LIMITS),
            take_over(&twice, 3)
        );
        // A third that died too: whoever comes next (a duplicate, a rescue) gives it up.
        let thrice = LeaseRecord {
            attempts: 3,
            ..twice
        };
        assert_eq!(
            decide(Some(thrice.clone()), 1, "r9", 1000, LIMITS),
            Claim::GiveUp {
                record: Box::new(thrice),
                attempt: 4
            }
        );
        // With no retries allowed, the first stopped attempt is the last.
        let once = LeaseRecord {
            attempts: 1,
            ..record("r1", 999, 0)
        };
        assert!(matches!(
            decide(Some(once), 0, "r1", 1000, Limits::new(0, 1)),
            Claim::GiveUp { attempt: 2, .. }
        ));
    }

    #[test]
    fn a_call_being_given_up_is_only_finished_being_given_up() {
        // An attempt gave the call up but Kinesis refused its END: whoever claims it next
        // (a retry, the sweep's rescue) finishes giving it up, once its hold is free.
        let pending = LeaseRecord {
            giving_up: true,
            attempts: 1,
            ..record("", 0, 2)
        };
        assert_eq!(
            decide(Some(pending.clone()), 2, "r9", 1000, LIMITS),
            Claim::GiveUp {
                record: Box::new(pending.clone()),
                attempt: 2
            }
        );
        let held = LeaseRecord {
            owner: "r8".into(),
            lease_until_ms: 5000,
            ..pending
        };
        assert_eq!(
            decide(Some(held), 2, "r9", 1000, LIMITS),
            Claim::Leave("another invocation holds the call")
        );
    }

    #[test]
    fn a_handed_over_call_goes_to_the_next_invocation_only() {
        let mut handed = record("", 5000, 3);
        handed.attempts = 0;
        handed.handed_over_by = Some("r2".to_string());
        assert_eq!(
            decide(Some(handed.clone()), 3, "r3", 1000, LIMITS),
            take_over(&handed, 1)
        );
        // The invocation that handed over is retried: start the next one again.
        assert_eq!(
            decide(Some(handed.clone()), 2, "r2", 1000, LIMITS),
            Claim::RepeatHandOver(Box::new(handed.clone()))
        );
        // Any older event is stale.
        assert_eq!(
            decide(Some(handed.clone()), 2, "rX", 1000, LIMITS),
            Claim::Leave("a later invocation has the call")
        );
        assert_eq!(
            decide(Some(handed.clone()), 0, "r0", 1000, LIMITS),
            Claim::Leave("a later invocation has the call")
        );
        // Once the next one holds it, a repeated hand-over is left alone.
        let taken = LeaseRecord {
            owner: "r3".to_string(),
            ..handed
        };
        assert_eq!(
            decide(Some(taken), 2, "r2", 1000, LIMITS),
            Claim::Leave("a later invocation has the call")
        );
    }

    #[test]
    fn a_call_given_up_or_ended_is_left_alone() {
        let given_up = LeaseRecord {
            failed: true,
            ..record("", 0, 1)
        };
        assert_eq!(
            decide(Some(given_up), 1, "r1", 1000, LIMITS),
            Claim::Leave("the call was given up after failed attempts")
        );
        let ended = LeaseRecord {
            ended: true,
            ..record("", 0, 4)
        };
        assert_eq!(
            decide(Some(ended), 4, "r1", 1000, LIMITS),
            Claim::Leave("the call has already ended")
        );
    }
}

//! [`CallData`] (from `call-lifecycle`: a call as one invocation hands it to the next and as
//! the lease keeps it) and where the pipeline starts reading it.

pub use call_lifecycle::CallData;
use call_lifecycle::verdict::Continuation;

use crate::pipeline::CallPosition;
use crate::source::StartAt;

/// Where an invocation of `call` starts reading.
pub fn position(call: &CallData) -> CallPosition {
    CallPosition {
        start: match &call.last_fragment {
            Some(last) => StartAt::After(last.clone()),
            None => StartAt::Fragment(call.start_fragment_number.clone()),
        },
        session_id: call.session_id.clone(),
        origin_ns: call.origin_ns,
        start_sample: call.start_sample,
    }
}

/// The hand-over point a run that stopped at `position` gives the next invocation (the
/// inverse of [`position`]); `None` when `position` is not after a processed fragment (a run
/// hands over only after one).
pub fn continuation(position: CallPosition) -> Option<Continuation> {
    match position.start {
        StartAt::After(last_fragment) => Some(Continuation {
            last_fragment,
            session_id: position.session_id,
            origin_ns: position.origin_ns,
            start_sample: position.start_sample,
        }),
        StartAt::Fragment(_) | StartAt::Now | StartAt::ProducerTime(_) => None,
    }
}

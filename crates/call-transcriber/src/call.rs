//! [`CallData`] (from `call-lifecycle`: a call as one invocation hands it to the next and as
//! the lease keeps it) and where the pipeline starts reading it.

pub use call_lifecycle::CallData;

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

//! [`CallData`]: a call as one invocation of the transcriber hands it to the next, and as the
//! lease keeps it (the continuation's `callData`, the lease item's `CallData`).

use lca_events::connect::{ContactFlowEvent, Rejection};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A call as it is handed from one invocation to the next (the continuation's `callData`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallData {
    /// LCA CallId.
    pub call_id: String,
    /// Connect ContactId (the stream's ContactId tags).
    pub contact_id: String,
    /// Caller's number.
    pub from_number: String,
    /// Number dialled.
    pub to_number: String,
    /// The agent, when known.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The call's KVS stream.
    pub stream_arn: String,
    /// The contact's first fragment.
    pub start_fragment_number: String,
    /// The last fragment fully processed (absent before the first hand-over).
    #[serde(default)]
    pub last_fragment: Option<String>,
    /// The Transcribe session id to reuse.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Producer timestamp (ns) of the call's first sample.
    #[serde(default)]
    pub origin_ns: Option<i64>,
    /// Samples of the call already transcribed.
    #[serde(default)]
    pub start_sample: u64,
    /// Invocations so far minus one (0 for the first).
    #[serde(default)]
    pub lambda_count: u32,
    /// Extra metadata from the lambda hook (a JSON string).
    #[serde(default)]
    pub metadatajson: Option<String>,
    /// The stream's tracks are the other way round (hook `isCaller: false`).
    #[serde(default)]
    pub swap_channels: bool,
    /// Whether the call is recorded to S3 (hook `shouldRecordCall`).
    #[serde(default = "yes")]
    pub should_record_call: bool,
    /// When Connect started streaming the contact (the event's `StartTimestamp`, epoch ms):
    /// START's CreatedAt, which LCA shows as the call's initiation time, so a call whose
    /// event was processed late (retried, throttled) still shows when it happened.
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    /// Since when (epoch ms) the call has been waiting, invocation after invocation, for a
    /// service with no room for it (`CALL_STALL_TIMEOUT`); absent while the call advances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_since_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

impl CallData {
    /// A new call (CallId = ContactId) at the contact's first fragment: nothing transcribed
    /// yet, recorded, tracks as Connect names them.
    pub fn new(contact_id: &str, stream_arn: &str, start_fragment_number: &str) -> Self {
        Self {
            call_id: contact_id.to_string(),
            contact_id: contact_id.to_string(),
            from_number: String::new(),
            to_number: String::new(),
            agent_id: None,
            stream_arn: stream_arn.to_string(),
            start_fragment_number: start_fragment_number.to_string(),
            last_fragment: None,
            session_id: None,
            origin_ns: None,
            start_sample: 0,
            lambda_count: 0,
            metadatajson: None,
            swap_channels: false,
            should_record_call: true,
            started_at_ms: None,
            stalled_since_ms: None,
        }
    }

    /// The call a Connect contact-flow event starts (before any lambda hook): its stream
    /// and first fragment, the caller's and the dialled number, the agent when the flow set
    /// `AgentId`, and when Connect started streaming it. Checked as StartLCA checks it
    /// ([`ContactFlowEvent::streaming_contact`] against `instance_arn`).
    pub fn of_contact_flow_event(event: &Value, instance_arn: &str) -> Result<Self, Rejection> {
        let contact = ContactFlowEvent::streaming_contact(event, instance_arn)?;
        let parsed: ContactFlowEvent = serde_json::from_value(event.clone())
            .map_err(|e| Rejection::Malformed(lca_events::json_problem(&e)))?;
        let data = parsed.details.contact_data;
        let address = |e: Option<lca_events::connect::Endpoint>| {
            e.and_then(|e| e.address).unwrap_or_default()
        };
        let started_at_ms = data
            .media_streams
            .and_then(|m| m.customer)
            .and_then(|c| c.audio)
            .and_then(|a| a.start_timestamp)
            .and_then(|t| t.trim().parse::<u64>().ok());
        Ok(Self {
            from_number: address(data.customer_endpoint),
            to_number: address(data.system_endpoint),
            agent_id: data.attributes.get("AgentId").cloned(),
            started_at_ms,
            ..Self::new(
                &contact.contact_id,
                &contact.stream_arn,
                &contact.start_fragment_number,
            )
        })
    }
}

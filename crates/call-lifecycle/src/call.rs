//! [`CallData`]: a call as one invocation of the transcriber hands it to the next, and as the
//! lease keeps it (the continuation's `callData`, the lease item's `CallData`).

use call_settings::{AttributeError, CallSettings, ContactChoice, ContactPolicy, ContactSettings};
use lca_events::LcaMessage;
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
    /// The Transcribe settings the call is transcribed with, chosen once before it starts
    /// (the stack's, or its contact attributes'), so that no hand-over, retry or stack update
    /// changes them mid-call. Absent in a call from an earlier version: the stack's apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<ContactSettings>,
    /// The contact's transfer links and how it started (`InitialContactId`,
    /// `PreviousContactId`, `InitiationMethod`): START's metadata carries them.
    #[serde(default, skip_serializing_if = "ContactLinks::is_empty")]
    pub links: ContactLinks,
    /// LCA messages an earlier run produced but could not put on Kinesis (a Kinesis stall),
    /// in the order produced, partial results left out: published first by the run that
    /// takes the call at this position, which does not transcribe their audio again
    /// ([`crate::verdict::after_stall`]). Transcript text kept in the lease item, as the
    /// call's numbers are; empty whenever the call advanced normally.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<LcaMessage>,
}

/// How a contact relates to others (Connect contact-flow event `ContactData`; each leg of a
/// transferred call is a contact of its own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContactLinks {
    /// The first contact of the call (a transferred leg names the leg it began as).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_contact_id: Option<String>,
    /// The contact this one was transferred from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_contact_id: Option<String>,
    /// `INBOUND`, `OUTBOUND`, `TRANSFER`, `QUEUE_TRANSFER`, `CALLBACK`, `API`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiation_method: Option<String>,
}

impl ContactLinks {
    /// Nothing known.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
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
            settings: None,
            links: ContactLinks::default(),
            pending: Vec::new(),
        }
    }

    /// The call a Connect contact-flow event starts (before any lambda hook): its stream
    /// and first fragment, the caller's and the dialled number, the agent when the flow set
    /// `AgentId`, when Connect started streaming it, its transfer links, and the Transcribe
    /// settings its contact attributes choose under `contacts`. Checked as StartLCA checks it
    /// ([`ContactFlowEvent::streaming_contact`] against `instance_arn`, then
    /// [`ContactPolicy::for_contact`]).
    pub fn of_contact_flow_event(
        event: &Value,
        instance_arn: &str,
        contacts: &ContactPolicy,
    ) -> Result<Self, NoCall> {
        let contact = ContactFlowEvent::streaming_contact(event, instance_arn)?;
        let parsed: ContactFlowEvent = serde_json::from_value(event.clone())
            .map_err(|e| Rejection::Malformed(lca_events::json_problem(&e)))?;
        let data = parsed.details.contact_data;
        let settings = match contacts.for_contact(&data.attributes)? {
            ContactChoice::Transcribe(settings) => *settings,
            ContactChoice::Skip => {
                return Err(NoCall::NotTranscribed {
                    contact_id: contact.contact_id,
                });
            }
        };
        let address = |e: Option<lca_events::connect::Endpoint>| {
            e.and_then(|e| e.address).unwrap_or_default()
        };
        let started_at_ms = data
            .media_streams
            .and_then(|m| m.customer)
            .and_then(|c| c.audio)
            .and_then(|a| a.start_timestamp)
            .and_then(|t| t.trim().parse::<u64>().ok());
        // Ids of other contacts: kept only when they are ids (bounded, no control characters).
        let id = |value: Option<String>| value.filter(|v| lca_events::check_call_id(v).is_ok());
        Ok(Self {
            from_number: address(data.customer_endpoint),
            to_number: address(data.system_endpoint),
            agent_id: data.attributes.get("AgentId").cloned(),
            started_at_ms,
            settings: Some(settings),
            links: ContactLinks {
                initial_contact_id: id(data.initial_contact_id),
                previous_contact_id: id(data.previous_contact_id),
                initiation_method: id(data.initiation_method),
            },
            ..Self::new(
                &contact.contact_id,
                &contact.stream_arn,
                &contact.start_fragment_number,
            )
        })
    }
}

impl CallData {
    /// START's `Metadatajson`: the lambda hook's metadata (a JSON object) with the contact's
    /// transfer links and the Transcribe settings the call uses added (LCA keeps the
    /// metadata with the call record), so a transferred leg can be tied to the first and an
    /// operator sees why a call was transcribed as it was. `stack` stands for the settings
    /// of a call from an earlier version. A hook's metadata that is not a JSON object is kept
    /// as it is, without the additions (nothing of it lost). Holds no customer data: ids,
    /// the contact's initiation method and setting values.
    pub fn start_metadata(&self, stack: &CallSettings) -> Option<String> {
        let mut metadata = match self.metadatajson.as_deref() {
            None => serde_json::Map::new(),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(object)) => object,
                _ => return Some(text.to_string()),
            },
        };
        let links = serde_json::to_value(&self.links).expect("strings serialize");
        if let Value::Object(links) = links {
            for (key, value) in links {
                metadata.entry(key).or_insert(value);
            }
        }
        let (settings, from_attributes) = match &self.settings {
            Some(chosen) => (&chosen.settings, chosen.from_attributes.clone()),
            None => (stack, Vec::new()),
        };
        metadata
            .entry("TranscribeSettings")
            .or_insert_with(|| serde_json::json!(settings.to_variables()));
        metadata
            .entry("TranscribeSettingsFromContactAttributes")
            .or_insert_with(|| serde_json::json!(from_attributes));
        Some(Value::Object(metadata).to_string())
    }
}

/// Why a contact-flow event starts no call: StartLCA answers [`Self::code`] to the flow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoCall {
    /// The event or the contact cannot be transcribed.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A contact attribute is not allowed or not valid.
    #[error(transparent)]
    Attribute(#[from] AttributeError),
    /// The flow said not to transcribe the contact (`LCA_TRANSCRIBE=false`).
    #[error("contact {contact_id}: not transcribed, as its flow asked (contact attribute {attribute}=false)", attribute = call_settings::contact::SKIP_ATTRIBUTE)]
    NotTranscribed {
        /// The contact.
        contact_id: String,
    },
}

impl NoCall {
    /// The code the flow branches on (`$.External.error`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Rejected(rejection) => rejection.code(),
            Self::Attribute(error) => error.code(),
            Self::NotTranscribed { .. } => "NOT_TRANSCRIBED",
        }
    }
}

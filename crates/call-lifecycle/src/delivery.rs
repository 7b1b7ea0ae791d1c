//! Deliveries that name a call kept in its lease instead of carrying it: StartLCA's start of
//! a new call (`{"action":"LAMBDA_START","contactId","lambdaCount":0}`, after it wrote the
//! lease), the hand-over (`{"action":"LAMBDA_CONTINUE","contactId","lambdaCount"}`) and the
//! sweep's rescue (`{"action":"LAMBDA_RESCUE","contactId","lambdaCount","reason"}`). None holds
//! customer data, so neither does Lambda's failure queue when it keeps one (14 days): the
//! call's numbers and metadata stay in the lease item. Pure: parsed and fuzzed without a
//! request.

use call_settings::ContactPolicy;
use serde_json::{Value, json};

use crate::call::{CallData, NoCall};

/// The `action` of StartLCA's event once it has written the call's lease.
pub const START_ACTION: &str = "LAMBDA_START";

/// The `action` of a hand-over.
pub const CONTINUE_ACTION: &str = "LAMBDA_CONTINUE";

/// The `action` of a rescue event.
pub const RESCUE_ACTION: &str = "LAMBDA_RESCUE";

/// Why a call is delivered by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedBy {
    /// StartLCA wrote the lease of a new call: the first invocation.
    Start,
    /// The previous invocation handed the call over: the lease must name this invocation.
    HandOver,
    /// The sweep found nobody looking after the call: it is taken up as the lease stands.
    Rescue,
}

/// A delivery naming a call in the lease table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedCall {
    /// The contact (the lease's key).
    pub contact_id: String,
    /// The invocation the event is for (a hand-over), or the one the lease named when the
    /// sweep found it (a rescue).
    pub lambda_count: u32,
    /// Who sent it.
    pub by: NamedBy,
}

/// StartLCA's event for the new call `contact_id` whose lease it wrote.
pub fn start_event(contact_id: &str) -> Value {
    json!({"action": START_ACTION, "contactId": contact_id, "lambdaCount": 0})
}

/// The hand-over event for invocation `lambda_count` of `contact_id`.
pub fn hand_over_event(contact_id: &str, lambda_count: u32) -> Value {
    json!({"action": CONTINUE_ACTION, "contactId": contact_id, "lambdaCount": lambda_count})
}

/// The call `event` names; `None` when it is not such a delivery (a contact-flow event, or a
/// hand-over of an earlier version carrying `callData`). An error names what is wrong.
pub fn named_call_of_event(event: &Value) -> Result<Option<NamedCall>, String> {
    let action = event.get("action").and_then(Value::as_str);
    let by = match action {
        Some(START_ACTION) => NamedBy::Start,
        Some(CONTINUE_ACTION) if event.get("callData").is_none() => NamedBy::HandOver,
        Some(RESCUE_ACTION) => NamedBy::Rescue,
        _ => return Ok(None),
    };
    let action = action.unwrap_or_default();
    let contact_id = event["contactId"].as_str().unwrap_or_default();
    lca_events::check_call_id(contact_id)
        .map_err(|problem| format!("{action}: contactId is {problem}"))?;
    let lambda_count = event["lambdaCount"]
        .as_u64()
        .and_then(|c| u32::try_from(c).ok())
        .ok_or_else(|| format!("{action}: lambdaCount is not a whole number"))?;
    Ok(Some(NamedCall {
        contact_id: contact_id.to_string(),
        lambda_count,
        by,
    }))
}

/// Why an invocation's event gives no call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    /// The event is neither a contact-flow event nor a hand-over: what is wrong with it.
    #[error("{0}")]
    Unusable(String),
    /// A contact-flow event that starts no call.
    #[error(transparent)]
    NoCall(#[from] NoCall),
}

/// The call an invocation's event gives when it does not name one ([`named_call_of_event`]):
/// a contact-flow event's new call (checked against `connect_instance_arn`, or the event's own
/// instance when unset), or the call a `LAMBDA_CONTINUE` hand-over carries (`callData`:
/// without a lease table, and from earlier versions); and whether it is new. Everything the
/// handler does with such an event before its first request; fuzzed on its own.
pub fn call_of_event(
    event: &Value,
    connect_instance_arn: Option<&str>,
    contacts: &ContactPolicy,
) -> Result<(CallData, bool), EventError> {
    if event.get("action").and_then(Value::as_str) != Some(CONTINUE_ACTION) {
        let instance = connect_instance_arn.unwrap_or_else(|| {
            event["Details"]["ContactData"]["InstanceARN"]
                .as_str()
                .unwrap_or_default()
        });
        return Ok((
            CallData::of_contact_flow_event(event, instance, contacts)?,
            true,
        ));
    }
    // A chain of continuations is bounded by the call's length (MAX_CALL_DURATION, counted
    // in call audio, which every hand-over advances), not by a count.
    let call: CallData = serde_json::from_value(event["callData"].clone()).map_err(|e| {
        EventError::Unusable(format!(
            "{CONTINUE_ACTION} callData: {}",
            lca_events::json_problem(&e)
        ))
    })?;
    lca_events::check_call_id(&call.call_id).map_err(|problem| {
        EventError::Unusable(format!("{CONTINUE_ACTION} callData: callId is {problem}"))
    })?;
    // Settings a hand-over carries are checked as a contact's were, so a bad one fails here,
    // before the first request, not as Transcribe's BadRequestException mid-call.
    if let Some(chosen) = &call.settings {
        // The variable only: the event's values are not quoted.
        chosen.settings.check().map_err(|error| {
            EventError::Unusable(format!(
                "{CONTINUE_ACTION} callData: settings: {} is not valid (the settings a \
                 hand-over carries are what StartLCA or the first invocation checked)",
                error.variable
            ))
        })?;
    }
    Ok((call, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_calls_are_read_and_bad_ones_named() {
        let event = json!({"action": "LAMBDA_RESCUE", "contactId": "c-1", "lambdaCount": 3});
        assert_eq!(
            named_call_of_event(&event),
            Ok(Some(NamedCall {
                contact_id: "c-1".into(),
                lambda_count: 3,
                by: NamedBy::Rescue,
            }))
        );
        assert_eq!(
            named_call_of_event(&hand_over_event("c-2", 4)),
            Ok(Some(NamedCall {
                contact_id: "c-2".into(),
                lambda_count: 4,
                by: NamedBy::HandOver,
            }))
        );
        assert_eq!(
            named_call_of_event(&start_event("c-3")),
            Ok(Some(NamedCall {
                contact_id: "c-3".into(),
                lambda_count: 0,
                by: NamedBy::Start,
            }))
        );
        // An earlier version's hand-over carries the call: read by `call_of_event`.
        let legacy = json!({"action": "LAMBDA_CONTINUE", "callData": {"callId": "c"}});
        assert_eq!(named_call_of_event(&legacy), Ok(None));
        assert_eq!(
            named_call_of_event(&json!({"Name": "ContactFlowEvent"})),
            Ok(None)
        );
        let error = named_call_of_event(&json!({"action": "LAMBDA_RESCUE", "lambdaCount": 1}));
        assert!(
            error
                .unwrap_err()
                .contains("LAMBDA_RESCUE: contactId is 0 characters")
        );
        let error = named_call_of_event(
            &json!({"action": "LAMBDA_CONTINUE", "contactId": "c", "lambdaCount": -1}),
        );
        assert!(error.unwrap_err().contains("LAMBDA_CONTINUE: lambdaCount"));
        let long = "c".repeat(lca_events::MAX_CALL_ID_CHARS + 1);
        let error = named_call_of_event(&hand_over_event(&long, 1));
        assert!(
            error
                .unwrap_err()
                .contains("contactId is 257 characters long; it must be 1 to 256"),
        );
    }
}

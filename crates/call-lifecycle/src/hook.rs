//! The customer's lambda hook (`LAMBDA_HOOK_FUNCTION_ARN`, as in LCA's reference): what its
//! answer may change in a new call ([`HookAnswer`]), within the limits on what a call carries,
//! and how its response is read ([`hook_answer`]). Pure: the transcriber invokes the hook and
//! hands the response here.

use serde::Deserialize;
use serde_json::Value;

use crate::call::CallData;

/// The hook's response could not be used: what was wrong, never the payload (it may hold the
/// caller's number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HookFailed(pub String);

/// What a lambda hook may answer; every field optional (as the LCA reference reads it).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookAnswer {
    /// A different CallId.
    pub call_id: Option<String>,
    /// `false`: the stream's tracks are swapped (caller audio on AUDIO_TO_CUSTOMER).
    pub is_caller: Option<bool>,
    /// The agent.
    pub agent_id: Option<String>,
    /// Caller's number.
    pub from_number: Option<String>,
    /// Number dialled.
    pub to_number: Option<String>,
    /// Metadata for START, a JSON string.
    pub metadatajson: Option<String>,
    /// `false`: do not process the call at all.
    pub should_process_call: Option<bool>,
    /// `false`: do not record the call.
    pub should_record_call: Option<bool>,
}

/// A lambda hook's answer beyond one of the limits on what a call carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the answer's {field} is {size} {unit} long, beyond {limit_name} ({limit} {unit}: {why})")]
pub struct AnswerTooLarge {
    /// The answer's field.
    pub field: &'static str,
    /// Its size.
    pub size: usize,
    /// `characters` or `bytes`.
    pub unit: &'static str,
    /// The limit's name in the code.
    pub limit_name: &'static str,
    /// The limit.
    pub limit: usize,
    /// Why there is one.
    pub why: &'static str,
}

/// Longest agent id or phone number a lambda hook may give: they ride in START and in every
/// hand-over of the call.
pub const MAX_HOOK_TEXT_CHARS: usize = 256;

/// Largest `metadatajson` a lambda hook may give: it rides in START and in every hand-over
/// payload, which Lambda limits to 256 KB for an asynchronous invocation (Lambda quotas,
/// "Invocation payload"); a call whose hand-over could not be sent would be cut short.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

impl HookAnswer {
    /// Applies the answer; returns whether the call is to be processed. An answer beyond a
    /// limit changes nothing and says which.
    pub fn apply(self, call: &mut CallData) -> Result<bool, AnswerTooLarge> {
        self.check()?;
        let set = |field: &mut String, value: Option<String>| {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                *field = value;
            }
        };
        set(&mut call.call_id, self.call_id);
        set(&mut call.from_number, self.from_number);
        set(&mut call.to_number, self.to_number);
        if let Some(agent) = self.agent_id.filter(|a| !a.is_empty()) {
            call.agent_id = Some(agent);
        }
        if let Some(metadata) = self.metadatajson.filter(|m| !m.is_empty()) {
            call.metadatajson = Some(metadata);
        }
        if self.is_caller == Some(false) {
            call.swap_channels = true;
        }
        if let Some(record) = self.should_record_call {
            call.should_record_call = record;
        }
        Ok(self.should_process_call != Some(false))
    }

    fn check(&self) -> Result<(), AnswerTooLarge> {
        let chars = |field, value: &Option<String>, limit_name, limit, why| {
            let size = value.as_deref().map_or(0, |v| v.chars().count());
            if size > limit {
                return Err(AnswerTooLarge {
                    field,
                    size,
                    unit: "characters",
                    limit_name,
                    limit,
                    why,
                });
            }
            Ok(())
        };
        chars(
            "callId",
            &self.call_id,
            "MAX_CALL_ID_CHARS",
            lca_events::MAX_CALL_ID_CHARS,
            "LCA's Kinesis partition key",
        )?;
        for (field, value) in [
            ("agentId", &self.agent_id),
            ("fromNumber", &self.from_number),
            ("toNumber", &self.to_number),
        ] {
            chars(
                field,
                value,
                "MAX_HOOK_TEXT_CHARS",
                MAX_HOOK_TEXT_CHARS,
                "carried in START and every hand-over",
            )?;
        }
        let size = self.metadatajson.as_deref().map_or(0, str::len);
        if size > MAX_METADATA_BYTES {
            return Err(AnswerTooLarge {
                field: "metadatajson",
                size,
                unit: "bytes",
                limit_name: "MAX_METADATA_BYTES",
                limit: MAX_METADATA_BYTES,
                why: "carried in START and every hand-over, whose payload Lambda limits to 256 KB",
            });
        }
        Ok(())
    }
}

/// The lambda hook's answer from its invocation's response: the payload, and the function
/// error when the hook failed (Lambda's `X-Amz-Function-Error`). Fuzzed on its own.
pub fn hook_answer(payload: &[u8], function_error: Option<&str>) -> Result<HookAnswer, HookFailed> {
    if let Some(kind) = function_error {
        return Err(HookFailed(format!(
            "function error ({}): {}; its errorMessage is not repeated here, as it may hold customer data: see the hook's own log",
            lca_events::excerpt(kind),
            hook_error_type(payload)
        )));
    }
    if payload.is_empty() || payload == b"null" {
        return Ok(HookAnswer::default());
    }
    serde_json::from_slice(payload).map_err(|e| {
        HookFailed(format!(
            "answer is not the expected JSON object: {}",
            lca_events::json_problem(&e)
        ))
    })
}

/// The `errorType` of a function error's payload (Lambda's `{"errorType", "errorMessage"}`),
/// kept only when it looks like a type name: the error reaches the log, the lease and the
/// failure queue, and must not carry the customer data a message might.
fn hook_error_type(payload: &[u8]) -> String {
    let kind = serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v["errorType"].as_str().map(str::to_string))
        .unwrap_or_default();
    let name_like = !kind.is_empty()
        && kind.len() <= 100
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-$".contains(c));
    if name_like {
        format!("errorType {kind}")
    } else {
        "no errorType".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call() -> CallData {
        CallData {
            from_number: "+1555".into(),
            to_number: "+1666".into(),
            ..CallData::new("c-1", "arn:aws:kinesisvideo:us-east-1:1:stream/s/1", "1")
        }
    }

    fn apply(answer: Value) -> (bool, CallData) {
        let mut call = call();
        let answer: HookAnswer = serde_json::from_value(answer).unwrap();
        (answer.apply(&mut call).unwrap(), call)
    }

    #[test]
    fn an_answer_beyond_a_limit_changes_nothing_and_names_the_limit() {
        let too_long = |field: &str, len: usize| {
            let mut call = call();
            let answer: HookAnswer =
                serde_json::from_value(json!({ field: "x".repeat(len) })).unwrap();
            let error = answer.apply(&mut call).unwrap_err().to_string();
            assert_eq!(call, self::call(), "nothing applied");
            error
        };
        let error = too_long("callId", 257);
        assert!(
            error.contains("callId is 257 characters long, beyond MAX_CALL_ID_CHARS (256"),
            "{error}"
        );
        assert!(too_long("fromNumber", 300).contains("MAX_HOOK_TEXT_CHARS"));
        assert!(too_long("metadatajson", 70_000).contains("metadatajson is 70000 bytes"));
        // At the limit, taken.
        let (_, c) = apply(json!({"callId": "é".repeat(256)}));
        assert_eq!(c.call_id.chars().count(), 256);
    }

    #[test]
    fn each_hook_field_overrides_its_part_of_the_call() {
        let (process, c) = apply(json!({}));
        assert!(process);
        assert_eq!(c, call(), "an empty answer changes nothing");
        let (_, c) = apply(json!({"callId": "custom-1"}));
        assert_eq!(
            (c.call_id.as_str(), c.contact_id.as_str()),
            ("custom-1", "c-1")
        );
        assert!(apply(json!({"isCaller": false})).1.swap_channels);
        assert!(!apply(json!({"isCaller": true})).1.swap_channels);
        assert_eq!(
            apply(json!({"agentId": "alex"})).1.agent_id.as_deref(),
            Some("alex")
        );
        assert_eq!(apply(json!({"fromNumber": "+1777"})).1.from_number, "+1777");
        assert_eq!(apply(json!({"toNumber": "+1888"})).1.to_number, "+1888");
        assert_eq!(
            apply(json!({"metadatajson": "{\"k\":1}"}))
                .1
                .metadatajson
                .as_deref(),
            Some("{\"k\":1}")
        );
        assert!(!apply(json!({"shouldProcessCall": false})).0);
        assert!(apply(json!({"shouldProcessCall": true})).0);
        assert!(
            !apply(json!({"shouldRecordCall": false}))
                .1
                .should_record_call
        );
        // Continuation data written before these fields existed still reads.
        let old: CallData = serde_json::from_value(json!({
            "callId": "c", "contactId": "c", "fromNumber": "", "toNumber": "",
            "streamArn": "a", "startFragmentNumber": "1"
        }))
        .unwrap();
        assert!(old.should_record_call && !old.swap_channels);
    }
}

//! The contact-event processor: when Amazon Connect reports (through EventBridge) that a voice
//! contact was connected to an agent, it tells LCA who the agent is with an UPDATE_AGENT
//! message, once the call is being transcribed. A Rust port of the LCA reference's inline
//! Python function, with the call looked up in the transcriber's own lease table (keyed by
//! ContactId, so a CallId changed by the lambda hook is honoured) and UPDATE_AGENT sent only
//! after START is on the stream, so LCA never sees the agent of a call it does not know.

use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use call_lease::CallLease;
use call_metrics::{Dimension, EmfRecord, Metric};
use lca_events::{Agent, LcaEvent, LcaMessage};
use serde::Deserialize;
use serde_json::{Value, json};

/// The processor's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorConfig {
    /// `KINESIS_STREAM_NAME`: the LCA data stream.
    pub kinesis_stream_name: String,
    /// `TRANSCRIBER_CALL_EVENT_TABLE_NAME`: the transcriber's lease table.
    pub call_event_table: String,
    /// `WAIT_FOR_CALL_SECS` (reference default 15): how long to wait for the call to start
    /// transcribing.
    pub wait_for_call: Duration,
    /// `CONNECT_INSTANCE_ARN`: events of other instances are ignored (unset: any).
    pub connect_instance_arn: Option<String>,
    /// `METRICS_NAMESPACE` (default `LCA/ConnectKVS`): the namespace of the metrics line,
    /// the transcriber's (the template sets one per stack).
    pub metrics_namespace: String,
}

pub use aws_edge::ConfigError;
use aws_edge::Settings;

impl ProcessorConfig {
    /// Every environment variable the processor reads.
    pub const VARIABLES: &'static [&'static str] = &[
        "CONNECT_INSTANCE_ARN",
        "KINESIS_STREAM_NAME",
        "METRICS_NAMESPACE",
        "TRANSCRIBER_CALL_EVENT_TABLE_NAME",
        "WAIT_FOR_CALL_SECS",
    ];

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`; empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Settings::new(&lookup);
        Ok(Self {
            kinesis_stream_name: env.required(
                "KINESIS_STREAM_NAME",
                "the LCA Kinesis data stream UPDATE_AGENT goes to",
            )?,
            call_event_table: env.required(
                "TRANSCRIBER_CALL_EVENT_TABLE_NAME",
                "the call transcriber's table, where calls being transcribed are found",
            )?,
            wait_for_call: Duration::from_secs(env.number("WAIT_FOR_CALL_SECS", 15, ..=600)?),
            connect_instance_arn: env.get("CONNECT_INSTANCE_ARN"),
            metrics_namespace: env.metrics_namespace()?,
        })
    }
}

/// The parts of an EventBridge "Amazon Connect Contact Event" the processor reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ContactEvent {
    /// `detail`.
    pub detail: ContactEventDetail,
}

/// `detail` of a contact event.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactEventDetail {
    /// The contact.
    pub contact_id: String,
    /// The instance.
    pub instance_arn: String,
    /// `VOICE`, `CHAT`, `TASK`, ...
    #[serde(default)]
    pub channel: Option<String>,
    /// `CONNECTED_TO_AGENT`, `INITIATED`, `DISCONNECTED`, ...
    pub event_type: String,
    /// The agent, on agent events.
    #[serde(default)]
    pub agent_info: Option<AgentInfo>,
}

/// `detail.agentInfo`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentInfo {
    /// `arn:aws:connect:<region>:<account>:instance/<instance id>/agent/<user id>`.
    #[serde(default)]
    pub agent_arn: Option<String>,
}

/// The instance id and user id named by an agent ARN (what DescribeUser takes).
pub fn agent_ids(agent_arn: &str) -> Option<(&str, &str)> {
    let resource = agent_arn.splitn(6, ':').nth(5)?;
    let mut parts = resource.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("instance"), Some(instance), Some("agent"), Some(user), None)
            if !instance.is_empty() && !user.is_empty() =>
        {
            Some((instance, user))
        }
        _ => None,
    }
}

/// How LCA shows an agent, as the reference builds it: `First Last (username)`; parts that
/// are missing are left out.
pub fn agent_label(first: Option<&str>, last: Option<&str>, username: Option<&str>) -> String {
    let name = [first, last]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    match username.filter(|u| !u.is_empty()) {
        Some(user) if name.is_empty() => user.to_string(),
        Some(user) => format!("{name} ({user})"),
        None => name,
    }
}

/// Why an event could not be processed (Lambda retries the event).
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// The event is not a contact event.
    #[error("not an Amazon Connect contact event: {0}")]
    Event(String),
    /// The lease table failed.
    #[error(transparent)]
    Lease(#[from] call_lease::LeaseError),
    /// DescribeUser failed.
    #[error("DescribeUser {agent_arn}: {message}")]
    Agent {
        /// The agent.
        agent_arn: String,
        /// The error.
        message: String,
    },
    /// PutRecord failed.
    #[error("call {call_id}: UPDATE_AGENT could not be put on {stream}: {message}")]
    Kinesis {
        /// The call.
        call_id: String,
        /// The stream.
        stream: String,
        /// The error.
        message: String,
    },
}

/// The metrics line of one event (CloudWatch EMF): `ContactEvents`, also by `Outcome` (the
/// answer's status, or FAILED).
pub fn event_metrics(result: &Result<Value, ProcessorError>, timestamp_ms: u64) -> EmfRecord {
    let outcome = match result {
        Ok(answer) => answer["status"].as_str().unwrap_or("UNKNOWN"),
        Err(_) => "FAILED",
    };
    let mut record = EmfRecord::new(timestamp_ms);
    record
        .add(Metric::ContactEvents, 1.0)
        .dimension(Dimension::Outcome, outcome);
    if let Ok(answer) = result
        && let Some(call_id) = answer["callId"].as_str()
    {
        record.member("CallId", call_id);
    }
    record
}

/// The handler and its clients.
#[derive(Debug, Clone)]
pub struct ContactEventProcessor {
    /// Settings.
    pub config: ProcessorConfig,
    /// Connect (DescribeUser).
    pub connect: aws_sdk_connect::Client,
    /// The transcriber's lease table.
    pub lease: CallLease,
    /// The LCA stream.
    pub kinesis: aws_sdk_kinesis::Client,
}

/// How often the lease table is asked whether the call has started.
const POLL: Duration = Duration::from_millis(500);

impl ContactEventProcessor {
    /// The processor with clients built from `sdk`, every request under the time limits
    /// all functions share ([`aws_edge::with_timeouts`]).
    pub fn new(config: ProcessorConfig, sdk: &aws_config::SdkConfig) -> Self {
        let sdk = &aws_edge::with_timeouts(sdk);
        Self {
            connect: aws_sdk_connect::Client::new(sdk),
            lease: CallLease::new(
                aws_sdk_dynamodb::Client::new(sdk),
                config.call_event_table.clone(),
                // Only read here.
                Duration::from_secs(30),
            ),
            kinesis: aws_sdk_kinesis::Client::new(sdk),
            config,
        }
    }

    /// Handles one EventBridge event; the answer says what was done.
    pub async fn handle(&self, event: Value) -> Result<Value, ProcessorError> {
        let event: ContactEvent = serde_json::from_value(event)
            .map_err(|e| ProcessorError::Event(lca_events::json_problem(&e)))?;
        let detail = event.detail;
        let ignored = |reason: &str| {
            tracing::info!(contact_id = %detail.contact_id, reason, "contact event ignored");
            Ok(json!({"status": "IGNORED", "contactId": detail.contact_id, "reason": reason}))
        };
        if detail.event_type != "CONNECTED_TO_AGENT" {
            return ignored("not CONNECTED_TO_AGENT");
        }
        if detail.channel.as_deref().is_some_and(|c| c != "VOICE") {
            return ignored("not a voice contact");
        }
        if let Some(instance) = &self.config.connect_instance_arn
            && instance != &detail.instance_arn
        {
            return ignored("another Connect instance");
        }
        let Some(agent_arn) = detail.agent_info.as_ref().and_then(|a| a.agent_arn.clone()) else {
            return ignored("no agent in the event");
        };
        let Some(call_id) = self.wait_for_call(&detail.contact_id).await? else {
            tracing::info!(contact_id = %detail.contact_id, "the call is not being transcribed");
            return Ok(json!({"status": "UNKNOWN_CALL", "contactId": detail.contact_id}));
        };
        let agent_id = self.agent_id(&agent_arn).await?;
        let message = LcaMessage {
            call_id: call_id.clone(),
            event: LcaEvent::UpdateAgent(Agent { agent_id }),
        };
        // Serializing our own message type cannot fail.
        let data = serde_json::to_vec(&message).expect("LCA message JSON");
        self.kinesis
            .put_record()
            .stream_name(&self.config.kinesis_stream_name)
            .partition_key(&call_id)
            .data(Blob::new(data))
            .send()
            .await
            .map_err(|e| ProcessorError::Kinesis {
                call_id: call_id.clone(),
                stream: self.config.kinesis_stream_name.clone(),
                message: aws_edge::error_text(&e),
            })?;
        tracing::info!(call_id = %call_id, "UPDATE_AGENT published");
        Ok(json!({"status": "UPDATED", "callId": call_id}))
    }

    /// The call's CallId once its START is on the stream, or `None` after the wait.
    async fn wait_for_call(&self, contact_id: &str) -> Result<Option<String>, ProcessorError> {
        let give_up = tokio::time::Instant::now() + self.config.wait_for_call;
        loop {
            if let Some(record) = self.lease.read(contact_id).await?
                && record.delivered.started
            {
                return Ok(Some(record.call.call_id));
            }
            if tokio::time::Instant::now() + POLL > give_up {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// How LCA is to show the agent.
    async fn agent_id(&self, agent_arn: &str) -> Result<String, ProcessorError> {
        let failed = |message: String| ProcessorError::Agent {
            agent_arn: agent_arn.to_string(),
            message,
        };
        let (instance, user) = agent_ids(agent_arn)
            .ok_or_else(|| failed("not an agent ARN (…:instance/<id>/agent/<id>)".to_string()))?;
        let output = self
            .connect
            .describe_user()
            .instance_id(instance)
            .user_id(user)
            .send()
            .await
            .map_err(|e| failed(aws_edge::error_text(&e)))?;
        let user = output
            .user
            .ok_or_else(|| failed("the answer has no User".to_string()))?;
        let identity = user.identity_info.as_ref();
        Ok(agent_label(
            identity.and_then(|i| i.first_name.as_deref()),
            identity.and_then(|i| i.last_name.as_deref()),
            user.username.as_deref(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_is_counted_by_outcome() {
        let cases = [
            (Ok(json!({"status": "UPDATED", "callId": "c-1"})), "UPDATED"),
            (Ok(json!({"status": "IGNORED"})), "IGNORED"),
            (Err(ProcessorError::Event("x".into())), "FAILED"),
        ];
        for (result, outcome) in cases {
            let line = event_metrics(&result, 5).to_line();
            let extracted = call_metrics::validate(&line).unwrap();
            assert!(
                extracted.iter().any(|e| e.name == "ContactEvents"
                    && e.dimensions == [("Outcome".to_string(), outcome.to_string())]
                    && e.values == [1.0]),
                "{line}"
            );
        }
        let env = |name: &str| match name {
            "KINESIS_STREAM_NAME" | "TRANSCRIBER_CALL_EVENT_TABLE_NAME" => Some("x".to_string()),
            "METRICS_NAMESPACE" => Some("AWS/Mine".to_string()),
            _ => None,
        };
        let error = ProcessorConfig::from_lookup(env).unwrap_err();
        assert_eq!(error.variable, "METRICS_NAMESPACE");
    }

    #[test]
    fn agent_arns_name_instance_and_user() {
        assert_eq!(
            agent_ids("arn:aws:connect:us-east-1:123456789012:instance/inst-1/agent/user-9"),
            Some(("inst-1", "user-9"))
        );
        for bad in [
            "arn:aws:connect:us-east-1:1:instance/inst-1",
            "arn:aws:connect:us-east-1:1:instance/inst-1/queue/q",
            "arn:aws:connect:us-east-1:1:instance//agent/u",
            "user-9",
        ] {
            assert_eq!(agent_ids(bad), None, "{bad}");
        }
    }

    #[test]
    fn agents_are_labelled_as_the_reference_does() {
        assert_eq!(
            agent_label(Some("Jane"), Some("Doe"), Some("jdoe")),
            "Jane Doe (jdoe)"
        );
        assert_eq!(agent_label(None, Some("Doe"), Some("jdoe")), "Doe (jdoe)");
        assert_eq!(agent_label(Some(""), None, Some("jdoe")), "jdoe");
        assert_eq!(agent_label(Some("Jane"), None, None), "Jane");
    }

    #[test]
    fn settings_name_their_variable() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let ok = ProcessorConfig::from_lookup(env(&[
            ("KINESIS_STREAM_NAME", "lca"),
            ("TRANSCRIBER_CALL_EVENT_TABLE_NAME", "calls"),
        ]))
        .unwrap();
        assert_eq!(ok.wait_for_call, Duration::from_secs(15));
        let asked = std::cell::RefCell::new(Vec::new());
        let _ = ProcessorConfig::from_lookup(|name| {
            asked.borrow_mut().push(name.to_string());
            Some("1".to_string())
        });
        let mut asked = asked.into_inner();
        asked.sort();
        asked.dedup();
        assert_eq!(
            asked,
            ProcessorConfig::VARIABLES,
            "the list is what is read"
        );
        let missing =
            ProcessorConfig::from_lookup(env(&[("KINESIS_STREAM_NAME", "lca")])).unwrap_err();
        assert_eq!(missing.variable, "TRANSCRIBER_CALL_EVENT_TABLE_NAME");
        let bad = ProcessorConfig::from_lookup(env(&[
            ("KINESIS_STREAM_NAME", "lca"),
            ("TRANSCRIBER_CALL_EVENT_TABLE_NAME", "calls"),
            ("WAIT_FOR_CALL_SECS", "soon"),
        ]))
        .unwrap_err();
        assert_eq!(bad.variable, "WAIT_FOR_CALL_SECS");
    }
}

//! StartLCA: answers the contact flow at once and starts the call transcriber for the
//! contact with an asynchronous (Event) invocation. With the call lease table it first writes
//! the call's lease (`call_lease::CallLease::create_pending`: the call's data, kept there, and
//! open, so that the sweep starts the call if Lambda loses the event) and invokes the
//! transcriber with `{"action":"LAMBDA_START","contactId","lambdaCount":0}`, which holds no
//! customer data; without the table, or when the lease cannot be written, with the
//! contact-flow event itself. The handler is a plain async function over the event, so it is
//! tested without the Lambda runtime.
//!
//! The answer is a flat string map, as Connect's "Invoke AWS Lambda function" block requires:
//! `{"status": "STARTED", "callId": ...}`, or `{"status": "ERROR", "error": CODE, "message":
//! ...}`. Rejections are answers, not function errors: transcription failing to start must
//! not send a customer's call down the flow's error branch. The flow can branch on
//! `$.External.status`.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use call_lease::CallLease;
use call_lifecycle::{CallData, NoCall};
use call_metrics::{Dimension, EmfRecord, Metric};
use call_settings::ContactPolicy;
use lca_events::connect::Rejection;
use serde_json::Value;

pub use aws_edge::ConfigError;
use aws_edge::Settings;

/// StartLCA's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartConfig {
    /// `CONNECT_INSTANCE_ARN`: the only instance whose contacts are accepted.
    pub connect_instance_arn: String,
    /// `TRANSCRIBER_FUNCTION_ARN`: the call transcriber function.
    pub transcriber_function_arn: String,
    /// `METRICS_NAMESPACE` (default `LCA/ConnectKVS`): the namespace of the metrics line,
    /// the transcriber's (the template sets one per stack).
    pub metrics_namespace: String,
    /// `TRANSCRIBER_CALL_EVENT_TABLE_NAME` (optional): the call lease table, where the call
    /// is written before the transcriber is invoked.
    pub call_event_table: Option<String>,
    /// `SWEEP_GRACE` (ms, default 300000, at least 1000; the transcriber's): how long the
    /// lease written here may go unclaimed before the sweep delivers the call again.
    pub sweep_grace: Duration,
    /// The stack's per-call Transcribe settings (the transcriber's variables) and what a
    /// contact attribute may override (`CONTACT_ATTRIBUTE_OVERRIDES`): each contact is checked
    /// against them before anything starts.
    pub contacts: ContactPolicy,
}

impl StartConfig {
    /// Every environment variable StartLCA reads of its own; it reads
    /// [`ContactPolicy::variables`] too (the transcriber's per-call settings).
    pub const VARIABLES: &'static [&'static str] = &[
        "CONNECT_INSTANCE_ARN",
        "TRANSCRIBER_FUNCTION_ARN",
        "METRICS_NAMESPACE",
        "TRANSCRIBER_CALL_EVENT_TABLE_NAME",
        "SWEEP_GRACE",
    ];

    /// Reads settings through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Settings::new(&lookup);
        let arn = |variable: &'static str, service: &str, what: &str| {
            let value = env.required(variable, what)?;
            if arn_service(&value) != Some(service) {
                return Err(ConfigError::new(
                    variable,
                    &value,
                    format!(
                        "not {what} (expected arn:PARTITION:{service}:..., PARTITION aws, aws-cn or aws-us-gov)"
                    ),
                ));
            }
            Ok(value)
        };
        Ok(Self {
            connect_instance_arn: arn(
                "CONNECT_INSTANCE_ARN",
                "connect",
                "the Connect instance ARN",
            )?,
            transcriber_function_arn: arn(
                "TRANSCRIBER_FUNCTION_ARN",
                "lambda",
                "the call transcriber function ARN",
            )?,
            metrics_namespace: env.metrics_namespace()?,
            call_event_table: env.get("TRANSCRIBER_CALL_EVENT_TABLE_NAME"),
            sweep_grace: env.millis(
                "SWEEP_GRACE",
                call_lifecycle::lease::DEFAULT_SWEEP_GRACE_MS,
                1000,
            )?,
            contacts: ContactPolicy::from_lookup(&lookup)?,
        })
    }
}

/// The service of an ARN in any partition (`arn:aws:`, `arn:aws-cn:`, `arn:aws-us-gov:`, and
/// the isolated ones, all of which start `aws`; AWS General Reference, "Amazon Resource Names
/// (ARNs)"), or `None` when `value` is not an ARN.
fn arn_service(value: &str) -> Option<&str> {
    let mut parts = value.splitn(4, ':');
    let (arn, partition, service) = (parts.next()?, parts.next()?, parts.next()?);
    parts.next()?;
    (arn == "arn" && partition.starts_with("aws")).then_some(service)
}

/// What the handler needs: configuration, a Lambda client and the call lease table.
#[derive(Debug, Clone)]
pub struct StartLca {
    /// The configuration.
    pub config: StartConfig,
    /// Invokes the transcriber.
    pub lambda: aws_sdk_lambda::Client,
    /// The call lease table (absent without `TRANSCRIBER_CALL_EVENT_TABLE_NAME`).
    pub lease: Option<CallLease>,
}

/// Time limits on each of StartLCA's two requests (the lease's PutItem, the Invoke), retries
/// included, so that its answer reaches Connect within the 8 s Connect waits for a function
/// (Connect administrator guide, "Invoke AWS Lambda function" block) even when a service hangs.
pub const FLOW_REQUEST_LIMITS: aws_edge::RequestLimits = aws_edge::RequestLimits {
    connect: Duration::from_millis(1000),
    attempt: Duration::from_millis(1500),
    total: Duration::from_millis(3000),
};

impl StartLca {
    /// StartLCA for `config` with clients built from `sdk`, every request under
    /// [`FLOW_REQUEST_LIMITS`].
    pub fn new(config: StartConfig, sdk: &aws_config::SdkConfig) -> Self {
        let sdk = &aws_edge::with_limits(sdk, FLOW_REQUEST_LIMITS);
        Self {
            lambda: aws_sdk_lambda::Client::new(sdk),
            lease: config.call_event_table.clone().map(|table| CallLease {
                sweep_grace: config.sweep_grace,
                // Only a pending lease is written here; nobody holds it.
                ..CallLease::new(
                    aws_sdk_dynamodb::Client::new(sdk),
                    table,
                    Duration::from_secs(30),
                )
            }),
            config,
        }
    }

    /// The event the transcriber is started with: after the call's lease is written, one
    /// that names the call; otherwise the contact-flow event itself (as without the table).
    async fn start_event(&self, event: &Value, call: &CallData) -> Value {
        let Some(lease) = &self.lease else {
            return event.clone();
        };
        let contact_id = &call.contact_id;
        match lease.create_pending(call, &event.to_string()).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(call_id = %contact_id, "the call has a lease already (StartLCA invoked again for the contact): the transcriber decides by it")
            }
            Err(error) => {
                // The call is still transcribed; only the sweep cannot start it if Lambda
                // loses this event, and the event carries the caller's number.
                tracing::error!(call_id = %contact_id, %error, "the call's lease could not be written: starting the transcriber with the contact-flow event");
                return event.clone();
            }
        }
        call_lifecycle::delivery::start_event(contact_id)
    }
}

/// The flat string map Connect receives.
pub type FlowResponse = HashMap<String, String>;

fn error_response(code: &str, message: &str) -> FlowResponse {
    HashMap::from([
        ("status".to_string(), "ERROR".to_string()),
        ("error".to_string(), code.to_string()),
        ("message".to_string(), message.to_string()),
    ])
}

/// The answer to a contact-flow event that starts no call: `NOT_TRANSCRIBED` when its flow
/// asked for that, otherwise `ERROR` with the code (and for an attribute, `attribute` naming
/// it), logged at the level it deserves.
fn no_call_response(no_call: &NoCall) -> FlowResponse {
    match no_call {
        NoCall::NotTranscribed { contact_id } => {
            tracing::info!(call_id = %contact_id, "{no_call}");
            return HashMap::from([
                ("status".to_string(), "NOT_TRANSCRIBED".to_string()),
                ("callId".to_string(), contact_id.clone()),
            ]);
        }
        NoCall::Rejected(Rejection::Malformed(_)) => {
            tracing::error!(error = no_call.code(), "{no_call}")
        }
        _ => tracing::warn!(error = no_call.code(), "{no_call}"),
    }
    let mut response = error_response(no_call.code(), &no_call.to_string());
    if let NoCall::Attribute(error) = no_call {
        response.insert("attribute".to_string(), error.attribute().to_string());
    }
    response
}

impl StartLca {
    /// Handles one contact-flow event: validates it, starts the transcriber, answers.
    pub async fn handle(&self, event: Value) -> FlowResponse {
        let config = &self.config;
        let contact = match CallData::of_contact_flow_event(
            &event,
            &config.connect_instance_arn,
            &config.contacts,
        ) {
            Ok(contact) => contact,
            Err(no_call) => return no_call_response(&no_call),
        };
        let start = self.start_event(&event, &contact).await;
        let payload = serde_json::to_vec(&start).expect("a JSON value serializes");
        let result = self
            .lambda
            .invoke()
            .function_name(&self.config.transcriber_function_arn)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload))
            .send()
            .await;
        match result {
            Ok(output) if output.status_code == 202 => {
                let from_attributes = contact
                    .settings
                    .as_ref()
                    .map(|s| s.from_attributes.join(","));
                tracing::info!(call_id = %contact.contact_id, stream = %contact.stream_arn, settings_from_attributes = from_attributes.as_deref().unwrap_or(""), "transcriber started");
                HashMap::from([
                    ("status".to_string(), "STARTED".to_string()),
                    ("callId".to_string(), contact.contact_id),
                ])
            }
            Ok(output) => {
                let message = format!(
                    "invoking {} answered status {} instead of 202",
                    self.config.transcriber_function_arn, output.status_code
                );
                tracing::error!(call_id = %contact.contact_id, "{message}");
                error_response("INVOKE_FAILED", &message)
            }
            Err(error) => {
                let message = format!(
                    "invoking {}: {}",
                    self.config.transcriber_function_arn,
                    aws_edge::error_text(&error)
                );
                tracing::error!(call_id = %contact.contact_id, "{message}");
                error_response("INVOKE_FAILED", &message)
            }
        }
    }
}

/// The metrics line of one answer (CloudWatch EMF): `StartLcaAnswers`, also by `Answer`
/// (STARTED, NOT_TRANSCRIBED, or the error code answered), and `ContactAttributesRefused`
/// for a contact refused for its attributes.
pub fn answer_metrics(response: &FlowResponse, timestamp_ms: u64) -> EmfRecord {
    let answer = match response.get("status").map(String::as_str) {
        Some(status @ ("STARTED" | "NOT_TRANSCRIBED")) => status,
        _ => response.get("error").map_or("ERROR", String::as_str),
    };
    let mut record = EmfRecord::new(timestamp_ms);
    record
        .add(Metric::StartLcaAnswers, 1.0)
        .dimension(Dimension::Answer, answer);
    if matches!(answer, "BAD_ATTRIBUTE" | "ATTRIBUTE_NOT_ALLOWED") {
        record.add(Metric::ContactAttributesRefused, 1.0);
    }
    if let Some(call_id) = response.get("callId") {
        record.member("CallId", call_id.as_str());
    }
    record
}

/// Serves StartLCA under the Lambda Runtime API (configuration from the environment): what
/// the function's `bootstrap` runs, and `lca-kvs demo`'s functions too.
pub async fn serve() -> Result<(), lambda_runtime::Error> {
    use lambda_runtime::{Error, LambdaEvent, run, service_fn};
    let config = StartConfig::from_lookup(|name| std::env::var(name).ok())?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let start = &StartLca::new(config, &sdk);
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        let response = start.handle(event.payload).await;
        let now_ms = aws_edge::now_ms();
        // The metrics line on stdout (the logs are on stderr): CloudWatch Logs extracts it.
        let mut metrics = answer_metrics(&response, now_ms);
        metrics.in_namespace(&start.config.metrics_namespace);
        println!("{}", metrics.to_line());
        Ok::<_, Error>(response)
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_is_counted_by_status_or_error_code() {
        let started = HashMap::from([
            ("status".to_string(), "STARTED".to_string()),
            ("callId".to_string(), "c-1".to_string()),
        ]);
        let refused = error_response("NO_MEDIA_STREAM", "no stream");
        let skipped = HashMap::from([("status".to_string(), "NOT_TRANSCRIBED".to_string())]);
        let attribute = error_response("BAD_ATTRIBUTE", "contact attribute X: ...");
        for (response, answer) in [
            (started, "STARTED"),
            (refused, "NO_MEDIA_STREAM"),
            (skipped, "NOT_TRANSCRIBED"),
            (attribute.clone(), "BAD_ATTRIBUTE"),
        ] {
            let line = answer_metrics(&response, 7).to_line();
            let extracted = call_metrics::validate(&line).unwrap();
            assert!(extracted.iter().any(|e| e.name == "StartLcaAnswers"
                && e.dimensions == [("Answer".to_string(), answer.to_string())]
                && e.values == [1.0]));
            assert!(
                extracted
                    .iter()
                    .any(|e| e.name == "StartLcaAnswers" && e.dimensions.is_empty())
            );
        }
        // A contact refused for its attributes is counted for the alarm too; others are not.
        let counted = |response: &FlowResponse| {
            call_metrics::validate(&answer_metrics(response, 7).to_line())
                .unwrap()
                .iter()
                .any(|e| e.name == "ContactAttributesRefused" && e.values == [1.0])
        };
        assert!(counted(&attribute));
        assert!(counted(&error_response("ATTRIBUTE_NOT_ALLOWED", "...")));
        assert!(!counted(&error_response("INVOKE_FAILED", "...")));
    }

    #[test]
    fn arns_of_every_partition_are_taken_and_others_named() {
        let config = |instance: &str, function: &str| {
            let (instance, function) = (instance.to_string(), function.to_string());
            StartConfig::from_lookup(move |name| match name {
                "CONNECT_INSTANCE_ARN" => Some(instance.clone()),
                "TRANSCRIBER_FUNCTION_ARN" => Some(function.clone()),
                _ => None,
            })
        };
        for partition in ["aws", "aws-cn", "aws-us-gov"] {
            let instance = format!("arn:{partition}:connect:us-gov-west-1:1:instance/i");
            let function = format!("arn:{partition}:lambda:us-gov-west-1:1:function:f");
            let read = config(&instance, &function).unwrap();
            assert_eq!(
                (read.connect_instance_arn, read.transcriber_function_arn),
                (instance, function)
            );
        }
        let error = config(
            "arn:aws:lambda:us-east-1:1:function:f",
            "arn:aws:lambda:us-east-1:1:function:f",
        )
        .unwrap_err();
        assert_eq!(error.variable, "CONNECT_INSTANCE_ARN");
        assert!(
            error
                .to_string()
                .contains("expected arn:PARTITION:connect:"),
            "{error}"
        );
        for not_an_arn in [
            "connect:instance",
            "arn:gcp:connect:x:1:i",
            "arn:aws:connect",
        ] {
            assert!(
                config(not_an_arn, "arn:aws:lambda:us-east-1:1:function:f").is_err(),
                "{not_an_arn}"
            );
        }
    }

    #[test]
    fn the_variable_list_is_what_is_read() {
        let asked = std::cell::RefCell::new(std::collections::BTreeSet::new());
        StartConfig::from_lookup(|name| {
            asked.borrow_mut().insert(name.to_string());
            match name {
                "CONNECT_INSTANCE_ARN" => Some("arn:aws:connect:us-east-1:1:instance/i".into()),
                "SWEEP_GRACE" => Some("60000".into()),
                "TRANSCRIBER_CALL_EVENT_TABLE_NAME" => Some("calls".into()),
                "TRANSCRIBER_FUNCTION_ARN" => Some("arn:aws:lambda:us-east-1:1:function:f".into()),
                "TRANSCRIBE_API_MODE" => Some("analytics".into()),
                "OUTPUT_BUCKET" => Some("b".into()),
                "TCA_DATA_ACCESS_ROLE_ARN" => Some("arn:aws:iam::1:role/r".into()),
                _ => None,
            }
        })
        .unwrap();
        let listed = StartConfig::VARIABLES
            .iter()
            .copied()
            .chain(ContactPolicy::variables())
            .map(str::to_string)
            .collect();
        assert_eq!(asked.into_inner(), listed);
    }

    #[test]
    fn a_namespace_cloudwatch_refuses_is_a_configuration_error() {
        let config = |namespace: &'static str| {
            StartConfig::from_lookup(|name| match name {
                "CONNECT_INSTANCE_ARN" => Some("arn:aws:connect:us-east-1:1:instance/i".into()),
                "TRANSCRIBER_FUNCTION_ARN" => Some("arn:aws:lambda:us-east-1:1:function:f".into()),
                "METRICS_NAMESPACE" => Some(namespace.to_string()),
                _ => None,
            })
        };
        assert_eq!(
            config("LCA/ConnectKVS/stack-1").unwrap().metrics_namespace,
            "LCA/ConnectKVS/stack-1"
        );
        assert_eq!(
            config("").unwrap().metrics_namespace,
            call_metrics::NAMESPACE
        );
        let error = config("AWS/Lambda").unwrap_err();
        assert_eq!(error.variable, "METRICS_NAMESPACE");
        assert!(error.to_string().contains("AWS/Lambda"), "{error}");
    }
}

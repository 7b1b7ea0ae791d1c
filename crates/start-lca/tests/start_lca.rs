//! StartLCA against the local Lambda service with the real aws-sdk-lambda client: the handler
//! directly, and the real binary under the Lambda Runtime API answering a contact flow.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use local_aws::lambda::{FunctionSpec, Lambda, LambdaOptions};
use serde_json::{Value, json};
use start_lca::{StartConfig, StartLca};

const INSTANCE: &str =
    "arn:aws:connect:us-east-1:123456789012:instance/11111111-2222-3333-4444-555555555555";

fn event() -> Value {
    json!({
        "Name": "ContactFlowEvent",
        "Details": {
            "ContactData": {
                "ContactId": "d111f871-5fe7-40b1-b5f7-6b67060de0c2",
                "InitialContactId": "d111f871-5fe7-40b1-b5f7-6b67060de0c2",
                "InstanceARN": INSTANCE,
                "Channel": "VOICE",
                "CustomerEndpoint": {"Address": "+15551230001", "Type": "TELEPHONE_NUMBER"},
                "SystemEndpoint": {"Address": "+15559870002", "Type": "TELEPHONE_NUMBER"},
                "Attributes": {},
                "MediaStreams": {"Customer": {"Audio": {
                    "StreamARN": "arn:aws:kinesisvideo:us-east-1:123456789012:stream/connect-contact/1",
                    "StartFragmentNumber": "91343852333181531502161607852955530730505354276",
                    "StartTimestamp": "1726677689681"
                }}}
            },
            "Parameters": {}
        }
    })
}

/// A local Lambda with a `transcriber` function (a stand-in process: only its invocations
/// are looked at) and its URL.
async fn lambda() -> (Lambda, local_aws::http::Server, String) {
    let lambda = Lambda::new(LambdaOptions {
        event_retry_delays: [Duration::from_millis(50), Duration::from_millis(50)],
        ..LambdaOptions::default()
    });
    let server = lambda.serve(0).await.unwrap();
    let arn = lambda
        .add_function(FunctionSpec {
            name: "transcriber".to_string(),
            command: PathBuf::from("/bin/true"),
            args: Vec::new(),
            environment: BTreeMap::new(),
            timeout: Duration::from_secs(1),
            memory_mb: 128,
        })
        .unwrap();
    (lambda, server, arn)
}

fn start_lca(url: &str, transcriber: &str) -> StartLca {
    StartLca {
        config: StartConfig {
            connect_instance_arn: INSTANCE.to_string(),
            transcriber_function_arn: transcriber.to_string(),
            metrics_namespace: call_metrics::NAMESPACE.to_string(),
            call_event_table: None,
            sweep_grace: Duration::from_secs(300),
            contacts: call_settings::ContactPolicy::from_lookup(|_| None).unwrap(),
        },
        lambda: aws_sdk_lambda::Client::new(&local_aws::sdk_config(url)),
        lease: None,
    }
}

#[tokio::test]
async fn a_streaming_voice_contact_starts_the_transcriber_asynchronously() {
    let (lambda, server, arn) = lambda().await;
    let response = start_lca(&server.url(), &arn).handle(event()).await;
    assert_eq!(response["status"], "STARTED");
    assert_eq!(response["callId"], "d111f871-5fe7-40b1-b5f7-6b67060de0c2");
    let invocations = lambda.invocations("transcriber");
    assert_eq!(invocations.len(), 1);
    assert_eq!(invocations[0].invocation_type, "Event");
    assert_eq!(
        invocations[0].payload,
        event(),
        "the transcriber gets the contact-flow event"
    );
    lambda.shutdown();
}

#[tokio::test]
async fn with_the_lease_table_the_call_is_written_as_parsed_and_the_transcriber_gets_its_name() {
    let moto = local_aws::moto::MotoServer::start().expect("moto server");
    let dynamodb = aws_sdk_dynamodb::Client::new(&local_aws::sdk_config(moto.url()));
    let lease = call_lease::CallLease {
        sweep_grace: Duration::from_secs(300),
        ..call_lease::CallLease::new(dynamodb, "calls".to_string(), Duration::from_secs(30))
    };
    lease.create_table().await.unwrap();
    let (lambda, server, arn) = lambda().await;
    let start = StartLca {
        lease: Some(lease.clone()),
        ..start_lca(&server.url(), &arn)
    };
    let contact = "d111f871-5fe7-40b1-b5f7-6b67060de0c2";
    let response = start.handle(event()).await;
    assert_eq!(response["status"], "STARTED", "{response:?}");
    assert_eq!(response["callId"], contact);
    // The transcriber's event names the call and carries nothing of the customer.
    let invocations = lambda.invocations("transcriber");
    assert_eq!(invocations.len(), 1);
    assert_eq!(
        invocations[0].payload,
        json!({"action": "LAMBDA_START", "contactId": contact, "lambdaCount": 0})
    );
    // Every field StartLCA read from the contact-flow event, in the lease it wrote.
    let record = lease
        .read(contact)
        .await
        .unwrap()
        .expect("the call's lease");
    let call = &record.call;
    assert_eq!(
        (call.call_id.as_str(), call.contact_id.as_str()),
        (contact, contact)
    );
    assert_eq!(
        call.stream_arn,
        "arn:aws:kinesisvideo:us-east-1:123456789012:stream/connect-contact/1"
    );
    assert_eq!(
        call.start_fragment_number,
        "91343852333181531502161607852955530730505354276"
    );
    assert_eq!(call.started_at_ms, Some(1_726_677_689_681));
    assert_eq!(
        (call.from_number.as_str(), call.to_number.as_str()),
        ("+15551230001", "+15559870002")
    );
    assert_eq!(call.agent_id, None);
    assert_eq!((record.owner.as_str(), record.attempts), ("", 0));
    let kept: Value =
        serde_json::from_str(record.contact_event.as_deref().expect("the event")).unwrap();
    assert_eq!(
        kept,
        event(),
        "the contact-flow event is kept for the lambda hook"
    );
    // Invoked again for the same contact (Connect's retry, a flow loop): the lease stays.
    let again = start.handle(event()).await;
    assert_eq!(again["status"], "STARTED");
    assert_eq!(
        lease.read(contact).await.unwrap().unwrap().call,
        record.call
    );
    lambda.shutdown();
}

#[tokio::test]
async fn rejected_contacts_are_answered_with_a_code_and_start_nothing() {
    let (lambda, server, arn) = lambda().await;
    let start = start_lca(&server.url(), &arn);
    let mut wrong_instance = event();
    wrong_instance["Details"]["ContactData"]["InstanceARN"] =
        json!("arn:aws:connect:us-east-1:123456789012:instance/other");
    let mut chat = event();
    chat["Details"]["ContactData"]["Channel"] = json!("CHAT");
    let mut no_stream = event();
    no_stream["Details"]["ContactData"]
        .as_object_mut()
        .unwrap()
        .remove("MediaStreams");
    for (event, code) in [
        (wrong_instance, "WRONG_INSTANCE"),
        (chat, "NOT_VOICE"),
        (no_stream, "NO_MEDIA_STREAM"),
        (json!({"Name": "ContactFlowEvent"}), "MALFORMED_EVENT"),
        (json!("hello"), "MALFORMED_EVENT"),
        (json!({"action": "LAMBDA_CONTINUE"}), "MALFORMED_EVENT"),
    ] {
        let response = start.handle(event.clone()).await;
        assert_eq!(response["status"], "ERROR", "{event}");
        assert_eq!(response["error"], code, "{event}");
        assert!(!response["message"].is_empty());
        // A flat map of strings, as Connect requires.
        let value = serde_json::to_value(&response).unwrap();
        assert!(value.as_object().unwrap().values().all(Value::is_string));
    }
    assert!(lambda.invocations("transcriber").is_empty());
    lambda.shutdown();
}

#[tokio::test]
async fn an_invoke_failure_is_answered_not_thrown() {
    let (lambda, server, _) = lambda().await;
    let missing = "arn:aws:lambda:us-east-1:123456789012:function:no-such-transcriber";
    let response = start_lca(&server.url(), missing).handle(event()).await;
    assert_eq!(response["status"], "ERROR");
    assert_eq!(response["error"], "INVOKE_FAILED");
    assert!(
        response["message"].contains("no-such-transcriber"),
        "{response:?}"
    );
    lambda.shutdown();
}

#[test]
fn configuration_names_the_bad_variable() {
    let config = |vars: &[(&str, &str)]| {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        StartConfig::from_lookup(|name| vars.get(name).cloned())
    };
    let ok = config(&[
        ("CONNECT_INSTANCE_ARN", INSTANCE),
        (
            "TRANSCRIBER_FUNCTION_ARN",
            "arn:aws:lambda:us-east-1:1:function:t",
        ),
    ]);
    assert!(ok.is_ok());
    assert_eq!(
        config(&[(
            "TRANSCRIBER_FUNCTION_ARN",
            "arn:aws:lambda:us-east-1:1:function:t"
        )])
        .unwrap_err()
        .variable,
        "CONNECT_INSTANCE_ARN"
    );
    let error = config(&[
        ("CONNECT_INSTANCE_ARN", INSTANCE),
        ("TRANSCRIBER_FUNCTION_ARN", "transcriber"),
    ])
    .unwrap_err();
    assert_eq!(error.variable, "TRANSCRIBER_FUNCTION_ARN");
    assert!(error.to_string().contains("\"transcriber\""), "{error}");
}

#[tokio::test]
async fn the_real_binary_answers_the_contact_flow_under_the_lambda_runtime() {
    let (lambda, server, transcriber) = lambda().await;
    let environment = BTreeMap::from([
        ("CONNECT_INSTANCE_ARN".to_string(), INSTANCE.to_string()),
        ("TRANSCRIBER_FUNCTION_ARN".to_string(), transcriber),
        ("AWS_ENDPOINT_URL_LAMBDA".to_string(), server.url()),
        ("AWS_ACCESS_KEY_ID".to_string(), "AKIDLOCAL".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "local".to_string()),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
    ]);
    lambda
        .add_function(FunctionSpec {
            name: "StartLCA".to_string(),
            command: PathBuf::from(env!("CARGO_BIN_EXE_start-lca")),
            args: Vec::new(),
            environment,
            timeout: Duration::from_secs(5),
            memory_mb: 128,
        })
        .unwrap();
    let client = aws_sdk_lambda::Client::new(&local_aws::sdk_config(&server.url()));
    let output = client
        .invoke()
        .function_name("StartLCA")
        .payload(Blob::new(event().to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(output.function_error, None);
    let answer: Value = serde_json::from_slice(output.payload.unwrap().as_ref()).unwrap();
    assert_eq!(answer["status"], "STARTED", "{answer}");
    assert_eq!(lambda.invocations("transcriber").len(), 1);
    lambda.shutdown();
}

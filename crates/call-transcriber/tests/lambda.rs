//! The call transcriber's real binary under the local Lambda service (Runtime API), with local
//! KVS and Transcribe and moto: a contact-flow event starts it, LAMBDA_INVOKE_TIMEOUT forces
//! hand-overs to new invocations of itself, and the call comes out whole and once.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use common::*;
use local_aws::kvs::KvsOptions;
use local_aws::lambda::{FunctionSpec, Lambda, LambdaOptions};
use local_aws::transcribe::TranscribeOptions;
use serde_json::{Value, json};

fn contact_flow_event(stream_arn: &str, first: &str) -> Value {
    json!({
        "Name": "ContactFlowEvent",
        "Details": {
            "ContactData": {
                "ContactId": CONTACT,
                "InitialContactId": CONTACT,
                "InstanceARN": "arn:aws:connect:us-east-1:123456789012:instance/test",
                "Channel": "VOICE",
                "CustomerEndpoint": {"Address": "+15551230001"},
                "SystemEndpoint": {"Address": "+15559870002"},
                "Attributes": {"AgentId": "alex"},
                "MediaStreams": {"Customer": {"Audio": {
                    "StreamARN": stream_arn,
                    "StartFragmentNumber": first,
                    "StartTimestamp": "1726677689681"
                }}}
            },
            "Parameters": {}
        }
    })
}

/// The transcriber function in a local Lambda wired to the harness's services.
async fn transcriber(h: &Harness, extra: &[(&str, &str)]) -> (Lambda, local_aws::http::Server) {
    let lambda = Lambda::new(LambdaOptions::default());
    let server = lambda.serve(0).await.unwrap();
    let (kvs, transcribe, kinesis) = h.urls.clone();
    let mut environment = BTreeMap::from([
        ("AWS_ENDPOINT_URL_KINESIS_VIDEO", kvs),
        ("AWS_ENDPOINT_URL_TRANSCRIBE_STREAMING", transcribe),
        ("AWS_ENDPOINT_URL_KINESIS", kinesis),
        ("AWS_ENDPOINT_URL_LAMBDA", server.url()),
        ("AWS_ACCESS_KEY_ID", "AKIDLOCAL".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "local".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("KINESIS_STREAM_NAME", "lca".to_string()),
        ("KVS_IDLE_TIMEOUT", "3000".to_string()),
        (
            "CONNECT_INSTANCE_ARN",
            "arn:aws:connect:us-east-1:123456789012:instance/test".to_string(),
        ),
    ]);
    for (name, value) in extra {
        environment.insert(name, value.to_string());
    }
    lambda
        .add_function(FunctionSpec {
            name: "CallTranscriber".to_string(),
            command: PathBuf::from(env!("CARGO_BIN_EXE_call-transcriber")),
            environment: environment
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            timeout: Duration::from_secs(120),
            memory_mb: 128,
        })
        .unwrap();
    (lambda, server)
}

/// Waits until the call's END is on the stream (or 60 s).
async fn records_until_end(h: &Harness) -> Vec<Value> {
    for _ in 0..600 {
        let records = h.records().await;
        if records.iter().any(|r| r["EventType"] == "END") {
            // Anything after END would be a bug: give it a moment to show.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return h.records().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no END on the stream within 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_overs_between_invocations_transcribe_every_sample_once() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server) = transcriber(&h, &[("LAMBDA_INVOKE_TIMEOUT", "1200")]).await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    let client = aws_sdk_lambda::Client::new(&local_aws::sdk_config(&server.url()));
    let output = client
        .invoke()
        .function_name("CallTranscriber")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(contact_flow_event(&arn, &first).to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(output.status_code, 202);
    let records = records_until_end(&h).await;
    let invocations = lambda.invocations("CallTranscriber");
    let continuations: Vec<&Value> = invocations
        .iter()
        .filter(|i| i.payload["action"] == "LAMBDA_CONTINUE")
        .map(|i| &i.payload["callData"])
        .collect();
    assert!(
        continuations.len() >= 3,
        "{} hand-overs",
        continuations.len()
    );
    for (i, data) in continuations.iter().enumerate() {
        assert_eq!(data["lambdaCount"], i + 1);
        assert_eq!(data["callId"], CONTACT);
        assert!(data["lastFragment"].is_string() && data["sessionId"].is_string());
    }
    assert!(
        invocations.iter().all(|i| i.invocation_type == "Event"),
        "hand-overs are asynchronous"
    );
    assert_eq!(
        lambda.attempts("CallTranscriber").len(),
        invocations.len(),
        "no invocation failed and was retried"
    );
    let sessions = h.transcribe.sessions();
    assert_eq!(sessions.len(), continuations.len() + 1);
    let audio: Vec<u8> = sessions.iter().flat_map(|s| s.audio.clone()).collect();
    assert!(
        audio == sample_call_stereo(),
        "every sample reaches Transcribe exactly once across the invocations"
    );
    assert_eq!(records.first().unwrap()["EventType"], "START");
    assert_eq!(
        records.first().unwrap()["CustomerPhoneNumber"],
        "+15551230001"
    );
    assert_eq!(records.first().unwrap()["AgentId"], "alex");
    assert_eq!(records.last().unwrap()["EventType"], "END");
    for kind in ["START", "END"] {
        assert_eq!(
            records.iter().filter(|r| r["EventType"] == kind).count(),
            1,
            "{kind}"
        );
    }
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_continuation_is_stopped() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server) = transcriber(&h, &[]).await;
    let client = aws_sdk_lambda::Client::new(&local_aws::sdk_config(&server.url()));
    let output = client
        .invoke()
        .function_name("CallTranscriber")
        .payload(Blob::new(
            json!({"action": "LAMBDA_CONTINUE", "callData": {
                "callId": CONTACT, "contactId": CONTACT, "fromNumber": "", "toNumber": "",
                "streamArn": "arn:aws:kinesisvideo:us-east-1:123456789012:stream/call/1",
                "startFragmentNumber": "1", "lastFragment": "5", "lambdaCount": 31
            }})
            .to_string(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(output.function_error, None);
    let answer: Value = serde_json::from_slice(output.payload.unwrap().as_ref()).unwrap();
    assert_eq!(answer["status"], "STOPPED");
    assert!(h.transcribe.sessions().is_empty());
    assert!(h.records().await.is_empty());
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_of_another_instance_is_refused() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server) = transcriber(&h, &[]).await;
    let client = aws_sdk_lambda::Client::new(&local_aws::sdk_config(&server.url()));
    let mut event = contact_flow_event(
        "arn:aws:kinesisvideo:us-east-1:123456789012:stream/x/1",
        "1",
    );
    event["Details"]["ContactData"]["InstanceARN"] =
        json!("arn:aws:connect:us-east-1:1:instance/other");
    let output = client
        .invoke()
        .function_name("CallTranscriber")
        .payload(Blob::new(event.to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(output.function_error.as_deref(), Some("Unhandled"));
    let error: Value = serde_json::from_slice(output.payload.unwrap().as_ref()).unwrap();
    assert!(
        error["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("instance/other"),
        "{error}"
    );
    assert!(h.records().await.is_empty());
    lambda.shutdown();
}

/// A lambda hook: a real Runtime API client (Python) answering every event with `answer`,
/// or failing when `answer` is `"fail"`.
fn hook_script(dir: &std::path::Path, answer: &str) -> PathBuf {
    let path = dir.join("hook.py");
    let script = format!(
        r#"#!/usr/bin/env python3
import json, os, urllib.request
api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
answer = {answer:?}
while True:
    with urllib.request.urlopen(api + "next") as r:
        request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.load(r)
    assert event["Name"] == "ContactFlowEvent"
    kind = "error" if answer == "fail" else "response"
    body = json.dumps({{"errorMessage": "hook says no", "errorType": "Refused"}}) if answer == "fail" else answer
    urllib.request.urlopen(urllib.request.Request(api + request_id + "/" + kind, data=body.encode(), method="POST")).read()
"#
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The handler (not the binary) with a lambda hook answering `answer`, on the live sample call.
async fn with_hook(
    h: &Harness,
    answer: &str,
) -> Result<Value, call_transcriber::lambda::HandlerError> {
    let dir = tempfile::tempdir().unwrap();
    let lambda = Lambda::new(LambdaOptions::default());
    let server = lambda.serve(0).await.unwrap();
    let hook = lambda
        .add_function(FunctionSpec {
            name: "hook".to_string(),
            command: hook_script(dir.path(), answer),
            environment: BTreeMap::new(),
            timeout: Duration::from_secs(10),
            memory_mb: 128,
        })
        .unwrap();
    let transcriber = call_transcriber::lambda::Transcriber {
        pipeline: h.pipeline(&[("LAMBDA_HOOK_FUNCTION_ARN", &hook)]),
        lambda: aws_sdk_lambda::Client::new(&local_aws::sdk_config(&server.url())),
    };
    let (arn, first) = h.stored("call", &sample_call_chunks(), &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let result = transcriber
        .handle(
            contact_flow_event(&arn, &first),
            "arn:aws:lambda:us-east-1:123456789012:function:CallTranscriber",
            deadline,
        )
        .await;
    assert_eq!(lambda.invocations("hook").len(), 1);
    assert_eq!(
        lambda.invocations("hook")[0].invocation_type,
        "RequestResponse"
    );
    lambda.shutdown();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_hook_overrides_the_call() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let answer = json!({
        "callId": "custom-call-1",
        "isCaller": false,
        "agentId": "jordan",
        "fromNumber": "+15550000001",
        "toNumber": "+15550000002",
        "metadatajson": "{\"crm\":\"42\"}",
        "shouldRecordCall": false
    });
    let result = with_hook(&h, &answer.to_string()).await.unwrap();
    assert_eq!(result["status"], "ENDED");
    let records = h.records().await;
    assert!(records.iter().all(|r| r["CallId"] == "custom-call-1"));
    let start = &records[0];
    assert_eq!(start["EventType"], "START");
    assert_eq!(start["AgentId"], "jordan");
    assert_eq!(start["CustomerPhoneNumber"], "+15550000001");
    assert_eq!(start["SystemPhoneNumber"], "+15550000002");
    assert_eq!(start["Metadatajson"], "{\"crm\":\"42\"}");
    // isCaller=false: the agent track is transcribed as the caller.
    let finals = finals(&records);
    assert_eq!(on(&finals, "CALLER"), AGENT_TURNS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_saying_do_not_process_leaves_no_trace() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let result = with_hook(&h, r#"{"shouldProcessCall": false}"#)
        .await
        .unwrap();
    assert_eq!(result["status"], "SKIPPED");
    assert!(h.records().await.is_empty());
    assert!(h.transcribe.sessions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_stops_the_call_with_its_message() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let error = with_hook(&h, "fail").await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("lambda hook") && text.contains("hook says no"),
        "{text}"
    );
    assert!(h.records().await.is_empty());
}

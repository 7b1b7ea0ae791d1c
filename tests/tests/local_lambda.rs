//! The local Lambda as the unmodified aws-sdk-lambda client sees it, running a real
//! lambda_runtime binary (tests/src/bin/test-lambda.rs) under the Runtime API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_lambda::config::{Credentials, Region};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use local_aws::lambda::{FunctionSpec, Lambda, LambdaOptions, RECURSION_LIMIT, RecursiveLoop};
use serde_json::{Value, json};

fn client(url: &str) -> aws_sdk_lambda::Client {
    aws_sdk_lambda::Client::from_conf(
        aws_sdk_lambda::Config::builder()
            .behavior_version_latest()
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("AKIDLOCAL", "secret", None, None, "test"))
            .endpoint_url(url)
            .build(),
    )
}

fn spec(name: &str, timeout: Duration) -> FunctionSpec {
    FunctionSpec {
        name: name.to_string(),
        command: PathBuf::from(env!("CARGO_BIN_EXE_test-lambda")),
        args: Vec::new(),
        environment: BTreeMap::from([("TEST_LAMBDA_SETTING".to_string(), "from-spec".to_string())]),
        timeout,
        memory_mb: 128,
    }
}

async fn setup() -> (
    Lambda,
    local_aws::http::Server,
    aws_sdk_lambda::Client,
    String,
) {
    let lambda = Lambda::new(LambdaOptions {
        event_retry_delays: [Duration::from_millis(100), Duration::from_millis(100)],
        ..LambdaOptions::default()
    });
    let server = lambda.serve(0).await.unwrap();
    let arn = lambda
        .add_function(spec("echo", Duration::from_secs(2)))
        .unwrap();
    assert!(
        lambda
            .add_function(spec("bad name\n", Duration::from_secs(1)))
            .is_err()
    );
    let client = client(&server.url());
    (lambda, server, client, arn)
}

fn json_of(blob: Option<Blob>) -> Value {
    serde_json::from_slice(blob.expect("payload").as_ref()).expect("JSON payload")
}

#[tokio::test]
async fn request_response_runs_the_real_binary_by_name_and_by_arn() {
    let (lambda, _server, client, arn) = setup().await;
    for reference in ["echo", arn.as_str()] {
        let output = client
            .invoke()
            .function_name(reference)
            .payload(Blob::new(json!({"echo": {"n": 1}}).to_string()))
            .send()
            .await
            .unwrap();
        assert_eq!(output.status_code, 200);
        assert_eq!(output.function_error, None);
        let payload = json_of(output.payload);
        assert_eq!(payload["echo"], json!({"n": 1}));
        assert_eq!(payload["function"], "echo");
        assert_eq!(payload["arn"], arn.as_str());
        assert_eq!(payload["custom_env"], "from-spec");
    }
    assert_eq!(lambda.instances("echo"), 1, "a warm environment is reused");
}

#[tokio::test]
async fn function_errors_come_back_as_lambda_reports_them() {
    let (_lambda, _server, client, _arn) = setup().await;
    let output = client
        .invoke()
        .function_name("echo")
        .payload(Blob::new(json!({"fail": "no such contact"}).to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(output.status_code, 200);
    assert_eq!(output.function_error.as_deref(), Some("Unhandled"));
    let payload = json_of(output.payload);
    assert_eq!(payload["errorMessage"], "no such contact");
}

#[tokio::test]
async fn the_timeout_is_enforced_and_the_environment_replaced() {
    let (lambda, _server, client, _arn) = setup().await;
    let output = client
        .invoke()
        .function_name("echo")
        .payload(Blob::new(json!({"sleep_ms": 10_000}).to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(output.function_error.as_deref(), Some("Unhandled"));
    let payload = json_of(output.payload);
    assert!(
        payload["errorMessage"]
            .as_str()
            .unwrap()
            .contains("Task timed out after 2.00 seconds"),
        "{payload}"
    );
    let output = client
        .invoke()
        .function_name("echo")
        .payload(Blob::new(json!({"echo": 2}).to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(output.payload)["echo"], 2);
    assert_eq!(
        lambda.instances("echo"),
        1,
        "the timed-out environment was stopped"
    );
}

#[tokio::test]
async fn event_invocations_return_202_at_once_and_failed_events_are_retried_twice() {
    let (lambda, _server, client, _arn) = setup().await;
    let dir = tempfile_dir();
    let log = dir.join("attempts.log");
    let output = client
        .invoke()
        .function_name("echo")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(
            json!({"fail": "boom", "append_to": log, "sleep_ms": 300}).to_string(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(output.status_code, 202);
    assert!(
        std::fs::read_to_string(&log).unwrap_or_default().is_empty(),
        "202 before the function ran"
    );
    // Until the event's attempts are over (the last retry failed): no fourth can follow.
    wait_until_no_event_pending(&lambda, "echo").await;
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.lines().count(), 3, "one attempt and two retries");
    // The caller got 202; the failures are what tells it the event failed.
    let failures = lambda.failures("echo");
    assert_eq!(failures.len(), 3, "{failures:?}");
    assert!(
        failures
            .iter()
            .all(|f| f.message.contains("boom") && f.request_id == lambda.attempts("echo")[0]),
        "{failures:?}"
    );

    // A succeeding event runs once.
    let ok_log = dir.join("ok.log");
    client
        .invoke()
        .function_name("echo")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(json!({"append_to": ok_log}).to_string()))
        .send()
        .await
        .unwrap();
    wait_until_no_event_pending(&lambda, "echo").await;
    assert_eq!(std::fs::read_to_string(&ok_log).unwrap().lines().count(), 1);
    assert_eq!(
        lambda.failures("echo").len(),
        3,
        "a success adds no failure"
    );
}

/// Waits (30 s at most) until every Event invocation of `name` has succeeded or exhausted
/// its retries.
async fn wait_until_no_event_pending(lambda: &Lambda, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while lambda.pending_events(name) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: Event invocations still pending after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn dry_run_unknown_functions_and_bad_payloads() {
    let (_lambda, _server, client, _arn) = setup().await;
    let output = client
        .invoke()
        .function_name("echo")
        .invocation_type(InvocationType::DryRun)
        .send()
        .await
        .unwrap();
    assert_eq!(output.status_code, 204);
    let error = client
        .invoke()
        .function_name("nope")
        .send()
        .await
        .unwrap_err();
    assert!(error.into_service_error().is_resource_not_found_exception());
    let error = client
        .invoke()
        .function_name("echo")
        .payload(Blob::new("{not json"))
        .send()
        .await
        .unwrap_err();
    assert!(
        error
            .into_service_error()
            .is_invalid_request_content_exception()
    );
}

#[tokio::test]
async fn concurrent_invocations_get_environments_of_their_own() {
    let (lambda, _server, client, _arn) = setup().await;
    let calls = (0..3).map(|i| {
        client
            .invoke()
            .function_name("echo")
            .payload(Blob::new(json!({"echo": i, "sleep_ms": 500}).to_string()))
            .send()
    });
    let outputs = futures_join(calls).await;
    let mut echoed: Vec<i64> = outputs
        .into_iter()
        .map(|o| json_of(o.unwrap().payload)["echo"].as_i64().unwrap())
        .collect();
    echoed.sort();
    assert_eq!(echoed, [0, 1, 2]);
    assert_eq!(lambda.instances("echo"), 3);
}

async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "local-lambda-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn a_crashing_function_fails_its_invocation_at_once_and_is_replaced() {
    let (lambda, _server, client, _arn) = setup().await;
    let started = std::time::Instant::now();
    let output = client
        .invoke()
        .function_name("echo")
        .payload(Blob::new(json!({"exit": 3}).to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(output.function_error.as_deref(), Some("Unhandled"));
    let payload = json_of(output.payload);
    assert_eq!(payload["errorType"], "Runtime.ExitError", "{payload}");
    assert!(
        payload["errorMessage"]
            .as_str()
            .unwrap()
            .contains("exit status: 3"),
        "{payload}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "reported before the 2 s timeout"
    );
    let output = client
        .invoke()
        .function_name("echo")
        .payload(Blob::new(json!({"echo": "after"}).to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(output.payload)["echo"], "after");
    assert_eq!(lambda.instances("echo"), 1);
}

#[tokio::test]
async fn a_function_that_dies_before_taking_its_invocation_fails_it_at_once() {
    let lambda = Lambda::new(LambdaOptions::default());
    let server = lambda.serve(0).await.unwrap();
    lambda
        .add_function(FunctionSpec {
            command: PathBuf::from("/bin/sh"),
            args: vec!["-c".to_string(), "exit 4".to_string()],
            ..spec("broken", Duration::from_secs(5))
        })
        .unwrap();
    let started = std::time::Instant::now();
    let output = client(&server.url())
        .invoke()
        .function_name("broken")
        .payload(Blob::new(b"{}".to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(output.function_error.as_deref(), Some("Unhandled"));
    let payload = json_of(output.payload);
    assert_eq!(payload["errorType"], "Runtime.ExitError", "{payload}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed at once, not at the 5 s timeout"
    );
    let failures = lambda.failures("broken");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].message.contains("exit status: 4"),
        "{failures:?}"
    );
}

/// Invokes `echo` as a function holding the trace header `trace` would (its SDK carries the
/// header on); returns the trace header the invoked function got, or the error code.
async fn invoke_in_chain(
    client: &aws_sdk_lambda::Client,
    invocation_type: InvocationType,
    trace: Option<String>,
) -> Result<Option<String>, String> {
    let output = client
        .invoke()
        .function_name("echo")
        .invocation_type(invocation_type)
        .payload(Blob::new(json!({"echo": 1}).to_string()))
        .customize()
        .mutate_request(move |request| {
            if let Some(trace) = &trace {
                request
                    .headers_mut()
                    .insert("x-amzn-trace-id", trace.clone());
            }
        })
        .send()
        .await
        .map_err(|e| {
            aws_sdk_lambda::error::ProvideErrorMetadata::code(&e)
                .unwrap_or("no code")
                .to_string()
        })?;
    Ok(output
        .payload
        .map(|p| json_of(Some(p)))
        .and_then(|answer| answer["trace_id"].as_str().map(str::to_string)))
}

/// The header `trace` with this function's lineage count set to `count`.
fn with_count(trace: &str, count: u32) -> String {
    let (head, lineage) = trace.split_once("Lineage=").unwrap();
    let (id, _) = lineage.split_once(':').unwrap();
    format!("{head}Lineage={id}:{count}")
}

#[tokio::test]
async fn a_chain_of_invocations_is_stopped_past_the_limit_unless_the_function_allows_it() {
    let (lambda, _server, client, _arn) = setup().await;
    // A first invocation starts a chain; the one it makes is the second in it, same root.
    let first = invoke_in_chain(&client, InvocationType::RequestResponse, None)
        .await
        .unwrap()
        .expect("the function gets a trace header");
    assert!(
        first.starts_with("Root=1-") && first.ends_with(":1"),
        "{first}"
    );
    let second = invoke_in_chain(
        &client,
        InvocationType::RequestResponse,
        Some(first.clone()),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(second.ends_with(":2"), "{second}");
    assert_eq!(
        first.split(';').next(),
        second.split(';').next(),
        "one chain, one root"
    );
    // Past the limit, Lambda stops it: the caller gets RecursiveInvocationException (Lambda
    // API reference, Invoke errors), an Event invocation goes to the failure destination.
    let deep = with_count(&first, RECURSION_LIMIT);
    let attempts = lambda.attempts("echo").len();
    assert_eq!(
        invoke_in_chain(&client, InvocationType::RequestResponse, Some(deep.clone())).await,
        Err("RecursiveInvocationException".to_string())
    );
    invoke_in_chain(&client, InvocationType::Event, Some(deep.clone()))
        .await
        .unwrap();
    let records = lambda.failure_records("echo");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["requestPayload"], json!({"echo": 1}));
    assert_eq!(
        records[0]["responseContext"]["functionError"],
        "RecursiveInvocationException"
    );
    assert_eq!(
        lambda.attempts("echo").len(),
        attempts,
        "the function did not run"
    );
    // One below the limit still runs.
    let last = with_count(&first, RECURSION_LIMIT - 1);
    let ran = invoke_in_chain(&client, InvocationType::RequestResponse, Some(last))
        .await
        .unwrap()
        .unwrap();
    assert!(ran.ends_with(&format!(":{RECURSION_LIMIT}")), "{ran}");
    // A function that invokes itself by design is let through.
    assert!(lambda.put_recursion_config("echo", RecursiveLoop::Allow));
    let allowed = invoke_in_chain(&client, InvocationType::RequestResponse, Some(deep))
        .await
        .unwrap()
        .unwrap();
    assert!(
        allowed.ends_with(&format!(":{}", RECURSION_LIMIT + 1)),
        "{allowed}"
    );
    assert!(!lambda.put_recursion_config("nope", RecursiveLoop::Allow));
}

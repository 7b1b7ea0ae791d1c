//! The call transcriber's real binary (and StartLCA's) under the local Lambda service (Runtime
//! API), with local KVS and Transcribe and moto (Kinesis, S3, DynamoDB): a contact-flow event
//! starts it, LAMBDA_INVOKE_TIMEOUT forces hand-overs to new invocations of itself, duplicates
//! and crashes are thrown at it, and the call comes out whole and once: transcript, events
//! and recording.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use call_metrics::Extracted;
use common::*;
use local_aws::kvs::{Fault, KvsOptions};
use local_aws::lambda::{
    FunctionSpec, InvokeFault, Lambda, LambdaOptions, RECURSION_LIMIT, RecursiveLoop,
    function_command,
};
use local_aws::transcribe::{Pace, TranscribeFault, TranscribeOptions};
use serde_json::{Value, json};

fn contact_flow_event(stream_arn: &str, first: &str) -> Value {
    json!({
        "Name": "ContactFlowEvent",
        "Details": {
            "ContactData": {
                "ContactId": CONTACT,
                "InitialContactId": CONTACT,
                "InstanceARN": INSTANCE,
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

const INSTANCE: &str = "arn:aws:connect:us-east-1:123456789012:instance/test";

/// The environment of the transcriber function, wired to the harness's services: recording
/// to [`BUCKET`], leases in [`TABLE`].
fn transcriber_environment(
    h: &Harness,
    lambda_url: &str,
    extra: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let (kvs, transcribe, kinesis) = h.urls.clone();
    let mut environment = BTreeMap::from([
        ("AWS_ENDPOINT_URL_KINESIS_VIDEO", kvs),
        ("AWS_ENDPOINT_URL_TRANSCRIBE_STREAMING", transcribe),
        ("AWS_ENDPOINT_URL_KINESIS", kinesis),
        ("AWS_ENDPOINT_URL_S3", h.moto_url.clone()),
        ("AWS_ENDPOINT_URL_DYNAMODB", h.moto_url.clone()),
        ("AWS_ENDPOINT_URL_LAMBDA", lambda_url.to_string()),
        ("AWS_ENDPOINT_URL_TRANSCRIBE", h.jobs_url.clone()),
        ("AWS_ACCESS_KEY_ID", "AKIDLOCAL".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "local".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("KINESIS_STREAM_NAME", "lca".to_string()),
        ("OUTPUT_BUCKET", BUCKET.to_string()),
        ("TRANSCRIBER_CALL_EVENT_TABLE_NAME", TABLE.to_string()),
        ("CALL_LEASE_TIMEOUT", "3000".to_string()),
        ("KVS_IDLE_TIMEOUT", "3000".to_string()),
        ("CONNECT_INSTANCE_ARN", INSTANCE.to_string()),
    ]);
    for (name, value) in extra {
        environment.insert(name, value.to_string());
    }
    environment
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// The transcriber function in a local Lambda wired to the harness's services.
async fn transcriber(h: &Harness, extra: &[(&str, &str)]) -> (Lambda, local_aws::http::Server) {
    transcriber_with(h, extra, LambdaOptions::default()).await
}

/// [`transcriber`], its functions' output (logs and metrics lines) in files in the folder
/// returned.
async fn logged_transcriber(
    h: &Harness,
    extra: &[(&str, &str)],
) -> (Lambda, local_aws::http::Server, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("lambda-logs")
        .join(format!("{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let options = LambdaOptions {
        log_dir: Some(dir.clone()),
        ..LambdaOptions::default()
    };
    let (lambda, server) = transcriber_with(h, extra, options).await;
    (lambda, server, dir)
}

async fn transcriber_with(
    h: &Harness,
    extra: &[(&str, &str)],
    options: LambdaOptions,
) -> (Lambda, local_aws::http::Server) {
    let lambda = Lambda::new(options);
    let server = lambda.serve(0).await.unwrap();
    let (command, args) =
        function_command(&PathBuf::from(env!("CARGO_BIN_EXE_call-transcriber"))).unwrap();
    lambda
        .add_function(FunctionSpec {
            name: "CallTranscriber".to_string(),
            command,
            args,
            environment: transcriber_environment(h, &server.url(), extra),
            timeout: Duration::from_secs(120),
            memory_mb: 128,
        })
        .unwrap();
    (lambda, server)
}

/// The StartLCA binary, built beside this package's (`cargo test --workspace` builds it).
fn start_lca_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_call-transcriber")).with_file_name("start-lca");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p start-lca` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// Invokes CallTranscriber synchronously with `event`: the function error type (if any) and
/// the answer (or the error as Lambda reports it).
async fn invoke(server: &local_aws::http::Server, event: &Value) -> (Option<String>, Value) {
    invoke_function(server, "CallTranscriber", event).await
}

/// Invokes `function` synchronously with `event`: as [`invoke`].
async fn invoke_function(
    server: &local_aws::http::Server,
    function: &str,
    event: &Value,
) -> (Option<String>, Value) {
    let output = aws_sdk_lambda::Client::new(&local_aws::sdk_config(&server.url()))
        .invoke()
        .function_name(function)
        .payload(Blob::new(event.to_string()))
        .send()
        .await
        .unwrap();
    let answer = serde_json::from_slice(output.payload.unwrap().as_ref()).unwrap();
    (output.function_error, answer)
}

/// Invokes CallTranscriber asynchronously (InvocationType Event, as StartLCA does) with
/// `event`: Lambda's event queue takes it and delivers it, retrying on failure.
async fn invoke_event(server: &local_aws::http::Server, event: &Value) {
    invoke_event_in_chain(server, event, None).await;
}

/// [`invoke_event`] from a caller that passes on the trace header `trace` (a function part
/// of a chain of requests, as Lambda's recursive loop detection counts them).
async fn invoke_event_in_chain(
    server: &local_aws::http::Server,
    event: &Value,
    trace: Option<String>,
) {
    aws_sdk_lambda::Client::new(&local_aws::sdk_config(&server.url()))
        .invoke()
        .function_name("CallTranscriber")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(event.to_string()))
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
        .unwrap();
}

/// Waits (5 s at most) until a Transcribe session is open; asserts there is exactly one.
async fn wait_for_session(h: &Harness) {
    for _ in 0..100 {
        if !h.transcribe.sessions().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        h.transcribe.sessions().len(),
        1,
        "the first delivery is transcribing"
    );
}

/// Every metrics line `function` wrote to its log in `dir` (CloudWatch EMF: the lines with
/// an `_aws` member), each checked against the specification: the line and the metric values
/// CloudWatch would extract from it.
/// A missing log file, or a line that names `_aws` but is not JSON, fails the test: an empty
/// answer means the function ran and wrote no metrics.
fn metrics_lines(dir: &std::path::Path, function: &str) -> Vec<(Value, Vec<Extracted>)> {
    let path = dir.join(format!("{function}.log"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (has {function} run?)", path.display()));
    text.lines()
        .filter(|line| line.contains("\"_aws\""))
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{}: a metrics line is not JSON ({e}): {line}",
                    path.display()
                )
            });
            let extracted = call_metrics::validate(line)
                .unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display()));
            (value, extracted)
        })
        .collect()
}

/// The values of `name` with exactly `dimensions` in `lines`, line by line.
fn metric_values(
    lines: &[(Value, Vec<Extracted>)],
    name: &str,
    dimensions: &[(&str, &str)],
) -> Vec<f64> {
    let dimensions: Vec<(String, String)> = dimensions
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    lines
        .iter()
        .flat_map(|(_, extracted)| extracted)
        .filter(|e| {
            e.namespace == call_metrics::NAMESPACE && e.name == name && e.dimensions == dimensions
        })
        .flat_map(|e| e.values.clone())
        .collect()
}

/// Waits until an event of `kind` is on the stream and every transcriber invocation is over
/// (150 s at most: longer than a transcriber's 120 s function timeout); returns every record
/// then. Anything published after `kind` would be a bug,
/// and an invocation still going could still publish it.
async fn records_until(h: &Harness, lambda: &Lambda, kind: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    loop {
        let seen = h.records().await.iter().any(|r| r["EventType"] == kind);
        if seen && lambda.pending_events("CallTranscriber") == 0 {
            return h.records().await;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "within 150 s: {kind} on the stream: {seen}; transcriber invocations still going: {}",
            lambda.pending_events("CallTranscriber")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the sample call is done (its recording's URL on the stream), then checks that
/// it came out whole and once: [`assert_lifecycle`], the recording, every sample to
/// Transcribe once (`why`: what that shows), no failed invocation. Returns the records.
async fn assert_completed_once(h: &Harness, lambda: &Lambda, why: &str) -> Vec<Value> {
    let records = records_until(h, lambda, "ADD_S3_RECORDING_URL").await;
    assert_lifecycle(&records);
    assert_recording(h).await;
    assert!(
        h.transcribed_audio() == sample_call_stereo(),
        "Transcribe got every sample once: {why}"
    );
    assert!(lambda.failures("CallTranscriber").is_empty());
    records
}

/// The call's recording as stored in S3.
async fn call_recording(h: &Harness) -> Vec<u8> {
    h.object(&format!("lca-audio-recordings/{CONTACT}.wav"))
        .await
        .expect("the call's recording is in S3")
}

/// The call's recording in S3 is `pcm` behind a correct WAV header, and the pieces it was
/// joined from are gone, every version of them.
async fn assert_recording_is(h: &Harness, pcm: &[u8]) {
    let wav = call_recording(h).await;
    assert_eq!(
        &wav[..call_audio::WAV_HEADER_BYTES],
        &call_audio::wav_header(8000, pcm.len() as u64).unwrap()
    );
    assert!(
        wav[call_audio::WAV_HEADER_BYTES..] == pcm[..],
        "the recording is the call's audio byte for byte ({} bytes of audio, {} expected)",
        wav.len() - call_audio::WAV_HEADER_BYTES,
        pcm.len()
    );
    assert_eq!(h.keys("lca-audio-raw/").await, Vec::<String>::new());
    assert_eq!(
        h.versions("lca-audio-raw/").await,
        (0, 0),
        "no version of a piece is left in the versioned bucket"
    );
}

/// [`assert_recording_is`] the sample call.
async fn assert_recording(h: &Harness) {
    assert_recording_is(h, &sample_call_stereo()).await;
}

/// START first and once, END once, then the recording's URL; no final segment twice.
fn assert_start_end_recording_url(records: &[Value]) {
    let types: Vec<&str> = records
        .iter()
        .map(|r| r["EventType"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"START"));
    assert_eq!(&types[types.len() - 2..], ["END", "ADD_S3_RECORDING_URL"]);
    assert_eq!(types.iter().filter(|t| **t == "START").count(), 1);
    assert_eq!(types.iter().filter(|t| **t == "END").count(), 1);
    assert_no_final_twice(records);
}

/// A call that ended short of its whole audio (given up, or cut at its maximum length):
/// [`assert_start_end_recording_url`]; the recording is the call's first samples
/// ([`assert_recording_is`] them). Returns the recording's audio.
async fn assert_ended_short_with_recording(h: &Harness, records: &[Value]) -> Vec<u8> {
    assert_start_end_recording_url(records);
    let audio = call_recording(h).await[call_audio::WAV_HEADER_BYTES..].to_vec();
    let whole = sample_call_stereo();
    assert!(
        !audio.is_empty() && audio.len() < whole.len() && audio[..] == whole[..audio.len()],
        "the call's first samples ({} of {} bytes)",
        audio.len(),
        whole.len()
    );
    assert_recording_is(h, &audio).await;
    audio
}

/// START … END, then ADD_S3_RECORDING_URL, each once, with the recording's URL; the whole
/// transcript, finals in time order, none twice.
fn assert_lifecycle(records: &[Value]) {
    let types: Vec<&str> = records
        .iter()
        .map(|r| r["EventType"].as_str().unwrap())
        .collect();
    assert_eq!(types.last(), Some(&"ADD_S3_RECORDING_URL"));
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "ADD_S3_RECORDING_URL")
            .count(),
        1
    );
    assert_eq!(
        records.last().unwrap()["RecordingUrl"],
        format!("https://{BUCKET}.s3.us-east-1.amazonaws.com/lca-audio-recordings/{CONTACT}.wav")
    );
    // START first, END last before the URL, each once; the call's turns, each once.
    assert_whole_call_within(&records[..records.len() - 1], 0.020);
    let starts: Vec<f64> = finals(records).iter().map(|f| f.1).collect();
    let mut sorted = starts.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(starts, sorted, "final segments in time order");
}

/// The StartLCA binary in `lambda`, as the template sets it up: the call lease table `table`
/// on the harness's DynamoDB, the transcriber function of `lambda`.
fn add_start_lca(h: &Harness, lambda: &Lambda, server: &local_aws::http::Server, table: &str) {
    add_start_lca_with(h, lambda, server, table, &[]);
}

/// [`add_start_lca`] with `extra` variables in its environment.
fn add_start_lca_with(
    h: &Harness,
    lambda: &Lambda,
    server: &local_aws::http::Server,
    table: &str,
    extra: &[(&str, &str)],
) {
    let (command, args) = function_command(&start_lca_binary()).unwrap();
    let mut environment = BTreeMap::from([
        ("AWS_ENDPOINT_URL_LAMBDA".to_string(), server.url()),
        ("AWS_ENDPOINT_URL_DYNAMODB".to_string(), h.moto_url.clone()),
        ("AWS_ACCESS_KEY_ID".to_string(), "AKIDLOCAL".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "local".to_string()),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
        ("CONNECT_INSTANCE_ARN".to_string(), INSTANCE.to_string()),
        (
            "TRANSCRIBER_FUNCTION_ARN".to_string(),
            "arn:aws:lambda:us-east-1:123456789012:function:CallTranscriber".to_string(),
        ),
        (
            "TRANSCRIBER_CALL_EVENT_TABLE_NAME".to_string(),
            table.to_string(),
        ),
        ("SWEEP_GRACE".to_string(), "1000".to_string()),
    ]);
    environment.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    lambda
        .add_function(FunctionSpec {
            name: "StartLCA".to_string(),
            command,
            args,
            environment,
            timeout: Duration::from_secs(8),
            memory_mb: 128,
        })
        .unwrap();
}

/// Connect invoking StartLCA for the call on `arn` (synchronously, waiting at most 8 s):
/// its answer.
async fn invoke_start_lca(server: &local_aws::http::Server, arn: &str, first: &str) -> Value {
    invoke_start_lca_with(server, &contact_flow_event(arn, first)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startlcas_event_lost_the_sweep_starts_the_call_from_its_lease() {
    // StartLCA writes the call's lease, then Lambda loses its event to the transcriber:
    // the lease is open and unclaimed, so the sweep delivers the call (StartLost), and the
    // first attempt runs it whole from its first fragment, every word once.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server, logs) = logged_transcriber(&h, &[("SWEEP_GRACE", "1000")]).await;
    add_start_lca(&h, &lambda, &server, TABLE);
    assert!(lambda.drop_next_event("CallTranscriber", "LAMBDA_START"));
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    let answer = invoke_start_lca(&server, &arn, &first).await;
    assert_eq!(answer["status"], "STARTED", "{answer}");
    assert_eq!(lambda.dropped_events("CallTranscriber").len(), 1);
    let item = lease_item(&h).await.expect("StartLCA wrote the lease");
    assert_eq!(item["Status"].as_s().unwrap(), "PENDING");
    let sweep = lambda.scheduled_event("sweep");
    assert!(lambda.schedule("CallTranscriber", Duration::from_secs(1), sweep));
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_lifecycle(&records);
    assert_recording(&h).await;
    assert!(h.transcribed_audio() == sample_call_stereo());
    assert_eq!(leased_status(&h).await.as_deref(), Some("ENDED"));
    let lines = metrics_lines(&logs, "CallTranscriber");
    assert!(
        metric_values(&lines, "CallsRescued", &[("Reason", "StartLost")])
            .iter()
            .sum::<f64>()
            >= 1.0
    );
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startlcas_hung_invoke_answers_connect_with_an_error_in_time_and_the_sweep_starts_the_call()
{
    // Lambda takes StartLCA's Invoke and never answers. Connect waits 8 s at most for a flow's
    // Lambda (Connect administrator guide, "Invoke AWS Lambda function" block): StartLCA's
    // time limits (3 s for all attempts) turn the hang into its ERROR answer well within
    // that. The lease it wrote first is open, so the sweep still starts the call.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server, logs) = logged_transcriber(&h, &[("SWEEP_GRACE", "1000")]).await;
    add_start_lca(&h, &lambda, &server, TABLE);
    assert!(lambda.set_invoke_fault(
        "CallTranscriber",
        call_lifecycle::delivery::START_ACTION,
        Some(InvokeFault::Hang)
    ));
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    let asked = std::time::Instant::now();
    let answer = invoke_start_lca(&server, &arn, &first).await;
    let took = asked.elapsed();
    assert_eq!(answer["status"], "ERROR", "{answer}");
    assert_eq!(answer["error"], "INVOKE_FAILED", "{answer}");
    assert!(took < Duration::from_secs(8), "answered after {took:?}");
    assert!(
        !lambda.faulted_invokes("CallTranscriber").is_empty(),
        "the Invoke hung"
    );
    assert_eq!(leased_status(&h).await.as_deref(), Some("PENDING"));
    let sweep = lambda.scheduled_event("sweep");
    assert!(lambda.schedule("CallTranscriber", Duration::from_secs(1), sweep));
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_lifecycle(&records);
    let answers = metrics_lines(&logs, "StartLCA");
    assert_eq!(
        metric_values(&answers, "StartLcaAnswers", &[("Answer", "INVOKE_FAILED")]),
        [1.0]
    );
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_open_since_before_the_index_joins_it_at_its_next_claim() {
    // A lease written by an earlier version has no OpenCall or SweepAt (the sweep's index
    // cannot see the call): the next claim adds them, and the end removes them.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server) = transcriber(&h, &[]).await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    let flow_event = contact_flow_event(&arn, &first);
    let call = call_transcriber::call::CallData {
        // An earlier version kept no settings with the call.
        settings: None,
        ..call_transcriber::call::CallData::of_contact_flow_event(
            &flow_event,
            INSTANCE,
            &stack_contacts(),
        )
        .unwrap()
    };
    let lease = call_transcriber::lease::CallLease::new(
        h.dynamodb.clone(),
        TABLE.to_string(),
        Duration::from_secs(30),
    );
    assert!(
        lease
            .create_pending(&call, &flow_event.to_string())
            .await
            .unwrap()
    );
    h.dynamodb
        .update_item()
        .table_name(TABLE)
        .key(
            "PK",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("contact#{CONTACT}")),
        )
        .update_expression("REMOVE OpenCall, SweepAt")
        .send()
        .await
        .unwrap();
    // Kinesis held still until the claim is seen: the call cannot end (and its end remove
    // OpenCall and SweepAt) before this test reads the claimed lease. (Without it, a slow
    // read under load once saw the ended call's lease: Owner, and neither attribute.)
    h.faults.set_outage(true);
    invoke_event(&server, &call_transcriber::delivery::start_event(CONTACT)).await;
    let mut claimed = None;
    for _ in 0..100 {
        let item = lease_item(&h).await.expect("the lease item");
        if item["Owner"].as_s().is_ok_and(|o| !o.is_empty()) {
            claimed = Some(item);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.faults.set_outage(false);
    let claimed = claimed.expect("the call was claimed within 10 s");
    assert!(
        claimed.contains_key("OpenCall") && claimed.contains_key("SweepAt"),
        "{claimed:?}"
    );
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_lifecycle(&records);
    let item = lease_item(&h).await.expect("the lease item");
    assert!(!item.contains_key("OpenCall") && !item.contains_key("SweepAt"));
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startlca_that_cannot_write_the_lease_still_starts_the_call() {
    // DynamoDB refuses StartLCA's write (here: no such table): StartLCA starts the
    // transcriber with the contact-flow event itself, and the call is transcribed as before
    // StartLCA wrote leases (the transcriber creates the lease).
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server) = transcriber(&h, &[]).await;
    add_start_lca(&h, &lambda, &server, "no-such-table");
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    let answer = invoke_start_lca(&server, &arn, &first).await;
    assert_eq!(answer["status"], "STARTED", "{answer}");
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_lifecycle(&records);
    let invocations = lambda.invocations("CallTranscriber");
    assert_eq!(invocations[0].payload["Name"], "ContactFlowEvent");
    assert_eq!(leased_status(&h).await.as_deref(), Some("ENDED"));
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_lca_then_hand_overs_transcribe_and_record_every_sample_once() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server, logs) = logged_transcriber(&h, &[("LAMBDA_INVOKE_TIMEOUT", "500")]).await;
    add_start_lca(&h, &lambda, &server, TABLE);
    // At 5x (12 s) there is room for three hand-overs also on a busy machine, where starting
    // each invocation takes longer.
    let (arn, first) = h.play_at("call", sample_call_chunks(), &[], 5.0).await;
    // Connect invokes StartLCA synchronously and waits for its answer (8 s at most).
    let asked = std::time::Instant::now();
    let answer = invoke_start_lca(&server, &arn, &first).await;
    let answered = asked.elapsed();
    assert_eq!(answer["status"], "STARTED", "{answer}");
    // The bound is Connect's (the Connect administrator guide: a flow's Invoke AWS Lambda
    // function block times out after at most 8 s), not a speed target: it holds for the
    // arm64 zips under emulation too, whose cold start is slower than on Lambda.
    assert!(
        answered < Duration::from_secs(8),
        "StartLCA answered in {answered:?}, after Connect would have given up"
    );
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    let invocations = lambda.invocations("CallTranscriber");
    // StartLCA wrote the call's lease first: its event names the call.
    assert_eq!(
        invocations[0].payload,
        json!({"action": "LAMBDA_START", "contactId": CONTACT, "lambdaCount": 0})
    );
    let continuations: Vec<&Value> = invocations
        .iter()
        .filter(|i| i.payload["action"] == "LAMBDA_CONTINUE")
        .map(|i| &i.payload)
        .collect();
    assert!(
        continuations.len() >= 3,
        "{} hand-overs",
        continuations.len()
    );
    for (i, event) in continuations.iter().enumerate() {
        assert_eq!(
            **event,
            json!({"action": "LAMBDA_CONTINUE", "contactId": CONTACT, "lambdaCount": i + 1}),
            "a hand-over names the call: no customer data between functions"
        );
    }
    // Where the call is kept instead: the lease, up to the last invocation's position.
    let item = lease_item(&h).await.expect("the lease item");
    let kept: Value = serde_json::from_str(item["CallData"].as_s().unwrap()).unwrap();
    assert_eq!(kept["lambdaCount"], continuations.len());
    assert_eq!(kept["fromNumber"], "+15551230001");
    assert!(kept["lastFragment"].is_string() && kept["sessionId"].is_string());
    assert!(
        invocations.iter().all(|i| i.invocation_type == "Event"),
        "the transcriber is always started asynchronously"
    );
    assert_eq!(
        lambda.attempts("CallTranscriber").len(),
        invocations.len(),
        "no invocation failed and was retried"
    );
    let sessions = h.transcribe.sessions();
    assert_eq!(sessions.len(), continuations.len() + 1);
    let audio = h.transcribed_audio();
    assert!(
        audio == sample_call_stereo(),
        "every sample reaches Transcribe exactly once across the invocations"
    );
    assert_lifecycle(&records);
    assert_eq!(records[0]["CustomerPhoneNumber"], "+15551230001");
    assert_eq!(records[0]["AgentId"], "alex");
    // The call's time (the event's StartTimestamp), not when an invocation ran.
    assert_eq!(records[0]["CreatedAt"], "2024-09-18T16:41:29.681Z");
    assert_recording(&h).await;
    // One metrics line per invocation: hand-overs, then the end; the call's audio, events
    // and recording added up across them.
    let lines = metrics_lines(&logs, "CallTranscriber");
    let outcomes = outcomes(&lines);
    let mut expected = vec!["CONTINUED"; continuations.len()];
    expected.push("ENDED");
    assert_eq!(outcomes, expected);
    assert_eq!(metric_values(&lines, "CallsStarted", &[]), [1.0]);
    assert_eq!(metric_values(&lines, "CallsEnded", &[]), [1.0]);
    let audio_s: f64 = metric_values(&lines, "AudioSeconds", &[]).iter().sum();
    let call_s = sample_call_stereo().len() as f64 / 4.0 / 8000.0;
    assert!(
        (audio_s - call_s).abs() < 0.001,
        "{audio_s} s of {call_s} s"
    );
    let published: f64 = metric_values(&lines, "EventsPublished", &[]).iter().sum();
    assert_eq!(
        published as usize,
        records.len() - 1,
        "all but the recording's URL"
    );
    let lags = metric_values(&lines, "TranscriptLag", &[]);
    assert_eq!(
        lags.len(),
        finals(&records).len(),
        "one lag per final segment"
    );
    // The call plays in call_s / 5 (about 12 s): a segment published later than that after
    // its audio arrived waited for more than the whole call.
    let play_ms = call_s * 1000.0 / 5.0;
    assert!(
        lags.iter().all(|ms| (0.0..play_ms).contains(ms)),
        "lags {lags:?} ms, the call playing in {play_ms} ms"
    );
    let recording = call_recording(&h).await;
    assert_eq!(
        metric_values(&lines, "RecordingBytes", &[]),
        [recording.len() as f64]
    );
    let started = metrics_lines(&logs, "StartLCA");
    assert_eq!(
        metric_values(&started, "StartLcaAnswers", &[("Answer", "STARTED")]),
        [1.0]
    );
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_phone_number_and_no_transcript() {
    // RUST_LOG=trace, every crate, in StartLCA and the transcriber: each function's log
    // (stderr) and metrics lines (stdout) stop at the cap (FINEST_LOG_LEVEL: no TRACE line)
    // and carry none of the call's phone numbers or transcript (customer data), not even
    // base64-encoded (an SDK logs payloads so).
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let trace = ("RUST_LOG", "trace");
    let (lambda, server, logs) =
        logged_transcriber(&h, &[trace, ("LAMBDA_INVOKE_TIMEOUT", "1500")]).await;
    add_start_lca_with(&h, &lambda, &server, TABLE, &[trace]);
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    let answer = invoke_start_lca(&server, &arn, &first).await;
    assert_eq!(answer["status"], "STARTED", "{answer}");
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_lifecycle(&records);
    let numbers = ["+15551230001", "+15559870002", "15551230001", "15559870002"];
    let transcripts: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r["Transcript"].as_str())
        .filter(|t| t.len() >= 8)
        .collect();
    assert!(!transcripts.is_empty());
    let customer_data: Vec<&str> = numbers.into_iter().chain(transcripts).collect();
    // The check finds what it looks for, plain or encoded.
    let planted = format!(
        "{{\"level\":\"DEBUG\",\"body\":\"{}\"}}\n{{\"level\":\"TRACE\"}}",
        base64_of("+15551230001")
    );
    assert_eq!(
        log_problems(&planted, &customer_data),
        ["line 1: customer data", "line 2: at TRACE level"]
    );
    for (function, at_least) in [("CallTranscriber", 1000), ("StartLCA", 5)] {
        let log = std::fs::read_to_string(logs.join(format!("{function}.log"))).unwrap();
        assert!(
            log.lines().count() > at_least,
            "{function}: debug logging is on"
        );
        let problems = log_problems(&log, &customer_data);
        assert!(problems.is_empty(), "{function}: {problems:?}");
    }
    lambda.shutdown();
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// What is wrong with a function's log: a line finer than the cap, or customer data in a
/// line, plain or in any base64 run of it. Names the line's number, never the data.
fn log_problems(log: &str, customer_data: &[&str]) -> Vec<String> {
    use base64::Engine as _;
    let mut problems = Vec::new();
    for (n, line) in log.lines().enumerate() {
        if let Ok(value) = serde_json::from_str::<Value>(line)
            && value["level"] == "TRACE"
        {
            problems.push(format!("line {}: at TRACE level", n + 1));
        }
        let mut texts = vec![line.to_string()];
        let base64_runs = line
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
            .filter(|run| run.len() >= 12);
        for run in base64_runs {
            let engine = base64::engine::general_purpose::STANDARD_NO_PAD;
            if let Ok(bytes) = engine.decode(run.trim_end_matches('=')) {
                texts.push(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        if texts
            .iter()
            .any(|text| customer_data.iter().any(|data| text.contains(data)))
        {
            problems.push(format!("line {}: customer data", n + 1));
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_hand_overs_longer_than_lambdas_loop_detection_completes_the_call() {
    // Lambda stops the ~17th invocation of a function in one chain of requests unless the
    // function's RecursiveLoop is Allow, as the template sets it for the transcriber (a call
    // of three hours is a chain of 16). The call starts 14 deep in a chain (the trace header
    // its caller passes on); its hand-overs take the chain past the limit.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server) = transcriber(&h, &[("LAMBDA_INVOKE_TIMEOUT", "500")]).await;
    assert!(lambda.put_recursion_config("CallTranscriber", RecursiveLoop::Allow));
    let start_depth = RECURSION_LIMIT - 2;
    let deep = lambda.chain_trace("CallTranscriber", start_depth).unwrap();
    let (arn, first) = h.play_at("call", sample_call_chunks(), &[], 5.0).await;
    invoke_event_in_chain(&server, &contact_flow_event(&arn, &first), Some(deep)).await;
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    let continuations: Vec<_> = lambda
        .invocations("CallTranscriber")
        .into_iter()
        .filter(|i| i.payload["action"] == "LAMBDA_CONTINUE")
        .collect();
    // Each hand-over carried the chain on (the runtime client's _X_AMZN_TRACE_ID, passed on
    // by the SDK): the k-th continuation is invocation start_depth + k + 1 of the chain.
    let root = |trace: &str| trace.split(';').next().unwrap_or_default().to_string();
    let roots: BTreeSet<String> = continuations
        .iter()
        .map(|i| {
            root(
                i.caller_trace
                    .as_deref()
                    .expect("a hand-over carries the trace"),
            )
        })
        .collect();
    assert_eq!(roots.len(), 1, "one chain: {roots:?}");
    for (k, invocation) in continuations.iter().enumerate() {
        let trace = invocation.caller_trace.as_deref().unwrap();
        let depth = start_depth + k as u32 + 1;
        assert!(
            trace.ends_with(&format!(":{depth}")),
            "hand-over {}: {trace}",
            k + 1
        );
    }
    assert!(
        start_depth + continuations.len() as u32 > RECURSION_LIMIT,
        "{} hand-overs: the chain did not pass the limit",
        continuations.len()
    );
    assert!(lambda.failure_records("CallTranscriber").is_empty());
    assert_lifecycle(&records);
    assert_recording(&h).await;
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_of_more_than_25_hand_overs_comes_out_whole_and_once() {
    // A call of short turns with 2 s pauses between them (a hand-over waits for a pause, so
    // that no utterance is cut in two), 140 s at 8x, handed over at most of its 40 pauses:
    // every sample once in Transcribe and in the recording, the WAV byte-exact, no version of
    // the pieces left in the versioned bucket, and one post-call analytics job for the call
    // (Call Analytics mode), on the whole recording.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let mut environment = analytics_environment().to_vec();
    environment.push(("LAMBDA_INVOKE_TIMEOUT", "100"));
    let (lambda, server) = transcriber(&h, &environment).await;
    assert!(lambda.put_recursion_config("CallTranscriber", RecursiveLoop::Allow));
    let (sample_caller, sample_agent) = sample_call_tracks();
    // Per 7 s: the caller's 1.5 s, 2 s of silence, the agent's 1.5 s, 2 s of silence (bytes
    // of 8 kHz s16le: 16 per ms).
    let ms = |t: usize| t * 16;
    let silence = vec![0u8; ms(1500)];
    let pause = vec![0u8; ms(2000)];
    let caller_turn = &sample_caller[ms(7500)..ms(9000)];
    let agent_turn = &sample_agent[ms(500)..ms(2000)];
    let caller = [caller_turn, &pause, &silence, &pause].concat().repeat(20);
    let agent = [&silence[..], &pause, agent_turn, &pause]
        .concat()
        .repeat(20);
    let mut writer = kvs_media::ConnectWriter::new(kvs_media::WriterOptions {
        contact_id: CONTACT.to_string(),
        ..kvs_media::WriterOptions::default()
    });
    let chunks = writer
        .call(&caller, &agent, 1_764_000_000_000)
        .into_iter()
        .map(bytes::Bytes::from)
        .collect();
    let (arn, first) = h.play_at("call", chunks, &[], 8.0).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    let continuations = lambda
        .invocations("CallTranscriber")
        .iter()
        .filter(|i| i.payload["action"] == "LAMBDA_CONTINUE")
        .count();
    assert!(continuations >= 25, "{continuations} hand-overs");
    let whole = stereo(&caller, &agent);
    let sessions = h.transcribe.sessions();
    assert_eq!(sessions.len(), continuations + 1);
    let audio = h.transcribed_audio();
    assert!(
        audio == whole,
        "every sample reaches Transcribe once ({} of {} bytes)",
        audio.len(),
        whole.len()
    );
    assert_start_end_recording_url(&records);
    assert_recording_is(&h, &whole).await;
    assert!(
        sessions
            .iter()
            .all(|s| s.configuration.as_ref().unwrap()["PostCallAnalyticsSettings"].is_null()),
        "no stream writes post-call output of its own"
    );
    assert_one_post_call_job(&h).await;
    lambda.shutdown();
}

/// A transcriber in Call Analytics mode with post-call analytics (on by default).
fn analytics_environment() -> [(&'static str, &'static str); 2] {
    [
        ("TRANSCRIBE_API_MODE", "analytics"),
        ("TCA_DATA_ACCESS_ROLE_ARN", TCA_ROLE),
    ]
}

const TCA_ROLE: &str = "arn:aws:iam::123456789012:role/tca";

/// Waits (10 s at most) until the call's lease says it ended: after the last invocation's
/// recording, its URL and its analytics job.
async fn wait_for_call_end(h: &Harness) {
    for _ in 0..200 {
        if leased_status(h).await.as_deref() == Some("ENDED") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(leased_status(h).await.as_deref(), Some("ENDED"));
}

/// Waits for the call's lease to end, then checks that exactly one Call Analytics job was
/// started for the call, on its whole recording, channel 0 the customer.
async fn assert_one_post_call_job(h: &Harness) {
    assert_one_post_call_job_with(h, "redacted", json!(["ALL"]), None).await;
}

/// [`assert_one_post_call_job`] (en-US) for a call with this redaction output, these PII
/// entity types and vocabulary filter (name, method).
async fn assert_one_post_call_job_with(
    h: &Harness,
    redaction_output: &str,
    entity_types: Value,
    filter: Option<(&str, &str)>,
) {
    wait_for_call_end(h).await;
    let jobs = h.jobs.jobs();
    assert_eq!(jobs.len(), 1, "one post-call analytics job: {jobs:?}");
    let job = &jobs[0];
    assert_eq!(job["CallAnalyticsJobName"], CONTACT);
    assert_eq!(
        job["Media"]["MediaFileUri"],
        format!("s3://{BUCKET}/lca-audio-recordings/{CONTACT}.wav")
    );
    assert_eq!(
        job["OutputLocation"],
        format!("s3://{BUCKET}/lca-call-analytics-json/")
    );
    assert_eq!(job["DataAccessRoleArn"], TCA_ROLE);
    assert_eq!(
        job["ChannelDefinitions"],
        json!([
            {"ChannelId": 0, "ParticipantRole": "CUSTOMER"},
            {"ChannelId": 1, "ParticipantRole": "AGENT"}
        ])
    );
    assert_eq!(job["Settings"]["LanguageOptions"], json!(["en-US"]));
    assert_eq!(
        job["Settings"]["ContentRedaction"],
        json!({"RedactionType": "PII", "RedactionOutput": redaction_output, "PiiEntityTypes": entity_types})
    );
    let (name, method) = filter.unzip();
    assert_eq!(
        job["Settings"].get("VocabularyFilterName"),
        name.map(|n| json!(n)).as_ref()
    );
    assert_eq!(
        job["Settings"].get("VocabularyFilterMethod"),
        method.map(|m| json!(m)).as_ref()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_recording_is_joined_keeps_it_and_starts_one_analytics_job() {
    // The last invocation joins the WAV, deletes the pieces, publishes the URL and asks
    // Transcribe for the analytics job; Transcribe takes the job but its answer is held, and
    // the function is crashed there, before the lease records the call's end. Lambda's retry
    // reads the end of the call again, and records its share again: it must keep the joined
    // WAV (the pieces before its own are gone), leave no piece behind, and not start a
    // second job.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let mut environment = analytics_environment().to_vec();
    environment.push(("LAMBDA_INVOKE_TIMEOUT", "1500"));
    let (lambda, server) = transcriber(&h, &environment).await;
    h.jobs.inject(local_aws::call_analytics::JobFault::Hold);
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    let mut held = false;
    for _ in 0..1200 {
        if !h.jobs.jobs().is_empty() {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(held, "the call ended and its analytics job was asked for");
    assert_eq!(lambda.crash_busy("CallTranscriber"), 1);
    assert_ne!(leased_status(&h).await.as_deref(), Some("ENDED"));
    h.jobs.release();
    assert_one_post_call_job(&h).await;
    let records = h.records().await;
    assert_start_end_recording_url(&records);
    let urls = records
        .iter()
        .filter(|r| r["EventType"] == "ADD_S3_RECORDING_URL")
        .count();
    assert_eq!(urls, 1, "the recording's URL is published once");
    assert_eq!(
        h.jobs.refused(),
        1,
        "the retry's request met the job already there"
    );
    // The WAV the crashed attempt joined, whole; no piece or piece version left.
    assert_recording(&h).await;
    assert_eq!(
        lambda.attempts("CallTranscriber").len(),
        lambda.invocations("CallTranscriber").len() + 1,
        "the crashed invocation was retried once"
    );
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hold_is_kept_while_the_call_is_finished() {
    // The last invocation's end-of-call work (here the post-call job's answer, held by
    // Transcribe) takes longer than CALL_LEASE_TIMEOUT (3 s). The hold is renewed meanwhile,
    // so a second delivery of its event (same request id: it waits for the hold to expire)
    // finds it live and leaves the call alone instead of redoing the last share.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let mut environment = analytics_environment().to_vec();
    environment.push(("LAMBDA_INVOKE_TIMEOUT", "1500"));
    let (lambda, server, logs) = logged_transcriber(&h, &environment).await;
    h.jobs.inject(local_aws::call_analytics::JobFault::Hold);
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    let mut held = false;
    for _ in 0..1200 {
        if !h.jobs.jobs().is_empty() {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(held, "the call ended and its analytics job was asked for");
    // Twice the lease's duration with the answer held, the duplicate waiting meanwhile.
    assert!(lambda.deliver_again("CallTranscriber"));
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_ne!(leased_status(&h).await.as_deref(), Some("ENDED"));
    h.jobs.release();
    wait_for_call_end(&h).await;
    assert_one_post_call_job(&h).await;
    // The second delivery left the call alone; the first one ended it.
    let lines = metrics_lines(&logs, "CallTranscriber");
    let outcomes = outcomes(&lines);
    assert_eq!(
        outcomes.iter().filter(|o| *o == "ENDED").count(),
        1,
        "{outcomes:?}"
    );
    assert!(outcomes.iter().any(|o| o == "DUPLICATE"), "{outcomes:?}");
    let records = h.records().await;
    assert_start_end_recording_url(&records);
    assert_recording(&h).await;
    assert!(
        lambda.failures("CallTranscriber").is_empty(),
        "{:?}",
        lambda.failures("CallTranscriber")
    );
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_analytics_job_leaves_the_call_ended_and_is_counted_as_missed() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server, logs) = logged_transcriber(&h, &analytics_environment()).await;
    h.jobs.inject(local_aws::call_analytics::JobFault::Refuse {
        status: 403,
        error_type: "AccessDeniedException".to_string(),
    });
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_start_end_recording_url(&records);
    wait_for_call_end(&h).await;
    assert!(h.jobs.jobs().is_empty());
    assert_eq!(h.jobs.refused(), 1, "asked once: a refusal is not retried");
    assert_recording(&h).await;
    lambda.shutdown();
    let lines = metrics_lines(&logs, "CallTranscriber");
    assert_eq!(metric_values(&lines, "PostCallAnalyticsMissed", &[]), [1.0]);
    assert!(metric_values(&lines, "PostCallAnalyticsJobs", &[]).is_empty());
    assert_eq!(
        metric_values(&lines, "CallsEnded", &[]),
        [1.0],
        "the call itself ended normally"
    );
    let log = std::fs::read_to_string(logs.join("CallTranscriber.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("\"level\":\"ERROR\"")
            && l.contains("AccessDeniedException")
            && l.contains("post-call analytics not started")),
        "an error line names Transcribe's answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_invocation_leaves_the_call_alone() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server) = transcriber(&h, &[]).await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    let event = contact_flow_event(&arn, &first);
    invoke_event(&server, &event).await;
    wait_for_session(&h).await;
    // The same event again (Lambda's queue delivering twice, or a flow invoking twice).
    let (_, answer) = invoke(&server, &event).await;
    assert_eq!(answer["status"], "DUPLICATE", "{answer}");
    assert_eq!(answer["reason"], "another invocation holds the call");
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_eq!(
        h.transcribe.sessions().len(),
        1,
        "the duplicate started no session"
    );
    assert_lifecycle(&records);
    assert_recording(&h).await;
    // Once the call is over, the event is still left alone.
    let (_, answer) = invoke(&server, &event).await;
    assert_eq!(answer["reason"], "the call has already ended", "{answer}");
    assert_eq!(h.records().await.len(), records.len());
    lambda.shutdown();
}

/// The call's lease item as stored.
async fn lease_item(
    h: &Harness,
) -> Option<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
    h.dynamodb
        .get_item()
        .table_name(TABLE)
        .key(
            "PK",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("contact#{CONTACT}")),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

/// What the lease says Kinesis has acknowledged.
async fn leased_delivered(h: &Harness) -> Option<call_transcriber::Delivered> {
    let item = lease_item(h).await?;
    serde_json::from_str(item.get("Delivered")?.as_s().ok()?).ok()
}

/// The call as the lease keeps it for its next invocation (its CallData attribute).
async fn leased_call(h: &Harness) -> call_transcriber::call::CallData {
    let item = lease_item(h).await.expect("the call's lease");
    serde_json::from_str(item["CallData"].as_s().expect("CallData is a string"))
        .expect("CallData is a call")
}

/// The lease's Status attribute.
async fn leased_status(h: &Harness) -> Option<String> {
    lease_item(h).await?.get("Status")?.as_s().ok().cloned()
}

/// Crashes the busy transcriber once the lease says exactly what the stream holds: Kinesis is
/// held still until the lease's `Delivered` catches up with it. A crash at any other moment may
/// leave the last acknowledged record out of the lease, which the retry publishes again
/// (ARCHITECTURE.md, "Recording what was delivered"); the tests that check every final once
/// crash here.
async fn crash_once_the_lease_has_the_stream(h: &Harness, lambda: &Lambda) {
    h.faults.set_outage(true);
    let mut on_stream = call_transcriber::Delivered::default();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        on_stream = call_transcriber::Delivered::default();
        for record in h.records().await {
            on_stream.record(&serde_json::from_value(record).unwrap());
        }
        if leased_delivered(h).await.as_ref() == Some(&on_stream) {
            break;
        }
    }
    assert_eq!(leased_delivered(h).await, Some(on_stream));
    assert_eq!(lambda.crash_busy("CallTranscriber"), 1);
    h.faults.set_outage(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_call_is_retried_without_losing_or_repeating_anything() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server) = transcriber(&h, &[("LAMBDA_INVOKE_TIMEOUT", "1500")]).await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    // Into the second invocation, with finals on the stream.
    let mut crashed = false;
    for _ in 0..400 {
        let handed_over = lambda
            .invocations("CallTranscriber")
            .iter()
            .any(|i| i.payload["action"] == "LAMBDA_CONTINUE");
        if handed_over && finals(&h.records().await).len() >= 4 {
            crash_once_the_lease_has_the_stream(&h, &lambda).await;
            crashed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        crashed,
        "the call was handed over and transcribed before the crash"
    );
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_lifecycle(&records);
    assert_recording(&h).await;
    let attempts = lambda.attempts("CallTranscriber");
    assert_eq!(
        attempts.len(),
        lambda.invocations("CallTranscriber").len() + 1,
        "the crashed invocation was retried once (with its request id)"
    );
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_delivery_with_the_same_request_id_leaves_the_call_alone() {
    // Lambda's event queue may deliver an event twice while the first delivery still runs,
    // and retries keep the request id: the id alone does not tell a retry from a duplicate.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server) = transcriber(&h, &[]).await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    wait_for_session(&h).await;
    assert!(lambda.deliver_again("CallTranscriber"));
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    let attempts = lambda.attempts("CallTranscriber");
    assert_eq!(
        attempts.len(),
        2,
        "{attempts:?} {:?}",
        lambda.failures("CallTranscriber")
    );
    assert_eq!(attempts[0], attempts[1], "the same request id");
    assert_eq!(
        h.transcribe.sessions().len(),
        1,
        "the second delivery started no session"
    );
    assert!(lambda.failures("CallTranscriber").is_empty());
    assert_lifecycle(&records);
    assert_recording(&h).await;
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kvs_error_fails_every_attempt_and_the_last_one_ends_the_call() {
    // The stream's KMS key denies access after 10 fragments, on every GetMedia (each attempt
    // reads the call from its start: FRAGMENT_NUMBER read as "including", one session each).
    let h = Harness::new(named_first(), TranscribeOptions::default()).await;
    let (lambda, server, logs) = logged_transcriber(&h, &[]).await;
    let denied = Fault::ErrorChunkAfter {
        fragments: 10,
        code: "Access denied for the stream's KMS key".into(),
        id: "4500".into(),
    };
    let (arn, first) = h.stored("call", &sample_call_chunks(), &vec![denied; 3]);
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    // Each attempt failed naming the error and its fix; Lambda made all three.
    let failures = lambda.failures("CallTranscriber");
    assert_eq!(failures.len(), 3, "{failures:?}");
    for failure in &failures {
        assert!(
            failure.message.contains("GetMedia error 4500")
                && failure.message.contains("kms:Decrypt"),
            "{}",
            failure.message
        );
        assert_eq!(failure.request_id, failures[0].request_id);
    }
    assert_eq!(h.transcribe.sessions().len(), 3, "one session per attempt");
    // LCA sees the call end once, after the last attempt, with what was said before the
    // error published once, and the recording of what was read before it.
    assert_ended_short_with_recording(&h, &records).await;
    let finals = finals(&records);
    assert_eq!(on(&finals, "AGENT").first(), Some(&AGENT_TURNS[0]));
    assert_no_final_twice(&records);
    assert_eq!(leased_status(&h).await.as_deref(), Some("FAILED"));
    // Lambda's on-failure destination got the event once, naming the error.
    let mut destination = Vec::new();
    for _ in 0..50 {
        destination = lambda.failure_records("CallTranscriber");
        if !destination.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(destination.len(), 1, "{destination:?}");
    let record = &destination[0];
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(record["requestPayload"], contact_flow_event(&arn, &first));
    let why = record["responsePayload"]["errorMessage"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("GetMedia error 4500"), "{record}");
    // Each attempt wrote its metrics line: two failed invocations, then the call given up.
    let lines = metrics_lines(&logs, "CallTranscriber");
    let outcomes = outcomes(&lines);
    assert_eq!(outcomes, ["FAILED", "FAILED", "GAVE_UP"]);
    assert_eq!(
        metric_values(&lines, "CallsFailed", &[("Reason", "KvsStream")]),
        [1.0]
    );
    assert_eq!(metric_values(&lines, "CallsFailed", &[]), [1.0]);
    assert_eq!(
        metric_values(&lines, "InvocationsFailed", &[("Reason", "KvsStream")]).len(),
        3
    );
    assert_eq!(
        metric_values(&lines, "KvsErrors", &[("ErrorId", "4500")]).len(),
        3
    );
    assert_eq!(metric_values(&lines, "CallsStarted", &[]), [1.0]);
    assert!(metric_values(&lines, "CallsEnded", &[]).is_empty());
    assert!(lines.iter().all(|(line, _)| line["CallId"] == CONTACT));
    // Another delivery of the event leaves the given-up call alone.
    let (_, answer) = invoke(&server, &contact_flow_event(&arn, &first)).await;
    assert_eq!(answer["status"], "DUPLICATE", "{answer}");
    lambda.shutdown();
}

/// Waits (30 s at most) until the local Transcribe has had `sessions` sessions.
async fn wait_for_sessions(h: &Harness, sessions: usize) {
    for _ in 0..300 {
        if h.transcribe.sessions().len() >= sessions {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no Transcribe session number {sessions} within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_stopped_by_lambda_count_and_the_last_attempt_gives_the_call_up() {
    // Lambda retries a crash, a timeout or an out-of-memory kill as it retries a function
    // error (Lambda developer guide, "How Lambda handles errors and retries with asynchronous
    // invocation"). The first two attempts are killed mid-call (their GetMedia held still
    // after 12 fragments); the third fails cleanly on a KMS error. Attempts are counted when
    // they claim the lease, so the third is the last: END, the recording, its URL, FAILED.
    // (Counted only when they failed cleanly, the third was "the first failure" and the call
    // was left live for ever.)
    let h = Harness::new(named_first(), TranscribeOptions::default()).await;
    let (lambda, server, logs) = logged_transcriber(&h, &[("KVS_IDLE_TIMEOUT", "120000")]).await;
    let held = Fault::StallBefore {
        fragment: 12,
        duration: Duration::from_secs(120),
    };
    let denied = Fault::ErrorChunkAfter {
        fragments: 10,
        code: "Access denied for the stream's KMS key".into(),
        id: "4500".into(),
    };
    let (arn, first) = h.stored("call", &sample_call_chunks(), &[held.clone(), held, denied]);
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    for attempt in 1..=2 {
        wait_for_sessions(&h, attempt).await;
        // Its first finals out and recorded in the lease, then it is killed.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(lambda.crash_busy("CallTranscriber"), 1, "attempt {attempt}");
    }
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    let attempts = lambda.attempts("CallTranscriber");
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    let failures = lambda.failures("CallTranscriber");
    let kinds: Vec<&str> = failures.iter().map(|f| f.error_type.as_str()).collect();
    assert_eq!(
        kinds[..2],
        ["Runtime.ExitError", "Runtime.ExitError"],
        "{failures:?}"
    );
    assert!(
        failures[2].message.contains("GetMedia error 4500"),
        "{failures:?}"
    );
    assert_eq!(h.transcribe.sessions().len(), 3, "one session per attempt");
    assert_ended_short_with_recording(&h, &records).await;
    assert_no_final_twice(&records);
    assert_eq!(leased_status(&h).await.as_deref(), Some("FAILED"));
    let item = lease_item(&h).await.expect("the lease item");
    assert_eq!(item["Attempts"].as_n().map(String::as_str), Ok("3"));
    // The killed attempts wrote no metrics line; the third says the call was given up.
    let lines = metrics_lines(&logs, "CallTranscriber");
    assert_eq!(outcomes(&lines), ["GAVE_UP"]);
    assert_eq!(metric_values(&lines, "CallsFailed", &[]), [1.0]);
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_queue_record_of_a_hand_over_holds_no_customer_data() {
    // Every attempt of the first hand-over is killed: Lambda sends its event to the
    // on-failure destination, which keeps it for up to 14 days. The event names the call;
    // the caller's number stays in the lease. The sweep then gives the call up (every attempt
    // used): END, the recording, its URL.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server) = transcriber(
        &h,
        &[("LAMBDA_INVOKE_TIMEOUT", "1500"), ("SWEEP_GRACE", "1000")],
    )
    .await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    for attempt in 1..=3 {
        // Session 1 is the first invocation's; 2 to 4 the hand-over's attempts.
        wait_for_sessions(&h, 1 + attempt).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(lambda.crash_busy("CallTranscriber"), 1, "attempt {attempt}");
    }
    wait_for_failure_record(&lambda).await;
    let records = lambda.failure_records("CallTranscriber");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        records[0]["requestPayload"],
        json!({"action": "LAMBDA_CONTINUE", "contactId": CONTACT, "lambdaCount": 1})
    );
    let text = records[0].to_string();
    assert!(
        !text.contains("+1555") && !text.contains("Number"),
        "no phone number in the failure queue: {text}"
    );
    let sweep = lambda.scheduled_event("sweep");
    assert!(lambda.schedule("CallTranscriber", Duration::from_secs(1), sweep));
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    // A kill between Kinesis's acknowledgement of a final and the lease's record of it
    // leaves that one final to be published again by the next attempt (README, "When a call
    // cannot be transcribed"): at most one per killed attempt. On a loaded machine the
    // lease write takes long enough for a kill to land there.
    let (once, repeats) = without_repeated_finals(&records);
    assert!(
        repeats <= 3,
        "{repeats} finals published twice in 3 killed attempts"
    );
    assert_ended_short_with_recording(&h, &once).await;
    assert_eq!(leased_status(&h).await.as_deref(), Some("FAILED"));
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hand_over_is_repeated_by_lambdas_retry_and_the_call_completes() {
    // Lambda refuses the hand-over's Invoke (TooManyRequestsException, retried by the SDK
    // until its attempts run out): the invocation fails naming the hand-over, and Lambda's
    // retry of it (same request id) finds the lease handed over by itself and repeats the
    // hand-over (Claim::RepeatHandOver), which goes through: the call completes whole.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server, logs) = logged_transcriber(&h, &[("LAMBDA_INVOKE_TIMEOUT", "1500")]).await;
    assert!(lambda.set_invoke_fault(
        "CallTranscriber",
        call_lifecycle::delivery::CONTINUE_ACTION,
        Some(InvokeFault::Refuse)
    ));
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    let mut failures = Vec::new();
    for _ in 0..3000 {
        failures = lambda.failures("CallTranscriber");
        if !failures.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Lambda retries the failed invocation a second later; by then the Invoke goes through.
    assert!(lambda.set_invoke_fault(
        "CallTranscriber",
        call_lifecycle::delivery::CONTINUE_ACTION,
        None
    ));
    let [failure] = &failures[..] else {
        panic!("one failed attempt: {failures:?}");
    };
    assert!(
        failure.message.contains("to continue failed")
            && failure.message.contains("TooManyRequests"),
        "{failure:?}"
    );
    let refused = lambda.faulted_invokes("CallTranscriber");
    assert!(!refused.is_empty());
    assert!(refused.iter().all(|p| p["lambdaCount"] == 1), "{refused:?}");
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_lifecycle(&records);
    assert_recording(&h).await;
    assert!(lambda.failure_records("CallTranscriber").is_empty());
    // The hand-over to invocation 1 was accepted once: by the retry.
    let continuations: Vec<Value> = lambda
        .invocations("CallTranscriber")
        .into_iter()
        .map(|i| i.payload)
        .filter(|p| {
            p["action"] == call_lifecycle::delivery::CONTINUE_ACTION && p["lambdaCount"] == 1
        })
        .collect();
    assert_eq!(continuations.len(), 1, "{continuations:?}");
    let outcomes = outcomes(&metrics_lines(&logs, "CallTranscriber"));
    assert_eq!(
        outcomes.first().map(String::as_str),
        Some("FAILED"),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.get(1).map(String::as_str),
        Some("CONTINUED"),
        "{outcomes:?}"
    );
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_every_attempt_was_killed_is_given_up_by_its_next_delivery() {
    // All three attempts killed mid-call: Lambda sends the event to the on-failure
    // destination and nobody is left to end the call. The next delivery of its event (the
    // queue delivering it again, as Lambda documents it may) finds every attempt used and
    // gives the call up instead of running it a fourth time.
    let h = Harness::new(named_first(), TranscribeOptions::default()).await;
    let (lambda, server) = transcriber(&h, &[("KVS_IDLE_TIMEOUT", "120000")]).await;
    let held = Fault::StallBefore {
        fragment: 12,
        duration: Duration::from_secs(120),
    };
    let (arn, first) = h.stored("call", &sample_call_chunks(), &vec![held; 3]);
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    for attempt in 1..=3 {
        wait_for_sessions(&h, attempt).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(lambda.crash_busy("CallTranscriber"), 1, "attempt {attempt}");
    }
    wait_for_failure_record(&lambda).await;
    assert_eq!(lambda.failure_records("CallTranscriber").len(), 1);
    assert!(
        !h.records().await.iter().any(|r| r["EventType"] == "END"),
        "no END yet: the call hangs until something takes it up"
    );
    assert!(lambda.deliver_again("CallTranscriber"));
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_start_end_recording_url(&records);
    // The killed attempts' audio was never stored (a piece is written when its attempt
    // ends, or in 5 MiB parts): the recording is a valid WAV of what was stored, here none.
    let whole = sample_call_stereo();
    let audio = call_recording(&h).await[call_audio::WAV_HEADER_BYTES..].to_vec();
    assert!(audio.len() < whole.len() && audio[..] == whole[..audio.len()]);
    assert_recording_is(&h, &audio).await;
    assert_eq!(
        h.transcribe.sessions().len(),
        3,
        "the call was not run a fourth time"
    );
    assert_eq!(leased_status(&h).await.as_deref(), Some("FAILED"));
    let failures = lambda.failures("CallTranscriber");
    let last = failures.last().expect("the giving-up delivery's error");
    assert!(
        last.message
            .contains("all 3 attempts of its invocation stopped"),
        "{failures:?}"
    );
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_unreachable_mid_call_stops_the_attempt_before_its_hold_lapses_and_the_retry_completes_it()
 {
    // Mid-call every lease write goes unanswered (DynamoDB unreachable, behind the fault
    // proxy). The holder's renewals fail; two thirds of CALL_LEASE_TIMEOUT (3 s here) after
    // its last renewal it stops and fails, before its hold could expire, so no second attempt
    // runs alongside it. Once DynamoDB is back, Lambda's retry takes the call over where the
    // lease says and completes it: nothing lost.
    //
    // The publisher sends a final only once the lease has recorded the one before, so
    // when DynamoDB stops answering at most one acknowledged final is not in the lease, and
    // the retry publishes that one again (README "When a call cannot be transcribed"). The
    // test pins that down: at most one repeat, a final that was on the stream at the stop
    // and ends after what the lease recorded; without it the call is whole and in order.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let proxy = h.urls.2.clone();
    let (lambda, server, logs) =
        logged_transcriber(&h, &[("AWS_ENDPOINT_URL_DYNAMODB", &proxy)]).await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    wait_for_finals(&h, 2).await;
    h.faults.set_unanswered("UpdateItem", true);
    let stopped = wait_for_outcomes(&logs, Duration::from_secs(20), |outcomes| {
        !outcomes.is_empty()
    })
    .await;
    assert_eq!(stopped, ["FAILED"]);
    let leased = leased_delivered(&h)
        .await
        .expect("the lease's last Delivered");
    let at_stop = h.records().await;
    h.faults.set_unanswered("UpdateItem", false);
    let failures = lambda.failures("CallTranscriber");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].message.contains("renew"),
        "the failure names the lease: {failures:?}"
    );
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    let key = |r: &Value| {
        (r["IsPartial"] == false).then(|| {
            (
                r["Channel"].as_str().unwrap_or_default().to_string(),
                r["StartTime"].to_string(),
                r["EndTime"].to_string(),
            )
        })
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut once = Vec::new();
    let mut repeats = 0;
    for record in &records {
        match key(record) {
            Some(final_segment) if !seen.insert(final_segment.clone()) => {
                repeats += 1;
                let channel = usize::from(final_segment.0 == "AGENT");
                let end_ms = (record["EndTime"].as_f64().unwrap() * 1000.0).round() as u64;
                assert!(
                    at_stop
                        .iter()
                        .any(|r| key(r).as_ref() == Some(&final_segment)),
                    "a repeated final was on the stream at the stop: {record}"
                );
                assert!(
                    leased.final_end_ms[channel].is_none_or(|leased| end_ms > leased),
                    "a repeated final ends after what the lease recorded ({leased:?}): {record}"
                );
            }
            _ => once.push(record.clone()),
        }
    }
    assert!(repeats <= 1, "{repeats} finals published twice");
    assert_lifecycle(&once);
    assert_recording(&h).await;
    assert_eq!(lambda.attempts("CallTranscriber").len(), 2);
    assert_eq!(
        outcomes(&metrics_lines(&logs, "CallTranscriber")),
        ["FAILED", "ENDED"]
    );
    assert!(
        !h.faults.hung().is_empty(),
        "the lease writes went unanswered"
    );
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_by_another_invocation_stops_the_holder_and_the_sweep_ends_the_call() {
    // Mid-call the lease names another owner (what a takeover writes): the holder's next
    // renewal is refused, so it stops at once without failing (LEASE_LOST, no retry), and
    // publishes neither END nor anything else. That other owner never finishes: once its
    // hold expires the sweep rescues the call (HolderStopped), which ends with END and the
    // recording's URL, once each.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server, logs) = logged_transcriber(&h, &[("SWEEP_GRACE", "1000")]).await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    wait_for_finals(&h, 2).await;
    h.dynamodb
        .update_item()
        .table_name(TABLE)
        .key(
            "PK",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("contact#{CONTACT}")),
        )
        .update_expression("SET #o = :thief")
        .expression_attribute_names("#o", "Owner")
        .expression_attribute_values(
            ":thief",
            aws_sdk_dynamodb::types::AttributeValue::S("another-invocation".into()),
        )
        .send()
        .await
        .unwrap();
    let stopped = wait_for_outcomes(&logs, Duration::from_secs(20), |outcomes| {
        !outcomes.is_empty()
    })
    .await;
    assert_eq!(stopped, ["LEASE_LOST"]);
    let at_stop = h.records().await;
    assert!(at_stop.iter().all(|r| r["EventType"] != "END"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        h.records().await.len(),
        at_stop.len(),
        "nothing published after the stop"
    );
    assert!(lambda.failures("CallTranscriber").is_empty(), "not retried");
    let sweep = lambda.scheduled_event("sweep");
    assert!(lambda.schedule("CallTranscriber", Duration::from_secs(1), sweep));
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    let count = |kind: &str| records.iter().filter(|r| r["EventType"] == kind).count();
    assert_eq!(
        (count("START"), count("END"), count("ADD_S3_RECORDING_URL")),
        (1, 1, 1)
    );
    let rescues: Vec<Value> = lambda
        .invocations("CallTranscriber")
        .into_iter()
        .filter(|i| i.payload["action"] == "LAMBDA_RESCUE")
        .map(|i| i.payload)
        .collect();
    assert_eq!(
        rescues.first().map(|r| r["reason"].clone()),
        Some(json!("HolderStopped"))
    );
    assert_eq!(leased_status(&h).await.as_deref(), Some("ENDED"));
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_event_lambda_lost_is_made_up_for_by_the_sweep() {
    // Lambda loses the first hand-over's event ("events might also be deleted from the queue
    // without being sent to the function"): the call's lease stays handed over with nobody
    // to take it. The sweep (every second here, SWEEP_GRACE 1 s) finds it in the index of open
    // calls and delivers it again; the call comes out whole and once.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server, logs) = logged_transcriber(
        &h,
        &[("LAMBDA_INVOKE_TIMEOUT", "1500"), ("SWEEP_GRACE", "1000")],
    )
    .await;
    assert!(lambda.drop_next_event("CallTranscriber", "LAMBDA_CONTINUE"));
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    let sweep = lambda.scheduled_event("sweep");
    assert!(lambda.schedule("CallTranscriber", Duration::from_secs(1), sweep));
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_eq!(lambda.dropped_events("CallTranscriber").len(), 1);
    assert_lifecycle(&records);
    assert_recording(&h).await;
    assert!(
        h.transcribed_audio() == sample_call_stereo(),
        "every sample reaches Transcribe exactly once"
    );
    let rescues: Vec<Value> = lambda
        .invocations("CallTranscriber")
        .into_iter()
        .filter(|i| i.payload["action"] == "LAMBDA_RESCUE")
        .map(|i| i.payload)
        .collect();
    assert!(!rescues.is_empty());
    assert_eq!(rescues[0]["reason"], "HandOverLost");
    assert_eq!(rescues[0]["lambdaCount"], 1);
    assert!(
        rescues
            .iter()
            .all(|r| r.get("callData").is_none() && !r.to_string().contains("+1555")),
        "a rescue event carries no customer data: {rescues:?}"
    );
    assert_eq!(leased_status(&h).await.as_deref(), Some("ENDED"));
    let item = lease_item(&h).await.expect("the lease item");
    assert!(
        !item.contains_key("OpenCall") && !item.contains_key("SweepAt"),
        "an ended call leaves the index of open calls"
    );
    let lines = metrics_lines(&logs, "CallTranscriber");
    assert!(
        metric_values(&lines, "CallsRescued", &[("Reason", "HandOverLost")])
            .iter()
            .sum::<f64>()
            >= 1.0
    );
    lambda.shutdown();
}

/// Waits (10 s at most) until the transcriber's on-failure destination has a record.
async fn wait_for_failure_record(lambda: &Lambda) {
    for _ in 0..100 {
        if !lambda.failure_records("CallTranscriber").is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (60 s at most) until the call has been handed on after a stall (an invocation's
/// metrics line says `STALLED`; the hand-over event names the call only).
async fn wait_for_stall(logs: &std::path::Path) {
    wait_for_outcomes(logs, Duration::from_secs(60), |outcomes| {
        outcomes.iter().any(|o| o == "STALLED")
    })
    .await;
}

/// The transcriber's invocation outcomes (from its metrics lines) once `done` holds for them,
/// waiting `within` at most.
async fn wait_for_outcomes(
    logs: &std::path::Path,
    within: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if logs.join("CallTranscriber.log").exists() {
            let outcomes = outcomes(&metrics_lines(logs, "CallTranscriber"));
            if done(&outcomes) {
                return outcomes;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the awaited invocation outcomes did not come within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (90 s at most) until the call's lease says `status`.
async fn wait_for_lease_status(h: &Harness, status: &str) {
    for _ in 0..900 {
        if leased_status(h).await.as_deref() == Some(status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the lease did not say {status} within 90 s");
}

/// The stream's records once they hold `count` final segments (within 12 s).
async fn wait_for_finals(h: &Harness, count: usize) -> Vec<Value> {
    for _ in 0..600 {
        let records = h.records().await;
        if finals(&records).len() >= count {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {count} finals on the stream within 12 s");
}

/// Invocations that handed a stalled call on, by their metrics lines.
fn stalled_invocations(logs: &std::path::Path) -> usize {
    outcomes(&metrics_lines(logs, "CallTranscriber"))
        .iter()
        .filter(|o| *o == "STALLED")
        .count()
}

/// The outcomes of the transcriber's invocations, from their metrics lines.
/// The outcome of each invocation's last line (progress lines have none).
fn outcomes(lines: &[(Value, Vec<Extracted>)]) -> Vec<String> {
    lines
        .iter()
        .filter(|(line, _)| line["Progress"] != true)
        .map(|(line, _)| line["Outcome"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_for_transcribe_capacity_is_handed_on_and_caught_up_with_every_word() {
    // The account's stream quota is in use by others for longer than an invocation: the
    // invocation hands the call on at the same position (STALLED, no retry used up), and once
    // a stream is free the call is transcribed from its first sample, every word once.
    let h = Harness::new(KvsOptions::default(), stream_quota(1)).await;
    h.transcribe.set_streams_elsewhere(1);
    let (lambda, server, logs) = logged_transcriber(
        &h,
        &[
            ("LAMBDA_INVOKE_TIMEOUT", "1500"),
            ("START_STREAM_RETRY_WAIT", "200"),
        ],
    )
    .await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    wait_for_stall(&logs).await;
    assert!(h.transcribe.refused() >= 2, "the quota turned streams away");
    assert!(h.transcribe.sessions().is_empty());
    h.transcribe.set_streams_elsewhere(0);
    assert_completed_once(&h, &lambda, "the call waited for a stream").await;
    assert_eq!(stalled_invocations(&logs), 1, "one stall, then advancing");
    assert_eq!(leased_status(&h).await.as_deref(), Some("ENDED"));
    let outcomes = outcomes(&metrics_lines(&logs, "CallTranscriber"));
    assert_eq!(
        outcomes.first().map(String::as_str),
        Some("STALLED"),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.last().map(String::as_str),
        Some("ENDED"),
        "{outcomes:?}"
    );
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcribe_that_stops_reading_without_an_error_is_caught_by_the_watchdog_long_before_the_deadline()
 {
    // The call's first 10 fragments. After 2 s of audio Transcribe neither reads, answers
    // nor fails. The watchdog (TRANSCRIBE_STUCK_TIMEOUT 2 s past the audio's real time) ends
    // the run as a stall, long before the invocation's deadline (LAMBDA_INVOKE_TIMEOUT
    // 60 s, the function's timeout 120 s); the fresh invocation transcribes the whole call,
    // every final once, within the retries Lambda allows (none used).
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    h.transcribe
        .inject(TranscribeFault::StopReadingAfter { seconds: 2.0 });
    let (lambda, server, logs) = logged_transcriber(
        &h,
        &[
            ("LAMBDA_INVOKE_TIMEOUT", "60000"),
            ("TRANSCRIBE_STUCK_TIMEOUT", "2000"),
        ],
    )
    .await;
    let chunks: Vec<bytes::Bytes> = sample_call_chunks().into_iter().take(10).collect();
    let (arn, first) = h.play("call", chunks).await;
    let began = std::time::Instant::now();
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    wait_for_stall(&logs).await;
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "the watchdog acted at {:?}, not at the deadline",
        began.elapsed()
    );
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_start_end_recording_url(&records);
    let sessions = h.transcribe.sessions();
    assert_eq!(sessions.len(), 2);
    assert!(sessions[0].stopped_reading);
    let audio = call_recording(&h).await[call_audio::WAV_HEADER_BYTES..].to_vec();
    assert!(
        audio.len() > 8 * 32_000 && sample_call_stereo().starts_with(&audio),
        "the recording is the call's first {} bytes",
        audio.len()
    );
    assert_recording_is(&h, &audio).await;
    assert!(
        sessions[1].audio == audio,
        "the fresh invocation transcribes the call from its first sample"
    );
    assert!(lambda.failures("CallTranscriber").is_empty());
    assert_eq!(stalled_invocations(&logs), 1);
    assert_eq!(leased_status(&h).await.as_deref(), Some("ENDED"));
    let lines = metrics_lines(&logs, "CallTranscriber");
    let stalled: Vec<&Value> = lines
        .iter()
        .map(|(line, _)| line)
        .filter(|line| line["Outcome"] == "STALLED")
        .collect();
    assert_eq!(stalled.len(), 1, "{lines:?}");
    assert_eq!(stalled[0]["StallReason"], "TranscribeStuck");
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinesis_outage_longer_than_an_invocation_delays_the_call_and_loses_nothing() {
    // Kinesis takes nothing, not even START, for longer than an invocation: the call is
    // handed on where the invocation got to, with what it could not deliver in the lease;
    // once Kinesis is back, START comes first and once, then every final once, and no
    // audio was transcribed twice.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    h.faults.set_outage(true);
    let (lambda, server, logs) = logged_transcriber(&h, &[("LAMBDA_INVOKE_TIMEOUT", "1500")]).await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    wait_for_stall(&logs).await;
    assert!(h.records().await.is_empty());
    let carried = leased_call(&h).await;
    assert!(
        carried.start_sample > 0 && carried.pending.len() >= 2,
        "the call moved on carrying START and finals: at sample {}, {} events",
        carried.start_sample,
        carried.pending.len()
    );
    h.faults.set_outage(false);
    assert_completed_once(&h, &lambda, "the stalled share was not transcribed again").await;
    assert_eq!(stalled_invocations(&logs), 1);
    let outcomes = outcomes(&metrics_lines(&logs, "CallTranscriber"));
    assert_eq!(
        outcomes.first().map(String::as_str),
        Some("STALLED"),
        "{outcomes:?}"
    );
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinesis_outage_mid_call_delivers_the_rest_once_and_in_order_when_it_ends() {
    // Part of the call is on the stream (START and some finals), then Kinesis takes nothing
    // for longer than an invocation: the call is handed on, and once Kinesis is back the
    // rest follows what was delivered, once and in order.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server, logs) = logged_transcriber(&h, &[("LAMBDA_INVOKE_TIMEOUT", "1500")]).await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    let before = wait_for_finals(&h, 2).await;
    h.faults.set_outage(true);
    // What got through before the outage began (a put in flight may still have landed).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = h.records().await.len().max(before.len());
    assert!(
        finals(&h.records().await).len() >= 2,
        "part of the call was delivered before the outage"
    );
    wait_for_stall(&logs).await;
    let during = h.records().await;
    assert_eq!(
        during.len(),
        before,
        "nothing gets through during the outage"
    );
    assert!(
        during.iter().all(|r| r["EventType"] != "END"),
        "the call is not over"
    );
    h.faults.set_outage(false);
    let records =
        assert_completed_once(&h, &lambda, "no stalled share was transcribed again").await;
    assert_eq!(
        &records[..before],
        &during[..],
        "what was delivered stays first"
    );
    assert!(stalled_invocations(&logs) >= 1);
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_ends_during_a_kinesis_outage_is_ended_once_kinesis_is_back_without_transcribing_it_again()
 {
    // Kinesis takes nothing from the call's start until after it has ended: the invocation
    // transcribes the whole call and ends it, but its publisher gives up at its deadline
    // plus grace (10 s + 1 s) with START, the finals and END undelivered. They go on with
    // the call in its lease, at its end; once Kinesis is back the next invocation publishes
    // them, START first and END last, once each, then the recording's URL, and transcribes
    // nothing (before, it transcribed the call's last share again).
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    h.faults.set_outage(true);
    let (lambda, server, logs) = logged_transcriber(
        &h,
        &[
            ("LAMBDA_INVOKE_TIMEOUT", "10000"),
            ("HANDOVER_GRACE", "1000"),
        ],
    )
    .await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    wait_for_stall(&logs).await;
    assert!(h.records().await.is_empty());
    let carried = leased_call(&h).await;
    let kinds: Vec<String> = carried
        .pending
        .iter()
        .map(|m| serde_json::to_value(m).unwrap()["EventType"].to_string())
        .collect();
    assert_eq!(
        carried.start_sample as usize * 4,
        sample_call_stereo().len(),
        "the call moved on to its end"
    );
    assert!(
        kinds.first().map(String::as_str) == Some("\"START\"")
            && kinds.last().map(String::as_str) == Some("\"END\""),
        "the lease carries START, the finals and END: {kinds:?}"
    );
    h.faults.set_outage(false);
    assert_completed_once(&h, &lambda, "the ended call was not transcribed again").await;
    assert_eq!(stalled_invocations(&logs), 1);
    let outcomes = outcomes(&metrics_lines(&logs, "CallTranscriber"));
    assert_eq!(outcomes, ["STALLED", "ENDED"], "{outcomes:?}");
    lambda.shutdown();
}

/// A call under the least favourable reading of Transcribe's pace: it processes audio in
/// real time (the call's: the call plays at SPEED times real time, and so does Transcribe).
/// The call is the sample call [`RealTimeCall::TILES`] times over (5.1 minutes); each
/// invocation takes 90 s of it with a 15 s hand-over grace (the stack's 12 minutes and 15 s,
/// scaled to a test's length), the KVS timeouts scaled alike.
struct RealTimeCall {
    h: Harness,
    lambda: Lambda,
    logs: PathBuf,
    /// When the call began playing, and when it ends.
    began: tokio::time::Instant,
    call_ends: tokio::time::Instant,
    /// The call's audio.
    stereo: Vec<u8>,
    /// The local Lambda's endpoint: it serves as long as the call runs.
    _server: local_aws::http::Server,
}

impl RealTimeCall {
    const TILES: usize = 5;
    /// The issue's bound: the last final on Kinesis at most this long after the call's end.
    const BOUND_S: f64 = 30.0;

    /// Plays the call and starts it; Transcribe refuses streams (LimitExceededException) over
    /// the call's first `unavailable_for` (call time).
    async fn start(unavailable_for: Duration) -> Self {
        let scaled = |call_ms: f64| ((call_ms / SPEED) as u64).to_string();
        let (chunks, stereo) = tiled_sample_call(Self::TILES);
        let transcribe = TranscribeOptions {
            pace: Pace {
                speed: Some(SPEED),
                unavailable_for: unavailable_for.div_f64(SPEED),
            },
            ..TranscribeOptions::default()
        };
        let kvs = KvsOptions {
            payload_timeout: Duration::from_secs(3).div_f64(SPEED),
            ..KvsOptions::default()
        };
        let h = Harness::new(kvs, transcribe).await;
        let env = [
            ("LAMBDA_INVOKE_TIMEOUT", scaled(90_000.0)),
            ("HANDOVER_GRACE", scaled(15_000.0)),
            ("KVS_IDLE_TIMEOUT", scaled(15_000.0)),
            ("START_STREAM_RETRY_WAIT", scaled(1_000.0)),
            ("TRANSCRIBE_AUDIO_SECOND_TAKES", scaled(1_000.0)),
        ];
        // KEEP_ALIVE stays 10 s (of wall time), longer than the scaled idle timeout: no
        // keep-alive silence is sent (a last invocation that starts when the call is over
        // would send one), so Transcribe gets exactly the call's samples.
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (lambda, server, logs) = logged_transcriber(&h, &env).await;
        let began = tokio::time::Instant::now();
        let (arn, first) = h.play_at("call", chunks, &[], SPEED).await;
        let call_ends = began + Duration::from_secs_f64(Self::TILES as f64 * SAMPLE_CALL_S / SPEED);
        invoke_event(&server, &contact_flow_event(&arn, &first)).await;
        Self {
            h,
            lambda,
            logs,
            began,
            call_ends,
            stereo,
            _server: server,
        }
    }

    /// The call's time now (s).
    fn call_time(&self) -> f64 {
        self.began.elapsed().as_secs_f64() * SPEED
    }

    /// Waits until the call is done (its recording's URL on the stream); returns its records
    /// and how long after the call's end its last final showed on the stream (call seconds;
    /// polled every 100 ms, 1 s of the call).
    async fn until_done(&self) -> (Vec<Value>, f64) {
        let (mut finals_seen, mut last_final_at) = (0, self.began);
        let records = loop {
            let records = self.h.records().await;
            let count = finals(&records).len();
            if count > finals_seen {
                (finals_seen, last_final_at) = (count, tokio::time::Instant::now());
            }
            let done = records
                .iter()
                .any(|r| r["EventType"] == "ADD_S3_RECORDING_URL");
            if done && self.lambda.pending_events("CallTranscriber") == 0 {
                break records;
            }
            assert!(
                self.began.elapsed() < Duration::from_secs(150),
                "the call was not done within 150 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let after_end = last_final_at.duration_since(self.call_ends).as_secs_f64() * SPEED;
        (records, after_end)
    }

    /// START first and END once, then the URL; every final once, in call order; every
    /// sample to Transcribe once; no failed invocation; the last final within the bound;
    /// the whole recording.
    async fn assert_caught_up(&self, records: &[Value], after_end: f64) {
        assert_start_end_recording_url(records);
        // Sessions that start mid-call (hand-overs, lanes) find a turn's edges a few of the
        // local recognizer's frames off: up to 44 ms here.
        assert_tiled_turns(records, Self::TILES, 0.06);
        assert!(
            self.h.transcribed_audio() == self.stereo,
            "Transcribe got every sample once"
        );
        assert!(self.lambda.failures("CallTranscriber").is_empty());
        assert!(
            after_end <= Self::BOUND_S,
            "the last final came {after_end:.1} s after the call's end (bound {} s)",
            Self::BOUND_S
        );
        assert_recording_is(&self.h, &self.stereo).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kinesis_stall_at_real_time_the_transcript_is_back_within_the_bound_with_every_final_once()
 {
    // Kinesis takes nothing from 20 s into the call until the first invocation has stalled.
    // What that invocation transcribed goes on with the call in its lease: had the call been
    // handed on at the invocation's start, the next one would transcribe those 90 s again, in
    // real time, and the call would stay that far behind to its end.
    let call = RealTimeCall::start(Duration::ZERO).await;
    tokio::time::sleep_until(call.began + Duration::from_secs_f64(20.0 / SPEED)).await;
    call.h.faults.set_outage(true);
    wait_for_stall(&call.logs).await;
    call.h.faults.set_outage(false);
    let stalled_at = call.call_time();
    let (records, after_end) = call.until_done().await;
    eprintln!(
        "Kinesis out from 20 s to {stalled_at:.0} s of the call: the last final came {after_end:.1} s after the call's end"
    );
    assert!(stalled_invocations(&call.logs) >= 1);
    call.assert_caught_up(&records, after_end).await;
    call.lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_capacity_stall_at_real_time_the_transcript_catches_up_across_hand_overs() {
    // Transcribe refuses the call's streams for its first minute (the account's quota in
    // use). The first invocation's stream starts a minute behind, and it may take no more
    // audio than it can finish by its hand-over, so the catch-up crosses hand-overs: a later
    // invocation runs a second stream on the live call while the first works through the
    // backlog. Without it, the call would stay a minute behind to its end.
    let call = RealTimeCall::start(Duration::from_secs(60)).await;
    let (records, after_end) = call.until_done().await;
    let ids: BTreeSet<String> = call
        .h
        .transcribe
        .sessions()
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    eprintln!(
        "Transcribe refused the first 60 s of the call: {} streams, {} session ids; the last final came {after_end:.1} s after the call's end",
        call.h.transcribe.sessions().len(),
        ids.len()
    );
    assert!(
        ids.len() >= 2,
        "a second lane (its own session id) took the live call: {ids:?}"
    );
    call.assert_caught_up(&records, after_end).await;
    call.lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_left_unanswered_is_given_up_at_its_attempt_limit_and_the_call_completes() {
    // DynamoDB, Kinesis and S3 each leave one of the call's requests unanswered (a connection
    // that black-holes): each client gives up on it at its attempt limit
    // (aws_edge::REQUEST_ATTEMPT_TIMEOUT) and tries again, so the invocation completes the
    // call instead of hanging until Lambda's timeout. DynamoDB and S3 are reached through
    // the fault proxy (moto serves every service on one port).
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let proxy = h.urls.2.clone();
    let (lambda, server, logs) = logged_transcriber(
        &h,
        &[
            ("AWS_ENDPOINT_URL_S3", &proxy),
            ("AWS_ENDPOINT_URL_DYNAMODB", &proxy),
        ],
    )
    .await;
    // The lease's first read, the first event (START), the invocation's raw audio.
    let hangs = ["GetItem", "PutRecord", "PutObject"];
    for operation in hangs {
        h.faults.hang_next(operation);
    }
    let (arn, first) = h.stored("call", &sample_call_chunks(), &[]);
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_lifecycle(&records);
    assert_recording(&h).await;
    assert_eq!(
        lambda.attempts("CallTranscriber").len(),
        1,
        "the invocation completed the call: it neither failed nor timed out"
    );
    assert_eq!(
        outcomes(&metrics_lines(&logs, "CallTranscriber")),
        ["ENDED"]
    );
    // Each request was left unanswered, and its client gave up on it at its attempt limit.
    let hung = h.faults.hung();
    let mut operations: Vec<&str> = hung.iter().map(|(o, _)| o.as_str()).collect();
    operations.sort_unstable();
    let mut expected = hangs.to_vec();
    expected.sort_unstable();
    assert_eq!(operations, expected, "{hung:?}");
    let late_or_early = h.faults.not_given_up_at(aws_edge::REQUEST_ATTEMPT_TIMEOUT);
    assert!(late_or_early.is_empty(), "{late_or_early:?}");
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_stalled_past_call_stall_timeout_is_given_up_with_its_end() {
    // The quota never frees: past CALL_STALL_TIMEOUT the call is given up as after a last
    // failed attempt (END, the recording of what was read, lease FAILED, CallsFailed with
    // the reason), not handed on for ever.
    let h = Harness::new(KvsOptions::default(), stream_quota(0)).await;
    let (lambda, server, logs) = logged_transcriber(
        &h,
        &[
            ("LAMBDA_INVOKE_TIMEOUT", "1500"),
            ("START_STREAM_RETRY_WAIT", "200"),
            ("CALL_STALL_TIMEOUT", "1000"),
        ],
    )
    .await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_ended_short_with_recording(&h, &records).await;
    assert!(finals(&records).is_empty());
    assert_eq!(leased_status(&h).await.as_deref(), Some("FAILED"));
    assert_eq!(stalled_invocations(&logs), 0);
    // Given up by the first attempt, saying why; Lambda's retries find the call given up.
    let lines = metrics_lines(&logs, "CallTranscriber");
    assert_eq!(
        outcomes(&lines).first().map(String::as_str),
        Some("GAVE_UP")
    );
    assert_eq!(
        metric_values(&lines, "CallsFailed", &[("Reason", "TranscribeCapacity")]),
        [1.0]
    );
    let log = std::fs::read_to_string(logs.join("CallTranscriber.log")).unwrap();
    assert!(log.contains("could not advance for CALL_STALL_TIMEOUT"));
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinesis_outage_past_call_stall_timeout_delivers_end_once_kinesis_is_back() {
    // START and the first finals are out, then Kinesis takes nothing for longer than
    // CALL_STALL_TIMEOUT: the call is given up, and its END, refused too, is kept in the
    // lease (GIVING_UP). Lambda's retries and the sweep deliver the call again until Kinesis
    // takes END: then the recording's URL follows, once, and the lease says FAILED.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server, logs) = logged_transcriber(
        &h,
        &[
            ("LAMBDA_INVOKE_TIMEOUT", "1500"),
            ("CALL_STALL_TIMEOUT", "1000"),
            ("SWEEP_GRACE", "1000"),
        ],
    )
    .await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    let sweep = lambda.scheduled_event("sweep");
    assert!(lambda.schedule("CallTranscriber", Duration::from_secs(1), sweep));
    wait_for_finals(&h, 2).await;
    h.faults.set_outage(true);
    // Given up with END owed.
    wait_for_lease_status(&h, "GIVING_UP").await;
    // Rescued at least once more while Kinesis is still out.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!h.records().await.iter().any(|r| r["EventType"] == "END"));
    h.faults.set_outage(false);
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_ended_short_with_recording(&h, &records).await;
    assert_eq!(leased_status(&h).await.as_deref(), Some("FAILED"));
    let lines = metrics_lines(&logs, "CallTranscriber");
    let outcomes = outcomes(&lines);
    assert!(outcomes.iter().any(|o| o == "GIVEN_UP"), "{outcomes:?}");
    assert_eq!(
        metric_values(&lines, "CallsFailed", &[])
            .iter()
            .sum::<f64>(),
        1.0,
        "counted once, when it was given up"
    );
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_refuses_the_call_fails_each_attempt_and_its_end_waits_until_it_takes_it() {
    // Mid-call the LCA stream refuses every record (its KMS key's grant taken away): no
    // retry inside the run fixes that, so each attempt fails naming the error; Lambda retries
    // it, and the last attempt gives the call up. END is refused too: it waits in the lease
    // (GIVING_UP) and goes out, with the recording's URL, once the stream takes records again.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server, logs) = logged_transcriber(&h, &[("SWEEP_GRACE", "1000")]).await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    wait_for_finals(&h, 2).await;
    h.faults.set_refusal(Some("KMSAccessDeniedException"));
    // Given up with END owed.
    wait_for_lease_status(&h, "GIVING_UP").await;
    let failures = lambda.failures("CallTranscriber");
    assert!(failures.len() >= 2, "retried: {failures:?}");
    assert!(
        failures
            .iter()
            .all(|f| f.message.contains("KMSAccessDeniedException")),
        "{failures:?}"
    );
    let sweep = lambda.scheduled_event("sweep");
    assert!(lambda.schedule("CallTranscriber", Duration::from_secs(1), sweep));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!h.records().await.iter().any(|r| r["EventType"] == "END"));
    h.faults.set_refusal(None);
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    // Every attempt read the call to its end before its records were refused: the
    // recording is whole though the transcript is not.
    assert_start_end_recording_url(&records);
    assert_recording(&h).await;
    assert_eq!(leased_status(&h).await.as_deref(), Some("FAILED"));
    let lines = metrics_lines(&logs, "CallTranscriber");
    assert_eq!(
        metric_values(&lines, "CallsFailed", &[])
            .iter()
            .sum::<f64>(),
        1.0,
        "counted once, when it was given up"
    );
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_stall_across_hand_overs_is_not_the_end_of_the_call() {
    // 10 s of nothing on the stream at 12.288 s, live at 10x (KVS's 3 s payload timeout
    // scaled to 0.2 s), with invocations of 1.5 s: the first one's time runs out in the
    // stall. The call goes on across the hand-overs and comes out whole, the stall as
    // silence in place, every turn once at its time.
    let h = Harness::new(stall_kvs(), TranscribeOptions::default()).await;
    let (lambda, server) = transcriber(&h, &[("LAMBDA_INVOKE_TIMEOUT", "1500")]).await;
    let (chunks, expected) = sample_call_with_stall();
    let (arn, first) = h.play("call", chunks).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_start_end_recording_url(&records);
    assert_turns_with_stall(&records, 0.020);
    let audio = h.transcribed_audio();
    assert!(
        audio == expected,
        "Transcribe got the call and its stall once"
    );
    assert_recording_is(&h, &expected).await;
    assert!(
        lambda
            .invocations("CallTranscriber")
            .iter()
            .any(|i| i.payload["action"] == "LAMBDA_CONTINUE"),
        "handed over"
    );
    assert!(lambda.failures("CallTranscriber").is_empty());
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_reaches_max_call_duration_ends_there_as_a_call_does() {
    // The guard against a stream that never ends: 20 s of call (counted in the call's audio,
    // across hand-overs), then END, the recording and the recording's URL, as at a normal
    // end, but said as a cut call (outcome CUT, CallsCut) in the stack's own namespace.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let namespace = "LCA/ConnectKVS/test-stack";
    let (lambda, server, logs) = logged_transcriber(
        &h,
        &[
            ("LAMBDA_INVOKE_TIMEOUT", "500"),
            ("MAX_CALL_DURATION", "20000"),
            ("METRICS_NAMESPACE", namespace),
        ],
    )
    .await;
    let (arn, first) = h.play_at("call", sample_call_chunks(), &[], 5.0).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    let recorded = assert_ended_short_with_recording(&h, &records).await;
    let continuations = lambda
        .invocations("CallTranscriber")
        .iter()
        .filter(|i| i.payload["action"] == "LAMBDA_CONTINUE")
        .count();
    assert!(continuations >= 1, "the limit holds across hand-overs");
    // Transcribe got the call's first 20 s (up to the end of the fragment where the limit
    // fell: one second here), every sample once; the recording is exactly that audio.
    let audio = h.transcribed_audio();
    let seconds = audio.len() as f64 / 4.0 / 8000.0;
    assert!((20.0..21.5).contains(&seconds), "{seconds} s transcribed");
    assert!(recorded == audio, "the recording is what was transcribed");
    // Turns before the limit are there; nothing after it.
    let finals = finals(&records);
    let agent = on(&finals, "AGENT");
    assert!(agent.len() >= 2, "{agent:?}");
    for (got, turn) in agent.iter().zip(&AGENT_TURNS[..2]) {
        assert!(
            (got.0 - turn.0).abs() < 0.02 && (got.1 - turn.1).abs() < 0.02,
            "{got:?} for {turn:?}"
        );
    }
    assert!(
        finals.iter().all(|(_, start, _)| *start < seconds),
        "{finals:?}"
    );
    assert_eq!(leased_status(&h).await.as_deref(), Some("ENDED"));
    // Said as a cut call, not a normal end, in the stack's namespace.
    let lines = metrics_lines(&logs, "CallTranscriber");
    let outcomes = outcomes(&lines);
    assert_eq!(
        outcomes.last().map(String::as_str),
        Some("CUT"),
        "{outcomes:?}"
    );
    assert_eq!(outcomes.len(), continuations + 1);
    let extracted: Vec<&Extracted> = lines.iter().flat_map(|(_, e)| e).collect();
    assert!(extracted.iter().all(|e| e.namespace == namespace));
    let cut: Vec<f64> = extracted
        .iter()
        .filter(|e| e.name == "CallsCut" && e.dimensions.is_empty())
        .flat_map(|e| e.values.clone())
        .collect();
    assert_eq!(cut, [1.0]);
    assert!(!extracted.iter().any(|e| e.name == "CallsEnded"));
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_of_another_instance_is_refused() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server) = transcriber(&h, &[]).await;
    let mut event = contact_flow_event(
        "arn:aws:kinesisvideo:us-east-1:123456789012:stream/x/1",
        "1",
    );
    event["Details"]["ContactData"]["InstanceARN"] =
        json!("arn:aws:connect:us-east-1:1:instance/other");
    let (kind, error) = invoke(&server, &event).await;
    assert_eq!(kind.as_deref(), Some("Unhandled"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_fail_naming_what_is_wrong() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server) = transcriber(&h, &[]).await;
    for (event, expected) in [
        (
            json!({"hello": "world"}),
            "not a Connect contact-flow event: missing field `Name`",
        ),
        (
            json!({"action": "LAMBDA_CONTINUE", "callData": {"callId": 5}}),
            "LAMBDA_CONTINUE callData",
        ),
        (
            json!({"action": "LAMBDA_CONTINUE", "contactId": "c-1", "lambdaCount": "two"}),
            "LAMBDA_CONTINUE: lambdaCount is not a whole number",
        ),
    ] {
        let (kind, error) = invoke(&server, &event).await;
        assert_eq!(kind.as_deref(), Some("Unhandled"));
        let message = error["errorMessage"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{event}: {message}");
    }
    assert!(h.transcribe.sessions().is_empty());
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
    body = json.dumps({{"errorMessage": "no CRM record for +15551230001", "errorType": "Refused"}}) if answer == "fail" else answer
    urllib.request.urlopen(urllib.request.Request(api + request_id + "/" + kind, data=body.encode(), method="POST")).read()
"#
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// How a hook test's call reaches the transcriber.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Started {
    /// The contact-flow event itself (no lease table, or StartLCA without one).
    ByEvent,
    /// StartLCA wrote the call's lease, with the contact-flow event for the hook, and sent
    /// `LAMBDA_START`.
    ByLease,
}

/// The handler (not the binary) with a lambda hook answering `answer`, on the live sample call.
async fn with_hook(
    h: &Harness,
    answer: &str,
    started: Started,
) -> Result<Value, call_transcriber::lambda::HandlerError> {
    let dir = tempfile::tempdir().unwrap();
    let lambda = Lambda::new(LambdaOptions::default());
    let server = lambda.serve(0).await.unwrap();
    let hook = lambda
        .add_function(FunctionSpec {
            name: "hook".to_string(),
            command: hook_script(dir.path(), answer),
            args: Vec::new(),
            environment: BTreeMap::new(),
            timeout: Duration::from_secs(10),
            memory_mb: 128,
        })
        .unwrap();
    let lease = call_transcriber::lease::CallLease::new(
        h.dynamodb.clone(),
        TABLE.to_string(),
        Duration::from_secs(30),
    );
    let transcriber = call_transcriber::lambda::Transcriber {
        pipeline: h.pipeline(&[("LAMBDA_HOOK_FUNCTION_ARN", &hook)]),
        lambda: aws_sdk_lambda::Client::new(&local_aws::sdk_config(&server.url())),
        lease: (started == Started::ByLease).then(|| lease.clone()),
        recorder: Some(call_transcriber::recording::Recorder {
            s3: h.s3.clone(),
            bucket: BUCKET.to_string(),
            raw_prefix: "lca-audio-raw/".to_string(),
            recording_prefix: "lca-audio-recordings/".to_string(),
        }),
        region: "us-east-1".to_string(),
        post_call: None,
    };
    let (arn, first) = h.stored("call", &sample_call_chunks(), &[]);
    let event = match started {
        Started::ByEvent => contact_flow_event(&arn, &first),
        Started::ByLease => {
            let flow_event = contact_flow_event(&arn, &first);
            let call = call_transcriber::call::CallData::of_contact_flow_event(
                &flow_event,
                INSTANCE,
                &stack_contacts(),
            )
            .unwrap();
            assert!(
                lease
                    .create_pending(&call, &flow_event.to_string())
                    .await
                    .unwrap()
            );
            call_transcriber::delivery::start_event(CONTACT)
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let result = transcriber
        .handle(
            event,
            call_transcriber::lambda::Invocation {
                function_arn: "arn:aws:lambda:us-east-1:123456789012:function:CallTranscriber",
                request_id: "hook-test",
                deadline,
            },
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
    for started in [Started::ByEvent, Started::ByLease] {
        the_lambda_hook_overrides_the_call_when(started).await;
    }
}

async fn the_lambda_hook_overrides_the_call_when(started: Started) {
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
    let result = with_hook(&h, &answer.to_string(), started).await.unwrap();
    assert_eq!(result["status"], "ENDED", "{started:?}");
    let records = h.records().await;
    assert!(records.iter().all(|r| r["CallId"] == "custom-call-1"));
    let start = &records[0];
    assert_eq!(start["EventType"], "START");
    assert_eq!(start["AgentId"], "jordan");
    assert_eq!(start["CustomerPhoneNumber"], "+15550000001");
    assert_eq!(start["SystemPhoneNumber"], "+15550000002");
    // The hook's metadata, with the contact's links and settings added.
    let metadata: Value = serde_json::from_str(start["Metadatajson"].as_str().unwrap()).unwrap();
    assert_eq!(metadata["crm"], "42");
    assert_eq!(metadata["InitialContactId"], CONTACT);
    assert_eq!(
        metadata["TranscribeSettings"]["TRANSCRIBE_LANGUAGE_CODE"],
        "en-US"
    );
    // isCaller=false: the agent track is transcribed as the caller.
    let finals = finals(&records);
    assert_eq!(on(&finals, "CALLER"), AGENT_TURNS);
    // shouldRecordCall=false: nothing in S3, no recording URL.
    assert_eq!(h.keys("").await, Vec::<String>::new());
    assert_eq!(records.last().unwrap()["EventType"], "END");
    if started == Started::ByLease {
        // The lease keeps the call as the hook left it, and no longer the contact-flow event.
        let item = lease_item(&h).await.expect("the lease item");
        assert!(!item.contains_key("ContactEvent"));
        let kept: Value = serde_json::from_str(item["CallData"].as_s().unwrap()).unwrap();
        assert_eq!(kept["callId"], "custom-call-1");
        assert_eq!(item["Status"].as_s().unwrap(), "ENDED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_saying_do_not_process_leaves_no_trace() {
    for started in [Started::ByEvent, Started::ByLease] {
        let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
        let result = with_hook(&h, r#"{"shouldProcessCall": false}"#, started)
            .await
            .unwrap();
        assert_eq!(result["status"], "SKIPPED", "{started:?}");
        assert!(h.records().await.is_empty());
        assert!(h.transcribe.sessions().is_empty());
        if started == Started::ByLease {
            // StartLCA's lease is closed: not open for the sweep, no contact-flow event kept.
            let item = lease_item(&h).await.expect("the lease item");
            assert_eq!(item["Status"].as_s().unwrap(), "SKIPPED");
            assert!(!item.contains_key("OpenCall") && !item.contains_key("ContactEvent"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_stops_the_call_naming_its_error_type_but_not_its_message() {
    // The hook's errorMessage may hold customer data (here a phone number): the error, which
    // goes to the log, the lease and the failure queue, names the hook and its errorType only.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let error = with_hook(&h, "fail", Started::ByEvent).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("lambda hook") && text.contains("errorType Refused"),
        "{text}"
    );
    assert!(
        !text.contains("+1555") && !text.contains("no CRM record"),
        "{text}"
    );
    assert!(h.records().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_answer_of_the_wrong_shape_fails_without_repeating_it() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let error = with_hook(&h, r#"{"isCaller": "+15551230001"}"#, Started::ByEvent)
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("not the expected JSON object") && text.contains("column"),
        "{text}"
    );
    assert!(!text.contains("+1555"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_answer_beyond_a_limit_fails_naming_it() {
    // A CallId Kinesis would refuse as a partition key: the call fails at once, before START,
    // naming the limit, instead of every event of the call being refused later.
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let answer = format!(r#"{{"callId": "{}"}}"#, "c".repeat(300));
    let error = with_hook(&h, &answer, Started::ByLease).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("lambda hook")
            && text.contains("callId is 300 characters long, beyond MAX_CALL_ID_CHARS (256"),
        "{text}"
    );
    assert!(h.records().await.is_empty());
}

/// The default stack's per-call settings, all attributes allowed.
fn stack_contacts() -> call_settings::ContactPolicy {
    call_settings::ContactPolicy::from_lookup(|_| None).expect("the defaults are valid")
}

/// `records` without the second and later copies of a final segment (by SegmentId), and how
/// many copies were left out.
fn without_repeated_finals(records: &[Value]) -> (Vec<Value>, usize) {
    let mut seen = std::collections::BTreeSet::new();
    let mut once = Vec::new();
    let mut repeats = 0;
    for record in records {
        let id = (record["IsPartial"] == false)
            .then(|| record["SegmentId"].as_str())
            .flatten();
        match id {
            Some(id) if !seen.insert(id.to_string()) => repeats += 1,
            _ => once.push(record.clone()),
        }
    }
    (once, repeats)
}

/// Connect invoking StartLCA with `event` (synchronously): its answer.
async fn invoke_start_lca_with(server: &local_aws::http::Server, event: &Value) -> Value {
    let (function_error, answer) = invoke_function(server, "StartLCA", event).await;
    assert_eq!(function_error, None, "{answer}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_attributes_reach_each_transcribe_request_field_in_both_modes() {
    // The stack: standard mode, en-US, redaction on (the defaults), post-call analytics
    // possible (bucket and role set): StartLCA reads the same settings as the transcriber.
    let stack = [
        ("TCA_DATA_ACCESS_ROLE_ARN", TCA_ROLE),
        ("OUTPUT_BUCKET", BUCKET),
    ];
    struct Case {
        attributes: &'static [(&'static str, &'static str)],
        path_mode: local_aws::transcribe::Mode,
        headers: &'static [(&'static str, &'static str)],
        absent: &'static [&'static str],
        post_call_job: bool,
    }
    let cases = [
        Case {
            attributes: &[
                ("TRANSCRIBE_LANGUAGE_CODE", "en-GB"),
                ("CUSTOM_VOCABULARY_NAME", "agents-v2"),
                ("CUSTOM_VOCABULARY_FILTER_NAME", "profanity"),
                ("CUSTOM_VOCABULARY_FILTER_METHOD", "tag"),
                ("CUSTOM_LANGUAGE_MODEL_NAME", "claims-lm"),
                ("IS_CONTENT_REDACTION_ENABLED", "false"),
                ("TRANSCRIBE_API_MODE", "standard"),
            ],
            path_mode: local_aws::transcribe::Mode::Standard,
            headers: &[
                ("language-code", "en-GB"),
                ("vocabulary-name", "agents-v2"),
                ("vocabulary-filter-name", "profanity"),
                ("vocabulary-filter-method", "tag"),
                ("language-model-name", "claims-lm"),
            ],
            absent: &[
                "identify-language",
                "vocabulary-names",
                "content-redaction-type",
            ],
            post_call_job: false,
        },
        Case {
            attributes: &[
                ("TRANSCRIBE_API_MODE", "analytics"),
                ("TRANSCRIBE_LANGUAGE_CODE", "identify-language"),
                ("TRANSCRIBE_LANGUAGE_OPTIONS", "en-US, es-US"),
                ("TRANSCRIBE_PREFERRED_LANGUAGE", "es-US"),
                ("CUSTOM_VOCABULARY_NAME", "v-en,v-es"),
                ("CUSTOM_VOCABULARY_FILTER_NAME", "f-en,f-es"),
                ("IS_TCA_POST_CALL_ANALYTICS_ENABLED", "false"),
            ],
            path_mode: local_aws::transcribe::Mode::CallAnalytics,
            headers: &[
                ("identify-language", "true"),
                ("language-options", "en-US,es-US"),
                ("preferred-language", "es-US"),
                ("vocabulary-names", "v-en,v-es"),
                ("vocabulary-filter-names", "f-en,f-es"),
                ("vocabulary-filter-method", "mask"),
            ],
            absent: &["language-code", "content-redaction-type", "vocabulary-name"],
            post_call_job: false,
        },
        Case {
            attributes: &[
                ("TRANSCRIBE_API_MODE", "analytics"),
                ("TRANSCRIBE_LANGUAGE_CODE", "en-US"),
                ("IS_CONTENT_REDACTION_ENABLED", "true"),
                ("CONTENT_REDACTION_TYPE", "PII"),
                ("PII_ENTITY_TYPES", "NAME,ADDRESS"),
                (
                    "POST_CALL_CONTENT_REDACTION_OUTPUT",
                    "redacted_and_unredacted",
                ),
                ("CUSTOM_VOCABULARY_FILTER_NAME", "profanity"),
                ("CUSTOM_VOCABULARY_FILTER_METHOD", "remove"),
            ],
            path_mode: local_aws::transcribe::Mode::CallAnalytics,
            headers: &[
                ("language-code", "en-US"),
                ("content-redaction-type", "PII"),
                ("pii-entity-types", "NAME,ADDRESS"),
                ("vocabulary-filter-name", "profanity"),
                ("vocabulary-filter-method", "remove"),
            ],
            absent: &["identify-language"],
            post_call_job: true,
        },
    ];
    for case in cases {
        let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
        let (lambda, server, logs) = logged_transcriber(&h, &stack).await;
        add_start_lca_with(&h, &lambda, &server, TABLE, &stack);
        let (arn, first) = h.stored("call", &sample_call_chunks(), &[]);
        let mut event = contact_flow_event(&arn, &first);
        for (name, value) in case.attributes {
            event["Details"]["ContactData"]["Attributes"][*name] = json!(value);
        }
        let answer = invoke_start_lca_with(&server, &event).await;
        assert_eq!(answer["status"], "STARTED", "{answer}");
        let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
        let sessions = h.transcribe.sessions();
        assert!(
            !sessions.is_empty(),
            "{:?}: no session ({} refused): {:?} {}",
            case.attributes,
            h.transcribe.refused(),
            records.iter().map(|r| &r["EventType"]).collect::<Vec<_>>(),
            std::fs::read_to_string(logs.join("CallTranscriber.log")).unwrap_or_default()
        );
        for session in &sessions {
            assert_eq!(session.mode, case.path_mode, "{:?}", case.attributes);
            for (name, value) in case.headers {
                let name = format!("x-amzn-transcribe-{name}");
                assert_eq!(
                    session.headers.get(&name).map(String::as_str),
                    Some(*value),
                    "{:?}: {name}",
                    case.attributes
                );
            }
            for name in case.absent {
                let name = format!("x-amzn-transcribe-{name}");
                assert!(
                    !session.headers.contains_key(&name),
                    "{:?}: {name} should be absent",
                    case.attributes
                );
            }
        }
        // START says which settings the call used and which the flow chose.
        let metadata: Value =
            serde_json::from_str(records[0]["Metadatajson"].as_str().unwrap()).unwrap();
        assert_eq!(metadata["InitialContactId"], CONTACT);
        let used = &metadata["TranscribeSettings"];
        let chosen = metadata["TranscribeSettingsFromContactAttributes"]
            .as_array()
            .unwrap();
        for (name, value) in case.attributes {
            assert!(chosen.contains(&json!(name)), "{name} in {chosen:?}");
            assert_eq!(used[*name], json!(value.replace(' ', "")), "{name}");
        }
        if case.post_call_job {
            // The post-call job carries the contact's choices too.
            assert_one_post_call_job_with(
                &h,
                "redacted_and_unredacted",
                json!(["NAME", "ADDRESS"]),
                Some(("profanity", "remove")),
            )
            .await;
        } else {
            wait_for_call_end(&h).await;
            assert!(h.jobs.jobs().is_empty(), "no post-call job");
        }
        lambda.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_contact_attributes_are_startlcas_answer_and_start_nothing() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (lambda, server) = transcriber(&h, &[]).await;
    // The stack lets a flow choose the language only.
    add_start_lca_with(
        &h,
        &lambda,
        &server,
        TABLE,
        &[("CONTACT_ATTRIBUTE_OVERRIDES", "TRANSCRIBE_LANGUAGE_CODE")],
    );
    let (arn, first) = h.stored("call", &sample_call_chunks()[..3], &[]);
    // The attributes; StartLCA's status, error code and the attribute it names.
    type Case = (
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
        &'static str,
    );
    let cases: &[Case] = &[
        (
            &[("TRANSCRIBE_API_MODE", "analytics")],
            "ERROR",
            "ATTRIBUTE_NOT_ALLOWED",
            "TRANSCRIBE_API_MODE",
        ),
        (
            &[("TRANSCRIBE_LANGUAGE_CODE", "english")],
            "ERROR",
            "BAD_ATTRIBUTE",
            "TRANSCRIBE_LANGUAGE_CODE",
        ),
        (
            // identify-language needs options, which the stack does not give.
            &[("TRANSCRIBE_LANGUAGE_CODE", "identify-language")],
            "ERROR",
            "BAD_ATTRIBUTE",
            "TRANSCRIBE_LANGUAGE_CODE",
        ),
        (&[("LCA_TRANSCRIBE", "false")], "NOT_TRANSCRIBED", "", ""),
        (
            &[("LCA_TRANSCRIBE", "no")],
            "ERROR",
            "BAD_ATTRIBUTE",
            "LCA_TRANSCRIBE",
        ),
    ];
    for (attributes, status, code, attribute) in cases {
        let mut event = contact_flow_event(&arn, &first);
        for (name, value) in *attributes {
            event["Details"]["ContactData"]["Attributes"][*name] = json!(value);
        }
        let answer = invoke_start_lca_with(&server, &event).await;
        assert_eq!(answer["status"], *status, "{attributes:?}: {answer}");
        if !code.is_empty() {
            assert_eq!(answer["error"], *code, "{answer}");
            assert_eq!(answer["attribute"], *attribute, "{answer}");
            assert!(
                answer["message"].as_str().unwrap().contains(attribute),
                "{answer}"
            );
        }
    }
    assert!(
        lambda.invocations("CallTranscriber").is_empty(),
        "nothing was started"
    );
    assert!(lease_item(&h).await.is_none(), "no lease was written");
    lambda.shutdown();
}

/// The metrics lines of `lines` a running invocation wrote ("Progress": true).
fn progress_lines(lines: &[(Value, Vec<Extracted>)]) -> Vec<(Value, Vec<Extracted>)> {
    lines
        .iter()
        .filter(|(line, _)| line["Progress"] == true)
        .cloned()
        .collect()
}

/// The EMF timestamps (epoch ms) of `lines`.
fn timestamps(lines: &[(Value, Vec<Extracted>)]) -> Vec<u64> {
    lines
        .iter()
        .map(|(line, _)| line["_aws"]["Timestamp"].as_u64().expect("_aws.Timestamp"))
        .collect()
}

/// The sample call played live at `speed` to the logged transcriber (with `extra`), against a
/// Transcribe that processes at the same pace and refuses streams (capacity) for
/// `unavailable_for` from the call's first request; the contact flow's event invoked. (The
/// local Lambda's server is returned to be kept: the function invokes itself through it.)
async fn paced_call(
    speed: f64,
    unavailable_for: Duration,
    extra: &[(&str, &str)],
) -> (Harness, Lambda, local_aws::http::Server, PathBuf) {
    let transcribe = TranscribeOptions {
        pace: Pace {
            speed: Some(speed),
            unavailable_for,
        },
        ..TranscribeOptions::default()
    };
    let h = Harness::new(KvsOptions::default(), transcribe).await;
    let (lambda, server, logs) = logged_transcriber(&h, extra).await;
    let (arn, first) = h.play_at("call", sample_call_chunks(), &[], speed).await;
    invoke_event(&server, &contact_flow_event(&arn, &first)).await;
    (h, lambda, server, logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_invocation_writes_its_metrics_every_interval_and_a_crash_keeps_what_they_said() {
    // METRICS_INTERVAL 1 s (the stack's is 60 s: the same code at a test's scale). Transcribe
    // refuses streams for 3 s from the call's first request (capacity), then processes at the call's own pace
    // (4x), so the transcript falls behind the live call and TranscriptBehindLive shows it
    // while it happens. After eight progress lines the attempt crashes: what its lines said
    // is kept, and Lambda's retry completes the call with lines of its own.
    let (h, lambda, _server, logs) = paced_call(
        4.0,
        Duration::from_secs(3),
        &[
            ("METRICS_INTERVAL", "1000"),
            ("START_STREAM_RETRY_WAIT", "250"),
        ],
    )
    .await;
    let log = logs.join("CallTranscriber.log");
    let mut before_crash = Vec::new();
    for _ in 0..600 {
        if log.exists() {
            let lines = metrics_lines(&logs, "CallTranscriber");
            if progress_lines(&lines).len() >= 8 {
                // (Crashed where the lease has what the stream holds: a crash right after an
                // acknowledgement may publish that record twice, which the contract allows.)
                crash_once_the_lease_has_the_stream(&h, &lambda).await;
                // The killed process's last lines are written; the retry (1 s later, its
                // first line an interval after that) has written none.
                tokio::time::sleep(Duration::from_millis(200)).await;
                before_crash = metrics_lines(&logs, "CallTranscriber");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !before_crash.is_empty(),
        "eight progress lines within 30 s of a 15 s call"
    );
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_lifecycle(&records);
    assert_eq!(
        lambda.attempts("CallTranscriber").len(),
        2,
        "the crashed attempt and Lambda's retry"
    );
    let lines = metrics_lines(&logs, "CallTranscriber");
    let (crashed, retry) = lines.split_at(before_crash.len());
    // The crashed attempt wrote only progress lines, a second or so apart; they tell of its
    // wait for Transcribe, the audio it read and how far behind the live call it was.
    assert_eq!(progress_lines(crashed).len(), crashed.len());
    for pair in timestamps(crashed).windows(2) {
        assert!(
            pair[1] - pair[0] <= 3_000,
            "progress lines {} ms apart with METRICS_INTERVAL 1000",
            pair[1] - pair[0]
        );
    }
    let audio: f64 = metric_values(crashed, "AudioSeconds", &[]).iter().sum();
    assert!(audio > 0.0, "the crashed attempt's audio is counted");
    let waited: f64 = metric_values(crashed, "TranscribeCapacityWait", &[])
        .iter()
        .sum();
    assert!(waited >= 2_000.0, "capacity wait {waited} ms");
    let behind = metric_values(crashed, "TranscriptBehindLive", &[]);
    assert_eq!(behind.len(), crashed.len(), "one value per line");
    assert!(
        behind.iter().any(|ms| *ms >= 2_000.0),
        "behind live while Transcribe refused: {behind:?}"
    );
    // The retry: progress lines at the interval, then its last line with the call's end;
    // its counts add up to the whole call (it read it from the start again).
    let retry_progress = progress_lines(retry);
    assert!(retry_progress.len() >= 2, "{} lines", retry_progress.len());
    for pair in timestamps(&retry_progress).windows(2) {
        assert!(pair[1] - pair[0] <= 3_000, "{} ms apart", pair[1] - pair[0]);
    }
    assert_eq!(outcomes(retry), ["ENDED"]);
    let audio: f64 = metric_values(retry, "AudioSeconds", &[]).iter().sum();
    let call_s = sample_call_stereo().len() as f64 / 4.0 / 8000.0;
    assert!((audio - call_s).abs() < 0.001, "{audio} s of {call_s} s");
    let lags = metric_values(retry, "TranscriptLag", &[]);
    let events: f64 = metric_values(retry, "EventsPublished", &[]).iter().sum();
    assert!(events > 0.0 && !lags.is_empty());
    assert_eq!(
        metric_values(retry, "TranscriptBehindLive", &[]).len(),
        retry.len(),
        "the last line too"
    );
    lambda.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_catches_up_on_a_second_stream_with_every_final_once() {
    // The call plays at 2x against a Transcribe that processes at the same pace (a second of
    // call audio per 500 ms: TRANSCRIBE_AUDIO_SECOND_TAKES 500) and refuses streams for the
    // call's first 24 s (12 s here). The first stream starts about 25 s behind: a second
    // stream takes the live call at its next quiet moment while the first works through its
    // backlog. Every final once, each channel's in order, and the second stream's finals
    // after the first's.
    //
    // (Not with a hand-over in the same invocation: a lane holds no more than it can finish
    // before the invocation hands over, so a second stream opens only when the hand-over is
    // further away than the backlog; the 61 s sample call is too short for both. The bound
    // is unit-tested in lanes.rs.)
    let (h, lambda, _server, logs) = paced_call(
        2.0,
        Duration::from_secs(12),
        &[
            ("START_STREAM_RETRY_WAIT", "250"),
            ("START_STREAM_RETRIES", "10"),
            ("TRANSCRIBE_AUDIO_SECOND_TAKES", "500"),
        ],
    )
    .await;
    let records = records_until(&h, &lambda, "ADD_S3_RECORDING_URL").await;
    assert_lifecycle(&records);
    assert_recording(&h).await;
    let log = std::fs::read_to_string(logs.join("CallTranscriber.log")).unwrap();
    assert!(
        log.contains("a new stream takes the call from here"),
        "a second stream took the live call"
    );
    assert_eq!(
        lambda.attempts("CallTranscriber").len(),
        1,
        "one invocation, one attempt"
    );
    lambda.shutdown();
}

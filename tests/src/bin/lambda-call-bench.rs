//! The call transcriber as the Lambda function it ships as: its release binary under the
//! local Lambda service (Runtime API), with the lease (DynamoDB) and the S3 recording on,
//! local KVS and Transcribe and moto, on a long call stored in KVS (maximum speed). Reports
//! the function process's peak RSS (what decides the Lambda memory size) and CPU per
//! call-hour, and checks that the whole call came out (END, recording URL, WAV size).
//!
//! `--transcribe-speed X` paces the local Transcribe to X times real time and tells the
//! function so (`TRANSCRIBE_AUDIO_SECOND_TAKES` = 1000/X ms): the stored call is then all
//! backlog to a Transcribe that works in real time, the worst case of a catch-up, and the
//! peak RSS is what the lanes' backlogs take at most (each holds up to 10 minutes of audio).
//!
//! `cargo build --release -p call-transcriber && cargo run --release -p lca-tests --bin
//! lambda-call-bench [-- --minutes 60 --invoke-timeout-ms 720000 --no-recording
//! --transcribe-speed 60]`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use call_transcriber::lease::CallLease;
use call_transcriber::usage::ProcessUsage;
use kvs_media::ConnectWriter;
use local_aws::kvs::{Kvs, KvsOptions};
use local_aws::lambda::{FunctionSpec, Lambda, LambdaOptions, RecursiveLoop};
use local_aws::moto::MotoServer;
use local_aws::transcribe::{Pace, Transcribe, TranscribeOptions};
use serde_json::{Value, json};

const CONTACT: &str = "bench-contact-0002";
const BUCKET: &str = "bench-recordings";

fn main() -> Result<(), String> {
    let mut minutes = 60u64;
    let mut invoke_timeout_ms = 720_000u64;
    let mut record = true;
    let mut transcribe_speed = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| {
            args.next()
                .and_then(|m| m.parse::<u64>().ok())
                .filter(|m| *m > 0)
                .ok_or(format!("{name} takes a positive whole number"))
        };
        match arg.as_str() {
            "--minutes" => minutes = number("--minutes")?,
            "--invoke-timeout-ms" => invoke_timeout_ms = number("--invoke-timeout-ms")?,
            "--no-recording" => record = false,
            "--transcribe-speed" => transcribe_speed = Some(number("--transcribe-speed")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let binary = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .with_file_name("call-transcriber");
    if !binary.exists() {
        return Err(format!(
            "{} not found: build it first with `cargo build --release -p call-transcriber`",
            binary.display()
        ));
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(run(
        binary,
        minutes,
        invoke_timeout_ms,
        record,
        transcribe_speed,
    ))
}

async fn run(
    binary: std::path::PathBuf,
    minutes: u64,
    invoke_timeout_ms: u64,
    record: bool,
    transcribe_speed: Option<u64>,
) -> Result<(), String> {
    let fragments = lca_tests::tiled_call(CONTACT, minutes)?;
    let first = ConnectWriter::fragment_number(0);
    let moto = MotoServer::start().map_err(|e| e.to_string())?;
    let sdk = local_aws::sdk_config(moto.url());
    let kinesis = local_aws::moto::create_kinesis_stream(moto.url(), "lca").await?;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .map_err(|e| format!("CreateBucket in moto: {e}"))?;
    CallLease::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        "calls".to_string(),
        Duration::from_secs(30),
    )
    .create_table()
    .await
    .map_err(|e| e.to_string())?;
    let kvs = Kvs::new(KvsOptions::default());
    let kvs_server = kvs.serve(0).await.map_err(|e| e.to_string())?;
    let transcribe = Transcribe::new(TranscribeOptions {
        record_audio: false,
        pace: Pace {
            speed: transcribe_speed.map(|speed| speed as f64),
            unavailable_for: Duration::ZERO,
        },
        ..TranscribeOptions::default()
    });
    let transcribe_server = transcribe.serve(0).await.map_err(|e| e.to_string())?;
    let arn = kvs.create_stream("call").map_err(|e| e.to_string())?;
    let stored: Vec<u8> = fragments.concat();
    kvs.put_capture("call", &stored)
        .map_err(|e| e.to_string())?;
    kvs.close_stream("call").map_err(|e| e.to_string())?;

    // The function's log, for the recording's join (how long, how much passed through it).
    let log_file =
        std::env::temp_dir().join(format!("lambda-call-bench-{}.log", std::process::id()));
    let lambda = Lambda::new(LambdaOptions {
        log_file: Some(log_file.clone()),
        ..LambdaOptions::default()
    });
    let lambda_server = lambda.serve(0).await.map_err(|e| e.to_string())?;
    let mut environment: BTreeMap<String, String> = [
        ("AWS_ENDPOINT_URL_KINESIS_VIDEO", kvs_server.url()),
        (
            "AWS_ENDPOINT_URL_TRANSCRIBE_STREAMING",
            transcribe_server.url(),
        ),
        ("AWS_ENDPOINT_URL_KINESIS", moto.url().to_string()),
        ("AWS_ENDPOINT_URL_S3", moto.url().to_string()),
        ("AWS_ENDPOINT_URL_DYNAMODB", moto.url().to_string()),
        ("AWS_ENDPOINT_URL_LAMBDA", lambda_server.url()),
        ("AWS_ACCESS_KEY_ID", "AKIDLOCAL".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "local".to_string()),
        ("KINESIS_STREAM_NAME", "lca".to_string()),
        ("OUTPUT_BUCKET", BUCKET.to_string()),
        ("TRANSCRIBER_CALL_EVENT_TABLE_NAME", "calls".to_string()),
        ("KVS_IDLE_TIMEOUT", "5000".to_string()),
        ("LAMBDA_INVOKE_TIMEOUT", invoke_timeout_ms.to_string()),
        // As the template sets it (glibc returns large buffers to the system when freed).
        ("MALLOC_MMAP_THRESHOLD_", "131072".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if !record {
        environment.remove("OUTPUT_BUCKET");
    }
    if let Some(speed) = transcribe_speed {
        environment.insert(
            "TRANSCRIBE_AUDIO_SECOND_TAKES".to_string(),
            (1000 / speed).max(1).to_string(),
        );
    }
    let done = if record {
        "ADD_S3_RECORDING_URL"
    } else {
        "END"
    };
    lambda
        .add_function(FunctionSpec {
            name: "CallTranscriber".to_string(),
            command: binary,
            args: Vec::new(),
            environment,
            timeout: Duration::from_secs(900),
            memory_mb: 128,
        })
        .map_err(|e| e.to_string())?;
    // As the template sets it: the transcriber invokes itself by design.
    lambda.put_recursion_config("CallTranscriber", RecursiveLoop::Allow);
    let event = json!({
        "Name": "ContactFlowEvent",
        "Details": {"ContactData": {
            "ContactId": CONTACT, "InitialContactId": CONTACT, "Channel": "VOICE",
            "InstanceARN": "arn:aws:connect:us-east-1:123456789012:instance/bench",
            "CustomerEndpoint": {"Address": "+15550000001"},
            "SystemEndpoint": {"Address": "+15550000002"},
            "MediaStreams": {"Customer": {"Audio": {"StreamARN": arn, "StartFragmentNumber": first}}}
        }, "Parameters": {}}
    });
    let started = Instant::now();
    aws_sdk_lambda::Client::new(&local_aws::sdk_config(&lambda_server.url()))
        .invoke()
        .function_name("CallTranscriber")
        .invocation_type(aws_sdk_lambda::types::InvocationType::Event)
        .payload(aws_sdk_lambda::primitives::Blob::new(event.to_string()))
        .send()
        .await
        .map_err(|e| format!("Invoke: {e}"))?;
    // Sample the environments while the call runs (a process that stops takes its numbers
    // with it), and once more at the end.
    let mut usage: BTreeMap<u32, ProcessUsage> = BTreeMap::new();
    let records = loop {
        for pid in lambda.pids("CallTranscriber") {
            let now = ProcessUsage::of(pid);
            if now.peak_rss_kb > 0 {
                usage.insert(pid, now);
            }
        }
        let records = records(&kinesis).await?;
        if records.iter().any(|r| r["EventType"] == done) {
            break records;
        }
        if started.elapsed() > Duration::from_secs(minutes * 60 + 300) {
            return Err(format!("no {done} on the stream in time"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let wall = started.elapsed();
    for pid in lambda.pids("CallTranscriber") {
        usage.insert(pid, ProcessUsage::of(pid));
    }
    let invocations = lambda.invocations("CallTranscriber").len();
    let expected = if record {
        (minutes * 60 * 8000 * 4 + 44) as i64
    } else {
        0
    };
    let wav = match record {
        false => 0,
        true => s3
            .head_object()
            .bucket(BUCKET)
            .key(format!("lca-audio-recordings/{CONTACT}.wav"))
            .send()
            .await
            .map_err(|e| format!("HeadObject of the recording: {e}"))?
            .content_length
            .unwrap_or(0),
    };
    lambda.shutdown();
    let peak = usage.values().map(|u| u.peak_rss_kb).max().unwrap_or(0);
    let cpu: f64 = usage.values().map(|u| u.cpu_seconds).sum();
    let hours = minutes as f64 / 60.0;
    let pace = match transcribe_speed {
        None => String::new(),
        Some(speed) => format!(
            " (Transcribe at {speed}x: the whole call a backlog to one working in real time)"
        ),
    };
    println!(
        "call transcriber Lambda ({} build, under local Lambda), {minutes}-minute call at \
         maximum speed{pace}, {invocations} invocation(s) in {} environment(s), {:.1} s wall:",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        usage.len(),
        wall.as_secs_f64()
    );
    println!(
        "  peak RSS {:.1} MB (target <= 40, to run at 128 MB), CPU {cpu:.2} s = {:.2} CPU-s per call-hour",
        peak as f64 / 1024.0,
        cpu / hours
    );
    println!(
        "  {} events on Kinesis, last {}; recording {} bytes ({})",
        records.len(),
        records
            .last()
            .map_or(Value::Null, |r| r["EventType"].clone()),
        wav,
        if wav == expected {
            "the whole call"
        } else {
            "WRONG SIZE"
        }
    );
    if record {
        let log = std::fs::read_to_string(&log_file).unwrap_or_default();
        let joined = log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["fields"]["message"] == "recording written")
            .ok_or(format!(
                "no \"recording written\" line in {}",
                log_file.display()
            ))?;
        let fields = &joined["fields"];
        println!(
            "  recording joined from {} piece(s) in {} ms; {:.1} MB of {:.1} MB through the function, the rest copied by S3",
            fields["pieces"],
            fields["join_ms"],
            fields["uploaded_bytes"].as_f64().unwrap_or(f64::NAN) / 1e6,
            wav as f64 / 1e6,
        );
    }
    let _ = std::fs::remove_file(&log_file);
    if wav != expected {
        return Err(format!("recording is {wav} bytes, expected {expected}"));
    }
    Ok(())
}

/// Every record on the `lca` stream.
async fn records(kinesis: &aws_sdk_kinesis::Client) -> Result<Vec<Value>, String> {
    local_aws::moto::kinesis_records(kinesis, "lca")
        .await?
        .iter()
        .map(|(_, data)| serde_json::from_slice(data).map_err(|e| e.to_string()))
        .collect()
}

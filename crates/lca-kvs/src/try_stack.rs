//! `lca-kvs try-stack`: checks a deployed stack end to end without a phone. A call (the
//! demo's sample call, or a capture re-tagged as a fresh contact) is sent with PutMedia into a
//! Kinesis video stream whose name carries the stack's prefix; the deployed StartLCA is
//! invoked with the contact-flow event Connect would send for it; the call's events are
//! followed on the LCA Kinesis stream and the transcript shown as it arrives; a checklist
//! ends the run, with the likely fix of each failed step.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_lambda::error::ProvideErrorMetadata;
use bytes::Bytes;
use clap::Args;
use kvs_media::{AckEventType, EncoderOptions};
use kvs_producer::{Progress, PutMediaOptions, PutMediaSummary};
use lca_kvs::kinesis_tail::KinesisTail;
use lca_kvs::sample_call::Speaker;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::call_run::{TranscriptView, contact_flow_event, fresh_contact_id, recording_key};
use aws_edge::now_ms;

/// Options of `lca-kvs try-stack`: the stack's values.
#[derive(Args, Debug)]
pub struct TryStackArgs {
    /// The deployed stack: this tool's nested stack in LCA (its outputs have
    /// StartLCAFunctionName), or LCA's main stack holding it. Its parameters and outputs give
    /// the values below; a flag given as well overrides the stack's value.
    #[arg(long, value_name = "NAME")]
    pub stack: Option<String>,
    /// The StartLCA function (the stack's StartLCAFunctionName output, or its ARN).
    #[arg(long, value_name = "FUNCTION", required_unless_present = "stack")]
    pub start_lca: Option<String>,
    /// The Connect instance the stack serves (its ConnectInstanceArn parameter).
    #[arg(long, value_name = "ARN", required_unless_present = "stack")]
    pub instance_arn: Option<String>,
    /// The stack's ConnectKvsStreamNamePrefix parameter: the check's stream is named with it,
    /// as the transcriber's role only reads such streams.
    #[arg(long, value_name = "PREFIX", required_unless_present = "stack")]
    pub stream_prefix: Option<String>,
    /// The LCA Kinesis data stream (the stack's KinesisDataStreamName parameter, LCA's
    /// CallDataStream).
    #[arg(long, value_name = "NAME", required_unless_present = "stack")]
    pub kinesis_stream: Option<String>,
    /// Send this capture (re-tagged as a fresh contact, moved to now) instead of the sample
    /// call.
    #[arg(long, value_name = "FILE")]
    pub mkv: Option<PathBuf>,
    /// 1 is a live call's pace.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// How long each step may take beyond the call itself (seconds): START after StartLCA
    /// answered, END after the call's last fragment, the recording after END.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub timeout: f64,
}

/// What the check needs to know of the deployed stack.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StackValues {
    start_lca: String,
    instance_arn: String,
    stream_prefix: String,
    kinesis_stream: String,
}

use crate::stack_lookup::{
    FromStack, OUTPUT_START_LCA, PARAM_INSTANCE, PARAM_KINESIS, PARAM_PREFIX, from_stack,
};

/// The values from `--stack` (when given) with the flags over them.
async fn stack_values(sdk: &aws_config::SdkConfig, args: &TryStackArgs) -> Result<StackValues> {
    let mut found = FromStack::default();
    if let Some(name) = &args.stack {
        found = from_stack(sdk, name).await?;
    }
    let [start_lca, instance_arn, stream_prefix, kinesis_stream] = found;
    let pick = |flag: &Option<String>, from_stack: Option<String>, what: &str| {
        flag.clone().or(from_stack).with_context(|| {
            format!(
                "stack {}: no {what}; give it as a flag",
                args.stack.as_deref().unwrap_or_default()
            )
        })
    };
    Ok(StackValues {
        start_lca: pick(&args.start_lca, start_lca, OUTPUT_START_LCA)?,
        instance_arn: pick(&args.instance_arn, instance_arn, PARAM_INSTANCE)?,
        stream_prefix: pick(&args.stream_prefix, stream_prefix, PARAM_PREFIX)?,
        kinesis_stream: pick(&args.kinesis_stream, kinesis_stream, PARAM_KINESIS)?,
    })
}

/// One line of the checklist.
struct Step {
    what: String,
    outcome: Outcome,
}

enum Outcome {
    Passed(String),
    Failed { problem: String, fix: String },
    NotReached,
}

/// The checklist, filled in as the run goes.
struct Checklist {
    steps: Vec<Step>,
}

impl Checklist {
    fn new(steps: &[&str]) -> Self {
        Self {
            steps: steps
                .iter()
                .map(|what| Step {
                    what: what.to_string(),
                    outcome: Outcome::NotReached,
                })
                .collect(),
        }
    }

    fn pass(&mut self, index: usize, detail: impl Into<String>) {
        self.steps[index].outcome = Outcome::Passed(detail.into());
    }

    fn fail(&mut self, index: usize, problem: impl Into<String>, fix: impl Into<String>) {
        self.steps[index].outcome = Outcome::Failed {
            problem: problem.into(),
            fix: fix.into(),
        };
    }

    fn passed(&self) -> bool {
        self.steps
            .iter()
            .all(|s| matches!(s.outcome, Outcome::Passed(_)))
    }

    fn print(&self) {
        eprintln!();
        eprintln!("Checklist");
        for step in &self.steps {
            match &step.outcome {
                Outcome::Passed(detail) => eprintln!("  [ok]          {}: {detail}", step.what),
                Outcome::Failed { problem, fix } => {
                    eprintln!("  [FAILED]      {}: {problem}", step.what);
                    eprintln!("                likely fix: {fix}");
                }
                Outcome::NotReached => eprintln!("  [not reached] {}", step.what),
            }
        }
    }
}

const STEPS: [&str; 8] = [
    "LCA Kinesis stream readable",
    "Kinesis video stream ready",
    "call sent with PutMedia",
    "StartLCA answered STARTED",
    "START on the LCA stream",
    "segments from both channels",
    "END on the LCA stream",
    "recording in S3",
];
const TAIL: usize = 0;
const KVS: usize = 1;
const SENT: usize = 2;
const START_LCA: usize = 3;
const START: usize = 4;
const SEGMENTS: usize = 5;
const END: usize = 6;
const RECORDING: usize = 7;

/// Runs `try-stack`: exit 0 only when every step passed.
pub fn run(args: TryStackArgs) -> Result<ExitCode> {
    if !(args.speed > 0.0 && args.speed.is_finite()) {
        bail!(
            "--speed {}: must be a positive number (the transcriber reads the call live)",
            args.speed
        );
    }
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!(
            "--timeout {}: must be a positive number of seconds",
            args.timeout
        );
    }
    let contact_id = fresh_contact_id();
    let (chunks, retag) = match &args.mkv {
        Some(path) => (crate::put_media::read_chunks(path)?, true),
        None => (
            crate::call_run::sample(contact_id.clone())?.fragments,
            false,
        ),
    };
    crate::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let checklist = runtime.block_on(async {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let values = stack_values(&sdk, &args).await?;
        if let Some(stack) = &args.stack {
            eprintln!(
                "lca-kvs try-stack: stack {stack}: StartLCA {}, instance {}, stream prefix {:?}, LCA stream {}",
                values.start_lca, values.instance_arn, values.stream_prefix, values.kinesis_stream
            );
        }
        anyhow::Ok(try_stack(&sdk, &args, &values, &contact_id, chunks, retag).await)
    })?;
    checklist.print();
    Ok(if checklist.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn try_stack(
    sdk: &aws_config::SdkConfig,
    args: &TryStackArgs,
    stack: &StackValues,
    contact_id: &str,
    chunks: Vec<Bytes>,
    retag: bool,
) -> Checklist {
    let mut list = Checklist::new(&STEPS);
    let timeout = Duration::from_secs_f64(args.timeout);
    eprintln!("lca-kvs try-stack: contact {contact_id}");

    // 1. The LCA stream, followed from its end before anything is published.
    let mut tail = match KinesisTail::start(
        aws_sdk_kinesis::Client::new(sdk),
        &stack.kinesis_stream,
        contact_id,
    )
    .await
    {
        Ok(tail) => {
            list.pass(TAIL, stack.kinesis_stream.clone());
            tail
        }
        Err(error) => {
            list.fail(
                TAIL,
                error.to_string(),
                "--kinesis-stream is the stack's KinesisDataStreamName parameter (LCA's CallDataStream); your credentials need kinesis:ListShards, GetShardIterator and GetRecords on it, in the stack's region (AWS_REGION)",
            );
            return list;
        }
    };

    // 2. A stream the transcriber's role may read.
    let stream_name = format!("{}lca-kvs-try-stack", stack.stream_prefix);
    let stream_arn = match kvs_producer::ensure_stream(sdk, &stream_name, 24).await {
        Ok(arn) => {
            list.pass(KVS, arn.clone());
            arn
        }
        Err(error) => {
            list.fail(
                KVS,
                error.to_string(),
                "your credentials need kinesisvideo:DescribeStream and CreateStream on streams named with the prefix; the prefix may hold only letters, digits, '_', '.' and '-'",
            );
            return list;
        }
    };

    // 3. The call, at a live call's pace; StartLCA is invoked once its first fragment is
    // stored, as Connect invokes the flow's function with the first fragment's number.
    let options = PutMediaOptions {
        speed: args.speed,
        encoder: EncoderOptions {
            start_at_ms: retag.then(now_ms),
            contact_id: retag.then(|| contact_id.to_string()),
        },
        ..PutMediaOptions::default()
    };
    let chunks_len = chunks.len();
    let call_seconds = chunks_len as f64 / args.speed;
    let (first, mut progress, sender) = match crate::put_media::send_live(
        sdk,
        &stream_arn,
        chunks,
        options,
    )
    .await
    {
        Ok(live) => (live.first, live.progress, live.task),
        Err(error) => {
            list.fail(
                    SENT,
                    error.map_or_else(
                        || "no fragment was acknowledged".to_string(),
                        |e| e.to_string(),
                    ),
                    "your credentials need kinesisvideo:GetDataEndpoint and PutMedia on the stream (and kms:GenerateDataKey on its key)",
                );
            return list;
        }
    };
    let first_persisted = first.event_type == AckEventType::Persisted;
    let start_fragment = first.fragment_number.unwrap_or_default();
    let start_ms = first.fragment_timecode.unwrap_or_else(now_ms);

    // 4. The contact flow's "Invoke AWS Lambda function" block.
    let mut event = contact_flow_event(
        contact_id,
        &stack.instance_arn,
        &stream_arn,
        &start_fragment,
        start_ms,
    );
    event["Details"]["ContactData"]["Attributes"] = json!({"lcaTryStack": "true"});
    let answered_at = Instant::now();
    match invoke_start_lca(sdk, &stack.start_lca, &event).await {
        Ok(answer) => list.pass(START_LCA, answer),
        Err((problem, fix)) => {
            list.fail(START_LCA, problem, fix);
            sender.abort();
            return list;
        }
    }

    // 5. The call's events, shown as they arrive.
    let mut view = TranscriptView::new(false, args.speed);
    let call_ends = answered_at + Duration::from_secs_f64(call_seconds);
    let mut ended_at = None;
    let mut sent: Option<Result<PutMediaSummary, String>> = None;
    let mut sender = Some(sender);
    // The first stored fragment's PERSISTED may be the ack StartLCA waited for.
    let mut stored = usize::from(first_persisted);
    let total = chunks_len;
    let tail_error = loop {
        while let Ok(event) = progress.try_recv() {
            if matches!(&event, Progress::Acked { ack, .. } if ack.event_type == AckEventType::Persisted)
            {
                stored += 1;
            }
        }
        if let Some(task) = sender.take_if(|task| task.is_finished()) {
            sent = Some(match task.await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            });
        }
        match tail.poll().await {
            Ok(records) => {
                for record in records {
                    let event: Value = serde_json::from_slice(&record.data).unwrap_or(Value::Null);
                    let _ = view.show(&event, answered_at.elapsed().as_secs_f64());
                }
            }
            Err(error) => break Some(format!(" (reading the LCA stream failed: {error})")),
        }
        if view.ended && ended_at.is_none() {
            ended_at = Some(Instant::now());
        }
        if view.recording_url.is_some() {
            break None;
        }
        let now = Instant::now();
        let late = (!view.started && now > answered_at + timeout)
            || (!view.ended && now > call_ends + timeout)
            || ended_at.is_some_and(|at| now > at + timeout);
        if late {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = view.finish_line();
    if let Some(task) = sender.take() {
        task.abort();
    }
    // The transcriber gives a call up (publishing END) when it cannot read or transcribe it:
    // END while the call is still being sent.
    let gave_up = ended_at.is_some() && sent.is_none();
    match sent {
        Some(Ok(summary)) => list.pass(
            SENT,
            format!(
                "{} fragments stored, from fragment {start_fragment}",
                summary.fragment_numbers.len()
            ),
        ),
        Some(Err(error)) => list.fail(
            SENT,
            error,
            "see the PutMedia error above; the call's audio stopped there",
        ),
        None if view.ended => list.fail(
            SENT,
            format!(
                "stopped after {stored} of {total} fragments were stored: the transcriber ended the call first (PutMedia itself reported no error)"
            ),
            "see END",
        ),
        None => list.fail(
            SENT,
            format!("{stored} of {total} fragments stored when the check ended"),
            "raise --timeout",
        ),
    }
    let no_audio_fix = format!(
        "look at the call transcriber's log group: AccessDenied on GetDataEndpoint or GetMedia means the stack's ConnectKvsStreamNamePrefix is not the prefix of {stream_name} (--stream-prefix {}); Transcribe errors (transcribe:StartStreamTranscription permission, TranscribeLanguageCode, custom vocabulary names) stop the transcript too",
        stack.stream_prefix
    );
    let tail_error = tail_error.unwrap_or_default();
    if view.started {
        list.pass(START, "published");
    } else {
        list.fail(
            START,
            format!(
                "no START for contact {contact_id} within {} s of StartLCA's answer{tail_error}",
                args.timeout
            ),
            format!(
                "{no_audio_fix}; AccessDenied on Kinesis PutRecord(s) means the stack's KinesisDataStreamName is another stream than --kinesis-stream; a failed invocation is also in the transcriber's failure queue"
            ),
        );
        return list;
    }
    let count = |speaker: Speaker| view.finals.iter().filter(|f| f.speaker == speaker).count();
    let (caller, agent) = (count(Speaker::Caller), count(Speaker::Agent));
    if caller > 0 && agent > 0 {
        list.pass(
            SEGMENTS,
            format!("caller {caller}, agent {agent} final segments"),
        );
    } else {
        list.fail(
            SEGMENTS,
            format!("caller {caller}, agent {agent} final segments"),
            no_audio_fix.clone(),
        );
    }
    if gave_up {
        list.fail(
            END,
            format!(
                "END came {:.1} s after StartLCA's answer, before the call's audio was over: the transcriber gave the call up",
                ended_at.map_or(0.0, |at| (at - answered_at).as_secs_f64())
            ),
            no_audio_fix,
        );
    } else if view.ended {
        list.pass(END, "published");
    } else {
        list.fail(
            END,
            format!(
                "no END within {} s after the call's {call_seconds:.0} s{tail_error}",
                args.timeout
            ),
            "the transcriber ends a call KVS_IDLE_TIMEOUT ms after its last audio: look at its log group for an error or a hand-over that did not start (RecursiveLoop must be Allow)",
        );
        return list;
    }
    match &view.recording_url {
        Some(url) => match recording_exists(sdk, url).await {
            Ok(size) => list.pass(RECORDING, format!("{url} ({size} bytes)")),
            Err(problem) => list.fail(
                RECORDING,
                problem,
                "your credentials need s3:GetObject on the recordings bucket to check it; the transcriber needs s3:PutObject",
            ),
        },
        None => list.fail(
            RECORDING,
            format!(
                "no ADD_S3_RECORDING_URL within {} s of END{tail_error}",
                args.timeout
            ),
            "the transcriber's log: the stack's S3BucketName must be a bucket its role may write (s3:PutObject)",
        ),
    }
    list
}

/// Invokes StartLCA as a contact flow does; its answer, or what failed and the fix.
async fn invoke_start_lca(
    sdk: &aws_config::SdkConfig,
    function: &str,
    event: &Value,
) -> Result<String, (String, String)> {
    let output = aws_sdk_lambda::Client::new(sdk)
        .invoke()
        .function_name(function)
        .payload(aws_sdk_lambda::primitives::Blob::new(event.to_string()))
        .send()
        .await
        .map_err(|error| {
            let code = error.code().unwrap_or("").to_string();
            let message = error.message().map_or_else(
                || aws_edge::error_text(&error),
                str::to_string,
            );
            let fix = match code.as_str() {
                "ResourceNotFoundException" => format!(
                    "no function {function} in this account and region: --start-lca is the stack's StartLCAFunctionName output"
                ),
                "AccessDeniedException" => {
                    "your credentials need lambda:InvokeFunction on StartLCA".to_string()
                }
                _ => "check --start-lca and the region (AWS_REGION)".to_string(),
            };
            (format!("invoking {function}: {code} {message}"), fix)
        })?;
    let payload: Value = output
        .payload()
        .and_then(|p| serde_json::from_slice(p.as_ref()).ok())
        .unwrap_or(Value::Null);
    if let Some(kind) = output.function_error() {
        return Err((
            format!("StartLCA failed ({kind}): {payload}"),
            "StartLCA's log group has the error; its environment needs TRANSCRIBER_FUNCTION_ARN and CONNECT_INSTANCE_ARN".to_string(),
        ));
    }
    let status = payload["status"].as_str().unwrap_or("");
    if status == "STARTED" {
        return Ok(format!(
            "STARTED (callId {})",
            payload["callId"].as_str().unwrap_or("")
        ));
    }
    let code = payload["error"].as_str().unwrap_or("");
    let fix = match code {
        "WRONG_INSTANCE" => {
            "StartLCA serves only the stack's Connect instance: --instance-arn must be its ConnectInstanceArn parameter (or the stack is set up for another instance)"
        }
        "INVOKE_FAILED" => {
            "StartLCA could not start the transcriber: its role needs lambda:InvokeFunction on the CallTranscriber function named by its TRANSCRIBER_FUNCTION_ARN"
        }
        "MALFORMED_EVENT" | "NOT_VOICE" | "NO_MEDIA_STREAM" => {
            "this check's event was refused: report it with StartLCA's message"
        }
        _ => "StartLCA's log group",
    };
    Err((format!("StartLCA answered {payload}"), fix.to_string()))
}

/// The size of the recording at `url` (`https://BUCKET.s3.REGION.amazonaws.com/KEY`).
async fn recording_exists(sdk: &aws_config::SdkConfig, url: &str) -> Result<i64, String> {
    let key = recording_key(url).ok_or_else(|| format!("recording URL {url} names no object"))?;
    let bucket = url
        .strip_prefix("https://")
        .and_then(|rest| rest.split_once(".s3."))
        .map(|(bucket, _)| bucket)
        .ok_or_else(|| format!("recording URL {url} names no bucket"))?;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(std::env::var_os("AWS_ENDPOINT_URL_S3").is_some())
            .build(),
    );
    let head = s3
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| {
            format!(
                "the recording {key} in bucket {bucket}: {}",
                aws_edge::error_text(&e)
            )
        })?;
    Ok(head.content_length().unwrap_or(0))
}

//! `lca-kvs demo`: a whole Connect call through the real system, offline. The sample call
//! (spoken by espeak-ng) or a GetMedia capture plays live into the local Kinesis Video
//! Streams; a contact-flow event invokes StartLCA under the local Lambda service, which starts
//! the call transcriber (both are this executable, `lca-kvs function ...`, under the Lambda
//! Runtime API); the transcriber reads KVS, streams to the local Transcribe (a real offline
//! recognizer with the `pocketsphinx` feature) and publishes LCA events to Kinesis (moto
//! server), records the call to S3 and leases it in DynamoDB (moto). Without moto the events go
//! to an embedded Kinesis stand-in and the call runs without recording and lease. With `--aws`
//! the call is sent with PutMedia into the user's Kinesis video stream and the transcriber uses
//! the user's Amazon Transcribe and LCA Kinesis stream (and S3 bucket) instead. The terminal shows the events as LCA would: the transcript as it is spoken, then a
//! summary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use aws_edge::now_ms;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use lca_kvs::kinesis_tail::{KinesisTail, TailRecord};
use lca_kvs::sample_call::SampleCall;
use local_aws::http::Server;
use local_aws::kinesis::KinesisRecorder;
use local_aws::kvs::{Kvs, KvsOptions};
use local_aws::lambda::{FunctionSpec, Lambda, LambdaOptions, RecursiveLoop};
use local_aws::moto::{MotoError, MotoServer};
use local_aws::recognizer::{EnergyRecognizer, Recognizer};
use local_aws::transcribe::{Transcribe, TranscribeOptions};
use serde_json::Value;
use tokio::time::Instant;

use crate::call_run::{
    DemoCall, TranscriptView, capture, contact_flow_event, fresh_contact_id, recording_key, sample,
};

/// Options of `lca-kvs demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Replay this GetMedia capture (e.g. saved from a real Connect stream) instead of the
    /// sample call.
    #[arg(long)]
    mkv: Option<PathBuf>,
    /// Playback speed: 1 is real time, as Connect streams; 0 puts the whole call into KVS at
    /// once (the fastest run).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// The speech recognizer behind the local Transcribe.
    #[arg(long, value_enum, default_value_t = Engine::Auto)]
    engine: Engine,
    #[command(flatten)]
    transcribe_pace: crate::local::TranscribePaceArgs,
    /// Print the LCA events as they arrive on Kinesis (one JSON object per line) instead of
    /// the transcript.
    #[arg(long)]
    json: bool,
    /// Copy the call recording (stereo WAV, from the local S3) to this file.
    #[arg(long)]
    recording_out: Option<PathBuf>,
    /// Use your AWS account (credentials and region as the AWS CLI finds them): the call is
    /// sent with PutMedia into your Kinesis video stream --kvs-stream (created if missing),
    /// Amazon Transcribe transcribes it, and the events go to the LCA Kinesis stream named by
    /// KINESIS_STREAM_NAME (your LCA stack's CallDataStream), so the call shows in your LCA
    /// web UI; OUTPUT_BUCKET (optional) records it. The functions still run locally, with
    /// your credentials.
    #[arg(long)]
    aws: bool,
    /// With --aws: the Kinesis video stream the call is sent into.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "lca-kvs-demo",
        requires = "aws"
    )]
    kvs_stream: String,
    /// Write every function's log lines (JSON logs and CloudWatch EMF metrics lines, as
    /// CloudWatch Logs would receive them) to this file; default: a file in the system's
    /// temporary folder, named in the summary.
    #[arg(long, value_name = "FILE")]
    logs: Option<PathBuf>,
    /// A contact attribute the contact flow sets before invoking StartLCA (repeatable), e.g.
    /// `--attribute TRANSCRIBE_LANGUAGE_CODE=en-GB`: a per-contact setting (README,
    /// "Per-contact settings"). StartLCA refusing one stops the demo with its answer.
    #[arg(long = "attribute", value_name = "NAME=VALUE", value_parser = parse_attribute)]
    attributes: Vec<(String, String)>,
}

/// `NAME=VALUE`: a contact attribute (the value may be empty or contain `=`).
fn parse_attribute(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err(format!(
            "{text:?}: expected NAME=VALUE, e.g. TRANSCRIBE_LANGUAGE_CODE=en-GB"
        )),
    }
}

/// StartLCA answered the contact flow without starting the transcriber (a refused contact
/// attribute, `LCA_TRANSCRIBE=false`, ...): its answer. `lca-kvs demo` exits 1 on it (2 on
/// other failures).
#[derive(Debug)]
pub struct NotStarted(pub String);

impl std::fmt::Display for NotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StartLCA did not start the transcriber: {}", self.0)
    }
}

impl std::error::Error for NotStarted {}

/// Speech recognizers the demo can use.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Engine {
    /// pocketsphinx when this build has it, else energy.
    Auto,
    /// CMU PocketSphinx, offline (needs the `pocketsphinx` cargo feature).
    Pocketsphinx,
    /// No recognition: voice activity only, segments name their timing.
    Energy,
}

const CONTACT_ID: &str = "5e1ec7ed-0000-4000-8000-00000000de30";
const INSTANCE_ARN: &str =
    "arn:aws:connect:us-east-1:123456789012:instance/5e1ec7ed-1111-4000-8000-00000000de30";
const KINESIS_STREAM: &str = "lca-demo-call-events";
const BUCKET: &str = "lca-demo-recordings";
const LEASE_TABLE: &str = "lca-demo-calls";

/// How often the transcriber's sweep runs, as the stack's schedule (`rate(1 minute)`).
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const KVS_STREAM: &str = "connect-demo-contact";

/// A factory of the local Transcribe's recognizers.
type RecognizerFactory = Box<dyn Fn(u32, usize) -> Box<dyn Recognizer> + Send + Sync>;

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<()> {
    if !(args.speed >= 0.0 && args.speed.is_finite()) {
        bail!("--speed {}: must be 0 or a positive number", args.speed);
    }
    let pace = args.transcribe_pace.pace()?;
    if args.aws && args.transcribe_pace.is_set() {
        bail!(
            "--transcribe-speed and --transcribe-unavailable-for set the local Transcribe's pace; with --aws, Amazon Transcribe keeps its own"
        );
    }
    // --aws needs the user's LCA stream: checked before the call is synthesized.
    let aws_stream = args.aws.then(aws_stream_name).transpose()?;
    let (engine_name, factory) = if args.aws {
        ("Amazon Transcribe (your account)", None)
    } else {
        let (name, factory) = recognizers(args.engine)?;
        (name, Some(factory))
    };
    // Every --aws run is a new call in LCA; the local demo keeps one CallId.
    let contact_id = if args.aws {
        fresh_contact_id()
    } else {
        CONTACT_ID.to_string()
    };
    let call = match &args.mkv {
        // With --aws a capture is sent as a fresh contact (PutMedia re-tags it).
        Some(path) if args.aws => DemoCall {
            contact_id: contact_id.clone(),
            ..capture(path)?
        },
        Some(path) => capture(path)?,
        None => sample(contact_id)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(demo(args, aws_stream, call, engine_name, factory, pace))
}

/// The engine to use and a factory of its recognizers; a PocketSphinx model that cannot load
/// stops the demo here, with the fix.
fn recognizers(engine: Engine) -> Result<(&'static str, RecognizerFactory)> {
    let energy = || -> (&'static str, RecognizerFactory) {
        (
            "energy (voice activity only, no words)",
            Box::new(|rate, channels| Box::new(EnergyRecognizer::new(rate, channels))),
        )
    };
    match engine {
        Engine::Energy => Ok(energy()),
        #[cfg(feature = "pocketsphinx")]
        Engine::Auto | Engine::Pocketsphinx => {
            use local_aws::recognizer::pocketsphinx::{SphinxModel, SphinxRecognizer};
            let model = SphinxModel::locate()?;
            // Load it once now, so that a broken model stops the demo with its reason.
            SphinxRecognizer::new(&model, 8000, 2)?;
            Ok((
                "pocketsphinx (CMU PocketSphinx, US English, offline)",
                Box::new(move |rate, channels| {
                    match SphinxRecognizer::new(&model, rate, channels) {
                        Ok(recognizer) => Box::new(recognizer),
                        Err(error) => {
                            tracing::error!(%error, "pocketsphinx: using the energy recognizer for this session");
                            Box::new(EnergyRecognizer::new(rate, channels))
                        }
                    }
                }),
            ))
        }
        #[cfg(not(feature = "pocketsphinx"))]
        Engine::Pocketsphinx => bail!(
            "this lca-kvs was built without the pocketsphinx engine: run `bash scripts/demo.sh` (installs libpocketsphinx-dev and pocketsphinx-en-us and builds with --features pocketsphinx), or use --engine energy"
        ),
        #[cfg(not(feature = "pocketsphinx"))]
        Engine::Auto => {
            eprintln!(
                "lca-kvs demo: built without a speech recognizer; segments will show voice timing, not words (`bash scripts/demo.sh` builds with pocketsphinx)"
            );
            Ok(energy())
        }
    }
}

async fn demo(
    args: DemoArgs,
    aws_stream: Option<String>,
    call: DemoCall,
    engine_name: &str,
    factory: Option<RecognizerFactory>,
    pace: local_aws::transcribe::Pace,
) -> Result<()> {
    let aws_sdk = match &aws_stream {
        Some(_) => Some(aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await),
        None => None,
    };
    let mut backend = match (aws_stream, &aws_sdk) {
        (Some(stream), Some(sdk)) => Backend::aws(sdk, stream, &call.contact_id).await?,
        _ => Backend::local(&call.contact_id).await?,
    };
    if let (Some(_), Err(why)) = (&args.recording_out, &backend.recordings) {
        bail!("--recording-out: {why}");
    }
    // The call's stream: in the local KVS, or (--aws) the user's, written with PutMedia.
    let kvs = Kvs::new(KvsOptions::default());
    let kvs_server = match aws_sdk {
        None => Some(
            kvs.serve(0)
                .await
                .context("cannot start the local KVS on loopback")?,
        ),
        Some(_) => None,
    };
    // The local Transcribe, unless the user's Amazon Transcribe does the work.
    let transcribe_server = match factory {
        Some(factory) => Some(
            Transcribe::with_recognizer(
                TranscribeOptions {
                    record_audio: false,
                    pace,
                    ..TranscribeOptions::default()
                },
                factory,
            )
            .serve(0)
            .await
            .context("cannot start the local Transcribe on loopback")?,
        ),
        None => None,
    };
    // With the local Transcribe, its batch side too (post-call analytics jobs in analytics
    // mode): the jobs are taken, not run.
    let jobs_server = if transcribe_server.is_some() {
        Some(
            local_aws::call_analytics::CallAnalyticsJobs::new()
                .serve(0)
                .await
                .context("cannot start the local Transcribe (jobs) on loopback")?,
        )
    } else {
        None
    };
    let log_file = args.logs.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("lca-kvs-demo-{}.log", std::process::id()))
    });
    // A new file per run: the summary reads this run's metrics lines back from it.
    std::fs::write(&log_file, b"")
        .with_context(|| format!("{}: cannot write the functions' logs", log_file.display()))?;
    let lambda = Lambda::new(LambdaOptions {
        log_file: Some(log_file.clone()),
        ..LambdaOptions::default()
    });
    let lambda_server = lambda
        .serve(0)
        .await
        .context("cannot start the local Lambda on loopback")?;
    let exe =
        std::env::current_exe().context("cannot find this executable to run the functions")?;
    // The functions inherit this process's environment: the transcriber's variables
    // (LAMBDA_INVOKE_TIMEOUT, TRANSCRIBE_API_MODE, ...) set by the user pass through; only
    // where the demo's services are, and defaults the user did not set, are added.
    let mut environment: BTreeMap<String, String> =
        [("AWS_ENDPOINT_URL_LAMBDA", lambda_server.url())]
            .into_iter()
            .chain(
                kvs_server
                    .as_ref()
                    .map(|server| ("AWS_ENDPOINT_URL_KINESIS_VIDEO", server.url())),
            )
            .chain(
                transcribe_server
                    .as_ref()
                    .map(|server| ("AWS_ENDPOINT_URL_TRANSCRIBE_STREAMING", server.url())),
            )
            .chain(
                jobs_server
                    .as_ref()
                    .map(|server| ("AWS_ENDPOINT_URL_TRANSCRIBE", server.url())),
            )
            .chain(backend.environment.iter().cloned())
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    let mut defaults = vec![("KVS_IDLE_TIMEOUT", "5000"), ("RUST_LOG", "warn")];
    if transcribe_server.is_some() {
        // For TRANSCRIBE_API_MODE=analytics (the post-call analytics job): the local
        // Transcribe takes any role; Amazon Transcribe needs the user's own.
        defaults.push((
            "TCA_DATA_ACCESS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/lca-demo-post-call",
        ));
    }
    for (name, value) in defaults {
        if std::env::var_os(name).is_none() {
            environment.insert(name.to_string(), value.to_string());
        }
    }
    let transcriber_arn = lambda
        .add_function(FunctionSpec {
            name: "CallTranscriber".to_string(),
            command: exe.clone(),
            args: vec!["function".to_string(), "call-transcriber".to_string()],
            environment: environment.clone(),
            timeout: Duration::from_secs(900),
            memory_mb: 128,
        })
        .map_err(anyhow::Error::msg)?;
    // As the template sets it: the transcriber invokes itself by design, and is swept every
    // minute (SweepSchedule) for calls nobody looks after.
    lambda.put_recursion_config("CallTranscriber", RecursiveLoop::Allow);
    let sweep = lambda.scheduled_event("sweep");
    lambda.schedule("CallTranscriber", SWEEP_EVERY, sweep);
    environment.insert("CONNECT_INSTANCE_ARN".to_string(), INSTANCE_ARN.to_string());
    environment.insert("TRANSCRIBER_FUNCTION_ARN".to_string(), transcriber_arn);
    lambda
        .add_function(FunctionSpec {
            name: "StartLCA".to_string(),
            command: exe,
            args: vec!["function".to_string(), "start-lca".to_string()],
            environment,
            timeout: Duration::from_secs(8),
            memory_mb: 128,
        })
        .map_err(anyhow::Error::msg)?;

    eprintln!("lca-kvs demo: LCA events go to {}", backend.description);
    let seconds = call.sample.as_ref().map(SampleCall::seconds);
    let what = match (&args.mkv, seconds) {
        (Some(path), _) => format!("capture {}", path.display()),
        (None, Some(s)) => format!("sample call, {s:.0} s"),
        (None, None) => "call".to_string(),
    };
    let pace = match args.speed {
        0.0 => "once (speed 0)".to_string(),
        s => format!("{s}x real time"),
    };
    let played_at = Instant::now();
    let fragments = call.fragments.len();
    let (stream_arn, first_fragment, player) = match &aws_sdk {
        None => {
            let stream_arn = kvs.create_stream(KVS_STREAM)?;
            eprintln!(
                "lca-kvs demo: {what} ({fragments} fragments) playing into local KVS at {pace}; recognizer: {engine_name}"
            );
            let player = kvs.play(KVS_STREAM, call.fragments, args.speed);
            let first_fragment = loop {
                if let Some(first) = kvs.fragment_numbers(KVS_STREAM)?.into_iter().next() {
                    break first;
                }
                if player.is_finished() || played_at.elapsed() > Duration::from_secs(10) {
                    bail!("the call's first fragment did not reach the local KVS");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            let player = tokio::spawn(async move {
                player
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            });
            (stream_arn, first_fragment, player)
        }
        Some(sdk) => {
            let stream_arn = kvs_producer::ensure_stream(sdk, &args.kvs_stream, 24)
                .await
                .with_context(|| format!("--aws: the Kinesis video stream {}", args.kvs_stream))?;
            eprintln!(
                "lca-kvs demo: {what} ({fragments} fragments) sent with PutMedia into your stream {} at {pace}; recognizer: {engine_name}",
                args.kvs_stream
            );
            let options = kvs_producer::PutMediaOptions {
                speed: args.speed,
                // A capture arrives as a fresh contact, happening now.
                encoder: kvs_media::EncoderOptions {
                    start_at_ms: args.mkv.is_some().then(now_ms),
                    contact_id: args.mkv.is_some().then(|| call.contact_id.clone()),
                },
                ..kvs_producer::PutMediaOptions::default()
            };
            let with_hint = |error: &kvs_producer::PutMediaError| {
                let hint =
                    crate::put_media::hint(error).map_or_else(String::new, |h| format!(" ({h})"));
                format!("{error}{hint}")
            };
            let live = crate::put_media::send_live(sdk, &stream_arn, call.fragments, options)
                .await
                .map_err(|error| {
                    let why = error
                        .as_ref()
                        .map_or_else(|| "no fragment was acknowledged".to_string(), with_hint);
                    anyhow::anyhow!("--aws: the call could not be sent: {why}")
                })?;
            let first_fragment = live.first.fragment_number.unwrap_or_default();
            let task = live.task;
            let player = tokio::spawn(async move {
                match task.await {
                    Ok(result) => result.map(|_| ()).map_err(|e| with_hint(&e)),
                    Err(error) => Err(error.to_string()),
                }
            });
            (stream_arn, first_fragment, player)
        }
    };

    let mut event = contact_flow_event(
        &call.contact_id,
        INSTANCE_ARN,
        &stream_arn,
        &first_fragment,
        now_ms(),
    );
    // A Set contact attributes block before the Invoke AWS Lambda function block.
    for (name, value) in &args.attributes {
        event["Details"]["ContactData"]["Attributes"][name] = Value::String(value.clone());
    }
    let answer = aws_sdk_lambda::Client::new(&local_aws::sdk_config(&lambda_server.url()))
        .invoke()
        .function_name("StartLCA")
        .payload(aws_sdk_lambda::primitives::Blob::new(event.to_string()))
        .send()
        .await
        .context("invoking StartLCA in the local Lambda")?;
    let answer: Value = answer
        .payload
        .as_ref()
        .and_then(|p| serde_json::from_slice(p.as_ref()).ok())
        .unwrap_or(Value::Null);
    eprintln!("lca-kvs demo: contact flow invoked StartLCA: {answer}");
    if answer["status"] != "STARTED" {
        lambda.shutdown();
        return Err(NotStarted(answer.to_string()).into());
    }

    let played_at_wall = SystemTime::now() - played_at.elapsed();
    let mut view = TranscriptView::new(args.json, args.speed);
    let budget = Duration::from_secs_f64(seconds.unwrap_or(3600.0) / args.speed.max(0.05) + 180.0);
    let mut ended_at: Option<Instant> = None;
    let mut player = Some(player);
    let outcome = loop {
        // The call's audio stopping early (PutMedia refused a fragment) ends the demo.
        if let Some(done) = player.take_if(|p| p.is_finished())
            && let Ok(Err(error)) = done.await
        {
            break Err(anyhow::anyhow!("the call's audio stopped: {error}"));
        }
        for record in backend.feed.poll().await? {
            // Seconds from the start of play to the record's arrival on Kinesis.
            let arrived_s = record
                .arrived
                .and_then(|at| at.duration_since(played_at_wall).ok())
                .unwrap_or_else(|| played_at.elapsed())
                .as_secs_f64();
            let event: Value = serde_json::from_slice(&record.data).unwrap_or(Value::Null);
            view.show(&event, arrived_s)?;
        }
        if view.recording_url.is_some() || (view.ended && backend.recordings.is_err()) {
            break Ok(());
        }
        // Lambda retries a failed Event invocation, but the demo stops at the first failure:
        // it names the cause at once instead of after the retries and the budget.
        if let Some(failure) = lambda.failures("CallTranscriber").first() {
            break Err(anyhow::anyhow!(
                "the call transcriber failed: {}: {}\n{}",
                failure.error_type,
                failure.message,
                log_tail(&log_file, 20)
            ));
        }
        if view.ended && ended_at.is_none() {
            ended_at = Some(Instant::now());
        }
        // The recording URL follows END once the WAV is joined in S3.
        if ended_at.is_some_and(|at| at.elapsed() > Duration::from_secs(30)) {
            break Ok(());
        }
        if played_at.elapsed() > budget {
            break Err(anyhow::anyhow!(
                "the call did not end within {:.0} s (no END on Kinesis)\n{}",
                budget.as_secs_f64(),
                log_tail(&log_file, 20)
            ));
        }
        tokio::time::sleep(backend.poll_every).await;
    };
    view.finish_line()?;
    lambda.shutdown();
    if let Some(player) = player {
        player.abort();
    }
    outcome?;
    if !view.started {
        bail!("no START on Kinesis");
    }

    let recording = match (
        &view.recording_url,
        &args.recording_out,
        &backend.recordings,
    ) {
        (Some(url), Some(out), Ok(recordings)) => {
            let bytes = recordings.fetch(url).await?;
            std::fs::write(out, &bytes)
                .with_context(|| format!("{}: cannot write", out.display()))?;
            format!("{url} (copied to {})", out.display())
        }
        (Some(url), _, _) => format!("{url} (--recording-out FILE.wav copies it here)"),
        (None, _, Ok(_)) => "none (no ADD_S3_RECORDING_URL within 30 s of END)".to_string(),
        (None, _, Err(why)) => format!("none ({why})"),
    };
    view.summary(call.sample.as_ref(), engine_name, &recording);
    let log = std::fs::read_to_string(&log_file)
        .with_context(|| format!("{}: cannot read the functions' logs", log_file.display()))?;
    for line in operations_summary(&call_metrics::Totals::read(&log, call_metrics::NAMESPACE)) {
        eprintln!("  {line}");
    }
    eprintln!(
        "  logs:       {} (every function's JSON log lines and metrics lines)",
        log_file.display()
    );
    Ok(())
}

/// The last `lines` lines of the functions' log, under a line naming the file: what a failure
/// message shows of what the functions said.
fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    format!(
        "the functions' log ({}), last lines:\n{tail}",
        path.display()
    )
}

/// What the functions' metrics lines say about the run: invocations, Transcribe, Kinesis,
/// lag. The same figures an operator sees on the stack's dashboard.
fn operations_summary(totals: &call_metrics::Totals) -> Vec<String> {
    use call_metrics::Metric;
    let outcomes: Vec<String> = totals
        .by_dimension(Metric::Invocations)
        .into_iter()
        .map(|(outcome, n)| format!("{n:.0} {outcome}"))
        .collect();
    let mut lines = vec![format!(
        "functions:  {:.0} transcriber invocations ({}); Transcribe reconnects {:.0}, waited for capacity {:.1} s; Kinesis: {:.0} events, {:.0} retries",
        totals.sum(Metric::Invocations),
        if outcomes.is_empty() {
            "none".to_string()
        } else {
            outcomes.join(", ")
        },
        totals.sum(Metric::TranscribeReconnects),
        totals.sum(Metric::TranscribeCapacityWait) / 1000.0,
        totals.sum(Metric::EventsPublished),
        totals.sum(Metric::KinesisRetries),
    )];
    let mut lags = totals.values(Metric::TranscriptLag).to_vec();
    lags.sort_by(f64::total_cmp);
    if let (Some(median), Some(max)) = (lags.get(lags.len() / 2), lags.last()) {
        lines.push(format!(
            "lag:        audio from KVS to its final segment on Kinesis: median {median:.0} ms, max {max:.0} ms; reading behind live at most {:.0} ms",
            totals.max(Metric::KvsBehindLive).unwrap_or(0.0)
        ));
    }
    let kvs_errors: Vec<String> = totals
        .by_dimension(Metric::KvsErrors)
        .into_iter()
        .map(|(id, n)| format!("{id} ×{n:.0}"))
        .collect();
    if !kvs_errors.is_empty() {
        lines.push(format!(
            "kvs:        GetMedia error chunks by id: {}",
            kvs_errors.join(", ")
        ));
    }
    for error in &totals.invalid {
        lines.push(format!("invalid metrics line: {error}"));
    }
    lines
}

/// The services the demo's functions use besides the local KVS and Lambda: where their LCA
/// events go (read back by the demo), whether and where the call is recorded, and the
/// functions' environment for them.
struct Backend {
    feed: Feed,
    /// Where the call is recorded, or why it is not (with the fix).
    recordings: Result<Recordings, &'static str>,
    environment: Vec<(&'static str, String)>,
    /// How often the events are read (GetRecords is limited per shard, and LCA reads too).
    poll_every: Duration,
    /// Where the events go, for the banner.
    description: String,
    /// Kept running while the demo runs.
    _moto: Option<MotoServer>,
}

/// Where the demo reads the call's LCA events from.
enum Feed {
    /// A Kinesis data stream: moto's, or the user's with `--aws`.
    Stream(KinesisTail),
    /// The embedded stand-in, without moto.
    Embedded {
        recorder: KinesisRecorder,
        read: usize,
        _server: Server,
    },
}

impl Feed {
    /// The call's events that arrived since the last poll.
    async fn poll(&mut self) -> Result<Vec<TailRecord>> {
        match self {
            Self::Stream(tail) => Ok(tail.poll().await?),
            Self::Embedded { recorder, read, .. } => {
                let records = recorder
                    .records(KINESIS_STREAM, *read)
                    .context("the embedded Kinesis lost the demo's stream")?;
                *read += records.len();
                Ok(records
                    .into_iter()
                    .map(|record| TailRecord {
                        data: record.data,
                        arrived: Some(record.arrived),
                    })
                    .collect())
            }
        }
    }
}

/// The bucket the transcriber records the call to.
struct Recordings {
    s3: aws_sdk_s3::Client,
    bucket: String,
}

impl Recordings {
    /// The recording at `url` (`https://BUCKET.s3.REGION.amazonaws.com/KEY`, as LCA gets it).
    async fn fetch(&self, url: &str) -> Result<Bytes> {
        let key =
            recording_key(url).with_context(|| format!("recording URL {url} names no object"))?;
        let object = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("reading {key} from bucket {}", self.bucket))?;
        Ok(object
            .body
            .collect()
            .await
            .with_context(|| format!("reading {key} from bucket {}", self.bucket))?
            .into_bytes())
    }
}

impl Backend {
    /// moto with the demo's stream, bucket and lease table; without moto, the embedded
    /// Kinesis stand-in alone (the transcriber then neither records nor leases).
    async fn local(contact_id: &str) -> Result<Self> {
        let moto = match MotoServer::start() {
            Ok(moto) => moto,
            Err(MotoError::NotInstalled) => {
                eprintln!(
                    "lca-kvs demo: moto server is not installed: LCA events go to an embedded Kinesis stand-in, and the call is neither recorded (no local S3) nor leased (no local DynamoDB); `bash scripts/demo.sh` installs moto"
                );
                let recorder = KinesisRecorder::new();
                recorder.create_stream(KINESIS_STREAM);
                let server = recorder
                    .serve(0)
                    .await
                    .context("cannot start the embedded Kinesis on loopback")?;
                return Ok(Self {
                    environment: [
                        ("AWS_ENDPOINT_URL_KINESIS", server.url()),
                        ("KINESIS_STREAM_NAME", KINESIS_STREAM.to_string()),
                    ]
                    .into_iter()
                    .chain(local_credentials())
                    .collect(),
                    description: format!("the embedded Kinesis stand-in at {}", server.url()),
                    feed: Feed::Embedded {
                        recorder,
                        read: 0,
                        _server: server,
                    },
                    recordings: Err(
                        "there is no local S3 without moto server: run `bash scripts/demo.sh`, which installs it, or `pip install \"moto[server]==5.1.22\"`",
                    ),
                    poll_every: Duration::from_millis(100),
                    _moto: None,
                });
            }
            Err(error) => return Err(error.into()),
        };
        let sdk = local_aws::sdk_config(moto.url());
        let kinesis = local_aws::moto::create_kinesis_stream(moto.url(), KINESIS_STREAM)
            .await
            .map_err(anyhow::Error::msg)?;
        let s3 = aws_sdk_s3_client(&sdk);
        s3.create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .context("creating the recordings bucket in moto")?;
        call_transcriber::lease::CallLease::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            LEASE_TABLE.to_string(),
            Duration::from_secs(30),
        )
        .create_table()
        .await
        .context("creating the lease table in moto")?;
        Ok(Self {
            feed: Feed::Stream(KinesisTail::start(kinesis, KINESIS_STREAM, contact_id).await?),
            recordings: Ok(Recordings {
                s3,
                bucket: BUCKET.to_string(),
            }),
            environment: [
                ("AWS_ENDPOINT_URL_KINESIS", moto.url().to_string()),
                ("AWS_ENDPOINT_URL_S3", moto.url().to_string()),
                ("AWS_ENDPOINT_URL_DYNAMODB", moto.url().to_string()),
                ("KINESIS_STREAM_NAME", KINESIS_STREAM.to_string()),
                ("OUTPUT_BUCKET", BUCKET.to_string()),
                ("TRANSCRIBER_CALL_EVENT_TABLE_NAME", LEASE_TABLE.to_string()),
            ]
            .into_iter()
            .chain(local_credentials())
            .collect(),
            poll_every: Duration::from_millis(100),
            description: format!("Kinesis stream {KINESIS_STREAM} in moto server"),
            _moto: Some(moto),
        })
    }

    /// The user's account: their LCA stream (KINESIS_STREAM_NAME) and, with OUTPUT_BUCKET,
    /// their bucket. The functions inherit the user's environment (credentials, region, and
    /// the transcriber's variables) and get no endpoints for these services.
    async fn aws(sdk: &aws_config::SdkConfig, stream: String, contact_id: &str) -> Result<Self> {
        let Some(region) = sdk.region().map(|r| r.to_string()) else {
            bail!("--aws: no AWS region configured: set AWS_REGION (your LCA stack's region)");
        };
        let tail = KinesisTail::start(aws_sdk_kinesis::Client::new(sdk), &stream, contact_id)
            .await
            .context("--aws: your credentials must allow kinesis:ListShards, GetShardIterator and GetRecords on the stream")?;
        let recordings = std::env::var("OUTPUT_BUCKET")
            .ok()
            .filter(|b| !b.is_empty())
            .map(|bucket| Recordings {
                s3: aws_sdk_s3::Client::new(sdk),
                bucket,
            })
            .ok_or("set OUTPUT_BUCKET to a bucket of yours to record the call");
        Ok(Self {
            feed: Feed::Stream(tail),
            recordings,
            environment: Vec::new(),
            // GetRecords allows 5 calls a second per shard, shared with LCA's own consumers.
            poll_every: Duration::from_secs(1),
            description: format!("your Kinesis stream {stream} in {region}"),
            _moto: None,
        })
    }
}

/// The user's LCA stream, for `--aws`: KINESIS_STREAM_NAME.
fn aws_stream_name() -> Result<String> {
    match std::env::var("KINESIS_STREAM_NAME") {
        Ok(name) if !name.is_empty() => Ok(name),
        _ => bail!(
            "--aws publishes the call's LCA events to your LCA stack's Kinesis stream: set KINESIS_STREAM_NAME to its name (the stack's CallDataStream output)"
        ),
    }
}

/// The dummy credentials of the local services.
fn local_credentials() -> [(&'static str, String); 3] {
    [
        ("AWS_ACCESS_KEY_ID", "AKIDLOCAL".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "local".to_string()),
        ("AWS_SESSION_TOKEN", String::new()),
    ]
}

fn aws_sdk_s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .build(),
    )
}

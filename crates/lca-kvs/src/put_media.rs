//! `lca-kvs put-media`: a capture or Connect-shaped MKV sent into any Kinesis video stream,
//! local or real, with PutMedia, printing the acknowledgements' progress.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use kvs_media::{Ack, AckEventType, EncoderOptions};
use kvs_producer::{
    MAX_FRAGMENTS_PER_SECOND, Progress, PutMediaError, PutMediaOptions, PutMediaSummary, StreamRef,
};

/// Options of `lca-kvs put-media`.
#[derive(Args, Debug)]
pub struct PutMediaArgs {
    /// The call to send: a capture (`lca-kvs capture`) or any Connect-shaped MKV (GetMedia
    /// chunks, one per fragment).
    pub file: PathBuf,
    /// The stream to write.
    #[arg(long, value_name = "ARN", required_unless_present = "stream_name")]
    pub stream_arn: Option<String>,
    /// Or the stream's name.
    #[arg(long, value_name = "NAME", conflicts_with = "stream_arn")]
    pub stream_name: Option<String>,
    /// With --stream-name: create the stream (audio, 24 h retention, as Connect's) when it
    /// does not exist.
    #[arg(long, requires = "stream_name")]
    pub create: bool,
    /// 1 sends each fragment when it comes due (a live call), 2 twice as fast; 0 as fast as
    /// PutMedia allows (5 fragments per second per stream).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Send the call as happening now: every fragment moved in time so the first starts at
    /// the moment of sending.
    #[arg(long)]
    pub now: bool,
    /// Re-tag every fragment with this ContactId (a recorded call sent as a fresh contact).
    #[arg(long, value_name = "ID")]
    pub contact_id: Option<String>,
    /// Fail when fragments await acknowledgement and none arrives for this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub ack_timeout: f64,
}

impl PutMediaArgs {
    fn stream(&self) -> StreamRef {
        match (&self.stream_arn, &self.stream_name) {
            (Some(arn), _) => StreamRef::Arn(arn.clone()),
            (None, Some(name)) => StreamRef::Name(name.clone()),
            (None, None) => unreachable!("clap requires one of them"),
        }
    }
}

/// The chunks of a capture file to send: [`crate::read_capture`], which must hold at least
/// one fragment.
pub fn read_chunks(path: &std::path::Path) -> Result<Vec<Bytes>> {
    let chunks = crate::read_capture(path)?;
    if chunks.is_empty() {
        bail!("{}: holds no fragment", path.display());
    }
    Ok(chunks)
}

/// A call being sent with PutMedia in the background, once KVS has stored its first
/// fragment (the StartFragmentNumber a contact-flow event carries).
pub struct LiveSend {
    /// The first acknowledgement that names a stored fragment (RECEIVED or PERSISTED).
    pub first: Ack,
    /// The progress from then on.
    pub progress: tokio::sync::mpsc::UnboundedReceiver<Progress>,
    /// The sending, until every fragment is stored.
    pub task: tokio::task::JoinHandle<Result<PutMediaSummary, PutMediaError>>,
}

/// Starts sending `chunks` into `stream_arn` and waits for the first stored fragment; the
/// error that stopped it before that (`None`: none was stored, and no error said why).
pub async fn send_live(
    sdk: &aws_config::SdkConfig,
    stream_arn: &str,
    chunks: Vec<Bytes>,
    options: PutMediaOptions,
) -> Result<LiveSend, Option<PutMediaError>> {
    let (progress_tx, mut progress) = tokio::sync::mpsc::unbounded_channel();
    let (sdk, stream) = (sdk.clone(), StreamRef::Arn(stream_arn.to_string()));
    let task = tokio::spawn(async move {
        kvs_producer::put_media(&sdk, &stream, &chunks, &options, |p| {
            let _ = progress_tx.send(p);
        })
        .await
    });
    loop {
        match progress.recv().await {
            Some(Progress::Acked { ack, .. })
                if matches!(
                    ack.event_type,
                    AckEventType::Received | AckEventType::Persisted
                ) && ack.fragment_number.is_some() =>
            {
                return Ok(LiveSend {
                    first: ack,
                    progress,
                    task,
                });
            }
            Some(_) => {}
            None => return Err(task.await.ok().and_then(Result::err)),
        }
    }
}

/// Runs `put-media`: 0 when every fragment is stored; 1 when KVS refused the request or a
/// fragment; 2 when the input or the setup is unusable.
pub fn run(args: PutMediaArgs) -> Result<ExitCode> {
    if !(args.speed >= 0.0 && args.speed.is_finite()) {
        bail!("--speed {}: must be 0 or a positive number", args.speed);
    }
    if !(args.ack_timeout > 0.0 && args.ack_timeout.is_finite()) {
        bail!(
            "--ack-timeout {}: must be a positive number of seconds",
            args.ack_timeout
        );
    }
    let chunks = read_chunks(&args.file)?;
    crate::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let options = PutMediaOptions {
        speed: args.speed,
        max_fragments_per_second: MAX_FRAGMENTS_PER_SECOND,
        encoder: EncoderOptions {
            start_at_ms: args.now.then(aws_edge::now_ms),
            contact_id: args.contact_id.clone(),
        },
        ack_timeout: Duration::from_secs_f64(args.ack_timeout),
    };
    let file = args.file.display().to_string();
    let result = runtime.block_on(async {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let stream = match (&args.stream_name, args.create) {
            (Some(name), true) => {
                StreamRef::Arn(kvs_producer::ensure_stream(&sdk, name, 24).await?)
            }
            _ => args.stream(),
        };
        send(&sdk, &stream, &chunks, &options).await
    });
    match result {
        Ok(summary) => {
            report(&file, &summary);
            Ok(ExitCode::SUCCESS)
        }
        Err(error @ (PutMediaError::Media(_) | PutMediaError::Empty)) => {
            eprintln!("lca-kvs: {file}: {error}");
            Ok(ExitCode::from(2))
        }
        Err(error) => {
            eprintln!("lca-kvs: {error}");
            if let Some(hint) = hint(&error) {
                eprintln!("lca-kvs: {hint}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// Sends the call, showing progress on a terminal and one line per 10 fragments otherwise.
pub async fn send(
    sdk: &aws_config::SdkConfig,
    stream: &StreamRef,
    chunks: &[Bytes],
    options: &PutMediaOptions,
) -> Result<PutMediaSummary, PutMediaError> {
    let bar = crate::progress_bar(
        Some(chunks.len() as u64),
        "{spinner} {bar:30} {pos}/{len} fragments stored {msg}",
    );
    let mut sent = 0usize;
    let mut stored = 0usize;
    let summary =
        kvs_producer::put_media(sdk, stream, chunks, options, |progress| match progress {
            Progress::Sent { .. } => {
                sent += 1;
                bar.set_message(format!("({sent} sent)"));
            }
            Progress::Acked { ack, .. } if ack.event_type == AckEventType::Persisted => {
                stored += 1;
                bar.set_position(stored as u64);
                if bar.is_hidden() && stored.is_multiple_of(10) {
                    eprintln!("lca-kvs: {stored} of {} fragments stored", chunks.len());
                }
            }
            Progress::Acked { .. } | Progress::Idle => {}
        })
        .await;
    bar.finish_and_clear();
    summary
}

/// The summary: a line on stderr, and a JSON object on stdout for scripts.
fn report(file: &str, summary: &PutMediaSummary) {
    let first = summary
        .fragment_numbers
        .first()
        .cloned()
        .unwrap_or_default();
    let last = summary.fragment_numbers.last().cloned().unwrap_or_default();
    let seconds = match (summary.timecodes_ms.first(), summary.timecodes_ms.last()) {
        (Some(a), Some(b)) => (b - a) as f64 / 1000.0,
        _ => 0.0,
    };
    eprintln!(
        "lca-kvs: {file}: {} fragments stored in {} ({} persisted), {seconds:.1} s from the first to the last; start fragment {first}",
        summary.fragment_numbers.len(),
        summary.stream,
        summary.persisted,
    );
    println!(
        "{}",
        serde_json::json!({
            "stream": summary.stream.to_string(),
            "fragments": summary.fragment_numbers.len(),
            "persisted": summary.persisted,
            "first_fragment_number": first,
            "last_fragment_number": last,
            "start_timestamp_ms": summary.timecodes_ms.first(),
            "fragment_numbers": summary.fragment_numbers,
        })
    );
}

/// What to check for an error a user can fix.
pub fn hint(error: &PutMediaError) -> Option<&'static str> {
    match error {
        PutMediaError::Refused { error_type, .. } => Some(match error_type.as_str() {
            "ResourceNotFoundException" => {
                "no such stream: check the ARN or name and the region, or create it (--stream-name NAME --create)"
            }
            "NotAuthorizedException" | "AccessDeniedException" => {
                "the credentials may not call kinesisvideo:PutMedia on this stream"
            }
            "ConnectionLimitExceededException" => {
                "another PutMedia session is writing this stream: wait for it to end"
            }
            "ClientLimitExceededException" => "throttled: try again in a few seconds",
            _ => return None,
        }),
        PutMediaError::Rejected { error_id, .. } if (4500..=4506).contains(error_id) => Some(
            "the stream's KMS key refuses this caller: check the key policy and kms:GenerateDataKey",
        ),
        PutMediaError::Rejected { error_id: 4007, .. } => Some(
            "KVS refused the producer timestamps: send the call as happening now and at its own pace (--now --speed 1), so that no fragment is stamped far in the past or ahead of the clock",
        ),
        PutMediaError::ControlPlane { operation, .. } if *operation == "GetDataEndpoint" => Some(
            "check the stream name or ARN, the region and kinesisvideo:GetDataEndpoint permission",
        ),
        _ => None,
    }
}

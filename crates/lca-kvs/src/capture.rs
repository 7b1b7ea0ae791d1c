//! `lca-kvs capture`, and the `--stream-arn` input of `extract` and `inspect`: one contact's
//! fragments read live from its Kinesis Video stream with GetMedia, as the stream carried
//! them, through the call transcriber's own reader (the same start, resume and contact rules).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use call_transcriber::source::{
    self, EndReason, KvsClients, KvsStreamError, SourceError, SourceEvent, SourceOptions, StartAt,
};
use clap::Args;

/// Where a contact is read from its stream (shared by `capture`, `extract` and `inspect`).
#[derive(Args, Clone, Debug)]
pub struct StreamArgs {
    /// Read the contact from this Kinesis Video stream with GetMedia (the contact's
    /// $.MediaStreams.Customer.Audio.StreamARN), with the AWS CLI's credentials and region,
    /// or the endpoints `lca-kvs local` exports.
    #[arg(long, value_name = "ARN")]
    pub stream_arn: Option<String>,
    /// The contact's first fragment: its $.MediaStreams.Customer.Audio.StartFragmentNumber.
    #[arg(
        long,
        value_name = "NUMBER",
        requires = "stream_arn",
        conflicts_with = "start_time"
    )]
    pub start_fragment: Option<String>,
    /// Or a time in the contact, ms since the epoch (its
    /// $.MediaStreams.Customer.Audio.StartTimestamp): reading starts with the fragment whose
    /// producer time holds it.
    #[arg(long, value_name = "MS", requires = "stream_arn")]
    pub start_time: Option<u64>,
    /// The contact is over after this many seconds without a new fragment.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 15.0,
        requires = "stream_arn"
    )]
    pub idle_timeout: f64,
}

impl StreamArgs {
    /// The stream, or an error naming the missing option.
    fn stream(&self) -> Result<&str> {
        self.stream_arn
            .as_deref()
            .context("--stream-arn is required: the contact's Kinesis Video stream")
    }

    /// Where reading starts.
    fn start(&self) -> Result<StartAt> {
        match (&self.start_fragment, self.start_time) {
            (Some(number), _) => Ok(StartAt::Fragment(number.clone())),
            (None, Some(ms)) => Ok(StartAt::ProducerTime(ms)),
            (None, None) => bail!(
                "--start-fragment or --start-time is required: the contact's StartFragmentNumber or StartTimestamp (README, \"Investigate a call\")"
            ),
        }
    }

    fn idle_timeout(&self) -> Result<Duration> {
        Duration::try_from_secs_f64(self.idle_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| {
                format!(
                    "--idle-timeout {}: expected a positive number of seconds",
                    self.idle_timeout
                )
            })
    }
}

/// Why a capture stopped.
#[derive(Debug)]
pub enum CaptureStop {
    /// The stream went on with another contact (Connect reused it).
    OtherContact(String),
    /// No new fragment for the idle timeout.
    Idle(Duration),
    /// The stream no longer exists.
    StreamEnded,
    /// The operator pressed Ctrl-C.
    Interrupted,
    /// KVS sent an error chunk that retrying does not fix.
    Unreadable(KvsStreamError),
    /// Reading failed (GetMedia kept failing, or no data endpoint).
    Failed(SourceError),
}

/// What a capture read: every fragment it passed on is whole.
#[derive(Debug)]
pub struct CaptureSummary {
    /// The stream read.
    pub stream_arn: String,
    /// The contact captured.
    pub contact_id: String,
    /// Fragments passed on.
    pub fragments: u64,
    /// Audio bytes of those fragments per channel (caller, agent), s16le at 8 kHz.
    pub audio_bytes: [u64; 2],
    /// The first and last fragment numbers passed on.
    pub fragment_numbers: Option<(String, String)>,
    /// Why it stopped.
    pub stop: CaptureStop,
}

impl CaptureSummary {
    /// Seconds of audio captured (the longer channel).
    pub fn seconds(&self) -> f64 {
        self.audio_bytes[0].max(self.audio_bytes[1]) as f64 / 16_000.0
    }

    /// One line on what was read and why reading stopped.
    pub fn describe(&self) -> String {
        let why = match &self.stop {
            CaptureStop::OtherContact(next) => format!("the stream went on with contact {next}"),
            CaptureStop::Idle(idle) => {
                format!("no new fragment for {:.1} s", idle.as_secs_f64())
            }
            CaptureStop::StreamEnded => "the stream no longer exists".to_string(),
            CaptureStop::Interrupted => "interrupted (Ctrl-C)".to_string(),
            CaptureStop::Unreadable(error) => error.to_string(),
            CaptureStop::Failed(error) => error.to_string(),
        };
        let range = self
            .fragment_numbers
            .as_ref()
            .map(|(first, last)| format!(", fragments {first} to {last}"))
            .unwrap_or_default();
        format!(
            "read {} fragments ({:.2} s of audio) of contact {} from {}{range}; stopped: {why}",
            self.fragments,
            self.seconds(),
            self.contact_id,
            self.stream_arn
        )
    }

    /// Whether nothing of the contact was read because the stream carries another there.
    pub fn found_another_contact(&self) -> Option<&str> {
        match &self.stop {
            CaptureStop::OtherContact(other) if self.fragments == 0 => Some(other),
            _ => None,
        }
    }
}

/// The ContactId of the first fragment read from `start` on `stream` (waiting at most
/// `idle`), or an error saying none came, ending with `hint`: what the operator can give.
pub(crate) async fn first_contact(
    clients: &KvsClients,
    stream: &str,
    start: &StartAt,
    idle: Duration,
    hint: &str,
) -> Result<String> {
    source::first_contact_id(clients, stream, start.clone(), idle)
        .await
        .with_context(|| format!("reading the first ContactId on {stream}"))?
        .with_context(|| {
            format!(
                "{stream}: no fragment with a ContactId within {:.1} s of the start; {hint}",
                idle.as_secs_f64()
            )
        })
}

/// Reads the contact's fragments from the stream, giving each one's GetMedia bytes to
/// `on_fragment` in order as soon as it is whole, until the stream goes on with another
/// contact, stays idle, ends, fails, or Ctrl-C.
/// `contact_id` defaults to the ContactId of the first fragment read.
pub fn capture(
    args: &StreamArgs,
    contact_id: Option<String>,
    on_fragment: impl FnMut(&[u8]) -> Result<()>,
) -> Result<CaptureSummary> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(read_contact(args, contact_id, on_fragment))
}

async fn read_contact(
    args: &StreamArgs,
    contact_id: Option<String>,
    mut on_fragment: impl FnMut(&[u8]) -> Result<()>,
) -> Result<CaptureSummary> {
    let stream = args.stream()?.to_string();
    let start = args.start()?;
    let idle = args.idle_timeout()?;
    // Ctrl-C (SIGINT) ends the capture cleanly from here on: the handler is in place as soon
    // as it is created, before any request.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot watch for Ctrl-C")?;
    let interrupted = sigint.recv();
    tokio::pin!(interrupted);
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let clients = KvsClients::new(&sdk);
    let mut summary = CaptureSummary {
        stream_arn: stream.clone(),
        contact_id: contact_id.clone().unwrap_or_default(),
        fragments: 0,
        audio_bytes: [0; 2],
        fragment_numbers: None,
        stop: CaptureStop::Interrupted,
    };
    let contact_id = match contact_id {
        Some(id) => id,
        None => {
            tokio::select! {
                first = first_contact(&clients, &stream, &start, idle, "check --start-fragment / --start-time, or pass --contact-id") => first?,
                _ = &mut interrupted => return Ok(summary),
            }
        }
    };
    summary.contact_id = contact_id.clone();
    let mut options = SourceOptions::new(&stream, &contact_id, start, idle);
    options.keep_chunks = true;
    let mut events = source::spawn(clients, options);
    let mut chunk = None;
    let mut fragment_audio = [0u64; 2];
    summary.stop = loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = &mut interrupted => break CaptureStop::Interrupted,
        };
        let Some(event) = event else {
            bail!("{stream}: the stream reader stopped without a reason");
        };
        match event {
            Ok(SourceEvent::Audio { channel, pcm, .. }) => {
                fragment_audio[channel as usize] += pcm.len() as u64;
            }
            Ok(SourceEvent::Chunk {
                fragment_number,
                bytes,
            }) => chunk = Some((fragment_number, bytes)),
            Ok(SourceEvent::FragmentDone {
                fragment_number, ..
            }) => {
                let Some((_, bytes)) = chunk.take().filter(|(n, _)| *n == fragment_number) else {
                    bail!(
                        "{stream}: fragment {fragment_number} was read but its bytes were not kept, so the capture would miss it; the {} fragments before it are whole",
                        summary.fragments
                    );
                };
                summary.fragments += 1;
                for (total, fragment) in summary.audio_bytes.iter_mut().zip(&mut fragment_audio) {
                    *total += std::mem::take(fragment);
                }
                let first = summary
                    .fragment_numbers
                    .take()
                    .map_or_else(|| fragment_number.clone(), |(first, _)| first);
                summary.fragment_numbers = Some((first, fragment_number));
                on_fragment(&bytes)?;
            }
            Ok(SourceEvent::Resumed { .. }) => {}
            Ok(SourceEvent::End(EndReason::OtherContact(next))) => {
                break CaptureStop::OtherContact(next);
            }
            Ok(SourceEvent::End(EndReason::Idle)) => break CaptureStop::Idle(idle),
            Ok(SourceEvent::End(EndReason::StreamEnded | EndReason::MaxCallDuration)) => {
                break CaptureStop::StreamEnded;
            }
            Err(SourceError::Stream(error)) => break CaptureStop::Unreadable(error),
            Err(error) => break CaptureStop::Failed(error),
        }
    };
    Ok(summary)
}

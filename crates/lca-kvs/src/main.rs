//! `lca-kvs`: Amazon Connect media streams and the transcriber, with or without an AWS account.
//! `inspect`, `extract` and `capture` read a contact's audio (from a capture file or its
//! stream); `put-media` sends a call into a stream with PutMedia; `transcribe` transcribes one
//! call from its stream to LCA events in the foreground; `local` serves the local stand-ins;
//! `demo` plays a call into local KVS and runs StartLCA and the transcriber on it under the
//! local Lambda; `try-stack` checks a deployed stack end to end; `function NAME` (hidden)
//! serves one of the functions under the Lambda Runtime API, as the demo runs them.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use call_audio::extract::{CallExtractor, ExtractStop};
use call_audio::{AssemblerConfig, CONNECT_SAMPLE_RATE, WavWriter};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kvs_media::{FragmentReader, MediaEvent, ReadError};
use lca_kvs::inspect::Inspector;

use crate::capture::{CaptureStop, CaptureSummary, StreamArgs};

mod call_run;
mod capture;
#[cfg(feature = "stand-ins")]
mod demo;
#[cfg(feature = "stand-ins")]
mod local;
mod put_media;
mod stack_lookup;
mod transcribe;
mod try_stack;

#[derive(Parser)]
#[command(
    name = "lca-kvs",
    version,
    about = "Amazon Connect media streams for Live Call Analytics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One line per KVS fragment: number, timestamps, ContactId, per-track blocks and bytes.
    Inspect {
        /// A GetMedia capture (concatenated MKV fragments); or read a contact from its stream
        /// with --stream-arn.
        #[arg(required_unless_present = "stream_arn", conflicts_with = "stream_arn")]
        file: Option<PathBuf>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// With --stream-arn: the contact to read (default: the first ContactId read).
        #[arg(long, requires = "stream_arn")]
        contact_id: Option<String>,
        #[command(flatten)]
        stream: StreamArgs,
    },
    /// Write a contact's audio as a stereo WAV (channel 0 caller, channel 1 agent, 8 kHz).
    Extract {
        /// A GetMedia capture (concatenated MKV fragments); or read the contact from its
        /// stream with --stream-arn.
        #[arg(required_unless_present = "stream_arn", conflicts_with = "stream_arn")]
        file: Option<PathBuf>,
        /// Output WAV file.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// The contact to extract (default: the first ContactId read).
        #[arg(long)]
        contact_id: Option<String>,
        #[command(flatten)]
        stream: StreamArgs,
    },
    /// Save a contact as its Kinesis Video stream carries it (GetMedia bytes, one whole
    /// fragment at a time) from its first fragment until the stream goes on with another
    /// contact, stays idle, or Ctrl-C. The file replays with `demo --mkv`, `extract`,
    /// `inspect` and `local --stream`.
    Capture {
        #[command(flatten)]
        stream: StreamArgs,
        /// The contact to save (default: the ContactId of the first fragment read).
        #[arg(long)]
        contact_id: Option<String>,
        /// Output file (MKV: the GetMedia bytes of the contact's fragments).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// Send a call (a capture or any Connect-shaped MKV) into a Kinesis video stream, local
    /// or real, with PutMedia, at real-time pace or faster; prints the acknowledgements'
    /// progress, and a JSON summary (fragment numbers) on stdout.
    PutMedia(put_media::PutMediaArgs),
    /// Check a deployed stack end to end without a phone: a call sent with PutMedia into a
    /// stream named with the stack's prefix, the deployed StartLCA invoked as a contact flow
    /// would, the transcript followed on the LCA Kinesis stream, then a checklist with the
    /// likely fix of each failed step. Exit 0 only when every step passed.
    TryStack(try_stack::TryStackArgs),
    /// Local stand-ins for AWS (Kinesis Video Streams, Transcribe Streaming, Lambda; Kinesis,
    /// S3 and DynamoDB through moto server when installed) on loopback: prints
    /// `export AWS_ENDPOINT_URL_<SERVICE>=<url>` lines, then `ready`, and serves until
    /// interrupted. Each --stream plays its capture live from start-up.
    #[cfg(feature = "stand-ins")]
    Local(local::LocalArgs),
    /// Transcribe one call from its Kinesis Video stream to LCA events on Kinesis, in the
    /// foreground, configured like the Lambda function by environment variables
    /// (KINESIS_STREAM_NAME, TRANSCRIBE_*, ...; AWS_ENDPOINT_URL_* for local endpoints).
    Transcribe(transcribe::TranscribeArgs),
    /// A whole Connect call, transcribed locally: the sample call (or --mkv capture) plays
    /// into local KVS, StartLCA and the call transcriber run under the local Lambda, and the
    /// transcript appears as it is spoken. No AWS account.
    #[cfg(feature = "stand-ins")]
    Demo(demo::DemoArgs),
    /// Serve one of the Lambda functions under the Runtime API (the demo runs its functions
    /// this way): start-lca or call-transcriber.
    #[command(hide = true)]
    Function {
        /// start-lca or call-transcriber.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect {
            file,
            json,
            contact_id,
            stream,
        } => inspect(&MediaInput::new(file, stream, contact_id.clone()), json),
        Command::Extract {
            file,
            output,
            contact_id,
            stream,
        } => extract(
            &MediaInput::new(file, stream, contact_id.clone()),
            &output,
            contact_id,
        ),
        Command::Capture {
            stream,
            contact_id,
            output,
        } => capture_to_file(&stream, contact_id, &output),
        #[cfg(feature = "stand-ins")]
        Command::Demo(args) => demo::run(args).map(|()| ExitCode::SUCCESS),
        Command::Function { name } => call_run::serve_function(&name).map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "stand-ins")]
        Command::Local(args) => local::run(args).map(|()| ExitCode::SUCCESS),
        Command::Transcribe(args) => transcribe::run(args),
        Command::PutMedia(args) => put_media::run(args),
        Command::TryStack(args) => try_stack::run(args),
    };
    match result {
        Ok(code) => code,
        // The reader of our output went away (`| head`): not an error of ours.
        Err(error)
            if error.chain().any(|cause| {
                let kind = cause
                    .downcast_ref::<std::io::Error>()
                    .map(std::io::Error::kind)
                    .or_else(|| {
                        cause
                            .downcast_ref::<serde_json::Error>()
                            .and_then(serde_json::Error::io_error_kind)
                    });
                kind == Some(std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("lca-kvs: {error:#}");
            // StartLCA's answer to the demo's contact (a refused attribute): exit 1, as a
            // flow's ERROR branch; 2 for the demo itself failing.
            #[cfg(feature = "stand-ins")]
            if error.downcast_ref::<demo::NotStarted>().is_some() {
                return ExitCode::from(1);
            }
            ExitCode::from(2)
        }
    }
}

/// Where a command's media comes from.
enum MediaInput {
    /// A GetMedia capture file.
    File(PathBuf),
    /// A contact read live from its stream.
    Stream {
        args: StreamArgs,
        contact_id: Option<String>,
    },
}

impl MediaInput {
    fn new(file: Option<PathBuf>, args: StreamArgs, contact_id: Option<String>) -> Self {
        match file {
            Some(file) => Self::File(file),
            None => Self::Stream { args, contact_id },
        }
    }

    /// The file or stream, for messages.
    fn name(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Stream { args, .. } => args.stream_arn.clone().unwrap_or_default(),
        }
    }
}

/// A [`FragmentReader`] fed with bytes as they come, handing its events to `on_event` until
/// that returns false or the media cannot be read.
struct EventPump<F> {
    reader: FragmentReader,
    on_event: F,
    done: bool,
    error: Option<ReadError>,
}

impl<F: FnMut(MediaEvent) -> Result<bool>> EventPump<F> {
    fn new(on_event: F) -> Self {
        Self {
            reader: FragmentReader::new(),
            on_event,
            done: false,
            error: None,
        }
    }

    /// Takes more bytes, or the end of the input (`None`).
    fn push(&mut self, bytes: Option<&[u8]>) -> Result<()> {
        if self.done {
            return Ok(());
        }
        match bytes {
            Some(bytes) => self.reader.push(bytes),
            None => self.reader.end_of_input(),
        }
        loop {
            match self.reader.next_event() {
                Ok(Some(event)) => {
                    if !(self.on_event)(event)? {
                        self.done = true;
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(error) => {
                    self.error = Some(error);
                    self.done = true;
                    return Ok(());
                }
            }
        }
    }
}

/// Reads `input` through a [`FragmentReader`], calling `on_event` for each event until it
/// returns false. Returns the read error that ended the media, if any, and for a stream what
/// the capture read.
fn stream_media(
    input: &MediaInput,
    on_event: impl FnMut(MediaEvent) -> Result<bool>,
) -> Result<(Option<ReadError>, Option<CaptureSummary>)> {
    let mut pump = EventPump::new(on_event);
    let path = match input {
        MediaInput::File(path) => path,
        MediaInput::Stream { args, contact_id } => {
            init_logging();
            let summary =
                capture::capture(args, contact_id.clone(), |chunk| pump.push(Some(chunk)))?;
            pump.push(None)?;
            return Ok((pump.error, Some(summary)));
        }
    };
    let mut file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = if len > 64 << 20 {
        progress_bar(
            Some(len),
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
    } else {
        ProgressBar::hidden()
    };
    let mut buf = vec![0u8; 64 << 10];
    while !pump.done {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("{}: read failed", path.display()))?;
        if n == 0 {
            pump.push(None)?;
            break;
        }
        pump.push(Some(&buf[..n]))?;
        progress.inc(n as u64);
    }
    progress.finish_and_clear();
    Ok((pump.error, None))
}

/// The chunks of a GetMedia capture file (one per fragment), or an error naming the file.
pub(crate) fn read_capture(path: &Path) -> Result<Vec<bytes::Bytes>> {
    let bytes = bytes::Bytes::from(
        std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?,
    );
    Ok(kvs_media::split_chunks(&bytes)
        .with_context(|| format!("{}: not a GetMedia capture", path.display()))?
        .into_iter()
        .map(|range| bytes.slice(range))
        .collect())
}

/// Progress on stderr when it is a terminal (hidden otherwise): a bar over `len` bytes, or a
/// spinner without it.
fn progress_bar(len: Option<u64>, template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Reports how a stream capture ended; the exit code when it failed (1: the stream cannot be
/// read or holds nothing of the contact; 2: reading failed).
fn capture_verdict(summary: Option<&CaptureSummary>) -> Option<ExitCode> {
    let summary = summary?;
    eprintln!("lca-kvs: {}", summary.describe());
    if let Some(other) = summary.found_another_contact() {
        eprintln!(
            "lca-kvs: nothing read: the first fragment read belongs to contact {other}, not {} (check --contact-id and the start)",
            summary.contact_id
        );
        return Some(ExitCode::from(1));
    }
    match summary.stop {
        CaptureStop::Unreadable(_) => Some(ExitCode::from(1)),
        CaptureStop::Failed(_) => Some(ExitCode::from(2)),
        _ if summary.fragments == 0 => Some(ExitCode::from(1)),
        _ => None,
    }
}

/// `lca-kvs capture`: the contact's fragments, whole, into `output` as they are read.
fn capture_to_file(
    stream: &StreamArgs,
    contact_id: Option<String>,
    output: &Path,
) -> Result<ExitCode> {
    init_logging();
    let mut out = BufWriter::new(
        File::create(output).with_context(|| format!("{}: cannot create", output.display()))?,
    );
    let progress = progress_bar(None, "{spinner} {pos} fragments saved, {msg} ({elapsed})");
    let mut bytes = 0u64;
    let captured = capture::capture(stream, contact_id, |chunk| {
        // Whole fragments only, each flushed: the file is valid up to the last one whatever
        // stops the capture.
        out.write_all(chunk)
            .and_then(|()| out.flush())
            .with_context(|| format!("{}: cannot write", output.display()))?;
        bytes += chunk.len() as u64;
        progress.inc(1);
        progress.set_message(indicatif::HumanBytes(bytes).to_string());
        Ok(())
    });
    progress.finish_and_clear();
    drop(out);
    let summary = match captured {
        Ok(summary) => summary,
        Err(error) => {
            if bytes == 0 {
                let _ = std::fs::remove_file(output);
            }
            return Err(error);
        }
    };
    if summary.fragments == 0 {
        let _ = std::fs::remove_file(output);
    }
    let code = capture_verdict(Some(&summary)).unwrap_or(ExitCode::SUCCESS);
    if summary.fragments > 0 {
        eprintln!(
            "lca-kvs: saved the {} whole fragments read to {}",
            summary.fragments,
            output.display()
        );
    }
    Ok(code)
}

/// Log lines (warnings by default, RUST_LOG to change) on stderr, never finer than
/// call_metrics::FINEST_LOG_LEVEL: no request body in the log.
pub(crate) fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .finish()
        .with(call_metrics::FINEST_LOG_LEVEL)
        .try_init();
}

fn inspect(input: &MediaInput, json: bool) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut inspector = Inspector::new();
    let mut print = |summary: lca_kvs::inspect::FragmentSummary| -> Result<()> {
        if json {
            serde_json::to_writer(&mut out, &summary)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", summary.to_line())?;
        }
        Ok(())
    };
    let (error, captured) = stream_media(input, |event| {
        if let Some(done) = inspector.handle(&event) {
            print(done)?;
        }
        Ok(true)
    })?;
    // A fragment cut off by an error is incomplete and not listed.
    if let Some(last) = inspector.finish()
        && error.is_none()
    {
        print(last)?;
    }
    out.flush()?;
    if let Some(code) = capture_verdict(captured.as_ref()) {
        return Ok(code);
    }
    match error {
        None => Ok(ExitCode::SUCCESS),
        Some(error) => {
            eprintln!("lca-kvs: {}: {error}", input.name());
            Ok(ExitCode::from(2))
        }
    }
}

fn extract(input: &MediaInput, output: &Path, contact_id: Option<String>) -> Result<ExitCode> {
    let path = input.name();
    let mut extractor = CallExtractor::new(contact_id, AssemblerConfig::default());
    let mut wav = WavWriter::new(
        BufWriter::new(
            File::create(output).with_context(|| format!("{}: cannot create", output.display()))?,
        ),
        CONNECT_SAMPLE_RATE,
    )
    .with_context(|| format!("{}: cannot write WAV", output.display()))?;
    let mut write_ready = |extractor: &mut CallExtractor| -> Result<()> {
        while let Some(chunk) = extractor.pop_chunk() {
            wav.write_chunk(&chunk)
                .with_context(|| format!("{}: cannot write WAV", output.display()))?;
        }
        Ok(())
    };
    let (read_error, captured) = stream_media(input, |event| {
        extractor
            .handle(event)
            .with_context(|| format!("{path}: audio cannot be placed"))?;
        write_ready(&mut extractor)?;
        Ok(extractor.stopped().is_none())
    })?;
    match &read_error {
        None => extractor.finish()?,
        Some(_) => extractor.abandon(),
    }
    write_ready(&mut extractor)?;
    wav.finalize()
        .with_context(|| format!("{}: cannot finish WAV", output.display()))?;
    if let Some(code) = capture_verdict(captured.as_ref()) {
        return Ok(code);
    }

    if !extractor.saw_connect_tracks() {
        anyhow::bail!(
            "{}: no Connect audio tracks (expected tracks named AUDIO_FROM_CUSTOMER / AUDIO_TO_CUSTOMER){}",
            path,
            read_error
                .map(|e| format!("; reading also stopped {e}"))
                .unwrap_or_default()
        );
    }
    if let Some(error) = read_error {
        eprintln!(
            "lca-kvs: {}: {error}; audio of the {} complete fragments before it was written to {}",
            path,
            extractor.fragments(),
            output.display()
        );
        return Ok(ExitCode::from(2));
    }
    let seconds = extractor.assembler().emitted_samples() as f64 / f64::from(CONNECT_SAMPLE_RATE);
    match extractor.stopped() {
        Some(ExtractStop::KvsError(error)) => {
            eprintln!(
                "lca-kvs: {}: the stream carried a KVS error chunk (code {}, id {}); {seconds:.2} s of audio before it written to {}",
                path,
                error.code,
                error.id,
                output.display()
            );
            Ok(ExitCode::from(1))
        }
        Some(ExtractStop::OtherContact { expected, found }) => {
            eprintln!(
                "lca-kvs: stopped at a fragment of contact {found} (extracting {expected}); wrote {seconds:.2} s to {}",
                output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "lca-kvs: wrote {seconds:.2} s of contact {} to {}",
                extractor.contact_id().unwrap_or("(no ContactId tag)"),
                output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

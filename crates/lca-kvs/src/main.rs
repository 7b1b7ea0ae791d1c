//! `lca-kvs`: inspect and extract Amazon Connect media streams captured from Kinesis Video
//! Streams, run the local stand-ins, and run the local demo.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use call_audio::{AssemblerConfig, CONNECT_SAMPLE_RATE, WavWriter};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kvs_media::{FragmentReader, MediaEvent, ReadError};
use lca_kvs::extract::{CallExtractor, ExtractStop};
use lca_kvs::inspect::Inspector;

mod demo;
mod local;
mod transcribe;

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
        /// A GetMedia capture (concatenated MKV fragments).
        file: PathBuf,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a contact's audio as a stereo WAV (channel 0 caller, channel 1 agent, 8 kHz).
    Extract {
        /// A GetMedia capture (concatenated MKV fragments).
        file: PathBuf,
        /// Output WAV file.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// The contact to extract (default: the first ContactId in the file).
        #[arg(long)]
        contact_id: Option<String>,
    },
    /// Local stand-ins for AWS (Kinesis Video Streams, Transcribe Streaming, Lambda; Kinesis,
    /// S3 and DynamoDB through moto server when installed) on loopback: prints
    /// `export AWS_ENDPOINT_URL_<SERVICE>=<url>` lines, then `ready`, and serves until
    /// interrupted. Each --stream plays its capture live from start-up.
    Local(local::LocalArgs),
    /// Transcribe one call from its Kinesis Video stream to LCA events on Kinesis, in the
    /// foreground, configured like the Lambda function by environment variables
    /// (KINESIS_STREAM_NAME, TRANSCRIBE_*, ...; AWS_ENDPOINT_URL_* for local endpoints).
    Transcribe(transcribe::TranscribeArgs),
    /// A whole Connect call, transcribed locally: the sample call (or --mkv capture) plays
    /// into local KVS, StartLCA and the call transcriber run under the local Lambda, and the
    /// transcript appears as it is spoken. No AWS account.
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
        Command::Inspect { file, json } => inspect(&file, json),
        Command::Extract {
            file,
            output,
            contact_id,
        } => extract(&file, &output, contact_id),
        Command::Demo(args) => demo::run(args).map(|()| ExitCode::SUCCESS),
        Command::Function { name } => demo::serve_function(&name).map(|()| ExitCode::SUCCESS),
        Command::Local(args) => local::run(args).map(|()| ExitCode::SUCCESS),
        Command::Transcribe(args) => transcribe::run(args),
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
            ExitCode::from(2)
        }
    }
}

/// Streams a file through a [`FragmentReader`] in 64 KiB reads, calling `on_event` for each
/// event until it returns false. Returns the read error that ended the stream, if any.
fn stream_file(
    path: &Path,
    mut on_event: impl FnMut(MediaEvent) -> Result<bool>,
) -> Result<Option<ReadError>> {
    let mut file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = if std::io::stderr().is_terminal() && len > 64 << 20 {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut reader = FragmentReader::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("{}: read failed", path.display()))?;
        if n == 0 {
            reader.end_of_input();
        } else {
            reader.push(&buf[..n]);
            progress.inc(n as u64);
        }
        loop {
            match reader.next_event() {
                Ok(Some(event)) => {
                    if !on_event(event)? {
                        progress.finish_and_clear();
                        return Ok(None);
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    progress.finish_and_clear();
                    return Ok(Some(error));
                }
            }
        }
        if n == 0 {
            progress.finish_and_clear();
            return Ok(None);
        }
    }
}

fn inspect(path: &Path, json: bool) -> Result<ExitCode> {
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
    let error = stream_file(path, |event| {
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
    match error {
        None => Ok(ExitCode::SUCCESS),
        Some(error) => {
            eprintln!("lca-kvs: {}: {error}", path.display());
            Ok(ExitCode::from(2))
        }
    }
}

fn extract(path: &Path, output: &Path, contact_id: Option<String>) -> Result<ExitCode> {
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
    let read_error = stream_file(path, |event| {
        extractor
            .handle(event)
            .with_context(|| format!("{}: audio cannot be placed", path.display()))?;
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

    if !extractor.saw_connect_tracks() {
        anyhow::bail!(
            "{}: no Connect audio tracks (expected tracks named AUDIO_FROM_CUSTOMER / AUDIO_TO_CUSTOMER){}",
            path.display(),
            read_error
                .map(|e| format!("; reading also stopped {e}"))
                .unwrap_or_default()
        );
    }
    if let Some(error) = read_error {
        eprintln!(
            "lca-kvs: {}: {error}; audio of the {} complete fragments before it was written to {}",
            path.display(),
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
                path.display(),
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

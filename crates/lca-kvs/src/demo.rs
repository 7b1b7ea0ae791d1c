//! `lca-kvs demo`: a generated Connect call streamed through the reader and the stereo
//! assembler, offline. (Transcription joins it once the local Transcribe stand-in exists.)

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use call_audio::{AssemblerConfig, CONNECT_SAMPLE_RATE, WavWriter};
use clap::Args;
use kvs_media::{ConnectWriter, FragmentReader, WriterOptions};
use lca_kvs::extract::CallExtractor;
use lca_kvs::inspect::Inspector;

/// Options of `lca-kvs demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Replay this GetMedia capture instead of the generated call.
    #[arg(long)]
    mkv: Option<PathBuf>,
    /// Playback speed: 1.0 is real time; 0 is as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    speed: f64,
    /// Print one JSON object per fragment instead of text.
    #[arg(long)]
    json: bool,
    /// Where to write the stereo call recording.
    #[arg(long, default_value = "lca-demo-recording.wav")]
    recording_out: PathBuf,
}

/// Seconds of the generated call.
const CALL_SECONDS: usize = 12;

/// A deterministic two-party call: alternating 2 s turns, each speaker a distinct tone sweep
/// with a syllable-like envelope, silence while the other speaks.
fn generated_call() -> (Vec<u8>, Vec<u8>) {
    let rate = CONNECT_SAMPLE_RATE as usize;
    let total = CALL_SECONDS * rate;
    let mut caller = Vec::with_capacity(total * 2);
    let mut agent = Vec::with_capacity(total * 2);
    let mut phase = [0f64; 2];
    for n in 0..total {
        let t = n as f64 / rate as f64;
        let turn = (t / 2.0) as usize % 2; // 0: caller speaks, 1: agent speaks
        let syllable = (t * 4.0 * std::f64::consts::PI).sin().abs();
        for (speaker, out) in [(0usize, &mut caller), (1, &mut agent)] {
            let base = if speaker == 0 { 220.0 } else { 330.0 };
            let freq = base + 80.0 * (t * 1.3).sin();
            phase[speaker] += 2.0 * std::f64::consts::PI * freq / rate as f64;
            let value = if turn == speaker {
                (phase[speaker].sin() * syllable * 9000.0) as i16
            } else {
                0
            };
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
    (caller, agent)
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<()> {
    let stream: Vec<Vec<u8>> = match &args.mkv {
        Some(path) => {
            vec![std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?]
        }
        None => {
            let (caller, agent) = generated_call();
            let mut writer = ConnectWriter::new(WriterOptions {
                contact_id: "5e1ec7ed-0000-4000-8000-00000000de30".to_string(),
                ..WriterOptions::default()
            });
            writer.call(&caller, &agent, 1_767_225_600_000)
        }
    };
    eprintln!(
        "lca-kvs demo: streaming {} {} through the Connect media reader and stereo assembler",
        stream.len(),
        if args.mkv.is_some() {
            "capture"
        } else {
            "generated Connect fragments"
        }
    );
    let mut reader = FragmentReader::new();
    let mut inspector = Inspector::new();
    let mut extractor = CallExtractor::new(None, AssemblerConfig::default());
    let file = std::fs::File::create(&args.recording_out)
        .with_context(|| format!("{}: cannot create", args.recording_out.display()))?;
    let mut wav = WavWriter::new(BufWriter::new(file), CONNECT_SAMPLE_RATE)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let started = Instant::now();
    for fragment in &stream {
        // Deliver each fragment in small network-sized pieces, as GetMedia does.
        for piece in fragment.chunks(1400) {
            reader.push(piece);
            while let Some(event) = reader.next_event()? {
                if let Some(summary) = inspector.handle(&event) {
                    print_summary(&mut out, &summary, args.json)?;
                }
                extractor.handle(event)?;
                while let Some(chunk) = extractor.pop_chunk() {
                    wav.write_chunk(&chunk)?;
                }
            }
        }
        if args.speed > 0.0 {
            let due = Duration::from_secs_f64(
                extractor.assembler().emitted_samples() as f64 / 8000.0 / args.speed,
            );
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    reader.end_of_input();
    while let Some(event) = reader.next_event()? {
        if let Some(summary) = inspector.handle(&event) {
            print_summary(&mut out, &summary, args.json)?;
        }
        extractor.handle(event)?;
    }
    if let Some(summary) = inspector.finish() {
        print_summary(&mut out, &summary, args.json)?;
    }
    extractor.finish()?;
    while let Some(chunk) = extractor.pop_chunk() {
        wav.write_chunk(&chunk)?;
    }
    wav.finalize()?;
    let seconds = extractor.assembler().emitted_samples() as f64 / 8000.0;
    let stats = extractor.assembler().stats();
    eprintln!(
        "lca-kvs demo: {} fragments of contact {}, {seconds:.2} s of stereo audio (caller = left, agent = right) in {:.0} ms; silence filled: caller {} / agent {} samples; recording: {}",
        extractor.fragments(),
        extractor.contact_id().unwrap_or("-"),
        started.elapsed().as_secs_f64() * 1000.0,
        stats.silence_samples[0],
        stats.silence_samples[1],
        args.recording_out.display()
    );
    Ok(())
}

fn print_summary(
    out: &mut impl Write,
    summary: &lca_kvs::inspect::FragmentSummary,
    json: bool,
) -> Result<()> {
    if json {
        serde_json::to_writer(&mut *out, summary)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", summary.to_line())?;
    }
    Ok(())
}

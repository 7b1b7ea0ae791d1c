//! The offline recognizers compared on evidence: word error rate per channel and real-time
//! factor of each engine on the Connect-shaped sample call in `../shared/fixtures` (speech by
//! espeak-ng, 8 kHz) and on the demo's own generated call.
//!
//! `cargo run --release -p lca-tests --features pocketsphinx --bin engine-bench`

use std::time::Instant;

use lca_kvs::sample_call::{self, SampleCall, Speaker};
use lca_kvs::wer::WordErrors;
use local_aws::recognizer::pocketsphinx::{SphinxModel, SphinxRecognizer};
use local_aws::recognizer::{EnergyRecognizer, Recognizer, Segment};

/// A call to measure on: interleaved stereo PCM and what each channel said.
struct Case {
    name: &'static str,
    stereo: Vec<u8>,
    said: [String; 2],
}

fn interleave(caller: &[u8], agent: &[u8]) -> Vec<u8> {
    caller
        .chunks_exact(2)
        .zip(agent.chunks_exact(2))
        .flat_map(|(c, a)| [c[0], c[1], a[0], a[1]])
        .collect()
}

fn fixture_case() -> Result<Case, String> {
    let read = |name: &str| {
        std::fs::read(lca_tests::fixture(&format!("connect/{name}")))
            .map_err(|e| format!("{name}: {e}"))
    };
    let script =
        String::from_utf8(read("sample-call.transcript.tsv")?).map_err(|e| e.to_string())?;
    let said = |tag: &str| {
        script
            .lines()
            .filter_map(|line| line.strip_prefix(tag))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Ok(Case {
        name: "shared/fixtures sample-call (61 s)",
        stereo: interleave(
            &read("sample-call.caller.raw")?,
            &read("sample-call.agent.raw")?,
        ),
        said: [said("C\t"), said("A\t")],
    })
}

fn demo_case() -> Result<Case, String> {
    let call: SampleCall = sample_call::synthesize().map_err(|e| e.to_string())?;
    Ok(Case {
        name: "demo call (lca-kvs demo)",
        stereo: interleave(&call.caller, &call.agent),
        said: [call.said_by(Speaker::Caller), call.said_by(Speaker::Agent)],
    })
}

fn run(case: &Case, engine: &str, mut recognizer: Box<dyn Recognizer>) {
    let started = Instant::now();
    let mut segments: Vec<Segment> = Vec::new();
    // 100 ms pieces, as the transcriber sends them.
    for piece in case.stereo.chunks(8000 / 10 * 4) {
        segments.extend(recognizer.accept(piece));
    }
    segments.extend(recognizer.finish());
    let seconds = started.elapsed().as_secs_f64();
    let audio = case.stereo.len() as f64 / 4.0 / 8000.0;
    let heard = |channel: usize| {
        segments
            .iter()
            .filter(|s| !s.is_partial && s.channel == channel)
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let wer = |channel: usize| WordErrors::between(&case.said[channel], &heard(channel));
    let (caller, agent) = (wer(0), wer(1));
    println!(
        "{engine:<13} {:<36} WER caller {:>5.1}% ({}/{})  agent {:>5.1}% ({}/{})  RTF {:.3} (both channels)",
        case.name,
        caller.rate() * 100.0,
        caller.errors,
        caller.reference_words,
        agent.rate() * 100.0,
        agent.errors,
        agent.reference_words,
        seconds / audio,
    );
    if std::env::args().any(|a| a == "--verbose") {
        println!("  caller heard: {}", heard(0));
        println!("  agent heard:  {}", heard(1));
        for s in segments.iter().filter(|s| !s.is_partial) {
            println!(
                "  ch{} {:.2}-{:.2} {}",
                s.channel, s.start_s, s.end_s, s.text
            );
        }
    }
}

fn main() -> Result<(), String> {
    let model = SphinxModel::locate().map_err(|e| e.to_string())?;
    for case in [fixture_case()?, demo_case()?] {
        run(&case, "energy", Box::new(EnergyRecognizer::new(8000, 2)));
        let sphinx = SphinxRecognizer::new(&model, 8000, 2).map_err(|e| e.to_string())?;
        run(&case, "pocketsphinx", Box::new(sphinx));
    }
    Ok(())
}

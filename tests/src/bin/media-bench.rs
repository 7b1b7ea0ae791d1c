//! Benchmark of the media path on a generated Connect call (default: 1 hour, ~119 MB):
//! read + assemble with kvs-media and call-audio, against a hand-rolled zero-copy EBML walker
//! (what the machine can do) and the LCA reference's Node.js decoder (ebml-stream, installed
//! with npm). Each measurement runs in its own child process so its peak RSS is its own.
//!
//! `cargo run --release -p lca-tests --bin media-bench [-- --minutes 60 --skip-node]`

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use call_audio::AssemblerConfig;
use call_audio::extract::CallExtractor;
use kvs_media::{ConnectWriter, FragmentAudio, FragmentReader, TrackRole, WriterOptions};

/// One measured run, printed by the child as a JSON-ish line of numbers.
#[derive(Debug, Clone, Copy)]
struct Run {
    bytes: u64,
    seconds: f64,
    cpu_seconds: f64,
    max_rss_kb: u64,
    checksum: u64,
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("read") => print_run(read_and_assemble(Path::new(&args[2]), false)?),
        Some("read-mem") => print_run(read_and_assemble(Path::new(&args[2]), true)?),
        Some("walk") => print_run(walk_file(Path::new(&args[2]))?),
        _ => orchestrate(&args[1..]),
    }
}

fn orchestrate(args: &[String]) -> Result<(), String> {
    let mut minutes = 60u64;
    let mut skip_node = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--minutes" => {
                minutes = iter
                    .next()
                    .and_then(|m| m.parse().ok())
                    .ok_or("--minutes takes a whole number")?
            }
            "--skip-node" => skip_node = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let call = dir.join(format!("call-{minutes}min.mkv"));
    let short = dir.join("call-10min.mkv");
    let started = Instant::now();
    generate_call(&call, minutes)?;
    generate_call(&short, 10)?;
    let size = std::fs::metadata(&call).map_err(|e| e.to_string())?.len();
    eprintln!(
        "generated {} ({:.1} MB, {minutes} min) in {:.1} s",
        call.display(),
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = |mode: &str, file: &Path| -> Result<Run, String> {
        let output = Command::new(&me)
            .args([mode, file.to_str().unwrap_or_default()])
            .output()
            .map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(format!(
                "{mode}: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        parse_run(&String::from_utf8_lossy(&output.stdout))
    };
    // Best of three for throughput; RSS from the same runs.
    let best = |mode: &str, file: &Path| -> Result<Run, String> {
        let mut runs = (0..3)
            .map(|_| child(mode, file))
            .collect::<Result<Vec<_>, _>>()?;
        runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
        Ok(runs[0])
    };
    let ours = best("read-mem", &call)?;
    let ours_disk = best("read", &call)?;
    let ours_short = child("read", &short)?;
    let walker = best("walk", &call)?;
    let node = if skip_node {
        None
    } else {
        Some(node_reference(&dir, &call)?)
    };

    let per_hour = 60.0 / minutes as f64;
    let mbps = |r: &Run| r.bytes as f64 / 1e6 / r.seconds;
    println!(
        "| decoder ({minutes}-min call, {:.1} MB) | MB/s | CPU-s per call-hour | peak RSS (MB) |",
        size as f64 / 1e6
    );
    println!("|---|---:|---:|---:|");
    let row = |name: &str, r: &Run| {
        println!(
            "| {name} | {:.0} | {:.3} | {:.1} |",
            mbps(r),
            r.cpu_seconds * per_hour,
            r.max_rss_kb as f64 / 1024.0
        )
    };
    row(
        "kvs-media FragmentReader + StereoAssembler, file in memory",
        &ours,
    );
    row("the same, streamed from disk in 64 KiB reads", &ours_disk);
    row(
        "hand-rolled zero-copy walker + interleave (yardstick), file in memory",
        &walker,
    );
    if let Some(node) = &node {
        row("LCA reference: Node.js ebml-stream decoder", node);
    }
    println!();
    println!(
        "ours / walker throughput: {:.2}",
        mbps(&ours) / mbps(&walker)
    );
    if let Some(node) = &node {
        println!(
            "ours / node reference throughput: {:.1}x",
            mbps(&ours) / mbps(node)
        );
    }
    println!(
        "peak RSS of read + assemble streamed from disk: {:.1} MB on 10 min, {:.1} MB on {minutes} min",
        ours_short.max_rss_kb as f64 / 1024.0,
        ours_disk.max_rss_kb as f64 / 1024.0
    );
    let expected_pcm = minutes * 60 * 8000 * 4;
    for (name, run) in [
        ("read-mem", &ours),
        ("read", &ours_disk),
        ("walker", &walker),
    ] {
        if run.checksum != expected_pcm {
            return Err(format!(
                "{name}: {} bytes of stereo PCM, expected {expected_pcm}",
                run.checksum
            ));
        }
    }
    Ok(())
}

/// Writes a Connect-shaped call: two tracks, 512-sample blocks, 16 blocks per fragment.
fn generate_call(path: &Path, minutes: u64) -> Result<(), String> {
    let samples = (minutes * 60 * 8000) as usize;
    let expected_fragments = samples.div_ceil(512 * 16);
    if path.exists() {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    let mut out =
        BufWriter::new(File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?);
    let mut writer = ConnectWriter::new(WriterOptions::default());
    let start_ns: i64 = 1_767_225_600_000 * 1_000_000;
    let block: usize = 512;
    let mut caller = vec![0u8; block * 2];
    let mut agent = vec![0u8; block * 2];
    for fragment in 0..expected_fragments {
        let mut blocks_pcm = Vec::new();
        for b in 0..16 {
            let first = (fragment * 16 + b) * block;
            if first >= samples {
                break;
            }
            for (i, pair) in caller.chunks_exact_mut(2).enumerate() {
                let n = (first + i) as f64;
                pair.copy_from_slice(&(((n * 0.07).sin() * 8000.0) as i16).to_le_bytes());
            }
            for (i, pair) in agent.chunks_exact_mut(2).enumerate() {
                let n = (first + i) as f64;
                pair.copy_from_slice(&(((n * 0.11).sin() * 6000.0) as i16).to_le_bytes());
            }
            blocks_pcm.push((first, caller.clone(), agent.clone()));
        }
        let blocks: Vec<FragmentAudio> = blocks_pcm
            .iter()
            .flat_map(|(first, c, a)| {
                let timestamp_ns = start_ns + *first as i64 * 125_000;
                [
                    FragmentAudio {
                        role: TrackRole::Caller,
                        timestamp_ns,
                        pcm: c,
                    },
                    FragmentAudio {
                        role: TrackRole::Agent,
                        timestamp_ns,
                        pcm: a,
                    },
                ]
            })
            .collect();
        let producer_ms =
            ((start_ns + (fragment * 16 * block) as i64 * 125_000) / 1_000_000) as u64;
        out.write_all(&writer.fragment(producer_ms, &blocks))
            .map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

/// The file through the reader and the extractor/assembler in 64 KiB pieces: streamed from
/// disk (`in_memory` false: constant memory, the real-world path) or from a preloaded copy
/// (`in_memory` true: the same footing as the walker).
fn read_and_assemble(path: &Path, in_memory: bool) -> Result<Run, String> {
    let preloaded = if in_memory {
        Some(std::fs::read(path).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let cpu = cpu_seconds();
    let started = Instant::now();
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let mut reader = FragmentReader::new();
    let mut extractor = CallExtractor::new(None, AssemblerConfig::default());
    let mut buf = vec![0u8; 64 << 10];
    let mut bytes = 0u64;
    let mut pcm = 0u64;
    loop {
        let n = match &preloaded {
            Some(data) => {
                let n = (data.len() - bytes as usize).min(buf.len());
                reader.push(&data[bytes as usize..bytes as usize + n]);
                n
            }
            None => {
                let n = file.read(&mut buf).map_err(|e| e.to_string())?;
                reader.push(&buf[..n]);
                n
            }
        };
        bytes += n as u64;
        if n == 0 {
            reader.end_of_input();
        }
        while let Some(event) = reader.next_event().map_err(|e| e.to_string())? {
            extractor.handle(event).map_err(|e| e.to_string())?;
            while let Some(chunk) = extractor.pop_chunk() {
                pcm += chunk.pcm.len() as u64;
            }
        }
        if n == 0 {
            break;
        }
    }
    extractor.finish().map_err(|e| e.to_string())?;
    while let Some(chunk) = extractor.pop_chunk() {
        pcm += chunk.pcm.len() as u64;
    }
    Ok(Run {
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu,
        max_rss_kb: max_rss_kb(),
        checksum: pcm,
    })
}

/// The yardstick: a zero-copy walk over the whole file in memory that enters master
/// elements, skips everything else, routes SimpleBlock payloads by track number and
/// interleaves each cluster's caller and agent blocks into stereo (no timestamps, no checks):
/// the least work that produces the same output on this file.
fn walk_file(path: &Path) -> Result<Run, String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    let cpu = cpu_seconds();
    let started = Instant::now();
    let pcm = walk(&data).ok_or("walker: malformed input")?;
    Ok(Run {
        bytes: data.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu,
        max_rss_kb: max_rss_kb(),
        checksum: pcm,
    })
}

fn vint(data: &[u8], keep_marker: bool) -> Option<(u64, usize, bool)> {
    let first = *data.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 || data.len() < len {
        return None;
    }
    let mut value = if keep_marker {
        u64::from(first)
    } else {
        u64::from(first) & (0xFF >> len)
    };
    for byte in &data[1..len] {
        value = (value << 8) | u64::from(*byte);
    }
    let all_ones = !keep_marker && value == (1u64 << (7 * len)) - 1;
    Some((value, len, all_ones))
}

fn walk(data: &[u8]) -> Option<u64> {
    const CLUSTER: u64 = 0x1F43_B675;
    const MASTERS: [u64; 8] = [
        0x1853_8067,
        CLUSTER,
        0xA0,
        0x1254_C367,
        0x7373,
        0x67C8,
        0x1654_AE6B,
        0xAE,
    ];
    let mut pos = 0;
    let mut pcm = 0u64;
    let mut tracks: [Vec<&[u8]>; 2] = [Vec::new(), Vec::new()];
    let mut stereo = Vec::new();
    let mut flush = |tracks: &mut [Vec<&[u8]>; 2]| {
        for (caller, agent) in tracks[0].iter().zip(&tracks[1]) {
            stereo.clear();
            for (l, r) in caller.chunks_exact(2).zip(agent.chunks_exact(2)) {
                stereo.extend_from_slice(&[l[0], l[1], r[0], r[1]]);
            }
            pcm += stereo.len() as u64;
        }
        tracks[0].clear();
        tracks[1].clear();
    };
    while pos < data.len() {
        let (id, id_len, _) = vint(&data[pos..], true)?;
        let (size, size_len, unknown) = vint(&data[pos + id_len..], false)?;
        let body = pos + id_len + size_len;
        if id == CLUSTER {
            flush(&mut tracks);
        }
        if MASTERS.contains(&id) {
            pos = body; // enter
            continue;
        }
        if unknown {
            return None;
        }
        let end = body + size as usize;
        if id == 0xA3 {
            let (track, track_len, _) = vint(&data[body..], false)?;
            if let Some(slot) = tracks.get_mut(track.wrapping_sub(1) as usize) {
                slot.push(&data[body + track_len + 3..end]);
            }
        }
        pos = end;
    }
    flush(&mut tracks);
    Some(pcm)
}

fn node_reference(dir: &Path, call: &Path) -> Result<Run, String> {
    let prefix = dir.join("node");
    if !prefix.join("node_modules/ebml-stream").exists() {
        eprintln!(
            "installing ebml-stream 1.0.3 with npm into {}",
            prefix.display()
        );
        let status = Command::new("npm")
            .args([
                "install",
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--prefix",
            ])
            .arg(&prefix)
            .arg("ebml-stream@1.0.3")
            .status()
            .map_err(|e| format!("npm: {e} (install Node.js and npm, or pass --skip-node)"))?;
        if !status.success() {
            return Err("npm install ebml-stream failed".to_string());
        }
    }
    let script: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/node-reference.js");
    let mut runs = Vec::new();
    for _ in 0..2 {
        let output = Command::new("node")
            .arg(&script)
            .arg(call)
            .env("NODE_PATH", prefix.join("node_modules"))
            .output()
            .map_err(|e| format!("node: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "node reference: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let number = |key: &str| -> Result<f64, String> {
            let at = text
                .find(&format!("\"{key}\":"))
                .ok_or(format!("node output lacks {key}: {text}"))?;
            let rest = &text[at + key.len() + 3..];
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            rest[..end]
                .trim()
                .parse()
                .map_err(|_| format!("node output {key}: {text}"))
        };
        runs.push(Run {
            bytes: number("bytes")? as u64,
            seconds: number("seconds")?,
            cpu_seconds: number("cpu_seconds")?,
            max_rss_kb: number("max_rss_kb")? as u64,
            checksum: (number("caller_bytes")? + number("agent_bytes")?) as u64,
        });
    }
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    Ok(runs[0])
}

fn print_run(run: Run) -> Result<(), String> {
    println!(
        "{} {} {} {} {}",
        run.bytes, run.seconds, run.cpu_seconds, run.max_rss_kb, run.checksum
    );
    Ok(())
}

fn parse_run(text: &str) -> Result<Run, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let get = |i: usize| fields.get(i).ok_or(format!("bad child output {text:?}"));
    Ok(Run {
        bytes: get(0)?
            .parse()
            .map_err(|_| format!("bad child output {text:?}"))?,
        seconds: get(1)?
            .parse()
            .map_err(|_| format!("bad child output {text:?}"))?,
        cpu_seconds: get(2)?
            .parse()
            .map_err(|_| format!("bad child output {text:?}"))?,
        max_rss_kb: get(3)?
            .parse()
            .map_err(|_| format!("bad child output {text:?}"))?,
        checksum: get(4)?
            .parse()
            .map_err(|_| format!("bad child output {text:?}"))?,
    })
}

/// User + system CPU time of this process.
fn cpu_seconds() -> f64 {
    call_transcriber::usage::ProcessUsage::current().cpu_seconds
}

/// Peak resident set of this process, in KiB.
fn max_rss_kb() -> u64 {
    call_transcriber::usage::ProcessUsage::current().peak_rss_kb
}

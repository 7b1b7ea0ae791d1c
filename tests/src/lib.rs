//! Helpers shared by the end-to-end tests: fixture paths and whole-stream readers.

pub mod paced;

use std::path::PathBuf;

use call_audio::extract::CallExtractor;
use call_audio::{AssemblerConfig, StereoChunk};
use kvs_media::{FragmentReader, MediaEvent, ReadError};

/// `../shared/fixtures/<rel>` from the workspace root.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures")
        .join(rel)
}

/// Reads a fixture's bytes, with a clear message when the shared folder is missing.
pub fn fixture_bytes(rel: &str) -> Vec<u8> {
    let path = fixture(rel);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (is ../shared beside the repo?)", path.display()))
}

/// Every event of `bytes` pushed in pieces of the given sizes (cycled), and the error that
/// ended the stream, if any.
pub fn read_events(bytes: &[u8], piece_sizes: &[usize]) -> (Vec<MediaEvent>, Option<ReadError>) {
    let mut reader = FragmentReader::new();
    let mut events = Vec::new();
    let mut at = 0;
    let mut sizes = piece_sizes.iter().copied().cycle();
    loop {
        let ended = at >= bytes.len();
        if ended {
            reader.end_of_input();
        } else {
            let n = sizes
                .next()
                .unwrap_or(bytes.len())
                .max(1)
                .min(bytes.len() - at);
            reader.push(&bytes[at..at + n]);
            at += n;
        }
        loop {
            match reader.next_event() {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(error) => return (events, Some(error)),
            }
        }
        if ended {
            return (events, None);
        }
    }
}

/// The caller and agent channels (s16le) extracted from a whole stream.
pub fn extract_channels(
    bytes: &[u8],
    contact: Option<&str>,
    config: AssemblerConfig,
) -> (Vec<u8>, Vec<u8>, CallExtractor) {
    let (events, error) = read_events(bytes, &[64 << 10]);
    let mut extractor = CallExtractor::new(contact.map(str::to_string), config);
    let mut chunks: Vec<StereoChunk> = Vec::new();
    for event in events {
        extractor.handle(event).expect("audio places");
        while let Some(chunk) = extractor.pop_chunk() {
            chunks.push(chunk);
        }
    }
    if error.is_none() {
        extractor.finish().expect("finishes");
    } else {
        extractor.abandon();
    }
    while let Some(chunk) = extractor.pop_chunk() {
        chunks.push(chunk);
    }
    let (mut caller, mut agent) = (Vec::new(), Vec::new());
    for chunk in &chunks {
        for frame in chunk.pcm.chunks_exact(4) {
            caller.extend_from_slice(&frame[..2]);
            agent.extend_from_slice(&frame[2..]);
        }
    }
    (caller, agent, extractor)
}

/// The sample call's tracks repeated to `minutes`, as Connect fragments of contact `contact`
/// (for benchmarks of long calls).
pub fn tiled_call(contact: &str, minutes: u64) -> Result<Vec<bytes::Bytes>, String> {
    let read = |name: &str| {
        std::fs::read(fixture(name)).map_err(|e| format!("{name}: {e} (../shared/fixtures)"))
    };
    let (caller, agent) = (
        read("connect/sample-call.caller.raw")?,
        read("connect/sample-call.agent.raw")?,
    );
    let bytes = (minutes * 60 * 8000 * 2) as usize;
    let tile = |pcm: &[u8]| pcm.iter().copied().cycle().take(bytes).collect::<Vec<u8>>();
    let mut writer = kvs_media::ConnectWriter::new(kvs_media::WriterOptions {
        contact_id: contact.to_string(),
        ..kvs_media::WriterOptions::default()
    });
    Ok(writer
        .call(&tile(&caller), &tile(&agent), 1_767_225_600_000)
        .into_iter()
        .map(bytes::Bytes::from)
        .collect())
}

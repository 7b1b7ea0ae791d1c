//! Reader + extractor + assembler over arbitrary bytes in arbitrary chunking: must end in
//! events or an error, never a panic, a hang or unbounded memory. The same bytes through a
//! `ChunkSplitter` (capture's): the chunks it gives plus what it holds are the bytes given,
//! none lost or repeated.
#![no_main]

use call_audio::AssemblerConfig;
use call_audio::extract::CallExtractor;
use kvs_media::{ChunkSplitter, FragmentReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lca_fuzz_run(data);
});

fn lca_fuzz_run(data: &[u8]) {
    split(data);
    // First byte picks the piece size, so the fuzzer explores chunk boundaries too.
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1) * 7;
    let mut reader = FragmentReader::with_max_element_size(1 << 16);
    let mut extractor = CallExtractor::new(
        None,
        AssemblerConfig {
            max_gap_samples: 8000 * 60,
            ..AssemblerConfig::default()
        },
    );
    let mut frames = 0usize;
    for chunk in data.chunks(piece).map(Some).chain([None]) {
        match chunk {
            Some(bytes) => reader.push(bytes),
            None => reader.end_of_input(),
        }
        loop {
            match reader.next_event() {
                Ok(Some(event)) => {
                    if extractor.handle(event).is_err() {
                        return;
                    }
                    while let Some(out) = extractor.pop_chunk() {
                        frames += out.samples;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    if extractor.finish().is_ok() {
        while let Some(out) = extractor.pop_chunk() {
            frames += out.samples;
        }
    }
    // A minute of gap at most per jump, so output stays bounded by input.
    assert!(frames <= 8000 * 61 * (data.len() / 16 + 1));
}

fn split(data: &[u8]) {
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1) * 7;
    let mut splitter = ChunkSplitter::new();
    let mut out = 0usize;
    let mut pushed = 0usize;
    for bytes in data.chunks(piece) {
        splitter.push(bytes);
        pushed += bytes.len();
        loop {
            match splitter.next_chunk() {
                Ok(Some(chunk)) => out += chunk.len(),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert_eq!(out + splitter.pending(), pushed, "bytes lost or repeated");
        if bytes.len() % 3 == 0
            && let Some(chunk) = splitter.end_chunk()
        {
            out += chunk.len();
        }
        assert_eq!(out + splitter.pending(), pushed, "bytes lost or repeated");
    }
    if let Ok(Some(chunk)) = splitter.finish() {
        out += chunk.len();
        assert_eq!(out, pushed);
    }
}

//! The reader and extractor on the real captures in ../shared/fixtures.

use call_audio::AssemblerConfig;
use kvs_media::{MediaEvent, ReadErrorKind, TrackRole};
use lca_tests::{extract_channels, fixture_bytes, read_events};

const CONTACT: &str = "d111f871-5fe7-40b1-b5f7-6b67060de0c2";

#[test]
fn sample_call_extracts_byte_identical_channels() {
    let mkv = fixture_bytes("connect/sample-call.mkv");
    let (caller, agent, extractor) = extract_channels(&mkv, None, AssemblerConfig::default());
    assert_eq!(extractor.contact_id(), Some(CONTACT));
    assert_eq!(extractor.fragments(), 60);
    assert!(
        caller == fixture_bytes("connect/sample-call.caller.raw"),
        "caller channel differs"
    );
    assert!(
        agent == fixture_bytes("connect/sample-call.agent.raw"),
        "agent channel differs"
    );
}

#[test]
fn sample_call_fragments_carry_kvs_and_connect_tags() {
    let mkv = fixture_bytes("connect/sample-call.mkv");
    let (events, error) = read_events(&mkv, &[4096]);
    assert_eq!(error, None);
    let starts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            MediaEvent::FragmentStart(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 60);
    assert_eq!(
        starts[0].fragment_number.as_deref(),
        Some("91343852333181531502161607852955530730505354276")
    );
    assert_eq!(starts[0].server_timestamp_ms, Some(1_726_677_689_681));
    assert_eq!(starts[0].producer_timestamp_ms, Some(1_726_677_688_724));
    let ends = events.iter().filter(|e| matches!(e, MediaEvent::FragmentEnd(end) if end.continuation_token.is_some() && end.millis_behind_now.is_some())).count();
    assert_eq!(ends, 60);
    let contacts = events
        .iter()
        .filter(|e| matches!(e, MediaEvent::Tag(t) if t.name == "ContactId" && t.value.as_str() == Some(CONTACT)))
        .count();
    assert_eq!(contacts, 60);
    // The track table is reported once (it never changes) with Connect's roles.
    let tables: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            MediaEvent::Tracks(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0][0].role, Some(TrackRole::Caller));
    assert_eq!(tables[0][0].codec_id, "A_AAC");
    assert_eq!(tables[0][1].role, Some(TrackRole::Agent));
    // Each fragment: start, then blocks, then ContactId, then end — in that order.
    let first_block = events
        .iter()
        .position(|e| matches!(e, MediaEvent::Block(_)))
        .unwrap();
    let first_start = events
        .iter()
        .position(|e| matches!(e, MediaEvent::FragmentStart(_)))
        .unwrap();
    let first_end = events
        .iter()
        .position(|e| matches!(e, MediaEvent::FragmentEnd(_)))
        .unwrap();
    assert!(first_start < first_block && first_block < first_end);
}

/// (file, fragments with KVS start tags, blocks read, truncated at byte)
/// Block counts cross-checked with `ffprobe -count_packets` (sum over streams) for the
/// complete files; for the two captures cut off in their last block, ffprobe counts the
/// blocks before the cut the same way (239 and 358).
const KVS_CAPTURES: &[(&str, usize, usize, Option<u64>)] = &[
    ("bezos_vogels.mkv", 0, 546, None),
    ("clusters.mkv", 0, 444, None),
    ("empty-mkv-with-tags.mkv", 1, 0, None),
    ("kinesis_video_renderer_example_output.mkv", 8, 444, None),
    (
        "output-get-media-equal-timecode.mkv",
        2,
        239,
        Some(1_272_988),
    ),
    (
        "output-get-media-non-increasing-timecode.mkv",
        12,
        358,
        Some(1_912_925),
    ),
    ("output_get_media.mkv", 5, 300, None),
    ("output_get_media_sparse_fragments.mkv", 3, 180, None),
    ("output_get_media_sparse_fragments_merged.mkv", 3, 180, None),
    ("test_mixed_tags.mkv", 10, 100, None),
    ("test_tags_empty_cluster.mkv", 0, 0, None),
    ("vogels_330.mkv", 0, 2334, None),
    ("vogels_480.mkv", 0, 2334, None),
];

#[test]
fn every_kvs_capture_is_read_to_the_end() {
    for &(name, fragments, blocks, truncated_at) in KVS_CAPTURES {
        let bytes = fixture_bytes(&format!("kvs-getmedia/{name}"));
        let (events, error) = read_events(&bytes, &[65536]);
        let got_fragments = events
            .iter()
            .filter(|e| matches!(e, MediaEvent::FragmentStart(_)))
            .count();
        let got_blocks = events
            .iter()
            .filter(|e| matches!(e, MediaEvent::Block(_)))
            .count();
        assert_eq!((got_fragments, got_blocks), (fragments, blocks), "{name}");
        match (truncated_at, error) {
            (None, None) => {}
            (Some(at), Some(error)) => {
                assert_eq!(error.offset, at, "{name}: {error}");
                assert!(
                    matches!(error.kind, ReadErrorKind::Truncated { id: Some(0xA3) }),
                    "{name}: {error}"
                );
            }
            (expected, got) => panic!("{name}: expected truncation at {expected:?}, got {got:?}"),
        }
    }
}

#[test]
fn video_captures_hold_no_connect_audio() {
    for &(name, ..) in KVS_CAPTURES {
        let bytes = fixture_bytes(&format!("kvs-getmedia/{name}"));
        let (caller, agent, extractor) = extract_channels(&bytes, None, AssemblerConfig::default());
        assert!(!extractor.saw_connect_tracks(), "{name}");
        assert!(caller.is_empty() && agent.is_empty(), "{name}");
    }
}

#[test]
fn nul_padded_strings_are_trimmed() {
    let bytes = fixture_bytes("kvs-getmedia/test_mixed_tags.mkv");
    let (events, _) = read_events(&bytes, &[1000]);
    for event in &events {
        match event {
            MediaEvent::Tracks(tracks) => {
                for track in tracks {
                    assert!(
                        !track.name.contains('\0') && !track.codec_id.contains('\0'),
                        "{track:?}"
                    );
                }
            }
            MediaEvent::Tag(tag) => {
                assert!(!tag.name.contains('\0'), "{tag:?}");
                assert!(!tag.value.as_str().unwrap_or("").contains('\0'), "{tag:?}");
            }
            _ => {}
        }
    }
}

#[test]
fn one_byte_pieces_give_the_same_events_as_whole_files() {
    for name in [
        "connect/sample-call.mkv",
        "kvs-getmedia/test_mixed_tags.mkv",
        "kvs-getmedia/output-get-media-equal-timecode.mkv",
    ] {
        let bytes = fixture_bytes(name);
        let whole = read_events(&bytes, &[bytes.len()]);
        let bytewise = read_events(&bytes, &[1]);
        assert_eq!(whole, bytewise, "{name}");
    }
}

#[test]
fn truncated_and_bit_flipped_captures_end_in_events_or_an_error() {
    let bytes = fixture_bytes("connect/sample-call.mkv");
    let bytes = &bytes[..300_000];
    // Every cut: complete fragments before it are delivered, then a truncation error
    // (or a clean end exactly at an element boundary of an unknown-size element).
    for cut in (0..bytes.len()).step_by(4999) {
        let (events, error) = read_events(&bytes[..cut], &[8192]);
        if let Some(error) = &error {
            assert!(error.offset <= cut as u64, "cut {cut}: {error}");
        }
        let starts = events
            .iter()
            .filter(|e| matches!(e, MediaEvent::FragmentStart(_)))
            .count();
        assert!(starts <= 1 + cut / 33_000, "cut {cut}");
    }
    // Bit flips anywhere: never a panic, every error names an offset inside the input.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..300 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut damaged = bytes.to_vec();
        let at = (state % damaged.len() as u64) as usize;
        damaged[at] ^= 1 << (state >> 61);
        let (_, error) = read_events(&damaged, &[4096]);
        if let Some(error) = error {
            assert!(error.offset <= damaged.len() as u64, "{error}");
        }
        // The extractor takes whatever was read; a damaged timestamp may be refused.
        let (events, _) = read_events(&damaged, &[4096]);
        let mut extractor =
            call_audio::extract::CallExtractor::new(None, AssemblerConfig::default());
        for event in events {
            if extractor.handle(event).is_err() {
                break;
            }
            while extractor.pop_chunk().is_some() {}
        }
    }
}

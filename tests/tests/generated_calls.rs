//! Property tests on generated Connect calls: whatever the stream's shape (chunking, lost
//! blocks, repeated fragments, late agent, swapped track numbers, NUL padding, known or unknown
//! cluster sizes, TimecodeScale, lacing), reading + assembling yields exactly the expected PCM.

use call_audio::AssemblerConfig;
use kvs_media::{ConnectWriter, FragmentAudio, Lacing, TrackRole, WriterOptions};
use lca_tests::{extract_channels, read_events};
use proptest::prelude::*;

/// ns per sample at 8 kHz.
const SAMPLE_NS: i64 = 125_000;
const BASE_NS: i64 = 1_726_677_688_724 * 1_000_000;

#[derive(Debug, Clone)]
struct CallShape {
    caller_blocks: usize,
    agent_first_block: usize,
    agent_blocks: usize,
    samples_per_frame: usize,
    frames_per_block: usize,
    lacing: Lacing,
    blocks_per_fragment: usize,
    timecode_scale_ns: u64,
    known_size_clusters: bool,
    nul_padding: bool,
    swap_track_numbers: bool,
    lost: Vec<bool>,
    repeated: Vec<bool>,
    seed: u64,
}

fn lacing() -> impl Strategy<Value = Lacing> {
    prop_oneof![
        Just(Lacing::None),
        Just(Lacing::Xiph),
        Just(Lacing::Ebml),
        Just(Lacing::Fixed)
    ]
}

fn shape() -> impl Strategy<Value = CallShape> {
    (
        (1usize..30, 0usize..20, 0usize..30),
        (
            prop_oneof![Just(160usize), Just(256), Just(512)],
            1usize..4,
            lacing(),
            1usize..12,
        ),
        prop_oneof![
            Just(1_000_000u64),
            Just(2_000_000),
            Just(125_000),
            Just(100_000),
            Just(1_000)
        ],
        (any::<bool>(), any::<bool>(), any::<bool>()),
        (
            proptest::collection::vec(prop::bool::weighted(0.1), 64),
            proptest::collection::vec(prop::bool::weighted(0.15), 64),
        ),
        any::<u64>(),
    )
        .prop_map(
            |(
                (caller_blocks, agent_first_block, agent_blocks),
                (samples_per_frame, frames_per_block, lacing, blocks_per_fragment),
                timecode_scale_ns,
                (known_size_clusters, nul_padding, swap_track_numbers),
                (lost, repeated),
                seed,
            )| CallShape {
                caller_blocks,
                agent_first_block,
                agent_blocks,
                samples_per_frame,
                frames_per_block: if lacing == Lacing::None {
                    1
                } else {
                    frames_per_block
                },
                lacing,
                blocks_per_fragment,
                timecode_scale_ns,
                known_size_clusters,
                nul_padding,
                swap_track_numbers,
                lost,
                repeated,
                seed,
            },
        )
}

/// Deterministic pseudo-random non-zero PCM.
fn pcm(seed: u64, samples: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..samples)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state as i16) | 1).to_le_bytes()
        })
        .collect()
}

struct Generated {
    stream: Vec<u8>,
    caller: Vec<u8>,
    agent: Vec<u8>,
}

fn generate(shape: &CallShape) -> Generated {
    let block_samples = shape.samples_per_frame * shape.frames_per_block;
    let mut writer = ConnectWriter::new(WriterOptions {
        contact_id: "c0ffee00-0000-4000-8000-000000000001".to_string(),
        timecode_scale_ns: shape.timecode_scale_ns,
        known_size_clusters: shape.known_size_clusters,
        nul_padding: shape.nul_padding,
        swap_track_numbers: shape.swap_track_numbers,
        lacing: shape.lacing,
        frames_per_block: shape.frames_per_block,
        samples_per_frame: shape.samples_per_frame,
        ..WriterOptions::default()
    });
    // Every block of the call, in time order, caller before agent at the same time.
    let last_block = shape
        .caller_blocks
        .max(shape.agent_first_block + shape.agent_blocks);
    let mut blocks = Vec::new();
    for index in 0..last_block {
        if index < shape.caller_blocks {
            blocks.push((TrackRole::Caller, index));
        }
        if index >= shape.agent_first_block && index < shape.agent_first_block + shape.agent_blocks
        {
            blocks.push((TrackRole::Agent, index));
        }
    }
    let audio: Vec<Vec<u8>> = blocks
        .iter()
        .enumerate()
        .map(|(i, _)| pcm(shape.seed.wrapping_add(i as u64), block_samples))
        .collect();
    let kept: Vec<usize> = (0..blocks.len())
        .filter(|i| !shape.lost[i % shape.lost.len()])
        .collect();

    // Expected channels: kept blocks placed from the first kept block's time.
    let mut caller = Vec::new();
    let mut agent = Vec::new();
    if let Some(&first) = kept.first() {
        let origin = blocks[first].1;
        let end = kept
            .iter()
            .map(|&i| blocks[i].1 + 1)
            .max()
            .unwrap_or(origin);
        let len = (end - origin) * block_samples * 2;
        caller = vec![0u8; len];
        agent = vec![0u8; len];
        for &i in &kept {
            let (role, index) = blocks[i];
            let at = (index - origin) * block_samples * 2;
            let target = if role == TrackRole::Caller {
                &mut caller
            } else {
                &mut agent
            };
            target[at..at + audio[i].len()].copy_from_slice(&audio[i]);
        }
    }

    // Fragments of `blocks_per_fragment` block times; lost blocks are simply absent.
    let mut stream = Vec::new();
    let fragment_blocks = shape.blocks_per_fragment;
    for (n, start_index) in (0..last_block).step_by(fragment_blocks).enumerate() {
        let in_fragment: Vec<FragmentAudio> = kept
            .iter()
            .filter(|&&i| (start_index..start_index + fragment_blocks).contains(&blocks[i].1))
            .map(|&i| FragmentAudio {
                role: blocks[i].0,
                timestamp_ns: BASE_NS + (blocks[i].1 * block_samples) as i64 * SAMPLE_NS,
                pcm: &audio[i],
            })
            .collect();
        let producer_ms =
            ((BASE_NS + (start_index * block_samples) as i64 * SAMPLE_NS) / 1_000_000) as u64;
        let fragment = writer.fragment(producer_ms, &in_fragment);
        stream.extend_from_slice(&fragment);
        if shape.repeated[n % shape.repeated.len()] {
            stream.extend_from_slice(&fragment); // KVS redelivery
        }
    }
    Generated {
        stream,
        caller,
        agent,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn generated_calls_assemble_to_exactly_the_expected_pcm(shape in shape()) {
        let call = generate(&shape);
        let (caller, agent, extractor) = extract_channels(&call.stream, None, AssemblerConfig::default());
        prop_assert!(extractor.stopped().is_none());
        prop_assert_eq!(caller.len(), call.caller.len());
        prop_assert!(caller == call.caller, "caller channel differs");
        prop_assert!(agent == call.agent, "agent channel differs");
    }

    #[test]
    fn any_chunking_yields_identical_events(shape in shape(), pieces in proptest::collection::vec(1usize..5000, 1..8)) {
        let call = generate(&shape);
        let whole = read_events(&call.stream, &[call.stream.len().max(1)]);
        prop_assert_eq!(&whole.1, &None);
        let chunked = read_events(&call.stream, &pieces);
        prop_assert_eq!(whole, chunked);
    }
}

#[test]
fn sample_call_chunked_at_every_size_up_to_64_gives_identical_events() {
    let bytes = lca_tests::fixture_bytes("connect/sample-call.mkv");
    let bytes = &bytes[..200_000]; // a few fragments keep this quick
    let whole = read_events(bytes, &[bytes.len()]);
    for size in 1..=64 {
        assert_eq!(read_events(bytes, &[size]), whole, "piece size {size}");
    }
}

#[test]
fn a_capture_without_kvs_fragment_tags_extracts_whole_in_bounded_pieces() {
    // 6 minutes of 160-sample blocks: 9000 blocks per track, more than the extractor holds
    // for one fragment, and no AWS_KINESISVIDEO_* tags to mark fragment boundaries.
    let samples = 6 * 60 * 8000;
    let caller = pcm(7, samples);
    let agent = pcm(8, samples);
    let mut writer = ConnectWriter::new(WriterOptions {
        kvs_tags: false,
        samples_per_frame: 160,
        frames_per_fragment: 50,
        ..WriterOptions::default()
    });
    let stream = writer.call(&caller, &agent, 1_700_000_000_000).concat();
    let (got_caller, got_agent, extractor) =
        extract_channels(&stream, None, AssemblerConfig::default());
    assert!(extractor.fragments() >= 1);
    assert!(got_caller == caller, "caller differs");
    assert!(got_agent == agent, "agent differs");
}

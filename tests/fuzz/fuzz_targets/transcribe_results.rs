//! Transcribe's results, standard and Call Analytics, as the transcriber hands them to the pure
//! mapping (the SDK's fields; Call Analytics events as Transcribe's JSON), through the ledger
//! (reconnects, keep-alive silence, replay) and the LCA event mapping, in any order and with
//! any times.
//!
//! Must hold: no panic or overflow; every message is JSON LCA can read back as sent; the
//! replay buffer stays within its bound whatever Transcribe answers.
#![no_main]

use arbitrary::Arbitrary;
use call_audio::StereoChunk;
use lca_events::{LcaMessage, SegmentMapper, TranscriptResult};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use transcript_ledger::{SessionOutput, TranscriptLedger, map_output};

#[derive(Arbitrary, Debug)]
struct Input {
    start_sample: u32,
    lag_ms: u16,
    max_replay_ms: u16,
    save_partials: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Call audio sent to the session.
    Sent { samples: u16 },
    /// Keep-alive silence sent.
    KeepAlive { samples: u16 },
    /// A standard result, times in session ms.
    Transcript {
        channel: Option<bool>,
        start_ms: i32,
        length_ms: i32,
        partial: bool,
        words: u8,
    },
    /// A Call Analytics utterance.
    Utterance {
        agent: Option<bool>,
        begin_ms: Option<i64>,
        end_ms: Option<i64>,
        partial: bool,
        id: u8,
    },
    /// A Call Analytics category match.
    Category {
        names: Vec<u8>,
        begin_ms: Option<i64>,
        end_ms: Option<i64>,
    },
    /// The session failed: a new one starts from the ledger's resume point.
    Restart,
}

fuzz_target!(|input: Input| {
    let max_replay_samples = u64::from(input.max_replay_ms) * 8;
    let mut ledger = TranscriptLedger::new(
        u64::from(input.start_sample),
        u64::from(input.lag_ms),
        u64::from(input.max_replay_ms),
    );
    let mut mapper = SegmentMapper {
        call_id: "c-1".to_string(),
        time_offset_s: 0.0,
        save_partials: input.save_partials,
    };
    for op in input.ops {
        let output = match op {
            Op::Sent { samples } => {
                let samples = usize::from(samples);
                ledger.sent(&StereoChunk {
                    start_sample: ledger.sent_end(),
                    samples,
                    pcm: vec![0; samples * 4],
                });
                None
            }
            Op::KeepAlive { samples } => {
                ledger.keep_alive(u64::from(samples));
                None
            }
            Op::Restart => {
                let replay = ledger.restart();
                let replayed: u64 = replay.iter().map(|c| c.samples as u64).sum();
                assert!(replayed <= ledger.sent_end() - ledger.session_origin());
                None
            }
            Op::Transcript {
                channel,
                start_ms,
                length_ms,
                partial,
                words,
            } => Some(SessionOutput::Transcript(vec![TranscriptResult {
                channel_id: channel.map(|c| format!("ch_{}", u8::from(c))),
                start_time: f64::from(start_ms) / 1000.0,
                end_time: (f64::from(start_ms) + f64::from(length_ms)) / 1000.0,
                is_partial: partial,
                transcript: "word ".repeat(usize::from(words)),
                // The words spread evenly over the result (a replay may cut it after any).
                items: (0..u32::from(words))
                    .map(|n| {
                        let at = |k: u32| {
                            (f64::from(start_ms)
                                + f64::from(length_ms) * f64::from(k) / f64::from(words))
                                / 1000.0
                        };
                        lca_events::TranscriptItem {
                            start_time: at(n),
                            end_time: at(n + 1),
                            content: "word".to_string(),
                            is_punctuation: false,
                        }
                    })
                    .collect(),
            }])),
            Op::Utterance {
                agent,
                begin_ms,
                end_ms,
                partial,
                id,
            } => {
                let mut utterance = json!({
                    "UtteranceId": format!("u-{id}"),
                    "IsPartial": partial,
                    "Transcript": "words",
                });
                if let Some(agent) = agent {
                    utterance["ParticipantRole"] = json!(if agent { "AGENT" } else { "CUSTOMER" });
                }
                if let Some(begin) = begin_ms {
                    utterance["BeginOffsetMillis"] = json!(begin);
                }
                if let Some(end) = end_ms {
                    utterance["EndOffsetMillis"] = json!(end);
                }
                Some(SessionOutput::Utterance(utterance))
            }
            Op::Category {
                names,
                begin_ms,
                end_ms,
            } => {
                let names: Vec<String> = names.iter().map(|n| format!("category-{n}")).collect();
                let details: Map<String, Value> = names
                    .iter()
                    .map(|name| {
                        (
                            name.clone(),
                            json!({"TimestampRanges": [
                                {"BeginOffsetMillis": begin_ms, "EndOffsetMillis": end_ms}
                            ]}),
                        )
                    })
                    .collect();
                Some(SessionOutput::Category(json!({
                    "MatchedCategories": names,
                    "MatchedDetails": details,
                })))
            }
        };
        if let Some(output) = output {
            let mapped = map_output(output, &mut ledger, &mut mapper, "2026-12-04T12:00:00.000Z");
            for message in mapped.messages {
                let json = serde_json::to_string(&message).expect("a message is JSON");
                let back: LcaMessage = serde_json::from_str(&json).expect("LCA reads it back");
                assert_eq!(back, message);
            }
        }
        // The replay buffer holds at most its bound plus the chunk it cuts into.
        assert!(ledger.replay_bytes() as u64 <= (max_replay_samples + u64::from(u16::MAX)) * 4);
    }
});

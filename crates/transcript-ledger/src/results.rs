//! A Transcribe session's results as LCA messages: each result placed on the call by the
//! [`TranscriptLedger`] (dropped when it repeats what was published), then mapped by
//! [`SegmentMapper`]. The transcriber turns the SDK's events into [`SessionOutput`] at its
//! edge, so this mapping runs (and is fuzzed) without the SDK.

use lca_events::{LcaMessage, SegmentMapper, TranscriptResult};
use serde_json::Value;

use crate::TranscriptLedger;

/// One answer of a session, from either API.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionOutput {
    /// Standard mode: a TranscriptEvent's results.
    Transcript(Vec<TranscriptResult>),
    /// Call Analytics: an UtteranceEvent as Transcribe's JSON (`UtteranceId`, `IsPartial`,
    /// `ParticipantRole`, `BeginOffsetMillis`, `EndOffsetMillis`, ...), the shape LCA stores.
    Utterance(Value),
    /// Call Analytics: a CategoryEvent as Transcribe's JSON (`MatchedCategories`,
    /// `MatchedDetails`).
    Category(Value),
}

/// What one answer became.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mapped {
    /// The messages to publish, in order.
    pub messages: Vec<LcaMessage>,
    /// Results dropped because they repeat what was already published (after a resume).
    pub repeats_dropped: u64,
}

/// Places `output` on the call through `ledger` and maps what is new with `mapper`, stamped
/// `created_at` (LCA's CreatedAt).
pub fn map_output(
    output: SessionOutput,
    ledger: &mut TranscriptLedger,
    mapper: &mut SegmentMapper,
    created_at: &str,
) -> Mapped {
    let mut mapped = Mapped::default();
    match output {
        SessionOutput::Transcript(results) => {
            for result in results {
                let channel = usize::from(result.channel_id.as_deref() == Some("ch_1"));
                let Some(placement) = ledger.result(
                    channel,
                    result.start_time,
                    result.end_time,
                    result.is_partial,
                    None,
                ) else {
                    mapped.repeats_dropped += 1;
                    continue;
                };
                mapper.time_offset_s = placement.offset_s;
                let start_time = placement
                    .start_s
                    .map_or(result.start_time, |s| s - placement.offset_s);
                let placed = TranscriptResult {
                    start_time,
                    end_time: result.end_time + placement.end_offset_s - placement.offset_s,
                    ..result
                };
                mapped
                    .messages
                    .extend(mapper.transcript(&placed, created_at));
            }
        }
        SessionOutput::Utterance(mut utterance) => {
            let millis = |key: &str| utterance.get(key).and_then(Value::as_i64);
            let begin_ms = millis("BeginOffsetMillis");
            let end_ms = millis("EndOffsetMillis");
            let agent = utterance.get("ParticipantRole").and_then(Value::as_str) == Some("AGENT");
            let partial = utterance.get("IsPartial").and_then(Value::as_bool) == Some(true);
            let id = utterance
                .get("UtteranceId")
                .and_then(Value::as_str)
                .map(str::to_string);
            let Some(placement) = ledger.result(
                usize::from(agent),
                begin_ms.unwrap_or(0) as f64 / 1000.0,
                end_ms.unwrap_or(0) as f64 / 1000.0,
                partial,
                id.as_deref(),
            ) else {
                mapped.repeats_dropped += 1;
                return mapped;
            };
            if let Some(id) = placement.utterance_id {
                utterance["UtteranceId"] = Value::from(id);
            }
            if let Some(end) = end_ms {
                let shift = ((placement.end_offset_s - placement.offset_s) * 1000.0).round() as i64;
                utterance["EndOffsetMillis"] = Value::from(end.saturating_add(shift));
            }
            if let Some(start_s) = placement.start_s {
                let ms = ((start_s - placement.offset_s) * 1000.0).round() as i64;
                utterance["BeginOffsetMillis"] = Value::from(ms);
            }
            mapper.time_offset_s = placement.offset_s;
            mapped
                .messages
                .extend(mapper.utterance(&utterance, created_at));
        }
        SessionOutput::Category(category) => {
            let names: Vec<String> = category
                .get("MatchedCategories")
                .and_then(Value::as_array)
                .map(|names| {
                    names
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            if ledger.category(&names) {
                mapper.time_offset_s = ledger.offset_s(first_match_ms(&category) as f64 / 1000.0);
                mapped.messages.push(mapper.category(&category, created_at));
            } else {
                mapped.repeats_dropped += 1;
            }
        }
    }
    mapped
}

/// Where a category's earliest match begins (session ms; 0 when it gives no time).
fn first_match_ms(category: &Value) -> i64 {
    category
        .get("MatchedDetails")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|details| details.values())
        .filter_map(|detail| detail.get("TimestampRanges").and_then(Value::as_array))
        .flatten()
        .filter_map(|range| range.get("BeginOffsetMillis").and_then(Value::as_i64))
        .min()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use call_audio::StereoChunk;
    use lca_events::{LcaEvent, Segment};
    use serde_json::json;

    fn sent(ledger: &mut TranscriptLedger, seconds: u64) {
        let samples = (seconds * 8000) as usize;
        ledger.sent(&StereoChunk {
            start_sample: ledger.sent_end(),
            samples,
            pcm: vec![0; samples * 4],
        });
    }

    fn mapper() -> SegmentMapper {
        SegmentMapper {
            call_id: "c-1".to_string(),
            time_offset_s: 0.0,
            save_partials: true,
        }
    }

    fn segments(mapped: &Mapped) -> Vec<Segment> {
        mapped
            .messages
            .iter()
            .map(|m| match &m.event {
                LcaEvent::AddTranscriptSegment(segment) => segment.clone(),
                other => panic!("not a segment: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_result_of_a_resumed_session_is_placed_on_the_call_and_a_repeat_is_dropped() {
        // The session began 60 s into the call.
        let mut ledger = TranscriptLedger::new(60 * 8000, 5_000, 120_000);
        sent(&mut ledger, 10);
        let mut mapper = mapper();
        let result = |start: f64, end: f64| TranscriptResult {
            channel_id: Some("ch_1".to_string()),
            start_time: start,
            end_time: end,
            is_partial: false,
            transcript: "words".to_string(),
        };
        let mapped = map_output(
            SessionOutput::Transcript(vec![result(1.0, 2.5)]),
            &mut ledger,
            &mut mapper,
            "2026-12-04T12:00:00.000Z",
        );
        assert_eq!(mapped.repeats_dropped, 0);
        let [Segment::Standard(segment)] = &segments(&mapped)[..] else {
            panic!("{mapped:?}");
        };
        assert_eq!((segment.start_time, segment.end_time), (61.0, 62.5));
        assert_eq!(segment.created_at, "2026-12-04T12:00:00.000Z");
        // The same final again (a replay after a reconnect) is dropped.
        let again = map_output(
            SessionOutput::Transcript(vec![result(1.0, 2.5)]),
            &mut ledger,
            &mut mapper,
            "later",
        );
        assert_eq!((again.messages.len(), again.repeats_dropped), (0, 1));
    }

    #[test]
    fn an_utterance_is_placed_by_its_own_fields_and_keeps_transcribes_shape() {
        let mut ledger = TranscriptLedger::new(8000 * 30, 5_000, 120_000);
        sent(&mut ledger, 10);
        let mut mapper = mapper();
        let utterance = json!({
            "UtteranceId": "u-1", "IsPartial": false, "ParticipantRole": "AGENT",
            "BeginOffsetMillis": 1000, "EndOffsetMillis": 2000, "Transcript": "hello",
        });
        let mapped = map_output(
            SessionOutput::Utterance(utterance.clone()),
            &mut ledger,
            &mut mapper,
            "t",
        );
        let [Segment::Analytics(segment)] = &segments(&mapped)[..] else {
            panic!("{mapped:?}");
        };
        let event = &segment.utterance_event;
        assert_eq!(event["BeginOffsetMillis"], 31_000);
        assert_eq!(event["EndOffsetMillis"], 32_000);
        assert_eq!(event["ParticipantRole"], "AGENT");
        assert_eq!(event["Transcript"], "hello");
        let again = map_output(
            SessionOutput::Utterance(utterance),
            &mut ledger,
            &mut mapper,
            "t",
        );
        assert_eq!(again.repeats_dropped, 1);
    }

    #[test]
    fn a_category_is_published_once_timed_by_its_earliest_match() {
        let mut ledger = TranscriptLedger::new(0, 5_000, 120_000);
        sent(&mut ledger, 10);
        let mut mapper = mapper();
        let category = json!({
            "MatchedCategories": ["billing"],
            "MatchedDetails": {"billing": {"TimestampRanges": [
                {"BeginOffsetMillis": 4000, "EndOffsetMillis": 5000},
                {"BeginOffsetMillis": 1000, "EndOffsetMillis": 2000}
            ]}}
        });
        let mapped = map_output(
            SessionOutput::Category(category.clone()),
            &mut ledger,
            &mut mapper,
            "t",
        );
        assert_eq!(mapped.messages.len(), 1);
        assert_eq!(first_match_ms(&category), 1000);
        let again = map_output(
            SessionOutput::Category(category),
            &mut ledger,
            &mut mapper,
            "t",
        );
        assert_eq!((again.messages.len(), again.repeats_dropped), (0, 1));
    }
}

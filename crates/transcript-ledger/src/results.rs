//! A Transcribe session's results as LCA messages: each result placed on the call by the
//! [`TranscriptLedger`] (dropped when it repeats what was published), then mapped by
//! [`SegmentMapper`]. The transcriber turns the SDK's events into [`SessionOutput`] at its
//! edge, so this mapping runs (and is fuzzed) without the SDK.

use lca_events::{LcaMessage, SegmentMapper, TranscriptItem, TranscriptResult, items_text};
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
                let times: Vec<(f64, f64)> = result
                    .items
                    .iter()
                    .map(|item| (item.start_time, item.end_time))
                    .collect();
                let Some(placement) = ledger.result(
                    channel,
                    result.start_time,
                    result.end_time,
                    result.is_partial,
                    None,
                    &times,
                ) else {
                    mapped.repeats_dropped += 1;
                    continue;
                };
                let result = cut_result(result, placement.first_item);
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
            let items = utterance_items(&utterance);
            let times: Vec<(f64, f64)> = items
                .iter()
                .map(|item| (item.start_time, item.end_time))
                .collect();
            let Some(placement) = ledger.result(
                usize::from(agent),
                begin_ms.unwrap_or(0) as f64 / 1000.0,
                end_ms.unwrap_or(0) as f64 / 1000.0,
                partial,
                id.as_deref(),
                &times,
            ) else {
                mapped.repeats_dropped += 1;
                return mapped;
            };
            if placement.first_item > 0 {
                cut_utterance(&mut utterance, &items, placement.first_item);
            }
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

/// `result` from its item `first` on (all of it for 0): its start and text are the kept
/// items'.
fn cut_result(result: TranscriptResult, first: usize) -> TranscriptResult {
    if first == 0 {
        return result;
    }
    let items = result.items[first.min(result.items.len())..].to_vec();
    TranscriptResult {
        start_time: items.first().map_or(result.start_time, |i| i.start_time),
        transcript: items_text(items.iter().map(|i| (i.content.as_str(), i.is_punctuation))),
        items,
        ..result
    }
}

/// An UtteranceEvent's `Items` (JSON) as items with session seconds; an item without times
/// ends the list (nothing after it could be placed).
fn utterance_items(utterance: &Value) -> Vec<TranscriptItem> {
    let millis = |item: &Value, key: &str| item.get(key).and_then(Value::as_i64);
    utterance
        .get("Items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map_while(|item| {
            Some(TranscriptItem {
                start_time: millis(item, "BeginOffsetMillis")? as f64 / 1000.0,
                end_time: millis(item, "EndOffsetMillis")? as f64 / 1000.0,
                content: item
                    .get("Content")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                is_punctuation: item.get("Type").and_then(Value::as_str) == Some("punctuation"),
            })
        })
        .collect()
}

/// Cuts an UtteranceEvent (JSON) to its items from `first` on (`items`: its `Items` read by
/// [`utterance_items`]): `Items`, `Transcript` and `BeginOffsetMillis` become the kept
/// items'; `Entities` that begin before them go; `IssuesDetected`'s character offsets move
/// with the text (an issue in the cut words goes; all of them go if the new text is not the
/// end of the old one).
fn cut_utterance(utterance: &mut Value, items: &[TranscriptItem], first: usize) {
    let kept = &items[first.min(items.len())..];
    let Some(begin) = kept.first().map(|i| (i.start_time * 1000.0).round() as i64) else {
        return;
    };
    let text = items_text(kept.iter().map(|i| (i.content.as_str(), i.is_punctuation)));
    let old_text = utterance
        .get("Transcript")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    // Characters cut from the front, when the new text is the old one's end.
    let shift = old_text
        .ends_with(&text)
        .then(|| old_text.chars().count() - text.chars().count());
    if let Some(all) = utterance.get_mut("Items").and_then(Value::as_array_mut) {
        all.drain(..first.min(all.len()));
    }
    utterance["Transcript"] = Value::from(text);
    utterance["BeginOffsetMillis"] = Value::from(begin);
    if let Some(entities) = utterance.get_mut("Entities").and_then(Value::as_array_mut) {
        entities.retain(|entity| {
            entity
                .get("BeginOffsetMillis")
                .and_then(Value::as_i64)
                .is_some_and(|at| at >= begin)
        });
    }
    if let Some(issues) = utterance
        .get_mut("IssuesDetected")
        .and_then(Value::as_array_mut)
    {
        issues.retain_mut(|issue| {
            let (Some(shift), Some(offsets)) = (shift, issue.get_mut("CharacterOffsets")) else {
                return false;
            };
            let at = |key: &str| offsets.get(key).and_then(Value::as_i64);
            match (at("Begin"), at("End")) {
                (Some(b), Some(e)) if b >= shift as i64 => {
                    offsets["Begin"] = Value::from(b - shift as i64);
                    offsets["End"] = Value::from(e - shift as i64);
                    true
                }
                _ => false,
            }
        });
    }
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
            items: Vec::new(),
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
    fn an_utterance_straddling_the_last_final_after_a_replay_keeps_its_later_words() {
        // The agent's final "hello there" ended at call 32 s; a replay re-segments and hears
        // "hello there, how are you" as one utterance: only "how are you" is new (the comma
        // ends at the published final's end: it went with it).
        let mut ledger = TranscriptLedger::new(8000 * 30, 5_000, 120_000);
        sent(&mut ledger, 10);
        let mut mapper = mapper();
        let item = |begin: i64, end: i64, content: &str, kind: &str| json!({"BeginOffsetMillis": begin, "EndOffsetMillis": end, "Content": content, "Type": kind});
        let first = json!({
            "UtteranceId": "u-1", "IsPartial": false, "ParticipantRole": "AGENT",
            "BeginOffsetMillis": 1000, "EndOffsetMillis": 2000, "Transcript": "hello there",
            "Items": [item(1000, 1400, "hello", "pronunciation"), item(1500, 2000, "there", "pronunciation")],
        });
        assert_eq!(
            map_output(
                SessionOutput::Utterance(first),
                &mut ledger,
                &mut mapper,
                "t"
            )
            .messages
            .len(),
            1
        );
        let straddling = json!({
            "UtteranceId": "u-9", "IsPartial": false, "ParticipantRole": "AGENT",
            "BeginOffsetMillis": 1010, "EndOffsetMillis": 3500,
            "Transcript": "hello there, how are you",
            "Items": [item(1010, 1400, "hello", "pronunciation"), item(1500, 1990, "there", "pronunciation"),
                      item(1990, 1990, ",", "punctuation"), item(2300, 2600, "how", "pronunciation"),
                      item(2600, 2900, "are", "pronunciation"), item(2900, 3500, "you", "pronunciation")],
            "Entities": [{"BeginOffsetMillis": 1500, "Content": "there"}, {"BeginOffsetMillis": 2600, "Content": "are"}],
            "IssuesDetected": [{"CharacterOffsets": {"Begin": 0, "End": 5}}, {"CharacterOffsets": {"Begin": 13, "End": 16}}],
        });
        let mapped = map_output(
            SessionOutput::Utterance(straddling),
            &mut ledger,
            &mut mapper,
            "t",
        );
        let [Segment::Analytics(segment)] = &segments(&mapped)[..] else {
            panic!("{mapped:?}");
        };
        let event = &segment.utterance_event;
        assert_eq!(event["Transcript"], "how are you");
        assert_eq!(event["BeginOffsetMillis"], 32_300);
        assert_eq!(event["EndOffsetMillis"], 33_500);
        assert_eq!(event["Items"].as_array().unwrap().len(), 3);
        assert_eq!(
            event["Entities"],
            json!([{"BeginOffsetMillis": 2600, "Content": "are"}])
        );
        // "how" at 13..16 of the old text is at 0..3 of the new; "hello" went with its words.
        assert_eq!(
            event["IssuesDetected"],
            json!([{"CharacterOffsets": {"Begin": 0, "End": 3}}])
        );
        // Standard mode: a result whose words all repeat the final is dropped; one without
        // items cannot be cut and is dropped as before.
        let words = |spans: &[(f64, f64)]| {
            spans
                .iter()
                .map(|&(start_time, end_time)| lca_events::TranscriptItem {
                    start_time,
                    end_time,
                    content: format!("w{start_time}"),
                    is_punctuation: false,
                })
                .collect::<Vec<_>>()
        };
        let standard = |start: f64, end: f64, items| TranscriptResult {
            channel_id: Some("ch_1".into()),
            start_time: start,
            end_time: end,
            is_partial: false,
            transcript: "x".into(),
            items,
        };
        let out = |result, ledger: &mut TranscriptLedger, mapper: &mut SegmentMapper| {
            map_output(SessionOutput::Transcript(vec![result]), ledger, mapper, "t")
        };
        let repeat = out(
            standard(3.0, 3.6, words(&[(3.0, 3.3), (3.3, 3.6)])),
            &mut ledger,
            &mut mapper,
        );
        assert_eq!((repeat.messages.len(), repeat.repeats_dropped), (0, 1));
        let bare = out(standard(3.0, 4.5, Vec::new()), &mut ledger, &mut mapper);
        assert_eq!((bare.messages.len(), bare.repeats_dropped), (0, 1));
        let cut = out(
            standard(3.0, 4.5, words(&[(3.0, 3.4), (3.4, 3.8), (3.8, 4.5)])),
            &mut ledger,
            &mut mapper,
        );
        let [Segment::Standard(segment)] = &segments(&cut)[..] else {
            panic!("{cut:?}");
        };
        // The utterance's final ended at 33.5 s: the word 33.4-33.8 is mostly after it.
        assert_eq!((segment.start_time, segment.end_time), (33.4, 34.5));
        assert_eq!(segment.transcript, "w3.4 w3.8");
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

//! A replay that segments the call differently never drops speech nor publishes it twice.
//!
//! The stand-in recognizer here hears each channel as a list of words with call times. The
//! first session reports them grouped into results (finals, then maybe an open partial), up to
//! where its audio was cut; the ledger restarts; the second session hears the call again from
//! the ledger's replay point and groups the words otherwise (shifted boundaries: any grouping
//! proptest draws). Every word of the call must be in exactly one published final, in order.

use call_audio::StereoChunk;
use lca_events::{LcaEvent, Segment, SegmentMapper, Speaker, TranscriptItem, TranscriptResult};
use proptest::prelude::*;
use transcript_ledger::{SessionOutput, TranscriptLedger, map_output};

/// Transcribe reports a word within this long of its end (the ledger's lag window).
const LAG_MS: u64 = 5_000;

/// A word: call ms where it starts and ends, and its label.
#[derive(Debug, Clone)]
struct Word {
    start_ms: u64,
    end_ms: u64,
    label: String,
}

/// One channel's words: `(gap before, length)` pairs in ms, laid end to end.
fn words(channel: usize, shape: &[(u64, u64)]) -> Vec<Word> {
    let mut at = 0;
    shape
        .iter()
        .enumerate()
        .map(|(n, &(gap, length))| {
            at += gap;
            let word = Word {
                start_ms: at,
                end_ms: at + length,
                label: format!("c{channel}w{n}"),
            };
            at += length;
            word
        })
        .collect()
}

/// A result of `group` as a session whose audio starts at call ms `origin_ms` reports it.
fn result(channel: usize, group: &[Word], origin_ms: u64, partial: bool) -> TranscriptResult {
    let session_s = |ms: u64| ms.saturating_sub(origin_ms) as f64 / 1000.0;
    let items: Vec<TranscriptItem> = group
        .iter()
        .map(|word| TranscriptItem {
            // A word the replay point cuts is heard from the point on.
            start_time: session_s(word.start_ms),
            end_time: session_s(word.end_ms),
            content: word.label.clone(),
            is_punctuation: false,
        })
        .collect();
    TranscriptResult {
        channel_id: Some(format!("ch_{channel}")),
        start_time: items[0].start_time,
        end_time: items[items.len() - 1].end_time,
        is_partial: partial,
        transcript: group
            .iter()
            .map(|w| w.label.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        items,
    }
}

/// Splits `words` into consecutive groups of the sizes drawn (cycled; each at least 1).
fn grouped(words: &[Word], sizes: &[usize]) -> Vec<Vec<Word>> {
    let mut groups = Vec::new();
    let mut rest = words;
    let mut n = 0;
    while !rest.is_empty() {
        let size = sizes[n % sizes.len()].clamp(1, rest.len());
        groups.push(rest[..size].to_vec());
        rest = &rest[size..];
        n += 1;
    }
    groups
}

/// The finals' words each channel published, in order.
fn publish(
    output: SessionOutput,
    ledger: &mut TranscriptLedger,
    mapper: &mut SegmentMapper,
    published: &mut [Vec<String>; 2],
) {
    for message in map_output(output, ledger, mapper, "t").messages {
        if let LcaEvent::AddTranscriptSegment(Segment::Standard(segment)) = message.event
            && !segment.is_partial
        {
            let channel = usize::from(segment.channel == Speaker::Agent);
            published[channel].extend(segment.transcript.split(' ').map(str::to_string));
        }
    }
}

/// Sends silence up to call ms `to_ms` (the ledger only counts it).
fn send_to(ledger: &mut TranscriptLedger, to_ms: u64) {
    let samples = (to_ms * 8).saturating_sub(ledger.sent_end()) as usize;
    if samples > 0 {
        ledger.sent(&StereoChunk {
            start_sample: ledger.sent_end(),
            samples,
            pcm: vec![0; samples * 4],
        });
    }
}

fn word_shape() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0u64..1500, 80u64..900), 1..25)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_word_is_published_once_whatever_the_second_session_segments(
        shapes in [word_shape(), word_shape()],
        first_sizes in prop::collection::vec(1usize..5, 1..6),
        second_sizes in prop::collection::vec(1usize..5, 1..6),
        // Per channel: how many of the first session's groups were final, and whether the
        // next one was open as a partial when the session was cut.
        finals_reported in [0usize..12, 0usize..12],
        open_partial in [any::<bool>(), any::<bool>()],
        // Where the first session's audio was cut, past its last report (within the lag).
        cut_after in 0u64..LAG_MS,
    ) {
        check(Case { shapes, first_sizes, second_sizes, finals_reported, open_partial, cut_after })?;
    }
}

/// One schedule: the words, the two sessions' groupings, what the first one reported.
#[derive(Debug)]
struct Case {
    shapes: [Vec<(u64, u64)>; 2],
    first_sizes: Vec<usize>,
    second_sizes: Vec<usize>,
    finals_reported: [usize; 2],
    open_partial: [bool; 2],
    cut_after: u64,
}

fn check(case: Case) -> Result<(), TestCaseError> {
    let Case {
        shapes,
        first_sizes,
        second_sizes,
        finals_reported,
        open_partial,
        cut_after,
    } = case;
    let channels = [words(0, &shapes[0]), words(1, &shapes[1])];
    let call_end = channels.iter().flatten().map(|w| w.end_ms).max().unwrap();
    // Every replay kept (max_replay_ms far beyond the call).
    let mut ledger = TranscriptLedger::new(0, LAG_MS, 10_000_000);
    let mut mapper = SegmentMapper {
        call_id: "c".into(),
        time_offset_s: 0.0,
        save_partials: true,
    };
    let mut published: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    // Session 1's reports: finals, then maybe the next group as a partial.
    let mut session_one = Vec::new();
    let mut first_unreported = u64::MAX;
    let mut reported_to = 0;
    for channel in 0..2 {
        let groups = grouped(&channels[channel], &first_sizes);
        let finals = finals_reported[channel].min(groups.len());
        let open = usize::from(open_partial[channel] && finals < groups.len());
        for (n, group) in groups.iter().enumerate() {
            if n < finals {
                session_one.push(result(channel, group, 0, false));
                reported_to = reported_to.max(group.last().unwrap().end_ms);
            } else if n < finals + open {
                // An open result grows as partials, a word at a time.
                for words in 1..=group.len() {
                    session_one.push(result(channel, &group[..words], 0, true));
                }
                reported_to = reported_to.max(group.last().unwrap().end_ms);
            } else {
                first_unreported = first_unreported.min(group[0].end_ms);
                break;
            }
        }
    }
    // Its audio was cut after its last report, and before Transcribe had to report the
    // first word it did not (it reports each within the lag window of the word's end).
    let sent_ms = (reported_to + cut_after).min(call_end);
    prop_assume!(first_unreported == u64::MAX || sent_ms < first_unreported + LAG_MS);
    // Results come in the order they end, each once its audio has been sent, as a session
    // gives them (a stable sort: a partial's versions stay in order).
    session_one.sort_by(|a, b| a.end_time.total_cmp(&b.end_time));
    for result in session_one {
        send_to(&mut ledger, (result.end_time * 1000.0).round() as u64);
        publish(
            SessionOutput::Transcript(vec![result]),
            &mut ledger,
            &mut mapper,
            &mut published,
        );
    }
    send_to(&mut ledger, sent_ms);
    // The replay, and session 2 to the call's end, grouped otherwise.
    let replay = ledger.restart();
    let origin_ms = replay
        .first()
        .map_or(ledger.sent_end(), |c| c.start_sample)
        .div_ceil(8);
    let mut session_two = Vec::new();
    for (channel, words) in channels.iter().enumerate() {
        let heard: Vec<Word> = words
            .iter()
            .filter(|w| w.end_ms > origin_ms)
            .map(|w| Word {
                start_ms: w.start_ms.max(origin_ms),
                ..w.clone()
            })
            .collect();
        for group in grouped(&heard, &second_sizes) {
            session_two.push(result(channel, &group, origin_ms, false));
        }
    }
    session_two.sort_by(|a, b| a.end_time.total_cmp(&b.end_time));
    for result in session_two {
        send_to(
            &mut ledger,
            origin_ms + (result.end_time * 1000.0).round() as u64,
        );
        publish(
            SessionOutput::Transcript(vec![result]),
            &mut ledger,
            &mut mapper,
            &mut published,
        );
    }
    for channel in 0..2 {
        let expected: Vec<String> = channels[channel].iter().map(|w| w.label.clone()).collect();
        prop_assert_eq!(
            &published[channel],
            &expected,
            "channel {} (replay from {} ms)",
            channel,
            origin_ms
        );
    }
    Ok(())
}

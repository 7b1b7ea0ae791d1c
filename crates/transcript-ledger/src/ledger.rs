//! [`TranscriptLedger`]: what a Transcribe session has been sent and has answered, so that a
//! session cut mid-call is resumed without losing audio, without resending audio already
//! transcribed, and without publishing a segment twice.
//!
//! Transcribe does not acknowledge audio. What is known to be done is what its *final* results
//! cover; speech it is still working on shows as an open *partial* result. So on a reconnect
//! the audio is replayed from the start of the earliest open partial (or, when nothing is open,
//! from the last final end, but at most a few seconds back: speech Transcribe has not reported
//! yet). Results of the new session that end by a channel's last published final repeat
//! what was already published and are dropped. A new session may segment the call otherwise
//! than the one before (a replay starts at the earliest point of both channels, so one
//! channel's audio is heard again from before its last final): a result that straddles that
//! final's end keeps its words from there on, with their times (the words whose middle is
//! after it), so no speech is lost and none is published twice. The first result continuing a
//! cut partial keeps its start (standard mode) or id (analytics), so LCA replaces that partial
//! instead of keeping it.
//!
//! Times: the call's audio is counted in samples from the start of the call (the assembler's
//! `start_sample`). A session's clock is the audio it received, which is the call's audio from
//! the session's origin plus any keep-alive silence; both are accounted for here.

use std::collections::{BTreeSet, VecDeque};

use call_audio::StereoChunk;

use call_lifecycle::delivered::MAX_CALL_CATEGORIES;

/// Samples per millisecond at 8 kHz.
const SAMPLES_PER_MS: u64 = 8;

/// How a result maps onto the call.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Seconds to add to the session's start time to get the call's.
    pub offset_s: f64,
    /// Seconds to add to the session's end time (differs from `offset_s` when keep-alive
    /// silence was inserted during the result).
    pub end_offset_s: f64,
    /// The result continues a partial cut by a reconnect: publish it with this start time
    /// (call seconds), so its segment id is the cut partial's.
    pub start_s: Option<f64>,
    /// Likewise for Call Analytics: the cut partial's UtteranceId.
    pub utterance_id: Option<String>,
    /// The first of the result's items to publish: 0 for all of them; more when the result
    /// straddles the channel's last published final, whose words before it were published
    /// already. The result then starts at that item.
    pub first_item: usize,
}

/// Replay buffer and result bookkeeping for one call's Transcribe sessions.
#[derive(Debug)]
pub struct TranscriptLedger {
    replay: VecDeque<StereoChunk>,
    /// Call sample after the last audio sent.
    sent_end: u64,
    /// Call sample at which the current session's audio starts.
    origin: u64,
    /// Keep-alive silence in the current session: (session sample where inserted, samples).
    inserted: Vec<(u64, u64)>,
    /// Samples the current session has received (audio + keep-alives).
    session_samples: u64,
    /// Per channel: call ms where the last published final ended.
    final_end: [Option<u64>; 2],
    /// Per channel: the open partial (call ms start, utterance id).
    open: [Option<(u64, Option<String>)>; 2],
    /// Per channel: a partial cut by the last reconnect, to be continued.
    cut: [Option<(u64, Option<String>)>; 2],
    categories: BTreeSet<String>,
    lag_samples: u64,
    max_replay_samples: u64,
}

/// How far from a cut partial's start a new result may begin and still continue it.
const CONTINUE_TOLERANCE_MS: u64 = 500;

impl TranscriptLedger {
    /// A ledger for a call whose next audio starts at `start_sample`. `lag_ms`: how long
    /// Transcribe may take to report speech at all (audio this recent is replayed even when
    /// no result is open); `max_replay_ms` bounds the replay buffer.
    pub fn new(start_sample: u64, lag_ms: u64, max_replay_ms: u64) -> Self {
        Self {
            replay: VecDeque::new(),
            sent_end: start_sample,
            origin: start_sample,
            inserted: Vec::new(),
            session_samples: 0,
            final_end: [None; 2],
            open: [None, None],
            cut: [None, None],
            categories: BTreeSet::new(),
            lag_samples: lag_ms * SAMPLES_PER_MS,
            max_replay_samples: max_replay_ms * SAMPLES_PER_MS,
        }
    }

    /// Takes over what an earlier invocation of the call already published (it crashed and
    /// this one re-transcribes its audio): results starting before these finals' ends, and
    /// these categories, are not published again.
    pub fn restore(&mut self, final_end_ms: [Option<u64>; 2], categories: &BTreeSet<String>) {
        self.final_end = final_end_ms;
        self.categories.extend(categories.iter().cloned());
    }

    /// Call sample after the last audio sent.
    pub fn sent_end(&self) -> u64 {
        self.sent_end
    }

    /// Call sample where the current session's audio starts.
    pub fn session_origin(&self) -> u64 {
        self.origin
    }

    /// Bytes held for a possible replay.
    pub fn replay_bytes(&self) -> usize {
        self.replay.iter().map(|c| c.pcm.len()).sum()
    }

    /// Records a chunk of call audio sent to the current session.
    pub fn sent(&mut self, chunk: &StereoChunk) {
        self.sent_end = chunk.start_sample + chunk.samples as u64;
        self.session_samples += chunk.samples as u64;
        self.replay.push_back(chunk.clone());
        self.trim();
    }

    /// Records keep-alive silence of `samples` stereo samples sent to the current session.
    pub fn keep_alive(&mut self, samples: u64) {
        self.inserted.push((self.session_samples, samples));
        self.session_samples += samples;
    }

    /// Call seconds minus session seconds at session time `session_s` (add it to a session
    /// time to get the call's).
    pub fn offset_s(&self, session_s: f64) -> f64 {
        let at = (session_s.max(0.0) * 8000.0).round() as u64;
        let silence: u64 = self
            .inserted
            .iter()
            .filter(|(pos, _)| *pos < at)
            .map(|(_, n)| n)
            .sum();
        (self.origin as f64 - silence as f64) / 8000.0
    }

    /// A result on `channel` (0 = caller/CUSTOMER, 1 = agent/AGENT) at session seconds
    /// `start_s..end_s`, with its items' session times (`items`: start and end of each word
    /// or mark, in order; empty when it has none): where to publish it, or `None` when it
    /// repeats published audio.
    ///
    /// A result that starts before the channel's last published final and ends after it is
    /// cut there: its items whose middle is after that final's end are published (from
    /// [`Placement::first_item`]); with none, it is a repeat. One without items cannot be cut
    /// and is dropped as a repeat (Transcribe gives items with every result; the API
    /// references list `Items` in both `Alternative` and `UtteranceEvent`).
    pub fn result(
        &mut self,
        channel: usize,
        start_s: f64,
        end_s: f64,
        partial: bool,
        utterance_id: Option<&str>,
        items: &[(f64, f64)],
    ) -> Option<Placement> {
        let channel = channel.min(1);
        let end_offset_s = self.offset_s(end_s);
        let end_ms = to_ms(end_s + end_offset_s);
        let mut start_s = start_s;
        let mut first_item = 0;
        if let Some(published) = self.final_end[channel]
            && to_ms(start_s + self.offset_s(start_s)) < published
        {
            if end_ms <= published {
                return None;
            }
            let call_ms = |session_s: f64| to_ms(session_s + self.offset_s(session_s));
            first_item = items
                .iter()
                .position(|&(start, end)| call_ms((start + end) / 2.0) > published)?;
            start_s = items[first_item].0;
        }
        let offset_s = self.offset_s(start_s);
        let start_ms = to_ms(start_s + offset_s);
        let mut placement = Placement {
            offset_s,
            end_offset_s,
            start_s: None,
            utterance_id: None,
            first_item,
        };
        if let Some((cut_ms, cut_id)) = &self.cut[channel]
            && start_ms.abs_diff(*cut_ms) <= CONTINUE_TOLERANCE_MS
        {
            placement.start_s = Some(*cut_ms as f64 / 1000.0);
            placement.utterance_id = cut_id.clone();
        }
        if partial {
            let id = placement
                .utterance_id
                .clone()
                .or(utterance_id.map(str::to_string));
            let start = placement.start_s.map_or(start_ms, to_ms);
            self.open[channel] = Some((start, id));
        } else {
            self.open[channel] = None;
            self.cut[channel] = None;
            self.final_end[channel] = Some(end_ms.max(self.final_end[channel].unwrap_or(0)));
        }
        self.trim();
        Some(placement)
    }

    /// A CategoryEvent matching `names`: whether any of them is new to this call (a resumed
    /// session may match a category again).
    /// At most [`MAX_CALL_CATEGORIES`] distinct categories are kept (and so published).
    pub fn category(&mut self, names: &[String]) -> bool {
        let mut new = false;
        for name in names {
            if self.categories.contains(name) {
                continue;
            }
            if self.categories.len() >= MAX_CALL_CATEGORIES {
                tracing::warn!(
                    limit = MAX_CALL_CATEGORIES,
                    "a Call Analytics category beyond MAX_CALL_CATEGORIES distinct categories of this call is not published"
                );
                continue;
            }
            self.categories.insert(name.clone());
            new = true;
        }
        new
    }

    /// Call sample from which a new session must replay audio: per channel, the start of its
    /// open partial, or else the end of its last final but no earlier than the lag window
    /// (speech not reported yet); the earliest of the two channels.
    pub fn resume_point(&self) -> u64 {
        let lag_floor = self.sent_end.saturating_sub(self.lag_samples);
        let point = (0..2)
            .map(|c| match &self.open[c] {
                Some((ms, _)) => ms * SAMPLES_PER_MS,
                None => {
                    self.final_end[c].map_or(lag_floor, |ms| (ms * SAMPLES_PER_MS).max(lag_floor))
                }
            })
            .min()
            .unwrap_or(lag_floor);
        let oldest = self
            .replay
            .front()
            .map_or(self.sent_end, |c| c.start_sample);
        point
            .max(self.sent_end.saturating_sub(self.max_replay_samples))
            .clamp(oldest.min(self.sent_end), self.sent_end)
    }

    /// Starts a new session after the current one failed: returns the audio to send it first
    /// (from [`Self::resume_point`], split mid-chunk if needed), already recorded as sent.
    pub fn restart(&mut self) -> Vec<StereoChunk> {
        let point = self.resume_point();
        self.trim_to(point);
        self.origin = point;
        self.inserted.clear();
        self.cut = std::mem::take(&mut self.open);
        self.session_samples = self.replay.iter().map(|c| c.samples as u64).sum();
        self.replay.iter().cloned().collect()
    }

    fn trim(&mut self) {
        let point = self.resume_point();
        self.trim_to(point);
    }

    /// Drops audio before call sample `point`.
    fn trim_to(&mut self, point: u64) {
        while let Some(front) = self.replay.front_mut() {
            let end = front.start_sample + front.samples as u64;
            if end <= point {
                self.replay.pop_front();
            } else {
                if front.start_sample < point {
                    let skip = (point - front.start_sample) as usize;
                    front.pcm.drain(..skip * 4);
                    front.samples -= skip;
                    front.start_sample = point;
                }
                break;
            }
        }
    }
}

fn to_ms(seconds: f64) -> u64 {
    (seconds.max(0.0) * 1000.0).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(start_sample: u64, samples: usize) -> StereoChunk {
        StereoChunk {
            start_sample,
            samples,
            pcm: (0..samples * 4).map(|i| (i % 251) as u8).collect(),
        }
    }

    /// Sends `seconds` of audio in 100 ms chunks from the current end.
    fn send(ledger: &mut TranscriptLedger, seconds: u64) {
        for _ in 0..seconds * 10 {
            ledger.sent(&chunk(ledger.sent_end(), 800));
        }
    }

    #[test]
    fn replays_from_the_earliest_open_partial() {
        let mut ledger = TranscriptLedger::new(0, 10_000, 120_000);
        send(&mut ledger, 20);
        assert!(ledger.result(1, 2.0, 6.0, false, None, &[]).is_some());
        assert!(ledger.result(0, 12.0, 14.0, true, None, &[]).is_some());
        assert!(ledger.result(1, 13.0, 15.0, true, None, &[]).is_some());
        assert_eq!(ledger.resume_point(), 12 * 8000);
        let replay = ledger.restart();
        assert_eq!(replay[0].start_sample, 96_000);
        assert_eq!(
            replay.iter().map(|c| c.samples).sum::<usize>(),
            8 * 8000,
            "12 s .. 20 s"
        );
        // The new session's clock starts at 12 s of the call.
        let p = ledger.result(0, 0.02, 2.5, false, None, &[]).unwrap();
        assert_eq!(p.offset_s, 12.0);
        assert_eq!(
            p.start_s,
            Some(12.0),
            "continues the cut partial: same segment id"
        );
        // Not near the cut partial: published at its own time.
        let p = ledger.result(1, 3.0, 4.0, false, None, &[]).unwrap();
        assert_eq!(p.start_s, None);
    }

    #[test]
    fn without_open_results_replays_only_recent_audio() {
        let mut ledger = TranscriptLedger::new(0, 5_000, 120_000);
        send(&mut ledger, 30);
        ledger.result(0, 1.0, 4.0, false, None, &[]).unwrap();
        assert_eq!(ledger.resume_point(), 25 * 8000, "the last 5 s");
        assert_eq!(
            ledger.replay_bytes(),
            5 * 8000 * 4,
            "older audio is not kept"
        );
        send(&mut ledger, 1);
        ledger.result(0, 29.0, 30.5, false, None, &[]).unwrap();
        assert_eq!(
            ledger.resume_point(),
            26 * 8000,
            "the agent may be speaking unreported"
        );
        ledger.result(1, 28.0, 30.8, false, None, &[]).unwrap();
        assert_eq!(
            ledger.resume_point(),
            30_500 * 8,
            "after both channels' last finals"
        );
    }

    #[test]
    fn results_repeating_published_finals_are_dropped() {
        let mut ledger = TranscriptLedger::new(0, 5_000, 120_000);
        send(&mut ledger, 10);
        ledger.result(1, 5.0, 9.0, false, None, &[]).unwrap();
        ledger.result(0, 7.0, 8.0, true, None, &[]).unwrap();
        ledger.restart(); // from 7 s
        // The agent's speech 7..9 s is heard again: already published.
        assert_eq!(ledger.result(1, 0.0, 2.0, true, None, &[]), None);
        assert_eq!(ledger.result(1, 0.0, 2.0, false, None, &[]), None);
        // The agent's next turn is new.
        assert!(ledger.result(1, 2.5, 3.0, false, None, &[]).is_some());
    }

    #[test]
    fn keep_alive_silence_is_not_call_time() {
        let mut ledger = TranscriptLedger::new(16_000, 5_000, 120_000);
        send(&mut ledger, 1);
        ledger.keep_alive(8);
        ledger.keep_alive(8);
        send(&mut ledger, 1);
        // Session second 1.5 is call second 2 + 1.5 - 2 ms of keep-alive.
        let p = ledger.result(0, 1.5, 1.8, false, None, &[]).unwrap();
        assert!((p.offset_s - (2.0 - 0.002)).abs() < 1e-9, "{}", p.offset_s);
        let p = ledger.result(1, 0.5, 0.8, false, None, &[]).unwrap();
        assert_eq!(p.offset_s, 2.0);
        // A result spanning the keep-alives: its end moves, its start does not.
        let p = ledger.result(0, 1.9, 2.0, false, None, &[]).unwrap();
        assert!((p.end_offset_s - (2.0 - 0.002)).abs() < 1e-9);
        let p = ledger.result(1, 0.9, 1.5, false, None, &[]).unwrap();
        assert_eq!(p.offset_s, 2.0);
        assert!((p.end_offset_s - (2.0 - 0.002)).abs() < 1e-9);
    }

    #[test]
    fn replay_is_bounded_and_split_mid_chunk() {
        let mut ledger = TranscriptLedger::new(0, 5_000, 10_000);
        send(&mut ledger, 3);
        ledger.result(1, 0.1, 0.5, false, Some("u-0"), &[]).unwrap();
        ledger.result(0, 0.45, 1.0, true, Some("u-1"), &[]).unwrap();
        let replay = ledger.restart();
        assert_eq!(replay[0].start_sample, 3600);
        assert_eq!(replay[0].samples, 400);
        assert_eq!(replay[0].pcm.len(), 1600);
        assert_eq!(replay[0].pcm[0], chunk(3200, 800).pcm[1600]);
        let p = ledger.result(0, 0.1, 0.5, false, Some("u-9"), &[]).unwrap();
        assert_eq!(p.utterance_id.as_deref(), Some("u-1"));
        // An open partial older than the replay bound does not keep audio forever.
        let mut ledger = TranscriptLedger::new(0, 5_000, 10_000);
        send(&mut ledger, 1);
        ledger.result(0, 0.0, 0.5, true, None, &[]).unwrap();
        send(&mut ledger, 30);
        assert_eq!(ledger.replay_bytes(), 10 * 8000 * 4);
    }

    #[test]
    fn categories_are_reported_once_per_call() {
        let mut ledger = TranscriptLedger::new(0, 5_000, 10_000);
        assert!(ledger.category(&["billing".into()]));
        assert!(!ledger.category(&["billing".into()]));
        assert!(ledger.category(&["billing".into(), "churn".into()]));
    }

    #[test]
    fn categories_beyond_the_limit_are_not_kept_nor_published() {
        let mut ledger = TranscriptLedger::new(0, 0, 1000);
        let names: Vec<String> = (0..=MAX_CALL_CATEGORIES).map(|n| format!("c{n}")).collect();
        assert!(ledger.category(&names[..MAX_CALL_CATEGORIES]));
        assert!(
            !ledger.category(&names[MAX_CALL_CATEGORIES..]),
            "one too many"
        );
        assert!(!ledger.category(&names[..1]), "known already");
    }
}

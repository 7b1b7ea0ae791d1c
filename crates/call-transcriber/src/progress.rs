//! [`RunProgress`]: a run's figures as they grow, written by its tasks (the reading loop,
//! the Transcribe session, the publisher) and read by the invocation's metrics lines while
//! the run goes on, so a run that times out or crashes has already reported all but its last
//! interval. The arithmetic (lags, how far behind the live call the transcription is) is
//! pure over the values and instants it is given.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::RunFigures;

/// Call samples per millisecond (8 kHz).
pub(crate) const SAMPLES_PER_MS: u64 = call_audio::CONNECT_SAMPLE_RATE as u64 / 1000;

/// How close in time two arrivals of KVS bytes are taken as one in the arrivals: a
/// transcript lag is measured to within this.
pub const ARRIVAL_RESOLUTION: Duration = Duration::from_millis(10);

/// A run's figures so far; clones share them.
#[derive(Debug, Clone, Default)]
pub struct RunProgress(Arc<Mutex<Progress>>);

/// What [`RunProgress`] holds.
#[derive(Debug, Default)]
struct Progress {
    /// The call sample this run starts at.
    start_sample: u64,
    /// Call audio assembled (the call's sample count at the reader's position).
    assembled_to: u64,
    /// When the call's audio arrived: `(end sample, arrived)` in call order, one entry per
    /// [`ARRIVAL_RESOLUTION`] of arrival time at most (chunks arriving within it share the
    /// first one's entry), so it grows with the invocation's time, not with the audio it
    /// reads.
    arrivals: Vec<(u64, Instant)>,
    /// Final segments acknowledged by Kinesis: `(end ms, acknowledged)`.
    final_acks: Vec<(u64, Instant)>,
    /// The largest KVS "millis behind now" seen.
    kvs_behind_ms: Option<u64>,
    /// The stream's newest sample as last estimated, and when: the reader's position plus
    /// KVS's "millis behind now" at a fragment's end.
    live_edge: Option<(u64, Instant)>,
    /// The stream has ended: its live edge no longer moves.
    stream_ended: bool,
    /// Since when the reading has been held back (the Transcribe session's queue full): the
    /// call goes on meanwhile, though no new fragment is read.
    held_back_since: Option<Instant>,
    /// The call sample up to which audio has been given to Transcribe (by any lane).
    transcribed_to: u64,
    /// Per lane still running ([`crate::lanes`]), by index: the call sample up to which its
    /// audio has been given to Transcribe. The first is the lane being published.
    lanes: BTreeMap<usize, u64>,
    /// Transcribe streams opened.
    sessions: u32,
    /// Time spent waiting for Transcribe capacity.
    capacity_wait: Duration,
    /// Records Kinesis acknowledged.
    events: u64,
    /// Kinesis requests retried.
    kinesis_retries: u64,
    /// KVS error chunks that reading resumed after, by id.
    transient_kvs_errors: BTreeMap<String, u32>,
}

impl RunProgress {
    /// The progress of a run that starts at call sample `start_sample`.
    pub fn new(start_sample: u64) -> Self {
        Self(Arc::new(Mutex::new(Progress {
            start_sample,
            assembled_to: start_sample,
            transcribed_to: start_sample,
            ..Progress::default()
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Progress> {
        // Every update is a plain assignment: a panicking writer leaves consistent figures.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The call's audio up to sample `end` was assembled from KVS bytes that arrived at
    /// `received`.
    pub fn assembled(&self, end: u64, received: Instant) {
        let mut progress = self.lock();
        progress.assembled_to = progress.assembled_to.max(end);
        match progress.arrivals.last_mut() {
            Some((last_end, first))
                if received.saturating_duration_since(*first) < ARRIVAL_RESOLUTION =>
            {
                *last_end = end;
            }
            _ => progress.arrivals.push((end, received)),
        }
    }

    /// A fragment was read to its end at `at`, `millis_behind_now` (KVS's
    /// AWS_KINESISVIDEO_MILLIS_BEHIND_NOW) behind the stream's newest data, the call's audio
    /// assembled up to sample `position`.
    pub fn fragment_read(&self, position: u64, millis_behind_now: Option<u64>, at: Instant) {
        let mut progress = self.lock();
        progress.kvs_behind_ms = progress.kvs_behind_ms.max(millis_behind_now);
        let behind = millis_behind_now.unwrap_or(0) * SAMPLES_PER_MS;
        progress.live_edge = Some((position + behind, at));
    }

    /// The reading is held back from `at` (the audio's way to Transcribe is full), or
    /// (`None`) goes on.
    pub fn held_back(&self, at: Option<Instant>) {
        self.lock().held_back_since = at;
    }

    /// The stream ended (or the call was cut): the live edge is where the reader stopped.
    pub fn stream_ended(&self, at: Instant) {
        let mut progress = self.lock();
        progress.stream_ended = true;
        progress.live_edge = Some((progress.assembled_to, at));
    }

    /// Reading resumed after a KVS error chunk (`kvs_error`: its id).
    pub fn resumed(&self, kvs_error: Option<&str>) {
        if let Some(id) = kvs_error {
            *self
                .lock()
                .transient_kvs_errors
                .entry(id.to_string())
                .or_default() += 1;
        }
    }

    /// Lane `lane`'s audio up to call sample `end` has been given to Transcribe.
    pub fn transcribed(&self, lane: usize, end: u64) {
        let mut progress = self.lock();
        progress.transcribed_to = progress.transcribed_to.max(end);
        let to = progress.lanes.entry(lane).or_insert(end);
        *to = (*to).max(end);
    }

    /// Lane `lane` has finished: everything it was given has been answered.
    pub fn lane_finished(&self, lane: usize) {
        self.lock().lanes.remove(&lane);
    }

    /// A Transcribe stream was opened, after waiting `waited` for capacity.
    pub fn session_started(&self, waited: Duration) {
        let mut progress = self.lock();
        progress.sessions += 1;
        progress.capacity_wait += waited;
    }

    /// Kinesis acknowledged a record; `final_end_ms`: where it ends, for a final segment.
    pub fn acknowledged(&self, final_end_ms: Option<u64>, at: Instant) {
        let mut progress = self.lock();
        progress.events += 1;
        if let Some(end_ms) = final_end_ms {
            progress.final_acks.push((end_ms, at));
        }
    }

    /// A Kinesis request was retried.
    pub fn kinesis_retried(&self) {
        self.lock().kinesis_retries += 1;
    }

    /// The figures so far, with how far behind the live call the transcription is at `now`.
    pub fn figures(&self, now: Instant) -> RunFigures {
        let progress = self.lock();
        RunFigures {
            samples: progress.assembled_to - progress.start_sample,
            transcript_lags: transcript_lags(
                progress.start_sample,
                &progress.arrivals,
                &progress.final_acks,
            ),
            kvs_behind_ms: progress.kvs_behind_ms,
            behind_live: progress.behind_live(now),
            sessions: progress.sessions,
            capacity_wait: progress.capacity_wait,
            events: progress.events,
            kinesis_retries: progress.kinesis_retries,
            transient_kvs_errors: progress.transient_kvs_errors.clone(),
        }
    }
}

impl Progress {
    /// How far the audio given to Transcribe is behind the call's live edge at `now` (the
    /// audio of the first lane still running: the one being published; later lanes' results
    /// wait for it): the edge last seen, moved on in real time while the reading is held
    /// back (a reader held back by a slow Transcribe sees no new fragment, but the call goes
    /// on). A reader that
    /// waits for KVS is at the edge: no new fragment then means no new audio (or the call's
    /// end), so the edge stays. `None` before the first fragment.
    fn behind_live(&self, now: Instant) -> Option<Duration> {
        let (edge, seen) = self.live_edge?;
        let moved = match self.held_back_since {
            Some(since) if !self.stream_ended => {
                now.saturating_duration_since(since.max(seen)).as_millis() as u64 * SAMPLES_PER_MS
            }
            _ => 0,
        };
        let transcribed = self
            .lanes
            .values()
            .next()
            .copied()
            .unwrap_or(self.transcribed_to);
        let behind = (edge + moved).saturating_sub(transcribed);
        Some(Duration::from_millis(behind / SAMPLES_PER_MS))
    }
}

/// Per final segment acknowledged (`(end ms, acknowledged)`): from the arrival of the chunk
/// holding the segment's last sample (`arrivals`: `(end sample, arrived)` in call order) to
/// the acknowledgement. Segments ending before this run's first sample (`start_sample`: a
/// repeat from before a hand-over) are left out.
fn transcript_lags(
    start_sample: u64,
    arrivals: &[(u64, Instant)],
    final_acks: &[(u64, Instant)],
) -> Vec<Duration> {
    final_acks
        .iter()
        .map(|&(end_ms, acknowledged)| (end_ms * SAMPLES_PER_MS, acknowledged))
        .filter(|&(end_sample, _)| end_sample >= start_sample)
        .filter_map(|(end_sample, acknowledged)| {
            let at = arrivals.partition_point(|&(chunk_end, _)| chunk_end < end_sample);
            let (_, arrived) = arrivals.get(at).or(arrivals.last())?;
            Some(acknowledged.saturating_duration_since(*arrived))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_grow_with_time_not_audio_and_lags_stay_within_the_resolution() {
        // Six hours of 100 ms chunks read at full speed, 10 a millisecond (21.6 s): one entry
        // per 10 ms, not 216,000.
        let start = Instant::now();
        let chunks = 6 * 36_000u64;
        let arrived = |i: u64| start + Duration::from_micros(i * 100);
        let progress = RunProgress::new(0);
        for i in 0..chunks {
            progress.assembled((i + 1) * 800, arrived(i));
        }
        assert!(progress.lock().arrivals.len() <= 2_161);
        // A final ending in chunk i, acknowledged 2 s after that chunk arrived: its lag is
        // 2 s, measured up to ARRIVAL_RESOLUTION over.
        let acks: Vec<u64> = (0..chunks).step_by(997).collect();
        for &i in &acks {
            progress.acknowledged(Some(i * 100 + 50), arrived(i) + Duration::from_secs(2));
        }
        progress.acknowledged(None, start);
        let figures = progress.figures(start);
        assert_eq!(figures.transcript_lags.len(), acks.len());
        assert_eq!(figures.events, acks.len() as u64 + 1);
        assert_eq!(figures.samples, chunks * 800);
        for lag in figures.transcript_lags {
            assert!(
                lag >= Duration::from_secs(2) && lag <= Duration::from_secs(2) + ARRIVAL_RESOLUTION,
                "{lag:?}"
            );
        }
        // Live: chunks arriving 100 ms apart keep an entry each.
        let live = RunProgress::new(0);
        for i in 0..100u64 {
            live.assembled((i + 1) * 800, start + Duration::from_millis(i * 100));
        }
        assert_eq!(live.lock().arrivals.len(), 100);
    }

    #[test]
    fn behind_live_grows_while_transcribe_waits_and_stops_with_the_stream() {
        let t0 = Instant::now();
        // A run from call second 60.
        let progress = RunProgress::new(60 * 8000);
        assert_eq!(
            progress.figures(t0).behind_live,
            None,
            "no fragment read yet"
        );
        // The reader at second 70, KVS 5 s behind its newest data: the live edge is second
        // 75; Transcribe has been given up to second 62.
        progress.assembled(70 * 8000, t0);
        progress.fragment_read(70 * 8000, Some(5_000), t0);
        progress.transcribed(0, 62 * 8000);
        assert_eq!(
            progress.figures(t0).behind_live,
            Some(Duration::from_secs(13))
        );
        // Ten seconds on, nothing more read or given. A reader waiting for KVS is at the
        // edge (no new audio, or the call ended); one held back by Transcribe for those ten
        // seconds is not: the call went on.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            progress.figures(later).behind_live,
            Some(Duration::from_secs(13))
        );
        progress.held_back(Some(t0));
        assert_eq!(
            progress.figures(later).behind_live,
            Some(Duration::from_secs(23))
        );
        progress.held_back(Some(t0 + Duration::from_secs(4)));
        assert_eq!(
            progress.figures(later).behind_live,
            Some(Duration::from_secs(19))
        );
        // A second lane given everything up to the live edge: its results wait for the first
        // lane's, so the transcript is as far behind as before until the first one finishes.
        progress.transcribed(1, 85 * 8000);
        assert_eq!(
            progress.figures(later).behind_live,
            Some(Duration::from_secs(19))
        );
        progress.lane_finished(0);
        assert_eq!(progress.figures(later).behind_live, Some(Duration::ZERO));
        // The stream ended at the reader's position (second 86): the edge stays there.
        progress.held_back(None);
        progress.assembled(86 * 8000, later);
        progress.held_back(Some(later));
        progress.stream_ended(later);
        assert_eq!(
            progress
                .figures(later + Duration::from_secs(60))
                .behind_live,
            Some(Duration::from_secs(1))
        );
        // Counters and ids.
        progress.session_started(Duration::from_millis(1500));
        progress.session_started(Duration::ZERO);
        progress.kinesis_retried();
        progress.resumed(Some("4503"));
        progress.resumed(Some("4503"));
        progress.resumed(None);
        let figures = progress.figures(later);
        assert_eq!(
            (
                figures.sessions,
                figures.capacity_wait,
                figures.kinesis_retries
            ),
            (2, Duration::from_millis(1500), 1)
        );
        assert_eq!(figures.transient_kvs_errors["4503"], 2);
        assert_eq!(figures.samples, 26 * 8000);
        assert_eq!(figures.kvs_behind_ms, Some(5_000));
    }
}

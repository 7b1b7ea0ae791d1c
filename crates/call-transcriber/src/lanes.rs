//! Catching up after a stall: a call's transcription runs in **lanes**, each a Transcribe
//! session loop over a contiguous range of the call's audio. When the lane taking the call's
//! audio is far behind it (a capacity stall, a reconnect's replay), the next chunk at a quiet
//! point opens a new lane, so that two streams work through the call at once: the old lane
//! finishes its backlog while the new one follows the live call. What the lanes produce is
//! published lane by lane ([`LaneMerge`]), so each channel's finals stay in call order.
//!
//! How fast Amazon Transcribe processes audio sent faster than real time is not documented
//! (the streaming guide's best practices: "Ensure that your stream is as close to real-time as
//! possible"; AWS's Python streaming SDK says the service processes audio in real time), nor
//! the HTTP/2 window it grants, so what the SDK has taken says little. A lane's progress
//! ([`LaneGauge`]) is therefore what its session has answered, but at least real time from
//! when the session was accepted (the least favourable reading: results may not come in
//! silence), and its pace is what it has shown, but at least real time: a service that keeps
//! up faster than real time opens no second stream, one that processes in real time does.
//!
//! Pure: the decisions take the lane's figures and the time and return what to do; the
//! session loops and the coordinator in [`crate::transcribe`] carry them out.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use call_audio::StereoChunk;
use lca_events::{LcaEvent, LcaMessage};
use tokio::time::Instant;

use crate::quiet::QuietWatch;

/// Call samples per second (8 kHz).
const SAMPLE_RATE: u64 = call_audio::CONNECT_SAMPLE_RATE as u64;

/// How the lanes of a call are opened and how much audio each may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanePolicy {
    /// A lane whose work left (the audio assigned to it beyond its progress, at its pace) takes
    /// longer than this is behind: the next quiet chunk opens a new lane (when fewer than
    /// `max_running` run).
    pub behind: Duration,
    /// Silence on both channels before a chunk that lets a lane start there (a new session
    /// must not cut an utterance in two).
    pub quiet: Duration,
    /// Lanes running at once, at most: each is a Transcribe stream, which the account's
    /// concurrent stream quota counts.
    pub max_running: usize,
    /// Call audio a lane may hold ahead of its estimated progress, at most: the memory a
    /// backlog takes (32 KB per second of call: 19 MB for the default 10 minutes, within the
    /// function's 128 MB). A stall longer than this leaves the next lane behind by the rest,
    /// which it catches up on when the first lane ends.
    pub max_backlog: Duration,
    /// Call audio a lane may always hold ahead (what the single queue to Transcribe held
    /// before lanes), however close the hand-over deadline.
    pub min_backlog: Duration,
    /// How long Transcribe is taken to need for one second of call audio at most (1 s: real
    /// time). Tests that play calls N times faster than real time set 1/N s.
    pub audio_second_takes: Duration,
    /// How long (in call audio at real time) a session must have run before its pace is
    /// judged: a new lane opens only after it.
    pub warm_up: Duration,
}

impl Default for LanePolicy {
    fn default() -> Self {
        Self {
            behind: Duration::from_secs(20),
            // As a hand-over (`pipeline::HANDOVER_QUIET`): longer than a pause in a sentence.
            quiet: Duration::from_millis(700),
            max_running: 2,
            max_backlog: Duration::from_secs(600),
            min_backlog: Duration::from_secs(10),
            audio_second_takes: Duration::from_secs(1),
            warm_up: Duration::from_secs(5),
        }
    }
}

impl LanePolicy {
    /// Call samples Transcribe is taken to process in `wall` time.
    fn processed_in(&self, wall: Duration) -> u64 {
        let takes = self.audio_second_takes.as_secs_f64().max(1e-6);
        (wall.as_secs_f64() / takes * SAMPLE_RATE as f64) as u64
    }

    /// Call samples in `call` time.
    fn samples(call: Duration) -> u64 {
        (call.as_secs_f64() * SAMPLE_RATE as f64) as u64
    }
}

/// One lane's progress, shared by its session loop (which writes it) and the coordinator
/// (which reads it); clones share it.
#[derive(Debug, Clone, Default)]
pub struct LaneGauge(Arc<Mutex<GaugeState>>);

/// What [`LaneGauge`] holds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GaugeState {
    /// Call sample up to which audio was handed to the SDK.
    pub handed_to: u64,
    /// The running session: the call sample its audio starts at (a replay's start) and when
    /// Transcribe accepted it. `None` while a session is being started.
    pub session: Option<(u64, Instant)>,
    /// Where the lane's progress is known to be at least while no session runs (the lane's
    /// start, or the replay start after a reconnect).
    pub floor: u64,
    /// Call sample where the latest result Transcribe sent the lane ends.
    pub answered_to: u64,
}

impl GaugeState {
    /// The call sample Transcribe has processed up to, at the least, at `now`: what it
    /// answered, or real time (`policy.audio_second_takes`) from the session's acceptance if
    /// further, never beyond what the SDK was handed.
    pub fn processed(&self, policy: &LanePolicy, now: Instant) -> u64 {
        let at_least = match self.session {
            Some((first, accepted)) => {
                first + policy.processed_in(now.saturating_duration_since(accepted))
            }
            None => self.floor,
        };
        at_least.max(self.answered_to).min(self.handed_to)
    }

    /// The session's pace at `now`, in call seconds per second of real time
    /// (`policy.audio_second_takes`): what it answered since it was accepted, but at least 1
    /// (real time), and 1 until it has run for `policy.warm_up`.
    pub fn pace(&self, policy: &LanePolicy, now: Instant) -> f64 {
        let Some((first, accepted)) = self.session else {
            return 1.0;
        };
        let real_time = policy.processed_in(now.saturating_duration_since(accepted));
        if real_time < LanePolicy::samples(policy.warm_up) {
            return 1.0;
        }
        (self.answered_to.saturating_sub(first) as f64 / real_time as f64).max(1.0)
    }

    /// Whether the session has run for `policy.warm_up` at `now`.
    fn warmed_up(&self, policy: &LanePolicy, now: Instant) -> bool {
        self.session.is_some_and(|(_, accepted)| {
            policy.processed_in(now.saturating_duration_since(accepted))
                >= LanePolicy::samples(policy.warm_up)
        })
    }
}

impl LaneGauge {
    /// A gauge for a lane starting at call sample `start`.
    pub fn new(start: u64) -> Self {
        Self(Arc::new(Mutex::new(GaugeState {
            handed_to: start,
            session: None,
            floor: start,
            answered_to: start,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, GaugeState> {
        // Plain assignments only: a panicking writer leaves consistent figures.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the gauge holds now.
    pub fn state(&self) -> GaugeState {
        *self.lock()
    }

    /// Transcribe accepted a session whose audio starts at call sample `first`.
    pub fn session_started(&self, first: u64, at: Instant) {
        self.lock().session = Some((first, at));
    }

    /// The session failed; a new one will replay from call sample `replay_from`.
    pub fn session_lost(&self, replay_from: u64) {
        let mut state = self.lock();
        state.session = None;
        state.floor = replay_from;
    }

    /// Audio up to call sample `end` was handed to the SDK.
    pub fn handed(&self, end: u64) {
        let mut state = self.lock();
        state.handed_to = state.handed_to.max(end);
    }

    /// Transcribe sent a result that ends at call sample `end`.
    pub fn answered(&self, end: u64) {
        let mut state = self.lock();
        state.answered_to = state.answered_to.max(end);
    }
}

/// The lane taking the call's audio, as the router sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurrentLane {
    /// Call sample after the last audio assigned to it.
    pub assigned_to: u64,
    /// Its gauge.
    pub gauge: GaugeState,
}

/// Where the next chunk goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the current lane.
    Current,
    /// To a new lane that starts with it; the current lane's input ends.
    NewLane,
    /// Nowhere yet: the current lane holds as much as it may; ask again later (the reading
    /// is held back meanwhile).
    Wait,
}

/// Decides, chunk by chunk, which lane takes the call's audio. Pure: fed the chunks in order,
/// the current lane's figures and the time.
#[derive(Debug, Clone)]
pub struct LaneRouter {
    policy: LanePolicy,
    quiet: QuietWatch,
}

impl LaneRouter {
    /// A router with `policy`.
    pub fn new(policy: LanePolicy) -> Self {
        Self {
            policy,
            quiet: QuietWatch::default(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &LanePolicy {
        &self.policy
    }

    /// Where `chunk` goes at `now`: `lane` is the current lane, `running` how many lanes run
    /// (the current one included), `time_left` the time until the run hands over (`None`:
    /// no deadline). A lane whose work left, at its pace, is more than `policy.behind` is
    /// behind. A lane may hold no more than `policy.max_backlog` nor than it can be taken to
    /// finish before the hand-over (so a backlog never keeps an invocation past its
    /// deadline), but always `policy.min_backlog`. Call [`Self::routed`] once the chunk has
    /// gone.
    pub fn route(
        &self,
        chunk: &StereoChunk,
        lane: CurrentLane,
        running: usize,
        time_left: Option<Duration>,
        now: Instant,
    ) -> Route {
        let policy = &self.policy;
        // Audio assigned and not yet processed, and how long it takes at the lane's pace.
        let ahead = lane
            .assigned_to
            .saturating_sub(lane.gauge.processed(policy, now));
        let pace = lane.gauge.pace(policy, now);
        let work = |samples: u64| (samples as f64 / pace) as u64;
        let quiet_ns = policy.quiet.as_nanos() as i64;
        if lane.gauge.warmed_up(policy, now)
            && running < policy.max_running
            && work(ahead) >= LanePolicy::samples(policy.behind)
            && self.quiet.is_quiet(quiet_ns)
        {
            return Route::NewLane;
        }
        let ahead = ahead + chunk.samples as u64;
        let floor = LanePolicy::samples(policy.min_backlog);
        let in_memory = ahead <= LanePolicy::samples(policy.max_backlog);
        let in_time = time_left.is_none_or(|left| work(ahead) <= policy.processed_in(left));
        if ahead <= floor || (in_memory && in_time) {
            Route::Current
        } else {
            Route::Wait
        }
    }

    /// `chunk` went to a lane: it is the audio before the next one.
    pub fn routed(&mut self, chunk: &StereoChunk) {
        let mut channels = [
            Vec::with_capacity(chunk.samples * 2),
            Vec::with_capacity(chunk.samples * 2),
        ];
        for frame in chunk.pcm.chunks_exact(4) {
            channels[0].extend_from_slice(&frame[..2]);
            channels[1].extend_from_slice(&frame[2..]);
        }
        let start_ns = chunk.start_sample as i64 * 125_000;
        for (channel, pcm) in channels.iter().enumerate() {
            self.quiet.push(channel, start_ns, pcm);
        }
    }
}

/// Publishes what the lanes produce lane by lane: all of a lane's messages before any of the
/// next one's, so each channel's finals reach the stream in call order and the lease's
/// `Delivered` watermark (the end of each channel's last final) stays a watermark. Pure: the
/// coordinator feeds it each lane's messages and says when a lane becomes the one published.
#[derive(Debug, Default)]
pub struct LaneMerge {
    /// Call Analytics categories published (by any lane): a category is published once per
    /// call, and each lane's session may match it again.
    categories: BTreeSet<String>,
}

impl LaneMerge {
    /// Whether to publish `message`. `waited`: it was produced while an earlier lane was
    /// still being published, so a partial result in it is stale (its final follows).
    pub fn keep(&mut self, message: &LcaMessage, waited: bool) -> bool {
        match &message.event {
            LcaEvent::AddTranscriptSegment(_) => !(waited && message.is_partial()),
            LcaEvent::AddCallCategory(category) => {
                let names: Vec<String> = category
                    .category_event
                    .get("MatchedCategories")
                    .and_then(serde_json::Value::as_array)
                    .map(|names| {
                        names
                            .iter()
                            .filter_map(serde_json::Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                let mut new = names.is_empty();
                for name in names {
                    new |= self.categories.insert(name);
                }
                new
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lca_events::Segment;

    const S: u64 = SAMPLE_RATE;

    fn chunk(start: u64, amplitude: i16) -> StereoChunk {
        let samples = 800;
        StereoChunk {
            start_sample: start,
            samples,
            pcm: (0..samples)
                .flat_map(|i| {
                    let v = if i % 2 == 0 { amplitude } else { -amplitude };
                    [v.to_le_bytes(), v.to_le_bytes()].concat()
                })
                .collect(),
        }
    }

    fn policy() -> LanePolicy {
        LanePolicy::default()
    }

    fn gauge(handed_to: u64, session: Option<(u64, Instant)>, answered_to: u64) -> GaugeState {
        GaugeState {
            handed_to,
            session,
            floor: 0,
            answered_to,
        }
    }

    #[test]
    fn progress_is_what_was_answered_or_real_time_if_further_and_no_further_than_handed() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let p = policy();
        let mut g = gauge(100 * S, None, 0);
        g.floor = 10 * S;
        assert_eq!(g.processed(&p, t0), 10 * S, "no session: the floor");
        g.session = Some((10 * S, t0));
        assert_eq!(g.processed(&p, at(30)), 40 * S, "30 s of real time");
        g.answered_to = 70 * S;
        assert_eq!(g.processed(&p, at(30)), 70 * S, "what it answered");
        assert_eq!(
            g.processed(&p, at(300)),
            100 * S,
            "not past what the SDK was handed"
        );
        // Its pace: 60 s of call answered in 30 s; not judged during the warm-up; never
        // taken as slower than real time.
        assert_eq!(g.pace(&p, at(30)), 2.0);
        assert_eq!(g.pace(&p, at(2)), 1.0);
        g.answered_to = 20 * S;
        assert_eq!(g.pace(&p, at(30)), 1.0);
        // At 20 times real time (a test's clock): 20 s of call per wall second.
        let fast = LanePolicy {
            audio_second_takes: Duration::from_millis(50),
            ..policy()
        };
        assert_eq!(g.processed(&fast, at(2)), 50 * S);
    }

    #[test]
    fn a_running_lane_far_behind_opens_a_new_lane_at_a_quiet_chunk_only() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(6);
        let mut router = LaneRouter::new(policy());
        // 60 s assigned; accepted 6 s ago, nothing answered: 54 s of work at real time.
        let behind = CurrentLane {
            assigned_to: 60 * S,
            gauge: gauge(10 * S, Some((0, t0)), 0),
        };
        // Speech just before: no new lane yet; the lane may take more (60 s < 600 s).
        router.routed(&chunk(60 * S - 800, 3000));
        assert_eq!(
            router.route(&chunk(60 * S, 0), behind, 1, None, now),
            Route::Current
        );
        // After 700 ms of silence on both channels: a new lane.
        for i in 0..8 {
            router.routed(&chunk(60 * S + i * 800, 0));
        }
        let next = chunk(60 * S + 6400, 0);
        assert_eq!(router.route(&next, behind, 1, None, now), Route::NewLane);
        // Not while a second lane runs, nor before the session was accepted or has run for
        // the warm-up, nor when the lane is close to its audio.
        assert_eq!(router.route(&next, behind, 2, None, now), Route::Current);
        let starting = CurrentLane {
            gauge: GaugeState {
                session: None,
                ..behind.gauge
            },
            ..behind
        };
        assert_eq!(router.route(&next, starting, 1, None, now), Route::Current);
        let early = t0 + Duration::from_secs(2);
        assert_eq!(router.route(&next, behind, 1, None, early), Route::Current);
        let close = CurrentLane {
            assigned_to: 25 * S,
            ..behind
        };
        assert_eq!(router.route(&next, close, 1, None, now), Route::Current);
        // Nor when Transcribe keeps up faster than real time: 60 s answered in 6 s, so the
        // 60 s ahead take 6 s.
        let keeping_up = CurrentLane {
            assigned_to: 120 * S,
            gauge: gauge(60 * S, Some((0, t0)), 60 * S),
        };
        assert_eq!(
            router.route(&next, keeping_up, 1, None, now),
            Route::Current
        );
    }

    #[test]
    fn a_lane_holds_no_more_than_the_memory_bound_or_what_it_can_finish_before_the_hand_over() {
        let t0 = Instant::now();
        let router = LaneRouter::new(policy());
        let lane = |ahead_s: u64| CurrentLane {
            assigned_to: ahead_s * S,
            gauge: gauge(0, None, 0),
        };
        let c = chunk(0, 0);
        assert_eq!(router.route(&c, lane(599), 1, None, t0), Route::Current);
        assert_eq!(router.route(&c, lane(600), 1, None, t0), Route::Wait);
        let minute = Some(Duration::from_secs(60));
        assert_eq!(router.route(&c, lane(59), 1, minute, t0), Route::Current);
        assert_eq!(router.route(&c, lane(60), 1, minute, t0), Route::Wait);
        // Past the deadline (the hand-over's grace period): the small queue of before.
        let none_left = Some(Duration::ZERO);
        assert_eq!(router.route(&c, lane(9), 1, none_left, t0), Route::Current);
        assert_eq!(router.route(&c, lane(10), 1, none_left, t0), Route::Wait);
        // A lane going at 10 times real time finishes 300 s in 30 s: within the minute left,
        // but not beyond the memory bound (a second lane runs: none opens).
        let now = t0 + Duration::from_secs(10);
        let fast = |ahead_s: u64| CurrentLane {
            assigned_to: (100 + ahead_s) * S,
            gauge: gauge(100 * S, Some((0, t0)), 100 * S),
        };
        assert_eq!(router.route(&c, fast(300), 2, minute, now), Route::Current);
        assert_eq!(router.route(&c, fast(600), 2, minute, now), Route::Wait);
    }

    fn message(event: LcaEvent) -> LcaMessage {
        LcaMessage {
            call_id: "c".into(),
            event,
        }
    }

    #[test]
    fn the_merge_drops_stale_partials_and_categories_published_already() {
        use lca_events::{CallCategory, Speaker, StandardSegment};
        let segment = |partial| {
            message(LcaEvent::AddTranscriptSegment(Segment::Standard(
                StandardSegment {
                    segment_id: "0-1.0".into(),
                    start_time: 1.0,
                    end_time: 2.0,
                    transcript: "x".into(),
                    is_partial: partial,
                    channel: Speaker::Caller,
                    created_at: "t".into(),
                },
            )))
        };
        let mut merge = LaneMerge::default();
        assert!(merge.keep(&segment(true), false));
        assert!(!merge.keep(&segment(true), true));
        assert!(merge.keep(&segment(false), true));
        let category = |names: &[&str]| {
            message(LcaEvent::AddCallCategory(CallCategory {
                category_event: serde_json::json!({ "MatchedCategories": names }),
                created_at: "t".into(),
            }))
        };
        assert!(merge.keep(&category(&["billing"]), false));
        assert!(!merge.keep(&category(&["billing"]), false));
        assert!(merge.keep(&category(&["billing", "churn"]), true));
    }
}

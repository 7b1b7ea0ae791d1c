//! Catching up under the least favourable reading of Amazon Transcribe's pace: a local
//! Transcribe that processes audio in real time (in the call's clock: calls are played at
//! `SPEED` times real time and it keeps the same speed), with its HTTP/2 back-pressure. After a
//! capacity stall or a reconnect, the call's finals must return to the live call within the
//! issue's bound (the last one on Kinesis at most 30 s after the call's end), every final of
//! a run without the fault exactly once, each channel's in call order.

use std::time::Duration;

use lca_tests::paced::{CallRun, live_call};
use local_aws::transcribe::TranscribeFault;
use tokio::sync::OnceCell;

/// Playback speed: fast enough for a test, slow enough that a loaded machine's timer jitter
/// (the scaled KVS idle timeout is 1.5 s of wall time) stays well inside the bound.
const SPEED: f64 = 10.0;
/// The call's length.
const MINUTES: u64 = 4;
/// The bound the issue sets: the last final at most this long after the call's end (call
/// time).
const BOUND_S: f64 = 30.0;

/// The same call without a fault: the finals every run must publish.
async fn reference() -> &'static CallRun {
    static REFERENCE: OnceCell<CallRun> = OnceCell::const_new();
    REFERENCE
        .get_or_init(|| async {
            live_call("reference", MINUTES, SPEED, Duration::ZERO, &[])
                .await
                .unwrap()
        })
        .await
}

/// Checks `run` (a call with `fault`) against the reference: every final once, in order,
/// within the bound.
async fn assert_caught_up(fault: &str, run: &CallRun) {
    let reference = reference().await;
    assert!(reference.finals.len() > 20, "{reference:?}");
    let compared = run.compare(reference, MINUTES as i64 * 60_000);
    let reference_end = reference
        .compare(reference, MINUTES as i64 * 60_000)
        .after_end;
    // The figures the README's failure table quotes (`--nocapture` shows them).
    eprintln!(
        "{fault}: last final {:.1} s after the call's end (without the fault: {reference_end:.1} s); {} lost, {} repeated, {} out of order",
        compared.after_end, compared.lost, compared.repeated, compared.out_of_order
    );
    assert_eq!(
        (compared.lost, compared.repeated, compared.out_of_order),
        (0, 0, 0),
        "every final once, each channel's in order: {compared:?}"
    );
    assert!(run.ended, "END published");
    assert!(
        compared.after_end <= BOUND_S,
        "the last final came {:.1} s after the call's end (bound {BOUND_S} s): {compared:?}",
        compared.after_end
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_capacity_stall_a_second_stream_takes_the_live_call_and_the_transcript_catches_up()
{
    // Transcribe refuses the call's streams (LimitExceededException) for its first minute:
    // without catching up the whole call would stay a minute behind, its last final a minute
    // after its end.
    let run = live_call("capacity", MINUTES, SPEED, Duration::from_secs(60), &[])
        .await
        .unwrap();
    assert!(
        run.lanes >= 2,
        "a second lane took the live call: {} lanes",
        run.lanes
    );
    // When the backlog was done, the finals were live again: those of the call's last
    // minute came within seconds, as without the stall (but the call's very last one, which
    // closes only when the stream has been quiet for KVS_IDLE_TIMEOUT, as in the reference).
    let last_minute: Vec<f64> = run.finals[..run.finals.len() - 1]
        .iter()
        .filter(|((_, _, end), _)| *end >= (MINUTES as i64 - 1) * 60_000)
        .map(|(_, late)| *late)
        .collect();
    assert!(
        !last_minute.is_empty() && last_minute.iter().all(|late| *late < 10.0),
        "finals of the last minute, s behind live: {last_minute:?}"
    );
    assert_caught_up("a one-minute capacity stall", &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_the_transcript_stays_within_the_bound_with_every_final_once() {
    // The first stream fails a minute into the call (a server-side failure the session
    // resumes after); the new stream replays what was not answered, at real time.
    let fault = TranscribeFault::ExceptionAfter {
        seconds: 60.0,
        exception: "InternalFailureException".to_string(),
    };
    let run = live_call("reconnect", MINUTES, SPEED, Duration::ZERO, &[fault])
        .await
        .unwrap();
    assert!(run.sessions >= 2, "the stream was resumed: {run:?}");
    assert_caught_up("a reconnect a minute in", &run).await;
}

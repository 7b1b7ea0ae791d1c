//! The pipeline end to end with the real AWS SDK clients: local KVS and Transcribe (local-aws)
//! and moto server (Kinesis). The sample call (`fixtures/connect/sample-call.mkv`) is played
//! live into local KVS as Connect would write it.

mod common;

use std::time::Duration;

use bytes::Bytes;
use call_transcriber::pipeline::{Ending, PipelineError};
use call_transcriber::source::{EndReason, KvsStreamError, SourceError};
use local_aws::kinesis_faults::KinesisFault;
use local_aws::kvs::{Fault, KvsOptions};
use local_aws::transcribe::{TranscribeFault, TranscribeOptions};
use serde_json::Value;

use common::*;

/// The publisher's pauses in tests that make Kinesis refuse: 1 ms doubling to 2 s.
const FAST_RETRIES: aws_edge::Backoff = aws_edge::Backoff {
    first: Duration::from_millis(1),
    max: Duration::from_secs(2),
    jitter: aws_edge::Jitter::None,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_call_live_gives_start_each_turn_and_end_and_transcribe_gets_exactly_the_pcm() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    let outcome = run(&h.pipeline(&[]), new_call(&arn, &first)).await;
    assert_eq!(outcome.ending, Ending::CallEnded(EndReason::Idle));
    let records = h.records().await;
    assert_whole_call(&records);
    assert!(
        records.iter().any(|r| r["IsPartial"] == true),
        "partials are published by default"
    );
    let sessions = h.transcribe.sessions();
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].ended_cleanly);
    assert!(
        sessions[0].audio == sample_call_stereo(),
        "Transcribe received exactly the call's PCM ({} bytes, expected {})",
        sessions[0].audio.len(),
        sample_call_stereo().len()
    );
    assert_eq!(outcome.published.undelivered.len(), 0);
    assert_eq!(outcome.published.delivered as usize, records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partials_off_publishes_only_finals() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    run(
        &h.pipeline(&[("SAVE_PARTIAL_TRANSCRIPTS", "false")]),
        new_call(&arn, &first),
    )
    .await;
    let records = h.records().await;
    assert_whole_call(&records);
    assert!(records.iter().all(|r| r["IsPartial"] != true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_at_the_contacts_first_fragment_whichever_way_kvs_reads_the_selector() {
    for include_named_fragment in [false, true] {
        let h = Harness::new(
            KvsOptions {
                include_named_fragment,
                ..KvsOptions::default()
            },
            TranscribeOptions::default(),
        )
        .await;
        let (arn, first) = h.play("call", sample_call_chunks()).await;
        run(&h.pipeline(&[]), new_call(&arn, &first)).await;
        let sessions = h.transcribe.sessions();
        assert!(
            sessions[0].audio == sample_call_stereo(),
            "include_named_fragment={include_named_fragment}: the first fragment's audio is there"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_resumes_without_losing_or_repeating_audio() {
    for include_named_fragment in [false, true] {
        let h = Harness::new(
            KvsOptions {
                include_named_fragment,
                ..KvsOptions::default()
            },
            TranscribeOptions::default(),
        )
        .await;
        // Cut mid-fragment, then after whole fragments.
        let faults = [Fault::CutAfterBytes(300_000), Fault::CutAfterFragments(7)];
        // Where KVS reads AfterFragmentNumber as "after", the first session only finds that
        // the contact's first fragment was skipped and the source reads again from a producer
        // time: that session gets a fault it never reaches.
        let never = Fault::CutAfterFragments(usize::MAX);
        let queued: Vec<Fault> = (!include_named_fragment)
            .then_some(never)
            .into_iter()
            .chain(faults.clone())
            .collect();
        let (arn, first) = h
            .play_with_faults("call", sample_call_chunks(), &queued)
            .await;
        let outcome = run(&h.pipeline(&[]), new_call(&arn, &first)).await;
        // Both cuts happened (a fault is listed once it took effect), and reading resumed
        // after each.
        let applied: Vec<Fault> = h.kvs.applied().into_iter().map(|(_, f)| f).collect();
        assert_eq!(
            applied, faults,
            "include_named_fragment={include_named_fragment}"
        );
        assert_eq!(outcome.get_media_resumes, 2);
        let sessions = h.transcribe.sessions();
        assert_eq!(sessions.len(), 1);
        assert!(
            sessions[0].audio == sample_call_stereo(),
            "include_named_fragment={include_named_fragment}: every sample once"
        );
        assert_whole_call(&h.records().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_media_left_unanswered_or_silent_is_resumed_not_taken_for_the_calls_end() {
    // KVS answers GetMedia at once and ends a response after 3 s without fragments to send.
    // Here the first request is never answered, and the second response goes silent after
    // 10 fragments without ending: a connection that black-holes, not a caller who hung up.
    // Each is given up after GET_MEDIA's 20 s limit and resumed from the last fragment; the
    // call comes out whole. (Taken for a quiet producer, KVS_IDLE_TIMEOUT, 3 s here, ended
    // the call at the first hang as if it were over.)
    let h = Harness::new(named_first(), TranscribeOptions::default()).await;
    let silent = Fault::StallBefore {
        fragment: 10,
        duration: Duration::from_secs(60),
    };
    let (arn, first) = h.stored(
        "call",
        &sample_call_chunks(),
        &[Fault::NoAnswer, silent.clone()],
    );
    let began = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        h.pipeline(&[]).run(
            new_call(&arn, &first),
            call_transcriber::pipeline::Taps::default(),
        ),
    )
    .await
    .expect("each hang is given up")
    .expect("the call is transcribed");
    let limit = aws_edge::REQUEST_ATTEMPT_TIMEOUT;
    assert!(began.elapsed() >= 2 * limit, "{:?}", began.elapsed());
    let applied: Vec<Fault> = h.kvs.applied().into_iter().map(|(_, f)| f).collect();
    assert_eq!(applied, [Fault::NoAnswer, silent]);
    assert_eq!(outcome.get_media_resumes, 2);
    assert_streams_held(&h, &outcome);
    // Every sample once, and 10 ms of silence per keep-alive sent through the silences.
    let keep_alives = outcome.transcription.keep_alives as usize;
    assert!(keep_alives >= 2, "{keep_alives} keep-alives");
    assert_eq!(
        h.transcribed_audio().len(),
        sample_call_stereo().len() + keep_alives * 320
    );
    assert_whole_call(&h.records().await);
}

/// No Transcribe stream of the run failed or was replaced: one stream per lane. The rest of
/// a stored call read at once after a hang is a backlog, which the run may hand to a second
/// lane (`lanes.rs`: Transcribe is taken to work in real time), so a run has one or two.
fn assert_streams_held(h: &Harness, outcome: &call_transcriber::pipeline::CallOutcome) {
    let sessions = h.transcribe.sessions();
    let failed: Vec<&Option<String>> = sessions
        .iter()
        .map(|s| &s.exception)
        .filter(|e| e.is_some())
        .collect();
    assert!(failed.is_empty(), "streams failed: {failed:?}");
    let lanes = outcome.transcription.lanes as usize;
    assert!(
        (1..=2).contains(&lanes) && sessions.len() == lanes,
        "{} streams for {lanes} lanes",
        sessions.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcribe_exception_mid_call_resumes_without_losing_or_repeating_segments() {
    for exception in [
        "LimitExceededException",
        "InternalFailureException",
        "ServiceUnavailableException",
    ] {
        let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
        h.transcribe.inject(TranscribeFault::ExceptionAfter {
            seconds: 21.0,
            exception: exception.to_string(),
        });
        let (arn, first) = h.play("call", sample_call_chunks()).await;
        let outcome = run(&h.pipeline(&[]), new_call(&arn, &first)).await;
        assert_eq!(outcome.transcription.sessions, 2, "{exception}");
        let sessions = h.transcribe.sessions();
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[0].exception.as_deref(), Some(exception));
        assert_eq!(
            sessions[1].session_id, sessions[0].session_id,
            "the session id is reused"
        );
        // The second session starts where the first's results were not final yet, and
        // nothing is missing after it.
        let pcm = sample_call_stereo();
        let second = &sessions[1].audio;
        assert!(
            pcm.ends_with(second),
            "{exception}: the second session gets the call's tail"
        );
        assert!(
            sessions[0].audio.len() + second.len() >= pcm.len(),
            "{exception}: no gap between the sessions"
        );
        assert!(
            // The last final before the failure (at 21 s of audio) ended at 17.81 s.
            second.len() <= pcm.len() - 17 * 32_000,
            "{exception}: audio transcribed before the failure is not resent (second session: {} of {} bytes)",
            second.len(),
            pcm.len()
        );
        assert_whole_call(&h.records().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcribe_stream_that_stops_reading_without_an_error_ends_the_run_as_a_stall() {
    // The first 9 s of the call; after 2 s of audio the session neither reads nor answers nor
    // fails, its stream left open. Without the watchdog the run waits for ever (here `run`
    // would fail at its 60 s limit). With it, the stream is closed TRANSCRIBE_STUCK_TIMEOUT
    // after the audio's real time, and the run ends as a stall (a fresh invocation reads the
    // call again from KVS: tests/lambda.rs), with what was published before it, and no END.
    let analytics = [
        ("TRANSCRIBE_API_MODE", "analytics"),
        ("IS_TCA_POST_CALL_ANALYTICS_ENABLED", "false"),
    ];
    for mode in [&[][..], &analytics[..]] {
        let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
        h.transcribe
            .inject(TranscribeFault::StopReadingAfter { seconds: 2.0 });
        let chunks: Vec<Bytes> = sample_call_chunks().into_iter().take(10).collect();
        let (arn, first) = h.play("call", chunks).await;
        let mut vars = vec![("TRANSCRIBE_STUCK_TIMEOUT", "2000")];
        vars.extend(mode.iter().copied());
        let began = tokio::time::Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            h.pipeline(&vars).run(
                new_call(&arn, &first),
                call_transcriber::pipeline::Taps::default(),
            ),
        )
        .await
        .expect("the watchdog ends the run");
        let error = result.expect_err("a stuck stream fails the run");
        assert!(error.is_stall(), "{error}");
        let text = error.to_string();
        assert!(
            text.contains("Transcribe did not finish the stream after its audio ended")
                && text.contains("TRANSCRIBE_STUCK_TIMEOUT")
                && text.contains("fresh invocation"),
            "{text}"
        );
        // The audio's real time (about 9 s, less what reading it took) plus the bound.
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "{:?}",
            began.elapsed()
        );
        let sessions = h.transcribe.sessions();
        assert_eq!(sessions.len(), 1, "{mode:?}");
        assert!(sessions[0].stopped_reading && sessions[0].exception.is_none());
        let records = h.records().await;
        assert_eq!(
            records.first().map(|r| &r["EventType"]),
            Some(&"START".into())
        );
        assert!(records.iter().all(|r| r["EventType"] != "END"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_request_left_unanswered_is_given_up_at_the_attempt_limit_and_retried() {
    // Transcribe takes the request to start a stream and never answers it (not even its
    // headers): without a limit on the answer the run would wait until Lambda's timeout.
    // It is given up at the attempt limit every request has and started again; the call
    // comes out whole, in both modes.
    let analytics = [
        ("TRANSCRIBE_API_MODE", "analytics"),
        ("IS_TCA_POST_CALL_ANALYTICS_ENABLED", "false"),
    ];
    let limit = aws_edge::REQUEST_ATTEMPT_TIMEOUT;
    for mode in [&[][..], &analytics[..]] {
        let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
        h.transcribe.inject(TranscribeFault::NoAnswer);
        let (arn, first) = h.stored("call", &sample_call_chunks(), &[]);
        let began = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(
            limit + Duration::from_secs(60),
            h.pipeline(mode).run(
                new_call(&arn, &first),
                call_transcriber::pipeline::Taps::default(),
            ),
        )
        .await
        .expect("the unanswered request is given up")
        .expect("the call is transcribed");
        let took = began.elapsed();
        assert!(
            took >= limit,
            "{mode:?}: given up after {took:?}, before {limit:?}"
        );
        let sessions = h.transcribe.sessions();
        assert_eq!(sessions.len(), 2, "{mode:?}");
        assert!(sessions[0].unanswered && sessions[0].audio.is_empty());
        assert!(
            sessions[1].audio == sample_call_stereo(),
            "{mode:?}: every sample once, in the session that answered"
        );
        assert_eq!(outcome.transcription.sessions, 1, "{mode:?}");
        let records = h.records().await;
        if mode.is_empty() {
            assert_whole_call(&records);
        } else {
            let kinds: Vec<&str> = records
                .iter()
                .map(|r| r["EventType"].as_str().unwrap_or("?"))
                .collect();
            assert_eq!(kinds.first(), Some(&"START"));
            assert_eq!(kinds.last(), Some(&"END"));
            assert_eq!(kinds.iter().filter(|k| **k == "START").count(), 1);
            assert!(kinds.contains(&"ADD_TRANSCRIPT_SEGMENT"), "{kinds:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_stream_stops_at_the_next_contact() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    // This call, then (after an idle gap on the stream) the next caller's call.
    let mut chunks = sample_call_chunks();
    let next: Vec<Bytes> = {
        let mut writer = kvs_media::ConnectWriter::new(kvs_media::WriterOptions {
            contact_id: "next-caller-contact".to_string(),
            ..kvs_media::WriterOptions::default()
        });
        for _ in 0..chunks.len() {
            writer.fragment(0, &[]);
        }
        let pcm = vec![0x55u8; 8000 * 2 * 5];
        let start_ms = 1_726_677_750_136 + 20_000;
        // KVS numbers fragments in increasing order: put the next call's numbers above this
        // call's (same length, so the EBML sizes stay right).
        writer
            .call(&pcm, &pcm, start_ms)
            .into_iter()
            .map(|chunk| {
                let text = b"91343852333181000";
                let mut chunk = chunk;
                if let Some(at) = chunk.windows(text.len()).position(|w| w == text) {
                    chunk[at + 14] = b'9';
                }
                Bytes::from(chunk)
            })
            .collect()
    };
    chunks.extend(next);
    let (arn, first) = h.play("call", chunks).await;
    let outcome = run(&h.pipeline(&[]), new_call(&arn, &first)).await;
    assert_eq!(
        outcome.ending,
        Ending::CallEnded(EndReason::OtherContact("next-caller-contact".into()))
    );
    let sessions = h.transcribe.sessions();
    assert!(
        sessions[0].audio == sample_call_stereo(),
        "nothing of the next caller reaches Transcribe"
    );
    assert_whole_call(&h.records().await);
}

/// A stored call whose GetMedia sends the KVS error chunk `id` (`code`) after 10 fragments.
async fn call_with_error_chunk(id: &str, code: &str) -> (Harness, String, String) {
    let h = Harness::new(named_first(), TranscribeOptions::default()).await;
    let (arn, first) = h.stored(
        "call",
        &sample_call_chunks(),
        &[Fault::ErrorChunkAfter {
            fragments: 10,
            code: code.into(),
            id: id.into(),
        }],
    );
    (h, arn, first)
}

/// The KVS stream error a run of the call on `arn` fails with.
async fn run_to_kvs_error(h: &Harness, arn: &str, first: &str) -> (PipelineError, KvsStreamError) {
    let error = tokio::time::timeout(
        Duration::from_secs(60),
        h.pipeline(&[])
            .run(new_call(arn, first), Default::default()),
    )
    .await
    .expect("the pipeline finishes")
    .expect_err("the KVS error is a failure, not the end of the call");
    let PipelineError::Source(SourceError::Stream(kvs)) = &error else {
        panic!("{error}");
    };
    let kvs = kvs.clone();
    (error, kvs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kvs_error_chunk_fails_the_run_and_a_transient_one_is_resumed() {
    // 4500 (KMS access denied): the run fails naming the id and what to do; the audio before
    // it is transcribed and published, and no END goes out (the call did not end).
    let (h, arn, first) =
        call_with_error_chunk("4500", "Access denied for the stream's KMS key").await;
    let (error, kvs) = run_to_kvs_error(&h, &arn, &first).await;
    assert_eq!(kvs.id, "4500");
    let text = error.to_string();
    assert!(
        text.contains("4500") && text.contains("kms:Decrypt") && text.contains(&arn),
        "{text}"
    );
    let audio = &h.transcribe.sessions()[0].audio;
    assert!(
        sample_call_stereo().starts_with(audio) && audio.len() >= 9 * 32_000,
        "the audio before the error ({} bytes)",
        audio.len()
    );
    let records = h.records().await;
    assert_eq!(records.first().unwrap()["EventType"], "START");
    assert!(
        records.iter().all(|r| r["EventType"] != "END"),
        "no END for a call that could not be read"
    );
    assert_eq!(
        on(&finals(&records), "AGENT").first(),
        Some(&AGENT_TURNS[0]),
        "what was said before the error is published"
    );

    // 5000 (internal error) and 4503 (KMS key unavailable): transient, the call resumes after
    // the last fragment.
    for (id, code) in [
        ("5000", "Internal error"),
        ("4503", "KMS key specified in the stream is unavailable"),
    ] {
        let (h, arn, first) = call_with_error_chunk(id, code).await;
        let outcome = run(&h.pipeline(&[]), new_call(&arn, &first)).await;
        assert_eq!(outcome.ending, Ending::CallEnded(EndReason::Idle), "{id}");
        assert!(
            h.transcribe.sessions()[0].audio == sample_call_stereo(),
            "{id}"
        );
        assert_whole_call(&h.records().await);
        // Counted by id, for the KvsErrors metric, and as a resumed request.
        assert_eq!(
            outcome.transient_kvs_errors,
            std::collections::BTreeMap::from([(id.to_string(), 1)])
        );
        assert_eq!(outcome.get_media_resumes, 1);
    }

    // An id the GetMedia reference does not list: a failure naming the id as sent.
    let (h, arn, first) = call_with_error_chunk("4999", "Something new").await;
    let (error, kvs) = run_to_kvs_error(&h, &arn, &first).await;
    assert_eq!(kvs.id, "4999");
    assert!(!kvs.is_documented());
    let text = error.to_string();
    assert!(
        text.contains("GetMedia error 4999 (Something new)")
            && text.contains("does not list")
            && text.contains(&arn),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_stall_mid_call_is_not_the_end_of_the_call() {
    // The sample call with 10 s of nothing on the stream after its 12th fragment (12.288 s,
    // between two turns), played live at 10x, against KVS's payload timeout (stall_kvs).
    let h = Harness::new(stall_kvs(), TranscribeOptions::default()).await;
    let (chunks, expected) = sample_call_with_stall();
    let (arn, first) = h.play("call", chunks).await;
    let outcome = run(&h.pipeline(&[]), new_call(&arn, &first)).await;
    assert_eq!(outcome.ending, Ending::CallEnded(EndReason::Idle));
    // Transcribe got the whole call with the stall as 10 s of silence, in place.
    let audio = &h.transcribe.sessions()[0].audio;
    assert_eq!(h.transcribe.sessions().len(), 1);
    assert!(
        *audio == expected,
        "Transcribe got {} bytes, the call with its stall is {}",
        audio.len(),
        expected.len()
    );
    // Every turn once; the ones after the stall 10 s later, as they happened.
    let records = h.records().await;
    assert_turns_with_stall(&records, 0.005);
    assert_eq!(records.last().unwrap()["EventType"], "END");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_new_audio_ends_after_the_idle_timeout() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let arn = h.kvs.create_stream("call").unwrap();
    // The producer never closes the stream (a real KVS stream after Connect stops writing).
    h.kvs
        .put_capture("call", &sample_call_chunks().concat())
        .unwrap();
    let first = h.kvs.fragment_numbers("call").unwrap()[0].clone();
    let started = std::time::Instant::now();
    let outcome = run(
        &h.pipeline(&[("KVS_IDLE_TIMEOUT", "1500")]),
        new_call(&arn, &first),
    )
    .await;
    assert_eq!(outcome.ending, Ending::CallEnded(EndReason::Idle));
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(h.transcribe.sessions()[0].audio == sample_call_stereo());
    assert_whole_call(&h.records().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_analytics_mode_publishes_utterances_and_categories() {
    let h = Harness::new(
        KvsOptions::default(),
        TranscribeOptions {
            categories: vec![local_aws::transcribe::CategoryRule {
                name: "long-agent-turn".to_string(),
                participant_role: "AGENT".to_string(),
                min_seconds: 6.0,
            }],
            ..TranscribeOptions::default()
        },
    )
    .await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    run(
        &h.pipeline(&[
            ("TRANSCRIBE_API_MODE", "analytics"),
            ("OUTPUT_BUCKET", "lca-bucket"),
            (
                "TCA_DATA_ACCESS_ROLE_ARN",
                "arn:aws:iam::123456789012:role/tca",
            ),
            ("SAVE_PARTIAL_TRANSCRIPTS", "false"),
        ]),
        new_call(&arn, &first),
    )
    .await;
    let session = &h.transcribe.sessions()[0];
    assert_eq!(session.mode, local_aws::transcribe::Mode::CallAnalytics);
    let configuration = session.configuration.as_ref().unwrap();
    assert_eq!(
        configuration["ChannelDefinitions"],
        serde_json::json!([
            {"ChannelId": 0, "ParticipantRole": "CUSTOMER"},
            {"ChannelId": 1, "ParticipantRole": "AGENT"}
        ])
    );
    // Post-call analytics is one job on the call's recording at its end (post_call.rs), not
    // each stream's output of its own share.
    assert!(
        configuration["PostCallAnalyticsSettings"].is_null(),
        "{configuration}"
    );
    assert!(session.audio == sample_call_stereo());
    let records = h.records().await;
    assert_eq!(records.first().unwrap()["EventType"], "START");
    assert_eq!(records.last().unwrap()["EventType"], "END");
    let utterances: Vec<&Value> = records
        .iter()
        .filter(|r| r["EventType"] == "ADD_TRANSCRIPT_SEGMENT")
        .map(|r| &r["UtteranceEvent"])
        .collect();
    let role = |r: &str| {
        utterances
            .iter()
            .filter(|u| u["ParticipantRole"] == r)
            .count()
    };
    assert_eq!((role("CUSTOMER"), role("AGENT")), (5, 6));
    assert!(utterances.iter().all(|u| u["IsPartial"] == false));
    let first_caller = utterances
        .iter()
        .find(|u| u["ParticipantRole"] == "CUSTOMER")
        .unwrap();
    assert_eq!(first_caller["BeginOffsetMillis"], 7420);
    let categories: Vec<&Value> = records
        .iter()
        .filter(|r| r["EventType"] == "ADD_CALL_CATEGORY")
        .collect();
    assert_eq!(categories.len(), 1);
    assert_eq!(
        categories[0]["CategoryEvent"]["MatchedCategories"],
        serde_json::json!(["long-agent-turn"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transcribe_option_reaches_transcribe_as_its_header() {
    // (environment, headers expected with their values, headers expected absent)
    type Case<'a> = (
        &'a [(&'a str, &'a str)],
        &'a [(&'a str, &'a str)],
        &'a [&'a str],
    );
    let cases: &[Case] = &[
        (
            &[
                ("CUSTOM_VOCABULARY_NAME", "lca-vocab"),
                ("CUSTOM_LANGUAGE_MODEL_NAME", "lca-model"),
                ("PII_ENTITY_TYPES", "NAME,ADDRESS"),
            ],
            &[
                ("language-code", "en-US"),
                ("sample-rate", "8000"),
                ("media-encoding", "pcm"),
                ("number-of-channels", "2"),
                ("enable-channel-identification", "true"),
                ("vocabulary-name", "lca-vocab"),
                ("language-model-name", "lca-model"),
                ("content-redaction-type", "PII"),
                ("pii-entity-types", "NAME,ADDRESS"),
            ],
            &[],
        ),
        (
            &[
                ("TRANSCRIBE_LANGUAGE_CODE", "identify-language"),
                ("TRANSCRIBE_LANGUAGE_OPTIONS", "en-US, es-US"),
                ("TRANSCRIBE_PREFERRED_LANGUAGE", "es-US"),
                ("CUSTOM_VOCABULARY_NAME", "lca-vocab-en,lca-vocab-es"),
            ],
            &[
                ("identify-language", "true"),
                ("language-options", "en-US,es-US"),
                ("preferred-language", "es-US"),
                ("vocabulary-names", "lca-vocab-en,lca-vocab-es"),
            ],
            // No redaction without a language code; no language code with identification;
            // VocabularyNames, not VocabularyName, with identification (API reference).
            &["language-code", "content-redaction-type", "vocabulary-name"],
        ),
        (
            &[
                ("TRANSCRIBE_LANGUAGE_CODE", "identify-multiple-languages"),
                ("TRANSCRIBE_LANGUAGE_OPTIONS", "en-US,de-DE"),
                ("TRANSCRIBE_PREFERRED_LANGUAGE", "de-DE"),
            ],
            &[
                ("identify-multiple-languages", "true"),
                ("language-options", "en-US,de-DE"),
            ],
            // PreferredLanguage only with IdentifyLanguage (the API reference's reading).
            &["preferred-language"],
        ),
        (
            &[
                ("TRANSCRIBE_LANGUAGE_CODE", "de-DE"),
                ("IS_CONTENT_REDACTION_ENABLED", "true"),
            ],
            &[("language-code", "de-DE")],
            // de-DE has no streaming PII redaction.
            &["content-redaction-type", "pii-entity-types"],
        ),
    ];
    for (vars, present, absent) in cases {
        let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
        let (arn, first) = h.stored("call", &sample_call_chunks()[..3], &[]);
        run(&h.pipeline(vars), new_call(&arn, &first)).await;
        let headers = &h.transcribe.sessions()[0].headers;
        for (name, value) in *present {
            let name = format!("x-amzn-transcribe-{name}");
            assert_eq!(
                headers.get(&name).map(String::as_str),
                Some(*value),
                "{vars:?}: {name}"
            );
        }
        for name in *absent {
            let name = format!("x-amzn-transcribe-{name}");
            assert!(
                !headers.contains_key(&name),
                "{vars:?}: {name} should be absent"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_overs_continue_the_call_with_every_sample_once_and_call_relative_times() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    let pipeline = h.pipeline(&[]);
    let mut call = new_call(&arn, &first);
    let mut hand_overs = 0;
    loop {
        // At least 5 s of call per run at 10x, then on to the next pause in the conversation.
        call.deadline = Some(tokio::time::Instant::now() + Duration::from_millis(500));
        let outcome = run(&pipeline, call.clone()).await;
        match outcome.ending {
            Ending::HandOver(position) => {
                hand_overs += 1;
                assert!(position.session_id.is_some());
                call.position = position;
                call.start_event = None;
            }
            Ending::CallEnded(reason) => {
                assert_eq!(reason, EndReason::Idle);
                break;
            }
        }
    }
    assert!(hand_overs >= 3, "{hand_overs} hand-overs");
    let sessions = h.transcribe.sessions();
    assert_eq!(sessions.len(), hand_overs + 1);
    assert!(
        sessions
            .iter()
            .all(|s| s.session_id == sessions[0].session_id)
    );
    let audio = h.transcribed_audio();
    assert!(
        audio == sample_call_stereo(),
        "every sample reaches Transcribe exactly once across the runs"
    );
    let records = h.records().await;
    assert_eq!(records.first().unwrap()["EventType"], "START");
    assert_eq!(records.last().unwrap()["EventType"], "END");
    assert_eq!(
        records.iter().filter(|r| r["EventType"] == "START").count(),
        1
    );
    assert_eq!(
        records.iter().filter(|r| r["EventType"] == "END").count(),
        1
    );
    // Hand-overs wait for a pause, so turns are whole; were one cut (no pause within the grace
    // period), its pieces would together span the turn at its call-relative times.
    let finals = finals(&records);
    for (channel, turns) in [("CALLER", &CALLER_TURNS[..]), ("AGENT", &AGENT_TURNS[..])] {
        let pieces = on(&finals, channel);
        for &(start, end) in turns {
            let inside: Vec<&(f64, f64)> = pieces
                .iter()
                .filter(|p| p.0 >= start - 0.05 && p.1 <= end + 0.05)
                .collect();
            assert!(
                !inside.is_empty(),
                "{channel} turn {start}..{end}: {pieces:?}"
            );
            let first = inside.iter().map(|p| p.0).fold(f64::MAX, f64::min);
            let last = inside.iter().map(|p| p.1).fold(0.0, f64::max);
            assert!(
                (first - start).abs() < 0.02 && (last - end).abs() < 0.02,
                "{channel} turn {start}..{end} covered by {inside:?}"
            );
        }
        assert_eq!(
            pieces
                .iter()
                .filter(|p| !turns.iter().any(|t| p.0 >= t.0 - 0.05 && p.1 <= t.1 + 0.05))
                .count(),
            0,
            "{channel}: no segment outside a turn: {pieces:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_throttling_is_retried_without_losing_or_duplicating_events() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    for fault in [
        KinesisFault::Throttle,
        KinesisFault::Throttle,
        KinesisFault::FailRecords(vec![0]),
        KinesisFault::Throttle,
    ] {
        h.faults.inject(fault);
    }
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    let outcome = run(&h.pipeline(&[]), new_call(&arn, &first)).await;
    assert_eq!(h.faults.applied().len(), 4);
    assert!(outcome.published.retries >= 4);
    let records = h.records().await;
    assert_eq!(outcome.published.delivered as usize, records.len());
    assert_whole_call(&records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinesis_outage_does_not_hold_back_the_transcription() {
    // The sample call seven times over (7.2 minutes: about 1,300 LCA messages with the
    // partials, more than the run's channel to the publisher holds, 1024), stored in KVS, and
    // Kinesis out from the start. Transcribe's streams must take the whole call and finish
    // while Kinesis is still out: each lane hands its results to the publisher through an
    // unbounded queue (`transcribe::run`; a call's messages are small), so a publisher that
    // retries never leaves Transcribe's results unread. A run stalled on Kinesis therefore
    // reaches its hand-over point with its share transcribed, which is what lets the call go
    // on from there (`Reached`) instead of transcribing the share again. Once Kinesis is
    // back: START first, every final once and in order, END last; partials that a newer
    // version replaced while queued are dropped.
    const TILES: usize = 7;
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    h.faults.set_outage(true);
    let (chunks, stereo) = tiled_sample_call(TILES);
    let (arn, first) = h.stored("call", &chunks, &[]);
    let mut call = new_call(&arn, &first);
    // The publisher retries until the run's deadline plus grace: far enough.
    call.deadline = Some(tokio::time::Instant::now() + Duration::from_secs(120));
    let pipeline = h.pipeline(&[]);
    let run = tokio::spawn(async move {
        pipeline
            .run(call, call_transcriber::pipeline::Taps::default())
            .await
    });
    let began = std::time::Instant::now();
    loop {
        let sessions = h.transcribe.sessions();
        let finished = !sessions.is_empty()
            && sessions.iter().all(|s| s.ended_cleanly)
            && h.transcribe.open_streams() == 0;
        if finished {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "Transcribe's streams did not finish while Kinesis was out: {} streams, {} of {} bytes taken, {} open",
            sessions.len(),
            sessions.iter().map(|s| s.audio_bytes).sum::<usize>(),
            stereo.len(),
            h.transcribe.open_streams()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(h.transcribed_audio() == stereo, "every sample once");
    assert!(h.records().await.is_empty(), "Kinesis was out");
    h.faults.set_outage(false);
    let outcome = run
        .await
        .unwrap()
        .expect("the call is delivered once Kinesis is back");
    assert!(outcome.published.superseded > 0);
    let records = h.records().await;
    assert_eq!(records.first().unwrap()["EventType"], "START");
    assert_eq!(records.last().unwrap()["EventType"], "END");
    assert_eq!(
        records.iter().filter(|r| r["EventType"] == "END").count(),
        1
    );
    assert_tiled_turns(&records, TILES, 0.001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_holds_back_the_ones_after_it_and_stale_partials_are_skipped() {
    use call_transcriber::publisher::{self, PublisherOptions};
    use lca_events::{LcaEvent, LcaMessage, Segment, Speaker, StandardSegment};
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let segment = |i: u32, partial: bool, text: &str| LcaMessage {
        call_id: CONTACT.to_string(),
        event: LcaEvent::AddTranscriptSegment(Segment::Standard(StandardSegment {
            channel: Speaker::Caller,
            segment_id: format!("ch_0-{i}"),
            start_time: f64::from(i),
            end_time: f64::from(i) + 0.5,
            transcript: text.to_string(),
            is_partial: partial,
            created_at: "2026-11-23T00:00:00.000Z".into(),
        })),
    };
    // Queued at once: finals 0-5, and for segment 6 two partials then its final.
    for i in 0..6 {
        tx.send(segment(i, false, "final")).await.unwrap();
    }
    tx.send(segment(6, true, "partial a")).await.unwrap();
    tx.send(segment(6, true, "partial a b")).await.unwrap();
    tx.send(segment(6, false, "final")).await.unwrap();
    drop(tx);
    // The first two requests are refused (a throttled shard): every record waits.
    h.faults.inject(KinesisFault::Throttle);
    h.faults.inject(KinesisFault::FailRecords(vec![0]));
    let report = publisher::run(
        &h.clients.kinesis,
        &PublisherOptions::new("lca"),
        rx,
        None,
        None,
    )
    .await;
    assert!(report.undelivered.is_empty());
    assert_eq!(report.delivered, 7);
    assert_eq!(
        report.superseded, 2,
        "the partials of segment 6 before its final"
    );
    assert_eq!(report.requests, 9, "one PutRecord per record, two retried");
    let texts: Vec<(String, String)> = h
        .records()
        .await
        .iter()
        .map(|r| {
            (
                r["SegmentId"].as_str().unwrap().to_string(),
                r["Transcript"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = (0..7)
        .map(|i| (format!("ch_0-{i}"), "final".to_string()))
        .collect();
    assert_eq!(texts, expected, "in the order produced, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_undeliverable_record_nothing_later_is_published() {
    // Kinesis refuses the second record for good: the third must not overtake it, so what
    // is on the stream stays a prefix of what was produced (the lease's record of it).
    use call_transcriber::publisher::{self, PublisherOptions};
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let end = |call: &str| lca_events::LcaMessage {
        call_id: call.to_string(),
        event: lca_events::LcaEvent::End(lca_events::Stamped {
            created_at: "2026-11-23T00:00:00.000Z".into(),
        }),
    };
    for call in ["first", "second", "third"] {
        tx.send(end(call)).await.unwrap();
    }
    drop(tx);
    let options = PublisherOptions {
        max_attempts: 2,
        backoff: FAST_RETRIES,
        ..PublisherOptions::new("lca")
    };
    // The first record goes through; the second meets two refusals, its only attempts.
    h.faults.inject(KinesisFault::Pass);
    h.faults.inject(KinesisFault::Throttle);
    h.faults.inject(KinesisFault::Throttle);
    let report = publisher::run(&h.clients.kinesis, &options, rx, None, None).await;
    assert_eq!(report.delivered, 1);
    assert_eq!(report.requests, 3, "the third record was never sent");
    let undelivered: Vec<&str> = report
        .undelivered
        .iter()
        .map(|(m, _)| m.call_id.as_str())
        .collect();
    assert_eq!(undelivered, ["second", "third"]);
    let on_stream: Vec<String> = h
        .records()
        .await
        .iter()
        .map(|r| r["CallId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(on_stream, ["first"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinesis_refusal_is_not_retried_and_says_what_to_check() {
    // A stream that does not exist: ResourceNotFoundException, which retrying does not fix
    // (the Kinesis API reference's PutRecord errors). One request, reported as refused, while
    // a throttled record (retryable) is not.
    use call_transcriber::publisher::{self, PublisherOptions};
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let end = lca_events::LcaMessage {
        call_id: "c".to_string(),
        event: lca_events::LcaEvent::End(lca_events::Stamped {
            created_at: "2026-11-30T00:00:00.000Z".into(),
        }),
    };
    let publish = |stream: &str, max_attempts: u32| {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.try_send(end.clone()).unwrap();
        let options = PublisherOptions {
            max_attempts,
            backoff: FAST_RETRIES,
            ..PublisherOptions::new(stream)
        };
        let client = h.clients.kinesis.clone();
        async move { publisher::run(&client, &options, rx, None, None).await }
    };
    let refused = publish("no-such-stream", 5).await;
    assert_eq!(refused.requests, 1, "not retried");
    assert!(refused.refused);
    assert!(
        refused.undelivered[0]
            .1
            .contains("ResourceNotFoundException"),
        "{:?}",
        refused.undelivered
    );
    h.faults.inject(KinesisFault::Throttle);
    h.faults.inject(KinesisFault::Throttle);
    let throttled = publish("lca", 2).await;
    assert_eq!(throttled.requests, 2);
    assert!(!throttled.refused, "throttling is retried, not a refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_kinesis_never_accepts_are_reported_not_dropped() {
    use call_transcriber::publisher::{self, PublisherOptions};
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(lca_events::LcaMessage {
        call_id: CONTACT.to_string(),
        event: lca_events::LcaEvent::End(lca_events::Stamped {
            created_at: "2026-11-23T00:00:00.000Z".into(),
        }),
    })
    .await
    .unwrap();
    drop(tx);
    let options = PublisherOptions {
        max_attempts: 3,
        backoff: FAST_RETRIES,
        ..PublisherOptions::new("lca")
    };
    for _ in 0..3 {
        h.faults.inject(KinesisFault::Throttle);
    }
    let report = publisher::run(&h.clients.kinesis, &options, rx, None, None).await;
    assert_eq!(report.delivered, 0);
    assert_eq!(report.undelivered.len(), 1);
    assert!(
        report.undelivered[0]
            .1
            .contains("ProvisionedThroughputExceededException"),
        "{}",
        report.undelivered[0].1
    );
    assert!(h.records().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_hold_transcribe_open_while_kvs_stalls_and_times_stay_exact() {
    // Transcribe here closes a stream after 3 s without audio (AWS: 15 s); KVS stalls 5 s
    // before the 20th fragment; keep-alives every second bridge it.
    let h = Harness::new(
        named_first(),
        TranscribeOptions {
            audio_timeout: Duration::from_secs(3),
            ..TranscribeOptions::default()
        },
    )
    .await;
    let (arn, first) = h.stored(
        "call",
        &sample_call_chunks(),
        &[Fault::StallBefore {
            fragment: 20,
            duration: Duration::from_secs(5),
        }],
    );
    let outcome = run(
        &h.pipeline(&[("KEEP_ALIVE", "1000"), ("KVS_IDLE_TIMEOUT", "8000")]),
        new_call(&arn, &first),
    )
    .await;
    assert_streams_held(&h, &outcome);
    // About one a second through the 5 s stall and through the 8 s of quiet after the call
    // that tell the call is over (KVS_IDLE_TIMEOUT).
    let keep_alives = outcome.transcription.keep_alives;
    assert!((9..=15).contains(&keep_alives), "{keep_alives} keep-alives");
    assert_eq!(
        h.transcribed_audio().len(),
        sample_call_stereo().len() + keep_alives as usize * 320,
        "the call's audio plus 10 ms of silence per keep-alive"
    );
    // Segment times are the call's: keep-alive silence is not call time (uncorrected, the
    // turns after the stall would be 10 ms late per keep-alive).
    assert_whole_call(&h.records().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcribe_over_tls_and_http2_as_in_production() {
    use aws_smithy_http_client::tls::{
        Provider, TlsContext, TrustStore, rustls_provider::CryptoMode,
    };
    let mut h = Harness::new(named_first(), TranscribeOptions::default()).await;
    let identity = local_aws::http::TlsIdentity::self_signed().unwrap();
    let tls_server = h.transcribe.serve_with(0, Some(&identity)).await.unwrap();
    assert!(tls_server.url().starts_with("https://"));
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::empty().with_pem_certificate(identity.cert_pem.as_bytes()))
        .build()
        .unwrap();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build_https();
    h.clients.transcribe = aws_sdk_transcribestreaming::Client::from_conf(
        aws_sdk_transcribestreaming::config::Builder::from(&local_aws::sdk_config(
            &tls_server.url(),
        ))
        .http_client(http)
        .build(),
    );
    let (arn, first) = h.stored("call", &sample_call_chunks(), &[]);
    run(&h.pipeline(&[]), new_call(&arn, &first)).await;
    assert!(h.transcribe.sessions()[0].audio == sample_call_stereo());
    assert_whole_call(&h.records().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_tracks_put_the_caller_on_channel_0() {
    // A lambda hook's isCaller=false: the stream's AUDIO_TO_CUSTOMER is the caller.
    let h = Harness::new(named_first(), TranscribeOptions::default()).await;
    let (arn, first) = h.stored("call", &sample_call_chunks(), &[]);
    let mut call = new_call(&arn, &first);
    call.swap_channels = true;
    run(&h.pipeline(&[]), call).await;
    let swapped: Vec<u8> = sample_call_stereo()
        .chunks_exact(4)
        .flat_map(|f| [f[2], f[3], f[0], f[1]])
        .collect();
    assert!(h.transcribe.sessions()[0].audio == swapped);
    let finals = finals(&h.records().await);
    assert_eq!(on(&finals, "CALLER"), AGENT_TURNS);
    assert_eq!(on(&finals, "AGENT"), CALLER_TURNS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_transcribe_quota_wait_and_catch_up_with_every_word() {
    // Room for one stream (an account's quota in use); two live calls at once. The second
    // is refused with LimitExceededException, waits with backoff while its audio stays in
    // KVS, and catches up once the first call's stream closes.
    let h = Harness::new(KvsOptions::default(), stream_quota(1)).await;
    let (arn_a, first_a) = h.play("call-a", sample_call_chunks()).await;
    let (arn_b, first_b) = h.play("call-b", sample_call_chunks()).await;
    let pipeline = h.pipeline(&[("START_STREAM_RETRY_WAIT", "200")]);
    let call = |id: &str, arn: &str, first: &str| {
        let mut call = new_call(arn, first);
        call.call_id = id.to_string();
        call
    };
    let (a, b) = tokio::join!(
        run(&pipeline, call("call-a", &arn_a, &first_a)),
        run(&pipeline, call("call-b", &arn_b, &first_b)),
    );
    assert!(
        h.transcribe.refused() >= 1,
        "the quota turned a stream away"
    );
    assert_eq!(
        (a.transcription.sessions, b.transcription.sessions),
        (1, 1),
        "one stream per call, started once there was room"
    );
    let sessions = h.transcribe.sessions();
    assert_eq!(sessions.len(), 2);
    for session in &sessions {
        assert!(
            session.audio == sample_call_stereo(),
            "each call's audio exactly once"
        );
    }
    let records = h.records().await;
    for id in ["call-a", "call-b"] {
        let call: Vec<Value> = records
            .iter()
            .filter(|r| r["CallId"] == id)
            .cloned()
            .collect();
        assert_whole_call(&call);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_run_stops_its_transcribe_stream_and_publishes_nothing_more() {
    // A run is dropped when its invocation loses the call's lease: nothing of it may go on
    // (a Transcribe stream held open, GetMedia polling, events published behind the new
    // holder's back).
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let (arn, first) = h.play("call", sample_call_chunks()).await;
    let pipeline = h.pipeline(&[]);
    let run = pipeline.run(new_call(&arn, &first), Default::default());
    assert!(
        tokio::time::timeout(Duration::from_secs(2), run)
            .await
            .is_err(),
        "still running after 2 s (the call lasts about 6 s)"
    );
    // The stream closes once the server sees the dropped connection's end.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.transcribe.open_streams() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the Transcribe stream of the dropped run is still open after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.transcribe.sessions().len(), 1);
    let published = h.records().await.len();
    assert!(published >= 1, "START and the first results were published");
    // An observation window, not a wait: the rest of the call (about 4 s) plays into KVS,
    // and a run left going would read and publish it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        h.records().await.len(),
        published,
        "nothing is published after the run was dropped"
    );
    assert!(h.records().await.iter().all(|r| r["EventType"] != "END"));
}

#[tokio::test]
async fn the_post_call_job_is_taken_under_either_reading_of_language_options() {
    use call_transcriber::post_call::{AnalyticsJob, JobStarted, PostCallJobs, plan_job};
    let endpoint = local_aws::call_analytics::CallAnalyticsJobs::new();
    let server = endpoint.serve(0).await.unwrap();
    let jobs = PostCallJobs {
        client: aws_sdk_transcribe::Client::new(&local_aws::sdk_config(&server.url())),
    };
    let vars = [
        ("KINESIS_STREAM_NAME", "lca"),
        ("TRANSCRIBE_API_MODE", "analytics"),
        ("OUTPUT_BUCKET", "lca-bucket"),
        (
            "TCA_DATA_ACCESS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/tca",
        ),
        ("CUSTOM_VOCABULARY_NAME", "lca-vocab"),
    ];
    let config = call_transcriber::TranscriberConfig::from_lookup(|name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    })
    .unwrap();
    let minute = 44 + 60 * 32_000;
    let job = plan_job(&config.transcribe, "c-1", "lca-bucket", "c-1.wav", minute)
        .unwrap()
        .unwrap();
    // One language as LanguageOptions of one (AWS's post-call analytics sample does so).
    assert_eq!(jobs.start(&job).await, Ok(JobStarted::Started));
    let taken = endpoint.jobs();
    assert_eq!(
        taken[0]["Settings"]["LanguageOptions"],
        serde_json::json!(["en-US"])
    );
    assert_eq!(taken[0]["Settings"]["VocabularyName"], "lca-vocab");
    // The reference's "two or more language codes": the one refused, the job is asked again
    // with the language left to Transcribe.
    endpoint.refuse_single_language_option();
    let second = AnalyticsJob {
        name: "c-2".to_string(),
        ..job.clone()
    };
    assert_eq!(jobs.start(&second).await, Ok(JobStarted::Started));
    assert_eq!(endpoint.refused(), 1);
    let taken = endpoint.jobs();
    assert_eq!(taken.len(), 2);
    assert!(
        taken[1]["Settings"]["LanguageOptions"].is_null(),
        "{}",
        taken[1]
    );
    assert!(taken[1]["Settings"]["VocabularyName"].is_null());
    // Asked again (a retried end of call): the job is there already.
    assert_eq!(jobs.start(&second).await, Ok(JobStarted::AlreadyStarted));
}

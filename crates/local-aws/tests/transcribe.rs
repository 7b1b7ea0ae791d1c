//! The local Transcribe Streaming as the unmodified aws-sdk-transcribestreaming client sees it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_transcribestreaming::Client;
use aws_sdk_transcribestreaming::config::{Credentials, Region};
use aws_sdk_transcribestreaming::primitives::Blob;
use aws_sdk_transcribestreaming::types::error::AudioStreamError;
use aws_sdk_transcribestreaming::types::{
    AudioEvent, AudioStream, CallAnalyticsLanguageCode, ChannelDefinition, ConfigurationEvent,
    ContentRedactionType, LanguageCode, MediaEncoding, ParticipantRole, TranscriptResultStream,
};
use local_aws::transcribe::{
    CategoryRule, Mode, Pace, Transcribe, TranscribeFault, TranscribeOptions,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(rel)
}

/// The sample call as interleaved stereo s16le: caller left, agent right.
fn sample_call_stereo() -> Vec<u8> {
    let caller = std::fs::read(fixture("connect/sample-call.caller.raw")).unwrap();
    let agent = std::fs::read(fixture("connect/sample-call.agent.raw")).unwrap();
    caller
        .chunks_exact(2)
        .zip(agent.chunks_exact(2))
        .flat_map(|(c, a)| [c[0], c[1], a[0], a[1]])
        .collect()
}

fn config(url: &str) -> aws_sdk_transcribestreaming::config::Builder {
    aws_sdk_transcribestreaming::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDLOCAL", "secret", None, None, "test"))
        .endpoint_url(url)
}

fn client(url: &str) -> Client {
    Client::from_conf(config(url).build())
}

/// A client over TLS that trusts the local server's self-signed certificate.
fn tls_client(url: &str, cert_pem: &str) -> Client {
    use aws_smithy_http_client::tls::{
        Provider, TlsContext, TrustStore, rustls_provider::CryptoMode,
    };
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::empty().with_pem_certificate(cert_pem.as_bytes()))
        .build()
        .unwrap();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build_https();
    Client::from_conf(config(url).http_client(http).build())
}

/// A standard-mode request for this project's audio: en-US, 8 kHz PCM, two identified channels.
fn stereo_request(
    client: &Client,
) -> aws_sdk_transcribestreaming::operation::start_stream_transcription::builders::StartStreamTranscriptionFluentBuilder{
    client
        .start_stream_transcription()
        .language_code(LanguageCode::EnUs)
        .media_sample_rate_hertz(8000)
        .media_encoding(MediaEncoding::Pcm)
        .enable_channel_identification(true)
        .number_of_channels(2)
}

/// An audio stream the test feeds: 100 ms stereo chunks of `pcm`, then the end.
fn audio_events(
    pcm: &[u8],
    first: Option<AudioStream>,
) -> ReceiverStream<Result<AudioStream, AudioStreamError>> {
    let (tx, rx) = mpsc::channel(2 + pcm.len() / 3200);
    if let Some(event) = first {
        tx.try_send(Ok(event)).unwrap();
    }
    for chunk in pcm.chunks(3200) {
        tx.try_send(Ok(AudioStream::AudioEvent(
            AudioEvent::builder().audio_chunk(Blob::new(chunk)).build(),
        )))
        .unwrap();
    }
    ReceiverStream::new(rx)
}

/// Final (not partial) results as (channel, start, end).
type Finals = Vec<(String, f64, f64)>;

#[tokio::test]
async fn standard_mode_transcribes_each_turn_on_its_channel_and_receives_every_sample() {
    let transcribe = Transcribe::new(TranscribeOptions::default());
    let server = transcribe.serve(0).await.unwrap();
    let pcm = sample_call_stereo();
    let mut output = stereo_request(&client(&server.url()))
        .session_id("11111111-2222-4333-8444-555555555555")
        .vocabulary_name("lca-vocabulary")
        .audio_stream(audio_events(&pcm, None).into())
        .send()
        .await
        .unwrap();
    assert_eq!(
        output.session_id.as_deref(),
        Some("11111111-2222-4333-8444-555555555555")
    );
    let mut finals: Finals = Vec::new();
    let mut partials = 0;
    while let Some(event) = output.transcript_result_stream.recv().await.unwrap() {
        let TranscriptResultStream::TranscriptEvent(event) = event else {
            continue;
        };
        for result in event.transcript.unwrap().results.unwrap_or_default() {
            if result.is_partial {
                partials += 1;
            } else {
                finals.push((
                    result.channel_id.unwrap(),
                    result.start_time,
                    result.end_time,
                ));
            }
        }
    }
    // The sample call's turns (fixtures/connect/sample-call.transcript.tsv): 6 agent, 5 caller,
    // at the times the energy recognizer finds them.
    let on = |channel: &str| {
        finals
            .iter()
            .filter(|f| f.0 == channel)
            .map(|f| (f.1, f.2))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        on("ch_0"),
        [
            (7.42, 11.94),
            (18.84, 24.25),
            (31.24, 33.55),
            (40.29, 44.16),
            (51.48, 55.08)
        ]
    );
    assert_eq!(
        on("ch_1"),
        [
            (0.1, 6.34),
            (13.05, 17.81),
            (25.34, 30.21),
            (34.59, 39.29),
            (45.15, 50.44),
            (56.07, 60.41)
        ]
    );
    assert!(partials > 20, "partials while voiced: {partials}");
    let sessions = transcribe.sessions();
    assert_eq!(sessions.len(), 1);
    let session = &sessions[0];
    assert_eq!(session.mode, Mode::Standard);
    assert!(session.ended_cleanly);
    assert!(
        session.audio == pcm,
        "Transcribe received exactly the call's PCM"
    );
    assert_eq!(
        session
            .headers
            .get("x-amzn-transcribe-language-code")
            .map(String::as_str),
        Some("en-US")
    );
    assert_eq!(
        session
            .headers
            .get("x-amzn-transcribe-vocabulary-name")
            .map(String::as_str),
        Some("lca-vocabulary")
    );
    assert_eq!(
        session
            .headers
            .get("x-amzn-transcribe-number-of-channels")
            .map(String::as_str),
        Some("2")
    );
}

#[tokio::test]
async fn call_analytics_mode_uses_the_configuration_roles_and_raises_categories() {
    let transcribe = Transcribe::new(TranscribeOptions {
        categories: vec![CategoryRule {
            name: "long-agent-turn".to_string(),
            participant_role: "AGENT".to_string(),
            min_seconds: 6.0,
        }],
        ..TranscribeOptions::default()
    });
    let server = transcribe.serve(0).await.unwrap();
    let pcm = sample_call_stereo();
    let configuration = AudioStream::ConfigurationEvent(
        ConfigurationEvent::builder()
            .channel_definitions(
                ChannelDefinition::builder()
                    .channel_id(0)
                    .participant_role(ParticipantRole::Customer)
                    .build()
                    .unwrap(),
            )
            .channel_definitions(
                ChannelDefinition::builder()
                    .channel_id(1)
                    .participant_role(ParticipantRole::Agent)
                    .build()
                    .unwrap(),
            )
            .build(),
    );
    let mut output = client(&server.url())
        .start_call_analytics_stream_transcription()
        .language_code(CallAnalyticsLanguageCode::EnUs)
        .media_sample_rate_hertz(8000)
        .media_encoding(MediaEncoding::Pcm)
        .audio_stream(audio_events(&pcm, Some(configuration)).into())
        .send()
        .await
        .unwrap();
    let mut customer = 0;
    let mut agent = 0;
    let mut categories = Vec::new();
    while let Some(event) = output
        .call_analytics_transcript_result_stream
        .recv()
        .await
        .unwrap()
    {
        use aws_sdk_transcribestreaming::types::CallAnalyticsTranscriptResultStream as S;
        match event {
            S::UtteranceEvent(u) if !u.is_partial => match u.participant_role {
                Some(ParticipantRole::Customer) => customer += 1,
                Some(ParticipantRole::Agent) => agent += 1,
                other => panic!("role {other:?}"),
            },
            S::CategoryEvent(c) => categories.extend(c.matched_categories.unwrap_or_default()),
            _ => {}
        }
    }
    assert_eq!((customer, agent), (5, 6));
    assert_eq!(categories, ["long-agent-turn"]);
    let session = &transcribe.sessions()[0];
    assert_eq!(session.mode, Mode::CallAnalytics);
    assert!(session.configuration.is_some());
    assert!(session.audio == pcm);
}

#[tokio::test]
async fn invalid_combinations_are_bad_requests_before_streaming() {
    let transcribe = Transcribe::new(TranscribeOptions::default());
    let server = transcribe.serve(0).await.unwrap();
    let client = client(&server.url());
    let error = client
        .start_stream_transcription()
        .language_code(LanguageCode::EnUs)
        .media_sample_rate_hertz(8000)
        .media_encoding(MediaEncoding::Pcm)
        .number_of_channels(2)
        .audio_stream(audio_events(&[0; 3200], None).into())
        .send()
        .await
        .unwrap_err();
    let error = error.into_service_error();
    assert!(error.is_bad_request_exception(), "{error:?}");
    assert!(
        format!("{error:?}").contains("channel identification"),
        "{error:?}"
    );
    // A language model with identification; vocabulary filters as the API references have
    // them: one name with a language code, a list with identification, a known method, names
    // of the documented pattern.
    use aws_sdk_transcribestreaming::types::VocabularyFilterMethod;
    let refused = [
        client
            .start_stream_transcription()
            .identify_language(true)
            .language_options("en-US,es-US")
            .language_model_name("my-model"),
        client
            .start_stream_transcription()
            .language_code(LanguageCode::EnUs)
            .vocabulary_filter_names("a,b"),
        client
            .start_stream_transcription()
            .identify_language(true)
            .language_options("en-US,es-US")
            .vocabulary_filter_name("a"),
        client
            .start_stream_transcription()
            .language_code(LanguageCode::EnUs)
            .vocabulary_filter_name("a")
            .vocabulary_filter_method(VocabularyFilterMethod::from("hide")),
        client
            .start_stream_transcription()
            .language_code(LanguageCode::EnUs)
            .vocabulary_name("has space"),
        client
            .start_stream_transcription()
            .language_code(LanguageCode::EnUs)
            .content_redaction_type(ContentRedactionType::Pii)
            .pii_entity_types("name"),
    ];
    for request in refused {
        let error = request
            .media_sample_rate_hertz(8000)
            .media_encoding(MediaEncoding::Pcm)
            .audio_stream(audio_events(&[0; 3200], None).into())
            .send()
            .await
            .unwrap_err();
        assert!(error.into_service_error().is_bad_request_exception());
    }
    assert!(transcribe.sessions().is_empty());
}

/// Streams the sample call to `client` and returns the error that ended the results.
async fn run_until_exception(
    client: &Client,
) -> aws_sdk_transcribestreaming::types::error::TranscriptResultStreamError {
    let pcm = sample_call_stereo();
    let mut output = stereo_request(client)
        .audio_stream(audio_events(&pcm, None).into())
        .send()
        .await
        .unwrap();
    loop {
        match output.transcript_result_stream.recv().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without the injected exception"),
            Err(error) => break error.into_service_error(),
        }
    }
}

#[tokio::test]
async fn injected_exceptions_end_the_stream_mid_call() {
    use aws_sdk_transcribestreaming::types::error::TranscriptResultStreamError as E;
    let transcribe = Transcribe::new(TranscribeOptions::default());
    let server = transcribe.serve(0).await.unwrap();
    let client = client(&server.url());
    type IsKind = fn(&E) -> bool;
    let kinds: [(&str, IsKind); 5] = [
        ("LimitExceededException", E::is_limit_exceeded_exception),
        ("InternalFailureException", E::is_internal_failure_exception),
        (
            "ServiceUnavailableException",
            E::is_service_unavailable_exception,
        ),
        ("BadRequestException", E::is_bad_request_exception),
        ("ConflictException", E::is_conflict_exception),
    ];
    for (index, (exception, is_kind)) in kinds.into_iter().enumerate() {
        transcribe.inject(TranscribeFault::ExceptionAfter {
            seconds: 2.0,
            exception: exception.into(),
        });
        let error = run_until_exception(&client).await;
        assert!(is_kind(&error), "{exception}: {error:?}");
        let session = &transcribe.sessions()[index];
        assert_eq!(session.exception.as_deref(), Some(exception));
        assert_eq!(
            session.audio.len(),
            2 * 8000 * 4,
            "stopped after 2 s of audio"
        );
    }
}

#[tokio::test]
async fn garbage_event_stream_frames_get_an_exception_not_a_hang() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let transcribe = Transcribe::new(TranscribeOptions::default());
    let server = transcribe.serve(0).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let garbage = b"\x00\x00\x00\x20this is not an event stream message";
    let request = format!(
        "POST /stream-transcription HTTP/1.1\r\nhost: x\r\nx-amzn-transcribe-language-code: en-US\r\nx-amzn-transcribe-sample-rate: 8000\r\nx-amzn-transcribe-media-encoding: pcm\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        garbage.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(garbage).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("answered promptly")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("BadRequestException")
            && response.contains("malformed event-stream message"),
        "{response}"
    );
    assert_eq!(
        transcribe.sessions()[0].exception.as_deref(),
        Some("BadRequestException")
    );
}

#[tokio::test]
async fn a_stream_without_audio_times_out_like_aws() {
    let transcribe = Transcribe::new(TranscribeOptions {
        audio_timeout: Duration::from_millis(500),
        ..TranscribeOptions::default()
    });
    let server = transcribe.serve(0).await.unwrap();
    let (tx, rx) = mpsc::channel::<Result<AudioStream, AudioStreamError>>(1);
    let mut output = client(&server.url())
        .start_stream_transcription()
        .language_code(LanguageCode::EnUs)
        .media_sample_rate_hertz(8000)
        .media_encoding(MediaEncoding::Pcm)
        .audio_stream(ReceiverStream::new(rx).into())
        .send()
        .await
        .unwrap();
    let error = output.transcript_result_stream.recv().await.unwrap_err();
    let error = error.into_service_error();
    assert!(error.is_bad_request_exception(), "{error:?}");
    drop(tx);
}

#[tokio::test]
async fn tls_with_alpn_h2_as_production_runs() {
    let identity = local_aws::http::TlsIdentity::self_signed().unwrap();
    let transcribe = Transcribe::new(TranscribeOptions::default());
    let server = transcribe.serve_with(0, Some(&identity)).await.unwrap();
    assert!(server.url().starts_with("https://localhost:"));
    let pcm = sample_call_stereo();
    // The first 20 s: agent, caller, agent turns, and the caller's second turn cut at 20 s.
    let pcm = &pcm[..20 * 8000 * 4];
    let (_, finals) = timed_session(&tls_client(&server.url(), &identity.cert_pem), pcm).await;
    let channels: Vec<&str> = finals.iter().map(|((c, _, _), _)| c.as_str()).collect();
    assert_eq!(channels, ["ch_1", "ch_0", "ch_1", "ch_0"]);
    assert!(transcribe.sessions()[0].audio == pcm);
    // Faults over TLS + h2 as well.
    transcribe.inject(TranscribeFault::ExceptionAfter {
        seconds: 1.0,
        exception: "ServiceUnavailableException".into(),
    });
    let error = run_until_exception(&tls_client(&server.url(), &identity.cert_pem)).await;
    assert!(error.is_service_unavailable_exception(), "{error:?}");
    // A client that does not trust the certificate is refused.
    let error = client(&server.url())
        .start_stream_transcription()
        .language_code(LanguageCode::EnUs)
        .media_sample_rate_hertz(8000)
        .media_encoding(MediaEncoding::Pcm)
        .audio_stream(audio_events(&[0; 3200], None).into())
        .send()
        .await
        .expect_err("a client that does not trust the certificate is refused");
    // Refused in the TLS handshake, before any request: a dispatch failure whose cause is
    // the certificate, not an answer of the service.
    let text = aws_edge::error_text(&error);
    assert!(
        matches!(
            error,
            aws_sdk_transcribestreaming::error::SdkError::DispatchFailure(_)
        ),
        "{text}"
    );
    assert!(text.to_lowercase().contains("certificate"), "{text}");
}

#[tokio::test]
async fn streams_beyond_the_quota_are_refused_with_limit_exceeded() {
    // An account's concurrent stream quota: one stream open, the next refused with
    // LimitExceededException (HTTP 429) before streaming, as the API reference documents;
    // once the first closes there is room again.
    let transcribe = Transcribe::new(TranscribeOptions {
        max_sessions: Some(1),
        ..TranscribeOptions::default()
    });
    let server = transcribe.serve(0).await.unwrap();
    let client = client(&server.url());
    let (tx, rx) = mpsc::channel(4);
    let open = stereo_request(&client)
        .audio_stream(ReceiverStream::new(rx).into())
        .send()
        .await
        .unwrap();
    assert_eq!(transcribe.open_streams(), 1);
    let error = stereo_request(&client)
        .audio_stream(audio_events(&[0; 3200], None).into())
        .send()
        .await
        .unwrap_err();
    let error = error.into_service_error();
    assert!(error.is_limit_exceeded_exception(), "{error:?}");
    assert!(
        format!("{error:?}").contains("concurrent stream service quota"),
        "{error:?}"
    );
    assert_eq!(transcribe.refused(), 1);
    // The first stream ends (its audio ends); a new one is accepted.
    drop(tx);
    let mut results = open.transcript_result_stream;
    while results.recv().await.unwrap().is_some() {}
    for _ in 0..100 {
        if transcribe.open_streams() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(transcribe.open_streams(), 0);
    stereo_request(&client)
        .audio_stream(audio_events(&[0; 3200], None).into())
        .send()
        .await
        .expect("room again once the first stream closed");
    assert_eq!(transcribe.sessions().len(), 2);
}

/// Sends `pcm` in 100 ms chunks on one standard-mode stream of `client`; returns when the
/// client's stream handed each chunk to the SDK (relative to the request) and the finals
/// with when each arrived.
async fn timed_session(
    client: &Client,
    pcm: &[u8],
) -> (Vec<Duration>, Vec<((String, f64, f64), Duration)>) {
    use tokio_stream::StreamExt as _;
    let began = tokio::time::Instant::now();
    let taken = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = taken.clone();
    let chunks: Vec<Vec<u8>> = pcm.chunks(3200).map(<[u8]>::to_vec).collect();
    // The closure runs as the SDK polls the stream for its next event: when HTTP/2 flow
    // control lets it send more.
    let events = tokio_stream::iter(chunks).map(move |chunk| {
        noted.lock().unwrap().push(began.elapsed());
        Ok::<_, AudioStreamError>(AudioStream::AudioEvent(
            AudioEvent::builder().audio_chunk(Blob::new(chunk)).build(),
        ))
    });
    let mut output = stereo_request(client)
        .audio_stream(events.into())
        .send()
        .await
        .unwrap();
    let mut finals = Vec::new();
    while let Some(event) = output.transcript_result_stream.recv().await.unwrap() {
        let TranscriptResultStream::TranscriptEvent(event) = event else {
            continue;
        };
        for result in event.transcript.unwrap().results.unwrap_or_default() {
            if !result.is_partial {
                let channel = result.channel_id.unwrap_or_default();
                finals.push((
                    (channel, result.start_time, result.end_time),
                    began.elapsed(),
                ));
            }
        }
    }
    let taken = taken.lock().unwrap().clone();
    (taken, finals)
}

#[tokio::test]
async fn a_paced_session_takes_the_audios_time_and_holds_the_client_back() {
    // 8 s of the sample call at 4x real time: Transcribe's reading that a stream is
    // processed in real time, sped up for the test. The results are the unpaced ones; only
    // their times change.
    let pcm = &sample_call_stereo()[..8 * 32_000];
    let unpaced = Transcribe::new(TranscribeOptions::default());
    let server = unpaced.serve(0).await.unwrap();
    let (_, expected) = timed_session(&client(&server.url()), pcm).await;
    assert!(
        !expected.is_empty(),
        "the sample call's first 8 s have speech"
    );

    let paced = Transcribe::new(TranscribeOptions {
        pace: Pace {
            speed: Some(4.0),
            ..Pace::default()
        },
        ..TranscribeOptions::default()
    });
    // Over TLS with ALPN h2, as production runs: HTTP/2 flow control is what holds the
    // client back (over plain HTTP the SDK speaks HTTP/1.1, and the sockets' buffers take
    // megabytes before TCP's window closes).
    let identity = local_aws::http::TlsIdentity::self_signed().unwrap();
    let server = paced.serve_with(0, Some(&identity)).await.unwrap();
    let (taken, finals) = timed_session(&tls_client(&server.url(), &identity.cert_pem), pcm).await;
    assert_eq!(
        finals.iter().map(|(f, _)| f).collect::<Vec<_>>(),
        expected.iter().map(|(f, _)| f).collect::<Vec<_>>()
    );
    // Each final comes no earlier than the audio up to its end takes at 4x.
    for ((channel, _, end), arrived) in &finals {
        assert!(
            *arrived >= Duration::from_secs_f64(end / 4.0),
            "final on {channel} ending at {end} s arrived after {arrived:?}"
        );
    }
    // Back-pressure: the server reads no further than its 64 KiB stream window (about 2 s
    // of audio with the event-stream framing) ahead of what it has processed, so the client
    // could hand over its last chunk only once about 6 of the 8 s were processed (1.5 s at
    // 4x). Unpaced, it hands everything over at once.
    let last = *taken.last().unwrap();
    assert!(
        last >= Duration::from_secs(1),
        "the client sent its last chunk after {last:?}: nothing held it back"
    );
    assert_eq!(paced.sessions()[0].audio_bytes, pcm.len());
}

#[tokio::test]
async fn streams_are_refused_while_the_service_is_unavailable_then_accepted() {
    // `--transcribe-unavailable-for`: LimitExceededException (HTTP 429, the API reference's
    // answer when the concurrent stream quota is in use) for 1.5 s from the first request.
    let transcribe = Transcribe::new(TranscribeOptions {
        pace: Pace {
            unavailable_for: Duration::from_millis(1500),
            ..Pace::default()
        },
        ..TranscribeOptions::default()
    });
    let server = transcribe.serve(0).await.unwrap();
    // The time counts from the first request, not from the service's start.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let client = client(&server.url());
    let asked = tokio::time::Instant::now();
    let error = stereo_request(&client)
        .audio_stream(audio_events(&[0; 3200], None).into())
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(error.is_limit_exceeded_exception(), "{error:?}");
    assert_eq!((transcribe.refused(), transcribe.open_streams()), (1, 0));
    tokio::time::sleep_until(asked + Duration::from_millis(1600)).await;
    let mut output = stereo_request(&client)
        .audio_stream(audio_events(&[0; 3200], None).into())
        .send()
        .await
        .expect("accepted once the time is over");
    while output
        .transcript_result_stream
        .recv()
        .await
        .unwrap()
        .is_some()
    {}
    assert_eq!(transcribe.refused(), 1);
    assert_eq!(transcribe.sessions().len(), 1);
    assert!(
        Pace {
            speed: Some(0.0),
            ..Pace::default()
        }
        .check()
        .is_err()
    );
    assert!(
        Pace {
            speed: Some(f64::INFINITY),
            ..Pace::default()
        }
        .check()
        .is_err()
    );
    assert!(
        Pace {
            speed: Some(1.0),
            ..Pace::default()
        }
        .check()
        .is_ok()
    );
}

//! The local KVS as the unmodified AWS SDK for Rust clients see it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_kinesisvideo::config::{Credentials, Region};
use aws_sdk_kinesisvideo::types::ApiName;
use aws_sdk_kinesisvideomedia::types::{StartSelector, StartSelectorType};
use bytes::Bytes;
use kvs_media::{ConnectWriter, FragmentReader, MediaEvent, WriterOptions, split_chunks};
use local_aws::kvs::{Fault, Kvs, KvsOptions};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(rel)
}

fn sample_call() -> Vec<u8> {
    std::fs::read(fixture("connect/sample-call.mkv")).expect("../shared/fixtures beside the repo")
}

fn control(url: &str) -> aws_sdk_kinesisvideo::Client {
    aws_sdk_kinesisvideo::Client::from_conf(
        aws_sdk_kinesisvideo::Config::builder()
            .behavior_version_latest()
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("AKIDLOCAL", "secret", None, None, "test"))
            .endpoint_url(url)
            .build(),
    )
}

fn media(url: &str) -> aws_sdk_kinesisvideomedia::Client {
    aws_sdk_kinesisvideomedia::Client::from_conf(
        aws_sdk_kinesisvideomedia::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_kinesisvideomedia::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kinesisvideomedia::config::Credentials::new(
                "AKIDLOCAL",
                "secret",
                None,
                None,
                "test",
            ))
            .endpoint_url(url)
            .build(),
    )
}

/// A local KVS serving `stream` with the sample call (closed), and a media client for it
/// obtained the way the product does: GetDataEndpoint, then a client on that endpoint.
async fn sample_call_server(
    options: KvsOptions,
) -> (
    Kvs,
    local_aws::http::Server,
    aws_sdk_kinesisvideomedia::Client,
) {
    let kvs = Kvs::new(options);
    let server = kvs.serve(0).await.unwrap();
    kvs.create_stream("call").unwrap();
    assert_eq!(kvs.put_capture("call", &sample_call()).unwrap(), 60);
    kvs.close_stream("call").unwrap();
    let endpoint = control(&server.url())
        .get_data_endpoint()
        .stream_name("call")
        .api_name(ApiName::GetMedia)
        .send()
        .await
        .unwrap()
        .data_endpoint
        .unwrap();
    assert_eq!(endpoint, server.url());
    (kvs, server, media(&endpoint))
}

/// Reads a whole GetMedia response; returns its events.
async fn read_all(
    output: aws_sdk_kinesisvideomedia::operation::get_media::GetMediaOutput,
) -> Vec<MediaEvent> {
    let mut payload = output.payload;
    let mut reader = FragmentReader::new();
    let mut events = Vec::new();
    while let Some(bytes) = payload.try_next().await.expect("payload streams") {
        reader.push(&bytes);
        while let Some(event) = reader.next_event().expect("valid media") {
            events.push(event);
        }
    }
    reader.end_of_input();
    while let Some(event) = reader.next_event().expect("valid media") {
        events.push(event);
    }
    events
}

fn fragment_numbers(events: &[MediaEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            MediaEvent::FragmentStart(s) => s.fragment_number.clone(),
            _ => None,
        })
        .collect()
}

fn selector(
    kind: StartSelectorType,
) -> aws_sdk_kinesisvideomedia::types::builders::StartSelectorBuilder {
    StartSelector::builder().start_selector_type(kind)
}

/// GetMedia on `stream` from `start`.
async fn get_media(
    media: &aws_sdk_kinesisvideomedia::Client,
    stream: &str,
    start: StartSelector,
) -> aws_sdk_kinesisvideomedia::operation::get_media::GetMediaOutput {
    media
        .get_media()
        .stream_name(stream)
        .start_selector(start)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn get_media_from_earliest_returns_the_capture_with_millis_behind_now_restamped() {
    let (_kvs, _server, media) = sample_call_server(KvsOptions::default()).await;
    let output = get_media(
        &media,
        "call",
        selector(StartSelectorType::Earliest).build().unwrap(),
    )
    .await;
    assert_eq!(output.content_type.as_deref(), Some("video/webm"));
    let received = read_all(output).await;
    let recorded = {
        let mut reader = FragmentReader::new();
        reader.push(&sample_call());
        reader.end_of_input();
        std::iter::from_fn(|| reader.next_event().unwrap()).collect::<Vec<_>>()
    };
    // Everything as recorded (blocks, tags, fragment numbers, continuation tokens) except
    // MILLIS_BEHIND_NOW, which says how far behind the newest fragment each one is (and so
    // the byte offsets after it).
    let without_millis = |events: &[MediaEvent]| -> Vec<MediaEvent> {
        events
            .iter()
            .cloned()
            .map(|e| match e {
                MediaEvent::FragmentEnd(mut end) => {
                    end.millis_behind_now = None;
                    MediaEvent::FragmentEnd(end)
                }
                MediaEvent::FragmentStart(mut start) => {
                    start.offset = 0;
                    MediaEvent::FragmentStart(start)
                }
                MediaEvent::Block(mut block) => {
                    block.offset = 0;
                    MediaEvent::Block(block)
                }
                other => other,
            })
            .collect()
    };
    assert!(
        without_millis(&received) == without_millis(&recorded),
        "GetMedia changed the media"
    );
    let millis: Vec<u64> = received
        .iter()
        .filter_map(|e| match e {
            MediaEvent::FragmentEnd(end) => end.millis_behind_now,
            _ => None,
        })
        .collect();
    assert_eq!(millis.len(), 60);
    // Server timestamps of the sample call: 1726677689.681 (first) .. 1726677750.136 (last).
    assert_eq!(millis[0], 60_455);
    assert_eq!(millis[59], 0);
    assert!(millis.windows(2).all(|w| w[0] >= w[1]));
}

#[tokio::test]
async fn fragment_number_and_continuation_token_honour_both_readings() {
    for include in [false, true] {
        let (kvs, _server, media) = sample_call_server(KvsOptions {
            include_named_fragment: include,
            ..KvsOptions::default()
        })
        .await;
        let numbers = kvs.fragment_numbers("call").unwrap();
        for kind in [
            StartSelectorType::FragmentNumber,
            StartSelectorType::ContinuationToken,
        ] {
            let named = &numbers[10];
            let built = match kind {
                StartSelectorType::FragmentNumber => selector(kind).after_fragment_number(named),
                _ => selector(kind).continuation_token(named),
            };
            let output = get_media(&media, "call", built.build().unwrap()).await;
            let got = fragment_numbers(&read_all(output).await);
            let first = if include { 10 } else { 11 };
            assert_eq!(got, numbers[first..], "include={include}");
        }
    }
}

#[tokio::test]
async fn producer_and_server_timestamps_start_at_the_fragment_containing_them() {
    let (_kvs, _server, media) = sample_call_server(KvsOptions::default()).await;
    // Fragment 3 of the sample call: producer 1726677691.796? take from the capture itself.
    let events = {
        let mut reader = FragmentReader::new();
        reader.push(&sample_call());
        reader.end_of_input();
        let mut events = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            events.push(event);
        }
        events
    };
    let starts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            MediaEvent::FragmentStart(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    for (kind, ms) in [
        (
            StartSelectorType::ProducerTimestamp,
            starts[3].producer_timestamp_ms.unwrap() + 200,
        ),
        (
            StartSelectorType::ServerTimestamp,
            starts[3].server_timestamp_ms.unwrap() + 200,
        ),
    ] {
        let output = get_media(
            &media,
            "call",
            selector(kind)
                .start_timestamp(
                    aws_sdk_kinesisvideomedia::primitives::DateTime::from_millis(ms as i64),
                )
                .build()
                .unwrap(),
        )
        .await;
        let got = fragment_numbers(&read_all(output).await);
        assert_eq!(got.first(), starts[3].fragment_number.as_ref());
        assert_eq!(got.len(), 57);
    }
}

#[tokio::test]
async fn now_starts_with_the_newest_fragment_then_waits_for_live_ones_and_ends_with_the_call() {
    let kvs = Kvs::new(KvsOptions::default());
    let server = kvs.serve(0).await.unwrap();
    kvs.create_stream("live").unwrap();
    let mut writer = ConnectWriter::new(WriterOptions::default());
    let pcm: Vec<u8> = (0..5 * 8000u32)
        .flat_map(|i| ((i % 500) as i16).to_le_bytes())
        .collect();
    let chunks: Vec<Bytes> = writer
        .call(&pcm, &pcm, 1_700_000_000_000)
        .into_iter()
        .map(Bytes::from)
        .collect();
    assert_eq!(chunks.len(), 5);
    // Two fragments from before the request: NOW starts with the newest of them ("Start with
    // the latest chunk on the stream", GetMedia API reference), not after it.
    kvs.put_chunk("live", chunks[0].clone()).unwrap();
    kvs.put_chunk("live", chunks[1].clone()).unwrap();
    let output = media(&server.url())
        .get_media()
        .stream_name("live")
        .start_selector(selector(StartSelectorType::Now).build().unwrap())
        .send()
        .await
        .unwrap();
    let reading = tokio::spawn(read_all(output));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !reading.is_finished(),
        "the response stays open while the producer is quiet"
    );
    // The rest of the call, live at 20x speed (about 0.2 s), then the stream closes.
    kvs.play("live", chunks[2..].to_vec(), 20.0)
        .await
        .unwrap()
        .unwrap();
    let events = tokio::time::timeout(Duration::from_secs(10), reading)
        .await
        .unwrap()
        .unwrap();
    let expected: Vec<String> = (1..5).map(ConnectWriter::fragment_number).collect();
    assert_eq!(fragment_numbers(&events), expected);
}

#[tokio::test]
async fn a_quiet_stream_ends_the_response_after_the_payload_timeout() {
    // GetMedia API reference: "the reading of the HTTP response payload will timeout after
    // 3 seconds if there are no ingested fragments available for playback".
    let kvs = Kvs::new(KvsOptions {
        payload_timeout: Duration::from_millis(400),
        ..KvsOptions::default()
    });
    let server = kvs.serve(0).await.unwrap();
    kvs.create_stream("live").unwrap();
    let mut writer = ConnectWriter::new(WriterOptions::default());
    let pcm = vec![0u8; 2 * 8000 * 2];
    let chunks = writer.call(&pcm, &pcm, 1_700_000_000_000);
    kvs.put_chunk("live", Bytes::from(chunks[0].clone()))
        .unwrap();
    let started = std::time::Instant::now();
    let output = media(&server.url())
        .get_media()
        .stream_name("live")
        .start_selector(selector(StartSelectorType::Earliest).build().unwrap())
        .send()
        .await
        .unwrap();
    let events = tokio::time::timeout(Duration::from_secs(5), read_all(output))
        .await
        .expect("the response ends by itself while the producer is quiet");
    let waited = started.elapsed();
    assert_eq!(
        fragment_numbers(&events),
        [ConnectWriter::fragment_number(0)]
    );
    assert!(
        !events.iter().any(|e| matches!(e, MediaEvent::Error(_))),
        "a clean end, no error chunk"
    );
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // The stream is still live: the next request from the last fragment gets what follows.
    kvs.put_chunk("live", Bytes::from(chunks[1].clone()))
        .unwrap();
    let output = media(&server.url())
        .get_media()
        .stream_name("live")
        .start_selector(
            selector(StartSelectorType::FragmentNumber)
                .after_fragment_number(ConnectWriter::fragment_number(0))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let events = read_all(output).await;
    assert_eq!(
        fragment_numbers(&events),
        [ConnectWriter::fragment_number(1)]
    );
}

#[tokio::test]
async fn a_missing_fragment_is_an_error_chunk_4000() {
    let (_kvs, _server, media) = sample_call_server(KvsOptions::default()).await;
    let output = get_media(
        &media,
        "call",
        selector(StartSelectorType::FragmentNumber)
            .after_fragment_number("91343852333181000000000000000000000000000000000")
            .build()
            .unwrap(),
    )
    .await;
    let events = read_all(output).await;
    assert!(
        matches!(events.as_slice(), [MediaEvent::Error(e)] if e.id == "4000" && e.code.contains("not found")),
        "{events:?}"
    );
}

#[tokio::test]
async fn unknown_streams_and_bad_selectors_get_kvs_errors() {
    let (_kvs, server, media) = sample_call_server(KvsOptions::default()).await;
    let error = media
        .get_media()
        .stream_name("nope")
        .start_selector(selector(StartSelectorType::Earliest).build().unwrap())
        .send()
        .await
        .unwrap_err();
    assert!(error.into_service_error().is_resource_not_found_exception());
    let error = control(&server.url())
        .get_data_endpoint()
        .stream_arn("arn:aws:kinesisvideo:us-east-1:123456789012:stream/nope/1")
        .api_name(ApiName::GetMedia)
        .send()
        .await
        .unwrap_err();
    assert!(error.into_service_error().is_resource_not_found_exception());
    // FRAGMENT_NUMBER without AfterFragmentNumber.
    let error = media
        .get_media()
        .stream_name("call")
        .start_selector(selector(StartSelectorType::FragmentNumber).build().unwrap())
        .send()
        .await
        .unwrap_err();
    assert!(error.into_service_error().is_invalid_argument_exception());
}

#[tokio::test]
async fn more_than_five_get_media_calls_a_second_are_throttled() {
    let (_kvs, _server, media) = sample_call_server(KvsOptions::default()).await;
    let call = || {
        media
            .get_media()
            .stream_name("call")
            .start_selector(selector(StartSelectorType::Now).build().unwrap())
            .send()
    };
    // The sample call server already made no GetMedia calls; five succeed, the sixth fails.
    let mut outputs = Vec::new();
    for _ in 0..5 {
        outputs.push(call().await.unwrap());
    }
    let error = call().await.unwrap_err();
    assert!(
        error
            .into_service_error()
            .is_client_limit_exceeded_exception()
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    call().await.expect("allowed again a second later");
}

#[tokio::test]
async fn control_plane_lists_describes_and_creates() {
    let (_kvs, server, _media) = sample_call_server(KvsOptions::default()).await;
    let client = control(&server.url());
    let created = client
        .create_stream()
        .stream_name("second")
        .data_retention_in_hours(24)
        .send()
        .await
        .unwrap();
    let arn = created.stream_arn.unwrap();
    assert!(arn.starts_with("arn:aws:kinesisvideo:us-east-1:123456789012:stream/second/"));
    let described = client
        .describe_stream()
        .stream_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.stream_info.unwrap().stream_name.as_deref(),
        Some("second")
    );
    let listed = client.list_streams().send().await.unwrap();
    let names: Vec<_> = listed
        .stream_info_list
        .unwrap()
        .into_iter()
        .filter_map(|s| s.stream_name)
        .collect();
    assert_eq!(names, ["call", "second"]);
    let error = client
        .create_stream()
        .stream_name("second")
        .send()
        .await
        .unwrap_err();
    assert!(error.into_service_error().is_resource_in_use_exception());
}

#[tokio::test]
async fn malformed_requests_get_aws_shaped_errors_not_hangs() {
    let (_kvs, server, _media) = sample_call_server(KvsOptions::default()).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for body in ["{not json", "[1,2]", ""] {
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        let request = format!(
            "POST /getMedia HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await
            .expect("answered promptly")
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 400"), "{body:?}: {response}");
        assert!(
            response.to_ascii_lowercase().contains("x-amzn-errortype"),
            "{response}"
        );
    }
}

#[test]
fn the_capture_splits_into_its_sixty_chunks() {
    assert_eq!(split_chunks(&sample_call()).unwrap().len(), 60);
}

/// Reads a GetMedia response until it ends or breaks; returns the events read and whether
/// the connection broke.
async fn read_until_cut(
    output: aws_sdk_kinesisvideomedia::operation::get_media::GetMediaOutput,
) -> (Vec<MediaEvent>, bool) {
    let (events, broke, _) = read_counting(output).await;
    (events, broke)
}

async fn read_counting(
    output: aws_sdk_kinesisvideomedia::operation::get_media::GetMediaOutput,
) -> (Vec<MediaEvent>, bool, usize) {
    let mut payload = output.payload;
    let mut reader = FragmentReader::new();
    let mut events = Vec::new();
    let mut received = 0;
    let broke = loop {
        match payload.try_next().await {
            Ok(Some(bytes)) => {
                received += bytes.len();
                reader.push(&bytes);
                while let Ok(Some(event)) = reader.next_event() {
                    events.push(event);
                }
            }
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    (events, broke, received)
}

fn last_continuation_token(events: &[MediaEvent]) -> Option<String> {
    events.iter().rev().find_map(|e| match e {
        MediaEvent::FragmentEnd(end) => end.continuation_token.clone(),
        _ => None,
    })
}

#[tokio::test]
async fn a_cut_connection_resumes_from_the_continuation_token_without_loss_or_repeats() {
    for include in [false, true] {
        let (kvs, _server, media) = sample_call_server(KvsOptions {
            include_named_fragment: include,
            ..KvsOptions::default()
        })
        .await;
        let numbers = kvs.fragment_numbers("call").unwrap();
        kvs.inject("call", Fault::CutAfterBytes(500_000)).unwrap();
        let output = get_media(
            &media,
            "call",
            selector(StartSelectorType::Earliest).build().unwrap(),
        )
        .await;
        let (first, broke) = read_until_cut(output).await;
        assert!(
            broke,
            "the client sees the cut as an error, not a clean end"
        );
        let token = last_continuation_token(&first).expect("some complete fragments");
        let complete: Vec<String> = fragment_numbers(&first)
            .into_iter()
            .take_while(|n| *n != token)
            .chain([token.clone()])
            .collect();
        let output = get_media(
            &media,
            "call",
            selector(StartSelectorType::ContinuationToken)
                .continuation_token(&token)
                .build()
                .unwrap(),
        )
        .await;
        let mut rest = fragment_numbers(&read_all(output).await);
        if include {
            assert_eq!(
                rest.first(),
                Some(&token),
                "inclusive reading repeats the named fragment"
            );
            rest.remove(0);
        }
        let all: Vec<String> = complete.into_iter().chain(rest).collect();
        assert_eq!(all, numbers, "include={include}");
    }
}

#[tokio::test]
async fn injected_cuts_stalls_and_error_chunks() {
    let (kvs, _server, media) = sample_call_server(KvsOptions::default()).await;
    let earliest = || {
        media
            .get_media()
            .stream_name("call")
            .start_selector(selector(StartSelectorType::Earliest).build().unwrap())
            .send()
    };
    kvs.inject("call", Fault::CutAfterBytes(123_456)).unwrap();
    kvs.inject("call", Fault::CutAfterFragments(3)).unwrap();
    kvs.inject(
        "call",
        Fault::ErrorChunkAfter {
            fragments: 2,
            code: "KMS key is disabled".into(),
            id: "4501".into(),
        },
    )
    .unwrap();
    kvs.inject(
        "call",
        Fault::StallBefore {
            fragment: 1,
            duration: Duration::from_millis(1500),
        },
    )
    .unwrap();

    let (_, broke, received) = read_counting(earliest().await.unwrap()).await;
    assert!(broke);
    assert_eq!(received, 123_456, "exactly the bytes before the cut arrive");

    let (events, broke) = read_until_cut(earliest().await.unwrap()).await;
    assert!(broke);
    assert_eq!(fragment_numbers(&events).len(), 3);

    let (events, broke) = read_until_cut(earliest().await.unwrap()).await;
    assert!(!broke);
    assert_eq!(fragment_numbers(&events).len(), 2);
    assert!(
        matches!(events.last(), Some(MediaEvent::Error(e)) if e.id == "4501"),
        "{:?}",
        events.last()
    );

    let started = std::time::Instant::now();
    let (events, broke) = read_until_cut(earliest().await.unwrap()).await;
    assert!(!broke);
    assert_eq!(
        fragment_numbers(&events).len(),
        60,
        "a stall delays but loses nothing"
    );
    assert!(started.elapsed() >= Duration::from_millis(1400));
}

#[tokio::test]
async fn the_next_contact_on_a_reused_stream_follows_on_the_same_session() {
    let kvs = Kvs::new(KvsOptions::default());
    let server = kvs.serve(0).await.unwrap();
    kvs.create_stream("reused").unwrap();
    let pcm = vec![1u8; 2 * 8000 * 2];
    let first: Vec<Bytes> = ConnectWriter::new(WriterOptions {
        contact_id: "first".into(),
        ..WriterOptions::default()
    })
    .call(&pcm, &pcm, 1_700_000_000_000)
    .into_iter()
    .map(Bytes::from)
    .collect();
    let second: Vec<Bytes> = ConnectWriter::new(WriterOptions {
        contact_id: "second".into(),
        ..WriterOptions::default()
    })
    .call(&pcm, &pcm, 1_700_000_060_000)
    .into_iter()
    .map(Bytes::from)
    .collect();
    for chunk in first {
        kvs.put_chunk("reused", chunk).unwrap();
    }
    let output = media(&server.url())
        .get_media()
        .stream_name("reused")
        .start_selector(selector(StartSelectorType::Earliest).build().unwrap())
        .send()
        .await
        .unwrap();
    let reading = tokio::spawn(read_all(output));
    kvs.play("reused", second, 0.0).await.unwrap().unwrap();
    let events = reading.await.unwrap();
    let contacts: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            MediaEvent::Tag(t) if t.name == "ContactId" => t.value.as_str().map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(contacts, ["first", "first", "second", "second"]);
}

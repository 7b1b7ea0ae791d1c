//! The producer against the local KVS's PutMedia, read back with the AWS SDK's GetMedia.

use std::path::Path;
use std::time::Duration;

use aws_sdk_kinesisvideomedia::types::{StartSelector, StartSelectorType};
use bytes::Bytes;
use kvs_media::{
    AckEventType, EncoderOptions, FragmentReader, MediaEvent, TAG_CONTACT_ID, split_chunks,
};
use kvs_producer::{Progress, PutMediaError, PutMediaOptions, StreamRef, put_media};
use local_aws::kvs::{Kvs, KvsOptions};

/// The first `n` fragments of the Connect-shaped sample call.
fn sample_call(n: usize) -> Vec<Bytes> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/connect/sample-call.mkv");
    let bytes = Bytes::from(std::fs::read(path).expect("../shared/fixtures beside the repo"));
    split_chunks(&bytes)
        .unwrap()
        .into_iter()
        .take(n)
        .map(|r| bytes.slice(r))
        .collect()
}

/// (ContactId, per-track audio) of a GetMedia byte stream.
fn audio(bytes: &[u8]) -> (Vec<String>, Vec<(u64, Vec<u8>)>) {
    let mut reader = FragmentReader::new();
    reader.push(bytes);
    reader.end_of_input();
    let mut contacts = Vec::new();
    let mut tracks: Vec<(u64, Vec<u8>)> = Vec::new();
    while let Some(event) = reader.next_event().unwrap() {
        match event {
            MediaEvent::Tag(tag) if tag.name == TAG_CONTACT_ID => {
                contacts.push(tag.value.as_str().unwrap_or_default().to_string());
            }
            MediaEvent::Block(block) => match tracks.iter_mut().find(|(t, _)| *t == block.track) {
                Some((_, data)) => data.extend_from_slice(&block.payload),
                None => tracks.push((block.track, block.payload.to_vec())),
            },
            _ => {}
        }
    }
    (contacts, tracks)
}

async fn local() -> (Kvs, local_aws::http::Server, aws_config::SdkConfig) {
    let kvs = Kvs::new(KvsOptions {
        payload_timeout: Duration::from_millis(300),
        ..KvsOptions::default()
    });
    let server = kvs.serve(0).await.unwrap();
    let sdk = local_aws::sdk_config(&server.url());
    (kvs, server, sdk)
}

fn fast() -> PutMediaOptions {
    PutMediaOptions {
        speed: 0.0,
        max_fragments_per_second: 1000.0,
        ..PutMediaOptions::default()
    }
}

#[tokio::test]
async fn a_call_sent_with_put_media_reads_back_through_get_media_acknowledged_per_fragment() {
    let (kvs, server, sdk) = local().await;
    let arn = kvs.create_stream("call").unwrap();
    let chunks = sample_call(12);
    let options = PutMediaOptions {
        encoder: EncoderOptions {
            start_at_ms: Some(aws_edge::now_ms()),
            contact_id: Some("fresh-contact".into()),
        },
        ..fast()
    };
    let mut events = Vec::new();
    let summary = put_media(&sdk, &StreamRef::Arn(arn.clone()), &chunks, &options, |p| {
        events.push(p)
    })
    .await
    .unwrap();
    // Every fragment: sent, then BUFFERING, RECEIVED, PERSISTED, with KVS's fragment number.
    for index in 0..chunks.len() {
        let acks: Vec<AckEventType> = events
            .iter()
            .filter_map(|p| match p {
                Progress::Acked { index: i, ack } if *i == index => Some(ack.event_type),
                _ => None,
            })
            .collect();
        assert_eq!(
            acks,
            [
                AckEventType::Buffering,
                AckEventType::Received,
                AckEventType::Persisted
            ],
            "fragment {index}"
        );
        assert!(events.contains(&Progress::Sent {
            index,
            timecode_ms: summary.timecodes_ms[index]
        }));
    }
    assert_eq!(summary.persisted, chunks.len());
    assert_eq!(
        summary.fragment_numbers,
        kvs.fragment_numbers("call").unwrap()
    );

    // The AWS SDK's GetMedia returns the same audio, now tagged with the fresh ContactId.
    let media = aws_sdk_kinesisvideomedia::Client::from_conf(
        aws_sdk_kinesisvideomedia::Config::from(&sdk)
            .to_builder()
            .endpoint_url(server.url())
            .build(),
    );
    let mut body = media
        .get_media()
        .stream_arn(&arn)
        .start_selector(
            StartSelector::builder()
                .start_selector_type(StartSelectorType::Earliest)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .payload;
    let mut received = Vec::new();
    while let Some(bytes) = body.try_next().await.unwrap() {
        received.extend_from_slice(&bytes);
    }
    let (contacts, tracks) = audio(&received);
    let (source_contacts, source_tracks) = audio(&chunks.concat());
    assert_eq!(tracks, source_tracks);
    assert_eq!(contacts.len(), source_contacts.len());
    assert!(
        contacts.iter().all(|c| c == "fresh-contact"),
        "{contacts:?}"
    );
}

#[tokio::test]
async fn put_media_fails_naming_the_documented_error() {
    let (kvs, _server, sdk) = local().await;
    kvs.create_stream("call").unwrap();
    let chunks = sample_call(4);
    let stream = StreamRef::Name("call".into());

    // No such stream: GetDataEndpoint answers ResourceNotFoundException.
    let error = put_media(
        &sdk,
        &StreamRef::Name("nope".into()),
        &chunks,
        &fast(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, PutMediaError::ControlPlane { operation: "GetDataEndpoint", message, .. }
            if message.starts_with("ResourceNotFoundException")),
        "{error}"
    );

    // A second session on a stream being written: ConnectionLimitExceededException.
    let slow = {
        let (sdk, stream, chunks) = (sdk.clone(), stream.clone(), chunks.clone());
        tokio::spawn(async move {
            put_media(&sdk, &stream, &chunks, &PutMediaOptions::default(), |_| {}).await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while kvs.fragment_numbers("call").unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first session stored nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let error = put_media(&sdk, &stream, &chunks, &fast(), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PutMediaError::Refused { status: 400, error_type, .. }
            if error_type == "ConnectionLimitExceededException"),
        "{error}"
    );
    slow.await.unwrap().unwrap();

    // A body KVS cannot parse: a block outside any cluster gets ERROR 4006, named.
    let mut bad = chunks[0].to_vec();
    let cluster = bad
        .windows(4)
        .position(|w| w == [0x1F, 0x43, 0xB6, 0x75])
        .unwrap();
    bad.splice(cluster..cluster, [0xA3, 0x81, 0x00]);
    let error = put_media(&sdk, &stream, &[Bytes::from(bad)], &fast(), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PutMediaError::Rejected { error_id: 4006, meaning, .. }
            if meaning.contains("failed to parse the input stream as valid MKV")),
        "{error}"
    );

    // A file that is not a call is refused before anything is sent.
    let before = kvs.fragment_numbers("call").unwrap().len();
    let error = put_media(
        &sdk,
        &stream,
        &[Bytes::from_static(b"not matroska")],
        &fast(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(error, PutMediaError::Media(_)), "{error}");
    assert_eq!(kvs.fragment_numbers("call").unwrap().len(), before);
}

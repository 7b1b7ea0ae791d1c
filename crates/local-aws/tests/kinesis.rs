//! The embedded Kinesis stand-in as the unmodified AWS SDK for Rust client sees it.

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use local_aws::kinesis::KinesisRecorder;

#[tokio::test]
async fn the_sdk_puts_records_and_the_recorder_keeps_them_in_order() {
    let before = std::time::SystemTime::now();
    let recorder = KinesisRecorder::new();
    recorder.create_stream("lca-events");
    let server = recorder.serve(0).await.unwrap();
    let client = aws_sdk_kinesis::Client::new(&local_aws::sdk_config(&server.url()));

    let single = client
        .put_record()
        .stream_name("lca-events")
        .partition_key("call-1")
        .data(Blob::new(br#"{"EventType":"START"}"#.to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(single.shard_id(), "shardId-000000000000");
    let entries: Vec<PutRecordsRequestEntry> = (0..3)
        .map(|i| {
            PutRecordsRequestEntry::builder()
                .partition_key("call-1")
                .data(Blob::new(format!("segment {i}").into_bytes()))
                .build()
                .unwrap()
        })
        .collect();
    let batch = client
        .put_records()
        .stream_name("lca-events")
        .set_records(Some(entries))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.failed_record_count(), Some(0));
    assert_eq!(batch.records().len(), 3);

    let records = recorder.records("lca-events", 0).unwrap();
    let data: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.data.to_vec()).unwrap())
        .collect();
    assert_eq!(
        data,
        [
            r#"{"EventType":"START"}"#,
            "segment 0",
            "segment 1",
            "segment 2"
        ]
    );
    assert!(records.iter().all(|r| r.partition_key == "call-1"));
    let after = std::time::SystemTime::now();
    assert!(
        records.windows(2).all(|w| before <= w[0].arrived
            && w[0].arrived <= w[1].arrived
            && w[1].arrived <= after),
        "arrival times in order, during the test"
    );
    assert_eq!(records[0].sequence_number, single.sequence_number());
    assert_eq!(
        batch.records()[2].sequence_number(),
        Some(records[3].sequence_number.as_str())
    );
}

#[tokio::test]
async fn a_stream_not_created_is_the_sdks_resource_not_found() {
    let recorder = KinesisRecorder::new();
    let server = recorder.serve(0).await.unwrap();
    let client = aws_sdk_kinesis::Client::new(&local_aws::sdk_config(&server.url()));
    let error = client
        .put_record()
        .stream_name("misnamed")
        .partition_key("call-1")
        .data(Blob::new(b"x".to_vec()))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(error.is_resource_not_found_exception(), "{error:?}");
    assert!(format!("{error}").contains("misnamed"), "{error}");
}

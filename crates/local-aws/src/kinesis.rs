//! [`KinesisRecorder`]: an embedded stand-in for a Kinesis data stream's producer side. It
//! takes PutRecord and PutRecords as the AWS SDK sends them (the JSON 1.1 protocol), keeps
//! every record in order, and hands them to the process that embeds it. It is what the demo
//! publishes LCA events to when no Kinesis emulator (moto) is installed; consumers read the
//! records in-process, not through GetRecords.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::http::{ApiError, Body, Server, read_body};
use crate::lock;

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisRecord {
    /// Its partition key.
    pub partition_key: String,
    /// Its data, decoded.
    pub data: Bytes,
    /// The sequence number it was given (increasing in stream order).
    pub sequence_number: String,
    /// When it was stored (Kinesis's ApproximateArrivalTimestamp).
    pub arrived: SystemTime,
}

/// Kinesis's limits on what a producer sends.
const MAX_RECORDS_PER_REQUEST: usize = 500;
const MAX_RECORD_BYTES: usize = 1 << 20;
const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Largest request body (5 MiB of records, as base64 in JSON).
const MAX_REQUEST_BYTES: usize = 8 << 20;
/// The only shard: LCA's events of one call share a partition key, so one shard keeps them all
/// in order, as they are read here.
const SHARD_ID: &str = "shardId-000000000000";

/// The recording stand-in; clones share the streams.
#[derive(Clone, Default)]
pub struct KinesisRecorder {
    streams: Arc<Mutex<BTreeMap<String, Vec<KinesisRecord>>>>,
}

impl KinesisRecorder {
    /// A stand-in with no streams.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates stream `name` (empty); puts to a stream not created fail as they do on Kinesis
    /// (ResourceNotFoundException), so a misnamed stream shows.
    pub fn create_stream(&self, name: &str) {
        lock(&self.streams).entry(name.to_string()).or_default();
    }

    /// The records of stream `name` from index `from` on, in stream order; `None` when there is
    /// no such stream.
    pub fn records(&self, name: &str, from: usize) -> Option<Vec<KinesisRecord>> {
        lock(&self.streams)
            .get(name)
            .map(|records| records.iter().skip(from).cloned().collect())
    }

    /// Serves on `127.0.0.1:port` (0: any free port).
    pub async fn serve(&self, port: u16) -> std::io::Result<Server> {
        let recorder = self.clone();
        crate::http::serve(port, move |request| {
            let recorder = recorder.clone();
            async move { recorder.handle(request).await }
        })
        .await
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let target = crate::http::amz_target(&request);
        let answer = match read_body(request, MAX_REQUEST_BYTES).await {
            Ok(body) => self.answer(&target, &body),
            Err(problem) => Err(serialization(problem)),
        };
        match answer {
            Ok(value) => crate::http::json(&value),
            Err(error) => error.into_response(),
        }
    }

    /// The answer to one request: `target` is its `X-Amz-Target` header, `body` its JSON.
    fn answer(&self, target: &str, body: &[u8]) -> Result<Value, ApiError> {
        let operation = target.strip_prefix("Kinesis_20131202.").ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "UnknownOperationException",
                format!("X-Amz-Target {target:?} is not a Kinesis operation"),
            )
        })?;
        let request: Value = serde_json::from_slice(body)
            .map_err(|e| serialization(format!("{operation} request is not JSON: {e}")))?;
        match operation {
            "PutRecord" => {
                let stream = stream_name(&request)?;
                let record = decode_record(&request, "")?;
                let mut streams = lock(&self.streams);
                let records = stream_records(&mut streams, &stream)?;
                let sequence_number = append(records, record);
                Ok(json!({ "SequenceNumber": sequence_number, "ShardId": SHARD_ID }))
            }
            "PutRecords" => {
                let stream = stream_name(&request)?;
                let entries = request["Records"].as_array().ok_or_else(|| {
                    validation("PutRecords: Records is missing or not a list".to_string())
                })?;
                if entries.is_empty() || entries.len() > MAX_RECORDS_PER_REQUEST {
                    return Err(validation(format!(
                        "PutRecords: {} records; a request carries 1 to {MAX_RECORDS_PER_REQUEST}",
                        entries.len()
                    )));
                }
                let decoded = entries
                    .iter()
                    .enumerate()
                    .map(|(i, entry)| decode_record(entry, &format!("Records[{i}].")))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut streams = lock(&self.streams);
                let records = stream_records(&mut streams, &stream)?;
                let results: Vec<Value> = decoded
                    .into_iter()
                    .map(|record| {
                        json!({ "SequenceNumber": append(records, record), "ShardId": SHARD_ID })
                    })
                    .collect();
                Ok(json!({ "FailedRecordCount": 0, "Records": results }))
            }
            other => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "UnknownOperationException",
                format!(
                    "{other}: this Kinesis stand-in takes PutRecord and PutRecords only (for every operation, install moto: pip install \"moto[server]\")"
                ),
            )),
        }
    }
}

/// The stream a request names, by StreamName or StreamARN.
fn stream_name(request: &Value) -> Result<String, ApiError> {
    if let Some(name) = request["StreamName"].as_str() {
        return Ok(name.to_string());
    }
    request["StreamARN"]
        .as_str()
        .and_then(|arn| arn.rsplit_once(":stream/"))
        .map(|(_, name)| name.to_string())
        .ok_or_else(|| validation("neither StreamName nor a stream's StreamARN given".to_string()))
}

fn stream_records<'a>(
    streams: &'a mut BTreeMap<String, Vec<KinesisRecord>>,
    name: &str,
) -> Result<&'a mut Vec<KinesisRecord>, ApiError> {
    streams.get_mut(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "ResourceNotFoundException",
            format!("Stream {name} under account 123456789012 not found."),
        )
    })
}

/// A record of a request (`field` prefixes the names in errors), checked against Kinesis's
/// limits; its sequence number is given on append.
fn decode_record(entry: &Value, field: &str) -> Result<KinesisRecord, ApiError> {
    let partition_key = entry["PartitionKey"]
        .as_str()
        .ok_or_else(|| validation(format!("{field}PartitionKey is missing")))?;
    let chars = partition_key.chars().count();
    if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
        return Err(validation(format!(
            "{field}PartitionKey has {chars} characters; Kinesis takes 1 to {MAX_PARTITION_KEY_CHARS}"
        )));
    }
    let data = entry["Data"]
        .as_str()
        .ok_or_else(|| validation(format!("{field}Data is missing")))?;
    let data = aws_smithy_types::base64::decode(data)
        .map_err(|e| serialization(format!("{field}Data is not base64: {e}")))?;
    if data.len() > MAX_RECORD_BYTES {
        return Err(validation(format!(
            "{field}Data is {} bytes; a record holds at most {MAX_RECORD_BYTES}",
            data.len()
        )));
    }
    Ok(KinesisRecord {
        partition_key: partition_key.to_string(),
        data: Bytes::from(data),
        sequence_number: String::new(),
        arrived: SystemTime::UNIX_EPOCH,
    })
}

/// Appends `record` with the next sequence number, which it returns, and the time.
fn append(records: &mut Vec<KinesisRecord>, mut record: KinesisRecord) -> String {
    // Kinesis's sequence numbers are decimal strings that grow with the stream.
    record.sequence_number = format!("{:056}", records.len() + 1);
    record.arrived = SystemTime::now();
    let sequence_number = record.sequence_number.clone();
    records.push(record);
    sequence_number
}

fn validation(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "ValidationException", message)
}

fn serialization(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "SerializationException", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(recorder: &KinesisRecorder, target: &str, body: Value) -> Result<Value, ApiError> {
        recorder.answer(target, body.to_string().as_bytes())
    }

    #[test]
    fn keeps_records_in_order_with_growing_sequence_numbers() {
        let recorder = KinesisRecorder::new();
        recorder.create_stream("events");
        let one = put(
            &recorder,
            "Kinesis_20131202.PutRecord",
            json!({"StreamName": "events", "PartitionKey": "call", "Data": "b25l"}),
        )
        .unwrap();
        let two = put(
            &recorder,
            "Kinesis_20131202.PutRecords",
            json!({"StreamARN": "arn:aws:kinesis:us-east-1:123456789012:stream/events",
                   "Records": [{"PartitionKey": "call", "Data": "dHdv"},
                               {"PartitionKey": "call", "Data": "dGhyZWU="}]}),
        )
        .unwrap();
        assert_eq!(two["FailedRecordCount"], 0);
        let records = recorder.records("events", 0).unwrap();
        let data: Vec<&[u8]> = records.iter().map(|r| r.data.as_ref()).collect();
        assert_eq!(data, [&b"one"[..], b"two", b"three"]);
        assert_eq!(one["SequenceNumber"], records[0].sequence_number.as_str());
        assert_eq!(
            two["Records"][1]["SequenceNumber"],
            records[2].sequence_number
        );
        assert!(records[0].sequence_number < records[1].sequence_number);
        assert_eq!(recorder.records("events", 2).unwrap().len(), 1);
        assert_eq!(recorder.records("other", 0), None);
    }

    #[test]
    fn refuses_what_kinesis_refuses() {
        let recorder = KinesisRecorder::new();
        recorder.create_stream("events");
        let error = |target: &str, body: Value| put(&recorder, target, body).unwrap_err();
        let missing = error(
            "Kinesis_20131202.PutRecord",
            json!({"StreamName": "nope", "PartitionKey": "k", "Data": "b25l"}),
        );
        assert_eq!(missing.error_type, "ResourceNotFoundException");
        assert!(missing.message.contains("nope"), "{}", missing.message);
        let too_many = error(
            "Kinesis_20131202.PutRecords",
            json!({"StreamName": "events",
                   "Records": vec![json!({"PartitionKey": "k", "Data": "b25l"}); 501]}),
        );
        assert_eq!(too_many.error_type, "ValidationException");
        let no_key = error(
            "Kinesis_20131202.PutRecords",
            json!({"StreamName": "events", "Records": [{"PartitionKey": "k", "Data": "b25l"}, {"Data": "b25l"}]}),
        );
        assert!(
            no_key.message.contains("Records[1].PartitionKey"),
            "{}",
            no_key.message
        );
        let not_base64 = error(
            "Kinesis_20131202.PutRecord",
            json!({"StreamName": "events", "PartitionKey": "k", "Data": "!!"}),
        );
        assert_eq!(not_base64.error_type, "SerializationException");
        let other = error("Kinesis_20131202.GetRecords", json!({"ShardIterator": "x"}));
        assert_eq!(other.error_type, "UnknownOperationException");
        // A refused batch stores none of its records.
        assert_eq!(recorder.records("events", 0).unwrap().len(), 0);
    }
}

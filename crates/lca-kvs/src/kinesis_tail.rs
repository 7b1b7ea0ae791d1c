//! [`KinesisTail`]: follows a Kinesis data stream from its end, as LCA's consumers see it, and
//! hands over the records of one partition key (LCA partitions by CallId) with their arrival
//! times. The demo reads the call's LCA events back with it, from moto or, with `--aws`, from
//! the user's own LCA stream, where other calls' events flow too.

use std::time::SystemTime;

use aws_edge::error_text;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;

/// A record of the followed partition key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRecord {
    /// Its data.
    pub data: Bytes,
    /// When Kinesis accepted it (`ApproximateArrivalTimestamp`), when given.
    pub arrived: Option<SystemTime>,
}

/// Why the stream cannot be followed.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// A Kinesis call failed.
    #[error("Kinesis stream {stream}: {operation} failed: {problem}")]
    Kinesis {
        /// The stream.
        stream: String,
        /// The operation.
        operation: &'static str,
        /// The SDK's error, with its cause.
        problem: String,
    },
}

/// Follows every shard of a stream from the end it had when [`KinesisTail::start`] ran.
pub struct KinesisTail {
    client: aws_sdk_kinesis::Client,
    stream: String,
    partition_key: String,
    /// The next iterator of each shard; `None` once the shard is closed.
    iterators: Vec<Option<String>>,
}

impl KinesisTail {
    /// Positions at the end (LATEST) of every shard of `stream`; records put from now on
    /// with `partition_key` are what [`KinesisTail::poll`] returns.
    pub async fn start(
        client: aws_sdk_kinesis::Client,
        stream: &str,
        partition_key: &str,
    ) -> Result<Self, TailError> {
        let failed = |operation, error: &(dyn std::error::Error + 'static)| TailError::Kinesis {
            stream: stream.to_string(),
            operation,
            problem: error_text(error),
        };
        let mut shards = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let request = match &next_token {
                Some(token) => client.list_shards().next_token(token),
                None => client.list_shards().stream_name(stream),
            };
            let page = request.send().await.map_err(|e| failed("ListShards", &e))?;
            shards.extend(page.shards().iter().map(|s| s.shard_id().to_string()));
            next_token = page.next_token;
            if next_token.is_none() {
                break;
            }
        }
        let mut iterators = Vec::with_capacity(shards.len());
        for shard in shards {
            let iterator = client
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(shard)
                .shard_iterator_type(ShardIteratorType::Latest)
                .send()
                .await
                .map_err(|e| failed("GetShardIterator", &e))?
                .shard_iterator;
            iterators.push(iterator);
        }
        Ok(Self {
            client,
            stream: stream.to_string(),
            partition_key: partition_key.to_string(),
            iterators,
        })
    }

    /// The records of the partition key that arrived since the last poll, in stream order (one
    /// partition key lives in one shard). A throttled shard is read again at the next poll.
    pub async fn poll(&mut self) -> Result<Vec<TailRecord>, TailError> {
        let mut out = Vec::new();
        for slot in &mut self.iterators {
            let Some(iterator) = slot.clone() else {
                continue;
            };
            let page = match self
                .client
                .get_records()
                .shard_iterator(iterator)
                .send()
                .await
            {
                Ok(page) => page,
                Err(error)
                    if error
                        .as_service_error()
                        .is_some_and(|e| e.is_provisioned_throughput_exceeded_exception()) =>
                {
                    continue;
                }
                Err(error) => {
                    return Err(TailError::Kinesis {
                        stream: self.stream.clone(),
                        operation: "GetRecords",
                        problem: error_text(&error),
                    });
                }
            };
            *slot = page.next_shard_iterator;
            out.extend(
                page.records
                    .into_iter()
                    .filter(|record| record.partition_key() == Some(self.partition_key.as_str()))
                    .map(|record| TailRecord {
                        arrived: record
                            .approximate_arrival_timestamp
                            .and_then(|at| SystemTime::try_from(at).ok()),
                        data: record.data.into_inner().into(),
                    }),
            );
        }
        Ok(out)
    }
}

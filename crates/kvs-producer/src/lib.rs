//! A Kinesis Video Streams producer: sends a Connect-shaped call (GetMedia-shaped chunks, as a
//! capture or [`kvs_media::ConnectWriter`] makes them) into a stream with PutMedia, at
//! real-time pace or faster, and follows the acknowledgements until every fragment is
//! stored. The MKV work is [`kvs_media::PutMediaEncoder`] and [`kvs_media::AckParser`]
//! (sans-IO); this crate is the I/O around them.
//!
//! PutMedia is not in the AWS SDK for Rust (its API reference: "only available for the AWS
//! SDK for Java"), so the request is built here on the SDK's own parts: GetDataEndpoint with
//! `APIName=PUT_MEDIA` through `aws-sdk-kinesisvideo`, SigV4 by `aws-sigv4` with the SDK
//! configuration's credentials, and the SDK's HTTP client (`aws-smithy-http-client`, hyper
//! and rustls) for one long-running POST whose body is streamed while the acknowledgements
//! are read from its response. Headers follow the PutMedia API reference
//! (<https://docs.aws.amazon.com/kinesisvideostreams/latest/dg/API_dataplane_PutMedia.html>).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_kinesisvideo::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_kinesisvideo::types::{ApiName, Status};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_smithy_http_client::Connector;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::HttpConnector;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use kvs_media::{
    Ack, AckEventType, AckParser, EncodeError, EncodedFragment, EncoderOptions, PutMediaEncoder,
    put_media_error_meaning,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Fragments PutMedia accepts per second per stream (API reference: "A client can send up to
/// five fragments per second per stream").
pub const MAX_FRAGMENTS_PER_SECOND: f64 = 5.0;

/// A Kinesis video stream, by name or by ARN (PutMedia takes either, not both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRef {
    /// `x-amzn-stream-name`.
    Name(String),
    /// `x-amzn-stream-arn`.
    Arn(String),
}

impl std::fmt::Display for StreamRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(name) => write!(f, "{name}"),
            Self::Arn(arn) => write!(f, "{arn}"),
        }
    }
}

/// How a call is sent.
#[derive(Debug, Clone)]
pub struct PutMediaOptions {
    /// 1.0 sends each fragment when its time comes (relative to the first), as a live call;
    /// 2.0 twice as fast; 0 as fast as [`Self::max_fragments_per_second`] allows.
    pub speed: f64,
    /// Never more fragments per second than this (PutMedia's limit:
    /// [`MAX_FRAGMENTS_PER_SECOND`]).
    pub max_fragments_per_second: f64,
    /// Re-timing and re-tagging of the fragments.
    pub encoder: EncoderOptions,
    /// Fail when fragments await acknowledgement and none arrives for this long.
    pub ack_timeout: Duration,
}

impl Default for PutMediaOptions {
    fn default() -> Self {
        Self {
            speed: 1.0,
            max_fragments_per_second: MAX_FRAGMENTS_PER_SECOND,
            encoder: EncoderOptions::default(),
            ack_timeout: Duration::from_secs(30),
        }
    }
}

/// What happens while a call is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A fragment's bytes were handed to the connection.
    Sent {
        /// 0-based index of the fragment.
        index: usize,
        /// Its producer time, ms since the epoch.
        timecode_ms: u64,
    },
    /// An acknowledgement for a fragment.
    Acked {
        /// 0-based index of the fragment it is for.
        index: usize,
        /// The acknowledgement.
        ack: Ack,
    },
    /// KVS says the session is alive but receives no data.
    Idle,
}

/// What a finished PutMedia stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutMediaSummary {
    /// The stream written.
    pub stream: StreamRef,
    /// The fragment number KVS gave each fragment, in order.
    pub fragment_numbers: Vec<String>,
    /// Each fragment's producer time (ms since the epoch), in order.
    pub timecodes_ms: Vec<u64>,
    /// Fragments acknowledged PERSISTED (the rest RECEIVED: a stream without retention).
    pub persisted: usize,
}

/// Why a PutMedia did not store the whole call.
#[derive(Debug, thiserror::Error)]
pub enum PutMediaError {
    /// The input cannot be sent (nothing was sent).
    #[error("the media cannot be sent with PutMedia: {0}")]
    Media(#[from] EncodeError),
    /// The input holds no fragment.
    #[error("the media holds no fragment to send")]
    Empty,
    /// No Region in the configuration.
    #[error("no AWS Region configured (set AWS_REGION or a profile's region)")]
    NoRegion,
    /// No credentials to sign with.
    #[error("no AWS credentials to sign PutMedia with: {0}")]
    Credentials(String),
    /// A control-plane call failed.
    #[error("{operation} for stream {stream} failed: {message}")]
    ControlPlane {
        /// DescribeStream, CreateStream or GetDataEndpoint.
        operation: &'static str,
        /// The stream.
        stream: StreamRef,
        /// The SDK's error with its context.
        message: String,
    },
    /// KVS refused the request before reading media (a bad header, an unknown stream, no
    /// permission, another session open on the stream, throttling).
    #[error("PutMedia on {stream} refused: HTTP {status} {error_type}: {message}")]
    Refused {
        /// The stream.
        stream: StreamRef,
        /// HTTP status.
        status: u16,
        /// `x-amzn-ErrorType` (e.g. ResourceNotFoundException, NotAuthorizedException).
        error_type: String,
        /// The service's message.
        message: String,
    },
    /// An ERROR acknowledgement.
    #[error(
        "PutMedia on {stream}: fragment {index} (timecode {timecode}) failed with error {error_id}: {meaning}"
    )]
    Rejected {
        /// The stream.
        stream: StreamRef,
        /// 0-based fragment index (the first fragment when the ack names none).
        index: usize,
        /// The ack's FragmentTimecode.
        timecode: String,
        /// The ack's ErrorId.
        error_id: u32,
        /// What the API reference says it means (and the ack's ErrorCode, if any).
        meaning: String,
    },
    /// The connection failed.
    #[error("PutMedia on {stream}: connection failed: {message}")]
    Connection {
        /// The stream.
        stream: StreamRef,
        /// What failed.
        message: String,
    },
    /// The response ended, or went quiet, before every fragment was acknowledged.
    #[error(
        "PutMedia on {stream}: {unacknowledged} of {fragments} fragments were never acknowledged as stored ({why}); the first is fragment {first_missing}"
    )]
    Unacknowledged {
        /// The stream.
        stream: StreamRef,
        /// Fragments sent.
        fragments: usize,
        /// Fragments without RECEIVED or PERSISTED.
        unacknowledged: usize,
        /// 0-based index of the first of them.
        first_missing: usize,
        /// The response ended, or no ack for the timeout.
        why: String,
    },
}

/// The ARN of stream `name`, created (audio, `retention_hours` of data retention, as Connect
/// creates its streams) when it does not exist, and waited for until ACTIVE.
pub async fn ensure_stream(
    config: &SdkConfig,
    name: &str,
    retention_hours: i32,
) -> Result<String, PutMediaError> {
    let client = aws_sdk_kinesisvideo::Client::new(config);
    let stream = StreamRef::Name(name.to_string());
    let failed = |operation: &'static str, message: String| PutMediaError::ControlPlane {
        operation,
        stream: stream.clone(),
        message,
    };
    let mut created = false;
    // CreateStream is asynchronous: the stream is CREATING for a while (API reference).
    for _ in 0..60 {
        match client.describe_stream().stream_name(name).send().await {
            Ok(output) => {
                let info = output.stream_info();
                if info.and_then(|i| i.status()) == Some(&Status::Active) {
                    return Ok(info.and_then(|i| i.stream_arn()).unwrap_or_default().into());
                }
            }
            Err(error)
                if !created
                    && error
                        .as_service_error()
                        .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                client
                    .create_stream()
                    .stream_name(name)
                    .media_type("audio/L16")
                    .data_retention_in_hours(retention_hours)
                    .send()
                    .await
                    .map_err(|e| failed("CreateStream", sdk_error(&e)))?;
                created = true;
                continue;
            }
            Err(error) => return Err(failed("DescribeStream", sdk_error(&error))),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(PutMediaError::ControlPlane {
        operation: "DescribeStream",
        stream,
        message: "the stream did not become ACTIVE within 30 s".to_string(),
    })
}

/// Sends `chunks` (whole GetMedia-shaped chunks, in order) into `stream` with one PutMedia
/// request, calling `progress` as fragments go out and acknowledgements come back. Returns
/// once every fragment is acknowledged PERSISTED (or RECEIVED, when the response ends: a
/// stream without retention); fails on the first ERROR acknowledgement, naming its error.
pub async fn put_media(
    config: &SdkConfig,
    stream: &StreamRef,
    chunks: &[Bytes],
    options: &PutMediaOptions,
    mut progress: impl FnMut(Progress),
) -> Result<PutMediaSummary, PutMediaError> {
    // Everything is encoded first: a bad input fails before anything is sent.
    let mut encoder = PutMediaEncoder::new(options.encoder.clone());
    let encoded: Vec<EncodedFragment> = chunks
        .iter()
        .map(|chunk| encoder.encode(chunk))
        .collect::<Result<_, _>>()?;
    // One fragment per cluster: each ack names a cluster's timecode.
    let mut timecodes_ms = Vec::new();
    let mut by_timecode = HashMap::new();
    for (fragment, cluster) in encoded.iter().flat_map(|e| e.clusters.iter()).enumerate() {
        timecodes_ms.push(cluster.ms);
        // The ack's FragmentTimecode is the cluster's timecode as sent; should KVS give it
        // in ms under another TimestampScale, it still matches.
        by_timecode.entry(cluster.ticks).or_insert(fragment);
        by_timecode.entry(cluster.ms).or_insert(fragment);
    }
    let Some(&start_ms) = timecodes_ms.first() else {
        return Err(PutMediaError::Empty);
    };
    let endpoint = data_endpoint(config, stream).await?;
    let (tx, rx) = mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(2);
    let body = SdkBody::from_body_1_x(StreamBody::new(ReceiverStream::new(rx)));
    let request = signed_request(config, &endpoint, stream, start_ms, body).await?;
    let connector = Connector::builder()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .build();
    let connection_failed = |message: String| PutMediaError::Connection {
        stream: stream.clone(),
        message,
    };
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel();
    let sender = tokio::spawn(send_paced(
        encoded,
        options.speed,
        options.max_fragments_per_second,
        tx,
        sent_tx,
    ));
    let _stop_sending = AbortOnDrop(sender);
    let response = connector
        .call(request)
        .await
        .map_err(|e| connection_failed(DisplayErrorContext(&e).to_string()))?;
    if response.status().as_u16() != 200 {
        return Err(refusal(stream, response).await);
    }
    let mut body = response.into_body();
    let fragments = timecodes_ms.len();
    let mut numbers: Vec<Option<String>> = vec![None; fragments];
    let mut received = vec![false; fragments];
    let mut persisted = vec![false; fragments];
    let mut all_sent = false;
    let mut parser = AckParser::new();
    let mut last_heard = tokio::time::Instant::now();
    let unacknowledged = |received: &[bool], why: String| {
        let missing: Vec<usize> = (0..received.len()).filter(|i| !received[*i]).collect();
        PutMediaError::Unacknowledged {
            stream: stream.clone(),
            fragments: received.len(),
            unacknowledged: missing.len(),
            first_missing: missing.first().copied().unwrap_or(0),
            why,
        }
    };
    loop {
        if all_sent && persisted.iter().all(|p| *p) {
            break;
        }
        let deadline = last_heard + options.ack_timeout;
        tokio::select! {
            sent = sent_rx.recv(), if !all_sent => match sent {
                Some(Ok((index, timecode_ms))) => {
                    last_heard = last_heard.max(tokio::time::Instant::now());
                    progress(Progress::Sent { index, timecode_ms });
                }
                Some(Err(())) => {
                    return Err(connection_failed(
                        "the request body was closed before every fragment was sent".into(),
                    ));
                }
                None => all_sent = true,
            },
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    let Some(data) = frame.data_ref() else { continue };
                    last_heard = tokio::time::Instant::now();
                    parser.push(data);
                    while let Some(ack) = parser.next_ack().unwrap_or_else(|problem| {
                        tracing::warn!(stream = %stream, problem, "skipped a PutMedia acknowledgement");
                        None
                    }) {
                        let index = ack
                            .fragment_timecode
                            .and_then(|t| by_timecode.get(&t).copied());
                        match (ack.event_type, index) {
                            (AckEventType::Error, _) => {
                                return Err(rejection(stream, &ack, index.unwrap_or(0)));
                            }
                            (AckEventType::Idle, _) => progress(Progress::Idle),
                            (_, None) => tracing::warn!(
                                stream = %stream,
                                timecode = ?ack.fragment_timecode,
                                "an acknowledgement for a fragment that was not sent"
                            ),
                            (event, Some(index)) => {
                                if let Some(number) = &ack.fragment_number {
                                    numbers[index] = Some(number.clone());
                                }
                                if matches!(event, AckEventType::Received | AckEventType::Persisted) {
                                    received[index] = true;
                                }
                                if event == AckEventType::Persisted {
                                    persisted[index] = true;
                                }
                                progress(Progress::Acked { index, ack });
                            }
                        }
                    }
                }
                Some(Err(error)) => {
                    return Err(connection_failed(format!(
                        "reading the acknowledgements failed: {}",
                        DisplayErrorContext(&*error)
                    )));
                }
                None if all_sent && received.iter().all(|r| *r) => break,
                None => {
                    return Err(unacknowledged(&received, "the response ended".to_string()));
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                return Err(unacknowledged(
                    &received,
                    format!("no acknowledgement for {} s", options.ack_timeout.as_secs()),
                ));
            }
        }
    }
    Ok(PutMediaSummary {
        stream: stream.clone(),
        fragment_numbers: numbers.into_iter().map(Option::unwrap_or_default).collect(),
        timecodes_ms,
        persisted: persisted.iter().filter(|p| **p).count(),
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An SDK error in one line: the service's error code and message, or (no answer) the whole
/// chain of causes.
fn sdk_error<E, R>(error: &aws_sdk_kinesisvideo::error::SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match error.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("(no error code)"),
            service.message().unwrap_or("(no message)")
        ),
        None => DisplayErrorContext(error).to_string(),
    }
}

/// Aborts a task when dropped (the sender, when the call fails or returns early).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Feeds the fragments into the request body at the requested pace, then ends the body (which
/// completes the last fragment for KVS). Reports each (index, ms) sent, or `Err(())` if the
/// connection stopped taking the body.
async fn send_paced(
    encoded: Vec<EncodedFragment>,
    speed: f64,
    max_per_second: f64,
    tx: mpsc::Sender<Result<http_body::Frame<Bytes>, BoxError>>,
    sent: mpsc::UnboundedSender<Result<(usize, u64), ()>>,
) {
    let started = tokio::time::Instant::now();
    let first_ms = encoded
        .first()
        .and_then(|e| e.clusters.first())
        .map_or(0, |c| c.ms);
    let min_gap = Duration::from_secs_f64(1.0 / max_per_second.max(0.001));
    let mut last_sent: Option<tokio::time::Instant> = None;
    let mut index = 0;
    for fragment in encoded {
        let Some(cluster) = fragment.clusters.first() else {
            continue;
        };
        let mut due = started;
        if speed > 0.0 {
            due += Duration::from_secs_f64(
                cluster.ms.saturating_sub(first_ms) as f64 / 1000.0 / speed,
            );
        }
        if let Some(last) = last_sent {
            due = due.max(last + min_gap);
        }
        tokio::time::sleep_until(due).await;
        last_sent = Some(tokio::time::Instant::now());
        let clusters: Vec<u64> = fragment.clusters.iter().map(|c| c.ms).collect();
        if tx
            .send(Ok(http_body::Frame::data(Bytes::from(fragment.bytes))))
            .await
            .is_err()
        {
            let _ = sent.send(Err(()));
            return;
        }
        for ms in clusters {
            let _ = sent.send(Ok((index, ms)));
            index += 1;
        }
    }
}

/// The endpoint to send PutMedia to.
async fn data_endpoint(config: &SdkConfig, stream: &StreamRef) -> Result<String, PutMediaError> {
    let client = aws_sdk_kinesisvideo::Client::new(config);
    let request = client.get_data_endpoint().api_name(ApiName::PutMedia);
    let request = match stream {
        StreamRef::Name(name) => request.stream_name(name),
        StreamRef::Arn(arn) => request.stream_arn(arn),
    };
    let output = request
        .send()
        .await
        .map_err(|e| PutMediaError::ControlPlane {
            operation: "GetDataEndpoint",
            stream: stream.clone(),
            message: sdk_error(&e),
        })?;
    output
        .data_endpoint()
        .map(|e| e.trim_end_matches('/').to_string())
        .ok_or_else(|| PutMediaError::ControlPlane {
            operation: "GetDataEndpoint",
            stream: stream.clone(),
            message: "the answer has no DataEndpoint".to_string(),
        })
}

/// The PutMedia request, signed with SigV4 for service `kinesisvideo`.
///
/// The body is streamed, so its hash is not known when signing: like the KVS C producer SDK
/// (`AwsV4Signer.c`: "Streaming treats this portion as if the body were empty"), the payload
/// hash signed is that of the empty string, with no `x-amz-content-sha256` header.
async fn signed_request(
    config: &SdkConfig,
    endpoint: &str,
    stream: &StreamRef,
    start_ms: u64,
    body: SdkBody,
) -> Result<aws_smithy_runtime_api::http::Request, PutMediaError> {
    let region = config.region().ok_or(PutMediaError::NoRegion)?.to_string();
    let credentials = config
        .credentials_provider()
        .ok_or_else(|| PutMediaError::Credentials("no credentials provider".to_string()))?
        .provide_credentials()
        .await
        .map_err(|e| PutMediaError::Credentials(DisplayErrorContext(&e).to_string()))?;
    let identity: Identity = credentials.into();
    let url = format!("{endpoint}/putMedia");
    // "seconds_from_epoch.milliseconds", as the C++ producer SDK writes it.
    let start = format!("{}.{:03}", start_ms / 1000, start_ms % 1000);
    let (stream_header, stream_value) = match stream {
        StreamRef::Name(name) => ("x-amzn-stream-name", name.as_str()),
        StreamRef::Arn(arn) => ("x-amzn-stream-arn", arn.as_str()),
    };
    let headers = [
        (stream_header, stream_value),
        ("x-amzn-fragment-timecode-type", "ABSOLUTE"),
        ("x-amzn-producer-start-timestamp", start.as_str()),
        ("x-amzn-fragment-acknowledgment-required", "1"),
    ];
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(&region)
        .name("kinesisvideo")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| PutMediaError::Credentials(format!("cannot sign PutMedia: {e}")))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        url.as_str(),
        headers.iter().copied(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| PutMediaError::Credentials(format!("cannot sign PutMedia: {e}")))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| PutMediaError::Credentials(format!("cannot sign PutMedia: {e}")))?
        .into_parts();
    let mut builder = http::Request::builder().method("POST").uri(&url);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let mut request = builder.body(body).map_err(|e| PutMediaError::Connection {
        stream: stream.clone(),
        message: format!("cannot build the request for {url}: {e}"),
    })?;
    instructions.apply_to_request_http1x(&mut request);
    aws_smithy_runtime_api::http::Request::try_from(request).map_err(|e| {
        PutMediaError::Connection {
            stream: stream.clone(),
            message: format!("cannot build the request for {url}: {e}"),
        }
    })
}

/// The error of a non-200 answer: its `x-amzn-ErrorType` and message.
async fn refusal(
    stream: &StreamRef,
    response: aws_smithy_runtime_api::http::Response<SdkBody>,
) -> PutMediaError {
    let status = response.status().as_u16();
    let header_type = response
        .headers()
        .get("x-amzn-ErrorType")
        .map(|t| t.split(':').next().unwrap_or(t).to_string());
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let body_type = field("__type");
    let message = field("message")
        .or_else(|| field("Message"))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
    PutMediaError::Refused {
        stream: stream.clone(),
        status,
        error_type: header_type
            .or(body_type)
            .unwrap_or_else(|| "(no error type)".to_string()),
        message,
    }
}

/// An ERROR acknowledgement as an error naming what its id means.
fn rejection(stream: &StreamRef, ack: &Ack, index: usize) -> PutMediaError {
    let error_id = ack.error_id.unwrap_or(0);
    let mut meaning = put_media_error_meaning(error_id)
        .unwrap_or("an error id the PutMedia API reference does not list")
        .to_string();
    if let Some(code) = &ack.error_code {
        meaning.push_str(&format!(" ({code})"));
    }
    PutMediaError::Rejected {
        stream: stream.clone(),
        index,
        timecode: ack
            .fragment_timecode
            .map_or_else(|| "none".to_string(), |t| t.to_string()),
        error_id,
        meaning,
    }
}

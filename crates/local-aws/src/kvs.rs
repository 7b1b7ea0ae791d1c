//! A local Kinesis Video Streams: control plane (`/getDataEndpoint`, `/describeStream`,
//! `/createStream`, `/listStreams`) and media plane (`/getMedia`, `/putMedia`) on one
//! loopback port.
//!
//! PutMedia follows its API reference: the stream named by `x-amzn-stream-name` or
//! `x-amzn-stream-arn` (not both), `x-amzn-fragment-timecode-type` ABSOLUTE or RELATIVE (to
//! `x-amzn-producer-start-timestamp`, seconds), a body of one MKV segment whose clusters
//! become fragments, and newline-separated JSON acknowledgements on the response (BUFFERING
//! when a fragment begins, RECEIVED and PERSISTED once it is whole and stored, ERROR with the
//! documented error ids, IDLE while no data comes, the request closed after 30 s without
//! data). A second concurrent PutMedia on a stream is refused with
//! ConnectionLimitExceededException, as the current reference says (an older version said
//! the fragments of simultaneous sessions get interleaved).
//!
//! Streams hold KVS chunks (one EBML document per fragment, as GetMedia returns them): loaded
//! from captures or appended live by an in-process producer ([`Kvs::play`]). GetMedia streams
//! them from the selected start and, as the GetMedia API reference says, ends the response
//! body once no new fragment has been available for 3 seconds ("the reading of the HTTP
//! response payload will timeout after 3 seconds if there are no ingested fragments available
//! for playback"; [`KvsOptions::payload_timeout`]) — whether the producer paused or stopped.
//! A stream closed by its producer (a stored or finished call) ends the response as soon as
//! its last fragment is sent: the same answer without the wait.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use kvs_media::{
    Ack, AckEventType, ConnectWriter, FragmentReader, IngestEvent, IngestedFragment, MediaEvent,
    PutMediaParser, kvs_end_tags_offset, split_chunks,
};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::http::{
    ApiError, Body, BodyError, Server, aws_error, json as json_response, read_body, serve,
};

/// Largest control-plane or GetMedia request body accepted.
const MAX_REQUEST_BYTES: usize = 64 << 10;

/// How the local KVS behaves where AWS leaves room.
#[derive(Debug, Clone)]
pub struct KvsOptions {
    /// Whether FRAGMENT_NUMBER and CONTINUATION_TOKEN start *with* the named fragment (true)
    /// or with the one *after* it (false). AWS's documentation says both; test both.
    pub include_named_fragment: bool,
    /// GetMedia calls allowed per stream per second (KVS: 5).
    pub get_media_per_second: usize,
    /// A GetMedia response ends when no new fragment has been available for this long (KVS:
    /// 3 s, per the GetMedia API reference). Tests that play a call faster than real time
    /// scale it down by the same factor.
    pub payload_timeout: Duration,
    /// How often an open PutMedia session without data gets an IDLE acknowledgement (the
    /// API reference says "periodically", without a period).
    pub put_media_idle_ack: Duration,
    /// A PutMedia session that receives no data this long is closed (KVS: 30 s).
    pub put_media_idle_timeout: Duration,
    /// An IAM policy stand-in: requests signed with this access key id may use only streams
    /// whose name starts with this prefix (as the stack's role allows
    /// `stream/<ConnectKvsStreamNamePrefix>*`); others get AccessDeniedException.
    pub restricted: Option<(String, String)>,
    /// Region in ARNs.
    pub region: String,
    /// Account in ARNs.
    pub account: String,
}

impl Default for KvsOptions {
    fn default() -> Self {
        Self {
            include_named_fragment: false,
            get_media_per_second: 5,
            payload_timeout: Duration::from_secs(3),
            put_media_idle_ack: Duration::from_secs(3),
            put_media_idle_timeout: Duration::from_secs(30),
            restricted: None,
            region: "us-east-1".to_string(),
            account: "123456789012".to_string(),
        }
    }
}

/// A fault the next GetMedia session on a stream suffers (one fault per session, in the
/// order injected), for testing how a consumer recovers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The connection is cut (no clean end of the chunked body) after this many bytes.
    CutAfterBytes(u64),
    /// The connection is cut after this many whole fragments.
    CutAfterFragments(usize),
    /// The session pauses this long before sending its `fragment`-th fragment (0-based).
    StallBefore {
        /// Index within the session.
        fragment: usize,
        /// How long nothing is sent.
        duration: Duration,
    },
    /// The request is taken and never answered (no response, not even its headers) until
    /// the client gives up: a connection that black-holes. (KVS answers at once; no AWS
    /// document describes this. It is what a client's limit on the answer exists for.)
    NoAnswer,
    /// An error chunk is sent after this many fragments, and the response ends.
    ErrorChunkAfter {
        /// Fragments sent first.
        fragments: usize,
        /// AWS_KINESISVIDEO_ERROR_CODE (KVS: a description).
        code: String,
        /// AWS_KINESISVIDEO_ERROR_ID (KVS: the numeric code, e.g. 4000, 4500).
        id: String,
    },
}

/// What went wrong with a producer-side call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvsError {
    /// No stream of that name or ARN.
    #[error("stream {0:?} does not exist")]
    NoSuchStream(String),
    /// The stream exists already.
    #[error("stream {0:?} already exists")]
    StreamExists(String),
    /// The chunk or capture is not usable media.
    #[error("stream {stream:?}: {problem}")]
    BadMedia {
        /// The stream.
        stream: String,
        /// What is wrong.
        problem: String,
    },
}

/// A fragment as stored: its KVS bookkeeping and the chunk GetMedia sends.
#[derive(Debug, Clone)]
struct StoredFragment {
    number: String,
    producer_ms: Option<u64>,
    server_ms: u64,
    chunk: Bytes,
    /// Where the chunk's trailing KVS end tags start, re-stamped at delivery.
    end_tags_at: Option<usize>,
}

impl StoredFragment {
    /// The chunk as GetMedia sends it now: MILLIS_BEHIND_NOW says how far this fragment is
    /// behind the newest one on the stream (server timestamps), as KVS computes it.
    fn chunk_for_delivery(&self, newest_server_ms: u64) -> Bytes {
        match self.end_tags_at {
            Some(at) => {
                let mut out = Vec::with_capacity(self.chunk.len() + 16);
                out.extend_from_slice(&self.chunk[..at]);
                out.extend_from_slice(&ConnectWriter::kvs_end_tags(
                    newest_server_ms.saturating_sub(self.server_ms),
                    &self.number,
                ));
                Bytes::from(out)
            }
            None => self.chunk.clone(),
        }
    }
}

#[derive(Debug)]
struct Stream {
    name: String,
    arn: String,
    created_s: f64,
    fragments: Vec<StoredFragment>,
    closed: bool,
    recent_get_media: VecDeque<Instant>,
    faults: VecDeque<Fault>,
    /// A PutMedia session is open on the stream.
    put_media_open: bool,
}

#[derive(Debug, Default)]
struct State {
    streams: BTreeMap<String, Stream>,
    generated_numbers: u64,
    /// Faults that took effect, in order, with their stream's name.
    applied: Vec<(String, Fault)>,
}

#[derive(Debug)]
struct Inner {
    options: KvsOptions,
    state: Mutex<State>,
    /// Bumped whenever a stream gains a fragment or closes; GetMedia tasks wait on it.
    changed: watch::Sender<u64>,
    endpoint: OnceLock<String>,
}

/// The local KVS: a cheap handle to shared state, usable from tests (producer side) while
/// [`Kvs::serve`] answers the SDK clients.
#[derive(Debug, Clone)]
pub struct Kvs {
    inner: Arc<Inner>,
}

/// Where a GetMedia session starts.
enum Start {
    /// At this index (may equal the number of fragments: wait for the next).
    Index(usize),
    /// The named fragment does not exist: KVS answers with an error chunk.
    NotFound(String),
}

impl Kvs {
    /// An empty local KVS.
    pub fn new(options: KvsOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                state: Mutex::new(State::default()),
                changed: watch::channel(0).0,
                endpoint: OnceLock::new(),
            }),
        }
    }

    /// Serves the control and media planes on `127.0.0.1:port` (0: any free port).
    /// GetDataEndpoint answers with this server's own URL.
    pub async fn serve(&self, port: u16) -> std::io::Result<Server> {
        let kvs = self.clone();
        let server = serve(port, move |request| {
            let kvs = kvs.clone();
            async move { kvs.handle(request).await }
        })
        .await?;
        let _ = self.inner.endpoint.set(server.url());
        Ok(server)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        crate::lock(&self.inner.state)
    }

    fn notify(&self) {
        self.inner.changed.send_modify(|version| *version += 1);
    }

    /// Creates a stream; returns its ARN.
    pub fn create_stream(&self, name: &str) -> Result<String, KvsError> {
        let mut state = self.state();
        if state.streams.contains_key(name) {
            return Err(KvsError::StreamExists(name.to_string()));
        }
        let created_ms = aws_edge::now_ms();
        let arn = format!(
            "arn:aws:kinesisvideo:{}:{}:stream/{name}/{created_ms}",
            self.inner.options.region, self.inner.options.account
        );
        state.streams.insert(
            name.to_string(),
            Stream {
                name: name.to_string(),
                arn: arn.clone(),
                created_s: created_ms as f64 / 1000.0,
                fragments: Vec::new(),
                closed: false,
                recent_get_media: VecDeque::new(),
                faults: VecDeque::new(),
                put_media_open: false,
            },
        );
        Ok(arn)
    }

    /// Appends one KVS chunk (a complete EBML document) to a stream; returns its fragment
    /// number (the chunk's own AWS_KINESISVIDEO_FRAGMENT_NUMBER, or a generated one).
    pub fn put_chunk(&self, stream: &str, chunk: Bytes) -> Result<String, KvsError> {
        let start = fragment_start(&chunk).map_err(|problem| KvsError::BadMedia {
            stream: stream.to_string(),
            problem,
        })?;
        let mut state = self.state();
        let number = match start.as_ref().and_then(|s| s.fragment_number.clone()) {
            Some(number) => number,
            None => {
                state.generated_numbers += 1;
                ConnectWriter::fragment_number(state.generated_numbers)
            }
        };
        let entry = state
            .streams
            .get_mut(stream)
            .ok_or_else(|| KvsError::NoSuchStream(stream.to_string()))?;
        entry.fragments.push(StoredFragment {
            number: number.clone(),
            producer_ms: start.as_ref().and_then(|s| s.producer_timestamp_ms),
            server_ms: start
                .as_ref()
                .and_then(|s| s.server_timestamp_ms)
                .unwrap_or_else(aws_edge::now_ms),
            end_tags_at: kvs_end_tags_offset(&chunk),
            chunk,
        });
        drop(state);
        self.notify();
        Ok(number)
    }

    /// Appends every chunk of a capture (concatenated GetMedia chunks); returns how many.
    pub fn put_capture(&self, stream: &str, capture: &[u8]) -> Result<usize, KvsError> {
        let chunks = capture_chunks(stream, capture)?;
        let count = chunks.len();
        for chunk in chunks {
            self.put_chunk(stream, chunk)?;
        }
        Ok(count)
    }

    /// Marks the stream finished: GetMedia responses end after its last fragment.
    pub fn close_stream(&self, stream: &str) -> Result<(), KvsError> {
        let mut state = self.state();
        let entry = state
            .streams
            .get_mut(stream)
            .ok_or_else(|| KvsError::NoSuchStream(stream.to_string()))?;
        entry.closed = true;
        drop(state);
        self.notify();
        Ok(())
    }

    /// Queues a fault for the next GetMedia session on the stream.
    pub fn inject(&self, stream: &str, fault: Fault) -> Result<(), KvsError> {
        let mut state = self.state();
        let entry = state
            .streams
            .get_mut(stream)
            .ok_or_else(|| KvsError::NoSuchStream(stream.to_string()))?;
        entry.faults.push_back(fault);
        Ok(())
    }

    /// The faults that took effect so far, in order, each with its stream's name: a cut or an
    /// error chunk once it was sent, a stall once it began. A fault queued for a session that
    /// ended before reaching it is not listed, so a test can tell a fault that happened from
    /// one that was only injected.
    pub fn applied(&self) -> Vec<(String, Fault)> {
        self.state().applied.clone()
    }

    /// Fragment numbers of a stream, in order.
    pub fn fragment_numbers(&self, stream: &str) -> Result<Vec<String>, KvsError> {
        let state = self.state();
        let entry = state
            .streams
            .get(stream)
            .ok_or_else(|| KvsError::NoSuchStream(stream.to_string()))?;
        Ok(entry.fragments.iter().map(|f| f.number.clone()).collect())
    }

    /// Plays chunks into a stream live: each is appended when its producer timestamp comes
    /// due relative to the first (divided by `speed`; 0 appends all at once), then the stream
    /// is closed, as when a Connect call ends.
    pub fn play(
        &self,
        stream: &str,
        chunks: Vec<Bytes>,
        speed: f64,
    ) -> JoinHandle<Result<(), KvsError>> {
        let kvs = self.clone();
        let stream = stream.to_string();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut first_ms = None;
            for chunk in chunks {
                let producer_ms = fragment_start(&chunk)
                    .ok()
                    .flatten()
                    .and_then(|s| s.producer_timestamp_ms);
                if let (Some(ms), true) = (producer_ms, speed > 0.0) {
                    let first = *first_ms.get_or_insert(ms);
                    let due =
                        Duration::from_secs_f64(ms.saturating_sub(first) as f64 / 1000.0 / speed);
                    tokio::time::sleep_until(started + due).await;
                }
                kvs.put_chunk(&stream, chunk)?;
            }
            kvs.close_stream(&stream)
        })
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        if request.method() != Method::POST {
            return aws_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "InvalidArgumentException",
                "Kinesis Video Streams APIs are called with POST",
            );
        }
        let path = request.uri().path().to_string();
        let access_key = access_key_of(request.headers());
        if path == "/putMedia" {
            return self.put_media(request);
        }
        let body = match read_body(request, MAX_REQUEST_BYTES).await {
            Ok(body) => body,
            Err(message) => {
                return aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidArgumentException",
                    &message,
                );
            }
        };
        let input: Value = if body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(&body) {
                Ok(value @ Value::Object(_)) => value,
                Ok(_) | Err(_) => {
                    return aws_error(
                        StatusCode::BAD_REQUEST,
                        "SerializationException",
                        "request body is not a JSON object",
                    );
                }
            }
        };
        let operation = path.trim_start_matches('/');
        if operation != "listStreams"
            && let Some(denied) = self.denied(access_key.as_deref(), &input, operation)
        {
            return denied.into_response();
        }
        match path.as_str() {
            "/getDataEndpoint" => self.get_data_endpoint(&input),
            "/describeStream" => self.describe_stream(&input),
            "/createStream" => self.create_stream_api(&input),
            "/listStreams" => self.list_streams(),
            "/getMedia" => self.get_media(&input).await,
            other => aws_error(
                StatusCode::NOT_FOUND,
                "UnknownOperationException",
                &format!("no Kinesis Video Streams operation at {other}"),
            ),
        }
    }

    /// The policy stand-in's answer to a request of `access_key` on the stream `input`
    /// names, when it is denied. The message has IAM's form; which error type KVS gives an
    /// IAM denial is not documented per API (its common errors list AccessDeniedException,
    /// "You do not have sufficient access to perform this action").
    fn denied(&self, access_key: Option<&str>, input: &Value, operation: &str) -> Option<ApiError> {
        let (key, prefix) = self.inner.options.restricted.as_ref()?;
        if access_key != Some(key.as_str()) {
            return None;
        }
        let name = match self.named_stream(input) {
            Ok(name) => name,
            Err(_) => input
                .get("StreamName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        };
        if name.starts_with(prefix.as_str()) {
            return None;
        }
        let resource = self
            .state()
            .streams
            .get(&name)
            .map_or_else(|| format!("stream/{name}"), |s| s.arn.clone());
        let mut action = operation.to_string();
        if let Some(first) = action.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        Some(ApiError::new(
            StatusCode::BAD_REQUEST,
            "AccessDeniedException",
            format!(
                "User: arn:aws:sts::{}:assumed-role/CallTranscriberRole/{key} is not authorized to perform: kinesisvideo:{action} on resource: {resource} because no identity-based policy allows the kinesisvideo:{action} action",
                self.inner.options.account
            ),
        ))
    }

    /// The stream a request names by StreamName or StreamARN.
    fn named_stream(&self, input: &Value) -> Result<String, ApiError> {
        let name = input.get("StreamName").and_then(Value::as_str);
        let arn = input.get("StreamARN").and_then(Value::as_str);
        let state = self.state();
        let found = match (name, arn) {
            (Some(name), _) => state.streams.get(name).map(|s| s.name.clone()),
            (None, Some(arn)) => state
                .streams
                .values()
                .find(|s| s.arn == arn)
                .map(|s| s.name.clone()),
            (None, None) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "InvalidArgumentException",
                    "either StreamName or StreamARN must be given",
                ));
            }
        };
        found.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                format!(
                    "The requested stream is not found or not active: {}",
                    name.or(arn).unwrap_or_default()
                ),
            )
        })
    }

    fn get_data_endpoint(&self, input: &Value) -> Response<Body> {
        if let Err(error) = self.named_stream(input) {
            return error.into_response();
        }
        match input.get("APIName").and_then(Value::as_str) {
            Some(
                "GET_MEDIA"
                | "PUT_MEDIA"
                | "GET_MEDIA_FOR_FRAGMENT_LIST"
                | "LIST_FRAGMENTS"
                | "GET_HLS_STREAMING_SESSION_URL"
                | "GET_DASH_STREAMING_SESSION_URL"
                | "GET_CLIP"
                | "GET_IMAGES",
            ) => {}
            other => {
                return aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidArgumentException",
                    &format!("APIName {other:?} is not a Kinesis Video Streams data API"),
                );
            }
        }
        let endpoint = self.inner.endpoint.get().cloned().unwrap_or_default();
        json_response(&json!({ "DataEndpoint": endpoint }))
    }

    fn stream_info(stream: &Stream) -> Value {
        json!({
            "DeviceName": "Amazon Connect",
            "StreamName": stream.name,
            "StreamARN": stream.arn,
            "MediaType": "audio/L16",
            "KmsKeyId": "arn:aws:kms:us-east-1:123456789012:alias/aws/kinesisvideo",
            "Version": "1",
            "Status": "ACTIVE",
            "CreationTime": stream.created_s,
            "DataRetentionInHours": 24,
        })
    }

    fn describe_stream(&self, input: &Value) -> Response<Body> {
        let name = match self.named_stream(input) {
            Ok(name) => name,
            Err(error) => return error.into_response(),
        };
        let state = self.state();
        match state.streams.get(&name) {
            Some(stream) => json_response(&json!({ "StreamInfo": Self::stream_info(stream) })),
            None => aws_error(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                "stream vanished",
            ),
        }
    }

    fn create_stream_api(&self, input: &Value) -> Response<Body> {
        let Some(name) = input.get("StreamName").and_then(Value::as_str) else {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "InvalidArgumentException",
                "StreamName is required",
            );
        };
        match self.create_stream(name) {
            Ok(arn) => json_response(&json!({ "StreamARN": arn })),
            Err(error) => aws_error(
                StatusCode::BAD_REQUEST,
                "ResourceInUseException",
                &error.to_string(),
            ),
        }
    }

    fn list_streams(&self) -> Response<Body> {
        let state = self.state();
        let infos: Vec<Value> = state.streams.values().map(Self::stream_info).collect();
        json_response(&json!({ "StreamInfoList": infos }))
    }

    async fn get_media(&self, input: &Value) -> Response<Body> {
        let name = match self.named_stream(input) {
            Ok(name) => name,
            Err(error) => return error.into_response(),
        };
        let (start, fault) = match self.start_of(&name, input.get("StartSelector")) {
            Ok(start) => start,
            Err(error) => return error.into_response(),
        };
        if fault == Some(Fault::NoAnswer) {
            self.state().applied.push((name, Fault::NoAnswer));
            // Held until the client closes the connection, which drops this future.
            return std::future::pending().await;
        }
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BodyError>>(4);
        let kvs = self.clone();
        tokio::spawn(async move { kvs.stream_media(name, start, fault, tx).await });
        let body = StreamBody::new(ReceiverStream::new(rx)).boxed();
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "video/webm")
            .body(body)
            .expect("static response parts are valid")
    }

    /// Applies the rate limit and resolves the StartSelector.
    fn start_of(
        &self,
        name: &str,
        selector: Option<&Value>,
    ) -> Result<(Start, Option<Fault>), ApiError> {
        let bad = |message: String| {
            ApiError::new(StatusCode::BAD_REQUEST, "InvalidArgumentException", message)
        };
        let selector = selector
            .and_then(Value::as_object)
            .ok_or_else(|| bad("StartSelector is required".to_string()))?;
        let kind = selector
            .get("StartSelectorType")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("StartSelector.StartSelectorType is required".to_string()))?;
        let include = self.inner.options.include_named_fragment;
        let mut state = self.state();
        let stream = state.streams.get_mut(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                "stream vanished",
            )
        })?;
        let now = Instant::now();
        while stream
            .recent_get_media
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            stream.recent_get_media.pop_front();
        }
        if stream.recent_get_media.len() >= self.inner.options.get_media_per_second {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "ClientLimitExceededException",
                format!(
                    "GetMedia on stream {name} is limited to {} calls per second",
                    self.inner.options.get_media_per_second
                ),
            ));
        }
        stream.recent_get_media.push_back(now);
        let fault = stream.faults.pop_front();
        let fragments = &stream.fragments;
        let by_number = |field: &str| -> Result<Start, ApiError> {
            let number = selector
                .get(field)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("StartSelector.{field} is required for {kind}")))?;
            Ok(match fragments.iter().position(|f| f.number == number) {
                Some(index) => Start::Index(if include { index } else { index + 1 }),
                None => Start::NotFound(number.to_string()),
            })
        };
        let by_time = |server: bool| -> Result<Start, ApiError> {
            let seconds = selector
                .get("StartTimestamp")
                .and_then(Value::as_f64)
                .ok_or_else(|| {
                    bad(format!(
                        "StartSelector.StartTimestamp is required for {kind}"
                    ))
                })?;
            let at_ms = (seconds * 1000.0).round() as u64;
            let time = |f: &StoredFragment| {
                if server {
                    Some(f.server_ms)
                } else {
                    f.producer_ms
                }
            };
            // The fragment containing the time: the last one starting at or before it.
            let containing = fragments
                .iter()
                .rposition(|f| time(f).is_some_and(|t| t <= at_ms))
                .unwrap_or(0);
            Ok(Start::Index(containing))
        };
        let start = match kind {
            // "NOW - Start with the latest chunk on the stream" (GetMedia API reference,
            // StartSelector): the newest stored fragment, then what the producer adds; on an
            // empty stream, the first to come.
            "NOW" => Start::Index(fragments.len().saturating_sub(1)),
            "EARLIEST" => Start::Index(0),
            "FRAGMENT_NUMBER" => by_number("AfterFragmentNumber")?,
            "CONTINUATION_TOKEN" => by_number("ContinuationToken")?,
            "SERVER_TIMESTAMP" => by_time(true)?,
            "PRODUCER_TIMESTAMP" => by_time(false)?,
            other => {
                return Err(bad(format!(
                    "StartSelectorType {other:?} is not one of NOW, EARLIEST, FRAGMENT_NUMBER, SERVER_TIMESTAMP, PRODUCER_TIMESTAMP, CONTINUATION_TOKEN"
                )));
            }
        };
        Ok((start, fault))
    }

    /// Sends chunks from `start` as they become available until the stream is closed or the
    /// client goes away, suffering `fault` if one was injected.
    async fn stream_media(
        &self,
        name: String,
        start: Start,
        fault: Option<Fault>,
        tx: mpsc::Sender<Result<Frame<Bytes>, BodyError>>,
    ) {
        let mut next = match start {
            Start::Index(index) => index,
            Start::NotFound(number) => {
                let chunk = ConnectWriter::error_chunk(
                    &format!("Requested fragment {number} is not found"),
                    "4000",
                );
                let _ = tx.send(Ok(Frame::data(Bytes::from(chunk)))).await;
                return;
            }
        };
        let mut sent_fragments = 0usize;
        let mut sent_bytes = 0u64;
        let mut changed = self.inner.changed.subscribe();
        let mut last_sent = tokio::time::Instant::now();
        loop {
            changed.borrow_and_update();
            let (batch, closed) = {
                let state = self.state();
                let Some(stream) = state.streams.get(&name) else {
                    return;
                };
                let newest = stream.fragments.last().map_or(0, |f| f.server_ms);
                let batch: Vec<Bytes> = stream
                    .fragments
                    .get(next..)
                    .unwrap_or_default()
                    .iter()
                    .map(|f| f.chunk_for_delivery(newest))
                    .collect();
                (batch, stream.closed)
            };
            if batch.is_empty() {
                if closed {
                    return;
                }
                let payload_deadline = last_sent + self.inner.options.payload_timeout;
                match tokio::time::timeout_at(payload_deadline, changed.changed()).await {
                    Ok(Ok(())) => continue,
                    // Nothing new for the payload timeout (or the service is going away):
                    // the response ends cleanly.
                    Ok(Err(_)) | Err(_) => return,
                }
            }
            for mut chunk in batch {
                let applies = match &fault {
                    Some(Fault::CutAfterFragments(n)) => sent_fragments == *n,
                    Some(Fault::CutAfterBytes(n)) => sent_bytes + chunk.len() as u64 > *n,
                    Some(Fault::StallBefore { fragment, .. }) => sent_fragments == *fragment,
                    Some(Fault::ErrorChunkAfter { fragments, .. }) => sent_fragments == *fragments,
                    // Applied before any answer (`get_media`).
                    Some(Fault::NoAnswer) | None => false,
                };
                if let Some(fault) = fault.as_ref().filter(|_| applies) {
                    self.state().applied.push((name.clone(), fault.clone()));
                }
                match &fault {
                    _ if !applies => {}
                    Some(Fault::CutAfterFragments(_)) => {
                        cut_connection(&tx).await;
                        return;
                    }
                    Some(Fault::CutAfterBytes(n)) => {
                        let keep = (*n - sent_bytes) as usize;
                        let _ = tx.send(Ok(Frame::data(chunk.split_to(keep)))).await;
                        cut_connection(&tx).await;
                        return;
                    }
                    Some(Fault::StallBefore { duration, .. }) => {
                        tokio::time::sleep(*duration).await;
                    }
                    Some(Fault::ErrorChunkAfter { code, id, .. }) => {
                        let chunk = ConnectWriter::error_chunk(code, id);
                        let _ = tx.send(Ok(Frame::data(Bytes::from(chunk)))).await;
                        return;
                    }
                    _ => {}
                }
                sent_bytes += chunk.len() as u64;
                if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                    return;
                }
                sent_fragments += 1;
                next += 1;
                last_sent = tokio::time::Instant::now();
            }
        }
    }
}

impl Kvs {
    /// PutMedia: checks the headers, then reads the body in a task while the response
    /// carries the acknowledgements.
    fn put_media(&self, request: Request<Incoming>) -> Response<Body> {
        let session = match self.open_put_media(request.headers()) {
            Ok(session) => session,
            Err(error) => return error.into_response(),
        };
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BodyError>>(64);
        let kvs = self.clone();
        tokio::spawn(async move {
            let stream = session.stream.clone();
            kvs.ingest(session, request.into_body(), tx).await;
            if let Some(entry) = kvs.state().streams.get_mut(&stream) {
                entry.put_media_open = false;
            }
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody::new(ReceiverStream::new(rx)).boxed())
            .expect("static response parts are valid")
    }

    /// Validates a PutMedia request's headers and marks the stream as being written.
    fn open_put_media(&self, headers: &http::HeaderMap) -> Result<PutMediaSession, ApiError> {
        let bad = |message: String| {
            ApiError::new(StatusCode::BAD_REQUEST, "InvalidArgumentException", message)
        };
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        // PutMedia, like every KVS API, is SigV4-signed; without a signature: "The caller is
        // not authorized" (NotAuthorizedException, HTTP 401). The signature itself is not
        // checked here: the stand-in knows no secret keys.
        let signed = header("authorization")
            .is_some_and(|auth| auth.starts_with("AWS4-HMAC-SHA256 Credential="))
            && header("x-amz-date").is_some();
        if !signed {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "NotAuthorizedException",
                "PutMedia request is not signed with AWS Signature Version 4",
            ));
        }
        let (name, arn) = (header("x-amzn-stream-name"), header("x-amzn-stream-arn"));
        if name.is_some() && arn.is_some() {
            return Err(bad(
                "specify either x-amzn-stream-name or x-amzn-stream-arn, not both".to_string(),
            ));
        }
        let named = json!({ "StreamName": name, "StreamARN": arn });
        if let Some(denied) = self.denied(access_key_of(headers).as_deref(), &named, "PutMedia") {
            return Err(denied);
        }
        let stream = self.named_stream(&named)?;
        let relative = match header("x-amzn-fragment-timecode-type").as_deref() {
            Some("ABSOLUTE") => false,
            Some("RELATIVE") => true,
            other => {
                return Err(bad(format!(
                    "x-amzn-fragment-timecode-type {other:?} is not ABSOLUTE or RELATIVE"
                )));
            }
        };
        let start_ms = match header("x-amzn-producer-start-timestamp") {
            Some(text) => Some(
                text.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(|s| (s * 1000.0).round() as u64)
                    .ok_or_else(|| {
                        bad(format!(
                            "x-amzn-producer-start-timestamp {text:?} is not a time in seconds"
                        ))
                    })?,
            ),
            None if relative => {
                return Err(bad(
                    "RELATIVE timecodes need x-amzn-producer-start-timestamp".to_string(),
                ));
            }
            None => None,
        };
        let mut state = self.state();
        let entry = state
            .streams
            .get_mut(&stream)
            .ok_or_else(|| bad(format!("stream {stream} vanished")))?;
        if entry.put_media_open {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "ConnectionLimitExceededException",
                format!("a PutMedia session is already open on stream {stream}"),
            ));
        }
        entry.put_media_open = true;
        // A producer is live again: GetMedia waits for its fragments.
        entry.closed = false;
        Ok(PutMediaSession {
            stream,
            relative_to_ms: relative.then_some(start_ms.unwrap_or(0)),
        })
    }

    /// Reads a PutMedia body, storing each whole fragment and acknowledging it.
    async fn ingest(
        &self,
        session: PutMediaSession,
        mut body: Incoming,
        tx: mpsc::Sender<Result<Frame<Bytes>, BodyError>>,
    ) {
        let send = |ack: Ack| {
            let tx = tx.clone();
            async move {
                let line = Bytes::from(ack.to_json_line());
                tx.send(Ok(Frame::data(line))).await.is_ok()
            }
        };
        let mut parser = PutMediaParser::new();
        let mut last_timecode = None;
        let mut last_data = tokio::time::Instant::now();
        let mut idle = tokio::time::interval(self.inner.options.put_media_idle_ack);
        idle.tick().await;
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                _ = idle.tick() => {
                    if last_data.elapsed() >= self.inner.options.put_media_idle_timeout {
                        return;
                    }
                    if last_data.elapsed() >= self.inner.options.put_media_idle_ack
                        && !send(ack(AckEventType::Idle, None, None, None)).await
                    {
                        return;
                    }
                    continue;
                }
            };
            let mut events = Vec::new();
            let ended = match frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        parser.push(data);
                        last_data = tokio::time::Instant::now();
                    }
                    false
                }
                // The connection broke: the fragments stored so far stay, the one being
                // received is lost (as a producer would see from its missing acks).
                Some(Err(_)) => return,
                None => true,
            };
            let mut failure = None;
            loop {
                match parser.next_event() {
                    Ok(Some(event)) => events.push(event),
                    Ok(None) => break,
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
            if ended && failure.is_none() {
                match parser.finish() {
                    Ok(Some(fragment)) => events.push(IngestEvent::Fragment(fragment)),
                    Ok(None) => {}
                    Err(error) => failure = Some(error),
                }
            }
            for event in events {
                let ack = match event {
                    IngestEvent::FragmentBegins { timecode } => {
                        ack(AckEventType::Buffering, Some(timecode), None, None)
                    }
                    IngestEvent::Fragment(fragment) => {
                        // "The earliest frame timestamp in a fragment must be after the latest
                        // frame timestamp in the previous fragment" (error 4004).
                        if last_timecode.is_some_and(|last| fragment.timecode <= last) {
                            ack(
                                AckEventType::Error,
                                Some(fragment.timecode),
                                None,
                                Some(4004),
                            )
                        } else {
                            last_timecode = Some(fragment.timecode);
                            match self.store_put_fragment(&session, &parser, &fragment) {
                                Ok(number) => {
                                    let received = ack(
                                        AckEventType::Received,
                                        Some(fragment.timecode),
                                        Some(number.clone()),
                                        None,
                                    );
                                    if !send(received).await {
                                        return;
                                    }
                                    ack(
                                        AckEventType::Persisted,
                                        Some(fragment.timecode),
                                        Some(number),
                                        None,
                                    )
                                }
                                // The stream is gone: "Stream no longer exists (deleted)".
                                Err(_) => {
                                    let _ = send(ack(
                                        AckEventType::Error,
                                        Some(fragment.timecode),
                                        None,
                                        Some(4008),
                                    ))
                                    .await;
                                    return;
                                }
                            }
                        }
                    }
                };
                if !send(ack).await {
                    return;
                }
            }
            if let Some(error) = failure {
                let _ = send(Ack {
                    error_code: Some(error.problem.to_string()),
                    ..ack(AckEventType::Error, None, None, Some(error.error_id))
                })
                .await;
                return;
            }
            if ended {
                return;
            }
        }
    }

    /// Stores a PutMedia fragment as the chunk GetMedia will return; its fragment number.
    fn store_put_fragment(
        &self,
        session: &PutMediaSession,
        parser: &PutMediaParser,
        fragment: &IngestedFragment,
    ) -> Result<String, KvsError> {
        let number = {
            let mut state = self.state();
            state.generated_numbers += 1;
            // Sorts after every number ConnectWriter gives (prefix 91343852333181).
            format!("91343852333182{:033}", state.generated_numbers)
        };
        // "If fragmentTimeCodeType is relative, producer_timestamp = producerStartTimeStamp +
        // fragment timecode; if absolute, producer_timestamp = fragment timecode (converted
        // to milliseconds)" (PutMedia API reference).
        let producer_ms = session.relative_to_ms.unwrap_or(0) + fragment.timecode_ms;
        let chunk = parser.chunk(fragment, &number, aws_edge::now_ms(), producer_ms);
        self.put_chunk(&session.stream, Bytes::from(chunk))
    }
}

/// An open PutMedia request.
struct PutMediaSession {
    stream: String,
    /// RELATIVE timecodes: the producer start time (ms) they count from.
    relative_to_ms: Option<u64>,
}

/// The access key id a SigV4-signed request was signed with.
fn access_key_of(headers: &http::HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let credential = auth.split("Credential=").nth(1)?;
    Some(credential.split('/').next()?.to_string())
}

/// An acknowledgement with these fields.
fn ack(
    event_type: AckEventType,
    fragment_timecode: Option<u64>,
    fragment_number: Option<String>,
    error_id: Option<u32>,
) -> Ack {
    Ack {
        event_type,
        fragment_timecode,
        fragment_number,
        error_id,
        error_code: None,
    }
}

/// Aborts a streaming response once everything sent before has reached the socket, so the
/// client receives exactly the bytes before the cut and then a broken connection.
async fn cut_connection(tx: &mpsc::Sender<Result<Frame<Bytes>, BodyError>>) {
    while tx.capacity() < tx.max_capacity() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = tx.send(Err("injected fault: connection cut".into())).await;
}

/// The KVS start bookkeeping of a chunk, if it carries any; an error if it is not media.
fn fragment_start(chunk: &[u8]) -> Result<Option<kvs_media::FragmentStart>, String> {
    let mut reader = FragmentReader::new();
    reader.push(chunk);
    reader.end_of_input();
    let mut start = None;
    loop {
        match reader.next_event() {
            Ok(Some(MediaEvent::FragmentStart(s))) if start.is_none() => start = Some(s),
            Ok(Some(_)) => {}
            Ok(None) => return Ok(start),
            Err(error) => return Err(error.to_string()),
        }
    }
}

fn capture_chunks(stream: &str, capture: &[u8]) -> Result<Vec<Bytes>, KvsError> {
    let capture = Bytes::copy_from_slice(capture);
    let ranges = split_chunks(&capture).map_err(|error| KvsError::BadMedia {
        stream: stream.to_string(),
        problem: error.to_string(),
    })?;
    Ok(ranges
        .into_iter()
        .map(|range| capture.slice(range))
        .collect())
}

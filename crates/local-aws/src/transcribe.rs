//! A local Amazon Transcribe Streaming: `POST /stream-transcription` (standard) and
//! `POST /call-analytics-stream-transcription` (Call Analytics), over HTTP/1.1 chunked or
//! h2c, full duplex, with AWS's event-stream framing: signed client messages wrapping
//! AudioEvent / ConfigurationEvent, unsigned TranscriptEvent / UtteranceEvent / CategoryEvent
//! and exception messages back. Results come from a [`Recognizer`]; every session is recorded
//! so tests can assert that not one sample was lost or duplicated.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_eventstream::frame::{read_message_from, write_message_to};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::http::{ApiError, Body, BodyError, Server, TlsIdentity, serve_with};
use crate::lock;
use crate::recognizer::{EnergyRecognizer, Recognizer, Segment};

/// How long a paced session may have been idle and still count its processing from when it
/// was last busy until: more than a timer's lateness, less than would let it bank idle time
/// and process a burst faster than its speed.
const PACE_SLACK: Duration = Duration::from_millis(20);

/// Largest event-stream message accepted from a client (AWS allows far less audio per event).
const MAX_MESSAGE_BYTES: u32 = 1 << 20;

/// Which API a session used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// StartStreamTranscription.
    Standard,
    /// StartCallAnalyticsStreamTranscription.
    CallAnalytics,
}

/// A category the local Call Analytics matches: an utterance of `participant_role` lasting at
/// least `min_seconds` raises a CategoryEvent named `name` (once per session).
#[derive(Debug, Clone, PartialEq)]
pub struct CategoryRule {
    /// Category name.
    pub name: String,
    /// `AGENT` or `CUSTOMER`.
    pub participant_role: String,
    /// Shortest matching utterance.
    pub min_seconds: f64,
}

/// How the local Transcribe behaves.
#[derive(Debug, Clone)]
pub struct TranscribeOptions {
    /// A stream with no audio for this long ends with BadRequestException (AWS: 15 s).
    pub audio_timeout: Duration,
    /// Call Analytics categories.
    pub categories: Vec<CategoryRule>,
    /// Keep every audio byte in the session records (for tests); off for long-running use.
    pub record_audio: bool,
    /// Concurrent streams allowed (the account's quota; AWS: 25 HTTP/2 streams per region
    /// by default); `None`: unlimited. A stream started beyond it is refused with HTTP 429
    /// LimitExceededException, as the API reference documents.
    pub max_sessions: Option<usize>,
    /// How fast sessions process audio, and when the service refuses streams.
    pub pace: Pace,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        Self {
            audio_timeout: Duration::from_secs(15),
            categories: Vec::new(),
            record_audio: true,
            max_sessions: None,
            pace: Pace::default(),
        }
    }
}

/// How the local Transcribe keeps time (`lca-kvs local --transcribe-speed`,
/// `--transcribe-unavailable-for`; the demo and the test harness take the same).
///
/// How fast Amazon Transcribe processes audio sent faster than real time is not documented.
/// The streaming guide asks clients to "ensure that your stream is as close to real-time as
/// possible" (Transcribing streaming audio, best practices), and AWS's Python streaming SDK
/// (amazon-transcribe-streaming-sdk) says the service processes audio chunks in real time.
/// `speed: Some(1.0)` plays that reading; `None` the most favourable one (results as fast as
/// audio arrives). Either way a session that has not yet processed what it received stops
/// reading its request body, so the client is held back by HTTP/2 flow control (RFC 9113
/// section 5.2), as a real server's would be; how large a window Transcribe grants is not
/// documented either (see `crate::http`). Over plain HTTP the SDK speaks HTTP/1.1 and only
/// TCP holds it back, once the sockets' buffers (megabytes) are full.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pace {
    /// Seconds of audio a session processes per second of time (1: real time); `None`: as
    /// fast as it comes.
    pub speed: Option<f64>,
    /// Every stream started within this long of the service's first request is refused with
    /// HTTP 429 LimitExceededException, as when the account's concurrent stream quota is in
    /// use (the API reference's documented answer): a capacity stall played from outside,
    /// over a call's first seconds.
    pub unavailable_for: Duration,
}

impl Pace {
    /// Checks the values a user gave: a speed must be a positive finite number.
    pub fn check(&self) -> Result<(), String> {
        match self.speed {
            Some(speed) if !(speed > 0.0 && speed.is_finite()) => Err(format!(
                "transcribe speed {speed}: must be a positive number (1 = real time)"
            )),
            _ => Ok(()),
        }
    }
}

/// A fault the next session suffers (one per session, in the order injected).
#[derive(Debug, Clone, PartialEq)]
pub enum TranscribeFault {
    /// After this many seconds of audio, an exception message ends the stream.
    ExceptionAfter {
        /// Seconds of audio received first.
        seconds: f64,
        /// `LimitExceededException`, `InternalFailureException`, `ServiceUnavailableException`,
        /// `BadRequestException`, `ConflictException`.
        exception: String,
    },
    /// After this many seconds of audio the session stops reading and answering, without an
    /// error and without closing the stream, until the client goes away: a service that
    /// hangs. (No AWS document describes this; it is the failure a watchdog exists for.)
    StopReadingAfter {
        /// Seconds of audio received first.
        seconds: f64,
    },
    /// The request is taken and never answered (no response, not even its headers) until
    /// the client gives up: a connection that black-holes. (No AWS document describes this;
    /// it is what a client's time limit on the answer exists for.)
    NoAnswer,
}

/// What a session received, for tests.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// The API used.
    pub mode: Mode,
    /// The session id answered (the client's, or a generated one).
    pub session_id: String,
    /// The request's `x-amzn-transcribe-*` headers, lower-case names.
    pub headers: BTreeMap<String, String>,
    /// The ConfigurationEvent's JSON, if one came.
    pub configuration: Option<Value>,
    /// Every audio byte received, in order (interleaved s16le), when recording is on.
    pub audio: Vec<u8>,
    /// Audio bytes received.
    pub audio_bytes: usize,
    /// AudioEvents received.
    pub audio_events: usize,
    /// The client ended the audio with an empty event (not cut off, not failed).
    pub ended_cleanly: bool,
    /// The exception that ended the session, if any.
    pub exception: Option<String>,
    /// The session stopped reading as [`TranscribeFault::StopReadingAfter`] made it.
    pub stopped_reading: bool,
    /// The request was never answered ([`TranscribeFault::NoAnswer`]).
    pub unanswered: bool,
}

type RecognizerFactory = dyn Fn(u32, usize) -> Box<dyn Recognizer> + Send + Sync;

struct Inner {
    options: TranscribeOptions,
    recognizer: Box<RecognizerFactory>,
    sessions: Mutex<Vec<Arc<Mutex<SessionRecord>>>>,
    faults: Mutex<VecDeque<TranscribeFault>>,
    counter: Mutex<u64>,
    /// Streams open now (for the concurrency quota).
    open: Arc<AtomicUsize>,
    /// Streams refused for the quota.
    refused: AtomicUsize,
    /// Streams of the account's other clients (see [`Transcribe::set_streams_elsewhere`]).
    elsewhere: AtomicUsize,
    /// When the service was first asked for a stream ([`Pace::unavailable_for`] counts from
    /// it).
    first_request: std::sync::OnceLock<Instant>,
}

/// Counts one open stream until dropped (the session's task ends).
struct OpenStream(Arc<AtomicUsize>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The local Transcribe Streaming service: a handle for tests (faults, records) and
/// [`Transcribe::serve`] for the SDK clients.
#[derive(Clone)]
pub struct Transcribe {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transcribe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcribe").finish_non_exhaustive()
    }
}

impl Transcribe {
    /// A local Transcribe with the deterministic [`EnergyRecognizer`].
    pub fn new(options: TranscribeOptions) -> Self {
        Self::with_recognizer(options, |rate, channels| {
            Box::new(EnergyRecognizer::new(rate, channels))
        })
    }

    /// A local Transcribe whose sessions use recognizers made by `factory(sample_rate, channels)`.
    pub fn with_recognizer(
        options: TranscribeOptions,
        factory: impl Fn(u32, usize) -> Box<dyn Recognizer> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                recognizer: Box::new(factory),
                sessions: Mutex::new(Vec::new()),
                faults: Mutex::new(VecDeque::new()),
                counter: Mutex::new(0),
                open: Arc::new(AtomicUsize::new(0)),
                refused: AtomicUsize::new(0),
                elsewhere: AtomicUsize::new(0),
                first_request: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Serves on `127.0.0.1:port` (0: any free port) over HTTP/1.1 and h2c.
    pub async fn serve(&self, port: u16) -> std::io::Result<Server> {
        self.serve_with(port, None).await
    }

    /// Serves over TLS (ALPN h2, as Transcribe's real endpoints) with `identity`, or plain
    /// HTTP when `None`.
    pub async fn serve_with(
        &self,
        port: u16,
        identity: Option<&TlsIdentity>,
    ) -> std::io::Result<Server> {
        let transcribe = self.clone();
        serve_with(port, identity, move |request| {
            let transcribe = transcribe.clone();
            async move { transcribe.handle(request).await }
        })
        .await
    }

    /// Queues a fault for the next session.
    pub fn inject(&self, fault: TranscribeFault) {
        lock(&self.inner.faults).push_back(fault);
    }

    /// Says that `streams` of the concurrency quota (`max_sessions`) are in use by the
    /// account's other clients (other calls, other applications): they count against it as
    /// this service's own streams do, until set again.
    pub fn set_streams_elsewhere(&self, streams: usize) {
        self.inner.elsewhere.store(streams, Ordering::SeqCst);
    }

    /// Streams refused so far because the concurrency quota was in use.
    pub fn refused(&self) -> usize {
        self.inner.refused.load(Ordering::SeqCst)
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// Snapshots of every session so far, in the order they started.
    pub fn sessions(&self) -> Vec<SessionRecord> {
        lock(&self.inner.sessions)
            .iter()
            .map(|s| lock(s).clone())
            .collect()
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let mode = match (request.method(), request.uri().path()) {
            (&Method::POST, "/stream-transcription") => Mode::Standard,
            (&Method::POST, "/call-analytics-stream-transcription") => Mode::CallAnalytics,
            (_, path) => {
                return ApiError::new(
                    StatusCode::NOT_FOUND,
                    "UnknownOperationException",
                    format!("no Transcribe Streaming operation at {path}"),
                )
                .into_response();
            }
        };
        let settings = match Settings::from_headers(mode, request.headers()) {
            Ok(settings) => settings,
            Err(error) => return error.into_response(),
        };
        // The concurrent stream quota (StartStreamTranscription API reference,
        // LimitExceededException, HTTP 429: "Your client has exceeded one of the Amazon
        // Transcribe limits, typically the concurrent stream service quota").
        let open = self.inner.open.fetch_add(1, Ordering::SeqCst)
            + self.inner.elsewhere.load(Ordering::SeqCst);
        let stream = OpenStream(self.inner.open.clone());
        let first_request = *self.inner.first_request.get_or_init(Instant::now);
        let unavailable = first_request.elapsed() < self.inner.options.pace.unavailable_for;
        if unavailable
            || self
                .inner
                .options
                .max_sessions
                .is_some_and(|max| open >= max)
        {
            drop(stream);
            self.inner.refused.fetch_add(1, Ordering::SeqCst);
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "LimitExceededException",
                "Your client has exceeded one of the Amazon Transcribe limits, typically the \
                 concurrent stream service quota. Reduce your number of concurrent streams and \
                 try your request again using an exponential backoff strategy.",
            )
            .into_response();
        }
        let session_id = settings.session_id.clone().unwrap_or_else(|| {
            let mut counter = lock(&self.inner.counter);
            *counter += 1;
            format!("00000000-0000-4000-8000-{:012x}", *counter)
        });
        let record = Arc::new(Mutex::new(SessionRecord {
            mode,
            session_id: session_id.clone(),
            headers: settings.raw.clone(),
            configuration: None,
            audio: Vec::new(),
            audio_bytes: 0,
            audio_events: 0,
            ended_cleanly: false,
            exception: None,
            stopped_reading: false,
            unanswered: false,
        }));
        lock(&self.inner.sessions).push(record.clone());
        let fault = lock(&self.inner.faults).pop_front();
        if fault == Some(TranscribeFault::NoAnswer) {
            lock(&record).unanswered = true;
            // Held (and counted among the open streams) until the client closes the
            // connection or the stream, which drops this future.
            let _open = stream;
            return std::future::pending().await;
        }
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BodyError>>(16);
        let session = Session {
            mode,
            channels: settings.channels,
            sample_rate: settings.sample_rate,
            recognizer: (self.inner.recognizer)(settings.sample_rate, settings.channels),
            record,
            fault,
            options: self.inner.options.clone(),
            roles: Vec::new(),
            matched: Vec::new(),
            processed_until: None,
            tx,
            _open: stream,
        };
        tokio::spawn(session.run(request.into_body()));
        let mut response = Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/vnd.amazon.eventstream")
            .header("x-amzn-request-id", session_id.clone())
            .header("x-amzn-transcribe-session-id", session_id)
            .header(
                "x-amzn-transcribe-sample-rate",
                settings.sample_rate.to_string(),
            )
            .header("x-amzn-transcribe-media-encoding", "pcm");
        if let Some(language) = settings.raw.get("x-amzn-transcribe-language-code") {
            response = response.header("x-amzn-transcribe-language-code", language);
        }
        if mode == Mode::Standard && settings.channels == 2 {
            response = response
                .header("x-amzn-transcribe-enable-channel-identification", "true")
                .header("x-amzn-transcribe-number-of-channels", "2");
        }
        response
            .body(StreamBody::new(ReceiverStream::new(rx)).boxed())
            .expect("static response parts are valid")
    }
}

/// The request's settings, validated the way Transcribe does before streaming starts.
struct Settings {
    raw: BTreeMap<String, String>,
    sample_rate: u32,
    channels: usize,
    session_id: Option<String>,
}

impl Settings {
    fn from_headers(mode: Mode, headers: &HeaderMap) -> Result<Self, ApiError> {
        let raw: BTreeMap<String, String> = headers
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-amzn-transcribe-"))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
            })
            .collect();
        let get = |name: &str| {
            raw.get(&format!("x-amzn-transcribe-{name}"))
                .map(String::as_str)
        };
        let bad = |message: String| {
            ApiError::new(StatusCode::BAD_REQUEST, "BadRequestException", message)
        };
        let flag = |name: &str| get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"));

        let sample_rate: u32 = get("sample-rate")
            .ok_or_else(|| bad("x-amzn-transcribe-sample-rate is required".into()))?
            .parse()
            .map_err(|_| bad("x-amzn-transcribe-sample-rate must be a whole number".into()))?;
        if !(8000..=48000).contains(&sample_rate) {
            return Err(bad(format!(
                "sample rate {sample_rate} is outside 8000-48000 Hz"
            )));
        }
        match get("media-encoding") {
            Some("pcm") => {}
            Some(other @ ("ogg-opus" | "flac")) => {
                return Err(bad(format!(
                    "this local Transcribe decodes pcm only, not {other}"
                )));
            }
            other => {
                return Err(bad(format!(
                    "media encoding {other:?} is not pcm, ogg-opus or flac"
                )));
            }
        }
        let identify = flag("identify-language") || flag("identify-multiple-languages");
        let language = get("language-code");
        match (language, identify) {
            (Some(_), true) => {
                return Err(bad(
                    "LanguageCode cannot be combined with language identification".into(),
                ));
            }
            (None, false) => {
                return Err(bad(
                    "a language code or language identification is required".into(),
                ));
            }
            (Some(code), false) if !is_language_code(code) => {
                return Err(bad(format!("{code:?} is not a language code")));
            }
            _ => {}
        }
        if identify && get("language-options").is_none_or(|o| o.split(',').count() < 2) {
            return Err(bad(
                "language identification needs at least two LanguageOptions".into(),
            ));
        }
        // StartStreamTranscription API reference: VocabularyName "is not intended for use
        // with the IdentifyLanguage parameter ... use the VocabularyNames parameter instead";
        // VocabularyNames "is only intended for use with the IdentifyLanguage parameter". The
        // same for vocabulary filters (VocabularyFilterName, VocabularyFilterNames; both
        // streaming APIs).
        for ((one, one_header), (list, list_header)) in [
            (
                ("VocabularyName", "vocabulary-name"),
                ("VocabularyNames", "vocabulary-names"),
            ),
            (
                ("VocabularyFilterName", "vocabulary-filter-name"),
                ("VocabularyFilterNames", "vocabulary-filter-names"),
            ),
        ] {
            if identify && get(one_header).is_some() {
                return Err(bad(format!(
                    "with language identification, use {list} instead of {one}"
                )));
            }
            if !identify && get(list_header).is_some() {
                return Err(bad(format!(
                    "{list} is only for use with language identification"
                )));
            }
        }
        // PreferredLanguage: "You can only use this parameter if you've included
        // IdentifyLanguage and LanguageOptions" (the strictest reading of the references).
        if get("preferred-language").is_some() && !flag("identify-language") {
            return Err(bad(
                "PreferredLanguage needs IdentifyLanguage and LanguageOptions".into(),
            ));
        }
        if identify && get("language-model-name").is_some() {
            return Err(bad(
                "a custom language model cannot be used with language identification".into(),
            ));
        }
        // Transcribe developer guide, "Redacting or identifying PII in a real-time stream":
        // "available with these English dialects: Australian (en-AU), British (en-GB), US
        // (en-US) and Spanish US dialect (es-US)" (a later version of the page lists more
        // languages; these four are in every version, and are what LCA redacts).
        if (get("content-redaction-type").is_some() || get("content-identification-type").is_some())
            && language.is_some_and(|l| !["en-US", "en-AU", "en-GB", "es-US"].contains(&l))
        {
            return Err(bad(
                "PII redaction and identification are available for en-US, en-AU, en-GB and es-US only".into(),
            ));
        }
        // VocabularyFilterMethod: "Valid Values: remove | mask | tag" (both streaming APIs).
        if let Some(method) = get("vocabulary-filter-method")
            && !["remove", "mask", "tag"].contains(&method)
        {
            return Err(bad(format!(
                "VocabularyFilterMethod {method:?} is not remove, mask or tag"
            )));
        }
        // Names: "Minimum length of 1. Maximum length of 200. Pattern: ^[0-9a-zA-Z._-]+"
        // (CreateVocabulary, CreateVocabularyFilter, CreateLanguageModel API references); the
        // lists (one per language) "Maximum length of 3000"; PiiEntityTypes "Maximum length of
        // 300. Pattern: ^[A-Z_, ]+".
        let name_ok = |name: &str| {
            (1..=200).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        for header in [
            "vocabulary-name",
            "vocabulary-filter-name",
            "language-model-name",
        ] {
            if let Some(name) = get(header)
                && !name_ok(name)
            {
                return Err(bad(format!("{header} {name:?} is not a valid name")));
            }
        }
        for header in ["vocabulary-names", "vocabulary-filter-names"] {
            if let Some(names) = get(header)
                && (names.len() > 3000 || !names.split(',').all(name_ok))
            {
                return Err(bad(format!(
                    "{header} {names:?} is not a list of valid names"
                )));
            }
        }
        if let Some(types) = get("pii-entity-types")
            && (types.len() > 300
                || !types
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || matches!(c, '_' | ',' | ' ')))
        {
            return Err(bad(format!("PiiEntityTypes {types:?} is not valid")));
        }
        if get("pii-entity-types").is_some()
            && get("content-redaction-type").is_none()
            && get("content-identification-type").is_none()
        {
            return Err(bad(
                "PiiEntityTypes needs ContentRedactionType or ContentIdentificationType".into(),
            ));
        }
        let channels = match mode {
            Mode::CallAnalytics => 2,
            Mode::Standard => {
                let identification = flag("enable-channel-identification");
                let count: usize = match get("number-of-channels") {
                    Some(n) => n.parse().map_err(|_| {
                        bad("x-amzn-transcribe-number-of-channels must be a whole number".into())
                    })?,
                    None => 1,
                };
                match (identification, count) {
                    (true, 2) => 2,
                    (false, 1) => 1,
                    (true, n) => {
                        return Err(bad(format!(
                            "channel identification needs 2 channels, not {n}"
                        )));
                    }
                    (false, n) => {
                        return Err(bad(format!(
                            "{n} channels need channel identification enabled"
                        )));
                    }
                }
            }
        };
        let session_id = get("session-id").map(str::to_string);
        Ok(Self {
            raw,
            sample_rate,
            channels,
            session_id,
        })
    }
}

fn is_language_code(code: &str) -> bool {
    let bytes = code.as_bytes();
    bytes.len() == 5
        && bytes[..2].iter().all(u8::is_ascii_lowercase)
        && bytes[2] == b'-'
        && bytes[3..].iter().all(u8::is_ascii_uppercase)
}

struct Session {
    mode: Mode,
    channels: usize,
    sample_rate: u32,
    recognizer: Box<dyn Recognizer>,
    record: Arc<Mutex<SessionRecord>>,
    fault: Option<TranscribeFault>,
    options: TranscribeOptions,
    roles: Vec<String>,
    matched: Vec<String>,
    /// With a [`Pace::speed`]: when the audio received so far will have been processed.
    processed_until: Option<Instant>,
    tx: mpsc::Sender<Result<Frame<Bytes>, BodyError>>,
    /// Holds the stream's place in the quota until the session ends.
    _open: OpenStream,
}

/// Why a session stopped reading.
enum End {
    /// The client sent the empty end-of-audio event.
    Clean,
    /// An exception was sent.
    Exception,
    /// The session stopped reading and answering (an injected fault).
    Stuck,
    /// The client or connection went away.
    Gone,
}

impl Session {
    async fn run(mut self, mut body: Incoming) {
        let mut buffer = BytesMut::new();
        let end = loop {
            let frame = match tokio::time::timeout(self.options.audio_timeout, body.frame()).await {
                Err(_) => {
                    self.exception(
                        "BadRequestException",
                        &format!(
                            "Your request timed out because no new audio was received for {} seconds.",
                            self.options.audio_timeout.as_secs()
                        ),
                    )
                    .await;
                    break End::Exception;
                }
                Ok(None) | Ok(Some(Err(_))) => break End::Gone,
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            buffer.extend_from_slice(&data);
            match self.drain(&mut buffer).await {
                Ok(None) => {}
                Ok(Some(end)) => break end,
                Err(message) => {
                    self.exception("BadRequestException", &message).await;
                    break End::Exception;
                }
            }
        };
        match end {
            End::Clean => {
                let segments = self.recognizer.finish();
                self.send_segments(segments).await;
                lock(&self.record).ended_cleanly = true;
            }
            End::Exception => {
                // Keep reading (and discarding) what the client still sends, so the connection
                // is not reset under the exception message before the client has read it.
                let timeout = self.options.audio_timeout;
                tokio::spawn(async move {
                    while let Ok(Some(Ok(_))) = tokio::time::timeout(timeout, body.frame()).await {}
                });
            }
            End::Stuck => {
                lock(&self.record).stopped_reading = true;
                // Neither reads nor answers, holding the request body unread (its flow-control
                // window fills and the client's sending stops), until the client goes away.
                self.tx.closed().await;
                drop(body);
            }
            End::Gone => {}
        }
        // Dropping the sender (with `self`) ends the response.
    }

    /// Handles every complete message in `buffer`.
    async fn drain(&mut self, buffer: &mut BytesMut) -> Result<Option<End>, String> {
        loop {
            // Event-stream prelude: total length (4 bytes, big-endian), headers length, CRC.
            if buffer.len() < 4 {
                return Ok(None);
            }
            let total = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
            if total > MAX_MESSAGE_BYTES {
                return Err(format!(
                    "event-stream message of {total} bytes is too large"
                ));
            }
            if buffer.len() < total as usize {
                return Ok(None);
            }
            let outer = read_message_from(buffer.split_to(total as usize).freeze())
                .map_err(|error| format!("malformed event-stream message: {error}"))?;
            if outer.payload().is_empty() {
                return Ok(Some(End::Clean));
            }
            let inner = read_message_from(outer.payload().clone())
                .map_err(|e| format!("malformed event inside a signed message: {e}"))?;
            match header_str(&inner, ":event-type") {
                Some("AudioEvent") => {
                    if self.mode == Mode::CallAnalytics && self.roles.is_empty() {
                        return Err(
                            "a ConfigurationEvent must come before audio in Call Analytics".into(),
                        );
                    }
                    if let Some(end) = self.audio(inner.payload().clone()).await {
                        return Ok(Some(end));
                    }
                }
                Some("ConfigurationEvent") => {
                    let configuration: Value = serde_json::from_slice(inner.payload())
                        .map_err(|e| format!("ConfigurationEvent is not JSON: {e}"))?;
                    self.roles = vec!["CUSTOMER".to_string(), "AGENT".to_string()];
                    if let Some(definitions) = configuration
                        .get("ChannelDefinitions")
                        .and_then(Value::as_array)
                    {
                        for definition in definitions {
                            let id = definition
                                .get("ChannelId")
                                .and_then(Value::as_u64)
                                .unwrap_or(0) as usize;
                            let role = definition.get("ParticipantRole").and_then(Value::as_str);
                            if let (Some(slot), Some(role)) = (self.roles.get_mut(id), role) {
                                *slot = role.to_string();
                            }
                        }
                    }
                    lock(&self.record).configuration = Some(configuration);
                }
                other => return Err(format!("unexpected event type {other:?}")),
            }
        }
    }

    /// Takes an AudioEvent's PCM; returns an end if an injected fault fires.
    async fn audio(&mut self, pcm: Bytes) -> Option<End> {
        let bytes_per_second = f64::from(self.sample_rate) * self.channels as f64 * 2.0;
        let received = {
            let mut record = lock(&self.record);
            if self.options.record_audio {
                record.audio.extend_from_slice(&pcm);
            }
            record.audio_bytes += pcm.len();
            record.audio_events += 1;
            record.audio_bytes
        };
        let received_s = received as f64 / bytes_per_second;
        if let Some(TranscribeFault::StopReadingAfter { seconds }) = &self.fault
            && received_s >= *seconds
        {
            return Some(End::Stuck);
        }
        if let Some(speed) = self.options.pace.speed {
            // A processor that works at `speed` is busy until it has processed what came
            // before, then takes this audio's length over `speed`. Meanwhile the body is not
            // read: the stream's flow-control window fills and the client's sending waits.
            // Its clock runs from when it was last busy until (not from when the timer woke
            // it, which is later by the timer's granularity, and would make it slower than
            // `speed`), unless it has been idle for longer than PACE_SLACK.
            // (A speed that is not a positive number, which `Pace::check` refuses, paces nothing.)
            let seconds = pcm.len() as f64 / bytes_per_second / speed;
            if let Ok(busy) = Duration::try_from_secs_f64(seconds) {
                let now = Instant::now();
                let idle_floor = now.checked_sub(PACE_SLACK).unwrap_or(now);
                let until = self
                    .processed_until
                    .map_or(now, |until| until.max(idle_floor))
                    + busy;
                self.processed_until = Some(until);
                tokio::time::sleep_until(until).await;
            }
        }
        let segments = self.recognizer.accept(&pcm);
        self.send_segments(segments).await;
        if let Some(TranscribeFault::ExceptionAfter { seconds, exception }) = &self.fault
            && received_s >= *seconds
        {
            let exception = exception.clone();
            self.exception(&exception, "injected fault").await;
            return Some(End::Exception);
        }
        None
    }

    async fn send_segments(&mut self, segments: Vec<Segment>) {
        for segment in segments {
            let (event_type, payload) = match self.mode {
                Mode::Standard => ("TranscriptEvent", self.transcript_event(&segment)),
                Mode::CallAnalytics => ("UtteranceEvent", self.utterance_event(&segment)),
            };
            self.send_event(event_type, &payload).await;
            if self.mode == Mode::CallAnalytics && !segment.is_partial {
                for category in self.categories_matched_by(&segment) {
                    self.send_event("CategoryEvent", &category).await;
                }
            }
        }
    }

    fn transcript_event(&self, segment: &Segment) -> Value {
        let mut result = json!({
            "ResultId": segment.result_id,
            "StartTime": segment.start_s,
            "EndTime": segment.end_s,
            "IsPartial": segment.is_partial,
            "Alternatives": [{
                "Transcript": segment.text,
                "Items": segment.words.iter().map(|word| json!({
                    "StartTime": word.start_s,
                    "EndTime": word.end_s,
                    "Type": "pronunciation",
                    "Content": word.text,
                    "VocabularyFilterMatch": false,
                })).collect::<Vec<_>>(),
            }],
        });
        if self.channels == 2 {
            result["ChannelId"] = json!(format!("ch_{}", segment.channel));
        }
        json!({ "Transcript": { "Results": [result] } })
    }

    fn role(&self, channel: usize) -> String {
        self.roles
            .get(channel)
            .cloned()
            .unwrap_or_else(|| if channel == 0 { "CUSTOMER" } else { "AGENT" }.to_string())
    }

    fn utterance_event(&self, segment: &Segment) -> Value {
        json!({
            "UtteranceId": segment.result_id,
            "IsPartial": segment.is_partial,
            "ParticipantRole": self.role(segment.channel),
            "BeginOffsetMillis": (segment.start_s * 1000.0).round() as i64,
            "EndOffsetMillis": (segment.end_s * 1000.0).round() as i64,
            "Transcript": segment.text,
            "Items": segment.words.iter().map(|word| json!({
                "BeginOffsetMillis": (word.start_s * 1000.0).round() as i64,
                "EndOffsetMillis": (word.end_s * 1000.0).round() as i64,
                "Type": "pronunciation",
                "Content": word.text,
                "VocabularyFilterMatch": false,
            })).collect::<Vec<_>>(),
            "Entities": [],
            "Sentiment": "NEUTRAL",
            "IssuesDetected": [],
        })
    }

    fn categories_matched_by(&mut self, segment: &Segment) -> Vec<Value> {
        let role = self.role(segment.channel);
        let mut events = Vec::new();
        for rule in &self.options.categories {
            if rule.participant_role == role
                && segment.end_s - segment.start_s >= rule.min_seconds
                && !self.matched.contains(&rule.name)
            {
                self.matched.push(rule.name.clone());
                events.push(json!({
                    "MatchedCategories": [rule.name],
                    "MatchedDetails": { rule.name.clone(): { "TimestampRanges": [{
                        "BeginOffsetMillis": (segment.start_s * 1000.0).round() as i64,
                        "EndOffsetMillis": (segment.end_s * 1000.0).round() as i64,
                    }]}},
                }));
            }
        }
        events
    }

    async fn send_event(&mut self, event_type: &str, payload: &Value) {
        let message = Message::new(Bytes::from(payload.to_string()))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("event".into()),
            ))
            .add_header(Header::new(
                ":event-type",
                HeaderValue::String(event_type.to_string().into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ));
        self.send_message(&message).await;
    }

    async fn exception(&mut self, exception: &str, text: &str) {
        lock(&self.record).exception = Some(exception.to_string());
        let message = Message::new(Bytes::from(json!({ "Message": text }).to_string()))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("exception".into()),
            ))
            .add_header(Header::new(
                ":exception-type",
                HeaderValue::String(exception.to_string().into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ));
        self.send_message(&message).await;
    }

    async fn send_message(&mut self, message: &Message) {
        let mut out = Vec::new();
        if write_message_to(message, &mut out).is_ok() {
            let _ = self.tx.send(Ok(Frame::data(Bytes::from(out)))).await;
        }
    }
}

fn header_str<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

//! The functions' CloudWatch metrics, written as CloudWatch Embedded Metric Format (EMF) log
//! lines: CloudWatch Logs turns them into metrics without an API call from the function ("You
//! do not need to install the CloudWatch agent to publish embedded metric format logs from
//! Lambda functions. Lambda automatically sends everything that your function writes to
//! standard output (STDOUT) to a CloudWatch Logs log group, and CloudWatch Logs extracts
//! metrics from any log events that follow the embedded metric format specification",
//! <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Lambda.html>).
//!
//! [`Metric::ALL`] is the one list of what the functions emit: the template's alarms and
//! dashboard name only metrics from it (a test checks), and [`validate`] checks a line
//! against the specification
//! (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>).
//!
//! Dimensions are few on purpose (each distinct dimension value is a metric CloudWatch bills
//! for): every metric is emitted without dimensions, and the few that have a bounded
//! breakdown (an outcome, a failure reason, a KVS error id, StartLCA's answer) also with that
//! one dimension. The call id is a plain member of the line, for CloudWatch Logs Insights,
//! not a dimension. Nothing in a line comes from the call's audio, transcript or phone
//! numbers.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// The finest level any of our binaries logs at, whatever `RUST_LOG` asks (their logging
/// adds it as a filter of its own): at TRACE, the Lambda runtime writes each raw event (a
/// contact-flow event holds the caller's phone number), the AWS SDK every request and
/// response (LCA events with transcript text, call data) and the signing of Transcribe's
/// event stream its payloads (the call's audio). Customer data never reaches a log.
pub const FINEST_LOG_LEVEL: tracing::level_filters::LevelFilter =
    tracing::level_filters::LevelFilter::DEBUG;

/// The default namespace of the metrics (`METRICS_NAMESPACE` sets another; the template
/// gives each stack its own, `LCA/ConnectKVS/<stack name>`).
pub const NAMESPACE: &str = "LCA/ConnectKVS";

/// Checks a namespace against CloudWatch's rules, reading the documents at their strictest:
/// the concepts page allows "alphanumeric characters (0-9A-Za-z), period (.), hyphen (-),
/// underscore (_), forward slash (/), hash (#), colon (:), and the space character"; the
/// PutMetricData reference allows 1 to 255 ASCII characters without control characters and
/// says not to begin one with `AWS/` (AWS's own namespaces). The error says what is wrong.
pub fn check_namespace(namespace: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-/#: ".contains(c);
    if namespace.trim().is_empty() || namespace.len() > 255 {
        Err("a namespace is 1 to 255 characters, not all blank".to_string())
    } else if let Some(c) = namespace.chars().find(|c| !allowed(*c)) {
        Err(format!(
            "{c:?} is not allowed in a CloudWatch namespace (letters, digits, space and . - _ / # :)"
        ))
    } else if namespace.starts_with("AWS/") {
        Err("namespaces beginning with AWS/ are AWS's own".to_string())
    } else {
        Ok(())
    }
}

/// Most values one metric may carry in one line ("Numeric array metric targets MUST NOT have
/// more than 100 members").
pub const MAX_VALUES: usize = 100;

/// Largest line accepted: the specification has said 256 KB and, later, 1 MB; the smaller
/// holds under both readings.
pub const MAX_LINE_BYTES: usize = 256 * 1024;

/// A CloudWatch unit used by these metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    /// A number of things.
    Count,
    /// Seconds.
    Seconds,
    /// Milliseconds.
    Milliseconds,
    /// Bytes.
    Bytes,
}

impl Unit {
    /// The unit's name as CloudWatch spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Seconds => "Seconds",
            Self::Milliseconds => "Milliseconds",
            Self::Bytes => "Bytes",
        }
    }
}

/// A dimension some metrics are also broken down by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dimension {
    /// What a transcriber invocation did (ENDED, CONTINUED, FAILED, DUPLICATE, ...).
    Outcome,
    /// Why a call or an invocation failed ([`FailureReason`]).
    Reason,
    /// The id of a KVS GetMedia error chunk (4500, 5000, ...).
    ErrorId,
    /// StartLCA's answer: STARTED or the error code it answered.
    Answer,
}

impl Dimension {
    /// Every dimension.
    pub const ALL: [Dimension; 4] = [Self::Outcome, Self::Reason, Self::ErrorId, Self::Answer];

    /// The dimension's name.
    pub fn key(self) -> &'static str {
        match self {
            Self::Outcome => "Outcome",
            Self::Reason => "Reason",
            Self::ErrorId => "ErrorId",
            Self::Answer => "Answer",
        }
    }
}

/// Why a call or an invocation failed: a bounded set, so that it can be a dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureReason {
    /// KVS answered with an error chunk that retrying does not fix (KMS key, fragment gone).
    KvsStream,
    /// Reading KVS failed otherwise (requests failing, the stream unreadable).
    KvsRead,
    /// Transcribe had no capacity for the stream (the account's concurrent stream quota).
    TranscribeCapacity,
    /// A Transcribe stream stopped taking audio, or did not finish after it, without an
    /// error (the watchdog, `TRANSCRIBE_STUCK_TIMEOUT`).
    TranscribeStuck,
    /// Transcribe refused or broke the stream otherwise.
    Transcribe,
    /// LCA events could not be put on the Kinesis data stream.
    Kinesis,
    /// The recording could not be written to S3.
    Recording,
    /// The call's lease table (DynamoDB) failed.
    Lease,
    /// The configured lambda hook failed.
    Hook,
    /// The next invocation could not be started.
    HandOver,
    /// Every attempt of the invocation was stopped by Lambda (timeouts, out of memory,
    /// crashes) without finishing the call.
    Stopped,
    /// The event could not be used (malformed, or a contact this function does not take).
    Event,
}

impl FailureReason {
    /// The reason's name, as the `Reason` dimension carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KvsStream => "KvsStream",
            Self::KvsRead => "KvsRead",
            Self::TranscribeCapacity => "TranscribeCapacity",
            Self::TranscribeStuck => "TranscribeStuck",
            Self::Transcribe => "Transcribe",
            Self::Kinesis => "Kinesis",
            Self::Recording => "Recording",
            Self::Lease => "Lease",
            Self::Hook => "Hook",
            Self::HandOver => "HandOver",
            Self::Stopped => "Stopped",
            Self::Event => "Event",
        }
    }
}

/// A metric the functions emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Transcriber invocations, also by [`Dimension::Outcome`].
    Invocations,
    /// Calls whose START this invocation published.
    CallsStarted,
    /// Calls that ended normally (the stream ended or went idle; END published).
    CallsEnded,
    /// Calls given up after their last attempt failed, also by [`Dimension::Reason`]: END
    /// is published and the transcript stops at the failure.
    CallsFailed,
    /// Calls ended at the maximum call length (`MAX_CALL_DURATION`): END is published and
    /// the recording written, but the rest of the call is not transcribed.
    CallsCut,
    /// Invocations that failed (Lambda retries them), also by [`Dimension::Reason`].
    InvocationsFailed,
    /// Call audio transcribed, in seconds of call.
    AudioSeconds,
    /// Per final segment: from the end of its speech on the stream (producer time) to
    /// Kinesis's acknowledgement of the segment. What a user of LCA waits for.
    TranscriptLag,
    /// How far behind the newest data on the stream the reader was (KVS's
    /// AWS_KINESISVIDEO_MILLIS_BEHIND_NOW), the largest per invocation.
    KvsBehindLive,
    /// How far the audio given to Transcribe is behind the call's live edge (the stream's
    /// newest data, moving on in real time), on each metrics line of a running call (at
    /// least once a minute): what the transcript on screen is behind the call, a final
    /// following its audio by its segment's length plus `TranscriptLag`. Grows while
    /// Transcribe refuses the call's stream, or processes a backlog no faster than real time.
    TranscriptBehindLive,
    /// Transcribe streams opened again after the first in an invocation.
    TranscribeReconnects,
    /// Time spent waiting for Transcribe to accept a stream it refused (its quota).
    TranscribeCapacityWait,
    /// LCA events put on the Kinesis data stream.
    EventsPublished,
    /// Kinesis requests retried (throttling, service errors).
    KinesisRetries,
    /// Size of a call's recording, when the call ends.
    RecordingBytes,
    /// KVS error chunks that failed an invocation, also by [`Dimension::ErrorId`].
    KvsErrors,
    /// StartLCA's answers to the contact flow, also by [`Dimension::Answer`].
    StartLcaAnswers,
    /// Contacts StartLCA refused for their contact attributes (`BAD_ATTRIBUTE`,
    /// `ATTRIBUTE_NOT_ALLOWED`): a flow sets a per-contact setting the stack refuses, so those
    /// calls are not transcribed until the flow or the stack is fixed.
    ContactAttributesRefused,
    /// Post-call analytics jobs started: one Transcribe Call Analytics job per call, on its
    /// recording, when the call ends.
    PostCallAnalyticsJobs,
    /// Calls left without post-call analytics: Transcribe refused the job, or the call is
    /// longer than a job takes (4 hours). The transcript and the recording are complete.
    PostCallAnalyticsMissed,
    /// Connect contact events the contact-event processor handled, also by
    /// [`Dimension::Outcome`]: UPDATED (the agent published), IGNORED, UNKNOWN_CALL (no call
    /// being transcribed), FAILED (Lambda retries it).
    ContactEvents,
    /// Calls the sweep found with nobody looking after them and delivered again, also by
    /// [`Dimension::Reason`]: HandOverLost, RetryLost, HolderStopped (an event Lambda lost,
    /// or a last attempt stopped with no retry to follow).
    CallsRescued,
    /// Calls a rescue delivery gave up: every attempt had been used (stopped by Lambda) or
    /// the rescued attempt failed for the last time. Each one is a call whose transcript
    /// stops short.
    RescuedCallsGivenUp,
}

impl Metric {
    /// Every metric, in a stable order.
    pub const ALL: [Metric; 23] = [
        Self::Invocations,
        Self::CallsStarted,
        Self::CallsEnded,
        Self::CallsFailed,
        Self::CallsCut,
        Self::InvocationsFailed,
        Self::AudioSeconds,
        Self::TranscriptLag,
        Self::KvsBehindLive,
        Self::TranscriptBehindLive,
        Self::TranscribeReconnects,
        Self::TranscribeCapacityWait,
        Self::EventsPublished,
        Self::KinesisRetries,
        Self::RecordingBytes,
        Self::KvsErrors,
        Self::StartLcaAnswers,
        Self::ContactAttributesRefused,
        Self::PostCallAnalyticsJobs,
        Self::PostCallAnalyticsMissed,
        Self::ContactEvents,
        Self::CallsRescued,
        Self::RescuedCallsGivenUp,
    ];

    /// The metric's name in CloudWatch.
    pub fn name(self) -> &'static str {
        match self {
            Self::Invocations => "Invocations",
            Self::CallsStarted => "CallsStarted",
            Self::CallsEnded => "CallsEnded",
            Self::CallsFailed => "CallsFailed",
            Self::CallsCut => "CallsCut",
            Self::InvocationsFailed => "InvocationsFailed",
            Self::AudioSeconds => "AudioSeconds",
            Self::TranscriptLag => "TranscriptLag",
            Self::KvsBehindLive => "KvsBehindLive",
            Self::TranscriptBehindLive => "TranscriptBehindLive",
            Self::TranscribeReconnects => "TranscribeReconnects",
            Self::TranscribeCapacityWait => "TranscribeCapacityWait",
            Self::EventsPublished => "EventsPublished",
            Self::KinesisRetries => "KinesisRetries",
            Self::RecordingBytes => "RecordingBytes",
            Self::KvsErrors => "KvsErrors",
            Self::StartLcaAnswers => "StartLcaAnswers",
            Self::ContactAttributesRefused => "ContactAttributesRefused",
            Self::PostCallAnalyticsJobs => "PostCallAnalyticsJobs",
            Self::PostCallAnalyticsMissed => "PostCallAnalyticsMissed",
            Self::ContactEvents => "ContactEvents",
            Self::CallsRescued => "CallsRescued",
            Self::RescuedCallsGivenUp => "RescuedCallsGivenUp",
        }
    }

    /// Its unit.
    pub fn unit(self) -> Unit {
        match self {
            Self::AudioSeconds => Unit::Seconds,
            Self::TranscriptLag
            | Self::KvsBehindLive
            | Self::TranscriptBehindLive
            | Self::TranscribeCapacityWait => Unit::Milliseconds,
            Self::RecordingBytes => Unit::Bytes,
            _ => Unit::Count,
        }
    }

    /// The dimension it is also emitted by, if any.
    pub fn dimension(self) -> Option<Dimension> {
        match self {
            Self::Invocations | Self::ContactEvents => Some(Dimension::Outcome),
            Self::CallsFailed | Self::InvocationsFailed | Self::CallsRescued => {
                Some(Dimension::Reason)
            }
            Self::KvsErrors => Some(Dimension::ErrorId),
            Self::StartLcaAnswers => Some(Dimension::Answer),
            _ => None,
        }
    }

    /// The metric of this name.
    pub fn from_name(name: &str) -> Option<Metric> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// One EMF line's worth of metric values, dimension values and plain members.
#[derive(Debug, Clone, PartialEq)]
pub struct EmfRecord {
    namespace: String,
    timestamp_ms: u64,
    values: BTreeMap<Metric, Vec<f64>>,
    dimensions: BTreeMap<Dimension, String>,
    members: Map<String, Value>,
}

impl EmfRecord {
    /// An empty record for metrics at `timestamp_ms` (ms since the Unix epoch), in
    /// [`NAMESPACE`].
    pub fn new(timestamp_ms: u64) -> Self {
        Self {
            namespace: NAMESPACE.to_string(),
            timestamp_ms,
            values: BTreeMap::new(),
            dimensions: BTreeMap::new(),
            members: Map::new(),
        }
    }

    /// Puts the record's metrics in `namespace` (checked by the caller, see
    /// [`check_namespace`]).
    pub fn in_namespace(&mut self, namespace: &str) -> &mut Self {
        self.namespace = namespace.to_string();
        self
    }

    /// Adds one value of `metric` (a metric given several values carries them all).
    /// Non-finite values are not numbers in JSON and are left out.
    pub fn add(&mut self, metric: Metric, value: f64) -> &mut Self {
        if value.is_finite() {
            self.values.entry(metric).or_default().push(value);
        }
        self
    }

    /// Adds many values of `metric`. A line carries at most [`MAX_VALUES`] of a metric:
    /// beyond that, as many evenly spaced order statistics (minimum and maximum kept), so
    /// percentiles stay close.
    pub fn add_all(&mut self, metric: Metric, values: impl IntoIterator<Item = f64>) -> &mut Self {
        for value in values {
            self.add(metric, value);
        }
        self
    }

    /// Sets the value of `dimension` for the metrics broken down by it.
    pub fn dimension(&mut self, dimension: Dimension, value: impl Into<String>) -> &mut Self {
        self.dimensions.insert(dimension, value.into());
        self
    }

    /// Sets a plain member (not a metric, not a dimension): searchable in CloudWatch Logs
    /// Insights, free of charge as a metric. Names of metrics, dimensions and `_aws` are
    /// taken and ignored here.
    pub fn member(&mut self, name: &str, value: impl Into<Value>) -> &mut Self {
        let taken = name == "_aws"
            || Metric::from_name(name).is_some()
            || Dimension::ALL.iter().any(|d| d.key() == name);
        if !taken {
            self.members.insert(name.to_string(), value.into());
        }
        self
    }

    /// The values recorded for `metric` (before any reduction).
    pub fn values(&self, metric: Metric) -> &[f64] {
        self.values.get(&metric).map_or(&[], Vec::as_slice)
    }

    /// The EMF document: one metric directive per distinct dimension set.
    pub fn to_json(&self) -> Value {
        let mut root = self.members.clone();
        let mut directives: BTreeMap<Option<Dimension>, Vec<Value>> = BTreeMap::new();
        for (metric, values) in &self.values {
            if values.is_empty() {
                continue;
            }
            let by = metric
                .dimension()
                .filter(|d| self.dimensions.contains_key(d));
            directives.entry(by).or_default().push(json!({
                "Name": metric.name(),
                "Unit": metric.unit().as_str(),
            }));
            let reduced = reduce(values);
            root.insert(
                metric.name().to_string(),
                match reduced.as_slice() {
                    [one] => json!(one),
                    many => json!(many),
                },
            );
        }
        for (dimension, value) in &self.dimensions {
            if directives.contains_key(&Some(*dimension)) {
                root.insert(dimension.key().to_string(), json!(value));
            }
        }
        let directives: Vec<Value> = directives
            .into_iter()
            .map(|(by, metrics)| {
                let sets = match by {
                    None => json!([[]]),
                    Some(d) => json!([[], [d.key()]]),
                };
                json!({"Namespace": self.namespace, "Dimensions": sets, "Metrics": metrics})
            })
            .collect();
        root.insert(
            "_aws".to_string(),
            json!({"Timestamp": self.timestamp_ms, "CloudWatchMetrics": directives}),
        );
        Value::Object(root)
    }

    /// The document as one log line (no newline).
    pub fn to_line(&self) -> String {
        self.to_json().to_string()
    }
}

/// At most [`MAX_VALUES`] values: all of them, or evenly spaced order statistics.
fn reduce(values: &[f64]) -> Vec<f64> {
    if values.len() <= MAX_VALUES {
        return values.to_vec();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let last = sorted.len() - 1;
    (0..MAX_VALUES)
        .map(|i| sorted[(i * last + (MAX_VALUES - 1) / 2) / (MAX_VALUES - 1)])
        .collect()
}

/// A metric value as CloudWatch would extract it from a line.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    /// The namespace.
    pub namespace: String,
    /// The metric name.
    pub name: String,
    /// The unit (`None` when the line gives none: CloudWatch takes "None").
    pub unit: Option<String>,
    /// The dimension set: (name, value) pairs; empty for the metric without dimensions.
    pub dimensions: Vec<(String, String)>,
    /// The values.
    pub values: Vec<f64>,
}

/// Why a line is not a valid EMF document: the member and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmfError {
    /// The line is not one JSON object.
    #[error("EMF line is not a JSON object: {0}")]
    NotJson(String),
    /// A member breaks the specification.
    #[error("EMF document: {member}: {problem}")]
    Invalid {
        /// Where (e.g. `_aws.CloudWatchMetrics[0].Metrics[2].Unit`).
        member: String,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(member: impl Into<String>, problem: impl Into<String>) -> EmfError {
    EmfError::Invalid {
        member: member.into(),
        problem: problem.into(),
    }
}

/// The units the specification's schema accepts.
const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// Checks `line` against the EMF specification and returns the metric values CloudWatch
/// would extract from it (one per metric and dimension set). Where the specification's
/// prose and its schema differ, or an older version was stricter (names and namespaces of
/// 255 characters, 9 dimension keys, 256 KB lines), the stricter limit is applied.
pub fn validate(line: &str) -> Result<Vec<Extracted>, EmfError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(invalid(
            "(line)",
            format!("{} bytes, more than {MAX_LINE_BYTES}", line.len()),
        ));
    }
    let root: Map<String, Value> = match serde_json::from_str(line) {
        Ok(Value::Object(root)) => root,
        Ok(other) => return Err(EmfError::NotJson(format!("a JSON {}", kind(&other)))),
        Err(e) => return Err(EmfError::NotJson(e.to_string())),
    };
    let aws = object(
        root.get("_aws"),
        "_aws",
        "the metadata object",
        &["Timestamp", "CloudWatchMetrics"],
    )?;
    if !aws.get("Timestamp").is_some_and(|t| t.is_u64()) {
        return Err(invalid(
            "_aws.Timestamp",
            "missing or not a whole number of milliseconds since the epoch",
        ));
    }
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("_aws.CloudWatchMetrics", "missing or not an array"))?;
    let mut extracted = Vec::new();
    for (i, directive) in directives.iter().enumerate() {
        let at = format!("_aws.CloudWatchMetrics[{i}]");
        let directive = object(
            Some(directive),
            &at,
            "a MetricDirective",
            &["Namespace", "Dimensions", "Metrics"],
        )?;
        let namespace = name_member(directive, &at, "Namespace")?;
        check_namespace(namespace)
            .map_err(|problem| invalid(format!("{at}.Namespace"), problem))?;
        let sets = directive
            .get("Dimensions")
            .and_then(Value::as_array)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                invalid(
                    format!("{at}.Dimensions"),
                    "missing, or not a non-empty array of dimension sets",
                )
            })?;
        let mut dimension_sets = Vec::new();
        for (j, set) in sets.iter().enumerate() {
            let set_at = format!("{at}.Dimensions[{j}]");
            let keys = set
                .as_array()
                .filter(|keys| keys.len() <= 9)
                .ok_or_else(|| invalid(&set_at, "not an array of at most 9 dimension names"))?;
            let mut pairs = Vec::new();
            for key in keys {
                let key = key
                    .as_str()
                    .filter(|k| (1..=250).contains(&k.chars().count()))
                    .ok_or_else(|| {
                        invalid(&set_at, "a name is not a string of 1 to 250 characters")
                    })?;
                let value = root
                    .get(key)
                    .and_then(Value::as_str)
                    .filter(|v| v.chars().count() <= 1024)
                    .ok_or_else(|| {
                        invalid(
                            key,
                            "a dimension: the root must carry it as a string of at most 1024 characters",
                        )
                    })?;
                pairs.push((key.to_string(), value.to_string()));
            }
            dimension_sets.push(pairs);
        }
        let metrics = directive
            .get("Metrics")
            .and_then(Value::as_array)
            .filter(|m| m.len() <= 100)
            .ok_or_else(|| {
                invalid(
                    format!("{at}.Metrics"),
                    "missing, or more than 100 definitions",
                )
            })?;
        for (k, definition) in metrics.iter().enumerate() {
            let def_at = format!("{at}.Metrics[{k}]");
            let definition = object(
                Some(definition),
                &def_at,
                "a MetricDefinition",
                &["Name", "Unit", "StorageResolution"],
            )?;
            let name = name_member(definition, &def_at, "Name")?;
            let unit = match definition.get("Unit") {
                None => None,
                Some(Value::String(unit)) if UNITS.contains(&unit.as_str()) => Some(unit.clone()),
                Some(other) => {
                    return Err(invalid(
                        format!("{def_at}.Unit"),
                        format!("{other} is not a CloudWatch unit"),
                    ));
                }
            };
            match definition.get("StorageResolution") {
                None => {}
                Some(r) if r.as_u64() == Some(1) || r.as_u64() == Some(60) => {}
                Some(other) => {
                    return Err(invalid(
                        format!("{def_at}.StorageResolution"),
                        format!("{other}: 1 or 60 only"),
                    ));
                }
            }
            let values = match root.get(name) {
                Some(Value::Number(n)) => vec![n.as_f64().unwrap_or(f64::NAN)],
                Some(Value::Array(items)) if items.len() <= MAX_VALUES => items
                    .iter()
                    .map(|v| {
                        v.as_f64()
                            .ok_or_else(|| invalid(name, "an array member is not a number"))
                    })
                    .collect::<Result<_, _>>()?,
                Some(Value::Array(items)) => {
                    return Err(invalid(
                        name,
                        format!("{} values, more than {MAX_VALUES}", items.len()),
                    ));
                }
                _ => {
                    return Err(invalid(
                        name,
                        "a metric: the root must carry it as a number or an array of numbers",
                    ));
                }
            };
            for pairs in &dimension_sets {
                extracted.push(Extracted {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    unit: unit.clone(),
                    dimensions: pairs.clone(),
                    values: values.clone(),
                });
            }
        }
    }
    Ok(extracted)
}

/// A metric name and a dimension set ((name, value) pairs).
type MetricKey = (String, Vec<(String, String)>);

/// The metric values of many log lines, gathered by metric and dimension set as CloudWatch
/// would hold them: for local runs, which have no CloudWatch. Lines without an `_aws` member
/// are other log lines and are skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    values: BTreeMap<MetricKey, Vec<f64>>,
    /// Metrics lines read.
    pub lines: usize,
    /// Lines that looked like metrics lines but break the specification.
    pub invalid: Vec<EmfError>,
}

impl Totals {
    /// Gathers the metrics of `namespace` in the lines of `text` (a log, one event per
    /// line).
    pub fn read(text: &str, namespace: &str) -> Self {
        let mut totals = Self::default();
        for line in text.lines().filter(|l| l.contains("\"_aws\"")) {
            match validate(line) {
                Ok(extracted) => {
                    totals.lines += 1;
                    for e in extracted.into_iter().filter(|e| e.namespace == namespace) {
                        totals
                            .values
                            .entry((e.name, e.dimensions))
                            .or_default()
                            .extend(e.values);
                    }
                }
                Err(error) => totals.invalid.push(error),
            }
        }
        totals
    }

    /// Every value of `metric` without dimensions, in log order.
    pub fn values(&self, metric: Metric) -> &[f64] {
        self.values
            .get(&(metric.name().to_string(), Vec::new()))
            .map_or(&[], Vec::as_slice)
    }

    /// The sum of `metric`'s values without dimensions.
    pub fn sum(&self, metric: Metric) -> f64 {
        self.values(metric).iter().sum()
    }

    /// The largest value of `metric` without dimensions, if any.
    pub fn max(&self, metric: Metric) -> Option<f64> {
        self.values(metric).iter().copied().reduce(f64::max)
    }

    /// The sum of `metric`'s values per value of the dimension it is emitted by.
    pub fn by_dimension(&self, metric: Metric) -> BTreeMap<String, f64> {
        let mut sums = BTreeMap::new();
        for ((name, dimensions), values) in &self.values {
            if let ([(_, value)], true) = (dimensions.as_slice(), name == metric.name()) {
                *sums.entry(value.clone()).or_default() += values.iter().sum::<f64>();
            }
        }
        sums
    }
}

/// `value` as an object of the specification (`what`) with no members but `members` ("Unless
/// otherwise noted, objects defined by this specification MUST NOT contain any additional
/// members").
fn object<'a>(
    value: Option<&'a Value>,
    at: &str,
    what: &str,
    members: &[&str],
) -> Result<&'a Map<String, Value>, EmfError> {
    let object = value
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(at, format!("missing or not an object ({what})")))?;
    match object.keys().find(|k| !members.contains(&k.as_str())) {
        Some(extra) => Err(invalid(
            format!("{at}.{extra}"),
            format!("not a member of {what}"),
        )),
        None => Ok(object),
    }
}

/// The string member `key` of `object`, of 1 to 255 characters (a namespace or a name).
fn name_member<'a>(
    object: &'a Map<String, Value>,
    at: &str,
    key: &str,
) -> Result<&'a str, EmfError> {
    object
        .get(key)
        .and_then(Value::as_str)
        .filter(|n| (1..=255).contains(&n.chars().count()))
        .ok_or_else(|| invalid(format!("{at}.{key}"), "missing, or not 1 to 255 characters"))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> EmfRecord {
        let mut record = EmfRecord::new(1_764_460_800_000);
        record
            .add(Metric::Invocations, 1.0)
            .dimension(Dimension::Outcome, "ENDED")
            .add(Metric::CallsEnded, 1.0)
            .add(Metric::AudioSeconds, 62.5)
            .add_all(Metric::TranscriptLag, [850.0, 1200.0, 990.0])
            .member("CallId", "c0ffee");
        record
    }

    #[test]
    fn a_record_is_a_valid_document_with_every_value() {
        let line = sample().to_line();
        assert!(!line.contains('\n'));
        let extracted = validate(&line).unwrap();
        let find = |name: &str, dims: &[(&str, &str)]| {
            extracted
                .iter()
                .find(|e| {
                    e.name == name
                        && e.dimensions
                            == dims
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect::<Vec<_>>()
                })
                .unwrap_or_else(|| panic!("{name} {dims:?} in {line}"))
                .clone()
        };
        assert_eq!(find("Invocations", &[]).values, [1.0]);
        assert_eq!(find("Invocations", &[("Outcome", "ENDED")]).values, [1.0]);
        assert_eq!(find("AudioSeconds", &[]).unit.as_deref(), Some("Seconds"));
        assert_eq!(find("TranscriptLag", &[]).values, [850.0, 1200.0, 990.0]);
        assert!(extracted.iter().all(|e| e.namespace == NAMESPACE));
        assert_eq!(extracted.len(), 5);
        let doc: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(doc["CallId"], "c0ffee");
        assert_eq!(doc["_aws"]["Timestamp"], 1_764_460_800_000u64);
    }

    #[test]
    fn a_dimension_without_its_value_leaves_only_the_total() {
        let mut record = EmfRecord::new(1);
        record.add(Metric::CallsFailed, 1.0);
        let extracted = validate(&record.to_line()).unwrap();
        assert_eq!(extracted.len(), 1);
        assert!(extracted[0].dimensions.is_empty());
        // A dimension no metric of the record uses is not written.
        record.dimension(Dimension::Answer, "STARTED");
        assert!(!record.to_line().contains("STARTED"));
    }

    #[test]
    fn members_cannot_shadow_metrics_or_dimensions() {
        let mut record = sample();
        record
            .member("Invocations", "x")
            .member("Outcome", "x")
            .member("_aws", 1);
        assert_eq!(record.to_line(), sample().to_line());
    }

    #[test]
    fn many_values_are_reduced_to_a_hundred_order_statistics() {
        let mut record = EmfRecord::new(1);
        record.add_all(Metric::TranscriptLag, (0..1000).rev().map(f64::from));
        let extracted = validate(&record.to_line()).unwrap();
        let values = &extracted[0].values;
        assert_eq!(values.len(), MAX_VALUES);
        assert_eq!(values[0], 0.0);
        assert_eq!(values[MAX_VALUES - 1], 999.0);
        assert!(values.windows(2).all(|w| w[0] < w[1]));
        let median = values[MAX_VALUES / 2];
        assert!((480.0..=520.0).contains(&median), "{median}");
    }

    #[test]
    fn non_finite_values_are_left_out() {
        let mut record = EmfRecord::new(1);
        record
            .add(Metric::AudioSeconds, f64::NAN)
            .add(Metric::AudioSeconds, 2.0);
        assert_eq!(record.values(Metric::AudioSeconds), [2.0]);
        validate(&record.to_line()).unwrap();
    }

    #[test]
    fn documents_breaking_the_specification_are_refused_naming_the_member() {
        let good: Value = serde_json::from_str(&sample().to_line()).unwrap();
        let broken = |edit: &dyn Fn(&mut Value)| {
            let mut doc = good.clone();
            edit(&mut doc);
            validate(&doc.to_string()).unwrap_err().to_string()
        };
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "_aws",
                Box::new(|d| {
                    d.as_object_mut().unwrap().remove("_aws");
                }),
            ),
            (
                "_aws.Timestamp",
                Box::new(|d| d["_aws"]["Timestamp"] = json!("now")),
            ),
            (
                "_aws.Timestamp",
                Box::new(|d| d["_aws"]["Timestamp"] = json!(1.5)),
            ),
            ("_aws.Extra", Box::new(|d| d["_aws"]["Extra"] = json!(1))),
            (
                "Namespace",
                Box::new(|d| d["_aws"]["CloudWatchMetrics"][0]["Namespace"] = json!("")),
            ),
            (
                "Dimensions",
                Box::new(|d| d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] = json!([])),
            ),
            (
                "Dimensions[0]",
                Box::new(|d| {
                    d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] =
                        json!([["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]])
                }),
            ),
            ("Outcome", Box::new(|d| d["Outcome"] = json!(3))),
            (
                "Unit",
                Box::new(|d| {
                    d["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] = json!("Calls")
                }),
            ),
            (
                "StorageResolution",
                Box::new(|d| {
                    d["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["StorageResolution"] = json!(5)
                }),
            ),
            (
                "AudioSeconds",
                Box::new(|d| d["AudioSeconds"] = json!("62.5")),
            ),
            (
                "TranscriptLag",
                Box::new(|d| d["TranscriptLag"] = json!(vec![1; 101])),
            ),
        ];
        for (member, edit) in cases {
            let message = broken(&*edit);
            assert!(message.contains(member), "{member}: {message}");
        }
        assert!(matches!(validate("[1]"), Err(EmfError::NotJson(_))));
        assert!(matches!(validate("not json"), Err(EmfError::NotJson(_))));
    }

    #[test]
    fn every_metric_has_a_distinct_name_and_a_valid_unit() {
        let names: std::collections::BTreeSet<_> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), Metric::ALL.len());
        for metric in Metric::ALL {
            assert!(UNITS.contains(&metric.unit().as_str()));
            assert_eq!(Metric::from_name(metric.name()), Some(metric));
        }
    }

    #[test]
    fn totals_add_up_the_metrics_lines_of_a_log() {
        let mut ended = sample();
        ended.add(Metric::KinesisRetries, 2.0);
        let mut continued = EmfRecord::new(2);
        continued
            .add(Metric::Invocations, 1.0)
            .dimension(Dimension::Outcome, "CONTINUED")
            .add(Metric::KinesisRetries, 1.0);
        let log = format!(
            "{{\"level\":\"INFO\",\"fields\":{{\"message\":\"handed over\"}}}}\n{}\n{}\n{{\"_aws\": 1}}\n",
            continued.to_line(),
            ended.to_line()
        );
        let totals = Totals::read(&log, NAMESPACE);
        assert_eq!(totals.lines, 2);
        assert_eq!(
            totals.invalid.len(),
            1,
            "the broken metrics line is reported"
        );
        assert_eq!(totals.sum(Metric::Invocations), 2.0);
        assert_eq!(totals.sum(Metric::KinesisRetries), 3.0);
        assert_eq!(totals.max(Metric::TranscriptLag), Some(1200.0));
        assert_eq!(totals.max(Metric::RecordingBytes), None);
        let outcomes = totals.by_dimension(Metric::Invocations);
        assert_eq!(
            outcomes.into_iter().collect::<Vec<_>>(),
            [("CONTINUED".to_string(), 1.0), ("ENDED".to_string(), 1.0)]
        );
    }

    #[test]
    fn a_stacks_namespace_is_checked_and_kept_apart() {
        for good in [
            NAMESPACE,
            "LCA/ConnectKVS/LCA-ConnectKVSStack-1ABC2DEF3",
            "a #:._-",
        ] {
            assert_eq!(check_namespace(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "1 to 255"),
            ("   ", "1 to 255"),
            ("LCA/Connect\u{e9}", "not allowed"),
            ("LCA$x", "not allowed"),
            ("AWS/Lambda", "AWS's own"),
        ] {
            let problem = check_namespace(bad).unwrap_err();
            assert!(problem.contains(why), "{bad:?}: {problem}");
        }
        assert!(check_namespace(&"x".repeat(256)).is_err());
        let stack = "LCA/ConnectKVS/stack-a";
        let mut record = sample();
        record.in_namespace(stack);
        let extracted = validate(&record.to_line()).unwrap();
        assert!(extracted.iter().all(|e| e.namespace == stack));
        let log = format!("{}\n{}\n", record.to_line(), sample().to_line());
        assert_eq!(Totals::read(&log, stack).sum(Metric::Invocations), 1.0);
        assert_eq!(Totals::read(&log, NAMESPACE).sum(Metric::Invocations), 1.0);
        assert_eq!(Totals::read(&log, "LCA/ConnectKVS/other").lines, 2);
        assert_eq!(
            Totals::read(&log, "LCA/ConnectKVS/other").sum(Metric::Invocations),
            0.0
        );
        let mut broken: Value = serde_json::from_str(&record.to_line()).unwrap();
        broken["_aws"]["CloudWatchMetrics"][0]["Namespace"] = json!("AWS/Mine");
        let message = validate(&broken.to_string()).unwrap_err().to_string();
        assert!(message.contains("Namespace"), "{message}");
    }

    proptest! {
        #[test]
        fn any_record_validates(
            values in proptest::collection::vec((0..Metric::ALL.len(), -1e12f64..1e12), 0..300),
            outcome in "[A-Z_]{1,20}",
            call_id in "[0-9a-f-]{0,36}",
        ) {
            let mut record = EmfRecord::new(1_700_000_000_000);
            for (i, value) in &values {
                record.add(Metric::ALL[*i], *value);
            }
            record.dimension(Dimension::Outcome, outcome).member("CallId", call_id);
            let extracted = validate(&record.to_line()).unwrap();
            for metric in Metric::ALL {
                let recorded = record.values(metric);
                let out = extracted.iter().find(|e| e.name == metric.name() && e.dimensions.is_empty());
                prop_assert_eq!(out.is_some(), !recorded.is_empty());
                if let Some(out) = out {
                    prop_assert_eq!(out.values.len(), recorded.len().min(MAX_VALUES));
                }
            }
        }
    }
}

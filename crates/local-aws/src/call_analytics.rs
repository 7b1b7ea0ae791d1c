//! A local Amazon Transcribe (batch), as much of it as the transcriber uses:
//! StartCallAnalyticsJob, AWS JSON 1.1 (`POST /`, `X-Amz-Target:
//! Transcribe.StartCallAnalyticsJob`). moto's Transcribe has no Call Analytics jobs.
//!
//! It checks a request the way the API reference states
//! (<https://docs.aws.amazon.com/transcribe/latest/APIReference/API_StartCallAnalyticsJob.html>):
//! the job name is required, 1 to 200 characters of `[0-9a-zA-Z._-]`, and unique in the
//! account ("If you try to create a new job with the same name as an existing job, you get a
//! ConflictException error"); `Media` is required, and so is `DataAccessRoleArn` (the
//! reference's introduction lists it among what a request must include, its parameter list
//! says "Required: No": the stricter reading); a content redaction names its type and
//! output. It records every job it accepted; it does not run
//! them (the real service reads the media later and reports a failure in the job's status,
//! not in this answer). Faults are injected per request: an error answer, or holding the
//! answer back (the job is created first, as a request the service received) until
//! [`CallAnalyticsJobs::release`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::http::{Body, Server, amz_target, aws_error, json as json_response, read_body, serve};
use crate::lock;

/// What the next StartCallAnalyticsJob request meets (one fault per request, in the order
/// injected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobFault {
    /// The request is refused with this HTTP status and error type (e.g. 400
    /// `BadRequestException`, 400 `LimitExceededException`, 403 `AccessDeniedException`);
    /// no job is created.
    Refuse {
        /// HTTP status.
        status: u16,
        /// The AWS error type.
        error_type: String,
    },
    /// The job is created, but the answer waits until [`CallAnalyticsJobs::release`].
    Hold,
}

#[derive(Default)]
struct State {
    jobs: Vec<Value>,
    refused: usize,
    faults: VecDeque<JobFault>,
    options_two_or_more: bool,
}

/// The local Transcribe Call Analytics jobs endpoint: inject faults, then
/// [`CallAnalyticsJobs::serve`].
#[derive(Clone)]
pub struct CallAnalyticsJobs {
    state: Arc<Mutex<State>>,
    released: watch::Sender<bool>,
}

impl Default for CallAnalyticsJobs {
    fn default() -> Self {
        Self::new()
    }
}

/// Longest job name (API reference, CallAnalyticsJobName: "Length Constraints: Minimum
/// length of 1. Maximum length of 200").
pub const MAX_JOB_NAME: usize = 200;

impl CallAnalyticsJobs {
    /// An endpoint with no jobs.
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            released: watch::channel(false).0,
        }
    }

    /// Queues a fault for the next StartCallAnalyticsJob request.
    pub fn inject(&self, fault: JobFault) {
        lock(&self.state).faults.push_back(fault);
    }

    /// Reads CallAnalyticsJobSettings.LanguageOptions as "two or more language codes" (its
    /// reference's words) and refuses a single one with BadRequestException; by default one
    /// is taken, as AWS's post-call analytics sample sends it for a known language. The
    /// documents leave it open; the transcriber must work under both readings.
    pub fn refuse_single_language_option(&self) {
        lock(&self.state).options_two_or_more = true;
    }

    /// Answers the held requests, and every later one at once.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// The requests of the jobs created, in order (their JSON bodies).
    pub fn jobs(&self) -> Vec<Value> {
        lock(&self.state).jobs.clone()
    }

    /// How many requests were refused (faults, invalid requests, names taken).
    pub fn refused(&self) -> usize {
        lock(&self.state).refused
    }

    /// Serves on `127.0.0.1:port` (0: any free port).
    pub async fn serve(&self, port: u16) -> std::io::Result<Server> {
        let jobs = self.clone();
        serve(port, move |request| {
            let jobs = jobs.clone();
            async move { jobs.handle(request).await }
        })
        .await
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let target = amz_target(&request);
        if request.method() != Method::POST || target != "Transcribe.StartCallAnalyticsJob" {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "UnknownOperationException",
                &format!(
                    "{} {} with X-Amz-Target {target:?} is not an operation of the local Transcribe",
                    request.method(),
                    request.uri().path()
                ),
            );
        }
        let body = match read_body(request, 1 << 20).await {
            Ok(body) => body,
            Err(e) => return aws_error(StatusCode::BAD_REQUEST, "SerializationException", &e),
        };
        let job: Value = match serde_json::from_slice(&body) {
            Ok(job) => job,
            Err(e) => {
                return aws_error(
                    StatusCode::BAD_REQUEST,
                    "SerializationException",
                    &format!("request body is not JSON: {e}"),
                );
            }
        };
        let (answer, hold) = self.start(job);
        if hold {
            let mut released = self.released.subscribe();
            let _ = released.wait_for(|released| *released).await;
        }
        answer
    }

    /// Applies the next fault and the API's checks; creates the job. Returns the answer and
    /// whether to hold it.
    fn start(&self, job: Value) -> (Response<Body>, bool) {
        let mut state = lock(&self.state);
        let fault = state.faults.pop_front();
        if let Some(JobFault::Refuse { status, error_type }) = &fault {
            state.refused += 1;
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
            return (
                aws_error(status, error_type, "refused by an injected fault"),
                false,
            );
        }
        if let Err(problem) = check(&job, state.options_two_or_more) {
            state.refused += 1;
            return (
                aws_error(StatusCode::BAD_REQUEST, "BadRequestException", &problem),
                false,
            );
        }
        let name = job["CallAnalyticsJobName"].as_str().unwrap_or_default();
        if state
            .jobs
            .iter()
            .any(|j| j["CallAnalyticsJobName"].as_str() == Some(name))
        {
            state.refused += 1;
            return (
                aws_error(
                    StatusCode::BAD_REQUEST,
                    "ConflictException",
                    "The requested job name already exists. Use a different job name.",
                ),
                false,
            );
        }
        let now = aws_edge::now_ms() as f64 / 1000.0;
        // The real answer is QUEUED or IN_PROGRESS ("job queuing is enabled by default for
        // Call Analytics jobs", API reference); the transcriber reads neither.
        let answer = json_response(&json!({"CallAnalyticsJob": {
            "CallAnalyticsJobName": name,
            "CallAnalyticsJobStatus": "IN_PROGRESS",
            "Media": job["Media"],
            "DataAccessRoleArn": job["DataAccessRoleArn"],
            "ChannelDefinitions": job.get("ChannelDefinitions").cloned().unwrap_or(json!([])),
            "Settings": job.get("Settings").cloned().unwrap_or(json!({})),
            "CreationTime": now,
            "StartTime": now,
        }}));
        state.jobs.push(job);
        (answer, fault == Some(JobFault::Hold))
    }
}

/// The API reference's constraints on a StartCallAnalyticsJob request; the problem found.
/// `options_two_or_more`: a single LanguageOptions code is refused
/// ([`CallAnalyticsJobs::refuse_single_language_option`]).
fn check(job: &Value, options_two_or_more: bool) -> Result<(), String> {
    let name = job["CallAnalyticsJobName"]
        .as_str()
        .ok_or("CallAnalyticsJobName is required")?;
    if name.is_empty()
        || name.len() > MAX_JOB_NAME
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(format!(
            "CallAnalyticsJobName {name:?} must be 1 to {MAX_JOB_NAME} characters of [0-9a-zA-Z._-]"
        ));
    }
    let media = &job["Media"];
    let uri = media["MediaFileUri"]
        .as_str()
        .or(media["RedactedMediaFileUri"].as_str())
        .ok_or("Media.MediaFileUri is required")?;
    if !uri.starts_with("s3://") {
        return Err(format!("Media.MediaFileUri {uri:?} is not an s3:// URI"));
    }
    let role = job["DataAccessRoleArn"]
        .as_str()
        .ok_or("DataAccessRoleArn is required")?;
    if !(role.starts_with("arn:") && role.contains(":iam::") && role.contains(":role/")) {
        return Err(format!("DataAccessRoleArn {role:?} is not an IAM role ARN"));
    }
    if let Some(output) = job.get("OutputLocation").and_then(Value::as_str)
        && !output.starts_with("s3://")
    {
        return Err(format!("OutputLocation {output:?} is not an s3:// URI"));
    }
    // ChannelDefinitions (API reference): two items, ChannelId 0 or 1; one AGENT and one
    // CUSTOMER is this stand-in's reading (the reference does not say two roles may not be
    // the same; the transcriber never sends that).
    if let Some(channels) = job.get("ChannelDefinitions") {
        let roles: Vec<(i64, &str)> = channels
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| {
                        Some((c["ChannelId"].as_i64()?, c["ParticipantRole"].as_str()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut ids: Vec<i64> = roles.iter().map(|r| r.0).collect();
        ids.sort_unstable();
        let mut kinds: Vec<&str> = roles.iter().map(|r| r.1).collect();
        kinds.sort_unstable();
        if ids != [0, 1] || kinds != ["AGENT", "CUSTOMER"] {
            return Err(format!(
                "ChannelDefinitions {channels} must give channels 0 and 1 one AGENT and one CUSTOMER"
            ));
        }
    }
    if let Some(redaction) = job["Settings"].get("ContentRedaction")
        && (redaction["RedactionType"].as_str().is_none()
            || redaction["RedactionOutput"].as_str().is_none())
    {
        return Err("Settings.ContentRedaction needs RedactionType and RedactionOutput".into());
    }
    let options = job["Settings"]["LanguageOptions"].as_array();
    if options_two_or_more && options.is_some_and(|options| options.len() == 1) {
        return Err("Settings.LanguageOptions must contain two or more language codes".into());
    }
    Ok(())
}

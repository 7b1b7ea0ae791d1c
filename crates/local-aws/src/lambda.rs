//! A local AWS Lambda: the Invoke API (`POST /2015-03-31/functions/{name}/invocations`,
//! InvocationType RequestResponse, Event and DryRun) in front of real function binaries that
//! run unchanged under the Lambda Runtime API (`AWS_LAMBDA_RUNTIME_API`), one process per
//! concurrent execution environment.
//!
//! Like Lambda: Event returns 202 at once and runs in the background, retrying a failed event
//! twice, then keeping its invocation record for the on-failure destination; function errors
//! come back with `X-Amz-Function-Error`; the function timeout is enforced by stopping the
//! environment; functions answer to their name and their ARN; each invocation gets an X-Ray
//! trace header that counts the chain of requests it belongs to, and a function invoked more
//! than [`RECURSION_LIMIT`] times in one chain is stopped unless its [`RecursiveLoop`] allows.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use crate::http::{ApiError, Body, Server, full, percent_decode, read_body, serve};
use crate::lock;

/// Largest synchronous payload Lambda accepts (6 MB); Event payloads are limited to 256 KB.
const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
const MAX_EVENT_PAYLOAD: usize = 256 * 1024;

/// A function to run: its binary, environment and limits.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// Function name.
    pub name: String,
    /// The executable (a `bootstrap` built for the local machine).
    pub command: PathBuf,
    /// Arguments to the executable (a multi-call binary picks its function by them).
    pub args: Vec<String>,
    /// Its environment variables (on top of the Lambda-provided ones).
    pub environment: BTreeMap<String, String>,
    /// Function timeout.
    pub timeout: Duration,
    /// Configured memory, reported to the function.
    pub memory_mb: u32,
}

/// Where the shipped arm64 functions are, for tests that run them instead of the local build:
/// `DIR/<binary>/bootstrap`, each unzipped from `infra/build/<binary>.zip`.
pub const ARM64_FUNCTIONS_VAR: &str = "LCA_TEST_ARM64_FUNCTIONS";

/// The emulator that runs an arm64 Linux binary on another machine (Debian's
/// `qemu-user-static`), with the arm64 C library's root (`libc6-arm64-cross`).
pub const ARM64_EMULATOR: [&str; 3] = ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu"];

/// The folder [`ARM64_FUNCTIONS_VAR`] names, when it is set (not empty).
pub fn arm64_functions_dir() -> Option<PathBuf> {
    std::env::var_os(ARM64_FUNCTIONS_VAR)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// The command (executable and arguments) that runs the function built as `native` (a
/// binary whose file name is its package's): `native` itself, or, when
/// [`ARM64_FUNCTIONS_VAR`] names a folder, the arm64 `bootstrap` the stack ships for it under
/// [`ARM64_EMULATOR`], so the same tests check the artifacts that are deployed. An error
/// when that `bootstrap` is missing.
pub fn function_command(native: &std::path::Path) -> Result<(PathBuf, Vec<String>), String> {
    let Some(dir) = arm64_functions_dir() else {
        return Ok((native.to_path_buf(), Vec::new()));
    };
    let name = native
        .file_name()
        .ok_or_else(|| format!("{}: not a binary's path", native.display()))?;
    let bootstrap = dir.join(name).join("bootstrap");
    if !bootstrap.is_file() {
        return Err(format!(
            "{ARM64_FUNCTIONS_VAR}: {} is missing (unzip infra/build/{}.zip there)",
            bootstrap.display(),
            name.to_string_lossy()
        ));
    }
    let mut args: Vec<String> = ARM64_EMULATOR[1..].iter().map(|a| a.to_string()).collect();
    args.push(bootstrap.to_string_lossy().into_owned());
    Ok((PathBuf::from(ARM64_EMULATOR[0]), args))
}

/// How the local Lambda behaves.
#[derive(Debug, Clone)]
pub struct LambdaOptions {
    /// Region in ARNs and in the functions' environment.
    pub region: String,
    /// Account in ARNs.
    pub account: String,
    /// Delays before the two retries of a failed Event invocation (Lambda: about 1 and 2
    /// minutes; shorter here so tests and the demo do not wait).
    pub event_retry_delays: [Duration; 2],
    /// Where the functions' stdout/stderr go: a file per function in this folder, or this
    /// process's stderr when `None`.
    pub log_dir: Option<PathBuf>,
    /// All functions' stdout/stderr appended to this one file instead (each line whole, as
    /// CloudWatch Logs would hold them); takes precedence over `log_dir`.
    pub log_file: Option<PathBuf>,
}

impl Default for LambdaOptions {
    fn default() -> Self {
        Self {
            region: "us-east-1".to_string(),
            account: "123456789012".to_string(),
            event_retry_delays: [Duration::from_secs(1), Duration::from_secs(2)],
            log_dir: None,
            log_file: None,
        }
    }
}

/// How one invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The function's response payload.
    Success(Bytes),
    /// The function reported an error (JSON `errorMessage` / `errorType`).
    FunctionError(Bytes),
}

/// An invocation waiting for (or being run by) an execution environment.
struct Pending {
    request_id: String,
    payload: Bytes,
    /// The X-Ray trace header handed to the function (`Lambda-Runtime-Trace-Id`).
    trace_id: String,
    respond: oneshot::Sender<Outcome>,
}

/// An invocation handed to an environment, until it answers or times out.
struct InFlight {
    respond: oneshot::Sender<Outcome>,
    instance: u64,
    /// Tells this attempt from another with the same request id (a retry, or a duplicate
    /// delivery running at the same time) in the same environment.
    ticket: u64,
}

/// An invocation in flight: its environment and request id (two deliveries of one event
/// share the request id, and may run at once in two environments).
type InFlightKey = (u64, String);

struct Function {
    spec: FunctionSpec,
    arn: String,
    queue_tx: mpsc::UnboundedSender<Pending>,
    queue_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Pending>>,
    /// Invocations queued and not yet taken by an environment.
    queued: AtomicUsize,
    /// Environments running an invocation (from `next` until their response or error).
    busy: AtomicUsize,
    in_flight: Mutex<HashMap<InFlightKey, InFlight>>,
    instances: Mutex<HashMap<u64, Instance>>,
    /// Every request id the function was invoked with, attempts included, for tests.
    attempts: Mutex<Vec<String>>,
    /// Every Invoke call accepted, for tests.
    invocations: Mutex<Vec<Invocation>>,
    /// Every attempt that ended in an error, in order.
    failures: Mutex<Vec<Failure>>,
    /// Every Event invocation accepted: its request id, payload and trace header (for
    /// delivering again).
    events: Mutex<Vec<(String, Bytes, String)>>,
    /// Whether Lambda stops the function in a recursive loop.
    recursive_loop: Mutex<RecursiveLoop>,
    /// The on-failure destination: a record per Event invocation that failed every attempt.
    failure_records: Mutex<Vec<serde_json::Value>>,
    /// Event invocations to lose, by the `action` of their payload (one entry per event).
    to_drop: Mutex<Vec<String>>,
    /// Event invocations lost on purpose, their payloads.
    dropped: Mutex<Vec<serde_json::Value>>,
    /// Event invocations accepted whose attempts are not over (running, or waiting for a
    /// retry).
    pending_events: AtomicUsize,
    /// What Invoke requests suffer while their payload's `action` is listed here.
    invoke_faults: Mutex<Vec<(String, InvokeFault)>>,
    /// Invoke requests refused or left hanging on purpose, their payloads.
    faulted: Mutex<Vec<serde_json::Value>>,
}

/// Counts an Event invocation as pending until it is dropped (its task ended, however).
struct PendingEvent(Arc<Function>);

impl Drop for PendingEvent {
    fn drop(&mut self) {
        self.0.pending_events.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What an Invoke request suffers ([`Lambda::set_invoke_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeFault {
    /// TooManyRequestsException (HTTP 429), one of the errors the Invoke API reference lists
    /// (the SDK retries it); nothing runs.
    Refuse,
    /// No answer at all, until the caller gives up: what a client's time limits are for.
    Hang,
}

/// An attempt that ended in an error, as Lambda reports it to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The invocation's request id (shared by an Event invocation's retries).
    pub request_id: String,
    /// `errorType`: the function's own, or Lambda's (`Runtime.ExitError`, `Sandbox.Timedout`).
    pub error_type: String,
    /// `errorMessage`.
    pub message: String,
}

/// An Invoke call as the service accepted it.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// `RequestResponse`, `Event` or `DryRun`.
    pub invocation_type: String,
    /// The payload.
    pub payload: serde_json::Value,
    /// The trace header the request carried (X-Amzn-Trace-Id: a caller inside a Lambda
    /// function passes its own on), with the lineage that recursion detection counts.
    pub caller_trace: Option<String>,
}

struct Instance {
    child: Child,
    _runtime_api: Server,
}

struct Inner {
    options: LambdaOptions,
    functions: Mutex<BTreeMap<String, Arc<Function>>>,
    next_id: AtomicU64,
    /// Schedules running ([`Lambda::schedule`]), stopped at shutdown.
    schedules: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The local Lambda: register functions, then [`Lambda::serve`] the Invoke API.
#[derive(Clone)]
pub struct Lambda {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Lambda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lambda").finish_non_exhaustive()
    }
}

impl Lambda {
    /// A local Lambda with no functions.
    pub fn new(options: LambdaOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                functions: Mutex::new(BTreeMap::new()),
                next_id: AtomicU64::new(1),
                schedules: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Serves the Invoke API on `127.0.0.1:port` (0: any free port).
    pub async fn serve(&self, port: u16) -> std::io::Result<Server> {
        let lambda = self.clone();
        serve(port, move |request| {
            let lambda = lambda.clone();
            async move { lambda.handle(request).await }
        })
        .await
    }

    /// Registers a function; returns its ARN. Names follow Lambda's rule: 1 to 64 letters,
    /// digits, hyphens or underscores.
    pub fn add_function(&self, spec: FunctionSpec) -> Result<String, String> {
        let valid = !spec.name.is_empty()
            && spec.name.len() <= 64
            && spec
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(format!(
                "function name {:?} must be 1 to 64 letters, digits, hyphens or underscores",
                spec.name
            ));
        }
        let arn = format!(
            "arn:aws:lambda:{}:{}:function:{}",
            self.inner.options.region, self.inner.options.account, spec.name
        );
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let function = Arc::new(Function {
            spec: spec.clone(),
            arn: arn.clone(),
            queue_tx,
            queue_rx: tokio::sync::Mutex::new(queue_rx),
            queued: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            in_flight: Mutex::new(HashMap::new()),
            instances: Mutex::new(HashMap::new()),
            attempts: Mutex::new(Vec::new()),
            failures: Mutex::new(Vec::new()),
            invocations: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            recursive_loop: Mutex::new(RecursiveLoop::Terminate),
            failure_records: Mutex::new(Vec::new()),
            to_drop: Mutex::new(Vec::new()),
            dropped: Mutex::new(Vec::new()),
            pending_events: AtomicUsize::new(0),
            invoke_faults: Mutex::new(Vec::new()),
            faulted: Mutex::new(Vec::new()),
        });
        lock(&self.inner.functions).insert(spec.name, function);
        Ok(arn)
    }

    /// Stops every execution environment (their processes are killed).
    pub fn shutdown(&self) {
        for schedule in lock(&self.inner.schedules).drain(..) {
            schedule.abort();
        }
        for function in lock(&self.inner.functions).values() {
            for (_, mut instance) in lock(&function.instances).drain() {
                let _ = instance.child.start_kill();
            }
        }
    }

    /// Request ids of every attempt made on a function (Event retries included).
    pub fn attempts(&self, name: &str) -> Vec<String> {
        self.function(name)
            .map(|f| lock(&f.attempts).clone())
            .unwrap_or_default()
    }

    /// A function's attempts that ended in an error, in order: a caller that does not wait
    /// for an Event invocation learns from these that it failed.
    pub fn failures(&self, name: &str) -> Vec<Failure> {
        self.function(name)
            .map(|f| lock(&f.failures).clone())
            .unwrap_or_default()
    }

    /// What the function's on-failure destination received: one invocation record per
    /// Event invocation that failed all its attempts, shaped as Lambda documents it
    /// (`version`, `timestamp`, `requestContext` with `condition` "RetriesExhausted" and
    /// `approximateInvokeCount`, `requestPayload`, `responseContext`, `responsePayload`;
    /// Lambda developer guide, Capturing records of Lambda asynchronous invocations).
    pub fn failure_records(&self, name: &str) -> Vec<serde_json::Value> {
        self.function(name)
            .map(|f| lock(&f.failure_records).clone())
            .unwrap_or_default()
    }

    /// Event invocations of `name` accepted whose attempts are not over (running, or waiting
    /// for a retry): 0 when everything invoked has succeeded or exhausted its retries, so a
    /// test can wait for that instead of sleeping.
    pub fn pending_events(&self, name: &str) -> usize {
        self.function(name)
            .map_or(0, |f| f.pending_events.load(Ordering::SeqCst))
    }

    /// Invoke calls accepted for a function, in order.
    pub fn invocations(&self, name: &str) -> Vec<Invocation> {
        self.function(name)
            .map(|f| lock(&f.invocations).clone())
            .unwrap_or_default()
    }

    /// Kills the processes of a function's execution environments that are running an
    /// invocation, as a crash (out of memory, a segfault) would; their invocations fail with
    /// `Runtime.ExitError` and Event invocations are retried. Returns how many were killed.
    pub fn crash_busy(&self, name: &str) -> usize {
        let Some(function) = self.function(name) else {
            return 0;
        };
        let busy: Vec<u64> = lock(&function.in_flight)
            .values()
            .map(|f| f.instance)
            .collect();
        let mut instances = lock(&function.instances);
        let mut killed = 0;
        for id in busy {
            if let Some(instance) = instances.get_mut(&id)
                && instance.child.start_kill().is_ok()
            {
                killed += 1;
            }
        }
        killed
    }

    /// Delivers the function's latest Event invocation once more, with the same request id
    /// and payload, while (or after) the first delivery runs: Lambda's event queue delivers
    /// at least once ("Even if your function doesn't return an error, it's possible for it
    /// to receive the same event from Lambda multiple times because the queue itself is
    /// eventually consistent", Lambda developer guide, asynchronous invocation). Whether
    /// such a duplicate keeps the request id is not documented; this one does, the harder
    /// case for a consumer that tells retries by it. Returns false when there is none.
    pub fn deliver_again(&self, name: &str) -> bool {
        let Some(function) = self.function(name) else {
            return false;
        };
        let Some((request_id, payload, trace_id)) = lock(&function.events).last().cloned() else {
            return false;
        };
        let lambda = self.clone();
        tokio::spawn(async move {
            lambda
                .run_event(function, payload, request_id, trace_id)
                .await
        });
        true
    }

    /// Loses the next Event invocation of `name` whose payload's `action` is `action` (say
    /// `LAMBDA_CONTINUE`): accepted (202) and never run, as Lambda documents it may happen
    /// ("events might also be deleted from the queue without being sent to the function";
    /// an event older than its maximum age is discarded the same way; Lambda developer guide,
    /// "How Lambda handles errors and retries with asynchronous invocation"). Returns false
    /// for an unknown function.
    pub fn drop_next_event(&self, name: &str, action: &str) -> bool {
        match self.function(name) {
            Some(function) => {
                lock(&function.to_drop).push(action.to_string());
                true
            }
            None => false,
        }
    }

    /// Makes every Invoke request for `name` whose payload's `action` is `action` suffer
    /// `fault` (refused, or left without an answer), or (`None`) accepts them again. Nothing
    /// runs for such a request. Returns false for an unknown function.
    pub fn set_invoke_fault(&self, name: &str, action: &str, fault: Option<InvokeFault>) -> bool {
        let Some(function) = self.function(name) else {
            return false;
        };
        let mut faults = lock(&function.invoke_faults);
        faults.retain(|(a, _)| a != action);
        if let Some(fault) = fault {
            faults.push((action.to_string(), fault));
        }
        true
    }

    /// The payloads of the Invoke requests for `name` that suffered a fault set by
    /// [`Lambda::set_invoke_fault`].
    pub fn faulted_invokes(&self, name: &str) -> Vec<serde_json::Value> {
        self.function(name)
            .map(|f| lock(&f.faulted).clone())
            .unwrap_or_default()
    }

    /// The payloads of the Event invocations of `name` lost by [`Lambda::drop_next_event`].
    pub fn dropped_events(&self, name: &str) -> Vec<serde_json::Value> {
        self.function(name)
            .map(|f| lock(&f.dropped).clone())
            .unwrap_or_default()
    }

    /// Invokes `name` asynchronously with `payload` every `period` until [`Lambda::shutdown`],
    /// as an EventBridge schedule does (a rule with a rate expression targeting the function:
    /// "EventBridge invokes your function asynchronously", Lambda developer guide, "Using
    /// Lambda with EventBridge Scheduler" / EventBridge rules). Returns false for an unknown
    /// function.
    pub fn schedule(&self, name: &str, period: Duration, payload: serde_json::Value) -> bool {
        let Some(function) = self.function(name) else {
            return false;
        };
        let lambda = self.clone();
        let payload = Bytes::from(payload.to_string());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tick.tick().await;
                let request_id = lambda.request_id();
                let trace =
                    Trace::for_invocation(None, &function.arn, lambda.request_id()).header();
                let (lambda, function, payload) =
                    (lambda.clone(), function.clone(), payload.clone());
                tokio::spawn(async move {
                    lambda.run_event(function, payload, request_id, trace).await
                });
            }
        });
        lock(&self.inner.schedules).push(task);
        true
    }

    /// EventBridge's scheduled event from rule `rule` of this Lambda's account and region, as
    /// a rule with a schedule expression delivers it to its target (EventBridge user guide,
    /// "Creating a rule that runs on a schedule": `"source": "aws.events"`, `"detail-type":
    /// "Scheduled Event"`, an empty `detail`).
    pub fn scheduled_event(&self, rule: &str) -> serde_json::Value {
        let options = &self.inner.options;
        json!({
            "version": "0",
            "id": self.request_id(),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": options.account,
            "time": iso_now(),
            "region": options.region,
            "resources": [format!("arn:aws:events:{}:{}:rule/{rule}", options.region, options.account)],
            "detail": {}
        })
    }

    /// The trace header that the `depth`-th invocation of `function` in a chain of requests
    /// passes on to what it invokes: for a test that starts a chain part-way.
    pub fn chain_trace(&self, function: &str, depth: u32) -> Option<String> {
        let function = self.function(function)?;
        let mut trace = Trace::for_invocation(None, &function.arn, self.request_id());
        trace.lineage = vec![(lineage_id(&function.arn), depth)];
        Some(trace.header())
    }

    /// Sets whether Lambda stops the function when it detects it in a recursive loop, as
    /// the PutFunctionRecursionConfig API does (a function's default: `Terminate`). Returns
    /// false for an unknown function.
    pub fn put_recursion_config(&self, name: &str, setting: RecursiveLoop) -> bool {
        match self.function(name) {
            Some(function) => {
                *lock(&function.recursive_loop) = setting;
                true
            }
            None => false,
        }
    }

    /// Process ids of a function's running execution environments (for measuring them).
    pub fn pids(&self, name: &str) -> Vec<u32> {
        self.function(name)
            .map(|f| {
                lock(&f.instances)
                    .values()
                    .filter_map(|i| i.child.id())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Running execution environments of a function.
    pub fn instances(&self, name: &str) -> usize {
        self.function(name)
            .map(|f| lock(&f.instances).len())
            .unwrap_or_default()
    }

    /// The function a name, ARN or partial ARN (`123456789012:function:name`) refers to.
    fn function(&self, reference: &str) -> Option<Arc<Function>> {
        let name = reference
            .rsplit_once(":function:")
            .map(|(_, name)| name)
            .unwrap_or(reference);
        let name = name.split(':').next().unwrap_or(name); // drop a :qualifier
        lock(&self.inner.functions).get(name).cloned()
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let path = percent_decode(request.uri().path());
        let Some(reference) = path
            .strip_prefix("/2015-03-31/functions/")
            .and_then(|rest| rest.strip_suffix("/invocations"))
            .map(str::to_string)
        else {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                "UnknownOperationException",
                format!("no Lambda operation at {path}"),
            )
            .into_response();
        };
        if request.method() != Method::POST {
            return ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "InvalidRequestContentException",
                "Invoke is a POST",
            )
            .into_response();
        }
        let invocation_type = request
            .headers()
            .get("x-amz-invocation-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("RequestResponse")
            .to_string();
        // The caller's trace header: the AWS SDK sets it from `_X_AMZN_TRACE_ID` when it
        // runs inside a Lambda function (the recursion detection interceptor).
        let caller_trace = request
            .headers()
            .get("x-amzn-trace-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let Some(function) = self.function(&reference) else {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                format!(
                    "Function not found: arn:aws:lambda:{}:{}:function:{reference}",
                    self.inner.options.region, self.inner.options.account
                ),
            )
            .into_response();
        };
        let limit = if invocation_type == "Event" {
            MAX_EVENT_PAYLOAD
        } else {
            MAX_SYNC_PAYLOAD
        };
        let payload = match read_body(request, limit).await {
            Ok(payload) => payload,
            Err(message) => {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestTooLargeException",
                    message,
                )
                .into_response();
            }
        };
        let payload = if payload.is_empty() {
            Bytes::from_static(b"{}")
        } else {
            payload
        };
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&payload) else {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                "Could not parse request body into json",
            )
            .into_response();
        };
        let action = json["action"].as_str().unwrap_or_default();
        let fault = lock(&function.invoke_faults)
            .iter()
            .find(|(a, _)| a == action)
            .map(|(_, fault)| *fault);
        if let Some(fault) = fault {
            lock(&function.faulted).push(json.clone());
            if fault == InvokeFault::Hang {
                // The caller's time limit ends the request; the server never answers it.
                std::future::pending::<()>().await;
            }
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                "Rate Exceeded.",
            )
            .into_response();
        }
        lock(&function.invocations).push(Invocation {
            invocation_type: invocation_type.clone(),
            payload: json.clone(),
            caller_trace: caller_trace.clone(),
        });
        let trace =
            Trace::for_invocation(caller_trace.as_deref(), &function.arn, self.request_id());
        let stopped = trace.depth(&function.arn) > RECURSION_LIMIT
            && *lock(&function.recursive_loop) == RecursiveLoop::Terminate;
        let trace_id = trace.header();
        match invocation_type.as_str() {
            "DryRun" => response(StatusCode::NO_CONTENT, None, Bytes::new()),
            "Event" if stopped => {
                // "If you have an on-failure destination or dead-letter queue configured for
                // your function, then Lambda also sends the event from the stopped invocation
                // to your destination" (Lambda developer guide, recursive loop detection).
                let message = recursion_message(&function.arn);
                self.send_to_destination(&function, &payload, &self.request_id(), 0, &message);
                response(StatusCode::ACCEPTED, None, Bytes::new())
            }
            // "It returns a RecursiveInvocationException to the caller" (AWS Compute blog,
            // "Detecting and stopping recursive loops in AWS Lambda functions"); the Invoke API
            // reference lists RecursiveInvocationException among its errors, HTTP 400.
            "RequestResponse" if stopped => ApiError::new(
                StatusCode::BAD_REQUEST,
                "RecursiveInvocationException",
                recursion_message(&function.arn),
            )
            .into_response(),
            "Event" if self.drops(&function, &json) => {
                response(StatusCode::ACCEPTED, None, Bytes::new())
            }
            "Event" => {
                let lambda = self.clone();
                let request_id = self.request_id();
                lock(&function.events).push((
                    request_id.clone(),
                    payload.clone(),
                    trace_id.clone(),
                ));
                function.pending_events.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let pending = PendingEvent(function.clone());
                    lambda
                        .run_event(function, payload, request_id, trace_id)
                        .await;
                    drop(pending);
                });
                response(StatusCode::ACCEPTED, None, Bytes::new())
            }
            "RequestResponse" => match self
                .invoke_once(&function, payload, self.request_id(), trace_id)
                .await
            {
                Outcome::Success(body) => response(StatusCode::OK, None, body),
                Outcome::FunctionError(body) => response(StatusCode::OK, Some("Unhandled"), body),
            },
            other => ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                format!("InvocationType {other:?} is not RequestResponse, Event or DryRun"),
            )
            .into_response(),
        }
    }

    /// Whether this Event invocation is one to lose ([`Lambda::drop_next_event`]); it is
    /// then kept among the dropped.
    fn drops(&self, function: &Function, payload: &serde_json::Value) -> bool {
        let action = payload["action"].as_str().unwrap_or_default();
        let mut to_drop = lock(&function.to_drop);
        let Some(index) = to_drop.iter().position(|a| a == action) else {
            return false;
        };
        to_drop.remove(index);
        lock(&function.dropped).push(payload.clone());
        true
    }

    /// An Event invocation: up to three attempts, as Lambda retries a failed event twice.
    /// Every attempt carries the same request id, as Lambda's retries do (AWS Knowledge
    /// Center, "duplicate invocations ... with the same request ID" are retries).
    async fn run_event(
        &self,
        function: Arc<Function>,
        payload: Bytes,
        request_id: String,
        trace_id: String,
    ) {
        let delays = self.inner.options.event_retry_delays;
        let mut last_error = Bytes::new();
        for attempt in 0..3 {
            match self
                .invoke_once(
                    &function,
                    payload.clone(),
                    request_id.clone(),
                    trace_id.clone(),
                )
                .await
            {
                Outcome::Success(_) => return,
                Outcome::FunctionError(body) => last_error = body,
            }
            if let Some(delay) = delays.get(attempt) {
                tokio::time::sleep(*delay).await;
            }
        }
        let error: serde_json::Value = serde_json::from_slice(&last_error).unwrap_or_default();
        let message = error["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.send_to_destination(&function, &payload, &request_id, 3, &message);
    }

    /// Sends the invocation record of an Event invocation that will not run again to the
    /// function's on-failure destination: after `attempts` failed attempts (condition
    /// RetriesExhausted, as documented), or stopped as a recursive loop before any (the
    /// record's condition for that case is not documented; "RecursiveInvocationDetected"
    /// here, with the error in responsePayload).
    fn send_to_destination(
        &self,
        function: &Function,
        payload: &[u8],
        request_id: &str,
        attempts: u32,
        message: &str,
    ) {
        let (condition, error_type) = match attempts {
            0 => (
                "RecursiveInvocationDetected",
                "RecursiveInvocationException",
            ),
            _ => ("RetriesExhausted", "Unhandled"),
        };
        let record = json!({
            "version": "1.0",
            "timestamp": iso_now(),
            "requestContext": {
                "requestId": request_id,
                "functionArn": format!("{}:$LATEST", function.arn),
                "condition": condition,
                "approximateInvokeCount": attempts
            },
            "requestPayload": serde_json::from_slice::<serde_json::Value>(payload)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(payload))),
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": error_type
            },
            "responsePayload": {"errorMessage": message}
        });
        lock(&function.failure_records).push(record);
    }

    /// Runs one invocation in an execution environment (starting one if none is free); a
    /// failure is kept for [`Lambda::failures`].
    async fn invoke_once(
        &self,
        function: &Arc<Function>,
        payload: Bytes,
        request_id: String,
        trace_id: String,
    ) -> Outcome {
        let outcome = self
            .attempt(function, payload, request_id.clone(), trace_id)
            .await;
        if let Outcome::FunctionError(body) = &outcome {
            let error: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let field = |name: &str| error[name].as_str().unwrap_or_default().to_string();
            lock(&function.failures).push(Failure {
                request_id,
                error_type: field("errorType"),
                message: field("errorMessage"),
            });
        }
        outcome
    }

    async fn attempt(
        &self,
        function: &Arc<Function>,
        payload: Bytes,
        request_id: String,
        trace_id: String,
    ) -> Outcome {
        lock(&function.attempts).push(request_id.clone());
        let (respond, outcome) = oneshot::channel();
        if function
            .queue_tx
            .send(Pending {
                request_id,
                payload,
                trace_id,
                respond,
            })
            .is_err()
        {
            return function_error("Runtime.Unavailable", "the function's queue is closed");
        }
        // Start an environment unless a free one (running, not busy) is there for every
        // queued invocation — as Lambda reuses warm environments and scales out otherwise.
        let queued = function.queued.fetch_add(1, Ordering::SeqCst) + 1;
        let alive = lock(&function.instances).len();
        let free = alive.saturating_sub(function.busy.load(Ordering::SeqCst));
        if free < queued
            && let Err(error) = self.start_instance(function).await
        {
            return function_error("Runtime.StartError", &error);
        }
        outcome.await.unwrap_or_else(|_| {
            function_error("Runtime.ExitError", "the execution environment stopped")
        })
    }

    fn request_id(&self) -> String {
        let n = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
        format!(
            "{:08x}-0000-4000-8000-{:012x}",
            aws_edge::now_ms() as u32,
            n
        )
    }

    /// Starts an execution environment: a Runtime API server of its own and the function's
    /// process pointed at it.
    async fn start_instance(&self, function: &Arc<Function>) -> Result<(), String> {
        let instance_id = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
        let runtime = RuntimeApi {
            lambda: self.clone(),
            function: function.clone(),
            instance: instance_id,
        };
        let server = serve(0, move |request| {
            let runtime = runtime.clone();
            async move { runtime.handle(request).await }
        })
        .await
        .map_err(|e| format!("cannot start a Runtime API server: {e}"))?;
        let spec = &function.spec;
        let mut command = Command::new(&spec.command);
        command.args(&spec.args);
        command
            .envs(&spec.environment)
            .env("AWS_LAMBDA_RUNTIME_API", server.addr().to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", &spec.name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                spec.memory_mb.to_string(),
            )
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", spec.name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", format!("local/{instance_id}"))
            .env("AWS_REGION", &self.inner.options.region)
            .env("AWS_DEFAULT_REGION", &self.inner.options.region)
            .env("_HANDLER", "bootstrap")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let options = &self.inner.options;
        let log_path = options.log_file.clone().or_else(|| {
            options
                .log_dir
                .as_ref()
                .map(|dir| dir.join(format!("{}.log", spec.name)))
        });
        match log_path {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let err = file
                    .try_clone()
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                command.stdout(file).stderr(err);
            }
            // Both to this process's stderr: its stdout may be a pipe that its reader closes
            // (`lca-kvs local`'s exports read up to "ready"), and a function writing its log
            // lines there would die of the broken pipe.
            None => {
                let err = std::io::stderr()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| format!("cannot share stderr with {}: {e}", spec.name))?;
                command.stdout(Stdio::from(err)).stderr(Stdio::inherit());
            }
        }
        let child = command
            .spawn()
            .map_err(|e| format!("{}: cannot start: {e}", spec.command.display()))?;
        lock(&function.instances).insert(
            instance_id,
            Instance {
                child,
                _runtime_api: server,
            },
        );
        // Watch for the process exiting on its own (a crash): its invocation fails at once
        // with Runtime.ExitError, as Lambda reports it, instead of waiting for the timeout.
        let watched = function.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let status = {
                    let mut instances = lock(&watched.instances);
                    let Some(instance) = instances.get_mut(&instance_id) else {
                        return; // stopped by us (timeout, init error, shutdown)
                    };
                    match instance.child.try_wait() {
                        Ok(Some(status)) => {
                            instances.remove(&instance_id);
                            status
                        }
                        Ok(None) => continue,
                        Err(_) => return,
                    }
                };
                let crashed: Vec<InFlight> = {
                    let mut in_flight = lock(&watched.in_flight);
                    let ids: Vec<InFlightKey> = in_flight
                        .iter()
                        .filter(|(_, f)| f.instance == instance_id)
                        .map(|(id, _)| id.clone())
                        .collect();
                    ids.iter().filter_map(|id| in_flight.remove(id)).collect()
                };
                let outcome = function_error(
                    "Runtime.ExitError",
                    &format!("Runtime exited with error: {status}"),
                );
                if crashed.is_empty() {
                    // It died before taking an invocation (failed to start).
                    watched.fail_queued(outcome);
                    return;
                }
                for invocation in crashed {
                    watched.busy.fetch_sub(1, Ordering::SeqCst);
                    let _ = invocation.respond.send(outcome.clone());
                }
                return;
            }
        });
        Ok(())
    }

    /// Ends an invocation that ran out of time: the caller gets Lambda's timeout error and
    /// the environment is stopped (its next invocation starts a fresh one).
    fn time_out(&self, function: &Arc<Function>, key: &InFlightKey, ticket: u64) {
        let in_flight = {
            let mut in_flight = lock(&function.in_flight);
            if in_flight.get(key).is_none_or(|f| f.ticket != ticket) {
                return; // answered already (maybe followed by another attempt)
            }
            in_flight.remove(key)
        };
        let Some(in_flight) = in_flight else {
            return;
        };
        function.busy.fetch_sub(1, Ordering::SeqCst);
        let seconds = function.spec.timeout.as_secs_f64();
        let _ = in_flight.respond.send(function_error(
            "Sandbox.Timedout",
            &format!("Task timed out after {seconds:.2} seconds"),
        ));
        if let Some(mut instance) = lock(&function.instances).remove(&in_flight.instance) {
            let _ = instance.child.start_kill();
        }
    }
}

impl Function {
    /// An environment failed to start (init error, or exited before taking an invocation):
    /// as on Lambda, the invocation waiting for it fails with that error, unless another
    /// environment is alive to take it.
    fn fail_queued(&self, outcome: Outcome) {
        if !lock(&self.instances).is_empty() {
            return;
        }
        let Ok(mut queue) = self.queue_rx.try_lock() else {
            return; // an environment is taking it
        };
        if let Ok(pending) = queue.try_recv() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            let _ = pending.respond.send(outcome);
        }
    }
}

/// The Runtime API of one execution environment.
#[derive(Clone)]
struct RuntimeApi {
    lambda: Lambda,
    function: Arc<Function>,
    instance: u64,
}

impl RuntimeApi {
    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        match (method, path.as_str()) {
            (Method::GET, "/2018-06-01/runtime/invocation/next") => self.next().await,
            (Method::POST, "/2018-06-01/runtime/init/error") => {
                let body = read_body(request, MAX_SYNC_PAYLOAD)
                    .await
                    .unwrap_or_default();
                tracing::warn!(function = %self.function.spec.name, error = %String::from_utf8_lossy(&body), "function init error");
                if let Some(mut instance) = lock(&self.function.instances).remove(&self.instance) {
                    let _ = instance.child.start_kill();
                }
                let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                self.function.fail_queued(function_error(
                    error["errorType"].as_str().unwrap_or("Runtime.InitError"),
                    error["errorMessage"]
                        .as_str()
                        .unwrap_or("the function failed to initialize"),
                ));
                accepted()
            }
            (Method::POST, path) => {
                let Some(rest) = path.strip_prefix("/2018-06-01/runtime/invocation/") else {
                    return not_found(path);
                };
                let (request_id, kind) = match rest.rsplit_once('/') {
                    Some((id, kind @ ("response" | "error"))) => (id.to_string(), kind),
                    _ => return not_found(path),
                };
                let body = read_body(request, MAX_SYNC_PAYLOAD)
                    .await
                    .unwrap_or_default();
                let key = (self.instance, request_id.clone());
                let Some(in_flight) = lock(&self.function.in_flight).remove(&key) else {
                    // Timed out already: the environment is being stopped.
                    return ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "InvalidRequestID",
                        format!("invocation {request_id} is not in flight (timed out or answered)"),
                    )
                    .into_response();
                };
                let outcome = if kind == "response" {
                    Outcome::Success(body)
                } else {
                    Outcome::FunctionError(body)
                };
                self.function.busy.fetch_sub(1, Ordering::SeqCst);
                let _ = in_flight.respond.send(outcome);
                accepted()
            }
            (_, path) => not_found(path),
        }
    }

    /// Waits for the next invocation and hands it to the function.
    async fn next(&self) -> Response<Body> {
        let function = &self.function;
        let pending = function.queue_rx.lock().await.recv().await;
        let Some(pending) = pending else {
            return not_found("queue closed");
        };
        function.queued.fetch_sub(1, Ordering::SeqCst);
        function.busy.fetch_add(1, Ordering::SeqCst);
        let deadline_ms = aws_edge::now_ms() + function.spec.timeout.as_millis() as u64;
        let key = (self.instance, pending.request_id.clone());
        let ticket = self.lambda.inner.next_id.fetch_add(1, Ordering::SeqCst);
        lock(&function.in_flight).insert(
            key.clone(),
            InFlight {
                respond: pending.respond,
                instance: self.instance,
                ticket,
            },
        );
        let (lambda, watched, timeout) =
            (self.lambda.clone(), function.clone(), function.spec.timeout);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            lambda.time_out(&watched, &key, ticket);
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header("lambda-runtime-aws-request-id", &pending.request_id)
            .header("lambda-runtime-deadline-ms", deadline_ms.to_string())
            .header("lambda-runtime-invoked-function-arn", &function.arn)
            .header("lambda-runtime-trace-id", &pending.trace_id)
            .body(full(pending.payload))
            .expect("static response parts are valid")
    }
}

fn function_error(error_type: &str, message: &str) -> Outcome {
    Outcome::FunctionError(Bytes::from(
        json!({ "errorType": error_type, "errorMessage": message }).to_string(),
    ))
}

fn response(status: StatusCode, function_error: Option<&str>, body: Bytes) -> Response<Body> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-amz-executed-version", "$LATEST");
    if let Some(kind) = function_error {
        builder = builder.header("x-amz-function-error", kind);
    }
    builder
        .body(full(body))
        .expect("static response parts are valid")
}

fn accepted() -> Response<Body> {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header("content-type", "application/json")
        .body(full(r#"{"status":"OK"}"#))
        .expect("static response parts are valid")
}

fn not_found(path: &str) -> Response<Body> {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("no Runtime API route {path}"),
    )
    .into_response()
}

/// How many times a function may be invoked in one chain of requests before Lambda stops the
/// next invocation: "If your function is invoked approximately 16 times in the same chain of
/// requests, then Lambda automatically stops the next function invocation in that request
/// chain" (Lambda developer guide, Use Lambda recursive loop detection to prevent infinite
/// loops; Lambda-only loops, synchronous or asynchronous, are covered too).
pub const RECURSION_LIMIT: u32 = 16;

/// A function's recursive loop setting (the PutFunctionRecursionConfig API, CloudFormation's
/// `RecursiveLoop`): `Terminate`, Lambda's default, stops a function caught in a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecursiveLoop {
    /// Stop the invocation that goes past [`RECURSION_LIMIT`] in one chain.
    #[default]
    Terminate,
    /// Let the chain go on (a function that invokes itself by design).
    Allow,
}

/// The X-Ray trace header an invocation gets: the chain's root, and how many times each
/// function has been invoked in the chain. Lambda counts with a trace header field called
/// "Lineage" (AWS Compute blog, "AWS Lambda introduces recursive loop detection APIs"); how
/// the field is written is not documented. Here: `Lineage=<id>:<count>|<id>:<count>`, an id
/// per function ARN. The SDK carries the header from one invocation to the next
/// (`_X_AMZN_TRACE_ID`, set by the runtime client, becomes the request's `X-Amzn-Trace-Id`).
struct Trace {
    root: String,
    parent: String,
    lineage: Vec<(String, u32)>,
}

impl Trace {
    /// The trace of an invocation of `function_arn` asked for by a caller with `caller`'s
    /// trace header (none: a new chain).
    fn for_invocation(caller: Option<&str>, function_arn: &str, request_id: String) -> Self {
        let mut root = None;
        let mut lineage: Vec<(String, u32)> = Vec::new();
        for field in caller.unwrap_or_default().split(';') {
            match field.trim().split_once('=') {
                Some(("Root", value)) => root = Some(value.to_string()),
                Some(("Lineage", value)) => {
                    lineage = value
                        .split('|')
                        .filter_map(|entry| {
                            let (id, count) = entry.split_once(':')?;
                            Some((id.to_string(), count.parse().ok()?))
                        })
                        .collect();
                }
                _ => {}
            }
        }
        let id = lineage_id(function_arn);
        match lineage.iter_mut().find(|(entry, _)| *entry == id) {
            Some((_, count)) => *count += 1,
            None => lineage.push((id, 1)),
        }
        let digits: String = request_id.chars().filter(char::is_ascii_hexdigit).collect();
        Self {
            root: root.unwrap_or_else(|| {
                format!(
                    "1-{:08x}-{:0>24}",
                    aws_edge::now_ms() / 1000,
                    &digits[digits.len().saturating_sub(24)..]
                )
            }),
            parent: format!("{:0>16}", &digits[digits.len().saturating_sub(16)..]),
            lineage,
        }
    }

    /// How many times `function_arn` has been invoked in this chain, this invocation included.
    fn depth(&self, function_arn: &str) -> u32 {
        let id = lineage_id(function_arn);
        self.lineage
            .iter()
            .find(|(entry, _)| *entry == id)
            .map_or(0, |(_, count)| *count)
    }

    /// The header as the function gets it.
    fn header(&self) -> String {
        let lineage: Vec<String> = self
            .lineage
            .iter()
            .map(|(id, count)| format!("{id}:{count}"))
            .collect();
        format!(
            "Root={};Parent={};Sampled=0;Lineage={}",
            self.root,
            self.parent,
            lineage.join("|")
        )
    }
}

/// A short, stable id of a function for the lineage (FNV-1a of its ARN).
fn lineage_id(function_arn: &str) -> String {
    let hash = function_arn.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{hash:08x}")
}

/// The error of an invocation stopped as a recursive loop.
fn recursion_message(function_arn: &str) -> String {
    format!(
        "Lambda detected {function_arn} invoked more than {RECURSION_LIMIT} times in one chain of requests (a recursive loop) and stopped it; set its RecursiveLoop to Allow if it invokes itself by design"
    )
}

/// The time now as ISO 8601 with milliseconds (UTC), as invocation records carry it.
fn iso_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

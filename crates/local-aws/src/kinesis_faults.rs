//! [`KinesisFaults`]: a proxy in front of a Kinesis emulator (moto) that makes chosen
//! PutRecord/PutRecords requests fail the way Kinesis does under load — throttling of a whole
//! request, or of some records of a batch — so a producer's retries are tested against the
//! real SDK client and a real stream. Everything else passes through unchanged. It serves
//! HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on one port, so without faults it is also the
//! HTTP/2 front of moto (HTTP/1.1 only) for clients that speak nothing else: the JavaScript
//! SDK v3's Kinesis client (`lca-kvs local` exports it as the Kinesis endpoint). Since moto
//! serves every service on one port, a client of DynamoDB or S3 pointed at the proxy reaches
//! moto through it too, and any request can be made to hang ([`KinesisFaults::hang_next`]):
//! what a client's time limits are for.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::http::{Body, Server, full, read_body};
use crate::lock;

/// What the next PutRecord or PutRecords request suffers (one fault per request, in the
/// order injected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KinesisFault {
    /// The whole request fails with ProvisionedThroughputExceededException (HTTP 400).
    Throttle,
    /// PutRecords: the records at these indices fail with ProvisionedThroughputExceeded
    /// (the others are stored). On PutRecord it acts as [`KinesisFault::Throttle`].
    FailRecords(Vec<usize>),
    /// The request goes through untouched (to aim the faults queued after it at later
    /// requests).
    Pass,
    /// The whole request is refused with this error type (HTTP 400): one that retrying does
    /// not fix, such as `AccessDeniedException` or `KMSAccessDeniedException` (both among
    /// PutRecord's and PutRecords' errors in the Kinesis Data Streams API reference).
    Refuse(String),
}

#[derive(Default)]
struct State {
    /// Every PutRecord(s) is throttled until lifted.
    outage: bool,
    /// Every PutRecord(s) is refused with this error until lifted.
    refusal: Option<String>,
    faults: VecDeque<KinesisFault>,
    applied: Vec<KinesisFault>,
    /// Operations whose next request hangs ([`KinesisFaults::hang_next`]), one entry each.
    hang: Vec<String>,
    /// Operations every request of which hangs until lifted
    /// ([`KinesisFaults::set_unanswered`]).
    unanswered: Vec<String>,
    /// The requests left hanging, in order ([`KinesisFaults::hung`]).
    hung: Vec<Hung>,
}

/// A request left hanging.
struct Hung {
    operation: String,
    since: std::time::Instant,
    /// Until the client gave up on it: closed the connection or sent the request again.
    given_up_after: Option<std::time::Duration>,
}

/// Records how long a request left hanging was held when the client gives up on it (hyper
/// drops the request's future when the connection closes).
struct Held {
    state: Arc<Mutex<State>>,
    index: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        let hung = &mut lock(&self.state).hung[self.index];
        hung.given_up_after
            .get_or_insert_with(|| hung.since.elapsed());
    }
}

/// The fault-injecting proxy.
#[derive(Clone)]
pub struct KinesisFaults {
    upstream: String,
    state: Arc<Mutex<State>>,
    client: Client<HttpConnector, http_body_util::Full<Bytes>>,
}

/// Largest request body forwarded (Kinesis: 5 MiB per PutRecords, as base64 JSON).
const MAX_REQUEST_BYTES: usize = 8 << 20;

impl KinesisFaults {
    /// A proxy forwarding to `upstream` (e.g. moto's `http://127.0.0.1:PORT`).
    pub fn new(upstream: &str) -> Self {
        Self {
            upstream: upstream.trim_end_matches('/').to_string(),
            state: Arc::default(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Queues a fault for the next PutRecord/PutRecords request.
    pub fn inject(&self, fault: KinesisFault) {
        lock(&self.state).faults.push_back(fault);
    }

    /// Starts (`true`) or ends an outage: meanwhile every PutRecord/PutRecords request is
    /// throttled and nothing is stored, so what the stream holds stops changing.
    pub fn set_outage(&self, on: bool) {
        lock(&self.state).outage = on;
    }

    /// Starts (`Some(error type)`) or ends a refusal: meanwhile every PutRecord/PutRecords
    /// request fails with [`KinesisFault::Refuse`] and nothing is stored (a key or a grant
    /// taken away, until the operator puts it back).
    pub fn set_refusal(&self, error_type: Option<&str>) {
        lock(&self.state).refusal = error_type.map(str::to_string);
    }

    /// Makes the next request of `operation` hang (no answer until the client gives up):
    /// an operation of any service behind the proxy, as X-Amz-Target names it (`PutRecord`,
    /// `GetItem`, `UpdateItem`) or, for S3's REST requests, `PutObject`, `UploadPart`,
    /// `UploadPartCopy`, `CreateMultipartUpload`, `CompleteMultipartUpload`, `GetObject`.
    pub fn hang_next(&self, operation: &str) {
        lock(&self.state).hang.push(operation.to_string());
    }

    /// Starts (`true`) or ends an outage of `operation` (named as for
    /// [`KinesisFaults::hang_next`]): meanwhile every request of it is left hanging, as when a
    /// service is unreachable.
    pub fn set_unanswered(&self, operation: &str, on: bool) {
        let mut state = lock(&self.state);
        state.unanswered.retain(|o| o != operation);
        if on {
            state.unanswered.push(operation.to_string());
        }
    }

    /// The requests left hanging so far, in order: each one's operation and how long it was
    /// held until the client gave up on it, by closing the connection or by sending the
    /// same operation again (an HTTP/1.1 client may keep a connection it gave up on open);
    /// `None` while neither has happened.
    pub fn hung(&self) -> Vec<(String, Option<std::time::Duration>)> {
        lock(&self.state)
            .hung
            .iter()
            .map(|h| (h.operation.clone(), h.given_up_after))
            .collect()
    }

    /// The requests left hanging whose client did not give up on them at `limit` (its
    /// attempt time limit), each described; empty when every one was. "At" is from half a
    /// second before `limit` (the client's clock starts as it sends, a little before the
    /// proxy's) to 3 s after (a client that gives up by sending again does so after its
    /// backoff: the SDK's standard mode waits up to 1 s before a second attempt).
    pub fn not_given_up_at(&self, limit: std::time::Duration) -> Vec<String> {
        let early = limit.saturating_sub(std::time::Duration::from_millis(500));
        let late = limit + std::time::Duration::from_secs(3);
        self.hung()
            .into_iter()
            .filter_map(|(operation, held)| match held {
                None => Some(format!("{operation}: still held")),
                Some(held) if held <= early || held >= late => Some(format!(
                    "{operation}: given up after {held:?}, not at the attempt limit {limit:?}"
                )),
                Some(_) => None,
            })
            .collect()
    }

    /// The faults applied so far, in order.
    pub fn applied(&self) -> Vec<KinesisFault> {
        lock(&self.state).applied.clone()
    }

    /// Serves on `127.0.0.1:port` (0: any free port).
    pub async fn serve(&self, port: u16) -> std::io::Result<Server> {
        let proxy = self.clone();
        crate::http::serve(port, move |request| {
            let proxy = proxy.clone();
            async move { proxy.handle(request).await }
        })
        .await
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let target = crate::http::amz_target(&request);
        let held = {
            let operation = operation_of(&request, &target);
            let mut state = lock(&self.state);
            for earlier in state.hung.iter_mut().filter(|h| h.operation == operation) {
                earlier
                    .given_up_after
                    .get_or_insert_with(|| earlier.since.elapsed());
            }
            let next = state.hang.iter().position(|o| *o == operation);
            if let Some(position) = next {
                state.hang.remove(position);
            }
            let hangs = next.is_some() || state.unanswered.contains(&operation);
            hangs.then(|| {
                state.hung.push(Hung {
                    operation,
                    since: std::time::Instant::now(),
                    given_up_after: None,
                });
                Held {
                    state: self.state.clone(),
                    index: state.hung.len() - 1,
                }
            })
        };
        if let Some(held) = held {
            // Held until the client closes the connection, which drops this future.
            std::future::pending::<()>().await;
            drop(held);
        }
        let method = request.method().clone();
        let uri = request.uri().clone();
        let headers = request.headers().clone();
        let body = match read_body(request, MAX_REQUEST_BYTES).await {
            Ok(body) => body,
            Err(problem) => {
                return error(StatusCode::BAD_REQUEST, "SerializationException", &problem);
            }
        };
        let operation = target.rsplit('.').next().unwrap_or_default();
        let fault = if matches!(operation, "PutRecord" | "PutRecords") {
            let mut state = lock(&self.state);
            let fault = if let Some(refusal) = &state.refusal {
                Some(KinesisFault::Refuse(refusal.clone()))
            } else if state.outage {
                Some(KinesisFault::Throttle)
            } else {
                state.faults.pop_front()
            };
            if let Some(fault) = &fault {
                state.applied.push(fault.clone());
            }
            fault
        } else {
            None
        };
        let forward = |body: Bytes| {
            let mut builder = Request::builder().method(method.clone()).uri(format!(
                "{}{}",
                self.upstream,
                uri.path_and_query().map_or("/", |p| p.as_str())
            ));
            for (name, value) in &headers {
                if name != http::header::CONTENT_LENGTH && name != http::header::HOST {
                    builder = builder.header(name, value);
                }
            }
            let request = builder
                .body(http_body_util::Full::new(body))
                .expect("a request from a valid one");
            self.client.request(request)
        };
        match (fault, operation) {
            (None | Some(KinesisFault::Pass), _) => match forward(body).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = body
                        .map_err(|e| -> crate::http::BodyError { Box::new(e) })
                        .boxed();
                    Response::from_parts(parts, body)
                }
                Err(e) => error(
                    StatusCode::BAD_GATEWAY,
                    "InternalFailure",
                    &format!("upstream {}: {e}", self.upstream),
                ),
            },
            (Some(KinesisFault::FailRecords(failed)), "PutRecords") => {
                let Ok(mut request) = serde_json::from_slice::<Value>(&body) else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "SerializationException",
                        "not JSON",
                    );
                };
                let records = request["Records"].as_array().cloned().unwrap_or_default();
                let kept: Vec<Value> = records
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !failed.contains(i))
                    .map(|(_, r)| r.clone())
                    .collect();
                let mut stored = Vec::new();
                if !kept.is_empty() {
                    request["Records"] = Value::from(kept);
                    let body = Bytes::from(serde_json::to_vec(&request).expect("JSON"));
                    let answer = match forward(body).await {
                        Ok(response) => response.into_body().collect().await.map(|c| c.to_bytes()),
                        Err(e) => {
                            return error(
                                StatusCode::BAD_GATEWAY,
                                "InternalFailure",
                                &format!("upstream {}: {e}", self.upstream),
                            );
                        }
                    };
                    let answer: Value = answer
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .unwrap_or_default();
                    stored = answer["Records"].as_array().cloned().unwrap_or_default();
                }
                let mut stored = stored.into_iter();
                let merged: Vec<Value> = (0..records.len())
                    .map(|i| {
                        if failed.contains(&i) {
                            json!({
                                "ErrorCode": "ProvisionedThroughputExceededException",
                                "ErrorMessage": "Rate exceeded for shard shardId-000000000000 in stream (injected)."
                            })
                        } else {
                            stored.next().unwrap_or_default()
                        }
                    })
                    .collect();
                let failed_count = merged
                    .iter()
                    .filter(|r| r.get("ErrorCode").is_some())
                    .count();
                aws_json(
                    StatusCode::OK,
                    &json!({"FailedRecordCount": failed_count, "Records": merged}),
                )
            }
            (Some(KinesisFault::Refuse(error_type)), _) => error(
                StatusCode::BAD_REQUEST,
                &error_type,
                "Refused (injected): the stream, its key or the caller's permissions do not allow this request.",
            ),
            (Some(_), _) => error(
                StatusCode::BAD_REQUEST,
                "ProvisionedThroughputExceededException",
                "Rate exceeded for shard shardId-000000000000 (injected).",
            ),
        }
    }
}

/// The operation a request asks for: X-Amz-Target's (the JSON protocols of Kinesis and
/// DynamoDB), or an S3 REST request's by its method and query (Amazon S3 API reference).
fn operation_of<B>(request: &Request<B>, target: &str) -> String {
    if !target.is_empty() {
        return target.rsplit('.').next().unwrap_or_default().to_string();
    }
    let query = request.uri().query().unwrap_or_default();
    let has = |name: &str| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(name))
    };
    let method = request.method();
    match () {
        _ if method == http::Method::PUT
            && has("partNumber")
            && request.headers().contains_key("x-amz-copy-source") =>
        {
            "UploadPartCopy"
        }
        _ if method == http::Method::PUT && has("partNumber") => "UploadPart",
        _ if method == http::Method::PUT => "PutObject",
        _ if method == http::Method::POST && has("uploads") => "CreateMultipartUpload",
        _ if method == http::Method::POST && has("uploadId") => "CompleteMultipartUpload",
        _ if method == http::Method::GET => "GetObject",
        _ => "",
    }
    .to_string()
}

fn aws_json(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(serde_json::to_vec(value).expect("JSON")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    response
}

/// A Kinesis (awsJson1.1) error: the type in `__type`.
fn error(status: StatusCode, error_type: &str, message: &str) -> Response<Body> {
    aws_json(status, &json!({"__type": error_type, "message": message}))
}

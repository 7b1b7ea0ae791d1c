//! The HTTP plumbing shared by the local services: a loopback server (HTTP/1.1 and h2c via
//! hyper-util's auto builder) and AWS-shaped JSON error responses.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Error that aborts a streaming response (the connection is cut, as a network fault would).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Response body type of every local service.
pub type Body = BoxBody<Bytes, BodyError>;

/// A whole body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON response with status 200.
pub fn json(value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(full(value.to_string()))
        .expect("static response parts are valid")
}

/// An error as AWS's JSON protocols send it: the type in `x-amzn-ErrorType` and in `__type`,
/// the text in `message`.
pub fn aws_error(status: StatusCode, error_type: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "__type": error_type, "message": message });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-amzn-ErrorType", error_type)
        .body(full(body.to_string()))
        .expect("static response parts are valid")
}

/// An AWS-shaped API error, turned into a response at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The AWS error type (`x-amzn-ErrorType`).
    pub error_type: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// An error of the given status and type.
    pub fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error_type,
            message: message.into(),
        }
    }

    /// The response AWS would send.
    pub fn into_response(self) -> Response<Body> {
        aws_error(self.status, self.error_type, &self.message)
    }
}

/// A running local server: its address and the task serving it (aborted on drop).
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    scheme: &'static str,
    task: JoinHandle<()>,
}

impl Server {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` over TLS (the name the
    /// certificate is for).
    pub fn url(&self) -> String {
        match self.scheme {
            "https" => format!("https://localhost:{}", self.addr.port()),
            scheme => format!("{scheme}://{}", self.addr),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, and the TLS configuration that
/// serves it with ALPN `h2` (and `http/1.1`), as AWS endpoints do.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate in PEM, for clients to trust.
    pub cert_pem: String,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Generates a fresh self-signed identity.
    pub fn self_signed() -> Result<Self, String> {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .map_err(|e| format!("TLS configuration: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            cert_pem: certified.cert.pem(),
            config: Arc::new(config),
        })
    }
}

/// Binds `127.0.0.1:port` (0: any free port) and serves `handler` on every connection, over
/// plain HTTP/1.1 and h2c (prior knowledge).
pub async fn serve<H, F>(port: u16, handler: H) -> std::io::Result<Server>
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    serve_with(port, None, handler).await
}

/// Like [`serve`], over TLS with `identity` when given (HTTP/2 or HTTP/1.1 by ALPN).
pub async fn serve_with<H, F>(
    port: u16,
    tls: Option<&TlsIdentity>,
    handler: H,
) -> std::io::Result<Server>
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let handler = Arc::new(handler);
    let acceptor = tls.map(|identity| tokio_rustls::TlsAcceptor::from(identity.config.clone()));
    let scheme = if tls.is_some() { "https" } else { "http" };
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // HTTP/2 (only Transcribe Streaming's clients use it): each stream gets the
                // protocol's initial flow-control window (65,535 bytes, RFC 9113 section
                // 6.9.2) instead of hyper's 1 MiB, so a session that stops reading holds its
                // client back after about 2 s of 8 kHz stereo audio, not 32 s (the
                // connection's stays hyper's, shared by its streams). The windows Amazon
                // Transcribe grants are not documented.
                builder.http2().initial_stream_window_size(H2_WINDOW);
                // A client that goes away mid-response is not an error of the server's.
                match acceptor {
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                        }
                    }
                }
            });
        }
    });
    Ok(Server { addr, scheme, task })
}

/// The HTTP/2 flow-control window the stand-ins grant each stream (RFC 9113's initial value).
const H2_WINDOW: u32 = 65_535;

/// Reads a request body up to `limit` bytes.
pub async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, String> {
    let limited = http_body_util::Limited::new(request.into_body(), limit);
    limited
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| format!("request body unreadable or larger than {limit} bytes: {e}"))
}

/// The `X-Amz-Target` header: the operation an AWS JSON-protocol request calls
/// (`Service_Version.Operation`), empty when missing.
pub fn amz_target<B>(request: &Request<B>) -> String {
    request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Decodes `%XX` escapes (the SDK escapes the colons of an ARN in the path).
pub(crate) fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(value) = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16)
        {
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

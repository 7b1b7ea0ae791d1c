//! [`MotoServer`]: moto's server (PyPI `moto[server]`) as a child process, for Kinesis, S3 and
//! DynamoDB — the emulator that exists for them, rather than a stand-in of ours.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `moto_server` on a free loopback port, stopped on drop.
#[derive(Debug)]
pub struct MotoServer {
    url: String,
    child: Child,
}

/// Why moto could not be started.
#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    /// The executable was not found.
    #[error(
        "moto_server not found (looked at $MOTO_SERVER and on PATH): install it with \
         `pip install \"moto[server]==5.1.22\"` (5.2.x breaks S3 multipart uploads for the \
         Rust SDK), or run `bash scripts/test.sh`, which installs it"
    )]
    NotInstalled,
    /// It could not be started or did not listen in time.
    #[error("moto_server ({path}): {problem}")]
    Failed {
        /// The executable.
        path: String,
        /// What went wrong.
        problem: String,
    },
}

impl MotoServer {
    /// The executable: `$MOTO_SERVER` if set, else `moto_server` on PATH.
    pub fn executable() -> PathBuf {
        std::env::var_os("MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("moto_server"))
    }

    /// Starts moto and waits (up to 20 s) until it answers as moto on its port. The port is
    /// one the system had free a moment before; should another process take it first (seen
    /// in CI, where many tests start servers at once: a test's first request was refused),
    /// moto cannot listen on it and something else answers there, so the start is tried again
    /// on a new port, three times at most.
    pub fn start() -> Result<Self, MotoError> {
        let path = Self::executable();
        let mut attempt = 1;
        loop {
            match Self::start_on_a_free_port(&path) {
                Err(Start::PortTaken(_)) if attempt < 3 => attempt += 1,
                Err(Start::PortTaken(problem) | Start::Failed(problem)) => {
                    return Err(MotoError::Failed {
                        path: path.display().to_string(),
                        problem,
                    });
                }
                Err(Start::NotInstalled) => return Err(MotoError::NotInstalled),
                Ok(server) => return Ok(server),
            }
        }
    }

    fn start_on_a_free_port(path: &std::path::Path) -> Result<Self, Start> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Start::Failed(format!("no free loopback port: {e}")))?
            .port();
        let child = match Command::new(path)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Start::NotInstalled);
            }
            Err(e) => return Err(Start::Failed(format!("cannot start: {e}"))),
        };
        let mut server = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(Start::PortTaken(format!(
                    "exited with {status} before answering on port {port} (taken by another process?)"
                )));
            }
            if answers_as_moto(port) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(Start::PortTaken(format!(
            "did not answer as moto on port {port} within 20 s"
        )))
    }

    /// Its endpoint URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Why one start failed.
enum Start {
    /// The executable was not found.
    NotInstalled,
    /// Moto did not answer on its port: worth another port.
    PortTaken(String),
    /// Anything else.
    Failed(String),
}

/// Whether the server on loopback `port` answers moto's own API (`GET /moto-api/config`,
/// answered with 2xx), not merely accepts connections.
fn answers_as_moto(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /moto-api/config HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).is_ok() && status.starts_with(b"HTTP/1.") && status[9] == b'2'
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates Kinesis data stream `name` (one shard, as LCA's stream is read here) in the moto
/// server at `url`; returns a client of that Kinesis.
pub async fn create_kinesis_stream(
    url: &str,
    name: &str,
) -> Result<aws_sdk_kinesis::Client, String> {
    let client = aws_sdk_kinesis::Client::new(&crate::sdk_config(url));
    client
        .create_stream()
        .stream_name(name)
        .shard_count(1)
        .send()
        .await
        .map_err(|e| format!("cannot create Kinesis stream {name} in moto at {url}: {e:?}"))?;
    Ok(client)
}

/// Every record of the one-shard stream `name`, in stream order, as (partition key, data).
pub async fn kinesis_records(
    client: &aws_sdk_kinesis::Client,
    name: &str,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let failed = |what: &str, e: &dyn std::fmt::Debug| format!("{what} of stream {name}: {e:?}");
    let shards = client
        .list_shards()
        .stream_name(name)
        .send()
        .await
        .map_err(|e| failed("ListShards", &e))?;
    let shard = shards
        .shards()
        .first()
        .ok_or_else(|| format!("stream {name} has no shard"))?
        .shard_id()
        .to_string();
    let mut iterator = client
        .get_shard_iterator()
        .stream_name(name)
        .shard_id(shard)
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .map_err(|e| failed("GetShardIterator", &e))?
        .shard_iterator;
    let mut records = Vec::new();
    while let Some(it) = iterator {
        let page = client
            .get_records()
            .shard_iterator(it)
            .limit(10_000)
            .send()
            .await
            .map_err(|e| failed("GetRecords", &e))?;
        if page.records.is_empty() {
            break;
        }
        records.extend(
            page.records
                .into_iter()
                .map(|r| (r.partition_key.unwrap_or_default(), r.data.into_inner())),
        );
        iterator = page.next_shard_iterator;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_server_answering_motos_api_counts_as_moto() {
        use std::io::{Read as _, Write as _};
        // Another server on the port (what a start finds when its port was taken).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let other = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 64];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        });
        assert!(!answers_as_moto(port));
        other.join().unwrap();
        // Nothing listening any more.
        assert!(!answers_as_moto(port));
    }
}

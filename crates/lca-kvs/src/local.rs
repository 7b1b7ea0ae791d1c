//! `lca-kvs local`: the local AWS stand-ins in the foreground.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use local_aws::http::TlsIdentity;
use local_aws::kvs::{Kvs, KvsOptions};
use local_aws::lambda::{FunctionSpec, Lambda, LambdaOptions, RecursiveLoop};
use local_aws::moto::{MotoError, MotoServer};
use local_aws::transcribe::{Pace, Transcribe, TranscribeOptions};

/// Options of `lca-kvs local`.
#[derive(Args)]
pub struct LocalArgs {
    /// A stream to create and play live from start-up: NAME=CAPTURE.mkv (repeatable).
    #[arg(long = "stream", value_name = "NAME=CAPTURE.mkv")]
    streams: Vec<String>,
    /// Playback speed of the captures: 1.0 is real time, 0 appends everything at once.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Port of the Kinesis Video Streams stand-in (0: any free port).
    #[arg(long, default_value_t = 0)]
    kvs_port: u16,
    /// Port of the Transcribe Streaming stand-in (0: any free port).
    #[arg(long, default_value_t = 0)]
    transcribe_port: u16,
    /// A Lambda function to serve: NAME=BINARY (a lambda_runtime executable; repeatable), or
    /// NAME="COMMAND ARG..." to run it through another program (split at spaces), e.g. an
    /// arm64 zip's bootstrap under qemu: "qemu-aarch64-static -L /usr/aarch64-linux-gnu
    /// ./bootstrap". It runs with this process's environment, a 900 s timeout and 128 MB.
    #[arg(long = "function", value_name = "NAME=BINARY")]
    functions: Vec<String>,
    /// Let function NAME invoke itself past Lambda's recursive loop detection, as a stack
    /// does with `RecursiveLoop: Allow` (repeatable). Without it a function is stopped after
    /// 16 invocations in one chain, as on AWS by default: a self-invoking transcriber (LCA's
    /// own included) needs it for calls of more than 16 invocations.
    #[arg(long = "allow-recursion", value_name = "NAME")]
    allow_recursion: Vec<String>,
    /// How often the transcriber's sweep runs, in seconds (the stack's schedule: 60; 0: never).
    /// The sweep goes to the --function named by --sweep, or else by TRANSCRIBER_FUNCTION_ARN.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    sweep_every: u64,
    /// The --function that gets the scheduled sweep (default: the one TRANSCRIBER_FUNCTION_ARN
    /// names, when it is served).
    #[arg(long, value_name = "NAME")]
    sweep: Option<String>,
    /// Port of the Lambda stand-in (0: any free port).
    #[arg(long, default_value_t = 0)]
    lambda_port: u16,
    /// Do not start moto server for Kinesis, S3 and DynamoDB even when it is installed.
    #[arg(long)]
    no_moto: bool,
    /// Serve Transcribe Streaming over TLS (ALPN h2) with a fresh self-signed certificate;
    /// its PEM is written to a file named by the AWS_CA_BUNDLE / NODE_EXTRA_CA_CERTS exports.
    #[arg(long)]
    tls: bool,
    /// FRAGMENT_NUMBER and CONTINUATION_TOKEN start with the named fragment instead of after it.
    #[arg(long)]
    include_named_fragment: bool,
    /// Concurrent Transcribe streams allowed, as an account's quota (AWS default 25); a
    /// stream beyond it is refused with LimitExceededException (HTTP 429). Default: no limit.
    #[arg(long, value_name = "N")]
    transcribe_max_sessions: Option<usize>,
    #[command(flatten)]
    transcribe_pace: TranscribePaceArgs,
    /// The LCA Kinesis data stream created in moto (exported as KINESIS_STREAM_NAME).
    #[arg(long, default_value = "lca-kinesis-stream")]
    kinesis_stream: String,
    /// A recordings bucket to create in moto (exported as OUTPUT_BUCKET).
    #[arg(long, value_name = "NAME")]
    bucket: Option<String>,
    /// A call lease table to create in moto (exported as TRANSCRIBER_CALL_EVENT_TABLE_NAME).
    #[arg(long, value_name = "NAME")]
    lease_table: Option<String>,
    /// The --function functions may read only Kinesis Video streams whose name starts with
    /// PREFIX, as a deployed stack's IAM policy allows (its ConnectKvsStreamNamePrefix); other
    /// streams answer them AccessDeniedException. They get their own access key for this.
    #[arg(long, value_name = "PREFIX")]
    functions_stream_prefix: Option<String>,
}

/// How the local Transcribe keeps time (`local` and `demo`; the test harness sets the same
/// [`Pace`] in its `TranscribeOptions`).
#[derive(Args, Debug, Clone, Default)]
pub struct TranscribePaceArgs {
    /// Seconds of audio the local Transcribe processes per second: 1 is real time (how fast
    /// Amazon Transcribe processes audio sent faster is not documented; AWS's streaming SDK
    /// says real time). A session behind on its audio stops reading, holding the client back
    /// through HTTP/2 flow control. Default: as fast as the audio comes.
    #[arg(long, value_name = "X")]
    transcribe_speed: Option<f64>,
    /// The local Transcribe refuses every stream for SECONDS from its first request with
    /// LimitExceededException, as when the account's concurrent stream quota is in use: a
    /// capacity stall over a call's first seconds, played from outside.
    #[arg(long, value_name = "SECONDS")]
    transcribe_unavailable_for: Option<f64>,
}

impl TranscribePaceArgs {
    /// The pace the options ask for, checked.
    pub fn pace(&self) -> Result<Pace> {
        let unavailable_for = match self.transcribe_unavailable_for {
            None => std::time::Duration::ZERO,
            Some(seconds) => std::time::Duration::try_from_secs_f64(seconds).map_err(|_| {
                anyhow::anyhow!(
                    "--transcribe-unavailable-for {seconds}: must be 0 or a positive number of seconds"
                )
            })?,
        };
        let pace = Pace {
            speed: self.transcribe_speed,
            unavailable_for,
        };
        pace.check()
            .map_err(|why| anyhow::anyhow!("--transcribe-speed: {why}"))?;
        Ok(pace)
    }

    /// Whether any option was given (they apply to the local Transcribe only).
    pub fn is_set(&self) -> bool {
        self.transcribe_speed.is_some() || self.transcribe_unavailable_for.is_some()
    }
}

/// The access key id the --function functions sign with (a role's, on AWS).
const FUNCTIONS_ACCESS_KEY: &str = "AKIDLOCALFUNCTIONS";

/// Runs the stand-ins until Ctrl-C.
pub fn run(args: LocalArgs) -> Result<()> {
    if !(args.speed >= 0.0 && args.speed.is_finite()) {
        bail!("--speed {}: must be 0 or a positive number", args.speed);
    }
    let served: Vec<&str> = args
        .functions
        .iter()
        .filter_map(|spec| spec.split_once('=').map(|(name, _)| name))
        .collect();
    if let Some(name) = args
        .allow_recursion
        .iter()
        .find(|n| !served.contains(&n.as_str()))
    {
        bail!(
            "--allow-recursion {name}: no --function {name}=BINARY to allow it for (functions: {})",
            if served.is_empty() {
                "none".to_string()
            } else {
                served.join(", ")
            }
        );
    }
    let sweep_to = sweep_target(&args, &served)?;
    let pace = args.transcribe_pace.pace()?;
    if args.transcribe_max_sessions == Some(0) {
        bail!("--transcribe-max-sessions 0: must be at least 1");
    }
    let mut streams = Vec::new();
    for spec in &args.streams {
        let Some((name, path)) = spec.split_once('=') else {
            bail!("--stream {spec:?}: expected NAME=CAPTURE.mkv");
        };
        let chunks = crate::read_capture(&PathBuf::from(path))?;
        streams.push((name.to_string(), chunks));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let kvs = Kvs::new(KvsOptions {
            include_named_fragment: args.include_named_fragment,
            restricted: args
                .functions_stream_prefix
                .clone()
                .map(|prefix| (FUNCTIONS_ACCESS_KEY.to_string(), prefix)),
            ..KvsOptions::default()
        });
        let server = kvs.serve(args.kvs_port).await.with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{} (port in use? choose another with --kvs-port)",
                args.kvs_port
            )
        })?;
        // Long-running: keep no audio in the session records.
        let transcribe = Transcribe::new(TranscribeOptions {
            record_audio: false,
            max_sessions: args.transcribe_max_sessions,
            pace,
            ..TranscribeOptions::default()
        });
        let identity = match args.tls {
            true => Some(TlsIdentity::self_signed().map_err(anyhow::Error::msg)?),
            false => None,
        };
        let cert_file = match &identity {
            Some(identity) => {
                let path = std::env::temp_dir().join(format!("lca-kvs-local-{}.pem", std::process::id()));
                std::fs::write(&path, &identity.cert_pem)
                    .with_context(|| format!("{}: cannot write the certificate", path.display()))?;
                Some(path)
            }
            None => None,
        };
        let transcribe_server = transcribe
            .serve_with(args.transcribe_port, identity.as_ref())
            .await
            .with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{} (port in use? choose another with --transcribe-port)",
                args.transcribe_port
            )
        })?;
        // Transcribe's batch side: StartCallAnalyticsJob (post-call analytics), taken, not run.
        let jobs_server = local_aws::call_analytics::CallAnalyticsJobs::new()
            .serve(0)
            .await
            .context("cannot start the local Transcribe (jobs) on loopback")?;
        let lambda = Lambda::new(LambdaOptions::default());
        let lambda_server = lambda.serve(args.lambda_port).await.with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{} (port in use? choose another with --lambda-port)",
                args.lambda_port
            )
        })?;
        let moto = if args.no_moto {
            None
        } else {
            match MotoServer::start() {
                Ok(moto) => Some(moto),
                Err(MotoError::NotInstalled) => None,
                Err(error) => return Err(error.into()),
            }
        };
        // Kinesis through a proxy in front of moto that speaks HTTP/2 (h2c) as well as
        // HTTP/1.1: the JavaScript SDK's Kinesis client speaks only HTTP/2, moto only 1.1.
        let mut kinesis_front = None;
        if let Some(moto) = &moto {
            local_aws::moto::create_kinesis_stream(moto.url(), &args.kinesis_stream)
                .await
                .map_err(anyhow::Error::msg)?;
            kinesis_front = Some(
                local_aws::kinesis_faults::KinesisFaults::new(moto.url())
                    .serve(0)
                    .await
                    .context("cannot start the Kinesis front on loopback")?,
            );
        }
        if let Some(moto) = &moto {
            let sdk = local_aws::sdk_config(moto.url());
            if let Some(bucket) = &args.bucket {
                aws_sdk_s3::Client::from_conf(
                    aws_sdk_s3::config::Builder::from(&sdk)
                        .force_path_style(true)
                        .build(),
                )
                .create_bucket()
                .bucket(bucket)
                .send()
                .await
                .with_context(|| format!("--bucket {bucket}: cannot create it in moto"))?;
            }
            if let Some(table) = &args.lease_table {
                call_transcriber::lease::CallLease::new(
                    aws_sdk_dynamodb::Client::new(&sdk),
                    table.clone(),
                    std::time::Duration::from_secs(30),
                )
                .create_table()
                .await
                .with_context(|| format!("--lease-table {table}: cannot create it in moto"))?;
            }
        } else if args.bucket.is_some() || args.lease_table.is_some() {
            bail!("--bucket and --lease-table need moto server (installed, and no --no-moto)");
        }
        let mut players = Vec::new();
        let mut arns = Vec::new();
        for (name, chunks) in streams {
            arns.push((name.clone(), kvs.create_stream(&name)?));
            players.push(kvs.play(&name, chunks, args.speed));
        }
        // Credentials and region for the SDKs (the local services accept any), and where
        // each service is: printed as export lines, and the environment of the functions.
        let mut exports: Vec<(String, String)> = vec![
            ("AWS_ACCESS_KEY_ID".into(), "AKIDLOCAL".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "local".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ];
        for (name, arn) in &arns {
            exports.push((format!("KVS_STREAM_ARN_{}", env_suffix(name)), arn.clone()));
        }
        exports.push(("AWS_ENDPOINT_URL_KINESIS_VIDEO".into(), server.url()));
        exports.push((
            "AWS_ENDPOINT_URL_TRANSCRIBE_STREAMING".into(),
            transcribe_server.url(),
        ));
        exports.push(("AWS_ENDPOINT_URL_TRANSCRIBE".into(), jobs_server.url()));
        exports.push(("AWS_ENDPOINT_URL_LAMBDA".into(), lambda_server.url()));
        if let (Some(moto), Some(kinesis)) = (&moto, &kinesis_front) {
            exports.push(("AWS_ENDPOINT_URL_KINESIS".into(), kinesis.url()));
            for service in ["S3", "DYNAMODB"] {
                exports.push((format!("AWS_ENDPOINT_URL_{service}"), moto.url().to_string()));
            }
            exports.push(("KINESIS_STREAM_NAME".into(), args.kinesis_stream.clone()));
            if let Some(bucket) = &args.bucket {
                exports.push(("OUTPUT_BUCKET".into(), bucket.clone()));
            }
            if let Some(table) = &args.lease_table {
                exports.push(("TRANSCRIBER_CALL_EVENT_TABLE_NAME".into(), table.clone()));
            }
        }
        if let Some(path) = &cert_file {
            exports.push(("AWS_CA_BUNDLE".into(), path.display().to_string()));
            exports.push(("NODE_EXTRA_CA_CERTS".into(), path.display().to_string()));
        }
        // The functions run as deployed in this stand-in account: its endpoints and
        // resources, on top of this process's environment (which sets the rest, e.g.
        // CONNECT_INSTANCE_ARN, TRANSCRIBER_FUNCTION_ARN).
        let mut environment: std::collections::BTreeMap<String, String> =
            exports.iter().cloned().collect();
        environment.insert("AWS_SESSION_TOKEN".into(), String::new());
        if args.functions_stream_prefix.is_some() {
            environment.insert("AWS_ACCESS_KEY_ID".into(), FUNCTIONS_ACCESS_KEY.into());
        }
        for spec in &args.functions {
            let Some((name, command, function_args)) = function_spec(spec) else {
                bail!("--function {spec:?}: expected NAME=BINARY or NAME=\"COMMAND ARG...\"");
            };
            lambda
                .add_function(FunctionSpec {
                    name: name.to_string(),
                    command,
                    args: function_args,
                    environment: environment.clone(),
                    timeout: std::time::Duration::from_secs(900),
                    memory_mb: 128,
                })
                .map_err(|problem| anyhow::anyhow!("--function {spec:?}: {problem}"))?;
        }
        for name in &args.allow_recursion {
            lambda.put_recursion_config(name, RecursiveLoop::Allow);
        }
        if let Some(name) = &sweep_to {
            let sweep = lambda.scheduled_event("sweep");
            lambda.schedule(name, std::time::Duration::from_secs(args.sweep_every), sweep);
        }
        let mut out = std::io::stdout().lock();
        for (name, value) in &exports {
            writeln!(out, "export {name}={value}")?;
        }
        writeln!(out, "ready")?;
        out.flush()?;
        drop(out);
        // Ctrl-C or SIGTERM: stop cleanly so function processes and moto are stopped too.
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot wait for Ctrl-C")?,
            _ = terminate.recv() => {}
        }
        drop(lambda_server);
        lambda.shutdown();
        for player in players {
            player.abort();
        }
        if let Some(path) = cert_file {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    })
}

/// A stream name as an environment variable suffix: upper case, other characters `_`.
fn env_suffix(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The served function that gets the scheduled sweep: `--sweep`, or the one
/// TRANSCRIBER_FUNCTION_ARN names; none with `--sweep-every 0`.
fn sweep_target(args: &LocalArgs, served: &[&str]) -> Result<Option<String>> {
    if args.sweep_every == 0 {
        return Ok(None);
    }
    if let Some(name) = &args.sweep {
        if !served.contains(&name.as_str()) {
            bail!("--sweep {name}: no --function {name}=BINARY to sweep with");
        }
        return Ok(Some(name.clone()));
    }
    let named = std::env::var("TRANSCRIBER_FUNCTION_ARN").unwrap_or_default();
    let name = named.rsplit(':').next().unwrap_or_default();
    Ok(served.contains(&name).then(|| name.to_string()))
}

/// A `--function` value: the name, the program and its arguments (`None` when the value has
/// no name or no program).
fn function_spec(spec: &str) -> Option<(&str, PathBuf, Vec<String>)> {
    let (name, command) = spec.split_once('=')?;
    let mut words = command.split_whitespace();
    let program = words.next()?;
    if name.is_empty() {
        return None;
    }
    Some((
        name,
        PathBuf::from(program),
        words.map(str::to_string).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_is_a_binary_or_a_command_with_arguments() {
        assert_eq!(
            function_spec("t=target/debug/call-transcriber"),
            Some(("t", PathBuf::from("target/debug/call-transcriber"), vec![]))
        );
        assert_eq!(
            function_spec("t=qemu-aarch64-static -L /usr/aarch64-linux-gnu ./bootstrap"),
            Some((
                "t",
                PathBuf::from("qemu-aarch64-static"),
                vec![
                    "-L".to_string(),
                    "/usr/aarch64-linux-gnu".to_string(),
                    "./bootstrap".to_string()
                ]
            ))
        );
        assert_eq!(function_spec("t="), None);
        assert_eq!(function_spec("=bootstrap"), None);
        assert_eq!(function_spec("bootstrap"), None);
    }
}

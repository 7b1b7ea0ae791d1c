//! Cold start of the Lambda functions: each binary is started as Lambda starts it (with
//! `AWS_LAMBDA_RUNTIME_API` pointing at a stand-in Runtime API), and the time until it asks for
//! its first event is its init time; its peak RSS at that moment is what it costs idle.
//!
//! `cargo build --release -p start-lca -p call-transcriber -p contact-event-processor &&
//! cargo run --release -p lca-tests
//! --bin lambda-init-bench [-- --runs 20]`
//!
//! With `LCA_TEST_ARM64_FUNCTIONS=DIR` (the zips of `infra/package.sh` unzipped to
//! `DIR/<function>/bootstrap`) it starts the arm64 functions the stack ships, under qemu-user:
//! figures of the emulation, for information only (the emulator's own start-up and memory
//! are in them).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Response;
use local_aws::http::full;

fn main() -> Result<(), String> {
    let mut runs = 10usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--runs takes a positive whole number")?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let arm64 = local_aws::lambda::arm64_functions_dir().is_some();
    if arm64 {
        println!(
            "the shipped arm64 functions under {} (emulated: information only)",
            local_aws::lambda::ARM64_EMULATOR[0]
        );
    }
    println!(
        "{:<24} {:>10} {:>10} {:>12}",
        "function", "init p50", "init max", "idle RSS"
    );
    for (name, env) in [
        (
            "start-lca",
            vec![
                (
                    "CONNECT_INSTANCE_ARN",
                    "arn:aws:connect:us-east-1:123456789012:instance/x",
                ),
                (
                    "TRANSCRIBER_FUNCTION_ARN",
                    "arn:aws:lambda:us-east-1:123456789012:function:t",
                ),
            ],
        ),
        (
            "call-transcriber",
            vec![
                ("KINESIS_STREAM_NAME", "lca"),
                ("OUTPUT_BUCKET", "recordings"),
                ("TRANSCRIBER_CALL_EVENT_TABLE_NAME", "calls"),
                (
                    "CONNECT_INSTANCE_ARN",
                    "arn:aws:connect:us-east-1:123456789012:instance/x",
                ),
            ],
        ),
        (
            "contact-event-processor",
            vec![
                ("KINESIS_STREAM_NAME", "lca"),
                ("TRANSCRIBER_CALL_EVENT_TABLE_NAME", "calls"),
            ],
        ),
    ] {
        let binary = std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name(name);
        // Under emulation only the binary's name is used (its arm64 bootstrap is run).
        if !arm64 && !binary.exists() {
            return Err(format!(
                "{} not found: build it first with `cargo build --release -p {name}`",
                binary.display()
            ));
        }
        let mut inits = Vec::new();
        let mut rss = 0u64;
        let command = local_aws::lambda::function_command(&binary)?;
        for _ in 0..runs {
            let (init, kb) = runtime.block_on(cold_start(&command, &env))?;
            inits.push(init);
            rss = rss.max(kb);
        }
        inits.sort();
        println!(
            "{name:<24} {:>8.1}ms {:>8.1}ms {:>9.1} MB",
            inits[inits.len() / 2].as_secs_f64() * 1000.0,
            inits[inits.len() - 1].as_secs_f64() * 1000.0,
            rss as f64 / 1024.0
        );
    }
    Ok(())
}

/// Starts `binary`, waits for its first `next` request; returns the time to it and the
/// process's peak RSS (KiB) then.
async fn cold_start(
    (binary, args): &(PathBuf, Vec<String>),
    env: &[(&str, &str)],
) -> Result<(Duration, u64), String> {
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    let seen = first.clone();
    let server = local_aws::http::serve(0, move |_request| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().get_or_insert_with(Instant::now);
            // Never hand out an event: the function waits, as between invocations.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::new(full(""))
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args(args)
        .envs(env.iter().copied())
        .env("AWS_LAMBDA_RUNTIME_API", server.addr().to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDLOCAL")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let init = loop {
        if let Some(at) = *first.lock().unwrap() {
            break at - started;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{} exited during init: {status}", binary.display()));
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            return Err(format!(
                "{} did not ask for an event within 10 s",
                binary.display()
            ));
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    };
    let rss = call_transcriber::usage::ProcessUsage::of(child.id()).peak_rss_kb;
    let _ = child.kill();
    let _ = child.wait();
    Ok((init, rss))
}

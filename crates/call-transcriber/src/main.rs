//! The call transcriber Lambda function: `main` only wires the handler into the runtime.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use call_transcriber::TranscriberConfig;
use call_transcriber::lambda::{Invocation, Transcriber};
use call_transcriber::pipeline::load_sdk_config;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;
use tokio::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .without_time()
        .init();
    let config = TranscriberConfig::from_env()?;
    let sdk = load_sdk_config(&config).await;
    let transcriber = &Transcriber::new(config, &sdk);
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        // The context's deadline is epoch milliseconds; the pipeline works in Instants.
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let deadline =
            Instant::now() + Duration::from_millis(event.context.deadline.saturating_sub(now_ms));
        let invocation = Invocation {
            function_arn: &event.context.invoked_function_arn,
            request_id: &event.context.request_id,
            deadline,
        };
        transcriber
            .handle(event.payload, invocation)
            .await
            .map_err(Error::from)
    }))
    .await
}

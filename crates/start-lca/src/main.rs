//! The StartLCA Lambda function: `main` only wires the handler into the runtime.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;
use start_lca::{StartConfig, StartLca};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_current_span(false)
        .without_time()
        .init();
    let config = StartConfig::from_lookup(|name| std::env::var(name).ok())?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let start = StartLca {
        config,
        lambda: aws_sdk_lambda::Client::new(&sdk),
    };
    let start = &start;
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        Ok::<_, Error>(start.handle(event.payload).await)
    }))
    .await
}

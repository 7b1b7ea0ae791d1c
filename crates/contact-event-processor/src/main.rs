//! The contact-event processor Lambda function: `main` only wires the handler into the runtime.

use contact_event_processor::{ContactEventProcessor, ProcessorConfig};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

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
    let config = ProcessorConfig::from_env()?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let processor = &ContactEventProcessor::new(config, &sdk);
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        processor.handle(event.payload).await.map_err(Error::from)
    }))
    .await
}

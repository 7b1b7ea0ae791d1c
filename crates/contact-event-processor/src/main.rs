//! The contact-event processor Lambda function: `main` only wires the handler into the runtime.

use contact_event_processor::{ContactEventProcessor, ProcessorConfig};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    call_transcriber::lambda::json_logs();
    let config = ProcessorConfig::from_env()?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let processor = &ContactEventProcessor::new(config, &sdk);
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        processor.handle(event.payload).await.map_err(Error::from)
    }))
    .await
}

//! The contact-event processor Lambda function: `main` only wires the handler into the runtime.

use contact_event_processor::{ContactEventProcessor, ProcessorConfig, event_metrics};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    aws_edge::json_logs();
    let config = ProcessorConfig::from_env()?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let processor = &ContactEventProcessor::new(config, &sdk);
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        let result = processor.handle(event.payload).await;
        let now_ms = call_lease::now_ms();
        // The metrics line on stdout (the logs are on stderr): CloudWatch Logs extracts it.
        let mut metrics = event_metrics(&result, now_ms);
        metrics.in_namespace(&processor.config.metrics_namespace);
        println!("{}", metrics.to_line());
        result.map_err(Error::from)
    }))
    .await
}

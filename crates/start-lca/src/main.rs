//! The StartLCA Lambda function: `main` only sets up logging and serves the handler
//! ([`start_lca::serve`]).

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    // Never finer than call_metrics::FINEST_LOG_LEVEL: no event payload in the log.
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_current_span(false)
        .without_time()
        .finish()
        .with(call_metrics::FINEST_LOG_LEVEL)
        .init();
    start_lca::serve().await
}

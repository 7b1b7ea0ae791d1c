//! The StartLCA Lambda function: `main` only sets up logging and serves the handler
//! ([`start_lca::serve`]).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    // JSON on stderr, never finer than call_metrics::FINEST_LOG_LEVEL: no event payload in
    // the log. The metrics line goes to stdout.
    aws_edge::json_logs();
    start_lca::serve().await
}

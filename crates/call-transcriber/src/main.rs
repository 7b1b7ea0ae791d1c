//! The call transcriber Lambda function: `main` only sets up logging and serves the handler
//! ([`call_transcriber::lambda::serve`]).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    aws_edge::json_logs();
    call_transcriber::lambda::serve().await
}

//! The call transcriber Lambda function: `main` only sets up logging and serves the handler
//! ([`call_transcriber::lambda::serve`]).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    call_transcriber::lambda::json_logs();
    call_transcriber::lambda::serve().await
}

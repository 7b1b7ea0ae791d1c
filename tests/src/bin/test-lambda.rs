//! A test function for the local Lambda service (the local Lambda's tests and tests/interop run it), run unchanged under its Runtime API.
//! The event says what to do: `{"echo": ...}` answers it back with the function's name;
//! `{"fail": "message"}` returns a function error; `{"sleep_ms": N}` sleeps first;
//! `{"append_to": "/path"}` appends a line per attempt (to count retries);
//! `{"exit": N}` makes the process exit (a crash). The answer also carries the X-Ray trace
//! header the runtime client put in `_X_AMZN_TRACE_ID` (what an AWS SDK call would carry on).

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::{Value, json};

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let payload = event.payload;
    if let Some(path) = payload.get("append_to").and_then(Value::as_str) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(file, "{}", event.context.request_id)?;
    }
    if let Some(ms) = payload.get("sleep_ms").and_then(Value::as_u64) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if let Some(code) = payload.get("exit").and_then(Value::as_i64) {
        std::process::exit(code as i32);
    }
    if let Some(message) = payload.get("fail").and_then(Value::as_str) {
        return Err(message.to_string().into());
    }
    Ok(json!({
        "echo": payload.get("echo").cloned().unwrap_or(Value::Null),
        "function": std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default(),
        "arn": event.context.invoked_function_arn,
        "deadline_ms": event.context.deadline,
        "custom_env": std::env::var("TEST_LAMBDA_SETTING").ok(),
        "trace_id": std::env::var("_X_AMZN_TRACE_ID").ok(),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(handler)).await
}

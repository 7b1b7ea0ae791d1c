//! A lambda hook's response (payload bytes and Lambda's function-error header) through the
//! transcriber's reading of it, and the answer applied to a call.
//!
//! Must hold: no panic; an error never quotes the payload (the caller's number in it) and is
//! bounded; an answer beyond a limit changes nothing; a call an answer changed keeps a CallId
//! Kinesis takes and survives its own hand-over unchanged.
#![no_main]

use arbitrary::Unstructured;
use call_lifecycle::delivery::call_of_event;
use call_lifecycle::hook::hook_answer;
use lca_fuzz::{CALLER, INSTANCE, check_error_text, flow_event, mutate};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

fn run(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let function_error = match u.choose_index(4)? {
        0 => Some("Unhandled".to_string()),
        1 => Some(lca_fuzz::string(&mut u)?),
        _ => None,
    };
    let payload = if u.arbitrary()? {
        let mut answer = json!({
            "callId": "custom-1", "isCaller": false, "agentId": "alex",
            "fromNumber": CALLER, "toNumber": "+15559870002",
            "metadatajson": "{\"crm\":1}", "shouldProcessCall": true, "shouldRecordCall": true,
            "errorType": "Refused", "errorMessage": format!("no CRM record for {CALLER}")
        });
        mutate(&mut answer, &mut u)?;
        answer.to_string().into_bytes()
    } else {
        u.take_rest().to_vec()
    };
    let contacts = call_settings::ContactPolicy::from_lookup(|_| None).expect("the defaults");
    let (mut call, _) =
        call_of_event(&flow_event(), Some(INSTANCE), &contacts).expect("the real event");
    let before = call.clone();
    match hook_answer(&payload, function_error.as_deref()) {
        Err(error) => {
            check_error_text(
                &error.to_string(),
                &[function_error.as_deref().unwrap_or("")],
            );
        }
        Ok(answer) => match answer.apply(&mut call) {
            Err(too_large) => {
                check_error_text(&too_large.to_string(), &[]);
                assert_eq!(call, before, "an answer beyond a limit changed the call");
            }
            Ok(_) => {
                let length = call.call_id.chars().count();
                assert!((1..=lca_events::MAX_CALL_ID_CHARS).contains(&length));
                let next = json!({"action": "LAMBDA_CONTINUE", "callData": call});
                let (again, _) =
                    call_of_event(&next, None, &contacts).expect("a hand-over of the call");
                assert_eq!(again, call);
            }
        },
    }
    Ok(())
}

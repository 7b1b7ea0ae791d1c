//! A Lambda event through StartLCA's check and the transcriber's reading of it, up to the
//! first AWS request: a contact-flow event (new call), a LAMBDA_CONTINUE hand-over (naming the
//! call, or carrying it as earlier versions did) or a LAMBDA_RESCUE, built from a real one with
//! fields removed, retyped and stretched, or arbitrary JSON bytes.
//!
//! A new call's event carries contact attributes (per-contact settings near their limits,
//! unknown names, wrong types), checked under a stack that allows every override or one that
//! allows the language only.
//!
//! Must hold: no panic; StartLCA and the transcriber accept the same contact-flow events
//! (settings included); every call accepted has a CallId Kinesis takes, settings that read
//! back unchanged from the variables START shows, and survives its own hand-over unchanged;
//! every call named has a contact id the lease takes; no error is longer than
//! `MAX_ERROR_CHARS` or quotes the caller's number.
#![no_main]

use arbitrary::Unstructured;
use call_lifecycle::CallData;
use call_lifecycle::delivery::{NamedBy, call_of_event, hand_over_event, named_call_of_event};
use call_settings::ContactPolicy;
use lca_fuzz::{INSTANCE, attributes, check_error_text, flow_event, mutate};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

fn run(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let stack = |name: &str| match name {
        "OUTPUT_BUCKET" => Some("lca-bucket".to_string()),
        "TCA_DATA_ACCESS_ROLE_ARN" => Some("arn:aws:iam::1:role/tca".to_string()),
        _ => None,
    };
    let contacts = if u.arbitrary::<bool>()? {
        ContactPolicy::from_lookup(stack).expect("the stack's settings")
    } else {
        ContactPolicy::from_lookup(|name| match name {
            "CONTACT_ATTRIBUTE_OVERRIDES" => Some("TRANSCRIBE_LANGUAGE_CODE".to_string()),
            other => stack(other),
        })
        .expect("the stack's settings")
    };
    let event = match u.choose_index(5)? {
        // Raw JSON, as the Lambda runtime would hand over whatever it was invoked with.
        0 => match serde_json::from_slice::<Value>(u.take_rest()) {
            Ok(event) => event,
            Err(_) => return Ok(()),
        },
        // A new call's event, changed.
        1 => {
            let mut event = flow_event();
            mutate(&mut event, &mut u)?;
            event
        }
        // A new call's event with contact attributes, perhaps changed too.
        2 => {
            let mut event = flow_event();
            event["Details"]["ContactData"]["Attributes"] = attributes(&mut u)?.into();
            if u.arbitrary::<bool>()? {
                mutate(&mut event, &mut u)?;
            }
            event
        }
        // A hand-over naming the call, or a rescue, changed.
        3 => {
            let mut event = if u.arbitrary::<bool>()? {
                hand_over_event("d111f871-5fe7-40b1-b5f7-6b67060de0c2", 3)
            } else {
                json!({"action": "LAMBDA_RESCUE", "contactId": "c-1", "lambdaCount": 0, "reason": "HandOverLost"})
            };
            mutate(&mut event, &mut u)?;
            event
        }
        // An earlier version's hand-over of an accepted call, changed.
        _ => {
            let (call, _) =
                call_of_event(&flow_event(), Some(INSTANCE), &contacts).expect("the real event");
            let mut event = json!({"action": "LAMBDA_CONTINUE", "callData": call});
            mutate(&mut event, &mut u)?;
            event
        }
    };
    let contact = &event["Details"]["ContactData"];
    // What an error may name (bounded): the event's Name, the contact, its instance, channel,
    // and the per-contact settings' values.
    let mut quoted = vec![
        event["Name"].as_str().unwrap_or_default(),
        contact["ContactId"].as_str().unwrap_or_default(),
        contact["InstanceARN"].as_str().unwrap_or_default(),
        contact["Channel"].as_str().unwrap_or_default(),
    ];
    let ours = call_settings::contact::OVERRIDABLE.iter();
    for name in ours.chain([&call_settings::contact::SKIP_ATTRIBUTE]) {
        quoted.push(contact["Attributes"][*name].as_str().unwrap_or_default());
    }
    // The handler reads a named delivery first; only the others reach `call_of_event`.
    match named_call_of_event(&event) {
        Ok(Some(named)) => {
            let length = named.contact_id.chars().count();
            assert!((1..=lca_events::MAX_CALL_ID_CHARS).contains(&length));
            if named.by == NamedBy::HandOver {
                let again =
                    named_call_of_event(&hand_over_event(&named.contact_id, named.lambda_count));
                assert_eq!(again, Ok(Some(named)));
            }
            return Ok(());
        }
        Ok(None) => {}
        Err(error) => {
            check_error_text(&error, &quoted);
            return Ok(());
        }
    }
    let is_new = event.get("action").and_then(Value::as_str) != Some("LAMBDA_CONTINUE");
    let start_lca = CallData::of_contact_flow_event(&event, INSTANCE, &contacts);
    if let Err(no_call) = &start_lca {
        check_error_text(&no_call.to_string(), &quoted);
    }
    let transcriber = call_of_event(&event, Some(INSTANCE), &contacts);
    if is_new {
        assert_eq!(
            start_lca.as_ref().ok(),
            transcriber.as_ref().ok().map(|(call, _)| call),
            "StartLCA and the transcriber disagree on a contact-flow event"
        );
    }
    match transcriber {
        Ok((call, new)) => {
            assert_eq!(new, is_new);
            if new {
                assert!(call.stream_arn.starts_with("arn:"));
                assert!(
                    call.start_fragment_number
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                );
            }
            let length = call.call_id.chars().count();
            assert!((1..=lca_events::MAX_CALL_ID_CHARS).contains(&length));
            // The settings chosen read back unchanged from what START shows of them.
            if let Some(chosen) = &call.settings {
                assert_eq!(chosen.settings.check(), Ok(()));
                let metadata = call
                    .start_metadata(&contacts.stack)
                    .expect("START's metadata");
                assert!(
                    metadata.len() < 16_000,
                    "START's metadata is {} bytes",
                    metadata.len()
                );
            }
            // The call survives its own hand-over.
            let next = json!({"action": "LAMBDA_CONTINUE", "callData": call});
            let (again, new) =
                call_of_event(&next, None, &contacts).expect("a hand-over of an accepted call");
            assert!(!new);
            assert_eq!(again, call);
        }
        Err(error) => check_error_text(&error.to_string(), &quoted),
    }
    Ok(())
}

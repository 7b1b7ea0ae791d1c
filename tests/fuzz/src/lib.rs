//! What the fuzz targets share: JSON inputs shaped like the real ones (a contact-flow event, a
//! hand-over, a hook's answer), mutated part by part so that the fuzzer explores every
//! field's absence, wrong type and extreme value rather than mostly unparsable bytes.

use arbitrary::{Result, Unstructured};
use serde_json::{Map, Value, json};

/// The caller's number placed in the inputs: no error may quote it (customer data).
pub const CALLER: &str = "+15551230001";

/// The Connect instance the functions are configured for.
pub const INSTANCE: &str = "arn:aws:connect:us-east-1:123456789012:instance/abc";

/// Longest error text accepted: an error names fields and limits, never whole inputs.
pub const MAX_ERROR_CHARS: usize = 2048;

/// Strings worth trying wherever a string goes.
const WORDS: &[&str] = &[
    "",
    "VOICE",
    "CHAT",
    "ContactFlowEvent",
    "LAMBDA_CONTINUE",
    "LAMBDA_RESCUE",
    "HandOverLost",
    "arn:",
    INSTANCE,
    "arn:aws:kinesisvideo:us-east-1:123456789012:stream/connect-contact/1",
    "91343852333181432392682062607743920146264772733",
    "0",
    "-1",
    "1e400",
    "1726677689681",
    "ch_0",
    "ch_1",
    CALLER,
    "null",
    "{}",
    "é",
    "\u{0}",
    "analytics",
    "standard",
    "identify-language",
    "identify-multiple-languages",
    "en-US,es-US",
    "en-US,en-GB",
    "true",
    "false",
    "None",
    "PII",
    "ALL",
    "mask",
    "redacted_and_unredacted",
];

/// Keys of the real inputs, for keys the fuzzer adds.
const KEYS: &[&str] = &[
    "Name",
    "Details",
    "ContactData",
    "ContactId",
    "InitialContactId",
    "InstanceARN",
    "Channel",
    "CustomerEndpoint",
    "SystemEndpoint",
    "Address",
    "Type",
    "Attributes",
    "AgentId",
    "MediaStreams",
    "Customer",
    "Audio",
    "StreamARN",
    "StartFragmentNumber",
    "StartTimestamp",
    "Parameters",
    "action",
    "callData",
    "callId",
    "contactId",
    "fromNumber",
    "toNumber",
    "agentId",
    "streamArn",
    "startFragmentNumber",
    "lastFragment",
    "sessionId",
    "originNs",
    "startSample",
    "lambdaCount",
    "reason",
    "metadatajson",
    "isCaller",
    "shouldProcessCall",
    "shouldRecordCall",
    "swapChannels",
    "startedAtMs",
    "stalledSinceMs",
    "errorType",
    "errorMessage",
    "PreviousContactId",
    "InitiationMethod",
    "settings",
    "links",
];

/// A contact-flow event as Connect sends it to StartLCA and the transcriber.
pub fn flow_event() -> Value {
    json!({
        "Name": "ContactFlowEvent",
        "Details": {
            "ContactData": {
                "ContactId": "c-1",
                "InitialContactId": "c-1",
                "InstanceARN": INSTANCE,
                "Channel": "VOICE",
                "CustomerEndpoint": {"Address": CALLER, "Type": "TELEPHONE_NUMBER"},
                "SystemEndpoint": {"Address": "+15559870002", "Type": "TELEPHONE_NUMBER"},
                "Attributes": {"AgentId": "alex"},
                "MediaStreams": {"Customer": {"Audio": {
                    "StreamARN": "arn:aws:kinesisvideo:us-east-1:123456789012:stream/connect-contact/1",
                    "StartFragmentNumber": "91343852333181432392682062607743920146264772733",
                    "StartTimestamp": "1726677689681"
                }}}
            },
            "Parameters": {}
        }
    })
}

/// A string: a word of the inputs, one around a length limit, or arbitrary text.
pub fn string(u: &mut Unstructured) -> Result<String> {
    Ok(match u.choose_index(4)? {
        0 => WORDS[u.choose_index(WORDS.len())?].to_string(),
        1 => {
            let c: char = u.arbitrary()?;
            c.to_string().repeat(u.int_in_range(250..=300)?)
        }
        2 => format!("{CALLER}{}", u.arbitrary::<u8>()?),
        _ => u.arbitrary()?,
    })
}

/// An arbitrary JSON value, nested at most `depth` deep.
pub fn value(u: &mut Unstructured, depth: u32) -> Result<Value> {
    let kinds = if depth == 0 { 4 } else { 6 };
    Ok(match u.choose_index(kinds)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => match u.choose_index(3)? {
            0 => Value::from(u.arbitrary::<i64>()?),
            1 => Value::from(u.arbitrary::<u64>()?),
            _ => serde_json::Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
        },
        3 => Value::String(string(u)?),
        4 => Value::Array(
            (0..u.int_in_range(0..=3)?)
                .map(|_| value(u, depth - 1))
                .collect::<Result<_>>()?,
        ),
        _ => {
            let mut map = Map::new();
            for _ in 0..u.int_in_range(0..=3)? {
                map.insert(key(u)?, value(u, depth - 1)?);
            }
            Value::Object(map)
        }
    })
}

fn key(u: &mut Unstructured) -> Result<String> {
    if u.ratio(7, 8)? {
        Ok(KEYS[u.choose_index(KEYS.len())?].to_string())
    } else {
        u.arbitrary()
    }
}

/// Changes `input` in up to four places: a part replaced by another value, or a key removed
/// or added.
pub fn mutate(input: &mut Value, u: &mut Unstructured) -> Result<()> {
    for _ in 0..u.int_in_range(0..=4)? {
        let mut node = &mut *input;
        loop {
            let deeper = match node {
                Value::Object(map) if !map.is_empty() => u.ratio(3, 4)?,
                Value::Array(items) if !items.is_empty() => u.ratio(1, 2)?,
                _ => false,
            };
            if !deeper {
                break;
            }
            node = match node {
                Value::Object(map) => {
                    let index = u.choose_index(map.len())?;
                    map.values_mut().nth(index).expect("index within the map")
                }
                Value::Array(items) => {
                    let index = u.choose_index(items.len())?;
                    &mut items[index]
                }
                _ => unreachable!("only containers are entered"),
            };
        }
        match node {
            Value::Object(map) if u.ratio(1, 2)? => {
                if !map.is_empty() && u.arbitrary()? {
                    let index = u.choose_index(map.len())?;
                    let name = map.keys().nth(index).expect("index within the map").clone();
                    map.remove(&name);
                } else {
                    map.insert(key(u)?, value(u, 2)?);
                }
            }
            _ => *node = value(u, 2)?,
        }
    }
    Ok(())
}

/// Checks an error's text: bounded, and without the caller's number unless `quoted_fields`
/// (values an error may name, such as a ContactId) hold it.
pub fn check_error_text(text: &str, quoted_fields: &[&str]) {
    assert!(
        text.chars().count() <= MAX_ERROR_CHARS,
        "an error of {} characters: {}...",
        text.chars().count(),
        text.chars().take(200).collect::<String>()
    );
    if !quoted_fields.iter().any(|field| field.contains(CALLER)) {
        assert!(
            !text.contains(CALLER),
            "an error quotes customer data: {text}"
        );
    }
}

/// Contact attributes a flow may set: per-contact settings (and other names) with values
/// near each rule's limits, of the wrong type now and then (Connect sends strings only, so
/// those events are malformed).
pub fn attributes(u: &mut Unstructured) -> Result<Map<String, Value>> {
    const VALUES: &[&str] = &[
        "en-US",
        "en-GB",
        "ja-JP",
        "english",
        "standard",
        "analytics",
        "identify-language",
        "identify-multiple-languages",
        "en-US,es-US",
        "en-US, es-US",
        "en-US,en-GB",
        "es-US",
        "true",
        "false",
        "FALSE",
        "no",
        "PII",
        "PHI",
        "NAME,ADDRESS",
        "name",
        "ALL",
        "mask",
        "remove",
        "tag",
        "hide",
        "redacted",
        "redacted_and_unredacted",
        "v-1",
        "v-1,v-2",
        " ",
    ];
    let mut attributes = Map::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let names = call_settings::contact::OVERRIDABLE;
        let name = if u.ratio(1, 8)? {
            call_settings::contact::SKIP_ATTRIBUTE.to_string()
        } else if u.ratio(6, 7)? {
            names[u.choose_index(names.len())?].to_string()
        } else {
            key(u)?
        };
        let value = match u.choose_index(8)? {
            0..=3 => Value::String(VALUES[u.choose_index(VALUES.len())?].to_string()),
            // Names around the 200-character limit, lists around 3000.
            4 => Value::String("v".repeat(u.int_in_range(199..=201)?)),
            5 => Value::String(vec!["v".repeat(200); u.int_in_range(14..=15)?].join(",")),
            6 => Value::String(string(u)?),
            _ => value(u, 1)?,
        };
        attributes.insert(name, value);
    }
    Ok(attributes)
}

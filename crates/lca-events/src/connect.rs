//! The Amazon Connect contact-flow event a flow's "Invoke AWS Lambda function" block sends
//! (what StartLCA and the transcriber receive), as far as this product reads it. Every field
//! the product does not strictly need is optional, so validation can say what is missing.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// `{"Name": "ContactFlowEvent", "Details": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContactFlowEvent {
    /// `ContactFlowEvent`.
    pub name: String,
    /// The contact and the block's parameters.
    pub details: Details,
}

/// `Details` of a contact-flow event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Details {
    /// The contact.
    pub contact_data: ContactData,
    /// Parameters set on the flow block.
    #[serde(default)]
    pub parameters: HashMap<String, String>,
}

/// `Details.ContactData`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContactData {
    /// The contact (LCA's CallId).
    pub contact_id: String,
    /// The first contact of a transferred call.
    #[serde(default)]
    pub initial_contact_id: Option<String>,
    /// The contact this one was transferred from.
    #[serde(default)]
    pub previous_contact_id: Option<String>,
    /// How the contact started (`INBOUND`, `TRANSFER`, ...).
    #[serde(default)]
    pub initiation_method: Option<String>,
    /// The Connect instance.
    #[serde(rename = "InstanceARN")]
    pub instance_arn: String,
    /// `VOICE`, `CHAT`, `TASK`, ...
    pub channel: String,
    /// The caller's endpoint.
    #[serde(default)]
    pub customer_endpoint: Option<Endpoint>,
    /// The number the caller dialled.
    #[serde(default)]
    pub system_endpoint: Option<Endpoint>,
    /// Contact attributes (string values).
    #[serde(default)]
    pub attributes: HashMap<String, String>,
    /// Live media streams, when the flow started streaming.
    #[serde(default)]
    pub media_streams: Option<MediaStreams>,
}

/// A phone endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Endpoint {
    /// E.164 number.
    #[serde(default)]
    pub address: Option<String>,
}

/// `MediaStreams`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MediaStreams {
    /// The customer's streams.
    #[serde(default)]
    pub customer: Option<CustomerMedia>,
}

/// `MediaStreams.Customer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CustomerMedia {
    /// The audio stream (both directions: AUDIO_FROM_CUSTOMER and AUDIO_TO_CUSTOMER).
    #[serde(default)]
    pub audio: Option<AudioStream>,
}

/// `MediaStreams.Customer.Audio`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AudioStream {
    /// The KVS stream.
    #[serde(rename = "StreamARN", default)]
    pub stream_arn: Option<String>,
    /// The contact's first fragment on it.
    #[serde(default)]
    pub start_fragment_number: Option<String>,
    /// When streaming started (epoch ms, as a string).
    #[serde(default)]
    pub start_timestamp: Option<String>,
}

/// A contact that can be transcribed: the fields the transcriber needs, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamingContact {
    /// ContactId.
    pub contact_id: String,
    /// The KVS stream ARN.
    pub stream_arn: String,
    /// The contact's first fragment.
    pub start_fragment_number: String,
}

/// Why a contact-flow event cannot start transcription.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not a contact-flow event of the expected shape.
    #[error("not a Connect contact-flow event: {0}")]
    Malformed(String),
    /// The contact belongs to another Connect instance than the configured one.
    #[error("contact {contact_id} is from instance {instance_arn}, not the configured {expected}")]
    WrongInstance {
        /// The contact.
        contact_id: String,
        /// Its instance.
        instance_arn: String,
        /// CONNECT_INSTANCE_ARN.
        expected: String,
    },
    /// Not a voice contact.
    #[error("contact {contact_id} is on channel {channel:?}, not VOICE")]
    NotVoice {
        /// The contact.
        contact_id: String,
        /// Its channel.
        channel: String,
    },
    /// Media streaming was not started before the block (or the event lacks the stream).
    #[error(
        "contact {contact_id} has no {missing}: start media streaming in the flow before invoking StartLCA"
    )]
    NoMediaStream {
        /// The contact.
        contact_id: String,
        /// The missing field.
        missing: &'static str,
    },
}

impl Rejection {
    /// A short code for the contact flow to branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "MALFORMED_EVENT",
            Self::WrongInstance { .. } => "WRONG_INSTANCE",
            Self::NotVoice { .. } => "NOT_VOICE",
            Self::NoMediaStream { .. } => "NO_MEDIA_STREAM",
        }
    }
}

impl ContactFlowEvent {
    /// Parses and checks an event for `instance_arn`.
    pub fn streaming_contact(
        event: &serde_json::Value,
        instance_arn: &str,
    ) -> Result<StreamingContact, Rejection> {
        let parsed: Self = serde_json::from_value(event.clone())
            .map_err(|e| Rejection::Malformed(crate::json_problem(&e)))?;
        if parsed.name != "ContactFlowEvent" {
            return Err(Rejection::Malformed(format!(
                "Name is {:?}, not \"ContactFlowEvent\"",
                crate::excerpt(&parsed.name)
            )));
        }
        let contact = parsed.details.contact_data;
        // The ContactId is the CallId.
        crate::check_call_id(&contact.contact_id)
            .map_err(|problem| Rejection::Malformed(format!("ContactId is {problem}")))?;
        if contact.instance_arn != instance_arn {
            return Err(Rejection::WrongInstance {
                contact_id: contact.contact_id,
                instance_arn: crate::excerpt(&contact.instance_arn),
                expected: instance_arn.to_string(),
            });
        }
        if contact.channel != "VOICE" {
            return Err(Rejection::NotVoice {
                contact_id: contact.contact_id,
                channel: crate::excerpt(&contact.channel),
            });
        }
        let audio = contact
            .media_streams
            .and_then(|m| m.customer)
            .and_then(|c| c.audio);
        let no = |missing| Rejection::NoMediaStream {
            contact_id: contact.contact_id.clone(),
            missing,
        };
        let audio = audio.ok_or_else(|| no("MediaStreams.Customer.Audio"))?;
        let stream_arn = audio
            .stream_arn
            .filter(|a| a.starts_with("arn:"))
            .ok_or_else(|| no("MediaStreams.Customer.Audio.StreamARN"))?;
        let start_fragment_number = audio
            .start_fragment_number
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| no("MediaStreams.Customer.Audio.StartFragmentNumber"))?;
        Ok(StreamingContact {
            contact_id: contact.contact_id,
            stream_arn,
            start_fragment_number,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const INSTANCE: &str = "arn:aws:connect:us-east-1:123456789012:instance/abc";

    fn event() -> serde_json::Value {
        json!({
            "Name": "ContactFlowEvent",
            "Details": {
                "ContactData": {
                    "ContactId": "c-1",
                    "InitialContactId": "c-1",
                    "InstanceARN": INSTANCE,
                    "Channel": "VOICE",
                    "CustomerEndpoint": {"Address": "+15551230001", "Type": "TELEPHONE_NUMBER"},
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

    #[test]
    fn a_streaming_voice_contact_is_accepted() {
        let contact = ContactFlowEvent::streaming_contact(&event(), INSTANCE).unwrap();
        assert_eq!(contact.contact_id, "c-1");
        assert!(contact.stream_arn.ends_with("connect-contact/1"));
        let parsed: ContactFlowEvent = serde_json::from_value(event()).unwrap();
        let data = parsed.details.contact_data;
        assert_eq!(data.attributes["AgentId"], "alex");
        assert_eq!(
            data.customer_endpoint.unwrap().address.unwrap(),
            "+15551230001"
        );
    }

    /// Found by the fuzz target `flow_event`: an event's whole Name was quoted in the error
    /// (a 2,723-character line from a 300-character Name).
    #[test]
    fn a_rejection_quotes_a_bounded_excerpt_and_a_long_contact_id_names_its_limit() {
        let mut e = event();
        e["Name"] = json!("\u{52d2d}".repeat(300));
        let text = ContactFlowEvent::streaming_contact(&e, INSTANCE)
            .unwrap_err()
            .to_string();
        assert!(text.contains("(300 characters)"), "{text}");
        assert!(text.chars().count() < 1_000, "{text}");
        for (field, value) in [("InstanceARN", "i"), ("Channel", "c")] {
            let mut e = event();
            e["Details"]["ContactData"][field] = json!(value.repeat(10_000));
            let text = ContactFlowEvent::streaming_contact(&e, INSTANCE)
                .unwrap_err()
                .to_string();
            assert!(
                text.contains("(10000 characters)") && text.len() < 500,
                "{text}"
            );
        }
        let mut e = event();
        e["Details"]["ContactData"]["ContactId"] = json!("c".repeat(257));
        let rejection = ContactFlowEvent::streaming_contact(&e, INSTANCE).unwrap_err();
        assert_eq!(rejection.code(), "MALFORMED_EVENT");
        assert!(
            rejection
                .to_string()
                .contains("ContactId is 257 characters long")
                && rejection.to_string().contains("MAX_CALL_ID_CHARS"),
            "{rejection}"
        );
    }

    #[test]
    fn each_problem_is_its_own_rejection() {
        let check = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut e = event();
            f(&mut e);
            ContactFlowEvent::streaming_contact(&e, INSTANCE).unwrap_err()
        };
        assert_eq!(
            check(&|e| e["Name"] = json!("Other")).code(),
            "MALFORMED_EVENT"
        );
        assert_eq!(
            check(&|e| *e = json!({"hello": 1})).code(),
            "MALFORMED_EVENT"
        );
        assert_eq!(check(&|e| *e = json!([1, 2])).code(), "MALFORMED_EVENT");
        let wrong = check(&|e| {
            e["Details"]["ContactData"]["InstanceARN"] =
                json!("arn:aws:connect:us-east-1:1:instance/other")
        });
        assert_eq!(wrong.code(), "WRONG_INSTANCE");
        assert!(wrong.to_string().contains("instance/other"), "{wrong}");
        assert_eq!(
            check(&|e| e["Details"]["ContactData"]["Channel"] = json!("CHAT")).code(),
            "NOT_VOICE"
        );
        let no_stream = check(&|e| {
            e["Details"]["ContactData"]
                .as_object_mut()
                .unwrap()
                .remove("MediaStreams");
        });
        assert_eq!(no_stream.code(), "NO_MEDIA_STREAM");
        let no_fragment = check(&|e| {
            e["Details"]["ContactData"]["MediaStreams"]["Customer"]["Audio"]["StartFragmentNumber"] =
                json!("")
        });
        assert!(
            no_fragment.to_string().contains("StartFragmentNumber"),
            "{no_fragment}"
        );
    }
}

//! Per-contact settings: a Connect contact attribute named like one of the transcriber's
//! per-call variables ([`OVERRIDABLE`]) overrides the stack's value for that contact, when the
//! stack allows it (`CONTACT_ATTRIBUTE_OVERRIDES`); [`SKIP_ATTRIBUTE`]`=false` says not to
//! transcribe the contact at all. [`ContactPolicy::for_contact`] decides, before anything
//! starts, with the same rules as for the variables ([`CallSettings::from_settings`]).
//!
//! Contact attributes arrive in the contact-flow event as `Details.ContactData.Attributes`, a
//! map of strings (Connect administrator guide, "Contact attributes"; "Invoke AWS Lambda
//! function" block). Attributes with other names are the flow's own business and ignored; a
//! blank one counts as unset (the stack's value applies), as a blank variable does.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::{CallSettings, ConfigError, Settings};

/// The contact attribute that says whether to transcribe the contact: `false` and StartLCA
/// answers `NOT_TRANSCRIBED` without starting anything; `true` (or unset) transcribes. Always
/// honoured, whatever the stack allows: a flow could as well not invoke StartLCA at all.
pub const SKIP_ATTRIBUTE: &str = "LCA_TRANSCRIBE";

/// The variable (and template parameter `AllowedContactAttributes`) listing what a contact
/// attribute may override: `ALL` (default), `NONE`, or a comma-separated list of
/// [`OVERRIDABLE`] names.
pub const ALLOWED_VARIABLE: &str = "CONTACT_ATTRIBUTE_OVERRIDES";

/// Every setting a contact attribute can override (what [`ALLOWED_VARIABLE`] may list).
pub const OVERRIDABLE: &[&str] = &[
    "TRANSCRIBE_LANGUAGE_CODE",
    "TRANSCRIBE_LANGUAGE_OPTIONS",
    "TRANSCRIBE_PREFERRED_LANGUAGE",
    "CUSTOM_VOCABULARY_NAME",
    "CUSTOM_VOCABULARY_FILTER_NAME",
    "CUSTOM_VOCABULARY_FILTER_METHOD",
    "CUSTOM_LANGUAGE_MODEL_NAME",
    "IS_CONTENT_REDACTION_ENABLED",
    "CONTENT_REDACTION_TYPE",
    "PII_ENTITY_TYPES",
    "TRANSCRIBE_API_MODE",
    "IS_TCA_POST_CALL_ANALYTICS_ENABLED",
    "POST_CALL_CONTENT_REDACTION_OUTPUT",
];

/// The settings one contact is transcribed with, and which of them its attributes chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactSettings {
    /// The call's Transcribe settings.
    pub settings: CallSettings,
    /// The attributes that overrode the stack's values (names only), sorted.
    #[serde(default)]
    pub from_attributes: Vec<String>,
}

/// What a contact's attributes decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactChoice {
    /// Transcribe with these settings.
    Transcribe(Box<ContactSettings>),
    /// [`SKIP_ATTRIBUTE`] is `false`: start nothing.
    Skip,
}

/// Why a contact's attributes cannot be used: the flow can branch on [`Self::code`]; the
/// message names the attribute, quotes at most an excerpt of its value and says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttributeError {
    /// The stack does not let a contact attribute override this setting.
    #[error(
        "contact attribute {attribute} is not allowed to override the stack's setting \
         (AllowedContactAttributes: {allowed}); remove it from the flow or allow it in the stack"
    )]
    NotAllowed {
        /// The attribute.
        attribute: String,
        /// What the stack allows.
        allowed: String,
    },
    /// The value, or the combination it makes with the other settings, is refused.
    #[error("contact attribute {attribute}: {problem}")]
    Invalid {
        /// The attribute (or attributes, comma-separated, when the rule broken is about a
        /// stack setting they combine with).
        attribute: String,
        /// What is wrong ([`ConfigError`]'s text, the value bounded).
        problem: String,
    },
}

impl AttributeError {
    /// `ATTRIBUTE_NOT_ALLOWED` or `BAD_ATTRIBUTE`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotAllowed { .. } => "ATTRIBUTE_NOT_ALLOWED",
            Self::Invalid { .. } => "BAD_ATTRIBUTE",
        }
    }

    /// The attribute(s) at fault.
    pub fn attribute(&self) -> &str {
        match self {
            Self::NotAllowed { attribute, .. } | Self::Invalid { attribute, .. } => attribute,
        }
    }
}

/// The stack's per-call settings and what a contact may change: what StartLCA checks a
/// contact against, and what the transcriber applies when it is started with the contact-flow
/// event itself (no lease table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactPolicy {
    /// The stack's settings: a contact without overriding attributes gets these.
    pub stack: CallSettings,
    /// The stack's raw values of [`CallSettings::VARIABLES`] (the defaults under a contact's
    /// attributes).
    defaults: BTreeMap<&'static str, String>,
    /// The [`OVERRIDABLE`] names a contact attribute may set.
    allowed: BTreeSet<&'static str>,
}

impl ContactPolicy {
    /// Every variable read: [`CallSettings::VARIABLES`] and [`ALLOWED_VARIABLE`].
    pub fn variables() -> impl Iterator<Item = &'static str> {
        CallSettings::VARIABLES
            .iter()
            .copied()
            .chain([ALLOWED_VARIABLE])
    }

    /// Reads the stack's settings and [`ALLOWED_VARIABLE`] through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Settings::new(&lookup);
        let stack = CallSettings::from_settings(&env)?;
        let defaults = CallSettings::VARIABLES
            .iter()
            .filter_map(|&name| env.get(name).map(|value| (name, value)))
            .collect();
        let allowed = match env.get(ALLOWED_VARIABLE) {
            None => OVERRIDABLE.iter().copied().collect(),
            Some(all) if all.eq_ignore_ascii_case("ALL") => OVERRIDABLE.iter().copied().collect(),
            Some(none) if none.eq_ignore_ascii_case("NONE") => BTreeSet::new(),
            Some(list) => {
                let mut allowed = BTreeSet::new();
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let Some(known) = OVERRIDABLE.iter().find(|known| **known == name) else {
                        return Err(ConfigError::new(
                            ALLOWED_VARIABLE,
                            &list,
                            format!(
                                "`{}` is not a per-contact setting; expected ALL, NONE or \
                                 names among {}",
                                lca_events::excerpt(name),
                                OVERRIDABLE.join(", ")
                            ),
                        ));
                    };
                    allowed.insert(*known);
                }
                allowed
            }
        };
        Ok(Self {
            stack,
            defaults,
            allowed,
        })
    }

    /// What the stack allows, as [`ALLOWED_VARIABLE`] would say it.
    pub fn allowed(&self) -> String {
        if self.allowed.len() == OVERRIDABLE.len() {
            "ALL".to_string()
        } else if self.allowed.is_empty() {
            "NONE".to_string()
        } else {
            self.allowed.iter().copied().collect::<Vec<_>>().join(",")
        }
    }

    /// The settings for a contact with these attributes, or why they cannot be used. Pure: the
    /// same answer in StartLCA and in the transcriber for the same stack.
    pub fn for_contact(
        &self,
        attributes: &HashMap<String, String>,
    ) -> Result<ContactChoice, AttributeError> {
        if let Some(value) = attributes
            .get(SKIP_ATTRIBUTE)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
        {
            let lookup = |_: &str| Some(value.to_string());
            let transcribe =
                Settings::new(&lookup)
                    .flag(SKIP_ATTRIBUTE, true)
                    .map_err(|error| AttributeError::Invalid {
                        attribute: SKIP_ATTRIBUTE.to_string(),
                        problem: error.to_string(),
                    })?;
            if !transcribe {
                return Ok(ContactChoice::Skip);
            }
        }
        // The attributes that set one of ours, blank ones being unset.
        let mut set: BTreeMap<&'static str, String> = BTreeMap::new();
        for name in OVERRIDABLE {
            let Some(value) = attributes.get(*name) else {
                continue;
            };
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            if !self.allowed.contains(name) {
                return Err(AttributeError::NotAllowed {
                    attribute: name.to_string(),
                    allowed: self.allowed(),
                });
            }
            set.insert(name, value.to_string());
        }
        if set.is_empty() {
            return Ok(ContactChoice::Transcribe(Box::new(ContactSettings {
                settings: self.stack.clone(),
                from_attributes: Vec::new(),
            })));
        }
        let lookup = |name: &str| set.get(name).or_else(|| self.defaults.get(name)).cloned();
        let settings = CallSettings::from_settings(&Settings::new(&lookup)).map_err(|error| {
            let attribute = if set.contains_key(error.variable) {
                error.variable.to_string()
            } else {
                // A stack setting the attributes combine with: name the attributes.
                set.keys().copied().collect::<Vec<_>>().join(",")
            };
            AttributeError::Invalid {
                attribute,
                problem: error.to_string(),
            }
        })?;
        Ok(ContactChoice::Transcribe(Box::new(ContactSettings {
            settings,
            from_attributes: set.keys().map(|name| name.to_string()).collect(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiMode, Language};
    use proptest::prelude::*;

    /// A stack: post-call output possible, `allowed` as set (`None`: unset).
    fn policy(extra: &[(&str, &str)]) -> ContactPolicy {
        let vars: BTreeMap<String, String> = [
            ("OUTPUT_BUCKET", "lca-bucket"),
            ("TCA_DATA_ACCESS_ROLE_ARN", "arn:aws:iam::1:role/tca"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        ContactPolicy::from_lookup(|name| vars.get(name).cloned()).unwrap()
    }

    fn attributes(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn chosen(policy: &ContactPolicy, pairs: &[(&str, &str)]) -> ContactSettings {
        match policy.for_contact(&attributes(pairs)).unwrap() {
            ContactChoice::Transcribe(settings) => *settings,
            ContactChoice::Skip => panic!("{pairs:?}: skipped"),
        }
    }

    #[test]
    fn no_attribute_of_ours_gives_the_stacks_settings() {
        let policy = policy(&[("TRANSCRIBE_LANGUAGE_CODE", "es-US")]);
        // The flow's own attributes, and blank ones of ours, change nothing.
        let settings = chosen(
            &policy,
            &[
                ("AgentId", "alex"),
                ("TRANSCRIBE_LANGUAGE_CODE", "  "),
                ("Lang", "de"),
            ],
        );
        assert_eq!(settings.settings, policy.stack);
        assert!(settings.from_attributes.is_empty());
    }

    #[test]
    fn an_attribute_overrides_its_setting_and_the_rest_stay_the_stacks() {
        let policy = policy(&[
            ("CUSTOM_VOCABULARY_NAME", "stack-vocab"),
            ("PII_ENTITY_TYPES", "NAME"),
        ]);
        let settings = chosen(
            &policy,
            &[
                ("TRANSCRIBE_API_MODE", "analytics"),
                ("TRANSCRIBE_LANGUAGE_CODE", "en-GB"),
            ],
        );
        assert_eq!(settings.settings.mode, ApiMode::Analytics);
        assert_eq!(settings.settings.language, Language::Code("en-GB".into()));
        assert_eq!(
            settings.settings.vocabulary_name.as_deref(),
            Some("stack-vocab")
        );
        assert_eq!(
            settings.settings.redaction.unwrap().entity_types.as_deref(),
            Some("NAME")
        );
        // Analytics turns post-call analytics on (the default), with the stack's output.
        assert_eq!(
            settings
                .settings
                .post_call_analytics
                .unwrap()
                .output_location,
            "s3://lca-bucket/lca-call-analytics-json/"
        );
        assert_eq!(
            settings.from_attributes,
            ["TRANSCRIBE_API_MODE", "TRANSCRIBE_LANGUAGE_CODE"]
        );
    }

    #[test]
    fn the_stack_decides_what_a_flow_may_override() {
        let only_language = policy(&[(ALLOWED_VARIABLE, "TRANSCRIBE_LANGUAGE_CODE")]);
        assert!(matches!(
            only_language.for_contact(&attributes(&[("TRANSCRIBE_LANGUAGE_CODE", "de-DE")])),
            Ok(ContactChoice::Transcribe(_))
        ));
        let error = only_language
            .for_contact(&attributes(&[("TRANSCRIBE_API_MODE", "analytics")]))
            .unwrap_err();
        assert_eq!(error.code(), "ATTRIBUTE_NOT_ALLOWED");
        assert_eq!(error.attribute(), "TRANSCRIBE_API_MODE");
        assert!(
            error.to_string().contains("TRANSCRIBE_LANGUAGE_CODE"),
            "{error}"
        );
        let none = policy(&[(ALLOWED_VARIABLE, "none")]);
        assert_eq!(none.allowed(), "NONE");
        // Whether to transcribe at all is always the flow's.
        assert_eq!(
            none.for_contact(&attributes(&[(SKIP_ATTRIBUTE, "false")])),
            Ok(ContactChoice::Skip)
        );
        assert_eq!(policy(&[]).allowed(), "ALL");
        // A name the stack cannot allow is the stack's configuration error.
        let error = ContactPolicy::from_lookup(|name| {
            (name == ALLOWED_VARIABLE)
                .then(|| "TRANSCRIBE_LANGUAGE_CODE,KINESIS_STREAM_NAME".into())
        })
        .unwrap_err();
        assert_eq!(error.variable, ALLOWED_VARIABLE);
        assert!(error.problem.contains("`KINESIS_STREAM_NAME`"), "{error}");
    }

    #[test]
    fn the_skip_attribute_starts_nothing_and_must_be_a_flag() {
        let policy = policy(&[]);
        for value in ["false", "FALSE", " false "] {
            assert_eq!(
                policy.for_contact(&attributes(&[(SKIP_ATTRIBUTE, value)])),
                Ok(ContactChoice::Skip)
            );
        }
        // Skipping wins over settings that would be refused: nothing is started anyway.
        assert_eq!(
            policy.for_contact(&attributes(&[
                (SKIP_ATTRIBUTE, "false"),
                ("TRANSCRIBE_LANGUAGE_CODE", "klingon")
            ])),
            Ok(ContactChoice::Skip)
        );
        assert!(matches!(
            policy.for_contact(&attributes(&[(SKIP_ATTRIBUTE, "true")])),
            Ok(ContactChoice::Transcribe(_))
        ));
        let error = policy
            .for_contact(&attributes(&[(SKIP_ATTRIBUTE, "no")]))
            .unwrap_err();
        assert_eq!(
            (error.code(), error.attribute()),
            ("BAD_ATTRIBUTE", SKIP_ATTRIBUTE)
        );
    }

    #[test]
    fn refusals_name_the_attribute_and_quote_a_bounded_excerpt() {
        let policy = policy(&[("CUSTOM_LANGUAGE_MODEL_NAME", "stack-model")]);
        let long = "x".repeat(40_000);
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("TRANSCRIBE_LANGUAGE_CODE", "english")],
                "TRANSCRIBE_LANGUAGE_CODE",
            ),
            (&[("TRANSCRIBE_API_MODE", &long)], "TRANSCRIBE_API_MODE"),
            (
                &[("CUSTOM_VOCABULARY_NAME", "a,b")],
                "CUSTOM_VOCABULARY_NAME",
            ),
            (
                &[("CUSTOM_VOCABULARY_NAME", "has space")],
                "CUSTOM_VOCABULARY_NAME",
            ),
            (
                &[
                    ("CUSTOM_VOCABULARY_FILTER_NAME", "f"),
                    ("CUSTOM_VOCABULARY_FILTER_METHOD", "hide"),
                ],
                "CUSTOM_VOCABULARY_FILTER_METHOD",
            ),
            (&[("PII_ENTITY_TYPES", "name")], "PII_ENTITY_TYPES"),
            (
                &[("CONTENT_REDACTION_TYPE", "PHI")],
                "CONTENT_REDACTION_TYPE",
            ),
            (
                &[("IS_CONTENT_REDACTION_ENABLED", "yes")],
                "IS_CONTENT_REDACTION_ENABLED",
            ),
            (
                &[
                    ("TRANSCRIBE_API_MODE", "analytics"),
                    ("TRANSCRIBE_LANGUAGE_CODE", "ja-JP"),
                ],
                "TRANSCRIBE_LANGUAGE_CODE",
            ),
            (
                &[
                    ("TRANSCRIBE_API_MODE", "analytics"),
                    ("POST_CALL_CONTENT_REDACTION_OUTPUT", "all"),
                ],
                "POST_CALL_CONTENT_REDACTION_OUTPUT",
            ),
            // The stack's language model cannot go with identification: the attributes that
            // made the combination are named.
            (
                &[
                    ("TRANSCRIBE_LANGUAGE_CODE", "identify-language"),
                    ("TRANSCRIBE_LANGUAGE_OPTIONS", "en-US,es-US"),
                ],
                "TRANSCRIBE_LANGUAGE_CODE,TRANSCRIBE_LANGUAGE_OPTIONS",
            ),
        ];
        for (pairs, attribute) in cases {
            let error = policy.for_contact(&attributes(pairs)).unwrap_err();
            assert_eq!(error.code(), "BAD_ATTRIBUTE", "{pairs:?}");
            assert_eq!(error.attribute(), *attribute, "{pairs:?}");
            assert!(error.to_string().len() < 600, "{error}");
        }
        // With the model overridden away, identification is fine.
        let policy = self::policy(&[]);
        assert!(
            policy
                .for_contact(&attributes(&[
                    ("TRANSCRIBE_LANGUAGE_CODE", "identify-language"),
                    ("TRANSCRIBE_LANGUAGE_OPTIONS", "en-US,es-US"),
                    ("CUSTOM_VOCABULARY_NAME", "v-en,v-es"),
                ]))
                .is_ok()
        );
    }

    #[test]
    fn settings_from_elsewhere_are_checked_against_the_rules() {
        let mut settings = policy(&[]).stack;
        assert_eq!(settings.check(), Ok(()));
        settings.language = Language::Code(String::new());
        assert!(settings.check().is_err());
        let mut settings = chosen(&policy(&[]), &[("TRANSCRIBE_API_MODE", "analytics")]).settings;
        assert_eq!(settings.check(), Ok(()));
        settings
            .post_call_analytics
            .as_mut()
            .unwrap()
            .output_location = "bucket".into();
        assert_eq!(settings.check().unwrap_err().variable, "OUTPUT_BUCKET");
    }

    /// Values near and past each rule, for each overridable setting.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("standard".to_string()),
            Just("analytics".to_string()),
            Just("en-US".to_string()),
            Just("en-GB".to_string()),
            Just("ja-JP".to_string()),
            Just("identify-language".to_string()),
            Just("identify-multiple-languages".to_string()),
            Just("en-US,es-US".to_string()),
            Just("en-US,en-GB".to_string()),
            Just("es-US".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("PII".to_string()),
            Just("NAME,ADDRESS".to_string()),
            Just("ALL".to_string()),
            Just("mask".to_string()),
            Just("tag".to_string()),
            Just("redacted_and_unredacted".to_string()),
            Just("v-1".to_string()),
            Just("v-1,v-2".to_string()),
            Just("a".repeat(200)),
            Just("a".repeat(201)),
            Just("None".to_string()),
            Just(String::new()),
            ".{0,12}",
        ]
    }

    proptest! {
        /// Whatever a flow sets: a refusal names attributes it set; an acceptance is settings
        /// the rules accept again from their own variables (what START shows), unchanged.
        #[test]
        fn every_choice_is_a_refusal_naming_the_flows_attributes_or_settings_that_read_back(
            pairs in proptest::collection::vec(
                (
                    proptest::sample::select(
                        OVERRIDABLE.iter().copied().chain([SKIP_ATTRIBUTE]).collect::<Vec<_>>()
                    ),
                    value(),
                ),
                0..6,
            )
        ) {
            let policy = policy(&[]);
            let attributes: HashMap<String, String> =
                pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            match policy.for_contact(&attributes) {
                Ok(ContactChoice::Skip) => {
                    prop_assert!(attributes[SKIP_ATTRIBUTE].trim().eq_ignore_ascii_case("false"));
                }
                Ok(ContactChoice::Transcribe(chosen)) => {
                    // `check`: the settings read back unchanged from their own variables
                    // and the stack's post-call output.
                    prop_assert_eq!(chosen.settings.check(), Ok(()));
                    for name in &chosen.from_attributes {
                        prop_assert!(!attributes[name].trim().is_empty());
                    }
                }
                Err(error) => {
                    for name in error.attribute().split(',') {
                        prop_assert!(
                            attributes.get(name).is_some_and(|v| !v.trim().is_empty()),
                            "{} names {} which the flow did not set", error, name
                        );
                    }
                    prop_assert!(error.to_string().chars().count() < 600);
                }
            }
        }
    }
}

//! [`CallSettings`]: what one call's Transcribe sessions (and its post-call analytics job) are
//! configured with, read with the LCA reference's variable names and defaults, and the API
//! references' rules on combining them. The stack's environment gives the defaults; a
//! contact's attributes may override them ([`crate::contact`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, Settings};

/// Which Transcribe API the call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ApiMode {
    /// StartStreamTranscription: two channels with channel identification.
    Standard,
    /// StartCallAnalyticsStreamTranscription: channel 0 = CUSTOMER, 1 = AGENT.
    Analytics,
}

/// How the language is chosen (`TRANSCRIBE_LANGUAGE_CODE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Language {
    /// One language code, e.g. `en-US`.
    Code(String),
    /// `identify-language`: Transcribe picks one of the options.
    Identify(LanguageIdentification),
    /// `identify-multiple-languages`: Transcribe may switch between the options.
    IdentifyMultiple(LanguageIdentification),
}

/// Options for language identification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LanguageIdentification {
    /// `TRANSCRIBE_LANGUAGE_OPTIONS` without blanks, e.g. `en-US,es-US`.
    pub options: Option<String>,
    /// `TRANSCRIBE_PREFERRED_LANGUAGE` (`None` = unset); one of the options.
    pub preferred: Option<String>,
}

/// Content redaction of the live transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redaction {
    /// `CONTENT_REDACTION_TYPE` (Transcribe knows `PII`).
    pub kind: String,
    /// `PII_ENTITY_TYPES`, e.g. `ALL` or `NAME,ADDRESS`.
    pub entity_types: Option<String>,
}

/// A custom vocabulary filter (`CUSTOM_VOCABULARY_FILTER_NAME`,
/// `CUSTOM_VOCABULARY_FILTER_METHOD`; this project's addition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VocabularyFilter {
    /// The filter's name; with language identification a comma-separated list, one filter
    /// per language (sent as VocabularyFilterNames).
    pub name: String,
    /// `mask` (default), `remove` or `tag`.
    pub method: String,
}

/// Post-call analytics of a call in Call Analytics mode: one Call Analytics job on the
/// call's recording when the call ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostCallAnalytics {
    /// `s3://OUTPUT_BUCKET/CALL_ANALYTICS_FILE_PREFIX`.
    pub output_location: String,
    /// `TCA_DATA_ACCESS_ROLE_ARN`.
    pub data_access_role_arn: String,
    /// `POST_CALL_CONTENT_REDACTION_OUTPUT` when redaction is on (`redacted` or
    /// `redacted_and_unredacted`).
    pub content_redaction_output: Option<String>,
}

/// Everything one call's Transcribe sessions are configured with: the stack's values, or a
/// contact's, checked against the API references before the call starts and kept with the
/// call from then on (so a hand-over or a stack update never changes them mid-call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallSettings {
    /// `TRANSCRIBE_API_MODE`.
    pub mode: ApiMode,
    /// `TRANSCRIBE_LANGUAGE_CODE` and its options.
    pub language: Language,
    /// Redaction, only when enabled *and* the language supports it (as the reference does).
    pub redaction: Option<Redaction>,
    /// `CUSTOM_VOCABULARY_NAME` (with language identification: one per language, commas).
    pub vocabulary_name: Option<String>,
    /// `CUSTOM_VOCABULARY_FILTER_NAME` and `CUSTOM_VOCABULARY_FILTER_METHOD`.
    #[serde(default)]
    pub vocabulary_filter: Option<VocabularyFilter>,
    /// `CUSTOM_LANGUAGE_MODEL_NAME`.
    pub language_model_name: Option<String>,
    /// Analytics mode with `IS_TCA_POST_CALL_ANALYTICS_ENABLED` (default on).
    pub post_call_analytics: Option<PostCallAnalytics>,
}

/// Languages for which Transcribe streaming redacts PII (as in the LCA reference).
pub const REDACTION_LANGUAGES: [&str; 4] = ["en-US", "en-AU", "en-GB", "es-US"];

/// Language codes of Call Analytics streaming (StartCallAnalyticsStreamTranscription API
/// reference, LanguageCode: "Valid Values").
pub const CALL_ANALYTICS_LANGUAGES: [&str; 9] = [
    "en-US", "en-GB", "es-US", "fr-CA", "fr-FR", "en-AU", "it-IT", "de-DE", "pt-BR",
];

/// Vocabulary filter methods (StartStreamTranscription API reference,
/// VocabularyFilterMethod: "Valid Values: remove | mask | tag").
pub const VOCABULARY_FILTER_METHODS: [&str; 3] = ["remove", "mask", "tag"];

impl CallSettings {
    /// Every variable [`Self::from_settings`] reads: those a contact may override
    /// ([`crate::contact::OVERRIDABLE`]) and the stack's own post-call output (bucket,
    /// prefix, role).
    pub const VARIABLES: &'static [&'static str] = &[
        "CALL_ANALYTICS_FILE_PREFIX",
        "CONTENT_REDACTION_TYPE",
        "CUSTOM_LANGUAGE_MODEL_NAME",
        "CUSTOM_VOCABULARY_FILTER_METHOD",
        "CUSTOM_VOCABULARY_FILTER_NAME",
        "CUSTOM_VOCABULARY_NAME",
        "IS_CONTENT_REDACTION_ENABLED",
        "IS_TCA_POST_CALL_ANALYTICS_ENABLED",
        "OUTPUT_BUCKET",
        "PII_ENTITY_TYPES",
        "POST_CALL_CONTENT_REDACTION_OUTPUT",
        "TCA_DATA_ACCESS_ROLE_ARN",
        "TRANSCRIBE_API_MODE",
        "TRANSCRIBE_LANGUAGE_CODE",
        "TRANSCRIBE_LANGUAGE_OPTIONS",
        "TRANSCRIBE_PREFERRED_LANGUAGE",
    ];

    /// Reads and checks the settings (see [`Self::VARIABLES`]).
    pub fn from_settings(env: &Settings) -> Result<Self, ConfigError> {
        let mode = match env.get("TRANSCRIBE_API_MODE").as_deref() {
            None | Some("standard") => ApiMode::Standard,
            Some("analytics") => ApiMode::Analytics,
            Some(other) => {
                return Err(ConfigError::new(
                    "TRANSCRIBE_API_MODE",
                    other,
                    "expected `standard` or `analytics`",
                ));
            }
        };
        let redaction_enabled = env.flag("IS_CONTENT_REDACTION_ENABLED", true)?;
        let language = language(env)?;
        let redaction = match (&language, redaction_enabled) {
            (Language::Code(code), true) if REDACTION_LANGUAGES.contains(&code.as_str()) => {
                let kind = env
                    .get("CONTENT_REDACTION_TYPE")
                    .unwrap_or_else(|| "PII".to_string());
                if kind != "PII" {
                    return Err(ConfigError::new(
                        "CONTENT_REDACTION_TYPE",
                        &kind,
                        "Transcribe streaming only knows `PII`",
                    ));
                }
                let entity_types = env
                    .get("PII_ENTITY_TYPES")
                    .unwrap_or_else(|| "ALL".to_string());
                // StartStreamTranscription API reference, PiiEntityTypes: "Length
                // Constraints: Minimum length of 1. Maximum length of 300. Pattern:
                // ^[A-Z_, ]+".
                if entity_types.len() > 300
                    || !entity_types
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || matches!(c, '_' | ',' | ' '))
                {
                    return Err(ConfigError::new(
                        "PII_ENTITY_TYPES",
                        &entity_types,
                        "expected `ALL` or comma-separated PII types such as `NAME,ADDRESS` \
                         (capitals and `_`, at most 300 characters)",
                    ));
                }
                Some(Redaction {
                    kind,
                    entity_types: Some(entity_types),
                })
            }
            _ => None,
        };
        let post_call_analytics = post_call_analytics(env, mode, redaction.is_some())?;
        let identifying = !matches!(language, Language::Code(_));
        let vocabulary_name = env.get("CUSTOM_VOCABULARY_NAME");
        if let Some(names) = &vocabulary_name {
            check_names("CUSTOM_VOCABULARY_NAME", names, identifying)?;
        }
        let vocabulary_filter = match env.get("CUSTOM_VOCABULARY_FILTER_NAME") {
            None => None,
            Some(name) => {
                check_names("CUSTOM_VOCABULARY_FILTER_NAME", &name, identifying)?;
                let method = env
                    .get("CUSTOM_VOCABULARY_FILTER_METHOD")
                    .unwrap_or_else(|| "mask".to_string());
                if !VOCABULARY_FILTER_METHODS.contains(&method.as_str()) {
                    return Err(ConfigError::new(
                        "CUSTOM_VOCABULARY_FILTER_METHOD",
                        &method,
                        "expected `mask`, `remove` or `tag`",
                    ));
                }
                Some(VocabularyFilter { name, method })
            }
        };
        let language_model_name = env.get("CUSTOM_LANGUAGE_MODEL_NAME");
        if let Some(model) = &language_model_name {
            check_names("CUSTOM_LANGUAGE_MODEL_NAME", model, false)?;
        }
        check_language_rules(mode, &language, language_model_name.as_deref())?;
        Ok(Self {
            mode,
            language,
            redaction,
            vocabulary_name,
            vocabulary_filter,
            language_model_name,
            post_call_analytics,
        })
    }

    /// The settings as the variables (and contact attributes) that give them, with the values
    /// in effect: what START's metadata shows an operator, and what [`Self::from_settings`]
    /// reads back to the same settings (with the stack's post-call output location).
    pub fn to_variables(&self) -> BTreeMap<&'static str, String> {
        let mut vars = BTreeMap::new();
        let mode = match self.mode {
            ApiMode::Standard => "standard",
            ApiMode::Analytics => "analytics",
        };
        vars.insert("TRANSCRIBE_API_MODE", mode.to_string());
        let identification = match &self.language {
            Language::Code(code) => {
                vars.insert("TRANSCRIBE_LANGUAGE_CODE", code.clone());
                None
            }
            Language::Identify(id) => {
                vars.insert("TRANSCRIBE_LANGUAGE_CODE", "identify-language".to_string());
                Some(id)
            }
            Language::IdentifyMultiple(id) => {
                vars.insert(
                    "TRANSCRIBE_LANGUAGE_CODE",
                    "identify-multiple-languages".to_string(),
                );
                Some(id)
            }
        };
        if let Some(id) = identification {
            if let Some(options) = &id.options {
                vars.insert("TRANSCRIBE_LANGUAGE_OPTIONS", options.clone());
            }
            if let Some(preferred) = &id.preferred {
                vars.insert("TRANSCRIBE_PREFERRED_LANGUAGE", preferred.clone());
            }
        }
        vars.insert(
            "IS_CONTENT_REDACTION_ENABLED",
            self.redaction.is_some().to_string(),
        );
        if let Some(redaction) = &self.redaction {
            vars.insert("CONTENT_REDACTION_TYPE", redaction.kind.clone());
            if let Some(types) = &redaction.entity_types {
                vars.insert("PII_ENTITY_TYPES", types.clone());
            }
        }
        if let Some(name) = &self.vocabulary_name {
            vars.insert("CUSTOM_VOCABULARY_NAME", name.clone());
        }
        if let Some(filter) = &self.vocabulary_filter {
            vars.insert("CUSTOM_VOCABULARY_FILTER_NAME", filter.name.clone());
            vars.insert("CUSTOM_VOCABULARY_FILTER_METHOD", filter.method.clone());
        }
        if let Some(model) = &self.language_model_name {
            vars.insert("CUSTOM_LANGUAGE_MODEL_NAME", model.clone());
        }
        if self.mode == ApiMode::Analytics {
            vars.insert(
                "IS_TCA_POST_CALL_ANALYTICS_ENABLED",
                self.post_call_analytics.is_some().to_string(),
            );
        }
        if let Some(output) = self
            .post_call_analytics
            .as_ref()
            .and_then(|p| p.content_redaction_output.as_ref())
        {
            vars.insert("POST_CALL_CONTENT_REDACTION_OUTPUT", output.clone());
        }
        vars
    }
}

impl CallSettings {
    /// Whether these settings are what the rules make of their own variables (settings read
    /// from elsewhere than [`Self::from_settings`], e.g. a hand-over event's `callData`): the
    /// rule they break, or how they differ.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut vars = self.to_variables();
        if let Some(post_call) = &self.post_call_analytics {
            let location = post_call.output_location.strip_prefix("s3://");
            let Some((bucket, prefix)) = location.and_then(|l| l.split_once('/')) else {
                return Err(ConfigError::new(
                    "OUTPUT_BUCKET",
                    &post_call.output_location,
                    "the post-call output location is not s3://BUCKET/PREFIX/",
                ));
            };
            vars.insert("OUTPUT_BUCKET", bucket.to_string());
            vars.insert("CALL_ANALYTICS_FILE_PREFIX", prefix.to_string());
            vars.insert(
                "TCA_DATA_ACCESS_ROLE_ARN",
                post_call.data_access_role_arn.clone(),
            );
        }
        let lookup = |name: &str| vars.get(name).cloned();
        let again = Self::from_settings(&Settings::new(&lookup))?;
        if again != *self {
            return Err(ConfigError::new(
                "TRANSCRIBE_API_MODE",
                "",
                "the settings are not what their own variables give (blank or untrimmed values)",
            ));
        }
        Ok(())
    }
}

/// Post-call analytics: in analytics mode unless `IS_TCA_POST_CALL_ANALYTICS_ENABLED=false`,
/// needing the stack's bucket and role.
fn post_call_analytics(
    env: &Settings,
    mode: ApiMode,
    redaction: bool,
) -> Result<Option<PostCallAnalytics>, ConfigError> {
    if mode != ApiMode::Analytics || !env.flag("IS_TCA_POST_CALL_ANALYTICS_ENABLED", true)? {
        return Ok(None);
    }
    let prefix = prefix(
        env,
        "CALL_ANALYTICS_FILE_PREFIX",
        "lca-call-analytics-json/",
    );
    let needed = |name: &'static str, what: &str| {
        env.get(name).ok_or_else(|| {
            ConfigError::new(
                name,
                "",
                format!(
                    "post-call analytics (TRANSCRIBE_API_MODE=analytics, \
                     IS_TCA_POST_CALL_ANALYTICS_ENABLED=true) needs {what}"
                ),
            )
        })
    };
    let bucket = needed("OUTPUT_BUCKET", "the bucket to write to")?;
    let role = needed(
        "TCA_DATA_ACCESS_ROLE_ARN",
        "the role Transcribe writes with",
    )?;
    // The job's redaction output applies with redaction on, as the live stream's did
    // (StartCallAnalyticsStreamTranscription API reference: "to include
    // ContentRedactionOutput in your request, you must enable content redaction").
    let content_redaction_output = if redaction {
        let output = env
            .get("POST_CALL_CONTENT_REDACTION_OUTPUT")
            .unwrap_or_else(|| "redacted".to_string());
        if output != "redacted" && output != "redacted_and_unredacted" {
            return Err(ConfigError::new(
                "POST_CALL_CONTENT_REDACTION_OUTPUT",
                &output,
                "expected `redacted` or `redacted_and_unredacted`",
            ));
        }
        Some(output)
    } else {
        None
    };
    Ok(Some(PostCallAnalytics {
        output_location: format!("s3://{bucket}/{prefix}"),
        data_access_role_arn: role,
        content_redaction_output,
    }))
}

/// An S3 key prefix, ending in `/` (as the reference's formatPath makes it).
pub fn prefix(env: &Settings, name: &str, default: &str) -> String {
    let mut prefix = env.get(name).unwrap_or_else(|| default.to_string());
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    prefix
}

/// A custom vocabulary's, filter's or language model's name, or with language identification
/// (`list`) a comma-separated list of them, one per language. CreateVocabulary,
/// CreateVocabularyFilter and CreateLanguageModel API references: a name is "Minimum length
/// of 1. Maximum length of 200. Pattern: ^[0-9a-zA-Z._-]+"; StartStreamTranscription's
/// VocabularyNames and VocabularyFilterNames: "Maximum length of 3000".
fn check_names(variable: &'static str, value: &str, list: bool) -> Result<(), ConfigError> {
    let name_ok = |name: &str| {
        (1..=200).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    let ok = if list {
        value.len() <= 3000 && value.split(',').all(name_ok)
    } else {
        name_ok(value)
    };
    if ok {
        return Ok(());
    }
    let problem = if list {
        "expected names of 1 to 200 letters, digits, `.`, `_` or `-`, separated by commas \
         (one per language), at most 3000 characters"
    } else {
        "expected a name of 1 to 200 letters, digits, `.`, `_` or `-` (one name: a list is \
         for language identification)"
    };
    Err(ConfigError::new(variable, value, problem))
}

/// The API references' rules on combining language settings, checked before a call starts so
/// that a combination Transcribe refuses is an error naming the variable instead of a
/// BadRequestException on the call.
pub fn check_language_rules(
    mode: ApiMode,
    language: &Language,
    language_model_name: Option<&str>,
) -> Result<(), ConfigError> {
    let identification = match language {
        Language::Code(code) => {
            if mode == ApiMode::Analytics && !CALL_ANALYTICS_LANGUAGES.contains(&code.as_str()) {
                return Err(ConfigError::new(
                    "TRANSCRIBE_LANGUAGE_CODE",
                    code,
                    format!(
                        "Call Analytics streaming supports only {}",
                        CALL_ANALYTICS_LANGUAGES.join(", ")
                    ),
                ));
            }
            return Ok(());
        }
        Language::Identify(id) => id,
        Language::IdentifyMultiple(id) => {
            // StartCallAnalyticsStreamTranscription has IdentifyLanguage only.
            if mode == ApiMode::Analytics {
                return Err(ConfigError::new(
                    "TRANSCRIBE_LANGUAGE_CODE",
                    "identify-multiple-languages",
                    "Call Analytics streaming identifies one language per stream: use \
                     `identify-language`",
                ));
            }
            id
        }
    };
    // StartStreamTranscription API reference, IdentifyLanguage: "Streaming language
    // identification can't be combined with custom language models or redaction."
    if let Some(model) = language_model_name {
        return Err(ConfigError::new(
            "CUSTOM_LANGUAGE_MODEL_NAME",
            model,
            "Transcribe cannot combine a custom language model with language identification",
        ));
    }
    // "If you include IdentifyLanguage, you must include a list of language codes, using
    // LanguageOptions"; "You can only include one language dialect per language per stream".
    let Some(options) = &identification.options else {
        return Err(ConfigError::new(
            "TRANSCRIBE_LANGUAGE_OPTIONS",
            "",
            "language identification needs at least two language codes, e.g. `en-US,es-US`",
        ));
    };
    let mut languages = std::collections::BTreeSet::new();
    for code in options.split(',') {
        let language = code.split('-').next().unwrap_or(code);
        if !languages.insert(language) {
            return Err(ConfigError::new(
                "TRANSCRIBE_LANGUAGE_OPTIONS",
                options,
                format!("Transcribe allows one dialect per language; `{language}` is listed twice"),
            ));
        }
        if mode == ApiMode::Analytics && !CALL_ANALYTICS_LANGUAGES.contains(&code) {
            return Err(ConfigError::new(
                "TRANSCRIBE_LANGUAGE_OPTIONS",
                options,
                format!(
                    "`{code}`: Call Analytics streaming supports only {}",
                    CALL_ANALYTICS_LANGUAGES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// `TRANSCRIBE_LANGUAGE_CODE` and, when identifying, its options.
fn language(env: &Settings) -> Result<Language, ConfigError> {
    let code = env
        .get("TRANSCRIBE_LANGUAGE_CODE")
        .unwrap_or_else(|| "en-US".to_string());
    let identification = || -> Result<LanguageIdentification, ConfigError> {
        let options: Option<String> = env
            .get("TRANSCRIBE_LANGUAGE_OPTIONS")
            .map(|o| o.chars().filter(|c| !c.is_whitespace()).collect());
        let preferred = env
            .get("TRANSCRIBE_PREFERRED_LANGUAGE")
            .filter(|p| p != "None");
        if let Some(preferred) = &preferred {
            let listed = options
                .as_deref()
                .is_some_and(|o| o.split(',').any(|l| l == preferred));
            if !listed {
                return Err(ConfigError::new(
                    "TRANSCRIBE_PREFERRED_LANGUAGE",
                    preferred,
                    "must be one of TRANSCRIBE_LANGUAGE_OPTIONS",
                ));
            }
        }
        if let Some(options) = &options
            && (options.split(',').count() < 2 || options.split(',').any(|l| !is_code(l)))
        {
            return Err(ConfigError::new(
                "TRANSCRIBE_LANGUAGE_OPTIONS",
                options,
                "expected at least two comma-separated language codes, e.g. `en-US,es-US`",
            ));
        }
        Ok(LanguageIdentification { options, preferred })
    };
    match code.as_str() {
        "identify-language" => Ok(Language::Identify(identification()?)),
        "identify-multiple-languages" => Ok(Language::IdentifyMultiple(identification()?)),
        code if is_code(code) => Ok(Language::Code(code.to_string())),
        other => Err(ConfigError::new(
            "TRANSCRIBE_LANGUAGE_CODE",
            other,
            "expected a language code such as `en-US`, `identify-language` or \
             `identify-multiple-languages`",
        )),
    }
}

/// `xx-XX` shaped (Transcribe's codes: two or three letters, a dash, two letters).
fn is_code(code: &str) -> bool {
    match code.split_once('-') {
        Some((lang, region)) => {
            (2..=3).contains(&lang.len())
                && lang.chars().all(|c| c.is_ascii_lowercase())
                && region.len() == 2
                && region.chars().all(|c| c.is_ascii_uppercase())
        }
        None => false,
    }
}

//! [`TranscriberConfig`]: the transcriber's settings, read from the environment with the LCA
//! reference's variable names and defaults. Pure: the caller passes a lookup function, so tests
//! need no process environment.

use std::time::Duration;

use call_settings::Settings;
use call_settings::transcribe::prefix;
pub use call_settings::transcribe::{CALL_ANALYTICS_LANGUAGES, REDACTION_LANGUAGES};
pub use call_settings::{
    ApiMode, CallSettings, ConfigError, ContactPolicy, Language, LanguageIdentification,
    PostCallAnalytics, Redaction, VocabularyFilter,
};

use crate::lanes::LanePolicy;

/// Everything the Transcribe sessions are configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscribeSettings {
    /// The call's settings: in the configuration the stack's (the same as
    /// `TranscriberConfig::contacts.stack`); in a run, the call's own (its `CallData.settings`,
    /// chosen from its contact attributes before it started).
    pub call: CallSettings,
    /// `TRANSCRIBE_ENDPOINT`: a custom endpoint URL.
    pub endpoint: Option<String>,
    /// `START_STREAM_RETRIES`: attempts to start a stream before giving up.
    pub start_retries: u32,
    /// `START_STREAM_RETRY_WAIT`: the first pause between attempts (doubling, up to 20 times
    /// this).
    pub start_retry_wait: Duration,
    /// `TRANSCRIBE_STUCK_TIMEOUT` (this project's addition; ms, default 30 s, at least 1 s):
    /// the watchdog's bound. A session that takes no audio for this long while audio waits,
    /// or has not finished this long after its audio ended (plus however far the audio sent
    /// ran ahead of real time), is stuck: it is closed and the run ends as a stall, so a fresh
    /// invocation reads the call again from the run's start, nothing lost ([`crate::transcribe`]).
    pub stuck_timeout: Duration,
    /// How a call catches up after Transcribe fell behind it ([`crate::lanes`]). From the
    /// environment only `TRANSCRIBE_AUDIO_SECOND_TAKES` (this project's addition; ms, default
    /// 1000, at least 1): how long Transcribe is taken to need for a second of call audio
    /// (`LanePolicy::audio_second_takes`). Real time in a deployment; tests that play calls N
    /// times faster, against a Transcribe paced to them, set 1000/N.
    pub lanes: LanePolicy,
}

impl TranscribeSettings {
    /// These settings for one call: its own per-call settings (`CallData.settings`), or the
    /// stack's when it has none (a call from an earlier version).
    pub fn for_call(&self, call: Option<&CallSettings>) -> Self {
        Self {
            call: call.map_or_else(|| self.call.clone(), CallSettings::clone),
            ..self.clone()
        }
    }
}

/// The transcriber's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriberConfig {
    /// `REGION`, when set (otherwise the SDK's own region chain).
    pub region: Option<String>,
    /// `KINESIS_STREAM_NAME`: the LCA data stream.
    pub kinesis_stream_name: String,
    /// `OUTPUT_BUCKET`: recordings and post-call analytics output.
    pub output_bucket: Option<String>,
    /// `RECORDING_FILE_PREFIX`, ending in `/`.
    pub recording_prefix: String,
    /// `RAW_FILE_PREFIX`, ending in `/`.
    pub raw_prefix: String,
    /// `CALL_ANALYTICS_FILE_PREFIX`, ending in `/`.
    pub call_analytics_prefix: String,
    /// Transcribe options.
    pub transcribe: TranscribeSettings,
    /// `SAVE_PARTIAL_TRANSCRIPTS`.
    pub save_partials: bool,
    /// `KEEP_ALIVE`: silence is sent after this long without audio from KVS.
    pub keep_alive: Duration,
    /// `KVS_IDLE_TIMEOUT` (this project's addition): the call is over when KVS sends no new
    /// fragment for this long.
    pub kvs_idle_timeout: Duration,
    /// `LAMBDA_INVOKE_TIMEOUT`: audio work per invocation before handing over.
    pub lambda_invoke_timeout: Duration,
    /// `HANDOVER_GRACE` (this project's addition; ms, default 15 s, at most 30 s): how long
    /// past its deadline a run waits for a pause to hand over at, and may go on waiting for
    /// Transcribe capacity and Kinesis, before it hands over anyway or stalls. Part of
    /// `lambda::DEADLINE_MARGIN` (45 s), hence the bound. Tests that play calls N times faster
    /// than real time scale it as they scale `LAMBDA_INVOKE_TIMEOUT`.
    pub handover_grace: Duration,
    /// `CONNECT_INSTANCE_ARN`: the only instance whose contacts are accepted.
    pub connect_instance_arn: Option<String>,
    /// `LAMBDA_HOOK_FUNCTION_ARN`: optional hook invoked for a new call.
    pub lambda_hook_function_arn: Option<String>,
    /// `TRANSCRIBER_CALL_EVENT_TABLE_NAME`: the DynamoDB table of call leases (one
    /// transcriber per call); without it duplicate invocations are not detected.
    pub call_event_table: Option<String>,
    /// `CALL_LEASE_TIMEOUT` (this project's addition): a lease not renewed for this long is
    /// taken to belong to a crashed invocation.
    pub call_lease_timeout: Duration,
    /// `MAXIMUM_RETRY_ATTEMPTS` (this project's addition; 0-2, default 2 as Lambda's): the
    /// function's asynchronous retry attempts, as its event invoke configuration sets them.
    /// An invocation's attempts are counted when they claim the call's lease, however they
    /// end (an error, a timeout, a crash): a call whose invocation used this many retries is
    /// given up, END published so LCA does not show it live for ever, the failure in the
    /// lease and the log.
    pub maximum_retry_attempts: u32,
    /// `MAX_CALL_DURATION` (this project's addition; ms, default 8 hours): the longest call
    /// transcribed, counted in the call's own time (its audio from the first fragment). A call
    /// that reaches it ends there as a call does (END, the recording), with a log line and
    /// the `CallsCut` metric saying so: the guard against a stream that never ends, in place
    /// of the reference's limit of 30 invocations.
    pub max_call_duration: Duration,
    /// `CALL_STALL_TIMEOUT` (this project's addition; ms, default 30 minutes): how long a call
    /// may wait without progress for a service with no room for it (Transcribe's concurrent
    /// stream quota in use, Kinesis refusing its events for throttling or an outage). While
    /// it waits, its audio stays in KVS and each invocation whose time runs out hands the
    /// call to a fresh one at the same position (not a failure: Lambda's two retries are kept
    /// for real failures); past this long, the call is given up as after a last failed
    /// attempt. Keep it below the Connect instance's media stream retention
    /// (RetentionPeriodHours, whole hours), or the audio waited for is deleted first.
    pub call_stall_timeout: Duration,
    /// `SWEEP_GRACE` (this project's addition; ms, default 5 minutes): how long an open call
    /// may go with nobody looking after it (its event lost by Lambda, its last attempt
    /// stopped) before the scheduled sweep delivers it again. Keep it longer than Lambda
    /// takes to retry a failed event (about one, then two more minutes): a sweep that comes
    /// first spends one of the call's attempts.
    pub sweep_grace: Duration,
    /// `METRICS_NAMESPACE` (this project's addition; default `LCA/ConnectKVS`): the
    /// CloudWatch namespace of the metrics lines. The template sets one per stack, so two
    /// stacks in one account and region keep their metrics and alarms apart.
    pub metrics_namespace: String,
    /// `METRICS_INTERVAL` (this project's addition; ms, default and most 60000, least 1000): how
    /// often a running invocation writes a metrics line with what it did since the last one,
    /// and how far behind the live call its transcript is. CloudWatch aggregates metrics by
    /// the minute; a line at least once a minute keeps every minute of a long call seen,
    /// and an invocation that times out or crashes loses at most this much of its figures.
    pub metrics_interval: Duration,
    /// The stack's per-call settings and what a contact's attributes may override
    /// (`CONTACT_ATTRIBUTE_OVERRIDES`): applied when the transcriber is started with the
    /// contact-flow event itself (StartLCA applies them otherwise, into the call's lease).
    pub contacts: ContactPolicy,
}

/// Default `MAX_CALL_DURATION`: 8 hours, room for a six-hour call and more.
pub const DEFAULT_MAX_CALL_DURATION_MS: u64 = 8 * 3600 * 1000;

/// Default `CALL_STALL_TIMEOUT`: 30 minutes, below the shortest media retention that keeps
/// anything (Connect's RetentionPeriodHours is in whole hours; 0 keeps no data).
pub const DEFAULT_CALL_STALL_TIMEOUT_MS: u64 = 30 * 60 * 1000;

/// Default `HANDOVER_GRACE`: 15 s, longer than a turn in a conversation usually runs without
/// a pause.
pub const DEFAULT_HANDOVER_GRACE_MS: u64 = 15_000;

/// The longest `HANDOVER_GRACE`: with the flushes and the next invocation it must fit in
/// `lambda::DEADLINE_MARGIN` (45 s).
const MAX_HANDOVER_GRACE_MS: u64 = 30_000;

/// Transcribe closes a stream after 15 s without audio; keep-alives must come sooner.
const TRANSCRIBE_AUDIO_TIMEOUT_MS: u64 = 15_000;

impl TranscriberConfig {
    /// The lifecycle's limits: attempts per invocation and `CALL_STALL_TIMEOUT`.
    pub fn limits(&self) -> call_lifecycle::Limits {
        call_lifecycle::Limits {
            sweep_grace_ms: self.sweep_grace.as_millis() as u64,
            ..call_lifecycle::Limits::new(
                self.maximum_retry_attempts,
                self.call_stall_timeout.as_millis() as u64,
            )
        }
    }

    /// `MAX_CALL_DURATION` in samples of call audio (8 kHz).
    pub fn max_call_samples(&self) -> u64 {
        (self.max_call_duration.as_millis() as u64)
            .saturating_mul(u64::from(call_audio::CONNECT_SAMPLE_RATE))
            / 1000
    }

    /// The environment variables the transcriber reads of its own; it reads
    /// [`ContactPolicy::variables`] too (the per-call settings, which StartLCA reads as well).
    pub const VARIABLES: &'static [&'static str] = &[
        "CALL_ANALYTICS_FILE_PREFIX",
        "CALL_LEASE_TIMEOUT",
        "CALL_STALL_TIMEOUT",
        "CONNECT_INSTANCE_ARN",
        "HANDOVER_GRACE",
        "KEEP_ALIVE",
        "KINESIS_STREAM_NAME",
        "KVS_IDLE_TIMEOUT",
        "LAMBDA_HOOK_FUNCTION_ARN",
        "LAMBDA_INVOKE_TIMEOUT",
        "MAXIMUM_RETRY_ATTEMPTS",
        "MAX_CALL_DURATION",
        "METRICS_INTERVAL",
        "METRICS_NAMESPACE",
        "OUTPUT_BUCKET",
        "RAW_FILE_PREFIX",
        "RECORDING_FILE_PREFIX",
        "REGION",
        "SAVE_PARTIAL_TRANSCRIPTS",
        "START_STREAM_RETRIES",
        "START_STREAM_RETRY_WAIT",
        "SWEEP_GRACE",
        "TRANSCRIBER_CALL_EVENT_TABLE_NAME",
        "TRANSCRIBE_AUDIO_SECOND_TAKES",
        "TRANSCRIBE_ENDPOINT",
        "TRANSCRIBE_STUCK_TIMEOUT",
    ];

    /// Every environment variable the transcriber reads (the deployment sets each of them;
    /// a test keeps this list and [`Self::from_lookup`] in step).
    pub fn variables() -> impl Iterator<Item = &'static str> {
        Self::VARIABLES
            .iter()
            .copied()
            .chain(ContactPolicy::variables())
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (a variable's value, or `None` when unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Settings::new(&lookup);
        // The stack's per-call settings, and what a contact's attributes may change.
        let contacts = ContactPolicy::from_lookup(&lookup)?;
        let output_bucket = env.get("OUTPUT_BUCKET");
        let endpoint = env.get("TRANSCRIBE_ENDPOINT");
        if let Some(url) = &endpoint
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ConfigError::new(
                "TRANSCRIBE_ENDPOINT",
                url,
                "expected a URL starting with https:// (or http:// for a local endpoint)",
            ));
        }
        let keep_alive = env.millis("KEEP_ALIVE", 10_000, 0)?;
        if keep_alive.is_zero() || keep_alive.as_millis() as u64 >= TRANSCRIBE_AUDIO_TIMEOUT_MS {
            return Err(ConfigError::new(
                "KEEP_ALIVE",
                &keep_alive.as_millis().to_string(),
                "must be between 1 and 14999 ms: Transcribe closes a stream after 15 s without audio",
            ));
        }
        // The first attempt counts.
        let start_retries = env.number("START_STREAM_RETRIES", 5u32, 1..)?;
        let lambda_invoke_timeout = env.millis("LAMBDA_INVOKE_TIMEOUT", 720_000, 1)?;
        let handover_grace = env.millis("HANDOVER_GRACE", DEFAULT_HANDOVER_GRACE_MS, 0)?;
        if handover_grace > Duration::from_millis(MAX_HANDOVER_GRACE_MS) {
            return Err(ConfigError::new(
                "HANDOVER_GRACE",
                &handover_grace.as_millis().to_string(),
                "must be at most 30000 ms: the grace, flushing Transcribe and Kinesis and handing over must fit in the 45 s an invocation keeps back from its Lambda timeout",
            ));
        }
        let call_lease_timeout = env.millis("CALL_LEASE_TIMEOUT", 30_000, 0)?;
        if call_lease_timeout < Duration::from_secs(3) {
            return Err(ConfigError::new(
                "CALL_LEASE_TIMEOUT",
                &call_lease_timeout.as_millis().to_string(),
                "must be at least 3000 ms (the lease is renewed every third of it)",
            ));
        }
        // Lambda's asynchronous invocation retries a failed event 0 to 2 times (Lambda
        // developer guide, "Configuring error handling for asynchronous invocation":
        // MaximumRetryAttempts, default 2).
        let maximum_retry_attempts = env.number("MAXIMUM_RETRY_ATTEMPTS", 2u32, ..)?;
        if maximum_retry_attempts > 2 {
            return Err(ConfigError::new(
                "MAXIMUM_RETRY_ATTEMPTS",
                &maximum_retry_attempts.to_string(),
                "must be 0, 1 or 2, as the function's MaximumRetryAttempts",
            ));
        }
        let kvs_idle_timeout = env.millis("KVS_IDLE_TIMEOUT", 15_000, 1)?;
        let stuck_timeout = env.millis("TRANSCRIBE_STUCK_TIMEOUT", 30_000, 1000)?;
        let max_call_duration = env.millis("MAX_CALL_DURATION", DEFAULT_MAX_CALL_DURATION_MS, 1)?;
        let call_stall_timeout =
            env.millis("CALL_STALL_TIMEOUT", DEFAULT_CALL_STALL_TIMEOUT_MS, 0)?;
        let sweep_grace = env.millis(
            "SWEEP_GRACE",
            call_lifecycle::lease::DEFAULT_SWEEP_GRACE_MS,
            1000,
        )?;
        let metrics_namespace = env.metrics_namespace()?;
        let metrics_interval = env.millis("METRICS_INTERVAL", 60_000, 1000)?;
        if metrics_interval > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "METRICS_INTERVAL",
                &metrics_interval.as_millis().to_string(),
                "must be at most 60000 ms: a minute without a metrics line is a minute the alarms do not see",
            ));
        }
        Ok(Self {
            region: env.get("REGION"),
            kinesis_stream_name: env.required(
                "KINESIS_STREAM_NAME",
                "the LCA Kinesis data stream the events go to",
            )?,
            output_bucket,
            recording_prefix: prefix(&env, "RECORDING_FILE_PREFIX", "lca-audio-recordings/"),
            raw_prefix: prefix(&env, "RAW_FILE_PREFIX", "lca-audio-raw/"),
            call_analytics_prefix: prefix(
                &env,
                "CALL_ANALYTICS_FILE_PREFIX",
                "lca-call-analytics-json/",
            ),
            transcribe: TranscribeSettings {
                call: contacts.stack.clone(),
                endpoint,
                start_retries,
                start_retry_wait: env.millis("START_STREAM_RETRY_WAIT", 1_000, 0)?,
                stuck_timeout,
                lanes: LanePolicy {
                    audio_second_takes: env.millis("TRANSCRIBE_AUDIO_SECOND_TAKES", 1_000, 1)?,
                    ..LanePolicy::default()
                },
            },
            save_partials: env.flag("SAVE_PARTIAL_TRANSCRIPTS", true)?,
            keep_alive,
            kvs_idle_timeout,
            lambda_invoke_timeout,
            handover_grace,
            connect_instance_arn: env.get("CONNECT_INSTANCE_ARN"),
            lambda_hook_function_arn: env.get("LAMBDA_HOOK_FUNCTION_ARN"),
            call_event_table: env.get("TRANSCRIBER_CALL_EVENT_TABLE_NAME"),
            call_lease_timeout,
            maximum_retry_attempts,
            max_call_duration,
            call_stall_timeout,
            sweep_grace,
            metrics_namespace,
            metrics_interval,
            contacts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<TranscriberConfig, ConfigError> {
        let mut map: HashMap<String, String> = [("KINESIS_STREAM_NAME", "lca")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in vars {
            map.insert(k.to_string(), v.to_string());
        }
        TranscriberConfig::from_lookup(|name| map.get(name).cloned())
    }

    fn error_variable(vars: &[(&str, &str)]) -> &'static str {
        config(vars).expect_err("should be rejected").variable
    }

    #[test]
    fn defaults_are_the_reference_defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.kinesis_stream_name, "lca");
        assert_eq!(c.recording_prefix, "lca-audio-recordings/");
        assert_eq!(c.raw_prefix, "lca-audio-raw/");
        assert_eq!(c.call_analytics_prefix, "lca-call-analytics-json/");
        assert_eq!(c.transcribe.call.mode, ApiMode::Standard);
        assert_eq!(c.transcribe.call.language, Language::Code("en-US".into()));
        // Redaction is on by default in the reference, and en-US supports it.
        assert_eq!(
            c.transcribe.call.redaction,
            Some(Redaction {
                kind: "PII".into(),
                entity_types: Some("ALL".into())
            })
        );
        assert!(c.save_partials);
        assert_eq!(c.keep_alive, Duration::from_secs(10));
        assert_eq!(c.lambda_invoke_timeout, Duration::from_millis(720_000));
        assert_eq!(c.handover_grace, Duration::from_secs(15));
        assert_eq!(c.max_call_duration, Duration::from_secs(8 * 3600));
        assert_eq!(c.max_call_samples(), 8 * 3600 * 8000);
        assert_eq!(c.metrics_namespace, "LCA/ConnectKVS");
        assert_eq!(c.metrics_interval, Duration::from_secs(60));
        assert_eq!(c.transcribe.start_retries, 5);
        assert_eq!(c.transcribe.start_retry_wait, Duration::from_secs(1));
        assert_eq!(c.transcribe.stuck_timeout, Duration::from_secs(30));
        assert_eq!(c.transcribe.call.post_call_analytics, None);
    }

    #[test]
    fn redaction_only_for_languages_that_support_it() {
        let c = config(&[("TRANSCRIBE_LANGUAGE_CODE", "de-DE")]).unwrap();
        assert_eq!(c.transcribe.call.redaction, None);
        let c = config(&[("IS_CONTENT_REDACTION_ENABLED", "false")]).unwrap();
        assert_eq!(c.transcribe.call.redaction, None);
        let c = config(&[("PII_ENTITY_TYPES", "NAME,ADDRESS")]).unwrap();
        assert_eq!(
            c.transcribe.call.redaction.unwrap().entity_types.as_deref(),
            Some("NAME,ADDRESS")
        );
    }

    #[test]
    fn language_identification_with_options() {
        let c = config(&[
            ("TRANSCRIBE_LANGUAGE_CODE", "identify-language"),
            ("TRANSCRIBE_LANGUAGE_OPTIONS", "en-US, es-US"),
            ("TRANSCRIBE_PREFERRED_LANGUAGE", "es-US"),
        ])
        .unwrap();
        assert_eq!(
            c.transcribe.call.language,
            Language::Identify(LanguageIdentification {
                options: Some("en-US,es-US".into()),
                preferred: Some("es-US".into())
            })
        );
        assert_eq!(c.transcribe.call.redaction, None);
        let c = config(&[
            ("TRANSCRIBE_LANGUAGE_CODE", "identify-multiple-languages"),
            ("TRANSCRIBE_LANGUAGE_OPTIONS", "en-US,de-DE"),
            ("TRANSCRIBE_PREFERRED_LANGUAGE", "None"),
        ])
        .unwrap();
        assert!(matches!(
            c.transcribe.call.language,
            Language::IdentifyMultiple(LanguageIdentification {
                preferred: None,
                ..
            })
        ));
    }

    #[test]
    fn language_settings_transcribe_refuses_are_configuration_errors() {
        let identify = ("TRANSCRIBE_LANGUAGE_CODE", "identify-language");
        let options = ("TRANSCRIBE_LANGUAGE_OPTIONS", "en-US,es-US");
        assert_eq!(error_variable(&[identify]), "TRANSCRIBE_LANGUAGE_OPTIONS");
        assert_eq!(
            error_variable(&[identify, ("TRANSCRIBE_LANGUAGE_OPTIONS", "en-US,en-AU")]),
            "TRANSCRIBE_LANGUAGE_OPTIONS"
        );
        assert_eq!(
            error_variable(&[identify, options, ("CUSTOM_LANGUAGE_MODEL_NAME", "m")]),
            "CUSTOM_LANGUAGE_MODEL_NAME"
        );
        // A vocabulary is fine: it goes as VocabularyNames.
        assert!(config(&[identify, options, ("CUSTOM_VOCABULARY_NAME", "v")]).is_ok());
        let analytics = [
            ("TRANSCRIBE_API_MODE", "analytics"),
            ("IS_TCA_POST_CALL_ANALYTICS_ENABLED", "false"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars = analytics.to_vec();
            vars.extend_from_slice(extra);
            vars
        };
        assert_eq!(
            error_variable(&with(&[("TRANSCRIBE_LANGUAGE_CODE", "ja-JP")])),
            "TRANSCRIBE_LANGUAGE_CODE"
        );
        assert_eq!(
            error_variable(&with(&[
                ("TRANSCRIBE_LANGUAGE_CODE", "identify-multiple-languages"),
                options
            ])),
            "TRANSCRIBE_LANGUAGE_CODE"
        );
        assert_eq!(
            error_variable(&with(&[
                identify,
                ("TRANSCRIBE_LANGUAGE_OPTIONS", "en-US,ja-JP")
            ])),
            "TRANSCRIBE_LANGUAGE_OPTIONS"
        );
        assert!(config(&with(&[identify, options])).is_ok());
        assert!(config(&with(&[("TRANSCRIBE_LANGUAGE_CODE", "de-DE")])).is_ok());
    }

    #[test]
    fn no_redaction_output_without_redaction() {
        let post_call = |vars: &[(&str, &str)]| {
            let mut all = vec![
                ("TRANSCRIBE_API_MODE", "analytics"),
                ("OUTPUT_BUCKET", "b"),
                ("TCA_DATA_ACCESS_ROLE_ARN", "arn:aws:iam::1:role/tca"),
            ];
            all.extend_from_slice(vars);
            config(&all)
                .unwrap()
                .transcribe
                .call
                .post_call_analytics
                .unwrap()
                .content_redaction_output
        };
        assert_eq!(post_call(&[]).as_deref(), Some("redacted"));
        // de-DE has no streaming redaction: no ContentRedactionOutput either.
        assert_eq!(post_call(&[("TRANSCRIBE_LANGUAGE_CODE", "de-DE")]), None);
        assert_eq!(
            post_call(&[("IS_CONTENT_REDACTION_ENABLED", "false")]),
            None
        );
    }

    #[test]
    fn analytics_needs_bucket_and_role_for_post_call_output() {
        assert_eq!(
            error_variable(&[("TRANSCRIBE_API_MODE", "analytics")]),
            "OUTPUT_BUCKET"
        );
        assert_eq!(
            error_variable(&[("TRANSCRIBE_API_MODE", "analytics"), ("OUTPUT_BUCKET", "b")]),
            "TCA_DATA_ACCESS_ROLE_ARN"
        );
        let c = config(&[
            ("TRANSCRIBE_API_MODE", "analytics"),
            ("OUTPUT_BUCKET", "b"),
            ("TCA_DATA_ACCESS_ROLE_ARN", "arn:aws:iam::1:role/tca"),
            ("CALL_ANALYTICS_FILE_PREFIX", "tca"),
            (
                "POST_CALL_CONTENT_REDACTION_OUTPUT",
                "redacted_and_unredacted",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.transcribe.call.post_call_analytics,
            Some(PostCallAnalytics {
                output_location: "s3://b/tca/".into(),
                data_access_role_arn: "arn:aws:iam::1:role/tca".into(),
                content_redaction_output: Some("redacted_and_unredacted".into()),
            })
        );
        // Post-call analytics off: nothing else needed.
        let c = config(&[
            ("TRANSCRIBE_API_MODE", "analytics"),
            ("IS_TCA_POST_CALL_ANALYTICS_ENABLED", "false"),
        ])
        .unwrap();
        assert_eq!(c.transcribe.call.mode, ApiMode::Analytics);
        assert_eq!(c.transcribe.call.post_call_analytics, None);
    }

    #[test]
    fn the_variable_list_is_what_is_read() {
        let asked = std::cell::RefCell::new(std::collections::BTreeSet::new());
        for settings in [
            &[("KINESIS_STREAM_NAME", "lca")][..],
            &[
                ("KINESIS_STREAM_NAME", "lca"),
                ("TRANSCRIBE_API_MODE", "analytics"),
                ("OUTPUT_BUCKET", "b"),
                ("TCA_DATA_ACCESS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ],
            &[
                ("KINESIS_STREAM_NAME", "lca"),
                ("TRANSCRIBE_LANGUAGE_CODE", "identify-language"),
                ("TRANSCRIBE_LANGUAGE_OPTIONS", "en-US,es-US"),
            ],
        ] {
            TranscriberConfig::from_lookup(|name| {
                asked.borrow_mut().insert(name.to_string());
                settings
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            })
            .unwrap();
        }
        let listed: std::collections::BTreeSet<String> = TranscriberConfig::variables()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(asked.into_inner(), listed);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("KINESIS_STREAM_NAME", "")], "KINESIS_STREAM_NAME"),
            (&[("TRANSCRIBE_API_MODE", "fast")], "TRANSCRIBE_API_MODE"),
            (
                &[("SAVE_PARTIAL_TRANSCRIPTS", "yes")],
                "SAVE_PARTIAL_TRANSCRIPTS",
            ),
            (&[("KEEP_ALIVE", "15000")], "KEEP_ALIVE"),
            (&[("KEEP_ALIVE", "ten")], "KEEP_ALIVE"),
            (
                &[("TRANSCRIBE_STUCK_TIMEOUT", "999")],
                "TRANSCRIBE_STUCK_TIMEOUT",
            ),
            (
                &[("TRANSCRIBE_AUDIO_SECOND_TAKES", "0")],
                "TRANSCRIBE_AUDIO_SECOND_TAKES",
            ),
            (&[("START_STREAM_RETRIES", "-1")], "START_STREAM_RETRIES"),
            (&[("START_STREAM_RETRIES", "0")], "START_STREAM_RETRIES"),
            (&[("LAMBDA_INVOKE_TIMEOUT", "0")], "LAMBDA_INVOKE_TIMEOUT"),
            (&[("HANDOVER_GRACE", "30001")], "HANDOVER_GRACE"),
            (&[("MAX_CALL_DURATION", "0")], "MAX_CALL_DURATION"),
            (&[("MAX_CALL_DURATION", "6h")], "MAX_CALL_DURATION"),
            (&[("METRICS_NAMESPACE", "AWS/Lambda")], "METRICS_NAMESPACE"),
            (
                &[("METRICS_NAMESPACE", "LCA/Connect\u{e9}")],
                "METRICS_NAMESPACE",
            ),
            (&[("METRICS_INTERVAL", "999")], "METRICS_INTERVAL"),
            (&[("METRICS_INTERVAL", "60001")], "METRICS_INTERVAL"),
            (&[("CALL_LEASE_TIMEOUT", "1000")], "CALL_LEASE_TIMEOUT"),
            (&[("CALL_LEASE_TIMEOUT", "soon")], "CALL_LEASE_TIMEOUT"),
            (
                &[("TRANSCRIBE_LANGUAGE_CODE", "english")],
                "TRANSCRIBE_LANGUAGE_CODE",
            ),
            (
                &[("TRANSCRIBE_ENDPOINT", "localhost:9")],
                "TRANSCRIBE_ENDPOINT",
            ),
            (
                &[("CONTENT_REDACTION_TYPE", "PHI")],
                "CONTENT_REDACTION_TYPE",
            ),
            (
                &[
                    ("TRANSCRIBE_LANGUAGE_CODE", "identify-language"),
                    ("TRANSCRIBE_LANGUAGE_OPTIONS", "en-US,es-US"),
                    ("TRANSCRIBE_PREFERRED_LANGUAGE", "fr-FR"),
                ],
                "TRANSCRIBE_PREFERRED_LANGUAGE",
            ),
            (
                &[
                    ("TRANSCRIBE_LANGUAGE_CODE", "identify-language"),
                    ("TRANSCRIBE_LANGUAGE_OPTIONS", "en-US"),
                ],
                "TRANSCRIBE_LANGUAGE_OPTIONS",
            ),
        ];
        for (vars, variable) in cases {
            let error = config(vars).expect_err(variable);
            assert_eq!(error.variable, *variable, "{vars:?}");
            assert!(error.to_string().starts_with(variable), "{error}");
        }
    }
}

//! Post-call analytics for the whole call: one Transcribe Call Analytics job
//! (StartCallAnalyticsJob) on the call's joined stereo recording, started when the call ends.
//!
//! Why not the streams' own post-call output: a call is transcribed by one stream per
//! invocation (one per ~12 minutes), and each Call Analytics stream with
//! PostCallAnalyticsSettings writes its own analysis of *its* audio when it ends, named by
//! the session id (`<OutputLocation>analytics/<SessionId>.json` in LCA's reader,
//! `process_tca_postcall`), which hand-overs keep: a 40-minute call got partial analyses,
//! most likely each overwriting the last (inferred from the key; not documented). A batch
//! job on the recording covers the whole call once.
//!
//! [`plan_job`] is pure: the job a call gets, or why it gets none. [`PostCallJobs`] sends it.

use aws_sdk_transcribe::types::{
    CallAnalyticsJobSettings, ChannelDefinition, ContentRedaction, LanguageCode, Media,
    ParticipantRole, PiiEntityType, RedactionOutput, RedactionType, VocabularyFilterMethod,
};

use crate::config::{Language, TranscribeSettings, VocabularyFilter};
use aws_edge::error_text;

/// Longest media a job takes: "Audio file length 4:00:00 (four) hours (14,400 seconds)"
/// (Amazon Transcribe developer guide, Guidelines and quotas; not adjustable).
pub const MAX_JOB_SECONDS: u64 = 14_400;

/// Largest media a Call Analytics job takes: "Audio file size (call analytics) 500 MB"
/// (same page), read as 500 × 10⁶ bytes, the smaller of the two readings of MB. A call's WAV
/// (32,000 bytes a second) reaches the length limit first, at 460.8 MB.
pub const MAX_JOB_BYTES: u64 = 500_000_000;

/// Shortest media a job takes: "Minimum audio file duration 500 milliseconds" (same page).
pub const MIN_JOB_MS: u64 = 500;

/// Bytes of a second of the call's recording (8 kHz, two 16-bit channels).
const BYTES_PER_SECOND: u64 = 8_000 * 4;

/// Longest job name (API reference, StartCallAnalyticsJob, CallAnalyticsJobName: 1 to 200
/// characters, pattern `^[0-9a-zA-Z._-]+`).
const MAX_JOB_NAME: usize = 200;

/// A Call Analytics job for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyticsJob {
    /// The job's name: the CallId when it is a valid job name (a Connect ContactId is).
    pub name: String,
    /// `s3://<bucket>/<recording key>`: the joined WAV.
    pub media_uri: String,
    /// `s3://OUTPUT_BUCKET/CALL_ANALYTICS_FILE_PREFIX` (the job writes `<name>.json` there).
    pub output_location: String,
    /// `TCA_DATA_ACCESS_ROLE_ARN`: reads the recording and writes the output.
    pub data_access_role_arn: String,
    /// The language, or the languages to identify among (none: Transcribe identifies any).
    pub language_options: Vec<String>,
    /// `CUSTOM_VOCABULARY_NAME` (with one language only).
    pub vocabulary_name: Option<String>,
    /// `CUSTOM_LANGUAGE_MODEL_NAME` (with one language only).
    pub language_model_name: Option<String>,
    /// `CUSTOM_VOCABULARY_FILTER_NAME` and its method (with one language only).
    pub vocabulary_filter: Option<VocabularyFilter>,
    /// The live transcript's redaction, applied to the analysis as well.
    pub redaction: Option<JobRedaction>,
}

/// Content redaction of a job's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRedaction {
    /// `redacted` or `redacted_and_unredacted` (`POST_CALL_CONTENT_REDACTION_OUTPUT`).
    pub output: String,
    /// PII entity types (`PII_ENTITY_TYPES`); `ALL` is one of them.
    pub entity_types: Vec<String>,
}

/// Why a call whose analytics is on gets no job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoJob {
    /// Longer than Transcribe takes: the call is not analysed.
    #[error(
        "the recording is {seconds} s long; Transcribe takes at most {MAX_JOB_SECONDS} s (4 h) a job"
    )]
    TooLong {
        /// The recording's length.
        seconds: u64,
    },
    /// Larger than Transcribe takes: the call is not analysed.
    #[error("the recording is {bytes} bytes; Call Analytics takes at most {MAX_JOB_BYTES}")]
    TooLarge {
        /// The recording's size.
        bytes: u64,
    },
    /// Shorter than Transcribe takes: nothing to analyse.
    #[error("the recording is {ms} ms long; Transcribe takes at least {MIN_JOB_MS} ms")]
    TooShort {
        /// The recording's length.
        ms: u64,
    },
}

impl NoJob {
    /// Whether a call that had something to analyse is left without analysis (the operator
    /// is told); a call too short to analyse is not.
    pub fn is_missed(&self) -> bool {
        !matches!(self, Self::TooShort { .. })
    }
}

/// The job's name for `call_id`: the id itself when it is a valid job name, otherwise the id
/// with every other character made `-`, cut to fit, and a hash of the whole id appended, so
/// that two ids never share a job.
pub fn job_name(call_id: &str) -> String {
    let valid = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if !call_id.is_empty() && call_id.len() <= MAX_JOB_NAME && call_id.chars().all(valid) {
        return call_id.to_string();
    }
    // FNV-1a, 64 bits: stable across builds, so a retried invocation names the same job.
    let hash = call_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let suffix = format!("-{hash:016x}");
    let stem: String = call_id
        .chars()
        .map(|c| if valid(c) { c } else { '-' })
        .take(MAX_JOB_NAME - suffix.len())
        .collect();
    stem + &suffix
}

/// The job for the call recorded at `s3://bucket/key` (`recording_bytes` with its header),
/// given the live settings, or why there is none. `None` when post-call analytics is off.
pub fn plan_job(
    settings: &TranscribeSettings,
    call_id: &str,
    bucket: &str,
    key: &str,
    recording_bytes: u64,
) -> Option<Result<AnalyticsJob, NoJob>> {
    let post_call = settings.call.post_call_analytics.as_ref()?;
    let audio = recording_bytes.saturating_sub(call_audio::WAV_HEADER_BYTES as u64);
    let ms = audio * 1000 / BYTES_PER_SECOND;
    if ms < MIN_JOB_MS {
        return Some(Err(NoJob::TooShort { ms }));
    }
    if ms > MAX_JOB_SECONDS * 1000 {
        return Some(Err(NoJob::TooLong { seconds: ms / 1000 }));
    }
    if recording_bytes > MAX_JOB_BYTES {
        return Some(Err(NoJob::TooLarge {
            bytes: recording_bytes,
        }));
    }
    // One language: LanguageOptions of one, as AWS's post-call analytics sample does for a
    // known language (amazon-transcribe-post-call-analytics, pca-aws-sf-start-transcribe-job.py);
    // the batch API has no LanguageCode. Vocabulary and language model apply to it. When
    // identifying, the options only (a vocabulary would need LanguageIdSettings per language).
    let (language_options, vocabulary_name, language_model_name, vocabulary_filter) =
        match &settings.call.language {
            Language::Code(code) => (
                vec![code.clone()],
                settings.call.vocabulary_name.clone(),
                settings.call.language_model_name.clone(),
                settings.call.vocabulary_filter.clone(),
            ),
            Language::Identify(id) | Language::IdentifyMultiple(id) => (
                id.options
                    .iter()
                    .flat_map(|o| o.split(','))
                    .map(|o| o.trim().to_string())
                    .filter(|o| !o.is_empty())
                    .collect(),
                None,
                None,
                None,
            ),
        };
    let redaction = settings.call.redaction.as_ref().map(|r| JobRedaction {
        output: post_call
            .content_redaction_output
            .clone()
            .unwrap_or_else(|| "redacted".to_string()),
        entity_types: r
            .entity_types
            .iter()
            .flat_map(|t| t.split(','))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
    });
    Some(Ok(AnalyticsJob {
        name: job_name(call_id),
        media_uri: format!("s3://{bucket}/{key}"),
        output_location: post_call.output_location.clone(),
        data_access_role_arn: post_call.data_access_role_arn.clone(),
        language_options,
        vocabulary_name,
        language_model_name,
        vocabulary_filter,
        redaction,
    }))
}

/// How starting a job went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStarted {
    /// The job was created.
    Started,
    /// A job of this name exists (ConflictException): an earlier attempt of this invocation
    /// started it.
    AlreadyStarted,
}

/// A job Transcribe did not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("post-call analytics job {job} on {media_uri}: StartCallAnalyticsJob failed: {message}")]
pub struct JobError {
    /// The job's name.
    pub job: String,
    /// The recording it was for.
    pub media_uri: String,
    /// Transcribe's error.
    pub message: String,
}

/// Starts Call Analytics jobs (Amazon Transcribe, batch).
#[derive(Debug, Clone)]
pub struct PostCallJobs {
    /// Transcribe.
    pub client: aws_sdk_transcribe::Client,
}

impl PostCallJobs {
    /// Starts `job`: channel 0 is the customer, 1 the agent, as on the live stream. Needs
    /// transcribe:StartCallAnalyticsJob, and iam:PassRole on the data-access role.
    ///
    /// One language goes as LanguageOptions of one, which AWS's own sample sends; the
    /// reference of CallAnalyticsJobSettings says "two or more language codes". Should
    /// Transcribe refuse the one (BadRequestException), the job is asked again without
    /// options (Transcribe then identifies the language itself), so the call is analysed
    /// under either reading.
    pub async fn start(&self, job: &AnalyticsJob) -> Result<JobStarted, JobError> {
        match self.send(job).await {
            Err((error, true)) if job.language_options.len() == 1 => {
                tracing::warn!(job = %job.name, %error, "Transcribe refused the job with one language option; asking again with the language left to identify");
                let identify = AnalyticsJob {
                    language_options: Vec::new(),
                    vocabulary_name: None,
                    language_model_name: None,
                    vocabulary_filter: None,
                    ..job.clone()
                };
                self.send(&identify).await.map_err(|(error, _)| error)
            }
            other => other.map_err(|(error, _)| error),
        }
    }

    /// Sends the request; an error comes with whether it was a BadRequestException.
    async fn send(&self, job: &AnalyticsJob) -> Result<JobStarted, (JobError, bool)> {
        let channel = |id, role| {
            ChannelDefinition::builder()
                .channel_id(id)
                .participant_role(role)
                .build()
        };
        let redaction = job.redaction.as_ref().map(|r| {
            ContentRedaction::builder()
                .redaction_type(RedactionType::Pii)
                .redaction_output(RedactionOutput::from(r.output.as_str()))
                .set_pii_entity_types(Some(
                    r.entity_types
                        .iter()
                        .map(|t| PiiEntityType::from(t.as_str()))
                        .collect(),
                ))
                .build()
                .expect("redaction type and output are set")
        });
        let settings = CallAnalyticsJobSettings::builder()
            .set_language_options((!job.language_options.is_empty()).then(|| {
                job.language_options
                    .iter()
                    .map(|l| LanguageCode::from(l.as_str()))
                    .collect()
            }))
            .set_vocabulary_name(job.vocabulary_name.clone())
            .set_language_model_name(job.language_model_name.clone())
            // CallAnalyticsJobSettings API reference: "if you include VocabularyFilterName
            // in your request, you must also include VocabularyFilterMethod".
            .set_vocabulary_filter_name(job.vocabulary_filter.as_ref().map(|f| f.name.clone()))
            .set_vocabulary_filter_method(
                job.vocabulary_filter
                    .as_ref()
                    .map(|f| VocabularyFilterMethod::from(f.method.as_str())),
            )
            .set_content_redaction(redaction)
            .build();
        let sent = self
            .client
            .start_call_analytics_job()
            .call_analytics_job_name(&job.name)
            .media(Media::builder().media_file_uri(&job.media_uri).build())
            .output_location(&job.output_location)
            .data_access_role_arn(&job.data_access_role_arn)
            .channel_definitions(channel(0, ParticipantRole::Customer))
            .channel_definitions(channel(1, ParticipantRole::Agent))
            .settings(settings)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(JobStarted::Started),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conflict_exception()) =>
            {
                Ok(JobStarted::AlreadyStarted)
            }
            Err(error) => {
                let bad_request = error
                    .as_service_error()
                    .is_some_and(|e| e.is_bad_request_exception());
                Err((
                    JobError {
                        job: job.name.clone(),
                        media_uri: job.media_uri.clone(),
                        message: error_text(&error),
                    },
                    bad_request,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TranscriberConfig;

    fn settings(vars: &[(&str, &str)]) -> TranscribeSettings {
        let mut all = vec![
            ("KINESIS_STREAM_NAME", "s"),
            ("TRANSCRIBE_API_MODE", "analytics"),
            ("OUTPUT_BUCKET", "bucket"),
            (
                "TCA_DATA_ACCESS_ROLE_ARN",
                "arn:aws:iam::123456789012:role/tca",
            ),
        ];
        all.extend_from_slice(vars);
        TranscriberConfig::from_lookup(|name| {
            all.iter()
                .rev()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
        .transcribe
    }

    /// A WAV of `ms` of call audio.
    fn wav_bytes(ms: u64) -> u64 {
        44 + ms * BYTES_PER_SECOND / 1000
    }

    #[test]
    fn a_call_gets_one_job_on_its_recording_with_the_live_settings() {
        let job = plan_job(
            &settings(&[("PII_ENTITY_TYPES", "NAME, ADDRESS")]),
            "c0ffee-1",
            "bucket",
            "lca-audio-wavs/c0ffee-1.wav",
            wav_bytes(60_000),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            job,
            AnalyticsJob {
                name: "c0ffee-1".into(),
                media_uri: "s3://bucket/lca-audio-wavs/c0ffee-1.wav".into(),
                output_location: "s3://bucket/lca-call-analytics-json/".into(),
                data_access_role_arn: "arn:aws:iam::123456789012:role/tca".into(),
                language_options: vec!["en-US".into()],
                vocabulary_name: None,
                language_model_name: None,
                vocabulary_filter: None,
                redaction: Some(JobRedaction {
                    output: "redacted".into(),
                    entity_types: vec!["NAME".into(), "ADDRESS".into()],
                }),
            }
        );
    }

    #[test]
    fn identifying_the_language_offers_the_options_without_vocabulary() {
        let job = plan_job(
            &settings(&[
                ("TRANSCRIBE_LANGUAGE_CODE", "identify-language"),
                ("TRANSCRIBE_LANGUAGE_OPTIONS", "en-US, es-US"),
                ("CUSTOM_VOCABULARY_NAME", "v"),
            ]),
            "c",
            "b",
            "k.wav",
            wav_bytes(1_000),
        )
        .unwrap()
        .unwrap();
        assert_eq!(job.language_options, ["en-US", "es-US"]);
        assert_eq!(job.vocabulary_name, None);
        assert_eq!(job.redaction, None, "redaction needs a known language");
    }

    #[test]
    fn no_job_without_analytics_or_outside_transcribes_limits() {
        let off = settings(&[("IS_TCA_POST_CALL_ANALYTICS_ENABLED", "false")]);
        assert_eq!(plan_job(&off, "c", "b", "k", wav_bytes(60_000)), None);
        let on = settings(&[]);
        let plan = |ms| plan_job(&on, "c", "b", "k", wav_bytes(ms)).unwrap();
        assert_eq!(plan(499), Err(NoJob::TooShort { ms: 499 }));
        assert!(plan(500).is_ok());
        assert!(plan(MAX_JOB_SECONDS * 1000).is_ok(), "4 h exactly is taken");
        let over = plan(MAX_JOB_SECONDS * 1000 + 1_000);
        assert_eq!(over, Err(NoJob::TooLong { seconds: 14_401 }));
        assert!(over.unwrap_err().is_missed());
        assert!(!NoJob::TooShort { ms: 0 }.is_missed());
    }

    #[test]
    fn job_names_follow_transcribes_pattern_and_stay_distinct() {
        assert_eq!(
            job_name("5e3f9c1a-0b2d-4c6e-8f10-123456789abc"),
            "5e3f9c1a-0b2d-4c6e-8f10-123456789abc"
        );
        let odd = job_name("call 1/ä");
        assert!(odd.starts_with("call-1--"), "{odd}");
        assert_ne!(odd, job_name("call-1/ä"));
        assert_eq!(odd, job_name("call 1/ä"), "stable");
        let long = job_name(&"x".repeat(300));
        assert_eq!(long.len(), MAX_JOB_NAME);
        for name in [odd, long, job_name("")] {
            assert!(
                !name.is_empty()
                    && name.len() <= MAX_JOB_NAME
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
                "{name}"
            );
        }
    }
}

//! The local StartCallAnalyticsJob as the unmodified AWS SDK for Rust client sees it: a job
//! taken, a name taken twice, a request the API reference rules out, an injected refusal.

use aws_sdk_transcribe::types::{ChannelDefinition, Media, ParticipantRole};
use local_aws::call_analytics::{CallAnalyticsJobs, JobFault};

fn request(
    client: &aws_sdk_transcribe::Client,
    name: &str,
) -> aws_sdk_transcribe::operation::start_call_analytics_job::builders::StartCallAnalyticsJobFluentBuilder
{
    let channel = |id, role| {
        ChannelDefinition::builder()
            .channel_id(id)
            .participant_role(role)
            .build()
    };
    client
        .start_call_analytics_job()
        .call_analytics_job_name(name)
        .media(
            Media::builder()
                .media_file_uri("s3://bucket/lca-audio-recordings/c.wav")
                .build(),
        )
        .output_location("s3://bucket/lca-call-analytics-json/")
        .data_access_role_arn("arn:aws:iam::123456789012:role/tca")
        .channel_definitions(channel(0, ParticipantRole::Customer))
        .channel_definitions(channel(1, ParticipantRole::Agent))
}

#[tokio::test]
async fn jobs_are_taken_once_by_name_and_bad_requests_refused_as_the_api_reference_says() {
    let jobs = CallAnalyticsJobs::new();
    let server = jobs.serve(0).await.unwrap();
    let client = aws_sdk_transcribe::Client::new(&local_aws::sdk_config(&server.url()));

    let started = request(&client, "c-1").send().await.unwrap();
    let job = started.call_analytics_job().unwrap();
    assert_eq!(job.call_analytics_job_name(), Some("c-1"));
    assert_eq!(
        job.call_analytics_job_status().map(|s| s.as_str()),
        Some("IN_PROGRESS")
    );
    assert_eq!(jobs.jobs().len(), 1);
    assert_eq!(
        jobs.jobs()[0]["Media"]["MediaFileUri"],
        "s3://bucket/lca-audio-recordings/c.wav"
    );

    let again = request(&client, "c-1").send().await.unwrap_err();
    assert!(again.as_service_error().unwrap().is_conflict_exception());

    for bad in ["has space", "c/1", &"x".repeat(201)] {
        let error = request(&client, bad).send().await.unwrap_err();
        assert!(
            error
                .as_service_error()
                .is_some_and(|e| e.is_bad_request_exception()),
            "{bad:?}: {error:?}"
        );
    }
    let swapped = client
        .start_call_analytics_job()
        .call_analytics_job_name("c-2")
        .media(Media::builder().media_file_uri("s3://b/k.wav").build())
        .data_access_role_arn("arn:aws:iam::123456789012:role/tca")
        .channel_definitions(
            ChannelDefinition::builder()
                .channel_id(0)
                .participant_role(ParticipantRole::Agent)
                .build(),
        )
        .channel_definitions(
            ChannelDefinition::builder()
                .channel_id(0)
                .participant_role(ParticipantRole::Customer)
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert!(
        swapped
            .as_service_error()
            .unwrap()
            .is_bad_request_exception()
    );

    // LimitExceededException is one of the errors the SDK retries (as throttling): one
    // refusal is taken by its retry; refusals to all three attempts reach the caller.
    let limit = || JobFault::Refuse {
        status: 400,
        error_type: "LimitExceededException".to_string(),
    };
    jobs.inject(limit());
    request(&client, "c-3").send().await.unwrap();
    for _ in 0..3 {
        jobs.inject(limit());
    }
    let refused = request(&client, "c-4").send().await.unwrap_err();
    assert!(
        refused
            .as_service_error()
            .unwrap()
            .is_limit_exceeded_exception()
    );
    assert_eq!(jobs.jobs().len(), 2);
    // The name taken, three bad names, the channels, four LimitExceeded.
    assert_eq!(jobs.refused(), 1 + 3 + 1 + 4);
}

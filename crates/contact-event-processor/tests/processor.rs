//! The contact-event processor against moto (DynamoDB, Kinesis) and the local Connect: the
//! lease the transcriber writes is what tells it the call is being transcribed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use call_lease::{CallLease, Held};
use call_lifecycle::CallData;
use call_lifecycle::Delivered;
use contact_event_processor::{ContactEventProcessor, ProcessorConfig};
use local_aws::connect::{Connect, User};
use local_aws::lambda::{FunctionSpec, Lambda, LambdaOptions, function_command};
use local_aws::moto::MotoServer;
use serde_json::{Value, json};

const INSTANCE_ID: &str = "4a1b2c3d-0000-4000-8000-000000000001";
const CONTACT: &str = "d111f871-5fe7-40b1-b5f7-6b67060de0c2";

struct World {
    moto: MotoServer,
    connect_server: local_aws::http::Server,
    agent_arn: String,
    lease: CallLease,
    kinesis: aws_sdk_kinesis::Client,
}

impl World {
    async fn new() -> Self {
        let moto = MotoServer::start().expect("moto server");
        let sdk = local_aws::sdk_config(moto.url());
        let kinesis = local_aws::moto::create_kinesis_stream(moto.url(), "lca")
            .await
            .unwrap();
        let lease = CallLease::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            "calls".to_string(),
            Duration::from_secs(30),
        );
        lease.create_table().await.unwrap();
        let connect = Connect::new("us-east-1", "123456789012");
        let agent_arn = connect.add_user(
            INSTANCE_ID,
            User {
                id: "0c245dc0-0cf5-4e37-800e-2a7481cc8a60".to_string(),
                username: "jdoe".to_string(),
                first_name: "Jane".to_string(),
                last_name: "Doe".to_string(),
            },
        );
        let connect_server = connect.serve(0).await.unwrap();
        Self {
            moto,
            connect_server,
            agent_arn,
            lease,
            kinesis,
        }
    }

    fn instance_arn(&self) -> String {
        format!("arn:aws:connect:us-east-1:123456789012:instance/{INSTANCE_ID}")
    }

    fn processor(&self, wait_secs: &str) -> ContactEventProcessor {
        self.processor_via(wait_secs, self.moto.url())
    }

    /// The processor with DynamoDB and Kinesis at `url` (moto, or a proxy in front of it).
    fn processor_via(&self, wait_secs: &str, url: &str) -> ContactEventProcessor {
        let env = BTreeMap::from([
            ("KINESIS_STREAM_NAME", "lca".to_string()),
            ("TRANSCRIBER_CALL_EVENT_TABLE_NAME", "calls".to_string()),
            ("WAIT_FOR_CALL_SECS", wait_secs.to_string()),
            ("CONNECT_INSTANCE_ARN", self.instance_arn()),
        ]);
        let config = ProcessorConfig::from_lookup(|n| env.get(n).cloned()).unwrap();
        let mut processor = ContactEventProcessor::new(config, &local_aws::sdk_config(url));
        processor.connect =
            aws_sdk_connect::Client::new(&local_aws::sdk_config(&self.connect_server.url()));
        processor
    }

    fn event(&self, event_type: &str) -> Value {
        json!({
            "version": "0",
            "id": "5f0a1b2c-0000-4000-8000-000000000000",
            "detail-type": "Amazon Connect Contact Event",
            "source": "aws.connect",
            "account": "123456789012",
            "region": "us-east-1",
            "resources": [self.instance_arn()],
            "detail": {
                "eventType": event_type,
                "contactId": CONTACT,
                "channel": "VOICE",
                "instanceArn": self.instance_arn(),
                "initiationMethod": "INBOUND",
                "agentInfo": {"agentArn": self.agent_arn}
            }
        })
    }

    /// The transcriber's side: the lease of a call (CallId changed by a hook) whose START
    /// Kinesis has (or has not yet) acknowledged.
    async fn call_started(&self, started: bool) -> Held {
        let held = Held {
            contact_id: CONTACT.to_string(),
            owner: "req-1".to_string(),
            lambda_count: 0,
            attempt: 1,
        };
        let call = CallData {
            call_id: "custom-call-1".to_string(),
            ..CallData::new(CONTACT, "arn:aws:kinesisvideo:us-east-1:1:stream/s/1", "1")
        };
        assert!(self.lease.create(&held, &call).await.unwrap());
        if started {
            self.start(&held).await;
        }
        held
    }

    async fn start(&self, held: &Held) {
        let delivered = Delivered {
            started: true,
            ..Delivered::default()
        };
        assert!(
            self.lease
                .renew(held, Some(&delivered), None)
                .await
                .unwrap()
        );
    }

    async fn records(&self) -> Vec<Value> {
        local_aws::moto::kinesis_records(&self.kinesis, "lca")
            .await
            .unwrap()
            .into_iter()
            .map(|(key, data)| {
                assert_eq!(key, "custom-call-1", "partition key = CallId");
                serde_json::from_slice(&data).unwrap()
            })
            .collect()
    }
}

/// The processor answered UPDATED and the agent is on the stream, once.
async fn assert_agent_published(world: &World, answer: &Value) {
    assert_eq!(answer["status"], "UPDATED", "{answer}");
    assert_eq!(
        world.records().await,
        [
            json!({"EventType": "UPDATE_AGENT", "CallId": "custom-call-1", "AgentId": "Jane Doe (jdoe)"})
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_connected_to_a_transcribed_call_is_published() {
    let world = World::new().await;
    world.call_started(true).await;
    let answer = world
        .processor("2")
        .handle(world.event("CONNECTED_TO_AGENT"))
        .await
        .unwrap();
    assert_agent_published(&world, &answer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_left_unanswered_are_given_up_at_their_attempt_limit_and_retried() {
    // DynamoDB and Kinesis each leave one of the processor's requests unanswered: each is
    // given up at the attempt limit all functions share (aws_edge::REQUEST_ATTEMPT_TIMEOUT)
    // and retried, and the agent is published once.
    let world = World::new().await;
    world.call_started(true).await;
    let proxy = local_aws::kinesis_faults::KinesisFaults::new(world.moto.url());
    let proxy_server = proxy.serve(0).await.unwrap();
    proxy.hang_next("GetItem");
    proxy.hang_next("PutRecord");
    let answer = world
        .processor_via("2", &proxy_server.url())
        .handle(world.event("CONNECTED_TO_AGENT"))
        .await
        .unwrap();
    assert_agent_published(&world, &answer).await;
    let hung = proxy.hung();
    assert_eq!(hung.len(), 2, "{hung:?}");
    let late_or_early = proxy.not_given_up_at(aws_edge::REQUEST_ATTEMPT_TIMEOUT);
    assert!(late_or_early.is_empty(), "{late_or_early:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_waits_for_the_calls_start_to_be_on_the_stream() {
    let world = World::new().await;
    let held = world.call_started(false).await;
    let processor = world.processor("5");
    let event = world.event("CONNECTED_TO_AGENT");
    let handling = tokio::spawn(async move { processor.handle(event).await });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !handling.is_finished(),
        "waits while START is not acknowledged"
    );
    assert!(world.records().await.is_empty());
    world.start(&held).await;
    let answer = handling.await.unwrap().unwrap();
    assert_eq!(answer["status"], "UPDATED", "{answer}");
    assert_eq!(world.records().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_not_being_transcribed_and_other_events_are_left_alone() {
    let world = World::new().await;
    let processor = world.processor("1");
    let answer = processor
        .handle(world.event("CONNECTED_TO_AGENT"))
        .await
        .unwrap();
    assert_eq!(answer["status"], "UNKNOWN_CALL", "{answer}");
    for event_type in ["INITIATED", "DISCONNECTED", "CONNECTED_TO_SYSTEM"] {
        let answer = processor.handle(world.event(event_type)).await.unwrap();
        assert_eq!(answer["status"], "IGNORED", "{event_type}: {answer}");
    }
    let mut other = world.event("CONNECTED_TO_AGENT");
    other["detail"]["instanceArn"] = json!("arn:aws:connect:us-east-1:123456789012:instance/x");
    let answer = processor.handle(other).await.unwrap();
    assert_eq!(answer["reason"], "another Connect instance");
    let mut chat = world.event("CONNECTED_TO_AGENT");
    chat["detail"]["channel"] = json!("CHAT");
    assert_eq!(processor.handle(chat).await.unwrap()["status"], "IGNORED");
    let error = processor.handle(json!({"detail": {}})).await.unwrap_err();
    assert!(error.to_string().contains("contactId"), "{error}");
    assert!(world.records().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_agent_fails_naming_it() {
    let world = World::new().await;
    world.call_started(true).await;
    let mut event = world.event("CONNECTED_TO_AGENT");
    let stranger = format!("{}/agent/nobody", world.instance_arn());
    event["detail"]["agentInfo"]["agentArn"] = json!(stranger);
    let error = world.processor("1").handle(event).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&stranger) && text.contains("ResourceNotFoundException"),
        "{text}"
    );
    assert!(world.records().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_under_lambda_publishes_the_agent() {
    let world = World::new().await;
    world.call_started(true).await;
    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("processor-logs")
        .join(format!("{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&logs).unwrap();
    let lambda = Lambda::new(LambdaOptions {
        log_dir: Some(logs.clone()),
        ..LambdaOptions::default()
    });
    let server = lambda.serve(0).await.unwrap();
    // The local build, or the arm64 zip the stack ships (under qemu) when the test command
    // asks for it.
    let (command, args) = function_command(&PathBuf::from(env!(
        "CARGO_BIN_EXE_contact-event-processor"
    )))
    .unwrap();
    lambda
        .add_function(FunctionSpec {
            name: "ContactEventProcessor".to_string(),
            command,
            args,
            environment: BTreeMap::from([
                ("AWS_ENDPOINT_URL".to_string(), world.moto.url().to_string()),
                (
                    "AWS_ENDPOINT_URL_CONNECT".to_string(),
                    world.connect_server.url(),
                ),
                ("AWS_ACCESS_KEY_ID".to_string(), "AKIDLOCAL".to_string()),
                ("AWS_SECRET_ACCESS_KEY".to_string(), "local".to_string()),
                ("KINESIS_STREAM_NAME".to_string(), "lca".to_string()),
                (
                    "TRANSCRIBER_CALL_EVENT_TABLE_NAME".to_string(),
                    "calls".to_string(),
                ),
                ("CONNECT_INSTANCE_ARN".to_string(), world.instance_arn()),
                (
                    "METRICS_NAMESPACE".to_string(),
                    "LCA/ConnectKVS/stack-1".to_string(),
                ),
            ]),
            timeout: Duration::from_secs(20),
            memory_mb: 128,
        })
        .unwrap();
    let client = aws_sdk_lambda::Client::new(&local_aws::sdk_config(&server.url()));
    let output = client
        .invoke()
        .function_name("ContactEventProcessor")
        .payload(aws_sdk_lambda::primitives::Blob::new(
            world.event("CONNECTED_TO_AGENT").to_string(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(output.function_error, None);
    let answer: Value = serde_json::from_slice(output.payload.unwrap().as_ref()).unwrap();
    assert_eq!(answer["status"], "UPDATED", "{answer}");
    assert_eq!(world.records().await[0]["AgentId"], "Jane Doe (jdoe)");
    lambda.shutdown();
    // Its metrics line: the event counted by outcome, in the stack's namespace.
    let log = std::fs::read_to_string(logs.join("ContactEventProcessor.log")).unwrap();
    let totals = call_metrics::Totals::read(&log, "LCA/ConnectKVS/stack-1");
    assert_eq!((totals.lines, totals.invalid.len()), (1, 0), "{log}");
    assert_eq!(
        totals
            .by_dimension(call_metrics::Metric::ContactEvents)
            .into_iter()
            .collect::<Vec<_>>(),
        [("UPDATED".to_string(), 1.0)]
    );
}

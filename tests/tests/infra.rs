//! The deployment artefacts against the code: the CloudFormation template keeps LCA's
//! interface for its Connect KVS stack (so LCA's main stack can nest it unchanged), every
//! function's environment is exactly what its code reads, and the contact flow is a
//! well-formed flow that invokes StartLCA. (cfn-lint validates the template itself, in
//! scripts/test.sh.)

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value as Json;
use serde_yaml_ng::Value;

fn infra(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../infra")
        .join(file)
}

fn template() -> Value {
    let path = infra("template.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn keys(map: &Value) -> BTreeSet<String> {
    map.as_mapping()
        .expect("a mapping")
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn the_template_keeps_lcas_interface_for_the_connect_kvs_stack() {
    let template = template();
    let parameters = keys(&template["Parameters"]);
    let lca_parameters = set(&[
        "ConnectInstanceArn",
        "AudioFilePrefix",
        "CallAnalyticsPrefix",
        "KinesisDataStreamName",
        "KinesisDataStreamArn",
        "EventSourcingTableName",
        "EventSourcingTableArn",
        "S3BucketName",
        "TranscribeApiMode",
        "IsPartialTranscriptEnabled",
        "IsContentRedactionEnabled",
        "TranscribeContentRedactionType",
        "TranscribeLanguageCode",
        "TranscribeLanguageOptions",
        "TranscribePreferredLanguage",
        "TranscribePiiEntityTypes",
        "CustomVocabularyName",
        "CustomLanguageModelName",
    ]);
    let missing: Vec<_> = lca_parameters.difference(&parameters).collect();
    assert!(
        missing.is_empty(),
        "parameters LCA passes are missing: {missing:?}"
    );
    // Parameters of our own must have defaults: LCA's main stack does not pass them.
    for extra in parameters.difference(&lca_parameters) {
        assert!(
            !template["Parameters"][extra.as_str()]["Default"].is_null(),
            "{extra} needs a default (LCA does not pass it)"
        );
    }
    let outputs = keys(&template["Outputs"]);
    for output in [
        "StartLCAFunctionName",
        "CallTranscriberEventTableName",
        "CallTranscriberEventTableArn",
        "IsContentRedactionEnabled",
    ] {
        assert!(outputs.contains(output), "output {output} is missing");
    }
}

/// The environment each function's code reads (plus RUST_LOG, read by the log set-up in
/// every `main`), by the zip its `Code` names.
fn variables_of(code: &str) -> BTreeSet<String> {
    let mut names = match code {
        "build/call-transcriber.zip" => call_transcriber::TranscriberConfig::variables()
            .map(str::to_string)
            .collect(),
        "build/start-lca.zip" => {
            let mut names = set(start_lca::StartConfig::VARIABLES);
            names.extend(call_settings::ContactPolicy::variables().map(str::to_string));
            names
        }
        "build/contact-event-processor.zip" => {
            set(contact_event_processor::ProcessorConfig::VARIABLES)
        }
        other => panic!("a function with unknown code {other}"),
    };
    names.insert("RUST_LOG".to_string());
    // Read by glibc's malloc in the transcriber (the template says why), not by our code.
    if code == "build/call-transcriber.zip" {
        names.insert("MALLOC_MMAP_THRESHOLD_".to_string());
    }
    names
}

#[test]
fn start_lca_checks_contacts_against_the_transcribers_own_settings() {
    // StartLCA decides a contact's settings (its attributes over the stack's values) and the
    // transcriber applies them, or decides them itself when started with the contact-flow
    // event: both must read the same values, or a contact StartLCA accepts could be one the
    // transcriber refuses.
    let template = template();
    let variables = |function: &str| {
        template["Resources"][function]["Properties"]["Environment"]["Variables"].clone()
    };
    let (start, transcriber) = (
        variables("StartLCAFunction"),
        variables("CallTranscriberFunction"),
    );
    for name in call_settings::ContactPolicy::variables() {
        assert!(!start[name].is_null(), "StartLCA lacks {name}");
        assert_eq!(
            start[name], transcriber[name],
            "{name}: StartLCA vs the transcriber"
        );
    }
    // The flow's overrides are the stack's choice, ALL by default; the parameter's pattern
    // takes every name the code allows, and the code refuses the names it does not know.
    let parameter = &template["Parameters"]["AllowedContactAttributes"];
    assert_eq!(parameter["Default"], "ALL");
    let pattern = regex_lite::Regex::new(parameter["AllowedPattern"].as_str().unwrap()).unwrap();
    let all = call_settings::contact::OVERRIDABLE.join(",");
    for value in ["ALL", "NONE", "TRANSCRIBE_LANGUAGE_CODE", all.as_str()] {
        assert!(pattern.is_match(value), "{value}");
        let lookup = |name: &str| {
            (name == call_settings::contact::ALLOWED_VARIABLE).then(|| value.to_string())
        };
        assert!(
            call_settings::ContactPolicy::from_lookup(lookup).is_ok(),
            "{value}"
        );
    }
    for value in ["all,", "TRANSCRIBE_LANGUAGE_CODE, LCA_TRANSCRIBE", "x"] {
        assert!(!pattern.is_match(value), "{value}");
    }
    let method = &template["Parameters"]["CustomVocabularyFilterMethod"];
    let methods: Vec<&str> = method["AllowedValues"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut known = call_settings::transcribe::VOCABULARY_FILTER_METHODS.to_vec();
    known.sort_unstable();
    let mut methods_sorted = methods.clone();
    methods_sorted.sort_unstable();
    assert_eq!(methods_sorted, known);
}

#[test]
fn the_sample_flow_sets_contact_attributes_that_startlca_accepts_under_any_stack() {
    let path = infra("lca-contact-flow.json");
    let flow: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let actions = flow["Actions"].as_array().unwrap();
    let set = actions
        .iter()
        .find(|a| a["Type"] == "UpdateContactAttributes")
        .expect("a Set contact attributes block");
    // Set on the contact itself, before StartLCA is invoked, whether or not it succeeds.
    assert_eq!(set["Parameters"]["TargetContact"], "Current");
    assert_eq!(set["Transitions"]["NextAction"], "StartLCA");
    assert_eq!(set["Transitions"]["Errors"][0]["NextAction"], "StartLCA");
    let attributes: std::collections::HashMap<String, String> =
        serde_json::from_value(set["Parameters"]["Attributes"].clone()).unwrap();
    assert!(!attributes.is_empty());
    for name in attributes.keys() {
        assert!(
            call_settings::contact::OVERRIDABLE.contains(&name.as_str())
                || name == call_settings::contact::SKIP_ATTRIBUTE,
            "{name} is not a per-contact setting"
        );
    }
    // The example changes nothing a stack chose, and no stack refuses it.
    for allowed in ["ALL", "NONE"] {
        let contacts = call_settings::ContactPolicy::from_lookup(|name| {
            (name == call_settings::contact::ALLOWED_VARIABLE).then(|| allowed.to_string())
        })
        .unwrap();
        match contacts.for_contact(&attributes) {
            Ok(call_settings::ContactChoice::Transcribe(chosen)) => {
                assert_eq!(chosen.settings, contacts.stack, "{allowed}")
            }
            other => panic!("{allowed}: {other:?}"),
        }
    }
}

#[test]
fn every_function_is_set_exactly_the_variables_its_code_reads() {
    let template = template();
    let mut codes = BTreeSet::new();
    for (name, resource) in template["Resources"].as_mapping().unwrap() {
        if resource["Type"] != "AWS::Lambda::Function" {
            continue;
        }
        let name = name.as_str().unwrap();
        let properties = &resource["Properties"];
        let code = properties["Code"]
            .as_str()
            .expect("Code is a local zip path");
        codes.insert(code.to_string());
        let set_in_template = keys(&properties["Environment"]["Variables"]);
        let read_by_code = variables_of(code);
        assert_eq!(
            set_in_template, read_by_code,
            "{name}: template (left) vs code (right)"
        );
        assert_eq!(properties["Runtime"], "provided.al2023", "{name}");
        assert_eq!(properties["Handler"], "bootstrap", "{name}");
        assert_eq!(
            properties["Architectures"][0].as_str(),
            Some("arm64"),
            "{name}"
        );
    }
    // What infra/package.sh builds is what the template ships, and the other way round.
    let script = std::fs::read_to_string(infra("package.sh")).unwrap();
    let line = script
        .lines()
        .find(|l| l.starts_with("functions=("))
        .expect("package.sh lists its functions");
    let built: BTreeSet<String> = line
        .trim_start_matches("functions=(")
        .trim_end_matches(')')
        .split_whitespace()
        .map(|f| format!("build/{f}.zip"))
        .collect();
    assert_eq!(codes, built);
}

#[test]
fn the_contact_flow_streams_media_and_invokes_start_lca() {
    let path = infra("lca-contact-flow.json");
    let flow: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(flow["Version"], "2019-10-30");
    let actions = flow["Actions"].as_array().unwrap();
    let ids: BTreeSet<&str> = actions
        .iter()
        .map(|a| a["Identifier"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), actions.len(), "identifiers are unique");
    assert!(ids.contains(flow["StartAction"].as_str().unwrap()));
    for action in actions {
        let transitions = &action["Transitions"];
        let mut targets: Vec<&str> = transitions["NextAction"].as_str().into_iter().collect();
        for error in transitions["Errors"].as_array().into_iter().flatten() {
            targets.push(error["NextAction"].as_str().unwrap());
        }
        for target in targets {
            assert!(
                ids.contains(target),
                "{} goes to unknown {target}",
                action["Identifier"]
            );
        }
    }
    let of_type = |t: &'static str| actions.iter().filter(move |a| a["Type"] == t);
    let invoke: Vec<&Json> = of_type("InvokeLambdaFunction").collect();
    assert_eq!(invoke.len(), 1);
    let start_lca = invoke[0];
    assert_eq!(
        start_lca["Parameters"]["LambdaFunctionARN"],
        "arn:aws:lambda:REGION:ACCOUNT:function:START_LCA_FUNCTION_NAME",
        "the one value to fill in (infra/package.sh --deploy fills it)"
    );
    assert_eq!(
        start_lca["Parameters"]["ResponseValidation"]["ResponseType"],
        "STRING_MAP"
    );
    // Media streaming starts (both directions) before StartLCA is invoked, the contact's
    // attributes set between the two.
    let enable = of_type("UpdateContactMediaStreamingBehavior")
        .find(|a| a["Parameters"]["MediaStreamingState"] == "Enabled")
        .expect("media streaming is started");
    let attributes = of_type("UpdateContactAttributes")
        .next()
        .expect("contact attributes are set");
    assert_eq!(
        enable["Transitions"]["NextAction"],
        attributes["Identifier"]
    );
    assert_eq!(
        attributes["Transitions"]["NextAction"],
        start_lca["Identifier"]
    );
    assert_eq!(
        enable["Parameters"]["Participants"][0]["MediaDirections"],
        serde_json::json!(["To", "From"])
    );
    // A failed StartLCA does not drop the caller: the call still reaches the queue.
    let on_error = start_lca["Transitions"]["Errors"][0]["NextAction"]
        .as_str()
        .unwrap();
    let after_error = actions
        .iter()
        .find(|a| a["Identifier"] == on_error)
        .unwrap();
    assert_eq!(
        after_error["Parameters"]["MediaStreamingState"], "Disabled",
        "streaming stops when transcription cannot start"
    );
    let next = after_error["Transitions"]["NextAction"].as_str().unwrap();
    let queue = actions.iter().find(|a| a["Identifier"] == next).unwrap();
    assert_eq!(queue["Type"], "UpdateContactTargetQueue");
    assert!(of_type("DisconnectParticipant").count() == 1);
}

/// A short-form intrinsic (`!Ref X`, `!GetAtt X.Arn`, `!If [...]`) as (function, argument).
fn intrinsic(value: &Value) -> Option<(String, &Value)> {
    match value {
        Value::Tagged(tagged) => Some((tagged.tag.to_string(), &tagged.value)),
        _ => None,
    }
}

/// The argument of `!<function>` in `value`, if `value` is that intrinsic.
fn argument<'a>(value: &'a Value, function: &str) -> Option<&'a Value> {
    intrinsic(value)
        .filter(|(tag, _)| tag.trim_start_matches('!') == function)
        .map(|(_, argument)| argument)
}

/// The transcriber policy's statements: plain ones, and the `!If` ones by condition.
fn transcriber_statements(template: &Value) -> (Vec<&Value>, Vec<(String, &Value)>) {
    let statements = template["Resources"]["CallTranscriberPolicy"]["Properties"]["PolicyDocument"]
        ["Statement"]
        .as_sequence()
        .unwrap();
    let mut plain = Vec::new();
    let mut conditional = Vec::new();
    for statement in statements {
        match argument(statement, "If") {
            Some(branches) => {
                let condition = branches[0].as_str().unwrap().to_string();
                assert!(
                    argument(&branches[2], "Ref").is_some_and(|r| r == "AWS::NoValue"),
                    "{condition}: a statement granted only when the condition holds"
                );
                conditional.push((condition, &branches[1]));
            }
            None => plain.push(statement),
        }
    }
    (plain, conditional)
}

/// The actions of a statement (one or a list).
fn actions(statement: &Value) -> Vec<&str> {
    match &statement["Action"] {
        Value::String(one) => vec![one.as_str()],
        Value::Sequence(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The statement `sid` among `statements`.
fn statement<'a>(statements: &[&'a Value], sid: &str) -> &'a Value {
    statements
        .iter()
        .find(|s| s["Sid"] == sid)
        .unwrap_or_else(|| panic!("statement {sid}"))
}

#[test]
fn the_recording_pieces_may_be_deleted_with_every_version_and_nothing_more() {
    // What Recorder::assemble calls to leave no raw call audio behind in LCA's versioned
    // bucket: the versions listed under the pieces' prefix, each deleted by version id, and
    // uploads left open aborted.
    let template = template();
    let (plain, _) = transcriber_statements(&template);
    let sid = |name: &str| statement(&plain, name);
    let pieces = sid("RecordingPieces");
    let resource = argument(&pieces["Resource"], "Sub")
        .and_then(Value::as_str)
        .unwrap();
    assert!(resource.ends_with("/lca-audio-raw/*"), "{resource}");
    for action in ["s3:DeleteObjectVersion", "s3:AbortMultipartUpload"] {
        assert!(actions(pieces).contains(&action), "{action}");
    }
    let listing = sid("ListRecordingPieces");
    assert!(actions(listing).contains(&"s3:ListBucketVersions"));
    assert_eq!(
        listing["Condition"]["StringLike"]["s3:prefix"], "lca-audio-raw/*",
        "versions are listed only under the pieces' prefix"
    );
    // Versions of anything else (the recordings, LCA's other objects) are never deleted.
    for statement in &plain {
        if actions(statement).contains(&"s3:DeleteObjectVersion") {
            assert_eq!(statement["Sid"], "RecordingPieces");
        }
    }
}

#[test]
fn the_post_call_job_may_be_started_with_the_data_access_role_and_nothing_more() {
    // What PostCallJobs::start calls, and what the job does with the role it is passed.
    let template = template();
    let (plain, _) = transcriber_statements(&template);
    let sid = |name: &str| statement(&plain, name);
    assert!(actions(sid("Transcribe")).contains(&"transcribe:StartCallAnalyticsJob"));
    let pass = sid("PassTcaRoleToTranscribe");
    assert_eq!(actions(pass), ["iam:PassRole"]);
    assert_eq!(
        argument(&pass["Resource"], "GetAtt").and_then(Value::as_str),
        Some("TcaDataAccessRole.Arn")
    );
    assert_eq!(
        pass["Condition"]["StringEquals"]["iam:PassedToService"],
        "transcribe.amazonaws.com"
    );
    // Whether the WAV is there already: a listing under the recordings' prefix only.
    let listing = sid("ListRecordings");
    assert_eq!(actions(listing), ["s3:ListBucket"]);
    assert_eq!(
        argument(&listing["Condition"]["StringLike"]["s3:prefix"], "Sub").and_then(Value::as_str),
        Some("${AudioFilePrefix}*")
    );
    // The role: assumed by Transcribe's batch service in this account; reads the recordings,
    // writes the analysis.
    let role = &template["Resources"]["TcaDataAccessRole"]["Properties"];
    let trust = &role["AssumeRolePolicyDocument"]["Statement"][0];
    assert_eq!(trust["Principal"]["Service"], "transcribe.amazonaws.com");
    assert_eq!(
        argument(
            &trust["Condition"]["StringEquals"]["aws:SourceAccount"],
            "Ref"
        )
        .and_then(Value::as_str),
        Some("AWS::AccountId")
    );
    // The plain statements (the one under a condition is the recordings key's, checked in
    // a_recordings_key_is_granted_to_the_writer_and_the_analytics_role_only_when_given).
    let granted: Vec<(Vec<&str>, &str)> = role["Policies"][0]["PolicyDocument"]["Statement"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|s| argument(s, "If").is_none())
        .map(|s| {
            (
                actions(s),
                argument(&s["Resource"], "Sub")
                    .and_then(Value::as_str)
                    .unwrap(),
            )
        })
        .collect();
    let reads = |prefix: &str| {
        granted.iter().any(|(actions, resource)| {
            actions.contains(&"s3:GetObject") && resource.ends_with(&format!("/${{{prefix}}}*"))
        })
    };
    assert!(reads("AudioFilePrefix"), "{granted:?}");
    assert!(
        granted
            .iter()
            .any(|(actions, resource)| actions.contains(&"s3:PutObject")
                && resource.ends_with("/${CallAnalyticsPrefix}*"))
    );
    for (actions, resource) in &granted {
        if actions.contains(&"s3:PutObject") {
            assert!(
                resource.ends_with("/${CallAnalyticsPrefix}*"),
                "writes only its output"
            );
        }
    }
}

#[test]
fn failed_invocations_reach_a_queue_and_hand_overs_are_not_stopped_as_a_loop() {
    let template = template();
    let resources = &template["Resources"];
    let config = &resources["CallTranscriberEventInvokeConfig"];
    assert_eq!(config["Type"], "AWS::Lambda::EventInvokeConfig");
    let properties = &config["Properties"];
    assert_eq!(
        argument(&properties["FunctionName"], "Ref").and_then(Value::as_str),
        Some("CallTranscriberFunction")
    );
    assert_eq!(properties["Qualifier"], "$LATEST");
    // Lambda's retries and the code's count of attempts are the same number.
    let transcriber = &resources["CallTranscriberFunction"]["Properties"];
    let retries = transcriber["Environment"]["Variables"]["MAXIMUM_RETRY_ATTEMPTS"]
        .as_str()
        .unwrap();
    assert_eq!(
        properties["MaximumRetryAttempts"]
            .as_u64()
            .unwrap()
            .to_string(),
        retries
    );
    assert_eq!(
        properties["MaximumEventAgeInSeconds"].as_u64(),
        Some(21600),
        "an expired hand-over event is a call lost: the longest age Lambda allows"
    );
    let destination = &properties["DestinationConfig"]["OnFailure"]["Destination"];
    assert_eq!(
        argument(destination, "GetAtt").and_then(Value::as_str),
        Some("CallTranscriberFailureQueue.Arn")
    );
    let queue = &resources["CallTranscriberFailureQueue"];
    assert_eq!(queue["Type"], "AWS::SQS::Queue");
    assert_eq!(
        queue["Properties"]["SqsManagedSseEnabled"], true,
        "encrypted"
    );
    assert!(
        queue["Properties"]["FifoQueue"].is_null(),
        "destinations take no FIFO queue"
    );
    let (plain, _) = transcriber_statements(&template);
    assert!(
        plain.iter().any(|s| s["Action"] == "sqs:SendMessage"
            && argument(&s["Resource"], "GetAtt").and_then(Value::as_str)
                == Some("CallTranscriberFailureQueue.Arn")),
        "the role may send to its destination"
    );
    assert_eq!(transcriber["RecursiveLoop"], "Allow");
}

#[test]
fn the_stream_key_is_granted_only_when_it_is_given() {
    let template = template();
    let (plain, conditional) = transcriber_statements(&template);
    assert!(
        !plain.iter().any(|s| s["Action"] == "kms:Decrypt"),
        "no unconditional KMS grant"
    );
    let (condition, statement) = conditional
        .iter()
        .find(|(_, s)| s["Action"] == "kms:Decrypt")
        .expect("a kms:Decrypt statement");
    assert_eq!(
        argument(&statement["Resource"], "Ref").and_then(Value::as_str),
        Some("ConnectStreamKmsKeyArn")
    );
    // The condition: the parameter is not blank.
    let not = argument(&template["Conditions"][condition.as_str()], "Not").unwrap();
    let equals = argument(&not[0], "Equals").unwrap();
    assert_eq!(
        argument(&equals[0], "Ref").and_then(Value::as_str),
        Some("ConnectStreamKmsKeyArn")
    );
    assert_eq!(equals[1], "");
    assert_eq!(
        template["Parameters"]["ConnectStreamKmsKeyArn"]["Default"],
        ""
    );
}

/// A metric as a dashboard names it: namespace, name, dimensions.
type DashboardMetric = (String, String, Vec<(String, String)>);

/// A dashboard widget's metric rows with CloudWatch's shorthand resolved ("." repeats the
/// item above, "..." the items above up to the ones given).
fn dashboard_metrics(rows: &[Json]) -> Vec<DashboardMetric> {
    let mut resolved: Vec<Vec<String>> = Vec::new();
    for row in rows {
        let items: Vec<String> = row
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect();
        let previous = resolved.last().cloned().unwrap_or_default();
        let full = if items.first().map(String::as_str) == Some("...") {
            let given = &items[1..];
            let keep = previous.len().saturating_sub(given.len());
            previous[..keep].iter().chain(given).cloned().collect()
        } else {
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item.as_str() {
                    "." => previous[i].clone(),
                    _ => item.clone(),
                })
                .collect()
        };
        resolved.push(full);
    }
    resolved
        .into_iter()
        .map(|items| {
            let dimensions = items[2..]
                .chunks(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect();
            (items[0].clone(), items[1].clone(), dimensions)
        })
        .collect()
}

/// The namespace the template gives the functions' metrics (their METRICS_NAMESPACE), as
/// its `!Sub` writes it: one per stack.
const STACK_NAMESPACE: &str = "LCA/ConnectKVS/${AWS::StackName}";

#[test]
fn each_stack_has_its_own_metrics_namespace_and_a_maximum_call_length() {
    let template = template();
    let resources = &template["Resources"];
    for function in [
        "CallTranscriberFunction",
        "StartLCAFunction",
        "ContactEventProcessorFunction",
    ] {
        let variables = &resources[function]["Properties"]["Environment"]["Variables"];
        let namespace = argument(&variables["METRICS_NAMESPACE"], "Sub")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{function}: METRICS_NAMESPACE is a !Sub"));
        assert_eq!(namespace, STACK_NAMESPACE, "{function}");
        // Valid for any stack name (letters, digits and hyphens, 128 at most).
        let longest = namespace.replace("${AWS::StackName}", &"A-1".repeat(43)[..128]);
        assert_eq!(call_metrics::check_namespace(&longest), Ok(()));
    }
    let variables = &resources["CallTranscriberFunction"]["Properties"]["Environment"]["Variables"];
    assert_eq!(
        argument(&variables["MAX_CALL_DURATION"], "Ref").and_then(Value::as_str),
        Some("MaxCallDurationMs")
    );
    let default = template["Parameters"]["MaxCallDurationMs"]["Default"]
        .as_u64()
        .unwrap();
    assert_eq!(
        default,
        call_transcriber::config::DEFAULT_MAX_CALL_DURATION_MS,
        "the template's default is the code's"
    );
    assert!(default >= 6 * 3600 * 1000, "a six-hour call fits");
}

/// Checks a metric of our namespace against the code's list: the name is emitted, and a
/// dimension is the one it is emitted by.
fn assert_emitted(name: &str, dimensions: &[(String, String)], place: &str) {
    let metric = call_metrics::Metric::from_name(name)
        .unwrap_or_else(|| panic!("{place}: {name} is not a metric the code emits"));
    for (dimension, _) in dimensions {
        assert_eq!(
            metric.dimension().map(|d| d.key()),
            Some(dimension.as_str()),
            "{place}: {name} is not emitted by {dimension}"
        );
    }
}

#[test]
fn alarms_and_the_dashboard_name_only_metrics_the_code_emits() {
    let template = template();
    let mut alarmed = BTreeSet::new();
    for (name, resource) in template["Resources"].as_mapping().unwrap() {
        if resource["Type"] != "AWS::CloudWatch::Alarm" {
            continue;
        }
        let name = name.as_str().unwrap();
        let properties = &resource["Properties"];
        let metric = properties["MetricName"].as_str().unwrap();
        let namespace = properties["Namespace"]
            .as_str()
            .or_else(|| argument(&properties["Namespace"], "Sub").and_then(Value::as_str))
            .unwrap_or_else(|| panic!("{name}: Namespace is a string or a !Sub"));
        alarmed.insert(format!("{namespace}/{metric}"));
        if namespace == STACK_NAMESPACE {
            let dimensions: Vec<(String, String)> = properties["Dimensions"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|d| {
                    (
                        d["Name"].as_str().unwrap().to_string(),
                        d["Value"].as_str().unwrap_or("?").to_string(),
                    )
                })
                .collect();
            assert_emitted(metric, &dimensions, name);
        }
        // Every alarm notifies the optional topic.
        let actions = argument(&properties["AlarmActions"], "If").expect("AlarmActions");
        assert_eq!(actions[0], "HasAlarmTopic", "{name}");
        assert_eq!(properties["TreatMissingData"], "notBreaching", "{name}");
    }
    for wanted in [
        "LCA/ConnectKVS/${AWS::StackName}/CallsFailed",
        "LCA/ConnectKVS/${AWS::StackName}/CallsCut",
        "LCA/ConnectKVS/${AWS::StackName}/Invocations",
        "LCA/ConnectKVS/${AWS::StackName}/TranscriptLag",
        "LCA/ConnectKVS/${AWS::StackName}/TranscriptBehindLive",
        "LCA/ConnectKVS/${AWS::StackName}/StartLcaAnswers",
        "LCA/ConnectKVS/${AWS::StackName}/ContactAttributesRefused",
        "AWS/Lambda/Errors",
        "AWS/Lambda/Throttles",
        "AWS/SQS/ApproximateNumberOfMessagesVisible",
    ] {
        assert!(alarmed.contains(wanted), "no alarm on {wanted}");
    }
    // The lag alarms are M out of N over minutes: the metrics lines come once a minute from
    // each running invocation, not on CloudWatch's minute, so a minute may lack its datapoint.
    for name in ["TranscriptLagAlarm", "TranscriptBehindLiveAlarm"] {
        let properties = &template["Resources"][name]["Properties"];
        let m = properties["DatapointsToAlarm"].as_u64();
        let n = properties["EvaluationPeriods"].as_u64();
        assert_eq!(properties["Period"].as_u64(), Some(60), "{name}");
        assert!(
            matches!((m, n), (Some(m), Some(n)) if m < n),
            "{name}: DatapointsToAlarm {m:?} out of EvaluationPeriods {n:?} is not M out of N"
        );
    }
    let body = argument(
        &template["Resources"]["Dashboard"]["Properties"]["DashboardBody"],
        "Sub",
    )
    .and_then(Value::as_str)
    .expect("DashboardBody is a !Sub string");
    // ${...} substitutions stand for strings inside the JSON; the stack's name is kept, to
    // tell the stack's namespace.
    let mut plain = String::new();
    let mut rest = body;
    while let Some(start) = rest.find("${") {
        let end = start + rest[start..].find('}').unwrap();
        plain.push_str(&rest[..start]);
        match &rest[start..=end] {
            "${AWS::StackName}" => plain.push_str("${AWS::StackName}"),
            _ => plain.push_str("substituted"),
        }
        rest = &rest[end + 1..];
    }
    plain.push_str(rest);
    let dashboard: Json = serde_json::from_str(&plain).expect("the dashboard body is JSON");
    let mut shown = BTreeSet::new();
    for widget in dashboard["widgets"].as_array().unwrap() {
        let title = widget["properties"]["title"].as_str().unwrap();
        for (namespace, name, dimensions) in
            dashboard_metrics(widget["properties"]["metrics"].as_array().unwrap())
        {
            assert!(
                !namespace.starts_with("LCA/") || namespace == STACK_NAMESPACE,
                "{title}: {namespace} is not the stack's namespace"
            );
            if namespace == STACK_NAMESPACE {
                assert_emitted(&name, &dimensions, title);
                shown.insert(name);
            }
        }
    }
    // The dashboard shows every metric the transcriber and StartLCA emit.
    let all: BTreeSet<String> = call_metrics::Metric::ALL
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    assert_eq!(shown, all);
}

#[test]
fn the_functions_are_traced_when_tracing_is_on() {
    let template = template();
    for (name, resource) in template["Resources"].as_mapping().unwrap() {
        if resource["Type"] != "AWS::Lambda::Function" {
            continue;
        }
        let name = name.as_str().unwrap();
        let properties = &resource["Properties"];
        let mode = argument(&properties["TracingConfig"]["Mode"], "If")
            .unwrap_or_else(|| panic!("{name}: TracingConfig.Mode follows EnableXRayTracing"));
        assert_eq!(mode[0], "ShouldTrace");
        assert_eq!(
            (mode[1].as_str(), mode[2].as_str()),
            (Some("Active"), Some("PassThrough"))
        );
        // Its role may write traces.
        let role = argument(&properties["Role"], "GetAtt")
            .and_then(Value::as_str)
            .unwrap()
            .trim_end_matches(".Arn");
        let managed = argument(
            &template["Resources"][role]["Properties"]["ManagedPolicyArns"],
            "If",
        )
        .unwrap_or_else(|| panic!("{role}: the X-Ray policy follows EnableXRayTracing"));
        assert_eq!(managed[0], "ShouldTrace");
        let arn = argument(&managed[1][0], "Sub")
            .and_then(Value::as_str)
            .unwrap();
        assert!(
            arn.ends_with(":iam::aws:policy/AWSXRayDaemonWriteAccess"),
            "{role}: {arn}"
        );
    }
}

/// Whether parameter `name`'s AllowedPattern (as CloudFormation applies it: the whole value)
/// takes `value`.
fn allowed(template: &Value, name: &str, value: &str) -> bool {
    let pattern = template["Parameters"][name]["AllowedPattern"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} has an AllowedPattern"));
    regex_lite::Regex::new(pattern)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .is_match(value)
}

#[test]
fn arns_of_every_partition_and_multi_region_keys_are_accepted() {
    let template = template();
    // ARN partitions: aws, aws-cn, aws-us-gov (AWS General Reference, ARN format).
    for partition in ["aws", "aws-cn", "aws-us-gov"] {
        let instance =
            format!("arn:{partition}:connect:us-gov-west-1:123456789012:instance/0a1b2c3d-4e5f");
        assert!(
            allowed(&template, "ConnectInstanceArn", &instance),
            "{instance}"
        );
        for parameter in ["ConnectStreamKmsKeyArn", "RecordingsKmsKeyArn"] {
            let key = format!(
                "arn:{partition}:kms:cn-north-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
            );
            assert!(allowed(&template, parameter, &key), "{parameter} {key}");
            let multi_region = format!(
                "arn:{partition}:kms:us-east-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab"
            );
            assert!(
                allowed(&template, parameter, &multi_region),
                "{multi_region}"
            );
            assert!(allowed(&template, parameter, ""), "blank: none");
            assert!(!allowed(&template, parameter, "alias/recordings"));
        }
    }
}

#[test]
fn the_failure_destination_waits_for_its_grant() {
    // Lambda checks the role's permission for an on-failure destination when the event
    // invoke configuration is created; a grant in a separate policy resource must exist by
    // then (a first deploy otherwise fails, as aws-amplify/amplify-js issue 9869 reports).
    let template = template();
    let config = &template["Resources"]["CallTranscriberEventInvokeConfig"];
    let (plain, _) = transcriber_statements(&template);
    assert!(plain.iter().any(|s| s["Action"] == "sqs:SendMessage"));
    let depends: Vec<&str> = match &config["DependsOn"] {
        Value::String(one) => vec![one.as_str()],
        Value::Sequence(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    assert!(depends.contains(&"CallTranscriberPolicy"), "{depends:?}");
}

#[test]
fn a_recordings_key_is_granted_to_the_writer_and_the_analytics_role_only_when_given() {
    let template = template();
    let (plain, conditional) = transcriber_statements(&template);
    assert!(
        !plain
            .iter()
            .any(|s| actions(s).contains(&"kms:GenerateDataKey")),
        "no unconditional grant"
    );
    let (condition, statement) = conditional
        .iter()
        .find(|(_, s)| actions(s).contains(&"kms:GenerateDataKey"))
        .expect("the recordings key statement");
    let mut granted = actions(statement);
    granted.sort();
    assert_eq!(granted, ["kms:Decrypt", "kms:GenerateDataKey"]);
    assert_eq!(
        argument(&statement["Resource"], "Ref").and_then(Value::as_str),
        Some("RecordingsKmsKeyArn")
    );
    let not = argument(&template["Conditions"][condition.as_str()], "Not").unwrap();
    let equals = argument(&not[0], "Equals").unwrap();
    assert_eq!(
        argument(&equals[0], "Ref").and_then(Value::as_str),
        Some("RecordingsKmsKeyArn")
    );
    assert_eq!(template["Parameters"]["RecordingsKmsKeyArn"]["Default"], "");
    // The post-call analytics role reads the recording and writes the analysis with it.
    let statements = template["Resources"]["TcaDataAccessRole"]["Properties"]["Policies"][0]
        ["PolicyDocument"]["Statement"]
        .as_sequence()
        .unwrap();
    let tca = statements
        .iter()
        .find_map(|s| {
            let [condition, statement, _] = argument(s, "If")?.as_sequence()?.as_slice() else {
                return None;
            };
            Some((condition.as_str()?, statement))
        })
        .expect("a conditional statement in the analytics role");
    assert_eq!(tca.0, condition);
    let mut granted = actions(tca.1);
    granted.sort();
    assert_eq!(granted, ["kms:Decrypt", "kms:GenerateDataKey"]);
}

#[test]
fn the_sweep_runs_every_minute_and_reads_only_the_index_of_open_calls() {
    let template = template();
    let resources = &template["Resources"];
    let rule = &resources["SweepSchedule"];
    assert_eq!(rule["Type"], "AWS::Events::Rule");
    assert_eq!(rule["Properties"]["ScheduleExpression"], "rate(1 minute)");
    let target = &rule["Properties"]["Targets"][0]["Arn"];
    assert_eq!(
        argument(target, "GetAtt").and_then(Value::as_str),
        Some("CallTranscriberFunction.Arn")
    );
    let permission = &resources["EventBridgeInvokesCallTranscriber"]["Properties"];
    assert_eq!(permission["Principal"], "events.amazonaws.com");
    assert_eq!(
        argument(&permission["SourceArn"], "GetAtt").and_then(Value::as_str),
        Some("SweepSchedule.Arn")
    );
    // The index the code queries, with the keys the code writes.
    let table = &resources["CallTranscriberEventTable"]["Properties"];
    let index = table["GlobalSecondaryIndexes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|i| i["IndexName"] == call_transcriber::lease::OPEN_CALLS_INDEX)
        .expect("the open calls index");
    let keys: Vec<(&str, &str)> = index["KeySchema"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["AttributeName"].as_str().unwrap(),
                k["KeyType"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(keys, [("OpenCall", "HASH"), ("SweepAt", "RANGE")]);
    assert_eq!(index["Projection"]["ProjectionType"], "KEYS_ONLY");
    // Query on that index and nothing more.
    let (plain, _) = transcriber_statements(&template);
    let query = statement(&plain, "OpenCalls");
    assert_eq!(actions(query), ["dynamodb:Query"]);
    assert_eq!(
        argument(&query["Resource"], "Sub").and_then(Value::as_str),
        Some("${CallTranscriberEventTable.Arn}/index/OpenCalls")
    );
    assert!(
        !plain.iter().any(|s| actions(s).contains(&"dynamodb:Scan")),
        "the sweep never scans"
    );
}

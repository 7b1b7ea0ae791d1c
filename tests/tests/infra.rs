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
        "build/call-transcriber.zip" => set(call_transcriber::TranscriberConfig::VARIABLES),
        "build/start-lca.zip" => set(start_lca::StartConfig::VARIABLES),
        "build/contact-event-processor.zip" => {
            set(contact_event_processor::ProcessorConfig::VARIABLES)
        }
        other => panic!("a function with unknown code {other}"),
    };
    names.insert("RUST_LOG".to_string());
    names
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
    // Media streaming starts (both directions) before StartLCA is invoked.
    let enable = of_type("UpdateContactMediaStreamingBehavior")
        .find(|a| a["Parameters"]["MediaStreamingState"] == "Enabled")
        .expect("media streaming is started");
    assert_eq!(enable["Transitions"]["NextAction"], start_lca["Identifier"]);
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

//! `lca-kvs try-stack --stack NAME`: the check's values read from the deployed stack with
//! CloudFormation (feature `stack-lookup`, on by default; the demo's build leaves it out, as
//! aws-sdk-cloudformation is one of the slowest crates to build and nothing else uses it).

use anyhow::{Result, bail};

/// The stack's output naming StartLCA, and the parameters the check reads.
pub(crate) const OUTPUT_START_LCA: &str = "StartLCAFunctionName";
pub(crate) const PARAM_INSTANCE: &str = "ConnectInstanceArn";
pub(crate) const PARAM_PREFIX: &str = "ConnectKvsStreamNamePrefix";
pub(crate) const PARAM_KINESIS: &str = "KinesisDataStreamName";

/// What a stack says of the check's values, each when it has it: StartLCA (output), the
/// Connect instance, the stream prefix and the Kinesis stream (parameters).
pub(crate) type FromStack = [Option<String>; 4];

/// Without the `stack-lookup` feature (no CloudFormation client linked), `--stack` cannot be
/// read; the flags can.
#[cfg(not(feature = "stack-lookup"))]
pub(crate) async fn from_stack(_sdk: &aws_config::SdkConfig, name: &str) -> Result<FromStack> {
    bail!(
        "stack {name}: this lca-kvs was built without CloudFormation (cargo feature \
         `stack-lookup`, on by default): give --start-lca, --instance-arn, --stream-prefix and \
         --kinesis-stream instead of --stack, or build with the default features"
    )
}

/// The check's values as the stack `name` (this tool's nested stack, or LCA's main stack
/// holding it) has them.
#[cfg(feature = "stack-lookup")]
pub(crate) async fn from_stack(sdk: &aws_config::SdkConfig, name: &str) -> Result<FromStack> {
    let stack = connect_kvs_stack(&aws_sdk_cloudformation::Client::new(sdk), name).await?;
    let output = |key: &str| {
        stack
            .outputs()
            .iter()
            .find(|o| o.output_key() == Some(key))
            .and_then(|o| o.output_value())
            .map(str::to_string)
    };
    let parameter = |key: &str| {
        stack
            .parameters()
            .iter()
            .find(|p| p.parameter_key() == Some(key))
            .and_then(|p| p.resolved_value().or(p.parameter_value()))
            .map(str::to_string)
    };
    Ok([
        output(OUTPUT_START_LCA),
        parameter(PARAM_INSTANCE),
        parameter(PARAM_PREFIX),
        parameter(PARAM_KINESIS),
    ])
}

/// The stack named `name` when it has the StartLCAFunctionName output, else the first stack
/// nested in it that has (LCA's main stack holds this tool's stack as a nested stack).
#[cfg(feature = "stack-lookup")]
async fn connect_kvs_stack(
    cfn: &aws_sdk_cloudformation::Client,
    name: &str,
) -> Result<aws_sdk_cloudformation::types::Stack> {
    let describe = |id: String| async move {
        cfn.describe_stacks()
            .stack_name(&id)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "stack {id}: DescribeStacks failed: {} (check the name, the region in AWS_REGION and cloudformation:DescribeStacks)",
                    aws_edge::error_text(&e)
                )
            })?
            .stacks()
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("stack {id}: not found"))
    };
    let has_output = |stack: &aws_sdk_cloudformation::types::Stack| {
        stack
            .outputs()
            .iter()
            .any(|o| o.output_key() == Some(OUTPUT_START_LCA))
    };
    let stack = describe(name.to_string()).await?;
    if has_output(&stack) {
        return Ok(stack);
    }
    let mut next: Option<String> = None;
    loop {
        let page = cfn
            .list_stack_resources()
            .stack_name(name)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "stack {name}: ListStackResources failed: {}",
                    aws_edge::error_text(&e)
                )
            })?;
        for resource in page.stack_resource_summaries() {
            if resource.resource_type() == Some("AWS::CloudFormation::Stack")
                && let Some(id) = resource.physical_resource_id()
            {
                let nested = describe(id.to_string()).await?;
                if has_output(&nested) {
                    return Ok(nested);
                }
            }
        }
        match page.next_token() {
            Some(token) => next = Some(token.to_string()),
            None => bail!(
                "stack {name} has no {OUTPUT_START_LCA} output, nor a nested stack with one: give the Connect KVS stack (or LCA's main stack), or the values as flags"
            ),
        }
    }
}

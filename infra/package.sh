#!/usr/bin/env bash
# Builds the Lambda functions as arm64 zips for the stack (infra/build/*.zip) and, given a
# bucket, uploads them with the template for LCA's publish flow or deploys the stack alone.
#
#   bash infra/package.sh                                   # zips only (what CI runs)
#   bash infra/package.sh --bucket B --prefix P [--region R]        # + upload: template URL
#   bash infra/package.sh --bucket B --prefix P --deploy STACK -- ConnectInstanceArn=... \
#        KinesisDataStreamName=... KinesisDataStreamArn=... S3BucketName=...   # standalone
#
# Installs what it needs under target/: cargo-lambda (PyPI; ships zig for cross-linking), and
# the AWS CLI when uploading. Needs the aarch64-unknown-linux-gnu Rust target (added with
# rustup when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

bucket="" prefix="lca-rust-connect-kvs" region="${AWS_REGION:-}" stack="" overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bucket) bucket="$2"; shift 2 ;;
    --prefix) prefix="${2%/}"; shift 2 ;;
    --region) region="$2"; shift 2 ;;
    --deploy) stack="$2"; shift 2 ;;
    --) shift; overrides=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "infra/package.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$stack" ] && [ -z "$bucket" ]; then
  echo "infra/package.sh: --deploy needs --bucket (the functions' code is uploaded there)" >&2
  exit 2
fi

functions=(start-lca call-transcriber contact-event-processor)
venv=target/infra-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/pip" show cargo-lambda 2>/dev/null | grep -qx "Version: 1.9.2"; then
  "$venv/bin/pip" install -q --disable-pip-version-check "cargo-lambda==1.9.2"
fi
export PATH="$PWD/$venv/bin:$PATH"
if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  rustup target add aarch64-unknown-linux-gnu
fi

started=$(date +%s)
packages=()
for f in "${functions[@]}"; do packages+=(-p "$f"); done
cargo lambda build --profile lambda --arm64 --output-format zip --locked "${packages[@]}"
mkdir -p infra/build
echo "built in $(( $(date +%s) - started )) s:"
for f in "${functions[@]}"; do
  cp "target/lambda/$f/bootstrap.zip" "infra/build/$f.zip"
  python3 - "infra/build/$f.zip" <<'PY'
import sys, zipfile, os
path = sys.argv[1]
entries = zipfile.ZipFile(path).infolist()
names = [e.filename for e in entries]
if names != ["bootstrap"]:
    sys.exit(f"{path}: expected one file named bootstrap, found {names}")
print(f"  {path:<42} {os.path.getsize(path) / 1048576:6.2f} MB zipped, "
      f"{entries[0].file_size / 1048576:6.2f} MB unzipped")
PY
done

[ -n "$bucket" ] || exit 0

if ! "$venv/bin/pip" show awscli >/dev/null 2>&1; then
  "$venv/bin/pip" install -q --disable-pip-version-check awscli
fi
region_args=()
[ -n "$region" ] && region_args=(--region "$region")
aws cloudformation package "${region_args[@]}" --template-file infra/template.yaml \
  --s3-bucket "$bucket" --s3-prefix "$prefix" --output-template-file infra/build/packaged.yaml
aws s3 cp "${region_args[@]}" infra/build/packaged.yaml "s3://$bucket/$prefix/template.yaml"
host="$bucket.s3.amazonaws.com"
[ -n "$region" ] && host="$bucket.s3.$region.amazonaws.com"
echo "template: https://$host/$prefix/template.yaml"

[ -n "$stack" ] || exit 0
aws cloudformation deploy "${region_args[@]}" --template-file infra/build/packaged.yaml \
  --stack-name "$stack" --capabilities CAPABILITY_IAM --parameter-overrides "${overrides[@]}"
arn=$(aws cloudformation describe-stacks "${region_args[@]}" --stack-name "$stack" \
  --query "Stacks[0].Outputs[?OutputKey=='StartLCAFunctionArn'].OutputValue" --output text)
sed "s|arn:aws:lambda:REGION:ACCOUNT:function:START_LCA_FUNCTION_NAME|$arn|" \
  infra/lca-contact-flow.json > infra/build/lca-contact-flow.json
echo "StartLCA: $arn"
echo "contact flow to import: infra/build/lca-contact-flow.json"

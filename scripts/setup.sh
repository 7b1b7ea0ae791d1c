# Sourced by scripts/test.sh and scripts/demo.sh: installs what they need on Debian/Ubuntu
# (when missing) and exports MOTO_SERVER.
#  - espeak-ng (speaks the demo's sample call), pkg-config, libpocketsphinx-dev and
#    pocketsphinx-en-us (the demo's offline speech recognizer), from apt (with sudo when not root);
#  - moto server (Kinesis, S3, DynamoDB emulator) in a venv under target/. Pinned to 5.1.22:
#    moto 5.2.x answers CompleteMultipartUpload with a <CompleteMultipartUploadResponse> root,
#    which the AWS SDK for Rust rejects.

# Installs the apt packages named that are missing (with sudo when not root).
ensure_apt_packages() {
  local missing=() package sudo=""
  for package in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$package")
    fi
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  if ! command -v apt-get >/dev/null; then
    echo "setup: needs the packages ${missing[*]} (Debian/Ubuntu names); install them and run again" >&2
    exit 2
  fi
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  echo "setup: installing ${missing[*]} with apt-get" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
}

ensure_apt_packages espeak-ng pkg-config libpocketsphinx-dev pocketsphinx-en-us python3-venv

moto_version=5.1.22
venv=target/interop-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/pip" show moto 2>/dev/null | grep -qx "Version: $moto_version"; then
  "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$moto_version" >&2
fi
export MOTO_SERVER="$PWD/$venv/bin/moto_server"

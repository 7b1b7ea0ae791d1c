# Sourced by scripts/test.sh and scripts/demo.sh: installs what they need on Debian/Ubuntu
# (when missing) and exports MOTO_SERVER.
#  - pkg-config, libpocketsphinx-dev and pocketsphinx-en-us (the demo's offline speech
#    recognizer; the build links it), from apt (with sudo when not root): `install_build_needs`;
#  - espeak-ng (speaks the demo's sample call) and python3-venv from apt, and moto server
#    (Kinesis, S3, DynamoDB emulator) in a venv under target/: `install_run_needs`. Moto is
#    pinned to 5.1.22: moto 5.2.x answers CompleteMultipartUpload with a
#    <CompleteMultipartUploadResponse> root, which the AWS SDK for Rust rejects.
# Sourcing it runs both, unless `setup_steps=none` is set first (scripts/demo.sh runs the
# second while cargo builds).

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
  # apt's and dpkg's progress lines go to a log, shown only if apt fails (the demo's terminal
  # shows cargo's progress meanwhile). One `apt-get update` per run is enough.
  local log status=0
  log="$(mktemp)"
  if [ -z "${setup_apt_updated:-}" ]; then
    $sudo apt-get update -qq > "$log" 2>&1 || status=$?
    setup_apt_updated=1
  fi
  if [ "$status" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >> "$log" 2>&1 \
      || status=$?
  fi
  if [ "$status" != 0 ]; then
    cat "$log" >&2
    rm -f "$log"
    echo "setup: apt-get could not install ${missing[*]} (exit status $status, output above)" >&2
    exit 2
  fi
  rm -f "$log"
}

# What building lca-kvs with the `pocketsphinx` feature needs (local-aws's build script asks
# pkg-config for libpocketsphinx).
install_build_needs() {
  ensure_apt_packages pkg-config libpocketsphinx-dev pocketsphinx-en-us
}

moto_version=5.1.22
venv=target/interop-venv
export MOTO_SERVER="$PWD/$venv/bin/moto_server"

# What running the demo and the tests needs: espeak-ng and moto server.
install_run_needs() {
  ensure_apt_packages espeak-ng python3-venv
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  if ! "$venv/bin/pip" show moto 2>/dev/null | grep -qx "Version: $moto_version"; then
    "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$moto_version" >&2
  fi
}

if [ "${setup_steps:-all}" = all ]; then
  install_build_needs
  install_run_needs
fi

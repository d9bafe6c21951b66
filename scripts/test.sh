#!/usr/bin/env bash
# Runs the whole test suite of the workspace.
#
# On Debian it installs what the tests need when it is missing and it may (root with apt-get):
# redis-server and redis-tools (throwaway servers, clusters, Sentinel via `redis-server --sentinel`),
# openssl (TLS tests),
# and a Python virtual environment with impcache==1.0.2 (the interoperability test).
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "missing: $* — install with: sudo apt-get install $*" >&2
    exit 1
  fi
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi

# The Python library, for the two-way storage-format test.
venv=target/interop-venv
if ! "$venv/bin/python" -c 'import impcache' >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$venv"; }
  "$venv/bin/pip" install -q --disable-pip-version-check impcache==1.0.2
fi
export IMPCACHE_PYTHON="$PWD/$venv/bin/python"
export IMPCACHE_REQUIRE_PYTHON=1
# The full soak (1,000,000 operations from 256 tasks, Redis restarted mid-run; ~40 s in debug).
export IMPCACHE_SOAK="${IMPCACHE_SOAK:-1}"

cargo test --workspace --all-features "$@"
# impcache-tower without its optional `axum` feature, as users of other frameworks build it: the
# request metric without a route label.
cargo test -p impcache-tower --test metrics_without_route "$@"

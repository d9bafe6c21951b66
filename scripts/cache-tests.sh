#!/usr/bin/env bash
# Runs the public HTTP cache test suite (npm `http-cache-tests`, github.com/http-tests/cache-tests,
# the suite behind cache-tests.fyi) against `CacheLayer` in a reverse proxy
# (impcache-tower/examples/cache_proxy.rs: every method forwarded to the suite's origin server,
# an in-memory Cache), once per mode, and prints the counts per kind (required / optimal / check).
# Needs node and npm; not part of the default CI path.
#
#   scripts/cache-tests.sh [default|follow-origin ...]     (default: both)
#
# The suite: CACHE_TESTS_DIR, a checkout of github.com/http-tests/cache-tests (the version
# cache-tests.fyi shows, 160 required tests; run `npm install --omit=dev` in it once), else the npm
# release CACHE_TESTS_VERSION (default 0.4.5, 165 required tests, Surrogate-Control included),
# installed under target/cache-tests.
# Env: ORIGIN_PORT (default 18000), PROXY_PORT (18100), LIST=1 to list the required tests that do
# not pass, ID=<test-id> to run one test verbosely.
# Results: target/cache-tests/results-<mode>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
version="${CACHE_TESTS_VERSION:-0.4.5}"
origin_port="${ORIGIN_PORT:-18000}"
proxy_port="${PROXY_PORT:-18100}"
dir=target/cache-tests
suite="${CACHE_TESTS_DIR:-$dir/node_modules/http-cache-tests}"
# Absolute (it need not exist yet: the npm release is installed below).
case "$suite" in /*) ;; *) suite="$root/$suite" ;; esac
modes=("$@")
[ ${#modes[@]} -eq 0 ] && modes=(default follow-origin)

command -v node >/dev/null || { echo "cache-tests: node is not installed" >&2; exit 1; }
mkdir -p "$dir"
if [ -z "${CACHE_TESTS_DIR:-}" ] &&
    [ "$(node -p "try{require('$suite/package.json').version}catch(e){''}")" != "$version" ]; then
    (cd "$dir" && npm install --no-audit --no-fund --silent "http-cache-tests@$version")
fi
engine=.
[ -d "$suite/test-engine" ] && engine=test-engine
if [ -n "${CACHE_TESTS_DIR:-}" ]; then
    label="checkout $CACHE_TESTS_DIR$(cd "$suite" && git rev-parse --short HEAD 2>/dev/null | sed 's/^/ at /')"
else
    label="npm $version"
fi
cargo build --quiet -p impcache-tower --example cache_proxy
proxy_bin=target/debug/examples/cache_proxy

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "cache-tests: nothing listens on port $1" >&2
    return 1
}

(cd "$suite" && npm_config_protocol=http npm_config_port="$origin_port" \
    npm_config_pidfile="$root/$dir/origin.pid" exec node "$engine/server/server.mjs") >"$dir/origin.log" 2>&1 &
pids+=($!)
wait_port "$origin_port"

for mode in "${modes[@]}"; do
    "$proxy_bin" "$proxy_port" "http://127.0.0.1:$origin_port" "$mode" >"$dir/proxy-$mode.log" 2>&1 &
    proxy=$!
    pids+=("$proxy")
    wait_port "$proxy_port"
    if [ -n "${ID:-}" ]; then
        (cd "$suite" && npm_config_base="http://127.0.0.1:$proxy_port" npm_config_id="$ID" \
            node --no-warnings "$engine/cli.mjs")
    else
        (cd "$suite" && npm_config_base="http://127.0.0.1:$proxy_port" npm_config_id="" npm_package_config_id="" \
            node --no-warnings "$engine/cli.mjs") >"$dir/results-$mode.json"
        echo "== $mode ($label)"
        node scripts/cache-tests-count.mjs "$suite" "$dir/results-$mode.json"
    fi
    kill "$proxy" 2>/dev/null || true
    wait "$proxy" 2>/dev/null || true
done

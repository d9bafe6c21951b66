#!/usr/bin/env bash
# CPU instructions per operation (client side: impcache or the same work by hand, the redis-rs
# connection driver included; redis-server is not traced), counted by callgrind at n=0 and n=N
# and differenced. Deterministic, so it works on a busy machine, unlike timings.
#
#   benches/op-cost.sh [N] [operation ...]      (needs valgrind)
#
# Not for the concurrent-* and one-client-* operations (several threads): run those under
# `perf stat` / `/usr/bin/time`, e.g. `target/release/op-cost concurrent-set-impcache 512000`.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
shift || true
cargo build --release -q -p impcache-benches --bin op-cost
bin=${CARGO_TARGET_DIR:-target}/release/op-cost
ops=("$@")
if [ ${#ops[@]} -eq 0 ]; then
  read -r -a ops <<<"$("$bin" list | sed 's/^operations: //; s/ concurrent-[a-z-]*//g; s/ one-client-[a-z-]*//g')"
fi
count() {
  local out
  out=$(mktemp)
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>"$out" >/dev/null
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out"
  rm -f "$out"
}
printf '| operation | instructions per call |\n|---|---:|\n'
for op in "${ops[@]}"; do
  base=$(count "$op" 0)
  total=$(count "$op" "$n")
  printf '| %s | %s |\n' "$op" "$(( (total - base) / n ))"
done

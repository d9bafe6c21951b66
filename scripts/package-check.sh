#!/usr/bin/env bash
# Checks that the published crates (impcache-macros, impcache, impcache-tower) can be published
# and installed; `.ci/run` runs it. Needs crates.io's index (network).
#
# 1. `cargo publish --dry-run --workspace`: packages the three crates and builds each from its
#    package (the other members are `publish = false`).
# 2. The packaged crates' own tests and examples compile from the packages (`cargo check`: their
#    code generation and linking, which the suite does, took 38 s more of 171 from cold), and
#    their doc examples pass (each Cargo.toml says what is left out on purpose), in a workspace of
#    the unpacked packages that patches them in for the crates.io versions.
# 3. The README's Install lines, as written (a checkout path put in for `../impcache-rs`), build
#    in a new empty project using `#[cached]` and `CacheLayer`.
#
# Builds go to the workspace's own target directory, so after `scripts/test.sh` the dependencies
# are built already (`.ci/run` runs this script last), but the dry run's, which go to
# target/publish-verify (see below). After the suite it took 2 min 33 s on a 2-core machine
# (4 min 26 s from a cold target directory, before the two changes measured below).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
crates=(impcache-macros impcache impcache-tower)

echo "== cargo publish --dry-run --workspace"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
# The dry run verifies each crate against the ones packaged before it, served from a local registry.
# Cargo takes registry packages for immutable: it does not unpack one again while a directory of
# that name and version is under $CARGO_HOME/registry/src/-<hash>/, nor rebuild it while its build
# is in the target directory, so a second run would verify impcache-tower against the impcache of
# the first. Both go first: the unpacked copies (only our own packages are under those `-<hash>`
# directories; crates.io's are under index.crates.io-*), and our crates' builds in a target
# directory of the dry run's own (its dependencies stay built).
verify_target="$root/target/publish-verify"
for crate in "${crates[@]}"; do
  rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/"$crate-$version"
done
rm -rf "$verify_target"/debug/.fingerprint/impcache* "$verify_target"/debug/deps/*impcache*
# Without debug information (nothing runs these builds): 61 s instead of 82 from cold.
CARGO_PROFILE_DEV_DEBUG=false CARGO_TARGET_DIR="$verify_target" \
  cargo publish --dry-run --workspace --allow-dirty  # the working tree, committed or not

echo "== the packaged crates' tests compile from the packages"
package_args=()
for crate in "${crates[@]}"; do package_args+=(-p "$crate"); done
cargo package --no-verify --allow-dirty --quiet "${package_args[@]}"
mkdir "$work/packages"
{
  echo '[workspace]'
  echo 'resolver = "2"'
  printf 'members = ['
  for crate in "${crates[@]}"; do printf '"%s-%s", ' "$crate" "$version"; done
  echo ']'
  echo '[patch.crates-io]'
  for crate in "${crates[@]}"; do echo "$crate = { path = \"$crate-$version\" }"; done
  # The root workspace's debug profile, so these builds share its dependencies and stay small.
  sed -n '/^\[profile\.dev\]/,/^\[profile\.bench\]/p' Cargo.toml | grep -v '^\[profile\.bench\]'
} >"$work/packages/Cargo.toml"
for crate in "${crates[@]}"; do
  tar -xzf "target/package/$crate-$version.crate" -C "$work/packages"
done
cp Cargo.lock "$work/packages/"  # the workspace's versions, for a deterministic check
(
  cd "$work/packages"
  export CARGO_TARGET_DIR="$root/target"
  cargo check --workspace --all-features --all-targets
  # impcache-macros' doc examples need impcache, a dev-dependency its package cannot carry (see its
  # Cargo.toml): they run in the workspace's suite.
  cargo test --workspace --all-features --doc --exclude impcache-macros
)

echo "== the README's Install lines in an empty project"
cargo new --quiet --vcs none "$work/install/app"
# The TOML block under "## Install", without its `[dependencies]` header (`cargo new` wrote one).
awk '/^## Install/ { section = 1; next }
     section && /^```toml/ { block = 1; next }
     block && /^```/ { exit }
     block && !/^\[dependencies\]/ { print }' README.md \
  | sed "s|\.\./impcache-rs/|$root/|g" >"$work/install/lines.toml"
if ! grep -q impcache-tower "$work/install/lines.toml"; then
  echo "README.md: no impcache-tower line in the Install section's TOML block" >&2
  exit 1
fi
cat "$work/install/lines.toml" >>"$work/install/app/Cargo.toml"
cat >"$work/install/app/src/main.rs" <<'RUST'
use impcache::{cached, Cache, MemoryCacheRepository};
use impcache_tower::CacheLayer;

#[cached(expire = 60)]
async fn double(x: u64) -> u64 {
    x * 2
}

fn main() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let _layer = CacheLayer::new(cache).expire(60);
    let _call = double(21);
}
RUST
# The workspace's versions again (a user gets the newest), and the same target directory: the
# check stays deterministic and reuses step 2's builds (built without debug information, as the
# workspace's profile builds dependencies).
cp Cargo.lock "$work/install/app/"
CARGO_PROFILE_DEV_DEBUG=false CARGO_TARGET_DIR="$root/target" cargo build --manifest-path "$work/install/app/Cargo.toml"
echo "package check: ok"

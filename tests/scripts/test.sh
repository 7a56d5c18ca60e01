#!/usr/bin/env bash
# tests/scripts/test.sh - the README's test command: the whole suite on a fresh machine.
#
# Installs the test bed (Debian redis-server and prometheus, Celery in a virtualenv under ~/.cache/headroom; the
# Kubernetes test bed, built from the Go module proxy by install-k8s.sh only when missing: Go
# builds of about half an hour CPU on a cold machine, well under a second when cached), then runs
# formatting, lints, every unit, property and integration test against the real peers (Redis,
# Celery, kube-apiserver + controller-manager + scheduler + kwok, KEDA, Karpenter), and the
# quickstart once. Cargo's build output is kept in ~/.cache/headroom/target (outside the clone)
# unless CARGO_TARGET_DIR says otherwise, so a fresh clone reuses the last build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/scripts/env.sh
. "$here/env.sh"
cd "$HEADROOM_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HEADROOM_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "test bed"
bash "$here/install-testbed.sh"
bash "$here/install-k8s.sh"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# One feature set for the binaries and the tests: building every target at once activates the
# dev-dependencies' features (tokio's test-util) for the binaries too, so `cargo test` and the
# tests' own freshness check (tests/src/lib.rs workspace_bin) reuse this build instead of
# compiling tokio and everything above it (the AWS SDK, kube, tonic) a second time.
step "cargo build (every target: the binaries the tests run and the tests)"
cargo build --workspace --all-targets --locked

step "cargo test (unit, property, integration against real peers)"
cargo test --workspace --locked --no-fail-fast

step "quickstart (README command 1) runs end to end"
HEADROOM_SCALER_BIN="$CARGO_TARGET_DIR/debug/headroom-scaler" bash "$here/quickstart.sh" --once >/dev/null
echo "quickstart ok"

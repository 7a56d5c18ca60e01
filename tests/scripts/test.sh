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

step "cargo build (the binaries the tests run)"
cargo build --workspace --bins --locked

step "cargo test (unit, property, integration against real peers)"
cargo test --workspace --locked --no-fail-fast

step "quickstart (README command 1) runs end to end"
bash "$here/quickstart.sh" --once >/dev/null
echo "quickstart ok"

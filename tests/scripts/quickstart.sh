#!/usr/bin/env bash
# tests/scripts/quickstart.sh - the README's first command: Headroom's scaler serving KEDA's calls
# for a real local Celery queue, on a fresh machine.
#
#   1. installs the test bed (Debian redis-server, Celery in a virtualenv) when missing;
#   2. builds headroom-scaler;
#   3. starts a throw-away Redis with keyspace notifications on a free loopback port;
#   4. enqueues real Celery tasks (default queue and a GPU queue with priorities);
#   5. starts `headroom-scaler serve` on free ports;
#   6. asks it over gRPC exactly what KEDA asks (`headroom-scaler check --address`) for the
#      example ScaledObject, and shows the scaler's metrics;
#   7. keeps serving until Ctrl-C (or stops at once with --once), then cleans up.
set -euo pipefail

once=false
[ "${1:-}" = "--once" ] && once=true

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/scripts/env.sh
. "$here/env.sh"
cd "$HEADROOM_ROOT"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

step "installing the test bed (redis-server, celery) if missing"
bash "$here/install-testbed.sh"

if [ -n "${HEADROOM_SCALER_BIN:-}" ]; then
    # test.sh passes the binary it has just built (with the tests' feature set).
    bin="$HEADROOM_SCALER_BIN"
else
    # The same build directory as the test command (tests/scripts/test.sh), so one build serves
    # both. Cargo's own progress shows: a cold build is several minutes of dependencies.
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HEADROOM_CACHE/target}"
    step "building headroom-scaler (a cold build compiles its dependencies first: minutes)"
    cargo build --locked -p headroom-scaler --bin headroom-scaler
    bin="$CARGO_TARGET_DIR/debug/headroom-scaler"
fi

redis_port="$(free_port)"
grpc_port="$(free_port)"
metrics_port="$(free_port)"
workdir="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "starting redis-server on 127.0.0.1:$redis_port (keyspace notifications on)"
pids+=("$(bash "$here/start-redis.sh" "$redis_port" --notify-keyspace-events Kl)")

step "enqueueing real Celery tasks"
celery() { "$HEADROOM_CELERY_PYTHON" "$HEADROOM_CELERY_TOOL" --broker "redis://127.0.0.1:$redis_port/0" "$@"; }
celery enqueue --queue celery --count 3 >/dev/null
celery enqueue --queue gpu-a10g --count 4 >/dev/null
celery enqueue --queue gpu-a10g --count 5 --priority 9 >/dev/null
echo "3 tasks on 'celery'; 9 on 'gpu-a10g' (5 of them at priority 9, in the list gpu-a10g\\x06\\x169)"

step "starting headroom-scaler serve (gRPC 127.0.0.1:$grpc_port, metrics 127.0.0.1:$metrics_port)"
HEADROOM_GRPC_ADDR="127.0.0.1:$grpc_port" HEADROOM_METRICS_ADDR="127.0.0.1:$metrics_port" \
    "$bin" serve >"$workdir/scaler.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$grpc_port") 2>/dev/null && break
    sleep 0.05
done

step "what KEDA receives for examples/celery/scaledobject.yaml (over gRPC, as KEDA calls it)"
sed "s/headroom-scaler.headroom.svc:9090/127.0.0.1:$grpc_port/" examples/celery/scaledobject.yaml \
    >"$workdir/scaledobject.yaml"
REDIS_ADDRESS="127.0.0.1:$redis_port" "$bin" check -f "$workdir/scaledobject.yaml" --address "127.0.0.1:$grpc_port"

step "the same trigger as KEDA's built-in redis scaler would see it (bare list only)"
"$bin" check --address "127.0.0.1:$grpc_port" --set source=redis-list \
    --set "address=127.0.0.1:$redis_port" --set listName=gpu-a10g

step "the scaler's metrics (http://127.0.0.1:$metrics_port/metrics)"
python3 - "$metrics_port" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
for line in body.splitlines():
    if line.startswith(("headroom_scaler_queue_depth", "headroom_scaler_queue_in_flight", "headroom_scaler_metric_value", "headroom_scaler_rpcs_total")):
        print(line)
PY

if $once; then
    step "done (--once)"
    exit 0
fi
step "serving: point a ScaledObject at 127.0.0.1:$grpc_port; enqueue more with"
echo "  $HEADROOM_CELERY_PYTHON $HEADROOM_CELERY_TOOL --broker redis://127.0.0.1:$redis_port/0 enqueue --queue gpu-a10g --count 10"
echo "Ctrl-C stops the scaler and Redis. Scaler log: $workdir/scaler.log"
wait "${pids[-1]}"

#!/usr/bin/env bash
# tests/scripts/k8s-karpenter.sh DIR [INSTANCE_TYPES_JSON] - starts Karpenter's controller with its
# kwok cloud provider (built by install-k8s.sh from sigs.k8s.io/karpenter/kwok) against the
# cluster that k8s-up.sh started in DIR:
#
#   * Karpenter's CRDs (NodeClaim, NodePool, NodeOverlay, KWOKNodeClass) and a KWOKNodeClass
#     named "default";
#   * karpenter-kwok on loopback ports, no leader election, with the instance types of
#     INSTANCE_TYPES_JSON (default tests/k8s/karpenter/instance-types.json: m5.large and g5.*
#     types with nvidia.com/gpu, spot and on-demand offerings in test-zone-a/b).
#
# Karpenter then does what it does on a cloud: pending pods that fit a NodePool get NodeClaims,
# the kwok provider turns each NodeClaim into a Node (labelled with its instance type, zone and
# capacity type; capacity from the instance type), and the test bed's kwok makes that Node Ready.
# Returns once the controller is healthy; appends its pid to DIR/pids and ports to cluster.env.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/scripts/env.sh
. "$here/env.sh"

dir="${1:?usage: k8s-karpenter.sh DIR [INSTANCE_TYPES_JSON]}"
dir="$(cd "$dir" && pwd)"
types="${2:-$HEADROOM_ROOT/tests/k8s/karpenter/instance-types.json}"
[ -f "$dir/cluster.env" ] || {
    echo "k8s-karpenter.sh: $dir/cluster.env is missing: is $dir a cluster started by k8s-up.sh?" >&2
    exit 1
}
[ -f "$types" ] || {
    echo "k8s-karpenter.sh: instance types file $types does not exist" >&2
    exit 1
}
# shellcheck disable=SC1091
. "$dir/cluster.env"
bin="$HEADROOM_KARPENTER_HOME/bin/karpenter-kwok"
[ -x "$bin" ] || {
    echo "k8s-karpenter.sh: $bin is missing: run tests/scripts/install-k8s.sh" >&2
    exit 1
}

t_start="$(date +%s.%N)"
elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }
failed() {
    echo "k8s-karpenter.sh: FAILED: $1" >&2
    local f
    for f in "$dir/logs/karpenter.log" "$dir/logs/karpenter.out"; do
        [ -s "$f" ] || continue
        echo "  last lines of $f:" >&2
        tail -n 30 "$f" | sed 's/^/    /' >&2
    done
    exit 1
}
kubectl() { "$HEADROOM_K8S_KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }

kubectl apply --server-side --force-conflicts -f "$HEADROOM_KARPENTER_HOME/crds/" >"$dir/logs/karpenter-crds.log" 2>&1 ||
    failed "applying Karpenter's CRDs from $HEADROOM_KARPENTER_HOME/crds"
# Retried: `kubectl wait` fails at once on a CRD that has no status conditions yet.
deadline=$((SECONDS + 30))
until kubectl wait --for condition=established --timeout 30s crd/nodeclaims.karpenter.sh crd/nodepools.karpenter.sh \
    crd/nodeoverlays.karpenter.sh crd/kwoknodeclasses.karpenter.kwok.sh >>"$dir/logs/karpenter-crds.log" 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || failed "Karpenter's CRDs did not become Established"
    sleep 0.2
done
printf 'apiVersion: karpenter.kwok.sh/v1alpha1\nkind: KWOKNodeClass\nmetadata:\n  name: default\n' |
    kubectl apply --server-side -f - >>"$dir/logs/karpenter-crds.log" 2>&1 || failed "creating KWOKNodeClass default"

read -r metrics_port probe_port < <(python3 - <<'PY'
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])
PY
)
# Karpenter parses its own flag set (no --kubeconfig; controller-runtime reads KUBECONFIG). The log
# path puts the cluster folder on its command line, which k8s-down.sh looks for before signalling.
KUBECONFIG="$KUBECONFIG" DISABLE_LEADER_ELECTION=true SYSTEM_NAMESPACE=kube-system \
    METRICS_PORT="$metrics_port" HEALTH_PROBE_PORT="$probe_port" LOG_LEVEL=debug \
    INSTANCE_TYPES_FILE_PATH="$types" \
    "$bin" --log-output-paths "$dir/logs/karpenter.log" --log-error-output-paths "$dir/logs/karpenter.log" \
    </dev/null >"$dir/logs/karpenter.out" 2>&1 &
echo "$! karpenter" >>"$dir/pids"
pid=$!
deadline=$((SECONDS + 60))
until curl -sf --max-time 1 "http://127.0.0.1:$probe_port/readyz" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || failed "karpenter-kwok exited during start-up"
    [ "$SECONDS" -lt "$deadline" ] || failed "karpenter-kwok /readyz not within 60 s"
    sleep 0.1
done
{
    echo "HEADROOM_KARPENTER_METRICS_PORT=$metrics_port"
    echo "HEADROOM_KARPENTER_PROBE_PORT=$probe_port"
    echo "HEADROOM_KARPENTER_READY_SECONDS=$(elapsed)"
} >>"$dir/cluster.env"
printf 'k8s-karpenter: [%6ss] Karpenter %s (kwok provider) ready, instance types from %s\n' "$(elapsed)" "$KARPENTER_VERSION" "$types"

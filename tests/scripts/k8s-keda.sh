#!/usr/bin/env bash
# tests/scripts/k8s-keda.sh DIR - starts KEDA (operator + metrics adapter, built by install-k8s.sh)
# on loopback against the cluster that k8s-up.sh started in DIR, the way KEDA's own manifests
# wire it, minus the parts that need pods:
#
#   * KEDA's CRDs (server-side apply), namespace keda;
#   * keda-operator with its gRPC metrics service on 127.0.0.1 and cert rotation OFF
#     (--enable-cert-rotation=false): it reads ca.crt/tls.crt/tls.key from DIR/keda-certs, which
#     this script signs with the cluster CA (KEDA would otherwise generate them into a Secret and
#     patch the APIService and webhooks itself);
#   * keda-adapter, the external.metrics.k8s.io aggregated API server, with the same certificates
#     for its mTLS client to the operator and its HTTPS serving; delegated authentication and
#     authorization through the admin kubeconfig;
#   * Service keda/keda-metrics-apiserver of type ExternalName (127.0.0.1): there is no kube-proxy
#     here, and the aggregator resolves an ExternalName service to <externalName>:<APIService
#     port>, so the APIService v1beta1.external.metrics.k8s.io reaches the adapter on loopback
#     (verified with caBundle = the cluster CA, not insecureSkipTLSVerify);
#   * the admission webhooks (cmd/webhooks) are not run: they only validate ScaledObjects.
#
# Returns once the APIService is Available and the operator is healthy; appends the processes to
# DIR/pids (so k8s-down.sh stops them) and ports to DIR/cluster.env (HEADROOM_KEDA_*).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/scripts/env.sh
. "$here/env.sh"

dir="${1:?usage: k8s-keda.sh DIR (a cluster folder made by k8s-up.sh)}"
dir="$(cd "$dir" && pwd)"
[ -f "$dir/cluster.env" ] || {
    echo "k8s-keda.sh: $dir/cluster.env is missing: is $dir a cluster started by k8s-up.sh?" >&2
    exit 1
}
# shellcheck disable=SC1091
. "$dir/cluster.env"
for b in keda-operator keda-adapter; do
    [ -x "$HEADROOM_KEDA_HOME/bin/$b" ] || {
        echo "k8s-keda.sh: $HEADROOM_KEDA_HOME/bin/$b is missing: run tests/scripts/install-k8s.sh" >&2
        exit 1
    }
done

t_start="$(date +%s.%N)"
elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }
say() { printf 'k8s-keda: [%6ss] %s\n' "$(elapsed)" "$*"; }
failed() {
    echo "k8s-keda.sh: FAILED: $1" >&2
    if [ -n "${2:-}" ] && [ -f "$dir/logs/$2.log" ]; then
        echo "  last lines of $dir/logs/$2.log:" >&2
        tail -n 30 "$dir/logs/$2.log" | sed 's/^/    /' >&2
    fi
    exit 1
}
kubectl() { "$HEADROOM_K8S_KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }
start() {
    local name="$1"
    shift
    "$@" </dev/null >"$dir/logs/$name.log" 2>&1 &
    echo "$! $name" >>"$dir/pids"
}
alive() {
    local pid
    pid="$(awk -v n="$1" '$2 == n { print $1 }' "$dir/pids" | tail -n 1)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}
wait_for() {
    local name="$1" what="$2" limit="$3"
    shift 3
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        alive "$name" || failed "$name exited before $what" "$name"
        [ "$SECONDS" -lt "$deadline" ] || failed "$what: not within ${limit} s" "$name"
        sleep 0.1
    done
}

read -r op_metrics op_probe op_grpc adapter_port adapter_metrics < <(python3 - <<'PY'
import socket
socks = []
for _ in range(5):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)

# --- certificates: one pair for the operator's gRPC server, the adapter's gRPC client (mTLS) and
# the adapter's HTTPS serving, signed by the cluster CA ---------------------------------------------
certs="$dir/keda-certs"
pki="$dir/pki"
mkdir -p "$certs"
cp "$pki/ca.crt" "$certs/ca.crt"
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$certs/tls.key" \
    -subj /CN=keda -days 365 -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -addext "basicConstraints=CA:FALSE" -addext "keyUsage=critical,digitalSignature,keyEncipherment" \
    -addext "extendedKeyUsage=serverAuth,clientAuth" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:keda-operator.keda.svc,DNS:keda-metrics-apiserver.keda.svc" \
    -out "$certs/tls.crt" 2>/dev/null || failed "openssl could not sign KEDA's certificate"

# --- CRDs and the objects KEDA's manifests would create ----------------------------------------------
kubectl apply --server-side --force-conflicts -f "$HEADROOM_KEDA_HOME/crds/" >"$dir/logs/keda-crds.log" 2>&1 ||
    failed "applying KEDA's CRDs from $HEADROOM_KEDA_HOME/crds" keda-crds
# `kubectl wait` fails at once ("accessor error") on a CRD whose status has no conditions yet,
# which is the case for a moment after it is created: retry it until a deadline.
deadline=$((SECONDS + 30))
until kubectl wait --for condition=established --timeout 30s \
    crd/scaledobjects.keda.sh crd/scaledjobs.keda.sh crd/triggerauthentications.keda.sh \
    crd/clustertriggerauthentications.keda.sh >>"$dir/logs/keda-crds.log" 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || failed "KEDA's CRDs did not become Established" keda-crds
    sleep 0.2
done
ca_bundle="$(base64 -w0 <"$pki/ca.crt")"
kubectl apply --server-side -f - >>"$dir/logs/keda-crds.log" 2>&1 <<EOF || failed "creating the keda namespace, Service and APIService" keda-crds
apiVersion: v1
kind: Namespace
metadata:
  name: keda
---
apiVersion: v1
kind: Service
metadata:
  name: keda-metrics-apiserver
  namespace: keda
spec:
  type: ExternalName
  externalName: 127.0.0.1
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.external.metrics.k8s.io
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  caBundle: $ca_bundle
  service:
    name: keda-metrics-apiserver
    namespace: keda
    port: $adapter_port
EOF
say "CRDs, namespace keda, APIService v1beta1.external.metrics.k8s.io -> 127.0.0.1:$adapter_port"

# --- operator and adapter -------------------------------------------------------------------------------
export KUBECONFIG WATCH_NAMESPACE="" POD_NAMESPACE=keda KEDA_CLUSTER_OBJECT_NAMESPACE=keda
start keda-operator "$HEADROOM_KEDA_HOME/bin/keda-operator" \
    --leader-elect=false --enable-cert-rotation=false --cert-dir "$certs" \
    --metrics-bind-address "127.0.0.1:$op_metrics" --health-probe-bind-address "127.0.0.1:$op_probe" \
    --metrics-service-bind-address "127.0.0.1:$op_grpc" \
    --enable-webhook-patching=false --enable-apiservice-patching=false \
    --ca-dir "$certs" --zap-log-level=info --zap-encoder=console
start keda-adapter "$HEADROOM_KEDA_HOME/bin/keda-adapter" \
    --secure-port "$adapter_port" --bind-address 127.0.0.1 --cert-dir "$certs" \
    --tls-cert-file "$certs/tls.crt" --tls-private-key-file "$certs/tls.key" --client-ca-file "$certs/ca.crt" \
    --authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" \
    --lister-kubeconfig "$KUBECONFIG" \
    --metrics-service-address "127.0.0.1:$op_grpc" --port "$adapter_metrics" \
    --zap-log-level=info --zap-encoder=console
wait_for keda-operator "keda-operator /readyz" 60 curl -sf --max-time 1 "http://127.0.0.1:$op_probe/readyz"
apiservice_available() {
    [ "$(kubectl get apiservice v1beta1.external.metrics.k8s.io \
        -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" = True ]
}
wait_for keda-adapter "APIService v1beta1.external.metrics.k8s.io Available (adapter serving through the aggregator)" 60 \
    apiservice_available
{
    echo "HEADROOM_KEDA_OPERATOR_METRICS_PORT=$op_metrics"
    echo "HEADROOM_KEDA_OPERATOR_PROBE_PORT=$op_probe"
    echo "HEADROOM_KEDA_OPERATOR_GRPC_PORT=$op_grpc"
    echo "HEADROOM_KEDA_ADAPTER_PORT=$adapter_port"
    echo "HEADROOM_KEDA_ADAPTER_METRICS_PORT=$adapter_metrics"
    echo "HEADROOM_KEDA_READY_SECONDS=$(elapsed)"
} >>"$dir/cluster.env"
say "KEDA $KEDA_VERSION ready (operator healthy, external.metrics.k8s.io Available)"

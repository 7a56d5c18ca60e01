#!/usr/bin/env bash
# tests/scripts/k8s-up.sh - starts a real Kubernetes control plane on free loopback ports, with
# kwok standing in for kubelets, from the binaries tests/scripts/install-k8s.sh built:
#
#   etcd -> kube-apiserver (TLS, RBAC, front-proxy/aggregation set up) -> kube-controller-manager,
#   kube-scheduler, kwok (every Node is fake: kwok makes it Ready and its pods Running)
#   [--keda: then KEDA's CRDs, operator and metrics adapter behind the external.metrics.k8s.io
#   APIService, through tests/scripts/k8s-keda.sh]
#
# Everything lives in one folder (--dir, default a new temporary one): pki/ (a CA, serving and
# client certificates, the service-account key, a front-proxy CA), kubeconfig (admin: the client
# certificate is in group system:masters), logs/, pids, and cluster.env (NAME=value lines: ports,
# paths) for harnesses. tests/scripts/k8s-down.sh DIR stops it all.
#
#   bash tests/scripts/k8s-up.sh [--keda]          # by hand: runs until Ctrl-C, then cleans up
#   bash tests/scripts/k8s-up.sh --detach --dir D [--watch-pid PID] [--keda]
#                                                 # for harnesses: returns once ready; with
#                                                 # --watch-pid, the cluster stops by itself when
#                                                 # PID exits (so a killed test leaves nothing)
#
# Settings (environment): HEADROOM_KCM_ARGS extra kube-controller-manager flags (default:
# --horizontal-pod-autoscaler-sync-period=2s, so HPA tests need not wait 15 s per step),
# HEADROOM_APISERVER_ARGS extra kube-apiserver flags.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/scripts/env.sh
. "$here/env.sh"

dir=""
detach=false
watch_pid=""
keda=false
while [ "$#" -gt 0 ]; do
    case "$1" in
    --dir)
        dir="${2:?--dir needs a folder}"
        shift
        ;;
    --detach) detach=true ;;
    --watch-pid)
        watch_pid="${2:?--watch-pid needs a PID}"
        shift
        ;;
    --keda) keda=true ;;
    -h | --help)
        sed -n '2,24p' "$0"
        exit 0
        ;;
    *)
        echo "k8s-up.sh: unknown argument '$1' (see --help)" >&2
        exit 64
        ;;
    esac
    shift
done

bin="$HEADROOM_K8S_HOME/bin"
kwok_bin="$HEADROOM_KWOK_HOME/bin/kwok"
for b in "$bin/etcd" "$bin/kube-apiserver" "$bin/kube-controller-manager" "$bin/kube-scheduler" "$bin/kubectl" "$kwok_bin"; do
    [ -x "$b" ] || {
        echo "k8s-up.sh: $b is missing: run tests/scripts/install-k8s.sh" >&2
        exit 1
    }
done
command -v openssl >/dev/null && command -v curl >/dev/null || {
    echo "k8s-up.sh: openssl and curl are needed: run tests/scripts/install-k8s.sh" >&2
    exit 1
}

t_start="$(date +%s.%N)"
elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }
say() { printf 'k8s-up: [%6ss] %s\n' "$(elapsed)" "$*"; }

if [ -z "$dir" ]; then
    dir="$(mktemp -d "${TMPDIR:-/tmp}/headroom-k8s.XXXXXX")"
fi
mkdir -p "$dir/pki" "$dir/logs"
dir="$(cd "$dir" && pwd)"
pki="$dir/pki"
: >"$dir/pids"

down() { bash "$here/k8s-down.sh" "$dir" >/dev/null 2>&1 || true; }
failed() {
    echo "k8s-up.sh: FAILED: $1" >&2
    if [ -n "${2:-}" ] && [ -f "$dir/logs/$2.log" ]; then
        echo "  last lines of $dir/logs/$2.log:" >&2
        tail -n 30 "$dir/logs/$2.log" | sed 's/^/    /' >&2
    fi
    trap - EXIT
    bash "$here/k8s-down.sh" --keep "$dir" >/dev/null 2>&1 || true
    echo "  (the cluster was stopped; its folder $dir is kept for inspection)" >&2
    exit 1
}

# --- ports ----------------------------------------------------------------------------------------
read -r etcd_port etcd_peer_port api_port kcm_port sched_port kwok_port < <(python3 - <<'PY'
import socket
socks = []
for _ in range(6):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)

# --- certificates ---------------------------------------------------------------------------------
# EC P-256 keys: instant to make, accepted by Go's TLS, rustls and the service-account signer.
# One openssl call per certificate (`req -x509 -CA` signs directly, OpenSSL >= 3.0).
new_ca() { # NAME CN
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$pki/$1.key" -subj "/CN=$2" -days 3650 -out "$pki/$1.crt" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
new_cert() { # NAME CA SUBJECT EXT_KEY_USAGE [SUBJECT_ALT_NAMES]
    local san=()
    [ -z "${5:-}" ] || san=(-addext "subjectAltName=$5")
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$pki/$1.key" -subj "$3" -days 365 -CA "$pki/$2.crt" -CAkey "$pki/$2.key" \
        -addext "basicConstraints=CA:FALSE" -addext "keyUsage=critical,digitalSignature,keyEncipherment" \
        -addext "extendedKeyUsage=$4" "${san[@]}" -out "$pki/$1.crt" 2>/dev/null
}
new_ca ca headroom-test-ca
new_ca front-proxy-ca headroom-test-front-proxy-ca
new_cert apiserver ca /CN=kube-apiserver serverAuth \
    "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
new_cert admin ca "/O=system:masters/CN=headroom-admin" clientAuth
new_cert front-proxy-client front-proxy-ca /CN=front-proxy-client clientAuth
openssl ecparam -name prime256v1 -genkey -noout -out "$pki/sa.key" 2>/dev/null
openssl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
[ -s "$pki/admin.crt" ] && [ -s "$pki/apiserver.crt" ] && [ -s "$pki/sa.pub" ] ||
    failed "openssl could not make the certificates in $pki"
say "certificates in $pki"

server="https://127.0.0.1:$api_port"
kubeconfig="$dir/kubeconfig"
cat >"$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: headroom
  cluster:
    server: $server
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: headroom
  context:
    cluster: headroom
    user: admin
    namespace: default
current-context: headroom
EOF

{
    echo "HEADROOM_K8S_DIR=$dir"
    echo "KUBECONFIG=$kubeconfig"
    echo "HEADROOM_K8S_SERVER=$server"
    echo "HEADROOM_K8S_CA=$pki/ca.crt"
    echo "HEADROOM_K8S_ADMIN_CERT=$pki/admin.crt"
    echo "HEADROOM_K8S_ADMIN_KEY=$pki/admin.key"
    echo "HEADROOM_K8S_ETCD=http://127.0.0.1:$etcd_port"
    echo "HEADROOM_K8S_KUBECTL=$bin/kubectl"
    echo "HEADROOM_K8S_VERSION=$KUBERNETES_VERSION"
} >"$dir/cluster.env"

# start NAME CMD... - runs CMD in the background, output in logs/NAME.log, pid in pids.
start() {
    local name="$1"
    shift
    "$@" </dev/null >"$dir/logs/$name.log" 2>&1 &
    echo "$! $name" >>"$dir/pids"
}
alive() { # NAME
    local pid
    pid="$(awk -v n="$1" '$2 == n { print $1 }' "$dir/pids" | tail -n 1)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}
# wait_for NAME WHAT SECONDS CMD... - polls CMD every 50 ms while NAME runs.
wait_for() {
    local name="$1" what="$2" limit="$3"
    shift 3
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        alive "$name" || failed "$name exited before $what" "$name"
        [ "$SECONDS" -lt "$deadline" ] || failed "$what: not within ${limit} s" "$name"
        sleep 0.05
    done
}
curl_admin() { curl -sf --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$@"; }

if [ -n "$watch_pid" ]; then
    # Stops the cluster when the watched process (a test binary) is gone, however it ended.
    # It gives up once the pids file is gone: stopped by k8s-down.sh (which leaves a failed
    # start's folder for inspection).
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && [ -f "$2/pids" ]; do sleep 1; done
        [ ! -f "$2/pids" ] || exec bash "$3" "$2"' \
        k8s-watchdog "$watch_pid" "$dir" "$here/k8s-down.sh" </dev/null >/dev/null 2>&1 &
fi
if ! $detach; then
    trap down EXIT
    trap 'exit 130' INT TERM
fi

# --- etcd -----------------------------------------------------------------------------------------
start etcd "$bin/etcd" --name headroom --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "headroom=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync --log-level warn
wait_for etcd "etcd answering /health" 20 curl -sf --max-time 1 "http://127.0.0.1:$etcd_port/health"
say "etcd ready on 127.0.0.1:$etcd_port"

# --- kube-apiserver -------------------------------------------------------------------------------
# shellcheck disable=SC2086 # HEADROOM_APISERVER_ARGS is a list of flags
start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --endpoint-reconciler-type none \
    --requestheader-client-ca-file "$pki/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
    --allow-privileged=true --profiling=false --cert-dir "$dir/apiserver-certs" \
    ${HEADROOM_APISERVER_ARGS:-}
wait_for kube-apiserver "kube-apiserver /readyz" 60 curl_admin "$server/readyz"
say "kube-apiserver ready on $server"

# --- controller-manager, scheduler, kwok ----------------------------------------------------------
# shellcheck disable=SC2086 # HEADROOM_KCM_ARGS is a list of flags
start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$kubeconfig" --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --cert-dir "$dir/kcm-certs" \
    --leader-elect=false --use-service-account-credentials=false \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --node-monitor-period 2s --flex-volume-plugin-dir "$dir/flexvolume" \
    ${HEADROOM_KCM_ARGS:---horizontal-pod-autoscaler-sync-period=2s}
start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$kubeconfig" --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false
start kwok "$kwok_bin" --kubeconfig "$kubeconfig" --config "$HEADROOM_KWOK_HOME/stages.yaml" \
    --manage-all-nodes=true --server-address "127.0.0.1:$kwok_port" \
    --cidr 10.244.0.0/16 --node-ip 10.0.0.1 --node-lease-duration-seconds 40
wait_for kube-controller-manager "kube-controller-manager /healthz" 30 curl -skf --max-time 1 "https://127.0.0.1:$kcm_port/healthz"
wait_for kube-scheduler "kube-scheduler /healthz" 30 curl -skf --max-time 1 "https://127.0.0.1:$sched_port/healthz"
wait_for kwok "kwok /healthz" 30 curl -sf --max-time 1 "http://127.0.0.1:$kwok_port/healthz"
# The controllers work once the default ServiceAccount (which pods need) exists.
wait_for kube-controller-manager "the default ServiceAccount (controller-manager working)" 30 \
    curl_admin "$server/api/v1/namespaces/default/serviceaccounts/default"
{
    echo "HEADROOM_K8S_KCM_PORT=$kcm_port"
    echo "HEADROOM_K8S_SCHEDULER_PORT=$sched_port"
    echo "HEADROOM_K8S_KWOK_PORT=$kwok_port"
} >>"$dir/cluster.env"
say "controller-manager, scheduler and kwok ready"

if $keda; then
    bash "$here/k8s-keda.sh" "$dir" || failed "KEDA did not start (see above)"
fi

say "cluster ready: export KUBECONFIG=$kubeconfig"
echo "HEADROOM_K8S_READY_SECONDS=$(elapsed)" >>"$dir/cluster.env"
if $detach; then
    exit 0
fi
echo "  kubectl:  $bin/kubectl --kubeconfig $kubeconfig get nodes,pods -A"
echo "  helm:     $HEADROOM_HELM_HOME/bin/helm --kubeconfig $kubeconfig list -A"
echo "  logs:     $dir/logs/"
echo "  a fake GPU node: $bin/kubectl --kubeconfig $kubeconfig apply -f $HEADROOM_ROOT/tests/k8s/manifests/gpu-node.yaml"
echo "Ctrl-C stops everything and removes $dir."
while alive kube-apiserver; do sleep 1; done
echo "k8s-up.sh: kube-apiserver exited; stopping" >&2

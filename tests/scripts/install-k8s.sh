#!/usr/bin/env bash
# tests/scripts/install-k8s.sh - builds the Kubernetes test bed from the Go module proxy and keeps it
# in version-keyed folders under ${HEADROOM_CACHE:-$HOME/.cache/headroom} (outside the clone):
#
#   kubernetes-<v>-etcd-<v>/bin  kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd
#                                (wrapper module tests/k8s/go/kube: k8s.io/kubernetes + its staging
#                                replace block, see kubernetes/kubernetes#79384)
#   keda-<v>/bin, crds           keda-operator, keda-adapter (wrapper module tests/k8s/go/keda, with
#                                KEDA's own replace block); KEDA's CRDs from config/crd/bases
#   karpenter-<v>/crds, bin      karpenter.sh CRDs (pkg/apis/crds) and the kwok provider's KWOKNodeClass;
#                                karpenter-kwok, Karpenter's controller with its kwok cloud provider
#                                (wrapper module tests/k8s/go/karpenter)
#   kwok-<v>/bin, stages.yaml    kwok (go install) and its "fast" node/pod stages from the module
#   helm-<v>/bin                 helm (go install)
#
# Versions: tests/k8s/versions.env. Idempotent: a folder whose stamp matches its inputs (versions,
# wrapper go.mod/go.sum) is kept, so a warm run takes well under a second; otherwise it is built in a
# temporary folder and moved into place only when complete. Progress goes to stdout; a failure names
# the step and shows the end of its log. Concurrent runs wait for each other (flock).
#
#   bash tests/scripts/install-k8s.sh            # install what is missing
#   bash tests/scripts/install-k8s.sh --force    # rebuild everything
#   bash tests/scripts/install-k8s.sh --check    # exit 1 (quietly) when something is missing
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/scripts/env.sh
. "$here/env.sh"

force=false
check=false
for arg in "$@"; do
    case "$arg" in
    --force) force=true ;;
    --check) check=true ;;
    *)
        echo "install-k8s.sh: unknown argument '$arg' (expected --force or --check)" >&2
        exit 64
        ;;
    esac
done

gomods="$HEADROOM_ROOT/tests/k8s/go"
start_all=$SECONDS

say() { printf 'install-k8s: %s\n' "$*"; }
die() {
    printf 'install-k8s.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

# stamp_of BUILD_FUNCTION FILE... - what a folder's content depends on: the versions, the build
# function's own text (so changing how something is built rebuilds it) and the wrapper module files.
stamp_of() {
    local build="$1"
    shift
    {
        declare -f "$build"
        grep -E '^[A-Z_]+_VERSION=' "$HEADROOM_ROOT/tests/k8s/versions.env" | sed 's/[[:space:]]*#.*//'
        cat "$@" 2>/dev/null
    } | sha256sum | cut -d' ' -f1
}

is_current() { # DIR STAMP
    [ -f "$1/.headroom-stamp" ] && [ "$(cat "$1/.headroom-stamp")" = "$2" ]
}

# run STEP LOG CMD... - runs CMD with its output in LOG; on failure names STEP and shows the log's end.
run() {
    local step="$1" log="$2"
    shift 2
    if ! "$@" >>"$log" 2>&1; then
        echo "install-k8s.sh: FAILED: $step" >&2
        echo "  command: $*" >&2
        echo "  last lines of $log:" >&2
        tail -n 40 "$log" | sed 's/^/    /' >&2
        exit 1
    fi
}

# install_component NAME DIR STAMP BUILD_FUNCTION - builds into DIR.tmp, then swaps it in.
install_component() {
    local name="$1" dir="$2" stamp="$3" build="$4"
    if ! $force && is_current "$dir" "$stamp"; then
        say "$name: cached ($dir)"
        return
    fi
    local t0=$SECONDS tmp="$dir.tmp.$$"
    rm -rf "$dir".tmp.* # left by an interrupted run (we hold the lock)
    mkdir -p "$tmp/bin"
    local log="$tmp/build.log"
    say "$name: building (log: $dir/build.log)"
    "$build" "$tmp" "$log"
    echo "$stamp" >"$tmp/.headroom-stamp"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    say "$name: done in $((SECONDS - t0)) s"
}

# module_dir MODULE@VERSION LOG - downloads a module's source and prints its folder.
module_dir() {
    local out dir
    out="$(cd / && go mod download -json "$1" 2>>"$2")" || true
    dir="$(printf '%s\n' "$out" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then
        echo "install-k8s.sh: FAILED: go mod download $1" >&2
        printf '%s\n' "$out" | grep -i error | sed 's/^/    /' >&2
        exit 1
    fi
    printf '%s\n' "$dir"
}

build_kubernetes() {
    local out="$1" log="$2" pkg=k8s.io/component-base/version
    local minor="${KUBERNETES_VERSION#v1.}"
    minor="${minor%%.*}"
    # Without these the binaries report v0.0.0-master, which clients (KEDA, kubectl) check.
    local ldflags="-s -w -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    for cmd in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl; do
        say "  go build $cmd"
        run "go build $cmd (tests/k8s/go/kube)" "$log" \
            go build -C "$gomods/kube" -ldflags "$ldflags" -o "$out/bin/$cmd" "./cmd/$cmd"
    done
    "$out/bin/kube-apiserver" --version >>"$log" 2>&1 || die "the built kube-apiserver does not run"
}

build_keda() {
    local out="$1" log="$2" src
    for cmd in operator adapter; do
        say "  go build keda-$cmd"
        run "go build keda-$cmd (tests/k8s/go/keda)" "$log" \
            go build -C "$gomods/keda" -ldflags "-s -w -X github.com/kedacore/keda/v2/version.Version=$KEDA_VERSION" \
            -o "$out/bin/keda-$cmd" "github.com/kedacore/keda/v2/cmd/$cmd"
    done
    src="$(module_dir "github.com/kedacore/keda/v2@$KEDA_VERSION" "$log")"
    [ -d "$src/config/crd/bases" ] || die "no config/crd/bases in github.com/kedacore/keda/v2@$KEDA_VERSION ($src)"
    mkdir -p "$out/crds"
    cp "$src"/config/crd/bases/*.yaml "$out/crds/"
    chmod 0644 "$out"/crds/*.yaml
}

build_karpenter() {
    local out="$1" log="$2" src
    src="$(module_dir "sigs.k8s.io/karpenter@$KARPENTER_VERSION" "$log")"
    [ -f "$src/pkg/apis/crds/karpenter.sh_nodeclaims.yaml" ] ||
        die "no pkg/apis/crds/karpenter.sh_nodeclaims.yaml in sigs.k8s.io/karpenter@$KARPENTER_VERSION ($src)"
    mkdir -p "$out/crds"
    cp "$src"/pkg/apis/crds/karpenter.sh_*.yaml "$out/crds/"
    cp "$src"/kwok/apis/crds/*.yaml "$out/crds/"
    chmod 0644 "$out"/crds/*.yaml
    say "  go build karpenter-kwok"
    run "go build karpenter-kwok (tests/k8s/go/karpenter)" "$log" \
        go build -C "$gomods/karpenter" -ldflags "-s -w" -o "$out/bin/karpenter-kwok" sigs.k8s.io/karpenter/kwok
}

build_kwok() {
    local out="$1" log="$2" src
    say "  go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    run "go install kwok" "$log" env GOBIN="$out/bin" go install \
        -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
        "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    # kwok's binary has no built-in stages: take the ones kwokctl uses ("fast" node and pod stages
    # plus lease heartbeats) from the same module.
    src="$(module_dir "sigs.k8s.io/kwok@$KWOK_VERSION" "$log")"
    local f first=true
    for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
        pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
        [ -f "$src/kustomize/stage/$f" ] || die "no kustomize/stage/$f in sigs.k8s.io/kwok@$KWOK_VERSION"
        $first || echo '---'
        first=false
        cat "$src/kustomize/stage/$f"
    done >"$out/stages.yaml"
}

build_helm() {
    local out="$1" log="$2"
    say "  go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    run "go install helm" "$log" env GOBIN="$out/bin" go install \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

# --- the components, and what each one's folder depends on ---------------------------------------
k8s_stamp="$(stamp_of build_kubernetes "$gomods/kube/go.mod" "$gomods/kube/go.sum")"
keda_stamp="$(stamp_of build_keda "$gomods/keda/go.mod" "$gomods/keda/go.sum")"
karpenter_stamp="$(stamp_of build_karpenter "$gomods/karpenter/go.mod" "$gomods/karpenter/go.sum")"
kwok_stamp="$(stamp_of build_kwok)"
helm_stamp="$(stamp_of build_helm)"

all_current() {
    is_current "$HEADROOM_K8S_HOME" "$k8s_stamp" &&
        is_current "$HEADROOM_KEDA_HOME" "$keda_stamp" &&
        is_current "$HEADROOM_KARPENTER_HOME" "$karpenter_stamp" &&
        is_current "$HEADROOM_KWOK_HOME" "$kwok_stamp" &&
        is_current "$HEADROOM_HELM_HOME" "$helm_stamp"
}

if $check; then
    all_current
    exit $?
fi
if ! $force && all_current; then
    say "all present in $HEADROOM_CACHE (kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION, keda $KEDA_VERSION, karpenter $KARPENTER_VERSION, kwok $KWOK_VERSION, helm $HELM_VERSION) [$((SECONDS - start_all)) s]"
    exit 0
fi

# --- prerequisites --------------------------------------------------------------------------------
command -v go >/dev/null 2>&1 || die "no 'go' on PATH: install Go >= 1.26 (KEDA $KEDA_VERSION needs it)"
go_minor="$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
[ -n "$go_minor" ] && [ "$go_minor" -ge 26 ] ||
    die "Go >= 1.26 is needed (KEDA $KEDA_VERSION's go.mod says 'go 1.26.0'); found $(go env GOVERSION)"

pkgs=()
command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
command -v curl >/dev/null 2>&1 || pkgs+=(curl)
command -v flock >/dev/null 2>&1 || pkgs+=(util-linux)
if [ "${#pkgs[@]}" -gt 0 ]; then
    say "apt-get install ${pkgs[*]} (used by k8s-up.sh)"
    as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
    export DEBIAN_FRONTEND=noninteractive
    aptlog="$(mktemp)"
    run "apt-get update" "$aptlog" as_root apt-get update -q
    run "apt-get install ${pkgs[*]}" "$aptlog" as_root apt-get install -y -q --no-install-recommends "${pkgs[@]}"
    rm -f "$aptlog"
fi

# The wrapper modules must require what versions.env says.
grep -qE "^\s*k8s.io/kubernetes $KUBERNETES_VERSION( |$)" "$gomods/kube/go.mod" ||
    die "tests/k8s/go/kube/go.mod does not require k8s.io/kubernetes $KUBERNETES_VERSION (versions.env); update its require and replace block, then 'go mod tidy'"
grep -qE "^\s*go.etcd.io/etcd/server/v3 $ETCD_VERSION( |$)" "$gomods/kube/go.mod" ||
    die "tests/k8s/go/kube/go.mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION (versions.env)"
grep -qE "^\s*sigs.k8s.io/karpenter $KARPENTER_VERSION( |$)" "$gomods/karpenter/go.mod" ||
    die "tests/k8s/go/karpenter/go.mod does not require sigs.k8s.io/karpenter $KARPENTER_VERSION (versions.env)"
grep -qE "^\s*github.com/kedacore/keda/v2 $KEDA_VERSION( |$)" "$gomods/keda/go.mod" ||
    die "tests/k8s/go/keda/go.mod does not require github.com/kedacore/keda/v2 $KEDA_VERSION (versions.env); copy that version's replace block too"

mkdir -p "$HEADROOM_CACHE"
exec 8>"$HEADROOM_CACHE/.k8s-install.lock"
flock 8

export GOFLAGS="${GOFLAGS:-} -trimpath"

say "building the Kubernetes test bed into $HEADROOM_CACHE with $(go env GOVERSION) (GOMODCACHE $(go env GOMODCACHE))"
install_component "kwok $KWOK_VERSION" "$HEADROOM_KWOK_HOME" "$kwok_stamp" build_kwok
install_component "kubernetes $KUBERNETES_VERSION + etcd $ETCD_VERSION" "$HEADROOM_K8S_HOME" "$k8s_stamp" build_kubernetes
install_component "keda $KEDA_VERSION" "$HEADROOM_KEDA_HOME" "$keda_stamp" build_keda
# After KEDA: it reuses KEDA's compiled k8s.io and controller-runtime packages.
install_component "karpenter $KARPENTER_VERSION" "$HEADROOM_KARPENTER_HOME" "$karpenter_stamp" build_karpenter
install_component "helm $HELM_VERSION" "$HEADROOM_HELM_HOME" "$helm_stamp" build_helm
say "done in $((SECONDS - start_all)) s"

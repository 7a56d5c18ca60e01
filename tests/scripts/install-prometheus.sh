#!/usr/bin/env bash
# tests/scripts/install-prometheus.sh - the monitoring part of the test bed:
#   * Debian's `prometheus` package (promtool comes with it), via apt-get, only when missing; the
#     package's own service is not used (tests start a Prometheus per run on a free port);
#   * prometheus-operator's CRDs (ServiceMonitor, PrometheusRule, ...) from its Go module
#     (github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION, file
#     example/prometheus-operator-crd/*.yaml) through the Go module proxy, kept in
#     $HEADROOM_PROMETHEUS_OPERATOR_HOME/crds (version-keyed, under ~/.cache/headroom), so the chart's
#     ServiceMonitor and PrometheusRule can be validated by a real kube-apiserver.
# Versions: tests/k8s/monitoring.env. Idempotent (a stamp marks a complete folder; a warm run is
# instant and prints nothing); concurrent runs wait for each other (flock).
#
#   bash tests/scripts/install-prometheus.sh            # install what is missing
#   bash tests/scripts/install-prometheus.sh --check    # exit 1 (quietly) when something is missing
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/scripts/env.sh
. "$here/env.sh"

check=false
for arg in "$@"; do
    case "$arg" in
    --check) check=true ;;
    *)
        echo "install-prometheus.sh: unknown argument '$arg' (expected --check)" >&2
        exit 64
        ;;
    esac
done

die() {
    printf 'install-prometheus.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

home="$HEADROOM_PROMETHEUS_OPERATOR_HOME"
stamp="$(printf '%s\n%s\n' "$PROMETHEUS_OPERATOR_VERSION" "$(declare -f die)" | sha256sum | cut -d' ' -f1)"
crds_ok() { [ -f "$home/.headroom-stamp" ] && [ "$(cat "$home/.headroom-stamp")" = "$stamp" ]; }
prom_ok() { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }

if $check; then
    crds_ok && prom_ok
    exit $?
fi

# --- Debian's prometheus ---------------------------------------------------------------------------
if ! prom_ok; then
    as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
    export DEBIAN_FRONTEND=noninteractive
    log="$(mktemp)"
    if ! { as_root apt-get update -q && as_root apt-get install -y -q --no-install-recommends prometheus; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        rm -f "$log"
        die "apt-get install prometheus"
    fi
    rm -f "$log"
    prom_ok || die "apt-get installed prometheus, but 'prometheus' or 'promtool' is not on PATH"
fi

# --- prometheus-operator's CRDs from its Go module -------------------------------------------------
if ! crds_ok; then
    command -v go >/dev/null 2>&1 || die "no 'go' on PATH: the CRDs come from the Go module proxy"
    mkdir -p "$HEADROOM_CACHE"
    exec 8>"$HEADROOM_CACHE/.prometheus-operator-install.lock"
    flock 8
    if ! crds_ok; then
        module="github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION"
        out="$(cd / && go mod download -json "$module" 2>&1)" || true
        src="$(printf '%s\n' "$out" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
        if [ -z "$src" ] || [ ! -d "$src/example/prometheus-operator-crd" ]; then
            printf '%s\n' "$out" | sed 's/^/    /' >&2
            die "go mod download $module (no example/prometheus-operator-crd in it)"
        fi
        tmp="$home.tmp.$$"
        rm -rf "$home".tmp.*
        mkdir -p "$tmp/crds"
        cp "$src"/example/prometheus-operator-crd/*.yaml "$tmp/crds/"
        chmod 0644 "$tmp"/crds/*.yaml
        [ -f "$tmp/crds/monitoring.coreos.com_servicemonitors.yaml" ] &&
            [ -f "$tmp/crds/monitoring.coreos.com_prometheusrules.yaml" ] ||
            die "$module has no ServiceMonitor or PrometheusRule CRD"
        echo "$stamp" >"$tmp/.headroom-stamp"
        rm -rf "$home"
        mv "$tmp" "$home"
    fi
fi

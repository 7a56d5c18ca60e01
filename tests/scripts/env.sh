# shellcheck shell=bash
# tests/scripts/env.sh - the single source of truth for where the Celery test
# bed lives. Source it from bash:
#
#     . tests/scripts/env.sh
#
# It exports:
#   HEADROOM_ROOT            the repository root
#   HEADROOM_CACHE           ${HEADROOM_CACHE:-$HOME/.cache/headroom}
#   HEADROOM_CELERY_VERSION  the celery pin of tests/python/requirements.txt
#   HEADROOM_CELERY_VENV     $HEADROOM_CACHE/venv-celery-$HEADROOM_CELERY_VERSION
#   HEADROOM_CELERY_PYTHON   $HEADROOM_CELERY_VENV/bin/python
#   HEADROOM_CELERY_TOOL     tests/python/celery_tool.py (absolute path)
#   HEADROOM_KAFKA_VERSION   the Kafka version of tests/kafka/pom.xml
#   HEADROOM_KAFKA_HOME      $HEADROOM_CACHE/kafka-$HEADROOM_KAFKA_VERSION (jars in libs/)
#   HEADROOM_MOTO_VERSION    the moto pin of tests/python/requirements-moto.txt
#   HEADROOM_MOTO_VENV       $HEADROOM_CACHE/venv-moto-$HEADROOM_MOTO_VERSION
#
# Run it instead of sourcing it (`bash tests/scripts/env.sh`) and it prints
# those variables as NAME=value lines, e.g. for a test harness to read.
# It also exports the Kubernetes test bed's versions and folders (below).
# It installs nothing: tests/scripts/install-testbed.sh and install-k8s.sh do (and source this).

_headroom_env_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HEADROOM_ROOT="$(cd "$_headroom_env_dir/../.." && pwd)"
HEADROOM_CACHE="${HEADROOM_CACHE:-${HOME:-/tmp}/.cache/headroom}"
HEADROOM_CELERY_REQUIREMENTS="$HEADROOM_ROOT/tests/python/requirements.txt"
HEADROOM_CELERY_VERSION="$(sed -n 's/^celery\(\[[^]]*\]\)\{0,1\}==\([0-9A-Za-z.+-]*\).*/\2/p' \
    "$HEADROOM_CELERY_REQUIREMENTS" 2>/dev/null | head -n 1)"
if [ -z "$HEADROOM_CELERY_VERSION" ]; then
    echo "env.sh: no 'celery==X' pin in $HEADROOM_CELERY_REQUIREMENTS" >&2
    HEADROOM_CELERY_VERSION=unknown
fi
HEADROOM_CELERY_VENV="$HEADROOM_CACHE/venv-celery-$HEADROOM_CELERY_VERSION"
HEADROOM_CELERY_PYTHON="$HEADROOM_CELERY_VENV/bin/python"
HEADROOM_CELERY_TOOL="$HEADROOM_ROOT/tests/python/celery_tool.py"
HEADROOM_KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\([^<]*\)</kafka.version>.*:\1:p' \
    "$HEADROOM_ROOT/tests/kafka/pom.xml" 2>/dev/null | head -n 1)"
HEADROOM_KAFKA_HOME="$HEADROOM_CACHE/kafka-${HEADROOM_KAFKA_VERSION:-unknown}"
HEADROOM_MOTO_REQUIREMENTS="$HEADROOM_ROOT/tests/python/requirements-moto.txt"
HEADROOM_MOTO_VERSION="$(sed -n 's/^moto\(\[[^]]*\]\)\{0,1\}==\([0-9A-Za-z.+-]*\).*/\2/p' \
    "$HEADROOM_MOTO_REQUIREMENTS" 2>/dev/null | head -n 1)"
HEADROOM_MOTO_VENV="$HEADROOM_CACHE/venv-moto-${HEADROOM_MOTO_VERSION:-unknown}"
export HEADROOM_KAFKA_VERSION HEADROOM_KAFKA_HOME HEADROOM_MOTO_REQUIREMENTS \
    HEADROOM_MOTO_VERSION HEADROOM_MOTO_VENV
export HEADROOM_ROOT HEADROOM_CACHE HEADROOM_CELERY_REQUIREMENTS \
    HEADROOM_CELERY_VERSION HEADROOM_CELERY_VENV HEADROOM_CELERY_PYTHON \
    HEADROOM_CELERY_TOOL
unset _headroom_env_dir

# --- Kubernetes test bed (versions in tests/k8s/versions.env; tests/scripts/install-k8s.sh builds) ---
#   HEADROOM_K8S_HOME        kubernetes-<v>/bin: kube-apiserver, kube-controller-manager,
#                            kube-scheduler, kubectl, etcd
#   HEADROOM_KEDA_HOME       keda-<v>/bin: keda-operator, keda-adapter; keda-<v>/crds/*.yaml
#   HEADROOM_KARPENTER_HOME  karpenter-<v>/crds/*.yaml (karpenter.sh and the kwok provider's)
#   HEADROOM_KWOK_HOME       kwok-<v>/bin/kwok and kwok-<v>/stages.yaml (kwok's "fast" stages)
#   HEADROOM_HELM_HOME       helm-<v>/bin/helm
#   HEADROOM_PROMETHEUS_OPERATOR_HOME  prometheus-operator-<v>/crds/*.yaml (tests/k8s/monitoring.env;
#                            tests/scripts/install-prometheus.sh fetches them with Debian's prometheus)
set -a
# shellcheck source=tests/k8s/versions.env
. "$HEADROOM_ROOT/tests/k8s/versions.env"
# shellcheck source=tests/k8s/monitoring.env
. "$HEADROOM_ROOT/tests/k8s/monitoring.env"
set +a
HEADROOM_K8S_HOME="$HEADROOM_CACHE/kubernetes-$KUBERNETES_VERSION-etcd-$ETCD_VERSION"
HEADROOM_KEDA_HOME="$HEADROOM_CACHE/keda-$KEDA_VERSION"
HEADROOM_KARPENTER_HOME="$HEADROOM_CACHE/karpenter-$KARPENTER_VERSION"
HEADROOM_KWOK_HOME="$HEADROOM_CACHE/kwok-$KWOK_VERSION"
HEADROOM_HELM_HOME="$HEADROOM_CACHE/helm-$HELM_VERSION"
HEADROOM_PROMETHEUS_OPERATOR_HOME="$HEADROOM_CACHE/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
export HEADROOM_K8S_HOME HEADROOM_KEDA_HOME HEADROOM_KARPENTER_HOME HEADROOM_KWOK_HOME \
    HEADROOM_HELM_HOME HEADROOM_PROMETHEUS_OPERATOR_HOME

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    for _headroom_var in HEADROOM_ROOT HEADROOM_CACHE HEADROOM_CELERY_VERSION \
        HEADROOM_CELERY_VENV HEADROOM_CELERY_PYTHON HEADROOM_CELERY_TOOL \
        HEADROOM_KAFKA_VERSION HEADROOM_KAFKA_HOME HEADROOM_MOTO_VERSION HEADROOM_MOTO_VENV\
        KUBERNETES_VERSION ETCD_VERSION KEDA_VERSION KARPENTER_VERSION KWOK_VERSION HELM_VERSION \
        HEADROOM_K8S_HOME HEADROOM_KEDA_HOME HEADROOM_KARPENTER_HOME HEADROOM_KWOK_HOME \
        HEADROOM_HELM_HOME PROMETHEUS_OPERATOR_VERSION HEADROOM_PROMETHEUS_OPERATOR_HOME; do
        printf '%s=%s\n' "$_headroom_var" "${!_headroom_var}"
    done
    unset _headroom_var
fi

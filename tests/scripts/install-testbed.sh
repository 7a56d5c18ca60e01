#!/usr/bin/env bash
# tests/scripts/install-testbed.sh - installs what Headroom's Celery/Redis
# tests need, on a fresh Debian machine or CI runner:
#   * Debian packages redis-server (+ redis-tools for redis-cli) and openssl,
#     via apt-get, only when missing (apt-get update runs only then; sudo is
#     used only when not root);
#   * python3 with venv support (Debian python3 + python3-venv) when missing;
#   * a virtualenv at $HEADROOM_CELERY_VENV (see env.sh:
#     ${HEADROOM_CACHE:-$HOME/.cache/headroom}/venv-celery-<version>) holding
#     the exact pins of tests/python/requirements.txt.
# Idempotent, prints nothing on success (errors and the failing command's
# output go to stderr), and takes well under 2 s when everything is there.
# The venv is rebuilt when requirements.txt changes (a stamp holds its hash).
# Set HEADROOM_PYTHON to choose the interpreter the venv is made from.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/scripts/env.sh
. "$here/env.sh"

# Runs a command, hiding its output unless it fails.
quiet() {
    local log rc=0
    log="$(mktemp)"
    "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "install-testbed.sh: failed ($rc): $*" >&2
        tail -n 50 "$log" >&2
    fi
    rm -f "$log"
    return "$rc"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

python_bin="${HEADROOM_PYTHON:-python3}"

# --- Debian packages -------------------------------------------------------
pkgs=()
command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || pkgs+=(redis-tools)
command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
if ! command -v "$python_bin" >/dev/null 2>&1; then
    python_bin=python3
    pkgs+=(python3 python3-venv)
elif ! "$python_bin" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    # Debian's python3 lacks ensurepip until python3-venv is installed.
    pkgs+=(python3-venv)
fi
if [ "${#pkgs[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    quiet as_root apt-get update -q
    quiet as_root apt-get install -y -q --no-install-recommends "${pkgs[@]}"
fi

# --- Celery virtualenv -----------------------------------------------------
venv="$HEADROOM_CELERY_VENV"
stamp="$venv/.headroom-requirements.sha256"
want="$(sha256sum "$HEADROOM_CELERY_REQUIREMENTS" | cut -d' ' -f1)"

venv_ok() {
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
        "$HEADROOM_CELERY_PYTHON" -c '' >/dev/null 2>&1
}

if ! venv_ok; then
    mkdir -p "$HEADROOM_CACHE"
    # Serialise concurrent installers (parallel test processes, say).
    exec 9>"$HEADROOM_CACHE/.venv-celery.lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9
    fi
    if ! venv_ok; then
        rm -rf "$venv"
        quiet "$python_bin" -m venv "$venv"
        quiet "$HEADROOM_CELERY_PYTHON" -m pip install -q --no-input \
            --disable-pip-version-check -r "$HEADROOM_CELERY_REQUIREMENTS"
        quiet "$HEADROOM_CELERY_PYTHON" -c 'import celery, kombu, redis'
        # Written last: its presence marks a complete install.
        printf '%s\n' "$want" >"$stamp"
    fi
    exec 9>&-
fi

# --- SQS and Kafka peers, and what rdkafka needs to build -----------------
bash "$here/install-brokers.sh"

# --- Prometheus (+ promtool) and prometheus-operator's CRDs, for the chart and dashboard tests ---
bash "$here/install-prometheus.sh"

#!/usr/bin/env bash
# tests/scripts/install-brokers.sh - installs what the SQS and Kafka sources need to build and be
# tested, on a fresh Debian machine or CI runner (tests/scripts/install-testbed.sh runs it):
#   * Debian packages, only when missing: libssl-dev and pkg-config (rdkafka's bundled librdkafka
#     links OpenSSL for TLS and SASL/SCRAM), make, a C compiler, a Java runtime (the Kafka
#     broker) and Maven (to fetch the broker from Maven Central);
#   * Apache Kafka's broker jars at $HEADROOM_KAFKA_HOME/libs (env.sh), from Maven Central by
#     `mvn dependency:copy-dependencies` on tests/kafka/pom.xml;
#   * moto's server (the SQS-compatible server) in a virtualenv at $HEADROOM_MOTO_VENV, from
#     PyPI with the pins of tests/python/requirements-moto.txt.
# Idempotent and quiet on success; each cache is keyed by the hash of what it was built from.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/scripts/env.sh
. "$here/env.sh"

quiet() {
    local log rc=0
    log="$(mktemp)"
    "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "install-brokers.sh: failed ($rc): $*" >&2
        tail -n 50 "$log" >&2
    fi
    rm -f "$log"
    return "$rc"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- Debian packages -------------------------------------------------------
pkgs=()
dpkg -s libssl-dev >/dev/null 2>&1 || pkgs+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
command -v make >/dev/null 2>&1 || pkgs+=(make)
command -v cc >/dev/null 2>&1 || pkgs+=(gcc libc6-dev)
command -v java >/dev/null 2>&1 || pkgs+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
if [ "${#pkgs[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    quiet as_root apt-get update -q
    quiet as_root apt-get install -y -q --no-install-recommends "${pkgs[@]}"
fi

mkdir -p "$HEADROOM_CACHE"

# --- Kafka broker jars -----------------------------------------------------
kafka_stamp="$HEADROOM_KAFKA_HOME/.headroom-pom.sha256"
kafka_want="$(sha256sum "$HEADROOM_ROOT/tests/kafka/pom.xml" | cut -d' ' -f1)"
kafka_ok() { [ -f "$kafka_stamp" ] && [ "$(cat "$kafka_stamp")" = "$kafka_want" ]; }
if ! kafka_ok; then
    exec 8>"$HEADROOM_CACHE/.kafka.lock"
    command -v flock >/dev/null 2>&1 && flock 8
    if ! kafka_ok; then
        rm -rf "$HEADROOM_KAFKA_HOME"
        mkdir -p "$HEADROOM_KAFKA_HOME/libs"
        quiet mvn -B -q -f "$HEADROOM_ROOT/tests/kafka/pom.xml" \
            -Dmaven.repo.local="$HEADROOM_CACHE/m2" \
            dependency:copy-dependencies -DoutputDirectory="$HEADROOM_KAFKA_HOME/libs" \
            -DincludeScope=runtime
        # The broker must at least print its version.
        quiet java -cp "$HEADROOM_KAFKA_HOME/libs/*" kafka.tools.StorageTool random-uuid
        printf '%s\n' "$kafka_want" >"$kafka_stamp"
    fi
    exec 8>&-
fi

# --- moto (SQS) ------------------------------------------------------------
moto_stamp="$HEADROOM_MOTO_VENV/.headroom-requirements.sha256"
moto_want="$(sha256sum "$HEADROOM_MOTO_REQUIREMENTS" | cut -d' ' -f1)"
moto_ok() {
    [ -f "$moto_stamp" ] && [ "$(cat "$moto_stamp")" = "$moto_want" ] &&
        [ -x "$HEADROOM_MOTO_VENV/bin/moto_server" ]
}
if ! moto_ok; then
    exec 7>"$HEADROOM_CACHE/.moto.lock"
    command -v flock >/dev/null 2>&1 && flock 7
    if ! moto_ok; then
        rm -rf "$HEADROOM_MOTO_VENV"
        quiet python3 -m venv "$HEADROOM_MOTO_VENV"
        quiet "$HEADROOM_MOTO_VENV/bin/python" -m pip install -q --no-input \
            --disable-pip-version-check -r "$HEADROOM_MOTO_REQUIREMENTS"
        printf '%s\n' "$moto_want" >"$moto_stamp"
    fi
    exec 7>&-
fi

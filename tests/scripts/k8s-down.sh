#!/usr/bin/env bash
# tests/scripts/k8s-down.sh [--keep] DIR - stops a cluster that k8s-up.sh started in DIR: every
# process listed in DIR/pids (etcd last; SIGTERM, then SIGKILL after 5 s), then removes DIR
# unless --keep. A pid is signalled only while its command line still names DIR, so a pid the
# system has since reused for another process is left alone. Safe to run twice.
set -euo pipefail

keep=false
if [ "${1:-}" = "--keep" ]; then
    keep=true
    shift
fi
dir="${1:?usage: k8s-down.sh [--keep] DIR}"
[ -d "$dir" ] || exit 0
dir="$(cd "$dir" && pwd)"

ours() { # PID: still one of this cluster's processes?
    [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF "$dir"
}

# stop PID... - SIGTERM, up to 5 s to exit, then SIGKILL.
stop() {
    local pid left
    for pid in "$@"; do
        ours "$pid" && kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in $(seq 100); do # 100 x 50 ms
        left=0
        for pid in "$@"; do
            ours "$pid" && left=1
        done
        [ "$left" -eq 0 ] && return
        sleep 0.05
    done
    for pid in "$@"; do
        ours "$pid" && kill -KILL "$pid" 2>/dev/null || true
    done
}

# Everything else first, etcd last, so the API server does not spend its shutdown on a lost etcd.
others=()
etcd=()
if [ -f "$dir/pids" ]; then
    while read -r pid name; do
        [[ "$pid" =~ ^[0-9]+$ ]] || continue
        if [ "$name" = etcd ]; then etcd+=("$pid"); else others+=("$pid"); fi
    done <"$dir/pids"
fi
[ "${#others[@]}" -eq 0 ] || stop "${others[@]}"
[ "${#etcd[@]}" -eq 0 ] || stop "${etcd[@]}"
rm -f "$dir/pids"
$keep || rm -rf "$dir"

#!/usr/bin/env bash
# tests/scripts/start-redis.sh PORT [extra redis-server args...]
#
# Starts a throw-away redis-server on 127.0.0.1:PORT in the background
# (no persistence: --save '' --appendonly no), waits until
# `redis-cli -p PORT ping` answers PONG (at most 5 s), and prints its PID on
# stdout. Stop it with `kill PID`.
#
# Extra arguments go to redis-server after the defaults, so they can override
# them. The server's own output goes to $HEADROOM_REDIS_LOG (default
# ${TMPDIR:-/tmp}/headroom-redis-PORT.log, appended to), whose end is shown
# on stderr if it fails to start. HEADROOM_REDIS_CLI_ARGS adds arguments to the redis-cli ping (for
# example "--tls --cacert ca.crt" when the extra args switch to TLS).
set -euo pipefail

if [ "$#" -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 PORT [extra redis-server args...]" >&2
    exit 2
fi
port="$1"
shift

command -v redis-server >/dev/null 2>&1 || {
    echo "start-redis.sh: redis-server not found (run tests/scripts/install-testbed.sh)" >&2
    exit 1
}

log="${HEADROOM_REDIS_LOG:-${TMPDIR:-/tmp}/headroom-redis-$port.log}"
# stdin/stdout/stderr are detached from ours, so `pid=$(start-redis.sh P)`
# returns instead of waiting for the server to close the pipe.
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no "$@" </dev/null >>"$log" 2>&1 &
pid=$!

read -r -a cli_args <<<"${HEADROOM_REDIS_CLI_ARGS:-}"
cli() { redis-cli -h 127.0.0.1 -p "$port" "${cli_args[@]}" "$@" 2>/dev/null || true; }
for _ in $(seq 100); do # 100 x 50 ms = 5 s
    if [ "$(cli ping)" = "PONG" ]; then
        # Make sure the server answering is ours, not one already on PORT.
        server_pid="$(cli info server | tr -d '\r' | sed -n 's/^process_id://p')"
        if [ "$server_pid" = "$pid" ]; then
            echo "$pid"
            exit 0
        fi
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "start-redis.sh: redis-server for port $port exited during start-up; end of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    sleep 0.05
done
echo "start-redis.sh: no PONG from our server on 127.0.0.1:$port within 5 s; log ($log):" >&2
tail -n 20 "$log" >&2
kill "$pid" 2>/dev/null || true
exit 1

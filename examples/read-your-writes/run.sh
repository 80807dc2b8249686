#!/usr/bin/env bash
# Read-your-writes end to end on throwaway services: a PostgreSQL cluster and a redis-server
# on free loopback ports, sluice with pipeline.yaml, and the example app; then 100 orders
# POSTed with curl, each answer checked to show its own write. Everything is stopped and
# deleted at the end, also on failure.
#
#   bash examples/read-your-writes/run.sh
#
# Builds sluice and the app with cargo (debug) unless SLUICE_BIN and APP_BIN name them.
# Needs the PostgreSQL server binaries (/usr/lib/postgresql/*/bin, or PG_BIN), redis-server,
# psql, curl, jq and python3 (for free ports). As root, PostgreSQL runs as `postgres`.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
orders="${ORDERS:-100}"

if [[ -z "${SLUICE_BIN:-}" || -z "${APP_BIN:-}" ]]; then
    (cd "$root" && cargo build -q -p sluice -p sluice-example-read-your-writes)
    target="${CARGO_TARGET_DIR:-$root/target}"
    SLUICE_BIN="${SLUICE_BIN:-$target/debug/sluice}"
    APP_BIN="${APP_BIN:-$target/debug/read-your-writes}"
fi
PG_BIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Run a PostgreSQL server tool, as `postgres` when we are root (it refuses to run as root).
pg() {
    if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$PG_BIN/$1" "${@:2}"; else "$PG_BIN/$1" "${@:2}"; fi
}
# Poll `$@` every 100 ms until it succeeds, for at most $1 seconds.
eventually() {
    local seconds=$1; shift
    for _ in $(seq $((seconds * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "run.sh: gave up waiting for: $*" >&2
    return 1
}

work="$(mktemp -d /tmp/sluice-ryw.XXXXXX)"
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -d "$work/pg" ]]; then pg pg_ctl -D "$work/pg" -m fast stop >/dev/null 2>&1 || true; fi
    if [[ $status != 0 ]]; then
        echo "run.sh: failed; the end of each log:" >&2
        for log in "$work"/*.log; do echo "== $log" >&2; tail -n 20 "$log" >&2; done
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# PostgreSQL with logical decoding, on a free port.
pg_port=$(free_port)
if [[ $(id -u) == 0 ]]; then chown postgres: "$work"; fi
pg initdb -D "$work/pg" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
cat >>"$work/pg/postgresql.conf" <<EOF
port = $pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
wal_level = logical
fsync = off
EOF
echo "host replication all 127.0.0.1/32 trust" >>"$work/pg/pg_hba.conf"
pg pg_ctl -D "$work/pg" -l "$work/postgres.log" -w start >/dev/null
export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -f "$here/schema.sql"

# Redis, in memory only.
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --logfile "$work/redis.log" &
pids+=($!)
export REDIS_URL="redis://127.0.0.1:$redis_port"
eventually 10 redis-cli -p "$redis_port" ping

# sluice, its state beside its copy of the pipeline file.
export SLUICE_ADMIN="127.0.0.1:$(free_port)"
cp "$here/pipeline.yaml" "$work/pipeline.yaml"
"$SLUICE_BIN" run "$work/pipeline.yaml" 2>"$work/sluice.log" &
pids+=($!)
eventually 60 curl -sf "http://$SLUICE_ADMIN/readyz"

# The application.
export LISTEN="127.0.0.1:$(free_port)"
"$APP_BIN" 2>"$work/app.log" &
pids+=($!)
eventually 30 bash -c "exec 3<>/dev/tcp/${LISTEN%:*}/${LISTEN#*:}"

# Each answer must carry the order just written, read back from the cache.
waits=()
for i in $(seq "$orders"); do
    customer="customer-$i"
    total="$i.25"
    answer=$(curl -sS --fail-with-body -X POST "http://$LISTEN/orders" \
        -H 'content-type: application/json' \
        -d "{\"customer\": \"$customer\", \"total\": $total}") || {
        echo "run.sh: order $i failed: $answer" >&2
        exit 1
    }
    if ! jq -e --arg c "$customer" --arg t "$(printf '%.2f' "$total")" \
        '.order.id == .id and .order.customer == $c and .order.total == $t' \
        <<<"$answer" >/dev/null; then
        echo "run.sh: order $i: the cache does not show its own write: $answer" >&2
        exit 1
    fi
    waits+=("$(jq -r .waited_ms <<<"$answer")")
done
printf '%s\n' "${waits[@]}" | sort -g | awk -v n="$orders" '
    { w[NR] = $1 }
    END { printf "run.sh: %d orders, each read its own write from the cache; wait p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
          n, w[int((n + 1) * 0.5)], w[int((n - 1) * 0.99) + 1], w[n] }'

#!/usr/bin/env bash
# One instance under load: starts a release server with a fresh store,
# runs the load generator against it, stops the server.
#   bench/single.sh sqlite|postgres [loadgen options...]
# e.g. bench/single.sh sqlite --tcp 1000 --senders 20 --rate 100 --duration 10
# PostgreSQL mode creates (and drops) its own database on 127.0.0.1:5432.
# Extra server settings can be passed in SERVER_ENV ("KEY=VALUE KEY=VALUE");
# BENCH_TCP_PORT and BENCH_HTTP_PORT move the server off 19401/13401 (to
# run two benchmarks side by side).
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:?usage: bench/single.sh sqlite|postgres [loadgen options...]}
shift
cargo build --release --quiet -p baby-discord -p loadgen
out=${CARGO_TARGET_DIR:-target}/release

data=$(mktemp -d)
tcp_port=${BENCH_TCP_PORT:-19401}
http_port=${BENCH_HTTP_PORT:-13401}
env=(DATA_DIR="$data" MSG_RATE=0 TCP_PORT="$tcp_port" HTTP_PORT="$http_port" LOG_LEVEL=warn)
db=""
if [ "$store" = postgres ]; then
  db="bench_$$"
  psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" postgres
  env+=(DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db")
fi
# shellcheck disable=SC2206
env+=(${SERVER_ENV:-})

env "${env[@]}" "$out/baby-discord" &
pid=$!
cleanup() {
  kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  [ -n "$db" ] && psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres
  rm -rf "$data"
}
trap cleanup EXIT
for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/"$tcp_port") 2>/dev/null && break; sleep 0.1; done

"$out/loadgen" --targets 127.0.0.1:"$tcp_port":"$http_port" --server-pid "$pid" "$@"

#!/usr/bin/env bash
# Three instances on one PostgreSQL and one Redis under load; clients and
# senders are spread across them.
#   bench/three.sh [loadgen options...]
# e.g. bench/three.sh --tcp 1000 --senders 20 --rate 100 --duration 10
# Needs PostgreSQL on 127.0.0.1:5432 (user postgres) and Redis on 6379 (or
# REDIS_URL, e.g. redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003);
# creates and drops its own database and uses its own Redis prefix.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p baby-discord -p loadgen
out=${CARGO_TARGET_DIR:-target}/release

db="bench3_$$"
psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" postgres
pids=()
targets=()
cleanup() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres
}
trap cleanup EXIT
for i in 1 2 3; do
  env DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}" \
      REDIS_PREFIX="bench$$" INSTANCE_ID="$i" MSG_RATE=0 TCP_PORT="1960$i" HTTP_PORT="1360$i" \
      LOG_LEVEL=warn "$out/baby-discord" &
  pids+=("$!")
  targets+=("127.0.0.1:1960$i:1360$i")
done
for i in 1 2 3; do
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/1960$i) 2>/dev/null && break; sleep 0.1; done
done

"$out/loadgen" --targets "$(IFS=,; echo "${targets[*]}")" --server-pid "$(IFS=,; echo "${pids[*]}")" "$@"

#!/usr/bin/env bash
# Runs three Baby Discord instances as one service:
#   instance 1: nc localhost 9001, http://localhost:3001/
#   instance 2: nc localhost 9002, http://localhost:3002/
#   instance 3: nc localhost 9003, http://localhost:3003/
# They share PostgreSQL (DATABASE_URL) and Redis (REDIS_URL); the defaults
# match docker-compose.yml. REDIS_URL may name a Redis Cluster:
#   REDIS_URL=redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 ./run-instances.sh
# Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")"

export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@localhost:5432/baby_discord}"
export REDIS_URL="${REDIS_URL:-redis://localhost:6379}"

cargo build --release --bin baby-discord
server=${CARGO_TARGET_DIR:-target}/release/baby-discord

# One clear line (per service) instead of starting half a service.
status=0
"$server" check || status=$?
if [ "$status" -eq 3 ]; then
  # PostgreSQL answers but the database is missing: create it (what
  # 'createdb baby_discord' would do), then check again.
  echo "run-instances.sh: creating the missing database (as 'createdb' would)"
  "$server" createdb
  status=0
  "$server" check || status=$?
fi
if [ "$status" -ne 0 ]; then
  echo "run-instances.sh: PostgreSQL and Redis must be running first: 'docker compose up -d' starts both (or set DATABASE_URL and REDIS_URL)." >&2
  exit 1
fi

pids=()
stop() {
  trap - INT TERM
  echo "stopping all instances..."
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM

for i in 1 2 3; do
  INSTANCE_ID="$i" TCP_PORT="900$i" HTTP_PORT="300$i" \
    "$server" > >(sed -u "s/^/[instance $i] /") 2>&1 &
  pids+=("$!")
done
echo "three instances: nc localhost 9001|9002|9003, http://localhost:3001|3002|3003/ (Ctrl-C stops all)"

# If one instance exits on its own, stop the others too.
wait -n "${pids[@]}" || true
stop

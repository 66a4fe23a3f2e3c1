#!/usr/bin/env bash
# Redis ingress per instance with many rooms: three instances on one
# PostgreSQL and one Redis, 30 rooms, each instance's clients in 10 of
# them, one sender per room (30 x 10 msg/s = 300 msg/s by default).
#   bench/rooms.sh [seconds] [clients per room]
# Prints each instance's bus bytes in (from /metrics) and, for comparison,
# the bytes a subscriber of the old single shared channel (<prefix>:events)
# would have received: every room's traffic.
# BIN=path/to/baby-discord runs another build (one without per-room
# channels reports no bus metrics; the shared-channel figure still applies).
# REDIS_URL selects the Redis (a redis+cluster:// URL for a cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
clients=${2:-5}
cargo build --release --quiet -p baby-discord -p loadgen
out=${CARGO_TARGET_DIR:-target}/release
bin=${BIN:-$out/baby-discord}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379}

db="benchrooms_$$"
prefix="benchrooms$$"
psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" postgres
pids=()
loads=()
tap=$(mktemp)
cleanup() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres
  rm -f "$tap"
}
trap cleanup EXIT
for i in 1 2 3; do
  env DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" REDIS_URL="$redis_url" \
      REDIS_PREFIX="$prefix" INSTANCE_ID="$i" MSG_RATE=0 TCP_PORT="1970$i" HTTP_PORT="1370$i" \
      LOG_LEVEL=warn "$bin" &
  pids+=("$!")
done
for i in 1 2 3; do
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/1970$i) 2>/dev/null && break; sleep 0.1; done
done
# What a subscriber of the old shared channel receives (PUBLISH reaches
# every node of a cluster, so any one node will do).
tap_port=$(echo "$redis_url" | sed -E 's#^[a-z+]+://([^,/]*).*#\1#' | awk -F: '{print $2}')
stdbuf -oL redis-cli -p "${tap_port:-6379}" --csv SUBSCRIBE "$prefix:events" > "$tap" &
tap_pid=$!

for i in 1 2 3; do
  for r in $(seq 1 10); do
    room="r$(( (i - 1) * 10 + r ))"
    "$out/loadgen" --targets "127.0.0.1:1970$i:1370$i" --room "$room" --tcp "$clients" --senders 1 \
      --rate 10 --duration "$duration" --nick-prefix "$room" --connect-rate 200 > "/tmp/benchrooms_$$_$room.log" 2>&1 &
    loads+=("$!")
  done
done
failed=0
for pid in "${loads[@]}"; do wait "$pid" || failed=$((failed + 1)); done
kill "$tap_pid" 2>/dev/null || true
sent=$(cat /tmp/benchrooms_$$_r*.log | grep -ciE '^lost|loss' || true)
echo "loadgen runs failed (loss or errors): $failed of ${#loads[@]}"
grep -h -iE 'delivered|lost|p99' /tmp/benchrooms_$$_r1.log | head -5 || true
for i in 1 2 3; do
  m=$(curl -s "http://127.0.0.1:1370$i/metrics" | grep -E '^baby_discord_bus_(bytes|messages)_total\{direction="in"\}' | tr '\n' ' ' || true)
  echo "instance $i: ${m:-no bus metrics in this build}"
done
shared=$(python3 -c '
import csv,sys
n=b=0
for row in csv.reader(open(sys.argv[1]), escapechar="\\", doublequote=False):
    if len(row)==3 and row[0]=="message":
        n+=1; b+=len(row[2].encode())
print(f"old shared channel: {n} messages, {b} bytes per instance")' "$tap")
echo "$shared"
rm -f /tmp/benchrooms_$$_r*.log

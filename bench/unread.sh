#!/usr/bin/env bash
# The unread-count figure: a registered user in ROOMS rooms asks
# GET /api/rooms (last message, unread and mentions per room) over a store
# of MESSAGES messages. Seeds a fresh store with `baby-discord seed-unread`
# (release build), starts a release server on it, logs the user in, times
# REQUESTS sequential requests with curl, prints min/median/p95/max, and
# searches once. Then stops the server and removes the store.
#   bench/unread.sh sqlite|postgres
# e.g. ROOMS=100 MESSAGES=1000000 REQUESTS=200 bench/unread.sh sqlite
# PostgreSQL mode creates (and drops) its own database on 127.0.0.1:5432.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:?usage: bench/unread.sh sqlite|postgres}
rooms=${ROOMS:-100}
messages=${MESSAGES:-1000000}
requests=${REQUESTS:-200}
cargo build --release --quiet -p baby-discord
out=${CARGO_TARGET_DIR:-target}/release

data=$(mktemp -d)
env=(DATA_DIR="$data" MSG_RATE=0 TCP_PORT=19411 HTTP_PORT=13411 LOG_LEVEL=warn)
db=""
if [ "$store" = postgres ]; then
  db="bench_unread_$$"
  psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" postgres
  env+=(DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db")
fi
pid=""
cleanup() {
  [ -n "$pid" ] && { kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; }
  [ -n "$db" ] && psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres
  rm -rf "$data"
}
trap cleanup EXIT

env "${env[@]}" "$out/baby-discord" seed-unread --rooms "$rooms" --messages "$messages" --user bench --password benchpassword
if [ "$store" = postgres ]; then
  psql -q -h 127.0.0.1 -U postgres -c "VACUUM ANALYZE" "$db"
fi
env "${env[@]}" "$out/baby-discord" &
pid=$!
api=http://127.0.0.1:13411
for _ in $(seq 1 100); do curl -sf "$api/api/health" >/dev/null && break; sleep 0.1; done

session=$(curl -sf -X POST "$api/api/connect" -H 'Content-Type: application/json' \
  -d '{"nickname":"bench","password":"benchpassword"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["sessionId"])')
# One answer, to show what is measured.
curl -sf "$api/api/rooms?sessionId=$session" | python3 -c '
import json, sys
rooms = json.load(sys.stdin)["data"]["rooms"]
bench = [r for r in rooms if r["name"].startswith("bench-")]
print(f"{len(rooms)} rooms listed; e.g. {bench[0]}")
print("unread total:", sum(r["unread"] for r in bench), " mentions total:", sum(r["mentions"] for r in bench))'
for _ in $(seq 1 20); do curl -sf -o /dev/null "$api/api/rooms?sessionId=$session"; done   # warm-up
for _ in $(seq 1 "$requests"); do
  curl -sf -o /dev/null -w '%{time_total}\n' "$api/api/rooms?sessionId=$session"
done | sort -n | awk '{ t[NR] = $1 * 1000 } END {
  printf "GET /api/rooms (%d requests, one at a time): min %.2f ms, median %.2f ms, p95 %.2f ms, max %.2f ms\n",
    NR, t[1], t[int((NR + 1) / 2)], t[int(NR * 0.95)], t[NR] }'
for q in "apple+deploy" "zebra"; do
  curl -sf -o /dev/null -w "GET /api/rooms/bench-007/search?q=$q: %{time_total} s\n" \
    "$api/api/rooms/bench-007/search?q=$q&limit=10&sessionId=$session"
done

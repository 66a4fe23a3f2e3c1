#!/usr/bin/env bash
# Paired comparison: runs benchmark A and benchmark B alternately N times
# (A B A B …, or B A B A … when START=B) and prints every run and the
# medians. On a shared two-core machine single p99 figures swing several
# times from run to run; alternating the two and comparing medians of many
# pairs is what makes "B is no worse than A" a measurement.
#   bench/compare.sh N 'A command' 'B command'
# Each command is one of the bench scripts with its loadgen options, e.g.
#   bench/compare.sh 8 'bench/single.sh sqlite --sse 1000 --tcp 0 --senders 20 --rate 100 --duration 10' \
#                      'bench/single.sh sqlite --ws 1000 --tcp 0 --senders 20 --rate 100 --duration 10'
# `--json` is added to both; every run's full report is kept in
# $OUT (default a new temporary directory), named a1.txt, b1.txt, ….
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?usage: bench/compare.sh N 'A command' 'B command'}
a=${2:?missing A command}
b=${3:?missing B command}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
cargo build --release --quiet -p baby-discord -p loadgen

run() { # label index command
  local file="$out/$1$2.txt"
  # shellcheck disable=SC2086
  if ! $3 --json >"$file" 2>&1; then echo "run $1$2 failed (exit code kept in $file)" >&2; fi
  echo "  $1$2 done ($(uptime | sed 's/.*load average: //'))" >&2
}
for i in $(seq 1 "$n"); do
  if [ "${START:-A}" = B ]; then run b "$i" "$b"; run a "$i" "$a"; else run a "$i" "$a"; run b "$i" "$b"; fi
done

python3 - "$out" "$n" "$a" "$b" <<'EOF'
import json, statistics, sys
out, n, cmds = sys.argv[1], int(sys.argv[2]), {"a": sys.argv[3], "b": sys.argv[4]}
def load(label, i):
    for line in open(f"{out}/{label}{i}.txt"):
        if line.startswith('{"targets"'):
            return json.loads(line)
    return None
runs = {k: [load(k, i) for i in range(1, n + 1)] for k in "ab"}
print(f"reports in {out}")
for k in "ab":
    print(f"{k.upper()}: {cmds[k]}")
fields = [("p50 ms", lambda r: r["latency_ms"]["p50"]), ("p99 ms", lambda r: r["latency_ms"]["p99"]),
          ("max ms", lambda r: r["latency_ms"]["max"]), ("lost", lambda r: r["lost"]),
          ("KiB/conn", lambda r: r["kib_per_connection"]), ("CPU s", lambda r: r["server_cpu_s"])]
print("pair | " + " | ".join(f"{name} A/B" for name, _ in fields))
for i in range(n):
    ra, rb = runs["a"][i], runs["b"][i]
    cell = lambda f, r: "—" if r is None or f(r) is None else f"{f(r):g}"
    print(f"{i + 1} | " + " | ".join(f"{cell(f, ra)}/{cell(f, rb)}" for _, f in fields))
def med(k, f):
    vals = [f(r) for r in runs[k] if r is not None and f(r) is not None]
    return statistics.median(vals) if vals else None
print("median | " + " | ".join(f"{med('a', f)}/{med('b', f)}" for _, f in fields))
pairs = [(ra["latency_ms"]["p99"], rb["latency_ms"]["p99"]) for ra, rb in zip(runs["a"], runs["b"]) if ra and rb]
if pairs:
    ratios = sorted(b / a for a, b in pairs)
    print(f"p99 B/A per pair: {', '.join(f'{r:.2f}' for r in ratios)}; median ratio {statistics.median(ratios):.2f}")
lost = sum(r["lost"] for k in "ab" for r in runs[k] if r)
failed = sum(1 for k in "ab" for r in runs[k] if r is None)
print(f"lost deliveries over all runs: {lost}; runs without a report: {failed}")
EOF

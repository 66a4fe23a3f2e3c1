#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 60), one after another, and
# fails if any of them finds a crash, a failed property or a hang.
#   fuzz/run.sh [seconds] [target...]
# Needs cargo-fuzz (`cargo install --locked cargo-fuzz`). New inputs the
# fuzzer finds go to fuzz/corpus/<target>/ (only the seed-* files there are
# committed); a failing input is saved under fuzz/artifacts/<target>/.
set -uo pipefail
fuzz_dir="$(cd "$(dirname "$0")" && pwd)"
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(commands cleaning line_reader http_head json_bodies search_query)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: cargo-fuzz is missing; install it with: cargo install --locked cargo-fuzz" >&2
  exit 2
fi

# libFuzzer needs nightly flags; this lets the stable toolchain pass them.
# No sanitizer: the code under test is safe Rust, and this runs faster.
export RUSTC_BOOTSTRAP=1
fuzz() { cargo fuzz "$1" --fuzz-dir "$fuzz_dir" --sanitizer none "${@:2}"; }

fuzz build || exit 1

failed=()
logs="$(mktemp -d)"
for target in "${targets[@]}"; do
  mkdir -p "$fuzz_dir/corpus/$target"
  echo "== $target: ${seconds}s"
  dict=()
  if [ -f "$fuzz_dir/$target.dict" ]; then dict=(-dict="$fuzz_dir/$target.dict"); fi
  fuzz run "$target" -- -max_total_time="$seconds" -timeout=30 -print_final_stats=1 "${dict[@]}" \
    >"$logs/$target.log" 2>&1
  status=$?
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$target.log" | grep -o '[0-9]*$' | tail -n 1)"
  done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$logs/$target.log" | tail -n 1)"
  echo "   executions: ${runs:-?}  ${done_line}"
  if [ $status -ne 0 ]; then
    failed+=("$target")
    echo "   FAILED (exit $status); the end of its log:"
    tail -n 40 "$logs/$target.log" | sed 's/^/   | /'
  fi
done
rm -rf "$logs"

if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz/run.sh: failures in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz/run.sh: every target ran ${seconds}s without a failure"

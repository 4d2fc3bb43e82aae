#!/usr/bin/env bash
# Runs every fuzz_* binary of a WSGATE_FUZZ build for a bounded time, each on
# a scratch copy of its seed corpus (so CI never writes into the repository).
# Fails if any fuzzer finds a crash, a leak or a failed invariant; the
# reproducer is kept under the printed scratch directory and copied to
# $WSGATE_FUZZ_ARTIFACTS if set (for CI to upload).
#
#   tests/fuzz/run_fuzzers.sh <build-dir> <seconds-each>
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 <build-dir> <seconds-each>" >&2
  exit 2
fi
build_dir=$(cd "$1" && pwd)
seconds=$2
here=$(cd "$(dirname "$0")" && pwd)

shopt -s nullglob
fuzzers=("$build_dir"/fuzz_*)
if [[ ${#fuzzers[@]} -eq 0 ]]; then
  echo "no fuzz_* binaries in $build_dir (configure with -DWSGATE_FUZZ=ON and clang++)" >&2
  exit 2
fi

scratch=$(mktemp -d -t wsgate-fuzz.XXXXXX)
failed=()
for bin in "${fuzzers[@]}"; do
  [[ -x $bin && -f $bin ]] || continue
  name=$(basename "$bin")
  target=${name#fuzz_}
  corpus="$scratch/$target/corpus"
  artifacts="$scratch/$target/artifacts"
  mkdir -p "$corpus" "$artifacts"
  if [[ -d $here/corpus/$target ]]; then
    cp -r "$here/corpus/$target/." "$corpus/"
  fi
  args=(-max_total_time="$seconds" -artifact_prefix="$artifacts/" -print_final_stats=1)
  [[ -f $here/$target.dict ]] && args+=(-dict="$here/$target.dict")

  echo "=== $name: ${seconds}s, corpus $(ls "$corpus" | wc -l) inputs"
  # libFuzzer's own stderr is long; keep it in a log and show its tail.
  if "$bin" "${args[@]}" "$corpus" >"$scratch/$target/log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' \
      "$scratch/$target/log" || true
  else
    echo "!!! $name FAILED; log and reproducer under $scratch/$target" >&2
    tail -n 60 "$scratch/$target/log" >&2
    ls -l "$artifacts" >&2
    failed+=("$name")
    if [[ -n ${WSGATE_FUZZ_ARTIFACTS:-} ]]; then
      mkdir -p "$WSGATE_FUZZ_ARTIFACTS/$target"
      cp -r "$artifacts/." "$WSGATE_FUZZ_ARTIFACTS/$target/"
    fi
  fi
done

if [[ ${#failed[@]} -ne 0 ]]; then
  echo "fuzzers failed: ${failed[*]} (scratch kept: $scratch)" >&2
  exit 1
fi
rm -rf "$scratch"
echo "all fuzzers passed"

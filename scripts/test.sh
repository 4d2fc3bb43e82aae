#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test:
#   1. release build: unit, conformance and integration tests (ctest);
#   2. the same tests against an AddressSanitizer + UBSan build;
#   3. each libFuzzer target for a bounded time (clang);
#   4. the microbenchmarks, briefly (they must run; timings are not judged).
# WSGATE_FUZZ_SECONDS (default 30) bounds each fuzzer.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
jobs=$(nproc)

step() { printf '\n==== %s\n' "$*"; }

step "release build"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$jobs"
step "tests (release)"
ctest --test-dir build --output-on-failure -j "$jobs" --timeout 900

step "sanitizer build (ASan + UBSan)"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DWSGATE_SANITIZE=ON -DWSGATE_BENCH=OFF >/dev/null
cmake --build build-asan -j "$jobs"
step "tests (ASan + UBSan)"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j "$jobs" --timeout 900

step "fuzzers"
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DWSGATE_FUZZ=ON -DWSGATE_BENCH=OFF >/dev/null
cmake --build build-fuzz -j "$jobs" --target fuzz_handshake fuzz_frames
./tests/fuzz/run_fuzzers.sh build-fuzz "${WSGATE_FUZZ_SECONDS:-30}"

step "microbenchmarks (brief)"
./build/wsgate_bench --benchmark_min_time=0.05

step "all tests passed"

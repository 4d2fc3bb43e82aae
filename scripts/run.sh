#!/usr/bin/env bash
# Installs what is missing, builds, and starts one node on 127.0.0.1:8080
# with the embedded `local` transport (no Redis). Extra arguments go to wsgate.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DWSGATE_BENCH=OFF >/dev/null
cmake --build build --target wsgate
exec ./build/wsgate "$@"

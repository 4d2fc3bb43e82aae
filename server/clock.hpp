#pragma once
// The server's only clock: CLOCK_MONOTONIC in milliseconds. The event loop
// reads it once per iteration and passes the value to the core as now_ms.
#include <time.h>

#include <cstdint>

namespace wsgate::server {

inline uint64_t monotonic_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

}  // namespace wsgate::server

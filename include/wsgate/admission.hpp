#pragma once
// Decides whether a new connection may be upgraded: the node-wide cap and a
// fixed-window count of new connections per client IP. Sans-IO: the caller
// passes the IP as bytes and the time.
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>

#include "wsgate/limits.hpp"

namespace wsgate {

enum class Admission : uint8_t { ok, too_many_connections, rate_limited, draining };

class AdmissionControl {
 public:
  explicit AdmissionControl(const Limits& limits) : limits_(limits) {}

  // Called once per upgrade request, before the 101. ip is the raw address
  // (4 or 16 bytes). open_connections is the node's current count.
  Admission admit(std::string_view ip, uint64_t open_connections, uint64_t now_ms);
  // Forgets windows that ended. Costs what it forgets, not what it keeps:
  // it runs on every refusal of a full table, under a reconnect storm.
  void expire(uint64_t now_ms);
  size_t tracked_ips() const { return windows_.size(); }

 private:
  struct Window {
    uint64_t start_ms;
    uint32_t count;
  };
  const Limits& limits_;
  std::unordered_map<std::string, Window> windows_;
  // Every window start in time order. An entry whose IP has since started a
  // new window is stale and skipped; each start adds one entry, so the
  // queue holds at most the windows of one ip_window_ms.
  std::deque<std::pair<uint64_t, std::string>> starts_;
};

}  // namespace wsgate

#pragma once
// Decides whether a new connection may be upgraded: the node-wide cap, a
// fixed-window count of new connections per client IP, and a cap on the
// connections one client IP holds open at once. Sans-IO: the caller passes
// the IP as bytes and the time.
//
// A "client IP" is a key, not an address: IPv4 (and IPv4-mapped IPv6) by
// address, IPv6 by its leading ipv6_prefix_bits (default /64), because one
// subscriber gets a whole /64 and can rotate through it at will.
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "wsgate/limits.hpp"

namespace wsgate {

enum class Admission : uint8_t {
  ok,
  too_many_connections,  // 503: the node is full
  rate_limited,          // 429: too many new connections from this IP
  draining,              // 503
  too_many_open_per_ip,  // 429: this IP holds max_open_connections_per_ip
  queue_budget,          // 503: the node's queued memory is near its budget
};

// The key the per-IP limits count under. ip: raw address bytes (4 or 16);
// anything else is used as is (tests name addresses freely). IPv4 keys and
// IPv6 keys are tagged apart, so a /32 can never pose as an IPv4 address.
std::string ip_key(std::string_view ip, uint32_t ipv6_prefix_bits);

class AdmissionControl {
 public:
  // One entry per client IP with open connections: key -> how many.
  using OpenIp = std::pair<const std::string, uint32_t>;

  explicit AdmissionControl(const Limits& limits) : limits_(limits) {}

  // Called once per upgrade request, before the 101. ip is the raw address
  // (4 or 16 bytes). open_connections is the node's current count.
  Admission admit(std::string_view ip, uint64_t open_connections, uint64_t now_ms);
  // A connection from ip was opened: it counts against
  // max_open_connections_per_ip until release() is given what this returns.
  OpenIp* hold(std::string_view ip);
  void release(OpenIp* held);
  // Forgets windows that ended. Costs what it forgets, not what it keeps:
  // it runs on every refusal of a full table, under a reconnect storm.
  void expire(uint64_t now_ms);
  size_t tracked_ips() const { return windows_.size(); }
  // Client IPs holding connections; bounded by the open connections.
  size_t open_ips() const { return open_.size(); }
  uint32_t open_from(std::string_view ip) const;

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
  // Map nodes are stable: a connection holds a pointer to its entry.
  std::unordered_map<std::string, uint32_t> open_;
};

}  // namespace wsgate

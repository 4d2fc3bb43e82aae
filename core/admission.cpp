#include "wsgate/admission.hpp"
#include "wsgate/assert.hpp"

namespace wsgate {

namespace {
constexpr char ipv4_tag = 4;
constexpr char ipv6_tag = 6;

// ::ffff:a.b.c.d (RFC 4291 2.5.5.2): an IPv4 client on a dual-stack socket.
bool is_v4_mapped(std::string_view ip) {
  for (size_t i = 0; i < 10; ++i)
    if (ip[i] != 0) return false;
  return uint8_t(ip[10]) == 0xFF && uint8_t(ip[11]) == 0xFF;
}
}  // namespace

std::string ip_key(std::string_view ip, uint32_t ipv6_prefix_bits) {
  if (ip.size() == 4) return std::string(1, ipv4_tag).append(ip);
  if (ip.size() != 16) return std::string(ip);
  if (is_v4_mapped(ip)) return std::string(1, ipv4_tag).append(ip.substr(12));
  const uint32_t bits = ipv6_prefix_bits == 0 || ipv6_prefix_bits > 128 ? 128 : ipv6_prefix_bits;
  // Only the prefix's bytes are kept (a /64 key is 9 bytes: no allocation).
  std::string key(1, ipv6_tag);
  key.append(ip.substr(0, (bits + 7) / 8));
  if (bits % 8) key.back() = char(uint8_t(key.back()) & uint8_t(0xFF << (8 - bits % 8)));
  return key;
}

Admission AdmissionControl::admit(std::string_view ip, uint64_t open_connections, uint64_t now_ms) {
  if (open_connections >= limits_.max_connections) return Admission::too_many_connections;
  const std::string key = ip_key(ip, limits_.ipv6_prefix_bits);
  if (auto o = open_.find(key); o != open_.end() && o->second >= limits_.max_open_connections_per_ip)
    return Admission::too_many_open_per_ip;
  auto it = windows_.find(key);
  if (it == windows_.end()) {
    if (windows_.size() >= limits_.max_tracked_ips) {
      expire(now_ms);
      // Still full of live windows: refuse rather than let an address in
      // untracked, which would turn a flood of addresses into a bypass.
      if (windows_.size() >= limits_.max_tracked_ips) return Admission::rate_limited;
    }
    windows_.emplace(key, Window{now_ms, 1});
    starts_.emplace_back(now_ms, key);
    return Admission::ok;
  }
  Window& w = it->second;
  if (now_ms - w.start_ms >= limits_.ip_window_ms) {
    w = Window{now_ms, 0};
    starts_.emplace_back(now_ms, it->first);
  }
  if (w.count >= limits_.max_connections_per_ip) return Admission::rate_limited;
  ++w.count;
  return Admission::ok;
}

AdmissionControl::OpenIp* AdmissionControl::hold(std::string_view ip) {
  OpenIp& entry = *open_.try_emplace(ip_key(ip, limits_.ipv6_prefix_bits), 0).first;
  ++entry.second;
  return &entry;
}

void AdmissionControl::release(OpenIp* held) {
  if (!held) return;
  WSGATE_ASSERT(held->second > 0);
  if (--held->second == 0) open_.erase(open_.find(held->first));  // not by key: the key lives in the node
}

uint32_t AdmissionControl::open_from(std::string_view ip) const {
  auto it = open_.find(ip_key(ip, limits_.ipv6_prefix_bits));
  return it == open_.end() ? 0 : it->second;
}

void AdmissionControl::expire(uint64_t now_ms) {
  while (!starts_.empty() && now_ms - starts_.front().first >= limits_.ip_window_ms) {
    auto it = windows_.find(starts_.front().second);
    if (it != windows_.end() && it->second.start_ms == starts_.front().first) windows_.erase(it);
    starts_.pop_front();
  }
}

}  // namespace wsgate

#include "wsgate/admission.hpp"

namespace wsgate {

Admission AdmissionControl::admit(std::string_view ip, uint64_t open_connections, uint64_t now_ms) {
  if (open_connections >= limits_.max_connections) return Admission::too_many_connections;
  auto it = windows_.find(std::string(ip));
  if (it == windows_.end()) {
    if (windows_.size() >= limits_.max_tracked_ips) {
      expire(now_ms);
      // Still full of live windows: refuse rather than let an address in
      // untracked, which would turn a flood of addresses into a bypass.
      if (windows_.size() >= limits_.max_tracked_ips) return Admission::rate_limited;
    }
    windows_.emplace(std::string(ip), Window{now_ms, 1});
    starts_.emplace_back(now_ms, std::string(ip));
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

void AdmissionControl::expire(uint64_t now_ms) {
  while (!starts_.empty() && now_ms - starts_.front().first >= limits_.ip_window_ms) {
    auto it = windows_.find(starts_.front().second);
    if (it != windows_.end() && it->second.start_ms == starts_.front().first) windows_.erase(it);
    starts_.pop_front();
  }
}

}  // namespace wsgate

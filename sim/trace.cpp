#include "trace.hpp"

namespace wsgate::sim {

const char* trace_kind_name(TraceKind k) {
  static constexpr const char* names[] = {
      "connect_try", "rejected", "opened", "sent_direct", "sent_broadcast", "got_direct", "got_broadcast",
      "got_error", "server_close", "client_leave", "closed", "dropped", "vanished", "crash", "restart",
      "partition", "heal", "drain", "drained_exit", "stall", "unstall", "storm", "node_join", "phase",
      "bus_drop", "bus_dup", "tick", "close_timeout",
  };
  static_assert(sizeof(names) / sizeof(names[0]) == size_t(TraceKind::count_));
  return size_t(k) < size_t(TraceKind::count_) ? names[size_t(k)] : "?";
}

std::string Trace::format(const TraceRecord& r) {
  char line[160];
  std::snprintf(line, sizeof line, "t=%llu.%03llus %-14s a=%llu b=%llu c=%llu",
                (unsigned long long)(r.time_ms / 1000), (unsigned long long)(r.time_ms % 1000),
                trace_kind_name(r.kind), (unsigned long long)r.a, (unsigned long long)r.b,
                (unsigned long long)r.c);
  return line;
}

std::string Trace::recent(const char* indent) const {
  std::string out;
  const uint64_t first = count_ > ring_size ? count_ - ring_size : 0;
  for (uint64_t i = first; i < count_; ++i) {
    out += indent;
    out += format(ring_[i % ring_size]);
    out += '\n';
  }
  return out;
}

}  // namespace wsgate::sim

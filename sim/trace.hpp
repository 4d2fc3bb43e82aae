#pragma once
// The run's trace: every observable step (a connection opened, a message
// delivered, a node crashed...) is folded into a 64-bit FNV-1a hash, so two
// runs are byte-for-byte identical exactly when their hashes agree, and the
// last steps are kept in a small ring to print next to a violation. Steps
// are recorded as numbers and turned into text only when printed: a run
// records millions of them and formats a few dozen.
#include <array>
#include <cstdint>
#include <cstdio>
#include <string>

namespace wsgate::sim {

enum class TraceKind : uint8_t {
  connect_try,    // a: client, b: node
  rejected,       // a: client, b: node, c: admission
  opened,         // a: client, b: node, c: slot index
  sent_direct,    // a: client, b: message id, c: target user
  sent_broadcast, // a: client, b: broadcast id, c: 1 if accepted
  got_direct,     // a: client, b: message id
  got_broadcast,  // a: client, b: broadcast id
  got_error,      // a: client
  server_close,   // a: client (or ~0 for a zombie), b: node, c: close code
  client_leave,   // a: client, b: node
  closed,         // a: node, b: slot index
  dropped,        // a: client, b: node (connection lost without a close)
  vanished,       // a: client, b: node
  crash,          // a: node
  restart,        // a: node, b: incarnation
  partition,      // a: node
  heal,           // a: node
  drain,          // a: node
  drained_exit,   // a: node
  stall,          // a: node
  unstall,        // a: node
  storm,          // a: clients dropped
  node_join,      // a: node
  phase,          // a: phase
  bus_drop,       // a: node, b: why (0 partition, 1 stall)
  bus_dup,        // a: node
  tick,           // a: node, b: connections
  close_timeout,  // a: node, b: slot index (no close frame from the client in time)
  count_
};

const char* trace_kind_name(TraceKind k);

struct TraceRecord {
  uint64_t time_ms;
  TraceKind kind;
  uint64_t a, b, c;
};

class Trace {
 public:
  static constexpr size_t ring_size = 24;

  void record(uint64_t time_ms, TraceKind kind, uint64_t a = 0, uint64_t b = 0, uint64_t c = 0) {
    const TraceRecord r{time_ms, kind, a, b, c};
    mix(time_ms);
    mix(uint64_t(kind));
    mix(a);
    mix(b);
    mix(c);
    ring_[count_ % ring_size] = r;
    ++count_;
    if (echo_) std::fprintf(echo_, "%s\n", format(r).c_str());
  }

  uint64_t hash() const { return hash_; }
  uint64_t count() const { return count_; }
  // Prints every record as it happens (--trace): for diffing two runs.
  void echo_to(FILE* f) { echo_ = f; }

  static std::string format(const TraceRecord& r);
  // The last records, oldest first, one per line, each prefixed by indent.
  std::string recent(const char* indent) const;

 private:
  // FNV-1a over the eight bytes of v, little-endian regardless of host.
  void mix(uint64_t v) {
    for (int i = 0; i < 8; ++i, v >>= 8) {
      hash_ ^= v & 0xFF;
      hash_ *= 0x100000001B3ull;
    }
  }
  uint64_t hash_ = 0xCBF29CE484222325ull;
  uint64_t count_ = 0;
  std::array<TraceRecord, ring_size> ring_{};
  FILE* echo_ = nullptr;
};

}  // namespace wsgate::sim

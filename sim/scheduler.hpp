#pragma once
// The discrete-event scheduler: virtual time in milliseconds and a queue of
// events ordered by (time, sequence number). The sequence number is the
// order of scheduling, so two events due at the same millisecond always run
// in the same order; nothing depends on heap internals or on addresses.
#include <cstdint>
#include <queue>
#include <vector>

namespace wsgate::sim {

// What an event is about; the simulation interprets the three operands.
enum class EventKind : uint8_t {
  client_connect,     // a: client, b: client epoch
  client_arrive,      // a: client, b: client epoch, c: node << 32 | node life
  client_act,         // a: client, b: client epoch
  client_close_frame, // a: node, b: node life, c: ConnId (index << 32 | generation): the client's close frame arrives
  conn_reset,         // a: node, b: node life, c: ConnId: a TCP reset reaches the node
  close_timeout,      // a: node, b: node life, c: ConnId: the peer did not answer our close in time
  node_tick,          // a: node, b: node life
  node_poll,          // a: node, b: node life
  node_slow_drain,    // a: node, b: node life
  node_restart,       // a: node
  node_heal,          // a: node, b: node life
  node_unstall,       // a: node, b: node life
  chaos,              // the fault injector picks its next fault
  broadcast_gen,      // the workload's next broadcast
  check_direct,       // a: direct message id (its window ended)
  check_broadcast,    // a: broadcast id (its window ended)
  check_periodic,     // bounded memory, presence convergence
  phase,              // a: the phase that begins
  scenario_step,      // a: step index of the named scenario
};

struct Event {
  uint64_t time_ms;
  uint64_t seq;
  EventKind kind;
  uint32_t a = 0;
  uint64_t b = 0;
  uint64_t c = 0;
};

class Scheduler {
 public:
  uint64_t now_ms() const { return now_ms_; }
  size_t pending() const { return queue_.size(); }
  uint64_t executed() const { return executed_; }

  // Schedules at an absolute time, never in the past.
  void at(uint64_t time_ms, EventKind kind, uint32_t a = 0, uint64_t b = 0, uint64_t c = 0) {
    queue_.push(Event{time_ms < now_ms_ ? now_ms_ : time_ms, next_seq_++, kind, a, b, c});
  }
  void after(uint64_t delay_ms, EventKind kind, uint32_t a = 0, uint64_t b = 0, uint64_t c = 0) {
    at(now_ms_ + delay_ms, kind, a, b, c);
  }

  // Takes the next event and advances the clock to it; false when empty.
  bool pop(Event& out) {
    if (queue_.empty()) return false;
    out = queue_.top();
    queue_.pop();
    now_ms_ = out.time_ms;
    ++executed_;
    return true;
  }
  uint64_t next_time_ms() const { return queue_.empty() ? UINT64_MAX : queue_.top().time_ms; }

 private:
  struct Later {
    bool operator()(const Event& x, const Event& y) const {
      return x.time_ms != y.time_ms ? x.time_ms > y.time_ms : x.seq > y.seq;
    }
  };
  std::priority_queue<Event, std::vector<Event>, Later> queue_;
  uint64_t now_ms_ = 0;
  uint64_t next_seq_ = 0;
  uint64_t executed_ = 0;
};

}  // namespace wsgate::sim

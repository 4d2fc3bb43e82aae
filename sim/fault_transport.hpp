#pragma once
// A Transport decorator that injects the bus faults the simulator needs,
// between a node's Gateway and its real transport (shm ring bus or local
// bus). The Gateway sees an ordinary Transport; the real transport sees an
// ordinary sink.
//
//   partition  while cut off, publishes return `unavailable`, arriving
//              messages are dropped, and the state change is reported to
//              the Gateway at the next poll (as a real transport reports a
//              lost backend from poll, never from inside a call).
//   delay      each arriving message is held for a random delay before it
//              reaches the Gateway. Holding is FIFO per publisher (a bus
//              never reorders one publisher's stream), so it reorders only
//              ACROSS publishers, as real network paths do.
//   duplicate  an arriving message is delivered twice (a retransmitting
//              bus); the Gateway's sequence numbers must drop the copy.
//
// Delays are applied on the receiving side so that the publisher's answer
// (accepted / backpressure / unavailable) stays the real transport's answer:
// a delayed publish that later failed would be a loss the sender never
// heard of, which no real transport does.
//
// Planted bug (test hook, never on by default): `resequence` rewrites the
// sequence number of every arriving envelope with a counter of its own, as a
// relay that re-stamps messages would. The Gateway's dedupe then lets
// duplicates through, and the simulator must notice.
#include <cstdint>
#include <map>
#include <queue>
#include <string>
#include <vector>

#include "rng.hpp"
#include "wsgate/transport.hpp"

namespace wsgate::sim {

// Shared by every node's decorator; the simulator changes it between phases
// (faults on, then a quiet phase to let the cluster settle).
struct BusFaults {
  uint32_t delay_max_ms = 0;
  uint32_t duplicate_ppm = 0;
  bool resequence_bug = false;
};

struct FaultCounters {
  uint64_t published = 0;
  uint64_t publish_backpressure = 0;
  uint64_t publish_unavailable = 0;  // refused by the backend, or cut off
  uint64_t publish_other_refused = 0;
  uint64_t received = 0;
  uint64_t dropped_cut_off = 0;
  uint64_t duplicated = 0;
  uint64_t delivered = 0;
};

class FaultTransport final : public Transport, private TransportSink {
 public:
  // inner must outlive this; faults is read at every message.
  FaultTransport(Transport& inner, Rng rng, const BusFaults& faults);
  ~FaultTransport() override;

  const char* name() const override { return inner_.name(); }
  void set_sink(TransportSink* sink) override { sink_ = sink; }
  void subscribe(std::string_view topic) override { inner_.subscribe(topic); }
  void unsubscribe(std::string_view topic) override { inner_.unsubscribe(topic); }
  PublishStatus publish(std::string_view topic, std::string_view payload) override;
  void set_presence(std::string_view user, uint32_t connections) override {
    inner_.set_presence(user, connections);
  }
  size_t poll(uint64_t now_ms) override;
  TransportState state() const override;

  void set_cut_off(bool cut_off) { cut_off_ = cut_off; }
  bool cut_off() const { return cut_off_; }
  // When a held message is due (UINT64_MAX: none held).
  uint64_t next_release_ms() const { return held_.empty() ? UINT64_MAX : held_.top().release_ms; }
  size_t held_count() const { return held_.size(); }
  const FaultCounters& counters() const { return counters_; }
  PublishStatus last_publish_status() const { return last_status_; }

 private:
  struct Held {
    uint64_t release_ms;
    uint64_t seq;  // arrival order: FIFO among equal release times
    std::string topic;
    std::string payload;
  };
  struct LaterRelease {
    bool operator()(const Held& x, const Held& y) const {
      return x.release_ms != y.release_ms ? x.release_ms > y.release_ms : x.seq > y.seq;
    }
  };

  void on_transport_message(std::string_view topic, std::string_view payload) override;
  void on_transport_state(TransportState) override {}  // read back through state()
  // Publish numbers are the inner transport's: every publish this decorator
  // answers accepted went through it, so the numbering is the same.
  void on_transport_publish_lost(uint64_t first, uint64_t count, PublishLoss why) override {
    if (sink_) sink_->on_transport_publish_lost(first, count, why);
  }
  void hold(std::string_view topic, std::string_view payload, uint64_t not_before_ms);
  void deliver(std::string_view topic, std::string_view payload);

  Transport& inner_;
  Rng rng_;
  const BusFaults& faults_;
  TransportSink* sink_ = nullptr;
  bool cut_off_ = false;
  TransportState reported_ = TransportState::connected;
  uint64_t now_ms_ = 0;
  uint64_t hold_seq_ = 0;
  std::priority_queue<Held, std::vector<Held>, LaterRelease> held_;
  // Per publisher (envelope origin), the release time of its latest held
  // message: later messages never overtake it. Pruned when all released.
  std::map<std::string, uint64_t, std::less<>> origin_release_ms_;
  std::map<std::string, uint64_t, std::less<>> resequence_counter_;
  std::string scratch_;
  PublishStatus last_status_ = PublishStatus::accepted;
  FaultCounters counters_;
};

}  // namespace wsgate::sim

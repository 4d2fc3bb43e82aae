#pragma once
// The embedded transport: nodes in one process, joined by a LocalBus. A
// single node on its own bus is the normal single-process server; several
// nodes on one bus are the simulator's cluster. Part of the sans-IO core: no
// threads, no I/O, no clock (time arrives as poll's now_ms).
//
// publish() enqueues one shared, immutable copy of topic + payload on every
// subscribed node's bounded inbound queue; each node's poll() delivers its
// queue in order. Like every Transport, neither class is thread-safe.
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "wsgate/limits.hpp"
#include "wsgate/string_hash.hpp"
#include "wsgate/transport.hpp"

namespace wsgate {

struct LocalBusOptions {
  // Per node: bytes (topic + payload) and messages waiting for its poll().
  // A node that stops polling fills its queue; publishes that would reach it
  // then return backpressure instead of growing memory without bound.
  // The server sets both from BufferLimits (limits.hpp, one flag each).
  uint64_t inbound_queue_max_bytes = BufferLimits{}.local_queue_max_bytes;
  uint32_t inbound_queue_max_messages = BufferLimits{}.local_queue_max_messages;
  // Larger publishes are refused (too_large). One message must fit an empty
  // queue, or a subscriber could never receive it.
  uint32_t max_payload_bytes = 16 * 1024 * 1024;
  uint32_t max_topic_bytes = transport_max_topic_bytes;
  // Topics one node may subscribe to at once (a node subscribes one topic
  // per connected user, so this follows Limits::max_connections).
  uint32_t max_subscriptions_per_node = 200000;
  // A node that has not polled for this long (by the latest time any node
  // polled with) no longer counts in presence: it crashed or is cut off.
  uint64_t presence_ttl_ms = 15000;
};

constexpr bool local_bus_options_are_consistent(const LocalBusOptions& o) {
  return o.inbound_queue_max_messages > 0 && o.max_topic_bytes > 0 &&
         o.inbound_queue_max_bytes >= uint64_t(o.max_payload_bytes) + o.max_topic_bytes &&
         o.max_subscriptions_per_node > 0 && o.presence_ttl_ms > 0;
}
static_assert(local_bus_options_are_consistent(LocalBusOptions{}));

struct LocalBusCounters {
  uint64_t published = 0;     // publishes accepted (no_subscribers included)
  uint64_t enqueued = 0;      // copies put on subscriber queues
  uint64_t backpressure = 0;  // publishes refused: a subscriber queue full
  uint64_t unavailable = 0;   // publishes refused: bus down or node cut off
  uint64_t too_large = 0;     // publishes refused: over the size limits
  // Messages not enqueued for a subscriber that was cut off at the time,
  // as Redis pub/sub loses them for a disconnected subscriber.
  uint64_t dropped_cut_off = 0;
};

struct LocalTransportCounters {
  uint64_t delivered = 0;
  // Queued before unsubscribe, polled after it: not delivered.
  uint64_t dropped_unsubscribed = 0;
  // subscribe() past max_subscriptions_per_node: not subscribed.
  uint64_t subscriptions_refused = 0;
};

class LocalTransport;

class LocalBus {
 public:
  explicit LocalBus(LocalBusOptions options = {});
  ~LocalBus();
  LocalBus(const LocalBus&) = delete;
  LocalBus& operator=(const LocalBus&) = delete;

  const LocalBusOptions& options() const { return options_; }
  const LocalBusCounters& counters() const { return counters_; }

  // The whole bus goes down (every publish: unavailable; nodes report
  // disconnected at their next poll) or comes back. A fault for tests and
  // the simulator; queued messages stay queued.
  void set_available(bool available) { available_ = available; }
  bool available() const { return available_; }

  // Presence of live nodes (node id → connections; see presence_ttl_ms).
  std::map<std::string, uint32_t> presence_of(std::string_view user) const;
  // Every user with a connection on a live node, sorted.
  std::vector<std::string> online_users() const;
  size_t node_count() const { return nodes_.size(); }

 private:
  friend class LocalTransport;
  struct Message {
    std::string bytes;  // topic then payload
    uint32_t topic_bytes;
  };
  using MessageRef = std::shared_ptr<const Message>;

  void attach(LocalTransport* node);
  void detach(LocalTransport* node);
  PublishStatus publish(LocalTransport* from, std::string_view topic, std::string_view payload);
  void observe_time(uint64_t now_ms);
  bool is_live(const LocalTransport& node) const;

  LocalBusOptions options_;
  LocalBusCounters counters_;
  std::vector<LocalTransport*> nodes_;  // attach order = delivery order
  bool available_ = true;
  // The latest now_ms any node polled with: the bus's idea of the time.
  uint64_t now_ms_ = 0;
};

class LocalTransport final : public Transport {
 public:
  // Attaches to bus (which must outlive this); detaches in the destructor,
  // dropping this node's queue, subscriptions and presence at once.
  LocalTransport(LocalBus& bus, std::string node_id);
  ~LocalTransport() override;
  LocalTransport(const LocalTransport&) = delete;
  LocalTransport& operator=(const LocalTransport&) = delete;

  const char* name() const override { return "local"; }
  void set_sink(TransportSink* sink) override { sink_ = sink; }
  void subscribe(std::string_view topic) override;
  void unsubscribe(std::string_view topic) override;
  PublishStatus publish(std::string_view topic, std::string_view payload) override;
  void set_presence(std::string_view user, uint32_t connections) override;
  size_t poll(uint64_t now_ms) override;
  TransportState state() const override;

  // A partition of this node alone (simulator fault): while cut off it
  // publishes nothing (unavailable), receives nothing (counted by the bus)
  // and stops refreshing its presence, as a node that lost Redis would.
  void set_cut_off(bool cut_off) { cut_off_ = cut_off; }

  const std::string& node_id() const { return node_id_; }
  const LocalTransportCounters& counters() const { return counters_; }
  bool is_subscribed(std::string_view topic) const;
  size_t subscription_count() const { return subscriptions_.size(); }
  size_t queued_messages() const { return queue_.size(); }
  uint64_t queued_bytes() const { return queued_bytes_; }

 private:
  friend class LocalBus;
  using StringSet = std::unordered_set<std::string, StringHash, std::equal_to<>>;
  using CountMap = std::unordered_map<std::string, uint32_t, StringHash, std::equal_to<>>;

  bool has_room_for(uint64_t message_bytes) const;
  void enqueue(LocalBus::MessageRef message);

  LocalBus& bus_;
  std::string node_id_;
  TransportSink* sink_ = nullptr;
  StringSet subscriptions_;
  CountMap presence_;  // user → connections on this node (never 0)
  std::deque<LocalBus::MessageRef> queue_;
  uint64_t queued_bytes_ = 0;
  uint64_t last_refresh_ms_ = 0;
  bool refreshed_ = false;  // a node that has not polled yet just joined: live
  bool cut_off_ = false;
  TransportState reported_state_ = TransportState::connected;
  LocalTransportCounters counters_;
};

}  // namespace wsgate

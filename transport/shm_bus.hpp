#pragma once
// The shared-memory ring bus: a Transport between nodes on one host, as
// threads of one process, separate processes, or the simulator's nodes.
//
// One Boost.Interprocess segment, named by the caller, holds:
//   - a node table: up to max_nodes slots, each with a generation (bumped on
//     every claim), the node id and a heartbeat time;
//   - one inbound ring per slot (ring_bytes each) of variable-length
//     records (topic + payload, 16-byte aligned, never split: a record that
//     would cross the end is preceded by a padding record);
//   - a topic table: hash(topic) → 64-bit mask of subscribed slots;
//   - a presence table: (user, slot) → connections.
// A robust process-shared mutex guards all of it, so a process killed while
// holding it does not stall the others. Readers deliver straight from their
// ring without the lock (single consumer: producers only write free space).
//
// Time comes in as now_ms (CLOCK_MONOTONIC ms between processes, virtual
// time in the simulator). A slot whose heartbeat is older than the node TTL
// is dead: publishes skip it, presence ignores it, and a joining node may
// reclaim it. A node that finds its own slot reclaimed or its heartbeat
// stale reports disconnected, rejoins, and reports connected, so its owner
// republishes presence, as after a Redis reconnect.
#include <cstdint>
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

// A topic's subscribers are one bit each in a 64-bit mask
// (shm_max_nodes_limit, limits.hpp).
inline constexpr uint32_t shm_record_align_bytes = 16;
inline constexpr uint32_t shm_max_topic_bytes = transport_max_topic_bytes;
static_assert(shm_record_overhead_bytes == shm_record_align_bytes + shm_max_topic_bytes);
inline constexpr uint32_t shm_max_node_id_bytes = 64;
inline constexpr uint32_t shm_max_user_bytes = 256;
static_assert(Limits{}.max_user_id_bytes <= shm_max_user_bytes, "every accepted user id must fit presence");

struct ShmBusOptions {
  // The segment's layout: used by the node that creates the segment; nodes
  // that open an existing segment adopt the layout stored in it.
  // The server sets each from its BufferLimits (limits.hpp, one flag each).
  uint32_t max_nodes = BufferLimits{}.shm_max_nodes;
  // Per node. The largest payload is ring_bytes minus one record header and
  // the longest topic, so that any accepted message fits an empty ring.
  uint32_t ring_bytes = BufferLimits{}.shm_ring_bytes;
  // Distinct topics subscribed by any node at once. Past it, a node's extra
  // subscriptions overflow: it receives every publish and filters locally
  // (slower, counted in topic_overflow, never lost).
  // The server derives both tables from its connection limits
  // (shm_topics_for, shm_presence_entries_for); these small defaults are
  // for tests and embedders.
  uint32_t max_topics = 65536;
  // (user, node) pairs; past it set_presence is refused and counted.
  uint32_t max_presence_entries = 16384;

  // Per node: a slot whose heartbeat (refreshed by poll) is older than this
  // is dead. Also how long presence of a crashed node lingers.
  uint64_t node_ttl_ms = 10000;
  // Topics one node may subscribe to at once (one per connected user).
  uint32_t max_subscriptions_per_node = 200000;
};

constexpr bool shm_bus_options_are_consistent(const ShmBusOptions& o) {
  return o.max_nodes > 0 && o.max_nodes <= shm_max_nodes_limit && o.ring_bytes % shm_record_align_bytes == 0 &&
         o.ring_bytes >= 4 * (shm_record_align_bytes + shm_max_topic_bytes) && o.max_topics > 0 &&
         o.max_topics <= shm_max_table_entries && o.max_presence_entries > 0 &&
         o.max_presence_entries <= shm_max_table_entries && o.node_ttl_ms > 0 && o.max_subscriptions_per_node > 0;
}
static_assert(shm_bus_options_are_consistent(ShmBusOptions{}));

// Shared by every node of the segment.
struct ShmBusCounters {
  uint64_t published = 0;     // publishes accepted (no_subscribers included)
  uint64_t enqueued = 0;      // records written to subscriber rings
  uint64_t backpressure = 0;  // publishes refused: a subscriber ring full
  uint64_t dropped_dead = 0;  // records not written for a dead subscriber
  uint64_t topic_overflow = 0;       // subscriptions that did not fit the table
  uint64_t presence_table_full = 0;  // set_presence refused: table full
  uint64_t slots_reclaimed = 0;      // dead nodes' slots taken by a joiner
  uint64_t lock_owner_died = 0;      // a process died holding the bus lock
};

// This node's own view.
struct ShmTransportCounters {
  uint64_t published = 0;
  uint64_t delivered = 0;
  uint64_t backpressure = 0;
  uint64_t unavailable = 0;
  uint64_t too_large = 0;
  // Records for a topic this node no longer subscribes to (unsubscribed
  // since, a hash collision, or overflow): filtered out.
  uint64_t filtered = 0;
  uint64_t subscriptions_refused = 0;  // past max_subscriptions_per_node
  uint64_t presence_refused = 0;       // user too long or table full
  uint64_t rejoins = 0;                // slot lost or heartbeat stale
};

class ShmBus {
 public:
  // Removes the named segment. Nodes still attached keep their mapping;
  // new nodes will create a fresh one. Returns false if there was none.
  static bool remove(const std::string& shm_name);

  // The segment's shared layout and one process's mapping of it; defined
  // in shm_bus.cpp only.
  struct Layout;
  struct Segment;
};

class ShmTransport final : public Transport {
 public:
  // Opens shm_name (creating it 0600 with options' layout if it does not
  // exist) and claims a node slot: the slot of a previous node with the same id
  // (a restart), else a free slot, else a dead one. Throws
  // std::runtime_error if every slot is held by a live node, if node_id is
  // empty or longer than shm_max_node_id_bytes, if the options are
  // inconsistent, or if the segment belongs to another user or has a mode
  // other than 0600 (others could read or write every message).
  ShmTransport(const std::string& shm_name, std::string node_id, const ShmBusOptions& options, uint64_t now_ms);
  // Releases the slot: subscriptions and presence go at once.
  ~ShmTransport() override;
  ShmTransport(const ShmTransport&) = delete;
  ShmTransport& operator=(const ShmTransport&) = delete;

  const char* name() const override { return "shm"; }
  void set_sink(TransportSink* sink) override { sink_ = sink; }
  void subscribe(std::string_view topic) override;
  void unsubscribe(std::string_view topic) override;
  PublishStatus publish(std::string_view topic, std::string_view payload) override;
  void set_presence(std::string_view user, uint32_t connections) override;
  size_t poll(uint64_t now_ms) override;
  TransportState state() const override;

  // Presence of live nodes (node id → connections), as of the last poll's
  // now_ms.
  std::map<std::string, uint32_t> presence_of(std::string_view user) const;
  std::vector<std::string> online_users() const;

  const std::string& node_id() const { return node_id_; }
  uint32_t slot() const { return slot_; }
  uint32_t max_payload_bytes() const;
  uint32_t max_nodes() const;
  // The segment's tables, as its creator sized them.
  uint32_t max_presence_entries() const;
  uint32_t max_topics() const;
  const ShmTransportCounters& counters() const { return counters_; }
  ShmBusCounters bus_counters() const;
  // Bytes waiting in this node's ring.
  uint64_t queued_bytes() const;

 private:
  using StringSet = std::unordered_set<std::string, StringHash, std::equal_to<>>;
  using CountMap = std::unordered_map<std::string, uint32_t, StringHash, std::equal_to<>>;
  // Topics of this node with one hash, and whether the hash made it into
  // the shared table (else it counts in this node's overflow).
  struct HashUse {
    uint32_t topics = 0;
    bool in_table = false;
  };

  bool claim_slot_locked(uint64_t now_ms, bool take_over_same_id);
  void release_slot_locked();
  void register_all_locked();
  void add_hash_locked(uint64_t hash, HashUse& use);
  void remove_hash_locked(uint64_t hash, HashUse& use);
  bool own_slot_locked() const;
  bool rejoin(uint64_t now_ms);
  void report_state(TransportState state);
  size_t deliver(uint64_t tail, uint64_t head);

  std::unique_ptr<ShmBus::Segment> segment_;
  std::string node_id_;
  ShmBusOptions options_;
  TransportSink* sink_ = nullptr;
  uint32_t slot_ = 0;
  uint64_t generation_ = 0;
  bool joined_ = false;  // false after the slot was found lost, until rejoin
  TransportState reported_state_ = TransportState::connected;
  uint64_t now_ms_ = 0;
  StringSet subscriptions_;
  std::unordered_map<uint64_t, HashUse> hashes_;
  uint32_t overflow_hashes_ = 0;
  CountMap presence_;  // user → connections on this node (never 0)
  ShmTransportCounters counters_;
};

}  // namespace wsgate

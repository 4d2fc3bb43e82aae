#include "shm_bus.hpp"

#include "wsgate/assert.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <boost/interprocess/managed_shared_memory.hpp>
#include <boost/interprocess/offset_ptr.hpp>
#include <boost/interprocess/permissions.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <stdexcept>

namespace bip = boost::interprocess;

namespace wsgate {
namespace shm_detail {

constexpr uint64_t segment_magic = 0x7773676174656231;  // "wsgateb1"
// Bumped whenever a shared struct changes, so that a node built from other
// sources refuses a segment instead of misreading it.
constexpr uint32_t layout_version = 1;
constexpr uint32_t record_magic = 0x52454331;
constexpr uint32_t pad_topic_bytes = 0xFFFFFFFF;
// Room for Boost's own bookkeeping (named-object index, allocator headers).
constexpr uint64_t segment_slack_bytes = 256 * 1024;
constexpr uint64_t shared_alignment_bytes = 64;
// The segment carries every user's messages and presence: only the user
// the nodes run as may map it.
constexpr mode_t segment_mode = 0600;

struct RecordHeader {
  uint32_t record_bytes;  // the whole record, header and padding included
  uint32_t topic_bytes;   // pad_topic_bytes: a padding record up to the ring's end
  uint32_t payload_bytes;
  uint32_t magic;
};
static_assert(sizeof(RecordHeader) == shm_record_align_bytes);

struct NodeSlot {
  uint64_t generation;    // bumped on every claim: a stale owner notices
  uint64_t heartbeat_ms;  // refreshed by the owner's poll
  // Bytes ever written to / consumed from the ring: positions are taken
  // modulo ring_bytes, and head - tail is what is queued.
  uint64_t head;
  uint64_t tail;
  uint32_t in_use;
  uint32_t node_id_bytes;
  char node_id[shm_max_node_id_bytes];
};

// Open addressing with linear probing; hash 0 marks an empty entry.
struct TopicEntry {
  uint64_t hash;
  uint64_t mask;  // bit s: node slot s subscribes
};

struct PresenceEntry {
  uint64_t hash;  // of the user
  uint32_t connections;
  uint16_t slot;
  uint16_t user_bytes;
  char user[shm_max_user_bytes];
};

// FNV-1a with a final mix: stable across builds and processes (std::hash
// promises neither), and 0 is reserved for "empty".
uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h == 0 ? 1 : h;
}

uint64_t align_up(uint64_t n, uint64_t alignment) { return (n + alignment - 1) / alignment * alignment; }

// Tables stay at most half full, which keeps probe runs short.
uint32_t table_slots_for(uint32_t entries) { return std::bit_ceil(uint32_t(std::max<uint64_t>(2ull * entries, 8))); }

uint64_t record_bytes_for(std::string_view topic, std::string_view payload) {
  return align_up(sizeof(RecordHeader) + topic.size() + payload.size(), shm_record_align_bytes);
}

bool is_live(const NodeSlot& n, uint64_t now_ms, uint64_t ttl_ms) {
  return n.in_use && (now_ms <= n.heartbeat_ms || now_ms - n.heartbeat_ms <= ttl_ms);
}

// Deletion without tombstones (backward shift): later entries of the probe
// run move into the hole unless their home lies cyclically after it.
template <class Entry>
void erase_at(Entry* table, uint64_t slot_mask, uint64_t hole) {
  uint64_t j = hole;
  for (;;) {
    j = (j + 1) & slot_mask;
    if (table[j].hash == 0) break;
    const uint64_t home = table[j].hash & slot_mask;
    const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (stays) continue;
    table[hole] = table[j];
    hole = j;
  }
  table[hole] = Entry{};
}

}  // namespace shm_detail

using namespace shm_detail;

// The segment's root object, found by name by every node.
struct ShmBus::Layout {
  uint64_t magic = 0;
  uint32_t version = 0;
  uint32_t max_nodes;
  uint32_t ring_bytes;
  uint32_t max_topics;
  uint32_t topic_slots;
  uint32_t max_presence_entries;
  uint32_t presence_slots;
  uint32_t topics_used = 0;
  uint32_t presence_used = 0;
  // Slots holding subscriptions that did not fit the topic table: they get
  // every publish and filter locally.
  uint64_t overflow_mask = 0;
  pthread_mutex_t mutex;
  ShmBusCounters counters;
  bip::offset_ptr<NodeSlot> nodes;
  bip::offset_ptr<TopicEntry> topics;
  bip::offset_ptr<PresenceEntry> presence;
  bip::offset_ptr<unsigned char> rings;

  // Runs once, in the creating process, under the segment's own lock (Boost
  // constructs named objects atomically), so openers see it whole.
  Layout(const ShmBusOptions& o, bip::managed_shared_memory::segment_manager* memory)
      : max_nodes(o.max_nodes),
        ring_bytes(o.ring_bytes),
        max_topics(o.max_topics),
        topic_slots(table_slots_for(o.max_topics)),
        max_presence_entries(o.max_presence_entries),
        presence_slots(table_slots_for(o.max_presence_entries)) {
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    // A process killed inside a critical section must not stall the host.
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    const int rc = pthread_mutex_init(&mutex, &attr);
    WSGATE_ASSERT(rc == 0);
    pthread_mutexattr_destroy(&attr);

    nodes = static_cast<NodeSlot*>(allocate(memory, sizeof(NodeSlot) * max_nodes));
    topics = static_cast<TopicEntry*>(allocate(memory, sizeof(TopicEntry) * topic_slots));
    presence = static_cast<PresenceEntry*>(allocate(memory, sizeof(PresenceEntry) * presence_slots));
    // Rings are not cleared: only bytes between tail and head are read.
    rings = static_cast<unsigned char*>(memory->allocate_aligned(uint64_t(ring_bytes) * max_nodes, shared_alignment_bytes));
    magic = segment_magic;
    version = layout_version;
  }

  static void* allocate(bip::managed_shared_memory::segment_manager* memory, uint64_t bytes) {
    void* p = memory->allocate_aligned(bytes, shared_alignment_bytes);
    std::memset(p, 0, bytes);
    return p;
  }

  // What creating the segment writes at once (every table is cleared); the
  // rings are written only as messages flow.
  static uint64_t table_bytes(const ShmBusOptions& o) {
    return segment_slack_bytes + sizeof(Layout) + sizeof(NodeSlot) * o.max_nodes +
           sizeof(TopicEntry) * table_slots_for(o.max_topics) +
           sizeof(PresenceEntry) * table_slots_for(o.max_presence_entries);
  }

  static uint64_t segment_bytes(const ShmBusOptions& o) {
    return segment_slack_bytes + sizeof(Layout) + sizeof(NodeSlot) * o.max_nodes +
           sizeof(TopicEntry) * table_slots_for(o.max_topics) +
           sizeof(PresenceEntry) * table_slots_for(o.max_presence_entries) + uint64_t(o.ring_bytes) * o.max_nodes +
           4 * shared_alignment_bytes;
  }
};

struct ShmBus::Segment {
  bip::managed_shared_memory memory;
  Layout* layout = nullptr;
  NodeSlot* nodes = nullptr;
  TopicEntry* topics = nullptr;
  PresenceEntry* presence = nullptr;

  unsigned char* ring(uint32_t slot) const { return layout->rings.get() + uint64_t(slot) * layout->ring_bytes; }
  uint64_t topic_mask() const { return layout->topic_slots - 1; }
  uint64_t presence_mask() const { return layout->presence_slots - 1; }
};

bool ShmBus::remove(const std::string& shm_name) { return bip::shared_memory_object::remove(shm_name.c_str()); }

namespace shm_detail {

// Holds the bus lock. EOWNERDEAD: the previous owner died inside; every
// write to shared state is ordered so that the state stays usable (a ring's
// head moves only after its record is whole), so we mark it consistent.
class BusLock {
 public:
  explicit BusLock(ShmBus::Layout& layout) : mutex_(&layout.mutex) {
    const int rc = pthread_mutex_lock(mutex_);
    if (rc == EOWNERDEAD) {
      pthread_mutex_consistent(mutex_);
      ++layout.counters.lock_owner_died;
    } else {
      WSGATE_ASSERT(rc == 0);
    }
  }
  ~BusLock() { pthread_mutex_unlock(mutex_); }
  BusLock(const BusLock&) = delete;
  BusLock& operator=(const BusLock&) = delete;

 private:
  pthread_mutex_t* mutex_;
};

TopicEntry* find_topic(const ShmBus::Segment& s, uint64_t hash) {
  const uint64_t mask = s.topic_mask();
  for (uint64_t i = hash & mask;; i = (i + 1) & mask) {
    if (s.topics[i].hash == hash) return &s.topics[i];
    if (s.topics[i].hash == 0) return nullptr;
  }
}

bool add_topic_bit(ShmBus::Segment& s, uint64_t hash, uint32_t slot) {
  const uint64_t mask = s.topic_mask();
  uint64_t i = hash & mask;
  for (; s.topics[i].hash != 0; i = (i + 1) & mask) {
    if (s.topics[i].hash == hash) {
      s.topics[i].mask |= uint64_t(1) << slot;
      return true;
    }
  }
  if (s.layout->topics_used >= s.layout->max_topics) return false;
  s.topics[i] = TopicEntry{hash, uint64_t(1) << slot};
  ++s.layout->topics_used;
  return true;
}

void clear_topic_bit(ShmBus::Segment& s, uint64_t hash, uint32_t slot) {
  TopicEntry* e = find_topic(s, hash);
  if (e == nullptr) return;
  e->mask &= ~(uint64_t(1) << slot);
  if (e->mask != 0) return;
  erase_at(s.topics, s.topic_mask(), uint64_t(e - s.topics));
  WSGATE_ASSERT(s.layout->topics_used > 0);
  --s.layout->topics_used;
}

bool same_user(const PresenceEntry& e, uint64_t hash, uint32_t slot, std::string_view user) {
  return e.hash == hash && e.slot == slot && std::string_view(e.user, e.user_bytes) == user;
}

// connections == 0 removes the entry. False: the table is full.
bool write_presence(ShmBus::Segment& s, uint32_t slot, std::string_view user, uint32_t connections) {
  const uint64_t hash = hash_bytes(user);
  const uint64_t mask = s.presence_mask();
  uint64_t i = hash & mask;
  for (; s.presence[i].hash != 0; i = (i + 1) & mask) {
    if (!same_user(s.presence[i], hash, slot, user)) continue;
    if (connections > 0) {
      s.presence[i].connections = connections;
    } else {
      erase_at(s.presence, mask, i);
      WSGATE_ASSERT(s.layout->presence_used > 0);
      --s.layout->presence_used;
    }
    return true;
  }
  if (connections == 0) return true;
  if (s.layout->presence_used >= s.layout->max_presence_entries) return false;
  PresenceEntry& e = s.presence[i];
  e.hash = hash;
  e.connections = connections;
  e.slot = uint16_t(slot);
  e.user_bytes = uint16_t(user.size());
  std::memcpy(e.user, user.data(), user.size());
  ++s.layout->presence_used;
  return true;
}

// Removes every trace of a slot (its owner left or died). Rebuilding the
// tables is simpler than deleting during a scan; it happens on join and
// leave only.
void purge_slot(ShmBus::Segment& s, uint32_t slot) {
  const uint64_t bit = uint64_t(1) << slot;
  s.layout->overflow_mask &= ~bit;
  std::vector<TopicEntry> topics;
  bool touched = false;
  for (uint64_t i = 0; i < s.layout->topic_slots; ++i) {
    TopicEntry e = s.topics[i];
    if (e.hash == 0) continue;
    touched |= (e.mask & bit) != 0;
    e.mask &= ~bit;
    if (e.mask != 0) topics.push_back(e);
  }
  if (touched) {
    std::memset(static_cast<void*>(s.topics), 0, sizeof(TopicEntry) * s.layout->topic_slots);
    s.layout->topics_used = 0;
    for (const TopicEntry& e : topics) {
      for (uint64_t b = e.mask; b != 0; b &= b - 1) {
        const bool added = add_topic_bit(s, e.hash, std::countr_zero(b));
        WSGATE_ASSERT(added);  // fewer entries than before the purge
      }
    }
  }
  std::vector<PresenceEntry> kept;
  touched = false;
  for (uint64_t i = 0; i < s.layout->presence_slots; ++i) {
    if (s.presence[i].hash == 0) continue;
    if (s.presence[i].slot == slot) {
      touched = true;
    } else {
      kept.push_back(s.presence[i]);
    }
  }
  if (touched) {
    std::memset(static_cast<void*>(s.presence), 0, sizeof(PresenceEntry) * s.layout->presence_slots);
    s.layout->presence_used = 0;
    for (const PresenceEntry& e : kept) {
      const bool written = write_presence(s, e.slot, std::string_view(e.user, e.user_bytes), e.connections);
      WSGATE_ASSERT(written);  // fewer entries than before the purge
    }
  }
}

// Makes room for a record at the ring's head. An empty ring is first
// realigned to its start, so that any record up to ring_bytes fits it.
// Returns false if the ring lacks room; pad_bytes is the padding record
// needed before it (the record would cross the end).
bool reserve_record(NodeSlot& n, uint64_t ring_bytes, uint64_t record_bytes, uint64_t& pad_bytes) {
  const uint64_t used = n.head - n.tail;
  WSGATE_ASSERT(used <= ring_bytes && n.head % shm_record_align_bytes == 0);
  if (used == 0 && n.head % ring_bytes != 0) {
    const uint64_t skip = ring_bytes - n.head % ring_bytes;
    n.head += skip;
    n.tail += skip;
  }
  const uint64_t offset = n.head % ring_bytes;
  pad_bytes = offset + record_bytes > ring_bytes ? ring_bytes - offset : 0;
  return used + pad_bytes + record_bytes <= ring_bytes;
}

// The header is written last-but-one and head moved last, so a reader (or
// a lock owner dying halfway) never sees a partial record.
void write_record(unsigned char* ring, NodeSlot& n, uint64_t ring_bytes, uint64_t pad_bytes, std::string_view topic,
                  std::string_view payload) {
  if (pad_bytes > 0) {
    const RecordHeader pad{uint32_t(pad_bytes), pad_topic_bytes, 0, record_magic};
    std::memcpy(ring + n.head % ring_bytes, &pad, sizeof pad);
    n.head += pad_bytes;
  }
  const uint64_t record_bytes = record_bytes_for(topic, payload);
  unsigned char* at = ring + n.head % ring_bytes;
  WSGATE_ASSERT(n.head % ring_bytes + record_bytes <= ring_bytes);
  std::memcpy(at + sizeof(RecordHeader), topic.data(), topic.size());
  if (!payload.empty()) std::memcpy(at + sizeof(RecordHeader) + topic.size(), payload.data(), payload.size());
  const RecordHeader header{uint32_t(record_bytes), uint32_t(topic.size()), uint32_t(payload.size()), record_magic};
  std::memcpy(at, &header, sizeof header);
  n.head += record_bytes;
}

bool record_is_valid(const RecordHeader& h, uint64_t pos, uint64_t head, uint64_t ring_bytes) {
  if (h.magic != record_magic || h.record_bytes < sizeof(RecordHeader) || h.record_bytes % shm_record_align_bytes != 0)
    return false;
  if (pos + h.record_bytes > head || pos % ring_bytes + h.record_bytes > ring_bytes) return false;
  if (h.topic_bytes == pad_topic_bytes) return true;
  return sizeof(RecordHeader) + uint64_t(h.topic_bytes) + h.payload_bytes <= h.record_bytes;
}

}  // namespace shm_detail

// Refuses a segment that another user owns (it could have planted it to
// read or inject messages) or that others may open (created by an earlier
// version with 0644, or chmod-ed). A wider segment is not narrowed in
// place: a process that mapped it meanwhile would keep reading, so the
// operator removes it, and the next node creates it 0600. Checked after
// Boost opened the name: in /dev/shm (sticky) nobody else can replace a
// file we own, so what we check is what we mapped.
void check_segment_is_private(const std::string& shm_name) {
  const std::string path = shm_name.starts_with('/') ? shm_name : "/" + shm_name;
  const int fd = shm_open(path.c_str(), O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("shm bus: segment '" + shm_name + "' vanished while opening it");
  struct stat st {};
  const int rc = fstat(fd, &st);
  close(fd);
  if (rc != 0) throw std::runtime_error("shm bus: cannot stat segment '" + shm_name + "'");
  if (st.st_uid != geteuid())
    throw std::runtime_error("shm bus: segment '" + shm_name + "' belongs to uid " + std::to_string(st.st_uid) +
                             ", not to this user; refusing it");
  if ((st.st_mode & 0777) != segment_mode) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", unsigned(st.st_mode & 0777));
    throw std::runtime_error("shm bus: segment '" + shm_name + "' has mode " + mode +
                             " (others may map it); stop its nodes and remove /dev/shm" + path +
                             ", the next node creates it 0600");
  }
}

// /dev/shm is often small (64 MiB in a container by default), and the
// presence table grows with max_connections. Clearing the tables of a new
// segment past the free space would kill the node with SIGBUS: say why
// instead. (Advisory: something else may fill /dev/shm meanwhile.)
void check_room_to_create(const std::string& shm_name, uint64_t table_bytes) {
  const std::string path = shm_name.starts_with('/') ? shm_name : "/" + shm_name;
  if (const int fd = shm_open(path.c_str(), O_RDONLY | O_CLOEXEC, 0); fd >= 0) {
    close(fd);
    return;  // it exists: its creator wrote the tables
  }
  struct statvfs vfs {};
  if (statvfs("/dev/shm", &vfs) != 0) return;
  const uint64_t free_bytes = uint64_t(vfs.f_bavail) * vfs.f_frsize;
  if (free_bytes >= table_bytes) return;
  throw std::runtime_error("shm bus: creating segment '" + shm_name + "' needs " +
                           std::to_string(table_bytes >> 20) + " MiB of /dev/shm for its tables, " +
                           std::to_string(free_bytes >> 20) +
                           " MiB are free: lower the presence table (--shm-presence-max-entries, or "
                           "--max-connections) or enlarge /dev/shm");
}

// --- ShmTransport: joining and leaving ---------------------------------------

ShmTransport::ShmTransport(const std::string& shm_name, std::string node_id, const ShmBusOptions& options,
                           uint64_t now_ms)
    : node_id_(std::move(node_id)), options_(options), now_ms_(now_ms) {
  if (!shm_bus_options_are_consistent(options_)) throw std::runtime_error("shm bus: inconsistent options");
  if (node_id_.empty() || node_id_.size() > shm_max_node_id_bytes)
    throw std::runtime_error("shm bus: node id must be 1.." + std::to_string(shm_max_node_id_bytes) + " bytes");
  check_room_to_create(shm_name, ShmBus::Layout::table_bytes(options_));
  segment_ = std::make_unique<ShmBus::Segment>();
  segment_->memory = bip::managed_shared_memory(bip::open_or_create, shm_name.c_str(),
                                                ShmBus::Layout::segment_bytes(options_), nullptr,
                                                bip::permissions(segment_mode));
  check_segment_is_private(shm_name);
  ShmBus::Layout* layout = segment_->memory.find_or_construct<ShmBus::Layout>("wsgate.bus")(
      options_, segment_->memory.get_segment_manager());
  if (layout->magic != segment_magic || layout->version != layout_version)
    throw std::runtime_error("shm bus: segment '" + shm_name + "' has another layout; remove it");
  segment_->layout = layout;
  segment_->nodes = layout->nodes.get();
  segment_->topics = layout->topics.get();
  segment_->presence = layout->presence.get();
  BusLock lock(*layout);
  if (!claim_slot_locked(now_ms, true))
    throw std::runtime_error("shm bus: all " + std::to_string(layout->max_nodes) + " node slots are held by live nodes");
  joined_ = true;
}

ShmTransport::~ShmTransport() {
  BusLock lock(*segment_->layout);
  if (own_slot_locked()) release_slot_locked();
}

// A node restarted under the same id takes over its predecessor's slot. A
// node rejoining after its slot was lost does not: if a live slot holds its
// id, a newer instance owns it, and taking it back would make the two
// evict each other forever.
bool ShmTransport::claim_slot_locked(uint64_t now_ms, bool take_over_same_id) {
  ShmBus::Segment& s = *segment_;
  const uint32_t n = s.layout->max_nodes;
  auto pick = [&]() -> int {
    for (uint32_t i = 0; i < n; ++i) {
      const NodeSlot& slot = s.nodes[i];
      if (!slot.in_use || std::string_view(slot.node_id, slot.node_id_bytes) != node_id_) continue;
      if (take_over_same_id) return int(i);
      if (is_live(slot, now_ms, options_.node_ttl_ms)) return -1;
    }
    for (uint32_t i = 0; i < n; ++i)
      if (!s.nodes[i].in_use) return int(i);
    for (uint32_t i = 0; i < n; ++i)
      if (!is_live(s.nodes[i], now_ms, options_.node_ttl_ms)) return int(i);
    return -1;
  };
  const int chosen = pick();
  if (chosen < 0) return false;
  NodeSlot& slot = s.nodes[chosen];
  if (slot.in_use) ++s.layout->counters.slots_reclaimed;
  purge_slot(s, uint32_t(chosen));
  ++slot.generation;
  slot.in_use = 1;
  slot.heartbeat_ms = now_ms;
  slot.head = slot.tail = 0;
  slot.node_id_bytes = uint32_t(node_id_.size());
  std::memcpy(slot.node_id, node_id_.data(), node_id_.size());
  slot_ = uint32_t(chosen);
  generation_ = slot.generation;
  return true;
}

void ShmTransport::release_slot_locked() {
  purge_slot(*segment_, slot_);
  segment_->nodes[slot_].in_use = 0;
}

bool ShmTransport::own_slot_locked() const {
  const NodeSlot& slot = segment_->nodes[slot_];
  return slot.in_use && slot.generation == generation_;
}

// After a rejoin the shared tables know nothing of this node: put back
// every subscription and presence entry it holds.
void ShmTransport::register_all_locked() {
  overflow_hashes_ = 0;
  for (auto& [hash, use] : hashes_) add_hash_locked(hash, use);
  for (const auto& [user, connections] : presence_) {
    if (!write_presence(*segment_, slot_, user, connections)) {
      ++counters_.presence_refused;
      ++segment_->layout->counters.presence_table_full;
    }
  }
}

void ShmTransport::add_hash_locked(uint64_t hash, HashUse& use) {
  use.in_table = add_topic_bit(*segment_, hash, slot_);
  if (use.in_table) return;
  ++segment_->layout->counters.topic_overflow;
  if (overflow_hashes_++ == 0) segment_->layout->overflow_mask |= uint64_t(1) << slot_;
}

void ShmTransport::remove_hash_locked(uint64_t hash, HashUse& use) {
  if (use.in_table) {
    clear_topic_bit(*segment_, hash, slot_);
    return;
  }
  WSGATE_ASSERT(overflow_hashes_ > 0);
  if (--overflow_hashes_ == 0) segment_->layout->overflow_mask &= ~(uint64_t(1) << slot_);
}

void ShmTransport::report_state(TransportState state) {
  if (state == reported_state_) return;
  reported_state_ = state;
  if (sink_ != nullptr) sink_->on_transport_state(state);
}

// The slot was reclaimed (this node looked dead): messages sent meanwhile
// are gone, so the owner hears disconnected, then connected once the node
// holds a slot again with every subscription back.
bool ShmTransport::rejoin(uint64_t now_ms) {
  report_state(TransportState::disconnected);
  {
    BusLock lock(*segment_->layout);
    if (!claim_slot_locked(now_ms, false)) return false;
    register_all_locked();
  }
  joined_ = true;
  ++counters_.rejoins;
  report_state(TransportState::connected);
  return true;
}

TransportState ShmTransport::state() const {
  return joined_ ? TransportState::connected : TransportState::disconnected;
}

// --- ShmTransport: the hot path ---------------------------------------------

void ShmTransport::subscribe(std::string_view topic) {
  if (subscriptions_.contains(topic)) return;
  if (subscriptions_.size() >= options_.max_subscriptions_per_node || topic.size() > shm_max_topic_bytes) {
    ++counters_.subscriptions_refused;
    return;
  }
  subscriptions_.emplace(topic);
  const uint64_t hash = hash_bytes(topic);
  HashUse& use = hashes_[hash];
  if (use.topics++ > 0 || !joined_) return;
  BusLock lock(*segment_->layout);
  if (own_slot_locked()) {
    add_hash_locked(hash, use);
  } else {
    joined_ = false;  // poll() reports it and rejoins with this subscription
  }
}

void ShmTransport::unsubscribe(std::string_view topic) {
  auto it = subscriptions_.find(topic);
  if (it == subscriptions_.end()) return;
  subscriptions_.erase(it);
  const uint64_t hash = hash_bytes(topic);
  auto use = hashes_.find(hash);
  WSGATE_ASSERT(use != hashes_.end() && use->second.topics > 0);
  if (--use->second.topics > 0) return;
  if (joined_) {
    BusLock lock(*segment_->layout);
    if (own_slot_locked()) {
      remove_hash_locked(hash, use->second);
    } else {
      joined_ = false;
    }
  }
  hashes_.erase(use);
}

uint32_t ShmTransport::max_payload_bytes() const {
  return segment_->layout->ring_bytes - uint32_t(sizeof(RecordHeader)) - shm_max_topic_bytes;
}

uint32_t ShmTransport::max_nodes() const { return segment_->layout->max_nodes; }

uint32_t ShmTransport::max_presence_entries() const { return segment_->layout->max_presence_entries; }

uint32_t ShmTransport::max_topics() const { return segment_->layout->max_topics; }

// All-or-nothing: either every live subscriber's ring takes the record or
// none does, so backpressure never means "delivered to some".
PublishStatus ShmTransport::publish(std::string_view topic, std::string_view payload) {
  if (topic.size() > shm_max_topic_bytes || payload.size() > max_payload_bytes()) {
    ++counters_.too_large;
    return PublishStatus::too_large;
  }
  if (!joined_) {
    ++counters_.unavailable;
    return PublishStatus::unavailable;
  }
  ShmBus::Segment& s = *segment_;
  ShmBus::Layout& layout = *s.layout;
  const uint64_t ring_bytes = layout.ring_bytes;
  const uint64_t record_bytes = record_bytes_for(topic, payload);
  uint64_t pad_bytes[shm_max_nodes_limit];
  BusLock lock(layout);
  if (!own_slot_locked()) {
    joined_ = false;
    ++counters_.unavailable;
    return PublishStatus::unavailable;
  }
  uint64_t mask = layout.overflow_mask;
  if (const TopicEntry* e = find_topic(s, hash_bytes(topic))) mask |= e->mask;
  uint64_t targets = 0;
  uint64_t dead = 0;
  for (uint64_t b = mask; b != 0; b &= b - 1) {
    const uint32_t i = uint32_t(std::countr_zero(b));
    NodeSlot& node = s.nodes[i];
    if (i != slot_ && !is_live(node, now_ms_, options_.node_ttl_ms)) {
      dead |= uint64_t(1) << i;
      continue;
    }
    if (!reserve_record(node, ring_bytes, record_bytes, pad_bytes[i])) {
      ++layout.counters.backpressure;
      ++counters_.backpressure;
      return PublishStatus::backpressure;
    }
    targets |= uint64_t(1) << i;
  }
  for (uint64_t b = targets; b != 0; b &= b - 1) {
    const uint32_t i = uint32_t(std::countr_zero(b));
    write_record(s.ring(i), s.nodes[i], ring_bytes, pad_bytes[i], topic, payload);
  }
  ++layout.counters.published;
  layout.counters.enqueued += uint64_t(std::popcount(targets));
  layout.counters.dropped_dead += uint64_t(std::popcount(dead));
  ++counters_.published;
  // Only a dead node (or none) subscribes. An overflowed node counts as a
  // target even if it filters the record out: "nobody" must be certain.
  return targets == 0 ? PublishStatus::no_subscribers : PublishStatus::accepted;
}

void ShmTransport::set_presence(std::string_view user, uint32_t connections) {
  if (user.size() > shm_max_user_bytes) {
    ++counters_.presence_refused;
    return;
  }
  auto it = presence_.find(user);
  if (connections == 0) {
    if (it == presence_.end()) return;
    presence_.erase(it);
  } else if (it != presence_.end()) {
    it->second = connections;
  } else {
    presence_.emplace(user, connections);
  }
  if (!joined_) return;
  BusLock lock(*segment_->layout);
  if (!own_slot_locked()) {
    joined_ = false;
    return;
  }
  if (!write_presence(*segment_, slot_, user, connections)) {
    ++counters_.presence_refused;
    ++segment_->layout->counters.presence_table_full;
  }
}

// Refreshes the heartbeat, then delivers what the ring held at that moment
// straight from shared memory, outside the lock: this node is the ring's
// only consumer and producers write only past head. A sink that publishes
// to this node's own topics gets those messages at the next poll.
size_t ShmTransport::poll(uint64_t now_ms) {
  now_ms_ = std::max(now_ms_, now_ms);
  if (!joined_ && !rejoin(now_ms_)) return 0;
  uint64_t tail = 0;
  uint64_t head = 0;
  bool was_stale = false;
  {
    BusLock lock(*segment_->layout);
    if (own_slot_locked()) {
      NodeSlot& slot = segment_->nodes[slot_];
      was_stale = !is_live(slot, now_ms_, options_.node_ttl_ms);
      slot.heartbeat_ms = std::max(slot.heartbeat_ms, now_ms_);
      tail = slot.tail;
      head = slot.head;
    } else {
      joined_ = false;
    }
  }
  if (!joined_) {
    rejoin(now_ms_);
    return 0;
  }
  if (was_stale) {
    // Publishers skipped this node while it looked dead: tell the owner,
    // as a transport that lost its backend would.
    ++counters_.rejoins;
    report_state(TransportState::disconnected);
    report_state(TransportState::connected);
  }
  if (sink_ == nullptr || tail == head) return 0;
  return deliver(tail, head);
}

size_t ShmTransport::deliver(uint64_t tail, uint64_t head) {
  const unsigned char* ring = segment_->ring(slot_);
  const uint64_t ring_bytes = segment_->layout->ring_bytes;
  size_t delivered = 0;
  for (uint64_t pos = tail; pos < head;) {
    RecordHeader h;
    std::memcpy(&h, ring + pos % ring_bytes, sizeof h);
    if (!record_is_valid(h, pos, head, ring_bytes)) {
      // Only a reclaimed slot (this node looked dead and another took it)
      // may change the ring under us; anything else is corruption.
      BusLock lock(*segment_->layout);
      WSGATE_ASSERT(!own_slot_locked());
      joined_ = false;
      return delivered;
    }
    if (h.topic_bytes != pad_topic_bytes) {
      const char* bytes = reinterpret_cast<const char*>(ring + pos % ring_bytes + sizeof(RecordHeader));
      const std::string_view topic(bytes, h.topic_bytes);
      if (subscriptions_.contains(topic)) {
        sink_->on_transport_message(topic, std::string_view(bytes + h.topic_bytes, h.payload_bytes));
        ++delivered;
      } else {
        ++counters_.filtered;
      }
    }
    pos += h.record_bytes;
  }
  counters_.delivered += delivered;
  BusLock lock(*segment_->layout);
  if (!own_slot_locked()) {
    joined_ = false;
    return delivered;
  }
  NodeSlot& slot = segment_->nodes[slot_];
  WSGATE_ASSERT(slot.tail == tail && slot.head >= head);
  slot.tail = head;
  return delivered;
}

// --- queries -------------------------------------------------------------------

std::map<std::string, uint32_t> ShmTransport::presence_of(std::string_view user) const {
  std::map<std::string, uint32_t> out;
  const ShmBus::Segment& s = *segment_;
  const uint64_t hash = hash_bytes(user);
  const uint64_t mask = s.presence_mask();
  BusLock lock(*s.layout);
  for (uint64_t i = hash & mask; s.presence[i].hash != 0; i = (i + 1) & mask) {
    const PresenceEntry& e = s.presence[i];
    if (e.hash != hash || std::string_view(e.user, e.user_bytes) != user) continue;
    const NodeSlot& node = s.nodes[e.slot];
    if (!is_live(node, now_ms_, options_.node_ttl_ms)) continue;
    out[std::string(node.node_id, node.node_id_bytes)] += e.connections;
  }
  return out;
}

std::vector<std::string> ShmTransport::online_users() const {
  std::set<std::string> users;
  const ShmBus::Segment& s = *segment_;
  BusLock lock(*s.layout);
  for (uint64_t i = 0; i < s.layout->presence_slots; ++i) {
    const PresenceEntry& e = s.presence[i];
    if (e.hash == 0 || !is_live(s.nodes[e.slot], now_ms_, options_.node_ttl_ms)) continue;
    users.emplace(e.user, e.user_bytes);
  }
  return {users.begin(), users.end()};
}

ShmBusCounters ShmTransport::bus_counters() const {
  BusLock lock(*segment_->layout);
  return segment_->layout->counters;
}

uint64_t ShmTransport::queued_bytes() const {
  BusLock lock(*segment_->layout);
  const NodeSlot& slot = segment_->nodes[slot_];
  return slot.head - slot.tail;
}

}  // namespace wsgate

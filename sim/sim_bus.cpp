#include "sim_bus.hpp"

#include <algorithm>
#include <stdexcept>

#include "shm_bus.hpp"
#include "local_transport.hpp"

namespace wsgate::sim {

namespace {

class LocalSimBus final : public SimBus {
 public:
  explicit LocalSimBus(const SimBusConfig& c) : bus_(options_for(c)) {}

  const char* name() const override { return "local"; }
  std::unique_ptr<Transport> attach(const std::string& node_id, uint64_t) override {
    return std::make_unique<LocalTransport>(bus_, node_id);
  }
  void crash(std::unique_ptr<Transport> t) override { t.reset(); }
  void set_cut_off(Transport& t, bool cut) override { static_cast<LocalTransport&>(t).set_cut_off(cut); }
  std::vector<PresenceEntry> presence(uint64_t) override {
    std::vector<PresenceEntry> out;
    for (const std::string& user : bus_.online_users())
      for (const auto& [node, n] : bus_.presence_of(user)) out.push_back({user, node, n});
    return out;  // online_users is sorted, presence_of is a std::map
  }
  uint64_t presence_ttl_ms() const override { return bus_.options().presence_ttl_ms; }

 private:
  static LocalBusOptions options_for(const SimBusConfig& c) {
    LocalBusOptions o;
    o.presence_ttl_ms = c.presence_ttl_ms;
    if (c.small_rings) {
      o.inbound_queue_max_messages = 64;
      o.max_payload_bytes = 64 * 1024;
      o.inbound_queue_max_bytes = 128 * 1024;
    }
    return o;
  }
  LocalBus bus_;
};

class ShmSimBus final : public SimBus {
 public:
  explicit ShmSimBus(const SimBusConfig& c) : name_(c.shm_name) {
    ShmBus::remove(name_);  // a leftover of a run that was killed
    options_.max_nodes = std::min<uint32_t>(c.max_nodes + 1, shm_max_nodes_limit);  // +1: the observer
    options_.ring_bytes = c.small_rings ? 32 * 1024 : 1024 * 1024;
    options_.max_presence_entries = std::max<uint32_t>(1024, 2 * c.max_users);
    options_.max_topics = std::max<uint32_t>(4096, 2 * c.max_users + 64);
    options_.node_ttl_ms = c.presence_ttl_ms;
    // Never subscribes or publishes: a slot from which to read presence.
    observer_ = std::make_unique<ShmTransport>(name_, "sim-observer", options_, 0);
  }
  ~ShmSimBus() override {
    graveyard_.clear();
    observer_.reset();
    ShmBus::remove(name_);
  }

  const char* name() const override { return "shm"; }
  std::unique_ptr<Transport> attach(const std::string& node_id, uint64_t now_ms) override {
    return std::make_unique<ShmTransport>(name_, node_id, options_, now_ms);
  }
  // Kept mapped but never polled again: the slot's heartbeat stops and the
  // bus finds it dead after node_ttl_ms, exactly as for a killed process.
  // (Destroying it would release the slot cleanly, which a crash never does.)
  void crash(std::unique_ptr<Transport> t) override { graveyard_.push_back(std::move(t)); }
  std::vector<PresenceEntry> presence(uint64_t now_ms) override {
    observer_->poll(now_ms);  // presence ages with the observer's time
    std::vector<PresenceEntry> out;
    for (const std::string& user : observer_->online_users())
      for (const auto& [node, n] : observer_->presence_of(user)) out.push_back({user, node, n});
    return out;
  }
  uint64_t presence_ttl_ms() const override { return options_.node_ttl_ms; }

 private:
  std::string name_;
  ShmBusOptions options_;
  std::unique_ptr<ShmTransport> observer_;
  std::vector<std::unique_ptr<Transport>> graveyard_;
};

}  // namespace

std::unique_ptr<SimBus> make_sim_bus(const SimBusConfig& config) {
  if (config.kind == BusKind::local) return std::make_unique<LocalSimBus>(config);
  if (config.shm_name.empty()) throw std::runtime_error("shm bus needs a segment name");
  return std::make_unique<ShmSimBus>(config);
}

}  // namespace wsgate::sim

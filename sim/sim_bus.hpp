#pragma once
// The bus the simulated nodes share, behind one small interface so a run can
// use the shared-memory ring bus (the default, as the issue asks) or the
// in-process LocalBus (--bus local). The simulator needs from a bus: a
// transport per node, a way to crash a node's transport the way its kind of
// bus would see a process die, and a god's-eye presence view to check the
// presence invariant against.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "wsgate/transport.hpp"

namespace wsgate::sim {

enum class BusKind : uint8_t { shm, local };

struct PresenceEntry {
  std::string user;
  std::string node;
  uint32_t connections;
  friend bool operator==(const PresenceEntry&, const PresenceEntry&) = default;
  friend auto operator<=>(const PresenceEntry&, const PresenceEntry&) = default;
};

struct SimBusConfig {
  BusKind kind = BusKind::shm;
  uint32_t max_nodes = 8;
  // Small rings make backpressure reachable (the overflow fault).
  bool small_rings = false;
  uint32_t max_users = 1024;
  uint64_t presence_ttl_ms = 5000;
  // Unique per run; the segment is removed when the bus is destroyed.
  std::string shm_name;
};

class SimBus {
 public:
  virtual ~SimBus() = default;
  virtual const char* name() const = 0;
  // A transport for a node joining (or restarting under the same id).
  virtual std::unique_ptr<Transport> attach(const std::string& node_id, uint64_t now_ms) = 0;
  // The node's process died. A shared-memory peer cannot say goodbye: its
  // slot stays until the bus's TTL sees its heartbeat stop. An in-process
  // LocalBus peer is simply destroyed.
  virtual void crash(std::unique_ptr<Transport> transport) = 0;
  // A partition of that node, for buses that model one themselves (the
  // LocalBus stops refreshing a cut-off node's presence).
  virtual void set_cut_off(Transport&, bool) {}
  // Every (user, node, connections) the bus currently reports as present,
  // sorted. now_ms: the time of the query (presence ages with it).
  virtual std::vector<PresenceEntry> presence(uint64_t now_ms) = 0;
  // How long presence of a silent node lingers.
  virtual uint64_t presence_ttl_ms() const = 0;
};

// Throws std::runtime_error if the bus cannot be created.
std::unique_ptr<SimBus> make_sim_bus(const SimBusConfig& config);

}  // namespace wsgate::sim

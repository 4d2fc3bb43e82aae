#pragma once
// Everything that defines a run. A run is a pure function of these options
// (the seed included): reproduce_command() prints them back as the one-line
// command that replays it.
#include <cstdint>
#include <string>
#include <vector>

#include "sim_bus.hpp"

namespace wsgate::sim {

enum class Fault : uint8_t {
  crash, restart, partition, drain, delay, reorder, duplicate, overflow, vanish, slow, storm, count_
};
const char* fault_name(Fault f);

enum class LbPolicy : uint8_t { ip_hash, least_connections, random };
const char* lb_name(LbPolicy p);

// Test hooks that break a guarantee on purpose, to prove the simulator
// notices (never enabled by default, absent from --help).
enum class PlantedBug : uint8_t {
  none,
  // The bus re-stamps sequence numbers on delivery (FaultTransport), so
  // the Gateway's duplicate filter lets duplicated messages through.
  resequence,
  // The Gateway tracks a single publisher (Limits::max_tracked_origins=1):
  // the core's own eviction path forgets a publisher between a message and
  // its duplicate, and delivers the duplicate.
  origin_table_1,
};
const char* planted_bug_name(PlantedBug b);

struct SimOptions {
  uint64_t seed = 1;
  uint32_t nodes = 5;
  uint32_t clients = 1000;
  uint64_t duration_ms = 30000;  // the faulty phase; settling and leaving follow
  uint32_t faults = 0;            // bit per Fault
  LbPolicy lb = LbPolicy::least_connections;
  BusKind bus = BusKind::shm;
  std::string scenario;           // "", failover, rebalance, broadcast
  PlantedBug plant = PlantedBug::none;
  // Invariants still checked and reported but not failing the run (bit per
  // Invariant, see simulation.hpp): for a known bug while its fix is pending.
  uint32_t ignored_invariants = 0;
  bool trace = false;             // echo every trace record to stdout
  bool quiet = false;             // no progress lines (sweeps)

  // Workload. Each client acts every ~action_interval_ms: mostly direct
  // messages to a random user (some offline), sometimes leaving for a while.
  uint32_t action_interval_ms = 10000;
  uint32_t leave_ppm = 30000;          // of actions: disconnect and come back later
  uint32_t broadcasts_per_s = 2;       // cluster-wide
  uint32_t two_tab_users_pct = 20;     // users holding two connections

  // A drain's pace and deadline (Limits::drain_max_closes_per_s and
  // shutdown_timeout_ms); 0 keeps the defaults.
  uint32_t drain_max_closes_per_s = 0;
  uint32_t shutdown_timeout_ms = 0;

  bool has(Fault f) const { return (faults >> unsigned(f)) & 1u; }
  void set(Fault f) { faults |= 1u << unsigned(f); }
};

// "crash,partition" -> bits; throws std::invalid_argument on an unknown name.
uint32_t parse_faults(const std::string& list);
std::string format_faults(uint32_t faults);
uint32_t all_faults();
// "60s", "1500ms", "2m", "90" (seconds).
uint64_t parse_duration_ms(const std::string& s);

// The command that replays exactly this run.
std::string reproduce_command(const SimOptions& o);

}  // namespace wsgate::sim

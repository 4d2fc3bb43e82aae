#include "options.hpp"

#include "simulation.hpp"  // invariant names

#include <stdexcept>

namespace wsgate::sim {

const char* fault_name(Fault f) {
  static constexpr const char* names[] = {"crash",     "restart",  "partition", "drain",  "delay", "reorder",
                                          "duplicate", "overflow", "vanish",    "slow",   "storm"};
  static_assert(sizeof(names) / sizeof(names[0]) == size_t(Fault::count_));
  return names[size_t(f)];
}

const char* lb_name(LbPolicy p) {
  switch (p) {
    case LbPolicy::ip_hash: return "ip_hash";
    case LbPolicy::least_connections: return "least-connections";
    case LbPolicy::random: return "random";
  }
  return "?";
}

const char* planted_bug_name(PlantedBug b) {
  switch (b) {
    case PlantedBug::none: return "none";
    case PlantedBug::resequence: return "resequence";
    case PlantedBug::origin_table_1: return "origin-table-1";
  }
  return "?";
}

uint32_t all_faults() { return (1u << unsigned(Fault::count_)) - 1; }

uint32_t parse_faults(const std::string& list) {
  if (list == "all") return all_faults();
  if (list.empty() || list == "none") return 0;
  uint32_t bits = 0;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = list.find(',', start);
    const std::string name = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    bool found = false;
    for (unsigned f = 0; f < unsigned(Fault::count_); ++f)
      if (name == fault_name(Fault(f))) {
        bits |= 1u << f;
        found = true;
      }
    if (!found) throw std::invalid_argument("unknown fault '" + name + "'");
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return bits;
}

std::string format_faults(uint32_t faults) {
  if (faults == 0) return "none";
  std::string out;
  for (unsigned f = 0; f < unsigned(Fault::count_); ++f)
    if ((faults >> f) & 1u) {
      if (!out.empty()) out += ',';
      out += fault_name(Fault(f));
    }
  return out;
}

uint64_t parse_duration_ms(const std::string& s) {
  size_t used = 0;
  const uint64_t n = std::stoull(s, &used);
  const std::string unit = s.substr(used);
  if (unit.empty() || unit == "s") return n * 1000;
  if (unit == "ms") return n;
  if (unit == "m") return n * 60000;
  throw std::invalid_argument("bad duration '" + s + "' (use 500ms, 60s, 2m)");
}

std::string reproduce_command(const SimOptions& o) {
  std::string cmd = "wsgate-sim --seed " + std::to_string(o.seed);
  if (!o.scenario.empty()) cmd += " --scenario " + o.scenario;
  cmd += " --nodes " + std::to_string(o.nodes) + " --clients " + std::to_string(o.clients) + " --duration " +
         std::to_string(o.duration_ms) + "ms --faults " + format_faults(o.faults) + " --lb " + lb_name(o.lb) +
         " --bus " + (o.bus == BusKind::shm ? "shm" : "local");
  if (o.action_interval_ms != SimOptions{}.action_interval_ms)
    cmd += " --action-interval " + std::to_string(o.action_interval_ms) + "ms";
  if (o.broadcasts_per_s != SimOptions{}.broadcasts_per_s)
    cmd += " --broadcasts-per-s " + std::to_string(o.broadcasts_per_s);
  if (o.plant != PlantedBug::none) cmd += std::string(" --plant-bug ") + planted_bug_name(o.plant);
  if (o.ignored_invariants) cmd += " --ignore " + format_invariants(o.ignored_invariants);
  if (o.full_check_every) cmd += " --full-check-every " + std::to_string(o.full_check_every);
  return cmd;
}

}  // namespace wsgate::sim

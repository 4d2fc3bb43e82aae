// The named scenarios, for the three things the simulator exists for:
//   failover   kill a node under load: its clients reconnect elsewhere and
//              every invariant holds;
//   rebalance  add two nodes to a loaded cluster: the core's rebalancing
//              (4002) evens the load out within the tolerance;
//   broadcast  broadcast storms while nodes crash and partitions come and go.
// And the seed sweep.
#include <chrono>
#include <cstdio>

#include "simulation.hpp"

namespace wsgate::sim {

namespace {
constexpr uint64_t scenario_event_ms = 5000;
constexpr uint64_t storm_every_ms = 2000;
constexpr uint32_t storm_broadcasts = 30;
}  // namespace

bool apply_scenario_defaults(SimOptions& o) {
  if (o.scenario == "failover") {
    o.nodes = 5;
    o.clients = 5000;
    o.duration_ms = 15000;
    o.faults = parse_faults("delay,duplicate");
    o.lb = LbPolicy::least_connections;
  } else if (o.scenario == "rebalance") {
    o.nodes = 3;
    o.clients = 3000;
    o.duration_ms = 15000;
    o.faults = 0;
    o.lb = LbPolicy::least_connections;
  } else if (o.scenario == "broadcast") {
    o.nodes = 5;
    o.clients = 2000;
    o.duration_ms = 20000;
    o.faults = parse_faults("crash,restart,partition,delay,reorder,duplicate");
    o.lb = LbPolicy::least_connections;
    o.broadcasts_per_s = 5;
  } else {
    return o.scenario.empty();
  }
  return true;
}

void Simulation::schedule_scenario() {
  if (o_.scenario == "failover" || o_.scenario == "rebalance") {
    sched_.at(scenario_event_ms, EventKind::scenario_step, 0);
  } else if (o_.scenario == "broadcast") {
    uint32_t step = 0;
    for (uint64_t t = storm_every_ms; t < o_.duration_ms; t += storm_every_ms) sched_.at(t, EventKind::scenario_step, step++);
  }
}

void Simulation::scenario_step(uint32_t) {
  if (o_.scenario == "failover") {
    // The busiest node dies (it stays dead: no restart in this scenario).
    uint32_t victim = 0;
    for (uint32_t n = 1; n < nodes_.size(); ++n)
      if (nodes_[n].up && nodes_[n].gw->connection_count() > nodes_[victim].gw->connection_count()) victim = n;
    crash_node(victim);
  } else if (o_.scenario == "rebalance") {
    join_ms_ = sched_.now_ms();
    add_node();
    add_node();
  } else if (o_.scenario == "broadcast") {
    // A storm: many broadcasts from random clients within 200 ms.
    for (uint32_t i = 0; i < storm_broadcasts; ++i)
      sched_.after(rng_.below(200), EventKind::broadcast_gen, 1);
  }
}

uint32_t run_sweep(SimOptions options, uint64_t seed_first, uint64_t seed_last, FILE* out) {
  const auto start = std::chrono::steady_clock::now();
  uint32_t failed = 0, ignored_seeds = 0;
  uint64_t events = 0;
  options.quiet = true;
  for (uint64_t seed = seed_first; seed <= seed_last; ++seed) {
    SimOptions o = options;
    o.seed = seed;
    Simulation sim(o);
    sim.stop_at_first_violation = true;
    const SimResult r = sim.run();
    events += r.stats.events;
    if (!r.ignored.empty()) {
      ++ignored_seeds;
      if (ignored_seeds <= 3)
        std::fprintf(out, "note seed=%llu violated ignored invariant %s: %s\n", (unsigned long long)seed,
                     invariant_name(r.ignored[0].invariant), r.ignored[0].detail.c_str());
    }
    if (r.ok()) continue;
    ++failed;
    std::fprintf(out, "FAIL seed=%llu invariant=%s t=%llums: %s\n  reproduce: %s\n", (unsigned long long)seed,
                 invariant_name(r.violations[0].invariant), (unsigned long long)r.violations[0].time_ms,
                 r.violations[0].detail.c_str(), reproduce_command(o).c_str());
    std::fflush(out);
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(out, "sweep seeds %llu..%llu: %llu run, %u failed, %u violated only ignored invariants, %.1f s wall, %.0f events/s\n",
               (unsigned long long)seed_first, (unsigned long long)seed_last,
               (unsigned long long)(seed_last - seed_first + 1), failed, ignored_seeds, wall,
               double(events) / (wall > 0 ? wall : 1));
  return failed;
}

}  // namespace wsgate::sim

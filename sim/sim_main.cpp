// wsgate-sim: the deterministic cluster simulator (issue 4).
//
//   wsgate-sim --nodes 5 --clients 10000 --seed 42 --duration 60s --faults crash,partition,drain
//   wsgate-sim --seeds 1..1000                 (short runs, every fault; failing seeds listed)
//   wsgate-sim --scenario failover|rebalance|broadcast [--seed N]
//
// Prints the seed first, a progress line every 10 s of virtual time, and a
// summary; exit status 1 if an invariant was violated (with the command that
// reproduces it), 2 on a usage error.
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "simulation.hpp"

namespace {

using namespace wsgate::sim;

void usage(FILE* out) {
  std::fprintf(out,
               "usage: wsgate-sim [options]\n"
               "  --seed N              the run's seed (default 1)\n"
               "  --seeds A..B          sweep seeds A to B; defaults become --duration 5s --clients 200 --nodes 4\n"
               "                        --action-interval 1s --broadcasts-per-s 5\n"
               "  --scenario NAME       failover | rebalance | broadcast (sets its own defaults)\n"
               "  --nodes N             gateway nodes (default 5)\n"
               "  --clients M           virtual clients (default 1000)\n"
               "  --duration D          faulty phase, e.g. 60s, 1500ms, 2m (default 30s); settling and\n"
               "                        leaving follow (~30 s more of virtual time)\n"
               "  --faults LIST         comma list or all|none (default all):\n"
               "                        crash,restart,partition,drain,delay,reorder,duplicate,overflow,\n"
               "                        vanish,slow,storm\n"
               "  --lb POLICY           ip_hash | least-connections | random (default least-connections)\n"
               "  --bus KIND            shm | local (default shm: Boost.Interprocess ring bus)\n"
               "  --action-interval D   mean time between a client's actions (default 10s)\n"
               "  --broadcasts-per-s N  cluster-wide broadcast rate (default 2)\n"
               "  --ignore LIST         invariants to check and report without failing (a known bug\n"
               "                        awaiting its fix), e.g. rebalance_only_when_needed\n"
               "  --full-check-every N  check each node's core in full (Gateway::check_invariants,\n"
               "                        O(connections)) every N of its events; 0 (default): every\n"
               "                        connections/64 events, so the cost per event stays constant.\n"
               "                        The O(1) checks run after every event either way\n"
               "  --trace               print every trace record\n"
               "  --quiet               no progress lines\n");
}

LbPolicy parse_lb(const std::string& s) {
  if (s == "ip_hash" || s == "ip-hash") return LbPolicy::ip_hash;
  if (s == "least-connections" || s == "least_connections" || s == "least_conn") return LbPolicy::least_connections;
  if (s == "random") return LbPolicy::random;
  throw std::invalid_argument("unknown --lb '" + s + "'");
}

PlantedBug parse_plant(const std::string& s) {
  if (s == "resequence") return PlantedBug::resequence;
  if (s == "origin-table-1") return PlantedBug::origin_table_1;
  throw std::invalid_argument("unknown --plant-bug '" + s + "'");
}

void apply(SimOptions& o, const std::string& flag, const std::string& v) {
  if (flag == "--seed") o.seed = std::stoull(v);
  else if (flag == "--nodes") o.nodes = uint32_t(std::stoul(v));
  else if (flag == "--clients") o.clients = uint32_t(std::stoul(v));
  else if (flag == "--duration") o.duration_ms = parse_duration_ms(v);
  else if (flag == "--faults") o.faults = parse_faults(v);
  else if (flag == "--lb") o.lb = parse_lb(v);
  else if (flag == "--bus") {
    if (v != "shm" && v != "local") throw std::invalid_argument("unknown --bus '" + v + "'");
    o.bus = v == "shm" ? BusKind::shm : BusKind::local;
  } else if (flag == "--action-interval") o.action_interval_ms = uint32_t(parse_duration_ms(v));
  else if (flag == "--broadcasts-per-s") o.broadcasts_per_s = uint32_t(std::stoul(v));
  else if (flag == "--plant-bug") o.plant = parse_plant(v);
  else if (flag == "--ignore") o.ignored_invariants = parse_invariants(v);
  else if (flag == "--full-check-every") o.full_check_every = uint32_t(std::stoul(v));
  else if (flag == "--scenario" || flag == "--seeds") {
  } else throw std::invalid_argument("unknown option '" + flag + "'");
}

}  // namespace

int main(int argc, char** argv) {
  SimOptions o;
  o.faults = all_faults();
  std::vector<std::pair<std::string, std::string>> flags;
  std::string seeds;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        usage(stdout);
        return 0;
      }
      if (a == "--trace") { o.trace = true; continue; }
      if (a == "--quiet") { o.quiet = true; continue; }
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      flags.emplace_back(a, argv[++i]);
      if (a == "--scenario") o.scenario = flags.back().second;
      if (a == "--seeds") seeds = flags.back().second;
    }
    // Defaults of a scenario or a sweep first; explicit options win.
    if (!apply_scenario_defaults(o)) throw std::invalid_argument("unknown --scenario '" + o.scenario + "'");
    if (!seeds.empty() && o.scenario.empty()) {
      // Short and busy: many seeds, each dense in messages and faults.
      o.duration_ms = 5000;
      o.clients = 200;
      o.nodes = 4;
      o.action_interval_ms = 1000;
      o.broadcasts_per_s = 5;
    }
    for (const auto& [flag, value] : flags) apply(o, flag, value);
    if (o.nodes == 0 || o.nodes > 60 || o.clients == 0) throw std::invalid_argument("need 1..60 nodes and >= 1 client");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "wsgate-sim: %s\n", e.what());
    usage(stderr);
    return 2;
  }

  try {
    if (!seeds.empty()) {
      const size_t dots = seeds.find("..");
      const uint64_t first = std::stoull(seeds.substr(0, dots));
      const uint64_t last = dots == std::string::npos ? first : std::stoull(seeds.substr(dots + 2));
      std::printf("sweep seeds %llu..%llu: %s\n", (unsigned long long)first, (unsigned long long)last,
                  reproduce_command(o).c_str() + 0);
      std::fflush(stdout);
      return run_sweep(o, first, last, stdout) == 0 ? 0 : 1;
    }
    std::printf("seed=%llu\n%s\n", (unsigned long long)o.seed, reproduce_command(o).c_str());
    std::fflush(stdout);
    Simulation sim(o);
    const SimResult r = sim.run();
    Simulation::print_result(o, r, stdout);
    if (!r.ok()) {
      std::printf("FAILED: %s violated; reproduce: %s\n", invariant_name(r.violations[0].invariant),
                  reproduce_command(o).c_str());
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "wsgate-sim: %s (seed %llu)\n", e.what(), (unsigned long long)o.seed);
    return 2;
  }
}

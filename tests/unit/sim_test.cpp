// The cluster simulator (sim/): determinism, the named scenarios, a seed
// sweep, and proof that it finds planted bugs. Runs are small so the whole
// file stays within a few seconds on two cores.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <ostream>
#include <string>

#include "simulation.hpp"

namespace wsgate::sim {
namespace {

SimOptions small(uint64_t seed, BusKind bus = BusKind::shm) {
  SimOptions o;
  o.seed = seed;
  o.nodes = 4;
  o.clients = 200;
  o.duration_ms = 4000;
  o.faults = all_faults();
  o.bus = bus;
  o.action_interval_ms = 1000;
  o.broadcasts_per_s = 5;
  o.quiet = true;
  return o;
}

std::string describe(const SimOptions& o, const SimResult& r) {
  std::string out;
  for (const Violation& v : r.violations)
    out += std::string(invariant_name(v.invariant)) + ": " + v.detail + "\n" + v.recent + "reproduce: " +
           reproduce_command(o) + "\n";
  return out;
}

SimResult run(const SimOptions& o) { return Simulation(o).run(); }

TEST(Sim, SameSeedSameTrace) {
  for (BusKind bus : {BusKind::shm, BusKind::local}) {
    const SimResult a = run(small(42, bus));
    const SimResult b = run(small(42, bus));
    EXPECT_EQ(a.trace_hash, b.trace_hash);
    EXPECT_EQ(a.trace_records, b.trace_records);
    EXPECT_EQ(a.stats.events, b.stats.events);
    EXPECT_GT(a.stats.direct_delivered, 0u);
    EXPECT_GT(a.stats.broadcast_deliveries, 0u);
  }
}

TEST(Sim, DifferentSeedsDifferentTraces) {
  EXPECT_NE(run(small(1)).trace_hash, run(small(2)).trace_hash);
}

TEST(Sim, EveryFaultHappensAndInvariantsHold) {
  SimOptions o = small(7);
  o.duration_ms = 15000;
  const SimResult r = run(o);
  EXPECT_TRUE(r.ok()) << describe(o, r);
  const SimStats& s = r.stats;
  EXPECT_GT(s.crashes + s.partitions + s.drains + s.stalls + s.vanishes + s.storms, 3u);
  EXPECT_GT(s.bus_duplicated, 0u);
  EXPECT_GT(s.stale_dropped, 0u);  // the Gateway dropped the bus's duplicates
  EXPECT_GE(s.presence_converged_ms, 0);
}

// The server's SIGTERM path, in the simulator: the core paces the closes
// and says when the node may exit. A drain faster than the deadline closes
// everyone with 1001; a slower one is cut at the deadline, and the clients
// it still held reconnect elsewhere. Invariants hold either way.
TEST(Sim, DrainExitsWhenEmptyOrAtTheShutdownDeadline) {
  SimOptions o = small(11);
  o.clients = 600;
  o.nodes = 3;
  o.faults = 0;
  o.set(Fault::drain);
  o.duration_ms = 8000;
  const SimResult fast = run(o);
  EXPECT_TRUE(fast.ok()) << describe(o, fast);
  ASSERT_GT(fast.stats.drains, 0u);
  EXPECT_GT(fast.stats.drain_closes, 0u);
  EXPECT_EQ(fast.stats.drain_cut, 0u);

  o.drain_max_closes_per_s = 20;  // ~200 connections would take 10 s
  o.shutdown_timeout_ms = 1000;
  const SimResult slow = run(o);
  EXPECT_TRUE(slow.ok()) << describe(o, slow);
  ASSERT_GT(slow.stats.drains, 0u);
  EXPECT_GT(slow.stats.drain_cut, 0u);
  EXPECT_LE(slow.stats.drain_closes, slow.stats.drains * (20 + 2));  // 1 s at 20/s, per drain
}

TEST(Sim, ScenarioFailover) {
  SimOptions o;
  o.scenario = "failover";
  ASSERT_TRUE(apply_scenario_defaults(o));
  o.seed = 1;
  o.quiet = true;
  const SimResult r = run(o);
  EXPECT_TRUE(r.ok()) << describe(o, r);
  EXPECT_EQ(r.stats.crashes, 1u);
  EXPECT_GT(r.stats.failover_clients, 0u);
  EXPECT_GT(r.stats.failover_ms_max, 0u);  // every orphan reconnected elsewhere
  EXPECT_LT(r.stats.failover_ms_max, 5000u);
}

TEST(Sim, ScenarioRebalance) {
  SimOptions o;
  o.scenario = "rebalance";
  ASSERT_TRUE(apply_scenario_defaults(o));
  o.seed = 1;
  o.quiet = true;
  const SimResult r = run(o);
  EXPECT_TRUE(r.ok()) << describe(o, r);
  EXPECT_EQ(r.stats.joins, 2u);
  EXPECT_GT(r.stats.rebalance_moves, 0u);
  EXPECT_LE(r.stats.max_load_ratio, 1.2 + 0.01);
}

TEST(Sim, ScenarioBroadcast) {
  SimOptions o;
  o.scenario = "broadcast";
  ASSERT_TRUE(apply_scenario_defaults(o));
  o.seed = 1;
  o.quiet = true;
  const SimResult r = run(o);
  EXPECT_TRUE(r.ok()) << describe(o, r);
  EXPECT_GT(r.stats.broadcast_sent, 300u);
  EXPECT_GT(r.stats.broadcast_obligations, 100000u);
}

// The clients speak WebSocket to each node's session layer, as browsers
// speak to the server: the nodes' wslay answers the clients' pings, the
// clients answer the heartbeat, close handshakes complete through the
// session, vanished clients are closed by the close timeout, and no client
// frame is ever refused as a protocol error.
TEST(Sim, ClientsSpeakWebSocketThroughTheSessionLayer) {
  SimOptions o = small(3);
  o.duration_ms = 8000;
  o.faults = parse_faults("vanish,drain,crash,restart");
  const SimResult r = run(o);
  EXPECT_TRUE(r.ok()) << describe(o, r);
  const SimStats& s = r.stats;
  EXPECT_GT(s.client_pings, 0u);
  EXPECT_GT(s.client_pongs_received, 0u);
  EXPECT_GT(s.server_pings_answered, 0u);
  EXPECT_GT(s.close_handshakes, 0u);
  EXPECT_GT(s.vanishes, 0u);
  EXPECT_GT(s.close_timeouts, 0u);  // a vanished client never answers our close
  EXPECT_EQ(s.protocol_error_closes, 0u);
}

// CI's sweep: 200 short seeds with every fault (about 4 s of CPU).
TEST(Sim, SweepOf200Seeds) {
  SimOptions o = small(1);
  o.duration_ms = 5000;
  std::FILE* sink = std::tmpfile();
  const uint32_t failed = run_sweep(o, 1, 200, sink);
  std::rewind(sink);
  std::string log(1 << 16, '\0');
  log.resize(std::fread(log.data(), 1, log.size(), sink));
  std::fclose(sink);
  EXPECT_EQ(failed, 0u) << log;
}

// CI's sweep of configurations: fault mixes x load-balancer policies x
// cluster sizes (and both buses), each over its own seeds, one ctest test
// per configuration so they run in parallel. In the release build the
// whole sweep is about 25 s of CPU; the sanitizer build (Debug, ASan and
// UBSan: ~20x slower) runs a tenth of the seeds, and of the issue's sweep
// only the seeds that once failed.
#if defined(__SANITIZE_ADDRESS__) || !defined(NDEBUG)
constexpr bool slow_build = true;
#else
constexpr bool slow_build = false;
#endif

struct SweepCase {
  const char* name;
  uint32_t nodes;
  const char* faults;
  LbPolicy lb;
  uint32_t clients;
  uint64_t duration_ms;
  uint32_t seeds;  // in the release build
  BusKind bus = BusKind::shm;
};

void PrintTo(const SweepCase& c, std::ostream* os) { *os << c.name; }

class Sweep : public ::testing::TestWithParam<SweepCase> {};

TEST_P(Sweep, InvariantsHoldOnEverySeed) {
  const SweepCase& c = GetParam();
  SimOptions o;
  o.nodes = c.nodes;
  o.clients = c.clients;
  o.duration_ms = c.duration_ms;
  o.faults = parse_faults(c.faults);
  o.lb = c.lb;
  o.bus = c.bus;
  o.action_interval_ms = 1000;  // as wsgate-sim --seeds
  o.broadcasts_per_s = 5;
  const uint32_t seeds = slow_build ? std::max<uint32_t>(2, c.seeds / 10) : c.seeds;
  std::FILE* sink = std::tmpfile();
  const uint32_t failed = run_sweep(o, 1, seeds, sink);
  std::rewind(sink);
  std::string log(1 << 16, '\0');
  log.resize(std::fread(log.data(), 1, log.size(), sink));
  std::fclose(sink);
  EXPECT_EQ(failed, 0u) << log;
}

// Each fault mix under each policy at least once, cluster sizes 2 to 5.
INSTANTIATE_TEST_SUITE_P(
    Configurations, Sweep,
    ::testing::Values(
        SweepCase{"all_least_connections_5", 5, "all", LbPolicy::least_connections, 300, 6000, 30},
        SweepCase{"all_random_3", 3, "all", LbPolicy::random, 300, 6000, 30},
        SweepCase{"all_ip_hash_4", 4, "all", LbPolicy::ip_hash, 300, 6000, 30},
        SweepCase{"all_least_connections_4_local_bus", 4, "all", LbPolicy::least_connections, 300, 6000, 20,
                  BusKind::local},
        SweepCase{"node_faults_random_2", 2, "crash,restart,drain,storm", LbPolicy::random, 300, 6000, 30},
        SweepCase{"node_faults_ip_hash_5", 5, "crash,restart,drain,storm", LbPolicy::ip_hash, 300, 6000, 30},
        SweepCase{"bus_faults_least_connections_3", 3, "partition,overflow,delay,reorder,duplicate",
                  LbPolicy::least_connections, 300, 6000, 30},
        SweepCase{"bus_faults_random_5", 5, "partition,overflow,delay,reorder,duplicate", LbPolicy::random, 300, 6000,
                  30},
        SweepCase{"client_faults_ip_hash_3", 3, "vanish,slow,storm,duplicate", LbPolicy::ip_hash, 300, 6000, 30},
        SweepCase{"crash_partition_drain_random_5", 5, "crash,partition,drain", LbPolicy::random, 300, 6000, 30},
        SweepCase{"crash_partition_drain_ip_hash_2", 2, "crash,partition,drain", LbPolicy::ip_hash, 300, 6000, 30}),
    [](const ::testing::TestParamInfo<SweepCase>& i) { return std::string(i.param.name); });

// The issue's sweep, which failed rebalance_only_when_needed on seeds 3,
// 21, 55 and 87: a restarted node's report made just before the clients
// moved to it landed, a drained node's last report, or a peer gone silent,
// made its peers shed clients for nothing. The sanitizer build runs those
// four seeds.
TEST(Sim, IssueSweepCrashPartitionDrain) {
  SimOptions o;
  o.nodes = 3;
  o.clients = 500;
  o.duration_ms = 10000;
  o.faults = parse_faults("crash,partition,drain");
  o.action_interval_ms = 1000;
  o.broadcasts_per_s = 5;
  std::FILE* sink = std::tmpfile();
  uint32_t failed = 0;
  if (slow_build) {
    for (uint64_t seed : {3, 21, 55, 87}) failed += run_sweep(o, seed, seed, sink);
  } else {
    failed = run_sweep(o, 1, 100, sink);
  }
  std::rewind(sink);
  std::string log(1 << 16, '\0');
  log.resize(std::fread(log.data(), 1, log.size(), sink));
  std::fclose(sink);
  EXPECT_EQ(failed, 0u) << log;
}

// A planted bug must be found, named, and reproducible from its seed.
void expect_found(PlantedBug bug) {
  for (uint64_t seed = 1; seed <= 50; ++seed) {
    SimOptions o = small(seed);
    o.plant = bug;
    o.faults = parse_faults("delay,duplicate");
    Simulation sim(o);
    sim.stop_at_first_violation = true;
    const SimResult r = sim.run();
    if (r.ok()) continue;
    const Invariant inv = r.violations[0].invariant;
    EXPECT_TRUE(inv == Invariant::direct_at_most_once || inv == Invariant::broadcast_exactly_once)
        << invariant_name(inv) << ": " << r.violations[0].detail;
    const std::string cmd = reproduce_command(o);
    EXPECT_NE(cmd.find("--seed " + std::to_string(seed) + " "), std::string::npos) << cmd;
    EXPECT_NE(cmd.find(std::string("--plant-bug ") + planted_bug_name(bug)), std::string::npos) << cmd;
    // The reproduction gives the same violation at the same moment.
    Simulation again(o);
    again.stop_at_first_violation = true;
    const SimResult r2 = again.run();
    ASSERT_FALSE(r2.ok());
    EXPECT_EQ(r2.violations[0].invariant, inv);
    EXPECT_EQ(r2.violations[0].time_ms, r.violations[0].time_ms);
    EXPECT_EQ(r2.trace_hash, r.trace_hash);
    return;
  }
  ADD_FAILURE() << "planted bug " << planted_bug_name(bug) << " not found in 50 seeds";
}

TEST(Sim, FindsPlantedBugResequencingBus) { expect_found(PlantedBug::resequence); }
TEST(Sim, FindsPlantedBugTinyOriginTable) { expect_found(PlantedBug::origin_table_1); }


// Found by the simulator: the rebalancer compared its fresh count with
// peers' reports up to an interval old and shed clients during every
// ramp-up (seed 1, no faults: 10% of clients moved for nothing). It now acts
// only on a settled picture.
TEST(Sim, NoRebalanceMovesInABalancedRampUp) {
  SimOptions o = small(1);
  o.faults = 0;
  const SimResult r = run(o);
  EXPECT_TRUE(r.ok()) << describe(o, r);
  EXPECT_EQ(r.stats.rebalance_moves, 0u);
}

}  // namespace
}  // namespace wsgate::sim

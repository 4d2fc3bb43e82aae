// The fault injector. Continuous faults (bus delay, reordering,
// duplication, slow readers) hold for the whole faulty phase; discrete ones
// (crash, partition, drain, ring overflow, vanishing clients, reconnect
// storms) are drawn one at a time by the chaos timer from its own
// generator, so adding a fault kind does not change the workload's draws.
#include <algorithm>

#include "simulation.hpp"

namespace wsgate::sim {

namespace {
constexpr uint64_t chaos_interval_ms = 1500;
}  // namespace

void Simulation::apply_continuous_faults(bool on) {
  const bool planted = o_.plant != PlantedBug::none;
  bus_faults_.delay_max_ms = !on ? 0 : o_.has(Fault::reorder) ? 200 : o_.has(Fault::delay) || planted ? 20 : 0;
  // A planted duplicate-filter bug needs duplicates to show.
  bus_faults_.duplicate_ppm = on && (o_.has(Fault::duplicate) || planted) ? 20000 : 0;
  bus_faults_.resequence_bug = o_.plant == PlantedBug::resequence;
}

void Simulation::on_chaos() {
  if (phase_ != Phase::faults) return;
  Fault kinds[8];
  uint32_t k = 0;
  for (Fault f : {Fault::crash, Fault::partition, Fault::drain, Fault::overflow, Fault::vanish, Fault::storm})
    if (o_.has(f)) kinds[k++] = f;
  sched_.after(chaos_rng_.around(chaos_interval_ms), EventKind::chaos);
  if (k == 0) return;
  const Fault f = kinds[chaos_rng_.below(k)];

  // Node faults keep at least half the cluster (and two nodes) serving.
  const uint32_t min_available = std::max<uint32_t>(2, (o_.nodes + 1) / 2);
  uint32_t candidates[64];
  uint32_t m = 0;
  for (uint32_t n = 0; n < nodes_.size() && m < 64; ++n)
    if (available(n)) candidates[m++] = n;
  const bool node_fault = f == Fault::crash || f == Fault::partition || f == Fault::drain || f == Fault::overflow;
  if (node_fault && (m <= min_available || m == 0)) return;
  const uint32_t n = node_fault ? candidates[chaos_rng_.below(m)] : 0;
  switch (f) {
    case Fault::crash: crash_node(n); break;
    case Fault::partition: partition(n); break;
    case Fault::drain: start_drain(n); break;
    case Fault::overflow: stall(n); break;
    case Fault::vanish: {
      const uint32_t count = uint32_t(chaos_rng_.between(1, std::max<uint32_t>(1, o_.clients / 200)));
      for (uint32_t i = 0; i < count; ++i) {
        const uint32_t c = uint32_t(chaos_rng_.below(clients_.size()));
        if (clients_[c].state == ClientState::open) vanish(c);
      }
      break;
    }
    case Fault::storm: storm(); break;
    default: break;
  }
}

// Cut off from the bus: the node keeps its clients (they do not know) but
// cannot publish or receive, and hears "disconnected" at its next poll.
void Simulation::partition(uint32_t n) {
  Node& node = nodes_[n];
  trace_.record(sched_.now_ms(), TraceKind::partition, n);
  ++result_.stats.partitions;
  node.cut = true;
  node.bus->set_cut_off(true);
  bus_->set_cut_off(*node.inner, true);
  mark_unhealthy(n);
  schedule_poll(n, sched_.now_ms());
  sched_.after(chaos_rng_.between(300, 4000), EventKind::node_heal, n, node.life);
}

void Simulation::heal(uint32_t n, uint32_t life) {
  Node& node = nodes_[n];
  if (!node.up || node.life != life || !node.cut) return;
  trace_.record(sched_.now_ms(), TraceKind::heal, n);
  node.cut = false;
  node.bus->set_cut_off(false);
  bus_->set_cut_off(*node.inner, false);
  mark_unhealthy(n);  // windows that overlapped the partition stay excused
  schedule_poll(n, sched_.now_ms());
}

// The node's loop stops reading the bus (a long GC pause, a blocked
// thread): its ring fills and publishers get backpressure.
void Simulation::stall(uint32_t n) {
  Node& node = nodes_[n];
  trace_.record(sched_.now_ms(), TraceKind::stall, n);
  ++result_.stats.stalls;
  node.stalled = true;
  mark_unhealthy(n);
  // Sometimes longer than the bus's TTL: the others then think it dead.
  sched_.after(chaos_rng_.between(200, 8000), EventKind::node_unstall, n, node.life);
}

void Simulation::unstall(uint32_t n, uint32_t life) {
  Node& node = nodes_[n];
  if (!node.up || node.life != life || !node.stalled) return;
  trace_.record(sched_.now_ms(), TraceKind::unstall, n);
  node.stalled = false;
  mark_unhealthy(n);
  schedule_poll(n, sched_.now_ms());
}

void Simulation::start_drain(uint32_t n) {
  Node& node = nodes_[n];
  trace_.record(sched_.now_ms(), TraceKind::drain, n);
  ++result_.stats.drains;
  node.draining = true;
  mark_unhealthy(n);
  // The server's SIGTERM path: the same drain, the same deadline.
  node.gw->handle_drain(sched_.now_ms(), sched_.now_ms() + limits_.shutdown_timeout_ms);
  service(n);
}

// Many clients lose their connections at once (a network blip at the load
// balancer) and all reconnect within a second.
void Simulation::storm() {
  const uint32_t pct = uint32_t(chaos_rng_.between(20, 100));
  uint64_t dropped = 0;
  for (uint32_t c = 0; c < clients_.size(); ++c)
    if (clients_[c].state == ClientState::open && chaos_rng_.below(100) < pct) {
      drop_connection(c);
      ++dropped;
    }
  ++result_.stats.storms;
  trace_.record(sched_.now_ms(), TraceKind::storm, dropped);
}

void Simulation::add_node() {
  const uint32_t n = uint32_t(nodes_.size());
  nodes_.emplace_back();
  nodes_.back().id = "n" + std::to_string(n);
  trace_.record(sched_.now_ms(), TraceKind::node_join, n);
  ++result_.stats.joins;
  start_node(n);
}

}  // namespace wsgate::sim

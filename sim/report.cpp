// What a run prints: a progress line every 10 s of virtual time and the
// summary table at the end.
#include <cstdio>

#include "simulation.hpp"

namespace wsgate::sim {

void Simulation::print_progress() {
  uint32_t up = 0;
  uint64_t conns = 0;
  for (const Node& n : nodes_)
    if (n.up) {
      ++up;
      conns += n.gw->connection_count();
    }
  const SimStats& s = result_.stats;
  const char* phase = phase_ == Phase::faults ? "faults" : phase_ == Phase::settle ? "settle" : "leave";
  std::printf("[t=%5llus %-6s] nodes up %u/%zu  connections %llu  direct sent %llu delivered %llu  broadcasts %llu  "
              "crashes %llu partitions %llu drains %llu  events %llu\n",
              (unsigned long long)(sched_.now_ms() / 1000), phase, up, nodes_.size(), (unsigned long long)conns,
              (unsigned long long)s.direct_sent, (unsigned long long)s.direct_delivered,
              (unsigned long long)s.broadcast_sent, (unsigned long long)s.crashes, (unsigned long long)s.partitions,
              (unsigned long long)s.drains, (unsigned long long)sched_.executed());
  std::fflush(stdout);
}

void Simulation::print_summary(const SimOptions& o, const SimResult& r, FILE* out) {
  const SimStats& s = r.stats;
  auto row = [&](const char* name, unsigned long long v, const char* note = "") {
    std::fprintf(out, "  %-34s %12llu  %s\n", name, v, note);
  };
  std::fprintf(out, "\nsummary  seed=%llu nodes=%u clients=%u duration=%llums faults=%s lb=%s bus=%s%s%s\n",
               (unsigned long long)o.seed, o.nodes, o.clients, (unsigned long long)o.duration_ms,
               format_faults(o.faults).c_str(), lb_name(o.lb), o.bus == BusKind::shm ? "shm" : "local",
               o.scenario.empty() ? "" : " scenario=", o.scenario.c_str());
  std::fprintf(out, " messages\n");
  row("direct sent", s.direct_sent);
  row("  to an offline user", s.direct_offline_target, "counted, not delivered (no store-and-forward in v1)");
  row("  refused by the bus (error reply)", s.direct_refused, "sender told: backpressure / unavailable");
  row("  sent on a closing connection", s.direct_ignored_closing, "ignored by the node (RFC 6455 5.5.1)");
  row("direct expected deliveries", s.direct_expected, "connections of the target at send time");
  row("direct delivered", s.direct_delivered);
  row("  to a connection opened later", s.direct_late_recipient);
  row("  missed: recipient disconnected", s.direct_missed_closed);
  row("  missed: node crashed/cut/drained", s.direct_missed_unhealthy, "partition, crash, drain or backpressure");
  row("  missed: slow consumer", s.direct_missed_slow);
  row("  missed: refused at the sender", s.direct_missed_refused);
  row("broadcast sent", s.broadcast_sent);
  row("  refused by the bus (error reply)", s.broadcast_refused);
  row("broadcast deliveries", s.broadcast_deliveries);
  row("  owed (connected whole window)", s.broadcast_obligations);
  row("  excused (unhealthy node, slow)", s.broadcast_excused);
  row("error replies received", s.errors_received);
  std::fprintf(out, " cluster\n");
  row("connections opened", s.opens);
  row("reconnects", s.reconnects);
  row("upgrades rejected (503/429)", s.rejected);
  row("connects to a dead node", s.connect_failed);
  row("peak connections", s.peak_connections);
  row("crashes / restarts", s.crashes, ("restarts (after a crash or a drain) " + std::to_string(s.restarts)).c_str());
  row("failovers (clients of crashed nodes)", s.failover_clients,
      ("slowest node failover " + std::to_string(s.failover_ms_max) + " ms").c_str());
  row("partitions / stalls / drains", s.partitions,
      ("stalls " + std::to_string(s.stalls) + ", drains " + std::to_string(s.drains)).c_str());
  row("nodes joined", s.joins);
  row("vanished clients / storms", s.vanishes, ("storms " + std::to_string(s.storms)).c_str());
  row("rebalancing moves (4002)", s.rebalance_moves,
      ("needless (node inside the band): " + std::to_string(s.needless_moves) + ", of which " +
       std::to_string(s.needless_moves_after_crash) + " on a view stale after a crash")
          .c_str());
  row("drain closes (1001)", s.drain_closes);
  row("drain cut at the deadline", s.drain_cut);
  row("slow consumer closes (1008)", s.slow_consumer_closes);
  row("idle timeouts", s.heartbeat_timeouts);
  row("sessions: close handshakes done", s.close_handshakes,
      ("close timeouts (no answer) " + std::to_string(s.close_timeouts) + ", protocol errors " +
       std::to_string(s.protocol_error_closes))
          .c_str());
  row("sessions: heartbeat pings answered", s.server_pings_answered,
      ("client pings " + std::to_string(s.client_pings) + ", pongs back " + std::to_string(s.client_pongs_received))
          .c_str());
  row("bus duplicates injected", s.bus_duplicated);
  row("duplicates/overtaken dropped by nodes", s.stale_dropped);
  row("bus messages dropped (cut off)", s.bus_dropped_cut_off);
  row("publishes refused: backpressure", s.publish_backpressure);
  row("publishes refused: unavailable", s.publish_unavailable);
  std::fprintf(out, " convergence (after the last fault)\n");
  std::fprintf(out, "  %-34s %12s\n", "presence converged",
               s.presence_converged_ms < 0 ? "never" : (std::to_string(s.presence_converged_ms) + " ms").c_str());
  if (o.lb == LbPolicy::ip_hash)
    std::fprintf(out, "  %-34s %12s\n", "load within tolerance", "n/a");
  else
    std::fprintf(out, "  %-34s %12s  max/mean %.2f\n", "load within tolerance",
                 s.load_balanced_ms < 0 ? "no" : (std::to_string(s.load_balanced_ms) + " ms").c_str(), s.max_load_ratio);
  if (s.join_balanced_ms >= 0 || s.joins > 0)
    std::fprintf(out, "  %-34s %12s\n", "nodes joined -> load within band",
                 s.join_balanced_ms < 0 ? "never" : (std::to_string(s.join_balanced_ms) + " ms").c_str());
  std::fprintf(out, " invariants\n");
  for (size_t i = 0; i < size_t(Invariant::count_); ++i) {
    const char* status = r.status[i] == 0   ? "ok"
                         : r.status[i] == 1 ? "VIOLATED"
                         : r.status[i] == 2 ? "n/a (ip_hash pins clients)"
                                            : "VIOLATED (ignored: --ignore)";
    std::fprintf(out, "  %-34s %s\n", invariant_name(Invariant(i)), status);
  }
  std::fprintf(out, " run\n");
  std::fprintf(out, "  trace_hash=%016llx  (%llu records)\n", (unsigned long long)r.trace_hash,
               (unsigned long long)r.trace_records);
  const double wall = r.wall_s > 0 ? r.wall_s : 1e-9;
  std::fprintf(out, "  virtual %.1f s in %.2f s wall: %.0f events/s, %.0f simulated clients per wall-second, x%.1f real time\n",
               r.virtual_ms / 1000.0, r.wall_s, double(s.events) / wall, double(o.clients) * (r.virtual_ms / 1000.0) / wall,
               (r.virtual_ms / 1000.0) / wall);
  std::fprintf(out, "  result: %s\n", r.ok() ? "PASS" : "FAIL");
  std::fflush(out);
}

}  // namespace wsgate::sim

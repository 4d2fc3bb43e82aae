// The invariants, checked as the run goes (at every delivery, at the end of
// every message's window, every second) and at the end. Each violation is
// reported under its invariant's name with the seed, the last trace
// records and the command that replays it.
#include <algorithm>
#include <cstdio>

#include "simulation.hpp"

namespace wsgate::sim {

void Simulation::violate(Invariant inv, std::string detail) {
  auto& status = result_.status[size_t(inv)];
  if (status == 1 || status == 3) return;  // the first of each is the one worth reading
  const bool ignored = (o_.ignored_invariants >> unsigned(inv)) & 1u;
  status = ignored ? 3 : 1;
  Violation v{inv, sched_.now_ms(), std::move(detail), trace_.recent("    ")};
  if (!o_.quiet) {
    std::printf("\nVIOLATION %s%s seed=%llu t=%llu.%03llus\n  %s\n  last events:\n%s  reproduce: %s\n\n",
                invariant_name(inv), ignored ? " (ignored: --ignore)" : "", (unsigned long long)o_.seed,
                (unsigned long long)(v.time_ms / 1000),
                (unsigned long long)(v.time_ms % 1000), v.detail.c_str(), v.recent.c_str(),
                reproduce_command(o_).c_str());
    std::fflush(stdout);
  }
  (ignored ? result_.ignored : result_.violations).push_back(std::move(v));
}

// (1) At most once per connection, and per sender connection in send order.
void Simulation::on_direct_received(uint32_t c, uint32_t g) {
  Client& cl = clients_[c];
  const uint64_t now = sched_.now_ms();
  trace_.record(now, TraceKind::got_direct, c, g);
  if (g >= directs_.size()) {
    violate(Invariant::direct_at_most_once, "client " + std::to_string(c) + " got unknown message " + std::to_string(g));
    return;
  }
  ++result_.stats.direct_delivered;
  DirectRecord& rec = directs_[g];
  bool duplicate = false;
  auto it = std::find_if(rec.recipients.begin(), rec.recipients.end(),
                         [&](const DirectRecord::Recipient& r) { return r.client == c && r.conn_no == cl.conn_no; });
  if (it != rec.recipients.end()) {
    duplicate = it->count++ > 0;
  } else {
    const std::pair<uint32_t, uint32_t> key{c, cl.conn_no};
    duplicate = std::find(rec.late.begin(), rec.late.end(), key) != rec.late.end();
    if (!duplicate) rec.late.push_back(key);
    ++result_.stats.direct_late_recipient;
  }
  if (duplicate) {
    violate(Invariant::direct_at_most_once,
            "message " + std::to_string(g) + " from client " + std::to_string(rec.sender) + " (sent at " +
                std::to_string(rec.sent_ms) + " ms via node n" + std::to_string(rec.sender_node) +
                ") delivered twice to client " + std::to_string(c) + " connection #" + std::to_string(cl.conn_no) +
                " on node n" + std::to_string(cl.node));
  }
  const PairKey key{uint64_t(c) << 32 | cl.conn_no, uint64_t(rec.sender) << 32 | rec.sender_conn_no};
  auto [last, inserted] = last_direct_.try_emplace(key, g);
  if (!inserted) {
    if (g < last->second)
      violate(Invariant::direct_in_send_order,
              "client " + std::to_string(c) + " connection #" + std::to_string(cl.conn_no) + " got message " +
                  std::to_string(g) + " from client " + std::to_string(rec.sender) + " after its later message " +
                  std::to_string(last->second));
    last->second = std::max(last->second, g);
  }
}

// (2) No client gets a broadcast twice on one connection.
void Simulation::on_broadcast_received(uint32_t c, uint32_t b) {
  Client& cl = clients_[c];
  trace_.record(sched_.now_ms(), TraceKind::got_broadcast, c, b);
  if (b >= broadcasts_.size()) {
    violate(Invariant::broadcast_exactly_once, "client " + std::to_string(c) + " got unknown broadcast " + std::to_string(b));
    return;
  }
  ++result_.stats.broadcast_deliveries;
  BroadcastRecord& rec = broadcasts_[b];
  if (rec.received_on.empty()) return;  // past its retention
  if (rec.received_on[c] == cl.conn_no) {
    violate(Invariant::broadcast_exactly_once,
            "broadcast " + std::to_string(b) + " from client " + std::to_string(rec.sender) + " delivered twice to client " +
                std::to_string(c) + " connection #" + std::to_string(cl.conn_no) + " on node n" + std::to_string(cl.node));
  }
  rec.received_on[c] = cl.conn_no;
}

// (1') At the end of a direct message's window: every connection of the
// target that was there when it was sent got it, unless something on its
// path failed (and the failure is counted by why).
void Simulation::check_direct(uint32_t g) {
  DirectRecord& rec = directs_[g];
  SimStats& s = result_.stats;
  s.direct_expected += rec.recipients.size();
  const bool sender_ok = healthy_since(rec.sender_node, rec.sender_life, rec.sent_ms);
  for (const DirectRecord::Recipient& r : rec.recipients) {
    if (r.count > 0) continue;
    const Client& t = clients_[r.client];
    const bool still = t.state == ClientState::open && t.conn_no == r.conn_no && !nodes_[t.node].gw->is_closing(t.conn);
    if (!rec.accepted) ++s.direct_missed_refused;
    else if (!still) ++s.direct_missed_closed;
    else if (t.slow) ++s.direct_missed_slow;
    else if (!sender_ok || !healthy_since(t.node, nodes_[t.node].life, rec.sent_ms)) ++s.direct_missed_unhealthy;
    else
      violate(Invariant::direct_delivered_when_healthy,
              "message " + std::to_string(g) + " from client " + std::to_string(rec.sender) + " (node n" +
                  std::to_string(rec.sender_node) + ", sent at " + std::to_string(rec.sent_ms) + " ms) never reached client " +
                  std::to_string(r.client) + " connection #" + std::to_string(r.conn_no) + " on node n" +
                  std::to_string(t.node) + ", though every node on its path stayed healthy");
  }
  std::vector<DirectRecord::Recipient>().swap(rec.recipients);  // done with it: memory stays bounded
  rec.recipients.shrink_to_fit();
}

// (2) At the end of a broadcast's window: every client connected on one
// connection for the whole window, to a node healthy for the whole window
// (and the sender's node too), got it.
void Simulation::check_broadcast(uint32_t b) {
  BroadcastRecord& rec = broadcasts_[b];
  rec.checked = true;
  if (!rec.accepted) return;
  SimStats& s = result_.stats;
  const bool sender_ok = healthy_since(rec.sender_node, rec.sender_life, rec.sent_ms);
  for (uint32_t c = 0; c < clients_.size(); ++c) {
    const Client& t = clients_[c];
    if (t.state != ClientState::open || t.opened_ms >= rec.sent_ms) continue;
    if (nodes_[t.node].gw->is_closing(t.conn)) continue;
    if (rec.received_on[c] == t.conn_no) {
      ++s.broadcast_obligations;
      continue;
    }
    if (!sender_ok || t.slow || !healthy_since(t.node, nodes_[t.node].life, rec.sent_ms)) {
      ++s.broadcast_excused;
      continue;
    }
    ++s.broadcast_obligations;
    violate(Invariant::broadcast_exactly_once,
            "broadcast " + std::to_string(b) + " from client " + std::to_string(rec.sender) + " (node n" +
                std::to_string(rec.sender_node) + ", sent at " + std::to_string(rec.sent_ms) + " ms) never reached client " +
                std::to_string(c) + " (node n" + std::to_string(t.node) + ", connected since " +
                std::to_string(t.opened_ms) + " ms), though both nodes stayed healthy");
  }
}

// (5) Bounded memory: every table and queue of every node within its limit,
// and the Gateway's count matching the connections the driver holds.
void Simulation::check_memory() {
  uint64_t total = 0;
  for (uint32_t n = 0; n < nodes_.size(); ++n) {
    Node& node = nodes_[n];
    if (!node.up) continue;
    Gateway& gw = *node.gw;
    size_t live = 0;
    for (uint32_t i = 0; i < node.conns.size(); ++i) {
      const Conn& cn = node.conns[i];
      if (!cn.live) continue;
      ++live;
      const ConnId id{i, cn.generation};
      if (!gw.is_open(id)) {
        violate(Invariant::memory_bounded, "node n" + std::to_string(n) + " slot " + std::to_string(i) + " closed under the driver");
        continue;
      }
      const size_t queued = gw.outbox(id).queued_bytes();
      if (queued > limits_.send_queue_max_bytes)
        violate(Invariant::memory_bounded, "node n" + std::to_string(n) + " outbox of slot " + std::to_string(i) + " holds " +
                                               std::to_string(queued) + " bytes > send_queue_max_bytes");
    }
    total += live;
    std::string why;
    if (gw.connection_count() != live)
      why = "connection_count " + std::to_string(gw.connection_count()) + " != " + std::to_string(live) + " open sockets";
    else if (gw.user_count() > gw.connection_count())
      why = "user_count " + std::to_string(gw.user_count()) + " > connection_count";
    else if (gw.tracked_origins() > limits_.max_tracked_origins)
      why = "tracked_origins " + std::to_string(gw.tracked_origins()) + " > max_tracked_origins";
    else if (gw.peer_loads().size() > nodes_.size())
      why = "peer_loads " + std::to_string(gw.peer_loads().size()) + " > nodes";
    else if (node.bus->held_count() > 1000000)
      why = "bus holds " + std::to_string(node.bus->held_count()) + " messages";
    if (!why.empty()) violate(Invariant::memory_bounded, "node n" + std::to_string(n) + ": " + why);
  }
  result_.stats.peak_connections = std::max(result_.stats.peak_connections, total);
}

// After every event a node handled: the core's own invariants
// (Gateway::check_invariants). A breach aborts the run with the assertion
// that failed; the seed printed first reproduces it (with
// --full-check-every 1 it stops at the first event that broke it). A full
// check walks every connection: run after every event it made a 10,000
// client run 13x slower, so by default it runs every connections/64
// events of the node, the O(1) checks after every one.
void Simulation::check_core(uint32_t n) {
  Node& node = nodes_[n];
  const Gateway& gw = *node.gw;
  const uint64_t every = o_.full_check_every ? o_.full_check_every : 1 + gw.connection_count() / 64;
  if (++node.events_since_full_check >= every) {
    node.events_since_full_check = 0;
    gw.check_invariants(Gateway::InvariantCheck::full);
  } else {
    gw.check_invariants(Gateway::InvariantCheck::cheap);
  }
}

// Every message on the bus comes from a node of the cluster, so the
// nodes' check of transport input (transport_input.hpp) must let all of it
// in, whatever the faults did to its timing and order.
void Simulation::check_transport_input() {
  for (uint32_t n = 0; n < nodes_.size(); ++n) {
    if (!nodes_[n].up) continue;
    const Metrics& m = nodes_[n].gw->metrics();
    for (size_t r = 0; r < size_t(TransportInvalid::count_); ++r)
      if (m.transport_invalid_total[r] != 0)
        violate(Invariant::transport_input_genuine,
                "node n" + std::to_string(n) + " dropped " + std::to_string(m.transport_invalid_total[r]) +
                    " messages from other nodes as invalid (" + transport_invalid_name(TransportInvalid(r)) + ")");
  }
}

// (3) After the last fault, the bus's presence equals the connections the
// nodes hold, within the bus's TTL (+ a margin), and stays so.
void Simulation::check_presence() {
  const uint64_t now = sched_.now_ms();
  std::map<std::pair<uint32_t, uint32_t>, uint32_t> truth;  // (user, node) -> connections
  for (uint32_t n = 0; n < nodes_.size(); ++n) {
    if (!nodes_[n].up) continue;
    for (const Conn& cn : nodes_[n].conns)
      if (cn.live) ++truth[{cn.user, n}];
  }
  std::vector<PresenceEntry> want;
  want.reserve(truth.size());
  for (const auto& [key, count] : truth) want.push_back({user_names_[key.first], nodes_[key.second].id, count});
  std::sort(want.begin(), want.end());
  const std::vector<PresenceEntry> got = bus_->presence(now);
  const uint64_t deadline = settle_start_ms_ + bus_->presence_ttl_ms() + 2000;
  if (got == want) {
    if (result_.stats.presence_converged_ms < 0) result_.stats.presence_converged_ms = int64_t(now - settle_start_ms_);
    return;
  }
  if (now < deadline) return;
  // Name the first difference.
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  auto show = [](const std::vector<PresenceEntry>& v, size_t k) {
    return k < v.size() ? v[k].user + "@" + v[k].node + "=" + std::to_string(v[k].connections) : std::string("(none)");
  };
  violate(Invariant::presence_converges,
          std::to_string(now - settle_start_ms_) + " ms after the last fault the bus reports " + std::to_string(got.size()) +
              " presence entries, the nodes hold " + std::to_string(want.size()) + "; first difference: bus " + show(got, i) +
              " vs nodes " + show(want, i));
}

// (4) Once settled, the most loaded node holds at most (1 + tolerance) x
// the mean, +1 for rounding. Not under ip_hash, which pins each address to
// a node: a move there reconnects to the same node.
// Serving nodes (up, not draining) within (1 + tolerance) x mean, +1.
bool Simulation::cluster_balanced(uint64_t& most, double& mean) const {
  uint64_t total = 0;
  uint32_t k = 0;
  most = 0;
  for (const Node& node : nodes_) {
    if (!node.up || node.draining) continue;
    const uint64_t c = node.gw->connection_count();
    total += c;
    most = std::max(most, c);
    ++k;
  }
  mean = k ? double(total) / k : 0;
  if (k < 2 || total == 0) return true;
  return double(most) <= mean * (1.0 + limits_.rebalance_tolerance_pct / 100.0) + 1.0;
}

void Simulation::check_balance(bool final_check) {
  if (o_.lb == LbPolicy::ip_hash) return;
  uint64_t most = 0;
  double mean = 0;
  const bool ok = cluster_balanced(most, mean);
  if (mean == 0) return;
  const double ceiling = mean * (1.0 + limits_.rebalance_tolerance_pct / 100.0) + 1.0;
  if (ok && result_.stats.load_balanced_ms < 0) result_.stats.load_balanced_ms = int64_t(sched_.now_ms() - settle_start_ms_);
  if (!ok) result_.stats.load_balanced_ms = -1;  // must hold at the end, not just once
  if (!final_check) return;
  result_.stats.max_load_ratio = double(most) / mean;
  if (!ok) {
    std::string loads;
    for (const Node& node : nodes_)
      if (node.up) loads += " " + node.id + "=" + std::to_string(node.gw->connection_count()) + (node.draining ? "(draining)" : "");
    violate(Invariant::load_balanced, "after settling, most loaded node holds " + std::to_string(most) + " > ceiling " +
                                          std::to_string(ceiling) + " (mean " + std::to_string(mean) + "):" + loads);
  }
}

// (4') A node asks a client to move (4002) only if it really is above the
// band. Judged with the true loads of every serving node at that moment
// (the god's view the nodes approximate with their load reports).
void Simulation::check_rebalance_move(uint32_t n) {
  uint64_t total = 0;
  uint32_t k = 0;
  for (const Node& node : nodes_)
    if (node.up && !node.draining) {
      total += node.gw->connection_count();
      ++k;
    }
  if (k < 2) return;
  const double mean = double(total) / k;
  // Reports are up to an interval old, so a node near the band's edge may
  // misjudge by a few connections. A move is needless beyond doubt when, by
  // the true loads, the node is already at or below the very target the
  // core aims for (the middle of the band, (1 + tolerance/2) x mean).
  const double ceiling = mean * (1.0 + limits_.rebalance_tolerance_pct / 200.0);
  const uint64_t mine = nodes_[n].gw->connection_count();
  if (double(mine) > ceiling) return;
  ++result_.stats.needless_moves;
  // A node cannot know of a crash before its peers' reports age out (three
  // report intervals): a move on that stale picture is counted, not failed.
  if (last_crash_ms_ && sched_.now_ms() < last_crash_ms_ + 3ull * limits_.load_report_interval_ms) {
    ++result_.stats.needless_moves_after_crash;
    return;
  }
  std::string loads;
  for (const Node& node : nodes_)
    if (node.up) loads += " " + node.id + "=" + std::to_string(node.gw->connection_count());
  violate(Invariant::rebalance_only_when_needed,
          "node n" + std::to_string(n) + " moved a client (4002) holding " + std::to_string(mine) +
              " connections, inside the band (at or below the core's target " + std::to_string(ceiling) + ", true mean " + std::to_string(mean) +
              "); true loads:" + loads + "; its peers' reported loads:" + [&] {
                std::string seen;
                std::map<std::string, uint64_t> sorted;  // peer_loads is unordered: print in order
                for (const auto& [id, load] : nodes_[n].gw->peer_loads()) sorted[id] = load.connections;
                for (const auto& [id, c] : sorted) seen += " " + id + "=" + std::to_string(c);
                return seen;
              }());
}

// (6) Every client left: no connection, user or presence entry remains.
void Simulation::check_tables_empty() {
  for (uint32_t n = 0; n < nodes_.size(); ++n) {
    const Node& node = nodes_[n];
    if (!node.up) continue;
    if (node.gw->connection_count() != 0 || node.gw->user_count() != 0)
      violate(Invariant::tables_empty_after_leave,
              "node n" + std::to_string(n) + " still holds " + std::to_string(node.gw->connection_count()) +
                  " connections of " + std::to_string(node.gw->user_count()) + " users");
  }
  const std::vector<PresenceEntry> left = bus_->presence(sched_.now_ms());
  if (!left.empty())
    violate(Invariant::tables_empty_after_leave, "the bus still reports " + std::to_string(left.size()) +
                                                     " presence entries, first " + left[0].user + "@" + left[0].node);
}

}  // namespace wsgate::sim

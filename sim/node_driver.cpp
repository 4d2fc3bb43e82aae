// What the server does for a node, done by the simulator: feed the Gateway
// its events, poll its transport, run the driver contract's flush round
// (session/driver_contract.hpp: closes through each connection's WsSession,
// then writes cut after the close frame, then settling: close timer, socket
// close), and call handle_tick when it asks.
#include <algorithm>

#include "driver_contract.hpp"
#include "simulation.hpp"

namespace wsgate::sim {

namespace {
constexpr uint64_t poll_interval_ms = 100;   // an idle node still polls (heartbeat, presence)
constexpr uint64_t slow_drain_interval_ms = 100;
constexpr size_t slow_bytes_per_drain = 96;  // a slow reader: ~1 KB/s

uint64_t pack_conn(ConnId id) { return uint64_t(id.index) << 32 | id.generation; }
}  // namespace

void Simulation::start_node(uint32_t n) {
  Node& node = nodes_[n];
  const uint64_t now = sched_.now_ms();
  ++node.life;
  node.up = true;
  node.draining = node.cut = node.stalled = false;
  node.inner = bus_->attach(node.id, now);
  node.bus = std::make_unique<FaultTransport>(*node.inner, rng_.fork(), bus_faults_);
  GatewayConfig config;
  config.node_id = node.id;
  config.incarnation = rng_.next();
  config.limits = limits_;
  node.gw = std::make_unique<Gateway>(config, node.bus.get());
  node.conns.clear();
  node.slow_slots.clear();
  node.pending_arrivals = 0;
  node.tick_at = node.poll_at = node.slow_drain_at = UINT64_MAX;
  node.refused_seen = node.published_seen = 0;
  node.last_unhealthy_ms = now;  // a joining node is not yet part of any window
  trace_.record(now, TraceKind::restart, n, config.incarnation & 0xFFFF);
  schedule_poll(n, now);
  service(n);
}

// The process dies: no close frames, no goodbye on the bus. Its clients see
// their TCP connections reset and reconnect (to other nodes: the load
// balancer stops sending to a dead backend).
void Simulation::crash_node(uint32_t n) {
  Node& node = nodes_[n];
  const uint64_t now = sched_.now_ms();
  trace_.record(now, TraceKind::crash, n);
  ++result_.stats.crashes;
  harvest_metrics(node);
  node.crashed_at_ms = now;
  last_crash_ms_ = now;
  node.crash_orphans = 0;
  std::vector<uint32_t> orphans;
  for (Conn& cn : node.conns)
    if (cn.live && cn.client != none && !cn.zombie) orphans.push_back(cn.client);
  node.conns.clear();  // the sessions die with the process, before their Gateway
  node.gw.reset();
  node.bus.reset();
  bus_->crash(std::move(node.inner));
  node.up = false;
  ++node.life;
  node.pending_arrivals = 0;
  mark_unhealthy(n);
  for (uint32_t c : orphans) {
    Client& cl = clients_[c];
    cl.failover_from = n;
    ++node.crash_orphans;
    ++result_.stats.failover_clients;
    lost_connection(c, backoff_ms(0));
  }
  if (o_.has(Fault::restart) && phase_ == Phase::faults)
    sched_.after(chaos_rng_.between(500, 4000), EventKind::node_restart, n, node.life);
}

// A drained node exits (leaving the bus at once) and comes back as a new
// incarnation, as in a rolling deploy. Normally every connection is closed
// by then; past the shutdown deadline the rest are cut without a close
// handshake, as the server does, and their clients reconnect.
void Simulation::exit_drained_node(uint32_t n) {
  Node& node = nodes_[n];
  trace_.record(sched_.now_ms(), TraceKind::drained_exit, n);
  harvest_metrics(node);
  std::vector<uint32_t> cut;
  for (Conn& cn : node.conns)
    if (cn.live && cn.client != none && !cn.zombie) cut.push_back(cn.client);
  node.conns.clear();  // the sessions go with the process, before their Gateway
  node.gw.reset();
  node.bus.reset();
  node.inner.reset();
  node.up = false;
  ++node.life;
  mark_unhealthy(n);
  sched_.after(chaos_rng_.between(500, 3000), EventKind::node_restart, n, node.life);
  result_.stats.drain_cut += cut.size();
  for (uint32_t c : cut) lost_connection(c, backoff_ms(0));
}

void Simulation::harvest_metrics(Node& node) {
  const Metrics& m = node.gw->metrics();
  SimStats& s = result_.stats;
  s.rebalance_moves += m.rebalance_closes_total;
  s.drain_closes += m.drain_closes_total;
  s.slow_consumer_closes += m.slow_consumer_closes_total;
  s.heartbeat_timeouts += m.heartbeat_timeouts_total;
  s.protocol_error_closes += m.protocol_error_closes_total;
  s.stale_dropped += m.transport_stale_dropped_total;
  const FaultCounters& f = node.bus->counters();
  s.bus_duplicated += f.duplicated;
  s.bus_dropped_cut_off += f.dropped_cut_off;
  s.publish_backpressure += f.publish_backpressure;
  s.publish_unavailable += f.publish_unavailable;
}

bool Simulation::available(uint32_t n) const {
  const Node& node = nodes_[n];
  return node.up && !node.draining && !node.cut && !node.stalled;
}

uint32_t Simulation::available_count() const {
  uint32_t k = 0;
  for (uint32_t n = 0; n < nodes_.size(); ++n) k += available(n);
  return k;
}

// Healthy for a whole window: the same life, nothing wrong now, and
// nothing wrong since the window began.
bool Simulation::healthy_since(uint32_t n, uint32_t life, uint64_t since_ms) const {
  const Node& node = nodes_[n];
  return node.life == life && available(n) && node.last_unhealthy_ms < since_ms;
}

// After anything the Gateway did: the driver contract's flush round (the
// same code the server runs), then schedule the next tick and poll. Once per
// event, like the server's once-per-loop-iteration flush; a second round
// picks up what the first one caused (a socket closed, a client's reply).
void Simulation::service(uint32_t n) {
  Node& node = nodes_[n];
  if (!node.up) return;
  Gateway& gw = *node.gw;
  const FaultCounters& fc = node.bus->counters();
  const uint64_t refused = fc.publish_backpressure + fc.publish_unavailable + fc.publish_other_refused;
  if (refused != node.refused_seen) {  // this node could not reach the others
    node.refused_seen = refused;
    mark_unhealthy(n);
  }
  struct Host final : SessionHost {
    Simulation& sim;
    uint32_t n;
    bool busy = false;
    Host(Simulation& s, uint32_t node) : sim(s), n(node) {}
    WsSession* session_of(ConnId id) override {
      Conn* cn = sim.live_conn(n, sim.nodes_[n].life, id);
      return cn ? cn->ws.get() : nullptr;
    }
    void note_close_request(const CloseRequest& req) override {
      busy = true;
      sim.note_close_request(n, req);
    }
    void write(ConnId id, WsSession&) override {
      busy = true;
      sim.flush(n, id);
    }
    void settle(ConnId id, WsSession&) override { sim.settle(n, id); }
  } host(*this, n);
  for (int round = 0; round < 2 && node.up; ++round) {
    host.busy = false;
    run_flush_round(gw, host);
    if (!host.busy) break;
  }
  if (!node.up) return;
  const uint64_t now = sched_.now_ms();
  // Never twice in one millisecond: a core asking for a tick at `now` again
  // would spin the scheduler.
  const uint64_t tick = std::max({gw.next_tick_ms(), now, node.last_tick_ms + 1});
  if (tick < node.tick_at) {
    node.tick_at = tick;
    sched_.at(tick, EventKind::node_tick, n, node.life);
  }
  if (const uint64_t r = node.bus->next_release_ms(); r != UINT64_MAX) schedule_poll(n, r);
  if (fc.published != node.published_seen) {
    node.published_seen = fc.published;
    poll_all_soon();
  }
  check_core(n);
  // The server's decision, from the same core call: exit once empty, or
  // once the shutdown deadline has passed.
  const DrainStatus drain = gw.drain_status(now);
  if (drain == DrainStatus::complete || drain == DrainStatus::overdue) exit_drained_node(n);
}

Simulation::Conn* Simulation::live_conn(uint32_t n, uint32_t life, ConnId id) {
  Node& node = nodes_[n];
  if (!node.up || node.life != life || id.index >= node.conns.size()) return nullptr;
  Conn& cn = node.conns[id.index];
  if (!cn.live || cn.generation != id.generation || !cn.ws) return nullptr;
  return &cn;
}

// Writes a connection's outbox (what its session allows): all of it to a
// healthy reader, a trickle to a slow one, the kernel buffer's worth to a
// vanished one; then the client's replies go back and the session settles.
void Simulation::flush(uint32_t n, ConnId id) {
  Node& node = nodes_[n];
  Conn& cn = node.conns[id.index];
  size_t budget = SIZE_MAX;
  uint32_t reader = cn.client;
  if (cn.zombie) {
    budget = cn.socket_credit;
    reader = none;
  } else if (reader != none && clients_[reader].slow) {
    budget = 0;  // the slow-drain timer reads it
    if (!node.gw->outbox(id).empty() && !cn.in_slow_list) {
      cn.in_slow_list = true;
      node.slow_slots.push_back(id.index);
      if (node.slow_drain_at == UINT64_MAX) {
        node.slow_drain_at = sched_.now_ms() + slow_drain_interval_ms;
        sched_.at(node.slow_drain_at, EventKind::node_slow_drain, n, node.life);
      }
    }
  }
  const size_t took = write_out(n, id, reader, budget);
  if (cn.zombie) cn.socket_credit -= std::min(cn.socket_credit, took);
  if (reader != none) send_replies(reader);
  settle(n, id);
}

size_t Simulation::write_out(uint32_t n, ConnId id, uint32_t reader, size_t budget) {
  Gateway& gw = *nodes_[n].gw;
  Conn& cn = nodes_[n].conns[id.index];
  size_t total = 0;
  ByteRange ranges[32];
  while (budget > 0 && cn.ws) {
    const size_t k = gather_writable(gw, *cn.ws, id, ranges, budget);
    if (k == 0) break;
    size_t took = 0;
    for (size_t i = 0; i < k; ++i) {
      // The client may stop reading mid-write (our close frame arrived).
      if (reader != none && cn.client == reader) receive(reader, ranges[i].data, ranges[i].size);
      took += ranges[i].size;
    }
    record_written(gw, *cn.ws, id, took);
    budget -= took;
    total += took;
  }
  return total;
}

void Simulation::on_slow_drain(uint32_t n, uint32_t life) {
  Node& node = nodes_[n];
  node.slow_drain_at = UINT64_MAX;
  if (!node.up || node.life != life) return;
  Gateway& gw = *node.gw;
  std::vector<uint32_t> keep;
  for (uint32_t index : node.slow_slots) {
    Conn& cn = node.conns[index];
    const ConnId id{index, cn.generation};
    cn.in_slow_list = false;
    if (!cn.live || cn.client == none || !gw.is_open(id) || !cn.ws) continue;
    const uint32_t c = cn.client;
    write_out(n, id, c, slow_bytes_per_drain);
    send_replies(c);
    if (cn.live && cn.ws && cn.client != none && !gw.outbox(id).empty() &&
        cn.ws->writable_bytes(gw.outbox(id).queued_bytes()) > 0) {
      cn.in_slow_list = true;
      keep.push_back(index);
    }
    settle(n, id);
  }
  node.slow_slots.swap(keep);
  if (!node.slow_slots.empty()) {
    node.slow_drain_at = sched_.now_ms() + slow_drain_interval_ms;
    sched_.at(node.slow_drain_at, EventKind::node_slow_drain, n, node.life);
  }
  service(n);
}

// The Gateway asked to close a connection; the session starts the close
// handshake right after this (driver contract). Counted here.
void Simulation::note_close_request(uint32_t n, const CloseRequest& req) {
  const Conn& cn = nodes_[n].conns[req.id.index];
  trace_.record(sched_.now_ms(), TraceKind::server_close, cn.client == none ? UINT32_MAX : cn.client, n,
                uint64_t(req.code));
  const uint16_t code = uint16_t(req.code);
  const size_t slot = code == 1000 ? 0 : code == 1001 ? 1 : code == 1008 ? 2 : code == 4002 ? 3 : code == 4001 ? 4 : 5;
  ++result_.stats.server_closes_by_code[slot];
  if (req.code == CloseCode::reconnect) check_rebalance_move(n);
}

// The contract's settling, with the simulator's clock: the close timer is
// an event; closing the socket tells the core at once.
void Simulation::settle(uint32_t n, ConnId id) {
  Node& node = nodes_[n];
  Conn* cn = live_conn(n, node.life, id);
  if (!cn) return;
  const SettleDecision d = decide_settle(*cn->ws, cn->close_timer_set, cn->reset);
  if (d.start_close_timer) {
    cn->close_timer_set = true;
    sched_.after(limits_.close_timeout_ms, EventKind::close_timeout, n, node.life, pack_conn(id));
  }
  if (d.close_socket) {
    ++result_.stats.close_handshakes;
    close_socket(n, id);
  }
}

// The socket is gone (close handshake done, reset, or close timeout). A
// client still reading it sees its connection end.
void Simulation::close_socket(uint32_t n, ConnId id) {
  Node& node = nodes_[n];
  Conn& cn = node.conns[id.index];
  const uint32_t c = cn.client;
  cn.live = false;
  cn.client = none;
  cn.ws.reset();
  node.gw->handle_closed(id);
  trace_.record(sched_.now_ms(), TraceKind::closed, n, id.index);
  if (c != none) {
    clients_[c].replies.clear();
    lost_connection(c, backoff_ms(1));
  }
}

// The client's close frame (its own, or the answer to ours) reaches the node.
void Simulation::on_client_close_frame(uint32_t n, uint32_t life, ConnId id) {
  Conn* cn = live_conn(n, life, id);
  if (!cn) return;
  const char code[2] = {char(cn->client_close_code >> 8), char(cn->client_close_code)};
  std::string frame;
  append_client_frame(frame, Opcode::close, std::string_view(code, 2), pack_conn(id));
  cn->ws->feed(reinterpret_cast<const uint8_t*>(frame.data()), frame.size(), sched_.now_ms());
  settle(n, id);
  service(n);
}

// A TCP reset: the socket is closed at once, no handshake.
void Simulation::on_conn_reset(uint32_t n, uint32_t life, ConnId id) {
  if (!live_conn(n, life, id)) return;
  close_socket(n, id);
  service(n);
}

// Our close frame got no answer within close_timeout_ms: the socket is
// closed anyway, as the server's close deadline does.
void Simulation::on_close_timeout(uint32_t n, uint32_t life, ConnId id) {
  if (!live_conn(n, life, id)) return;
  ++result_.stats.close_timeouts;
  trace_.record(sched_.now_ms(), TraceKind::close_timeout, n, id.index);
  close_socket(n, id);
  service(n);
}

void Simulation::on_tick(uint32_t n, uint32_t life) {
  Node& node = nodes_[n];
  node.tick_at = UINT64_MAX;
  if (!node.up || node.life != life) return;
  const uint64_t now = sched_.now_ms();
  node.last_tick_ms = now;
  node.gw->handle_tick(now);
  trace_.record(now, TraceKind::tick, n, node.gw->connection_count());
  service(n);
}

void Simulation::on_poll(uint32_t n, uint32_t life) {
  Node& node = nodes_[n];
  node.poll_at = UINT64_MAX;
  if (!node.up || node.life != life || node.stalled) return;
  const uint64_t now = sched_.now_ms();
  node.bus->poll(now);
  service(n);
  if (node.up && node.life == life) schedule_poll(n, now + poll_interval_ms);
}

void Simulation::schedule_poll(uint32_t n, uint64_t at_ms) {
  Node& node = nodes_[n];
  if (!node.up) return;
  at_ms = std::max(at_ms, sched_.now_ms());
  if (at_ms >= node.poll_at) return;
  node.poll_at = at_ms;
  sched_.at(at_ms, EventKind::node_poll, n, node.life);
}

// A publish landed on the bus: every node reads its ring a millisecond later
// (the server's loop wakes on the bus's eventfd).
void Simulation::poll_all_soon() {
  const uint64_t at = sched_.now_ms() + 1;
  for (uint32_t n = 0; n < nodes_.size(); ++n) schedule_poll(n, at);
}

}  // namespace wsgate::sim

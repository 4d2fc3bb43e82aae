// The virtual clients and the load balancer in front of the nodes. A client
// connects, sends direct messages and (sometimes) broadcasts whose content
// names it and its sequence number, and now and then a ping, all as masked
// WebSocket frames into the connection's WsSession; it decodes what the
// node writes with the one frame codec, answers pings with pongs, answers a
// close frame with its own, and reconnects with exponential backoff and
// jitter when its connection goes, at once when the server asks it to
// (4002, 1001).
#include <algorithm>
#include <charconv>

#include "simulation.hpp"

namespace wsgate::sim {

namespace {
uint64_t pack_conn(ConnId id) { return uint64_t(id.index) << 32 | id.generation; }

// The numbers of a content array `[a,b,c]` at the end of a delivery.
bool parse_content(std::string_view payload, uint64_t (&v)[3]) {
  const size_t open = payload.rfind('[');
  if (open == std::string_view::npos) return false;
  const char* p = payload.data() + open + 1;
  const char* end = payload.data() + payload.size();
  for (int i = 0; i < 3; ++i) {
    auto [next, ec] = std::from_chars(p, end, v[i]);
    if (ec != std::errc()) return false;
    p = next + 1;  // the comma (or the closing bracket)
  }
  return true;
}
// Messages the core has taken in, valid or not: a message framed by a
// client on a connection that is not closing must add exactly one.
uint64_t messages_taken(const Metrics& m) {
  uint64_t n = m.messages_invalid_total;
  for (uint64_t v : m.messages_in_total) n += v;
  return n;
}
}  // namespace

void append_client_frame(std::string& out, Opcode op, std::string_view payload, uint64_t key_seed) {
  const uint64_t k = mix64(key_seed);
  const uint8_t key[4] = {uint8_t(k), uint8_t(k >> 8), uint8_t(k >> 16), uint8_t(k >> 24)};
  uint8_t hdr[any_frame_header_max_bytes];
  out.append(reinterpret_cast<const char*>(hdr), encode_masked_frame_header(hdr, op, payload.size(), key));
  const size_t at = out.size();
  out.append(payload);
  apply_frame_mask(reinterpret_cast<uint8_t*>(out.data()) + at, payload.size(), key);
}

void Simulation::send_frame(uint32_t c, Opcode op, std::string_view payload) {
  Client& cl = clients_[c];
  Conn& cn = nodes_[cl.node].conns[cl.conn.index];
  if (!cn.live || cn.client != c || !cn.ws) return;  // the socket went meanwhile
  std::string& wire = frame_scratch_;
  wire.clear();
  append_client_frame(wire, op, payload, uint64_t(c) << 32 ^ cl.frames_sent++);
  cn.ws->feed(reinterpret_cast<const uint8_t*>(wire.data()), wire.size(), sched_.now_ms());
  settle(cl.node, cl.conn);
}

void Simulation::send_text(uint32_t c, std::string_view text) {
  Client& cl = clients_[c];
  const uint32_t n = cl.node;
  const ConnId id = cl.conn;
  Gateway& gw = *nodes_[n].gw;
  const bool closing = gw.is_closing(id);
  const uint64_t before = messages_taken(gw.metrics());
  send_frame(c, Opcode::text, text);
  const uint64_t taken = messages_taken(gw.metrics()) - before;
  if (!closing && taken != 1)
    violate(Invariant::messages_reach_core, "client " + std::to_string(c) + " sent a " + std::to_string(text.size()) +
                                                "-byte message on node n" + std::to_string(n) + " slot " +
                                                std::to_string(id.index) + "; the core took " + std::to_string(taken));
}

void Simulation::send_replies(uint32_t c) {
  Client& cl = clients_[c];
  if (cl.replies.empty()) return;
  std::string wire;
  wire.swap(cl.replies);
  if (cl.state != ClientState::open) return;
  Conn& cn = nodes_[cl.node].conns[cl.conn.index];
  if (!cn.live || cn.client != c || !cn.ws) return;
  cn.ws->feed(reinterpret_cast<const uint8_t*>(wire.data()), wire.size(), sched_.now_ms());
}

void Simulation::schedule_connect(uint32_t c, uint64_t delay_ms) {
  Client& cl = clients_[c];
  cl.state = ClientState::offline;
  ++cl.epoch;
  sched_.after(delay_ms, EventKind::client_connect, c, cl.epoch);
}

// Exponential backoff with "equal jitter": half the step fixed, half random,
// so a crowd that failed together does not come back together.
uint64_t Simulation::backoff_ms(uint32_t attempts) {
  const uint64_t step = std::min<uint64_t>(10000, 100ull << std::min<uint32_t>(attempts, 7));
  return step / 2 + rng_.below(step / 2 + 1);
}

void Simulation::reconnect_after_failure(uint32_t c) {
  Client& cl = clients_[c];
  ++cl.attempts;
  schedule_connect(c, backoff_ms(cl.attempts));
}

// The load balancer: only nodes that are up and not draining (a drained
// pod leaves the Service's endpoints; a dead one fails its health check).
uint32_t Simulation::pick_node(uint32_t c) {
  uint32_t live[64];
  uint32_t k = 0;
  for (uint32_t n = 0; n < nodes_.size() && k < 64; ++n)
    if (nodes_[n].up && !nodes_[n].draining) live[k++] = n;
  if (k == 0) return none;
  switch (o_.lb) {
    case LbPolicy::ip_hash: return live[mix64(clients_[c].addr) % k];
    case LbPolicy::random: return live[rng_.below(k)];
    case LbPolicy::least_connections: {
      uint32_t best = live[0];
      uint64_t best_load = UINT64_MAX;
      for (uint32_t i = 0; i < k; ++i) {
        const Node& node = nodes_[live[i]];
        const uint64_t load = node.gw->connection_count() + node.pending_arrivals;
        if (load < best_load) {
          best_load = load;
          best = live[i];
        }
      }
      return best;
    }
  }
  return none;
}

void Simulation::on_connect(uint32_t c, uint32_t epoch) {
  Client& cl = clients_[c];
  if (cl.epoch != epoch || cl.state != ClientState::offline) return;
  if (phase_ == Phase::leave || phase_ == Phase::end) {
    cl.state = ClientState::gone;
    return;
  }
  const uint32_t n = pick_node(c);
  if (n == none) {
    reconnect_after_failure(c);
    return;
  }
  Node& node = nodes_[n];
  cl.state = ClientState::connecting;
  ++cl.epoch;
  ++node.pending_arrivals;
  ++result_.stats.connects;
  trace_.record(sched_.now_ms(), TraceKind::connect_try, c, n);
  sched_.after(latency_ms(), EventKind::client_arrive, c, cl.epoch, uint64_t(n) << 32 | node.life);
}

// The upgrade request reaches the node: admission, then the 101.
void Simulation::on_arrive(uint32_t c, uint32_t epoch, uint32_t n, uint32_t life) {
  Node& node = nodes_[n];
  const bool node_ok = node.up && node.life == life;
  if (node_ok && node.pending_arrivals > 0) --node.pending_arrivals;
  Client& cl = clients_[c];
  if (cl.epoch != epoch || cl.state != ClientState::connecting) return;
  if (!node_ok) {  // connection refused: the node died meanwhile
    ++result_.stats.connect_failed;
    reconnect_after_failure(c);
    return;
  }
  const uint64_t now = sched_.now_ms();
  const char ip[4] = {char(cl.addr >> 24), char(cl.addr >> 16), char(cl.addr >> 8), char(cl.addr)};
  if (now - cl.ip_window_start_ms >= limits_.ip_window_ms) {
    cl.ip_attempts_before = now - cl.ip_window_start_ms < 2ull * limits_.ip_window_ms ? cl.ip_attempts : 0;
    cl.ip_window_start_ms = now;
    cl.ip_attempts = 0;
  }
  ++cl.ip_attempts;
  const Admission adm = node.gw->handle_upgrade_request(std::string_view(ip, 4), now);
  // The node's per-IP windows need not line up with ours: a refusal is
  // unfair beyond doubt if the address stayed under the limit over the
  // last two of our windows together.
  if (adm == Admission::rate_limited && cl.ip_attempts + cl.ip_attempts_before <= limits_.max_connections_per_ip)
    violate(Invariant::admission_fair,
            "node n" + std::to_string(n) + " refused client " + std::to_string(c) + " (429 rate_limited) after only " +
                std::to_string(cl.ip_attempts + cl.ip_attempts_before) + " upgrade attempts from its address in " +
                std::to_string(2 * limits_.ip_window_ms / 1000) + " s (limit " +
                std::to_string(limits_.max_connections_per_ip) + " per " + std::to_string(limits_.ip_window_ms / 1000) +
                " s); the node holds " + std::to_string(node.gw->connection_count()) + " connections");
  if (adm == Admission::too_many_connections && node.gw->connection_count() < limits_.max_connections)
    violate(Invariant::admission_fair, "node n" + std::to_string(n) + " refused client " + std::to_string(c) +
                                           " (503) below max_connections");
  if (adm != Admission::ok) {
    trace_.record(now, TraceKind::rejected, c, n, uint64_t(adm));
    ++result_.stats.rejected;
    reconnect_after_failure(c);
    return;
  }
  const ConnId id = node.gw->handle_open(user_names_[cl.user], now);
  if (node.conns.size() <= id.index) node.conns.resize(id.index + 1);
  Conn& cn = node.conns[id.index];
  cn = Conn{};
  cn.generation = id.generation;
  cn.live = true;
  cn.client = c;
  cn.user = cl.user;
  cn.conn_no = ++cl.conn_no;
  cl.state = ClientState::open;
  ++cl.epoch;
  cl.node = n;
  cl.conn = id;
  cl.opened_ms = now;
  cl.attempts = 0;
  cl.partial.clear();
  cl.replies.clear();
  cn.ws = std::make_unique<WsSession>(*node.gw, id, limits_);
  ++result_.stats.opens;
  if (cn.conn_no > 1) ++result_.stats.reconnects;
  if (cl.failover_from != none) {
    Node& old = nodes_[cl.failover_from];
    if (old.crash_orphans > 0 && --old.crash_orphans == 0)
      result_.stats.failover_ms_max = std::max(result_.stats.failover_ms_max, now - old.crashed_at_ms);
    cl.failover_from = none;
  }
  trace_.record(now, TraceKind::opened, c, n, id.index);
  sched_.after(rng_.around(o_.action_interval_ms), EventKind::client_act, c, cl.epoch);
  service(n);
}

void Simulation::on_act(uint32_t c, uint32_t epoch) {
  Client& cl = clients_[c];
  if (cl.epoch != epoch || cl.state != ClientState::open) return;
  if (phase_ == Phase::leave) {
    leave(c, false);
    return;
  }
  if (phase_ == Phase::faults && rng_.chance_ppm(o_.leave_ppm)) {
    leave(c, true);
    return;
  }
  // Every eighth action also pings: the node's wslay answers with a pong.
  if ((cl.seq & 7) == 7) {
    ++result_.stats.client_pings;
    send_frame(c, Opcode::ping, "p");
    if (cl.epoch != epoch || cl.state != ClientState::open) return;
  }
  send_direct(c);
  if (cl.epoch == epoch && cl.state == ClientState::open)
    sched_.after(rng_.around(o_.action_interval_ms), EventKind::client_act, c, epoch);
}

// {"type":"send_message","target_user":"uT","content":[client,seq,id]}
void Simulation::send_direct(uint32_t c) {
  Client& cl = clients_[c];
  Node& node = nodes_[cl.node];
  Gateway& gw = *node.gw;
  const uint64_t now = sched_.now_ms();
  const uint32_t target = uint32_t(rng_.below(user_clients_.size()));
  const uint32_t g = uint32_t(directs_.size());
  const uint32_t seq = ++cl.seq;
  DirectRecord rec{now, c, cl.conn_no, cl.node, node.life, false, {}, {}};
  for (uint32_t t : user_clients_[target]) {
    const Client& tc = clients_[t];
    if (tc.state == ClientState::open && !nodes_[tc.node].gw->is_closing(tc.conn))
      rec.recipients.push_back({t, tc.conn_no, tc.node, 0});
  }
  scratch_.assign(R"({"type":"send_message","target_user":")")
      .append(user_names_[target])
      .append(R"(","content":[)")
      .append(std::to_string(c))
      .append(",")
      .append(std::to_string(seq))
      .append(",")
      .append(std::to_string(g))
      .append("]}");
  const bool closing = gw.is_closing(cl.conn);
  const uint64_t published_before = node.bus->counters().published;
  directs_.push_back(std::move(rec));
  send_text(c, scratch_);
  DirectRecord& r = directs_.back();
  r.accepted = !closing && node.bus->counters().published != published_before;
  SimStats& s = result_.stats;
  ++s.direct_sent;
  if (r.recipients.empty()) ++s.direct_offline_target;
  if (closing) ++s.direct_ignored_closing;
  else if (!r.accepted) ++s.direct_refused;
  trace_.record(now, TraceKind::sent_direct, c, g, target);
  sched_.after(window_ms(), EventKind::check_direct, g);
  service(cl.node);
}

// {"type":"broadcast","content":[client,seq,id]}; false if not sent.
bool Simulation::send_broadcast(uint32_t c) {
  Client& cl = clients_[c];
  Node& node = nodes_[cl.node];
  Gateway& gw = *node.gw;
  const uint64_t now = sched_.now_ms();
  const uint32_t b = uint32_t(broadcasts_.size());
  const uint32_t seq = ++cl.seq;
  scratch_.assign(R"({"type":"broadcast","content":[)")
      .append(std::to_string(c))
      .append(",")
      .append(std::to_string(seq))
      .append(",")
      .append(std::to_string(b))
      .append("]}");
  const bool closing = gw.is_closing(cl.conn);
  const uint64_t published_before = node.bus->counters().published;
  broadcasts_.push_back(BroadcastRecord{now, c, cl.node, node.life, false, false, {}});
  broadcasts_.back().received_on.assign(clients_.size(), 0);
  send_text(c, scratch_);
  BroadcastRecord& r = broadcasts_.back();
  r.accepted = !closing && node.bus->counters().published != published_before;
  ++result_.stats.broadcast_sent;
  if (!r.accepted) ++result_.stats.broadcast_refused;
  trace_.record(now, TraceKind::sent_broadcast, c, b, r.accepted);
  sched_.after(window_ms(), EventKind::check_broadcast, b);
  service(cl.node);
  return true;
}

uint32_t Simulation::random_open_client() {
  for (int tries = 0; tries < 16; ++tries) {
    const uint32_t c = uint32_t(rng_.below(clients_.size()));
    if (clients_[c].state == ClientState::open) return c;
  }
  return none;
}

// The client closes: its close frame (1000) reaches the node a moment later;
// the node's session answers it and the socket closes once that is written.
void Simulation::leave(uint32_t c, bool come_back) {
  Client& cl = clients_[c];
  Node& node = nodes_[cl.node];
  Conn& cn = node.conns[cl.conn.index];
  trace_.record(sched_.now_ms(), TraceKind::client_leave, c, cl.node);
  cn.client = none;
  cn.client_close_code = 1000;
  sched_.after(latency_ms(), EventKind::client_close_frame, cl.node, node.life, pack_conn(cl.conn));
  cl.partial.clear();
  cl.replies.clear();
  if (come_back) {
    schedule_connect(c, rng_.between(1000, 10000));
  } else {
    cl.state = ClientState::gone;
    ++cl.epoch;
  }
}

// The device drops off the network: nothing is sent, the node learns it
// only from the idle timeout. The client returns later on a new connection.
void Simulation::vanish(uint32_t c) {
  Client& cl = clients_[c];
  Node& node = nodes_[cl.node];
  Conn& cn = node.conns[cl.conn.index];
  trace_.record(sched_.now_ms(), TraceKind::vanished, c, cl.node);
  ++result_.stats.vanishes;
  cn.client = none;
  cn.zombie = true;
  cn.socket_credit = 64 * 1024;
  cl.partial.clear();
  cl.replies.clear();
  schedule_connect(c, rng_.between(2000, 8000));
}

// The connection is reset (a storm): both ends notice at once.
void Simulation::drop_connection(uint32_t c) {
  Client& cl = clients_[c];
  Node& node = nodes_[cl.node];
  Conn& cn = node.conns[cl.conn.index];
  trace_.record(sched_.now_ms(), TraceKind::dropped, c, cl.node);
  cn.client = none;
  cn.reset = true;
  sched_.after(latency_ms(), EventKind::conn_reset, cl.node, node.life, pack_conn(cl.conn));
  lost_connection(c, rng_.below(1000));
}

void Simulation::lost_connection(uint32_t c, uint64_t reconnect_delay_ms) {
  Client& cl = clients_[c];
  cl.partial.clear();
  cl.replies.clear();
  if (phase_ == Phase::leave || phase_ == Phase::end) {
    cl.state = ClientState::gone;
    ++cl.epoch;
    return;
  }
  schedule_connect(c, reconnect_delay_ms);
}

// The server's close frame arrived: 4002 and 1001 mean "connect again, to
// any node", at once (with a little jitter); anything else backs off.
void Simulation::on_server_close(uint32_t c, CloseCode code) {
  const bool invited = code == CloseCode::reconnect || code == CloseCode::going_away;
  lost_connection(c, invited ? rng_.between(10, 500) : backoff_ms(1));
}

// Bytes from the node, possibly a partial frame (slow readers).
void Simulation::receive(uint32_t c, const uint8_t* data, size_t n) {
  Client& cl = clients_[c];
  std::string_view buf(reinterpret_cast<const char*>(data), n);
  const bool buffered = !cl.partial.empty();
  if (buffered) {
    cl.partial.append(buf);
    buf = cl.partial;
  }
  size_t p = 0;
  FrameHeader h;
  while (decode_frame_header(reinterpret_cast<const uint8_t*>(buf.data()) + p, buf.size() - p, h) ==
         FrameHeaderStatus::complete) {
    if (buf.size() - p - h.header_bytes < h.payload_bytes) break;
    const std::string_view payload = buf.substr(p + h.header_bytes, h.payload_bytes);
    p += h.header_bytes + h.payload_bytes;
    on_frame(c, h.opcode, payload);
    if (clients_[c].state != ClientState::open) return;  // a close frame: it stops reading
  }
  if (buffered) cl.partial.erase(0, p);
  else if (p < buf.size()) cl.partial.assign(buf.substr(p));
}

void Simulation::on_frame(uint32_t c, uint8_t opcode, std::string_view payload) {
  Client& cl = clients_[c];
  switch (Opcode(opcode)) {
    case Opcode::ping:  // the pong, sent once this write ends, is the sign of life
      ++result_.stats.server_pings_answered;
      append_client_frame(cl.replies, Opcode::pong, payload, uint64_t(c) << 32 ^ cl.frames_sent++);
      return;
    case Opcode::pong:
      ++result_.stats.client_pongs_received;
      return;
    case Opcode::close: {
      // Answer with the same code a moment later, and stop reading: the
      // node closes the socket once our close frame arrives.
      const uint16_t code = payload.size() >= 2 ? uint16_t(uint8_t(payload[0]) << 8 | uint8_t(payload[1])) : 1005;
      Node& node = nodes_[cl.node];
      Conn& cn = node.conns[cl.conn.index];
      cn.client = none;
      cn.client_close_code = code == 1005 ? 1000 : code;
      sched_.after(latency_ms(), EventKind::client_close_frame, cl.node, node.life, pack_conn(cl.conn));
      on_server_close(c, CloseCode(code));
      return;
    }
    case Opcode::text: break;
    default: return;
  }
  uint64_t v[3];
  if (payload.starts_with(R"({"type":"message")")) {
    if (parse_content(payload, v)) on_direct_received(c, uint32_t(v[2]));
  } else if (payload.starts_with(R"({"type":"broadcast")")) {
    if (parse_content(payload, v)) on_broadcast_received(c, uint32_t(v[2]));
  } else if (payload.starts_with(R"({"type":"error")")) {
    ++result_.stats.errors_received;
    trace_.record(sched_.now_ms(), TraceKind::got_error, c);
  }
}

}  // namespace wsgate::sim

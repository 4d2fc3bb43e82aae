#include "wsgate/gateway.hpp"
#include "wsgate/assert.hpp"

#include <algorithm>
#include <utility>

#include "wsgate/json_escape.hpp"
#include "wsgate/protocol.hpp"
#include "wsgate/transport_input.hpp"

#include <simdjson.h>

namespace wsgate {

namespace {
constexpr uint32_t no_slot = UINT32_MAX;
// The fixed parts of the replies, around the escaped user id and content.
constexpr std::string_view message_prefix = R"({"type":"message","from":)";
constexpr std::string_view broadcast_prefix = R"({"type":"broadcast","from":)";
constexpr std::string_view content_infix = R"(,"content":)";
constexpr std::string_view error_prefix = R"({"type":"error","message":)";
constexpr std::string_view user_topic_prefix = "user:";
constexpr std::string_view node_topic_prefix = "node:";
constexpr std::string_view broadcast_topic = "broadcast";
constexpr std::string_view load_topic = "load";
// A drain closes a batch every step; below 10 closes/s a step is one
// close, spaced 1000/rate ms, so the pace holds for any rate.
constexpr uint64_t drain_step_ms = 100;
uint64_t drain_interval_ms(uint32_t closes_per_s) {
  return closes_per_s >= 1000 / drain_step_ms ? drain_step_ms : 1000 / std::max<uint32_t>(1, closes_per_s);
}

std::string hex(uint64_t v) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) out[size_t(i)] = digits[v & 0xF];
  return out;
}

std::string_view node_of(std::string_view origin) { return origin.substr(0, origin.rfind('/')); }

// {"type":...,"from":<from>,"content":<content>}: encoded once, whatever the
// number of recipients.
FrameRef encode_delivery(std::string_view prefix, std::string_view from, std::string_view content) {
  FrameBuilder b(prefix.size() + json_escaped_bytes(from) + content_infix.size() + content.size() + 1);
  b.append(prefix);
  b.append_json_string(from);
  b.append(content_infix);
  b.append(content);
  b.append("}");
  return b.finish();
}

}  // namespace

struct Gateway::User {
  uint32_t first = no_slot;  // head of the list of this user's slots
  uint32_t count = 0;
};

struct Gateway::Slot {
  enum class State : uint8_t { free, open, closing };
  uint32_t generation = 0;
  State state = State::free;
  bool dirty = false;  // already in dirty_
  uint32_t prev_of_user = no_slot;
  uint32_t next_of_user = no_slot;
  UserMap::value_type* user = nullptr;  // map nodes are stable
  uint64_t last_seen_ms = 0;
  uint64_t driver_tag = 0;
  Outbox out;
  AdmissionControl::OpenIp* ip = nullptr;  // counted against max_open_connections_per_ip
  // Client message rate (token buckets) and the refusals of this window.
  uint64_t rate_refill_ms = 0;
  uint64_t refusal_window_ms = 0;
  uint32_t refusals = 0;
  TokenBucket message_tokens;
  TokenBucket byte_tokens;
};

Gateway::Gateway(GatewayConfig config, Transport* transport)
    : config_(std::move(config)),
      admission_(config_.limits),
      parser_(std::make_unique<MessageParser>(config_.limits.max_message_bytes)),
      transport_(transport),
      publish_senders_(config_.limits.max_tracked_publishes),
      ping_frame_(FrameRef::encode(Opcode::ping, {})),
      pong_frame_(FrameRef::encode(Opcode::text, R"({"type":"pong"})")) {
  const Limits& l = config_.limits;
  rate_error_messages_ = "Rate limit exceeded: at most " + std::to_string(l.client_max_messages_per_s) +
                         " messages/s (burst " + std::to_string(l.client_burst_messages) + "); message dropped";
  rate_error_bytes_ = "Rate limit exceeded: at most " + std::to_string(l.client_max_bytes_per_s) +
                      " bytes/s (burst " + std::to_string(l.client_burst_bytes) + "); message dropped";
  WSGATE_ASSERT(limits_are_consistent(config_.limits));
  WSGATE_ASSERT(node_id_is_valid(config_.node_id));
  origin_ = config_.node_id + "/" + hex(config_.incarnation);
  if (transport_) {
    transport_input_ = std::make_unique<TransportInput>(config_.limits);
    // A transport reports changes only: start from where it is now.
    metrics_.transport_connected = transport_->state() == TransportState::connected;
    transport_->set_sink(this);
    transport_->subscribe(broadcast_topic);
    transport_->subscribe(load_topic);
    transport_->subscribe(std::string(node_topic_prefix) + config_.node_id);
  }
}

Gateway::~Gateway() = default;

Gateway::Slot* Gateway::slot(ConnId id) {
  if (id.index >= slots_.size()) return nullptr;
  Slot& s = slots_[id.index];
  return s.generation == id.generation && s.state != Slot::State::free ? &s : nullptr;
}

const Gateway::Slot* Gateway::slot(ConnId id) const { return const_cast<Gateway*>(this)->slot(id); }

bool Gateway::is_open(ConnId id) const { return slot(id) != nullptr; }

uint64_t Gateway::driver_tag(ConnId id) const {
  const Slot* s = slot(id);
  return s ? s->driver_tag : no_driver_tag;
}

bool Gateway::is_closing(ConnId id) const {
  const Slot* s = slot(id);
  return s && s->state == Slot::State::closing;
}

std::string_view Gateway::user_of(ConnId id) const {
  const Slot* s = slot(id);
  return s && s->user ? std::string_view(s->user->first) : std::string_view();
}

size_t Gateway::connections_of(std::string_view user_id) const {
  auto it = users_.find(user_id);
  return it == users_.end() ? 0 : it->second.count;
}

Admission Gateway::handle_upgrade_request(std::string_view ip, uint64_t now_ms) {
  now_ms_ = now_ms;
  has_admitted_ip_ = false;
  if (draining_) return Admission::draining;
  // Near the budget a new client would only add to the queues that are
  // about to be shed: refuse it until they drain (see shed_largest_queues).
  if (ledger_.bytes > queue_budget_refuse_bytes()) return Admission::queue_budget;
  const Admission a = admission_.admit(ip, open_count_, now_ms);
  if (a == Admission::ok) {
    admitted_ip_.assign(ip);
    has_admitted_ip_ = true;
  }
  return a;
}

size_t Gateway::queue_budget_refuse_bytes() const {
  return size_t(config_.limits.node_send_queue_max_bytes) / 4 * 3;
}

ConnId Gateway::handle_open(std::string_view user_id, uint64_t now_ms, uint64_t driver_tag) {
  uint32_t index;
  if (!free_slots_.empty()) {
    index = free_slots_.back();
    free_slots_.pop_back();
  } else {
    index = uint32_t(slots_.size());
    slots_.emplace_back();
    slots_.back().out.set_ledger(&ledger_);
  }
  Slot& s = slots_[index];
  now_ms_ = now_ms;
  WSGATE_ASSERT(s.state == Slot::State::free && s.out.empty() && !s.user && !s.ip);
  s.state = Slot::State::open;
  s.last_seen_ms = now_ms;
  // The upgrade request that admitted this connection named its address
  // (both drivers open right after admitting, with nothing in between).
  if (has_admitted_ip_) {
    s.ip = admission_.hold(admitted_ip_);
    has_admitted_ip_ = false;
  }
  s.rate_refill_ms = s.refusal_window_ms = now_ms;
  s.refusals = 0;
  s.message_tokens.fill(config_.limits.client_burst_messages);
  s.byte_tokens.fill(config_.limits.client_burst_bytes);
  s.driver_tag = driver_tag;
  const ConnId id{index, s.generation};
  ++open_count_;
  ++metrics_.connections_open;
  ++metrics_.connections_accepted_total;
  if (next_heartbeat_ms_ == 0) next_heartbeat_ms_ = now_ms + config_.limits.heartbeat_interval_ms;

  if (user_id.empty()) {
    request_close(id, CloseCode::missing_identity, "missing user_id");
  } else if (user_id.size() > config_.limits.max_user_id_bytes) {
    request_close(id, CloseCode::missing_identity, "user_id too long");
  } else if (!simdjson::validate_utf8(user_id.data(), user_id.size())) {
    // It would be sent as "from" in text frames, which must be UTF-8: one
    // such id would get every recipient of its broadcasts disconnected.
    request_close(id, CloseCode::missing_identity, "user_id is not UTF-8");
  } else {
    attach_to_user(index, user_id);
  }
  return id;
}

void Gateway::attach_to_user(uint32_t index, std::string_view user_id) {
  auto it = users_.find(user_id);
  if (it == users_.end()) it = users_.emplace(std::string(user_id), User{}).first;
  Slot& s = slots_[index];
  User& u = it->second;
  s.user = &*it;
  s.prev_of_user = no_slot;
  s.next_of_user = u.first;
  if (u.first != no_slot) slots_[u.first].prev_of_user = index;
  u.first = index;
  if (++u.count == 1 && transport_) {
    topic_scratch_.assign(user_topic_prefix).append(user_id);
    transport_->subscribe(topic_scratch_);
  }
  update_presence(*it);
}

void Gateway::detach_from_user(uint32_t index) {
  Slot& s = slots_[index];
  if (!s.user) return;
  User& u = s.user->second;
  if (s.prev_of_user != no_slot) slots_[s.prev_of_user].next_of_user = s.next_of_user;
  else u.first = s.next_of_user;
  if (s.next_of_user != no_slot) slots_[s.next_of_user].prev_of_user = s.prev_of_user;
  WSGATE_ASSERT(u.count > 0);
  --u.count;
  update_presence(*s.user);
  if (u.count == 0) {
    WSGATE_ASSERT(u.first == no_slot);
    if (transport_) {
      topic_scratch_.assign(user_topic_prefix).append(s.user->first);
      transport_->unsubscribe(topic_scratch_);
    }
    users_.erase(s.user->first);
  }
  s.user = nullptr;
  s.prev_of_user = s.next_of_user = no_slot;
}

void Gateway::handle_text(ConnId id, std::string_view payload, uint64_t now_ms) {
  Slot* s = slot(id);
  if (!s) return;
  s->last_seen_ms = now_ms;
  now_ms_ = now_ms;
  // After a close was requested the connection is on its way out; what it
  // still sends is not acted on (RFC 6455 5.5.1 allows ignoring it).
  if (s->state != Slot::State::open) return;
  // Before parsing: a flood costs one bucket check per message, and a
  // broadcast's O(connections) fan-out happens only within the rate.
  if (!within_rate(id, *s, payload.size(), now_ms)) return;

  const ParseResult r = parser_->parse(payload);
  if (!r.ok) {
    ++metrics_.messages_invalid_total;
    send_error(id, r.error);
    return;
  }
  const std::string_view from = s->user->first;
  switch (r.message.kind) {
    case ClientMessageKind::ping: {
      ++metrics_.messages_in_total[size_t(MessageType::ping)];
      const MessageType t = MessageType::pong;
      enqueue(id, *s, pong_frame_, &t);
      return;
    }
    case ClientMessageKind::send_message: {
      ++metrics_.messages_in_total[size_t(MessageType::send_message)];
      const FrameRef f = encode_delivery(message_prefix, from, r.message.content);
      const size_t local = route_to_user(r.message.target_user, f);
      PublishStatus published = PublishStatus::no_subscribers;
      if (transport_) {
        topic_scratch_.assign(user_topic_prefix).append(r.message.target_user);
        published = publish(id, topic_scratch_, f, true);
      }
      if (local == 0 && published == PublishStatus::no_subscribers) ++metrics_.messages_undeliverable_total;
      return;
    }
    case ClientMessageKind::broadcast: {
      ++metrics_.messages_in_total[size_t(MessageType::broadcast)];
      const FrameRef f = encode_delivery(broadcast_prefix, from, r.message.content);
      broadcast(f);
      if (transport_) publish(id, broadcast_topic, f, false);
      return;
    }
  }
}

void Gateway::handle_binary(ConnId id, uint64_t now_ms) {
  Slot* s = slot(id);
  if (!s) return;
  s->last_seen_ms = now_ms;
  ++metrics_.protocol_error_closes_total;
  request_close(id, CloseCode::unsupported_data, "binary messages are not supported");
}

void Gateway::handle_activity(ConnId id, uint64_t now_ms) {
  if (Slot* s = slot(id)) s->last_seen_ms = now_ms;
}

void Gateway::handle_closed(ConnId id) {
  Slot* s = slot(id);
  if (!s) return;
  detach_from_user(id.index);
  admission_.release(std::exchange(s->ip, nullptr));
  s->out.clear();
  metrics_.queued_memory_bytes = ledger_.bytes;
  s->state = Slot::State::free;
  s->dirty = false;
  ++s->generation;  // every id held for the old connection is now stale
  free_slots_.push_back(id.index);
  WSGATE_ASSERT(open_count_ > 0);
  --open_count_;
  --metrics_.connections_open;
}

void Gateway::handle_tick(uint64_t now_ms) {
  now_ms_ = now_ms;
  if (next_heartbeat_ms_ == 0) {
    next_heartbeat_ms_ = now_ms + config_.limits.heartbeat_interval_ms;
  } else if (now_ms >= next_heartbeat_ms_) {
    run_heartbeat(now_ms);
    admission_.expire(now_ms);
    next_heartbeat_ms_ = now_ms + config_.limits.heartbeat_interval_ms;
  }
  if (transport_ && now_ms >= next_load_report_ms_) {
    // Cut off from the others there is nobody to tell, and what we know of
    // them is going stale: no report, no rebalancing.
    if (transport_->state() == TransportState::connected) {
      report_load(now_ms);
      rebalance();
    }
    next_load_report_ms_ = now_ms + config_.limits.load_report_interval_ms;
  }
  if (draining_ && now_ms >= next_drain_ms_) {
    drain_some(now_ms);
    next_drain_ms_ = now_ms + drain_interval_ms(config_.limits.drain_max_closes_per_s);
  }
}

uint64_t Gateway::next_tick_ms() const {
  uint64_t t = next_heartbeat_ms_;
  if (transport_) t = std::min(t, next_load_report_ms_);
  if (draining_ && open_count_ > 0) {
    t = std::min(t, next_drain_ms_);
    // Wake the driver at the deadline too (once: past it, it is the
    // driver's move, not a reason to spin).
    if (drain_deadline_ms_ > now_ms_) t = std::min(t, drain_deadline_ms_);
  }
  return t;
}

void Gateway::handle_drain(uint64_t now_ms, uint64_t deadline_ms) {
  if (draining_) return;
  draining_ = true;
  next_drain_ms_ = now_ms;
  drain_deadline_ms_ = deadline_ms;
  // Say so at once, not at the next report: until the others know, they
  // count our last (not draining) report in their mean, and a node that
  // drains fast has exited before that report would go out.
  next_load_report_ms_ = now_ms;
  handle_tick(now_ms);
}

DrainStatus Gateway::drain_status(uint64_t now_ms) const {
  if (!draining_) return DrainStatus::none;
  if (open_count_ == 0) return DrainStatus::complete;
  return now_ms >= drain_deadline_ms_ ? DrainStatus::overdue : DrainStatus::in_progress;
}

void Gateway::drain_some(uint64_t) {
  const uint32_t rate = config_.limits.drain_max_closes_per_s;
  const size_t budget = std::max<uint64_t>(1, uint64_t(rate) * drain_interval_ms(rate) / 1000);
  metrics_.drain_closes_total += close_some(budget, CloseCode::going_away, "node draining");
}

// Every node hears every report, its own included, so each computes the
// same mean; only the nodes above the band act, each on its own excess.
void Gateway::report_load(uint64_t now_ms) {
  PeerLoad& self = peer_loads_[config_.node_id];
  self = PeerLoad{open_count_, now_ms, self.reported_ms ? self.connections : UINT64_MAX, draining_, origin_};
  publish_raw(load_topic, std::to_string(open_count_) + (draining_ ? " draining" : ""));
  age_peer_loads(now_ms);
}

// A peer that stopped reporting has crashed (its clients are landing on the
// rest of us) or is cut off (it keeps them, and we no longer see them):
// either way the reports we hold no longer add up to the cluster, so the
// picture must settle again before anyone moves. Long silent peers are
// forgotten.
void Gateway::age_peer_loads(uint64_t now_ms) {
  const uint64_t live_ms = 3ull * config_.limits.load_report_interval_ms;
  const uint64_t forget_ms = 10ull * config_.limits.load_report_interval_ms;
  bool fell_silent = false;
  for (auto& [node, load] : peer_loads_) {
    const bool live = now_ms - load.reported_ms <= live_ms;
    fell_silent |= load.live && !live;
    load.live = live;
  }
  if (fell_silent) forget_load_history();
  std::erase_if(peer_loads_, [&](const auto& kv) { return now_ms - kv.second.reported_ms > forget_ms; });
}

void Gateway::rebalance() {
  const Limits& l = config_.limits;
  if (l.rebalance_max_moves_per_s == 0 || draining_) return;
  uint64_t total = 0, nodes = 0;
  for (const auto& [node, load] : peer_loads_)
    if (load.live && !load.draining) {
      total += load.connections;
      ++nodes;
    }
  if (nodes < 2) return;
  const double mean = double(total) / double(nodes);
  // Our own count is current; a peer's report is up to one interval old.
  // While loads move (a ramp-up, a storm, a failed node's clients
  // arriving) the stale reports put the mean too low and every node would
  // shed clients it should keep. Act only on a settled picture: every live
  // node has a previous report (none just started or restarted) and moved
  // by at most half the band since.
  const double steady = std::max(1.0, mean * l.rebalance_tolerance_pct / 200.0);
  for (const auto& [node, load] : peer_loads_) {
    if (!load.live || load.draining) continue;
    if (load.previous == UINT64_MAX) return;
    const double delta = double(load.connections) - double(load.previous);
    if (delta > steady || -delta > steady) return;
  }
  const double ceiling = mean * (1.0 + l.rebalance_tolerance_pct / 100.0);
  if (double(open_count_) <= ceiling) return;
  // Aim for the middle of the band, not its edge, so the next report does
  // not find us just above it again.
  const double target = mean * (1.0 + l.rebalance_tolerance_pct / 200.0);
  const size_t excess = size_t(double(open_count_) - target);
  const size_t budget = std::max<size_t>(1, size_t(l.rebalance_max_moves_per_s) * l.load_report_interval_ms / 1000);
  const size_t moved = close_some(std::min(excess, budget), CloseCode::reconnect, "rebalance");
  metrics_.rebalance_closes_total += moved;
  if (moved > 0) forget_load_history();
}

// Clients are about to move between nodes (we asked some to reconnect, or a
// peer began to drain), and every report made before they land is stale:
// a node's report just before its new clients arrive says it is nearly
// empty, and judged against it every other node looks overloaded. The
// picture is settled again only once each peer has reported twice since,
// and steadily (see rebalance).
void Gateway::forget_load_history() {
  for (auto& [node, load] : peer_loads_)
    if (node != config_.node_id) {
      load.previous = UINT64_MAX;
      load.stale = true;
    }
}

size_t Gateway::close_some(size_t n, CloseCode code, std::string_view reason) {
  size_t closed = 0;
  for (size_t seen = 0; closed < n && seen < slots_.size(); ++seen) {
    close_cursor_ = close_cursor_ + 1 < slots_.size() ? close_cursor_ + 1 : 0;
    Slot& s = slots_[close_cursor_];
    if (s.state != Slot::State::open) continue;
    request_close(ConnId{close_cursor_, s.generation}, code, reason);
    ++closed;
  }
  return closed;
}

bool Gateway::accept_sequence(std::string_view origin, uint64_t seq, uint64_t now_ms) {
  auto it = origins_.find(origin);
  if (it == origins_.end()) {
    if (origins_.size() >= config_.limits.max_tracked_origins) {
      auto oldest = origins_.begin();
      for (auto i = origins_.begin(); i != origins_.end(); ++i)
        if (i->second.seen_ms < oldest->second.seen_ms) oldest = i;
      origins_.erase(oldest);
    }
    origins_.emplace(std::string(origin), OriginState{seq, now_ms});
    return true;
  }
  it->second.seen_ms = now_ms;
  if (seq <= it->second.last_seq) return false;
  it->second.last_seq = seq;
  return true;
}

// Once per heartbeat interval: close what has been silent for the idle
// timeout, ping the rest. A pong (or anything else) counts as a sign of
// life, so a healthy client is never closed here.
void Gateway::run_heartbeat(uint64_t now_ms) {
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    if (s.state != Slot::State::open) continue;
    const ConnId id{i, s.generation};
    if (now_ms - s.last_seen_ms >= config_.limits.idle_timeout_ms) {
      ++metrics_.heartbeat_timeouts_total;
      request_close(id, CloseCode::going_away, "idle timeout");
    } else {
      enqueue(id, s, ping_frame_, nullptr);
    }
  }
}

// Client messages pass two token buckets, one counting messages and one
// bytes. Past either the message is dropped and the client told why; one
// that keeps going (client_max_rate_refusals refusals within a window) is
// closed with 1008, so a misbehaving client cannot make the node answer
// errors forever either.
bool Gateway::within_rate(ConnId id, Slot& s, size_t bytes, uint64_t now_ms) {
  const Limits& l = config_.limits;
  const uint64_t elapsed_ms = now_ms > s.rate_refill_ms ? now_ms - s.rate_refill_ms : 0;
  s.rate_refill_ms = std::max(s.rate_refill_ms, now_ms);
  const bool limit_messages = l.client_max_messages_per_s > 0, limit_bytes = l.client_max_bytes_per_s > 0;
  if (limit_messages) s.message_tokens.refill(elapsed_ms, l.client_max_messages_per_s, l.client_burst_messages);
  if (limit_bytes) s.byte_tokens.refill(elapsed_ms, l.client_max_bytes_per_s, l.client_burst_bytes);
  const bool messages_ok = !limit_messages || s.message_tokens.holds(1);
  const bool bytes_ok = !limit_bytes || s.byte_tokens.holds(bytes);
  if (messages_ok && bytes_ok) {
    if (limit_messages) s.message_tokens.take(1);
    if (limit_bytes) s.byte_tokens.take(bytes);
    return true;
  }
  ++metrics_.rate_limited_messages_total;
  if (now_ms - s.refusal_window_ms >= l.client_rate_refusal_window_ms) {
    s.refusal_window_ms = now_ms;
    s.refusals = 0;
  }
  if (++s.refusals >= l.client_max_rate_refusals) {
    ++metrics_.rate_limit_closes_total;
    request_close(id, CloseCode::policy_violation, "rate limit exceeded");
    return false;
  }
  send_error(id, messages_ok ? rate_error_bytes_ : rate_error_messages_);
  return false;
}

// Queues are measured in memory (Outbox::charge_of), so a flood of tiny
// frames is bounded as tightly as one of large ones.
void Gateway::enqueue(ConnId id, Slot& s, const FrameRef& f, const MessageType* counted) {
  if (s.state != Slot::State::open) return;
  if (s.out.memory_bytes() + Outbox::charge_of(f) > config_.limits.send_queue_max_bytes) {
    close_slow_consumer(id, s);
    return;
  }
  s.out.push(f);
  if (counted) ++metrics_.messages_out_total[size_t(*counted)];
  note_queued(id, s);
}

void Gateway::close_slow_consumer(ConnId id, Slot& s) {
  ++metrics_.slow_consumer_closes_total;
  // What it has not started to receive is dropped now, so its memory is
  // returned at once and the close frame is next in line.
  s.out.drop_unsent();
  request_close(id, CloseCode::policy_violation, "slow consumer");
}

void Gateway::note_queued(ConnId id, Slot& s) {
  if (!s.dirty) {
    s.dirty = true;
    dirty_.push_back(id);
  }
  if (ledger_.bytes > config_.limits.node_send_queue_max_bytes) shed_pending_ = true;
}

// Past the node's budget, the connections holding the most are closed
// first: they are the ones not reading, and each close returns the most.
// Shedding stops as soon as the node is back under the budget; upgrades
// stay refused until it is under 3/4 of it (handle_upgrade_request), so
// the node settles instead of shedding one connection per new arrival.
void Gateway::shed_largest_queues() {
  shed_pending_ = false;
  const size_t budget = config_.limits.node_send_queue_max_bytes;
  if (ledger_.bytes <= budget) return;
  std::vector<std::pair<size_t, uint32_t>> queues;  // (memory, slot)
  for (uint32_t i = 0; i < slots_.size(); ++i)
    if (slots_[i].state == Slot::State::open && slots_[i].out.memory_bytes() > 0)
      queues.emplace_back(slots_[i].out.memory_bytes(), i);
  std::make_heap(queues.begin(), queues.end());
  while (ledger_.bytes > budget && !queues.empty()) {
    std::pop_heap(queues.begin(), queues.end());
    const uint32_t i = queues.back().second;
    queues.pop_back();
    Slot& s = slots_[i];
    ++metrics_.queue_budget_closes_total;
    s.out.drop_unsent();
    request_close(ConnId{i, s.generation}, CloseCode::policy_violation, "node send-queue budget exceeded");
  }
}

void Gateway::send_error(ConnId id, std::string_view message) {
  Slot* s = slot(id);
  if (!s) return;
  FrameBuilder b(error_prefix.size() + json_escaped_bytes(message) + 1);
  b.append(error_prefix);
  b.append_json_string(message);
  b.append("}");
  const MessageType t = MessageType::error;
  enqueue(id, *s, b.finish(), &t);
}

size_t Gateway::route_to_user(std::string_view user_id, const FrameRef& f) {
  auto it = users_.find(user_id);
  if (it == users_.end()) return 0;
  const MessageType t = MessageType::message;
  size_t n = 0;
  // enqueue may close a slow consumer, which leaves the list intact (the
  // slot is detached only in handle_closed), so walking it stays safe.
  for (uint32_t i = it->second.first; i != no_slot; i = slots_[i].next_of_user, ++n)
    enqueue(ConnId{i, slots_[i].generation}, slots_[i], f, &t);
  return n;
}

size_t Gateway::broadcast(const FrameRef& f) {
  const MessageType t = MessageType::broadcast;
  size_t n = 0;
  for (uint32_t i = 0; i < slots_.size(); ++i)
    if (slots_[i].state == Slot::State::open) {
      enqueue(ConnId{i, slots_[i].generation}, slots_[i], f, &t);
      ++n;
    }
  return n;
}

PublishStatus Gateway::publish_raw(std::string_view topic, std::string_view body, ConnId from, bool direct) {
  envelope_scratch_.assign(origin_).append("\n").append(std::to_string(++publish_seq_)).append("\n").append(body);
  const PublishStatus st = transport_->publish(topic, envelope_scratch_);
  if (st == PublishStatus::accepted || st == PublishStatus::no_subscribers) {
    ++metrics_.transport_published_total;
    ++publishes_accepted_;
    publish_sender(publishes_accepted_) = PublishSender{publishes_accepted_, from, direct};
  }
  return st;
}

PublishStatus Gateway::publish(ConnId from, std::string_view topic, const FrameRef& f, bool direct) {
  const PublishStatus st = publish_raw(topic, f->payload(), from, direct);
  if (st == PublishStatus::accepted || st == PublishStatus::no_subscribers) return st;
  // Not silently lost: the sender learns that other nodes did not get it.
  ++metrics_.transport_publish_failed_total;
  send_error(from, st == PublishStatus::backpressure ? "Not delivered to other nodes: transport busy, retry"
                                                     : "Not delivered to other nodes: transport unavailable");
  return st;
}

// Another node's message. Checked before anything else is done with it
// (transport_input.hpp): what fails is dropped and counted, and does not
// even advance its publisher's sequence.
void Gateway::on_transport_message(std::string_view topic, std::string_view payload) {
  Envelope e;
  TransportInvalid why = transport_input_->parse_envelope(payload, e);
  if (why == TransportInvalid::none && e.origin == origin_) return;  // delivered locally already
  LoadReport load;
  if (why == TransportInvalid::none) {
    if (topic == load_topic) why = parse_load_report(e.body, load);
    else if (topic == broadcast_topic) why = transport_input_->check_delivery(e.body, broadcast_prefix);
    else if (topic.starts_with(user_topic_prefix)) why = transport_input_->check_delivery(e.body, message_prefix);
    else why = TransportInvalid::topic;  // node:{id} carries nothing yet
  }
  if (why != TransportInvalid::none) {
    ++metrics_.transport_invalid_total[size_t(why)];
    return;
  }
  // One inbound stream per node keeps each publisher's order across
  // topics, so anything not newer than the last seen is a duplicate or was
  // overtaken: delivering it would break at-most-once or per-sender order.
  if (!accept_sequence(e.origin, e.seq, now_ms_)) {
    ++metrics_.transport_stale_dropped_total;
    return;
  }
  ++metrics_.transport_received_total;
  if (topic == load_topic) {
    record_load(e.origin, load);
    return;
  }
  const FrameRef f = FrameRef::encode(Opcode::text, e.body);
  if (topic == broadcast_topic) {
    broadcast(f);
  } else if (route_to_user(topic.substr(user_topic_prefix.size()), f) == 0) {
    ++metrics_.messages_undeliverable_total;
  }
}

// A peer's load report (or the next one of a peer it already knows).
void Gateway::record_load(std::string_view origin, const LoadReport& r) {
  const std::string_view node = node_of(origin);
  auto it = peer_loads_.find(node);
  if (it == peer_loads_.end()) {
    // Past max_peer_nodes, the peer heard from longest ago makes room. Real
    // peers report every interval.
    if (peer_loads_.size() >= config_.limits.max_peer_nodes) {
      auto oldest = peer_loads_.end();
      for (auto i = peer_loads_.begin(); i != peer_loads_.end(); ++i)
        if (i->first != config_.node_id && (oldest == peer_loads_.end() || i->second.reported_ms < oldest->second.reported_ms))
          oldest = i;
      if (oldest != peer_loads_.end()) peer_loads_.erase(oldest);
    }
    it = peer_loads_.emplace(std::string(node), PeerLoad{}).first;
  }
  PeerLoad& p = it->second;
  // A report from before the peer fell silent (a partition) or before
  // clients last moved is no base to judge how steady it is now.
  const bool same = p.origin == origin && p.live && !p.stale;
  const bool began_draining = r.draining && !(p.origin == origin && p.draining);
  p = PeerLoad{r.connections, now_ms_, same ? p.connections : UINT64_MAX, r.draining, std::string(origin)};
  if (began_draining) forget_load_history();  // its clients are about to land on us all
}

void Gateway::on_transport_publish_lost(uint64_t first, uint64_t count, PublishLoss why) {
  for (uint64_t n = first; n < first + count; ++n) {
    ++metrics_.transport_publish_lost_total;
    const PublishSender& p = publish_sender(n);
    if (p.number != n || !p.from.valid()) continue;
    send_error(p.from, why == PublishLoss::connection_lost
                           ? "Not delivered to other nodes: transport connection lost"
                           : "Maybe not delivered to other nodes: the cluster is reconnecting, retry");
  }
}

// Redis's own count says no node (this one included) holds the target.
void Gateway::on_transport_publish_unrouted(uint64_t number) {
  const PublishSender& p = publish_sender(number);
  if (p.number == number && p.direct) ++metrics_.messages_undeliverable_total;
}

// Presence and subscriptions are the transport's to restore after a
// reconnect: it holds both and knows when the backend lost them. Writing
// every user again from here too would double the writes.
void Gateway::on_transport_state(TransportState state) {
  metrics_.transport_connected = state == TransportState::connected;
}

void Gateway::update_presence(const UserMap::value_type& user) {
  if (transport_) transport_->set_presence(user.first, user.second.count);
}

void Gateway::request_close(ConnId id, CloseCode code, std::string_view reason) {
  Slot* s = slot(id);
  if (!s || s->state != Slot::State::open) return;
  s->state = Slot::State::closing;
  closes_.push_back(CloseRequest{id, code, reason});
}

std::vector<ConnId> Gateway::take_dirty() {
  if (shed_pending_) shed_largest_queues();
  metrics_.queued_memory_bytes = ledger_.bytes;
  std::vector<ConnId> out;
  out.swap(dirty_);
  for (ConnId id : out)
    if (Slot* s = slot(id)) s->dirty = false;
  return out;
}

std::vector<CloseRequest> Gateway::take_closes() {
  std::vector<CloseRequest> out;
  out.swap(closes_);
  return out;
}

Outbox& Gateway::outbox(ConnId id) {
  Slot* s = slot(id);
  WSGATE_ASSERT(s);
  return s->out;
}

// Control frames from the framing layer (pongs, the close frame) are held
// to the same send_queue_max_bytes as messages: a peer that pings and never
// reads is a slow consumer too. Once closing, only the close frame goes out.
void Gateway::push_control(ConnId id, const uint8_t* bytes, size_t n) {
  Slot* s = slot(id);
  if (!s) return;
  while (n >= 2) {
    FrameHeader h;
    if (decode_frame_header(bytes, n, h) != FrameHeaderStatus::complete) return;  // wslay writes whole frames
    const size_t frame = size_t(std::min<uint64_t>(n, h.header_bytes + h.payload_bytes));
    const uint8_t opcode = h.opcode;
    const bool is_close = opcode == uint8_t(Opcode::close);
    if (is_close || s->state == Slot::State::open) {
      FrameRef f = FrameRef::copy_of(bytes, frame);
      if (!is_close && s->out.memory_bytes() + Outbox::charge_of(f) > config_.limits.send_queue_max_bytes) {
        close_slow_consumer(id, *s);
      } else {
        // A pong replaces the one still queued: only the latest ping is
        // answered (RFC 6455 5.5.3), so a ping flood holds one pong here.
        if (opcode == uint8_t(Opcode::pong)) s->out.push_pong(std::move(f));
        else s->out.push(std::move(f));
        note_queued(id, *s);
      }
    }
    bytes += frame;
    n -= frame;
  }
}

void Gateway::handle_sent(ConnId id, size_t n) {
  Slot* s = slot(id);
  if (!s) return;
  s->out.consume(n);
  metrics_.bytes_out_total += n;
  metrics_.queued_memory_bytes = ledger_.bytes;
}

std::string Gateway::render_health() const {
  std::string out = R"({"status":"ok","node_id":)";
  append_json_string(out, config_.node_id);
  out += R"(,"connections":)";
  out += std::to_string(open_count_);
  // Still "ok" (a liveness probe must not kill a node that drains); a
  // readiness check or a load balancer reads this.
  if (draining_) out += R"(,"draining":true)";
  if (transport_) {
    out += R"(,"transport":)";
    append_json_string(out, transport_->name());
    out += transport_->state() == TransportState::connected ? R"(,"transport_connected":true)"
                                                            : R"(,"transport_connected":false)";
  }
  out += '}';
  return out;
}

std::string_view Gateway::not_ready_reason() const {
  if (draining_) return "draining";
  if (transport_ && transport_->state() != TransportState::connected) return "transport disconnected";
  if (open_count_ >= config_.limits.max_connections) return "at max connections";
  if (ledger_.bytes > queue_budget_refuse_bytes()) return "send-queue budget";
  return {};
}

std::string Gateway::render_ready() const {
  const std::string_view why = not_ready_reason();
  std::string out = why.empty() ? R"({"ready":true,"node_id":)" : R"({"ready":false,"node_id":)";
  append_json_string(out, config_.node_id);
  if (!why.empty()) {
    out += R"(,"reason":)";
    append_json_string(out, why);
  }
  out += '}';
  return out;
}

// The tables that describe one connection (its slot, its user's list, the
// dirty and close queues, its outbox) and the cluster tables must agree;
// if they do not, serving on is worse than stopping. Ordered from cheap to
// thorough, so a failure names the first thing that went wrong.
void Gateway::check_invariants(InvariantCheck depth) const {
  const Limits& l = config_.limits;
  WSGATE_ASSERT(open_count_ + free_slots_.size() == slots_.size());
  WSGATE_ASSERT(metrics_.connections_open == open_count_);
  WSGATE_ASSERT(users_.size() <= open_count_);
  WSGATE_ASSERT(origins_.size() <= l.max_tracked_origins);
  WSGATE_ASSERT(peer_loads_.size() <= size_t(l.max_peer_nodes) + 1);  // the peers and this node
  WSGATE_ASSERT(publish_senders_.size() == l.max_tracked_publishes);
  WSGATE_ASSERT(close_cursor_ == 0 || close_cursor_ < slots_.size());
  if (depth == InvariantCheck::cheap) return;

  // Per slot: 1 = in dirty_ with its current generation (2: twice), and
  // 4 = counted in its user's list.
  std::vector<uint32_t>& seen = check_scratch_;
  seen.assign(slots_.size(), 0);
  for (uint32_t i : free_slots_) {
    WSGATE_ASSERT(i < slots_.size() && slots_[i].state == Slot::State::free);
    WSGATE_ASSERT(seen[i] == 0);  // listed once
    seen[i] = 8;
  }
  for (ConnId id : dirty_) {
    WSGATE_ASSERT(id.index < slots_.size());
    if (slots_[id.index].generation != id.generation) continue;  // closed since: stale, skipped by take_dirty
    WSGATE_ASSERT(slots_[id.index].state != Slot::State::free && (seen[id.index] & 3) == 0);
    seen[id.index] |= 1;
  }
  for (const CloseRequest& r : closes_) {
    WSGATE_ASSERT(r.id.index < slots_.size());
    if (slots_[r.id.index].generation == r.id.generation) WSGATE_ASSERT(slots_[r.id.index].state == Slot::State::closing);
  }
  size_t attached = 0;
  for (const auto& entry : users_) {
    const User& u = entry.second;
    WSGATE_ASSERT(u.count > 0 && u.first != no_slot);
    uint32_t length = 0, prev = no_slot;
    for (uint32_t i = u.first; i != no_slot && length <= u.count; i = slots_[i].next_of_user, ++length) {
      WSGATE_ASSERT(i < slots_.size());
      const Slot& s = slots_[i];
      WSGATE_ASSERT(s.state != Slot::State::free && s.user == &entry && s.prev_of_user == prev && (seen[i] & 4) == 0);
      seen[i] |= 4;
      prev = i;
    }
    WSGATE_ASSERT(length == u.count);
    attached += length;
  }
  size_t open = 0, attached_slots = 0;
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    WSGATE_ASSERT(s.dirty == ((seen[i] & 1) != 0));
    if (s.state == Slot::State::free) {
      WSGATE_ASSERT(seen[i] == 8 && !s.user && !s.dirty && s.out.empty() && s.out.queued_bytes() == 0);
      WSGATE_ASSERT(s.prev_of_user == no_slot && s.next_of_user == no_slot);
      continue;
    }
    ++open;
    WSGATE_ASSERT((seen[i] & 8) == 0);
    // An open connection has a user; one refused its identity is closing.
    WSGATE_ASSERT(s.user || s.state == Slot::State::closing);
    WSGATE_ASSERT(!s.user == ((seen[i] & 4) == 0));
    attached_slots += s.user != nullptr;
    s.out.check_invariants();
    // A data frame is queued only within the limit; a close frame (at most
    // 125 bytes of payload) may go past it.
    WSGATE_ASSERT(s.out.queued_bytes() <= uint64_t(l.send_queue_max_bytes) + frame_header_max_bytes + 125);
  }
  WSGATE_ASSERT(open == open_count_);
  WSGATE_ASSERT(attached == attached_slots);
  for (const auto& [node, load] : peer_loads_) {
    WSGATE_ASSERT(node == node_of(load.origin) && load.connections <= UINT32_MAX);
    WSGATE_ASSERT(load.previous == UINT64_MAX || load.previous <= UINT32_MAX);
  }
}

}  // namespace wsgate

#include "redis_transport.hpp"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <cassert>
#include <memory>

#include "wsgate/json_escape.hpp"

namespace wsgate {

namespace {

constexpr size_t subscribe_batch_topics = 256;
constexpr size_t presence_batch_users = 256;

redisReader* new_reader() {
  redisReader* r = redisReaderCreate();
  if (!r) throw std::bad_alloc();
  return r;
}

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

bool is_ok(const redisReply* r) { return r->type == REDIS_REPLY_STATUS && std::string_view(r->str, r->len) == "OK"; }

// PONG, or ["pong", ""] on a link in RESP2 subscribe mode.
bool is_pong(const redisReply* r) {
  if (r->type == REDIS_REPLY_STATUS) return std::string_view(r->str, r->len) == "PONG";
  return r->type == REDIS_REPLY_ARRAY && r->elements >= 1 && r->element[0]->type == REDIS_REPLY_STRING &&
         std::string_view(r->element[0]->str, r->element[0]->len) == "pong";
}

const char* link_name(RedisLink l) { return l == RedisLink::command ? "command" : "subscriber"; }

std::string_view text_of(const redisReply* r) {
  return r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_ERROR
             ? std::string_view(r->str, r->len)
             : std::string_view();
}

// An error reply as one log-safe line (Redis's text, bounded).
std::string error_text(const redisReply* r) {
  std::string t(text_of(r).substr(0, 200));
  for (char& c : t)
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  return t.empty() ? "(not an error reply)" : t;
}

}  // namespace

RedisTransport::RedisTransport(RedisOptions options, RedisIo& io) : options_(std::move(options)), io_(io) {
  for (Link& l : links_) l.reader = new_reader();
}

RedisTransport::~RedisTransport() {
  for (Link& l : links_) redisReaderFree(l.reader);
}

std::string RedisTransport::channel(std::string_view topic) const {
  std::string c;
  c.reserve(options_.prefix.size() + topic.size());
  return c.append(options_.prefix).append(topic);
}

void RedisTransport::command(RedisLink l, const std::vector<std::string_view>& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  argv.reserve(args.size());
  lens.reserve(args.size());
  for (std::string_view a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  char* cmd = nullptr;
  const int n = redisFormatCommandArgv(&cmd, int(args.size()), argv.data(), lens.data());
  if (n < 0) throw std::bad_alloc();
  Link& k = link(l);
  const bool was_empty = k.out.size() == k.out_head;
  k.out.append(cmd, size_t(n));
  redisFreeCommand(cmd);
  if (was_empty) io_.redis_want_write(l);
}

void RedisTransport::command(RedisLink l, std::initializer_list<std::string_view> args) {
  command(l, std::vector<std::string_view>(args));
}

// --- Transport -------------------------------------------------------------

void RedisTransport::subscribe(std::string_view topic) {
  if (!topics_.emplace(topic).second) return;
  if (link(RedisLink::subscriber).phase == Phase::ready) {
    ++resubscribe_acks_due_;
    ++subscribes_sent_;
    command(RedisLink::subscriber, {"SUBSCRIBE", channel(topic)});
  }
}

void RedisTransport::unsubscribe(std::string_view topic) {
  auto it = topics_.find(std::string(topic));
  if (it == topics_.end()) return;
  topics_.erase(it);
  if (link(RedisLink::subscriber).phase == Phase::ready) command(RedisLink::subscriber, {"UNSUBSCRIBE", channel(topic)});
}

PublishStatus RedisTransport::publish(std::string_view topic, std::string_view payload) {
  if (!connected_) {
    ++stats_.publish_unavailable;
    return PublishStatus::unavailable;
  }
  const Link& k = link(RedisLink::command);
  if (payload.size() > options_.max_payload_bytes) return PublishStatus::too_large;
  if (k.out.size() - k.out_head + held_bytes_ > options_.max_output_bytes) {
    ++stats_.publish_backpressure;
    return PublishStatus::backpressure;
  }
  ++stats_.published;
  if (subscribes_confirmed_ >= subscribes_sent_ && held_.empty()) {
    command(RedisLink::command, {"PUBLISH", channel(topic), payload});
    pending_.push_back(Pending{Expect::publish, ++publish_number_});
    return PublishStatus::accepted;
  }
  const std::string ch = channel(topic);
  const char* argv[] = {"PUBLISH", ch.data(), payload.data()};
  const size_t lens[] = {7, ch.size(), payload.size()};
  char* cmd = nullptr;
  const int n = redisFormatCommandArgv(&cmd, 3, argv, lens);
  if (n < 0) throw std::bad_alloc();
  held_.push_back(Held{subscribes_sent_, ++publish_number_, std::string(cmd, size_t(n))});
  held_bytes_ += size_t(n);
  redisFreeCommand(cmd);
  return PublishStatus::accepted;
}

void RedisTransport::set_presence(std::string_view user, uint32_t connections) {
  auto it = presence_.find(user);
  const uint32_t before = it == presence_.end() ? 0 : it->second;
  if (connections == before) return;
  std::string name(user);
  if (connections == 0) {
    presence_.erase(it);
  } else if (it == presence_.end()) {
    presence_.emplace(name, connections);
  } else {
    it->second = connections;
  }
  mark_unwritten(name, before > 0);
  // Offline, the entry waits: after reconnecting the whole hash is rewritten.
  if (link(RedisLink::command).phase == Phase::ready) flush_presence();
}

// in_redis: whether Redis holds the user as online, if this is the user's
// first unwritten change (a later change keeps the first one's answer).
void RedisTransport::mark_unwritten(const std::string& user, bool in_redis) {
  const auto it = unwritten_.try_emplace(user, in_redis).first;
  // Never written, now gone: nothing to undo in Redis.
  if (!it->second && !presence_.contains(user)) unwritten_.erase(it);
}

bool RedisTransport::command_link_has_room() const {
  const Link& k = links_[size_t(RedisLink::command)];
  return k.out.size() - k.out_head + held_bytes_ < options_.max_output_bytes;
}

// Writes coalesced presence changes, a batch at a time, while the command
// link has room under max_output_bytes; the rest waits for poll().
void RedisTransport::flush_presence() {
  if (link(RedisLink::command).phase != Phase::ready) return;
  const std::string key = channel("node:" + options_.node_id + ":users");
  std::vector<std::string> names, counts, events;
  while (!unwritten_.empty() && command_link_has_room()) {
    names.clear();
    counts.clear();
    events.clear();
    std::vector<std::string_view> set{"HSET", key}, del{"HDEL", key};
    for (auto it = unwritten_.begin(); it != unwritten_.end() && names.size() < presence_batch_users;) {
      names.push_back(it->first);
      const bool was_online = it->second;
      it = unwritten_.erase(it);
      auto p = presence_.find(names.back());
      const uint32_t n = p == presence_.end() ? 0 : p->second;
      if (n > 0) counts.push_back(std::to_string(n));
      if (was_online == (n > 0)) continue;
      std::string e = n ? R"({"event":"online","user_id":)" : R"({"event":"offline","user_id":)";
      append_json_string(e, names.back());
      e += R"(,"node_id":)";
      append_json_string(e, options_.node_id);
      e += R"(,"connections":)" + std::to_string(n) + "}";
      events.push_back(std::move(e));
    }
    // counts and names are complete now: views into them stay valid.
    size_t c = 0;
    for (const std::string& u : names) {
      if (presence_.contains(u)) {
        set.push_back(u);
        set.push_back(counts[c++]);
      } else {
        del.push_back(u);
      }
    }
    stats_.presence_writes += names.size();
    if (set.size() > 2) {
      command(RedisLink::command, set);
      // Every write re-arms the expiry, so even a node that dies before its
      // first refresh leaves nothing behind for longer than the TTL.
      command(RedisLink::command, {"PEXPIRE", key, std::to_string(options_.presence_ttl_ms)});
      pending_.push_back(Pending{Expect::ignore, 0});
      pending_.push_back(Pending{Expect::ignore, 0});
    }
    if (del.size() > 2) {
      command(RedisLink::command, del);
      pending_.push_back(Pending{Expect::ignore, 0});
    }
    for (const std::string& e : events) publish_event(e);
  }
}

void RedisTransport::publish_event(std::string_view json) {
  command(RedisLink::command, {"PUBLISH", channel("events"), json});
  pending_.push_back(Pending{Expect::ignore, 0});
}

size_t RedisTransport::poll(uint64_t now_ms) {
  now_ms_ = now_ms;
  for (size_t i = 0; i < 2; ++i) {
    const RedisLink l = RedisLink(i);
    Link& k = links_[i];
    if (k.phase == Phase::down && now_ms >= k.retry_at_ms) {
      k.phase = Phase::connecting;
      k.connecting_since_ms = now_ms;
      k.close_requested = false;
      io_.redis_connect(l);
    } else {
      check_liveness(l, now_ms);
    }
  }
  if (connected_ && now_ms >= next_refresh_ms_) refresh_presence();
  if (!unwritten_.empty()) flush_presence();

  if (connected_ != reported_connected_) {
    reported_connected_ = connected_;
    if (sink_) sink_->on_transport_state(connected_ ? TransportState::connected : TransportState::disconnected);
  }
  size_t delivered = 0;
  while (!inbound_.empty()) {
    Inbound m = std::move(inbound_.front());
    inbound_.pop_front();
    inbound_bytes_ -= m.topic.size() + m.payload.size();
    ++delivered;
    if (sink_) sink_->on_transport_message(m.topic, m.payload);
  }
  return delivered;
}

// Each deadline is when check_liveness would act; links already being
// closed have none (their on_disconnected is due), so the driver never spins.
uint64_t RedisTransport::next_timer_ms() const {
  uint64_t t = UINT64_MAX;
  const uint64_t ping_after = std::max<uint32_t>(1, options_.timeout_ms / 3);
  for (const Link& k : links_) {
    if (k.phase == Phase::down) t = std::min(t, k.retry_at_ms);
    if (k.close_requested) continue;
    if (k.phase == Phase::connecting) t = std::min<uint64_t>(t, k.connecting_since_ms + options_.connect_timeout_ms);
    if (k.phase == Phase::handshake) t = std::min<uint64_t>(t, k.connecting_since_ms + options_.timeout_ms);
    if (k.phase == Phase::ready)
      t = std::min<uint64_t>(t, k.last_heard_ms + (k.ping_outstanding ? options_.timeout_ms : ping_after));
  }
  if (connected_) t = std::min(t, next_refresh_ms_);
  if (connected_ != reported_connected_ || !inbound_.empty()) t = 0;
  if (!unwritten_.empty() && links_[size_t(RedisLink::command)].phase == Phase::ready && command_link_has_room()) t = 0;
  return t;
}

// A connect, a handshake or a ready link that stays silent too long is
// closed; a ready link silent for a third of the timeout is pinged, so an
// idle but healthy link always has something to answer.
void RedisTransport::check_liveness(RedisLink l, uint64_t now_ms) {
  Link& k = link(l);
  if (k.close_requested) return;
  switch (k.phase) {
    case Phase::down:
      return;
    case Phase::connecting:
      if (now_ms - k.connecting_since_ms < options_.connect_timeout_ms) return;
      report_error(RedisErrorCause::handshake, std::string("Redis ") + link_name(l) + " link: no connection within " +
                                                   std::to_string(options_.connect_timeout_ms) + " ms");
      return fail_link(l, now_ms);
    case Phase::handshake:
      if (now_ms - k.connecting_since_ms < options_.timeout_ms) return;
      report_error(RedisErrorCause::handshake, std::string("Redis ") + link_name(l) + " link: no answer to " +
                                                   (options_.password.empty() ? "PING" : "AUTH and PING") + " within " +
                                                   std::to_string(options_.timeout_ms) + " ms");
      return fail_link(l, now_ms);
    case Phase::ready: {
      const uint64_t silent = now_ms - k.last_heard_ms;
      if (silent >= options_.timeout_ms) {
        ++stats_.link_timeouts;
        report_error(RedisErrorCause::link_timeout, std::string("Redis ") + link_name(l) + " link: nothing heard for " +
                                                        std::to_string(silent) + " ms (timeout " +
                                                        std::to_string(options_.timeout_ms) +
                                                        " ms): dropping it and reconnecting");
        return fail_link(l, now_ms);
      }
      if (!k.ping_outstanding && silent >= std::max<uint32_t>(1, options_.timeout_ms / 3)) {
        k.ping_outstanding = true;
        command(l, {"PING"});
        if (l == RedisLink::command) pending_.push_back(Pending{Expect::ping, 0});
      }
      return;
    }
  }
}

// At most one line per cause per interval; what was held back is counted
// and named in the next line of that cause.
void RedisTransport::report_error(RedisErrorCause cause, std::string text) {
  ++stats_.errors_by_cause[size_t(cause)];
  ErrorReport& r = error_reports_[size_t(cause)];
  if (r.ever && now_ms_ - r.last_ms < options_.error_report_interval_ms) {
    ++r.not_reported;
    return;
  }
  if (r.not_reported > 0) text += " (and " + std::to_string(r.not_reported) + " more like it, not logged)";
  r.ever = true;
  r.last_ms = now_ms_;
  r.not_reported = 0;
  io_.redis_report_error(text);
}

// --- links -----------------------------------------------------------------

// A TCP connection proves nothing about Redis (a proxy in front of a dead
// one accepts too): the link is ready once Redis has answered a PING.
void RedisTransport::on_connected(RedisLink l, uint64_t now_ms) {
  now_ms_ = now_ms;
  Link& k = link(l);
  ++stats_.connects;
  redisReaderFree(k.reader);  // nothing of an earlier connection carries over
  k.reader = new_reader();
  k.out.clear();
  k.out_head = 0;
  k.phase = Phase::handshake;
  k.connecting_since_ms = now_ms;
  k.last_heard_ms = now_ms;
  k.ping_outstanding = false;
  k.auth_answered = options_.password.empty();
  if (!options_.password.empty()) command(l, {"AUTH", options_.password});
  command(l, {"PING"});
}

void RedisTransport::handle_handshake_reply(RedisLink l, void* raw, uint64_t now_ms) {
  const redisReply* r = static_cast<redisReply*>(raw);
  Link& k = link(l);
  if (!k.auth_answered) {
    k.auth_answered = true;
    if (is_ok(r)) return;
    ++stats_.errors;
    ++stats_.auth_failures;
    report_error(RedisErrorCause::auth, std::string("Redis refused the password (AUTH) on the ") + link_name(l) +
                                            " link: " + error_text(r) +
                                            "; check --redis-password / REDIS_PASSWORD / --redis-password-file");
    return fail_link(l, now_ms);
  }
  if (is_pong(r)) return on_ready(l, now_ms);
  ++stats_.errors;
  report_error(RedisErrorCause::handshake,
               std::string("Redis answered PING on the ") + link_name(l) + " link with: " + error_text(r));
  fail_link(l, now_ms);
}

void RedisTransport::on_ready(RedisLink l, uint64_t now_ms) {
  Link& k = link(l);
  k.phase = Phase::ready;
  k.backoff_ms = 0;
  k.last_heard_ms = now_ms;
  if (l == RedisLink::command) {
    resync_presence();
  } else {
    // Every topic again, in batches; `connected` waits for all the acks.
    resubscribe_acks_due_ = 0;
    std::vector<std::string> batch;
    auto flush = [&] {
      if (batch.empty()) return;
      std::vector<std::string_view> args{"SUBSCRIBE"};
      for (auto& c : batch) args.push_back(c);
      command(l, args);
      resubscribe_acks_due_ += batch.size();
      subscribes_sent_ += batch.size();
      batch.clear();
    };
    for (const std::string& t : topics_) {
      batch.push_back(channel(t));
      if (batch.size() == subscribe_batch_topics) flush();
    }
    flush();
  }
  (void)now_ms;
  update_connected();
}

// Connected means both links up and every topic confirmed subscribed once
// since they came up; later subscribes do not make the node `disconnected`
// while their confirmation is on its way.
void RedisTransport::update_connected() {
  const bool links_up = link(RedisLink::command).phase == Phase::ready && link(RedisLink::subscriber).phase == Phase::ready;
  if (!links_up) {
    connected_ = false;
    return;
  }
  if (connected_ || resubscribe_acks_due_ > 0) return;
  connected_ = true;
  connected_at_ms_ = now_ms_;
  std::string e = R"({"event":"node_up","node_id":)";
  append_json_string(e, options_.node_id);
  e += "}";
  publish_event(e);
}

void RedisTransport::on_data(RedisLink l, const char* data, size_t n, uint64_t now_ms) {
  now_ms_ = now_ms;
  Link& k = link(l);
  if (k.phase == Phase::down || k.phase == Phase::connecting || k.close_requested) return;
  k.last_heard_ms = now_ms;
  if (redisReaderFeed(k.reader, data, n) != REDIS_OK) {
    report_error(RedisErrorCause::protocol, std::string("Redis ") + link_name(l) + " link: unreadable reply");
    fail_link(l, now_ms);
    return;
  }
  for (;;) {
    void* reply = nullptr;
    if (redisReaderGetReply(k.reader, &reply) != REDIS_OK) {
      // A protocol error: this connection is unusable.
      report_error(RedisErrorCause::protocol, std::string("Redis ") + link_name(l) + " link: unreadable reply");
      fail_link(l, now_ms);
      return;
    }
    if (!reply) return;
    handle_reply(l, reply, now_ms);
    if (k.phase == Phase::down || k.close_requested) return;
  }
}

void RedisTransport::handle_reply(RedisLink l, void* raw, uint64_t now_ms) {
  Reply reply(static_cast<redisReply*>(raw));
  if (link(l).phase == Phase::handshake) return handle_handshake_reply(l, reply.get(), now_ms);
  if (l == RedisLink::command) handle_command_reply(reply.get(), now_ms);
  else handle_subscriber_reply(reply.get());
}

void RedisTransport::handle_command_reply(void* raw, uint64_t now_ms) {
  const redisReply* r = static_cast<redisReply*>(raw);
  if (pending_.empty()) {  // a reply to nothing: the stream is out of step
    report_error(RedisErrorCause::protocol, "Redis command link: a reply to no command");
    fail_link(RedisLink::command, now_ms);
    return;
  }
  const Pending p = pending_.front();
  pending_.pop_front();
  if (r->type == REDIS_REPLY_ERROR) {
    ++stats_.errors;
    report_error(RedisErrorCause::command, std::string("Redis refused a ") +
                                               (p.what == Expect::publish ? "PUBLISH" : "command") + ": " +
                                               error_text(r));
  }
  switch (p.what) {
    case Expect::ignore:
      return;
    case Expect::ping:
      link(RedisLink::command).ping_outstanding = false;
      return;
    case Expect::refresh:
      // The hash is gone (this node was silent past the TTL, or Redis lost
      // it): write it again rather than keep refreshing nothing.
      // Not while writes are waiting for room: they recreate it.
      if (r->type == REDIS_REPLY_INTEGER && r->integer == 0 && !presence_.empty() && unwritten_.empty())
        resync_presence();
      return;
    case Expect::publish:
      // 0 receivers shortly after (re)connecting proves nothing: the
      // target's node may not have resubscribed yet.
      if (r->type == REDIS_REPLY_ERROR ||
          (r->type == REDIS_REPLY_INTEGER && r->integer == 0 && now_ms - connected_at_ms_ < options_.resubscribe_grace_ms)) {
        ++stats_.publish_lost;
        if (sink_) sink_->on_transport_publish_lost(p.publish_number, 1, PublishLoss::unconfirmed);
      } else if (r->type == REDIS_REPLY_INTEGER && r->integer == 0 && sink_) {
        sink_->on_transport_publish_unrouted(p.publish_number);
      }
      return;
  }
}

void RedisTransport::handle_subscriber_reply(void* raw) {
  const redisReply* r = static_cast<redisReply*>(raw);
  if (r->type == REDIS_REPLY_ERROR) {
    // A refused SUBSCRIBE (an ACL without the channel, say): this node will
    // not hear its topics, and stays `disconnected` until it can.
    ++stats_.errors;
    report_error(RedisErrorCause::subscribe, "Redis refused a command on the subscriber link (SUBSCRIBE): " +
                                                 error_text(r));
    return;
  }
  if (is_pong(r)) {
    link(RedisLink::subscriber).ping_outstanding = false;
    return;
  }
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 3) return;
  const std::string_view kind = text_of(r->element[0]);
  if (kind == "subscribe") {
    ++subscribes_confirmed_;
    if (resubscribe_acks_due_ > 0 && --resubscribe_acks_due_ == 0) update_connected();
    release_held();
    return;
  }
  if (kind != "message") return;
  std::string_view ch = text_of(r->element[1]);
  const std::string_view payload = text_of(r->element[2]);
  if (!ch.starts_with(options_.prefix)) return;
  ch.remove_prefix(options_.prefix.size());
  ++stats_.messages_received;
  if (inbound_bytes_ + ch.size() + payload.size() > options_.max_inbound_bytes) {
    ++stats_.inbound_dropped;
    return;
  }
  inbound_bytes_ += ch.size() + payload.size();
  inbound_.push_back(Inbound{std::string(ch), std::string(payload)});
}

void RedisTransport::release_held() {
  Link& k = link(RedisLink::command);
  while (!held_.empty() && held_.front().after_subscribes <= subscribes_confirmed_) {
    Held& h = held_.front();
    if (k.out.size() == k.out_head) io_.redis_want_write(RedisLink::command);
    k.out.append(h.command);
    pending_.push_back(Pending{Expect::publish, h.publish_number});
    held_bytes_ -= h.command.size();
    held_.pop_front();
  }
}

void RedisTransport::fail_link(RedisLink l, uint64_t) {
  Link& k = link(l);
  if (k.close_requested) return;
  k.close_requested = true;
  io_.redis_close(l);
}

void RedisTransport::on_disconnected(RedisLink l, uint64_t now_ms) {
  now_ms_ = now_ms;
  Link& k = link(l);
  k.close_requested = false;
  if (k.phase == Phase::down) return;
  if (k.phase == Phase::ready) ++stats_.disconnects;
  k.phase = Phase::down;
  k.ping_outstanding = false;
  k.out.clear();
  k.out_head = 0;
  k.backoff_ms = k.backoff_ms == 0 ? options_.reconnect_min_ms : std::min(k.backoff_ms * 2, options_.reconnect_max_ms);
  k.retry_at_ms = now_ms + k.backoff_ms;
  if (l == RedisLink::command) {
    lose_pending_publishes();
  } else {
    // No confirmation will come for what was in flight; what waited for
    // them may go (other nodes do not need our subscriptions).
    resubscribe_acks_due_ = 0;
    subscribes_confirmed_ = subscribes_sent_;
    if (link(RedisLink::command).phase == Phase::ready) release_held();
  }
  update_connected();
}

// Written or not, no reply will come for these any more: whether Redis
// delivered them is unknown, so they are reported lost (the sender is told)
// rather than assumed delivered.
void RedisTransport::lose_pending_publishes() {
  for (const Pending& p : pending_) {
    if (p.what != Expect::publish) continue;
    ++stats_.publish_lost;
    if (sink_) sink_->on_transport_publish_lost(p.publish_number, 1, PublishLoss::connection_lost);
  }
  pending_.clear();
  for (const Held& h : held_) {
    ++stats_.publish_lost;
    if (sink_) sink_->on_transport_publish_lost(h.publish_number, 1, PublishLoss::connection_lost);
  }
  held_.clear();
  held_bytes_ = 0;
}

// Redis may have lost the hash (a restart) or kept a stale one: delete it
// and write every user again, through the same coalesced, bounded path as
// single changes. Users already waiting keep their online/offline answer.
void RedisTransport::resync_presence() {
  const std::string key = channel("node:" + options_.node_id + ":users");
  command(RedisLink::command, {"DEL", key});
  pending_.push_back(Pending{Expect::ignore, 0});
  for (const auto& entry : presence_) unwritten_.try_emplace(entry.first, true);
  flush_presence();
  command(RedisLink::command, {"SADD", channel("nodes"), options_.node_id});
  pending_.push_back(Pending{Expect::ignore, 0});
  refresh_presence();
}

void RedisTransport::refresh_presence() {
  command(RedisLink::command, {"PEXPIRE", channel("node:" + options_.node_id + ":users"),
                               std::to_string(options_.presence_ttl_ms)});
  pending_.push_back(Pending{Expect::refresh, 0});
  next_refresh_ms_ = now_ms_ + std::max<uint32_t>(1, options_.presence_ttl_ms / 3);
}

std::string_view RedisTransport::output(RedisLink l) const {
  const Link& k = links_[size_t(l)];
  return std::string_view(k.out).substr(k.out_head);
}

void RedisTransport::consume_output(RedisLink l, size_t n) {
  Link& k = link(l);
  assert(n <= k.out.size() - k.out_head);
  k.out_head += n;
  if (k.out_head == k.out.size()) {
    k.out.clear();
    k.out_head = 0;
  } else if (k.out_head > 64 * 1024 && k.out_head * 2 > k.out.size()) {
    k.out.erase(0, k.out_head);
    k.out_head = 0;
  }
}

}  // namespace wsgate

// The Redis transport against a real redis-server (started here on a free
// loopback port): links, resubscription after a restart, lost publishes,
// presence with expiry, AUTH. Every wait is bounded by a deadline.
#include "redis_transport.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../support/redis_poll_io.hpp"
#include "../support/redis_server.hpp"

namespace wsgate::test {
namespace {

struct Recorder final : TransportSink {
  std::vector<std::pair<std::string, std::string>> messages;
  std::vector<TransportState> states;
  std::vector<uint64_t> lost;
  void on_transport_message(std::string_view t, std::string_view p) override { messages.emplace_back(t, p); }
  void on_transport_state(TransportState s) override { states.push_back(s); }
  void on_transport_publish_lost(uint64_t first, uint64_t count, PublishLoss) override {
    for (uint64_t i = 0; i < count; ++i) lost.push_back(first + i);
  }
};

struct RedisNode {
  RedisNode(uint16_t port, std::string id, std::string password = {}, uint32_t ttl_ms = 15000,
            const std::function<void(RedisOptions&)>& adjust = {}) {
    RedisOptions o;
    o.port = port;
    o.node_id = std::move(id);
    o.password = std::move(password);
    o.prefix = "t:";
    o.presence_ttl_ms = ttl_ms;
    o.reconnect_max_ms = 200;
    if (adjust) adjust(o);
    transport = std::make_unique<RedisTransport>(o, io);
    io.attach(transport.get());
    transport->set_sink(&sink);
  }
  PollRedisIo io;
  std::unique_ptr<RedisTransport> transport;
  Recorder sink;
};

// Runs the nodes' loops until done() or the deadline; false on timeout.
bool pump_until(std::vector<RedisNode*> nodes, const std::function<bool()>& done, int deadline_ms = 5000) {
  const uint64_t end = monotonic_ms() + uint64_t(deadline_ms);
  while (monotonic_ms() < end) {
    for (RedisNode* n : nodes) n->io.pump(5);
    if (done()) return true;
  }
  return false;
}

// A plain client for looking at what the transport stored.
std::map<std::string, std::string> hgetall(uint16_t port, const std::string& key) {
  std::string cmd = "redis-cli -p " + std::to_string(port) + " --no-raw HGETALL " + key + " 2>/dev/null";
  std::map<std::string, std::string> out;
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) return out;
  char line[512];
  std::vector<std::string> items;
  while (fgets(line, sizeof line, f)) {
    std::string s(line);
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    const size_t q = s.find('"');
    if (q == std::string::npos) continue;
    items.push_back(s.substr(q + 1, s.rfind('"') - q - 1));
  }
  pclose(f);
  for (size_t i = 0; i + 1 < items.size(); i += 2) out[items[i]] = items[i + 1];
  return out;
}

// One line of INFO commandstats: how many times Redis ran `command`.
uint64_t command_calls(uint16_t port, const std::string& command) {
  const std::string cmd = "redis-cli -p " + std::to_string(port) + " INFO commandstats 2>/dev/null";
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) return 0;
  char line[512];
  uint64_t calls = 0;
  const std::string want = "cmdstat_" + command + ":calls=";
  while (fgets(line, sizeof line, f)) {
    std::string l(line);
    if (l.starts_with(want)) calls = std::stoull(l.substr(want.size()));
  }
  pclose(f);
  return calls;
}

bool redis_cli(uint16_t port, const std::string& args) {
  return std::system(("redis-cli -p " + std::to_string(port) + " " + args + " >/dev/null 2>&1").c_str()) == 0;
}

bool any_line_has(const std::vector<std::string>& lines, std::string_view text) {
  for (const std::string& l : lines)
    if (l.find(text) != std::string::npos) return true;
  return false;
}

TEST(RedisTransport, DeliversBetweenNodesInOrder) {
  RedisServer redis;
  RedisNode a(redis.port(), "A"), b(redis.port(), "B");
  b.transport->subscribe("user:bob");
  ASSERT_TRUE(pump_until({&a, &b}, [&] {
    return a.transport->state() == TransportState::connected && b.transport->state() == TransportState::connected;
  }));
  for (int i = 0; i < 500; ++i)
    ASSERT_EQ(a.transport->publish("user:bob", "m" + std::to_string(i)), PublishStatus::accepted);
  ASSERT_TRUE(pump_until({&a, &b}, [&] { return b.sink.messages.size() == 500; }));
  for (int i = 0; i < 500; ++i) {
    EXPECT_EQ(b.sink.messages[size_t(i)].first, "user:bob");
    EXPECT_EQ(b.sink.messages[size_t(i)].second, "m" + std::to_string(i));
  }
  EXPECT_TRUE(a.sink.lost.empty());
}

TEST(RedisTransport, UnreachableBackendRefusesPublishes) {
  const uint16_t port = free_loopback_port();  // nothing listens here
  RedisNode a(port, "A");
  a.io.pump(5);
  EXPECT_EQ(a.transport->state(), TransportState::disconnected);
  EXPECT_EQ(a.transport->publish("broadcast", "x"), PublishStatus::unavailable);
  EXPECT_EQ(a.transport->stats().publish_unavailable, 1u);
}

TEST(RedisTransport, RestartOfRedisResubscribesAndRepublishesPresence) {
  RedisServer redis;
  RedisNode a(redis.port(), "A"), b(redis.port(), "B");
  b.transport->subscribe("user:bob");
  b.transport->set_presence("bob", 2);
  ASSERT_TRUE(pump_until({&a, &b}, [&] {
    return a.transport->state() == TransportState::connected && b.transport->state() == TransportState::connected;
  }));
  ASSERT_TRUE(pump_until({&a, &b}, [&] { return hgetall(redis.port(), "t:node:B:users")["bob"] == "2"; }));

  redis.kill();
  ASSERT_TRUE(pump_until({&a, &b}, [&] {
    return a.transport->state() == TransportState::disconnected && b.transport->state() == TransportState::disconnected;
  }));
  EXPECT_EQ(a.transport->publish("user:bob", "while down"), PublishStatus::unavailable);
  redis.start();  // empty: no subscriptions, no presence
  ASSERT_TRUE(pump_until({&a, &b}, [&] {
    return a.transport->state() == TransportState::connected && b.transport->state() == TransportState::connected;
  }));
  EXPECT_EQ(hgetall(redis.port(), "t:node:B:users")["bob"], "2");
  ASSERT_EQ(a.transport->publish("user:bob", "after"), PublishStatus::accepted);
  ASSERT_TRUE(pump_until({&a, &b}, [&] { return !b.sink.messages.empty(); }));
  EXPECT_EQ(b.sink.messages.back().second, "after");
  // The sink heard about both transitions, in order.
  ASSERT_GE(b.sink.states.size(), 3u);
  EXPECT_EQ(b.sink.states[0], TransportState::connected);
  EXPECT_EQ(b.sink.states[1], TransportState::disconnected);
  EXPECT_EQ(b.sink.states.back(), TransportState::connected);
}

TEST(RedisTransport, PublishesUnconfirmedWhenTheConnectionDropsAreReportedLost) {
  RedisServer redis;
  RedisNode a(redis.port(), "A");
  ASSERT_TRUE(pump_until({&a}, [&] { return a.transport->state() == TransportState::connected; }));
  // Queued, never written: the link dies before the loop runs again.
  for (int i = 0; i < 3; ++i) ASSERT_EQ(a.transport->publish("user:x", "p"), PublishStatus::accepted);
  redis.kill();
  // The command link's end is what settles them (the subscriber link may
  // notice first).
  ASSERT_TRUE(pump_until({&a}, [&] { return !a.transport->link_up(RedisLink::command); }));
  EXPECT_EQ(a.transport->state(), TransportState::disconnected);
  EXPECT_EQ(a.sink.lost, (std::vector<uint64_t>{1, 2, 3}));
}

TEST(RedisTransport, UnwrittenCommandsAreBoundedByBackpressure) {
  RedisServer redis;
  PollRedisIo io;
  RedisOptions o;
  o.port = redis.port();
  o.node_id = "A";
  o.max_output_bytes = 4096;
  RedisTransport t(o, io);
  io.attach(&t);
  Recorder sink;
  t.set_sink(&sink);
  const uint64_t end = monotonic_ms() + 5000;
  while (t.state() != TransportState::connected && monotonic_ms() < end) io.pump(5);
  ASSERT_EQ(t.state(), TransportState::connected);
  // The loop does not run: nothing is written, the output grows to its limit.
  const std::string payload(1000, 'x');
  int accepted = 0;
  PublishStatus st = PublishStatus::accepted;
  for (int i = 0; i < 100 && st == PublishStatus::accepted; ++i)
    if ((st = t.publish("user:x", payload)) == PublishStatus::accepted) ++accepted;
  EXPECT_EQ(st, PublishStatus::backpressure);
  EXPECT_LE(accepted, 6);
  EXPECT_LE(t.output(RedisLink::command).size(), o.max_output_bytes + payload.size() + 64);
  EXPECT_EQ(t.stats().publish_backpressure, 1u);
  // Written out, it accepts again.
  const uint64_t flush_end = monotonic_ms() + 5000;
  while (!t.output(RedisLink::command).empty() && monotonic_ms() < flush_end) io.pump(5);
  EXPECT_EQ(t.publish("user:x", payload), PublishStatus::accepted);
}

TEST(RedisTransport, PresenceOfANodeThatStopsRefreshingExpires) {
  RedisServer redis;
  auto a = std::make_unique<RedisNode>(redis.port(), "A", "", 300);
  a->transport->set_presence("alice", 1);
  ASSERT_TRUE(pump_until({a.get()}, [&] { return hgetall(redis.port(), "t:node:A:users")["alice"] == "1"; }));
  a.reset();  // like kill -9: no goodbye
  const uint64_t end = monotonic_ms() + 3000;
  bool gone = false;
  while (!gone && monotonic_ms() < end) gone = hgetall(redis.port(), "t:node:A:users").empty();
  EXPECT_TRUE(gone);
}

TEST(RedisTransport, AuthenticatesWithAPassword) {
  RedisServer redis("s3cret");
  RedisNode good(redis.port(), "A", "s3cret"), bad(redis.port(), "B", "wrong");
  ASSERT_TRUE(pump_until({&good, &bad}, [&] { return good.transport->state() == TransportState::connected; }));
  pump_until({&good, &bad}, [] { return false; }, 300);
  EXPECT_EQ(bad.transport->state(), TransportState::disconnected);
}

// A stalled Redis (SIGSTOP: its sockets stay open, the kernel even accepts
// new connections, nothing is answered) is noticed within the timeout on
// both links; what was in flight is reported lost; after it wakes up the
// transport reconnects and resubscribes by itself.
TEST(RedisTransport, FrozenRedisIsDetectedWithinTheTimeout) {
  constexpr uint32_t timeout_ms = 600;
  RedisServer redis;
  RedisNode a(redis.port(), "A", "", 15000, [](RedisOptions& o) { o.timeout_ms = o.connect_timeout_ms = timeout_ms; });
  a.transport->subscribe("t");
  ASSERT_TRUE(pump_until({&a}, [&] { return a.transport->state() == TransportState::connected; }));

  redis.freeze();
  const uint64_t frozen_at = monotonic_ms();
  for (int i = 0; i < 3; ++i) ASSERT_EQ(a.transport->publish("t", "into the void"), PublishStatus::accepted);
  // Silence for timeout_ms from the last reply: a bound of 3x leaves room
  // for a loaded machine without waiting forever.
  ASSERT_TRUE(pump_until({&a}, [&] {
    return !a.transport->link_up(RedisLink::command) && !a.transport->link_up(RedisLink::subscriber);
  }, 3 * timeout_ms + 1000));
  const uint64_t detected_ms = monotonic_ms() - frozen_at;
  RecordProperty("frozen_redis_detected_ms", std::to_string(detected_ms));
  std::printf("frozen Redis detected on both links after %llu ms (timeout %u ms)\n",
              static_cast<unsigned long long>(detected_ms), timeout_ms);
  EXPECT_EQ(a.transport->state(), TransportState::disconnected);
  EXPECT_EQ(a.sink.lost, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(a.transport->stats().link_timeouts, 2u);
  EXPECT_TRUE(any_line_has(a.io.errors, "nothing heard")) << (a.io.errors.empty() ? "" : a.io.errors[0]);
  EXPECT_EQ(a.transport->publish("t", "while frozen"), PublishStatus::unavailable);
  ASSERT_FALSE(a.sink.states.empty());
  EXPECT_EQ(a.sink.states.back(), TransportState::disconnected);

  redis.thaw();
  ASSERT_TRUE(pump_until({&a}, [&] { return a.transport->state() == TransportState::connected; }));
  a.sink.messages.clear();
  ASSERT_EQ(a.transport->publish("t", "after"), PublishStatus::accepted);
  ASSERT_TRUE(pump_until({&a}, [&] { return !a.sink.messages.empty(); }));
  EXPECT_EQ(a.sink.messages.back().second, "after");
}

// An idle link is pinged, not dropped: silence with nothing owed is normal.
TEST(RedisTransport, IdleHealthyLinksStayUp) {
  constexpr uint32_t timeout_ms = 300;
  RedisServer redis;
  RedisNode a(redis.port(), "A", "", 15000, [](RedisOptions& o) { o.timeout_ms = timeout_ms; });
  a.transport->subscribe("t");
  ASSERT_TRUE(pump_until({&a}, [&] { return a.transport->state() == TransportState::connected; }));
  pump_until({&a}, [] { return false; }, 5 * timeout_ms);
  EXPECT_EQ(a.transport->stats().link_timeouts, 0u);
  EXPECT_EQ(a.transport->stats().disconnects, 0u);
  EXPECT_GE(command_calls(redis.port(), "ping"), 4u) << "both links pinged while idle";
}

// A wrong password is logged (once, however often the transport retries),
// and counted on every attempt.
TEST(RedisTransport, WrongPasswordIsReportedOncePerCause) {
  RedisServer redis("s3cret");
  RedisNode bad(redis.port(), "B", "wrong");
  pump_until({&bad}, [&] { return bad.transport->stats().auth_failures >= 6; });
  EXPECT_GE(bad.transport->stats().auth_failures, 6u);
  EXPECT_EQ(bad.transport->state(), TransportState::disconnected);
  ASSERT_EQ(bad.io.errors.size(), 1u);
  EXPECT_NE(bad.io.errors[0].find("refused the password"), std::string::npos) << bad.io.errors[0];
  EXPECT_NE(bad.io.errors[0].find("WRONGPASS"), std::string::npos) << bad.io.errors[0];
}

// SUBSCRIBE refused by an ACL: reported, and the node does not claim to be
// connected (it would not hear its topics).
TEST(RedisTransport, RefusedSubscribeIsReported) {
  RedisServer redis;
  ASSERT_TRUE(redis_cli(redis.port(), "ACL SETUSER default resetchannels '&t:allowed*'"));
  RedisNode a(redis.port(), "A");
  a.transport->subscribe("forbidden");
  pump_until({&a}, [&] { return !a.io.errors.empty(); });
  ASSERT_FALSE(a.io.errors.empty());
  EXPECT_NE(a.io.errors[0].find("SUBSCRIBE"), std::string::npos) << a.io.errors[0];
  EXPECT_NE(a.io.errors[0].find("NOPERM"), std::string::npos) << a.io.errors[0];
  EXPECT_EQ(a.transport->state(), TransportState::disconnected);
  EXPECT_EQ(a.transport->stats().errors_by_cause[size_t(RedisErrorCause::subscribe)], 1u);
}

// Presence writes respect max_output_bytes: with the link not draining,
// changes wait as one entry per user (however many changes), and what is
// queued stays near the limit. Once it drains, Redis holds the final state.
TEST(RedisTransport, PresenceWritesAreBoundedAndCoalesced) {
  RedisServer redis;
  constexpr uint32_t limit = 4096;
  RedisNode a(redis.port(), "A", "", 15000, [](RedisOptions& o) { o.max_output_bytes = limit; });
  ASSERT_TRUE(pump_until({&a}, [&] { return a.transport->state() == TransportState::connected; }));
  const uint64_t hset_before = command_calls(redis.port(), "hset");
  constexpr int users = 5000;
  // The loop does not run meanwhile: nothing is written out.
  for (int round = 0; round < 10; ++round)
    for (int u = 0; u < users; ++u) a.transport->set_presence("user-" + std::to_string(u), 1 + uint32_t(round % 2));
  for (int u = 0; u < users; u += 2) a.transport->set_presence("user-" + std::to_string(u), 0);
  // One batch may overshoot the limit (256 users, a few KiB), never more.
  EXPECT_LE(a.transport->output(RedisLink::command).size(), limit + 16 * 1024);
  EXPECT_LE(a.transport->presence_unwritten(), size_t(users));
  EXPECT_GT(a.transport->presence_unwritten(), 0u);
  ASSERT_TRUE(pump_until({&a}, [&] {
    return a.transport->presence_unwritten() == 0 && a.transport->output(RedisLink::command).empty();
  }));
  ASSERT_TRUE(pump_until({&a}, [&] { return hgetall(redis.port(), "t:node:A:users").size() == users / 2; }));
  const auto h = hgetall(redis.port(), "t:node:A:users");
  EXPECT_EQ(h.at("user-1"), "2");
  EXPECT_EQ(h.count("user-0"), 0u);
  // 55,000 changes became a few batched writes, not one command each.
  EXPECT_LT(command_calls(redis.port(), "hset") - hset_before, 100u);
}

// After a reconnect the hash is written once: one batched HSET per 256
// users, not one command per user (nor twice).
TEST(RedisTransport, ReconnectRewritesPresenceOnce) {
  RedisServer redis;
  RedisNode a(redis.port(), "A");
  for (int u = 0; u < 100; ++u) a.transport->set_presence("user-" + std::to_string(u), 1);
  ASSERT_TRUE(pump_until({&a}, [&] { return hgetall(redis.port(), "t:node:A:users").size() == 100; }));
  redis.kill();
  ASSERT_TRUE(pump_until({&a}, [&] { return a.transport->state() == TransportState::disconnected; }));
  redis.start();  // a fresh Redis: empty, its counters at zero
  ASSERT_TRUE(pump_until({&a}, [&] { return a.transport->state() == TransportState::connected; }));
  ASSERT_TRUE(pump_until({&a}, [&] { return hgetall(redis.port(), "t:node:A:users").size() == 100; }));
  pump_until({&a}, [] { return false; }, 200);
  EXPECT_EQ(command_calls(redis.port(), "hset"), 1u);
}

}  // namespace
}  // namespace wsgate::test

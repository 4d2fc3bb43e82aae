// The contract every Transport passes (include/wsgate/transport.hpp). One
// suite, instantiated once per implementation through a TransportHarness:
// adding a transport (redis) means writing a harness, not tests.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <hiredis/hiredis.h>

#include "../support/redis_poll_io.hpp"
#include "../support/redis_server.hpp"
#include "redis_transport.hpp"
#include "shm_bus.hpp"
#include "local_transport.hpp"
#include "wsgate/transport.hpp"

namespace wsgate::test {
namespace {

// What a backend needs to be driven by the contract suite. In-process
// backends (local, shm) run in virtual time and are quiescent after one
// round of polls that delivers nothing. A networked backend (a real
// redis-server) overrides pump/pump_until to run its event loop and wait
// with a real deadline, and advance_ms to sleep.
class TransportHarness {
 public:
  virtual ~TransportHarness() = default;

  // A new node on this harness's backend.
  virtual std::unique_ptr<Transport> make_node(const std::string& node_id) = 0;
  // The largest payload publish accepts (topics of the suite are short).
  virtual size_t max_payload_bytes() const = 0;
  // The time nodes are polled with.
  virtual uint64_t now_ms() const = 0;
  virtual void advance_ms(uint64_t ms) = 0;
  virtual uint64_t presence_ttl_ms() const = 0;
  // Presence as the backend stores it (node id → connections); observer is
  // a live node of this harness, for backends that are read through one.
  virtual std::map<std::string, uint32_t> presence_of(Transport& observer, std::string_view user) = 0;

  // Does a subscriber that never polls make publishes to it return
  // backpressure (in-process rings and queues)? Redis instead buffers on the
  // server and drops the slow subscriber's connection, which the
  // subscriber must then report as disconnected.
  virtual bool publisher_sees_slow_subscriber() const { return true; }
  // How many 1 KiB publishes to a subscriber that never polls, at most.
  virtual uint32_t slow_subscriber_publishes_max() const { return 200000; }

  // Does publish answer no_subscribers when no node subscribes? Redis
  // cannot know it at publish time and answers accepted.
  virtual bool knows_when_nobody_subscribes() const { return true; }

  // Makes the backend unreachable for every node, and reachable again.
  virtual bool can_cut_backend() const { return false; }
  virtual const char* why_backend_cannot_be_cut() const { return ""; }
  virtual void cut_backend() {}
  virtual void restore_backend() {}

  // Polls nodes until nothing more arrives.
  virtual void pump(std::span<Transport* const> nodes) {
    for (uint32_t round = 0; round < max_pump_rounds; ++round) {
      if (poll_round(nodes) == 0) return;
    }
    FAIL() << "still delivering after " << max_pump_rounds << " rounds of polls";
  }

  // Polls nodes until done() holds. False if it never does: here, once a
  // round delivers nothing; a networked harness waits up to a deadline.
  virtual bool pump_until(std::span<Transport* const> nodes, const std::function<bool()>& done) {
    for (uint32_t round = 0; round < max_pump_rounds; ++round) {
      if (done()) return true;
      if (poll_round(nodes) == 0) return done();
    }
    return done();
  }

 protected:
  static constexpr uint32_t max_pump_rounds = 10000;

  size_t poll_round(std::span<Transport* const> nodes) {
    size_t delivered = 0;
    for (Transport* t : nodes) delivered += t->poll(now_ms());
    return delivered;
  }
};

class LocalHarness final : public TransportHarness {
 public:
  static LocalBusOptions options() {
    LocalBusOptions o;
    o.inbound_queue_max_bytes = 4 * 1024 * 1024;
    o.inbound_queue_max_messages = 4096;
    o.max_payload_bytes = 1024 * 1024;
    o.presence_ttl_ms = 5000;
    return o;
  }

  std::unique_ptr<Transport> make_node(const std::string& node_id) override {
    return std::make_unique<LocalTransport>(bus_, node_id);
  }
  size_t max_payload_bytes() const override { return bus_.options().max_payload_bytes; }
  uint64_t now_ms() const override { return now_ms_; }
  void advance_ms(uint64_t ms) override { now_ms_ += ms; }
  uint64_t presence_ttl_ms() const override { return bus_.options().presence_ttl_ms; }
  std::map<std::string, uint32_t> presence_of(Transport&, std::string_view user) override {
    return bus_.presence_of(user);
  }
  bool can_cut_backend() const override { return true; }
  void cut_backend() override { bus_.set_available(false); }
  void restore_backend() override { bus_.set_available(true); }

 private:
  LocalBus bus_{options()};
  uint64_t now_ms_ = 1000;
};

class ShmHarness final : public TransportHarness {
 public:
  ShmHarness() : name_(unique_name()) { ShmBus::remove(name_); }
  // The fixture destroys its nodes before the harness.
  ~ShmHarness() override { ShmBus::remove(name_); }

  static ShmBusOptions options() {
    ShmBusOptions o;
    o.max_nodes = 8;
    o.ring_bytes = 1024 * 1024;
    o.max_topics = 8192;
    o.max_presence_entries = 1024;
    o.node_ttl_ms = 5000;
    return o;
  }
  static std::string unique_name() {
    static std::atomic<uint32_t> next{0};
    return "wsgate_contract_" + std::to_string(getpid()) + "_" + std::to_string(next++);
  }

  std::unique_ptr<Transport> make_node(const std::string& node_id) override {
    auto node = std::make_unique<ShmTransport>(name_, node_id, options(), now_ms_);
    max_payload_bytes_ = node->max_payload_bytes();
    return node;
  }
  size_t max_payload_bytes() const override { return max_payload_bytes_; }
  uint64_t now_ms() const override { return now_ms_; }
  void advance_ms(uint64_t ms) override { now_ms_ += ms; }
  uint64_t presence_ttl_ms() const override { return options().node_ttl_ms; }
  std::map<std::string, uint32_t> presence_of(Transport& observer, std::string_view user) override {
    return dynamic_cast<ShmTransport&>(observer).presence_of(user);
  }
  const char* why_backend_cannot_be_cut() const override {
    return "a mapped shared-memory segment cannot become unreachable; a node losing its slot is tested in "
           "ShmBusTest";
  }

 private:
  std::string name_;
  uint64_t now_ms_ = 1000;
  size_t max_payload_bytes_ = 0;
};

// A real redis-server on a free loopback port; each node a RedisTransport
// driven by a poll(2) loop (the server drives the same object from its
// io_uring loop). Time is real: pumping runs the loops against deadlines.
class RedisHarness final : public TransportHarness {
 public:
  static constexpr uint32_t ttl_ms = 600;

  std::unique_ptr<Transport> make_node(const std::string& node_id) override {
    RedisOptions o;
    o.port = redis_.port();
    o.node_id = node_id;
    o.prefix = "contract:";
    o.presence_ttl_ms = ttl_ms;
    o.reconnect_max_ms = 100;
    auto io = std::make_unique<PollRedisIo>();
    auto node = std::make_unique<RedisTransport>(o, *io);
    io->attach(node.get());
    ios_[node.get()] = std::move(io);
    // Ready before the test uses it, as a node is before it serves.
    const uint64_t end = monotonic_ms() + 5000;
    while (node->state() != TransportState::connected && monotonic_ms() < end) ios_[node.get()]->pump(5);
    EXPECT_EQ(node->state(), TransportState::connected);
    return node;
  }
  size_t max_payload_bytes() const override { return RedisOptions{}.max_payload_bytes; }
  uint64_t now_ms() const override { return monotonic_ms(); }
  void advance_ms(uint64_t ms) override { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }
  uint64_t presence_ttl_ms() const override { return ttl_ms; }
  bool publisher_sees_slow_subscriber() const override { return false; }
  // Past the harness's pubsub output limit (4 MiB) and the socket buffers.
  uint32_t slow_subscriber_publishes_max() const override { return 20000; }
  bool knows_when_nobody_subscribes() const override { return false; }
  bool can_cut_backend() const override { return true; }
  void cut_backend() override { redis_.kill(); }
  void restore_backend() override { redis_.start(); }

  // Read as a business service would: every node in the set, its hash.
  std::map<std::string, uint32_t> presence_of(Transport&, std::string_view user) override {
    std::map<std::string, uint32_t> out;
    redisContext* c = redisConnect("127.0.0.1", redis_.port());
    if (!c || c->err) {
      ADD_FAILURE() << "cannot reach redis";
      if (c) redisFree(c);
      return out;
    }
    auto* nodes = static_cast<redisReply*>(redisCommand(c, "SMEMBERS contract:nodes"));
    for (size_t i = 0; nodes && i < nodes->elements; ++i) {
      const std::string node(nodes->element[i]->str, nodes->element[i]->len);
      const std::string key = "contract:node:" + node + ":users";
      auto* r = static_cast<redisReply*>(
          redisCommand(c, "HGET %b %b", key.data(), key.size(), user.data(), user.size()));
      if (r && r->type == REDIS_REPLY_STRING) out[node] = uint32_t(std::stoul(std::string(r->str, r->len)));
      if (r) freeReplyObject(r);
    }
    if (nodes) freeReplyObject(nodes);
    redisFree(c);
    return out;
  }

  void pump(std::span<Transport* const> nodes) override {
    // Quiet: three rounds in a row with nothing delivered and nothing left
    // to write. Bounded by a deadline.
    const uint64_t end = monotonic_ms() + 10000;
    int quiet = 0;
    while (quiet < 3 && monotonic_ms() < end) {
      size_t moved = 0;
      for (Transport* t : nodes) {
        auto* r = static_cast<RedisTransport*>(t);
        moved += ios_.at(t)->pump(2);
        moved += r->output(RedisLink::command).size() + r->output(RedisLink::subscriber).size();
      }
      quiet = moved == 0 ? quiet + 1 : 0;
    }
  }
  bool pump_until(std::span<Transport* const> nodes, const std::function<bool()>& done) override {
    const uint64_t end = monotonic_ms() + 10000;
    while (!done() && monotonic_ms() < end)
      for (Transport* t : nodes) ios_.at(t)->pump(2);
    return done();
  }

 private:
  // Redis drops a subscriber that does not read once 4 MiB wait for it
  // (above the largest message, far below the default 32 MiB).
  RedisServer redis_{"", {"--client-output-buffer-limit", "pubsub 4mb 2mb 1"}};
  std::map<const Transport*, std::unique_ptr<PollRedisIo>> ios_;
};

struct HarnessParam {
  const char* name;
  std::function<std::unique_ptr<TransportHarness>()> make;
};

// What a node's owner (the gateway) sees. It does nothing on reconnect:
// restoring presence and subscriptions is the transport's job.
class Recorder final : public TransportSink {
 public:
  explicit Recorder(Transport& transport) : transport_(transport) { transport_.set_sink(this); }

  void on_transport_message(std::string_view topic, std::string_view payload) override {
    messages.emplace_back(std::string(topic), std::string(payload));
  }
  void on_transport_state(TransportState state) override { states.push_back(state); }
  void set_presence(const std::string& user, uint32_t connections) { transport_.set_presence(user, connections); }
  std::vector<std::string> payloads_on(std::string_view topic) const {
    std::vector<std::string> out;
    for (const auto& [t, p] : messages)
      if (t == topic) out.push_back(p);
    return out;
  }

  std::vector<std::pair<std::string, std::string>> messages;
  std::vector<TransportState> states;

 private:
  Transport& transport_;
};

struct Node {
  std::string id;
  std::unique_ptr<Transport> transport;
  std::unique_ptr<Recorder> recorder;

  Transport* operator->() { return transport.get(); }
  const std::vector<std::pair<std::string, std::string>>& got() const { return recorder->messages; }
};

class TransportContract : public ::testing::TestWithParam<HarnessParam> {
 protected:
  void SetUp() override { harness_ = GetParam().make(); }
  void TearDown() override { nodes_.clear(); }

  Node& add_node(const std::string& id) {
    auto node = std::make_unique<Node>();
    node->id = id;
    node->transport = harness_->make_node(id);
    node->recorder = std::make_unique<Recorder>(*node->transport);
    nodes_.push_back(std::move(node));
    return *nodes_.back();
  }

  std::vector<Transport*> all_except(const Node* skipped = nullptr) const {
    std::vector<Transport*> out;
    for (const auto& n : nodes_)
      if (n.get() != skipped) out.push_back(n->transport.get());
    return out;
  }
  void pump() { harness_->pump(all_except()); }
  bool pump_until(const std::function<bool()>& done) { return harness_->pump_until(all_except(), done); }

  // Publishes like a well-behaved caller: on backpressure, lets the
  // subscribers drain and retries. Any other refusal fails the test.
  void publish_retrying(Node& from, std::string_view topic, std::string_view payload) {
    for (uint32_t attempt = 0; attempt < max_publish_attempts; ++attempt) {
      const PublishStatus status = from->publish(topic, payload);
      if (status == PublishStatus::accepted) return;
      ASSERT_EQ(status, PublishStatus::backpressure);
      pump();
    }
    FAIL() << "publish to " << topic << " stayed in backpressure";
  }

  // What publish answers for a topic that no node subscribes to.
  PublishStatus nobody() const {
    return harness_->knows_when_nobody_subscribes() ? PublishStatus::no_subscribers : PublishStatus::accepted;
  }

  static constexpr uint32_t max_publish_attempts = 1000;
  std::unique_ptr<TransportHarness> harness_;
  std::vector<std::unique_ptr<Node>> nodes_;
};

using Messages = std::vector<std::pair<std::string, std::string>>;

// A payload whose every byte depends on its seed and position, so that
// truncation, corruption or a mix-up between messages shows.
std::string patterned(size_t bytes, uint32_t seed) {
  std::string s(bytes, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < bytes; ++i) {
    x = x * 1103515245u + 12345u;
    s[i] = char(x >> 24);
  }
  return s;
}

TEST_P(TransportContract, DeliversToEverySubscriberAndNoOther) {
  Node& a = add_node("a");
  Node& b = add_node("b");
  Node& c = add_node("c");
  a->subscribe("room");
  b->subscribe("room");
  c->subscribe("elsewhere");
  pump();
  ASSERT_EQ(c->publish("room", "hello"), PublishStatus::accepted);
  ASSERT_TRUE(pump_until([&] { return a.got().size() == 1 && b.got().size() == 1; }));
  pump();
  const Messages expected{{"room", "hello"}};
  EXPECT_EQ(a.got(), expected);
  EXPECT_EQ(b.got(), expected);
  EXPECT_TRUE(c.got().empty());
}

TEST_P(TransportContract, PublishToATopicNobodySubscribesIsNotAnError) {
  Node& a = add_node("a");
  Node& b = add_node("b");
  a->subscribe("other");
  pump();
  EXPECT_EQ(b->publish("nobody-here", "x"), nobody());
  pump();
  EXPECT_TRUE(a.got().empty());
  EXPECT_TRUE(b.got().empty());
}

TEST_P(TransportContract, PublisherSubscribedToItsTopicGetsItsOwnMessage) {
  Node& a = add_node("a");
  // No pump between: a subscription takes effect in order with this node's
  // later publishes.
  a->subscribe("self");
  ASSERT_EQ(a->publish("self", "echo"), PublishStatus::accepted);
  ASSERT_TRUE(pump_until([&] { return !a.got().empty(); }));
  pump();
  EXPECT_EQ(a.got(), (Messages{{"self", "echo"}}));
}

TEST_P(TransportContract, KeepsOrderPerPublisherAndTopic) {
  constexpr uint32_t messages_per_publisher = 1000;
  Node& sub = add_node("sub");
  Node& p1 = add_node("p1");
  Node& p2 = add_node("p2");
  sub->subscribe("t");
  sub->subscribe("u");
  pump();
  for (uint32_t i = 0; i < messages_per_publisher; ++i) {
    ASSERT_NO_FATAL_FAILURE(publish_retrying(p1, "t", "p1:" + std::to_string(i)));
    ASSERT_NO_FATAL_FAILURE(publish_retrying(p2, "t", "p2:" + std::to_string(i)));
    ASSERT_NO_FATAL_FAILURE(publish_retrying(p1, "u", "p1u:" + std::to_string(i)));
  }
  ASSERT_TRUE(pump_until([&] { return sub.got().size() == 3 * messages_per_publisher; }));
  pump();
  ASSERT_EQ(sub.got().size(), 3 * messages_per_publisher);
  std::map<std::string, uint32_t> next;  // publisher prefix → next sequence
  for (const auto& [topic, payload] : sub.got()) {
    const std::string prefix = payload.substr(0, payload.find(':'));
    ASSERT_EQ(prefix == "p1u", topic == "u") << payload;
    EXPECT_EQ(payload, prefix + ":" + std::to_string(next[prefix]++));
  }
}

TEST_P(TransportContract, UnsubscribeResubscribeAndDoubleSubscribe) {
  Node& a = add_node("a");
  Node& b = add_node("b");
  a->subscribe("t");
  pump();
  a->unsubscribe("t");
  pump();
  ASSERT_EQ(b->publish("t", "after unsubscribe"), nobody());
  pump();
  EXPECT_TRUE(a.got().empty());

  a->subscribe("t");
  pump();
  ASSERT_EQ(b->publish("t", "after resubscribe"), PublishStatus::accepted);
  ASSERT_TRUE(pump_until([&] { return !a.got().empty(); }));

  a->subscribe("t");  // twice is once
  pump();
  ASSERT_EQ(b->publish("t", "subscribed twice"), PublishStatus::accepted);
  ASSERT_TRUE(pump_until([&] { return a.got().size() == 2; }));
  pump();
  EXPECT_EQ(a.got(), (Messages{{"t", "after resubscribe"}, {"t", "subscribed twice"}}));

  a->unsubscribe("t");  // once is enough, however often subscribed
  a->unsubscribe("t");  // and a second time is a no-op
  a->unsubscribe("never-subscribed");
  pump();
  ASSERT_EQ(b->publish("t", "gone"), nobody());
  pump();
  EXPECT_EQ(a.got().size(), 2u);
}

TEST_P(TransportContract, ThousandsOfTopicsOnePerUser) {
  constexpr uint32_t topics = 5000;
  Node& a = add_node("a");
  Node& b = add_node("b");
  Node& sender = add_node("sender");
  for (uint32_t i = 0; i < topics; ++i) (i % 2 ? b : a)->subscribe("user:" + std::to_string(i));
  pump();
  for (uint32_t i = 0; i < topics; ++i) {
    ASSERT_NO_FATAL_FAILURE(publish_retrying(sender, "user:" + std::to_string(i), "for " + std::to_string(i)));
  }
  ASSERT_TRUE(pump_until([&] { return a.got().size() + b.got().size() == topics; }));
  pump();
  for (const Node* n : {&a, &b}) {
    ASSERT_EQ(n->got().size(), topics / 2);
    for (const auto& [topic, payload] : n->got()) {
      const uint32_t i = uint32_t(std::stoul(topic.substr(5)));
      EXPECT_EQ(i % 2 == 1, n == &b) << topic;
      EXPECT_EQ(payload, "for " + std::to_string(i));
    }
  }
  EXPECT_TRUE(sender.got().empty());

  for (uint32_t i = 0; i < topics; ++i) (i % 2 ? b : a)->unsubscribe("user:" + std::to_string(i));
  pump();
  for (uint32_t i = 0; i < topics; i += 97) ASSERT_EQ(sender->publish("user:" + std::to_string(i), "late"), nobody());
  pump();
  EXPECT_EQ(a.got().size() + b.got().size(), topics);
}

TEST_P(TransportContract, LargePayloadsArriveWholeAndOversizeIsRefused) {
  Node& a = add_node("a");
  Node& b = add_node("b");
  a->subscribe("big");
  pump();
  const size_t max_bytes = harness_->max_payload_bytes();
  ASSERT_GE(max_bytes, 256u * 1024) << "every transport must carry 256 KiB messages";
  const std::string quarter_mib = patterned(256 * 1024, 1);
  const std::string largest = patterned(max_bytes, 2);
  ASSERT_NO_FATAL_FAILURE(publish_retrying(b, "big", quarter_mib));
  ASSERT_NO_FATAL_FAILURE(publish_retrying(b, "big", largest));
  ASSERT_TRUE(pump_until([&] { return a.got().size() == 2; }));
  // Compare without printing megabytes on failure.
  EXPECT_TRUE(a.got()[0].second == quarter_mib);
  EXPECT_TRUE(a.got()[1].second == largest);

  EXPECT_EQ(b->publish("big", patterned(max_bytes + 1, 3)), PublishStatus::too_large);
  pump();
  EXPECT_EQ(a.got().size(), 2u) << "an oversize message must not be delivered, truncated or not";
}

TEST_P(TransportContract, SlowSubscriberCausesBackpressureWithoutLossOrCorruption) {
  // Bounds the loop for a transport that never pushes back.
  const uint32_t publishes_max = harness_->slow_subscriber_publishes_max();
  constexpr size_t payload_bytes = 1024;
  Node& stuck = add_node("stuck");
  Node& healthy = add_node("healthy");
  Node& sender = add_node("sender");
  stuck->subscribe("t");
  healthy->subscribe("t");
  pump();
  const std::vector<Transport*> not_stuck = all_except(&stuck);
  std::vector<std::string> accepted;
  bool pushed_back = false;
  for (uint32_t i = 0; i < publishes_max && !pushed_back; ++i) {
    std::string payload = patterned(payload_bytes, i);
    const PublishStatus status = sender->publish("t", payload);
    ASSERT_NE(status, PublishStatus::unavailable);
    if (status == PublishStatus::accepted) accepted.push_back(std::move(payload));
    pushed_back = status == PublishStatus::backpressure;
    if (i % 64 == 0) harness_->pump(not_stuck);
  }
  harness_->pump(not_stuck);
  if (harness_->publisher_sees_slow_subscriber()) {
    ASSERT_TRUE(pushed_back) << "a subscriber that never polls must make publishes return backpressure";
  }
  ASSERT_TRUE(harness_->pump_until(not_stuck, [&] { return healthy.got().size() == accepted.size(); }));
  std::vector<std::string> healthy_got = healthy.recorder->payloads_on("t");
  ASSERT_EQ(healthy_got.size(), accepted.size());
  EXPECT_TRUE(healthy_got == accepted) << "the healthy subscriber lost or reordered messages";

  pump();  // the stuck node polls at last
  std::vector<std::string> stuck_got = stuck.recorder->payloads_on("t");
  ASSERT_LE(stuck_got.size(), accepted.size());
  EXPECT_TRUE(std::equal(stuck_got.begin(), stuck_got.end(), accepted.begin())) << "corrupt or reordered";
  if (stuck_got.size() < accepted.size()) {
    // Loss is allowed only where the transport cannot push back, and then
    // it must be announced, never silent.
    EXPECT_FALSE(harness_->publisher_sees_slow_subscriber());
    EXPECT_NE(std::find(stuck.recorder->states.begin(), stuck.recorder->states.end(), TransportState::disconnected),
              stuck.recorder->states.end());
  }
  // Drained: publishing works again.
  EXPECT_EQ(sender->publish("t", "after"), PublishStatus::accepted);
}

TEST_P(TransportContract, PresenceAcrossNodes) {
  Node& a = add_node("a");
  Node& b = add_node("b");
  a.recorder->set_presence("alice", 2);
  b.recorder->set_presence("alice", 1);
  b.recorder->set_presence("bob", 1);
  pump();
  using Presence = std::map<std::string, uint32_t>;
  EXPECT_EQ(harness_->presence_of(*b.transport, "alice"), (Presence{{"a", 2}, {"b", 1}}));
  EXPECT_EQ(harness_->presence_of(*a.transport, "bob"), (Presence{{"b", 1}}));
  EXPECT_TRUE(harness_->presence_of(*a.transport, "carol").empty());

  // A user who leaves node a but is still on node b stays online.
  a.recorder->set_presence("alice", 0);
  pump();
  EXPECT_EQ(harness_->presence_of(*b.transport, "alice"), (Presence{{"b", 1}}));
  b.recorder->set_presence("alice", 3);
  pump();
  EXPECT_EQ(harness_->presence_of(*a.transport, "alice"), (Presence{{"b", 3}}));
  b.recorder->set_presence("alice", 0);
  b.recorder->set_presence("bob", 0);
  pump();
  EXPECT_TRUE(harness_->presence_of(*a.transport, "alice").empty());
  EXPECT_TRUE(harness_->presence_of(*a.transport, "bob").empty());
}

TEST_P(TransportContract, PresenceOfANodeThatStopsRefreshingExpires) {
  Node& a = add_node("a");
  Node& b = add_node("b");
  a.recorder->set_presence("carol", 1);
  b.recorder->set_presence("dave", 1);
  pump();
  using Presence = std::map<std::string, uint32_t>;
  ASSERT_EQ(harness_->presence_of(*b.transport, "carol"), (Presence{{"a", 1}}));

  // a stops polling (crashed, or hung); b goes on.
  const std::vector<Transport*> only_b = all_except(&a);
  harness_->advance_ms(harness_->presence_ttl_ms() / 2);
  harness_->pump(only_b);
  EXPECT_EQ(harness_->presence_of(*b.transport, "carol"), (Presence{{"a", 1}})) << "expired before the TTL";
  harness_->advance_ms(harness_->presence_ttl_ms());
  harness_->pump(only_b);
  EXPECT_TRUE(harness_->presence_of(*b.transport, "carol").empty()) << "a dead node's users linger";
  EXPECT_EQ(harness_->presence_of(*b.transport, "dave"), (Presence{{"b", 1}}));

  // a comes back: the transport writes its presence again by itself.
  ASSERT_TRUE(pump_until([&] { return !harness_->presence_of(*b.transport, "carol").empty(); }));
  EXPECT_EQ(harness_->presence_of(*b.transport, "carol"), (Presence{{"a", 1}}));
}

TEST_P(TransportContract, PublishWhileBackendUnreachableIsRefusedOrDeliveredLater) {
  if (!harness_->can_cut_backend()) GTEST_SKIP() << harness_->why_backend_cannot_be_cut();
  Node& a = add_node("a");
  Node& b = add_node("b");
  a->subscribe("t");
  pump();
  harness_->cut_backend();
  pump();
  const PublishStatus during = b->publish("t", "during");
  EXPECT_NE(during, PublishStatus::backpressure);
  // The transport may resubscribe while down: it must not need the owner.
  a->subscribe("t2");
  harness_->restore_backend();
  ASSERT_TRUE(pump_until([&] {
    return a->state() == TransportState::connected && b->state() == TransportState::connected &&
           (during != PublishStatus::accepted || !a.got().empty());
  }));
  if (during == PublishStatus::accepted) {
    EXPECT_EQ(a.got(), (Messages{{"t", "during"}})) << "accepted while down, so it must arrive after";
  } else {
    EXPECT_EQ(during, PublishStatus::unavailable);
    EXPECT_TRUE(a.got().empty());
  }
  const size_t before = a.got().size();
  ASSERT_EQ(b->publish("t", "after"), PublishStatus::accepted);
  ASSERT_EQ(b->publish("t2", "after2"), PublishStatus::accepted);
  ASSERT_TRUE(pump_until([&] { return a.got().size() == before + 2; }));
  EXPECT_EQ(a.got()[before], (std::pair<std::string, std::string>{"t", "after"}));
  EXPECT_EQ(a.got()[before + 1], (std::pair<std::string, std::string>{"t2", "after2"}));
  // Both nodes told their owners they were cut off and are back.
  for (const Node* n : {&a, &b}) {
    EXPECT_EQ(n->recorder->states, (std::vector<TransportState>{TransportState::disconnected, TransportState::connected}))
        << n->id;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Transports, TransportContract,
    ::testing::Values(HarnessParam{"local", [] { return std::unique_ptr<TransportHarness>(new LocalHarness); }},
                      HarnessParam{"shm", [] { return std::unique_ptr<TransportHarness>(new ShmHarness); }},
                      HarnessParam{"redis", [] { return std::unique_ptr<TransportHarness>(new RedisHarness); }}),
    [](const ::testing::TestParamInfo<HarnessParam>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace wsgate::test

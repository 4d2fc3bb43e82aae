// Several gateway cores joined by the real LocalBus: routing across nodes,
// presence, publish failures, duplicate suppression, rebalancing, drain.
#include <gtest/gtest.h>

#include <memory>

#include "test_support.hpp"
#include "wsgate/gateway.hpp"
#include "local_transport.hpp"

namespace wsgate {
namespace {

using test::drain;
using test::texts;
using Texts = std::vector<std::string>;

struct Node {
  Node(LocalBus& bus, const std::string& id, uint64_t incarnation = 1, Limits limits = {})
      : transport(bus, id), gateway(GatewayConfig{id, incarnation, limits}, &transport) {}
  LocalTransport transport;
  Gateway gateway;
};

class Cluster : public ::testing::Test {
 protected:
  Node& add(const std::string& id, Limits limits = {}) {
    nodes.push_back(std::make_unique<Node>(bus, id, nodes.size() + 1, limits));
    return *nodes.back();
  }
  // Lets every node's transport deliver until nothing moves.
  void settle() {
    for (int round = 0; round < 100; ++round) {
      size_t moved = 0;
      for (auto& n : nodes) moved += n->transport.poll(now);
      if (moved == 0) return;
    }
    FAIL() << "transport never settled";
  }
  void tick(uint64_t ms) {
    now += ms;
    for (auto& n : nodes) n->gateway.handle_tick(now);
    settle();
  }

  LocalBus bus;
  std::vector<std::unique_ptr<Node>> nodes;
  uint64_t now = 1000;
};

TEST_F(Cluster, DirectMessageCrossesNodesOnceToEveryConnection) {
  Node& a = add("A");
  Node& b = add("B");
  Node& c = add("C");
  ConnId alice = a.gateway.handle_open("alice", now);
  ConnId bob_a = a.gateway.handle_open("bob", now);
  ConnId bob_b = b.gateway.handle_open("bob", now);
  ConnId carol = c.gateway.handle_open("carol", now);
  settle();
  a.gateway.handle_text(alice, R"({"type":"send_message","target_user":"bob","content":[1]})", now);
  settle();
  const Texts want{R"({"type":"message","from":"alice","content":[1]})"};
  EXPECT_EQ(texts(a.gateway, bob_a), want);
  EXPECT_EQ(texts(b.gateway, bob_b), want);
  EXPECT_TRUE(texts(c.gateway, carol).empty());
  EXPECT_TRUE(texts(a.gateway, alice).empty());
}

TEST_F(Cluster, BroadcastReachesEveryNodeExactlyOnce) {
  std::vector<std::pair<Node*, ConnId>> conns;
  for (const char* id : {"A", "B", "C"}) {
    Node& n = add(id);
    for (int i = 0; i < 3; ++i) conns.emplace_back(&n, n.gateway.handle_open(std::string(id) + std::to_string(i), now));
  }
  settle();
  nodes[1]->gateway.handle_text(conns[4].second, R"({"type":"broadcast","content":"x"})", now);
  settle();
  for (auto& [node, id] : conns)
    EXPECT_EQ(texts(node->gateway, id), Texts{R"({"type":"broadcast","from":"B1","content":"x"})"});
}

TEST_F(Cluster, PresenceFollowsConnectionsAcrossNodes) {
  Node& a = add("A");
  Node& b = add("B");
  ConnId b1 = a.gateway.handle_open("bob", now);
  ConnId b2 = b.gateway.handle_open("bob", now);
  b.gateway.handle_open("bob", now);
  settle();
  EXPECT_EQ(bus.presence_of("bob"), (std::map<std::string, uint32_t>{{"A", 1}, {"B", 2}}));
  a.gateway.handle_closed(b1);
  b.gateway.handle_closed(b2);
  settle();
  // Leaving node A while still on B: online, on B only.
  EXPECT_EQ(bus.presence_of("bob"), (std::map<std::string, uint32_t>{{"B", 1}}));
}

TEST_F(Cluster, RefusedPublishIsReportedToTheSenderAndLocalDeliveryStillHappens) {
  Node& a = add("A");
  Node& b = add("B");
  ConnId alice = a.gateway.handle_open("alice", now);
  ConnId bob_a = a.gateway.handle_open("bob", now);
  ConnId bob_b = b.gateway.handle_open("bob", now);
  settle();
  bus.set_available(false);
  a.gateway.handle_text(alice, R"({"type":"send_message","target_user":"bob","content":2})", now);
  settle();
  EXPECT_EQ(texts(a.gateway, bob_a), Texts{R"({"type":"message","from":"alice","content":2})"});
  EXPECT_TRUE(texts(b.gateway, bob_b).empty());
  EXPECT_EQ(texts(a.gateway, alice),
            Texts{R"({"type":"error","message":"Not delivered to other nodes: transport unavailable"})"});
  EXPECT_EQ(a.gateway.metrics().transport_publish_failed_total, 1u);
}

TEST_F(Cluster, MessageToAUserOnNoNodeIsCountedUndeliverable) {
  Node& a = add("A");
  add("B");
  ConnId alice = a.gateway.handle_open("alice", now);
  settle();
  a.gateway.handle_text(alice, R"({"type":"send_message","target_user":"ghost","content":1})", now);
  settle();
  EXPECT_EQ(a.gateway.metrics().messages_undeliverable_total, 1u);
}

// A transport that hands every publish to the bus twice: the receiving
// gateways must deliver each message once.
class DuplicatingTransport final : public Transport {
 public:
  explicit DuplicatingTransport(Transport& inner) : inner_(inner) {}
  const char* name() const override { return "dup"; }
  void set_sink(TransportSink* s) override { inner_.set_sink(s); }
  void subscribe(std::string_view t) override { inner_.subscribe(t); }
  void unsubscribe(std::string_view t) override { inner_.unsubscribe(t); }
  PublishStatus publish(std::string_view t, std::string_view p) override {
    inner_.publish(t, p);
    return inner_.publish(t, p);
  }
  void set_presence(std::string_view u, uint32_t n) override { inner_.set_presence(u, n); }
  size_t poll(uint64_t now_ms) override { return inner_.poll(now_ms); }
  TransportState state() const override { return inner_.state(); }

 private:
  Transport& inner_;
};

TEST_F(Cluster, DuplicatedTransportMessagesAreDeliveredOnce) {
  LocalTransport a_bus(bus, "A");
  DuplicatingTransport dup(a_bus);
  Gateway a(GatewayConfig{"A", 7, {}}, &dup);
  Node& b = add("B");
  ConnId alice = a.handle_open("alice", now);
  ConnId bob = b.gateway.handle_open("bob", now);
  for (int round = 0; round < 10; ++round) {
    a_bus.poll(now);
    b.transport.poll(now);
  }
  for (int i = 0; i < 3; ++i)
    a.handle_text(alice, R"({"type":"send_message","target_user":"bob","content":)" + std::to_string(i) + "}", now);
  for (int round = 0; round < 10; ++round) b.transport.poll(now);
  EXPECT_EQ(texts(b.gateway, bob), (Texts{R"({"type":"message","from":"alice","content":0})",
                                          R"({"type":"message","from":"alice","content":1})",
                                          R"({"type":"message","from":"alice","content":2})"}));
  EXPECT_EQ(b.gateway.metrics().transport_stale_dropped_total, 3u);
}

// A transport that, like Redis when its connection drops before the
// replies, reports accepted publishes lost, from poll().
class LosingTransport final : public Transport {
 public:
  explicit LosingTransport(Transport& inner) : inner_(inner) {}
  const char* name() const override { return "losing"; }
  void set_sink(TransportSink* s) override {
    sink_ = s;
    inner_.set_sink(s);
  }
  void subscribe(std::string_view t) override { inner_.subscribe(t); }
  void unsubscribe(std::string_view t) override { inner_.unsubscribe(t); }
  PublishStatus publish(std::string_view t, std::string_view p) override {
    PublishStatus st = inner_.publish(t, p);
    if (st == PublishStatus::accepted || st == PublishStatus::no_subscribers) ++accepted;
    // Redis cannot tell at publish time; it answers later (unrouted).
    if (st == PublishStatus::no_subscribers) st = PublishStatus::accepted;
    return st;
  }
  void set_presence(std::string_view u, uint32_t n) override { inner_.set_presence(u, n); }
  size_t poll(uint64_t now_ms) override {
    if (lose_from)
      sink_->on_transport_publish_lost(lose_from, lose_count ? lose_count : accepted - lose_from + 1,
                                       PublishLoss::connection_lost);
    if (unrouted) sink_->on_transport_publish_unrouted(unrouted);
    lose_from = unrouted = lose_count = 0;
    return inner_.poll(now_ms);
  }
  TransportState state() const override { return inner_.state(); }
  uint64_t accepted = 0;
  uint64_t lose_from = 0;
  uint64_t lose_count = 0;  // 0: up to the last accepted
  uint64_t unrouted = 0;

 private:
  Transport& inner_;
  TransportSink* sink_ = nullptr;
};

TEST_F(Cluster, PublishReportedLostLaterIsReportedToItsSender) {
  LocalTransport inner(bus, "A");
  LosingTransport losing(inner);
  Gateway a(GatewayConfig{"A", 1, {}}, &losing);
  ConnId alice = a.handle_open("alice", now);
  ConnId other = a.handle_open("other", now);
  a.handle_text(alice, R"({"type":"send_message","target_user":"bob","content":1})", now);
  losing.lose_from = losing.accepted;  // the last publish: alice's
  losing.poll(now);
  EXPECT_EQ(texts(a, alice), Texts{R"({"type":"error","message":"Not delivered to other nodes: transport connection lost"})"});
  EXPECT_TRUE(texts(a, other).empty());
  EXPECT_EQ(a.metrics().transport_publish_lost_total, 1u);
}

// The sender of a publish is remembered for max_tracked_publishes newer
// publishes. A loss reported later is counted, and told to nobody: the ring
// slot now names a newer publish and maybe another sender.
TEST_F(Cluster, ALossReportedAfterTheSenderRingWrappedIsCountedOnly) {
  LocalTransport inner(bus, "A");
  LosingTransport losing(inner);
  Limits limits;
  limits.max_tracked_publishes = 4;
  Gateway a(GatewayConfig{"A", 1, limits}, &losing);
  ConnId alice = a.handle_open("alice", now);
  ConnId bob = a.handle_open("bob", now);
  a.handle_text(alice, R"({"type":"send_message","target_user":"zed","content":1})", now);
  const uint64_t alices = losing.accepted;
  for (int i = 0; i < 4; ++i) a.handle_text(bob, R"({"type":"send_message","target_user":"zed","content":2})", now);
  // alice's publish is reported lost after four newer ones took the ring.
  losing.lose_from = alices;
  losing.lose_count = 1;
  losing.poll(now);
  EXPECT_TRUE(texts(a, alice).empty()) << "no error for a publish no longer tracked";
  EXPECT_TRUE(texts(a, bob).empty()) << "nor to the sender now in its ring slot";
  EXPECT_EQ(a.metrics().transport_publish_lost_total, 1u);
  // Inside the ring, the sender is told.
  losing.lose_from = losing.accepted;
  losing.lose_count = 1;
  losing.poll(now);
  EXPECT_EQ(texts(a, bob), Texts{R"({"type":"error","message":"Not delivered to other nodes: transport connection lost"})"});
  EXPECT_EQ(a.metrics().transport_publish_lost_total, 2u);
}

// A node's own bus queue full (nothing polled it): the sender is told, and
// local delivery still happens.
TEST_F(Cluster, AFullBusQueueIsReportedToTheSender) {
  LocalBusOptions o;
  o.inbound_queue_max_messages = 2;
  LocalBus small(o);
  LocalTransport t(small, "A");
  Gateway a(GatewayConfig{"A", 1, {}}, &t);
  ConnId alice = a.handle_open("alice", now);
  ConnId bob = a.handle_open("bob", now);
  for (int i = 0; i < 3; ++i) a.handle_text(alice, R"({"type":"broadcast","content":1})", now);
  const Texts errors = texts(a, alice);
  ASSERT_FALSE(errors.empty());
  EXPECT_EQ(errors.back(), R"({"type":"error","message":"Not delivered to other nodes: transport busy, retry"})");
  EXPECT_EQ(texts(a, bob).size(), 3u) << "local delivery does not depend on the bus";
  EXPECT_EQ(a.metrics().transport_publish_failed_total, 1u);
  EXPECT_EQ(small.counters().backpressure, 1u);
}

TEST_F(Cluster, ADirectMessageThatReachedNoNodeIsCountedUndeliverable) {
  LocalTransport inner(bus, "A");
  LosingTransport redis_like(inner);
  Gateway a(GatewayConfig{"A", 1, {}}, &redis_like);
  ConnId alice = a.handle_open("alice", now);
  ConnId bob = a.handle_open("bob", now);  // subscribed: the publish is "accepted"
  a.handle_text(alice, R"({"type":"broadcast","content":1})", now);
  redis_like.unrouted = redis_like.accepted;  // a broadcast to nobody else: not a lost message
  redis_like.poll(now);
  EXPECT_EQ(a.metrics().messages_undeliverable_total, 0u);
  a.handle_text(bob, R"({"type":"send_message","target_user":"carol","content":1})", now);
  redis_like.unrouted = redis_like.accepted;  // as Redis answers PUBLISH with 0
  redis_like.poll(now);
  EXPECT_EQ(a.metrics().messages_undeliverable_total, 1u);
}

TEST_F(Cluster, ARestartedNodeIsANewPublisher) {
  Node& b = add("B");
  ConnId bob = b.gateway.handle_open("bob", now);
  auto first = std::make_unique<Node>(bus, "A", 1);
  ConnId alice = first->gateway.handle_open("alice", now);
  settle();
  first->gateway.handle_text(alice, R"({"type":"send_message","target_user":"bob","content":1})", now);
  for (int i = 0; i < 5; ++i) b.transport.poll(now);
  first.reset();  // crash
  Node again(bus, "A", 2);  // same id, new incarnation: its sequence restarts
  ConnId alice2 = again.gateway.handle_open("alice", now);
  again.gateway.handle_text(alice2, R"({"type":"send_message","target_user":"bob","content":2})", now);
  for (int i = 0; i < 5; ++i) b.transport.poll(now);
  EXPECT_EQ(texts(b.gateway, bob).size(), 2u);
}

TEST_F(Cluster, OverloadedNodeMovesConnectionsAtABoundedRate) {
  Limits l;
  l.rebalance_tolerance_pct = 20;
  l.rebalance_max_moves_per_s = 5;
  l.load_report_interval_ms = 1000;
  Node& a = add("A", l);
  add("B", l);
  std::vector<ConnId> ids;
  for (int i = 0; i < 40; ++i) ids.push_back(a.gateway.handle_open("u" + std::to_string(i), now));
  tick(0);     // both report: A 40, B 0; mean 20
  tick(1000);  // a second report from each: the picture is settled...
  EXPECT_TRUE(a.gateway.take_closes().empty());
  tick(1000);  // ...once A has heard B's second one
  auto closes = a.gateway.take_closes();
  EXPECT_EQ(closes.size(), 5u);  // one interval's budget, not the whole excess
  for (auto& c : closes) EXPECT_EQ(c.code, CloseCode::reconnect);
  EXPECT_EQ(a.gateway.metrics().rebalance_closes_total, closes.size());
  EXPECT_TRUE(nodes[1]->gateway.take_closes().empty());
}

TEST_F(Cluster, NoMovesWhileLoadsAreStillChanging) {
  Limits l;
  l.rebalance_max_moves_per_s = 100;
  Node& a = add("A", l);
  add("B", l);
  tick(0);
  // A's clients arrive between reports: B's last report (0) is older than
  // A's count, and B is filling up too; acting now would move clients that
  // belong where they are.
  for (int i = 0; i < 30; ++i) a.gateway.handle_open("u" + std::to_string(i), now);
  for (int i = 0; i < 25; ++i) nodes[1]->gateway.handle_open("v" + std::to_string(i), now);
  tick(1000);
  EXPECT_TRUE(a.gateway.take_closes().empty());
  EXPECT_EQ(a.gateway.metrics().rebalance_closes_total, 0u);
}

TEST_F(Cluster, BalancedClusterMovesNothing) {
  Node& a = add("A");
  Node& b = add("B");
  for (int i = 0; i < 11; ++i) a.gateway.handle_open("a" + std::to_string(i), now);
  for (int i = 0; i < 10; ++i) b.gateway.handle_open("b" + std::to_string(i), now);
  for (int i = 0; i < 5; ++i) tick(1000);
  EXPECT_TRUE(a.gateway.take_closes().empty());
  EXPECT_TRUE(b.gateway.take_closes().empty());
}

// Found by the simulator's sweep (seeds 3, 21, 55, 87 of --nodes 3
// --faults crash,partition,drain): a node judged its fresh count against a
// peer's report made just before the clients it had moved landed there,
// saw itself still above the band and moved more, for nothing.
TEST_F(Cluster, AfterMovingClientsANodeWaitsForReportsMadeSince) {
  Limits l;
  l.rebalance_max_moves_per_s = 5;
  Node& a = add("A", l);
  Node& b = add("B", l);
  std::vector<ConnId> ids;
  for (int i = 0; i < 40; ++i) ids.push_back(a.gateway.handle_open("u" + std::to_string(i), now));
  tick(0);
  tick(1000);
  tick(1000);  // B reported 0 twice: settled, A moves its budget
  auto moved = a.gateway.take_closes();
  ASSERT_EQ(moved.size(), 5u);
  // B has reported already this round; the moved clients land on it now,
  // and a third node's drain sends 30 more to B and 5 to A, so A's own
  // count looks steady.
  for (auto& c : moved) a.gateway.handle_closed(c.id);
  for (int i = 0; i < 5; ++i) a.gateway.handle_open("w" + std::to_string(i), now);
  for (int i = 0; i < 35; ++i) b.gateway.handle_open("v" + std::to_string(i), now);
  // A holds 40, B 35: inside the band (mean 37.5, ceiling 45). B's last
  // report (0) is stale, and A must not act on it.
  for (int round = 0; round < 5; ++round) {
    tick(1000);
    EXPECT_TRUE(a.gateway.take_closes().empty()) << "round " << round;
  }
  EXPECT_EQ(a.gateway.metrics().rebalance_closes_total, 5u);
}

// A draining node's clients are about to land on the others: it says so at
// once, so its last report stops counting in their mean before it exits.
TEST_F(Cluster, ADrainingNodeIsLeftOutOfTheMeanAtOnce) {
  Node& a = add("A");
  Node& c = add("C");
  for (int i = 0; i < 10; ++i) c.gateway.handle_open("u" + std::to_string(i), now);
  tick(0);
  ASSERT_FALSE(a.gateway.peer_loads().at("C").draining);
  c.gateway.handle_drain(now);
  settle();
  EXPECT_TRUE(a.gateway.peer_loads().at("C").draining);
}

TEST_F(Cluster, DrainingNodeRefusesUpgradesAndClosesEveryoneAtItsRate) {
  Limits l;
  l.drain_max_closes_per_s = 100;  // 10 per 100 ms step
  Node& a = add("A", l);
  for (int i = 0; i < 25; ++i) a.gateway.handle_open("u" + std::to_string(i), now);
  a.gateway.handle_drain(now);
  EXPECT_EQ(a.gateway.handle_upgrade_request("ip", now), Admission::draining);
  EXPECT_EQ(a.gateway.take_closes().size(), 10u);
  EXPECT_GE(a.gateway.next_tick_ms(), now + 100);
  now += 100;
  a.gateway.handle_tick(now);
  now += 100;
  a.gateway.handle_tick(now);
  auto rest = a.gateway.take_closes();
  EXPECT_EQ(rest.size(), 15u);
  for (auto& c : rest) EXPECT_EQ(c.code, CloseCode::going_away);
}

// The decision every driver (server on SIGTERM, simulator) acts on: keep
// going while connections close at the pace, exit when empty, or cut the
// rest once the deadline has passed.
TEST_F(Cluster, DrainStatusSaysWhenToExitAndTheDeadlineWakesTheDriver) {
  Limits l;
  l.drain_max_closes_per_s = 100;  // 10 per 100 ms step
  Node& a = add("A", l);
  EXPECT_EQ(a.gateway.drain_status(now), DrainStatus::none);
  std::vector<ConnId> ids;
  for (int i = 0; i < 25; ++i) ids.push_back(a.gateway.handle_open("u" + std::to_string(i), now));
  const uint64_t start = now;
  a.gateway.handle_drain(now, start + 250);
  EXPECT_EQ(a.gateway.drain_status(now), DrainStatus::in_progress);
  EXPECT_NE(a.gateway.render_health().find(R"("status":"ok")"), std::string::npos);
  EXPECT_NE(a.gateway.render_health().find(R"("draining":true)"), std::string::npos);
  // Every closed socket is reported back; the status follows the count.
  for (const CloseRequest& c : a.gateway.take_closes()) a.gateway.handle_closed(c.id);
  EXPECT_EQ(a.gateway.connection_count(), 15u);
  now += 100;
  a.gateway.handle_tick(now);
  for (const CloseRequest& c : a.gateway.take_closes()) a.gateway.handle_closed(c.id);
  EXPECT_EQ(a.gateway.connection_count(), 5u);
  EXPECT_EQ(a.gateway.drain_status(now), DrainStatus::in_progress);
  // The deadline (start + 250) comes before the next step (start + 300):
  // the driver is woken for it, and then it is overdue.
  EXPECT_EQ(a.gateway.next_tick_ms(), start + 200);
  now += 100;
  a.gateway.handle_tick(now);
  EXPECT_EQ(a.gateway.take_closes().size(), 5u);  // asked, not yet closed
  EXPECT_EQ(a.gateway.next_tick_ms(), start + 250);
  now = start + 250;
  a.gateway.handle_tick(now);
  EXPECT_EQ(a.gateway.drain_status(now), DrainStatus::overdue);
  EXPECT_GT(a.gateway.next_tick_ms(), now);  // past the deadline: no spinning
  for (ConnId id : ids)
    if (a.gateway.is_open(id)) a.gateway.handle_closed(id);
  EXPECT_EQ(a.gateway.drain_status(now), DrainStatus::complete);
}

TEST_F(Cluster, SlowDrainRateIsHeldBelowTenPerSecond) {
  Limits l;
  l.drain_max_closes_per_s = 2;  // one close every 500 ms
  Node& a = add("A", l);
  for (int i = 0; i < 10; ++i) a.gateway.handle_open("u" + std::to_string(i), now);
  const uint64_t start = now;
  a.gateway.handle_drain(now, start + 60000);
  size_t closed = a.gateway.take_closes().size();
  EXPECT_EQ(closed, 1u);
  for (int step = 0; step < 100 && now < start + 2000; ++step) {  // 2 s: the first close plus 4 more
    now = std::min(a.gateway.next_tick_ms(), start + 2000);
    a.gateway.handle_tick(now);
    closed += a.gateway.take_closes().size();
  }
  EXPECT_EQ(closed, 5u);
}

TEST_F(Cluster, EmptyNodeDrainsAtOnce) {
  Node& a = add("A");
  a.gateway.handle_drain(now, now + 5000);
  EXPECT_EQ(a.gateway.drain_status(now), DrainStatus::complete);
}

// /ready tells a load balancer whether to send new clients here: not to a
// node cut off from the others, a full one, or one that drains.
TEST_F(Cluster, ReadyOnlyWhenConnectedWithRoomAndNotDraining) {
  Limits limits;
  limits.max_connections = 1;
  Node& a = add("A", limits);
  settle();
  EXPECT_EQ(a.gateway.not_ready_reason(), "");
  EXPECT_EQ(a.gateway.render_ready(), R"({"ready":true,"node_id":"A"})");

  bus.set_available(false);
  a.transport.poll(now);
  EXPECT_EQ(a.gateway.not_ready_reason(), "transport disconnected");
  bus.set_available(true);
  a.transport.poll(now);
  EXPECT_EQ(a.gateway.not_ready_reason(), "");

  const ConnId c = a.gateway.handle_open("u", now);
  EXPECT_EQ(a.gateway.not_ready_reason(), "at max connections");
  a.gateway.handle_closed(c);
  EXPECT_EQ(a.gateway.not_ready_reason(), "");

  a.gateway.handle_drain(now, now + 5000);
  EXPECT_EQ(a.gateway.not_ready_reason(), "draining");
  EXPECT_EQ(a.gateway.render_ready(), R"({"ready":false,"node_id":"A","reason":"draining"})");
}

}  // namespace
}  // namespace wsgate

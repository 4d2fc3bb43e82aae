// LocalTransport beyond the contract: its limits, and the faults the
// simulator injects through it (a node cut off, the bus down).
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "local_transport.hpp"

namespace wsgate::test {
namespace {

class Sink final : public TransportSink {
 public:
  void on_transport_message(std::string_view topic, std::string_view payload) override {
    messages.emplace_back(std::string(topic), std::string(payload));
    if (on_message) on_message(topic, payload);
  }
  void on_transport_state(TransportState state) override { states.push_back(state); }
  std::vector<std::pair<std::string, std::string>> messages;
  std::vector<TransportState> states;
  std::function<void(std::string_view, std::string_view)> on_message;
};

LocalBusOptions small_bus() {
  LocalBusOptions o;
  o.inbound_queue_max_messages = 3;
  o.inbound_queue_max_bytes = 64;
  o.max_payload_bytes = 32;
  o.max_topic_bytes = 8;
  o.max_subscriptions_per_node = 2;
  return o;
}

TEST(LocalTransport, QueueBoundsInMessagesAndBytesAreBackpressure) {
  LocalBus bus(small_bus());
  LocalTransport a(bus, "a");
  LocalTransport b(bus, "b");
  Sink sink;
  a.set_sink(&sink);
  a.subscribe("t");
  for (int i = 0; i < 3; ++i) ASSERT_EQ(b.publish("t", "m"), PublishStatus::accepted);
  EXPECT_EQ(b.publish("t", "m"), PublishStatus::backpressure) << "message bound";
  a.poll(1);
  ASSERT_EQ(b.publish("t", std::string(32, 'x')), PublishStatus::accepted);  // 33 bytes queued
  EXPECT_EQ(b.publish("t", std::string(31, 'x')), PublishStatus::backpressure) << "byte bound (33 + 32 > 64)";
  EXPECT_EQ(b.publish("t", std::string(30, 'x')), PublishStatus::accepted);
  EXPECT_EQ(bus.counters().backpressure, 2u);
  EXPECT_EQ(b.publish("t", std::string(33, 'x')), PublishStatus::too_large);
  EXPECT_EQ(b.publish("topic-long", "x"), PublishStatus::too_large);
  EXPECT_EQ(bus.counters().too_large, 2u);
  a.poll(2);
  EXPECT_EQ(a.queued_bytes(), 0u);
  EXPECT_EQ(sink.messages.size(), 5u);
}

TEST(LocalTransport, SubscriptionBoundIsCounted) {
  LocalBus bus(small_bus());
  LocalTransport a(bus, "a");
  a.subscribe("t1");
  a.subscribe("t2");
  a.subscribe("t3");
  EXPECT_FALSE(a.is_subscribed("t3"));
  EXPECT_EQ(a.counters().subscriptions_refused, 1u);
}

TEST(LocalTransport, MessagesQueuedBeforeUnsubscribeAreNotDelivered) {
  LocalBus bus;
  LocalTransport a(bus, "a");
  Sink sink;
  a.set_sink(&sink);
  a.subscribe("t");
  ASSERT_EQ(a.publish("t", "x"), PublishStatus::accepted);
  a.unsubscribe("t");
  EXPECT_EQ(a.poll(1), 0u);
  EXPECT_EQ(a.counters().dropped_unsubscribed, 1u);
  EXPECT_EQ(a.queued_bytes(), 0u);
}

TEST(LocalTransport, SinkPublishingToItsOwnTopicGetsItAtTheNextPoll) {
  LocalBus bus;
  LocalTransport a(bus, "a");
  Sink sink;
  sink.on_message = [&](std::string_view, std::string_view payload) {
    if (payload.size() < 3) {
      ASSERT_EQ(a.publish("t", std::string(payload) + "+"), PublishStatus::accepted);
    }
  };
  a.set_sink(&sink);
  a.subscribe("t");
  ASSERT_EQ(a.publish("t", "m"), PublishStatus::accepted);
  EXPECT_EQ(a.poll(1), 1u);
  EXPECT_EQ(a.poll(2), 1u);
  EXPECT_EQ(a.poll(3), 1u);
  EXPECT_EQ(a.poll(4), 0u);
  EXPECT_EQ(sink.messages.back().second, "m++");
}

TEST(LocalTransport, CutOffNodeNeitherSendsNorReceivesAndItsPresenceExpires) {
  LocalBusOptions o;
  o.presence_ttl_ms = 1000;
  LocalBus bus(o);
  LocalTransport a(bus, "a");
  LocalTransport b(bus, "b");
  Sink sa;
  a.set_sink(&sa);
  a.subscribe("t");
  a.set_presence("alice", 1);
  a.poll(0);
  b.poll(0);
  a.set_cut_off(true);
  EXPECT_EQ(a.publish("t", "x"), PublishStatus::unavailable);
  EXPECT_EQ(b.publish("t", "lost"), PublishStatus::accepted) << "a cut-off subscriber still subscribes";
  EXPECT_EQ(bus.counters().dropped_cut_off, 1u);
  a.poll(500);
  EXPECT_EQ(sa.states, std::vector<TransportState>{TransportState::disconnected});
  EXPECT_TRUE(sa.messages.empty());
  b.poll(900);
  EXPECT_EQ(bus.presence_of("alice").size(), 1u) << "a refreshed at 0: still within the TTL";
  b.poll(1200);
  EXPECT_TRUE(bus.presence_of("alice").empty()) << "a cut-off node stops refreshing";

  a.set_cut_off(false);
  a.poll(1300);
  EXPECT_EQ(sa.states, (std::vector<TransportState>{TransportState::disconnected, TransportState::connected}));
  EXPECT_EQ(bus.presence_of("alice").size(), 1u);
  ASSERT_EQ(b.publish("t", "after"), PublishStatus::accepted);
  a.poll(1301);
  EXPECT_EQ(sa.messages, (std::vector<std::pair<std::string, std::string>>{{"t", "after"}}));
}

TEST(LocalTransport, PresenceGoesWithTheNodeAndOnlineUsersIsSorted) {
  LocalBus bus;
  LocalTransport a(bus, "a");
  {
    LocalTransport b(bus, "b");
    b.set_presence("zed", 1);
    a.set_presence("amy", 2);
    a.set_presence("zed", 1);
    EXPECT_EQ(bus.online_users(), (std::vector<std::string>{"amy", "zed"}));
    EXPECT_EQ(bus.presence_of("zed"), (std::map<std::string, uint32_t>{{"a", 1}, {"b", 1}}));
  }
  EXPECT_EQ(bus.presence_of("zed"), (std::map<std::string, uint32_t>{{"a", 1}}));
  EXPECT_EQ(bus.node_count(), 1u);
}

}  // namespace
}  // namespace wsgate::test

// Hostile transport input: anyone who can publish on a node's channels
// (its Redis) sends raw payloads on its topics. The node's clients must get
// none of it and stay connected, its peers' loads must not move, and each
// drop is counted by reason. What nodes really publish, up to the largest
// message the limits allow, still gets through.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "local_transport.hpp"
#include "test_support.hpp"
#include "wsgate/gateway.hpp"
#include "wsgate/transport_input.hpp"

namespace wsgate {
namespace {

using test::texts;
using Texts = std::vector<std::string>;

constexpr std::string_view peer = "B/00000000000000b1";  // a well-formed origin

std::string envelope(std::string_view origin, uint64_t seq, std::string_view body) {
  return std::string(origin) + "\n" + std::to_string(seq) + "\n" + std::string(body);
}

class HostileInput : public ::testing::Test {
 protected:
  HostileInput() : a_transport(bus, "A"), a(GatewayConfig{"A", 1, {}}, &a_transport), attacker(bus, "evil") {
    alice = a.handle_open("alice", now);
    bob = a.handle_open("bob", now);
    poll();
  }
  void poll() {
    for (int i = 0; i < 10 && a_transport.poll(now) > 0; ++i) {
    }
  }
  // Publishes raw on A's topic and expects it dropped for `why`.
  void expect_dropped(std::string_view topic, const std::string& payload, TransportInvalid why) {
    SCOPED_TRACE(std::string(topic) + " <- " + payload.substr(0, 120));
    const uint64_t before = a.metrics().transport_invalid_total[size_t(why)];
    const uint64_t received = a.metrics().transport_received_total;
    ASSERT_EQ(attacker.publish(topic, payload), PublishStatus::accepted);
    poll();
    EXPECT_EQ(a.metrics().transport_invalid_total[size_t(why)], before + 1) << transport_invalid_name(why);
    EXPECT_EQ(a.metrics().transport_received_total, received);
    EXPECT_TRUE(texts(a, alice).empty());
    EXPECT_TRUE(texts(a, bob).empty());
    EXPECT_TRUE(a.take_closes().empty());
    EXPECT_TRUE(a.is_open(alice) && a.is_open(bob));
    EXPECT_EQ(a.peer_loads().count("B"), 0u);
  }

  LocalBus bus;
  LocalTransport a_transport;
  Gateway a;
  LocalTransport attacker;  // publishes whatever it likes
  uint64_t now = 1000;
  ConnId alice, bob;
  uint64_t seq = 1;
};

TEST_F(HostileInput, MalformedEnvelopesAreDropped) {
  const std::string body = R"({"type":"message","from":"bob","content":1})";
  expect_dropped("user:alice", "no newline at all", TransportInvalid::envelope);
  expect_dropped("user:alice", std::string(peer) + "\n" + body, TransportInvalid::envelope);
  expect_dropped("user:alice", std::string(400, 'x') + "/00000000000000b1\n1\n" + body, TransportInvalid::envelope);
  expect_dropped("user:alice", envelope("attacker", 1, body), TransportInvalid::origin);
  expect_dropped("user:alice", envelope("B/00000000000000B1", 1, body), TransportInvalid::origin);  // upper case
  expect_dropped("user:alice", envelope("B/0000000000000b1", 1, body), TransportInvalid::origin);   // 15 digits
  expect_dropped("user:alice", envelope("B C/00000000000000b1", 1, body), TransportInvalid::origin);
  expect_dropped("user:alice", envelope("/00000000000000b1", 1, body), TransportInvalid::origin);
  expect_dropped("user:alice", envelope("B\x01/00000000000000b1", 1, body), TransportInvalid::origin);
  for (const char* s : {"", "0", "01", "-1", "1a", " 1", "18446744073709551616", "99999999999999999999"})
    expect_dropped("user:alice", std::string(peer) + "\n" + s + "\n" + body, TransportInvalid::sequence);
}

TEST_F(HostileInput, BodiesThatNoNodeBuildsAreDropped) {
  auto on_user = [&](const std::string& body, TransportInvalid why) {
    expect_dropped("user:alice", envelope(peer, seq++, body), why);
  };
  on_user("{\"type\":\"message\",\"from\":\"bob\",\"content\":\"\xff\xfe\"}", TransportInvalid::utf8);
  on_user("{\"type\":\"message\",\"from\":\"bob\",\"content\":\"\xc3\x28\"}", TransportInvalid::utf8);
  on_user("\xed\xa0\x80", TransportInvalid::utf8);  // a UTF-16 surrogate
  on_user(R"({"type":"message","from":"bob","content":})", TransportInvalid::json);
  on_user(R"({"type":"message","from":"bob","content":1)", TransportInvalid::json);
  on_user("", TransportInvalid::json);
  on_user(R"({"type":"message","from":"bob","content":1,"x":2})", TransportInvalid::shape);
  on_user(R"({"type":"message","from":"bob","content":1,"content":2})", TransportInvalid::shape);
  on_user(R"({"type":"message","from":"bob"})", TransportInvalid::shape);
  on_user(R"({"type":"message","from":1,"content":1})", TransportInvalid::shape);
  on_user(R"({"type":"message","from":"","content":1})", TransportInvalid::shape);
  on_user(R"({"type":"message","from":")" + std::string(257, 'u') + R"(","content":1})", TransportInvalid::shape);
  on_user(R"({"type":"message", "from":"bob","content":1})", TransportInvalid::shape);
  on_user(R"({"type":"message","from":"bob" ,"content":1})", TransportInvalid::shape);
  on_user(R"({"type":"message","from":"bob","content": 1})", TransportInvalid::shape);
  on_user(R"({"type":"message","from":"bob","content":1 })", TransportInvalid::shape);
  on_user(R"({"type":"broadcast","from":"bob","content":1})", TransportInvalid::shape);  // wrong topic
  on_user(R"({"type":"error","message":"x"})", TransportInvalid::shape);
  on_user(R"([1,2])", TransportInvalid::shape);
  on_user(R"("text")", TransportInvalid::shape);
  expect_dropped("broadcast", envelope(peer, seq++, R"({"type":"message","from":"bob","content":1})"),
                 TransportInvalid::shape);
  expect_dropped("broadcast", envelope(peer, seq++, "{\"type\":\"broadcast\",\"from\":\"b\",\"content\":\"\x80\"}"),
                 TransportInvalid::utf8);
  expect_dropped("node:A", envelope(peer, seq++, R"({"type":"message","from":"bob","content":1})"),
                 TransportInvalid::topic);
}

// 2 MiB is far more than any node publishes (max_message_bytes + the
// envelope + the reply around it): dropped before it is even parsed, so
// nobody's send queue fills and nobody is closed as a slow consumer.
TEST_F(HostileInput, OversizedMessagesAreDroppedUnread) {
  const std::string content = "\"" + std::string(2 << 20, 'x') + "\"";
  expect_dropped("broadcast", envelope(peer, seq++, R"({"type":"broadcast","from":"bob","content":)" + content + "}"),
                 TransportInvalid::too_large);
  expect_dropped("user:alice", envelope(peer, seq++, R"({"type":"message","from":"bob","content":)" + content + "}"),
                 TransportInvalid::too_large);
  expect_dropped("load", envelope(peer, seq++, std::string(2 << 20, '1')), TransportInvalid::too_large);
}

TEST_F(HostileInput, FakeLoadReportsAreDropped) {
  for (const char* body : {"", "abc", "-1", "01", "1 ", " 1", "1  draining", "5 drainingX", "5 Draining", "5\n",
                           "4294967296", "99999999999", "18446744073709551616", "1e3", "0x10", "+5"})
    expect_dropped("load", envelope(peer, seq++, body), TransportInvalid::load_report);
  EXPECT_EQ(a.peer_loads().size(), 0u);
}

// A message that fails its check does not advance its publisher's
// sequence: a forged huge sequence number cannot make the node drop what
// that publisher sends next.
TEST_F(HostileInput, ADroppedMessageDoesNotAdvanceItsPublishersSequence) {
  expect_dropped("user:alice", envelope(peer, 1000000, R"({"type":"message","from":"bob","content":})"),
                 TransportInvalid::json);
  attacker.publish("user:alice", envelope(peer, 1, R"({"type":"message","from":"bob","content":2})"));
  poll();
  EXPECT_EQ(texts(a, alice), Texts{R"({"type":"message","from":"bob","content":2})"});
}

// What a node really sends passes: numbers beyond a double, escapes,
// non-ASCII, and a report of a draining node.
TEST_F(HostileInput, WhatNodesPublishPasses) {
  const Texts bodies{R"({"type":"message","from":"b\"o\u0001b","content":123456789012345678901234567890})",
                     R"({"type":"message","from":"bob","content":{"n":-1.5e400,"s":"é😀","a":[true,null]}})"};
  for (const std::string& b : bodies) attacker.publish("user:alice", envelope(peer, seq++, b));
  attacker.publish("broadcast", envelope(peer, seq++, R"({"type":"broadcast","from":"bob","content":"x"})"));
  attacker.publish("load", envelope(peer, seq++, "4294967295 draining"));
  poll();
  Texts want = bodies;
  want.push_back(R"({"type":"broadcast","from":"bob","content":"x"})");
  EXPECT_EQ(texts(a, alice), want);
  EXPECT_EQ(a.peer_loads().at("B").connections, 4294967295u);
  EXPECT_TRUE(a.peer_loads().at("B").draining);
  for (uint64_t n : a.metrics().transport_invalid_total) EXPECT_EQ(n, 0u);
}

// The largest message the limits allow, from the longest user id made of
// bytes that each escape to six, crosses nodes: the size check leaves room
// for everything a node can build.
TEST(TransportInput, TheLargestDeliveryANodeBuildsPasses) {
  LocalBus bus;
  Limits l;
  LocalTransport ta(bus, "A"), tb(bus, "B");
  Gateway a(GatewayConfig{"A", 1, l}, &ta);
  Gateway b(GatewayConfig{"B", 2, l}, &tb);
  const std::string sender(l.max_user_id_bytes, '\x01');
  const ConnId from = a.handle_open(sender, 0);
  const ConnId to = b.handle_open("bob", 0);
  for (int i = 0; i < 5; ++i) ta.poll(0), tb.poll(0);
  std::string msg = R"({"type":"broadcast","content":")";
  msg += std::string(l.max_message_bytes - msg.size() - 2, 'x') + "\"}";
  ASSERT_EQ(msg.size(), l.max_message_bytes);
  a.handle_text(from, msg, 0);
  for (int i = 0; i < 5; ++i) tb.poll(0);
  const Texts got = texts(b, to);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_GT(got[0].size(), size_t(l.max_message_bytes) + 5 * l.max_user_id_bytes);
  for (uint64_t n : b.metrics().transport_invalid_total) EXPECT_EQ(n, 0u);
}

TEST(TransportInput, NodeIdsAsTheFlagAcceptsThem) {
  EXPECT_TRUE(node_id_is_valid("wsgate-0.example.com"));
  EXPECT_TRUE(node_id_is_valid("n/1"));
  EXPECT_TRUE(node_id_is_valid(std::string(max_node_id_bytes, 'n')));
  EXPECT_FALSE(node_id_is_valid(""));
  EXPECT_FALSE(node_id_is_valid(std::string(max_node_id_bytes + 1, 'n')));
  EXPECT_FALSE(node_id_is_valid("a b"));
  EXPECT_FALSE(node_id_is_valid("a\nb"));
  EXPECT_FALSE(node_id_is_valid("a\x7f"));
}

}  // namespace
}  // namespace wsgate

// The gateway core driven by events alone: no sockets, no threads, no clock.
#include "wsgate/gateway.hpp"

#include <gtest/gtest.h>

#include "test_support.hpp"

namespace wsgate {
namespace {

using test::drain;
using test::texts;
using Texts = std::vector<std::string>;

GatewayConfig small_config() {
  GatewayConfig c;
  c.node_id = "node-a";
  c.limits.heartbeat_interval_ms = 100;
  c.limits.idle_timeout_ms = 300;
  return c;
}

TEST(Gateway, PingGetsPong) {
  Gateway gw(small_config());
  ConnId a = gw.handle_open("alice", 0);
  gw.handle_text(a, R"({"type":"ping"})", 1);
  EXPECT_EQ(texts(gw, a), Texts{R"({"type":"pong"})"});
  EXPECT_EQ(gw.metrics().messages_in_total[size_t(MessageType::ping)], 1u);
  EXPECT_EQ(gw.metrics().messages_out_total[size_t(MessageType::pong)], 1u);
}

// The driver keeps no map from ConnId to its own state: the core holds the
// driver's tag per connection and forgets it with the connection.
TEST(Gateway, DriverTagRoundTripsAndGoesStaleWithTheConnection) {
  Gateway gw(small_config());
  const ConnId a = gw.handle_open("alice", 0, 0x0000000700000003);
  const ConnId b = gw.handle_open("bob", 0, 42);
  const ConnId untagged = gw.handle_open("carol", 0);
  EXPECT_EQ(gw.driver_tag(a), 0x0000000700000003u);
  EXPECT_EQ(gw.driver_tag(b), 42u);
  EXPECT_EQ(gw.driver_tag(untagged), 0u);
  gw.handle_closed(a);
  EXPECT_EQ(gw.driver_tag(a), Gateway::no_driver_tag);
  // The slot is reused for the next connection: the old id stays stale and
  // never reads the new connection's tag.
  const ConnId c = gw.handle_open("dave", 0, 99);
  EXPECT_EQ(c.index, a.index);
  EXPECT_EQ(gw.driver_tag(c), 99u);
  EXPECT_EQ(gw.driver_tag(a), Gateway::no_driver_tag);
  EXPECT_EQ(gw.driver_tag(ConnId{1000, 0}), Gateway::no_driver_tag) << "never opened";
  EXPECT_EQ(gw.driver_tag(b), 42u);
}

TEST(Gateway, DirectMessageReachesEveryConnectionOfTheTargetAndNobodyElse) {
  Gateway gw(small_config());
  ConnId a = gw.handle_open("alice", 0);
  ConnId b1 = gw.handle_open("bob", 0);
  ConnId b2 = gw.handle_open("bob", 0);
  ConnId c = gw.handle_open("carol", 0);
  gw.handle_text(a, R"({"type":"send_message","target_user":"bob","content":{"x":[1,2]}})", 1);
  const Texts want{R"({"type":"message","from":"alice","content":{"x":[1,2]}})"};
  EXPECT_EQ(texts(gw, b1), want);
  EXPECT_EQ(texts(gw, b2), want);
  EXPECT_TRUE(texts(gw, a).empty());
  EXPECT_TRUE(texts(gw, c).empty());
  EXPECT_EQ(gw.connections_of("bob"), 2u);
}

TEST(Gateway, ContentPassesThroughByteForByte) {
  Gateway gw(small_config());
  ConnId a = gw.handle_open("alice", 0);
  ConnId b = gw.handle_open("bob", 0);
  for (std::string content : {"1.50e3", "-0.0", R"("h\u00e9llo \"q\" 日本")", R"({ "a" : [ true , null ] , "b":{"c":"}"} })",
                              "[]", "\"\"", "false", "-1234567890123456789", "1e300",
                              "12345678901234567890123456789", "1e400", "18446744073709551616",
                              R"({"big":[-1.5e99999,"12345678901234567890123"]})"}) {
    gw.handle_text(a, R"({"type":"send_message", "target_user":"bob", "content": )" + content + " }", 1);
    EXPECT_EQ(texts(gw, b), Texts{R"({"type":"message","from":"alice","content":)" + content + "}"}) << content;
  }
}

TEST(Gateway, ContentMayComeBeforeTypeAndFieldsMayBeEscaped) {
  Gateway gw(small_config());
  ConnId a = gw.handle_open("alice", 0);
  gw.handle_text(a, R"({"content":[1,"]"],"target_user":"alice","type":"send_message"})", 1);
  gw.handle_text(a, R"({"type":"send_message","target_user":"alice","cont\u0065nt":7})", 1);
  EXPECT_EQ(texts(gw, a), (Texts{R"({"type":"message","from":"alice","content":[1,"]"]})",
                                 R"({"type":"message","from":"alice","content":7})"}));
}

TEST(Gateway, BroadcastReachesEveryConnectionOnceAndIsEncodedOnce) {
  Gateway gw(small_config());
  std::vector<ConnId> ids;
  for (int i = 0; i < 50; ++i) ids.push_back(gw.handle_open("u" + std::to_string(i % 10), 0));
  gw.handle_text(ids[3], R"({"type":"broadcast","content":"hi"})", 1);
  // Every outbox holds the same frame object: one encode, shared.
  ByteRange first[1], other[1];
  ASSERT_EQ(gw.outbox(ids[0]).gather(first), 1u);
  for (ConnId id : ids) {
    ASSERT_EQ(gw.outbox(id).gather(other), 1u);
    EXPECT_EQ(other[0].data, first[0].data);
  }
  for (ConnId id : ids) EXPECT_EQ(texts(gw, id), Texts{R"({"type":"broadcast","from":"u3","content":"hi"})"});
  EXPECT_EQ(gw.metrics().messages_out_total[size_t(MessageType::broadcast)], 50u);
}

TEST(Gateway, UserIdIsEscapedInReplies) {
  Gateway gw(small_config());
  ConnId a = gw.handle_open("a\"b\\c\n", 0);
  gw.handle_text(a, R"({"type":"broadcast","content":1})", 1);
  EXPECT_EQ(texts(gw, a), Texts{R"({"type":"broadcast","from":"a\"b\\c\u000a","content":1})"});
}

struct BadInput {
  const char* payload;
  const char* error;
};

class GatewayErrors : public ::testing::TestWithParam<BadInput> {};

TEST_P(GatewayErrors, AnswerWithAnErrorNamingTheProblem) {
  Gateway gw(small_config());
  ConnId a = gw.handle_open("alice", 0);
  gw.handle_text(a, GetParam().payload, 1);
  EXPECT_EQ(texts(gw, a), Texts{std::string(R"({"type":"error","message":")") + GetParam().error + "\"}"});
  EXPECT_EQ(gw.metrics().messages_invalid_total, 1u);
  EXPECT_FALSE(gw.is_closing(a));
}

INSTANTIATE_TEST_SUITE_P(
    Protocol, GatewayErrors,
    ::testing::Values(BadInput{"not json", "Invalid JSON"}, BadInput{"{\"type\":\"ping\"", "Invalid JSON"},
                      BadInput{R"({"type":"ping"} x)", "Invalid JSON"},
                      BadInput{R"({"type":"broadcast","content":{"a":tru}})", "Invalid JSON"},
                      BadInput{"", "Invalid JSON"},
                      BadInput{R"({"type":"broadcast","content":0123})", "Invalid JSON"},
                      BadInput{R"({"type":"broadcast","content":1.})", "Invalid JSON"},
                      BadInput{R"({"type":"broadcast","content":[99999999999999999999999,tru]})", "Invalid JSON"}, BadInput{"[1,2]", "Message must be a JSON object"},
                      BadInput{R"({"content":1})", "Missing field: type"},
                      BadInput{R"({"type":5})", "Field type must be a string"},
                      BadInput{R"({"type":"dance"})", "Unknown message type: dance"},
                      BadInput{R"({"type":"send_message","content":1})", "Missing field: target_user"},
                      BadInput{R"({"type":"send_message","target_user":1,"content":1})",
                               "Field target_user must be a string"},
                      BadInput{R"({"type":"send_message","target_user":"","content":1})",
                               "Field target_user must not be empty"},
                      BadInput{R"({"type":"send_message","target_user":"bob"})", "Missing field: content"},
                      BadInput{R"({"type":"broadcast"})", "Missing field: content"}),
    [](const auto& info) { return "case" + std::to_string(info.index); });

// RFC 3629, strictly: what a browser accepts in a text frame.
bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    const auto b1 = static_cast<unsigned char>(len > 1 ? s[i + 1] : 0x80);
    if (len > 1 && (b1 < 0x80 || b1 > 0xBF)) return false;
    if ((c == 0xE0 && b1 < 0xA0) || (c == 0xED && b1 > 0x9F) || (c == 0xF0 && b1 < 0x90) || (c == 0xF4 && b1 > 0x8F))
      return false;
    for (size_t k = 2; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
}

TEST(Gateway, UnknownTypeIsQuotedWithoutCuttingACharacter) {
  // The quote is cut at 64 bytes. Put a 2-, 3- and 4-byte character across
  // that cut at every offset: the reply must stay valid UTF-8 and keep
  // every whole character before the cut.
  for (const std::string ch : {"\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80"}) {
    for (size_t pad = 60; pad <= 64; ++pad) {
      Gateway gw(small_config());
      ConnId a = gw.handle_open("alice", 0);
      const std::string type = std::string(pad, 'x') + ch + ch;
      gw.handle_text(a, R"({"type":")" + type + R"("})", 1);
      const Texts replies = texts(gw, a);
      ASSERT_EQ(replies.size(), 1u);
      EXPECT_TRUE(is_valid_utf8(replies[0])) << "pad " << pad << " char bytes " << ch.size();
      std::string kept;
      while (kept.size() + ch.size() <= 64 - pad + 0 && kept.size() < 2 * ch.size()) kept += ch;
      EXPECT_EQ(replies[0], R"({"type":"error","message":"Unknown message type: )" + std::string(pad, 'x') + kept + "\"}")
          << "pad " << pad << " char bytes " << ch.size();
    }
  }
}

TEST(Gateway, EveryErrorReplyIsValidUtf8) {
  const std::string inputs[] = {
      "not json \xC3\xA9", R"({"type":"\u00e9\u20ac"})", R"({"type":"\ud83d\ude00"})",
      std::string(R"({"type":")") + std::string(63, 'a') + "\xE2\x82\xAC\"}",
      R"({"type":"send_message","target_user":"\u00e9"})", "[\"\xF0\x9F\x98\x80\"]",
      R"({"type":5,"content":"\u00e9"})"};
  for (const std::string& in : inputs) {
    Gateway gw(small_config());
    ConnId a = gw.handle_open("alice", 0);
    gw.handle_text(a, in, 1);
    for (const std::string& reply : texts(gw, a)) EXPECT_TRUE(is_valid_utf8(reply)) << in << " -> " << reply;
  }
}

TEST(Gateway, MessageToAbsentUserIsDroppedAndCounted) {
  Gateway gw(small_config());
  ConnId a = gw.handle_open("alice", 0);
  gw.handle_text(a, R"({"type":"send_message","target_user":"nobody","content":1})", 1);
  EXPECT_TRUE(texts(gw, a).empty());
  EXPECT_EQ(gw.metrics().messages_undeliverable_total, 1u);
}

TEST(Gateway, MissingIdentityIsClosedWith4001) {
  Gateway gw(small_config());
  ConnId a = gw.handle_open("", 0);
  auto closes = gw.take_closes();
  ASSERT_EQ(closes.size(), 1u);
  EXPECT_EQ(closes[0].id, a);
  EXPECT_EQ(closes[0].code, CloseCode::missing_identity);
  EXPECT_EQ(gw.user_count(), 0u);
  // Nothing it sends is acted on.
  gw.handle_text(a, R"({"type":"ping"})", 1);
  EXPECT_TRUE(gw.outbox(a).empty());
}

TEST(Gateway, UserIdThatIsNotUtf8IsRefusedWith4001) {
  Gateway gw(small_config());
  for (std::string bad : {"\xff\xfe", "caf\xe9", "\xed\xa0\x80", "\xc0\xaf"}) {
    ConnId a = gw.handle_open(bad, 0);
    auto closes = gw.take_closes();
    ASSERT_EQ(closes.size(), 1u);
    EXPECT_EQ(closes[0].id, a);
    EXPECT_EQ(closes[0].code, CloseCode::missing_identity);
  }
  EXPECT_EQ(gw.user_count(), 0u);
  gw.handle_open("caf\xc3\xa9", 0);  // café, well formed
  EXPECT_TRUE(gw.take_closes().empty());
}

// A sender and a receiver that never reads, with a 16 KiB send queue and
// ~1 KB messages.
class SlowConsumer : public ::testing::Test {
 protected:
  static GatewayConfig config() {
    GatewayConfig c = small_config();
    c.limits.max_message_bytes = 4096;
    c.limits.send_queue_max_bytes = 16 * 1024;
    return c;
  }
  GatewayConfig c = config();
  Gateway gw{c};
  ConnId sender = gw.handle_open("s", 0);
  ConnId slow = gw.handle_open("slow", 0);
  const std::string msg =
      R"({"type":"send_message","target_user":"slow","content":")" + std::string(1000, 'x') + "\"}";
};

TEST_F(SlowConsumer, NeverDropsBytesASendIsStillWriting) {
  for (int i = 0; i < 5; ++i) gw.handle_text(sender, msg, 1);
  ByteRange in_flight[64];
  const size_t ranges = gw.outbox(slow).gather(in_flight);  // handed to the kernel
  size_t in_flight_bytes = 0;
  for (size_t i = 0; i < ranges; ++i) in_flight_bytes += in_flight[i].size;
  for (int i = 0; i < 100; ++i) gw.handle_text(sender, msg, 1);  // now a slow consumer
  ASSERT_EQ(gw.take_closes().size(), 1u);
  EXPECT_EQ(gw.outbox(slow).queued_bytes(), in_flight_bytes);
  gw.handle_sent(slow, in_flight_bytes);  // the send completes: nothing breaks
  EXPECT_TRUE(gw.outbox(slow).empty());
}

TEST(Gateway, BinaryMessageIsClosedWith1003) {
  Gateway gw(small_config());
  ConnId a = gw.handle_open("alice", 0);
  gw.handle_binary(a, 1);
  auto closes = gw.take_closes();
  ASSERT_EQ(closes.size(), 1u);
  EXPECT_EQ(closes[0].code, CloseCode::unsupported_data);
}

TEST(Gateway, ClosedSlotIsReusedWithNewGenerationAndStaleIdsAreIgnored) {
  Gateway gw(small_config());
  ConnId a = gw.handle_open("alice", 0);
  gw.handle_closed(a);
  ConnId b = gw.handle_open("bob", 0);
  EXPECT_EQ(a.index, b.index);
  EXPECT_NE(a.generation, b.generation);
  EXPECT_FALSE(gw.is_open(a));
  gw.handle_text(a, R"({"type":"ping"})", 1);  // a late event for the old connection
  gw.handle_closed(a);
  EXPECT_TRUE(gw.is_open(b));
  EXPECT_TRUE(gw.outbox(b).empty());
  EXPECT_EQ(gw.connection_count(), 1u);
}

TEST(Gateway, DisconnectOfOneTabKeepsTheOthers) {
  Gateway gw(small_config());
  ConnId a = gw.handle_open("alice", 0);
  ConnId b1 = gw.handle_open("bob", 0);
  ConnId b2 = gw.handle_open("bob", 0);
  ConnId b3 = gw.handle_open("bob", 0);
  gw.handle_closed(b2);
  gw.handle_text(a, R"({"type":"send_message","target_user":"bob","content":1})", 1);
  EXPECT_EQ(texts(gw, b1).size(), 1u);
  EXPECT_EQ(texts(gw, b3).size(), 1u);
  gw.handle_closed(b1);
  gw.handle_closed(b3);
  EXPECT_EQ(gw.connections_of("bob"), 0u);
  EXPECT_EQ(gw.user_count(), 1u);
  gw.handle_closed(a);
  EXPECT_EQ(gw.user_count(), 0u);
  EXPECT_EQ(gw.connection_count(), 0u);
}

TEST(Gateway, HeartbeatPingsLiveConnectionsAndClosesSilentOnes) {
  Gateway gw(small_config());  // ping every 100 ms, idle after 300 ms
  gw.handle_tick(0);
  ConnId quiet = gw.handle_open("q", 0);
  ConnId chatty = gw.handle_open("c", 0);
  EXPECT_EQ(gw.next_tick_ms(), 100u);
  for (uint64_t t = 100; t <= 400; t += 100) {
    gw.handle_activity(chatty, t - 1);  // e.g. its pong
    gw.handle_tick(t);
  }
  auto closes = gw.take_closes();
  ASSERT_EQ(closes.size(), 1u);
  EXPECT_EQ(closes[0].id, quiet);
  EXPECT_EQ(closes[0].code, CloseCode::going_away);
  EXPECT_EQ(gw.metrics().heartbeat_timeouts_total, 1u);
  auto frames = drain(gw, chatty);
  ASSERT_EQ(frames.size(), 4u);
  for (auto& f : frames) EXPECT_EQ(f.opcode, 0x9);
  EXPECT_FALSE(gw.is_closing(chatty));
}

TEST_F(SlowConsumer, IsClosedWith1008AndItsQueueStaysBounded) {
  size_t max_seen = 0;
  for (int i = 0; i < 100; ++i) {
    gw.handle_text(sender, msg, 1);
    max_seen = std::max(max_seen, gw.outbox(slow).queued_bytes());
  }
  EXPECT_LE(max_seen, c.limits.send_queue_max_bytes);
  auto closes = gw.take_closes();
  ASSERT_EQ(closes.size(), 1u);
  EXPECT_EQ(closes[0].id, slow);
  EXPECT_EQ(closes[0].code, CloseCode::policy_violation);
  EXPECT_EQ(gw.metrics().slow_consumer_closes_total, 1u);
  // Unsent frames were dropped to make room for the close frame.
  EXPECT_TRUE(gw.outbox(slow).empty());
}

TEST_F(SlowConsumer, KeepsAPartlyWrittenFrameWhole) {
  gw.handle_text(sender, msg, 1);
  const size_t first = gw.outbox(slow).queued_bytes();
  gw.handle_sent(slow, 10);  // the socket took 10 bytes of the first frame
  for (int i = 0; i < 100; ++i) gw.handle_text(sender, msg, 1);
  EXPECT_EQ(gw.outbox(slow).queued_bytes(), first - 10);
}

TEST(Gateway, HealthReportsNodeAndConnections) {
  Gateway gw(small_config());
  gw.handle_open("a", 0);
  gw.handle_open("b", 0);
  EXPECT_EQ(gw.render_health(), R"({"status":"ok","node_id":"node-a","connections":2})");
}

TEST(Gateway, DirtyListNamesEachConnectionOnce) {
  Gateway gw(small_config());
  ConnId a = gw.handle_open("alice", 0);
  for (int i = 0; i < 5; ++i) gw.handle_text(a, R"({"type":"ping"})", 1);
  auto dirty = gw.take_dirty();
  ASSERT_EQ(dirty.size(), 1u);
  EXPECT_EQ(dirty[0], a);
  EXPECT_TRUE(gw.take_dirty().empty());
  EXPECT_EQ(texts(gw, a).size(), 5u);
}

}  // namespace
}  // namespace wsgate

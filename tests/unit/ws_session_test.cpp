// The wslay glue without sockets: client frames in, core events and server
// frames out.
#include "ws_session.hpp"

#include <gtest/gtest.h>

#include "test_support.hpp"

namespace wsgate::server {
namespace {

using test::drain;

using test::client_frame;

std::string close_payload(uint16_t code, std::string_view reason = {}) {
  std::string p{char(code >> 8), char(code & 0xFF)};
  return p.append(reason);
}

struct Harness {
  Harness() : gw(config()), id(gw.handle_open("alice", 0)), session(gw, id, gw.config().limits) {}
  static GatewayConfig config() {
    GatewayConfig c;
    c.limits.max_message_bytes = 1000;
    return c;
  }
  void feed(const std::string& bytes) { session.feed(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 1); }
  // Carries out the core's close requests as the event loop does.
  void run_closes() {
    for (const CloseRequest& c : gw.take_closes()) session.close(c.code, c.reason);
  }
  uint16_t close_code_sent() {
    for (auto& f : drain(gw, id))
      if (f.opcode == 0x8) return f.payload.size() >= 2 ? uint16_t(uint8_t(f.payload[0]) << 8 | uint8_t(f.payload[1])) : 0;
    return 0;
  }
  Gateway gw;
  ConnId id;
  WsSession session;
};

TEST(WsSession, TextMessageReachesTheCore) {
  Harness h;
  h.feed(client_frame(0x1, R"({"type":"ping"})"));
  auto frames = drain(h.gw, h.id);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].payload, R"({"type":"pong"})");
}

TEST(WsSession, FragmentedMessageSplitAcrossFeedsIsReassembled) {
  Harness h;
  const std::string bytes = client_frame(0x1, R"({"type":)", false) + client_frame(0x0, R"("ping"})");
  for (char c : bytes) h.feed(std::string(1, c));  // one byte at a time
  EXPECT_EQ(test::texts(h.gw, h.id), std::vector<std::string>{R"({"type":"pong"})"});
}

TEST(WsSession, PingIsAnsweredWithPongCarryingItsPayload) {
  Harness h;
  h.feed(client_frame(0x9, "abc"));
  auto frames = drain(h.gw, h.id);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].opcode, 0xA);
  EXPECT_EQ(frames[0].payload, "abc");
}

// Issue 7: a client that pings and never reads used to cost one heap
// frame per ping (23 MiB for 2M pings under a 1 MiB limit counted in wire
// bytes). Only the latest ping is answered now (RFC 6455 5.5.3).
TEST(WsSession, PingFloodWithoutReadingQueuesOnePong) {
  Harness h;
  std::string burst;
  for (int i = 0; i < 1000; ++i) burst += client_frame(0x9, "p" + std::to_string(i));
  const size_t pings = 200'000;
  for (size_t i = 0; i < pings / 1000; ++i) h.feed(burst);
  const Outbox& out = h.gw.outbox(h.id);
  EXPECT_EQ(out.frame_count(), 1u);
  EXPECT_LE(out.memory_bytes(), 256u);  // one small frame and its slot
  EXPECT_EQ(h.gw.queued_memory_bytes(), out.memory_bytes());
  EXPECT_TRUE(h.gw.take_closes().empty());  // not a slow consumer either
  auto frames = drain(h.gw, h.id);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].opcode, 0xA);
  EXPECT_EQ(frames[0].payload, "p999");  // the latest ping's payload
  EXPECT_EQ(h.gw.queued_memory_bytes(), 0u);
}

// A pong the socket already took (gathered for a send) is not replaced: a
// new ping gets a pong of its own behind it, and the bytes stay framed.
TEST(WsSession, PongInFlightIsNotReplaced) {
  Harness h;
  h.feed(client_frame(0x9, "first"));
  ByteRange r[4];
  ASSERT_EQ(h.gw.outbox(h.id).gather(r), 1u);  // the socket is reading it
  EXPECT_EQ(std::string_view(reinterpret_cast<const char*>(r[0].data), r[0].size), "\x8a\x05" "first");
  h.feed(client_frame(0x9, "second"));
  h.feed(client_frame(0x9, "third"));
  EXPECT_EQ(h.gw.outbox(h.id).frame_count(), 2u);
  h.gw.handle_sent(h.id, r[0].size);
  auto frames = drain(h.gw, h.id);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].payload, "third");
}

TEST(WsSession, PeerCloseIsEchoedWithItsCode) {  // RFC 6455 5.5.1
  Harness h;
  h.feed(client_frame(0x8, close_payload(3000, "bye")));
  EXPECT_TRUE(h.session.close_received());
  EXPECT_EQ(h.close_code_sent(), 3000);
  h.session.handle_written(h.session.writable_bytes(0));
}

TEST(WsSession, BinaryMessageIsClosedWith1003) {
  Harness h;
  h.feed(client_frame(0x2, "bin"));
  h.run_closes();
  EXPECT_EQ(h.close_code_sent(), 1003);
}

struct BadFrame {
  const char* name;
  std::string bytes;
  uint16_t code;
};

class WsSessionErrors : public ::testing::TestWithParam<BadFrame> {};

TEST_P(WsSessionErrors, CloseWithTheRightCode) {
  Harness h;
  h.feed(GetParam().bytes);
  h.run_closes();
  EXPECT_EQ(h.close_code_sent(), GetParam().code);
  EXPECT_TRUE(h.session.close_queued());
}

std::string unmasked_text() { return std::string("\x81\x02hi", 4); }

INSTANTIATE_TEST_SUITE_P(
    Rfc6455, WsSessionErrors,
    ::testing::Values(BadFrame{"unmasked", unmasked_text(), 1002},                          // 5.1
                      BadFrame{"rsv1", client_frame(0x1, "x", true, 0x40), 1002},           // 5.2
                      BadFrame{"reserved_opcode", client_frame(0x3, "x"), 1002},             // 5.2
                      BadFrame{"fragmented_ping", client_frame(0x9, "x", false), 1002},      // 5.5
                      BadFrame{"long_ping", client_frame(0x9, std::string(126, 'p')), 1002}, // 5.5
                      BadFrame{"lone_continuation", client_frame(0x0, "x"), 1002},           // 5.4
                      BadFrame{"invalid_utf8", client_frame(0x1, "\xff\xfe"), 1007},         // 8.1
                      BadFrame{"too_big", client_frame(0x1, std::string(1001, 'a')), 1009},  // 10.4
                      BadFrame{"close_code_999", client_frame(0x8, close_payload(999)), 1002},  // 7.4.1
                      BadFrame{"close_one_byte", client_frame(0x8, std::string(1, 'x')), 1002}),  // 5.5.1
    [](const auto& info) { return std::string(info.param.name); });

TEST(WsSession, NothingIsWrittenAfterOurCloseFrame) {
  Harness h;
  h.session.close(CloseCode::going_away, "bye");
  const size_t through_close = h.gw.outbox(h.id).queued_bytes();
  // The core still queues for this connection until the socket is gone.
  Gateway& gw = h.gw;
  ConnId other = gw.handle_open("bob", 1);
  gw.handle_text(other, R"({"type":"broadcast","content":1})", 1);
  EXPECT_GT(gw.outbox(h.id).queued_bytes(), through_close);
  EXPECT_EQ(h.session.writable_bytes(gw.outbox(h.id).queued_bytes()), through_close);
}

TEST(WsSession, IdleSessionHoldsNoWslayContext) {
  Harness h;
  h.feed(client_frame(0x1, R"({"type":"ping"})"));
  EXPECT_FALSE(h.session.holds_context());
  h.feed(client_frame(0x1, R"({"type":)", false));  // mid-message
  EXPECT_TRUE(h.session.holds_context());
}

}  // namespace
}  // namespace wsgate::server

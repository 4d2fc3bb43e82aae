// The driver contract (session/driver_contract.hpp) with a recording host:
// the same round the server and the simulator run.
#include "driver_contract.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "test_support.hpp"

namespace wsgate {
namespace {

struct RecordingHost final : SessionHost {
  explicit RecordingHost(Gateway& g) : gw(g) {}
  WsSession* session_of(ConnId id) override { return session && session->id() == id ? session : nullptr; }
  void note_close_request(const CloseRequest& r) override { log.push_back("close " + std::to_string(int(r.code))); }
  // Writes everything the session allows, as a socket that takes it all.
  void write(ConnId id, WsSession& ws) override {
    log.push_back("write");
    ByteRange ranges[16];
    size_t n;
    while ((n = gather_writable(gw, ws, id, ranges)) > 0) {
      size_t took = 0;
      for (size_t i = 0; i < n; ++i) {
        wire.append(reinterpret_cast<const char*>(ranges[i].data), ranges[i].size);
        took += ranges[i].size;
      }
      record_written(gw, ws, id, took);
    }
    settle(id, ws);
  }
  void settle(ConnId, WsSession& ws) override {
    const SettleDecision d = decide_settle(ws, timer_started, false);
    if (d.start_close_timer) {
      timer_started = true;
      log.push_back("timer");
    }
    if (d.close_socket) log.push_back("close socket");
  }
  // Opcodes of the frames written so far, decoded with the codec.
  std::vector<uint8_t> opcodes() const {
    std::vector<uint8_t> ops;
    size_t p = 0;
    FrameHeader h;
    while (decode_frame_header(reinterpret_cast<const uint8_t*>(wire.data()) + p, wire.size() - p, h) ==
           FrameHeaderStatus::complete) {
      ops.push_back(h.opcode);
      p += h.header_bytes + h.payload_bytes;
    }
    EXPECT_EQ(p, wire.size());
    return ops;
  }
  Gateway& gw;
  WsSession* session = nullptr;
  std::vector<std::string> log;
  std::string wire;
  bool timer_started = false;
};

// A close requested in the round is started, written in the same round,
// and nothing the core queues afterwards follows the close frame; the
// socket closes once the client's close frame arrives.
TEST(DriverContract, CloseStartsWritesInTheSameRoundAndCutsAfterTheCloseFrame) {
  GatewayConfig config;
  Gateway gw(config);
  const ConnId id = gw.handle_open("alice", 0);
  WsSession ws(gw, id, config.limits);
  RecordingHost host(gw);
  host.session = &ws;
  const std::string ping = test::client_frame(0x1, R"({"type":"ping"})");
  ws.feed(reinterpret_cast<const uint8_t*>(ping.data()), ping.size(), 1);  // a pong reply is queued
  gw.handle_binary(id, 2);  // protocol v1 has no binary messages: close 1003
  run_flush_round(gw, host);
  EXPECT_EQ(host.log, (std::vector<std::string>{"close 1003", "timer", "write"}));
  EXPECT_EQ(host.opcodes(), (std::vector<uint8_t>{0x1, 0x8}));
  EXPECT_TRUE(ws.close_written());

  // A frame queued after our close frame (the core still takes close
  // frames while closing) is never written (RFC 6455 5.5.1).
  gw.push_control(id, reinterpret_cast<const uint8_t*>("\x88\x00"), 2);
  ASSERT_GT(gw.outbox(id).queued_bytes(), 0u);
  host.log.clear();
  run_flush_round(gw, host);
  EXPECT_EQ(host.opcodes(), (std::vector<uint8_t>{0x1, 0x8}));

  const std::string close = test::client_frame(0x8, std::string("\x03\xeb", 2));
  ws.feed(reinterpret_cast<const uint8_t*>(close.data()), close.size(), 4);
  host.settle(id, ws);
  EXPECT_EQ(host.log.back(), "close socket");
}

TEST(DriverContract, GatherWritableHonoursTheBudget) {
  GatewayConfig config;
  Gateway gw(config);
  const ConnId id = gw.handle_open("alice", 0);
  WsSession ws(gw, id, config.limits);
  const std::string ping = test::client_frame(0x1, R"({"type":"ping"})");
  ws.feed(reinterpret_cast<const uint8_t*>(ping.data()), ping.size(), 1);
  const size_t queued = gw.outbox(id).queued_bytes();
  ASSERT_GT(queued, 3u);
  ByteRange ranges[4];
  const size_t n = gather_writable(gw, ws, id, ranges, 3);
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(ranges[0].size, 3u);
  record_written(gw, ws, id, 3);
  EXPECT_EQ(gw.outbox(id).queued_bytes(), queued - 3);
}

}  // namespace
}  // namespace wsgate

// Issue 7: what one client or one address can cost the node. The core
// alone, driven by events and time: token buckets on client messages, the
// per-IP cap on open connections, the node-wide budget of queued memory,
// and the JSON-level ping flood.
#include "wsgate/gateway.hpp"

#include <gtest/gtest.h>

#include "test_support.hpp"

namespace wsgate {
namespace {

using test::drain;
using test::texts;

GatewayConfig config() {
  GatewayConfig c;
  c.node_id = "node-a";
  return c;
}

std::string broadcast_msg(size_t content_bytes = 1) {
  return R"({"type":"broadcast","content":")" + std::string(content_bytes, 'x') + "\"}";
}

size_t broadcasts_received(Gateway& gw, ConnId id) {
  size_t n = 0;
  for (const std::string& t : texts(gw, id)) n += t.starts_with(R"({"type":"broadcast")");
  return n;
}

std::vector<std::string> errors(Gateway& gw, ConnId id) {
  std::vector<std::string> out;
  for (const std::string& t : texts(gw, id))
    if (t.starts_with(R"({"type":"error")")) out.push_back(t);
  return out;
}

// --- token buckets ------------------------------------------------------------

TEST(ClientRate, BurstThenRateThenErrorsAndTheMessageIsDropped) {
  GatewayConfig c = config();
  c.limits.client_max_messages_per_s = 10;
  c.limits.client_burst_messages = 5;
  c.limits.client_max_rate_refusals = 1000;
  Gateway gw(c);
  ConnId sender = gw.handle_open("s", 0);
  ConnId reader = gw.handle_open("r", 0);
  for (int i = 0; i < 8; ++i) gw.handle_text(sender, broadcast_msg(), 0);
  EXPECT_EQ(broadcasts_received(gw, reader), 5u);  // the burst, no more
  const auto errs = errors(gw, sender);
  ASSERT_EQ(errs.size(), 3u);
  EXPECT_EQ(errs[0], R"({"type":"error","message":"Rate limit exceeded: at most 10 messages/s (burst 5); message dropped"})");
  EXPECT_EQ(gw.metrics().rate_limited_messages_total, 3u);
  // 10/s: one token per 100 ms.
  gw.handle_text(sender, broadcast_msg(), 99);
  EXPECT_EQ(broadcasts_received(gw, reader), 0u);
  gw.handle_text(sender, broadcast_msg(), 100);
  EXPECT_EQ(broadcasts_received(gw, reader), 1u);
  // A second later the bucket is full again, but never above the burst.
  for (int i = 0; i < 8; ++i) gw.handle_text(sender, broadcast_msg(), 10'000);
  EXPECT_EQ(broadcasts_received(gw, reader), 5u);
  EXPECT_TRUE(gw.take_closes().empty());
}

TEST(ClientRate, BytesBucketCountsMessageBytes) {
  GatewayConfig c = config();
  c.limits.max_message_bytes = 1024;
  c.limits.client_max_bytes_per_s = 1000;
  c.limits.client_burst_bytes = 3000;
  c.limits.client_max_rate_refusals = 1000;
  Gateway gw(c);
  ConnId sender = gw.handle_open("s", 0);
  ConnId reader = gw.handle_open("r", 0);
  const std::string msg = broadcast_msg(1000 - broadcast_msg(0).size());  // 1000 bytes
  ASSERT_EQ(msg.size(), 1000u);
  for (int i = 0; i < 4; ++i) gw.handle_text(sender, msg, 0);
  EXPECT_EQ(broadcasts_received(gw, reader), 3u);
  const auto errs = errors(gw, sender);
  ASSERT_EQ(errs.size(), 1u);
  EXPECT_NE(errs[0].find("1000 bytes/s"), std::string::npos) << errs[0];
  gw.handle_text(sender, msg, 1000);  // a second earns 1000 bytes
  EXPECT_EQ(broadcasts_received(gw, reader), 1u);
  drain(gw, sender);
  // Small messages are not held up by the message bucket's default.
  for (int i = 0; i < 100; ++i) gw.handle_text(sender, R"({"type":"ping"})", 2000);
  EXPECT_EQ(texts(gw, sender).size(), 100u);
}

TEST(ClientRate, KeepsExceedingIsClosed1008) {
  GatewayConfig c = config();
  c.limits.client_max_messages_per_s = 1;
  c.limits.client_burst_messages = 1;
  c.limits.client_max_rate_refusals = 3;
  c.limits.client_rate_refusal_window_ms = 1000;
  Gateway gw(c);
  ConnId a = gw.handle_open("a", 0);
  gw.handle_text(a, broadcast_msg(), 0);     // the burst
  gw.handle_text(a, broadcast_msg(), 0);     // refusal 1
  gw.handle_text(a, broadcast_msg(), 1500);  // a token: accepted
  gw.handle_text(a, broadcast_msg(), 1500);  // refusal 1 of a new window
  gw.handle_text(a, broadcast_msg(), 1600);  // 2
  EXPECT_TRUE(gw.take_closes().empty());
  EXPECT_EQ(errors(gw, a).size(), 3u);
  gw.handle_text(a, broadcast_msg(), 1700);  // 3: closed, no error reply
  auto closes = gw.take_closes();
  ASSERT_EQ(closes.size(), 1u);
  EXPECT_EQ(closes[0].code, CloseCode::policy_violation);
  EXPECT_EQ(closes[0].reason, "rate limit exceeded");
  EXPECT_EQ(gw.metrics().rate_limit_closes_total, 1u);
  EXPECT_TRUE(errors(gw, a).empty());
}

TEST(ClientRate, ZeroRateIsUnlimited) {
  GatewayConfig c = config();
  c.limits.client_max_messages_per_s = 0;
  c.limits.client_max_bytes_per_s = 0;
  Gateway gw(c);
  ConnId a = gw.handle_open("a", 0);
  for (int i = 0; i < 5000; ++i) gw.handle_text(a, R"({"type":"ping"})", 0);
  EXPECT_EQ(texts(gw, a).size(), 5000u);
  EXPECT_EQ(gw.metrics().rate_limited_messages_total, 0u);
}

// Defaults: what a chat client does (a message a second, a burst of a
// hundred on reconnect) never hits them.
TEST(ClientRate, DefaultsLeaveAChatClientAlone) {
  Gateway gw(config());
  ConnId a = gw.handle_open("a", 0);
  for (int i = 0; i < 100; ++i) gw.handle_text(a, R"({"type":"ping"})", 0);
  for (uint64_t t = 0; t < 60'000; t += 1000) gw.handle_text(a, broadcast_msg(2000), t);
  EXPECT_EQ(gw.metrics().rate_limited_messages_total, 0u);
}

// --- per-IP open connections ------------------------------------------------

TEST(OpenPerIp, CapCountsOpenConnectionsAndFreesOnClose) {
  GatewayConfig c = config();
  c.limits.max_open_connections_per_ip = 2;
  Gateway gw(c);
  const std::string ip("\x0a\x00\x00\x01", 4), other("\x0a\x00\x00\x02", 4);
  std::vector<ConnId> ids;
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(gw.handle_upgrade_request(ip, 0), Admission::ok);
    ids.push_back(gw.handle_open("u", 0));
  }
  EXPECT_EQ(gw.handle_upgrade_request(ip, 0), Admission::too_many_open_per_ip);
  EXPECT_EQ(gw.handle_upgrade_request(other, 0), Admission::ok);
  gw.handle_open("v", 0);
  gw.handle_closed(ids[0]);
  EXPECT_EQ(gw.handle_upgrade_request(ip, 0), Admission::ok);
  gw.handle_open("u", 0);
  EXPECT_EQ(gw.handle_upgrade_request(ip, 0), Admission::too_many_open_per_ip);
  EXPECT_EQ(gw.admission().open_from(ip), 2u);
  EXPECT_EQ(gw.admission().open_ips(), 2u);
}

TEST(OpenPerIp, AnAdmittedRequestNotOpenedCountsNothing) {
  GatewayConfig c = config();
  c.limits.max_open_connections_per_ip = 1;
  Gateway gw(c);
  const std::string ip("\x0a\x00\x00\x01", 4);
  ASSERT_EQ(gw.handle_upgrade_request(ip, 0), Admission::ok);  // then the driver refused it itself
  ASSERT_EQ(gw.handle_upgrade_request(std::string("\x0a\x00\x00\x02", 4), 0), Admission::ok);
  ConnId b = gw.handle_open("b", 0);  // counts for .2, not .1
  EXPECT_EQ(gw.admission().open_from(ip), 0u);
  gw.handle_closed(b);
  EXPECT_EQ(gw.admission().open_ips(), 0u);
}

// --- node-wide queue budget -------------------------------------------------

// Readers that never read get direct messages; the node's budget is small.
// Past 3/4 of it upgrades are refused; past it the largest queue is shed
// first, and only as many as needed to be back under.
TEST(QueueBudget, RefusesUpgradesNearItAndShedsTheLargestQueueFirst) {
  GatewayConfig c = config();
  c.limits.max_message_bytes = 16 * 1024;
  c.limits.send_queue_max_bytes = 512 * 1024;
  c.limits.node_send_queue_max_bytes = 2 * 1024 * 1024;
  c.limits.client_max_messages_per_s = 0;
  c.limits.client_max_bytes_per_s = 0;
  const size_t budget = c.limits.node_send_queue_max_bytes, refuse_above = budget / 4 * 3;
  Gateway gw(c);
  ConnId sender = gw.handle_open("s", 0);
  ConnId big = gw.handle_open("big", 0);
  std::vector<ConnId> others;
  for (int i = 0; i < 6; ++i) others.push_back(gw.handle_open("o" + std::to_string(i), 0));
  auto send_to = [&](std::string_view user) {
    gw.handle_text(sender, R"({"type":"send_message","target_user":")" + std::string(user) + R"(","content":")" +
                               std::string(10'000, 'x') + "\"}", 0);
  };
  const std::string newcomer("\x0a\0\0\x09", 4);
  for (int i = 0; i < 40; ++i) send_to("big");  // ~400 KB
  bool refused_before_shedding = false;
  std::vector<CloseRequest> closes;
  for (int round = 0; round < 100 && closes.empty(); ++round) {
    for (int i = 0; i < 6 && closes.empty(); ++i) {
      send_to("o" + std::to_string(i));
      gw.take_dirty();
      closes = gw.take_closes();
      if (closes.empty() && gw.queued_memory_bytes() > refuse_above) {
        EXPECT_EQ(gw.handle_upgrade_request(newcomer, 0), Admission::queue_budget);
        refused_before_shedding = true;
      }
    }
  }
  EXPECT_TRUE(refused_before_shedding);
  ASSERT_EQ(closes.size(), 1u);
  EXPECT_EQ(closes[0].id, big);
  EXPECT_EQ(closes[0].code, CloseCode::policy_violation);
  EXPECT_EQ(closes[0].reason, "node send-queue budget exceeded");
  EXPECT_EQ(gw.metrics().queue_budget_closes_total, 1u);
  EXPECT_EQ(gw.metrics().slow_consumer_closes_total, 0u);
  EXPECT_LE(gw.queued_memory_bytes(), budget);
  EXPECT_EQ(gw.metrics().queued_memory_bytes, gw.queued_memory_bytes());
  // Still above 3/4: still refused, until the readers drain.
  ASSERT_GT(gw.queued_memory_bytes(), refuse_above);
  EXPECT_EQ(gw.handle_upgrade_request(newcomer, 0), Admission::queue_budget);
  drain(gw, others[0]);
  drain(gw, others[1]);
  EXPECT_EQ(gw.handle_upgrade_request(newcomer, 0), Admission::ok);
  for (ConnId id : others) EXPECT_TRUE(gw.is_open(id) && !gw.is_closing(id));
}

// A broadcast frame is one allocation, whatever the number of recipients:
// the budget counts it once, so fan-out alone never sheds anybody.
TEST(QueueBudget, SharedBroadcastFrameCountsOnce) {
  GatewayConfig c = config();
  c.limits.max_message_bytes = 16 * 1024;
  c.limits.send_queue_max_bytes = 64 * 1024;
  c.limits.node_send_queue_max_bytes = 256 * 1024;
  Gateway gw(c);
  std::vector<ConnId> ids;
  for (int i = 0; i < 1000; ++i) ids.push_back(gw.handle_open("u" + std::to_string(i), 0));
  gw.handle_text(ids[0], broadcast_msg(10'000), 0);
  gw.take_dirty();
  EXPECT_TRUE(gw.take_closes().empty());
  EXPECT_LT(gw.queued_memory_bytes(), 10'100u + 1000 * Outbox::slot_bytes);
  for (ConnId id : ids) drain(gw, id);
  EXPECT_EQ(gw.queued_memory_bytes(), 0u);
}

// --- JSON pings ----------------------------------------------------------------

// {"type":"ping"} answers share one frame, but each queued answer still
// costs its slot: a client that never reads is a slow consumer after a
// bounded number of them, measured in memory.
TEST(SendQueue, JsonPingFloodIsBoundedInMemory) {
  GatewayConfig c = config();
  c.limits.client_max_messages_per_s = 0;
  c.limits.max_message_bytes = 1024;
  c.limits.send_queue_max_bytes = 64 * 1024;
  Gateway gw(c);
  ConnId a = gw.handle_open("a", 0);
  for (int i = 0; i < 100'000 && gw.take_closes().empty(); ++i) gw.handle_text(a, R"({"type":"ping"})", 0);
  EXPECT_EQ(gw.metrics().slow_consumer_closes_total, 1u);
  EXPECT_LE(gw.outbox(a).memory_bytes(), c.limits.send_queue_max_bytes);
  EXPECT_LT(gw.outbox(a).frame_count(), 64u * 1024 / Outbox::slot_bytes);
}

}  // namespace
}  // namespace wsgate

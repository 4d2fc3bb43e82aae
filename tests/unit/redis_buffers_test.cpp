// The Redis transport's buffer limits (BufferLimits::redis_*, one flag
// each), hit against a real redis-server on a free loopback port. The
// output limit is hit in redis_transport_test (UnwrittenCommandsAre...).
#include <gtest/gtest.h>

#include <string>

#include "../support/redis_poll_io.hpp"
#include "../support/redis_server.hpp"
#include "redis_transport.hpp"

namespace wsgate::test {
namespace {

struct Counting final : TransportSink {
  size_t messages = 0;
  void on_transport_message(std::string_view, std::string_view) override { ++messages; }
  void on_transport_state(TransportState) override {}
};

// A message push as Redis sends it on the subscriber link.
std::string message_push(const std::string& channel, const std::string& payload) {
  auto bulk = [](const std::string& s) { return "$" + std::to_string(s.size()) + "\r\n" + s + "\r\n"; };
  return "*3\r\n" + bulk("message") + bulk(channel) + bulk(payload);
}

TEST(RedisBuffers, PayloadAndInboundLimitsAreHitAndCounted) {
  RedisServer redis;
  PollRedisIo io;
  RedisOptions o;
  o.port = redis.port();
  o.node_id = "A";
  o.prefix = "b:";
  o.max_payload_bytes = 1000;
  o.max_inbound_bytes = 2500;
  RedisTransport t(o, io);
  io.attach(&t);
  Counting sink;
  t.set_sink(&sink);
  t.subscribe("user:x");
  const uint64_t end = monotonic_ms() + 5000;
  while (t.state() != TransportState::connected && monotonic_ms() < end) io.pump(5);
  ASSERT_EQ(t.state(), TransportState::connected);

  // Out: a payload above the limit is refused before it is formatted.
  EXPECT_EQ(t.publish("user:x", std::string(1001, 'x')), PublishStatus::too_large);
  EXPECT_EQ(t.publish("user:x", std::string(1000, 'x')), PublishStatus::accepted);
  const uint64_t sent_end = monotonic_ms() + 5000;
  while (sink.messages < 1 && monotonic_ms() < sent_end) io.pump(5);
  ASSERT_EQ(sink.messages, 1u);

  // In: three messages of ~1000 bytes arrive before the next poll; the
  // third passes 2500 bytes waiting and is dropped, counted.
  const std::string pushes = message_push("b:user:x", std::string(1000, 'a')) +
                             message_push("b:user:x", std::string(1000, 'b')) +
                             message_push("b:user:x", std::string(1000, 'c'));
  t.on_data(RedisLink::subscriber, pushes.data(), pushes.size(), monotonic_ms());
  EXPECT_EQ(t.stats().inbound_dropped, 1u);
  t.poll(monotonic_ms());
  EXPECT_EQ(sink.messages, 3u) << "the two that fit are delivered";
}

}  // namespace
}  // namespace wsgate::test

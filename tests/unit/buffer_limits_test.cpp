// The buffer and queue limits of a node (BufferLimits, limits.hpp): each
// has a flag and a variable, the ones that must agree are checked at
// start-up, and the server hands them to the transports.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "options.hpp"
#include "transport_options.hpp"

namespace wsgate::server {
namespace {

OptionsOutcome parse(std::vector<const char*> args, std::map<std::string, std::string> env = {}) {
  args.insert(args.begin(), "wsgate");
  return parse_options(int(args.size()), args.data(), [&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

TEST(BufferLimits, EachHasAFlagAndAVariable) {
  const OptionsOutcome flags = parse({"--recv-pool-buffers", "512", "--recv-buffer-bytes=8192", "--uring-sq-entries",
                                      "256", "--uring-cq-entries", "1024", "--local-queue-max-messages", "10",
                                      "--redis-output-max-bytes", "2000000", "--max-tracked-publishes", "16"});
  ASSERT_EQ(flags.kind, OptionsOutcome::Kind::run) << flags.message;
  EXPECT_EQ(flags.options.buffers.recv_pool_buffers, 512u);
  EXPECT_EQ(flags.options.buffers.recv_buffer_bytes, 8192u);
  EXPECT_EQ(flags.options.buffers.uring_sq_entries, 256u);
  EXPECT_EQ(flags.options.buffers.uring_cq_entries, 1024u);
  EXPECT_EQ(flags.options.buffers.local_queue_max_messages, 10u);
  EXPECT_EQ(flags.options.buffers.redis_output_max_bytes, 2000000u);
  EXPECT_EQ(flags.options.limits.max_tracked_publishes, 16u);

  const OptionsOutcome env = parse({"--shm-ring-bytes", "262144"},
                                   {{"WSGATE_SHM_RING_BYTES", "131072"}, {"WSGATE_SHM_PRESENCE_MAX_ENTRIES", "64"},
                                    {"WSGATE_REDIS_INBOUND_MAX_BYTES", "3000000"}});
  ASSERT_EQ(env.kind, OptionsOutcome::Kind::run) << env.message;
  EXPECT_EQ(env.options.buffers.shm_ring_bytes, 262144u) << "a flag beats its variable";
  EXPECT_EQ(env.options.buffers.shm_presence_max_entries, 64u);
  EXPECT_EQ(env.options.buffers.redis_inbound_max_bytes, 3000000u);

  const std::string help = options_help();
  for (const char* flag : {"--recv-pool-buffers", "--recv-buffer-bytes", "--uring-sq-entries", "--uring-cq-entries",
                           "--local-queue-max-bytes", "--local-queue-max-messages", "--shm-ring-bytes",
                           "--shm-max-nodes", "--shm-presence-max-entries", "--shm-max-topics",
                           "--redis-output-max-bytes", "--redis-payload-max-bytes", "--redis-inbound-max-bytes",
                           "--max-tracked-publishes"})
    EXPECT_NE(help.find(flag), std::string::npos) << flag;
}

TEST(BufferLimits, ThoseThatMustAgreeAreCheckedAtStartUp) {
  auto error_of = [](std::vector<const char*> args) {
    const OptionsOutcome o = parse(std::move(args));
    EXPECT_EQ(o.kind, OptionsOutcome::Kind::error);
    EXPECT_EQ(o.exit_code(), 2);
    return o.message;
  };
  EXPECT_NE(error_of({"--recv-pool-buffers", "0"}).find("recv-pool-buffers must be a power of two"), std::string::npos);
  EXPECT_NE(error_of({"--recv-pool-buffers", "3000"}).find("recv-pool-buffers"), std::string::npos);
  EXPECT_NE(error_of({"--uring-cq-entries", "16", "--uring-sq-entries", "64"}).find("uring-cq-entries"),
            std::string::npos);
  EXPECT_NE(error_of({"--max-tracked-publishes", "0"}).find("max-tracked-publishes"), std::string::npos);
  // A Redis payload must hold the largest message in its envelope.
  const std::string redis = error_of({"--transport", "redis", "--max-message-bytes", "2000000",
                                      "--send-queue-max-bytes", "4000000"});
  EXPECT_NE(redis.find("redis-payload-max-bytes must be >= 2002624"), std::string::npos) << redis;
  EXPECT_EQ(parse({"--transport", "redis", "--max-message-bytes", "2000000", "--send-queue-max-bytes", "4000000",
                   "--redis-payload-max-bytes", "2002624"})
                .kind,
            OptionsOutcome::Kind::run);
  // Only the transport in use is checked: a local node does not need
  // Redis buffers for its messages.
  EXPECT_EQ(parse({"--max-message-bytes", "2000000", "--send-queue-max-bytes", "4000000"}).kind,
            OptionsOutcome::Kind::run);
  EXPECT_NE(error_of({"--transport", "shm", "--shm-ring-bytes", "65536"}).find("shm-ring-bytes"), std::string::npos);
  EXPECT_NE(error_of({"--transport", "shm", "--shm-max-nodes", "65"}).find("shm-max-nodes"), std::string::npos);
  EXPECT_NE(error_of({"--local-queue-max-bytes", "4096"}).find("local-queue-max-bytes"), std::string::npos);
}

TEST(BufferLimits, TheLocalBusTakesItsQueueFromTheFlags) {
  const OptionsOutcome o = parse({"--local-queue-max-bytes", "1000000", "--local-queue-max-messages", "7",
                                  "--max-connections", "10"});
  ASSERT_EQ(o.kind, OptionsOutcome::Kind::run) << o.message;
  const LocalBusOptions bus = local_bus_options_for(o.options);
  EXPECT_EQ(bus.inbound_queue_max_bytes, 1000000u);
  EXPECT_EQ(bus.inbound_queue_max_messages, 7u);
  EXPECT_TRUE(local_bus_options_are_consistent(bus));
  EXPECT_EQ(bus.max_subscriptions_per_node, 13u) << "one topic per connection, plus three of the node";
}

}  // namespace
}  // namespace wsgate::server

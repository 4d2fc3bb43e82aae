// The Redis flags of wsgate: address shapes, where the port and the
// password come from, and that every bad value is an error (exit 2), never
// an exception later in the event loop.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "options.hpp"

namespace wsgate::server {
namespace {

OptionsOutcome parse(std::vector<const char*> args, std::map<std::string, std::string> env = {}) {
  args.insert(args.begin(), "wsgate");
  return parse_options(int(args.size()), args.data(), [&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

TEST(RedisOptions, AddressShapes) {
  auto o = parse({"--redis", "redis.internal:6380"});
  ASSERT_EQ(o.kind, OptionsOutcome::Kind::run) << o.message;
  EXPECT_EQ(o.options.redis_host, "redis.internal");
  EXPECT_EQ(o.options.redis_port, 6380);
  o = parse({"--redis", "[::1]:6381"});
  ASSERT_EQ(o.kind, OptionsOutcome::Kind::run) << o.message;
  EXPECT_EQ(o.options.redis_host, "::1");
  EXPECT_EQ(o.options.redis_port, 6381);
  EXPECT_EQ(o.options.redis_address(), "[::1]:6381");
  o = parse({"--redis", "[::1]"});
  ASSERT_EQ(o.kind, OptionsOutcome::Kind::run) << o.message;
  EXPECT_EQ(o.options.redis_port, 6379);
}

TEST(RedisOptions, PortFromTheAddressElseRedisPortElseDefault) {
  EXPECT_EQ(parse({}, {{"REDIS_HOST", "r"}, {"REDIS_PORT", "7000"}}).options.redis_port, 7000);
  EXPECT_EQ(parse({}, {{"REDIS_HOST", "r:7001"}, {"REDIS_PORT", "7000"}}).options.redis_port, 7001);
  // A flag address without a port still takes REDIS_PORT (Kubernetes sets it).
  EXPECT_EQ(parse({"--redis", "other"}, {{"REDIS_HOST", "r:7001"}, {"REDIS_PORT", "7000"}}).options.redis_port, 7000);
  EXPECT_EQ(parse({"--redis", "other"}).options.redis_port, 6379);
}

TEST(RedisOptions, BadValuesAreErrorsNamingTheirSource) {
  const std::vector<std::vector<const char*>> bad = {
      {"--redis", "127.0.0.1:notaport"}, {"--redis", "127.0.0.1:"}, {"--redis", "::1"},
      {"--redis", "[::1]x"},            {"--redis", "h:0"},        {"--redis-timeout-ms", "99"},
      {"--redis-password-file", ""},    {"--host", "a b"},
  };
  for (const auto& args : bad) {
    const OptionsOutcome o = parse(args);
    EXPECT_EQ(o.kind, OptionsOutcome::Kind::error) << args[0] << " " << args[1];
    EXPECT_EQ(o.exit_code(), 2);
    EXPECT_NE(o.message.find(args[0]), std::string::npos) << o.message;
  }
  EXPECT_EQ(parse({}, {{"REDIS_PORT", "65536"}}).kind, OptionsOutcome::Kind::error);
}

TEST(RedisOptions, PasswordFromFileEnvironmentOrFlag) {
  char path[] = "/tmp/wsgate-pw-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "from-file\n", 10), 10);
  close(fd);
  auto o = parse({"--redis-password-file", path});
  ASSERT_EQ(o.kind, OptionsOutcome::Kind::run) << o.message;
  EXPECT_EQ(o.options.redis_password, "from-file");
  EXPECT_TRUE(o.options.warnings.empty());
  o = parse({}, {{"WSGATE_REDIS_PASSWORD_FILE", path}});
  EXPECT_EQ(o.options.redis_password, "from-file");
  o = parse({}, {{"REDIS_PASSWORD", "from-env"}});
  EXPECT_EQ(o.options.redis_password, "from-env");
  EXPECT_TRUE(o.options.warnings.empty());
  // A flag beats the variables; on the command line it is visible in ps.
  o = parse({"--redis-password", "from-flag"}, {{"REDIS_PASSWORD", "from-env"}});
  EXPECT_EQ(o.options.redis_password, "from-flag");
  ASSERT_EQ(o.options.warnings.size(), 1u);
  EXPECT_NE(o.options.warnings[0].find("visible"), std::string::npos);
  EXPECT_EQ(o.options.warnings[0].find("from-flag"), std::string::npos) << "the warning repeats the secret";
  o = parse({"--redis-password-file", path}, {{"REDIS_PASSWORD", "from-env"}});
  EXPECT_EQ(o.options.redis_password, "from-file");
  EXPECT_EQ(parse({"--redis-password", "x", "--redis-password-file", path}).kind, OptionsOutcome::Kind::error);
  std::remove(path);
  EXPECT_EQ(parse({"--redis-password-file", path}).kind, OptionsOutcome::Kind::error);
}

}  // namespace
}  // namespace wsgate::server

// What the shared-memory bus does beyond the transport contract: real
// concurrency (threads, processes), crashed and reclaimed slots, ring
// wrap-around, and every table's bound.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "options.hpp"
#include "shm_bus.hpp"
#include "transport_options.hpp"

namespace wsgate::test {
namespace {

// Between processes the bus runs on CLOCK_MONOTONIC, shared by the host.
uint64_t monotonic_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

constexpr uint64_t exchange_deadline_ms = 20000;
constexpr uint32_t exchange_messages = 2000;

std::string payload_for(uint32_t i) {
  std::string s = std::to_string(i) + ":";
  for (uint32_t k = 0; k < (i * 37) % 3000; ++k) s.push_back(char('a' + (i + k) % 26));
  return s;
}

class Collector final : public TransportSink {
 public:
  void on_transport_message(std::string_view topic, std::string_view payload) override {
    messages.emplace_back(std::string(topic), std::string(payload));
  }
  void on_transport_state(TransportState state) override { states.push_back(state); }
  std::vector<std::pair<std::string, std::string>> messages;
  std::vector<TransportState> states;
};

ShmBusOptions exchange_options() {
  ShmBusOptions o;
  o.max_nodes = 4;
  o.ring_bytes = 256 * 1024;
  o.max_topics = 64;
  o.max_presence_entries = 64;
  return o;
}

// The far side of the exchange: echoes every message on to_peer back on
// to_origin, in order. Returns 0 on success (a process exit code).
int run_echo_peer(const std::string& shm_name) {
  ShmTransport bus(shm_name, "peer", exchange_options(), monotonic_ms());
  Collector in;
  bus.set_sink(&in);
  bus.subscribe("to_peer");
  bus.set_presence("peer-ready", 1);
  size_t echoed = 0;
  const uint64_t deadline_ms = monotonic_ms() + exchange_deadline_ms;
  while (echoed < exchange_messages) {
    if (monotonic_ms() > deadline_ms) return 1;
    bus.poll(monotonic_ms());
    // Echo outside the sink callback; on backpressure, retry after a poll.
    while (echoed < in.messages.size()) {
      const PublishStatus s = bus.publish("to_origin", in.messages[echoed].second);
      if (s == PublishStatus::backpressure) break;
      if (s != PublishStatus::accepted) return 2;
      ++echoed;
    }
  }
  return 0;
}

// The near side: publishes, waits for every echo, checks order and bytes.
void run_origin(const std::string& shm_name) {
  ShmTransport bus(shm_name, "origin", exchange_options(), monotonic_ms());
  Collector in;
  bus.set_sink(&in);
  bus.subscribe("to_origin");
  const uint64_t deadline_ms = monotonic_ms() + exchange_deadline_ms;
  while (bus.presence_of("peer-ready").empty()) {
    ASSERT_LT(monotonic_ms(), deadline_ms) << "the peer never joined";
    bus.poll(monotonic_ms());
    std::this_thread::yield();
  }
  uint32_t sent = 0;
  while (in.messages.size() < exchange_messages) {
    ASSERT_LT(monotonic_ms(), deadline_ms) << "sent " << sent << ", echoed " << in.messages.size();
    while (sent < exchange_messages) {
      const PublishStatus s = bus.publish("to_peer", payload_for(sent));
      if (s == PublishStatus::backpressure) break;
      ASSERT_EQ(s, PublishStatus::accepted);
      ++sent;
    }
    bus.poll(monotonic_ms());
  }
  for (uint32_t i = 0; i < exchange_messages; ++i) {
    ASSERT_EQ(in.messages[i].first, "to_origin");
    ASSERT_EQ(in.messages[i].second, payload_for(i)) << "message " << i;
  }
}

class ShmBusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<uint32_t> next{0};
    name_ = "wsgate_shmtest_" + std::to_string(getpid()) + "_" + std::to_string(next++);
    ShmBus::remove(name_);
  }
  void TearDown() override { ShmBus::remove(name_); }
  std::string name_;
};

TEST_F(ShmBusTest, TwoProcessesExchangeMessages) {
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(run_echo_peer(name_));
  run_origin(name_);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: peer timed out, 2: peer's publish refused";
}

TEST_F(ShmBusTest, TwoThreadsExchangeMessages) {
  int peer_result = -1;
  std::thread peer([&] { peer_result = run_echo_peer(name_); });
  run_origin(name_);
  peer.join();
  EXPECT_EQ(peer_result, 0);
}

TEST_F(ShmBusTest, CrashedProcessDisappearsAfterTtlAndItsSlotIsReclaimed) {
  ShmBusOptions o;
  o.max_nodes = 2;
  o.ring_bytes = 64 * 1024;
  o.node_ttl_ms = 1000;
  constexpr uint64_t t0_ms = 5000;
  ShmTransport a(name_, "a", o, t0_ms);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Joins, then dies without leaving: no destructor runs.
    auto* crashy = new ShmTransport(name_, "crashy", o, t0_ms);
    crashy->subscribe("t");
    crashy->set_presence("eve", 2);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);

  a.poll(t0_ms + 10);
  EXPECT_EQ(a.presence_of("eve"), (std::map<std::string, uint32_t>{{"crashy", 2}}));
  EXPECT_THROW(ShmTransport(name_, "c", o, t0_ms + 10), std::runtime_error) << "both slots are live";

  a.poll(t0_ms + o.node_ttl_ms + 10);
  EXPECT_TRUE(a.presence_of("eve").empty());
  EXPECT_TRUE(a.online_users().empty());
  // A dead subscriber is skipped, not waited for.
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(a.publish("t", std::string(1000, 'x')), PublishStatus::no_subscribers);
  EXPECT_EQ(a.bus_counters().dropped_dead, 1000u);

  ShmTransport c(name_, "c", o, t0_ms + o.node_ttl_ms + 10);
  EXPECT_EQ(a.bus_counters().slots_reclaimed, 1u);
  // The crashed node's subscriptions went with its slot.
  EXPECT_EQ(a.publish("t", "x"), PublishStatus::no_subscribers);
  EXPECT_EQ(a.bus_counters().enqueued, 0u);
}

TEST_F(ShmBusTest, NodeThatLookedDeadReportsItAndRejoinsWhenASlotFrees) {
  ShmBusOptions o;
  o.max_nodes = 2;
  o.ring_bytes = 64 * 1024;
  o.node_ttl_ms = 1000;
  ShmTransport a(name_, "a", o, 0);
  Collector b_sink;
  ShmTransport b(name_, "b", o, 0);
  b.set_sink(&b_sink);
  b.subscribe("to_b");
  b.set_presence("bob", 1);

  // b hangs past the TTL; c takes its slot.
  a.poll(2000);
  auto c = std::make_unique<ShmTransport>(name_, "c", o, 2000);
  EXPECT_TRUE(a.presence_of("bob").empty());
  EXPECT_EQ(b.publish("to_b", "x"), PublishStatus::unavailable);
  b.poll(2001);
  EXPECT_EQ(b.state(), TransportState::disconnected);
  EXPECT_EQ(b_sink.states, std::vector<TransportState>{TransportState::disconnected});

  c.reset();
  a.poll(2002);
  b.poll(2002);
  EXPECT_EQ(b.state(), TransportState::connected);
  EXPECT_EQ(b_sink.states, (std::vector<TransportState>{TransportState::disconnected, TransportState::connected}));
  // Subscriptions and presence came back with the new slot.
  EXPECT_EQ(a.presence_of("bob"), (std::map<std::string, uint32_t>{{"b", 1}}));
  ASSERT_EQ(a.publish("to_b", "welcome back"), PublishStatus::accepted);
  b.poll(2003);
  ASSERT_EQ(b_sink.messages.size(), 1u);
  EXPECT_EQ(b_sink.messages[0].second, "welcome back");
}

TEST_F(ShmBusTest, StaleButNotReclaimedNodeFlapsSoItsOwnerRepublishes) {
  ShmBusOptions o;
  o.node_ttl_ms = 1000;
  ShmTransport a(name_, "a", o, 0);
  Collector sink;
  a.set_sink(&sink);
  a.poll(100);
  a.poll(5000);
  EXPECT_EQ(sink.states, (std::vector<TransportState>{TransportState::disconnected, TransportState::connected}));
  EXPECT_EQ(a.state(), TransportState::connected);
}

TEST_F(ShmBusTest, RestartUnderTheSameIdTakesOverTheSlot) {
  ShmBusOptions o;
  o.max_nodes = 2;
  ShmTransport old_instance(name_, "n1", o, 0);
  Collector old_sink;
  old_instance.set_sink(&old_sink);
  ShmTransport other(name_, "n2", o, 0);
  ShmTransport restarted(name_, "n1", o, 0);
  EXPECT_EQ(restarted.slot(), old_instance.slot());
  EXPECT_EQ(old_instance.publish("t", "x"), PublishStatus::unavailable);
  old_instance.poll(1);
  EXPECT_EQ(old_instance.state(), TransportState::disconnected) << "the newer instance owns the id";
  EXPECT_EQ(restarted.bus_counters().slots_reclaimed, 1u);
}

TEST_F(ShmBusTest, RingWrapsAroundWithVariableLengthRecords) {
  ShmBusOptions o;
  o.max_nodes = 2;
  o.ring_bytes = 8192;  // small, so that records wrap around often
  ShmTransport sub(name_, "sub", o, 0);
  ShmTransport pub(name_, "pub", o, 0);
  Collector sink;
  sub.set_sink(&sink);
  sub.subscribe("t");
  ASSERT_EQ(pub.max_payload_bytes(), 8192u - 16 - shm_max_topic_bytes);
  std::vector<std::string> sent;
  uint32_t x = 7;
  for (uint32_t i = 0; i < 5000; ++i) {
    x = x * 1103515245u + 12345u;
    std::string payload = std::to_string(i) + std::string((x >> 16) % pub.max_payload_bytes() / 3, char('a' + i % 26));
    PublishStatus s = pub.publish("t", payload);
    if (s == PublishStatus::backpressure) {
      sub.poll(i);
      s = pub.publish("t", payload);
    }
    ASSERT_EQ(s, PublishStatus::accepted) << i;
    sent.push_back(std::move(payload));
    if (x % 3 == 0) sub.poll(i);
  }
  sub.poll(5000);
  EXPECT_EQ(sub.queued_bytes(), 0u);
  ASSERT_EQ(sink.messages.size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i) ASSERT_EQ(sink.messages[i].second, sent[i]) << i;
  EXPECT_GT(pub.bus_counters().backpressure, 0u) << "the test should fill the ring";
  // The largest record (longest topic, largest payload) fills the ring exactly.
  const std::string longest_topic(shm_max_topic_bytes, 'T');
  sub.subscribe(longest_topic);
  ASSERT_EQ(pub.publish(longest_topic, std::string(pub.max_payload_bytes(), 'z')), PublishStatus::accepted);
  EXPECT_EQ(pub.publish("t", "y"), PublishStatus::backpressure);
  sub.poll(5001);
  EXPECT_EQ(pub.publish("t", "y"), PublishStatus::accepted);
  sub.poll(5002);
  ASSERT_EQ(sink.messages.size(), sent.size() + 2);
  EXPECT_EQ(sink.messages.back().second, "y");
  EXPECT_EQ(pub.publish("t", std::string(pub.max_payload_bytes() + 1, 'z')), PublishStatus::too_large);
  EXPECT_EQ(pub.publish(std::string(shm_max_topic_bytes + 1, 't'), "x"), PublishStatus::too_large);
}

TEST_F(ShmBusTest, FullTopicTableOverflowsToFilteringWithoutLoss) {
  ShmBusOptions o;
  o.max_nodes = 2;
  o.max_topics = 8;
  constexpr uint32_t topics = 20;
  ShmTransport sub(name_, "sub", o, 0);
  ShmTransport pub(name_, "pub", o, 0);
  Collector sink;
  sub.set_sink(&sink);
  for (uint32_t i = 0; i < topics; ++i) sub.subscribe("user:" + std::to_string(i));
  EXPECT_EQ(pub.bus_counters().topic_overflow, topics - o.max_topics);
  for (uint32_t i = 0; i < topics; ++i) ASSERT_EQ(pub.publish("user:" + std::to_string(i), "m"), PublishStatus::accepted);
  // Overflowed nodes are targets: the bus cannot be sure nobody wants it.
  ASSERT_EQ(pub.publish("nobody", "m"), PublishStatus::accepted);
  sub.poll(1);
  EXPECT_EQ(sink.messages.size(), topics);
  EXPECT_EQ(sub.counters().filtered, 1u) << "an overflowed node gets everything and filters";

  for (uint32_t i = 0; i < topics; ++i) sub.unsubscribe("user:" + std::to_string(i));
  ASSERT_EQ(pub.publish("nobody", "m"), PublishStatus::no_subscribers);
  sub.poll(2);
  EXPECT_EQ(sub.counters().filtered, 1u) << "overflow ends with the last overflowed subscription";
  EXPECT_EQ(sink.messages.size(), topics);
}

TEST_F(ShmBusTest, BoundsOnPresenceNodesAndIds) {
  ShmBusOptions o;
  o.max_nodes = 1;
  o.max_presence_entries = 4;
  ShmTransport a(name_, "a", o, 0);
  for (int i = 0; i < 5; ++i) a.set_presence("u" + std::to_string(i), 1);
  EXPECT_EQ(a.counters().presence_refused, 1u);
  EXPECT_EQ(a.bus_counters().presence_table_full, 1u);
  EXPECT_EQ(a.online_users().size(), 4u);
  a.set_presence(std::string(shm_max_user_bytes + 1, 'u'), 1);
  EXPECT_EQ(a.counters().presence_refused, 2u);
  a.set_presence("u0", 0);
  a.set_presence("u4", 1);
  EXPECT_EQ(a.online_users(), (std::vector<std::string>{"u1", "u2", "u3", "u4"}));

  EXPECT_THROW(ShmTransport(name_, "b", o, 0), std::runtime_error) << "one slot, held by a live node";
  EXPECT_THROW(ShmTransport(name_ + "x", std::string(shm_max_node_id_bytes + 1, 'n'), o, 0), std::runtime_error);
  EXPECT_THROW(ShmTransport(name_ + "x", "", o, 0), std::runtime_error);
  ShmBus::remove(name_ + "x");
}

mode_t segment_mode(const std::string& name) {
  struct stat st {};
  if (stat(("/dev/shm/" + name).c_str(), &st) != 0) return 0;
  return st.st_mode & 0777;
}

// Every message and every user id passes through the segment: only the
// user the nodes run as may map it, whatever the umask.
TEST_F(ShmBusTest, SegmentIsCreatedReadableByItsUserOnly) {
  const mode_t old_umask = umask(0);
  {
    ShmTransport a(name_, "a", ShmBusOptions{}, 0);
    EXPECT_EQ(segment_mode(name_), 0600u);
  }
  umask(old_umask);
}

// A segment others may map (an older node created it 0644, or someone
// chmod-ed it) is refused, not narrowed: whoever mapped it meanwhile would
// keep reading. The operator removes it and the next node creates it 0600.
TEST_F(ShmBusTest, ASegmentOthersMayMapIsRefused) {
  { ShmTransport a(name_, "a", ShmBusOptions{}, 0); }
  const int fd = shm_open(("/" + name_).c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fchmod(fd, 0644), 0);
  close(fd);
  try {
    ShmTransport b(name_, "b", ShmBusOptions{}, 0);
    ADD_FAILURE() << "a 0644 segment was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("mode 0644"), std::string::npos) << e.what();
  }
  EXPECT_EQ(segment_mode(name_), 0644u) << "refused, left as it was";
  ShmBus::remove(name_);
  ShmTransport c(name_, "c", ShmBusOptions{}, 0);
  EXPECT_EQ(segment_mode(name_), 0600u);
}

server::ServerOptions parsed(std::vector<const char*> args) {
  args.insert(args.begin(), "wsgate");
  const server::OptionsOutcome out =
      server::parse_options(int(args.size()), args.data(), [](const char*) -> const char* { return nullptr; });
  EXPECT_EQ(out.kind, server::OptionsOutcome::Kind::run) << out.message;
  return out.options;
}

// The server sizes the presence table from its connection limits, or from
// the flag; a full table refuses the entry and counts it (messages still
// flow: presence is what is bounded).
TEST_F(ShmBusTest, PresenceCapacityFollowsTheFlagAndAFullTableIsCounted) {
  EXPECT_EQ(server::shm_bus_options_for(parsed({"--transport", "shm"})).max_presence_entries,
            2 * Limits{}.max_connections)
      << "default: two full nodes of distinct users";
  EXPECT_EQ(server::shm_bus_options_for(parsed({"--max-connections", "500"})).max_presence_entries, 1000u);
  const ShmBusOptions o = server::shm_bus_options_for(
      parsed({"--transport", "shm", "--shm-presence-max-entries", "8", "--shm-max-nodes", "2", "--max-connections", "100"}));
  EXPECT_EQ(o.max_presence_entries, 8u);
  EXPECT_EQ(o.max_topics, 8u + 3 * 2) << "derived from the presence table";
  ShmTransport a(name_, "a", o, 0);
  ShmTransport b(name_, "b", o, 0);
  EXPECT_EQ(b.max_presence_entries(), 8u);
  for (int i = 0; i < 5; ++i) a.set_presence("a" + std::to_string(i), 1);
  for (int i = 0; i < 5; ++i) b.set_presence("b" + std::to_string(i), 1);
  EXPECT_EQ(a.counters().presence_refused + b.counters().presence_refused, 2u);
  EXPECT_EQ(b.counters().presence_refused, 2u) << "the later writer finds the table full";
  EXPECT_EQ(a.bus_counters().presence_table_full, 2u);
  EXPECT_EQ(a.online_users().size(), 8u);
  a.subscribe("t");
  b.publish("t", "still flows");
  Collector sink;
  a.set_sink(&sink);
  a.poll(1);
  EXPECT_EQ(sink.messages.size(), 1u);
}

// Tables larger than /dev/shm's free space: refused with the reason, before
// anything is created (clearing them would end in SIGBUS).
TEST_F(ShmBusTest, TablesLargerThanDevShmAreRefusedBeforeCreating) {
  ShmBusOptions o;
  o.max_presence_entries = shm_max_table_entries;  // 2^29 slots x 272 bytes: 146 GB
  try {
    ShmTransport a(name_, "a", o, 0);
    ADD_FAILURE() << "created a segment larger than /dev/shm";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("MiB of /dev/shm"), std::string::npos) << e.what();
  }
  EXPECT_EQ(segment_mode(name_), 0u) << "nothing was created";
}

TEST_F(ShmBusTest, LeavingNodeTakesItsSubscriptionsAndPresence) {
  ShmBusOptions o;
  ShmTransport a(name_, "a", o, 0);
  {
    ShmTransport b(name_, "b", o, 0);
    b.subscribe("t");
    b.set_presence("bob", 1);
    EXPECT_EQ(a.presence_of("bob").size(), 1u);
  }
  EXPECT_TRUE(a.presence_of("bob").empty());
  ASSERT_EQ(a.publish("t", "x"), PublishStatus::no_subscribers);
  EXPECT_EQ(a.bus_counters().enqueued, 0u);
}

}  // namespace
}  // namespace wsgate::test

// Gateway::check_invariants: quiet on every state the core reaches through
// its own API, and it stops the process (in release builds too) when a
// planted bug breaks one of its tables.
#include <gtest/gtest.h>

#include <string>

#include "local_transport.hpp"
#include "test_support.hpp"
#include "wsgate/gateway.hpp"

namespace wsgate {

// Plants the bugs (a friend of Gateway: it reaches the private tables;
// those whose element types the header leaves incomplete stay out of reach).
struct GatewayInternals {
  static void miscount_open(Gateway& g) { ++g.open_count_; }
  static void queue_dirty_twice(Gateway& g, ConnId id) { g.dirty_.push_back(id); }
  static void list_free_slot_twice(Gateway& g) { g.free_slots_.push_back(g.free_slots_.back()); }
  // A close requested without the slot being marked closing (request_close
  // forgetting its state change).
  static void queue_close_of_open_slot(Gateway& g, ConnId id) {
    g.closes_.push_back(CloseRequest{id, CloseCode::going_away, "planted"});
  }
  static void miscount_gauge(Gateway& g) { --g.metrics_.connections_open; }
  static void flood_peer_loads(Gateway& g) {
    for (uint32_t i = 0; i <= g.config_.limits.max_peer_nodes + 1; ++i)
      g.peer_loads_["fake" + std::to_string(i)] = PeerLoad{1, 0, UINT64_MAX, false, "fake" + std::to_string(i) + "/0000000000000001"};
  }
};

namespace {

using Check = Gateway::InvariantCheck;

GatewayConfig config() {
  GatewayConfig c;
  c.node_id = "inv";
  return c;
}

// A gateway with some history: users with several connections, closes,
// queued bytes, a reopened slot.
struct Busy {
  Gateway g{config()};
  ConnId a1, a2, b1, c1;
  Busy() {
    a1 = g.handle_open("alice", 1);
    a2 = g.handle_open("alice", 1);
    b1 = g.handle_open("bob", 1);
    c1 = g.handle_open("carol", 1);
    g.handle_text(b1, R"({"type":"send_message","target_user":"alice","content":1})", 2);
    g.handle_closed(c1);
    c1 = g.handle_open("carol", 3);
  }
};

TEST(GatewayInvariants, HoldThroughEverythingTheApiDoes) {
  LocalBus bus;
  LocalTransport ta(bus, "A"), tb(bus, "B");
  Gateway a(GatewayConfig{"A", 1, {}}, &ta);
  Gateway b(GatewayConfig{"B", 2, {}}, &tb);
  auto check = [&] {
    a.check_invariants(Check::full);
    b.check_invariants(Check::full);
  };
  uint64_t now = 10;
  std::vector<ConnId> conns;
  for (int i = 0; i < 20; ++i) {
    conns.push_back(a.handle_open("u" + std::to_string(i % 7), now));
    check();
  }
  conns.push_back(a.handle_open("", now));  // refused identity: opened, closing, no user
  check();
  for (int i = 0; i < 20; ++i) {
    a.handle_text(conns[size_t(i)], R"({"type":"broadcast","content":)" + std::to_string(i) + "}", now);
    a.handle_text(conns[size_t(i)], R"({"type":"send_message","target_user":"u3","content":"x"})", now);
    a.handle_text(conns[size_t(i)], "not json", now);
    check();
    for (int k = 0; k < 3; ++k) ta.poll(now), tb.poll(now);
    check();
  }
  for (ConnId id : a.take_dirty()) {
    if (a.is_open(id)) test::drain(a, id);
    check();
  }
  for (int i = 0; i < 20; i += 3) {
    a.handle_closed(conns[size_t(i)]);
    check();
  }
  for (int t = 0; t < 10; ++t) {
    now += 1000;
    a.handle_tick(now);
    b.handle_tick(now);
    for (int k = 0; k < 3; ++k) ta.poll(now), tb.poll(now);
    check();
  }
  a.handle_drain(now);
  check();
  for (const CloseRequest& r : a.take_closes()) {
    a.handle_closed(r.id);
    check();
  }
}

TEST(GatewayInvariants, HoldOnABusyGateway) {
  Busy b;
  b.g.check_invariants(Check::full);
  b.g.take_dirty();
  b.g.check_invariants(Check::full);
}

using GatewayInvariantsDeathTest = ::testing::Test;

TEST_F(GatewayInvariantsDeathTest, AMiscountedConnectionIsCaughtByTheCheapCheck) {
  Busy b;
  GatewayInternals::miscount_open(b.g);
  EXPECT_DEATH(b.g.check_invariants(Check::cheap), "invariant failed: open_count_");
}

TEST_F(GatewayInvariantsDeathTest, AConnectionsGaugeOffByOneIsCaught) {
  Busy b;
  GatewayInternals::miscount_gauge(b.g);
  EXPECT_DEATH(b.g.check_invariants(Check::cheap), "invariant failed: metrics_.connections_open");
}

TEST_F(GatewayInvariantsDeathTest, ACloseOfAConnectionNotClosingIsCaught) {
  Busy b;
  GatewayInternals::queue_close_of_open_slot(b.g, b.b1);
  EXPECT_DEATH(b.g.check_invariants(), "invariant failed: slots_.r.id.index..state == Slot::State::closing");
}

TEST_F(GatewayInvariantsDeathTest, AConnectionQueuedTwiceAsDirtyIsCaught) {
  Busy b;
  GatewayInternals::queue_dirty_twice(b.g, b.a1);  // a1 got a message: already queued
  EXPECT_DEATH(b.g.check_invariants(), "invariant failed");
}

TEST_F(GatewayInvariantsDeathTest, AFreeSlotListedTwiceIsCaught) {
  Busy b;
  b.g.handle_closed(b.a1);
  GatewayInternals::list_free_slot_twice(b.g);
  EXPECT_DEATH(b.g.check_invariants(Check::cheap), "invariant failed");
}

TEST_F(GatewayInvariantsDeathTest, UnboundedPeerLoadsAreCaught) {
  Busy b;
  GatewayInternals::flood_peer_loads(b.g);
  EXPECT_DEATH(b.g.check_invariants(Check::cheap), "invariant failed: peer_loads_");
}

}  // namespace
}  // namespace wsgate

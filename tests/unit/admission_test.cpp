#include "wsgate/admission.hpp"

#include <gtest/gtest.h>

namespace wsgate {
namespace {

TEST(Admission, RefusesPastTheNodeCap) {
  Limits l;
  l.max_connections = 2;
  AdmissionControl a(l);
  EXPECT_EQ(a.admit("\x7f\0\0\x01", 1, 0), Admission::ok);
  EXPECT_EQ(a.admit("\x7f\0\0\x02", 2, 0), Admission::too_many_connections);
}

TEST(Admission, CountsNewConnectionsPerIpPerWindow) {
  Limits l;
  l.max_connections_per_ip = 3;
  l.ip_window_ms = 1000;
  AdmissionControl a(l);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(a.admit("A", 0, 10), Admission::ok);
  EXPECT_EQ(a.admit("A", 0, 500), Admission::rate_limited);
  EXPECT_EQ(a.admit("B", 0, 500), Admission::ok);  // other addresses unaffected
  EXPECT_EQ(a.admit("A", 0, 1010), Admission::ok);  // a new window
}

TEST(Admission, TrackedIpTableIsBounded) {
  Limits l;
  l.max_tracked_ips = 2;
  l.ip_window_ms = 1000;
  AdmissionControl a(l);
  EXPECT_EQ(a.admit("A", 0, 0), Admission::ok);
  EXPECT_EQ(a.admit("B", 0, 0), Admission::ok);
  EXPECT_EQ(a.admit("C", 0, 10), Admission::rate_limited);
  EXPECT_EQ(a.tracked_ips(), 2u);
  EXPECT_EQ(a.admit("C", 0, 1000), Admission::ok);  // A and B expired
  EXPECT_EQ(a.tracked_ips(), 1u);
}

TEST(Admission, ExpiryKeepsWindowsThatRestarted) {
  Limits l;
  l.max_connections_per_ip = 1;
  l.ip_window_ms = 100;
  AdmissionControl a(l);
  EXPECT_EQ(a.admit("A", 0, 0), Admission::ok);
  EXPECT_EQ(a.admit("A", 0, 150), Admission::ok);  // a new window from 150
  a.expire(200);  // the first window's entry is stale, not A's window
  EXPECT_EQ(a.tracked_ips(), 1u);
  EXPECT_EQ(a.admit("A", 0, 200), Admission::rate_limited);
  a.expire(250);
  EXPECT_EQ(a.tracked_ips(), 0u);
}

}  // namespace
}  // namespace wsgate

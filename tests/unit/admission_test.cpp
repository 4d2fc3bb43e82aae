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

namespace wsgate {
namespace {

std::string v6(std::initializer_list<int> bytes) {
  std::string s(16, '\0');
  size_t i = 0;
  for (int b : bytes) s[i++] = char(b);
  return s;
}

// Issue 7: one subscriber holds a /64 and rotates through it freely. Keyed
// per address, 131,072 of its addresses filled the table and every other
// client got 429.
TEST(Admission, Ipv6AddressesOfOnePrefixCountAsOneClient) {
  Limits l;
  l.max_connections_per_ip = 3;
  AdmissionControl a(l);
  for (int i = 0; i < 3; ++i) {
    std::string ip = v6({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1});
    ip[15] = char(i + 1);  // rotating the interface id
    ip[8] = char(0x40 + i);
    EXPECT_EQ(a.admit(ip, 0, 0), Admission::ok);
  }
  std::string next = v6({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0xff, 0xff});
  EXPECT_EQ(a.admit(next, 0, 0), Admission::rate_limited);
  EXPECT_EQ(a.admit(v6({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 2}), 0, 0), Admission::ok);  // another /64
  EXPECT_EQ(a.tracked_ips(), 2u);
}

TEST(Admission, RotatingIpv6AddressesCannotFillTheTable) {
  Limits l;
  l.max_tracked_ips = 16;
  l.max_connections_per_ip = 1000;
  AdmissionControl a(l);
  for (int i = 0; i < 5000; ++i) {
    std::string ip = v6({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1});
    ip[12] = char(i >> 8);
    ip[13] = char(i);
    ASSERT_EQ(a.admit(ip, 0, 0), i < 1000 ? Admission::ok : Admission::rate_limited);
  }
  EXPECT_EQ(a.tracked_ips(), 1u);
  EXPECT_EQ(a.admit("\x0a\0\0\x01", 0, 0), Admission::ok);  // everyone else still gets in
}

TEST(Admission, Ipv6PrefixLengthIsConfigurable) {
  const std::string x = v6({0x20, 0x01, 0x0d, 0xb8, 0x12, 0x34, 0x56, 0x78, 0x9a});
  std::string y = x;
  y[6] = char(0x57);  // differs in bit 55
  EXPECT_EQ(ip_key(x, 48), ip_key(y, 48));
  EXPECT_NE(ip_key(x, 64), ip_key(y, 64));
  EXPECT_EQ(ip_key(x, 55), ip_key(y, 55));  // a prefix inside a byte
  EXPECT_NE(ip_key(x, 56), ip_key(y, 56));
  std::string z = x;
  z[15] = 1;
  EXPECT_NE(ip_key(x, 128), ip_key(z, 128));
  EXPECT_EQ(ip_key(x, 64), ip_key(z, 64));
}

TEST(Admission, Ipv4MappedIpv6CountsAsIpv4AndPrefixesNeverPoseAsIpv4) {
  const std::string v4("\x0a\x01\x02\x03", 4);
  const std::string mapped = v6({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3});
  EXPECT_EQ(ip_key(mapped, 64), ip_key(v4, 64));
  // A /24 of IPv6 is 3 bytes, like an IPv4 address less a byte: tagged apart.
  EXPECT_NE(ip_key(v6({10, 1, 2}), 32), ip_key(std::string("\x0a\x01\x02\x00", 4), 32));
  Limits l;
  l.max_connections_per_ip = 1;
  AdmissionControl a(l);
  EXPECT_EQ(a.admit(v4, 0, 0), Admission::ok);
  EXPECT_EQ(a.admit(mapped, 0, 0), Admission::rate_limited);
}

TEST(Admission, OpenCapCountsPerPrefixAndEntriesGoWithTheirConnections) {
  Limits l;
  l.max_open_connections_per_ip = 2;
  AdmissionControl a(l);
  std::string ip1 = v6({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 1});
  std::string ip2 = v6({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 2});
  auto* h1 = a.hold(ip1);
  auto* h2 = a.hold(ip2);
  EXPECT_EQ(h1, h2);  // one /64, one entry
  EXPECT_EQ(a.admit(ip1, 0, 0), Admission::too_many_open_per_ip);
  a.release(h1);
  EXPECT_EQ(a.admit(ip2, 0, 0), Admission::ok);
  a.release(h2);
  EXPECT_EQ(a.open_ips(), 0u);
}

}  // namespace
}  // namespace wsgate

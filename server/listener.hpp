#pragma once
// The listening socket, and the address helpers around it.
#include <cstdint>
#include <string>

namespace wsgate::server {

struct Listener {
  int fd = -1;
  std::string address;  // as bound, "HOST:PORT" ("[::1]:PORT" for IPv6)
  uint16_t port = 0;    // as bound (the kernel's choice for port 0)
  std::string error;    // when fd < 0
};

// Binds host:port with SO_REUSEADDR and SO_REUSEPORT (so several loops can
// later share the port, one per core) and listens.
Listener open_listener(const std::string& host, uint16_t port);

// The peer's address as raw bytes, 4 for IPv4 (including IPv4-mapped IPv6),
// 16 for IPv6; empty if unknown. The admission control keys on these.
std::string peer_ip_bytes(int fd);

// Disables Nagle: frames are written whole and at once.
void set_no_delay(int fd);

}  // namespace wsgate::server

#include "health_check.hpp"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace wsgate::server {
namespace {

using Clock = std::chrono::steady_clock;

int ms_left(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? int(left) : 0;
}

// Waits for events on fd until the deadline; false on timeout or error.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int r = poll(&p, 1, ms_left(deadline));
    if (r > 0) return true;
    if (r == 0 || errno != EINTR) return false;
  }
}

std::string loopback_for(const std::string& host) {
  if (host == "0.0.0.0" || host.empty()) return "127.0.0.1";
  if (host == "::" || host == "[::]") return "::1";
  return host;
}

}  // namespace

int run_health_check(const std::string& host, uint16_t port, uint32_t timeout_ms, std::string& why) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  const std::string target = loopback_for(host);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (const int r = getaddrinfo(target.c_str(), std::to_string(port).c_str(), &hints, &found); r != 0) {
    why = std::string("cannot resolve ") + target + ": " + gai_strerror(r);
    return 1;
  }
  const int fd = socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    freeaddrinfo(found);
    why = std::string("socket: ") + std::strerror(errno);
    return 1;
  }
  const int c = connect(fd, found->ai_addr, found->ai_addrlen);
  freeaddrinfo(found);
  int err = c == 0 ? 0 : errno;
  if (err == EINPROGRESS) {
    socklen_t len = sizeof err;
    err = wait_for(fd, POLLOUT, deadline) && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 ? err : ETIMEDOUT;
  }
  if (err != 0) {
    close(fd);
    why = "connect to " + target + ":" + std::to_string(port) + ": " + std::strerror(err);
    return 1;
  }
  const std::string request = "GET /health HTTP/1.1\r\nHost: " + target + "\r\nConnection: close\r\n\r\n";
  size_t sent = 0;
  while (sent < request.size()) {
    if (!wait_for(fd, POLLOUT, deadline)) break;
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0 && errno != EAGAIN && errno != EINTR) break;
    if (n > 0) sent += size_t(n);
  }
  // The status line is all we need: "HTTP/1.1 200 ".
  char buf[64];
  size_t got = 0;
  while (got < 12 && sent == request.size() && wait_for(fd, POLLIN, deadline)) {
    const ssize_t n = recv(fd, buf + got, sizeof buf - got, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
    if (n > 0) got += size_t(n);
  }
  close(fd);
  const std::string status(buf, got);
  if (status.size() >= 12 && status.compare(0, 5, "HTTP/") == 0 && status.compare(9, 3, "200") == 0) return 0;
  why = got == 0 ? "no answer from /health within " + std::to_string(timeout_ms) + " ms"
                 : "/health answered '" + status.substr(0, status.find('\r')) + "'";
  return 1;
}

}  // namespace wsgate::server

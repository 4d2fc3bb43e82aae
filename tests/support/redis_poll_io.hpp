#pragma once
// Drives a RedisTransport's two links with plain non-blocking sockets and
// poll(2), for tests that need a real Redis without the server's io_uring
// loop around it. The transport itself is the same sans-IO object the
// server drives.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "redis_transport.hpp"

namespace wsgate::test {

inline uint64_t monotonic_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

class PollRedisIo final : public RedisIo {
 public:
  void attach(RedisTransport* t) { t_ = t; }

  void redis_connect(RedisLink l) override {
    Sock& s = socks_[size_t(l)];
    close_fd(s);
    s.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(t_->options().port);
    ::inet_pton(AF_INET, t_->options().host.c_str(), &a.sin_addr);
    const int rc = ::connect(s.fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    if (rc == 0) {
      s.connecting = false;
      t_->on_connected(l, monotonic_ms());
    } else if (errno == EINPROGRESS) {
      s.connecting = true;
    } else {
      fail(l);
    }
  }
  void redis_want_write(RedisLink) override {}
  void redis_close(RedisLink l) override { fail(l); }
  void redis_report_error(std::string_view line) override { errors.emplace_back(line); }

  std::vector<std::string> errors;  // what the server would log

  // One round: poll both sockets for up to timeout_ms, move bytes, then let
  // the transport do its timed work and deliver.
  size_t pump(int timeout_ms) {
    pollfd fds[2];
    for (size_t i = 0; i < 2; ++i) {
      fds[i].fd = socks_[i].fd;
      fds[i].events = POLLIN;
      if (socks_[i].connecting || !t_->output(RedisLink(i)).empty()) fds[i].events |= POLLOUT;
      fds[i].revents = 0;
    }
    ::poll(fds, 2, timeout_ms);
    for (size_t i = 0; i < 2; ++i) {
      const RedisLink l = RedisLink(i);
      Sock& s = socks_[i];
      if (s.fd < 0 || fds[i].revents == 0) continue;
      if (s.connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          fail(l);
          continue;
        }
        s.connecting = false;
        t_->on_connected(l, monotonic_ms());
      }
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        char buf[16384];
        const ssize_t n = ::recv(s.fd, buf, sizeof buf, 0);
        if (n > 0) t_->on_data(l, buf, size_t(n), monotonic_ms());
        else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
          fail(l);
          continue;
        }
      }
      flush(l);
    }
    return t_->poll(monotonic_ms());
  }

  ~PollRedisIo() override {
    for (Sock& s : socks_) close_fd(s);
  }

 private:
  struct Sock {
    int fd = -1;
    bool connecting = false;
  };
  void flush(RedisLink l) {
    Sock& s = socks_[size_t(l)];
    while (s.fd >= 0 && !t_->output(l).empty()) {
      const std::string_view out = t_->output(l);
      const ssize_t n = ::send(s.fd, out.data(), out.size(), MSG_NOSIGNAL);
      if (n > 0) t_->consume_output(l, size_t(n));
      else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      else {
        fail(l);
        return;
      }
    }
  }
  void fail(RedisLink l) {
    close_fd(socks_[size_t(l)]);
    t_->on_disconnected(l, monotonic_ms());
  }
  static void close_fd(Sock& s) {
    if (s.fd >= 0) ::close(s.fd);
    s.fd = -1;
    s.connecting = false;
  }

  RedisTransport* t_ = nullptr;
  Sock socks_[2];
};

}  // namespace wsgate::test

#pragma once
// Host name lookups off the event loop. getaddrinfo may wait seconds for a
// DNS server; it runs here on a thread of its own, and the loop learns that
// a lookup finished by reading event_fd() on its ring (no lock is held
// while resolving, and the loop never waits on one for long).
//
// Each request carries a tag the caller chooses; a newer request with the
// same key replaces one still queued, so a slow DNS server cannot make the
// queue grow however often the caller retries. The thread is detached: a
// lookup stuck at exit does not hold the process up.
#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace wsgate::server {

struct ResolvedAddress {
  sockaddr_storage address{};
  socklen_t length = 0;
};

struct Resolution {
  uint64_t tag = 0;
  std::vector<ResolvedAddress> addresses;  // in getaddrinfo's order
  std::string error;                       // set when addresses is empty
};

class Resolver {
 public:
  Resolver();  // throws std::system_error if the eventfd cannot be made
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // Becomes readable (an 8-byte counter) when results are waiting.
  int event_fd() const;
  // key: requests with the same key replace each other while queued.
  void request(uint32_t key, uint64_t tag, std::string host, uint16_t port);
  std::vector<Resolution> take_results();

  struct State;

 private:
  std::shared_ptr<State> state_;
};

// "1.2.3.4:6379" or "[::1]:6379".
std::string format_address(const ResolvedAddress& a);

}  // namespace wsgate::server

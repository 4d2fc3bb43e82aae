#include "resolver.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <system_error>
#include <thread>

namespace wsgate::server {

struct Resolver::State {
  struct Request {
    uint32_t key;
    uint64_t tag;
    std::string host;
    uint16_t port;
  };
  std::mutex mutex;
  std::condition_variable wake;
  std::deque<Request> requests;
  std::vector<Resolution> results;
  bool stopping = false;
  bool thread_started = false;
  int event_fd = -1;

  ~State() {
    if (event_fd >= 0) ::close(event_fd);
  }
};

namespace {

Resolution resolve(const Resolver::State::Request& r) {
  Resolution out;
  out.tag = r.tag;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(r.port);
  const int rc = getaddrinfo(r.host.c_str(), port.c_str(), &hints, &found);
  if (rc != 0) {
    out.error = rc == EAI_SYSTEM ? std::strerror(errno) : gai_strerror(rc);
    return out;
  }
  for (const addrinfo* a = found; a; a = a->ai_next) {
    if (a->ai_addrlen > sizeof(sockaddr_storage)) continue;
    ResolvedAddress ra;
    std::memcpy(&ra.address, a->ai_addr, a->ai_addrlen);
    ra.length = a->ai_addrlen;
    out.addresses.push_back(ra);
  }
  freeaddrinfo(found);
  if (out.addresses.empty()) out.error = "no address";
  return out;
}

void run(std::shared_ptr<Resolver::State> s) {
  std::unique_lock lock(s->mutex);
  for (;;) {
    s->wake.wait(lock, [&] { return s->stopping || !s->requests.empty(); });
    if (s->stopping) return;
    Resolver::State::Request r = std::move(s->requests.front());
    s->requests.pop_front();
    lock.unlock();
    Resolution done = resolve(r);
    lock.lock();
    s->results.push_back(std::move(done));
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(s->event_fd, &one, sizeof one);
  }
}

}  // namespace

Resolver::Resolver() : state_(std::make_shared<State>()) {
  state_->event_fd = ::eventfd(0, EFD_CLOEXEC);
  if (state_->event_fd < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
}

Resolver::~Resolver() {
  std::lock_guard lock(state_->mutex);
  state_->stopping = true;
  state_->wake.notify_all();
}

int Resolver::event_fd() const { return state_->event_fd; }

void Resolver::request(uint32_t key, uint64_t tag, std::string host, uint16_t port) {
  std::lock_guard lock(state_->mutex);
  std::erase_if(state_->requests, [&](const State::Request& r) { return r.key == key; });
  state_->requests.push_back(State::Request{key, tag, std::move(host), port});
  if (!state_->thread_started) {
    state_->thread_started = true;
    std::thread(run, state_).detach();
  }
  state_->wake.notify_one();
}

std::vector<Resolution> Resolver::take_results() {
  std::lock_guard lock(state_->mutex);
  std::vector<Resolution> out;
  out.swap(state_->results);
  return out;
}

std::string format_address(const ResolvedAddress& a) {
  char host[INET6_ADDRSTRLEN] = {};
  if (a.address.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(a.address);
    inet_ntop(AF_INET6, &v6.sin6_addr, host, sizeof host);
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(v6.sin6_port));
  }
  const auto& v4 = reinterpret_cast<const sockaddr_in&>(a.address);
  inet_ntop(AF_INET, &v4.sin_addr, host, sizeof host);
  return std::string(host) + ":" + std::to_string(ntohs(v4.sin_port));
}

}  // namespace wsgate::server

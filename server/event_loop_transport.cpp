// The event loop's side of the transport: choosing it, and driving the
// Redis transport's two TCP links on the loop's own ring (hiredis is only
// its codec; there is no other thread and no blocking socket call).
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>

#include "clock.hpp"
#include "event_loop.hpp"
#include "log.hpp"
#include "shm_bus.hpp"
#include "transport_options.hpp"
#include "user_data.hpp"

namespace wsgate::server {

namespace {
// shm has no file descriptor to wake the loop: it is polled this often.
constexpr uint64_t shm_poll_interval_ms = 1;
}  // namespace

std::unique_ptr<Transport> EventLoop::make_transport() {
  if (options_.transport == "redis") {
    RedisOptions o;
    const size_t colon = options_.redis.rfind(':');
    o.host = options_.redis.substr(0, colon);
    o.port = uint16_t(std::stoul(options_.redis.substr(colon + 1)));
    o.password = options_.redis_password;
    o.prefix = options_.redis_prefix;
    o.node_id = options_.node_id;
    o.presence_ttl_ms = options_.presence_ttl_ms;
    // Consistent with max_message_bytes (options.cpp checked it).
    o.max_output_bytes = options_.buffers.redis_output_max_bytes;
    o.max_payload_bytes = options_.buffers.redis_payload_max_bytes;
    o.max_inbound_bytes = options_.buffers.redis_inbound_max_bytes;
    auto t = std::make_unique<RedisTransport>(o, static_cast<RedisIo&>(*this));
    redis_ = t.get();
    return t;
  }
  if (options_.transport == "shm") {
    // A segment we may not use (another user's, a mode other than 0600, all
    // slots live) ends the start-up with its reason, not an abort: start()
    // returns it.
    try {
      auto t = std::make_unique<ShmTransport>(options_.shm_name, options_.node_id, shm_bus_options_for(options_),
                                              monotonic_ms());
      shm_ = t.get();
      transport_polls_ = true;
      return t;
    } catch (const std::exception& e) {
      transport_error_ = e.what();
      return nullptr;
    }
  }
  local_bus_ = std::make_unique<LocalBus>(local_bus_options_for(options_));
  return std::make_unique<LocalTransport>(*local_bus_, options_.node_id);
}

// The shm bus's counters: a full presence table refuses entries (bounded)
// and says so here, not silently.
std::string EventLoop::render_shm_metrics(const std::string& label) const {
  if (!shm_) return {};
  const ShmTransportCounters& c = shm_->counters();
  std::string out;
  auto add = [&](const char* name, const char* type, const char* help, uint64_t value) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + label +
           std::to_string(value) + "\n";
  };
  add("wsgate_shm_presence_refused_total", "counter",
      "Presence entries of this node not written: the segment's presence table was full (or the user id too long).",
      c.presence_refused);
  add("wsgate_shm_presence_max_entries", "gauge", "Capacity of the segment's presence table ((user, node) pairs).",
      shm_->max_presence_entries());
  add("wsgate_shm_subscriptions_refused_total", "counter", "Subscriptions refused past the per-node maximum.",
      c.subscriptions_refused);
  add("wsgate_shm_backpressure_total", "counter", "Publishes refused because a subscriber's ring was full.",
      c.backpressure);
  return out;
}

uint64_t EventLoop::next_transport_deadline_ms() const {
  if (redis_) return redis_->next_timer_ms();
  if (transport_polls_) return now_ms_ + shm_poll_interval_ms;
  return UINT64_MAX;
}

// Resolving the name blocks, once per (re)connect of a link: Redis is one
// address that rarely changes, and a Kubernetes service name must be looked
// up again after Redis moves.
void EventLoop::redis_connect(RedisLink link) {
  RedisLinkState& l = redis_links_[size_t(link)];
  const RedisOptions& o = redis_->options();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(o.port);
  if (const int r = getaddrinfo(o.host.c_str(), port.c_str(), &hints, &found); r != 0 || !found) {
    log_line("wsgate redis: cannot resolve %s: %s", o.host.c_str(), gai_strerror(r));
    redis_->on_disconnected(link, now_ms_);
    return;
  }
  l.fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l.fd < 0) {
    freeaddrinfo(found);
    redis_->on_disconnected(link, now_ms_);
    return;
  }
  ++l.generation;
  l.closing = false;
  // The kernel reads the address when the connect runs: it lives in the link.
  std::memcpy(&l.address, found->ai_addr, found->ai_addrlen);
  const socklen_t addrlen = found->ai_addrlen;
  freeaddrinfo(found);
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_connect(sqe, l.fd, reinterpret_cast<sockaddr*>(&l.address), addrlen);
  io_uring_sqe_set_data64(sqe, pack_user_data(Op::redis_connect, uint32_t(link), l.generation));
}

void EventLoop::redis_want_write(RedisLink) {}  // flush_redis looks every iteration

void EventLoop::redis_close(RedisLink link) { fail_redis_link(link); }

// Cancel what is in flight and close; the transport hears of it when the
// close completes, so no completion of this connection arrives after.
void EventLoop::fail_redis_link(RedisLink link) {
  RedisLinkState& l = redis_links_[size_t(link)];
  if (l.fd < 0 || l.closing) return;
  l.closing = true;
  io_uring_sqe* cancel = get_sqe();
  io_uring_prep_cancel_fd(cancel, l.fd, IORING_ASYNC_CANCEL_ALL);
  cancel->flags |= IOSQE_IO_HARDLINK;
  io_uring_sqe_set_data64(cancel, pack_user_data(Op::cancel, 0, 0));
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_close(sqe, l.fd);
  io_uring_sqe_set_data64(sqe, pack_user_data(Op::redis_close, uint32_t(link), l.generation));
}

void EventLoop::arm_redis_recv(RedisLink link) {
  RedisLinkState& l = redis_links_[size_t(link)];
  if (l.recv_armed || l.closing || l.fd < 0) return;
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_recv_multishot(sqe, l.fd, nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = buffers_->group();
  io_uring_sqe_set_data64(sqe, pack_user_data(Op::redis_recv, uint32_t(link), l.generation));
  l.recv_armed = true;
}

void EventLoop::on_redis_completion(Op op, RedisLink link, const io_uring_cqe& cqe) {
  RedisLinkState& l = redis_links_[size_t(link)];
  const uint32_t generation = unpack_user_data(cqe.user_data).generation;
  const bool has_buffer = cqe.flags & IORING_CQE_F_BUFFER;
  const auto buffer_id = uint16_t(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
  if (generation != l.generation) {  // an earlier connection of this link
    if (has_buffer) buffers_->give_back(buffer_id);
    return;
  }
  switch (op) {
    case Op::redis_connect:
      if (cqe.res < 0) {
        if (!l.closing) log_line("wsgate redis: connect to %s: %s", options_.redis.c_str(), std::strerror(-cqe.res));
        return fail_redis_link(link);
      }
      set_no_delay(l.fd);
      l.connected = true;
      redis_->on_connected(link, now_ms_);
      arm_redis_recv(link);
      return;
    case Op::redis_recv:
      if (!(cqe.flags & IORING_CQE_F_MORE)) l.recv_armed = false;
      if (cqe.res > 0) {
        if (!l.closing) redis_->on_data(link, reinterpret_cast<const char*>(buffers_->buffer(buffer_id)), size_t(cqe.res), now_ms_);
        buffers_->give_back(buffer_id);
        arm_redis_recv(link);
        return;
      }
      if (has_buffer) buffers_->give_back(buffer_id);
      if (cqe.res == -ENOBUFS) {
        ++recv_buffers_exhausted_total_;
        l.recv_armed = false;
        arm_redis_recv(link);  // at once: Redis replies are few, buffers free up fast
        return;
      }
      if (cqe.res == 0 || cqe.res != -ECANCELED) {
        if (!l.closing) log_line("wsgate redis: %s link lost", link == RedisLink::command ? "command" : "subscriber");
        fail_redis_link(link);
      }
      return;
    case Op::redis_send:
      l.send_in_flight = false;
      if (cqe.res < 0) return fail_redis_link(link);
      l.sent += size_t(cqe.res);
      if (l.sent == l.sending.size()) {
        l.sending.clear();
        l.sent = 0;
      }
      return;
    case Op::redis_close:
      l.fd = -1;
      l.connected = false;
      l.closing = false;
      l.recv_armed = false;
      l.send_in_flight = false;
      l.sending.clear();
      l.sent = 0;
      redis_->on_disconnected(link, now_ms_);
      return;
    default:
      return;
  }
}

// Once per iteration, like the connections' writes: one send per link with
// everything the transport has formatted since.
void EventLoop::flush_redis() {
  if (!redis_) return;
  for (size_t i = 0; i < 2; ++i) {
    const RedisLink link = RedisLink(i);
    RedisLinkState& l = redis_links_[i];
    if (l.fd < 0 || !l.connected || l.closing || l.send_in_flight) continue;
    if (l.sending.empty()) {
      const std::string_view out = redis_->output(link);
      if (out.empty()) continue;
      // The transport may append (and reallocate) while the kernel reads:
      // the send works on its own copy.
      l.sending.assign(out);
      redis_->consume_output(link, out.size());
      l.sent = 0;
    }
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_send(sqe, l.fd, l.sending.data() + l.sent, l.sending.size() - l.sent, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, pack_user_data(Op::redis_send, uint32_t(link), l.generation));
    l.send_in_flight = true;
  }
}

}  // namespace wsgate::server

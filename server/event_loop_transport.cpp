// The event loop's side of the transport: choosing it, and driving the
// Redis transport's two TCP links on the loop's own ring (hiredis is only
// its codec; no blocking socket call). Host names are looked up on the
// resolver's thread (resolver.hpp), every address in turn is tried.
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
    o.host = options_.redis_host;  // validated by parse_options
    o.port = options_.redis_port;
    o.password = options_.redis_password;
    o.prefix = options_.redis_prefix;
    o.node_id = options_.node_id;
    o.presence_ttl_ms = options_.presence_ttl_ms;
    o.timeout_ms = options_.redis_timeout_ms;
    // The lookup and every address it returned, each with its share.
    o.connect_timeout_ms = 2 * options_.redis_timeout_ms;
    // Consistent with max_message_bytes (options.cpp checked it).
    o.max_output_bytes = options_.buffers.redis_output_max_bytes;
    o.max_payload_bytes = options_.buffers.redis_payload_max_bytes;
    o.max_inbound_bytes = options_.buffers.redis_inbound_max_bytes;
    auto t = std::make_unique<RedisTransport>(o, static_cast<RedisIo&>(*this));
    redis_ = t.get();
    resolver_ = std::make_unique<Resolver>();
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
void EventLoop::render_shm_metrics(PrometheusWriter& w) const {
  if (!shm_) return;
  const ShmTransportCounters& c = shm_->counters();
  w.metric("wsgate_shm_presence_refused_total", "counter",
           "Presence entries of this node not written: the segment's presence table was full (or the user id too "
           "long).",
           c.presence_refused);
  w.metric("wsgate_shm_presence_max_entries", "gauge", "Capacity of the segment's presence table ((user, node) pairs).",
           shm_->max_presence_entries());
  w.metric("wsgate_shm_subscriptions_refused_total", "counter", "Subscriptions refused past the per-node maximum.",
           c.subscriptions_refused);
  w.metric("wsgate_shm_backpressure_total", "counter", "Publishes refused because a subscriber's ring was full.",
           c.backpressure);
}

uint64_t EventLoop::next_transport_deadline_ms() const {
  if (redis_) return redis_->next_timer_ms();
  if (transport_polls_) return now_ms_ + shm_poll_interval_ms;
  return UINT64_MAX;
}

// The name is looked up again at every (re)connect of a link (a Kubernetes
// service may have moved), on the resolver's thread: the loop goes on
// serving meanwhile and hears of the answer in on_resolved.
void EventLoop::redis_connect(RedisLink link) {
  RedisLinkState& l = redis_links_[size_t(link)];
  ++l.generation;
  l.closing = false;
  l.resolving = true;
  l.addresses.clear();
  l.next_address = 0;
  l.last_error.clear();
  const RedisOptions& o = redis_->options();
  resolver_->request(uint32_t(link), (uint64_t(link) << 32) | l.generation, o.host, o.port);
  arm_resolver_read();
}

void EventLoop::arm_resolver_read() {
  if (resolver_read_armed_) return;
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_read(sqe, resolver_->event_fd(), &resolver_counter_, sizeof resolver_counter_, 0);
  io_uring_sqe_set_data64(sqe, pack_user_data(Op::redis_resolved, 0, 0));
  resolver_read_armed_ = true;
}

void EventLoop::on_resolved(const io_uring_cqe&) {
  resolver_read_armed_ = false;
  bool waiting = false;
  for (Resolution& r : resolver_->take_results()) {
    const auto link = RedisLink(r.tag >> 32);
    RedisLinkState& l = redis_links_[size_t(link)];
    if (!l.resolving || uint32_t(r.tag) != l.generation) continue;  // given up on meanwhile
    l.resolving = false;
    if (r.addresses.empty()) {
      ++redis_connect_failures_total_;
      log_redis_connect_failure("wsgate redis: cannot resolve " + options_.redis_host + ": " + r.error);
      redis_->on_disconnected(link, now_ms_);
      continue;
    }
    l.addresses = std::move(r.addresses);
    connect_next_address(link);
  }
  for (const RedisLinkState& l : redis_links_) waiting = waiting || l.resolving;
  if (waiting) arm_resolver_read();
}

namespace {

// What the kernel can see of a dead Redis: no ACK for what we sent
// (TCP_USER_TIMEOUT), no answer to keepalive probes on an idle link. The
// transport's PING covers the rest (a peer that ACKs but never answers).
void set_redis_socket_options(int fd, uint32_t timeout_ms) {
  const int one = 1;
  const int probe_s = int(std::max<uint32_t>(1, timeout_ms / 3000));
  const int probes = 2;
  const unsigned user_timeout = timeout_ms;
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &probe_s, sizeof probe_s);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &probe_s, sizeof probe_s);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
  setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof user_timeout);
}

}  // namespace

// Tries the addresses left in turn, each bounded by a linked timeout (an
// equal share of the Redis timeout, so a blackholed first address does not
// use up the attempt); answers on_disconnected once none is left.
void EventLoop::connect_next_address(RedisLink link) {
  RedisLinkState& l = redis_links_[size_t(link)];
  while (l.next_address < l.addresses.size()) {
    const ResolvedAddress& a = l.addresses[l.next_address++];
    l.fd = socket(a.address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l.fd < 0) {
      l.last_error = format_address(a) + ": " + std::strerror(errno);
      continue;
    }
    set_redis_socket_options(l.fd, options_.redis_timeout_ms);
    const uint64_t share_ms = std::max<uint64_t>(100, options_.redis_timeout_ms / l.addresses.size());
    l.connect_timeout.tv_sec = int64_t(share_ms / 1000);
    l.connect_timeout.tv_nsec = int64_t(share_ms % 1000) * 1000000;
    // The connect and its timeout go to the kernel in one submission.
    if (io_uring_sq_space_left(&ring_) < 2) submit_now();
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_connect(sqe, l.fd, reinterpret_cast<const sockaddr*>(&a.address), a.length);
    sqe->flags |= IOSQE_IO_LINK;
    io_uring_sqe_set_data64(sqe, pack_user_data(Op::redis_connect, uint32_t(link), l.generation));
    io_uring_sqe* timeout = get_sqe();
    io_uring_prep_link_timeout(timeout, &l.connect_timeout, 0);
    io_uring_sqe_set_data64(timeout, pack_user_data(Op::cancel, 0, 0));
    return;
  }
  ++redis_connect_failures_total_;
  log_redis_connect_failure("wsgate redis: cannot connect to " + options_.redis_address() + " (" +
                            std::to_string(l.addresses.size()) + " address" + (l.addresses.size() == 1 ? "" : "es") +
                            " tried; last: " + l.last_error + ")");
  redis_->on_disconnected(link, now_ms_);
}

// The same failure every backoff interval is one line a minute, not one
// per attempt.
void EventLoop::log_redis_connect_failure(const std::string& line) {
  if (line == last_redis_connect_log_ && now_ms_ - last_redis_connect_log_ms_ < 60000) return;
  last_redis_connect_log_ = line;
  last_redis_connect_log_ms_ = now_ms_;
  log_line("%s", line.c_str());
}

void EventLoop::redis_report_error(std::string_view line) {
  log_line("wsgate redis: %.*s", int(line.size()), line.data());
}

void EventLoop::render_redis_metrics(PrometheusWriter& w) const {
  if (!redis_) return;
  const RedisStats& st = redis_->stats();
  w.metric("wsgate_redis_connects_total", "counter", "Redis TCP connections established (both links).", st.connects);
  w.metric("wsgate_redis_connect_failures_total", "counter",
           "Redis connect attempts that failed (the name did not resolve, or every address refused or timed out); "
           "the log repeats the same failure at most once a minute.",
           redis_connect_failures_total_);
  w.metric("wsgate_redis_disconnects_total", "counter", "Ready Redis links lost (closed, reset or timed out).",
           st.disconnects);
  w.metric("wsgate_redis_link_timeouts_total", "counter",
           "Redis links dropped because Redis answered nothing for --redis-timeout-ms.", st.link_timeouts);
  w.metric("wsgate_redis_auth_failures_total", "counter", "Redis refused the password (AUTH).", st.auth_failures);
  static constexpr const char* causes[redis_error_causes] = {"auth",    "handshake",    "subscribe",
                                                              "command", "link_timeout", "protocol"};
  w.header("wsgate_redis_errors_total", "counter", "Redis errors by cause (each logged at most once a minute).");
  for (size_t i = 0; i < redis_error_causes; ++i)
    w.sample("wsgate_redis_errors_total", st.errors_by_cause[i], "cause", causes[i]);
  w.metric("wsgate_redis_presence_unwritten", "gauge",
           "Users whose presence waits for room on the Redis command link.", redis_->presence_unwritten());
}

void EventLoop::redis_want_write(RedisLink) {}  // flush_redis looks every iteration

void EventLoop::redis_close(RedisLink link) { fail_redis_link(link); }

// Cancel what is in flight and close; the transport hears of it when the
// close completes, so no completion of this connection arrives after.
// Without a socket (still resolving) there is nothing to close: the
// lookup's answer is dropped and the transport hears at the next flush,
// never from inside its own call.
void EventLoop::fail_redis_link(RedisLink link) {
  RedisLinkState& l = redis_links_[size_t(link)];
  if (l.closing || l.report_down) return;
  if (l.fd < 0) {
    ++l.generation;
    l.resolving = false;
    l.report_down = true;
    return;
  }
  l.closing = true;
  if (io_uring_sq_space_left(&ring_) < 2) submit_now();
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
      if (cqe.res < 0 && !l.closing) {
        // Refused, unreachable or past its share of the timeout: the next
        // address, if any. This socket never connected: closing it cannot block.
        l.last_error = format_address(l.addresses[l.next_address - 1]) + ": " +
                       (cqe.res == -ECANCELED ? "timed out" : std::strerror(-cqe.res));
        close(l.fd);
        l.fd = -1;
        ++l.generation;  // nothing of this socket may be taken for the next one's
        return connect_next_address(link);
      }
      if (cqe.res < 0) return;  // closing: the close's completion tells the transport
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
    if (l.report_down) {
      l.report_down = false;
      redis_->on_disconnected(link, now_ms_);
      continue;
    }
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

#include "event_loop.hpp"

#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "clock.hpp"
#include "driver_contract.hpp"
#include "log.hpp"
#include "user_data.hpp"

namespace wsgate::server {
namespace {

// The queue and receive-pool sizes are BufferLimits (limits.hpp, flags).
constexpr uint16_t recv_buffer_group = 0;
constexpr uint64_t max_wait_ms = 1000;
constexpr uint64_t accept_retry_ms = 100;
// After the shutdown timeout, sockets are closed without a handshake; this
// bounds the wait for the kernel to confirm.
constexpr uint64_t shutdown_grace_ms = 2000;
constexpr uint32_t no_socket = UINT32_MAX;
// A full submission queue the kernel will not take (its completion queue
// backed up): completions are moved aside and it is tried again, waiting at
// most this long for a completion between tries, this many times.
constexpr int sqe_attempts_max = 1000;
constexpr unsigned sqe_retry_wait_us = 1000;

uint32_t socket_capacity_for(const Limits& l) {
  // Room beyond the connection cap for the pending handshakes (bounded on
  // their own) and for sockets the kernel is still closing.
  const uint64_t headroom = std::max<uint64_t>(1024, l.max_connections / 10);
  return uint32_t(std::min<uint64_t>(uint64_t(l.max_connections) + l.max_pending_handshakes + headroom,
                                     max_slot_index));
}

uint64_t new_incarnation() {
  uint64_t v = 0;
  if (getrandom(&v, sizeof v, GRND_NONBLOCK) != sizeof v) v = monotonic_ms() ^ (uint64_t(getpid()) << 32);
  return v;
}

GatewayConfig gateway_config(const ServerOptions& o) {
  GatewayConfig c;
  c.node_id = o.node_id;
  c.incarnation = new_incarnation();
  c.limits = o.limits;
  return c;
}

const char* signal_name(uint32_t signo) {
  return signo == SIGTERM ? "SIGTERM" : signo == SIGINT ? "SIGINT" : "signal";
}

}  // namespace

EventLoop::EventLoop(const ServerOptions& options, unsigned ring_setup_flags)
    : options_(options),
      setup_flags_(ring_setup_flags),
      transport_(make_transport()),
      gateway_(gateway_config(options), transport_.get()),
      sockets_(socket_capacity_for(options.limits)) {}

EventLoop::~EventLoop() {
  buffers_.reset();  // unregisters from the ring, so before the ring goes
  if (ring_up_) io_uring_queue_exit(&ring_);
  if (listener_.fd >= 0) close(listener_.fd);
  if (signal_fd_ >= 0) close(signal_fd_);
}

std::string EventLoop::start() {
  if (!transport_error_.empty()) return transport_error_;
  listener_ = open_listener(options_.host, options_.port);
  if (listener_.fd < 0) return listener_.error;

  io_uring_params p{};
  p.flags = setup_flags_ | IORING_SETUP_CQSIZE;
  p.cq_entries = options_.buffers.uring_cq_entries;
  if (int r = io_uring_queue_init_params(options_.buffers.uring_sq_entries, &ring_, &p); r < 0)
    return std::string("io_uring_queue_init failed: ") + std::strerror(-r);
  ring_up_ = true;

  // Shared by all connections: a buffer is held only from the kernel's write
  // into it to the end of the completion's handling.
  buffers_ = std::make_unique<BufferRing>(ring_, recv_buffer_group, options_.buffers.recv_pool_buffers,
                                          options_.buffers.recv_buffer_bytes);
  if (std::string e = buffers_->register_with_kernel(); !e.empty()) return e;

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  if (sigprocmask(SIG_BLOCK, &set, nullptr) != 0) return std::string("sigprocmask: ") + std::strerror(errno);
  signal_fd_ = signalfd(-1, &set, SFD_CLOEXEC);
  if (signal_fd_ < 0) return std::string("signalfd: ") + std::strerror(errno);
  return {};
}

// --- the ring ----------------------------------------------------------------

io_uring_sqe* EventLoop::get_sqe() {
  if (io_uring_sqe* sqe = io_uring_get_sqe(&ring_)) return sqe;
  // Full: hand what is prepared to the kernel, which frees the queue.
  ++sq_full_total_;
  for (int attempt = 0; attempt < sqe_attempts_max; ++attempt) {
    submit_now();
    if (io_uring_sqe* sqe = io_uring_get_sqe(&ring_)) return sqe;
    // The kernel took nothing (EBUSY or EAGAIN: its completion queue is
    // backed up). Completions are not handled here (we may be in the middle
    // of handling one): they are moved aside, which gives the kernel room,
    // and handled first by the next process_completions().
    ++sq_busy_total_;
    if (attempt == 0) log_line("wsgate warning: io_uring refused a submission; making room and retrying");
    defer_completions();
    if (attempt > 0) {
      io_uring_cqe* cqe = nullptr;
      __kernel_timespec ts{.tv_sec = 0, .tv_nsec = int64_t(sqe_retry_wait_us) * 1000};
      io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
    }
  }
  // A second of refusals with the completion queue kept empty is not load
  // but a broken kernel interface: stopping beats serving on lost state.
  log_line("wsgate fatal: io_uring refused every submission for %d attempts", sqe_attempts_max);
  std::abort();
}

void EventLoop::defer_completions() {
  io_uring_cqe* cqe;
  unsigned head;
  unsigned seen = 0;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    deferred_cqes_.push_back(*cqe);
    ++seen;
  }
  io_uring_cq_advance(&ring_, seen);
}

void EventLoop::submit_now() {
  const int r = io_uring_submit(&ring_);
  if (r < 0 && r != -EINTR) log_line("wsgate error: io_uring_submit: %s", std::strerror(-r));
  // Submitted SQEs are consumed (IORING_FEAT_SUBMIT_STABLE): their msghdrs
  // and iovecs may be reused.
  if (io_uring_sq_ready(&ring_) == 0) scratch_used_ = 0;
}

uint64_t EventLoop::next_deadline_ms() const {
  if (!deferred_cqes_.empty()) return now_ms_;  // completions wait in our hands
  uint64_t at = now_ms_ + max_wait_ms;
  if (!handshake_deadlines_.empty()) at = std::min(at, handshake_deadlines_.front().at_ms);
  if (!close_deadlines_.empty()) at = std::min(at, close_deadlines_.front().at_ms);
  if (gateway_.connection_count() > 0 || gateway_.next_tick_ms() > 0) at = std::min(at, gateway_.next_tick_ms());
  if (!accept_armed_ && listener_.fd >= 0 && !stopping_) at = std::min(at, accept_retry_at_ms_);
  if (stopping_) at = std::min(at, stopped_at_ms_ + shutdown_grace_ms);
  else if (shutting_down_) at = std::min(at, shutdown_deadline_ms_);
  return std::min(at, next_transport_deadline_ms());
}

void EventLoop::wait_for_completions() {
  const uint64_t at = next_deadline_ms();
  const uint64_t wait_ms = at > now_ms_ ? at - now_ms_ : 0;
  io_uring_cqe* cqe = nullptr;
  int r;
  if (wait_ms == 0) {
    r = io_uring_submit_and_get_events(&ring_);
  } else {
    __kernel_timespec ts{.tv_sec = int64_t(wait_ms / 1000), .tv_nsec = int64_t(wait_ms % 1000) * 1000000};
    r = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
  }
  if (r < 0 && r != -ETIME && r != -EINTR && r != -EAGAIN && r != -EBUSY)
    log_line("wsgate error: io_uring wait: %s", std::strerror(-r));
  if (io_uring_sq_ready(&ring_) == 0) scratch_used_ = 0;
}

// Each completion is taken off the ring before it is handled: handling it
// may submit, and a submission may have to move the rest aside
// (defer_completions). Bounded by what is there when it starts.
void EventLoop::process_completions() {
  size_t budget = deferred_cqes_.size() + io_uring_cq_ready(&ring_);
  while (budget-- > 0) {
    io_uring_cqe cqe;
    if (!deferred_cqes_.empty()) {
      cqe = deferred_cqes_.front();
      deferred_cqes_.pop_front();
    } else {
      io_uring_cqe* next = nullptr;
      if (io_uring_peek_cqe(&ring_, &next) != 0 || next == nullptr) break;
      cqe = *next;
      io_uring_cqe_seen(&ring_, next);
    }
    handle_completion(cqe);
  }
}

void EventLoop::handle_completion(const io_uring_cqe& cqe) {
  const UserData ud = unpack_user_data(cqe.user_data);
  switch (ud.op) {
    case Op::accept: return on_accept(cqe);
    case Op::signal: return on_signal(cqe);
    case Op::listener_close:
      listener_closed_ = true;
      return;
    case Op::cancel: return;  // the cancelled requests report for themselves
    case Op::redis_connect:
    case Op::redis_recv:
    case Op::redis_send:
    case Op::redis_close:
      return on_redis_completion(ud.op, RedisLink(ud.index), cqe);
    case Op::redis_resolved:
      return on_resolved(cqe);
    default: break;
  }
  Socket* s = sockets_.find(ud.index, ud.generation);
  if (!s) {
    // Stale: the slot moved on. Nothing to act on, but a buffer is a buffer.
    if (cqe.flags & IORING_CQE_F_BUFFER) buffers_->give_back(uint16_t(cqe.flags >> IORING_CQE_BUFFER_SHIFT));
    return;
  }
  switch (ud.op) {
    case Op::recv: return on_recv(*s, ud.index, cqe);
    case Op::send: return on_send(*s, ud.index, cqe);
    case Op::close: return on_close(*s, ud.index, cqe);
    default:
      log_line("wsgate fatal: completion with unknown op %u", unsigned(ud.op));
      std::abort();
  }
}

// --- submissions -------------------------------------------------------------

void EventLoop::arm_accept() {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_multishot_accept(sqe, listener_.fd, nullptr, nullptr, SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, pack_user_data(Op::accept, 0, 0));
  accept_armed_ = true;
}

void EventLoop::arm_signal_read() {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_read(sqe, signal_fd_, &siginfo_, sizeof siginfo_, 0);
  io_uring_sqe_set_data64(sqe, pack_user_data(Op::signal, 0, 0));
}

void EventLoop::arm_recv(Socket& s, uint32_t index) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_recv_multishot(sqe, s.fd, nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = buffers_->group();
  io_uring_sqe_set_data64(sqe, pack_user_data(Op::recv, index, s.generation));
  s.recv_armed = true;
}

// One sendmsg with everything the connection may write now: the rest of an
// HTTP response (the 101 goes before any frame), then the outbox, cut after
// our close frame.
void EventLoop::submit_send(Socket& s, uint32_t index) {
  iovec iov[max_iov];
  size_t count = 0;
  uint32_t http_part = 0;
  if (s.http && s.http->responding && s.http->response_sent < s.http->response.size()) {
    HttpState& h = *s.http;
    iov[count++] = {h.response.data() + h.response_sent, h.response.size() - h.response_sent};
    http_part = uint32_t(h.response.size() - h.response_sent);
  }
  if (s.ws && count < max_iov) {
    ByteRange ranges[max_iov];
    const size_t n = gather_writable(gateway_, *s.ws, s.conn, std::span<ByteRange>(ranges, max_iov - count));
    for (size_t i = 0; i < n; ++i) iov[count++] = {const_cast<uint8_t*>(ranges[i].data), ranges[i].size};
  }
  if (count == 0) return;

  io_uring_sqe* sqe = get_sqe();  // may submit, which frees the scratch
  if (scratch_used_ == scratch_.size()) scratch_.push_back(std::make_unique<SendScratch>());
  SendScratch& sc = *scratch_[scratch_used_++];
  std::memcpy(sc.iov, iov, count * sizeof(iovec));
  sc.msg = {};
  sc.msg.msg_iov = sc.iov;
  sc.msg.msg_iovlen = count;
  io_uring_prep_sendmsg(sqe, s.fd, &sc.msg, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, pack_user_data(Op::send, index, s.generation));
  s.send_in_flight = true;
  s.send_http_bytes = http_part;
}

// --- completions ---------------------------------------------------------------

void EventLoop::on_accept(const io_uring_cqe& cqe) {
  if (!(cqe.flags & IORING_CQE_F_MORE)) accept_armed_ = false;
  if (cqe.res < 0) {
    if (cqe.res == -ECANCELED) return;
    if (now_ms_ - last_accept_error_log_ms_ >= 1000) {
      last_accept_error_log_ms_ = now_ms_;
      log_line("wsgate error: accept: %s (sockets in use %u, capacity %u)", std::strerror(-cqe.res),
               sockets_.in_use(), sockets_.capacity());
    }
    accept_retry_at_ms_ = now_ms_ + accept_retry_ms;
    return;
  }
  const int fd = cqe.res;
  if (stopping_) {
    close(fd);
    return;
  }
  if (http_sockets_ >= options_.limits.max_pending_handshakes) evict_oldest_handshake();
  uint32_t index;
  Socket* s = sockets_.allocate(index);
  if (!s) {
    // Every slot is taken (connections plus handshakes in progress): refuse
    // without reading, the cheapest answer under a storm.
    close(fd);
    gateway_.metrics().reject(RejectReason::too_many_connections);
    return;
  }
  set_no_delay(fd);
  s->fd = fd;
  ++http_sockets_;
  handshake_deadlines_.push_back({now_ms_ + options_.limits.handshake_timeout_ms, {index, s->generation}});
  arm_recv(*s, index);
}

void EventLoop::on_recv(Socket& s, uint32_t index, const io_uring_cqe& cqe) {
  if (!(cqe.flags & IORING_CQE_F_MORE)) s.recv_armed = false;
  if (cqe.res > 0) {
    const auto id = uint16_t(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
    const auto n = size_t(cqe.res);
    if (!s.peer_eof) {
      gateway_.metrics().bytes_in_total += n;
      if (s.phase == Phase::http) {
        handle_http_bytes(s, index, buffers_->buffer(id), n);
      } else if (s.phase == Phase::websocket && s.ws) {
        s.ws->feed(buffers_->buffer(id), n, now_ms_);
        settle_session(s, index);
      }
    }
    buffers_->give_back(id);  // consumed: copied into wslay or the head buffer
    if (!s.recv_armed) want_rearm(s, index);
  } else {
    if (cqe.flags & IORING_CQE_F_BUFFER) buffers_->give_back(uint16_t(cqe.flags >> IORING_CQE_BUFFER_SHIFT));
    if (cqe.res == 0) {
      on_peer_eof(s, index);
    } else if (cqe.res == -ENOBUFS) {
      // Every buffer was taken when bytes arrived; they wait in the socket.
      ++recv_buffers_exhausted_total_;
      want_rearm(s, index);
    } else if (cqe.res != -ECANCELED) {
      teardown(s, index);  // reset by peer and the like
    }
  }
  maybe_release(s, index);
}

void EventLoop::on_send(Socket& s, uint32_t index, const io_uring_cqe& cqe) {
  s.send_in_flight = false;
  const uint32_t http_part = std::exchange(s.send_http_bytes, 0);
  if (s.phase == Phase::closing) return maybe_release(s, index);
  if (cqe.res < 0) {
    if (cqe.res == -EAGAIN || cqe.res == -EINTR) return mark_write_pending(s, index);
    return teardown(s, index);  // EPIPE, ECONNRESET: the peer is gone
  }
  size_t n = size_t(cqe.res);
  const size_t from_http = std::min<size_t>(n, http_part);
  if (from_http > 0) {
    s.http->response_sent += from_http;
    gateway_.metrics().bytes_out_total += from_http;
    n -= from_http;
  }
  if (s.ws) record_written(gateway_, *s.ws, s.conn, n);
  if (s.http && s.http->responding && s.http->response_sent == s.http->response.size()) {
    if (s.http->close_after_response) return teardown(s, index);
    s.http.reset();  // the 101 is out: the connection holds no HTTP state now
  }
  if (s.peer_eof && !s.ws) return teardown(s, index);
  settle_session(s, index);
  if (s.phase != Phase::closing && has_bytes_to_write(s)) mark_write_pending(s, index);
}

void EventLoop::on_close(Socket& s, uint32_t index, const io_uring_cqe&) {
  s.close_done = true;
  s.fd = -1;
  maybe_release(s, index);
}

void EventLoop::on_signal(const io_uring_cqe& cqe) {
  if (cqe.res == int(sizeof siginfo_)) begin_shutdown(siginfo_.ssi_signo);
  arm_signal_read();
}

// The peer shut its side. If we still owe it bytes that matter (our close
// frame, an HTTP response) they are written first; otherwise it is over.
void EventLoop::on_peer_eof(Socket& s, uint32_t index) {
  const bool owes_close = s.ws && s.ws->close_queued() && !s.ws->close_written();
  const bool owes_response = !s.ws && s.http && s.http->responding;
  if (s.phase != Phase::closing && (owes_close || owes_response)) {
    s.peer_eof = true;
    return;
  }
  teardown(s, index);
}

// --- per iteration --------------------------------------------------------------

void EventLoop::run_timers() {
  while (!handshake_deadlines_.empty() && handshake_deadlines_.front().at_ms <= now_ms_) {
    const SlotRef r = handshake_deadlines_.front().slot;
    handshake_deadlines_.pop_front();
    Socket* s = sockets_.find(r.index, r.generation);
    if (!s || s->phase != Phase::http) continue;
    // Slowloris: no complete request head in time. (A plain response the
    // client does not read is cut off by the same deadline, uncounted.)
    if (!(s->http && s->http->responding)) gateway_.metrics().reject(RejectReason::handshake_timeout);
    teardown(*s, r.index);
  }
  while (!close_deadlines_.empty() && close_deadlines_.front().at_ms <= now_ms_) {
    const SlotRef r = close_deadlines_.front().slot;
    close_deadlines_.pop_front();
    Socket* s = sockets_.find(r.index, r.generation);
    if (s && s->phase == Phase::websocket) teardown(*s, r.index);  // no close reply in time
  }
  if (gateway_.next_tick_ms() <= now_ms_) gateway_.handle_tick(now_ms_);
  if (!accept_armed_ && listener_.fd >= 0 && !stopping_ && now_ms_ >= accept_retry_at_ms_) arm_accept();
  follow_drain();
}

// The driver contract's round (session/driver_contract.hpp): closes start
// their handshake, dirty connections join the pending writes that
// flush_writes() submits.
void EventLoop::carry_out_closes() {
  struct Host final : SessionHost {
    EventLoop& loop;
    explicit Host(EventLoop& l) : loop(l) {}
    Socket* socket(ConnId id, uint32_t& index) {
      index = loop.socket_of(id);
      return index == no_socket ? nullptr : &loop.sockets_.at(index);
    }
    WsSession* session_of(ConnId id) override {
      uint32_t index;
      Socket* s = socket(id, index);
      return s && s->ws ? &*s->ws : nullptr;
    }
    void write(ConnId id, WsSession&) override {
      uint32_t index;
      if (Socket* s = socket(id, index)) loop.mark_write_pending(*s, index);
    }
    void settle(ConnId id, WsSession&) override {
      uint32_t index;
      if (Socket* s = socket(id, index)) loop.settle_session(*s, index);
    }
  } host(*this);
  run_flush_round(gateway_, host);
}

void EventLoop::flush_writes() {
  for (size_t i = 0; i < pending_writes_.size(); ++i) {
    const SlotRef r = pending_writes_[i];
    Socket* s = sockets_.find(r.index, r.generation);
    if (!s) continue;
    s->write_pending = false;
    if (s->phase == Phase::closing || s->send_in_flight) continue;
    submit_send(*s, r.index);
  }
  pending_writes_.clear();
}

void EventLoop::rearm_receives() {
  for (const SlotRef r : rearm_) {
    Socket* s = sockets_.find(r.index, r.generation);
    if (!s) continue;
    s->recv_wanted = false;
    if (s->recv_armed || s->peer_eof || s->phase == Phase::closing) continue;
    arm_recv(*s, r.index);
  }
  rearm_.clear();
}

// --- connection state ------------------------------------------------------------

// After anything happened to a WebSocket connection: start the close timer
// when our close frame is queued; close the socket when the handshake is
// over (or failed) and the close frame is written.
void EventLoop::settle_session(Socket& s, uint32_t index) {
  if (!s.ws || s.phase != Phase::websocket) return;
  const SettleDecision d = decide_settle(*s.ws, s.close_timer_set, s.peer_eof);
  if (d.start_close_timer) {
    s.close_timer_set = true;
    close_deadlines_.push_back({now_ms_ + options_.limits.close_timeout_ms, {index, s.generation}});
  }
  if (d.close_socket) teardown(s, index);
}

void EventLoop::mark_write_pending(Socket& s, uint32_t index) {
  if (s.write_pending || s.phase == Phase::closing) return;
  s.write_pending = true;
  pending_writes_.push_back({index, s.generation});
}

void EventLoop::want_rearm(Socket& s, uint32_t index) {
  if (s.recv_wanted || s.phase == Phase::closing) return;
  s.recv_wanted = true;
  rearm_.push_back({index, s.generation});
}

bool EventLoop::has_bytes_to_write(Socket& s) {
  if (s.http && s.http->responding && s.http->response_sent < s.http->response.size()) return true;
  if (!s.ws || !gateway_.is_open(s.conn)) return false;
  return s.ws->writable_bytes(gateway_.outbox(s.conn).queued_bytes()) > 0;
}

void EventLoop::teardown(Socket& s, uint32_t index) {
  if (s.phase == Phase::closing || s.phase == Phase::free) return;
  if (s.phase == Phase::http) --http_sockets_;
  s.phase = Phase::closing;
  // The session goes now (no more frames are parsed); the core connection
  // and any HTTP response stay until the kernel is done with the socket,
  // since a send in flight may still read their bytes.
  s.ws.reset();
  if (s.recv_armed || s.send_in_flight) {
    if (io_uring_sq_space_left(&ring_) < 2) submit_now();
    io_uring_sqe* cancel = get_sqe();
    io_uring_prep_cancel_fd(cancel, s.fd, IORING_ASYNC_CANCEL_ALL);
    // Hard link: the close runs after the cancel even if nothing was found.
    cancel->flags |= IOSQE_IO_HARDLINK;
    io_uring_sqe_set_data64(cancel, pack_user_data(Op::cancel, index, s.generation));
  }
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_close(sqe, s.fd);
  io_uring_sqe_set_data64(sqe, pack_user_data(Op::close, index, s.generation));
}

void EventLoop::maybe_release(Socket& s, uint32_t index) {
  if (s.phase != Phase::closing || !s.close_done || s.recv_armed || s.send_in_flight) return;
  if (s.conn.valid()) gateway_.handle_closed(s.conn);
  sockets_.release(index);
}

// The socket is found from the tag the core keeps for the connection: one
// table per side, no map between them. Both ends are checked: the core's id
// (stale once handle_closed ran) and the socket's generation (stale once
// the slot was released), and the socket must still hold that connection.
uint32_t EventLoop::socket_of(ConnId id) {
  const uint64_t tag = gateway_.driver_tag(id);
  if (tag == Gateway::no_driver_tag) return no_socket;
  const SlotRef r = slot_of_tag(tag);
  const Socket* s = sockets_.find(r.index, r.generation);
  return s && s->phase == Phase::websocket && s->conn == id ? r.index : no_socket;
}

// --- shutdown ------------------------------------------------------------------

void EventLoop::begin_shutdown(uint32_t signo) {
  if (shutting_down_) {
    log_line("wsgate shutdown: second %s: closing every socket now", signal_name(signo));
    if (!shutdown_forced_) force_close_all();
    stop_serving();
    return;
  }
  shutting_down_ = true;
  shutdown_deadline_ms_ = now_ms_ + options_.limits.shutdown_timeout_ms;
  log_line("wsgate shutdown: %s received; draining %zu connections (1001, at most %u/s); upgrades get 503, "
           "HTTP is still answered; exit when empty or in %u ms",
           signal_name(signo), gateway_.connection_count(), options_.limits.drain_max_closes_per_s,
           options_.limits.shutdown_timeout_ms);
  gateway_.handle_drain(now_ms_, shutdown_deadline_ms_);
}

// The core decides (the simulator asks it the same question).
void EventLoop::follow_drain() {
  if (!shutting_down_ || stopping_) return;
  switch (gateway_.drain_status(now_ms_)) {
    case DrainStatus::complete:
      log_line("wsgate shutdown: every connection closed; exiting");
      return stop_serving();
    case DrainStatus::overdue:
      log_line("wsgate shutdown: %u ms passed with %zu connections left", options_.limits.shutdown_timeout_ms,
               gateway_.connection_count());
      force_close_all();
      return stop_serving();
    case DrainStatus::none:
    case DrainStatus::in_progress:
      return;
  }
}

// No more accepts; requests not yet read will not be served. A response
// already being written may finish, within shutdown_grace_ms.
void EventLoop::stop_serving() {
  if (stopping_) return;
  stopping_ = true;
  stopped_at_ms_ = now_ms_;
  close_listener();
  for (uint32_t i = 0; i < sockets_.high_water(); ++i) {
    Socket& s = sockets_.at(i);
    if (s.phase == Phase::http && !(s.http && s.http->responding)) teardown(s, i);
  }
}

void EventLoop::close_listener() {
  if (listener_.fd < 0) return;
  if (accept_armed_) {
    io_uring_sqe* cancel = get_sqe();
    io_uring_prep_cancel_fd(cancel, listener_.fd, IORING_ASYNC_CANCEL_ALL);
    cancel->flags |= IOSQE_IO_HARDLINK;
    io_uring_sqe_set_data64(cancel, pack_user_data(Op::cancel, 0, 0));
  }
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_close(sqe, listener_.fd);
  io_uring_sqe_set_data64(sqe, pack_user_data(Op::listener_close, 0, 0));
  listener_.fd = -1;
  listener_closing_ = true;
}

void EventLoop::force_close_all() {
  shutdown_forced_ = true;
  size_t n = 0;
  for (uint32_t i = 0; i < sockets_.high_water(); ++i) {
    Socket& s = sockets_.at(i);
    if (s.phase == Phase::http || s.phase == Phase::websocket) {
      teardown(s, i);
      ++n;
    }
  }
  if (n > 0) log_line("wsgate shutdown: closed %zu sockets without a close handshake", n);
}

bool EventLoop::finished() const {
  if (!stopping_) return false;
  if (sockets_.in_use() == 0 && (listener_closed_ || !listener_closing_) && !accept_armed_) return true;
  // The kernel should have confirmed long ago; do not hang on it.
  return now_ms_ >= stopped_at_ms_ + shutdown_grace_ms;
}

// --- the loop --------------------------------------------------------------------

int EventLoop::run() {
  now_ms_ = monotonic_ms();
  arm_accept();
  arm_signal_read();
  while (!finished()) {
    wait_for_completions();
    now_ms_ = monotonic_ms();
    process_completions();
    run_timers();
    // Messages from other nodes go to the core's outboxes before the writes.
    transport_->poll(now_ms_);
    carry_out_closes();
    flush_writes();
    flush_redis();
    buffers_->publish();
    rearm_receives();
  }
  log_line("wsgate stopped: %u sockets still open at exit", sockets_.in_use());
  return 0;
}

}  // namespace wsgate::server

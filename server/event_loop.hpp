#pragma once
// One thread, one io_uring: the driver of the gateway core for real sockets.
//
// Each iteration:
//   1. submit what was prepared and wait for a completion or the earliest
//      deadline (core tick, handshake timeout, close timeout, shutdown);
//   2. read the clock once (now_ms for everything that follows);
//   3. handle every completion: accepts, received bytes (HTTP head or
//      WebSocket frames), finished sends, closes, the signalfd;
//   4. expire deadlines and tick the core;
//   5. carry out the closes the core asked for;
//   6. write: one sendmsg per connection that has bytes and no send in
//      flight (the core's dirty list plus our own pending list);
//   7. hand receive buffers back and re-arm stopped multishot receives.
//
// Completions are routed by an explicit user_data (user_data.hpp); socket
// slots live in a SocketTable; received bytes come from a provided-buffer
// ring, so an idle connection owns no receive buffer. A connection's state
// has one home per side: the socket holds the core's ConnId, and the core
// holds the socket's {index, generation} as its driver tag (socket_of), so
// there is no map between the two to keep in step.
#include <liburing.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/uio.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <sys/socket.h>

#include "buffer_ring.hpp"
#include "listener.hpp"
#include "options.hpp"
#include "redis_transport.hpp"
#include "resolver.hpp"
#include "socket_table.hpp"
#include "user_data.hpp"
#include "wsgate/gateway.hpp"
#include "wsgate/handshake.hpp"
#include "wsgate/prometheus_writer.hpp"
#include "local_transport.hpp"
#include "shm_bus.hpp"

namespace wsgate::server {

class EventLoop final : private RedisIo {
 public:
  EventLoop(const ServerOptions& options, unsigned ring_setup_flags);
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Binds the listener, sets up the ring, the receive buffers and the
  // signalfd (SIGTERM and SIGINT are blocked for the process from here on).
  // Returns an error line, or empty.
  std::string start();
  // "HOST:PORT" as bound.
  const std::string& listen_address() const { return listener_.address; }
  uint32_t socket_capacity() const { return sockets_.capacity(); }

  // Serves until SIGTERM/SIGINT and the shutdown are complete. Returns the
  // process exit code.
  int run();

 private:
  struct SlotRef {
    uint32_t index;
    uint32_t generation;
  };
  struct Deadline {
    uint64_t at_ms;
    SlotRef slot;
  };
  static constexpr size_t max_iov = 64;
  // The msghdr and iovecs of one sendmsg, valid until the next submit
  // (IORING_FEAT_SUBMIT_STABLE: the kernel has copied them by then).
  struct SendScratch {
    msghdr msg;
    iovec iov[max_iov];
  };

  // --- the ring -------------------------------------------------------------
  // Never fails under load: a full queue is submitted; if the kernel
  // refuses (EBUSY/EAGAIN: its completion queue is backed up), completions
  // are moved aside (deferred_cqes_) to make room, and it is tried again.
  io_uring_sqe* get_sqe();
  void submit_now();
  void defer_completions();
  void wait_for_completions();
  void process_completions();
  void handle_completion(const io_uring_cqe& cqe);
  uint64_t next_deadline_ms() const;

  // --- submissions ----------------------------------------------------------
  void arm_accept();
  void arm_signal_read();
  void arm_recv(Socket& s, uint32_t index);
  void submit_send(Socket& s, uint32_t index);

  // --- completions ----------------------------------------------------------
  void on_accept(const io_uring_cqe& cqe);
  void on_recv(Socket& s, uint32_t index, const io_uring_cqe& cqe);
  void on_send(Socket& s, uint32_t index, const io_uring_cqe& cqe);
  void on_close(Socket& s, uint32_t index, const io_uring_cqe& cqe);
  void on_signal(const io_uring_cqe& cqe);
  void on_peer_eof(Socket& s, uint32_t index);

  // --- HTTP phase (event_loop_http.cpp) -------------------------------------
  void handle_http_bytes(Socket& s, uint32_t index, const uint8_t* data, size_t n);
  // At --max-pending-handshakes, the oldest socket not yet upgraded is
  // closed to make room for the new one.
  void evict_oldest_handshake();
  void handle_request(Socket& s, uint32_t index, const RequestHead& head);
  void upgrade(Socket& s, uint32_t index, const RequestHead& head);
  std::string client_ip(const Socket& s, const RequestHead& head) const;
  void respond(Socket& s, uint32_t index, uint16_t status, std::string_view content_type,
               std::string_view body);
  std::string render_metrics() const;

  // --- the transport (event_loop_transport.cpp) -----------------------------
  std::unique_ptr<Transport> make_transport();
  uint64_t next_transport_deadline_ms() const;
  void render_shm_metrics(PrometheusWriter& w) const;
  // RedisIo: the Redis transport's two TCP links, on this ring.
  void redis_connect(RedisLink link) override;
  void redis_want_write(RedisLink link) override;
  void redis_close(RedisLink link) override;
  void redis_report_error(std::string_view line) override;
  void on_redis_completion(Op op, RedisLink link, const io_uring_cqe& cqe);
  void on_resolved(const io_uring_cqe& cqe);
  void arm_resolver_read();
  void connect_next_address(RedisLink link);
  void log_redis_connect_failure(const std::string& line);
  void render_redis_metrics(PrometheusWriter& w) const;
  void flush_redis();
  void fail_redis_link(RedisLink link);
  void arm_redis_recv(RedisLink link);
  struct RedisLinkState {
    int fd = -1;
    uint32_t generation = 0;  // bumped per connection: stale completions are dropped
    bool connected = false;
    bool recv_armed = false;
    bool send_in_flight = false;
    bool closing = false;
    bool resolving = false;     // a lookup for this generation is on the resolver
    bool report_down = false;   // closed without a socket: tell the transport next flush
    // Every address the name resolved to, tried in turn; the kernel reads
    // the one being connected to when the connect runs, so it lives here.
    std::vector<ResolvedAddress> addresses;
    size_t next_address = 0;
    std::string last_error;     // of the addresses tried so far
    __kernel_timespec connect_timeout{};  // read by the kernel at submit
    std::string sending;  // a stable copy of what the send in flight writes
    size_t sent = 0;
  };
  RedisLinkState redis_links_[2];
  std::unique_ptr<Resolver> resolver_;
  uint64_t resolver_counter_ = 0;  // the eventfd read lands here
  bool resolver_read_armed_ = false;
  uint64_t redis_connect_failures_total_ = 0;  // attempts that reached no address
  std::string last_redis_connect_log_;
  uint64_t last_redis_connect_log_ms_ = 0;

  // --- per iteration --------------------------------------------------------
  void run_timers();
  void carry_out_closes();
  void flush_writes();
  void rearm_receives();

  // --- connection state -----------------------------------------------------
  void settle_session(Socket& s, uint32_t index);
  void mark_write_pending(Socket& s, uint32_t index);
  void want_rearm(Socket& s, uint32_t index);
  bool has_bytes_to_write(Socket& s);
  // Closes the socket: cancel what is in flight, then close. The slot is
  // freed (and the core told) once every completion is in.
  void teardown(Socket& s, uint32_t index);
  void maybe_release(Socket& s, uint32_t index);
  // The socket of a core connection, or no_socket if either is gone.
  uint32_t socket_of(ConnId id);
  // A socket slot as the tag the core keeps per connection, and back.
  static uint64_t socket_tag(uint32_t index, uint32_t generation) { return uint64_t(generation) << 32 | index; }
  static SlotRef slot_of_tag(uint64_t tag) { return {uint32_t(tag), uint32_t(tag >> 32)}; }

  // --- shutdown -------------------------------------------------------------
  // SIGTERM/SIGINT starts the core's drain (Gateway::handle_drain): upgrades
  // get 503, HTTP is still answered, connections close with 1001 at
  // drain_max_closes_per_s. follow_drain() acts on Gateway::drain_status():
  // stop when empty, cut the rest at the shutdown deadline.
  void begin_shutdown(uint32_t signo);
  void follow_drain();
  void stop_serving();
  void close_listener();
  void force_close_all();
  bool finished() const;

  ServerOptions options_;
  unsigned setup_flags_;
  // Before gateway_, which holds a pointer to the transport.
  std::unique_ptr<LocalBus> local_bus_;
  RedisTransport* redis_ = nullptr;  // transport_, when it is Redis
  ShmTransport* shm_ = nullptr;      // transport_, when it is shm
  std::string transport_error_;      // the transport could not be set up
  bool transport_polls_ = false;     // shm: no fd to wake on, so poll often
  std::unique_ptr<Transport> transport_;
  Gateway gateway_;
  SocketTable sockets_;
  io_uring ring_{};
  bool ring_up_ = false;
  std::unique_ptr<BufferRing> buffers_;
  Listener listener_;
  int signal_fd_ = -1;
  signalfd_siginfo siginfo_{};

  uint64_t now_ms_ = 0;
  bool accept_armed_ = false;
  bool listener_closing_ = false;
  bool listener_closed_ = false;
  uint64_t accept_retry_at_ms_ = 0;
  uint64_t last_accept_error_log_ms_ = 0;

  std::vector<SlotRef> pending_writes_;
  std::vector<SlotRef> rearm_;
  // Every handshake (and every close) waits the same time, so deadlines are
  // pushed in time order: a FIFO is a priority queue here.
  std::deque<Deadline> handshake_deadlines_;
  std::deque<Deadline> close_deadlines_;
  std::vector<std::unique_ptr<SendScratch>> scratch_;
  size_t scratch_used_ = 0;
  // Completions taken off the ring to make room for submissions, handled
  // (first) by the next process_completions().
  std::deque<io_uring_cqe> deferred_cqes_;
  uint64_t sq_full_total_ = 0;       // get_sqe found the queue full and submitted
  uint64_t sq_busy_total_ = 0;       // the kernel refused a submission; retried
  uint32_t http_sockets_ = 0;        // sockets in Phase::http (pending handshakes)
  uint64_t handshakes_evicted_total_ = 0;

  bool shutting_down_ = false;  // draining
  bool stopping_ = false;       // drained (or cut): no more accepts, exit soon
  uint64_t stopped_at_ms_ = 0;
  bool shutdown_forced_ = false;
  uint64_t shutdown_deadline_ms_ = 0;
  uint64_t recv_buffers_exhausted_total_ = 0;
};

}  // namespace wsgate::server

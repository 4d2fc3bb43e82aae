#pragma once
// The WebSocket side of one upgraded connection: wslay does the framing
// (unmasking, reassembly, UTF-8 checks, ping/pong, the close handshake) over
// bytes handed in by feed(); complete messages go to the gateway core, and
// the control frames wslay answers with (pong, close) go to the core's
// outbox for that connection. Data frames never pass through wslay: the core
// queues them pre-encoded and shared.
//
// No sockets here: the event loop feeds it received bytes and tells it how
// many outbox bytes reached the socket; a fuzzer or a unit test can do the
// same. The wslay context (about 8 KiB of buffers) exists only while the
// connection is mid-message or closing; between messages it is freed, so an
// idle connection costs the size of this object.
#include <wslay/wslay.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "frame_scanner.hpp"
#include "wsgate/conn_id.hpp"
#include "wsgate/gateway.hpp"
#include "wsgate/limits.hpp"

namespace wsgate {

class WsSession {
 public:
  WsSession(Gateway& gw, ConnId id, const Limits& limits);
  ~WsSession();
  WsSession(const WsSession&) = delete;
  WsSession& operator=(const WsSession&) = delete;

  // Bytes received from the client: frames go through wslay; messages to the
  // core (handle_text / handle_binary); any bytes count as activity.
  void feed(const uint8_t* data, size_t n, uint64_t now_ms);

  // Starts the close handshake (a CloseRequest from the core, or shutdown).
  // Does nothing if a close frame was already queued.
  void close(CloseCode code, std::string_view reason);

  // How many of the outbox's queued bytes may be written: all of them until
  // our close frame is queued, then only those up to and including it (no
  // frame may follow a close frame, RFC 6455 5.5.1; the core keeps queuing
  // until it learns the socket is gone).
  size_t writable_bytes(size_t queued_bytes);
  // n bytes of the outbox reached the socket.
  void handle_written(size_t n);

  // Our close frame (first or echo) is queued in the outbox.
  bool close_queued() const { return close_queued_; }
  // ... and completely written to the socket.
  bool close_written() const { return close_queued_ && close_bytes_left_ == 0; }
  // Close written and either the peer's close arrived or the connection
  // failed (protocol error): the driver closes the socket now.
  bool wants_socket_closed() const { return close_written() && (close_received_ || failed_); }
  bool close_received() const { return close_received_; }
  bool failed() const { return failed_; }
  ConnId id() const { return id_; }
  // For tests and memory accounting: whether a wslay context is held now.
  bool holds_context() const { return ctx_ != nullptr; }

 private:
  struct Input;
  static ssize_t on_recv(wslay_event_context_ptr, uint8_t* buf, size_t len, int flags, void* self);
  static ssize_t on_send(wslay_event_context_ptr, const uint8_t* data, size_t len, int flags, void* self);
  static int on_genmask(wslay_event_context_ptr, uint8_t* buf, size_t len, void* self);
  static void on_msg(wslay_event_context_ptr, const wslay_event_on_msg_recv_arg* arg, void* self);

  bool ensure_context();
  void release_context_if_idle();
  // Runs wslay_event_send and moves what it wrote into the outbox.
  void flush_control();
  // Fails the connection with code (our own 1002 for what wslay misses).
  void fail_with(uint16_t code);
  void note_state_after_recv(int recv_result);

  Gateway* gw_;
  ConnId id_;
  wslay_event_context_ptr ctx_ = nullptr;
  Input* input_ = nullptr;  // set only inside feed()
  uint64_t close_bytes_left_ = 0;  // outbox bytes through our close frame, unwritten
  FrameScanner scanner_;
  bool close_queued_ = false;
  bool close_requested_ = false;  // close() was called: we started the handshake
  bool close_received_ = false;
  bool failed_ = false;
};

}  // namespace wsgate

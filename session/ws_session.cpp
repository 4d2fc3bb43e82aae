#include "ws_session.hpp"

#include <algorithm>
#include <cstring>

namespace wsgate {
namespace {

// wslay writes each control frame as a header and a payload; they are
// gathered here and handed to the core as one outbox entry per feed() or
// close(). One buffer per thread: sessions of one loop never run at once.
struct ControlStage {
  uint8_t bytes[4096];
  size_t len = 0;
};
thread_local ControlStage control_stage;

// A close reason is at most 123 bytes (RFC 6455 5.5: 125 minus the code).
constexpr size_t close_reason_max_bytes = 123;

}  // namespace

// The bytes of one feed() call, consumed by wslay through on_recv.
struct WsSession::Input {
  const uint8_t* data;
  size_t left;
  uint64_t now_ms;
};

WsSession::WsSession(Gateway& gw, ConnId id, const Limits& limits)
    : gw_(&gw), id_(id), scanner_(limits.max_message_bytes) {}

WsSession::~WsSession() {
  if (ctx_) wslay_event_context_free(ctx_);
}

ssize_t WsSession::on_recv(wslay_event_context_ptr ctx, uint8_t* buf, size_t len, int, void* self) {
  Input* in = static_cast<WsSession*>(self)->input_;
  if (!in || in->left == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  const size_t n = std::min(len, in->left);
  std::memcpy(buf, in->data, n);
  in->data += n;
  in->left -= n;
  return ssize_t(n);
}

ssize_t WsSession::on_send(wslay_event_context_ptr, const uint8_t* data, size_t len, int, void* self) {
  auto* s = static_cast<WsSession*>(self);
  ControlStage& st = control_stage;
  if (st.len + len > sizeof st.bytes) {
    s->gw_->push_control(s->id_, st.bytes, st.len);
    st.len = 0;
  }
  if (len > sizeof st.bytes) {  // never for control frames (<= 131 bytes)
    s->gw_->push_control(s->id_, data, len);
    return ssize_t(len);
  }
  std::memcpy(st.bytes + st.len, data, len);
  st.len += len;
  return ssize_t(len);
}

int WsSession::on_genmask(wslay_event_context_ptr, uint8_t* buf, size_t len, void*) {
  std::memset(buf, 0, len);  // a server never masks (RFC 6455 5.1)
  return 0;
}

void WsSession::on_msg(wslay_event_context_ptr, const wslay_event_on_msg_recv_arg* arg, void* self) {
  auto* s = static_cast<WsSession*>(self);
  const uint64_t now_ms = s->input_ ? s->input_->now_ms : 0;
  // Once our close is on its way, further messages are not acted on
  // (RFC 6455 1.4: the peer's data after our close may be discarded).
  const bool closing = s->close_requested_ || s->close_queued_;
  switch (arg->opcode) {
    case WSLAY_TEXT_FRAME:
      if (!closing) {
        s->gw_->handle_text(s->id_, {reinterpret_cast<const char*>(arg->msg), arg->msg_length}, now_ms);
      }
      break;
    case WSLAY_BINARY_FRAME:
      if (!closing) s->gw_->handle_binary(s->id_, now_ms);
      break;
    case WSLAY_CONNECTION_CLOSE:
      s->close_received_ = true;
      break;
    case WSLAY_PING:
      // wslay queued the pong (it cannot be told not to); it goes to the
      // core now, because wslay drops queued pongs once a close is queued.
      // The core keeps only the latest pong not yet on the wire (RFC 6455
      // 5.5.3 lets a pong answer just the most recent ping), so a peer that
      // pings without reading costs one pong, not one per ping.
      s->flush_control();
      break;
    default:  // pong: activity, noted in feed()
      break;
  }
}

bool WsSession::ensure_context() {
  if (ctx_) return true;
  const wslay_event_callbacks callbacks{on_recv, on_send, on_genmask, nullptr, nullptr, nullptr, on_msg};
  if (wslay_event_context_server_init(&ctx_, &callbacks, this) != 0) {
    ctx_ = nullptr;
    return false;
  }
  wslay_event_config_set_max_recv_msg_length(ctx_, scanner_.max_message_bytes());
  return true;
}

// Between messages wslay holds no state worth keeping (its 4 KiB input and
// 4 KiB output buffers are empty), so an idle connection gives them back.
void WsSession::release_context_if_idle() {
  if (!ctx_ || close_requested_ || close_queued_ || close_received_ || failed_) return;
  if (!scanner_.at_message_boundary()) return;
  if (!wslay_event_get_read_enabled(ctx_) || wslay_event_want_write(ctx_)) return;
  wslay_event_context_free(ctx_);
  ctx_ = nullptr;
}

void WsSession::flush_control() {
  if (!ctx_) return;
  ControlStage& st = control_stage;
  st.len = 0;
  wslay_event_send(ctx_);  // our on_send never blocks, so this writes all
  if (st.len > 0) {
    gw_->push_control(id_, st.bytes, st.len);
    st.len = 0;
  }
  if (!close_queued_ && wslay_event_get_close_sent(ctx_)) {
    close_queued_ = true;
    close_bytes_left_ = gw_->is_open(id_) ? gw_->outbox(id_).queued_bytes() : 0;
  }
}

void WsSession::fail_with(uint16_t code) {
  if (!failed_) ++gw_->metrics().protocol_error_closes_total;
  failed_ = true;
  if (ctx_) {
    wslay_event_queue_close(ctx_, code, nullptr, 0);
    wslay_event_shutdown_read(ctx_);
  }
}

void WsSession::note_state_after_recv(int recv_result) {
  if (wslay_event_get_close_received(ctx_)) close_received_ = true;
  // wslay stops reading when it fails the connection (1002, 1007, 1009) or
  // when the peer's close arrived; only the first is a failure.
  const bool stopped = recv_result != 0 || !wslay_event_get_read_enabled(ctx_);
  if (stopped && !close_received_ && !failed_) {
    failed_ = true;
    ++gw_->metrics().protocol_error_closes_total;
  }
}

void WsSession::feed(const uint8_t* data, size_t n, uint64_t now_ms) {
  if (n == 0) return;
  gw_->handle_activity(id_, now_ms);
  if (failed_ || close_received_) return;  // wslay reads nothing more
  if (!ensure_context()) {
    failed_ = true;  // out of memory: drop the connection
  } else {
    const size_t ok = scanner_.scan(data, n);
    if (ok > 0) {
      Input in{data, ok, now_ms};
      input_ = &in;
      const int r = wslay_event_recv(ctx_);
      input_ = nullptr;
      note_state_after_recv(r);
    }
    if (scanner_.failed() && !failed_ && !close_received_) fail_with(scanner_.failure_code());
    flush_control();
  }
  if (failed_ && !close_queued_) {
    // No close frame could be queued: the socket closes once what is
    // already in the outbox has been written.
    close_queued_ = true;
    close_bytes_left_ = gw_->is_open(id_) ? gw_->outbox(id_).queued_bytes() : 0;
  }
  release_context_if_idle();
}

void WsSession::close(CloseCode code, std::string_view reason) {
  if (close_requested_ || close_queued_) return;
  close_requested_ = true;
  if (!ensure_context()) {
    failed_ = true;
    close_queued_ = true;
    close_bytes_left_ = gw_->is_open(id_) ? gw_->outbox(id_).queued_bytes() : 0;
    return;
  }
  const size_t len = std::min(reason.size(), close_reason_max_bytes);
  wslay_event_queue_close(ctx_, uint16_t(code), reinterpret_cast<const uint8_t*>(reason.data()), len);
  flush_control();
}

size_t WsSession::writable_bytes(size_t queued_bytes) {
  if (!close_queued_) return queued_bytes;
  // The core may drop unsent frames (slow consumer); never wait for bytes
  // that are no longer queued.
  close_bytes_left_ = std::min<uint64_t>(close_bytes_left_, queued_bytes);
  return size_t(close_bytes_left_);
}

void WsSession::handle_written(size_t n) {
  if (close_queued_) close_bytes_left_ -= std::min<uint64_t>(close_bytes_left_, n);
}

}  // namespace wsgate

// libFuzzer target for the frame-to-core path: arbitrary bytes as one
// client's WebSocket stream into WsSession (wslay) over a real Gateway with
// other connections open, driven the way the event loop drives them: feed a
// chunk, carry out the closes the core asks for, write what is writable,
// close sockets the sessions are done with, tick the clock.
//
// Input: byte 0 chooses the chunking (0: one feed; k: chunks of 1..k bytes
// from a PRNG seeded by k), byte 1 the driver's behaviour (kFlag*), the rest
// is the stream. After every step the invariants of every connection are
// checked: its queue stays within the limit plus one close frame, and what
// it is sent is a well-formed sequence of server frames ending at a close.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "wsgate/gateway.hpp"
#include "ws_session.hpp"

namespace {

#define FUZZ_CHECK(cond) \
  do {                   \
    if (!(cond)) std::abort(); \
  } while (0)

constexpr uint8_t kFlagFuzzedPeerNeverReads = 0x01;  // its socket takes nothing
constexpr uint8_t kFlagSlowPeerReads = 0x02;         // the second bob connection drains too
constexpr uint8_t kFlagPartialWrites = 0x04;         // sockets take half of what is writable
constexpr int kTimeStepShift = 4;                    // bits 4-5: ms per chunk, from kTimeSteps
constexpr uint64_t kTimeSteps[4] = {0, 7, 250, 2000};

// Largest close frame: 2 header bytes and 125 payload bytes (RFC 6455 5.5).
constexpr size_t kCloseFrameMaxBytes = 127;

wsgate::Limits fuzz_limits() {
  wsgate::Limits l;
  // Small enough that a short input reaches every limit: 1009, slow consumer.
  l.max_message_bytes = 1024;
  l.max_user_id_bytes = 16;
  l.send_queue_max_bytes = 4096;
  l.heartbeat_interval_ms = 1000;
  l.idle_timeout_ms = 3000;
  l.max_connections = 8;
  return l;
}

wsgate::GatewayConfig fuzz_config() {
  wsgate::GatewayConfig c;
  c.node_id = "fuzz";
  c.limits = fuzz_limits();
  return c;
}

// What the client at the other end of one connection would parse: checks
// each server frame as it completes across partial writes.
class ServerStreamChecker {
 public:
  void receive(const uint8_t* p, size_t n) {
    FUZZ_CHECK(!closed_ || n == 0);  // nothing may follow a close frame
    pending_.append(reinterpret_cast<const char*>(p), n);
    while (take_frame()) {
    }
  }

 private:
  bool take_frame() {
    if (closed_ || pending_.size() < 2) return false;
    wsgate::FrameHeader h;
    const auto status =
        wsgate::decode_frame_header(reinterpret_cast<const uint8_t*>(pending_.data()), pending_.size(), h);
    FUZZ_CHECK(status != wsgate::FrameHeaderStatus::invalid);  // minimal length encoding (RFC 6455 5.2)
    if (status == wsgate::FrameHeaderStatus::need_more) return false;
    const uint8_t op = h.opcode;
    FUZZ_CHECK(h.fin && h.rsv == 0);  // FIN, no RSV bits: the server never fragments
    FUZZ_CHECK(!h.masked);            // never masked (RFC 6455 5.1)
    FUZZ_CHECK(op == 0x1 || op == 0x8 || op == 0x9 || op == 0xA);
    const uint64_t len = h.payload_bytes;
    const size_t header = h.header_bytes;
    if (op >= 0x8) FUZZ_CHECK(len <= 125);
    if (op == 0x8) FUZZ_CHECK(len != 1);  // empty, or a code and a reason
    if (pending_.size() < header + len) return false;
    if (op == 0x1) {
      // Everything the core sends is one JSON object.
      FUZZ_CHECK(len >= 2 && pending_[header] == '{' && pending_[header + len - 1] == '}');
    }
    if (op == 0x8) closed_ = true;
    pending_.erase(0, header + len);
    return true;
  }

  std::string pending_;
  bool closed_ = false;
};

struct Conn {
  wsgate::ConnId id;
  std::unique_ptr<wsgate::WsSession> session;
  ServerStreamChecker stream;
  bool reads = true;  // does the peer's socket take bytes
  bool gone = false;  // socket closed, slot freed
};

class Driver {
 public:
  explicit Driver(uint8_t flags)
      : gw_(fuzz_config()),
        limits_(fuzz_limits()),
        partial_writes_(flags & kFlagPartialWrites) {
    conns_.resize(3);
    open(conns_[0], "alice", !(flags & kFlagFuzzedPeerNeverReads));
    open(conns_[1], "bob", true);
    open(conns_[2], "bob", flags & kFlagSlowPeerReads);
  }

  ~Driver() {
    // The sockets drop: every slot must come back.
    for (Conn& c : conns_) close_socket(c);
    FUZZ_CHECK(gw_.connection_count() == 0 && gw_.user_count() == 0);
  }

  bool fuzzed_gone() const { return conns_[0].gone; }

  void feed_fuzzed(const uint8_t* p, size_t n, uint64_t now_ms) {
    conns_[0].session->feed(p, n, now_ms);
    service(now_ms);
  }

  void service(uint64_t now_ms) {
    if (now_ms >= gw_.next_tick_ms()) gw_.handle_tick(now_ms);
    // Closes queue close frames, writes can finish close handshakes; a few
    // rounds reach a fixed point.
    for (int round = 0; round < 4; ++round) {
      for (const wsgate::CloseRequest& r : gw_.take_closes())
        if (Conn* c = find(r.id)) c->session->close(r.code, r.reason);
      gw_.take_dirty();  // every connection is visited below anyway
      for (Conn& c : conns_) {
        check_limits(c);
        write(c);
        if (!c.gone && c.session->wants_socket_closed()) close_socket(c);
      }
    }
  }

 private:
  void open(Conn& c, std::string_view user, bool reads) {
    FUZZ_CHECK(gw_.handle_upgrade_request(std::string_view("\x7f\0\0\x01", 4), 0) ==
               wsgate::Admission::ok);
    c.id = gw_.handle_open(user, 0);
    c.session = std::make_unique<wsgate::WsSession>(gw_, c.id, limits_);
    c.reads = reads;
  }

  Conn* find(wsgate::ConnId id) {
    for (Conn& c : conns_)
      if (!c.gone && c.id == id) return &c;
    return nullptr;
  }

  void check_limits(Conn& c) {
    if (c.gone) return;
    FUZZ_CHECK(gw_.is_open(c.id));
    FUZZ_CHECK(gw_.outbox(c.id).queued_bytes() <= limits_.send_queue_max_bytes + kCloseFrameMaxBytes);
  }

  // The socket takes what the session allows (all, or half when partial),
  // as the event loop's writev would.
  void write(Conn& c) {
    if (c.gone || !c.reads) return;
    wsgate::Outbox& out = gw_.outbox(c.id);
    size_t n = c.session->writable_bytes(out.queued_bytes());
    FUZZ_CHECK(n <= out.queued_bytes());
    if (partial_writes_ && n > 1) n /= 2;
    size_t left = n;
    wsgate::ByteRange ranges[16];
    while (left > 0) {
      // gather() does not consume, so take the ranges a batch at a time.
      const size_t count = out.gather(ranges);
      FUZZ_CHECK(count > 0);
      size_t batch = 0;
      for (size_t i = 0; i < count && batch < left; ++i) {
        const size_t take = std::min(ranges[i].size, left - batch);
        c.stream.receive(ranges[i].data, take);
        batch += take;
      }
      gw_.handle_sent(c.id, batch);
      c.session->handle_written(batch);
      left -= batch;
    }
  }

  void close_socket(Conn& c) {
    if (c.gone) return;
    c.gone = true;
    gw_.handle_closed(c.id);
    FUZZ_CHECK(!gw_.is_open(c.id));
    c.session.reset();
  }

  wsgate::Gateway gw_;
  wsgate::Limits limits_;
  bool partial_writes_;
  std::vector<Conn> conns_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t chunk_max = data[0];
  const uint8_t flags = data[1];
  const uint64_t step_ms = kTimeSteps[(flags >> kTimeStepShift) & 3];
  data += 2;
  size -= 2;

  Driver driver(flags);
  uint64_t now_ms = 1;
  uint32_t rng = chunk_max * 2654435761u + 1;
  size_t pos = 0;
  while (pos < size && !driver.fuzzed_gone()) {
    size_t n = size - pos;
    if (chunk_max != 0) {
      rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;  // xorshift32
      n = std::min<size_t>(n, 1 + rng % chunk_max);
    }
    driver.feed_fuzzed(data + pos, n, now_ms);
    pos += n;
    now_ms += step_ms;
  }
  // Let heartbeats and idle timeouts run their course a little.
  for (int i = 0; i < 4 && step_ms > 0; ++i) driver.service(now_ms += step_ms);
  return 0;
}

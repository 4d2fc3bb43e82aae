#pragma once
// A server-to-client WebSocket frame, encoded once and shared by reference
// by every connection it is queued to (a broadcast costs one encode, not one
// per recipient). The reference count is not atomic: a frame lives on one
// event-loop thread.
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <string_view>
#include <utility>

namespace wsgate {

enum class Opcode : uint8_t { text = 0x1, binary = 0x2, close = 0x8, ping = 0x9, pong = 0xA };

// --- the frame-header codec (RFC 6455 5.2), the only one in the C++ code:
// the core, the session layer, the simulator's clients, the tests, the
// fuzzer and the load tool all encode and decode headers here.

// The longest header of any frame: 2 bytes, an 8-byte length and a 4-byte
// mask key (a server frame needs at most frame_header_max_bytes, limits.hpp).
constexpr size_t any_frame_header_max_bytes = 14;

// Header bytes of a frame carrying payload_bytes, masked or not.
constexpr size_t frame_header_bytes(size_t payload_bytes, bool masked = false) {
  return (payload_bytes < 126 ? 2 : payload_bytes <= 0xFFFF ? 4 : 10) + (masked ? 4 : 0);
}

// Writes the header of a final, unmasked frame into out (>= 10 bytes) and
// returns its length. Server frames are never masked (RFC 6455 5.1).
size_t encode_frame_header(uint8_t* out, Opcode op, size_t payload_bytes);
// The header of a client frame (RFC 6455 5.3: always masked) with this mask
// key, into out (>= 14 bytes); returns its length. fin false opens or
// continues a fragmented message.
size_t encode_masked_frame_header(uint8_t* out, Opcode op, size_t payload_bytes, const uint8_t (&mask_key)[4],
                                  bool fin = true);
// XORs n payload bytes with the mask key; offset is the position of data[0]
// in the payload (masking is its own inverse).
void apply_frame_mask(uint8_t* data, size_t n, const uint8_t (&mask_key)[4], uint64_t offset = 0);

// A decoded header. Fields are filled as their bytes arrive (see
// decode_frame_header): the first two bytes give fin, rsv, opcode, masked,
// len7 and header_bytes; the extended length gives payload_bytes.
struct FrameHeader {
  uint64_t payload_bytes = 0;
  uint8_t opcode = 0;        // the raw 4 bits (may be a reserved opcode)
  uint8_t rsv = 0;           // RSV1..3 as bits 2..0
  uint8_t len7 = 0;          // the 7-bit length field as sent
  uint8_t header_bytes = 0;  // 2..14, once the first two bytes are known
  bool fin = false;
  bool masked = false;
  bool length_known = false; // payload_bytes is final
  uint8_t mask_key[4] = {};
  bool is_control() const { return opcode & 0x08; }
};

enum class FrameHeaderStatus : uint8_t {
  need_more,  // fewer than header_bytes: the fields known so far are set
  complete,   // a whole header: every field is set
  invalid,    // a length not in its minimal encoding, or with the top bit set
};

// Decodes the header at the start of data[0, n), incrementally: call again
// with more bytes until it is complete. The length encoding is checked as
// soon as it is known (RFC 6455 5.2), before the mask key arrives.
FrameHeaderStatus decode_frame_header(const uint8_t* data, size_t n, FrameHeader& out);

class FrameRef;

// The shared buffer: header and payload contiguous, so one iovec sends it.
class Frame {
 public:
  const uint8_t* data() const { return bytes_ + offset_; }
  uint32_t size() const { return size_; }
  std::string_view view() const { return {reinterpret_cast<const char*>(data()), size_}; }
  uint32_t refs() const { return refs_; }
  static constexpr size_t offsetof_bytes = 16;  // where the bytes start; checked in frame.cpp
  // The payload, after the header this frame was encoded with.
  std::string_view payload() const {
    FrameHeader h;
    decode_frame_header(data(), size_, h);
    return view().substr(h.header_bytes);
  }
  // What this frame costs in memory: its one malloc chunk (the fields, the
  // header slot and the bytes, rounded as glibc's allocator does). A 2-byte
  // pong costs 32 bytes, not 2; queues are bounded by this, not by size().
  size_t memory_bytes() const {
    const size_t request = offsetof_bytes + offset_ + size_;
    return std::max<size_t>(32, (request + 8 + 15) & ~size_t(15));
  }


 private:
  friend class FrameRef;
  friend class FrameBuilder;
  // Room for the fields and `bytes` bytes, in one malloc.
  static Frame* allocate(size_t bytes);
  friend class Outbox;
  uint32_t refs_ = 0;
  // How many outboxes hold this frame: the node's queued memory counts a
  // shared broadcast frame once, however many connections queue it.
  mutable uint32_t queued_refs_ = 0;
  uint32_t size_ = 0;     // bytes from data()
  uint32_t offset_ = 0;   // where the header starts in bytes_
  uint8_t bytes_[1];  // really capacity_ bytes: allocated with the header
};

// Owning handle to a Frame; copying it shares the frame.
class FrameRef {
 public:
  FrameRef() = default;
  explicit FrameRef(Frame* f) : f_(f) { if (f_) ++f_->refs_; }
  FrameRef(const FrameRef& o) : FrameRef(o.f_) {}
  FrameRef(FrameRef&& o) noexcept : f_(std::exchange(o.f_, nullptr)) {}
  FrameRef& operator=(FrameRef o) noexcept { std::swap(f_, o.f_); return *this; }
  ~FrameRef() { release(); }

  const Frame* get() const { return f_; }
  const Frame* operator->() const { return f_; }
  explicit operator bool() const { return f_ != nullptr; }

  // A frame holding exactly these bytes (already framed), e.g. a control
  // frame wslay produced.
  static FrameRef copy_of(const uint8_t* bytes, size_t n);
  // A final frame with this opcode and payload.
  static FrameRef encode(Opcode op, std::string_view payload);

 private:
  void release();
  Frame* f_ = nullptr;
};

// Builds one text frame from pieces without an intermediate copy: reserve
// the largest payload, append pieces, then finish() writes the header in
// front of what was appended. The header slot is sized for the reserve, so
// the header may start a few bytes into the allocation; Frame::data()
// accounts for it.
class FrameBuilder {
 public:
  explicit FrameBuilder(size_t max_payload_bytes);
  ~FrameBuilder();
  FrameBuilder(const FrameBuilder&) = delete;
  FrameBuilder& operator=(const FrameBuilder&) = delete;

  void append(std::string_view s);
  // Appends s as a JSON string literal (quotes and escapes included).
  void append_json_string(std::string_view s);
  size_t payload_size() const { return len_; }
  FrameRef finish(Opcode op = Opcode::text);

 private:
  Frame* f_;
  size_t header_slot_;
  size_t len_ = 0;
  size_t max_;
};

}  // namespace wsgate

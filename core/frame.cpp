// Shared server frames: one allocation holds the reference count, the
// header and the payload, so a frame is one iovec and one free().
#include "wsgate/frame.hpp"
#include "wsgate/assert.hpp"
#include "wsgate/json_escape.hpp"

#include <cstddef>
#include <cstdlib>
#include <new>

namespace wsgate {

Frame* Frame::allocate(size_t bytes) {
  static_assert(offsetof(Frame, bytes_) == Frame::offsetof_bytes);
  void* p = std::malloc(offsetof(Frame, bytes_) + bytes);
  if (!p) throw std::bad_alloc();
  return new (p) Frame();
}

size_t encode_frame_header(uint8_t* out, Opcode op, size_t payload_bytes) {
  out[0] = uint8_t(0x80 | uint8_t(op));  // FIN, no RSV bits
  if (payload_bytes < 126) {
    out[1] = uint8_t(payload_bytes);
    return 2;
  }
  if (payload_bytes <= 0xFFFF) {
    out[1] = 126;
    out[2] = uint8_t(payload_bytes >> 8);
    out[3] = uint8_t(payload_bytes);
    return 4;
  }
  out[1] = 127;
  for (int i = 0; i < 8; ++i) out[2 + i] = uint8_t(uint64_t(payload_bytes) >> (56 - 8 * i));
  return 10;
}

size_t encode_masked_frame_header(uint8_t* out, Opcode op, size_t payload_bytes, const uint8_t (&mask_key)[4],
                                  bool fin) {
  size_t n = encode_frame_header(out, op, payload_bytes);
  if (!fin) out[0] &= 0x7F;
  out[1] |= 0x80;
  std::memcpy(out + n, mask_key, 4);
  return n + 4;
}

void apply_frame_mask(uint8_t* data, size_t n, const uint8_t (&mask_key)[4], uint64_t offset) {
  for (size_t i = 0; i < n; ++i) data[i] ^= mask_key[(offset + i) & 3];
}

FrameHeaderStatus decode_frame_header(const uint8_t* data, size_t n, FrameHeader& h) {
  if (n < 2) return FrameHeaderStatus::need_more;
  h.fin = data[0] & 0x80;
  h.rsv = (data[0] >> 4) & 0x07;
  h.opcode = data[0] & 0x0F;
  h.masked = data[1] & 0x80;
  h.len7 = data[1] & 0x7F;
  const size_t ext = h.len7 == 126 ? 2 : h.len7 == 127 ? 8 : 0;
  h.header_bytes = uint8_t(2 + ext + (h.masked ? 4 : 0));
  h.length_known = false;
  if (n < 2 + ext) return FrameHeaderStatus::need_more;
  uint64_t len = h.len7;
  if (ext > 0) {
    len = 0;
    for (size_t i = 0; i < ext; ++i) len = (len << 8) | data[2 + i];
    // RFC 6455 5.2: the minimal number of bytes, and the top bit clear.
    if (ext == 2 && len < 126) return FrameHeaderStatus::invalid;
    if (ext == 8 && (len >> 63 || len <= 0xFFFF)) return FrameHeaderStatus::invalid;
  }
  h.payload_bytes = len;
  h.length_known = true;
  if (n < h.header_bytes) return FrameHeaderStatus::need_more;
  if (h.masked) std::memcpy(h.mask_key, data + 2 + ext, 4);
  return FrameHeaderStatus::complete;
}

void FrameRef::release() {
  if (f_ && --f_->refs_ == 0) {
    f_->~Frame();
    std::free(f_);
  }
  f_ = nullptr;
}

FrameRef FrameRef::copy_of(const uint8_t* bytes, size_t n) {
  Frame* f = Frame::allocate(n);
  std::memcpy(f->bytes_, bytes, n);
  f->size_ = uint32_t(n);
  return FrameRef(f);
}

FrameRef FrameRef::encode(Opcode op, std::string_view payload) {
  FrameBuilder b(payload.size());
  b.append(payload);
  return b.finish(op);
}

FrameBuilder::FrameBuilder(size_t max_payload_bytes)
    : f_(Frame::allocate(frame_header_bytes(max_payload_bytes) + max_payload_bytes)),
      header_slot_(frame_header_bytes(max_payload_bytes)),
      max_(max_payload_bytes) {}

FrameBuilder::~FrameBuilder() {
  if (f_) std::free(f_);
}

void FrameBuilder::append(std::string_view s) {
  WSGATE_ASSERT(len_ + s.size() <= max_);
  if (s.empty()) return;  // memcpy from a null data() is undefined, even for 0 bytes
  std::memcpy(f_->bytes_ + header_slot_ + len_, s.data(), s.size());
  len_ += s.size();
}

void FrameBuilder::append_json_string(std::string_view s) {
  WSGATE_ASSERT(len_ + json_escaped_bytes(s) <= max_);
  len_ += write_json_string(reinterpret_cast<char*>(f_->bytes_ + header_slot_ + len_), s);
}

FrameRef FrameBuilder::finish(Opcode op) {
  const size_t header = frame_header_bytes(len_);
  WSGATE_ASSERT(header <= header_slot_);
  f_->offset_ = uint32_t(header_slot_ - header);
  encode_frame_header(f_->bytes_ + f_->offset_, op, len_);
  f_->size_ = uint32_t(header + len_);
  return FrameRef(std::exchange(f_, nullptr));
}

}  // namespace wsgate

#include "frame_scanner.hpp"

#include <algorithm>

namespace wsgate {
namespace {

// Header bytes implied by the first two: base, extended length, mask key.
size_t header_bytes(const uint8_t* hdr) {
  const uint8_t len7 = hdr[1] & 0x7F;
  const size_t ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
  const size_t mask = (hdr[1] & 0x80) ? 4 : 0;
  return 2 + ext + mask;
}

}  // namespace

// Called as the header grows: with its first two bytes, once the extended
// length is complete, and once the whole header is in. Each check runs as
// soon as its bytes are known, because wslay acts on them at that moment too.
bool FrameScanner::accept_header() {
  const bool fin = hdr_[0] & 0x80;
  const uint8_t opcode = hdr_[0] & 0x0F;
  const bool control = opcode & 0x08;
  const uint8_t len7 = hdr_[1] & 0x7F;
  const size_t ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
  if (have_ == 2) {
    if (control && (!fin || len7 > 125)) return false;  // RFC 6455 5.5
    if (opcode == 0x8 && len7 == 1) return false;       // RFC 6455 5.5.1: 0 or >= 2 bytes
  }
  uint64_t len = len7;
  if (ext == 2) {
    if (have_ < 4) return true;
    len = (uint64_t(hdr_[2]) << 8) | hdr_[3];
    if (len < 126) return false;  // RFC 6455 5.2: the minimal number of bytes
  } else if (ext == 8) {
    if (have_ < 10) return true;
    len = 0;
    for (int i = 0; i < 8; ++i) len = (len << 8) | hdr_[2 + i];
    if (len >> 63) return false;  // the most significant bit must be 0
    if (len <= 0xFFFF) return false;
  }
  if (have_ < header_bytes(hdr_)) return true;
  // Fragmentation (5.4): a data frame without FIN opens a message, a final
  // continuation closes it. Wrong sequences are wslay's to reject (1002).
  if (opcode == 0x1 || opcode == 0x2) {
    in_fragmented_ = !fin;
    message_bytes_ = len;
  } else if (opcode == 0x0) {
    if (fin) in_fragmented_ = false;
    message_bytes_ += len;
  }
  if (!control && message_bytes_ > max_message_bytes_) {
    too_big_ = true;
    return false;
  }
  payload_left_ = len;
  have_ = 0;
  return true;
}

size_t FrameScanner::scan(const uint8_t* data, size_t n) {
  if (failed_) return 0;
  size_t i = 0;
  size_t header_start = 0;  // where the header being collected began in data
  while (i < n) {
    if (payload_left_ > 0) {
      const size_t skip = size_t(std::min<uint64_t>(payload_left_, n - i));
      i += skip;
      payload_left_ -= skip;
      continue;
    }
    if (have_ == 0) header_start = i;
    hdr_[have_++] = data[i++];
    if (have_ < 2) continue;
    if (!accept_header()) {
      failed_ = true;
      // The bytes before this header are fine; the header itself (even the
      // part an earlier call returned) is never acted on, since wslay waits
      // for a complete header.
      return header_start;
    }
  }
  return n;
}

}  // namespace wsgate

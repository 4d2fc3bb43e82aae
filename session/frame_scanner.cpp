#include "frame_scanner.hpp"

#include <algorithm>

namespace wsgate {

// Called as the header grows: with its first two bytes, once the extended
// length is complete, and once the whole header is in. Each check runs as
// soon as its bytes are known, because wslay acts on them at that moment too.
bool FrameScanner::accept_header() {
  FrameHeader h;
  const FrameHeaderStatus status = decode_frame_header(hdr_, have_, h);
  const uint8_t opcode = h.opcode;
  const bool fin = h.fin;
  const bool control = h.is_control();
  if (have_ == 2) {
    if (control && (!fin || h.len7 > 125)) return false;  // RFC 6455 5.5
    if (opcode == 0x8 && h.len7 == 1) return false;       // RFC 6455 5.5.1: 0 or >= 2 bytes
  }
  if (status == FrameHeaderStatus::invalid) return false;  // RFC 6455 5.2
  if (status == FrameHeaderStatus::need_more) return true;
  const uint64_t len = h.payload_bytes;
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

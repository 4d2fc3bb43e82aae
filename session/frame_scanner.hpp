#pragma once
// Follows the frame headers of the bytes a client sends, ahead of wslay, for
// two reasons:
//
// 1. wslay 1.1.1 answers some RFC 6455 violations with a close frame that
//    carries no status code (or none at all) where the RFC asks for 1002:
//    a control frame longer than 125 bytes or fragmented (5.5), a length
//    not in its minimal encoding or with the top bit set (5.2), and a close
//    frame with a 1-byte payload (5.5.1, echoed by wslay as an empty close).
//    The scanner stops before such a frame so WsSession can send 1002.
//    wslay also checks the message size only once a payload byte arrives;
//    the scanner refuses an oversized message from its header (1009, RFC
//    6455 10.4), so a client cannot park a huge declared length.
// 2. It tells when the stream is between messages, the only moment a
//    session may drop its wslay context (8 KiB of buffers) while idle.
#include <cstddef>
#include <cstdint>

#include "wsgate/frame.hpp"

namespace wsgate {

class FrameScanner {
 public:
  explicit FrameScanner(uint32_t max_message_bytes) : max_message_bytes_(max_message_bytes) {}

  // Scans n more bytes of the client's stream. Returns how many of them
  // come before the first violating frame header: n if there is none.
  // After a violation, every later call returns 0.
  size_t scan(const uint8_t* data, size_t n);

  bool failed() const { return failed_; }
  // The close code for the violation: 1002, or 1009 for an oversized message.
  uint16_t failure_code() const { return too_big_ ? 1009 : 1002; }
  uint32_t max_message_bytes() const { return max_message_bytes_; }
  // No partial frame header or payload pending and no fragmented message
  // open: the stream is between two messages.
  bool at_message_boundary() const { return have_ == 0 && payload_left_ == 0 && !in_fragmented_; }

 private:
  // Returns false if the complete header in hdr_ breaks RFC 6455.
  bool accept_header();

  uint64_t payload_left_ = 0;  // of the current frame
  uint64_t message_bytes_ = 0; // declared so far by the frames of this message
  uint32_t max_message_bytes_;
  uint8_t hdr_[any_frame_header_max_bytes] = {};
  uint8_t have_ = 0;           // header bytes collected so far
  bool in_fragmented_ = false; // a text/binary message awaits its final frame
  bool failed_ = false;
  bool too_big_ = false;
};

}  // namespace wsgate

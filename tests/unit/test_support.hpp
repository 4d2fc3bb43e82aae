#pragma once
// Helpers for driving the core in unit tests: read back what a connection
// would receive, as text, and drain it like a driver would.
#include <string>
#include <vector>

#include "wsgate/gateway.hpp"

namespace wsgate::test {

// One server frame split into opcode and payload.
struct ReceivedFrame {
  uint8_t opcode;
  std::string payload;
};

// Decodes every frame queued for id and marks it written, as a driver whose
// socket took everything would.
inline std::vector<ReceivedFrame> drain(Gateway& gw, ConnId id) {
  std::string bytes;
  Outbox& out = gw.outbox(id);
  ByteRange ranges[64];
  while (!out.empty()) {
    const size_t n = out.gather(ranges);
    size_t total = 0;
    for (size_t i = 0; i < n; ++i) {
      bytes.append(reinterpret_cast<const char*>(ranges[i].data), ranges[i].size);
      total += ranges[i].size;
    }
    gw.handle_sent(id, total);
  }
  std::vector<ReceivedFrame> frames;
  size_t p = 0;
  FrameHeader h;
  while (decode_frame_header(reinterpret_cast<const uint8_t*>(bytes.data()) + p, bytes.size() - p, h) ==
         FrameHeaderStatus::complete) {
    p += h.header_bytes;
    frames.push_back({h.opcode, bytes.substr(p, h.payload_bytes)});
    p += h.payload_bytes;
  }
  return frames;
}

// Payloads of the text frames queued for id.
inline std::vector<std::string> texts(Gateway& gw, ConnId id) {
  std::vector<std::string> out;
  for (auto& f : drain(gw, id))
    if (f.opcode == 0x1) out.push_back(f.payload);
  return out;
}

}  // namespace wsgate::test

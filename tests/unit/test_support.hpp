#pragma once
// Helpers for driving the core in unit tests: read back what a connection
// would receive, as text, and drain it like a driver would.
#include <string>
#include <string_view>
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

// A masked client frame (RFC 6455 5.3: clients must mask), from the codec.
// rsv: raw RSV bits of byte 0 (0x40 = RSV1); opcode may be a reserved one.
inline std::string client_frame(uint8_t opcode, std::string_view payload, bool fin = true, uint8_t rsv = 0) {
  const uint8_t mask[4] = {0x11, 0x22, 0x33, 0x44};
  uint8_t hdr[any_frame_header_max_bytes];
  const size_t h = encode_masked_frame_header(hdr, Opcode(opcode), payload.size(), mask, fin);
  hdr[0] |= rsv;
  std::string f(reinterpret_cast<const char*>(hdr), h);
  f.append(payload);
  apply_frame_mask(reinterpret_cast<uint8_t*>(f.data()) + h, payload.size(), mask);
  return f;
}

// Payloads of the text frames queued for id.
inline std::vector<std::string> texts(Gateway& gw, ConnId id) {
  std::vector<std::string> out;
  for (auto& f : drain(gw, id))
    if (f.opcode == 0x1) out.push_back(f.payload);
  return out;
}

}  // namespace wsgate::test

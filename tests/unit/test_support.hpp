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
  while (p + 2 <= bytes.size()) {
    const uint8_t op = uint8_t(bytes[p]) & 0x0F;
    uint64_t len = uint8_t(bytes[p + 1]) & 0x7F;
    p += 2;
    if (len == 126) {
      len = (uint64_t(uint8_t(bytes[p])) << 8) | uint8_t(bytes[p + 1]);
      p += 2;
    } else if (len == 127) {
      len = 0;
      for (int i = 0; i < 8; ++i) len = (len << 8) | uint8_t(bytes[p + i]);
      p += 8;
    }
    frames.push_back({op, bytes.substr(p, len)});
    p += len;
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

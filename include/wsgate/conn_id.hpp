#pragma once
// A connection is a fixed slot addressed by {index, generation}. The
// generation changes every time the slot is reused, so anything holding a
// stale id (a late io_uring completion, a timer) is detected, not acted on.
#include <cstdint>

namespace wsgate {

struct ConnId {
  uint32_t index = UINT32_MAX;
  uint32_t generation = 0;
  bool valid() const { return index != UINT32_MAX; }
  friend bool operator==(ConnId, ConnId) = default;
};

// WebSocket close codes the gateway uses (RFC 6455 7.4.1, plus ours).
enum class CloseCode : uint16_t {
  normal = 1000,
  going_away = 1001,        // shutdown, heartbeat timeout
  protocol_error = 1002,
  unsupported_data = 1003,  // binary message (not part of protocol v1)
  invalid_payload = 1007,   // text that is not UTF-8
  policy_violation = 1008,  // slow consumer
  message_too_big = 1009,
  internal_error = 1011,
  try_again_later = 1013,
  missing_identity = 4001,  // no user_id / token
  reconnect = 4002,         // rebalancing: connect again, to any node
};

}  // namespace wsgate

#pragma once
// Every io_uring submission carries an explicit 64-bit user_data:
//
//   bits 63..56  op          what the completion is for
//   bits 55..32  slot index  which socket slot (24 bits: up to 16M slots)
//   bits 31..0   generation  the slot's generation when the op was submitted
//
// A completion whose generation differs from the slot's current one is for
// an earlier occupant of the slot: stale, never acted on.
#include <cstdint>

namespace wsgate::server {

enum class Op : uint8_t {
  accept = 1,    // multishot accept on the listener
  recv = 2,      // multishot recv, provided buffers
  send = 3,      // sendmsg of a connection's queued bytes
  cancel = 4,    // cancel every request on a socket before closing it
  close = 5,     // close of a socket
  signal = 6,    // read of the signalfd
  listener_close = 7,
  // The Redis transport's two links (slot index = RedisLink, generation =
  // the link's connection generation).
  redis_connect = 8,
  redis_recv = 9,
  redis_send = 10,
  redis_close = 11,
  redis_resolved = 12,  // read of the resolver's eventfd: lookups finished
};

constexpr uint32_t max_slot_index = (1u << 24) - 1;

struct UserData {
  Op op;
  uint32_t index;
  uint32_t generation;
};

constexpr uint64_t pack_user_data(Op op, uint32_t index, uint32_t generation) {
  return (uint64_t(op) << 56) | (uint64_t(index & max_slot_index) << 32) | generation;
}

constexpr UserData unpack_user_data(uint64_t v) {
  return UserData{Op(v >> 56), uint32_t(v >> 32) & max_slot_index, uint32_t(v)};
}

static_assert(unpack_user_data(pack_user_data(Op::send, 0xABCDEF, 0xFFFFFFFF)).index == 0xABCDEF);
static_assert(unpack_user_data(pack_user_data(Op::send, 0xABCDEF, 0xFFFFFFFF)).generation == 0xFFFFFFFF);
static_assert(unpack_user_data(pack_user_data(Op::close, 1, 2)).op == Op::close);

}  // namespace wsgate::server

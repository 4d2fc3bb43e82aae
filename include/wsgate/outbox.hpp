#pragma once
// What one connection still has to write: shared frames in order, and how
// far into the first one the socket got. Bounded by the owner (the Gateway
// closes a connection whose queued memory passes send_queue_max_bytes, and
// sheds the largest queues when the node's passes its budget).
//
// Queues are measured in memory, not wire bytes: a 2-byte pong is a 32-byte
// allocation plus its slot in the vector, and a flood of tiny frames must
// not hide behind their wire size.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "wsgate/frame.hpp"

namespace wsgate {

struct ByteRange {
  const uint8_t* data;
  size_t size;
};

// The memory of every frame queued by the outboxes of one node: a frame
// shared by many outboxes (a broadcast) counts once, plus one slot per
// outbox holding it. What the node-wide budget is checked against.
struct QueueLedger {
  size_t bytes = 0;
};

class Outbox {
 public:
  // What one queued entry costs in memory: its slot in the vector (counted
  // twice: a grown vector may be half empty) on top of the frame's own.
  static constexpr size_t slot_bytes = 2 * sizeof(FrameRef);
  // What queuing f costs this connection: the frame in full even when it is
  // shared (its own upper bound, whoever else holds it), and the slot.
  static size_t charge_of(const FrameRef& f) { return f->memory_bytes() + slot_bytes; }

  Outbox() = default;
  // A queued frame may outlive its outbox (shared with another): tell it.
  ~Outbox() { clear(); }
  Outbox(Outbox&& o) noexcept { take(o); }
  Outbox& operator=(Outbox&& o) noexcept {
    if (this != &o) {
      clear();
      take(o);
    }
    return *this;
  }
  Outbox(const Outbox&) = delete;
  Outbox& operator=(const Outbox&) = delete;

  // The node's ledger; set before the first push (none: not counted).
  void set_ledger(QueueLedger* ledger) { ledger_ = ledger; }
  void push(FrameRef f);
  // Queues a pong, or replaces the queued one if the socket has not started
  // on it. RFC 6455 5.5.3: a pong may answer only the most recent ping, so a
  // peer that pings without reading holds at most one pong here (plus one
  // in flight), not one per ping.
  void push_pong(FrameRef f);
  // Fills out with the unsent bytes in order, at most out.size() ranges;
  // returns how many. The ranges stay valid until consume() passes them:
  // the gathered bytes count as in flight (a send the kernel may still be
  // reading) until consumed, and drop_unsent() never drops them.
  size_t gather(std::span<ByteRange> out);
  // n bytes were written to the socket.
  void consume(size_t n);
  void clear();
  // Drops every frame not yet started and not in flight, keeping a partly
  // written one so the byte stream stays well framed. Returns the bytes
  // dropped.
  size_t drop_unsent();

  bool empty() const { return head_ == frames_.size(); }
  // Wire bytes still to write.
  size_t queued_bytes() const { return queued_bytes_; }
  // What the queued frames cost in memory (charge_of each); what
  // send_queue_max_bytes bounds.
  size_t memory_bytes() const { return memory_bytes_; }
  size_t frame_count() const { return frames_.size() - head_; }

 private:
  static constexpr uint32_t none = UINT32_MAX;
  void take(Outbox& o);
  void retain(const FrameRef& f);
  void release(const FrameRef& f);

  // Idle connections keep an empty vector (no heap): frames_ is released
  // when fully drained if it grew.
  std::vector<FrameRef> frames_;
  uint32_t head_ = 0;         // first unsent frame
  uint32_t head_offset_ = 0;  // bytes of frames_[head_] already sent
  uint32_t pong_ = none;      // index of the last pong pushed
  uint32_t gathered_end_ = 0; // frames before this index may be in flight
  size_t queued_bytes_ = 0;
  size_t memory_bytes_ = 0;
  size_t in_flight_bytes_ = 0;  // gathered, not yet consumed
  QueueLedger* ledger_ = nullptr;
};

}  // namespace wsgate

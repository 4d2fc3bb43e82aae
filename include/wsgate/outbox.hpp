#pragma once
// What one connection still has to write: shared frames in order, and how
// far into the first one the socket got. Bounded by the owner (the Gateway
// closes a connection whose queued bytes pass send_queue_max_bytes).
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

class Outbox {
 public:
  void push(FrameRef f);
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

  // Asserts (WSGATE_ASSERT) that the byte counts match the frames held.
  // O(frames): for Gateway::check_invariants.
  void check_invariants() const;

  bool empty() const { return head_ == frames_.size(); }
  size_t queued_bytes() const { return queued_bytes_; }
  size_t frame_count() const { return frames_.size() - head_; }

 private:
  // Idle connections keep an empty vector (no heap): frames_ is released
  // when fully drained if it grew.
  std::vector<FrameRef> frames_;
  uint32_t head_ = 0;         // first unsent frame
  uint32_t head_offset_ = 0;  // bytes of frames_[head_] already sent
  size_t queued_bytes_ = 0;
  size_t in_flight_bytes_ = 0;  // gathered, not yet consumed
};

}  // namespace wsgate

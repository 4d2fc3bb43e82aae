#pragma once
// The provided-buffer ring that multishot recv draws from: the kernel picks
// a free buffer when bytes arrive, so a connection holds a receive buffer
// only while its bytes are being handled, never while idle. The loop hands
// each buffer back as soon as its bytes are consumed.
#include <liburing.h>

#include <cstdint>
#include <string>

namespace wsgate::server {

class BufferRing {
 public:
  // entries: a power of two (at most 32768); buffer_bytes: each buffer.
  BufferRing(io_uring& ring, uint16_t group, uint32_t entries, uint32_t buffer_bytes);
  ~BufferRing();
  BufferRing(const BufferRing&) = delete;
  BufferRing& operator=(const BufferRing&) = delete;

  // Registers the ring with the kernel and offers every buffer. Returns an
  // error line, or empty.
  std::string register_with_kernel();

  uint16_t group() const { return group_; }
  uint8_t* buffer(uint16_t id) const { return buffers_ + size_t(id) * buffer_bytes_; }
  // Queues buffer id to be offered again; publish() makes it visible.
  void give_back(uint16_t id);
  // Offers the buffers given back since the last call (one store).
  void publish();
  uint32_t entries() const { return entries_; }
  uint32_t buffer_bytes() const { return buffer_bytes_; }

 private:
  io_uring* ring_;
  io_uring_buf_ring* br_ = nullptr;
  uint8_t* buffers_ = nullptr;
  size_t ring_bytes_ = 0;
  size_t buffers_total_bytes_ = 0;
  uint32_t entries_;
  uint32_t buffer_bytes_;
  uint16_t group_;
  uint16_t pending_ = 0;  // given back, not yet published
  bool registered_ = false;
};

}  // namespace wsgate::server

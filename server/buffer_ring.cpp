#include "buffer_ring.hpp"

#include <sys/mman.h>

#include <cstring>

#include "wsgate/assert.hpp"

namespace wsgate::server {

BufferRing::BufferRing(io_uring& ring, uint16_t group, uint32_t entries, uint32_t buffer_bytes)
    : ring_(&ring), entries_(entries), buffer_bytes_(buffer_bytes), group_(group) {
  WSGATE_ASSERT(entries > 0 && entries <= 32768 && (entries & (entries - 1)) == 0);
}

BufferRing::~BufferRing() {
  if (registered_) io_uring_unregister_buf_ring(ring_, group_);
  if (br_) munmap(br_, ring_bytes_);
  if (buffers_) munmap(buffers_, buffers_total_bytes_);
}

std::string BufferRing::register_with_kernel() {
  ring_bytes_ = size_t(entries_) * sizeof(io_uring_buf);
  void* r = mmap(nullptr, ring_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (r == MAP_FAILED) return std::string("mmap of the buffer ring failed: ") + std::strerror(errno);
  br_ = static_cast<io_uring_buf_ring*>(r);
  // The buffers are touched (and count in RSS) only once the kernel has
  // written into them.
  buffers_total_bytes_ = size_t(entries_) * buffer_bytes_;
  void* b = mmap(nullptr, buffers_total_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (b == MAP_FAILED) return std::string("mmap of receive buffers failed: ") + std::strerror(errno);
  buffers_ = static_cast<uint8_t*>(b);

  io_uring_buf_ring_init(br_);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(br_);
  reg.ring_entries = entries_;
  reg.bgid = group_;
  if (int e = io_uring_register_buf_ring(ring_, &reg, 0); e != 0)
    return std::string("io_uring_register_buf_ring failed: ") + std::strerror(-e);
  registered_ = true;
  for (uint32_t i = 0; i < entries_; ++i) give_back(uint16_t(i));
  publish();
  return {};
}

void BufferRing::give_back(uint16_t id) {
  io_uring_buf_ring_add(br_, buffer(id), buffer_bytes_, id, io_uring_buf_ring_mask(entries_), pending_);
  ++pending_;
}

void BufferRing::publish() {
  if (pending_ == 0) return;
  io_uring_buf_ring_advance(br_, pending_);
  pending_ = 0;
}

}  // namespace wsgate::server

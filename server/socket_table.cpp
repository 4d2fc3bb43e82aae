#include "socket_table.hpp"

#include <sys/mman.h>

#include <cstdlib>
#include <new>

#include "log.hpp"
#include "user_data.hpp"
#include "wsgate/assert.hpp"

namespace wsgate::server {

SocketTable::SocketTable(uint32_t capacity) : capacity_(capacity) {
  WSGATE_ASSERT(capacity > 0 && capacity <= max_slot_index);
  mapped_bytes_ = size_t(capacity) * sizeof(Socket);
  void* p = mmap(nullptr, mapped_bytes_, PROT_READ | PROT_WRITE,
                 MAP_ANONYMOUS | MAP_PRIVATE | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  slots_ = static_cast<Socket*>(p);
}

SocketTable::~SocketTable() {
  for (uint32_t i = 0; i < high_water_; ++i) slots_[i].~Socket();
  munmap(slots_, mapped_bytes_);
}

Socket* SocketTable::allocate(uint32_t& index) {
  if (!free_.empty()) {
    index = free_.back();
    free_.pop_back();
  } else if (high_water_ < capacity_) {
    index = high_water_++;
    new (&slots_[index]) Socket();
  } else {
    return nullptr;
  }
  Socket& s = slots_[index];
  // Always on: a slot handed out twice would mix two connections' bytes.
  if (s.phase != Phase::free) {
    log_line("wsgate fatal: socket slot %u allocated while in use", index);
    std::abort();
  }
  s.phase = Phase::http;
  ++in_use_;
  return &s;
}

void SocketTable::release(uint32_t index) {
  Socket& s = slots_[index];
  if (s.phase != Phase::closing || s.recv_armed || s.send_in_flight || !s.close_done) {
    log_line("wsgate fatal: socket slot %u released with work in flight", index);
    std::abort();
  }
  const uint32_t generation = s.generation + 1;
  s.~Socket();
  new (&s) Socket();
  s.generation = generation;
  free_.push_back(index);
  --in_use_;
}

Socket* SocketTable::find(uint32_t index, uint32_t generation) {
  if (index >= high_water_) return nullptr;
  Socket& s = slots_[index];
  return s.generation == generation && s.phase != Phase::free ? &s : nullptr;
}

}  // namespace wsgate::server

#include "wsgate/outbox.hpp"
#include "wsgate/assert.hpp"

#include <algorithm>


namespace wsgate {

void Outbox::push(FrameRef f) {
  queued_bytes_ += f->size();
  frames_.push_back(std::move(f));
}

size_t Outbox::gather(std::span<ByteRange> out) {
  size_t n = 0, bytes = 0;
  for (size_t i = head_; i < frames_.size() && n < out.size(); ++i, ++n) {
    const size_t skip = i == head_ ? head_offset_ : 0;
    out[n] = ByteRange{frames_[i]->data() + skip, frames_[i]->size() - skip};
    bytes += out[n].size;
  }
  in_flight_bytes_ = std::max(in_flight_bytes_, bytes);
  return n;
}

void Outbox::consume(size_t n) {
  WSGATE_ASSERT(n <= queued_bytes_);
  queued_bytes_ -= n;
  in_flight_bytes_ = n >= in_flight_bytes_ ? 0 : in_flight_bytes_ - n;
  while (n > 0) {
    const size_t left = frames_[head_]->size() - head_offset_;
    if (n < left) {
      head_offset_ += uint32_t(n);
      return;
    }
    n -= left;
    frames_[head_] = FrameRef();  // the frame may be freed now
    ++head_;
    head_offset_ = 0;
  }
  if (head_ == frames_.size()) {
    // Drained: an idle connection should hold no heap. A small vector is
    // kept for reuse, a grown one released.
    if (frames_.capacity() > 16) {
      std::vector<FrameRef>().swap(frames_);
    } else {
      frames_.clear();
    }
    head_ = 0;
  } else if (head_ > 64 && head_ * 2 > frames_.size()) {
    frames_.erase(frames_.begin(), frames_.begin() + head_);
    head_ = 0;
  }
}

void Outbox::clear() {
  std::vector<FrameRef>().swap(frames_);
  head_ = head_offset_ = 0;
  queued_bytes_ = 0;
  in_flight_bytes_ = 0;
}

size_t Outbox::drop_unsent() {
  // Keep what the socket may be reading now, and a frame begun.
  size_t must_keep = std::max<size_t>(in_flight_bytes_, head_offset_ > 0 ? 1 : 0);
  size_t keep = head_;
  for (; keep < frames_.size() && must_keep > 0; ++keep) {
    const size_t left = frames_[keep]->size() - (keep == head_ ? head_offset_ : 0);
    must_keep = left >= must_keep ? 0 : must_keep - left;
  }
  size_t dropped = 0;
  for (size_t i = keep; i < frames_.size(); ++i) dropped += frames_[i]->size();
  frames_.resize(keep);
  queued_bytes_ -= dropped;
  if (head_ == frames_.size()) clear();
  return dropped;
}

void Outbox::check_invariants() const {
  WSGATE_ASSERT(head_ <= frames_.size());
  size_t bytes = 0;
  for (size_t i = head_; i < frames_.size(); ++i) {
    WSGATE_ASSERT(frames_[i] && frames_[i]->size() > 0);
    bytes += frames_[i]->size();
  }
  WSGATE_ASSERT(head_ < frames_.size() ? head_offset_ < frames_[head_]->size() : head_offset_ == 0);
  WSGATE_ASSERT(queued_bytes_ == bytes - head_offset_);
  WSGATE_ASSERT(in_flight_bytes_ <= queued_bytes_);
}

}  // namespace wsgate

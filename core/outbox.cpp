#include "wsgate/outbox.hpp"
#include "wsgate/assert.hpp"

#include <algorithm>
#include <utility>

namespace wsgate {

void Outbox::take(Outbox& o) {
  frames_ = std::move(o.frames_);
  o.frames_.clear();
  head_ = std::exchange(o.head_, 0);
  head_offset_ = std::exchange(o.head_offset_, 0);
  pong_ = std::exchange(o.pong_, none);
  gathered_end_ = std::exchange(o.gathered_end_, 0);
  queued_bytes_ = std::exchange(o.queued_bytes_, 0);
  memory_bytes_ = std::exchange(o.memory_bytes_, 0);
  in_flight_bytes_ = std::exchange(o.in_flight_bytes_, 0);
  ledger_ = o.ledger_;
}

void Outbox::retain(const FrameRef& f) {
  memory_bytes_ += charge_of(f);
  if (f->queued_refs_++ == 0 && ledger_) ledger_->bytes += f->memory_bytes();
  if (ledger_) ledger_->bytes += slot_bytes;
}

void Outbox::release(const FrameRef& f) {
  WSGATE_ASSERT(f->queued_refs_ > 0 && memory_bytes_ >= charge_of(f));
  memory_bytes_ -= charge_of(f);
  if (--f->queued_refs_ == 0 && ledger_) ledger_->bytes -= f->memory_bytes();
  if (ledger_) ledger_->bytes -= slot_bytes;
}

void Outbox::push(FrameRef f) {
  retain(f);
  queued_bytes_ += f->size();
  frames_.push_back(std::move(f));
}

void Outbox::push_pong(FrameRef f) {
  // Replaceable: still queued, not gathered for a send, not begun.
  const bool replaceable = pong_ != none && pong_ >= head_ && pong_ >= gathered_end_ &&
                           !(pong_ == head_ && head_offset_ > 0);
  if (!replaceable) {
    push(std::move(f));
    pong_ = uint32_t(frames_.size() - 1);
    return;
  }
  FrameRef& old = frames_[pong_];
  queued_bytes_ -= old->size();
  release(old);
  retain(f);
  queued_bytes_ += f->size();
  old = std::move(f);
}

size_t Outbox::gather(std::span<ByteRange> out) {
  size_t n = 0, bytes = 0;
  for (size_t i = head_; i < frames_.size() && n < out.size(); ++i, ++n) {
    const size_t skip = i == head_ ? head_offset_ : 0;
    out[n] = ByteRange{frames_[i]->data() + skip, frames_[i]->size() - skip};
    bytes += out[n].size;
  }
  in_flight_bytes_ = std::max(in_flight_bytes_, bytes);
  gathered_end_ = std::max(gathered_end_, uint32_t(head_ + n));
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
      break;
    }
    n -= left;
    release(frames_[head_]);
    frames_[head_] = FrameRef();  // the frame may be freed now
    ++head_;
    head_offset_ = 0;
  }
  if (in_flight_bytes_ == 0) gathered_end_ = head_;
  if (head_ == frames_.size()) {
    // Drained: an idle connection should hold no heap. A small vector is
    // kept for reuse, a grown one released.
    if (frames_.capacity() > 16) {
      std::vector<FrameRef>().swap(frames_);
    } else {
      frames_.clear();
    }
    head_ = gathered_end_ = 0;
    pong_ = none;
  } else if (head_ > 64 && head_ * 2 > frames_.size()) {
    frames_.erase(frames_.begin(), frames_.begin() + head_);
    pong_ = pong_ == none || pong_ < head_ ? none : pong_ - head_;
    gathered_end_ = gathered_end_ > head_ ? gathered_end_ - head_ : 0;
    head_ = 0;
  }
}

void Outbox::clear() {
  for (size_t i = head_; i < frames_.size(); ++i) release(frames_[i]);
  std::vector<FrameRef>().swap(frames_);
  head_ = head_offset_ = gathered_end_ = 0;
  pong_ = none;
  queued_bytes_ = 0;
  in_flight_bytes_ = 0;
  WSGATE_ASSERT(memory_bytes_ == 0);
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
  for (size_t i = keep; i < frames_.size(); ++i) {
    dropped += frames_[i]->size();
    release(frames_[i]);
  }
  frames_.resize(keep);
  queued_bytes_ -= dropped;
  if (pong_ != none && pong_ >= keep) pong_ = none;
  gathered_end_ = std::min(gathered_end_, uint32_t(keep));
  if (head_ == frames_.size()) clear();
  return dropped;
}

}  // namespace wsgate

#pragma once
// A token bucket in integer arithmetic, sans-IO: time comes in as now_ms.
// Tokens are kept in thousandths, so a rate per second refills exactly per
// millisecond and the same inputs always give the same answers (the
// simulator replays them).
#include <algorithm>
#include <cstdint>

namespace wsgate {

class TokenBucket {
 public:
  // A full bucket: a new client may burst at once.
  void fill(uint32_t burst) { milli_ = uint64_t(burst) * 1000; }
  // Adds what elapsed_ms earned at rate_per_s, up to burst.
  void refill(uint64_t elapsed_ms, uint32_t rate_per_s, uint32_t burst) {
    const uint64_t cap = uint64_t(burst) * 1000;
    // elapsed_ms is capped so the product cannot overflow: past one full
    // refill, more time changes nothing.
    const uint64_t earned = std::min<uint64_t>(elapsed_ms, 1ull << 32) * rate_per_s;
    milli_ = std::min(cap, milli_ + std::min(earned, cap));
  }
  bool holds(uint64_t tokens) const { return milli_ >= tokens * 1000; }
  void take(uint64_t tokens) { milli_ -= std::min(milli_, tokens * 1000); }
  uint64_t milli_tokens() const { return milli_; }

 private:
  uint64_t milli_ = 0;
};

}  // namespace wsgate

#pragma once
// The simulator's only source of randomness. Every decision (who connects
// where, when a node crashes, how long a message sits on the bus) is drawn
// from one generator seeded by --seed, so a seed is a complete recipe for a
// run. The std:: distributions are deliberately not used: their algorithms
// differ between standard libraries, and a seed must mean the same run on
// every machine. Everything here is integer arithmetic (plus one exact
// 53-bit conversion in bernoulli), hence portable.
#include <cstdint>

namespace wsgate::sim {

// splitmix64: expands one 64-bit seed into well-mixed words. Used to seed
// xoshiro (whose state must not be all zero) and as a stateless hash.
constexpr uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A stateless mix of one value (for hashing client addresses in ip_hash).
constexpr uint64_t mix64(uint64_t v) { return splitmix64(v); }

// xoshiro256** (Blackman & Vigna): fast, 256 bits of state, passes BigCrush.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    uint64_t x = seed;
    for (uint64_t& w : s_) w = splitmix64(x);
  }

  uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  // Uniform in [0, n), n > 0, without modulo bias (Lemire's method).
  uint64_t below(uint64_t n) {
    unsigned __int128 m = (unsigned __int128)next() * n;
    uint64_t low = uint64_t(m);
    if (low < n) {
      const uint64_t threshold = (0 - n) % n;
      while (low < threshold) {
        m = (unsigned __int128)next() * n;
        low = uint64_t(m);
      }
    }
    return uint64_t(m >> 64);
  }

  // Uniform in [lo, hi] (inclusive).
  uint64_t between(uint64_t lo, uint64_t hi) { return lo + below(hi - lo + 1); }

  // True with probability per_million / 1'000'000: probabilities are given
  // in parts per million so no floating point enters a decision.
  bool chance_ppm(uint32_t per_million) { return below(1000000) < per_million; }

  // Around mean: uniform in [mean/2, 3*mean/2]. Intervals between actions
  // use this rather than an exponential, which would need a libm log whose
  // last bit is not guaranteed identical everywhere.
  uint64_t around(uint64_t mean) { return mean == 0 ? 0 : between(mean / 2, mean + mean / 2); }

  // A child generator for an independent stream (e.g. one per node), so
  // adding draws in one place does not shift every later decision.
  Rng fork() { return Rng(next()); }

 private:
  static constexpr uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

}  // namespace wsgate::sim

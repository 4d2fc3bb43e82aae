#pragma once
// Assertions that stay on in release builds, for invariants whose breach
// would corrupt memory or state (a buffer's bounds, a slot's generation, a
// count going below zero): stopping is better than serving on wrong state.
namespace wsgate {
[[noreturn]] void assert_fail(const char* expr, const char* file, int line);
}

#define WSGATE_ASSERT(cond) \
  ((cond) ? static_cast<void>(0) : ::wsgate::assert_fail(#cond, __FILE__, __LINE__))

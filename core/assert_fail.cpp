// The one place in the core that writes anywhere: the last words of a
// failed invariant, on stderr, before abort(). (Exempt from the sans-IO
// include check for that reason alone.)
#include <cstdio>
#include <cstdlib>

#include "wsgate/assert.hpp"

namespace wsgate {

void assert_fail(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "wsgate: invariant failed: %s (%s:%d)\n", expr, file, line);
  std::abort();
}

}  // namespace wsgate

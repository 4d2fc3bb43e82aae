#include "log.hpp"

#include <unistd.h>

#include <cstdio>

namespace wsgate::server {

void log_line(const char* format, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, format);
  int n = std::vsnprintf(buf, sizeof buf - 1, format, ap);
  va_end(ap);
  if (n < 0) return;
  size_t len = size_t(n) < sizeof buf - 1 ? size_t(n) : sizeof buf - 2;
  buf[len++] = '\n';
  // A failed log write has nowhere to be reported; the result is ignored.
  ssize_t ignored = ::write(STDERR_FILENO, buf, len);
  (void)ignored;
}

}  // namespace wsgate::server

#pragma once
// One line per event on stderr, written with a single write(2) so lines from
// concurrent processes (tests start several nodes) never interleave.
#include <cstdarg>

namespace wsgate::server {

// printf-style; the newline is added. Lines longer than 1 KiB are cut.
void log_line(const char* format, ...) __attribute__((format(printf, 1, 2)));

}  // namespace wsgate::server

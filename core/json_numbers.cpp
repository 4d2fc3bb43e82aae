#include "wsgate/json_numbers.hpp"

namespace wsgate {

bool neutralise_json_numbers(char* p, size_t n) {
  char* const end = p + n;
  while (p < end) {
    if (*p == '"') {
      for (++p; p < end && *p != '"'; ++p)
        if (*p == '\\') ++p;
      if (p >= end) return false;
      ++p;
      continue;
    }
    if (*p != '-' && (*p < '0' || *p > '9')) {
      ++p;
      continue;
    }
    char* q = p;
    if (*q == '-') ++q;
    const char* int_start = q;
    while (q < end && *q >= '0' && *q <= '9') ++q;
    bool ok = q > int_start && !(*int_start == '0' && q - int_start > 1);
    if (ok && q < end && *q == '.') {
      const char* f = ++q;
      while (q < end && *q >= '0' && *q <= '9') ++q;
      ok = q > f;
    }
    if (ok && q < end && (*q == 'e' || *q == 'E')) {
      ++q;
      if (q < end && (*q == '+' || *q == '-')) ++q;
      const char* e = q;
      while (q < end && *q >= '0' && *q <= '9') ++q;
      ok = q > e;
    }
    if (ok) {
      *p = '0';
      for (char* z = p + 1; z < q; ++z) *z = ' ';
    }
    p = q > p ? q : p + 1;
  }
  return true;
}

}  // namespace wsgate

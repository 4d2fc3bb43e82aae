#pragma once
// Writing a JSON string literal: quotes, backslash escapes for '"' and '\',
// \u00XX for control characters; everything else (UTF-8 included) as is.
#include <cstddef>
#include <string>
#include <string_view>

namespace wsgate {

inline size_t json_escaped_bytes(std::string_view s) {
  size_t n = 2;
  for (unsigned char c : s) n += c == '"' || c == '\\' ? 2 : c < 0x20 ? 6 : 1;
  return n;
}

// Writes the literal at out (room for json_escaped_bytes(s)); returns its size.
inline size_t write_json_string(char* out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  char* p = out;
  *p++ = '"';
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      *p++ = '\\';
      *p++ = char(c);
    } else if (c < 0x20) {
      *p++ = '\\'; *p++ = 'u'; *p++ = '0'; *p++ = '0';
      *p++ = hex[c >> 4];
      *p++ = hex[c & 0xF];
    } else {
      *p++ = char(c);
    }
  }
  *p++ = '"';
  return size_t(p - out);
}

inline void append_json_string(std::string& out, std::string_view s) {
  const size_t at = out.size();
  out.resize(at + json_escaped_bytes(s));
  write_json_string(out.data() + at, s);
}

}  // namespace wsgate

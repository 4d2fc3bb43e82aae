#pragma once
// JSON allows numbers of any size, and message content passes through as
// text, but simdjson refuses numbers beyond a double or a 64-bit integer.
// Whoever validates JSON with simdjson checks the rest on a copy where
// every well-formed number reads 0 (MessageParser for client messages,
// TransportInput for what other nodes send).
#include <cstddef>

namespace wsgate {

// Overwrites every number token outside strings that follows the JSON
// number grammar (RFC 8259 section 6) with "0" and spaces, so that only
// the size of a number can no longer make simdjson refuse the document.
// Ill-formed numbers are left for simdjson to refuse. False if a string
// never ends.
bool neutralise_json_numbers(char* p, size_t n);

}  // namespace wsgate

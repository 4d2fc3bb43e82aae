// Parsing one client message of protocol v1.
//
// simdjson's DOM parser validates the whole document (a message that is not
// JSON, or whose content is not, is refused before anything is forwarded)
// and answers the field lookups. The DOM keeps no source positions, so the
// exact text of `content` is then found by a scan of the top-level object
// that may trust the input to be valid JSON. (simdjson's On-Demand API could
// give it too, but Debian's build only offers its scalar fallback kernel to
// code compiled for baseline x86-64; the DOM parser dispatches at run time.)
// The parser is allocated once for the largest message, so parsing
// allocates nothing.
#include "wsgate/protocol.hpp"

#include <cstring>
#include <new>
#include <string>
#include <simdjson.h>

namespace wsgate {

struct MessageParser::Impl {
  explicit Impl(size_t max_bytes)
      : capacity(max_bytes), buffer(new char[max_bytes + simdjson::SIMDJSON_PADDING]) {
    if (dom.allocate(max_bytes) != simdjson::SUCCESS) throw std::bad_alloc();
  }
  size_t capacity;
  std::unique_ptr<char[]> buffer;
  simdjson::dom::parser dom;
  std::string error_text;  // for messages that quote the input
  std::string numbers_neutralised;  // the rare copy for out-of-range numbers
};

MessageParser::MessageParser(size_t max_message_bytes) : impl_(std::make_unique<Impl>(max_message_bytes)) {}
MessageParser::~MessageParser() = default;

namespace {

ParseResult fail(std::string_view why) {
  ParseResult r;
  r.error = why;
  return r;
}

// The longest prefix of s, at most max_bytes, that ends on a character
// boundary and holds only well-formed UTF-8 (RFC 3629): what may be quoted
// back to a client without putting invalid UTF-8 on the wire. A cut in the
// middle of a character, or an invalid byte, ends the prefix there.
std::string_view utf8_prefix(std::string_view s, size_t max_bytes) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // the range of the second byte
    if (c < 0x80) len = 1;
    else if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;        // no overlong forms
      else if (c == 0xED) hi = 0x9F;   // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      else if (c == 0xF4) hi = 0x8F;   // nothing above U+10FFFF
    } else break;
    if (i + len > max_bytes || i + len > s.size()) break;
    bool ok = true;
    for (size_t k = 1; k < len && ok; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    }
    if (!ok) break;
    i += len;
  }
  return s.substr(0, i);
}

bool is_json_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Overwrites every number token outside strings that follows the JSON
// number grammar (RFC 8259 section 6) with "0" and spaces, so that only
// the size of a number can no longer make simdjson refuse the document.
// Ill-formed numbers are left for simdjson to refuse. False if a string
// never ends.
bool neutralise_numbers(char* p, size_t n) {
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

// The scanner below runs only on text simdjson has validated, so it needs
// no error handling: strings end, brackets balance.
const char* skip_space(const char* p) {
  while (is_json_space(*p)) ++p;
  return p;
}

const char* skip_string(const char* p) {  // p at the opening quote
  for (++p; *p != '"'; ++p)
    if (*p == '\\') ++p;
  return p + 1;
}

const char* skip_value(const char* p) {
  if (*p == '"') return skip_string(p);
  if (*p == '{' || *p == '[') {
    int depth = 0;
    do {
      if (*p == '"') {
        p = skip_string(p);
        continue;
      }
      if (*p == '{' || *p == '[') ++depth;
      else if (*p == '}' || *p == ']') --depth;
      ++p;
    } while (depth > 0);
    return p;
  }
  while (*p != ',' && *p != '}' && *p != ']' && !is_json_space(*p) && *p != '\0') ++p;
  return p;
}

// Compares a key as written (between its quotes, escapes and all) with a
// plain ASCII name. Escaped keys are rare; only escapes that can spell
// ASCII are decoded, any other cannot equal an ASCII name.
bool key_equals(std::string_view raw, std::string_view name) {
  size_t i = 0, j = 0;
  while (i < raw.size()) {
    char c = raw[i++];
    if (c == '\\') {
      const char e = raw[i++];
      if (e == 'u') {
        if (raw.compare(i, 2, "00") != 0) return false;
        c = char(std::stoi(std::string(raw.substr(i + 2, 2)), nullptr, 16));
        i += 4;
      } else {
        c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e == 'b' ? '\b' : e == 'f' ? '\f' : e;
      }
    }
    if (j >= name.size() || name[j++] != c) return false;
  }
  return j == name.size();
}

// The source text of the first top-level field called name in a valid JSON
// object, or an empty view if there is none.
std::string_view find_raw_field(const char* p, std::string_view name) {
  p = skip_space(p);
  ++p;  // '{'
  for (;;) {
    p = skip_space(p);
    if (*p != '"') return {};  // '}'
    const char* key_end = skip_string(p);
    const std::string_view key(p + 1, size_t(key_end - p - 2));
    p = skip_space(skip_space(key_end) + 1);  // past ':'
    const char* value_end = skip_value(p);
    if (key_equals(key, name)) return {p, size_t(value_end - p)};
    p = skip_space(value_end);
    if (*p == ',') ++p;
  }
}

}  // namespace

ParseResult MessageParser::parse(std::string_view payload) {
  Impl& m = *impl_;
  if (payload.size() > m.capacity) return fail("Message too large");
  if (!payload.empty()) std::memcpy(m.buffer.get(), payload.data(), payload.size());  // data() may be null
  std::memset(m.buffer.get() + payload.size(), 0, simdjson::SIMDJSON_PADDING);
  const size_t n = payload.size();

  simdjson::dom::element root;
  auto parsed = m.dom.parse(m.buffer.get(), n, false);
  if (parsed.error() == simdjson::NUMBER_ERROR || parsed.error() == simdjson::NUMBER_OUT_OF_RANGE) {
    // JSON allows numbers of any size and content passes through as text,
    // but simdjson refuses those beyond a double or 64-bit integer. Check
    // the rest on a copy whose well-formed numbers all read 0; content is
    // then taken from the original bytes.
    m.numbers_neutralised.assign(m.buffer.get(), n + simdjson::SIMDJSON_PADDING);
    if (!neutralise_numbers(m.numbers_neutralised.data(), n)) return fail("Invalid JSON");
    parsed = m.dom.parse(m.numbers_neutralised.data(), n, false);
  }
  if (parsed.get(root)) return fail("Invalid JSON");
  simdjson::dom::object obj;
  if (root.get_object().get(obj)) return fail("Message must be a JSON object");

  simdjson::dom::element type_el;
  if (obj["type"].get(type_el)) return fail("Missing field: type");
  std::string_view type;
  if (type_el.get_string().get(type)) return fail("Field type must be a string");

  ParseResult r;
  if (type == "ping") {
    r.ok = true;
    r.message.kind = ClientMessageKind::ping;
    return r;
  }
  if (type == "send_message") {
    r.message.kind = ClientMessageKind::send_message;
    simdjson::dom::element target;
    if (obj["target_user"].get(target)) return fail("Missing field: target_user");
    if (target.get_string().get(r.message.target_user)) return fail("Field target_user must be a string");
    if (r.message.target_user.empty()) return fail("Field target_user must not be empty");
  } else if (type == "broadcast") {
    r.message.kind = ClientMessageKind::broadcast;
  } else {
    m.error_text = "Unknown message type: ";
    m.error_text.append(utf8_prefix(type, 64));
    return fail(m.error_text);
  }

  simdjson::dom::element content_el;
  if (obj["content"].get(content_el)) return fail("Missing field: content");

  r.message.content = find_raw_field(m.buffer.get(), "content");
  r.ok = !r.message.content.empty();
  if (!r.ok) return fail("Invalid JSON");  // simdjson found content; we must too
  return r;
}

}  // namespace wsgate

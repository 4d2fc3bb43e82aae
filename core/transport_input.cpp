// Checking what other nodes send (see transport_input.hpp). Runs for every
// transport message, so the envelope is read without a copy and a body is
// validated by one simdjson pass over a buffer allocated once for the
// largest body a node can publish.
#include "wsgate/transport_input.hpp"

#include <cstring>
#include <new>
#include <string>
#include <simdjson.h>

#include "wsgate/json_numbers.hpp"

namespace wsgate {

namespace {

constexpr size_t incarnation_hex_digits = 16;
constexpr size_t max_origin_bytes = max_node_id_bytes + 1 + incarnation_hex_digits;
constexpr std::string_view max_u64_text = "18446744073709551615";
constexpr std::string_view content_infix = R"(,"content":)";
constexpr std::string_view draining_suffix = " draining";

bool is_json_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

bool all_digits(std::string_view s) {
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

// Decimal, no sign, no leading zero (the publisher writes std::to_string).
bool is_canonical_decimal(std::string_view s, size_t max_digits) {
  return !s.empty() && s.size() <= max_digits && all_digits(s) && (s[0] != '0' || s.size() == 1);
}

bool origin_is_valid(std::string_view o) {
  if (o.size() < 1 + 1 + incarnation_hex_digits || o.size() > max_origin_bytes) return false;
  const size_t slash = o.size() - incarnation_hex_digits - 1;
  if (o[slash] != '/') return false;
  for (char c : o.substr(slash + 1))
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return node_id_is_valid(o.substr(0, slash));
}

// 1 to 2^64-1: the publisher counts from 1 and a 64-bit counter never wraps.
bool parse_sequence(std::string_view s, uint64_t& out) {
  if (!is_canonical_decimal(s, max_u64_text.size()) || s == "0") return false;
  if (s.size() == max_u64_text.size() && s > max_u64_text) return false;
  out = 0;
  for (char c : s) out = out * 10 + uint64_t(c - '0');
  return true;
}

// p at the opening quote of a string in text simdjson has validated.
size_t skip_string(std::string_view text, size_t p) {
  for (++p; text[p] != '"'; ++p)
    if (text[p] == '\\') ++p;
  return p + 1;
}

}  // namespace

bool node_id_is_valid(std::string_view id) {
  if (id.empty() || id.size() > max_node_id_bytes) return false;
  for (unsigned char c : id)
    if (c < 0x21 || c == 0x7F) return false;
  return true;
}

TransportInvalid parse_load_report(std::string_view body, LoadReport& out) {
  const size_t space = body.find(' ');
  const std::string_view count = body.substr(0, space);
  const std::string_view rest = space == std::string_view::npos ? std::string_view() : body.substr(space);
  if (!rest.empty() && rest != draining_suffix) return TransportInvalid::load_report;
  if (!is_canonical_decimal(count, 10)) return TransportInvalid::load_report;
  uint64_t n = 0;
  for (char c : count) n = n * 10 + uint64_t(c - '0');
  if (n > UINT32_MAX) return TransportInvalid::load_report;
  out = LoadReport{n, !rest.empty()};
  return TransportInvalid::none;
}

struct TransportInput::Impl {
  explicit Impl(const Limits& l)
      : max_payload(max_transport_payload_bytes(l)),
        capacity(max_delivery_bytes(l)),
        max_user_id(l.max_user_id_bytes),
        buffer(new char[capacity + simdjson::SIMDJSON_PADDING]) {
    if (dom.allocate(capacity) != simdjson::SUCCESS) throw std::bad_alloc();
  }
  uint64_t max_payload;
  size_t capacity;
  size_t max_user_id;
  std::unique_ptr<char[]> buffer;
  simdjson::dom::parser dom;
  std::string numbers_neutralised;  // the rare copy for out-of-range numbers
};

TransportInput::TransportInput(const Limits& limits) : impl_(std::make_unique<Impl>(limits)) {}
TransportInput::~TransportInput() = default;

TransportInvalid TransportInput::parse_envelope(std::string_view p, Envelope& e) const {
  if (p.size() > impl_->max_payload) return TransportInvalid::too_large;
  // Both fields are bounded: look for their ends within their bounds only.
  const size_t a = p.substr(0, max_origin_bytes + 1).find('\n');
  if (a == std::string_view::npos) return TransportInvalid::envelope;
  const size_t b = p.substr(0, a + 1 + max_u64_text.size() + 1).find('\n', a + 1);
  if (b == std::string_view::npos) return TransportInvalid::envelope;
  e.origin = p.substr(0, a);
  if (!origin_is_valid(e.origin)) return TransportInvalid::origin;
  if (!parse_sequence(p.substr(a + 1, b - a - 1), e.seq)) return TransportInvalid::sequence;
  e.body = p.substr(b + 1);
  return TransportInvalid::none;
}

TransportInvalid TransportInput::check_delivery(std::string_view body, std::string_view prefix) {
  Impl& m = *impl_;
  if (body.size() > m.capacity) return TransportInvalid::too_large;
  const size_t n = body.size();
  std::memcpy(m.buffer.get(), body.data(), n);
  std::memset(m.buffer.get() + n, 0, simdjson::SIMDJSON_PADDING);

  // One pass checks UTF-8 and JSON together; see json_numbers.hpp for the
  // second one, on numbers simdjson cannot hold.
  simdjson::dom::element root;
  auto parsed = m.dom.parse(m.buffer.get(), n, false);
  if (parsed.error() == simdjson::NUMBER_ERROR || parsed.error() == simdjson::NUMBER_OUT_OF_RANGE) {
    m.numbers_neutralised.assign(m.buffer.get(), n + simdjson::SIMDJSON_PADDING);
    if (!neutralise_json_numbers(m.numbers_neutralised.data(), n)) return TransportInvalid::json;
    parsed = m.dom.parse(m.numbers_neutralised.data(), n, false);
  }
  if (parsed.error() == simdjson::UTF8_ERROR) return TransportInvalid::utf8;
  if (parsed.get(root)) return TransportInvalid::json;

  // Exactly three fields, in the order the core writes them: "type" (its
  // value is in the prefix), "from" (a user id) and "content".
  if (!body.starts_with(prefix)) return TransportInvalid::shape;
  simdjson::dom::object obj;
  if (root.get_object().get(obj)) return TransportInvalid::shape;
  static constexpr std::string_view keys[] = {"type", "from", "content"};
  size_t i = 0;
  for (auto field : obj) {
    if (i == 3 || field.key != keys[i]) return TransportInvalid::shape;
    if (i == 1) {
      std::string_view from;
      if (field.value.get_string().get(from) || from.empty() || from.size() > m.max_user_id)
        return TransportInvalid::shape;
    }
    ++i;
  }
  if (i != 3) return TransportInvalid::shape;
  // And laid out as the core lays it out: no space around the fields.
  const std::string_view text(m.buffer.get(), n);
  if (text[prefix.size()] != '"') return TransportInvalid::shape;
  const size_t after_from = skip_string(text, prefix.size());
  if (text.substr(after_from, content_infix.size()) != content_infix) return TransportInvalid::shape;
  const size_t content = after_from + content_infix.size();
  if (content + 1 >= n || is_json_space(text[content]) || is_json_space(text[n - 2]) || text[n - 1] != '}')
    return TransportInvalid::shape;
  return TransportInvalid::none;
}

}  // namespace wsgate

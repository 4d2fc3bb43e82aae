// HTTP/1.1 request head parsing and the RFC 6455 section 4.2 handshake.
// Everything here is a pure function over the caller's bytes, except
// RequestHeadParser, which remembers how far it got so a head that arrives
// in many pieces is not re-parsed from its first byte at every piece.
#include "wsgate/handshake.hpp"

#include <openssl/evp.h>
#include <openssl/sha.h>

#include <array>

namespace wsgate {
namespace {

constexpr std::string_view websocket_guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

// RFC 9110 5.6.2: the characters of a token (method, header name). A
// table, because every byte of every header name goes through it.
constexpr std::array<bool, 256> tchar_table = [] {
  std::array<bool, 256> t{};
  for (int c = '0'; c <= '9'; ++c) t[c] = true;
  for (int c = 'a'; c <= 'z'; ++c) t[c] = t[c - 'a' + 'A'] = true;
  for (char c : std::string_view("!#$%&'*+-.^_`|~")) t[static_cast<unsigned char>(c)] = true;
  return t;
}();
constexpr bool is_tchar(unsigned char c) { return tchar_table[c]; }

// Header values may hold visible ASCII, SP, HTAB and obs-text; any other
// control byte (CR, NUL, ...) is a smuggling or injection attempt.
constexpr bool is_field_vchar(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7F); }

constexpr bool is_ows(char c) { return c == ' ' || c == '\t'; }

constexpr char lower(char c) { return (c >= 'A' && c <= 'Z') ? char(c + ('a' - 'A')) : c; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && is_ows(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_ows(s.back())) s.remove_suffix(1);
  return s;
}

bool parse_request_line(std::string_view line, RequestHead& out) {
  size_t sp1 = line.find(' ');
  if (sp1 == 0 || sp1 == std::string_view::npos) return false;
  size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || sp2 == sp1 + 1) return false;
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  for (char c : method)
    if (!is_tchar(static_cast<unsigned char>(c))) return false;
  // A target is visible ASCII only: spaces or controls in it would let a
  // client smuggle a different version or header past a proxy.
  for (char c : target) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7F) return false;
  }
  if (version != "HTTP/1.1" && version != "HTTP/1.0") return false;
  out.method = method;
  out.version = version;
  size_t q = target.find('?');
  out.path = target.substr(0, q);
  out.query = q == std::string_view::npos ? std::string_view{} : target.substr(q + 1);
  return true;
}

// Single-valued headers: a second copy makes the request ambiguous (which
// key would the accept hash be computed over?), so it is malformed.
bool set_once(std::string_view& field, bool& seen, std::string_view value) {
  if (seen) return false;
  seen = true;
  field = value;
  return true;
}

// List-valued headers (Upgrade, Connection) may legitimately be repeated;
// we keep one view, so prefer the copy that carries the token we look for.
void set_list(std::string_view& field, bool& seen, std::string_view value, std::string_view token) {
  if (!seen || (!header_has_token(field, token) && header_has_token(value, token))) field = value;
  seen = true;
}

bool parse_header_line(std::string_view line, RequestHead& out, HeadersSeen& seen) {
  // obs-fold (RFC 9110 5.5) is rejected, as RFC 9112 5.2 allows.
  if (is_ows(line.front())) return false;
  size_t colon = line.find(':');
  if (colon == 0 || colon == std::string_view::npos) return false;
  std::string_view name = line.substr(0, colon);
  for (char c : name)
    if (!is_tchar(static_cast<unsigned char>(c))) return false;  // also no space before ':'
  std::string_view raw = line.substr(colon + 1);
  for (char c : raw)
    if (!is_field_vchar(static_cast<unsigned char>(c))) return false;
  std::string_view value = trim_ows(raw);

  if (iequals(name, "host")) return set_once(out.host, seen.host, value);
  if (iequals(name, "sec-websocket-key")) return set_once(out.websocket_key, seen.key, value);
  if (iequals(name, "sec-websocket-version"))
    return set_once(out.websocket_version, seen.version, value);
  if (iequals(name, "origin")) return set_once(out.origin, seen.origin, value);
  if (iequals(name, "x-real-ip")) out.x_real_ip = value;
  else if (iequals(name, "x-forwarded-for")) out.x_forwarded_for = value;
  if (iequals(name, "upgrade")) set_list(out.upgrade, seen.upgrade, value, "websocket");
  else if (iequals(name, "connection")) set_list(out.connection, seen.connection, value, "upgrade");
  return true;
}

bool is_base64_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/';
}

// RFC 6455 4.2.1 item 5: base64 of exactly 16 bytes is 22 characters and
// "==". Lenient about the unused low bits of the last character, as every
// mainstream server is; they do not change the decoded length.
bool is_valid_websocket_key(std::string_view key) {
  if (key.size() != 24 || key[22] != '=' || key[23] != '=') return false;
  for (size_t i = 0; i < 22; ++i)
    if (!is_base64_char(key[i])) return false;
  return true;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = lower(c);
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// application/x-www-form-urlencoded decoding; nullopt on a bad %XX.
std::optional<std::string> form_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '+') {
      out.push_back(' ');
    } else if (c == '%') {
      if (i + 2 >= s.size()) return std::nullopt;
      int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out.push_back(char(hi * 16 + lo));
      i += 2;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string_view reason_phrase(uint16_t status) {
  switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
  }
}

}  // namespace

HeadStatus parse_request_head(std::string_view buf, size_t max_header_bytes, RequestHead& out) {
  out = RequestHead{};
  // Only the first max_header_bytes can belong to an acceptable head; a
  // terminator beyond them still means the head is too large.
  std::string_view window = buf.substr(0, max_header_bytes);
  HeadersSeen seen;
  size_t pos = 0;
  bool first = true;
  while (true) {
    size_t lf = window.find('\n', pos);
    if (lf == std::string_view::npos)
      return buf.size() >= max_header_bytes ? HeadStatus::too_large : HeadStatus::incomplete;
    std::string_view line = window.substr(pos, lf - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);  // bare LF is tolerated
    pos = lf + 1;
    if (line.empty()) {
      if (first) return HeadStatus::malformed;  // no request line
      out.head_bytes = pos;
      return HeadStatus::complete;
    }
    bool ok = first ? parse_request_line(line, out) : parse_header_line(line, out, seen);
    if (!ok) return HeadStatus::malformed;
    first = false;
  }
}

HeadStatus RequestHeadParser::parse(std::string_view buf, size_t max_header_bytes, RequestHead& out) {
  const std::string_view window = buf.substr(0, max_header_bytes);
  while (scanned_ < window.size()) {
    const size_t lf = window.find('\n', scanned_);
    if (lf == std::string_view::npos) {
      examined_ += window.size() - scanned_;
      scanned_ = window.size();
      break;
    }
    examined_ += lf + 1 - scanned_;
    scanned_ = lf + 1;
    std::string_view line = window.substr(line_start_, lf - line_start_);
    line_start_ = lf + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {
      if (first_line_) return HeadStatus::malformed;  // no request line
      // Every line is known good: one pass to fill `out` with views into
      // buf as it is now (earlier views would point into older buffers).
      examined_ += lf + 1;
      return parse_request_head(buf, max_header_bytes, out);
    }
    // Checked once, as it completes; the views in `scratch` are dropped
    // (the caller's buffer may move before the head is complete).
    RequestHead scratch;
    examined_ += line.size();
    if (!(first_line_ ? parse_request_line(line, scratch) : parse_header_line(line, scratch, seen_)))
      return HeadStatus::malformed;
    first_line_ = false;
  }
  return buf.size() >= max_header_bytes ? HeadStatus::too_large : HeadStatus::incomplete;
}

UpgradeCheck check_upgrade(const RequestHead& head) {
  if (head.method != "GET") return {405, "method must be GET"};
  if (head.version != "HTTP/1.1") return {400, "HTTP/1.1 required"};
  if (head.host.empty()) return {400, "missing Host header"};
  if (!header_has_token(head.upgrade, "websocket")) return {400, "missing or invalid Upgrade header"};
  if (!header_has_token(head.connection, "upgrade"))
    return {400, "missing or invalid Connection header"};
  if (head.websocket_version != "13") return {426, "unsupported WebSocket version"};
  if (!is_valid_websocket_key(head.websocket_key))
    return {400, "missing or invalid Sec-WebSocket-Key"};
  return {};
}

bool header_has_token(std::string_view list, std::string_view token) {
  while (!list.empty()) {
    size_t comma = list.find(',');
    if (iequals(trim_ows(list.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

std::optional<std::string> query_param(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    size_t eq = pair.find('=');
    // Only the literal name: "user%5Fid" is another parameter, so a proxy
    // or a log that matches names literally sees what we see.
    if (pair.substr(0, eq) == name)
      return form_decode(eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

std::string websocket_accept(std::string_view key) {
  // The key is 24 bytes when check_upgrade passed; the general path below
  // keeps the function total for any input.
  std::string input;
  input.reserve(key.size() + websocket_guid.size());
  input.append(key).append(websocket_guid);
  std::array<unsigned char, SHA_DIGEST_LENGTH> digest;
  SHA1(reinterpret_cast<const unsigned char*>(input.data()), input.size(), digest.data());
  // 20 bytes -> 28 base64 characters plus the NUL EVP_EncodeBlock writes.
  std::array<unsigned char, 29> encoded;
  int n = EVP_EncodeBlock(encoded.data(), digest.data(), int(digest.size()));
  return std::string(reinterpret_cast<const char*>(encoded.data()), size_t(n));
}

std::string switching_protocols_response(std::string_view websocket_key) {
  std::string r;
  r.reserve(160);
  r.append("HTTP/1.1 101 Switching Protocols\r\n"
           "Upgrade: websocket\r\n"
           "Connection: Upgrade\r\n"
           "Sec-WebSocket-Accept: ");
  r.append(websocket_accept(websocket_key));
  r.append("\r\n\r\n");
  return r;
}

std::string http_response(uint16_t status, std::string_view content_type, std::string_view body) {
  std::string r;
  r.reserve(160 + body.size());
  r.append("HTTP/1.1 ").append(std::to_string(status)).append(" ");
  r.append(reason_phrase(status)).append("\r\n");
  if (!content_type.empty()) r.append("Content-Type: ").append(content_type).append("\r\n");
  r.append("Content-Length: ").append(std::to_string(body.size())).append("\r\n");
  r.append("Connection: close\r\n");
  // RFC 9110 15.5.6 and 15.5.22: a 405 names the allowed methods, a 426 the
  // protocol to upgrade to; RFC 6455 4.4 adds the versions we speak.
  if (status == 405) r.append("Allow: GET\r\n");
  if (status == 426) r.append("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
  r.append("\r\n").append(body);
  return r;
}

std::string_view forwarded_client_ip(const RequestHead& head) {
  if (!head.x_real_ip.empty()) return head.x_real_ip;
  std::string_view list = head.x_forwarded_for;
  const size_t comma = list.rfind(',');
  if (comma != std::string_view::npos) list.remove_prefix(comma + 1);
  while (!list.empty() && (list.front() == ' ' || list.front() == '\t')) list.remove_prefix(1);
  while (!list.empty() && (list.back() == ' ' || list.back() == '\t')) list.remove_suffix(1);
  return list;
}

}  // namespace wsgate

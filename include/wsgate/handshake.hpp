#pragma once
// The HTTP/1.1 side of a connection: parsing the request head, the RFC 6455
// section 4.2 upgrade checks, and the responses. Pure functions over bytes;
// the driver owns the socket and the buffer.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace wsgate {

// Views into the caller's buffer; valid while it is.
struct RequestHead {
  std::string_view method;
  std::string_view path;   // target before '?'
  std::string_view query;  // after '?', without it; may be empty
  std::string_view version;  // "HTTP/1.1" or "HTTP/1.0"
  std::string_view upgrade;     // header values, trimmed; empty if absent
  std::string_view connection;
  std::string_view websocket_key;
  std::string_view websocket_version;
  std::string_view origin;
  std::string_view host;
  // Set by a reverse proxy; believed only from --trusted-proxies.
  std::string_view x_real_ip;
  std::string_view x_forwarded_for;  // the last such header
  size_t head_bytes = 0;  // through the blank line that ends the head
};

enum class HeadStatus : uint8_t { incomplete, complete, too_large, malformed };

// Parses an HTTP/1.1 request head from the start of buf. incomplete: need
// more bytes (and buf is still under max_header_bytes). A head larger than
// max_header_bytes is too_large even if it is not complete yet.
HeadStatus parse_request_head(std::string_view buf, size_t max_header_bytes, RequestHead& out);

// Which single-valued headers a head has shown so far (a second copy is
// malformed), kept between the calls of RequestHeadParser.
struct HeadersSeen {
  bool key = false, version = false, host = false, origin = false;
  bool upgrade = false, connection = false;
};

// parse_request_head for a head that arrives in pieces. Call parse() with
// the whole buffer each time (the bytes seen before unchanged, new bytes
// appended): it resumes where the last call stopped, so each byte is
// searched once and each line checked once, as it completes. A head
// trickled byte by byte costs O(size) in all, not O(size^2). A malformed
// line is reported as soon as it ends; the head is parsed into `out` once,
// when its blank line arrives. After a status other than incomplete the
// parser is spent.
class RequestHeadParser {
 public:
  HeadStatus parse(std::string_view buf, size_t max_header_bytes, RequestHead& out);
  // Bytes looked at by every call so far: the parser's work, for tests and
  // benchmarks of its cost.
  uint64_t bytes_examined() const { return examined_; }

 private:
  size_t scanned_ = 0;     // bytes searched for a line feed
  size_t line_start_ = 0;  // where the line not yet complete starts
  bool first_line_ = true;
  HeadersSeen seen_;
  uint64_t examined_ = 0;
};

// Result of the RFC 6455 4.2.1 checks on a request for the WebSocket path.
struct UpgradeCheck {
  uint16_t status = 0;          // 0: acceptable; else 400, 405 or 426
  std::string_view reason;      // short, for the response body and the log
  bool ok() const { return status == 0; }
};
UpgradeCheck check_upgrade(const RequestHead& head);

// True if the comma-separated token list contains token (case-insensitive),
// as `Connection: keep-alive, Upgrade` must match "upgrade".
bool header_has_token(std::string_view list, std::string_view token);

// The value of name in an application/x-www-form-urlencoded query string,
// percent-decoded ('+' is a space). nullopt if absent or badly encoded.
// The name matches literally, never after decoding (user%5Fid is not user_id).
std::optional<std::string> query_param(std::string_view query, std::string_view name);

// base64(SHA-1(key + RFC 6455 GUID)), 28 characters.
std::string websocket_accept(std::string_view key);

// The client address a trusted reverse proxy reports: X-Real-IP, else the
// last (rightmost, added by the nearest proxy) entry of X-Forwarded-For.
// Empty if neither is present.
std::string_view forwarded_client_ip(const RequestHead& head);

// The complete 101 response for a validated upgrade.
std::string switching_protocols_response(std::string_view websocket_key);

// A complete HTTP/1.1 response with Content-Length and Connection: close.
// 426 responses carry Sec-WebSocket-Version: 13 (RFC 6455 4.4).
std::string http_response(uint16_t status, std::string_view content_type, std::string_view body);

}  // namespace wsgate

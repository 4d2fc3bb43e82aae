// libFuzzer target for the HTTP side of a connection: arbitrary bytes as a
// request head, then the upgrade checks and query parsing on whatever it
// yields. The parser's views point into the input, so the invariants below
// are about bounds and about agreeing with itself under other limits.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "wsgate/handshake.hpp"

namespace {

// Always on, also in release builds: a fuzzer that only crashes on
// sanitizer reports misses logic errors.
#define FUZZ_CHECK(cond) \
  do {                   \
    if (!(cond)) std::abort(); \
  } while (0)

constexpr size_t kMaxHeaderBytes = 8192;

bool inside(std::string_view v, std::string_view buf) {
  return v.empty() || (v.data() >= buf.data() && v.data() + v.size() <= buf.data() + buf.size());
}

void check_views(const wsgate::RequestHead& h, std::string_view head) {
  for (std::string_view v : {h.method, h.path, h.query, h.version, h.upgrade, h.connection,
                             h.websocket_key, h.websocket_version, h.origin, h.host})
    FUZZ_CHECK(inside(v, head));
}

void check_upgrade_result(const wsgate::RequestHead& h) {
  wsgate::UpgradeCheck c = wsgate::check_upgrade(h);
  FUZZ_CHECK(c.status == 0 || c.status == 400 || c.status == 405 || c.status == 426);
  FUZZ_CHECK(c.ok() == c.reason.empty());
  if (c.ok()) {
    FUZZ_CHECK(h.method == "GET" && h.websocket_key.size() == 24);
    FUZZ_CHECK(wsgate::websocket_accept(h.websocket_key).size() == 28);
    std::string r = wsgate::switching_protocols_response(h.websocket_key);
    FUZZ_CHECK(r.starts_with("HTTP/1.1 101 ") && r.ends_with("\r\n\r\n"));
  } else {
    std::string r = wsgate::http_response(c.status, "text/plain", c.reason);
    FUZZ_CHECK(r.ends_with(c.reason));
  }
}

void check_query(std::string_view query) {
  for (std::string_view name : {"user_id", "token", ""}) {
    std::optional<std::string> v = wsgate::query_param(query, name);
    // Decoding never grows the text: %XX and '+' shrink or keep it.
    if (v) FUZZ_CHECK(v->size() <= query.size());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view buf(reinterpret_cast<const char*>(data), size);
  wsgate::RequestHead h;
  wsgate::HeadStatus s = wsgate::parse_request_head(buf, kMaxHeaderBytes, h);
  if (s == wsgate::HeadStatus::incomplete) FUZZ_CHECK(size < kMaxHeaderBytes);
  if (s == wsgate::HeadStatus::complete) {
    FUZZ_CHECK(h.head_bytes > 0 && h.head_bytes <= size && h.head_bytes <= kMaxHeaderBytes);
    check_views(h, buf.substr(0, h.head_bytes));
    check_upgrade_result(h);
    check_query(h.query);

    // The head does not depend on what follows it, and its size alone
    // decides between complete and too_large.
    wsgate::RequestHead again;
    std::string_view exact = buf.substr(0, h.head_bytes);
    FUZZ_CHECK(wsgate::parse_request_head(exact, h.head_bytes, again) ==
               wsgate::HeadStatus::complete);
    FUZZ_CHECK(again.head_bytes == h.head_bytes && again.path == h.path &&
               again.websocket_key == h.websocket_key);
    FUZZ_CHECK(wsgate::parse_request_head(buf, h.head_bytes - 1, again) ==
               wsgate::HeadStatus::too_large);
    // Every strict prefix is merely incomplete.
    FUZZ_CHECK(wsgate::parse_request_head(exact.substr(0, h.head_bytes - 1), kMaxHeaderBytes,
                                          again) == wsgate::HeadStatus::incomplete);
  }
  // The query parser also sees raw, unframed bytes.
  check_query(buf.substr(0, 512));
  return 0;
}

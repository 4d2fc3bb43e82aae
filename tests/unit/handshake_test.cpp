// The HTTP upgrade: request head parsing (bounds, malformed input,
// incremental arrival) and the RFC 6455 section 4.2 checks and responses.
#include "wsgate/handshake.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

namespace wsgate {
namespace {

constexpr size_t kMax = 8192;

const std::string kRequest =
    "GET /ws?user_id=alice HTTP/1.1\r\n"
    "Host: example.com:8080\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Origin: http://example.com\r\n"
    "\r\n";

HeadStatus parse(std::string_view buf, RequestHead& h, size_t max = kMax) {
  return parse_request_head(buf, max, h);
}

// kRequest with one header line replaced (or removed when value is empty).
std::string with_header(std::string_view name, std::string_view value) {
  std::string out;
  std::string_view rest = kRequest;
  while (!rest.empty()) {
    size_t eol = rest.find("\r\n") + 2;
    std::string_view line = rest.substr(0, eol);
    rest.remove_prefix(eol);
    if (line.starts_with(std::string(name) + ":")) {
      if (!value.empty()) out.append(name).append(": ").append(value).append("\r\n");
    } else {
      out.append(line);
    }
  }
  return out;
}

UpgradeCheck check(const std::string& req) {
  RequestHead h;
  EXPECT_EQ(parse(req, h), HeadStatus::complete) << req;
  return check_upgrade(h);
}

TEST(Handshake, AcceptKeyMatchesRfc6455Sample) {
  EXPECT_EQ(websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

TEST(Handshake, ParsesTypicalRequest) {
  RequestHead h;
  ASSERT_EQ(parse(kRequest, h), HeadStatus::complete);
  EXPECT_EQ(h.method, "GET");
  EXPECT_EQ(h.path, "/ws");
  EXPECT_EQ(h.query, "user_id=alice");
  EXPECT_EQ(h.version, "HTTP/1.1");
  EXPECT_EQ(h.host, "example.com:8080");
  EXPECT_EQ(h.upgrade, "websocket");
  EXPECT_EQ(h.connection, "Upgrade");
  EXPECT_EQ(h.websocket_key, "dGhlIHNhbXBsZSBub25jZQ==");
  EXPECT_EQ(h.websocket_version, "13");
  EXPECT_EQ(h.origin, "http://example.com");
  EXPECT_EQ(h.head_bytes, kRequest.size());
  EXPECT_TRUE(check_upgrade(h).ok());
}

TEST(Handshake, HeaderNamesAreCaseInsensitiveAndValuesTrimmed) {
  std::string req =
      "GET /ws HTTP/1.1\r\nHOST:h\r\nupgrade: \t WebSocket \t\r\ncOnNeCtIoN:upgrade\r\n"
      "sec-websocket-key:   dGhlIHNhbXBsZSBub25jZQ==\r\nSEC-WEBSOCKET-VERSION: 13\r\n\r\n";
  RequestHead h;
  ASSERT_EQ(parse(req, h), HeadStatus::complete);
  EXPECT_EQ(h.upgrade, "WebSocket");
  EXPECT_EQ(h.websocket_key, "dGhlIHNhbXBsZSBub25jZQ==");
  EXPECT_EQ(h.query, "");
  EXPECT_TRUE(check_upgrade(h).ok());
}

TEST(Handshake, AcceptsBareLineFeeds) {
  std::string req = kRequest;
  for (size_t p; (p = req.find("\r\n")) != std::string::npos;) req.erase(p, 1);
  RequestHead h;
  ASSERT_EQ(parse(req, h), HeadStatus::complete);
  EXPECT_EQ(h.head_bytes, req.size());
  EXPECT_TRUE(check_upgrade(h).ok());
}

TEST(Handshake, ConnectionTokenList) {
  EXPECT_TRUE(check(with_header("Connection", "keep-alive, Upgrade")).ok());
  EXPECT_TRUE(check(with_header("Connection", "Upgrade,keep-alive")).ok());
  EXPECT_FALSE(check(with_header("Connection", "keep-alive, Upgrade2")).ok());
  EXPECT_FALSE(check(with_header("Connection", "keep-alive upgrade")).ok());
}

TEST(Handshake, RepeatedConnectionHeaderKeepsTheUpgradeToken) {
  std::string req = with_header("Connection", "keep-alive");
  req.insert(req.size() - 2, "Connection: Upgrade\r\n");
  EXPECT_TRUE(check(req).ok());
}

TEST(Handshake, HeaderHasToken) {
  EXPECT_TRUE(header_has_token("Upgrade", "upgrade"));
  EXPECT_TRUE(header_has_token(" a ,\tUPGRADE\t, b", "upgrade"));
  EXPECT_TRUE(header_has_token(",,upgrade,", "upgrade"));
  EXPECT_FALSE(header_has_token("", "upgrade"));
  EXPECT_FALSE(header_has_token("upgrades", "upgrade"));
  EXPECT_FALSE(header_has_token("up grade", "upgrade"));
}

TEST(Handshake, RejectsWrongMethodWith405) {
  std::string req = kRequest;
  req.replace(0, 3, "POST");
  UpgradeCheck c = check(req);
  EXPECT_EQ(c.status, 405);
  EXPECT_FALSE(c.reason.empty());
}

TEST(Handshake, RejectsHttp10With400) {
  std::string req = kRequest;
  req.replace(req.find("HTTP/1.1"), 8, "HTTP/1.0");
  RequestHead h;
  ASSERT_EQ(parse(req, h), HeadStatus::complete);
  EXPECT_EQ(h.version, "HTTP/1.0");
  EXPECT_EQ(check_upgrade(h).status, 400);
}

TEST(Handshake, RejectsMissingHost) {
  UpgradeCheck c = check(with_header("Host", ""));
  EXPECT_EQ(c.status, 400);
  EXPECT_EQ(c.reason, "missing Host header");
}

TEST(Handshake, RejectsMissingOrWrongUpgrade) {
  for (std::string_view v : {"", "h2c", "websockets"}) {
    UpgradeCheck c = check(with_header("Upgrade", v));
    EXPECT_EQ(c.status, 400) << v;
    EXPECT_EQ(c.reason, "missing or invalid Upgrade header") << v;
  }
}

TEST(Handshake, RejectsMissingOrWrongConnection) {
  for (std::string_view v : {"", "keep-alive", "close"}) {
    UpgradeCheck c = check(with_header("Connection", v));
    EXPECT_EQ(c.status, 400) << v;
    EXPECT_EQ(c.reason, "missing or invalid Connection header") << v;
  }
}

TEST(Handshake, RejectsOtherWebSocketVersionsWith426) {
  for (std::string_view v : {"", "8", "12", "13, 8", "013"}) {
    UpgradeCheck c = check(with_header("Sec-WebSocket-Version", v));
    EXPECT_EQ(c.status, 426) << v;
    EXPECT_EQ(c.reason, "unsupported WebSocket version") << v;
  }
}

TEST(Handshake, RejectsKeysThatAreNotSixteenBytesOfBase64) {
  for (std::string_view v : {
           "",
           "dGhlIHNhbXBsZSBub25jZQ",      // no padding
           "dGhlIHNhbXBsZSBub25jZQ=",     // short padding
           "dGhlIHNhbXBsZSBub25jZQ===",   // 25 characters
           "dGhlIHNhbXBsZSBub25jZSE=",    // 17 bytes
           "dGhlIHNhbXBsZSBub25j",        // 15 bytes
           "dGhlIHNhbXBsZSBub2*jZQ==",    // not base64
       }) {
    UpgradeCheck c = check(with_header("Sec-WebSocket-Key", v));
    EXPECT_EQ(c.status, 400) << v;
    EXPECT_EQ(c.reason, "missing or invalid Sec-WebSocket-Key") << v;
  }
  EXPECT_TRUE(check(with_header("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA==")).ok());
  EXPECT_TRUE(check(with_header("Sec-WebSocket-Key", "+/+/+/+/+/+/+/+/+/+/+w==")).ok());
}

TEST(Handshake, MalformedHeads) {
  for (std::string_view bad : {
           "\r\n",
           "GET /ws\r\n\r\n",
           "GET  /ws HTTP/1.1\r\n\r\n",
           " GET /ws HTTP/1.1\r\n\r\n",
           "GET /ws HTTP/1.1 \r\n\r\n",
           "GET /w s HTTP/1.1\r\n\r\n",
           "GET /ws HTTP/2.0\r\n\r\n",
           "GET /ws http/1.1\r\n\r\n",
           "G(T /ws HTTP/1.1\r\n\r\n",
           "GET /ws HTTP/1.1\r\nHost\r\n\r\n",            // no colon
           "GET /ws HTTP/1.1\r\nHost : h\r\n\r\n",        // space before colon
           "GET /ws HTTP/1.1\r\n: h\r\n\r\n",             // empty name
           "GET /ws HTTP/1.1\r\nHost: h\r\n x\r\n\r\n",   // obs-fold
           "GET /ws HTTP/1.1\r\nHost: h\rx\r\n\r\n",      // bare CR
           "GET /ws HTTP/1.1\r\nX: a\x01z\r\n\r\n",        // control char
           "GET /ws HTTP/1.1\r\nX: a\x7fz\r\n\r\n",        // DEL
           "GET /ws\x01 HTTP/1.1\r\n\r\n",
       }) {
    RequestHead h;
    EXPECT_EQ(parse(bad, h), HeadStatus::malformed) << bad;
  }
  RequestHead h;
  std::string nul_in_value = "GET /ws HTTP/1.1\r\nX: a";
  nul_in_value += '\0';
  nul_in_value += "b\r\n\r\n";
  EXPECT_EQ(parse(nul_in_value, h), HeadStatus::malformed);
}

TEST(Handshake, MalformedLineIsReportedBeforeTheHeadIsComplete) {
  RequestHead h;
  EXPECT_EQ(parse("\x16\x03\x01\x02\xfc\x03\x03\n", h), HeadStatus::malformed);
  EXPECT_EQ(parse("GET /ws HTTP/1.1\r\nbad line\r\nHost: ", h), HeadStatus::malformed);
}

TEST(Handshake, DuplicateSingleValuedHeadersAreMalformed) {
  for (std::string_view dup : {"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
                               "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                               "Host: other\r\n", "Sec-WebSocket-Version: 13\r\n"}) {
    std::string req = kRequest;
    req.insert(req.size() - 2, dup);
    RequestHead h;
    EXPECT_EQ(parse(req, h), HeadStatus::malformed) << dup;
  }
}

TEST(Handshake, HeadSplitAcrossBuffers) {
  RequestHead h;
  // Every prefix is incomplete; the whole is complete.
  for (size_t n = 0; n < kRequest.size(); ++n)
    ASSERT_EQ(parse(std::string_view(kRequest).substr(0, n), h), HeadStatus::incomplete) << n;
  ASSERT_EQ(parse(kRequest, h), HeadStatus::complete);
  EXPECT_TRUE(check_upgrade(h).ok());
}

// Feeds buf to a RequestHeadParser `step` bytes at a time, as the driver
// appends each read to its buffer; returns the first status that is not
// incomplete (or incomplete), and the byte count at which it came.
struct Fed {
  HeadStatus status;
  size_t at;
  uint64_t examined;
};
// buf: the driver's buffer; h's views point into it.
Fed feed(std::string_view whole, RequestHead& h, std::string& buf, size_t step = 1) {
  constexpr size_t max = kMax;
  RequestHeadParser p;
  buf.clear();
  for (size_t at = 0; at < whole.size();) {
    const size_t n = std::min(step, whole.size() - at);
    buf.append(whole.substr(at, n));  // may move the buffer, as the driver's does
    at += n;
    const HeadStatus st = p.parse(buf, max, h);
    if (st != HeadStatus::incomplete) return {st, at, p.bytes_examined()};
  }
  return {HeadStatus::incomplete, whole.size(), p.bytes_examined()};
}

TEST(Handshake, IncrementalParserFedByteByByteAgreesWithTheWholeParse) {
  std::string dup = kRequest;
  dup.insert(dup.size() - 2, "Host: other\r\n");
  const std::string cases[] = {
      kRequest, kRequest + "\x81\x85pipelined", "GET /ws HTTP/1.1\nHost: x\n\n",
      "GET /ws HTTP/1.1\r\nbad line\r\nHost: x\r\n\r\n", "\r\n", dup,
      "GET /ws HTTP/1.1\r\nX-Pad: " + std::string(kMax, 'a'), with_header("Connection", "keep-alive, Upgrade")};
  for (const std::string& c : cases) {
    for (size_t step : {size_t(1), size_t(2), size_t(7), size_t(4096)}) {
      RequestHead whole, inc;
      const HeadStatus expected = parse(c, whole);
      std::string buf;  // inc's views point into it
      const Fed f = feed(c, inc, buf, step);
      ASSERT_EQ(f.status, expected) << "step " << step << ": " << c.substr(0, 40);
      if (expected != HeadStatus::complete) continue;
      EXPECT_EQ(inc.head_bytes, whole.head_bytes);
      EXPECT_EQ(inc.path, whole.path);
      EXPECT_EQ(inc.query, whole.query);
      EXPECT_EQ(inc.host, whole.host);
      EXPECT_EQ(inc.upgrade, whole.upgrade);
      EXPECT_EQ(inc.connection, whole.connection);
      EXPECT_EQ(inc.websocket_key, whole.websocket_key);
    }
  }
}

TEST(Handshake, IncrementalParserReportsAMalformedLineWhenItEnds) {
  RequestHead h;
  std::string buf;
  const std::string bad = "GET /ws HTTP/1.1\r\nbad line\r\nHost: x\r\n";
  const Fed f = feed(bad, h, buf);
  EXPECT_EQ(f.status, HeadStatus::malformed);
  EXPECT_EQ(f.at, bad.find("bad line") + std::string("bad line\r\n").size());
}

TEST(Handshake, IncrementalParserCostIsLinearInTheHeadSize) {
  // An 8 KiB head trickled one byte per read: re-parsing from byte 0 at
  // every read would look at ~size^2/2 = 33 million bytes; resuming looks
  // at each byte a small constant number of times.
  std::string head = "GET /ws?user_id=a HTTP/1.1\r\nHost: x\r\n";
  while (head.size() < kMax - 64) head += "X-Pad: " + std::string(90, 'p') + "\r\n";
  head += "\r\n";
  RequestHead h;
  std::string buf;
  const Fed f = feed(head, h, buf);
  ASSERT_EQ(f.status, HeadStatus::complete);
  EXPECT_EQ(f.at, head.size());
  EXPECT_LE(f.examined, 4 * head.size());
  // Same for a head that never ends (the slowloris case) up to the limit.
  const Fed slow = feed("GET /ws HTTP/1.1\r\nX-Pad: " + std::string(kMax, 'a'), h, buf);
  EXPECT_EQ(slow.status, HeadStatus::too_large);
  EXPECT_LE(slow.examined, 4 * kMax);
}

TEST(Handshake, PipelinedBytesAfterTheHeadAreNotPartOfIt) {
  std::string buf = kRequest + "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
  RequestHead h;
  ASSERT_EQ(parse(buf, h), HeadStatus::complete);
  EXPECT_EQ(h.head_bytes, kRequest.size());
  EXPECT_EQ(buf.substr(h.head_bytes), "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
}

TEST(Handshake, HeadExactlyAtTheLimitIsAcceptedOneByteOverIsTooLarge) {
  RequestHead h;
  const size_t limit = kRequest.size();
  EXPECT_EQ(parse(kRequest, h, limit), HeadStatus::complete);
  EXPECT_EQ(h.head_bytes, limit);
  EXPECT_EQ(parse(kRequest, h, limit - 1), HeadStatus::too_large);
  // Pipelined bytes beyond a head that fits do not count against it.
  EXPECT_EQ(parse(kRequest + "trailing frame bytes", h, limit), HeadStatus::complete);
}

TEST(Handshake, IncompleteHeadReachingTheLimitIsTooLarge) {
  std::string slow = "GET /ws HTTP/1.1\r\nX-Pad: " + std::string(kMax, 'a');
  RequestHead h;
  EXPECT_EQ(parse(std::string_view(slow).substr(0, kMax - 1), h), HeadStatus::incomplete);
  EXPECT_EQ(parse(std::string_view(slow).substr(0, kMax), h), HeadStatus::too_large);
  EXPECT_EQ(parse(slow, h), HeadStatus::too_large);
}

TEST(Handshake, QueryParam) {
  EXPECT_EQ(query_param("user_id=alice", "user_id"), "alice");
  EXPECT_EQ(query_param("a=1&user_id=bob&c=3", "user_id"), "bob");
  EXPECT_EQ(query_param("user_id=a%20b+c%2B", "user_id"), "a b c+");
  EXPECT_EQ(query_param("user_id=%C3%A9", "user_id"), "\xC3\xA9");
  EXPECT_EQ(query_param("user_id=%e9%E9", "user_id"), "\xE9\xE9");
  EXPECT_EQ(query_param("user_id=", "user_id"), "");
  EXPECT_EQ(query_param("user_id", "user_id"), "");
  EXPECT_EQ(query_param("user_id=a=b", "user_id"), "a=b");
  EXPECT_EQ(query_param("user_id=first&user_id=second", "user_id"), "first");
  EXPECT_EQ(query_param("&&user_id=x&", "user_id"), "x");
  EXPECT_EQ(query_param("bad=%zz&user_id=x", "user_id"), "x");  // other pairs may be bad
  EXPECT_EQ(query_param("xuser_id=1&user_idx=2", "user_id"), std::nullopt);
  EXPECT_EQ(query_param("", "user_id"), std::nullopt);
  EXPECT_EQ(query_param("user_id=%", "user_id"), std::nullopt);
  EXPECT_EQ(query_param("user_id=%4", "user_id"), std::nullopt);
  EXPECT_EQ(query_param("user_id=%4g", "user_id"), std::nullopt);
  EXPECT_EQ(query_param("user_id=%zz&user_id=ok", "user_id"), std::nullopt);  // first match wins
  std::optional<std::string> nul = query_param("user_id=a%00b", "user_id");
  ASSERT_TRUE(nul);
  EXPECT_EQ(*nul, std::string("a\0b", 3));
}

TEST(Handshake, QueryParamNameMatchesOnlyLiterally) {
  // An encoded name is another parameter: what a proxy or a log reads as
  // "user%5Fid" must not become the identity.
  EXPECT_EQ(query_param("user%5Fid=x", "user_id"), std::nullopt);
  EXPECT_EQ(query_param("user%5fid=x", "user_id"), std::nullopt);
  EXPECT_EQ(query_param("user%5Fid=x&user_id=y", "user_id"), "y");
  EXPECT_EQ(query_param("%75ser_id=x", "user_id"), std::nullopt);
}

TEST(Handshake, SwitchingProtocolsResponse) {
  EXPECT_EQ(switching_protocols_response("dGhlIHNhbXBsZSBub25jZQ=="),
            "HTTP/1.1 101 Switching Protocols\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            "\r\n");
}

TEST(Handshake, HttpResponse) {
  EXPECT_EQ(http_response(400, "text/plain", "missing Host header"),
            "HTTP/1.1 400 Bad Request\r\n"
            "Content-Type: text/plain\r\n"
            "Content-Length: 19\r\n"
            "Connection: close\r\n"
            "\r\n"
            "missing Host header");
  std::string r426 = http_response(426, "text/plain", "x");
  EXPECT_TRUE(r426.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
  EXPECT_NE(r426.find("\r\nSec-WebSocket-Version: 13\r\n"), std::string::npos);
  EXPECT_NE(http_response(405, "text/plain", "").find("\r\nAllow: GET\r\n"), std::string::npos);
  for (auto [status, phrase] : std::initializer_list<std::pair<uint16_t, std::string_view>>{
           {200, "OK"}, {404, "Not Found"}, {429, "Too Many Requests"},
           {431, "Request Header Fields Too Large"}, {503, "Service Unavailable"}}) {
    std::string r = http_response(status, "application/json", "{}");
    EXPECT_TRUE(r.starts_with("HTTP/1.1 " + std::to_string(status) + " " + std::string(phrase) +
                              "\r\n"))
        << r;
    EXPECT_TRUE(r.ends_with("\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")) << r;
    EXPECT_EQ(r.find("Sec-WebSocket-Version"), std::string::npos);
  }
}

TEST(Handshake, ForwardedClientIpPrefersXRealIpThenTheLastForwardedFor) {
  auto ip_of = [](const std::string& extra) {
    std::string req = kRequest.substr(0, kRequest.size() - 2) + extra + "\r\n";
    RequestHead h;
    EXPECT_EQ(parse(req, h), HeadStatus::complete);
    return std::string(forwarded_client_ip(h));
  };
  EXPECT_EQ(ip_of(""), "");
  EXPECT_EQ(ip_of("X-Forwarded-For: 10.0.0.1, 127.0.5.9 \r\n"), "127.0.5.9");
  EXPECT_EQ(ip_of("X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n"), "2.2.2.2");
  EXPECT_EQ(ip_of("X-Forwarded-For: 1.1.1.1\r\nX-Real-IP: 127.0.7.1\r\n"), "127.0.7.1");
}

}  // namespace
}  // namespace wsgate

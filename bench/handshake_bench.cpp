// The per-connection cost of the HTTP upgrade, from request bytes to the
// 101 response: what a connection storm pays for each new client.
#include <benchmark/benchmark.h>

#include <string>
#include <string_view>

#include "wsgate/handshake.hpp"

namespace {

// What Firefox sends; header order and sizes as seen in the wild.
constexpr std::string_view kBrowserUpgrade =
    "GET /ws?user_id=alice HTTP/1.1\r\n"
    "Host: chat.example.com\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
    "Accept: */*\r\n"
    "Accept-Language: en-US,en;q=0.5\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Origin: https://chat.example.com\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
    "Connection: keep-alive, Upgrade\r\n"
    "Sec-Fetch-Dest: websocket\r\n"
    "Sec-Fetch-Mode: websocket\r\n"
    "Sec-Fetch-Site: same-origin\r\n"
    "Pragma: no-cache\r\n"
    "Cache-Control: no-cache\r\n"
    "Upgrade: websocket\r\n"
    "\r\n";

void BM_ParseRequestHead(benchmark::State& state) {
  for (auto _ : state) {
    wsgate::RequestHead head;
    benchmark::DoNotOptimize(wsgate::parse_request_head(kBrowserUpgrade, 8192, head));
    benchmark::DoNotOptimize(head);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * int64_t(kBrowserUpgrade.size()));
}
BENCHMARK(BM_ParseRequestHead);

void BM_WebSocketAccept(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(wsgate::websocket_accept("x3JJHMbDL1EzLkh9GBhXDw=="));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_WebSocketAccept);

// The whole upgrade: parse, validate, read the identity, build the 101.
void BM_FullUpgrade(benchmark::State& state) {
  for (auto _ : state) {
    wsgate::RequestHead head;
    if (wsgate::parse_request_head(kBrowserUpgrade, 8192, head) != wsgate::HeadStatus::complete ||
        !wsgate::check_upgrade(head).ok()) {
      state.SkipWithError("the sample request must be a valid upgrade");
      break;
    }
    benchmark::DoNotOptimize(wsgate::query_param(head.query, "user_id"));
    benchmark::DoNotOptimize(wsgate::switching_protocols_response(head.websocket_key));
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * int64_t(kBrowserUpgrade.size()));
}
BENCHMARK(BM_FullUpgrade);

// A head of about 8 KiB trickled one byte per read (a slowloris client, or
// a very fragmented network): the work the driver does for it in all.
std::string eight_kib_head() {
  std::string head = "GET /ws?user_id=a HTTP/1.1\r\nHost: x\r\n";
  while (head.size() < 8192 - 64) head += "X-Pad: " + std::string(90, 'p') + "\r\n";
  return head + "\r\n";
}

// Before: the whole buffer re-parsed from byte 0 at every read (quadratic).
void BM_TrickledHeadReparsedFromTheStart(benchmark::State& state) {
  const std::string head = eight_kib_head();
  for (auto _ : state) {
    std::string buf;
    wsgate::RequestHead h;
    for (char c : head) {
      buf.push_back(c);
      benchmark::DoNotOptimize(wsgate::parse_request_head(buf, 8192, h));
    }
  }
  state.SetBytesProcessed(state.iterations() * int64_t(head.size()));
}
BENCHMARK(BM_TrickledHeadReparsedFromTheStart)->Unit(benchmark::kMicrosecond);

// After: RequestHeadParser resumes where it stopped (linear).
void BM_TrickledHeadParsedIncrementally(benchmark::State& state) {
  const std::string head = eight_kib_head();
  for (auto _ : state) {
    std::string buf;
    wsgate::RequestHead h;
    wsgate::RequestHeadParser p;
    for (char c : head) {
      buf.push_back(c);
      benchmark::DoNotOptimize(p.parse(buf, 8192, h));
    }
  }
  state.SetBytesProcessed(state.iterations() * int64_t(head.size()));
}
BENCHMARK(BM_TrickledHeadParsedIncrementally)->Unit(benchmark::kMicrosecond);

}  // namespace

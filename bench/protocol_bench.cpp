// The hot path of a message: parsing what a client sent, and fanning a
// broadcast out. Fan-out is measured per recipient, since the design's
// promise is one encode per broadcast and one reference per recipient.
#include <benchmark/benchmark.h>

#include <string>
#include <string_view>
#include <vector>

#include "wsgate/frame.hpp"
#include "wsgate/json_escape.hpp"
#include "wsgate/outbox.hpp"
#include "wsgate/protocol.hpp"

namespace {

constexpr size_t kMaxMessageBytes = 64 * 1024;

std::string send_message_with(std::string_view content) {
  return std::string(R"({"type":"send_message","target_user":"bob","content":)")
      .append(content)
      .append("}");
}

// A JSON object of about n bytes: an array of small records, the shape of
// a typical application payload rather than one long string.
std::string object_content(size_t n) {
  std::string s = R"({"items":[)";
  for (int i = 0; s.size() + 64 < n; ++i) {
    if (i) s += ',';
    s += R"({"id":)" + std::to_string(i) + R"(,"name":"item\u00e9","price":1.50e3,"ok":true})";
  }
  return s + "]}";
}

void run_parse(benchmark::State& state, const std::string& payload) {
  wsgate::MessageParser parser(kMaxMessageBytes);
  if (!parser.parse(payload).ok) {
    state.SkipWithError("the sample message must parse");
    return;
  }
  for (auto _ : state) benchmark::DoNotOptimize(parser.parse(payload));
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * int64_t(payload.size()));
}

void BM_ParsePing(benchmark::State& state) { run_parse(state, R"({"type":"ping"})"); }
BENCHMARK(BM_ParsePing);

void BM_ParseSendMessageSmall(benchmark::State& state) {
  run_parse(state, send_message_with(R"({"text":"hello there","ts":1700000000123,"n":[1,2,3]})"));
}
BENCHMARK(BM_ParseSendMessageSmall);

void BM_ParseSendMessage4KiB(benchmark::State& state) {
  run_parse(state, send_message_with(object_content(4096)));
}
BENCHMARK(BM_ParseSendMessage4KiB);

// As the gateway does it: prefix, escaped sender, raw content, in one
// allocation.
wsgate::FrameRef encode_broadcast(std::string_view from, std::string_view content) {
  constexpr std::string_view prefix = R"({"type":"broadcast","from":)";
  constexpr std::string_view infix = R"(,"content":)";
  wsgate::FrameBuilder b(prefix.size() + wsgate::json_escaped_bytes(from) + infix.size() +
                         content.size() + 1);
  b.append(prefix);
  b.append_json_string(from);
  b.append(infix);
  b.append(content);
  b.append("}");
  return b.finish();
}

void BM_EncodeBroadcastFrame(benchmark::State& state) {
  const std::string content = object_content(size_t(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(encode_broadcast("alice", content));
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * int64_t(content.size()));
}
BENCHMARK(BM_EncodeBroadcastFrame)->Arg(64)->Arg(4096);

// One broadcast to 1000 connections: one encode, 1000 pushes of a shared
// reference, then the sockets "write" it all. items/s is deliveries/s; no
// bytes/s, since no payload byte is copied per recipient and the figure
// would only restate that.
void BM_BroadcastTo1000Outboxes(benchmark::State& state) {
  constexpr int kRecipients = 1000;
  const std::string content = object_content(size_t(state.range(0)));
  std::vector<wsgate::Outbox> outboxes(kRecipients);
  for (auto _ : state) {
    wsgate::FrameRef f = encode_broadcast("alice", content);
    for (wsgate::Outbox& o : outboxes) o.push(f);
    for (wsgate::Outbox& o : outboxes) o.consume(o.queued_bytes());
  }
  state.SetItemsProcessed(state.iterations() * kRecipients);
}
BENCHMARK(BM_BroadcastTo1000Outboxes)->Arg(64)->Arg(4096);

// The same with each recipient's queue already holding a frame, so the
// push lands behind pending bytes as it does under load.
void BM_BroadcastTo1000BusyOutboxes(benchmark::State& state) {
  constexpr int kRecipients = 1000;
  const std::string content = object_content(64);
  std::vector<wsgate::Outbox> outboxes(kRecipients);
  const wsgate::FrameRef pending = wsgate::FrameRef::encode(wsgate::Opcode::text, "pending");
  for (auto _ : state) {
    state.PauseTiming();
    for (wsgate::Outbox& o : outboxes) o.push(pending);
    state.ResumeTiming();
    wsgate::FrameRef f = encode_broadcast("alice", content);
    for (wsgate::Outbox& o : outboxes) o.push(f);
    state.PauseTiming();
    for (wsgate::Outbox& o : outboxes) o.consume(o.queued_bytes());
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * kRecipients);
}
BENCHMARK(BM_BroadcastTo1000BusyOutboxes);

}  // namespace

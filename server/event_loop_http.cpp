// The HTTP phase of a socket: the request head is gathered (bounded by
// max_header_bytes, and by the handshake deadline in event_loop.cpp), then
// routed: /ws upgrades to a WebSocket, /health and /metrics answer and
// close, anything else is refused.
#include <cstring>

#include <algorithm>

#include "event_loop.hpp"
#include "http_router.hpp"
#include "log.hpp"

namespace wsgate::server {
void EventLoop::handle_http_bytes(Socket& s, uint32_t index, const uint8_t* data, size_t n) {
  if (!s.http) s.http = std::make_unique<HttpState>();
  HttpState& h = *s.http;
  if (h.responding) return;  // a plain response is on its way; the rest is ignored
  h.head.append(reinterpret_cast<const char*>(data), n);
  RequestHead head;
  switch (h.parser.parse(h.head, options_.limits.max_header_bytes, head)) {
    case HeadStatus::incomplete:
      return;
    case HeadStatus::too_large:
      gateway_.metrics().reject(RejectReason::header_too_large);
      return respond(s, index, 431, "text/plain", "request header fields too large");
    case HeadStatus::malformed:
      gateway_.metrics().reject(RejectReason::bad_request);
      return respond(s, index, 400, "text/plain", "malformed request");
    case HeadStatus::complete:
      return handle_request(s, index, head);
  }
}

void EventLoop::handle_request(Socket& s, uint32_t index, const RequestHead& head) {
  switch (route_request(head)) {
    case Route::websocket:
      return upgrade(s, index, head);
    case Route::health:
      return respond(s, index, 200, "application/json", gateway_.render_health());
    case Route::ready:
      return respond(s, index, gateway_.not_ready_reason().empty() ? 200 : 503, "application/json",
                     gateway_.render_ready());
    case Route::metrics:
      return respond(s, index, 200, "text/plain; version=0.0.4", render_metrics());
    case Route::method_not_allowed:
      gateway_.metrics().reject(RejectReason::bad_request);
      return respond(s, index, 405, "text/plain", "method not allowed");
    case Route::not_found:
      gateway_.metrics().reject(RejectReason::not_found);
      return respond(s, index, 404, "text/plain", "not found");
  }
}

// Behind a trusted reverse proxy every connection comes from the proxy's
// address; the client's is in the headers the proxy sets.
std::string EventLoop::client_ip(const Socket& s, const RequestHead& head) const {
  std::string peer = peer_ip_bytes(s.fd);
  if (options_.trusted_proxies.empty()) return peer;
  if (std::find(options_.trusted_proxies.begin(), options_.trusted_proxies.end(), peer) ==
      options_.trusted_proxies.end())
    return peer;
  const std::string forwarded = ip_to_bytes(std::string(forwarded_client_ip(head)));
  return forwarded.empty() ? peer : forwarded;
}

// RFC 6455 4.2: validate, admit, answer 101, open the core connection and
// hand it whatever the client sent after its head (a pipelined first frame).
void EventLoop::upgrade(Socket& s, uint32_t index, const RequestHead& head) {
  const UpgradeCheck check = check_upgrade(head);
  if (!check.ok()) {
    gateway_.metrics().reject(check.status == 426 ? RejectReason::bad_version : RejectReason::bad_request);
    return respond(s, index, check.status, "text/plain", check.reason);
  }
  switch (gateway_.handle_upgrade_request(client_ip(s, head), now_ms_)) {
    case Admission::ok:
      break;
    case Admission::too_many_connections:
      gateway_.metrics().reject(RejectReason::too_many_connections);
      return respond(s, index, 503, "text/plain", "too many connections");
    case Admission::rate_limited:
      gateway_.metrics().reject(RejectReason::rate_limited);
      return respond(s, index, 429, "text/plain", "too many connections from this address");
    case Admission::draining:
      gateway_.metrics().reject(RejectReason::draining);
      return respond(s, index, 503, "text/plain", "node is draining");
    case Admission::too_many_open_per_ip:
      gateway_.metrics().reject(RejectReason::too_many_open_per_ip);
      return respond(s, index, 429, "text/plain", "too many open connections from this address");
    case Admission::queue_budget:
      gateway_.metrics().reject(RejectReason::queue_budget);
      return respond(s, index, 503, "text/plain", "node send queues near their memory budget");
  }
  // A missing or badly encoded user_id opens with "" and the core closes
  // 4001; one that is too long is passed on, and the core closes 4001 too,
  // saying why.
  const std::string user_id = query_param(head.query, "user_id").value_or("");
  HttpState& h = *s.http;
  std::string response = switching_protocols_response(head.websocket_key);
  std::string pipelined = h.head.substr(head.head_bytes);  // head's views die below

  // The core keeps our slot reference for this connection (socket_of).
  const ConnId conn = gateway_.handle_open(user_id, now_ms_, socket_tag(index, s.generation));
  s.conn = conn;
  s.ws.emplace(gateway_, conn, options_.limits);
  s.phase = Phase::websocket;
  --http_sockets_;

  h.response = std::move(response);
  h.responding = true;
  h.close_after_response = false;
  std::string().swap(h.head);  // the head buffer is not kept past the handshake
  mark_write_pending(s, index);
  if (!pipelined.empty()) {
    s.ws->feed(reinterpret_cast<const uint8_t*>(pipelined.data()), pipelined.size(), now_ms_);
    settle_session(s, index);
  }
}

void EventLoop::evict_oldest_handshake() {
  // The deadlines are in accept order, so the front is the oldest socket;
  // entries of sockets that moved on are dropped on the way.
  while (!handshake_deadlines_.empty()) {
    const SlotRef r = handshake_deadlines_.front().slot;
    handshake_deadlines_.pop_front();
    Socket* s = sockets_.find(r.index, r.generation);
    if (!s || s->phase != Phase::http) continue;
    ++handshakes_evicted_total_;
    teardown(*s, r.index);
    return;
  }
}

void EventLoop::respond(Socket& s, uint32_t index, uint16_t status, std::string_view content_type,
                        std::string_view body) {
  HttpState& h = *s.http;
  h.response = http_response(status, content_type, body);
  h.response_sent = 0;
  h.responding = true;
  h.close_after_response = true;
  std::string().swap(h.head);
  mark_write_pending(s, index);
}

std::string EventLoop::render_metrics() const {
  std::string out = gateway_.metrics().render_prometheus(options_.node_id);
  PrometheusWriter w{out, options_.node_id};
  w.metric("wsgate_recv_buffers_exhausted_total", "counter",
           "Multishot receives stopped because every provided receive buffer was in use (re-armed).",
           recv_buffers_exhausted_total_);
  w.metric("wsgate_pending_handshakes", "gauge",
           "Sockets accepted and not yet upgraded (reading a request head or writing a plain response).",
           http_sockets_);
  w.metric("wsgate_handshakes_evicted_total", "counter",
           "Pending handshakes closed to make room at --max-pending-handshakes (the oldest first).",
           handshakes_evicted_total_);
  w.metric("wsgate_io_uring_sq_full_total", "counter",
           "Submissions that found the io_uring submission queue full and submitted it first.", sq_full_total_);
  w.metric("wsgate_io_uring_sq_refused_total", "counter",
           "Submissions the kernel refused (completion queue backed up); completions were set aside and it was "
           "retried.",
           sq_busy_total_);
  w.metric("wsgate_sockets_in_use", "gauge", "Sockets held by the event loop (handshakes included).",
           sockets_.in_use());
  render_shm_metrics(w);
  render_redis_metrics(w);
  return out;
}

}  // namespace wsgate::server

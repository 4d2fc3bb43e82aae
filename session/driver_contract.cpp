#include "driver_contract.hpp"

#include <algorithm>

namespace wsgate {

void run_flush_round(Gateway& gw, SessionHost& host) {
  for (const CloseRequest& req : gw.take_closes()) {
    WsSession* ws = host.session_of(req.id);
    if (!ws) continue;
    host.note_close_request(req);
    ws->close(req.code, req.reason);
    host.settle(req.id, *ws);
  }
  for (ConnId id : gw.take_dirty()) {
    if (!gw.is_open(id)) continue;  // closed since it was marked
    if (WsSession* ws = host.session_of(id)) host.write(id, *ws);
  }
}

size_t gather_writable(Gateway& gw, WsSession& ws, ConnId id, std::span<ByteRange> ranges, size_t budget) {
  if (!gw.is_open(id)) return 0;
  Outbox& out = gw.outbox(id);
  budget = std::min(budget, ws.writable_bytes(out.queued_bytes()));
  if (budget == 0 || out.empty()) return 0;
  const size_t n = out.gather(ranges);
  size_t k = 0;
  for (; k < n && budget > 0; ++k) {
    ranges[k].size = std::min(ranges[k].size, budget);
    budget -= ranges[k].size;
  }
  return k;
}

void record_written(Gateway& gw, WsSession& ws, ConnId id, size_t n) {
  if (n == 0 || !gw.is_open(id)) return;
  gw.handle_sent(id, n);
  ws.handle_written(n);
}

SettleDecision decide_settle(const WsSession& ws, bool close_timer_started, bool peer_gone) {
  SettleDecision d;
  d.start_close_timer = ws.close_queued() && !close_timer_started;
  d.close_socket = ws.wants_socket_closed() || (peer_gone && ws.close_written());
  return d;
}

}  // namespace wsgate

#include "wsgate/metrics.hpp"
#include "wsgate/prometheus_writer.hpp"

#include <string_view>

namespace wsgate {

const char* reject_reason_name(RejectReason r) {
  switch (r) {
    case RejectReason::bad_request: return "bad_request";
    case RejectReason::bad_version: return "bad_version";
    case RejectReason::header_too_large: return "header_too_large";
    case RejectReason::handshake_timeout: return "handshake_timeout";
    case RejectReason::too_many_connections: return "too_many_connections";
    case RejectReason::rate_limited: return "rate_limited";
    case RejectReason::not_found: return "not_found";
    case RejectReason::draining: return "draining";
    case RejectReason::too_many_open_per_ip: return "too_many_open_per_ip";
    case RejectReason::queue_budget: return "queue_budget";
    case RejectReason::count_: break;
  }
  return "unknown";
}

const char* transport_invalid_name(TransportInvalid r) {
  switch (r) {
    case TransportInvalid::none: return "none";
    case TransportInvalid::too_large: return "too_large";
    case TransportInvalid::envelope: return "envelope";
    case TransportInvalid::origin: return "origin";
    case TransportInvalid::sequence: return "sequence";
    case TransportInvalid::topic: return "topic";
    case TransportInvalid::utf8: return "utf8";
    case TransportInvalid::json: return "json";
    case TransportInvalid::shape: return "shape";
    case TransportInvalid::load_report: return "load_report";
    case TransportInvalid::count_: break;
  }
  return "unknown";
}

const char* message_type_name(MessageType t) {
  switch (t) {
    case MessageType::ping: return "ping";
    case MessageType::pong: return "pong";
    case MessageType::send_message: return "send_message";
    case MessageType::message: return "message";
    case MessageType::broadcast: return "broadcast";
    case MessageType::error: return "error";
    case MessageType::count_: break;
  }
  return "unknown";
}

std::string Metrics::render_prometheus(std::string_view node_id) const {
  std::string out;
  out.reserve(4096);
  PrometheusWriter w{out, node_id};
  w.header("wsgate_connections_open", "gauge", "WebSocket connections currently open.");
  w.sample("wsgate_connections_open", connections_open);
  w.header("wsgate_connections_accepted_total", "counter", "WebSocket upgrades completed.");
  w.sample("wsgate_connections_accepted_total", connections_accepted_total);
  w.header("wsgate_connections_rejected_total", "counter", "Connections refused or dropped before the upgrade, by reason.");
  for (size_t i = 0; i < size_t(RejectReason::count_); ++i)
    w.sample("wsgate_connections_rejected_total", connections_rejected_total[i], "reason", reject_reason_name(RejectReason(i)));
  w.header("wsgate_messages_in_total", "counter", "Protocol messages received, by type.");
  for (size_t i = 0; i < size_t(MessageType::count_); ++i)
    if (MessageType(i) == MessageType::ping || MessageType(i) == MessageType::send_message || MessageType(i) == MessageType::broadcast)
      w.sample("wsgate_messages_in_total", messages_in_total[i], "type", message_type_name(MessageType(i)));
  w.header("wsgate_messages_out_total", "counter", "Protocol messages queued to connections, by type (a broadcast counts once per recipient).");
  for (size_t i = 0; i < size_t(MessageType::count_); ++i)
    if (MessageType(i) != MessageType::ping && MessageType(i) != MessageType::send_message)
      w.sample("wsgate_messages_out_total", messages_out_total[i], "type", message_type_name(MessageType(i)));
  w.header("wsgate_messages_invalid_total", "counter", "Messages answered with an error: bad JSON, unknown type, missing field.");
  w.sample("wsgate_messages_invalid_total", messages_invalid_total);
  w.header("wsgate_messages_undeliverable_total", "counter", "Direct messages whose target user was not connected (dropped).");
  w.sample("wsgate_messages_undeliverable_total", messages_undeliverable_total);
  w.header("wsgate_bytes_in_total", "counter", "Bytes read from client sockets.");
  w.sample("wsgate_bytes_in_total", bytes_in_total);
  w.header("wsgate_bytes_out_total", "counter", "Bytes written to client sockets.");
  w.sample("wsgate_bytes_out_total", bytes_out_total);
  w.header("wsgate_slow_consumer_closes_total", "counter", "Connections closed (1008) because their send queue passed send_queue_max_bytes.");
  w.sample("wsgate_slow_consumer_closes_total", slow_consumer_closes_total);
  w.header("wsgate_heartbeat_timeouts_total", "counter", "Connections closed because nothing arrived within idle_timeout_ms.");
  w.sample("wsgate_heartbeat_timeouts_total", heartbeat_timeouts_total);
  w.header("wsgate_protocol_error_closes_total", "counter", "Connections closed for framing errors (1002, 1003, 1007, 1009).");
  w.sample("wsgate_protocol_error_closes_total", protocol_error_closes_total);
  w.header("wsgate_transport_published_total", "counter", "Messages handed to the transport for other nodes.");
  w.sample("wsgate_transport_published_total", transport_published_total);
  w.header("wsgate_transport_publish_failed_total", "counter", "Publishes the transport refused (backpressure or unavailable); the sender got an error.");
  w.sample("wsgate_transport_publish_failed_total", transport_publish_failed_total);
  w.header("wsgate_transport_publish_lost_total", "counter", "Publishes the transport accepted and later reported lost (connection dropped before confirming); the sender got an error.");
  w.sample("wsgate_transport_publish_lost_total", transport_publish_lost_total);
  w.header("wsgate_transport_received_total", "counter", "Messages received from other nodes through the transport.");
  w.sample("wsgate_transport_received_total", transport_received_total);
  w.header("wsgate_transport_connected", "gauge", "1 while the transport backend is reachable.");
  w.sample("wsgate_transport_connected", transport_connected);
  w.header("wsgate_transport_stale_dropped_total", "counter", "Transport messages dropped as duplicated or out of order.");
  w.sample("wsgate_transport_stale_dropped_total", transport_stale_dropped_total);
  w.header("wsgate_transport_invalid_total", "counter",
           "Transport messages dropped unread because no node of this cluster sends them, by reason.");
  for (size_t i = 1; i < size_t(TransportInvalid::count_); ++i)
    w.sample("wsgate_transport_invalid_total", transport_invalid_total[i], "reason", transport_invalid_name(TransportInvalid(i)));
  w.header("wsgate_rebalance_closes_total", "counter", "Connections asked to reconnect elsewhere (4002) to even out load.");
  w.sample("wsgate_rebalance_closes_total", rebalance_closes_total);
  w.header("wsgate_drain_closes_total", "counter", "Connections closed (1001) while the node drained.");
  w.sample("wsgate_drain_closes_total", drain_closes_total);
  w.header("wsgate_rate_limited_messages_total", "counter", "Client messages dropped (answered with an error) past the per-connection message or byte rate.");
  w.sample("wsgate_rate_limited_messages_total", rate_limited_messages_total);
  w.header("wsgate_rate_limit_closes_total", "counter", "Connections closed (1008) for exceeding the message or byte rate client_max_rate_refusals times in a window.");
  w.sample("wsgate_rate_limit_closes_total", rate_limit_closes_total);
  w.header("wsgate_queue_budget_closes_total", "counter", "Connections with the largest send queues closed (1008) because the node's queued memory passed node_send_queue_max_bytes.");
  w.sample("wsgate_queue_budget_closes_total", queue_budget_closes_total);
  w.header("wsgate_queued_memory_bytes", "gauge", "Memory of every frame queued to client connections (a shared frame counted once).");
  w.sample("wsgate_queued_memory_bytes", queued_memory_bytes);
  return out;
}

// Label values come from our own enums and the node id; the node id is the
// only free text, so it alone is escaped.
void PrometheusWriter::header(std::string_view name, std::string_view type, std::string_view help) {
  out_.append("# HELP ").append(name).append(" ").append(help).append("\n");
  out_.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

void PrometheusWriter::sample(std::string_view name, uint64_t value, std::string_view label,
                              std::string_view label_value) {
  out_.append(name).append("{node_id=\"");
  for (char c : node_) {
    if (c == '\\' || c == '"') out_ += '\\';
    if (c == '\n') {
      out_ += "\\n";
      continue;
    }
    out_ += c;
  }
  out_ += '"';
  if (!label.empty()) out_.append(",").append(label).append("=\"").append(label_value).append("\"");
  out_.append("} ").append(std::to_string(value)).append("\n");
}

}  // namespace wsgate

#pragma once
// Counters the node exports on /metrics. The core and the driver both add to
// them; the core renders them. Plain integers: one loop thread owns them.
#include <cstdint>
#include <string>

namespace wsgate {

enum class RejectReason : uint8_t {
  bad_request,     // 400: malformed or non-upgrade request
  bad_version,     // 426: Sec-WebSocket-Version not 13
  header_too_large,// 431
  handshake_timeout,
  too_many_connections,  // 503
  rate_limited,    // 429
  draining,        // 503 while the node drains
  not_found,       // 404 on plain HTTP
  too_many_open_per_ip,  // 429: the address holds max_open_connections_per_ip
  queue_budget,    // 503: the node's queued memory is near its budget
  count_
};
const char* reject_reason_name(RejectReason r);

enum class MessageType : uint8_t { ping, pong, send_message, message, broadcast, error, count_ };
const char* message_type_name(MessageType t);

struct Metrics {
  uint64_t connections_open = 0;
  uint64_t connections_accepted_total = 0;  // upgrades completed
  uint64_t connections_rejected_total[size_t(RejectReason::count_)] = {};
  uint64_t messages_in_total[size_t(MessageType::count_)] = {};
  uint64_t messages_out_total[size_t(MessageType::count_)] = {};
  uint64_t messages_invalid_total = 0;     // bad JSON, unknown type, missing field
  uint64_t messages_undeliverable_total = 0;  // target user not connected
  uint64_t bytes_in_total = 0;
  uint64_t bytes_out_total = 0;
  uint64_t slow_consumer_closes_total = 0;
  uint64_t heartbeat_timeouts_total = 0;
  uint64_t protocol_error_closes_total = 0;  // 1002/1003/1007/1009 from framing
  uint64_t transport_published_total = 0;     // publishes the transport accepted
  uint64_t transport_publish_failed_total = 0;  // refused: backpressure or unavailable
  uint64_t transport_received_total = 0;      // messages from other nodes
  uint64_t transport_publish_lost_total = 0;  // accepted, later reported lost
  uint64_t transport_connected = 1;           // gauge: 0 while the backend is lost
  uint64_t transport_stale_dropped_total = 0; // duplicated or reordered, dropped
  uint64_t rebalance_closes_total = 0;        // asked to reconnect elsewhere (4002)
  uint64_t drain_closes_total = 0;
  uint64_t rate_limited_messages_total = 0;   // client messages refused by the token buckets
  uint64_t rate_limit_closes_total = 0;       // closed (1008) for exceeding them repeatedly
  uint64_t queue_budget_closes_total = 0;     // closed (1008) to bring the node under its queue budget
  uint64_t queued_memory_bytes = 0;           // gauge: memory of every queued frame on the node

  void reject(RejectReason r) { ++connections_rejected_total[size_t(r)]; }
  // Prometheus text exposition format 0.0.4.
  std::string render_prometheus(std::string_view node_id) const;
};

}  // namespace wsgate

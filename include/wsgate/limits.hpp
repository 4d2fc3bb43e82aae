#pragma once
// Every limit of a node in one place, units last. Each has a flag and an
// environment variable (server/options.cpp) and a test that hits it.
#include <cstdint>

namespace wsgate {

struct Limits {
  // Established WebSocket connections per node; the next upgrade gets 503.
  uint32_t max_connections = 100000;
  // New connections one client IP may open per window; the next gets 429.
  uint32_t max_connections_per_ip = 100;
  uint32_t ip_window_ms = 60000;
  // Distinct client IPs tracked by the rate limiter. When full of live
  // windows, new IPs are refused (429) rather than let through untracked,
  // so it should not be below max_connections (the simulator found 65536
  // refusing legitimate clients of a full node).
  uint32_t max_tracked_ips = 131072;
  // Largest text message accepted (after reassembly); above it: close 1009.
  uint32_t max_message_bytes = 64 * 1024;
  // Bytes queued to one connection and not yet written to its socket.
  // Past it the connection is a slow consumer: close 1008, counted.
  uint32_t send_queue_max_bytes = 1024 * 1024;
  // The server pings every interval; a connection that sent nothing for the
  // idle timeout is closed. Detection happens at the next heartbeat tick, so
  // a dead peer is closed between idle_timeout_ms and idle_timeout_ms +
  // heartbeat_interval_ms after its last byte.
  uint32_t heartbeat_interval_ms = 30000;
  uint32_t idle_timeout_ms = 60000;
  // HTTP request head (request line + headers) before the upgrade.
  uint32_t max_header_bytes = 8192;
  // From accept to a complete request head (slowloris).
  uint32_t handshake_timeout_ms = 5000;
  // After we send a close frame, how long we wait for the peer's.
  uint32_t close_timeout_ms = 2000;
  // SIGTERM: after close frames go out, the longest we wait before exit.
  uint32_t shutdown_timeout_ms = 5000;
  // Longest user id accepted from the query string (bytes, decoded).
  uint32_t max_user_id_bytes = 256;

  // Cluster (only with a transport). Every node publishes its connection
  // count this often; a report older than 3 intervals is a node gone.
  uint32_t load_report_interval_ms = 1000;
  // A node holding more than (1 + tolerance) x the cluster mean asks
  // clients to reconnect (close 4002) until it is back inside the band, at
  // most this many per second so a move never becomes a reconnect storm.
  // 0 turns rebalancing off.
  uint32_t rebalance_tolerance_pct = 20;
  uint32_t rebalance_max_moves_per_s = 100;
  // A draining node closes its connections (1001) at most this fast.
  uint32_t drain_max_closes_per_s = 1000;
  // Publishers (node incarnations) whose last sequence number is kept to
  // drop duplicated or reordered transport messages.
  uint32_t max_tracked_origins = 1024;
  // Nodes whose load reports are kept for rebalancing; past it, the one
  // heard from longest ago is forgotten (a flood of forged reports cannot
  // grow memory).
  uint32_t max_peer_nodes = 1024;
};

// Frames and outboxes carry payload sizes in 32 bits.
static_assert(sizeof(Limits::max_message_bytes) == 4);
inline constexpr uint32_t frame_header_max_bytes = 10;
// Reply overhead: {"type":"message","from":<escaped id>,"content":...}
inline constexpr uint32_t json_escape_expansion = 6;  // \u00XX per byte

// A node id names Redis channels and travels in every transport message;
// the default is the host name, at most 253 bytes (RFC 1035), and so are
// Kubernetes pod names.
inline constexpr uint32_t max_node_id_bytes = 253;

// The largest frame payload the core builds for a client message:
// {"type":"message","from":<escaped id>,"content":<content>}.
constexpr uint64_t max_delivery_bytes(const Limits& l) {
  return uint64_t(l.max_message_bytes) + 64 + uint64_t(l.max_user_id_bytes) * json_escape_expansion;
}
// The largest transport message a node publishes: the envelope
// "{node id}/{16 hex digits}\n{sequence, at most 20 digits}\n" and a
// delivery. Larger ones are not from a node of this cluster (all nodes
// share the limits) and are dropped unread.
constexpr uint64_t max_transport_payload_bytes(const Limits& l) {
  return max_node_id_bytes + 1 + 16 + 1 + 20 + 1 + max_delivery_bytes(l);
}

constexpr bool limits_are_consistent(const Limits& l) {
  return l.max_connections > 0 && l.max_message_bytes > 0 &&
         l.heartbeat_interval_ms > 0 && l.idle_timeout_ms >= l.heartbeat_interval_ms &&
         l.ip_window_ms > 0 && l.max_header_bytes >= 256 && l.max_tracked_ips > 0 &&
         l.load_report_interval_ms > 0 && l.max_tracked_origins > 0 && l.max_peer_nodes > 0 && l.drain_max_closes_per_s > 0 &&
         // one largest reply must fit in a queue, or nothing could be sent
         uint64_t(l.send_queue_max_bytes) >= max_delivery_bytes(l);
}
static_assert(limits_are_consistent(Limits{}));
static_assert(Limits{}.max_tracked_ips >= Limits{}.max_connections);

}  // namespace wsgate

#pragma once
// Every limit of a node in one place, units last. Each has a flag and an
// environment variable (server/options.cpp) and a test that hits it.
#include <algorithm>
#include <bit>
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
  // Connections open at once from one client IP (an IPv6 client: from its
  // prefix); the next upgrade gets 429. The rate above caps how fast an
  // address connects, this how many it holds.
  uint32_t max_open_connections_per_ip = 1000;
  // IPv6 clients are keyed by this many leading bits of their address (a
  // /64 is one subscriber's; every address in it counts as one client), so
  // rotating addresses neither bypasses the per-IP limits nor fills the
  // table of tracked IPs. 1..128. IPv4-mapped IPv6 counts as IPv4.
  uint32_t ipv6_prefix_bits = 64;
  // Largest text message accepted (after reassembly); above it: close 1009.
  uint32_t max_message_bytes = 64 * 1024;
  // Bytes queued to one connection and not yet written to its socket.
  // Past it the connection is a slow consumer: close 1008, counted.
  uint32_t send_queue_max_bytes = 1024 * 1024;
  // Memory of every frame queued on the node (a broadcast frame counted
  // once, however many connections hold it). Above 3/4 of it upgrades get
  // 503; above it the connections with the largest queues are closed (1008)
  // until it is back under.
  uint32_t node_send_queue_max_bytes = 1024u * 1024 * 1024;
  // Per-connection token buckets on client messages (0 rate: unlimited).
  // A message past either bucket is dropped and answered with an error; a
  // connection refused client_max_rate_refusals times within
  // client_rate_refusal_window_ms is closed (1008).
  uint32_t client_max_messages_per_s = 100;
  uint32_t client_burst_messages = 200;
  uint32_t client_max_bytes_per_s = 1024 * 1024;
  uint32_t client_burst_bytes = 2 * 1024 * 1024;
  uint32_t client_max_rate_refusals = 10;
  uint32_t client_rate_refusal_window_ms = 10000;
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
  // Sockets accepted but not yet upgraded (reading a request head, or
  // writing a plain response). At the bound the oldest is closed to make
  // room, so a flood of half-open connections cannot lock out /health or
  // real clients; it costs the flood, not the newcomer.
  uint32_t max_pending_handshakes = 4096;
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
  // Recent publishes whose sender is remembered (a ring), so that a publish
  // the transport reports lost later is reported to its sender. A loss
  // reported after this many newer publishes is counted only.
  uint32_t max_tracked_publishes = 4096;
};

// Frames and outboxes carry payload sizes in 32 bits.
static_assert(sizeof(Limits::max_message_bytes) == 4);
inline constexpr uint32_t frame_header_max_bytes = 10;
// Reply overhead: {"type":"message","from":<escaped id>,"content":...}
inline constexpr uint32_t json_escape_expansion = 6;  // \u00XX per byte
// The longest topic a transport takes (user:{id} with the longest id fits).
inline constexpr uint32_t transport_max_topic_bytes = 1024;

constexpr bool limits_are_consistent(const Limits& l) {
  return l.max_connections > 0 && l.max_message_bytes > 0 &&
         l.heartbeat_interval_ms > 0 && l.idle_timeout_ms >= l.heartbeat_interval_ms &&
         l.ip_window_ms > 0 && l.max_header_bytes >= 256 && l.max_tracked_ips > 0 &&
         l.load_report_interval_ms > 0 && l.max_tracked_origins > 0 && l.drain_max_closes_per_s > 0 &&
         l.max_open_connections_per_ip > 0 && l.ipv6_prefix_bits >= 1 && l.ipv6_prefix_bits <= 128 &&
         l.node_send_queue_max_bytes >= l.send_queue_max_bytes && l.client_max_rate_refusals > 0 &&
         l.client_rate_refusal_window_ms > 0 &&
         // a burst that cannot hold one message would refuse every message
         (l.client_max_messages_per_s == 0 || l.client_burst_messages > 0) &&
         (l.client_max_bytes_per_s == 0 || l.client_burst_bytes >= l.max_message_bytes) &&
         l.max_pending_handshakes > 0 &&
         l.max_tracked_publishes > 0 &&
         // one largest reply must fit in a queue, or nothing could be sent
         uint64_t(l.send_queue_max_bytes) >= uint64_t(l.max_message_bytes) + 64 +
             uint64_t(l.max_user_id_bytes) * json_escape_expansion;
}
static_assert(limits_are_consistent(Limits{}));
static_assert(Limits{}.max_tracked_ips >= Limits{}.max_connections);

// Memory and queues of the drivers and transports: how much a node holds in
// flight, where Limits says how clients may behave. Each has a flag and an
// environment variable too (server/options.cpp, buffer_flags).
struct BufferLimits {
  // io_uring receive pool, shared by every socket of the loop: a buffer is
  // held only while its bytes are handled. When all are taken, receives
  // stop and are re-armed (counted in recv_buffers_exhausted_total); the
  // bytes wait in the kernel. Entries: a power of two, at most 32768.
  uint32_t recv_pool_buffers = 2048;
  uint32_t recv_buffer_bytes = 4096;
  // io_uring queues. A full submission queue is submitted at once (and if
  // the kernel refuses, completions are set aside and it is retried, never
  // fatal); at least 2, as a cancel and its close are submitted together.
  // The completion queue is the kernel's maximum (overflow is kept, not lost).
  uint32_t uring_sq_entries = 4096;
  uint32_t uring_cq_entries = 65536;

  // --transport local: per node, bytes and messages waiting for its poll.
  // Past either, a publish answers backpressure and the sender gets an
  // error ("transport busy").
  uint32_t local_queue_max_bytes = 64 * 1024 * 1024;
  uint32_t local_queue_max_messages = 65536;

  // --transport shm. The node that creates the segment sets its layout;
  // nodes that open it adopt what is stored there.
  // Inbound ring per node; the largest message is this minus 1040 bytes.
  uint32_t shm_ring_bytes = 1024 * 1024;
  // Node slots in the segment (at most 64: a topic's subscribers are bits).
  uint32_t shm_max_nodes = 64;
  // (user, node) pairs of the presence table; 0: derived, see
  // shm_presence_entries_for. Past it a user's presence is not written
  // (counted in presence_refused), messages still flow.
  uint32_t shm_presence_max_entries = 0;
  // Distinct topics subscribed on the host; 0: derived. Past it a node
  // takes every publish and filters (slower, counted, never lost).
  uint32_t shm_max_topics = 0;

  // --transport redis. Commands formatted but not yet written (past it a
  // publish answers backpressure and the sender gets 'transport busy'); the
  // largest message published (larger: too_large, the sender is told);
  // messages read but not yet delivered (past it dropped and counted).
  uint32_t redis_output_max_bytes = 8 * 1024 * 1024;
  uint32_t redis_payload_max_bytes = 1024 * 1024;
  uint32_t redis_inbound_max_bytes = 16 * 1024 * 1024;
};

// What the gateway adds around a message it publishes: the origin
// (node id / incarnation) and the sequence number.
inline constexpr uint32_t envelope_overhead_bytes = 1024;
// io_uring's own bounds (IORING_MAX_ENTRIES, IORING_MAX_CQ_ENTRIES) and
// the provided-buffer ring's.
inline constexpr uint32_t uring_max_sq_entries = 32768;
inline constexpr uint32_t uring_max_cq_entries = 65536;
inline constexpr uint32_t recv_pool_max_buffers = 32768;
inline constexpr uint32_t shm_max_nodes_limit = 64;
// Beyond this the shm tables' slot counts (twice the entries, rounded up
// to a power of two) would not fit 32 bits.
inline constexpr uint32_t shm_max_table_entries = 1u << 28;
// The shm ring record header and the longest topic (shm_bus.hpp).
inline constexpr uint32_t shm_record_overhead_bytes = 16 + transport_max_topic_bytes;

// The largest payload a node hands to its transport: the biggest reply
// (see limits_are_consistent) inside the envelope.
constexpr uint64_t largest_publish_bytes(const Limits& l) {
  return uint64_t(l.max_message_bytes) + 64 + uint64_t(l.max_user_id_bytes) * json_escape_expansion +
         envelope_overhead_bytes;
}

// A node subscribes to and shows presence for at most max_connections
// distinct users. Twice that lets a node never fill the table on its own
// and two full nodes of distinct users share it; a host running more nodes
// whose users differ sets the flag. An entry costs 0.5 to 1 KiB of
// /dev/shm, written when the segment is created (272-byte slots, at least
// twice the entries, a power of two): 136 MiB for the default 100,000
// connections. A smaller /dev/shm is refused at start-up with the reason.
constexpr uint32_t shm_presence_entries_for(const BufferLimits& b, const Limits& l) {
  if (b.shm_presence_max_entries != 0) return b.shm_presence_max_entries;
  return uint32_t(std::min<uint64_t>(2ull * l.max_connections, shm_max_table_entries));
}
// Every presence entry is also a user topic, and each node has three more
// (broadcast, load, its own node topic).
constexpr uint32_t shm_topics_for(const BufferLimits& b, const Limits& l) {
  if (b.shm_max_topics != 0) return b.shm_max_topics;
  return uint32_t(std::min<uint64_t>(uint64_t(shm_presence_entries_for(b, l)) + 3ull * b.shm_max_nodes,
                                     shm_max_table_entries));
}

// Split by what they concern: a node checks the pool and its own transport
// only (server/options.cpp), so raising max_message_bytes asks to raise the
// buffers of the transport in use, not of all three.
constexpr bool uring_limits_are_consistent(const BufferLimits& b) {
  return std::has_single_bit(b.recv_pool_buffers) && b.recv_pool_buffers <= recv_pool_max_buffers &&
         b.recv_buffer_bytes >= 64 && b.uring_sq_entries >= 2 && b.uring_sq_entries <= uring_max_sq_entries &&
         b.uring_cq_entries >= b.uring_sq_entries && b.uring_cq_entries <= uring_max_cq_entries;
}
// One largest publish must fit an empty queue, ring or buffer.
constexpr bool local_limits_are_consistent(const BufferLimits& b, const Limits& l) {
  return b.local_queue_max_messages > 0 && b.local_queue_max_bytes >= largest_publish_bytes(l) + transport_max_topic_bytes;
}
constexpr bool shm_limits_are_consistent(const BufferLimits& b, const Limits& l) {
  return b.shm_ring_bytes % 16 == 0 && b.shm_ring_bytes >= largest_publish_bytes(l) + shm_record_overhead_bytes &&
         b.shm_max_nodes > 0 && b.shm_max_nodes <= shm_max_nodes_limit &&
         b.shm_presence_max_entries <= shm_max_table_entries && b.shm_max_topics <= shm_max_table_entries;
}
constexpr bool redis_limits_are_consistent(const BufferLimits& b, const Limits& l) {
  return b.redis_payload_max_bytes >= largest_publish_bytes(l) && b.redis_output_max_bytes >= b.redis_payload_max_bytes &&
         b.redis_inbound_max_bytes >= b.redis_payload_max_bytes;
}
static_assert(uring_limits_are_consistent(BufferLimits{}));
static_assert(local_limits_are_consistent(BufferLimits{}, Limits{}));
static_assert(shm_limits_are_consistent(BufferLimits{}, Limits{}));
static_assert(redis_limits_are_consistent(BufferLimits{}, Limits{}));

}  // namespace wsgate

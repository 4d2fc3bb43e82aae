#include "options.hpp"

#include <arpa/inet.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string_view>

namespace wsgate::server {
namespace {

// One row per field of Limits: the flag is the field name with dashes, the
// variable WSGATE_ + the field name in upper case.
struct LimitFlag {
  const char* flag;
  const char* env;
  uint32_t Limits::*field;
  const char* unit;
  const char* help;
};

constexpr std::array<LimitFlag, 30> limit_flags{{
    {"--max-connections", "WSGATE_MAX_CONNECTIONS", &Limits::max_connections, "connections",
     "established WebSocket connections per node; the next upgrade gets 503"},
    {"--max-connections-per-ip", "WSGATE_MAX_CONNECTIONS_PER_IP", &Limits::max_connections_per_ip,
     "connections", "new connections one client IP may open per window; the next gets 429"},
    {"--ip-window-ms", "WSGATE_IP_WINDOW_MS", &Limits::ip_window_ms, "milliseconds",
     "length of the per-IP connection window"},
    {"--max-tracked-ips", "WSGATE_MAX_TRACKED_IPS", &Limits::max_tracked_ips, "addresses",
     "client IPs tracked by the rate limiter; when full, new IPs get 429"},
    {"--max-open-connections-per-ip", "WSGATE_MAX_OPEN_CONNECTIONS_PER_IP", &Limits::max_open_connections_per_ip,
     "connections", "connections one client IP (IPv6: prefix) may hold open at once; the next upgrade gets 429"},
    {"--ipv6-prefix-bits", "WSGATE_IPV6_PREFIX_BITS", &Limits::ipv6_prefix_bits, "bits",
     "IPv6 clients count per prefix of this length for the per-IP limits (1..128; IPv4-mapped counts as IPv4)"},
    {"--max-message-bytes", "WSGATE_MAX_MESSAGE_BYTES", &Limits::max_message_bytes, "bytes",
     "largest message accepted after reassembly; above it: close 1009"},
    {"--send-queue-max-bytes", "WSGATE_SEND_QUEUE_MAX_BYTES", &Limits::send_queue_max_bytes, "bytes",
     "memory of the frames queued to one connection (a frame costs its allocation and slot, not just its wire bytes); past it: close 1008 (slow consumer)"},
    {"--node-send-queue-max-bytes", "WSGATE_NODE_SEND_QUEUE_MAX_BYTES", &Limits::node_send_queue_max_bytes, "bytes",
     "memory of every frame queued on the node (shared frames once); above 3/4 of it upgrades get 503, above it the largest queues are closed 1008"},
    {"--client-max-messages-per-s", "WSGATE_CLIENT_MAX_MESSAGES_PER_S", &Limits::client_max_messages_per_s,
     "messages/s", "messages one connection may send per second (token bucket; 0: unlimited); past it: an error reply, message dropped"},
    {"--client-burst-messages", "WSGATE_CLIENT_BURST_MESSAGES", &Limits::client_burst_messages, "messages",
     "messages one connection may send at once above its rate (the bucket's size)"},
    {"--client-max-bytes-per-s", "WSGATE_CLIENT_MAX_BYTES_PER_S", &Limits::client_max_bytes_per_s, "bytes/s",
     "message bytes one connection may send per second (token bucket; 0: unlimited); past it: an error reply, message dropped"},
    {"--client-burst-bytes", "WSGATE_CLIENT_BURST_BYTES", &Limits::client_burst_bytes, "bytes",
     "message bytes one connection may send at once above its rate; >= max-message-bytes"},
    {"--client-max-rate-refusals", "WSGATE_CLIENT_MAX_RATE_REFUSALS", &Limits::client_max_rate_refusals,
     "messages", "a connection refused this many messages by its rate limit within the window is closed (1008)"},
    {"--client-rate-refusal-window-ms", "WSGATE_CLIENT_RATE_REFUSAL_WINDOW_MS", &Limits::client_rate_refusal_window_ms,
     "milliseconds", "the window in which rate-limit refusals are counted"},
    {"--heartbeat-interval-ms", "WSGATE_HEARTBEAT_INTERVAL_MS", &Limits::heartbeat_interval_ms,
     "milliseconds", "the server pings every connection this often"},
    {"--idle-timeout-ms", "WSGATE_IDLE_TIMEOUT_MS", &Limits::idle_timeout_ms, "milliseconds",
     "a connection silent this long is closed (1001)"},
    {"--max-header-bytes", "WSGATE_MAX_HEADER_BYTES", &Limits::max_header_bytes, "bytes",
     "HTTP request head before the upgrade; above it: 431"},
    {"--handshake-timeout-ms", "WSGATE_HANDSHAKE_TIMEOUT_MS", &Limits::handshake_timeout_ms,
     "milliseconds", "from accept to a complete request head (slowloris)"},
    {"--max-pending-handshakes", "WSGATE_MAX_PENDING_HANDSHAKES", &Limits::max_pending_handshakes,
     "sockets", "accepted sockets not yet upgraded; at the bound the oldest is closed to make room"},
    {"--close-timeout-ms", "WSGATE_CLOSE_TIMEOUT_MS", &Limits::close_timeout_ms, "milliseconds",
     "after our close frame, how long we wait for the peer's"},
    {"--shutdown-timeout-ms", "WSGATE_SHUTDOWN_TIMEOUT_MS", &Limits::shutdown_timeout_ms,
     "milliseconds", "on SIGTERM/SIGINT, the longest drain (closes paced by --drain-max-closes-per-s); then the rest are cut"},
    {"--max-user-id-bytes", "WSGATE_MAX_USER_ID_BYTES", &Limits::max_user_id_bytes, "bytes",
     "longest user_id accepted (decoded); longer: close 4001"},
    {"--load-report-interval-ms", "WSGATE_LOAD_REPORT_INTERVAL_MS", &Limits::load_report_interval_ms,
     "milliseconds", "cluster: how often this node publishes its connection count"},
    {"--rebalance-tolerance-pct", "WSGATE_REBALANCE_TOLERANCE_PCT", &Limits::rebalance_tolerance_pct,
     "percent", "cluster: a node above the mean by more than this asks clients to reconnect elsewhere (4002)"},
    {"--rebalance-max-moves-per-s", "WSGATE_REBALANCE_MAX_MOVES_PER_S",
     &Limits::rebalance_max_moves_per_s, "connections/s", "cluster: at most this many 4002 closes per second; 0 turns rebalancing off"},
    {"--drain-max-closes-per-s", "WSGATE_DRAIN_MAX_CLOSES_PER_S", &Limits::drain_max_closes_per_s,
     "connections/s", "a draining node closes its connections (1001) at most this fast"},
    {"--max-tracked-origins", "WSGATE_MAX_TRACKED_ORIGINS", &Limits::max_tracked_origins, "publishers",
     "cluster: publishers whose last sequence number is kept to drop duplicates"},
    {"--max-tracked-publishes", "WSGATE_MAX_TRACKED_PUBLISHES", &Limits::max_tracked_publishes, "publishes",
     "cluster: recent publishes whose sender is told if the transport loses them; older losses are counted only"},
    {"--max-peer-nodes", "WSGATE_MAX_PEER_NODES", &Limits::max_peer_nodes, "nodes",
     "cluster: nodes whose load reports are kept for rebalancing (the oldest is forgotten past it)"},
}};

// A field added to Limits without a flag here fails the build.
static_assert(sizeof(Limits) == limit_flags.size() * sizeof(uint32_t), "every field of Limits needs a flag");

// One row per field of BufferLimits, named the same way.
struct BufferFlag {
  const char* flag;
  const char* env;
  uint32_t BufferLimits::*field;
  const char* unit;
  const char* help;
};

constexpr std::array<BufferFlag, 13> buffer_flags{{
    {"--recv-pool-buffers", "WSGATE_RECV_POOL_BUFFERS", &BufferLimits::recv_pool_buffers, "buffers",
     "receive buffers shared by all sockets (a power of two, at most 32768); when all are taken, receives wait"},
    {"--recv-buffer-bytes", "WSGATE_RECV_BUFFER_BYTES", &BufferLimits::recv_buffer_bytes, "bytes",
     "size of each receive buffer"},
    {"--uring-sq-entries", "WSGATE_URING_SQ_ENTRIES", &BufferLimits::uring_sq_entries, "entries",
     "io_uring submission queue (at most 32768)"},
    {"--uring-cq-entries", "WSGATE_URING_CQ_ENTRIES", &BufferLimits::uring_cq_entries, "entries",
     "io_uring completion queue (>= the submission queue, at most 65536)"},
    {"--local-queue-max-bytes", "WSGATE_LOCAL_QUEUE_MAX_BYTES", &BufferLimits::local_queue_max_bytes, "bytes",
     "transport local: bytes waiting for delivery; past it the sender gets 'transport busy'"},
    {"--local-queue-max-messages", "WSGATE_LOCAL_QUEUE_MAX_MESSAGES", &BufferLimits::local_queue_max_messages,
     "messages", "transport local: messages waiting for delivery; past it the sender gets 'transport busy'"},
    {"--shm-ring-bytes", "WSGATE_SHM_RING_BYTES", &BufferLimits::shm_ring_bytes, "bytes",
     "transport shm: inbound ring of each node (a multiple of 16), set by the node that creates the segment"},
    {"--shm-max-nodes", "WSGATE_SHM_MAX_NODES", &BufferLimits::shm_max_nodes, "nodes",
     "transport shm: node slots in the segment (at most 64)"},
    {"--shm-presence-max-entries", "WSGATE_SHM_PRESENCE_MAX_ENTRIES", &BufferLimits::shm_presence_max_entries,
     "entries", "transport shm: (user, node) pairs of the presence table; 0: 2 x max-connections"},
    {"--shm-max-topics", "WSGATE_SHM_MAX_TOPICS", &BufferLimits::shm_max_topics, "topics",
     "transport shm: topics of the subscription table; 0: the presence entries + 3 per node"},
    {"--redis-output-max-bytes", "WSGATE_REDIS_OUTPUT_MAX_BYTES", &BufferLimits::redis_output_max_bytes, "bytes",
     "transport redis: commands not yet written; past it the sender gets 'transport busy'"},
    {"--redis-payload-max-bytes", "WSGATE_REDIS_PAYLOAD_MAX_BYTES", &BufferLimits::redis_payload_max_bytes, "bytes",
     "transport redis: largest message published to Redis"},
    {"--redis-inbound-max-bytes", "WSGATE_REDIS_INBOUND_MAX_BYTES", &BufferLimits::redis_inbound_max_bytes, "bytes",
     "transport redis: messages read and not yet delivered; past it they are dropped and counted"},
}};

static_assert(sizeof(BufferLimits) == buffer_flags.size() * sizeof(uint32_t),
              "every field of BufferLimits needs a flag");

enum class StringFlag : uint8_t {
  host,
  port,
  node_id,
  transport,
  redis,
  redis_password,
  redis_password_file,
  redis_prefix,
  presence_ttl_ms,
  redis_timeout_ms,
  shm_name,
  trusted_proxies
};


struct OtherFlag {
  const char* flag;
  const char* env;
  StringFlag which;
  const char* help;
};

constexpr std::array<OtherFlag, 12> other_flags{{
    {"--host", "WSGATE_HOST", StringFlag::host, "address to listen on"},
    {"--port", "PORT", StringFlag::port, "TCP port to listen on; 0 picks a free port"},
    {"--node-id", "NODE_ID", StringFlag::node_id, "this node's id in logs, /health and /metrics"},
    {"--transport", "WSGATE_TRANSPORT", StringFlag::transport,
     "local: this node alone; redis: nodes on many hosts share a Redis; shm: nodes on one host share memory"},
    {"--redis", "REDIS_HOST", StringFlag::redis,
     "HOST[:PORT] or [IPV6][:PORT] of Redis for --transport redis; without a port, REDIS_PORT or 6379"},
    {"--redis-password", "REDIS_PASSWORD", StringFlag::redis_password,
     "Redis AUTH password (empty: none); on the command line it shows in ps: prefer the variable or a file"},
    {"--redis-password-file", "WSGATE_REDIS_PASSWORD_FILE", StringFlag::redis_password_file,
     "file holding the Redis AUTH password (one trailing newline is stripped)"},
    {"--redis-prefix", "WSGATE_REDIS_PREFIX", StringFlag::redis_prefix,
     "prefix of every Redis key and channel, so deployments can share one Redis"},
    {"--presence-ttl-ms", "WSGATE_PRESENCE_TTL_MS", StringFlag::presence_ttl_ms,
     "ms after which a node that stopped refreshing (crashed) no longer counts in presence"},
    {"--redis-timeout-ms", "WSGATE_REDIS_TIMEOUT_MS", StringFlag::redis_timeout_ms,
     "a Redis link silent this long (PING unanswered) is dropped and reconnected; also bounds a connect"},
    {"--shm-name", "WSGATE_SHM_NAME", StringFlag::shm_name,
     "name of the shared-memory segment for --transport shm"},
    {"--trusted-proxies", "WSGATE_TRUSTED_PROXIES", StringFlag::trusted_proxies,
     "comma-separated proxy IPs (e.g. nginx) whose X-Real-IP/X-Forwarded-For names the client for the per-IP limit"},
}};

}  // namespace

std::string ServerOptions::redis_address() const {
  const std::string p = ":" + std::to_string(redis_port);
  return redis_host.find(':') == std::string::npos ? redis_host + p : "[" + redis_host + "]" + p;
}

std::string ip_to_bytes(const std::string& ip) {
  in_addr v4;
  if (inet_pton(AF_INET, ip.c_str(), &v4) == 1) return std::string(reinterpret_cast<const char*>(&v4), 4);
  in6_addr v6;
  if (inet_pton(AF_INET6, ip.c_str(), &v6) == 1) return std::string(reinterpret_cast<const char*>(&v6), 16);
  return {};
}

namespace {

std::optional<uint64_t> parse_unsigned(std::string_view s, uint64_t max) {
  if (s.empty()) return std::nullopt;
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v > max) return std::nullopt;
  return v;
}

std::string host_name() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == 0) return "wsgate";
  return buf;
}

// Applies one value to the options, from a flag or a variable (source names
// it in the error). Returns an error line, or empty.
std::string apply_number(uint32_t& field, const char* unit, std::string_view value, std::string_view source) {
  auto v = parse_unsigned(value, UINT32_MAX);
  if (!v) {
    return std::string(source) + ": expected a whole number of " + unit + " (0.." +
           std::to_string(UINT32_MAX) + "), got '" + std::string(value) + "'";
  }
  field = uint32_t(*v);
  return {};
}

std::string apply_limit(ServerOptions& o, const LimitFlag& f, std::string_view value,
                        std::string_view source) {
  return apply_number(o.limits.*f.field, f.unit, value, source);
}

std::string apply_buffer(ServerOptions& o, const BufferFlag& f, std::string_view value,
                         std::string_view source) {
  return apply_number(o.buffers.*f.field, f.unit, value, source);
}

// What parse_options learns from several places before it can decide: the
// Redis port (the address's own, else REDIS_PORT, else 6379) and the
// password (from a flag, a file or a variable).
struct Deferred {
  bool address_has_port = false;
  std::optional<uint16_t> env_port;          // REDIS_PORT
  std::optional<std::string> password_flag;  // --redis-password
  std::optional<std::string> password_env;   // REDIS_PASSWORD
  std::optional<std::string> file_flag;      // --redis-password-file
  std::optional<std::string> file_env;       // WSGATE_REDIS_PASSWORD_FILE
};

constexpr size_t max_password_file_bytes = 64 * 1024;

std::string quoted(std::string_view v) { return "'" + std::string(v) + "'"; }

// A DNS name or an IPv4 literal: letters, digits, '.', '-', '_'.
bool is_host_name(std::string_view h) {
  if (h.empty() || h.size() > 253) return false;
  for (unsigned char c : h)
    if (!(std::isalnum(c) || c == '.' || c == '-' || c == '_')) return false;
  return true;
}

std::optional<uint16_t> parse_port(std::string_view v) {
  auto p = parse_unsigned(v, 65535);
  if (!p || *p == 0) return std::nullopt;
  return uint16_t(*p);
}

// HOST, HOST:PORT, [IPV6] or [IPV6]:PORT.
std::string parse_redis_address(ServerOptions& o, Deferred& d, std::string_view v, std::string_view source) {
  const std::string bad = std::string(source) + ": expected HOST[:PORT] or [IPV6][:PORT], got " + quoted(v);
  std::string_view host = v;
  std::optional<std::string_view> port;
  if (v.starts_with('[')) {
    const size_t close = v.find(']');
    if (close == std::string_view::npos) return bad + " (no closing ']')";
    host = v.substr(1, close - 1);
    std::string_view rest = v.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return bad;
      port = rest.substr(1);
    }
    in6_addr a6;
    if (inet_pton(AF_INET6, std::string(host).c_str(), &a6) != 1) return bad + " (not an IPv6 address in brackets)";
  } else {
    const size_t colon = v.find(':');
    if (colon != std::string_view::npos) {
      if (v.find(':', colon + 1) != std::string_view::npos) return bad + " (write an IPv6 address in brackets: [::1]:6379)";
      host = v.substr(0, colon);
      port = v.substr(colon + 1);
    }
    if (!is_host_name(host)) return bad + " (not a host name)";
  }
  d.address_has_port = port.has_value();
  if (port) {
    auto p = parse_port(*port);
    if (!p) return bad + " (the port must be 1..65535)";
    o.redis_port = *p;
  }
  o.redis_host = host;
  return {};
}

std::string read_password_file(const std::string& path, std::string_view source, std::string& out) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return std::string(source) + ": cannot read " + quoted(path) + ": " + std::strerror(errno);
  std::string text(max_password_file_bytes + 1, '\0');
  const size_t n = std::fread(text.data(), 1, text.size(), f);
  const bool failed = std::ferror(f);
  std::fclose(f);
  if (failed) return std::string(source) + ": cannot read " + quoted(path);
  if (n > max_password_file_bytes) return std::string(source) + ": " + quoted(path) + " is larger than 64 KiB";
  text.resize(n);
  if (text.ends_with('\n')) text.pop_back();
  if (text.ends_with('\r')) text.pop_back();
  if (text.empty()) return std::string(source) + ": " + quoted(path) + " is empty";
  if (text.find_first_of("\r\n") != std::string::npos)
    return std::string(source) + ": " + quoted(path) + " holds more than one line";
  out = std::move(text);
  return {};
}

// A flag beats its variable; two ways of giving the password at the same
// level are a mistake, not a choice to guess.
std::string resolve_password(ServerOptions& o, const Deferred& d) {
  if (d.password_flag && d.file_flag) return "give --redis-password or --redis-password-file, not both";
  if (d.password_flag) {
    o.redis_password = *d.password_flag;
    if (!o.redis_password.empty())
      o.warnings.push_back("--redis-password on the command line is visible to every local user (ps, "
                           "/proc/PID/cmdline): use REDIS_PASSWORD or --redis-password-file");
    return {};
  }
  if (d.file_flag) return read_password_file(*d.file_flag, "--redis-password-file", o.redis_password);
  if (d.password_env && d.file_env) return "REDIS_PASSWORD and WSGATE_REDIS_PASSWORD_FILE are both set; set one";
  if (d.password_env) {
    o.redis_password = *d.password_env;
    return {};
  }
  if (d.file_env) return read_password_file(*d.file_env, "WSGATE_REDIS_PASSWORD_FILE", o.redis_password);
  return {};
}

std::string has_control_character(std::string_view v, std::string_view source, const char* what) {
  for (unsigned char c : v)
    if (c < 0x20 || c == 0x7F) return std::string(source) + ": " + what + " has a control character";
  return {};
}

std::string apply_other(ServerOptions& o, Deferred& d, const OtherFlag& f, std::string_view value,
                        std::string_view source, bool from_flag) {
  switch (f.which) {
    case StringFlag::host:
      if (!is_host_name(value) && ip_to_bytes(std::string(value)).empty())
        return std::string(source) + ": expected an IP address or a host name, got " + quoted(value);
      o.host = value;
      return {};
    case StringFlag::port: {
      auto v = parse_unsigned(value, 65535);
      if (!v) return std::string(source) + ": expected a port number 0..65535, got '" + std::string(value) + "'";
      o.port = uint16_t(*v);
      return {};
    }
    case StringFlag::node_id:
      if (value.empty()) return std::string(source) + ": empty node id";
      o.node_id = value;
      return {};
    case StringFlag::transport:
      o.transport = value;
      return {};
    case StringFlag::redis:
      if (value.empty()) return std::string(source) + ": empty Redis address";
      return parse_redis_address(o, d, value, source);
    case StringFlag::redis_password:
      if (std::string e = has_control_character(value, source, "the password"); !e.empty()) return e;
      (from_flag ? d.password_flag : d.password_env) = std::string(value);
      return {};
    case StringFlag::redis_password_file:
      if (value.empty()) return std::string(source) + ": empty file name";
      (from_flag ? d.file_flag : d.file_env) = std::string(value);
      return {};
    case StringFlag::redis_prefix:
      if (std::string e = has_control_character(value, source, "the prefix"); !e.empty()) return e;
      o.redis_prefix = value;
      return {};
    case StringFlag::presence_ttl_ms: {
      auto v = parse_unsigned(value, UINT32_MAX);
      if (!v || *v < 100)
        return std::string(source) + ": expected a whole number of ms >= 100, got '" + std::string(value) + "'";
      o.presence_ttl_ms = uint32_t(*v);
      return {};
    }
    case StringFlag::redis_timeout_ms: {
      auto v = parse_unsigned(value, 3600000);
      if (!v || *v < 100)
        return std::string(source) + ": expected a whole number of ms, 100..3600000, got " + quoted(value);
      o.redis_timeout_ms = uint32_t(*v);
      return {};
    }
    case StringFlag::trusted_proxies: {
      o.trusted_proxies.clear();
      std::string_view rest = value;
      while (!rest.empty()) {
        const size_t comma = rest.find(',');
        std::string ip(rest.substr(0, comma));
        rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
        if (ip.empty()) continue;
        std::string bytes = ip_to_bytes(ip);
        if (bytes.empty()) return std::string(source) + ": '" + ip + "' is not an IPv4 or IPv6 address";
        o.trusted_proxies.push_back(std::move(bytes));
      }
      return {};
    }
    case StringFlag::shm_name:
      if (value.empty() || value.find('/') != std::string_view::npos)
        return std::string(source) + ": a shared-memory name is a non-empty word without '/'";
      o.shm_name = value;
      return {};
  }
  return {};
}

std::string check_transport(const ServerOptions& o) {
  if (o.transport == "local" || o.transport == "redis" || o.transport == "shm") return {};
  return "unknown transport '" + o.transport + "'; expected local, redis or shm";
}

// Node ids travel in transport envelopes (one line) and JSON.
std::string check_node_id(const std::string& id) {
  if (id.size() > max_node_id_bytes)
    return "node id '" + id.substr(0, 32) + "...' is longer than " + std::to_string(max_node_id_bytes) + " bytes";
  for (unsigned char c : id)
    if (c < 0x21 || c == 0x7F) return "node id '" + id + "' has a space or control character";
  return {};
}

std::string default_text(const LimitFlag& f) { return std::to_string(Limits{}.*f.field); }
std::string default_text(const BufferFlag& f) { return std::to_string(BufferLimits{}.*f.field); }

}  // namespace

std::string explain_inconsistent_limits(const Limits& l) {
  if (limits_are_consistent(l)) return {};
  std::string why;
  auto add = [&](bool bad, const char* text) {
    if (!bad) return;
    if (!why.empty()) why += "; ";
    why += text;
  };
  add(l.max_connections == 0, "max-connections must be > 0");
  add(l.max_message_bytes == 0, "max-message-bytes must be > 0");
  add(l.heartbeat_interval_ms == 0, "heartbeat-interval-ms must be > 0");
  add(l.idle_timeout_ms < l.heartbeat_interval_ms, "idle-timeout-ms must be >= heartbeat-interval-ms");
  add(l.ip_window_ms == 0, "ip-window-ms must be > 0");
  add(l.max_header_bytes < 256, "max-header-bytes must be >= 256");
  add(l.max_tracked_ips == 0, "max-tracked-ips must be > 0");
  add(l.load_report_interval_ms == 0, "load-report-interval-ms must be > 0");
  add(l.max_tracked_origins == 0, "max-tracked-origins must be > 0");
  add(l.max_peer_nodes == 0, "max-peer-nodes must be > 0");
  add(l.drain_max_closes_per_s == 0, "drain-max-closes-per-s must be > 0");
  add(l.max_open_connections_per_ip == 0, "max-open-connections-per-ip must be > 0");
  add(l.ipv6_prefix_bits < 1 || l.ipv6_prefix_bits > 128, "ipv6-prefix-bits must be 1..128");
  add(l.node_send_queue_max_bytes < l.send_queue_max_bytes, "node-send-queue-max-bytes must be >= send-queue-max-bytes");
  add(l.client_max_rate_refusals == 0, "client-max-rate-refusals must be > 0");
  add(l.client_rate_refusal_window_ms == 0, "client-rate-refusal-window-ms must be > 0");
  add(l.client_max_messages_per_s > 0 && l.client_burst_messages == 0,
      "client-burst-messages must be > 0 when client-max-messages-per-s is set");
  add(l.client_max_bytes_per_s > 0 && l.client_burst_bytes < l.max_message_bytes,
      "client-burst-bytes must be >= max-message-bytes when client-max-bytes-per-s is set");
  add(l.max_pending_handshakes == 0, "max-pending-handshakes must be > 0");
  add(l.max_tracked_publishes == 0, "max-tracked-publishes must be > 0");
  const uint64_t need = uint64_t(l.max_message_bytes) + 64 + uint64_t(l.max_user_id_bytes) * json_escape_expansion;
  if (uint64_t(l.send_queue_max_bytes) < need) {
    if (!why.empty()) why += "; ";
    why += "send-queue-max-bytes must be >= max-message-bytes + 64 + 6 * max-user-id-bytes (" +
           std::to_string(need) + ")";
  }
  return "inconsistent limits: " + why;
}

std::string explain_inconsistent_buffers(const BufferLimits& b, const Limits& l, const std::string& transport) {
  std::string why;
  auto add = [&](bool bad, const std::string& text) {
    if (!bad) return;
    if (!why.empty()) why += "; ";
    why += text;
  };
  const std::string publish = std::to_string(largest_publish_bytes(l));
  add(!std::has_single_bit(b.recv_pool_buffers) || b.recv_pool_buffers > recv_pool_max_buffers,
      "recv-pool-buffers must be a power of two, at most " + std::to_string(recv_pool_max_buffers));
  add(b.recv_buffer_bytes < 64, "recv-buffer-bytes must be >= 64");
  add(b.uring_sq_entries < 2 || b.uring_sq_entries > uring_max_sq_entries,
      "uring-sq-entries must be 2.." + std::to_string(uring_max_sq_entries));
  add(b.uring_cq_entries < b.uring_sq_entries || b.uring_cq_entries > uring_max_cq_entries,
      "uring-cq-entries must be uring-sq-entries.." + std::to_string(uring_max_cq_entries));
  if (transport == "local") {
    add(!local_limits_are_consistent(b, l),
        "local-queue-max-messages must be > 0 and local-queue-max-bytes >= the largest publish + 1024 (" +
            std::to_string(largest_publish_bytes(l) + transport_max_topic_bytes) +
            ": max-message-bytes + 64 + 6 * max-user-id-bytes + 2048)");
  } else if (transport == "shm") {
    add(b.shm_ring_bytes % 16 != 0 || b.shm_ring_bytes < largest_publish_bytes(l) + shm_record_overhead_bytes,
        "shm-ring-bytes must be a multiple of 16 and >= " +
            std::to_string(largest_publish_bytes(l) + shm_record_overhead_bytes) +
            " (max-message-bytes + 64 + 6 * max-user-id-bytes + 2064)");
    add(b.shm_max_nodes == 0 || b.shm_max_nodes > shm_max_nodes_limit,
        "shm-max-nodes must be 1.." + std::to_string(shm_max_nodes_limit));
    add(b.shm_presence_max_entries > shm_max_table_entries || b.shm_max_topics > shm_max_table_entries,
        "shm-presence-max-entries and shm-max-topics must be at most " + std::to_string(shm_max_table_entries));
  } else if (transport == "redis") {
    add(b.redis_payload_max_bytes < largest_publish_bytes(l),
        "redis-payload-max-bytes must be >= " + publish + " (max-message-bytes + 64 + 6 * max-user-id-bytes + 1024)");
    add(b.redis_output_max_bytes < b.redis_payload_max_bytes ||
            b.redis_inbound_max_bytes < b.redis_payload_max_bytes,
        "redis-output-max-bytes and redis-inbound-max-bytes must be >= redis-payload-max-bytes");
  }
  return why.empty() ? why : "inconsistent buffer limits: " + why;
}

std::string options_help() {
  std::string h =
      "usage: wsgate [--flag value | --flag=value]...\n"
      "A WebSocket gateway node. Each flag has an environment variable; a flag\n"
      "beats its variable, which beats the default.\n\n";
  auto row = [&](const std::string& flag, const std::string& help, const std::string& dflt,
                 const char* env) {
    h += "  " + flag;
    h += std::string(flag.size() < 34 ? 34 - flag.size() : 1, ' ');
    h += help + "\n" + std::string(36, ' ') + "[default: " + dflt + "; env " + env + "]\n";
  };
  const ServerOptions d;
  row("--host ADDRESS", other_flags[0].help, d.host, other_flags[0].env);
  row("--port PORT", other_flags[1].help, std::to_string(d.port), other_flags[1].env);
  row("--node-id ID", other_flags[2].help, "the host name", other_flags[2].env);
  row("--transport local|redis|shm", other_flags[3].help, d.transport, other_flags[3].env);
  row("--redis HOST:PORT", other_flags[4].help, d.redis_address(), other_flags[4].env);
  row("--redis-password SECRET", other_flags[5].help, "none", other_flags[5].env);
  row("--redis-password-file PATH", other_flags[6].help, "none", other_flags[6].env);
  row("--redis-prefix PREFIX", other_flags[7].help, d.redis_prefix, other_flags[7].env);
  row("--presence-ttl-ms N", other_flags[8].help, std::to_string(d.presence_ttl_ms) + " ms", other_flags[8].env);
  row("--redis-timeout-ms N", other_flags[9].help, std::to_string(d.redis_timeout_ms) + " ms", other_flags[9].env);
  row("--shm-name NAME", other_flags[10].help, d.shm_name, other_flags[10].env);
  row("--trusted-proxies IP,...", other_flags[11].help, "none", other_flags[11].env);
  h += "\nLimits (each N is a whole number, in the unit the name ends with):\n";
  for (const LimitFlag& f : limit_flags) {
    row(std::string(f.flag) + " N", f.help, default_text(f) + " " + f.unit, f.env);
  }
  h += "\nBuffers and queues (memory a node holds in flight):\n";
  for (const BufferFlag& f : buffer_flags) {
    row(std::string(f.flag) + " N", f.help, default_text(f) + " " + f.unit, f.env);
  }
  h += "\n  --health-check                    ask the node at --host/--port (wildcards: loopback) for GET /health;\n"
       "                                    exit 0 if it answers 200 within 3 s, else 1 (a container HEALTHCHECK)\n";
  h += "  --help                            print this text and exit\n";
  return h;
}

OptionsOutcome parse_options(int argc, const char* const* argv, const EnvLookup& env) {
  OptionsOutcome out;
  ServerOptions& o = out.options;
  auto fail = [&](std::string msg) {
    out.kind = OptionsOutcome::Kind::error;
    out.message = std::move(msg);
    return out;
  };

  Deferred deferred;
  // Environment first, so flags parsed afterwards override it.
  for (const OtherFlag& f : other_flags) {
    if (const char* v = env(f.env)) {
      if (std::string e = apply_other(o, deferred, f, v, f.env, false); !e.empty()) return fail(e);
    }
  }
  // Kubernetes manifests set the host and the port apart.
  if (const char* v = env("REDIS_PORT")) {
    deferred.env_port = parse_port(v);
    if (!deferred.env_port) return fail("REDIS_PORT: expected a port number 1..65535, got " + quoted(v));
  }
  for (const LimitFlag& f : limit_flags) {
    if (const char* v = env(f.env)) {
      if (std::string e = apply_limit(o, f, v, f.env); !e.empty()) return fail(e);
    }
  }
  for (const BufferFlag& f : buffer_flags) {
    if (const char* v = env(f.env)) {
      if (std::string e = apply_buffer(o, f, v, f.env); !e.empty()) return fail(e);
    }
  }

  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      out.kind = OptionsOutcome::Kind::help;
      out.message = options_help();
      return out;
    }
    std::string_view name = arg;
    std::optional<std::string_view> value;
    if (size_t eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    }
    const LimitFlag* limit = nullptr;
    const OtherFlag* other = nullptr;
    for (const LimitFlag& f : limit_flags)
      if (name == f.flag) limit = &f;
    const BufferFlag* buffer = nullptr;
    for (const OtherFlag& f : other_flags)
      if (name == f.flag) other = &f;
    for (const BufferFlag& f : buffer_flags)
      if (name == f.flag) buffer = &f;
    if (!limit && !other && !buffer) return fail("unknown argument '" + std::string(arg) + "' (see --help)");
    if (!value) {
      if (i + 1 >= argc) return fail(std::string(name) + " needs a value (see --help)");
      value = argv[++i];
    }
    std::string e = limit    ? apply_limit(o, *limit, *value, name)
                    : buffer ? apply_buffer(o, *buffer, *value, name)
                             : apply_other(o, deferred, *other, *value, name, true);
    if (!e.empty()) return fail(e);
  }

  if (std::string e = check_transport(o); !e.empty()) return fail(e);
  if (std::string e = explain_inconsistent_limits(o.limits); !e.empty()) return fail(e);
  if (std::string e = explain_inconsistent_buffers(o.buffers, o.limits, o.transport); !e.empty()) return fail(e);
  if (o.node_id.empty()) o.node_id = host_name();
  if (std::string e = check_node_id(o.node_id); !e.empty()) return fail(e);
  if (!deferred.address_has_port) o.redis_port = deferred.env_port.value_or(ServerOptions{}.redis_port);
  if (std::string e = resolve_password(o, deferred); !e.empty()) return fail(e);
  return out;
}

}  // namespace wsgate::server

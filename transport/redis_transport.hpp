#pragma once
// The production transport: Redis pub/sub for topics, Redis hashes for
// presence. Sans-IO like the core: hiredis is used only as a codec (its
// reply reader and command formatter); the two TCP connections it needs are
// opened, read and written by whoever drives it (the io_uring loop in the
// server, a plain poll() loop in tests) through RedisIo and the on_* calls.
//
// Two links: `command` (PUBLISH, presence writes; every command has one
// reply, answered in order) and `subscriber` (SUBSCRIBE mode). The
// transport is `connected` only when both are up and every topic it needs
// is confirmed subscribed again; until then publish() answers `unavailable`
// and the gateway tells the sender. Nothing is queued while offline, so
// nothing is flushed to nodes that have not resubscribed yet.
//
// Keys and channels (prefix P, default "wsgate:"):
//   P{topic}              channels: P user:{id}, P broadcast, P load, P node:{id}
//   P node:{id}:users     hash user -> connections on that node; expires
//                         presence_ttl_ms after the node's last refresh,
//                         so a crashed node's users disappear
//   P nodes               set of node ids that have held connections
//   P events              channel: presence events, one JSON object each:
//     {"event":"online","user_id":U,"node_id":N,"connections":1}
//     {"event":"offline","user_id":U,"node_id":N,"connections":0}
//     {"event":"node_up","node_id":N}   (after (re)connecting: re-read its hash)
//
// Liveness: a link is `ready` only after Redis answered a PING on it (after
// AUTH, if any). A ready link silent for timeout_ms / 3 is pinged; silent
// for timeout_ms it is dead (a stalled Redis, a blackholed route: the
// socket stays open, nothing arrives) and is closed, exactly as if the
// connection had dropped: unconfirmed publishes are reported lost, the
// transport reconnects and resubscribes. The driver adds TCP keepalive and
// TCP_USER_TIMEOUT for what the kernel can see.
//
// Presence is the transport's to keep: it remembers every user's count and
// rewrites the whole hash after each reconnect (the gateway does not).
// Writes are coalesced per user and go out only while the command link has
// room under max_output_bytes, so a burst of connects and disconnects
// behind a slow Redis costs one pending entry per user, never an unbounded
// queue.
//
// Errors Redis answers (a refused AUTH or SUBSCRIBE, an error reply to a
// command) and dead links are counted and reported to the driver as one
// line of text, at most once per cause per error_report_interval_ms (with
// how many were not reported since), so a flood does not flood the log.
#include <cstdint>
#include <deque>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "wsgate/gateway.hpp"
#include "wsgate/transport.hpp"

struct redisReader;

namespace wsgate {

struct RedisOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 6379;
  std::string password;              // AUTH when not empty
  std::string prefix = "wsgate:";
  std::string node_id;
  uint32_t presence_ttl_ms = 15000;  // a silent node's users vanish after this
  uint32_t reconnect_min_ms = 50;    // backoff doubles from here...
  uint32_t reconnect_max_ms = 2000;  // ...up to here
  uint32_t connect_timeout_ms = 3000;  // TCP connect, by the driver
  // A ready link that heard nothing from Redis this long is dead; the AUTH
  // and PING handshake of a new connection is bounded by it too.
  uint32_t timeout_ms = 3000;
  uint32_t error_report_interval_ms = 60000;
  // The server sets the three buffers from BufferLimits (limits.hpp, one
  // flag each). Commands not yet written to the command link; past it
  // publish() answers backpressure.
  uint32_t max_output_bytes = BufferLimits{}.redis_output_max_bytes;
  // Largest message; Redis itself allows 512 MiB, a gateway does not need it.
  uint32_t max_payload_bytes = BufferLimits{}.redis_payload_max_bytes;
  // Messages read but not yet delivered by poll().
  uint32_t max_inbound_bytes = BufferLimits{}.redis_inbound_max_bytes;
  // After (re)connecting, a PUBLISH that reached no subscriber may just have
  // beaten the other nodes' resubscription: it is reported lost, not taken
  // as proof that the user is offline.
  uint32_t resubscribe_grace_ms = 3000;
};

enum class RedisLink : uint8_t { command = 0, subscriber = 1 };

// What the transport needs from an event loop.
class RedisIo {
 public:
  virtual ~RedisIo() = default;
  // Open a TCP connection to options.host:port for link; answer with
  // on_connected or on_disconnected.
  virtual void redis_connect(RedisLink link) = 0;
  // output(link) has bytes to write.
  virtual void redis_want_write(RedisLink link) = 0;
  // Drop the connection (protocol error, timeout); answer on_disconnected.
  virtual void redis_close(RedisLink link) = 0;
  // One line for the operator's log (already rate-limited per cause).
  virtual void redis_report_error(std::string_view line) { (void)line; }
};

// Why something went wrong, for counting and for rate-limiting the log.
enum class RedisErrorCause : uint8_t { auth, handshake, subscribe, command, link_timeout, protocol };
constexpr size_t redis_error_causes = 6;

struct RedisStats {
  uint64_t connects = 0;
  uint64_t disconnects = 0;
  uint64_t published = 0;
  uint64_t publish_unavailable = 0;
  uint64_t publish_backpressure = 0;
  uint64_t publish_lost = 0;       // accepted, then reported lost
  uint64_t messages_received = 0;
  uint64_t inbound_dropped = 0;    // over max_inbound_bytes (counted, never silent)
  uint64_t errors = 0;             // error replies, refused AUTH included
  uint64_t link_timeouts = 0;      // links closed because Redis stopped answering
  uint64_t auth_failures = 0;      // AUTH refused (a wrong password)
  uint64_t presence_writes = 0;    // users written (HSET/HDEL), after coalescing
  uint64_t errors_by_cause[redis_error_causes] = {};
};

class RedisTransport final : public Transport {
 public:
  RedisTransport(RedisOptions options, RedisIo& io);
  ~RedisTransport() override;

  // Transport
  const char* name() const override { return "redis"; }
  void set_sink(TransportSink* sink) override { sink_ = sink; }
  void subscribe(std::string_view topic) override;
  void unsubscribe(std::string_view topic) override;
  PublishStatus publish(std::string_view topic, std::string_view payload) override;
  void set_presence(std::string_view user, uint32_t connections) override;
  size_t poll(uint64_t now_ms) override;
  TransportState state() const override { return connected_ ? TransportState::connected : TransportState::disconnected; }

  // From the event loop.
  void on_connected(RedisLink link, uint64_t now_ms);
  void on_data(RedisLink link, const char* data, size_t n, uint64_t now_ms);
  void on_disconnected(RedisLink link, uint64_t now_ms);
  // Bytes to write on link, and how many were written.
  std::string_view output(RedisLink link) const;
  void consume_output(RedisLink link, size_t n);
  // When poll() next has timed work (reconnect, ping, link deadline,
  // presence refresh, coalesced presence writes).
  uint64_t next_timer_ms() const;
  // Users whose presence is not written to Redis yet (at most one entry
  // each, whatever the number of changes).
  size_t presence_unwritten() const { return unwritten_.size(); }

  const RedisOptions& options() const { return options_; }
  const RedisStats& stats() const { return stats_; }
  bool link_up(RedisLink link) const { return links_[size_t(link)].phase == Phase::ready; }

 private:
  // handshake: connected, [AUTH and] PING sent, the PONG not in yet.
  enum class Phase : uint8_t { down, connecting, handshake, ready };
  // What the reply to a command on the command link means to us.
  enum class Expect : uint8_t { ignore, publish, refresh, ping };
  struct Pending {
    Expect what;
    uint64_t publish_number;
  };
  struct Link {
    Phase phase = Phase::down;
    redisReader* reader = nullptr;
    std::string out;           // formatted, not yet written
    size_t out_head = 0;       // written bytes at the front of out
    uint64_t retry_at_ms = 0;  // when to connect again
    uint32_t backoff_ms = 0;
    uint64_t connecting_since_ms = 0;  // or, in handshake, connected since
    uint64_t last_heard_ms = 0;        // when Redis last sent bytes on it
    bool ping_outstanding = false;
    bool close_requested = false;      // redis_close asked; on_disconnected due
    bool auth_answered = false;        // handshake: the AUTH reply is in
  };
  struct Inbound {
    std::string topic;  // without the prefix
    std::string payload;
  };

  Link& link(RedisLink l) { return links_[size_t(l)]; }
  void command(RedisLink l, std::initializer_list<std::string_view> args);
  void command(RedisLink l, const std::vector<std::string_view>& args);
  void start_session(RedisLink l, uint64_t now_ms);
  void on_ready(RedisLink l, uint64_t now_ms);
  void handle_reply(RedisLink l, void* reply, uint64_t now_ms);
  void handle_command_reply(void* reply, uint64_t now_ms);
  void handle_subscriber_reply(void* reply);
  void handle_handshake_reply(RedisLink l, void* reply, uint64_t now_ms);
  void check_liveness(RedisLink l, uint64_t now_ms);
  void fail_link(RedisLink l, uint64_t now_ms);
  void report_error(RedisErrorCause cause, std::string text);
  bool command_link_has_room() const;
  void mark_unwritten(const std::string& user, bool in_redis);
  void flush_presence();
  void lose_pending_publishes();
  void update_connected();
  void resync_presence();
  void refresh_presence();
  void publish_event(std::string_view json);
  std::string channel(std::string_view topic) const;

  RedisOptions options_;
  RedisIo& io_;
  TransportSink* sink_ = nullptr;
  Link links_[2];
  std::deque<Pending> pending_;       // replies awaited on the command link, in order
  std::set<std::string> topics_;      // what this node wants subscribed
  size_t resubscribe_acks_due_ = 0;   // subscribe confirmations awaited after connect
  // A publish must not overtake a subscribe this node made before it (the
  // two go out on different links): it is held until Redis has confirmed
  // every subscribe sent before it. Counted per channel confirmation.
  uint64_t subscribes_sent_ = 0;
  uint64_t subscribes_confirmed_ = 0;
  struct Held {
    uint64_t after_subscribes;  // subscribes_sent_ when it was published
    uint64_t publish_number;
    std::string command;        // formatted PUBLISH
  };
  std::deque<Held> held_;
  size_t held_bytes_ = 0;
  void release_held();
  std::deque<Inbound> inbound_;
  size_t inbound_bytes_ = 0;
  std::unordered_map<std::string, uint32_t, StringHash, std::equal_to<>> presence_;
  // Users whose count changed since it was last written, each with whether
  // Redis holds them as online (for the online/offline event).
  std::unordered_map<std::string, bool, StringHash, std::equal_to<>> unwritten_;
  struct ErrorReport {
    uint64_t last_ms = 0;
    uint64_t not_reported = 0;
    bool ever = false;
  };
  ErrorReport error_reports_[redis_error_causes];
  uint64_t next_refresh_ms_ = 0;
  uint64_t connected_at_ms_ = 0;
  uint64_t publish_number_ = 0;       // accepted publishes so far
  uint64_t now_ms_ = 0;
  bool connected_ = false;
  bool reported_connected_ = false;   // last state told to the sink
  bool started_ = false;
  RedisStats stats_;
};

}  // namespace wsgate

#pragma once
// The gateway core: who is connected, where a message goes, heartbeats and
// limits. It does no I/O and reads no clock. A driver (the io_uring server,
// the simulator) feeds it events through the handle_* calls, with the time,
// and carries out what it asks through the poll_* calls:
//
//   handle_open / handle_text / handle_binary / handle_activity /
//   handle_closed / handle_tick          (what happened)
//   outbox(id) + take_dirty()            (bytes to write, per connection)
//   take_closes()                        (connections to close, with code)
//   next_tick_ms()                       (when to call handle_tick next)
//
// Protocol v1 (DESIGN.md) is implemented here, JSON parsed with simdjson.
//
// Across nodes, through a Transport (optional: without one the node stands
// alone): the node subscribes to `user:{id}` while it holds a connection of
// that user, to `broadcast` and to `node:{its id}`. A message is delivered
// to this node's own recipients at once, and published for the others as
// "{origin node id}\n{the JSON the recipients get}"; a node ignores what it
// published itself. So losing the transport never stops local delivery.
#include <cstdint>
#include <memory>
#include <string>
#include <functional>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "wsgate/admission.hpp"
#include "wsgate/conn_id.hpp"
#include "wsgate/frame.hpp"
#include "wsgate/limits.hpp"
#include "wsgate/metrics.hpp"
#include "wsgate/outbox.hpp"
#include "wsgate/string_hash.hpp"
#include "wsgate/token_bucket.hpp"
#include "wsgate/transport.hpp"

namespace wsgate {

class MessageParser;
class TransportInput;
struct LoadReport;

struct CloseRequest {
  ConnId id;
  CloseCode code;
  std::string_view reason;  // static text
};

struct GatewayConfig {
  std::string node_id = "wsgate";
  // Tells this run of the node from an earlier one with the same id (a
  // restart): the driver passes something new each start (the simulator
  // draws it from its seeded generator). Publisher sequence numbers are per
  // incarnation.
  uint64_t incarnation = 0;
  Limits limits;
};

// What this node knows of another from its load reports.
struct PeerLoad {
  uint64_t connections = 0;
  uint64_t reported_ms = 0;
  uint64_t previous = UINT64_MAX;  // the report before (UINT64_MAX: none yet)
  bool draining = false;
  std::string origin;  // node_id/incarnation: a restart starts a new history
  bool live = true;    // reported within the last 3 intervals
  // Clients moved since this report was made (ours asked to reconnect, a
  // peer draining, a peer gone): its next report starts a new history.
  bool stale = false;
};

// Where a drain stands, for the driver to act on: keep serving (none,
// in_progress), exit (complete: every connection is gone), or close what
// is left without a handshake and exit (overdue: the deadline passed).
enum class DrainStatus : uint8_t { none, in_progress, complete, overdue };

class Gateway : private TransportSink {
 public:
  // transport may be null (a standalone node); it must outlive the Gateway,
  // and its sink is set to this Gateway.
  explicit Gateway(GatewayConfig config, Transport* transport = nullptr);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // --- events -------------------------------------------------------------

  // An upgrade request arrived from ip (raw address bytes). Decides before
  // the 101 whether the connection may be opened at all. The handle_open
  // that follows an admitted request (with no other request in between)
  // counts the connection against its IP's max_open_connections_per_ip.
  Admission handle_upgrade_request(std::string_view ip, uint64_t now_ms);

  // The upgrade completed. An empty user_id means the identity is missing:
  // the connection is opened and a close 4001 is requested at once, as the
  // protocol says. Never fails: admission was decided before.
  // driver_tag: the driver's own handle for this connection (the server's
  // socket slot), kept for it and read back with driver_tag(id), so the
  // driver needs no map of its own from ConnId to its state.
  ConnId handle_open(std::string_view user_id, uint64_t now_ms, uint64_t driver_tag = 0);

  // A complete text message (wslay reassembled it and checked UTF-8).
  void handle_text(ConnId id, std::string_view payload, uint64_t now_ms);
  // A complete binary message: not part of protocol v1, close 1003.
  void handle_binary(ConnId id, uint64_t now_ms);
  // Any bytes arrived (data, ping, pong): the peer is alive.
  void handle_activity(ConnId id, uint64_t now_ms);
  // The socket is gone (after a close handshake or not). Frees the slot;
  // the id is stale from here on.
  void handle_closed(ConnId id);
  // Time passed: heartbeats, idle timeouts, rate-limit windows, load
  // reports and rebalancing, draining.
  void handle_tick(uint64_t now_ms);
  // Graceful drain: refuse new upgrades (503) and close every connection
  // with 1001 at drain_max_closes_per_s, so clients reconnect elsewhere.
  // deadline_ms: when the driver stops waiting for the rest (the server's
  // --shutdown-timeout-ms); drain_status() says when that is. Every driver
  // (server on SIGTERM, simulator) runs the drain through these two calls.
  void handle_drain(uint64_t now_ms, uint64_t deadline_ms = UINT64_MAX);

  // --- effects ------------------------------------------------------------

  // Connections whose outbox gained bytes since the last call, each once.
  // Stale ids (closed since) are filtered out by the caller with is_open().
  // If the node's queued memory passed node_send_queue_max_bytes, the
  // largest queues are shed first (their closes come from take_closes).
  std::vector<ConnId> take_dirty();
  // Closes requested since the last call. After a close request the
  // connection gets no more data frames; its outbox still drains.
  std::vector<CloseRequest> take_closes();
  Outbox& outbox(ConnId id);
  // Whole frames the driver must write for a connection outside the
  // protocol (wslay's pongs and close frame). They count towards
  // send_queue_max_bytes like messages; a pong replaces one still queued
  // (only the latest ping is answered); once closing, only a close frame
  // is taken.
  void push_control(ConnId id, const uint8_t* bytes, size_t n);
  // The driver wrote n bytes of the outbox.
  void handle_sent(ConnId id, size_t n);
  // When handle_tick has something to do next (0: call it now).
  uint64_t next_tick_ms() const;

  // --- state --------------------------------------------------------------

  bool is_open(ConnId id) const;
  // The tag handle_open was given; no_driver_tag if id is stale (closed
  // since, or never opened).
  static constexpr uint64_t no_driver_tag = UINT64_MAX;
  uint64_t driver_tag(ConnId id) const;
  // True once a close was requested for this connection.
  bool is_closing(ConnId id) const;
  std::string_view user_of(ConnId id) const;
  size_t connection_count() const { return open_count_; }
  size_t user_count() const { return users_.size(); }
  size_t connections_of(std::string_view user_id) const;
  const GatewayConfig& config() const { return config_; }
  Metrics& metrics() { return metrics_; }
  const Metrics& metrics() const { return metrics_; }
  std::string render_health() const;
  // Readiness (GET /ready): may a load balancer send new clients here?
  // Not while draining, while the transport is down (at start-up too: a
  // node is not ready before its first connection to the others), at
  // max_connections, or while the queue budget refuses upgrades. Empty
  // when ready, else the reason, for the 503's body.
  std::string_view not_ready_reason() const;
  std::string render_ready() const;
  bool is_draining() const { return draining_; }
  DrainStatus drain_status(uint64_t now_ms) const;
  // The cluster as this node sees it from load reports (itself included).
  const std::unordered_map<std::string, PeerLoad, StringHash, std::equal_to<>>& peer_loads() const {
    return peer_loads_;
  }
  size_t tracked_origins() const { return origins_.size(); }
  // Memory of every frame queued to this node's connections (a shared
  // frame once); what node_send_queue_max_bytes bounds.
  size_t queued_memory_bytes() const { return ledger_.bytes; }
  const AdmissionControl& admission() const { return admission_; }

  // Asserts (WSGATE_ASSERT, on in release builds) that the core's tables
  // agree with each other: every slot, user list, dirty flag, pending
  // close, outbox and cluster table. `full` walks every connection
  // (O(connections)); `cheap` checks only what costs O(1). The simulator
  // calls it after every event; a breach stops the process.
  enum class InvariantCheck : uint8_t { cheap, full };
  void check_invariants(InvariantCheck depth = InvariantCheck::full) const;

 private:
  friend struct GatewayInternals;  // tests/unit: plants bugs that check_invariants must catch
  struct Slot;
  struct User;
  using UserMap = std::unordered_map<std::string, User, StringHash, std::equal_to<>>;
  Slot* slot(ConnId id);
  const Slot* slot(ConnId id) const;
  void request_close(ConnId id, CloseCode code, std::string_view reason);
  // Queues f to a connection, or closes it as a slow consumer if that would
  // pass send_queue_max_bytes. counted: the type for messages_out_total.
  void enqueue(ConnId id, Slot& s, const FrameRef& f, const MessageType* counted);
  void close_slow_consumer(ConnId id, Slot& s);
  // Marks the connection dirty and notes whether the node passed its budget.
  void note_queued(ConnId id, Slot& s);
  void shed_largest_queues();
  size_t queue_budget_refuse_bytes() const;
  // The token buckets: false (and the message dropped) past them.
  bool within_rate(ConnId id, Slot& s, size_t bytes, uint64_t now_ms);
  void send_error(ConnId id, std::string_view message);
  // Local delivery; return how many connections were given the frame.
  size_t route_to_user(std::string_view user_id, const FrameRef& f);
  size_t broadcast(const FrameRef& f);
  // Hands f to the other nodes; false (and an error to `from`) if refused.
  PublishStatus publish(ConnId from, std::string_view topic, const FrameRef& f, bool direct);
  PublishStatus publish_raw(std::string_view topic, std::string_view body, ConnId from = {}, bool direct = false);
  void on_transport_message(std::string_view topic, std::string_view payload) override;
  void record_load(std::string_view origin, const LoadReport& r);
  void on_transport_state(TransportState state) override;
  void on_transport_publish_lost(uint64_t first, uint64_t count, PublishLoss why) override;
  void on_transport_publish_unrouted(uint64_t number) override;
  void update_presence(const UserMap::value_type& user);
  // Drops what this node already saw from that publisher incarnation.
  bool accept_sequence(std::string_view origin, uint64_t seq, uint64_t now_ms);
  void report_load(uint64_t now_ms);
  void rebalance();
  void forget_load_history();
  void age_peer_loads(uint64_t now_ms);
  void drain_some(uint64_t now_ms);
  // Closes up to n open connections from a rotating cursor; returns how many.
  size_t close_some(size_t n, CloseCode code, std::string_view reason);
  void attach_to_user(uint32_t index, std::string_view user_id);
  void detach_from_user(uint32_t index);
  void run_heartbeat(uint64_t now_ms);

  GatewayConfig config_;
  Metrics metrics_;
  AdmissionControl admission_;
  std::unique_ptr<MessageParser> parser_;
  QueueLedger ledger_;  // before slots_: their outboxes report to it until destroyed
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;
  // user id -> the user's connections (an intrusive list through slots_)
  UserMap users_;
  std::vector<ConnId> dirty_;
  std::vector<CloseRequest> closes_;
  size_t open_count_ = 0;
  uint64_t next_heartbeat_ms_ = 0;
  Transport* transport_;
  std::unique_ptr<TransportInput> transport_input_;  // with a transport only
  std::string origin_;            // node_id/incarnation
  uint64_t publish_seq_ = 0;
  // Who sent the recent accepted publishes, by publish number, so a publish
  // the transport later reports lost is reported to its sender. A ring: a
  // loss reported after Limits::max_tracked_publishes newer publishes is
  // counted only.
  struct PublishSender {
    uint64_t number = 0;
    ConnId from;
    bool direct = false;  // a send_message (not a broadcast or a report)
  };
  std::vector<PublishSender> publish_senders_;  // max_tracked_publishes of them
  PublishSender& publish_sender(uint64_t number) { return publish_senders_[number % publish_senders_.size()]; }
  uint64_t publishes_accepted_ = 0;
  struct OriginState {
    uint64_t last_seq;
    uint64_t seen_ms;
  };
  std::unordered_map<std::string, OriginState, StringHash, std::equal_to<>> origins_;
  std::unordered_map<std::string, PeerLoad, StringHash, std::equal_to<>> peer_loads_;
  uint64_t now_ms_ = 0;           // latest time seen in an event
  uint64_t next_load_report_ms_ = 0;
  uint64_t next_drain_ms_ = 0;
  uint64_t drain_deadline_ms_ = UINT64_MAX;
  bool draining_ = false;
  uint32_t close_cursor_ = 0;
  mutable std::vector<uint32_t> check_scratch_;  // check_invariants: per slot, no allocation per call
  std::string topic_scratch_;     // reused: no allocation per publish
  std::string envelope_scratch_;
  FrameRef ping_frame_;
  FrameRef pong_frame_;
  std::string admitted_ip_;  // of the last admitted upgrade request
  bool has_admitted_ip_ = false;
  bool shed_pending_ = false;  // the budget was passed since the last take_dirty
  std::string rate_error_messages_;
  std::string rate_error_bytes_;
};

}  // namespace wsgate

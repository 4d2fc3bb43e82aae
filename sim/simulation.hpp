#pragma once
// One simulated cluster run: N real Gateway cores, each behind a
// FaultTransport on the shared bus, driven like the server drives them, and
// M virtual clients reaching them through a simulated load balancer, all
// under one deterministic scheduler. Each connection owns a WsSession, as
// the server's sockets do: clients speak masked WebSocket frames into it and
// decode what the node writes with the one frame codec, and the close
// handshake and its timeout follow the driver contract
// (session/driver_contract.hpp) that the server runs too. The run is a pure function of
// SimOptions; its trace hash proves it.
//
// The run has four phases:
//   faults   [0, duration): workload plus the chosen faults;
//   settle   no new faults, partitions healed, crashed nodes restarted,
//            the bus quiet: presence must converge and load even out;
//   leave    every client leaves: every node's tables must empty;
//   end      final checks.
//
// The member functions are split by job over several files:
// simulation.cpp (loop, phases), node_driver.cpp (what the server does for
// a node), clients.cpp (virtual clients and the load balancer), faults.cpp
// (the fault injector), invariants.cpp (ledgers and checks), report.cpp
// (progress and summary), scenarios.cpp (named scenarios).
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "fault_transport.hpp"
#include "options.hpp"
#include "rng.hpp"
#include "scheduler.hpp"
#include "sim_bus.hpp"
#include "trace.hpp"
#include "wsgate/gateway.hpp"
#include "ws_session.hpp"

namespace wsgate::sim {

// The invariants, by the names a violation is reported under.
enum class Invariant : uint8_t {
  direct_at_most_once,          // (1) no connection gets a direct message twice
  direct_in_send_order,         // (1) per sender connection -> receiving connection
  direct_delivered_when_healthy,// (1') delivered if everything on its path stayed healthy
  broadcast_exactly_once,       // (2) every client connected for the window, once
  presence_converges,           // (3)
  load_balanced,                // (4)
  rebalance_only_when_needed,   // (4') no 4002 move from a node already at the core's target
  admission_fair,               // no 429 for a client under its per-IP limit
  memory_bounded,               // (5)
  transport_input_genuine,      // no node drops as invalid what another node published
  tables_empty_after_leave,     // (6)
  messages_reach_core,          // (7) every message a client frames on an open connection reaches the core once
  count_
};
const char* invariant_name(Invariant i);
// "a,b" -> bits (1 << Invariant); throws std::invalid_argument on an unknown name.
uint32_t parse_invariants(const std::string& list);
std::string format_invariants(uint32_t bits);

struct Violation {
  Invariant invariant;
  uint64_t time_ms;
  std::string detail;
  std::string recent;  // the trace ring at the time
};

struct SimStats {
  uint64_t direct_sent = 0, direct_offline_target = 0, direct_refused = 0, direct_ignored_closing = 0;
  uint64_t direct_expected = 0, direct_delivered = 0, direct_late_recipient = 0;
  uint64_t direct_missed_closed = 0, direct_missed_unhealthy = 0, direct_missed_slow = 0, direct_missed_refused = 0;
  uint64_t broadcast_sent = 0, broadcast_refused = 0, broadcast_deliveries = 0;
  uint64_t broadcast_obligations = 0, broadcast_excused = 0;
  uint64_t errors_received = 0;
  uint64_t connects = 0, opens = 0, reconnects = 0, rejected = 0, connect_failed = 0;
  uint64_t crashes = 0, restarts = 0, partitions = 0, drains = 0, stalls = 0, vanishes = 0, storms = 0, joins = 0;
  uint64_t failover_clients = 0;  // connections lost to a crash, reconnected elsewhere
  uint64_t failover_ms_max = 0;   // crash -> last of its clients open again
  uint64_t client_pings = 0, client_pongs_received = 0;  // clients' pings, the nodes' (wslay's) answers
  uint64_t server_pings_answered = 0;  // heartbeat pings the clients answered with a pong
  uint64_t close_handshakes = 0;       // sockets closed after both close frames
  uint64_t close_timeouts = 0;         // sockets closed because the peer never answered our close
  uint64_t protocol_error_closes = 0;  // the session refused a client's frames (must stay 0)
  uint64_t needless_moves = 0;    // 4002 while the node was inside the band
  uint64_t needless_moves_after_crash = 0;  // of which on a view not yet aware of a crash
  uint64_t drain_cut = 0;  // connections a drained node still held at its deadline
  uint64_t rebalance_moves = 0, drain_closes = 0, slow_consumer_closes = 0, heartbeat_timeouts = 0;
  uint64_t stale_dropped = 0, bus_duplicated = 0, bus_dropped_cut_off = 0;
  uint64_t publish_backpressure = 0, publish_unavailable = 0;
  uint64_t server_closes_by_code[8] = {};  // see close_code_slot()
  int64_t presence_converged_ms = -1;      // after the last fault
  int64_t load_balanced_ms = -1;
  int64_t join_balanced_ms = -1;           // rebalance scenario: join -> within tolerance
  double max_load_ratio = 0;               // at the end of settling: max / mean
  uint64_t events = 0;
  uint64_t peak_connections = 0;
};

struct SimResult {
  uint64_t seed = 0;
  uint64_t trace_hash = 0;
  uint64_t trace_records = 0;
  uint64_t virtual_ms = 0;
  double wall_s = 0;
  SimStats stats;
  std::vector<Violation> violations;  // the first of each invariant
  std::vector<Violation> ignored;     // the same, for invariants under --ignore
  // 0 ok, 1 violated, 2 n/a, 3 violated but ignored
  std::array<uint8_t, size_t(Invariant::count_)> status{};
  bool ok() const { return violations.empty(); }
};

class Simulation {
 public:
  explicit Simulation(SimOptions options);
  ~Simulation();
  Simulation(const Simulation&) = delete;
  Simulation& operator=(const Simulation&) = delete;

  // Runs to the end (or the first violation if stop_at_first_violation).
  SimResult run();
  bool stop_at_first_violation = false;

 private:
  static constexpr uint32_t none = UINT32_MAX;
  enum class Phase : uint8_t { faults, settle, leave, end };

  // --- a connection as the node's driver sees it (by Gateway slot index)
  struct Conn {
    uint32_t generation = 0;
    bool live = false;      // handle_open done, handle_closed not yet
    uint32_t client = none; // none once the client let go of it
    uint32_t user = 0;
    uint32_t conn_no = 0;
    bool zombie = false;    // its client vanished: nobody reads it
    bool reset = false;     // a TCP reset is on its way: both ends are done
    bool close_timer_set = false;
    bool in_slow_list = false;
    uint16_t client_close_code = 0;  // of the close frame the client sent (in flight)
    uint64_t socket_credit = 0;  // zombies: what the kernel buffer still takes
    std::unique_ptr<WsSession> ws;  // the session layer, as the server's Socket holds it
  };

  struct Node {
    std::string id;
    uint32_t life = 0;  // bumped on every start and death; old events are ignored
    bool up = false, draining = false, cut = false, stalled = false;
    std::unique_ptr<Transport> inner;
    std::unique_ptr<FaultTransport> bus;
    std::unique_ptr<Gateway> gw;
    std::vector<Conn> conns;
    uint32_t pending_arrivals = 0;
    uint64_t tick_at = UINT64_MAX, poll_at = UINT64_MAX, slow_drain_at = UINT64_MAX;
    uint64_t last_tick_ms = 0;
    uint64_t last_unhealthy_ms = 0;
    uint64_t refused_seen = 0;     // publish refusals already accounted
    uint64_t published_seen = 0;   // publishes already announced to the pollers
    uint64_t crashed_at_ms = 0;
    uint32_t events_since_full_check = 0;
    uint32_t crash_orphans = 0;    // its clients not yet reconnected after a crash
    std::vector<uint32_t> slow_slots;  // slots with bytes a slow reader left
  };

  enum class ClientState : uint8_t { offline, connecting, open, gone };
  struct Client {
    uint32_t user = 0;
    uint32_t addr = 0;
    uint32_t epoch = 0;       // bumped on every state change: stale events are ignored
    ClientState state = ClientState::offline;
    bool slow = false;
    bool vanished_once = false;
    uint32_t node = none;
    ConnId conn{};
    uint32_t conn_no = 0;     // connections this client opened so far
    uint64_t opened_ms = 0;
    uint32_t attempts = 0;    // failed connects since the last success
    uint32_t seq = 0;         // messages this client sent (all connections)
    uint32_t failover_from = none;  // node whose crash it is recovering from
    std::string partial;      // bytes of an incomplete frame (slow readers)
    std::string replies;      // masked pongs owed to the node, sent once a write ends
    uint64_t frames_sent = 0; // picks each frame's mask key
    // Upgrade attempts from this client's address in the current and the
    // previous ip_window_ms (each client has its own address).
    uint64_t ip_window_start_ms = 0;
    uint32_t ip_attempts = 0, ip_attempts_before = 0;
  };

  struct DirectRecord {
    uint64_t sent_ms;
    uint32_t sender, sender_conn_no, sender_node, sender_life;
    bool accepted;
    struct Recipient {
      uint32_t client, conn_no, node, count;
    };
    std::vector<Recipient> recipients;  // connected at send time
    std::vector<std::pair<uint32_t, uint32_t>> late;  // (client, conn_no) connected later
  };

  struct BroadcastRecord {
    uint64_t sent_ms;
    uint32_t sender, sender_node, sender_life;
    bool accepted;
    bool checked = false;
    std::vector<uint32_t> received_on;  // per client: conn_no it arrived on (0: not yet)
  };

  // simulation.cpp
  void setup();
  void dispatch(const Event& e);
  void begin_phase(Phase p);
  void check_periodic();
  void finish();
  uint64_t window_ms() const;
  uint64_t latency_ms() { return rng_.between(1, 3); }

  // node_driver.cpp
  void start_node(uint32_t n);
  void crash_node(uint32_t n);
  void exit_drained_node(uint32_t n);
  void harvest_metrics(Node& node);
  void service(uint32_t n);
  void flush(uint32_t n, ConnId id);
  // Writes up to budget writable bytes to reader (none: nobody reads);
  // returns how many the socket took.
  size_t write_out(uint32_t n, ConnId id, uint32_t reader, size_t budget);
  void note_close_request(uint32_t n, const CloseRequest& req);
  void settle(uint32_t n, ConnId id);
  void close_socket(uint32_t n, ConnId id);
  Conn* live_conn(uint32_t n, uint32_t life, ConnId id);
  void on_client_close_frame(uint32_t n, uint32_t life, ConnId id);
  void on_conn_reset(uint32_t n, uint32_t life, ConnId id);
  void on_close_timeout(uint32_t n, uint32_t life, ConnId id);
  void on_tick(uint32_t n, uint32_t life);
  void on_poll(uint32_t n, uint32_t life);
  void on_slow_drain(uint32_t n, uint32_t life);
  void schedule_poll(uint32_t n, uint64_t at_ms);
  void poll_all_soon();
  void mark_unhealthy(uint32_t n) { nodes_[n].last_unhealthy_ms = sched_.now_ms(); }
  bool healthy_since(uint32_t n, uint32_t life, uint64_t since_ms) const;
  bool available(uint32_t n) const;
  uint32_t available_count() const;

  // clients.cpp
  void schedule_connect(uint32_t c, uint64_t delay_ms);
  void reconnect_after_failure(uint32_t c);
  void on_connect(uint32_t c, uint32_t epoch);
  void on_arrive(uint32_t c, uint32_t epoch, uint32_t n, uint32_t life);
  void on_act(uint32_t c, uint32_t epoch);
  void send_direct(uint32_t c);
  bool send_broadcast(uint32_t c);
  void leave(uint32_t c, bool come_back);
  void vanish(uint32_t c);
  void drop_connection(uint32_t c);  // TCP reset: both sides notice
  void lost_connection(uint32_t c, uint64_t reconnect_delay_ms);
  // Sends one masked client frame into the node's session, at once.
  void send_frame(uint32_t c, Opcode op, std::string_view payload);
  // Sends the pongs the client owes (after a write to it ended).
  void send_replies(uint32_t c);
  // Sends a text message; checks that the session handed it to the core.
  void send_text(uint32_t c, std::string_view text);
  void receive(uint32_t c, const uint8_t* data, size_t n);
  void on_frame(uint32_t c, uint8_t opcode, std::string_view payload);
  void on_server_close(uint32_t c, CloseCode code);
  uint32_t pick_node(uint32_t c);
  uint64_t backoff_ms(uint32_t attempts);
  uint32_t random_open_client();

  // faults.cpp
  void on_chaos();
  void apply_continuous_faults(bool on);
  void partition(uint32_t n);
  void heal(uint32_t n, uint32_t life);
  void stall(uint32_t n);
  void unstall(uint32_t n, uint32_t life);
  void start_drain(uint32_t n);
  void storm();
  void add_node();

  // invariants.cpp
  void violate(Invariant inv, std::string detail);
  void on_direct_received(uint32_t c, uint32_t g);
  void on_broadcast_received(uint32_t c, uint32_t b);
  void check_direct(uint32_t g);
  void check_broadcast(uint32_t b);
  void check_memory();
  void check_core(uint32_t n);
  void check_transport_input();
  void check_presence();
  void check_balance(bool final_check);
  bool cluster_balanced(uint64_t& most, double& mean) const;
  void check_tables_empty();
  void check_rebalance_move(uint32_t n);

  // report.cpp
  void print_progress();
  static void print_summary(const SimOptions& o, const SimResult& r, FILE* out);

  // scenarios.cpp
  void scenario_step(uint32_t step);
  void schedule_scenario();

 public:
  static void print_result(const SimOptions& o, const SimResult& r, FILE* out) { print_summary(o, r, out); }

 private:
  SimOptions o_;
  Limits limits_;
  BusFaults bus_faults_;
  Scheduler sched_;
  Rng rng_;        // workload and load balancer
  Rng chaos_rng_;  // fault decisions
  Trace trace_;
  std::unique_ptr<SimBus> bus_;
  std::vector<Node> nodes_;
  std::vector<Client> clients_;
  std::vector<std::vector<uint32_t>> user_clients_;
  std::vector<std::string> user_names_;
  std::vector<DirectRecord> directs_;
  std::vector<BroadcastRecord> broadcasts_;
  // (receiver client, receiver conn_no, sender client, sender conn_no) -> last direct id.
  struct PairKey {
    uint64_t receiver, sender;
    friend bool operator==(const PairKey&, const PairKey&) = default;
  };
  struct PairHash {
    size_t operator()(const PairKey& k) const { return size_t(mix64(k.receiver) ^ (k.sender * 0x9E3779B97F4A7C15ull)); }
  };
  std::unordered_map<PairKey, uint32_t, PairHash> last_direct_;  // looked up, never iterated
  Phase phase_ = Phase::faults;
  uint64_t settle_start_ms_ = 0, leave_start_ms_ = 0, end_ms_ = 0;
  uint64_t next_progress_ms_ = 10000;
  size_t broadcast_free_cursor_ = 0;
  uint64_t join_ms_ = 0;
  uint64_t last_crash_ms_ = 0;  // when the rebalance scenario added nodes
  SimResult result_;
  std::string scratch_;
  std::string frame_scratch_;  // one client frame on its way into a session
  std::string shm_name_;
};

// Appends one final client frame (masked, RFC 6455 5.3) to out; the mask
// key is drawn from key_seed, not from the run's generators, so framing
// adds no draws to the workload.
void append_client_frame(std::string& out, Opcode op, std::string_view payload, uint64_t key_seed);

// Runs options.seed..seed_last (inclusive) and prints failing seeds with
// their reproduction commands; returns how many failed.
uint32_t run_sweep(SimOptions options, uint64_t seed_first, uint64_t seed_last, FILE* out);
// Applies a named scenario's defaults; false if the name is unknown.
bool apply_scenario_defaults(SimOptions& o);

}  // namespace wsgate::sim

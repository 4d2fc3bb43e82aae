// The run loop and its phases.
#include "simulation.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <stdexcept>

namespace wsgate::sim {

namespace {
// Every 250 ms of virtual time: cheap checks; presence only while settling.
constexpr uint64_t periodic_ms = 250;
// After the last fault, presence must match the truth within the bus's
// TTL (a crashed node's entries linger that long) plus this margin.
std::atomic<uint64_t> run_counter{0};
}  // namespace

const char* invariant_name(Invariant i) {
  static constexpr const char* names[] = {
      "direct_at_most_once", "direct_in_send_order", "direct_delivered_when_healthy", "broadcast_exactly_once",
      "presence_converges",  "load_balanced",        "rebalance_only_when_needed",    "admission_fair", "memory_bounded",
      "transport_input_genuine", "tables_empty_after_leave", "messages_reach_core",
  };
  static_assert(sizeof(names) / sizeof(names[0]) == size_t(Invariant::count_));
  return names[size_t(i)];
}

uint32_t parse_invariants(const std::string& list) {
  uint32_t bits = 0;
  size_t start = 0;
  while (start < list.size()) {
    const size_t comma = std::min(list.find(',', start), list.size());
    const std::string name = list.substr(start, comma - start);
    bool found = false;
    for (size_t i = 0; i < size_t(Invariant::count_); ++i)
      if (name == invariant_name(Invariant(i))) {
        bits |= 1u << i;
        found = true;
      }
    if (!found) throw std::invalid_argument("unknown invariant '" + name + "'");
    start = comma + 1;
  }
  return bits;
}

std::string format_invariants(uint32_t bits) {
  std::string out;
  for (size_t i = 0; i < size_t(Invariant::count_); ++i)
    if ((bits >> i) & 1u) out += (out.empty() ? "" : ",") + std::string(invariant_name(Invariant(i)));
  return out;
}

Simulation::Simulation(SimOptions options)
    : o_(std::move(options)), rng_(o_.seed), chaos_rng_(rng_.fork()) {
  // Short timers so that a run of seconds sees many heartbeats, idle
  // timeouts and load reports; the relations the core asserts still hold.
  limits_.heartbeat_interval_ms = 1000;
  limits_.idle_timeout_ms = 3000;
  limits_.close_timeout_ms = 1000;
  limits_.max_message_bytes = 4096;
  limits_.send_queue_max_bytes = 16 * 1024;
  limits_.max_connections = std::max<uint32_t>(100000, o_.clients + 1000);
  limits_.load_report_interval_ms = 1000;
  if (o_.plant == PlantedBug::origin_table_1) limits_.max_tracked_origins = 1;
  if (o_.drain_max_closes_per_s) limits_.drain_max_closes_per_s = o_.drain_max_closes_per_s;
  if (o_.shutdown_timeout_ms) limits_.shutdown_timeout_ms = o_.shutdown_timeout_ms;
  shm_name_ = "wsgate-sim-" + std::to_string(::getpid()) + "-" + std::to_string(o_.seed) + "-" +
              std::to_string(run_counter++);
}

Simulation::~Simulation() {
  // Gateways before their transports, transports before the bus.
  for (Node& n : nodes_) {
    n.gw.reset();
    n.bus.reset();
    n.inner.reset();
  }
}

// The obligation window of a message: the longest the bus may hold it,
// plus room for polls and the client's read.
uint64_t Simulation::window_ms() const {
  const uint64_t bus = o_.has(Fault::reorder) ? 200 : o_.has(Fault::delay) || o_.plant != PlantedBug::none ? 20 : 0;
  return bus + 100;
}

void Simulation::setup() {
  // Users: some hold two connections (tabs).
  const uint32_t m = o_.clients;
  clients_.resize(m);
  for (uint32_t c = 0; c < m;) {
    const uint32_t user = uint32_t(user_clients_.size());
    const uint32_t tabs = (c + 1 < m && rng_.below(100) < o_.two_tab_users_pct) ? 2 : 1;
    user_clients_.emplace_back();
    user_names_.push_back("u" + std::to_string(user));
    for (uint32_t t = 0; t < tabs; ++t, ++c) {
      clients_[c].user = user;
      clients_[c].addr = 0x0A000000u + c + 1;  // 10.x.y.z, one address per client
      user_clients_[user].push_back(c);
    }
  }
  if (o_.has(Fault::slow))
    for (Client& cl : clients_) cl.slow = rng_.below(100) < 5;

  SimBusConfig bc;
  bc.kind = o_.bus;
  bc.max_nodes = o_.nodes + 4;
  bc.small_rings = o_.has(Fault::overflow);
  bc.max_users = uint32_t(user_clients_.size());
  bc.shm_name = shm_name_;
  bus_ = make_sim_bus(bc);

  nodes_.reserve(o_.nodes + 4);
  for (uint32_t n = 0; n < o_.nodes; ++n) {
    nodes_.emplace_back();
    nodes_.back().id = "n" + std::to_string(n);
    start_node(n);
  }
  apply_continuous_faults(true);

  // Clients arrive over the first seconds, not all in one millisecond.
  const uint64_t ramp_ms = std::min<uint64_t>(2000, std::max<uint64_t>(1, o_.duration_ms / 4));
  for (uint32_t c = 0; c < m; ++c) sched_.at(rng_.below(ramp_ms), EventKind::client_connect, c, clients_[c].epoch);

  const bool event_faults = o_.has(Fault::crash) || o_.has(Fault::partition) || o_.has(Fault::drain) ||
                            o_.has(Fault::overflow) || o_.has(Fault::vanish) || o_.has(Fault::storm);
  if (event_faults) sched_.at(ramp_ms + chaos_rng_.around(1000), EventKind::chaos);
  if (o_.broadcasts_per_s) sched_.at(ramp_ms + rng_.around(1000 / o_.broadcasts_per_s), EventKind::broadcast_gen);
  sched_.at(periodic_ms, EventKind::check_periodic);
  schedule_scenario();

  settle_start_ms_ = o_.duration_ms;
  // Settling lasts long enough for presence to age out and for the
  // rebalancer, at its configured rate, to fill a node that restarted empty
  // as settling began (its share, moved by every other node).
  const uint64_t share = o_.clients / std::max<uint32_t>(1, o_.nodes);
  const uint64_t movers = std::max<uint32_t>(1, o_.nodes - 1) * uint64_t(limits_.rebalance_max_moves_per_s);
  const uint64_t fill_ms = o_.nodes < 2 ? 0 : 1500 * share / movers + 5000;
  // Under random placement a moved client lands on another loaded node as
  // often as not, so evening out takes several rounds of moves, each up to
  // three report intervals apart (the moves, then two steady reports from
  // every peer): give it eight more rounds.
  const uint64_t random_rounds_ms = o_.lb == LbPolicy::random ? 8ull * 3 * limits_.load_report_interval_ms : 0;
  leave_start_ms_ = settle_start_ms_ + std::max(bus_->presence_ttl_ms() + 10000, fill_ms) + random_rounds_ms;
  end_ms_ = leave_start_ms_ + limits_.idle_timeout_ms + limits_.heartbeat_interval_ms + limits_.close_timeout_ms +
            bus_->presence_ttl_ms() + 3000;
  sched_.at(settle_start_ms_, EventKind::phase, uint32_t(Phase::settle));
  sched_.at(leave_start_ms_, EventKind::phase, uint32_t(Phase::leave));
  sched_.at(end_ms_, EventKind::phase, uint32_t(Phase::end));
}

SimResult Simulation::run() {
  const auto wall_start = std::chrono::steady_clock::now();
  result_.seed = o_.seed;
  if (o_.trace) trace_.echo_to(stdout);
  setup();
  Event e;
  while (phase_ != Phase::end && sched_.pop(e)) {
    dispatch(e);
    if (stop_at_first_violation && !result_.violations.empty()) break;
  }
  finish();
  result_.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  return result_;
}

void Simulation::dispatch(const Event& e) {
  switch (e.kind) {
    case EventKind::client_connect: on_connect(e.a, uint32_t(e.b)); break;
    case EventKind::client_arrive: on_arrive(e.a, uint32_t(e.b), uint32_t(e.c >> 32), uint32_t(e.c)); break;
    case EventKind::client_act: on_act(e.a, uint32_t(e.b)); break;
    case EventKind::client_close_frame:
      on_client_close_frame(e.a, uint32_t(e.b), ConnId{uint32_t(e.c >> 32), uint32_t(e.c)});
      break;
    case EventKind::conn_reset: on_conn_reset(e.a, uint32_t(e.b), ConnId{uint32_t(e.c >> 32), uint32_t(e.c)}); break;
    case EventKind::close_timeout: on_close_timeout(e.a, uint32_t(e.b), ConnId{uint32_t(e.c >> 32), uint32_t(e.c)}); break;
    case EventKind::node_tick:
      if (nodes_[e.a].tick_at == e.time_ms) on_tick(e.a, uint32_t(e.b));
      break;
    case EventKind::node_poll:
      if (nodes_[e.a].poll_at == e.time_ms) on_poll(e.a, uint32_t(e.b));
      break;
    case EventKind::node_slow_drain:
      if (nodes_[e.a].slow_drain_at == e.time_ms) on_slow_drain(e.a, uint32_t(e.b));
      break;
    case EventKind::node_restart:
      if (!nodes_[e.a].up && nodes_[e.a].life == uint32_t(e.b)) {
        ++result_.stats.restarts;
        start_node(e.a);
      }
      break;
    case EventKind::node_heal: heal(e.a, uint32_t(e.b)); break;
    case EventKind::node_unstall: unstall(e.a, uint32_t(e.b)); break;
    case EventKind::chaos: on_chaos(); break;
    case EventKind::broadcast_gen:
      if (phase_ == Phase::faults || phase_ == Phase::settle) {
        if (uint32_t c = random_open_client(); c != none) send_broadcast(c);
        if (e.a == 0) sched_.after(rng_.around(1000 / o_.broadcasts_per_s), EventKind::broadcast_gen);
      }
      break;
    case EventKind::check_direct: check_direct(e.a); break;
    case EventKind::check_broadcast: check_broadcast(e.a); break;
    case EventKind::check_periodic:
      check_periodic();
      sched_.after(periodic_ms, EventKind::check_periodic);
      break;
    case EventKind::phase: begin_phase(Phase(e.a)); break;
    case EventKind::scenario_step: scenario_step(e.a); break;
  }
}

// Settling: every fault is lifted at once, so "the last fault" is this
// moment, and the convergence clocks start here.
void Simulation::begin_phase(Phase p) {
  trace_.record(sched_.now_ms(), TraceKind::phase, uint64_t(p));
  switch (p) {
    case Phase::faults: break;
    case Phase::settle:
      phase_ = Phase::settle;
      apply_continuous_faults(false);
      for (uint32_t n = 0; n < nodes_.size(); ++n) {
        if (nodes_[n].up && nodes_[n].cut) heal(n, nodes_[n].life);
        if (nodes_[n].up && nodes_[n].stalled) unstall(n, nodes_[n].life);
        if (!nodes_[n].up && o_.has(Fault::restart)) {
          ++result_.stats.restarts;
          start_node(n);
        }
      }
      break;
    case Phase::leave:
      check_balance(true);
      phase_ = Phase::leave;
      for (uint32_t c = 0; c < clients_.size(); ++c) {
        Client& cl = clients_[c];
        if (cl.state == ClientState::open) {
          sched_.after(rng_.below(1000), EventKind::client_act, c, cl.epoch);
        } else if (cl.state != ClientState::gone) {
          cl.state = ClientState::gone;
          ++cl.epoch;
        }
      }
      break;
    case Phase::end:
      check_tables_empty();
      phase_ = Phase::end;
      break;
  }
}

void Simulation::check_periodic() {
  const uint64_t now = sched_.now_ms();
  if (now % 1000 == 0) {
    check_memory();
    check_transport_input();
  }
  if (join_ms_ && result_.stats.join_balanced_ms < 0 && phase_ != Phase::leave) {
    uint64_t most = 0;
    double mean = 0;
    if (cluster_balanced(most, mean)) result_.stats.join_balanced_ms = int64_t(now - join_ms_);
  }
  if (phase_ == Phase::settle) {
    // Every 250 ms until presence converges, then every second: it must stay so.
    if (result_.stats.presence_converged_ms < 0 || now % 1000 == 0) check_presence();
    check_balance(false);
  }
  // A broadcast's per-client record is kept a while after its window, to
  // catch late duplicates, then freed: memory stays bounded in long runs.
  const uint64_t keep_ms = window_ms() + 30000;
  while (broadcast_free_cursor_ < broadcasts_.size()) {
    BroadcastRecord& b = broadcasts_[broadcast_free_cursor_];
    if (b.sent_ms + keep_ms > now || !b.checked) break;
    std::vector<uint32_t>().swap(b.received_on);
    ++broadcast_free_cursor_;
  }
  if (!o_.quiet && now >= next_progress_ms_) {
    print_progress();
    next_progress_ms_ += 10000;
  }
}

void Simulation::finish() {
  for (Node& n : nodes_)
    if (n.up) harvest_metrics(n);
  result_.trace_hash = trace_.hash();
  result_.trace_records = trace_.count();
  result_.virtual_ms = sched_.now_ms();
  result_.stats.events = sched_.executed();
  if (o_.lb == LbPolicy::ip_hash) result_.status[size_t(Invariant::load_balanced)] = 2;
}

}  // namespace wsgate::sim

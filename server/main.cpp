// wsgate: one gateway node. Parses the command line, checks that io_uring
// is usable, binds, logs what it serves, and runs the event loop until
// SIGTERM or SIGINT.
#include <signal.h>
#include <sys/resource.h>

#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "event_loop.hpp"
#include "health_check.hpp"
#include "io_uring_probe.hpp"
#include "log.hpp"
#include "options.hpp"

namespace {

using namespace wsgate::server;

// Each connection is a file descriptor: take every one the hard limit allows.
rlim_t raise_open_file_limit() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) != 0) return 0;
  if (r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
    getrlimit(RLIMIT_NOFILE, &r);
  }
  return r.rlim_cur;
}

}  // namespace

int main(int argc, char** argv) {
  // --health-check takes no value: taken out here, the rest parsed as usual
  // (so it asks the host and port the node itself would listen on).
  std::vector<const char*> args(argv, argv + argc);
  const auto probe = std::find_if(args.begin(), args.end(),
                                  [](const char* a) { return std::string_view(a) == "--health-check"; });
  const bool health_check = probe != args.end();
  if (health_check) args.erase(probe);
  const OptionsOutcome parsed =
      parse_options(int(args.size()), args.data(), [](const char* name) { return std::getenv(name); });
  if (parsed.kind == OptionsOutcome::Kind::help) {
    std::fputs(parsed.message.c_str(), stdout);
    return 0;
  }
  if (parsed.kind == OptionsOutcome::Kind::error) {
    log_line("wsgate: %s", parsed.message.c_str());
    return parsed.exit_code();
  }
  const ServerOptions& options = parsed.options;
  if (health_check) {
    constexpr uint32_t health_check_timeout_ms = 3000;
    std::string why;
    const int status = run_health_check(options.host, options.port, health_check_timeout_ms, why);
    if (status != 0) log_line("wsgate --health-check: %s", why.c_str());
    return status;
  }

  // SIGTERM and SIGINT are read from a signalfd by the loop; blocked from
  // the start, one that arrives during start-up waits there instead of
  // killing the process.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigprocmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // sends use MSG_NOSIGNAL; this covers the rest
  const rlim_t open_files = raise_open_file_limit();

  const UringSupport uring = probe_io_uring();
  if (!uring.ok) {
    log_line("wsgate: %s", uring.error.c_str());
    return 1;
  }

  EventLoop loop(options, uring.setup_flags);
  if (std::string e = loop.start(); !e.empty()) {
    log_line("wsgate: %s", e.c_str());
    return 1;
  }
  log_line("wsgate listening on %s node_id=%s transport=%s io_uring=%s", loop.listen_address().c_str(),
           options.node_id.c_str(), options.transport.c_str(), uring.features.c_str());
  for (const std::string& w : options.warnings) log_line("wsgate warning: %s", w.c_str());
  log_line("wsgate warning: no auth secret configured (development mode): user_id is trusted from the "
           "query string");
  const auto& l = options.limits;
  log_line("wsgate limits: max_connections=%u max_connections_per_ip=%u/%ums max_message_bytes=%u "
           "send_queue_max_bytes=%u heartbeat_interval_ms=%u idle_timeout_ms=%u max_header_bytes=%u "
           "handshake_timeout_ms=%u close_timeout_ms=%u shutdown_timeout_ms=%u",
           l.max_connections, l.max_connections_per_ip, l.ip_window_ms, l.max_message_bytes,
           l.send_queue_max_bytes, l.heartbeat_interval_ms, l.idle_timeout_ms, l.max_header_bytes,
           l.handshake_timeout_ms, l.close_timeout_ms, l.shutdown_timeout_ms);
  log_line("wsgate limits: max_open_connections_per_ip=%u ipv6_prefix_bits=%u node_send_queue_max_bytes=%u "
           "client_max_messages_per_s=%u (burst %u) client_max_bytes_per_s=%u (burst %u) "
           "max_pending_handshakes=%u drain_max_closes_per_s=%u recv_pool=%ux%u bytes",
           l.max_open_connections_per_ip, l.ipv6_prefix_bits, l.node_send_queue_max_bytes,
           l.client_max_messages_per_s, l.client_burst_messages, l.client_max_bytes_per_s, l.client_burst_bytes,
           l.max_pending_handshakes, l.drain_max_closes_per_s, options.buffers.recv_pool_buffers,
           options.buffers.recv_buffer_bytes);
  if (open_files != 0 && open_files < rlim_t(loop.socket_capacity()) + 64) {
    log_line("wsgate warning: open-file limit %llu is below the socket capacity %u: accepts beyond it "
             "fail (raise ulimit -n)",
             static_cast<unsigned long long>(open_files), loop.socket_capacity());
  }
  return loop.run();
}

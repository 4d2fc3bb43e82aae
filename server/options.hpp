#pragma once
// The command line of wsgate: flags, their environment variables and
// defaults. A flag beats its environment variable, which beats the default.
// Parsing is a pure function of argv and an environment lookup, so tests
// drive it without touching the process environment.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "wsgate/limits.hpp"

namespace wsgate::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;  // 0: the kernel picks a free port
  std::string node_id;   // empty until resolved: the host name by default
  std::string transport = "local";
  // --transport redis
  std::string redis_host = "127.0.0.1";  // a name, an IPv4 or an IPv6 address (no brackets)
  uint16_t redis_port = 6379;
  std::string redis_password;            // AUTH when not empty
  std::string redis_prefix = "wsgate:";  // of every key and channel
  uint32_t presence_ttl_ms = 15000;      // a crashed node's users vanish after this
  // A Redis link that has not answered for this long is dead (PING, TCP
  // keepalive, TCP_USER_TIMEOUT); also bounds a connect and its handshake.
  uint32_t redis_timeout_ms = 3000;
  // --transport shm: the shared-memory segment the nodes on this host share
  std::string shm_name = "wsgate";
  // Reverse proxies (raw 4- or 16-byte addresses) whose X-Real-IP or
  // X-Forwarded-For names the client for the per-IP limit.
  std::vector<std::string> trusted_proxies;
  Limits limits;
  BufferLimits buffers;
  // Start-up warnings for the log (e.g. a password visible in ps).
  std::vector<std::string> warnings;

  // "HOST:PORT", "[V6]:PORT" for an IPv6 address.
  std::string redis_address() const;
};

// What parse_options decided: run with these options, print the help and
// exit 0, or print one error line and exit 2.
struct OptionsOutcome {
  enum class Kind : uint8_t { run, help, error };
  Kind kind = Kind::run;
  ServerOptions options;
  std::string message;  // help text, or the error line (without newline)
  int exit_code() const { return kind == Kind::error ? 2 : 0; }
};

// Returns the value of an environment variable, or nullptr if unset.
using EnvLookup = std::function<const char*(const char* name)>;

OptionsOutcome parse_options(int argc, const char* const* argv, const EnvLookup& env);

// The text of --help: every flag with its unit, default and variable.
std::string options_help();

// An address as the raw bytes peer_ip_bytes() gives (4 or 16); empty if
// ip is not an IPv4 or IPv6 address.
std::string ip_to_bytes(const std::string& ip);

// Why limits_are_consistent() fails, in one line; empty if it holds.
std::string explain_inconsistent_limits(const Limits& limits);
// The same for the receive pool and the buffers of the transport in use
// (the others are not checked: they are not used).
std::string explain_inconsistent_buffers(const BufferLimits& buffers, const Limits& limits,
                                         const std::string& transport);

}  // namespace wsgate::server

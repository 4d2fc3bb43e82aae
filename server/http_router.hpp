#pragma once
// Which of the node's few HTTP resources a request head asks for.
#include <cstdint>

#include "wsgate/handshake.hpp"

namespace wsgate::server {

enum class Route : uint8_t {
  websocket,           // /ws: the upgrade (check_upgrade decides the rest)
  health,              // GET /health
  ready,               // GET /ready: 200 when a balancer may send clients, else 503
  metrics,             // GET /metrics
  method_not_allowed,  // /health, /ready or /metrics with another method: 405
  not_found,           // anything else: 404
};

inline constexpr const char* websocket_path = "/ws";

Route route_request(const RequestHead& head);

}  // namespace wsgate::server

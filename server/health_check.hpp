#pragma once
// `wsgate --health-check`: asks a running node on this host for GET /health
// and turns the answer into an exit status, so a container's HEALTHCHECK
// needs no shell tools (no curl in a slim image).
#include <cstdint>
#include <string>

namespace wsgate::server {

// 0 if http://host:port/health answered 200 within timeout_ms, else 1 (with
// the reason in `why`). A wildcard host (0.0.0.0, ::) is asked on loopback.
int run_health_check(const std::string& host, uint16_t port, uint32_t timeout_ms, std::string& why);

}  // namespace wsgate::server

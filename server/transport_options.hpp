#pragma once
// How the server's options become a transport's options: the buffer
// limits (limits.hpp, one flag each) and the tables derived from the
// connection limits. Pure functions, so tests check what a flag does to the
// transport without an event loop.
#include "local_transport.hpp"
#include "options.hpp"
#include "shm_bus.hpp"

namespace wsgate::server {

// A node subscribes one topic per user it holds (at most one per
// connection), plus broadcast, load and its own node topic.
uint32_t max_subscriptions_for(const Limits& limits);

LocalBusOptions local_bus_options_for(const ServerOptions& options);
ShmBusOptions shm_bus_options_for(const ServerOptions& options);

}  // namespace wsgate::server

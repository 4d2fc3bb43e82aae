#include "transport_options.hpp"

#include <algorithm>

namespace wsgate::server {

uint32_t max_subscriptions_for(const Limits& l) {
  return uint32_t(std::min<uint64_t>(uint64_t(l.max_connections) + 3, UINT32_MAX));
}

LocalBusOptions local_bus_options_for(const ServerOptions& options) {
  LocalBusOptions o;
  o.inbound_queue_max_bytes = options.buffers.local_queue_max_bytes;
  o.inbound_queue_max_messages = options.buffers.local_queue_max_messages;
  // The largest that fits an empty queue (options.cpp checked that a
  // largest publish does).
  o.max_payload_bytes = uint32_t(o.inbound_queue_max_bytes - o.max_topic_bytes);
  o.max_subscriptions_per_node = max_subscriptions_for(options.limits);
  return o;
}

ShmBusOptions shm_bus_options_for(const ServerOptions& options) {
  const BufferLimits& b = options.buffers;
  ShmBusOptions o;
  o.node_ttl_ms = options.presence_ttl_ms;
  o.max_nodes = b.shm_max_nodes;
  o.ring_bytes = b.shm_ring_bytes;
  o.max_presence_entries = shm_presence_entries_for(b, options.limits);
  o.max_topics = shm_topics_for(b, options.limits);
  o.max_subscriptions_per_node = max_subscriptions_for(options.limits);
  return o;
}

}  // namespace wsgate::server

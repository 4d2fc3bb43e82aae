#include "local_transport.hpp"

#include <algorithm>
#include <set>

#include "wsgate/assert.hpp"

namespace wsgate {

// --- LocalBus --------------------------------------------------------------

LocalBus::LocalBus(LocalBusOptions options) : options_(options) {
  WSGATE_ASSERT(local_bus_options_are_consistent(options_));
}

// Nodes detach themselves; a bus destroyed before its nodes is a caller bug
// that would leave them pointing at freed memory.
LocalBus::~LocalBus() { WSGATE_ASSERT(nodes_.empty()); }

void LocalBus::attach(LocalTransport* node) { nodes_.push_back(node); }

void LocalBus::detach(LocalTransport* node) { std::erase(nodes_, node); }

void LocalBus::observe_time(uint64_t now_ms) { now_ms_ = std::max(now_ms_, now_ms); }

bool LocalBus::is_live(const LocalTransport& node) const {
  if (!node.refreshed_) return true;
  return now_ms_ - node.last_refresh_ms_ <= options_.presence_ttl_ms;
}

// All-or-nothing: the message is enqueued on every reachable subscriber or
// on none, so a backpressure answer never means "delivered to some".
PublishStatus LocalBus::publish(LocalTransport* from, std::string_view topic, std::string_view payload) {
  if (!available_ || from->cut_off_) {
    ++counters_.unavailable;
    return PublishStatus::unavailable;
  }
  if (topic.size() > options_.max_topic_bytes || payload.size() > options_.max_payload_bytes) {
    ++counters_.too_large;
    return PublishStatus::too_large;
  }
  const uint64_t message_bytes = topic.size() + payload.size();
  size_t subscribers = 0;
  size_t cut_off = 0;
  for (const LocalTransport* node : nodes_) {
    if (!node->is_subscribed(topic)) continue;
    if (node->cut_off_) {
      ++cut_off;
      continue;
    }
    if (!node->has_room_for(message_bytes)) {
      ++counters_.backpressure;
      return PublishStatus::backpressure;
    }
    ++subscribers;
  }
  ++counters_.published;
  counters_.dropped_cut_off += cut_off;
  // A cut-off node still subscribes: "nobody" would be a lie the gateway
  // might act on (counting the user offline).
  if (subscribers == 0) return cut_off == 0 ? PublishStatus::no_subscribers : PublishStatus::accepted;

  auto message = std::make_shared<Message>();
  message->bytes.reserve(message_bytes);
  message->bytes.append(topic).append(payload);
  message->topic_bytes = uint32_t(topic.size());
  for (LocalTransport* node : nodes_) {
    if (!node->is_subscribed(topic) || node->cut_off_) continue;
    node->enqueue(message);
    ++counters_.enqueued;
  }
  return PublishStatus::accepted;
}

std::map<std::string, uint32_t> LocalBus::presence_of(std::string_view user) const {
  std::map<std::string, uint32_t> out;
  for (const LocalTransport* node : nodes_) {
    if (!is_live(*node)) continue;
    auto it = node->presence_.find(user);
    if (it != node->presence_.end()) out[node->node_id_] += it->second;
  }
  return out;
}

std::vector<std::string> LocalBus::online_users() const {
  std::set<std::string_view> users;
  for (const LocalTransport* node : nodes_) {
    if (!is_live(*node)) continue;
    for (const auto& [user, connections] : node->presence_) users.insert(user);
  }
  return {users.begin(), users.end()};
}

// --- LocalTransport --------------------------------------------------------

LocalTransport::LocalTransport(LocalBus& bus, std::string node_id) : bus_(bus), node_id_(std::move(node_id)) {
  bus_.attach(this);
}

LocalTransport::~LocalTransport() { bus_.detach(this); }

void LocalTransport::subscribe(std::string_view topic) {
  if (subscriptions_.contains(topic)) return;
  if (subscriptions_.size() >= bus_.options_.max_subscriptions_per_node) {
    ++counters_.subscriptions_refused;
    return;
  }
  subscriptions_.emplace(topic);
}

void LocalTransport::unsubscribe(std::string_view topic) {
  auto it = subscriptions_.find(topic);
  if (it != subscriptions_.end()) subscriptions_.erase(it);
}

bool LocalTransport::is_subscribed(std::string_view topic) const { return subscriptions_.contains(topic); }

PublishStatus LocalTransport::publish(std::string_view topic, std::string_view payload) {
  return bus_.publish(this, topic, payload);
}

void LocalTransport::set_presence(std::string_view user, uint32_t connections) {
  auto it = presence_.find(user);
  if (connections == 0) {
    if (it != presence_.end()) presence_.erase(it);
  } else if (it != presence_.end()) {
    it->second = connections;
  } else {
    presence_.emplace(user, connections);
  }
}

TransportState LocalTransport::state() const {
  return bus_.available_ && !cut_off_ ? TransportState::connected : TransportState::disconnected;
}

bool LocalTransport::has_room_for(uint64_t message_bytes) const {
  return queue_.size() < bus_.options_.inbound_queue_max_messages &&
         queued_bytes_ + message_bytes <= bus_.options_.inbound_queue_max_bytes;
}

void LocalTransport::enqueue(LocalBus::MessageRef message) {
  queued_bytes_ += message->bytes.size();
  queue_.push_back(std::move(message));
}

// Delivers only what was queued when the poll began: a sink that publishes
// to a topic this node subscribes to gets that message at the next poll,
// which bounds the loop.
size_t LocalTransport::poll(uint64_t now_ms) {
  bus_.observe_time(now_ms);
  const TransportState now_state = state();
  if (now_state == TransportState::connected) {
    last_refresh_ms_ = now_ms;
    refreshed_ = true;
  }
  if (sink_ == nullptr) return 0;
  if (now_state != reported_state_) {
    reported_state_ = now_state;
    sink_->on_transport_state(now_state);
  }
  size_t delivered = 0;
  for (size_t n = queue_.size(); n > 0; --n) {
    LocalBus::MessageRef message = std::move(queue_.front());
    queue_.pop_front();
    WSGATE_ASSERT(queued_bytes_ >= message->bytes.size());
    queued_bytes_ -= message->bytes.size();
    const std::string_view bytes = message->bytes;
    const std::string_view topic = bytes.substr(0, message->topic_bytes);
    if (!is_subscribed(topic)) {
      ++counters_.dropped_unsubscribed;
      continue;
    }
    sink_->on_transport_message(topic, bytes.substr(message->topic_bytes));
    ++delivered;
  }
  counters_.delivered += delivered;
  WSGATE_ASSERT(!queue_.empty() || queued_bytes_ == 0);
  return delivered;
}

}  // namespace wsgate

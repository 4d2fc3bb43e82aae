#pragma once
// How nodes reach each other (DESIGN.md, "Transports"): publish/subscribe
// on topics, plus the presence store. Topics, not node inboxes: a node
// subscribes to `user:{id}` for each user connected to it, to `broadcast`,
// and to `node:{id}`; a sender publishes to the user's topic and needs no
// lookup of where the user is.
//
// Every implementation (local, redis, shm) passes the contract suite in
// tests/unit/transport_contract_test.cpp. None of them is called from more
// than one thread at a time: each node drives its own Transport from its
// event loop (or the simulator's scheduler).
#include <cstdint>
#include <string_view>

namespace wsgate {

enum class PublishStatus : uint8_t {
  accepted,      // handed to the backend; subscribers will get it in order
  no_subscribers,  // accepted, and the backend knows for certain that no
                   // node subscribes to the topic (local, shm). Redis cannot
                   // know it at publish time and never answers this.
  backpressure,  // a bounded queue or ring is full: NOT enqueued
  unavailable,   // the backend is unreachable and nothing was enqueued
  // The topic or payload is larger than this transport ever carries: NOT
  // enqueued, and retrying cannot help (unlike backpressure). Never
  // truncated.
  too_large,
};

enum class TransportState : uint8_t { connected, disconnected };

// Why an accepted publish is reported lost.
enum class PublishLoss : uint8_t {
  connection_lost,  // the backend connection dropped before confirming it
  unconfirmed,      // it reached no node while nodes were resubscribing
};

// What a transport delivers, from Transport::poll() only (never from inside
// publish/subscribe, so the caller's state is never re-entered).
class TransportSink {
 public:
  virtual ~TransportSink() = default;
  // A message published on a topic this node subscribes to. The views are
  // valid during the call only.
  virtual void on_transport_message(std::string_view topic, std::string_view payload) = 0;
  // The backend was lost or is back. After `connected` every subscription
  // is in force again and the presence set_presence() was given is stored
  // again: the transport restores both by itself.
  virtual void on_transport_state(TransportState state) = 0;
  // Publishes the transport accepted but now knows did not reach everyone
  // (the backend connection dropped before confirming them, or Redis
  // answered 0 receivers while nodes were still resubscribing). Numbers
  // are those of publish(): the n-th publish answered accepted or
  // no_subscribers is number n, counting from 1. Default: ignore.
  virtual void on_transport_publish_lost(uint64_t first, uint64_t count, PublishLoss why) {
    (void)first, (void)count, (void)why;
  }
  // An accepted publish that reached no node at all (Redis answered 0
  // receivers, past the resubscription grace): nobody subscribes to the
  // topic. Default: ignore.
  virtual void on_transport_publish_unrouted(uint64_t number) { (void)number; }
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual const char* name() const = 0;
  virtual void set_sink(TransportSink* sink) = 0;

  // Set semantics: subscribing twice is subscribing once; unsubscribing a
  // topic not subscribed is a no-op. Takes effect in order with publishes
  // from this node.
  virtual void subscribe(std::string_view topic) = 0;
  virtual void unsubscribe(std::string_view topic) = 0;

  // Publishes payload to every node subscribed to topic, this one included
  // if it is. Messages from one publisher on one topic arrive in order.
  virtual PublishStatus publish(std::string_view topic, std::string_view payload) = 0;

  // Presence: how many connections `user` holds on this node (0: none).
  // Stored so that a node that stops refreshing (crashed) disappears within
  // the transport's presence TTL.
  virtual void set_presence(std::string_view user, uint32_t connections) = 0;

  // Does the transport's pending work and delivers what arrived to the
  // sink. Returns how many messages were delivered. now_ms drives
  // reconnect backoff and presence refresh.
  virtual size_t poll(uint64_t now_ms) = 0;

  virtual TransportState state() const = 0;
};

}  // namespace wsgate

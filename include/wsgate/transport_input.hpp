#pragma once
// What arrives from the transport is checked as strictly as what a client
// sends. Whoever can publish on a node's channels (anyone with access to
// its Redis) reaches its clients through them: a body that is not UTF-8
// makes every browser drop its connection, a huge one closes every client
// as a slow consumer, a forged load report makes nodes shed clients. So a
// message is let in only if it has exactly the shape a node of this
// cluster publishes; anything else is dropped and counted by reason
// (wsgate_transport_invalid_total). Every node of a cluster runs with the
// same limits, which bound what a node can publish.
//
// Not in reach of a format check: a well-formed message with a forged
// origin. Only the backend can keep strangers off the channels (Redis ACLs
// that let only the gateways PUBLISH).
#include <cstdint>
#include <memory>
#include <string_view>

#include "wsgate/limits.hpp"
#include "wsgate/metrics.hpp"

namespace wsgate {

// Every transport message: "{origin}\n{sequence}\n{body}", where origin is
// "{node id}/{incarnation as 16 lowercase hex digits}" and the sequence
// counts the publisher's messages from 1.
struct Envelope {
  std::string_view origin;
  uint64_t seq = 0;
  std::string_view body;
};

// A load report's body: "<connections>" or "<connections> draining".
struct LoadReport {
  uint64_t connections = 0;
  bool draining = false;
};

// A node id as --node-id accepts it: 1 to max_node_id_bytes bytes, none a
// space or a control character.
bool node_id_is_valid(std::string_view id);

// "<connections>[ draining]": the count in decimal without a leading zero,
// at most UINT32_MAX (no node holds more: Limits::max_connections).
TransportInvalid parse_load_report(std::string_view body, LoadReport& out);

class TransportInput {
 public:
  explicit TransportInput(const Limits& limits);
  ~TransportInput();
  TransportInput(const TransportInput&) = delete;
  TransportInput& operator=(const TransportInput&) = delete;

  // Splits a transport message into its envelope, checking its size
  // (max_transport_payload_bytes), the origin and the sequence number.
  TransportInvalid parse_envelope(std::string_view payload, Envelope& out) const;

  // A delivery's body must be, byte for byte, what the core builds:
  // prefix (e.g. {"type":"message","from":), the sender's user id as a JSON
  // string of 1 to max_user_id_bytes bytes, ,"content": and one JSON value,
  // then }; valid UTF-8 and valid JSON as a whole.
  TransportInvalid check_delivery(std::string_view body, std::string_view prefix);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace wsgate

#pragma once
// Fixed slots for the sockets of one loop, addressed by {index, generation}
// like the core's connections. A slot is freed only when the kernel has
// nothing left in flight for it (recv, send, close), and its generation
// changes then, so a completion carrying an old generation is recognised as
// stale (user_data.hpp).
//
// The table is one anonymous mapping sized for the most sockets the loop may
// hold, with slots constructed only as they are first used: memory grows
// with the busiest moment, not with the configured maximum.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "wsgate/conn_id.hpp"
#include "wsgate/handshake.hpp"
#include "ws_session.hpp"

namespace wsgate::server {

enum class Phase : uint8_t {
  free,       // not in use
  http,       // reading the request head, or writing a plain response
  websocket,  // upgraded: a WsSession and a core connection
  closing,    // close submitted; waits for the kernel to finish with it
};

// Only while a socket speaks HTTP: the request head so far, then the
// response (the 101 stays until written, ahead of any frame).
struct HttpState {
  std::string head;
  RequestHeadParser parser;  // how far into `head` the parse got
  std::string response;
  size_t response_sent = 0;
  bool responding = false;           // a response is set; input is ignored
  bool close_after_response = false; // plain HTTP: Connection: close
};

struct Socket {
  int fd = -1;
  uint32_t generation = 0;
  Phase phase = Phase::free;
  bool recv_armed = false;      // a multishot recv is in the kernel
  bool recv_wanted = false;     // re-arm at the end of this iteration
  bool send_in_flight = false;
  bool write_pending = false;   // in the loop's pending-write list
  bool close_timer_set = false; // a close deadline is queued
  bool peer_eof = false;        // the peer shut its side; finish writing
  bool close_done = false;      // the close completion arrived
  uint32_t send_http_bytes = 0; // of the send in flight, bytes of http->response
  ConnId conn;                  // the core's id, once upgraded
  std::unique_ptr<HttpState> http;
  std::optional<WsSession> ws;
};

class SocketTable {
 public:
  explicit SocketTable(uint32_t capacity);
  ~SocketTable();
  SocketTable(const SocketTable&) = delete;
  SocketTable& operator=(const SocketTable&) = delete;

  // A free slot in phase http, or nullptr when all capacity is in use.
  Socket* allocate(uint32_t& index);
  // The kernel is done with the slot: it becomes free, its generation moves.
  void release(uint32_t index);
  Socket& at(uint32_t index) { return slots_[index]; }
  // The slot if it still holds that generation and is in use, else nullptr.
  Socket* find(uint32_t index, uint32_t generation);

  uint32_t in_use() const { return in_use_; }
  uint32_t capacity() const { return capacity_; }
  // Slots [0, high_water()) have been constructed; iterate over these.
  uint32_t high_water() const { return high_water_; }

 private:
  Socket* slots_ = nullptr;
  size_t mapped_bytes_ = 0;
  uint32_t capacity_;
  uint32_t high_water_ = 0;
  uint32_t in_use_ = 0;
  std::vector<uint32_t> free_;
};

}  // namespace wsgate::server

#pragma once
// The driver contract, written once. Every driver of the core (the io_uring
// server, the simulator) owns one WsSession per upgraded connection and,
// after the core has run, carries out what it asked in one flush round:
//
//   1. take_closes(): each close request starts the session's close
//      handshake (WsSession::close), and the session is settled;
//   2. take_dirty(): each connection whose outbox gained bytes is written:
//      the driver takes gather_writable() (the outbox cut after our close
//      frame), and reports what the socket took with record_written()
//      (Gateway::handle_sent and WsSession::handle_written together);
//      then the session is settled.
//
// Closes go first so that a close frame queued in this round is written in
// this round too. "Settling" is decide_settle(): start the close timer once
// our close frame is queued; close the socket once the handshake is over
// (or failed) and our close frame is written, or the peer has gone.
//
// What differs between drivers is only how: the server writes when the
// kernel is ready (a send completion calls record_written), the simulator
// at once; the server's close timer is a deadline queue, the simulator's an
// event. A driver supplies that through SessionHost. Sans-IO like the rest
// of session/.
#include <cstddef>
#include <span>

#include "wsgate/gateway.hpp"
#include "ws_session.hpp"

namespace wsgate {

class SessionHost {
 public:
  // The session of an open connection, or nullptr if the driver holds none
  // (the socket is already gone, or the id is stale).
  virtual WsSession* session_of(ConnId id) = 0;
  // A close the core asked for, before the session starts it (records).
  virtual void note_close_request(const CloseRequest&) {}
  // The connection has bytes to write: write them now or when the socket
  // allows, through gather_writable() and record_written().
  virtual void write(ConnId id, WsSession& ws) = 0;
  // Something happened to the session: apply decide_settle(). The session
  // may be destroyed by it; the caller does not touch it afterwards.
  virtual void settle(ConnId id, WsSession& ws) = 0;

 protected:
  ~SessionHost() = default;
};

// One round of the contract (steps 1 and 2 above).
void run_flush_round(Gateway& gw, SessionHost& host);

// The outbox ranges the connection may write now: at most budget bytes, and
// nothing past our close frame. Returns how many ranges were filled.
size_t gather_writable(Gateway& gw, WsSession& ws, ConnId id, std::span<ByteRange> ranges,
                       size_t budget = SIZE_MAX);
// n bytes of what gather_writable() gave reached the socket.
void record_written(Gateway& gw, WsSession& ws, ConnId id, size_t n);

struct SettleDecision {
  bool start_close_timer = false;  // our close frame is queued: the peer has close_timeout_ms to answer
  bool close_socket = false;       // nothing more to exchange
};
// close_timer_started: the driver already started this session's timer.
// peer_gone: the peer shut its side (EOF): once our close is written, stop.
SettleDecision decide_settle(const WsSession& ws, bool close_timer_started, bool peer_gone);

}  // namespace wsgate

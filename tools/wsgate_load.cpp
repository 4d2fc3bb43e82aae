// wsgate_load: a single-threaded epoll WebSocket load generator for wsgate.
//
//   wsgate_load --mode idle      --connections N --targets H:P[,H:P...] --hold-s S
//   wsgate_load --mode direct    --connections N --targets ... --rate R --duration-s D
//   wsgate_load --mode broadcast --connections N --targets ... --senders K --rate R --duration-s D
//
// Client i connects to target i % T as user <prefix><i>. In direct mode,
// clients are paired (2k, 2k+1); with T >= 2 the two of a pair are always on
// different targets. Every message carries its send time (CLOCK_MONOTONIC ns)
// in its content, `[ts_ns,seq,sender]`, which the server passes through byte
// for byte; the receiver computes the latency. Output: human-readable lines
// and one final `RESULT {json}` line. Every phase is bounded in time and the
// whole run by --timeout-s.
//
// Protocol handling: RFC 6455 client (masked frames, a fixed valid
// Sec-WebSocket-Key whose accept value is checked), server frames parsed with
// 7/16/64-bit lengths across fragmented reads, continuation frames
// reassembled, pings answered with pongs, close frames echoed.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "wsgate/frame.hpp"

namespace {

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

// ---------------------------------------------------------------------------
// Log-linear histogram (128 sub-buckets per power of two: < 0.8% error).
struct Histogram {
  static constexpr int sub_bits = 7;
  static constexpr uint64_t sub = 1u << sub_bits;
  std::vector<uint64_t> b = std::vector<uint64_t>(64 * sub, 0);
  uint64_t count = 0, max = 0, min = UINT64_MAX;
  long double sum = 0;

  static size_t index(uint64_t v) {
    if (v < 2 * sub) return size_t(v);
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - sub_bits;
    return size_t(shift + 1) * sub + size_t((v >> shift) - sub);
  }
  static uint64_t lower(size_t idx) {
    if (idx < 2 * sub) return idx;
    size_t shift = idx / sub - 1;
    return (uint64_t(idx % sub) + sub) << shift;
  }
  void add(uint64_t v) {
    ++b[index(v)];
    ++count;
    sum += v;
    if (v > max) max = v;
    if (v < min) min = v;
  }
  void merge(const Histogram& o) {
    for (size_t i = 0; i < b.size(); ++i) b[i] += o.b[i];
    count += o.count;
    sum += o.sum;
    max = std::max(max, o.max);
    min = std::min(min, o.min);
  }
  // Value at quantile q (0..1): the bucket's lower bound, capped by max.
  uint64_t quantile(double q) const {
    if (count == 0) return 0;
    uint64_t rank = uint64_t(std::ceil(q * double(count)));
    if (rank == 0) rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < b.size(); ++i) {
      seen += b[i];
      if (seen >= rank) {
        uint64_t lo = lower(i), hi = lower(i + 1);
        uint64_t mid = lo + (hi - lo) / 2;
        return std::min(std::max(mid, min), max);
      }
    }
    return max;
  }
};

// ---------------------------------------------------------------------------
struct Target {
  std::string host;
  uint16_t port;
  sockaddr_in addr;
};

struct Options {
  std::string mode = "direct";
  int connections = 100;
  std::vector<Target> targets;
  double rate = 0;         // messages (direct) or broadcasts (broadcast) per second, total; 0 = max
  double duration_s = 10;  // sending phase
  double warmup_s = 1;     // excluded from latency and throughput
  double drain_s = 5;      // after sending stops, longest wait for outstanding messages
  double hold_s = 10;      // idle mode
  double timeout_s = 0;    // hard overall bound (0: derived)
  double connect_timeout_s = 30;
  int senders = 1;
  int window = 0;            // in flight per client (direct) or broadcasts in flight (broadcast); 0: default
  int connect_concurrency = 1000;  // connections in connect/handshake at once; 0: all
  int tick_us = 200;         // pacing granularity at a fixed rate
  int pad_bytes = 0;         // extra bytes in content (a string) to make messages larger
  std::string user_prefix = "lu";
  std::vector<uint32_t> source_ips;  // network order not used; host order
  std::string samples_out;   // write connect times (us) one per line
  bool quiet = false;
};

[[noreturn]] void usage(const char* msg) {
  if (msg) fprintf(stderr, "wsgate_load: %s\n", msg);
  fprintf(stderr,
          "usage: wsgate_load --mode idle|direct|broadcast --connections N --targets HOST:PORT[,HOST:PORT...]\n"
          "  [--rate R (total msgs or broadcasts per s; 0 = as fast as the window allows)]\n"
          "  [--duration-s D] [--warmup-s W] [--drain-s S] [--hold-s S] [--timeout-s T]\n"
          "  [--senders K] [--window W] [--connect-concurrency C (0 = all at once)] [--connect-timeout-s S]\n"
          "  [--tick-us U] [--pad-bytes B] [--user-prefix P] [--source-ips A.B.C.D-E.F.G.H]\n"
          "  [--samples-out FILE (connect times in us)] [--quiet]\n");
  exit(64);
}

std::vector<Target> parse_targets(const std::string& s) {
  std::vector<Target> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t comma = s.find(',', pos);
    std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (!item.empty()) {
      size_t colon = item.rfind(':');
      if (colon == std::string::npos) usage("target must be HOST:PORT");
      Target t;
      t.host = item.substr(0, colon);
      int port = atoi(item.c_str() + colon + 1);
      if (port <= 0 || port > 65535) usage("bad target port");
      t.port = uint16_t(port);
      memset(&t.addr, 0, sizeof t.addr);
      t.addr.sin_family = AF_INET;
      t.addr.sin_port = htons(t.port);
      if (inet_pton(AF_INET, t.host.c_str(), &t.addr.sin_addr) != 1) usage("target host must be an IPv4 address");
      // Loopback only.
      if ((ntohl(t.addr.sin_addr.s_addr) >> 24) != 127) usage("targets must be in 127.0.0.0/8");
      out.push_back(t);
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

std::vector<uint32_t> parse_ip_range(const std::string& s) {
  size_t dash = s.find('-');
  std::string a = s.substr(0, dash), b = dash == std::string::npos ? a : s.substr(dash + 1);
  in_addr ia, ib;
  if (inet_pton(AF_INET, a.c_str(), &ia) != 1 || inet_pton(AF_INET, b.c_str(), &ib) != 1)
    usage("--source-ips wants A.B.C.D-E.F.G.H");
  uint32_t lo = ntohl(ia.s_addr), hi = ntohl(ib.s_addr);
  if ((lo >> 24) != 127 || (hi >> 24) != 127 || hi < lo) usage("--source-ips must be a range in 127.0.0.0/8");
  std::vector<uint32_t> out;
  for (uint64_t v = lo; v <= hi && out.size() < 1000000; ++v) {
    uint32_t last = uint32_t(v) & 0xff;
    if (last == 0 || last == 255) continue;
    out.push_back(uint32_t(v));
  }
  return out;
}

Options parse_args(int argc, char** argv) {
  Options o;
  auto need = [&](int& i) -> std::string {
    if (i + 1 >= argc) usage("missing value");
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--mode") o.mode = need(i);
    else if (a == "--connections" || a == "-n") o.connections = atoi(need(i).c_str());
    else if (a == "--target" || a == "--targets") {
      auto t = parse_targets(need(i));
      o.targets.insert(o.targets.end(), t.begin(), t.end());
    } else if (a == "--rate") o.rate = atof(need(i).c_str());
    else if (a == "--duration-s") o.duration_s = atof(need(i).c_str());
    else if (a == "--warmup-s") o.warmup_s = atof(need(i).c_str());
    else if (a == "--drain-s") o.drain_s = atof(need(i).c_str());
    else if (a == "--hold-s") o.hold_s = atof(need(i).c_str());
    else if (a == "--timeout-s") o.timeout_s = atof(need(i).c_str());
    else if (a == "--connect-timeout-s") o.connect_timeout_s = atof(need(i).c_str());
    else if (a == "--senders") o.senders = atoi(need(i).c_str());
    else if (a == "--window") o.window = atoi(need(i).c_str());
    else if (a == "--connect-concurrency") o.connect_concurrency = atoi(need(i).c_str());
    else if (a == "--tick-us") o.tick_us = atoi(need(i).c_str());
    else if (a == "--pad-bytes") o.pad_bytes = atoi(need(i).c_str());
    else if (a == "--user-prefix") o.user_prefix = need(i);
    else if (a == "--source-ips") o.source_ips = parse_ip_range(need(i));
    else if (a == "--samples-out") o.samples_out = need(i);
    else if (a == "--quiet") o.quiet = true;
    else if (a == "--help" || a == "-h") usage(nullptr);
    else usage(("unknown argument " + a).c_str());
  }
  if (o.mode != "idle" && o.mode != "direct" && o.mode != "broadcast") usage("--mode idle|direct|broadcast");
  if (o.targets.empty()) usage("--targets is required");
  if (o.connections <= 0 || o.connections > 1000000) usage("--connections out of range");
  if (o.mode == "direct" && o.connections % 2) usage("direct mode needs an even number of connections");
  if (o.mode == "broadcast" && (o.senders <= 0 || o.senders > o.connections)) usage("--senders out of range");
  if (o.rate < 0 || o.duration_s <= 0 || o.duration_s > 3600 || o.hold_s < 0 || o.hold_s > 86400)
    usage("bad rate/duration/hold");
  if (o.warmup_s >= o.duration_s) o.warmup_s = 0;
  if (o.tick_us < 10) o.tick_us = 10;
  if (o.pad_bytes < 0 || o.pad_bytes > (1 << 20)) usage("--pad-bytes out of range (0..1048576)");
  if (o.window <= 0) o.window = o.mode == "direct" ? (o.rate > 0 ? 256 : 16) : (o.rate > 0 ? 100000 : 8);
  if (o.timeout_s <= 0) {
    double phase = o.mode == "idle" ? o.hold_s : o.duration_s + o.drain_s;
    o.timeout_s = o.connect_timeout_s + phase + 30;
  }
  return o;
}

// ---------------------------------------------------------------------------
constexpr std::string_view ws_key = "dGhlIHNhbXBsZSBub25jZQ==";
constexpr std::string_view ws_accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";  // RFC 6455 section 1.3

enum class State : uint8_t { unused, connecting, handshaking, open, closed };

struct Conn {
  int fd = -1;
  State state = State::unused;
  bool dirty = false;
  bool want_out = false;
  bool close_sent = false;
  uint8_t frag_op = 0;
  uint16_t target = 0;
  uint64_t t_start = 0;
  std::string rbuf;  // unparsed bytes carried over between reads
  std::string wbuf;  // unsent bytes
  size_t wpos = 0;
  std::string frag;  // continuation reassembly
  // direct: this client's sent count and the last seq received from its partner
  uint64_t sent = 0;
  uint64_t recv = 0;
  int64_t last_seq = -1;
};

struct Stats {
  Histogram connect;  // ns, connect() to the 101 response
  Histogram tcp;      // ns, connect() to writable (TCP handshake, accept queue)
  Histogram latency;  // ns
  std::vector<Histogram> latency_by_target;  // ns, by the receiver's target
  uint64_t connect_ok = 0, connect_fail = 0;
  std::map<std::string, uint64_t> errors;  // reason -> count
  std::map<int, uint64_t> close_codes;     // server close code -> count
  uint64_t closed_by_peer = 0;             // EOF/reset without close frame (after open)
  uint64_t pings = 0;
  uint64_t sent = 0, received = 0, received_window = 0;
  uint64_t duplicates = 0, reordered = 0, gaps = 0, foreign = 0, unparsed = 0, server_errors = 0;
  uint64_t window_stalls = 0, missed_sends = 0;
  uint64_t sent_window = 0;  // sent with a timestamp inside the measuring window
  std::string first_server_error;
};

class Load {
 public:
  explicit Load(Options o) : o_(std::move(o)) {}
  int run();

 private:
  Options o_;
  int ep_ = -1;
  std::vector<Conn> c_;
  std::vector<uint32_t> dirty_;
  Stats st_;
  uint32_t rng_ = 0x9e3779b9u;
  int next_to_open_ = 0;
  int pending_ = 0;  // connecting + handshaking
  int open_ = 0;
  uint64_t t_run0_ = 0;
  uint64_t t_send0_ = 0, t_meas0_ = 0, t_send_end_ = 0;
  bool sending_ = false;
  // broadcast bookkeeping
  std::vector<int64_t> bseq_;  // [receiver * senders + sender] last seq
  std::vector<uint64_t> bsent_per_sender_;
  uint64_t bcast_sent_ = 0;
  uint64_t deliveries_expected_window_ = 0;
  std::vector<char> scratch_ = std::vector<char>(1 << 16);
  std::string pad_;
  std::vector<char> msgbuf_;  // one outgoing message: 256 bytes + the padding

  uint32_t rnd() {
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 17;
    rng_ ^= rng_ << 5;
    return rng_;
  }
  std::string user(int i) const { return o_.user_prefix + std::to_string(i); }
  int partner(int i) const { return i ^ 1; }

  void err(const std::string& why) { ++st_.errors[why]; }
  bool timed_out() const { return now_ns() - t_run0_ > uint64_t(o_.timeout_s * 1e9); }

  void start_connect(int i);
  void on_event(uint32_t i, uint32_t ev);
  void on_connected(uint32_t i);
  void on_readable(uint32_t i);
  bool parse_handshake(uint32_t i, const char*& p, size_t& n);
  size_t parse_frames(uint32_t i, const char* p, size_t n);
  void on_text(uint32_t i, const char* p, size_t n);
  void fail(uint32_t i, const std::string& why);
  void drop(uint32_t i);
  void queue_frame(uint32_t i, uint8_t opcode, const char* payload, size_t n);
  void mark_dirty(uint32_t i) {
    if (!c_[i].dirty) {
      c_[i].dirty = true;
      dirty_.push_back(i);
    }
  }
  void flush(uint32_t i);
  void flush_all();
  void set_out(uint32_t i, bool on);
  bool send_direct(uint32_t i);
  bool send_broadcast(uint32_t i);
  void poll_once(int timeout_us);
  void connect_phase();
  void traffic_phase();
  void idle_phase();
  void report(double traffic_seconds);
};

void Load::start_connect(int i) {
  Conn& c = c_[size_t(i)];
  c.target = uint16_t(size_t(i) % o_.targets.size());
  c.t_start = now_ns();
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ++st_.connect_fail;
    err(std::string("socket: ") + strerror(errno));
    c.state = State::closed;
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (!o_.source_ips.empty()) {
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    sockaddr_in src{};
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl(o_.source_ips[size_t(i) % o_.source_ips.size()]);
    if (bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0) {
      ++st_.connect_fail;
      err(std::string("bind: ") + strerror(errno));
      close(fd);
      c.state = State::closed;
      return;
    }
  }
  c.fd = fd;
  int r = connect(fd, reinterpret_cast<const sockaddr*>(&o_.targets[c.target].addr), sizeof(sockaddr_in));
  if (r != 0 && errno != EINPROGRESS) {
    ++st_.connect_fail;
    err(std::string("connect: ") + strerror(errno));
    close(fd);
    c.fd = -1;
    c.state = State::closed;
    return;
  }
  c.state = State::connecting;
  ++pending_;
  epoll_event ev{};
  ev.events = EPOLLOUT | EPOLLIN;
  ev.data.u32 = uint32_t(i);
  epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
  c.want_out = true;
}

void Load::set_out(uint32_t i, bool on) {
  Conn& c = c_[i];
  if (c.want_out == on || c.fd < 0) return;
  epoll_event ev{};
  ev.events = uint32_t(EPOLLIN) | (on ? uint32_t(EPOLLOUT) : 0u);
  ev.data.u32 = i;
  epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
  c.want_out = on;
}

void Load::fail(uint32_t i, const std::string& why) {
  Conn& c = c_[i];
  if (c.state == State::connecting || c.state == State::handshaking) {
    --pending_;
    ++st_.connect_fail;
    err(why);
  }
  if (c.state == State::open) --open_;
  if (c.fd >= 0) close(c.fd);
  c.fd = -1;
  c.state = State::closed;
  c.wbuf.clear();
  c.wpos = 0;
}

void Load::drop(uint32_t i) {
  if (c_[i].state == State::open) ++st_.closed_by_peer;
  fail(i, "closed during handshake");
}

void Load::on_connected(uint32_t i) {
  Conn& c = c_[i];
  int soerr = 0;
  socklen_t len = sizeof soerr;
  getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
  if (soerr != 0) {
    fail(i, std::string("connect: ") + strerror(soerr));
    return;
  }
  st_.tcp.add(now_ns() - c.t_start);
  const Target& t = o_.targets[c.target];
  c.wbuf = "GET /ws?user_id=" + user(int(i)) + " HTTP/1.1\r\nHost: " + t.host + ":" + std::to_string(t.port) +
           "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + std::string(ws_key) +
           "\r\nSec-WebSocket-Version: 13\r\n\r\n";
  c.wpos = 0;
  c.state = State::handshaking;
  flush(i);
}

void Load::flush(uint32_t i) {
  Conn& c = c_[i];
  c.dirty = false;
  if (c.fd < 0) return;
  while (c.wpos < c.wbuf.size()) {
    ssize_t n = send(c.fd, c.wbuf.data() + c.wpos, c.wbuf.size() - c.wpos, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.wpos += size_t(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      set_out(i, true);
      return;
    }
    if (n < 0 && errno == EINTR) continue;
    if (c.state == State::open) ++st_.closed_by_peer;
    fail(i, std::string("send: ") + strerror(errno));
    return;
  }
  c.wbuf.clear();
  c.wpos = 0;
  set_out(i, false);
}

void Load::flush_all() {
  // flush may not add to dirty_ (it only writes), so iterate by index.
  for (size_t k = 0; k < dirty_.size(); ++k) flush(dirty_[k]);
  dirty_.clear();
}

void Load::queue_frame(uint32_t i, uint8_t opcode, const char* payload, size_t n) {
  Conn& c = c_[i];
  if (c.fd < 0) return;
  if (c.wpos > 0 && c.wpos == c.wbuf.size()) {
    c.wbuf.clear();
    c.wpos = 0;
  }
  uint32_t key = rnd();
  uint8_t mk[4];
  memcpy(mk, &key, 4);
  uint8_t hdr[wsgate::any_frame_header_max_bytes];
  const size_t h = wsgate::encode_masked_frame_header(hdr, wsgate::Opcode(opcode), n, mk);
  size_t base = c.wbuf.size();
  c.wbuf.resize(base + h + n);
  char* out = c.wbuf.data() + base;
  memcpy(out, hdr, h);
  out += h;
  if (n > 0) memcpy(out, payload, n);
  wsgate::apply_frame_mask(reinterpret_cast<uint8_t*>(out), n, mk);
  mark_dirty(i);
}

bool Load::parse_handshake(uint32_t i, const char*& p, size_t& n) {
  Conn& c = c_[i];
  c.rbuf.append(p, n);
  p += n;
  n = 0;
  size_t end = c.rbuf.find("\r\n\r\n");
  if (end == std::string::npos) {
    if (c.rbuf.size() > 16384) fail(i, "handshake: response head too large");
    return false;
  }
  std::string_view head(c.rbuf.data(), end + 4);
  if (!head.starts_with("HTTP/1.1 101")) {
    std::string status = std::string(head.substr(0, std::min<size_t>(head.find("\r\n"), 40)));
    fail(i, "handshake: " + status);
    return false;
  }
  if (head.find(ws_accept) == std::string_view::npos) {
    fail(i, "handshake: wrong Sec-WebSocket-Accept");
    return false;
  }
  c.state = State::open;
  --pending_;
  ++open_;
  ++st_.connect_ok;
  st_.connect.add(now_ns() - c.t_start);
  c.rbuf.erase(0, end + 4);
  return true;
}

// Parses complete frames from p[0..n); returns the bytes consumed.
size_t Load::parse_frames(uint32_t i, const char* p, size_t n) {
  size_t pos = 0;
  while (c_[i].state == State::open && n - pos >= 2) {
    wsgate::FrameHeader fh;
    const auto status = wsgate::decode_frame_header(reinterpret_cast<const uint8_t*>(p) + pos, n - pos, fh);
    if (status == wsgate::FrameHeaderStatus::invalid) {
      fail(i, "frame length not minimally encoded");
      err("invalid server frame header");
      return n;
    }
    if (status == wsgate::FrameHeaderStatus::need_more) break;
    const bool fin = fh.fin;
    const uint8_t op = fh.opcode;
    const bool masked = fh.masked;
    const uint64_t len = fh.payload_bytes;
    const size_t h = fh.header_bytes;
    if (len > (64u << 20)) {
      fail(i, "frame too large");
      err("server frame too large");
      return n;
    }
    if (n - pos < h + len) break;
    const char* pl = p + pos + h;
    std::string unmasked;
    if (masked) {  // a server must not mask (RFC 6455 5.1); count it, then decode anyway
      err("masked server frame");
      unmasked.assign(pl, size_t(len));
      wsgate::apply_frame_mask(reinterpret_cast<uint8_t*>(unmasked.data()), unmasked.size(), fh.mask_key);
      pl = unmasked.data();
    }
    pos += h + size_t(len);
    switch (op) {
      case 0x1:
      case 0x2:
        if (fin) {
          if (op == 0x1) on_text(i, pl, size_t(len));
          else err("binary frame from server");
        } else {
          c_[i].frag.assign(pl, size_t(len));
          c_[i].frag_op = op;
        }
        break;
      case 0x0:
        c_[i].frag.append(pl, size_t(len));
        if (fin) {
          std::string m = std::move(c_[i].frag);
          c_[i].frag.clear();
          if (c_[i].frag_op == 0x1) on_text(i, m.data(), m.size());
        }
        break;
      case 0x9:
        ++st_.pings;
        queue_frame(i, 0xA, pl, size_t(len));
        break;
      case 0xA:
        break;
      case 0x8: {
        int code = len >= 2 ? (int(uint8_t(pl[0])) << 8) | uint8_t(pl[1]) : 1005;
        ++st_.close_codes[code];
        if (!c_[i].close_sent) {
          queue_frame(i, 0x8, pl, len >= 2 ? 2 : 0);
          c_[i].close_sent = true;
          flush(i);
        }
        if (c_[i].state != State::open) return n;  // flush failed: already closed
        --open_;
        if (c_[i].fd >= 0) close(c_[i].fd);
        c_[i].fd = -1;
        c_[i].state = State::closed;
        return n;
      }
      default:
        err("bad opcode from server");
        break;
    }
  }
  return pos;
}

// Parses a trailing `[ts,seq,src]` (optionally `[ts,seq,src,"pad"]`) before the final '}'.
bool parse_content_tail(const char* p, size_t n, uint64_t& ts, uint64_t& seq, uint64_t& src) {
  if (n < 8 || p[n - 1] != '}') return false;
  size_t e = n - 1;
  if (p[e - 1] != ']') return false;
  // Find the '[' that opens the content: search backwards for "\"content\":[".
  static constexpr std::string_view key = "\"content\":[";
  const char* start = nullptr;
  for (size_t k = e; k >= key.size(); --k) {
    if (memcmp(p + k - key.size(), key.data(), key.size()) == 0) {
      start = p + k;
      break;
    }
  }
  if (!start) return false;
  uint64_t v[3] = {0, 0, 0};
  const char* q = start;
  const char* end = p + e;
  for (int f = 0; f < 3; ++f) {
    if (q >= end || *q < '0' || *q > '9') return false;
    while (q < end && *q >= '0' && *q <= '9') v[f] = v[f] * 10 + uint64_t(*q++ - '0');
    if (f < 2) {
      if (q >= end || *q != ',') return false;
      ++q;
    }
  }
  ts = v[0];
  seq = v[1];
  src = v[2];
  return true;
}

void Load::on_text(uint32_t i, const char* p, size_t n) {
  std::string_view m(p, n);
  const bool is_msg = m.starts_with("{\"type\":\"message\"");
  const bool is_bc = m.starts_with("{\"type\":\"broadcast\"");
  if (!is_msg && !is_bc) {
    if (m.starts_with("{\"type\":\"error\"")) {
      ++st_.server_errors;
      if (st_.first_server_error.empty()) st_.first_server_error = std::string(m.substr(0, 200));
    } else {
      ++st_.unparsed;
    }
    return;
  }
  uint64_t ts, seq, src;
  if (!parse_content_tail(p, n, ts, seq, src)) {
    ++st_.unparsed;
    return;
  }
  const uint64_t now = now_ns();
  const bool in_window = ts >= t_meas0_ && (t_send_end_ == 0 || ts < t_send_end_);
  if (is_msg && o_.mode == "direct") {
    if (src != uint64_t(partner(int(i)))) {
      ++st_.foreign;
      return;
    }
    Conn& r = c_[i];
    if (int64_t(seq) <= r.last_seq) {
      if (int64_t(seq) == r.last_seq) ++st_.duplicates;
      else ++st_.reordered;
    } else {
      if (int64_t(seq) > r.last_seq + 1) st_.gaps += uint64_t(int64_t(seq) - r.last_seq - 1);
      r.last_seq = int64_t(seq);
    }
    ++r.recv;
    ++st_.received;
    if (in_window) {
      ++st_.received_window;
      st_.latency.add(now - ts);
      st_.latency_by_target[c_[i].target].add(now - ts);
    }
    // Max rate: the sender's window has room again.
    if (o_.rate == 0 && sending_) send_direct(uint32_t(src));
  } else if (is_bc && o_.mode == "broadcast") {
    if (src >= uint64_t(o_.senders)) {
      ++st_.foreign;
      return;
    }
    int64_t& last = bseq_[size_t(i) * size_t(o_.senders) + size_t(src)];
    if (int64_t(seq) <= last) {
      if (int64_t(seq) == last) ++st_.duplicates;
      else ++st_.reordered;
    } else {
      if (int64_t(seq) > last + 1) st_.gaps += uint64_t(int64_t(seq) - last - 1);
      last = int64_t(seq);
    }
    ++c_[i].recv;
    ++st_.received;
    if (in_window) {
      ++st_.received_window;
      st_.latency.add(now - ts);
      st_.latency_by_target[c_[i].target].add(now - ts);
    }
  } else {
    ++st_.foreign;
  }
}

void Load::on_readable(uint32_t i) {
  for (int rounds = 0; rounds < 4 && c_[i].fd >= 0; ++rounds) {
    ssize_t r = recv(c_[i].fd, scratch_.data(), scratch_.size(), MSG_DONTWAIT);
    if (r == 0) {
      drop(i);
      return;
    }
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == EINTR) continue;
      if (c_[i].state == State::open) ++st_.closed_by_peer;
      fail(i, std::string("recv: ") + strerror(errno));
      return;
    }
    const char* p = scratch_.data();
    size_t n = size_t(r);
    if (c_[i].state == State::handshaking) {
      if (!parse_handshake(i, p, n)) return;
      // Bytes after the response head are frames: now in rbuf.
    }
    Conn& c = c_[i];
    if (c.state != State::open) return;
    if (c.rbuf.empty() && n > 0) {
      size_t used = parse_frames(i, p, n);
      if (c_[i].state == State::open && used < n) c_[i].rbuf.assign(p + used, n - used);
    } else {
      c.rbuf.append(p, n);
      size_t used = parse_frames(i, c.rbuf.data(), c.rbuf.size());
      if (c_[i].state == State::open) c_[i].rbuf.erase(0, used);
    }
    if (size_t(r) < scratch_.size()) return;
  }
}

void Load::on_event(uint32_t i, uint32_t ev) {
  Conn& c = c_[i];
  if (c.fd < 0) return;
  if (c.state == State::connecting) {
    if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(i);
    if (c_[i].fd >= 0 && (ev & EPOLLIN)) on_readable(i);
    return;
  }
  if ((ev & EPOLLOUT) && c.fd >= 0) flush(i);
  if ((ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) && c_[i].fd >= 0) on_readable(i);
}

void Load::poll_once(int timeout_us) {
  epoll_event evs[512];
  timespec ts{timeout_us / 1000000, long(timeout_us % 1000000) * 1000};
  int n = epoll_pwait2(ep_, evs, 512, &ts, nullptr);
  for (int k = 0; k < n; ++k) on_event(evs[k].data.u32, evs[k].events);
  flush_all();
}

void Load::connect_phase() {
  const uint64_t t0 = now_ns();
  const uint64_t deadline = t0 + uint64_t(o_.connect_timeout_s * 1e9);
  while (now_ns() < deadline && !timed_out()) {
    // Start connections in small batches between polls, so that handshakes
    // already under way are served while the rest are being started (a
    // client busy in a connect loop would add its own delay to every figure).
    for (int started = 0; started < 64 && next_to_open_ < o_.connections &&
                          (o_.connect_concurrency == 0 || pending_ < o_.connect_concurrency);
         ++started)
      start_connect(next_to_open_++);
    if (next_to_open_ >= o_.connections && pending_ == 0) break;
    const bool more = next_to_open_ < o_.connections && (o_.connect_concurrency == 0 || pending_ < o_.connect_concurrency);
    poll_once(more ? 0 : 10000);
  }
  // Whatever is still pending failed by timeout.
  for (size_t i = 0; i < c_.size(); ++i)
    if (c_[i].state == State::connecting || c_[i].state == State::handshaking) fail(uint32_t(i), "connect timeout");
  for (int i = next_to_open_; i < o_.connections; ++i) {
    ++st_.connect_fail;
    err("not started (connect timeout)");
  }
  const double secs = double(now_ns() - t0) / 1e9;
  if (!o_.quiet)
    printf("connect: %" PRIu64 " open, %" PRIu64 " failed in %.2f s; connect time p50 %.0f us p99 %.0f us max %.0f us"
           " (TCP part p50 %.0f us p99 %.0f us)\n",
           st_.connect_ok, st_.connect_fail, secs, st_.connect.quantile(0.5) / 1e3, st_.connect.quantile(0.99) / 1e3,
           double(st_.connect.max) / 1e3, st_.tcp.quantile(0.5) / 1e3, st_.tcp.quantile(0.99) / 1e3);
  fflush(stdout);
}

// Queues one direct message from client i to its partner; false if it may not send now.
bool Load::send_direct(uint32_t i) {
  Conn& c = c_[i];
  if (c.state != State::open) return false;
  const Conn& pc = c_[size_t(partner(int(i)))];
  if (pc.state != State::open) return false;
  if (c.sent - pc.recv >= uint64_t(o_.window)) {
    ++st_.window_stalls;
    return false;
  }
  if (c.wbuf.size() - c.wpos > (4u << 20)) {
    ++st_.window_stalls;
    return false;
  }
  char* buf = msgbuf_.data();
  const uint64_t ts = now_ns();
  int n = snprintf(buf, 256, "{\"type\":\"send_message\",\"target_user\":\"%s%d\",\"content\":[%" PRIu64 ",%" PRIu64 ",%u",
                   o_.user_prefix.c_str(), partner(int(i)), ts, c.sent, i);
  size_t len = size_t(n);
  if (!pad_.empty()) {
    memcpy(buf + len, ",\"", 2);
    len += 2;
    memcpy(buf + len, pad_.data(), pad_.size());
    len += pad_.size();
    buf[len++] = '"';
  }
  memcpy(buf + len, "]}", 2);
  len += 2;
  queue_frame(i, 0x1, buf, len);
  ++c.sent;
  ++st_.sent;
  if (ts >= t_meas0_) ++st_.sent_window;
  return true;
}

bool Load::send_broadcast(uint32_t i) {
  Conn& c = c_[i];
  if (c.state != State::open) return false;
  // Outstanding broadcasts (not yet delivered to every open client) are bounded.
  const uint64_t n_open = uint64_t(std::max(open_, 1));
  if (bcast_sent_ * n_open > st_.received + uint64_t(o_.window) * n_open) {
    ++st_.window_stalls;
    return false;
  }
  if (c.wbuf.size() - c.wpos > (4u << 20)) {
    ++st_.window_stalls;
    return false;
  }
  char* buf = msgbuf_.data();
  const uint64_t ts = now_ns();
  uint64_t seq = bsent_per_sender_[i]++;
  int n = snprintf(buf, 256, "{\"type\":\"broadcast\",\"content\":[%" PRIu64 ",%" PRIu64 ",%u", ts, seq, i);
  size_t len = size_t(n);
  if (!pad_.empty()) {
    memcpy(buf + len, ",\"", 2);
    len += 2;
    memcpy(buf + len, pad_.data(), pad_.size());
    len += pad_.size();
    buf[len++] = '"';
  }
  memcpy(buf + len, "]}", 2);
  len += 2;
  queue_frame(i, 0x1, buf, len);
  ++bcast_sent_;
  ++st_.sent;
  if (ts >= t_meas0_) {
    ++st_.sent_window;
    deliveries_expected_window_ += uint64_t(open_);
  }
  return true;
}

void Load::traffic_phase() {
  const bool direct = o_.mode == "direct";
  const int nsenders = direct ? o_.connections : o_.senders;
  t_send0_ = now_ns();
  t_meas0_ = t_send0_ + uint64_t(o_.warmup_s * 1e9);
  const uint64_t t_end = t_send0_ + uint64_t(o_.duration_s * 1e9);
  sending_ = true;
  uint64_t issued = 0;  // fixed rate: messages due so far
  int cursor = 0;
  if (o_.rate == 0) {
    // Fill every window; refills happen as messages arrive (direct) or in the loop (broadcast).
    for (int k = 0; k < o_.window; ++k)
      for (int s = 0; s < nsenders; ++s) direct ? send_direct(uint32_t(s)) : send_broadcast(uint32_t(s));
    flush_all();
  }
  while (!timed_out()) {
    uint64_t now = now_ns();
    if (now >= t_end) break;
    if (o_.rate > 0) {
      uint64_t due = uint64_t(double(now - t_send0_) * o_.rate / 1e9);
      // Never burst more than 10 ms worth (or 1 message) after a stall.
      uint64_t burst = std::max<uint64_t>(1, uint64_t(o_.rate / 100));
      if (due > issued + burst) {
        st_.missed_sends += due - issued - burst;
        issued = due - burst;
      }
      int tries = 0;
      while (issued < due && tries < nsenders) {
        int s = cursor;
        cursor = (cursor + 1) % nsenders;
        if (direct ? send_direct(uint32_t(s)) : send_broadcast(uint32_t(s))) {
          ++issued;
          tries = 0;
        } else {
          ++tries;
        }
      }
      flush_all();
      poll_once(o_.tick_us);
    } else {
      if (!direct)
        for (int s = 0; s < nsenders; ++s)
          while (send_broadcast(uint32_t(s))) {
          }
      flush_all();
      poll_once(1000);
    }
  }
  sending_ = false;
  t_send_end_ = now_ns();
  // Drain: wait for outstanding messages, bounded.
  const uint64_t drain_end = t_send_end_ + uint64_t(o_.drain_s * 1e9);
  while (now_ns() < drain_end && !timed_out()) {
    if (direct && st_.received + st_.duplicates + st_.reordered >= st_.sent) break;
    if (!direct) {
      uint64_t expected = 0;
      // Every client open now should see every broadcast.
      expected = bcast_sent_ * uint64_t(open_);
      if (st_.received >= expected) break;
    }
    poll_once(2000);
  }
}

void Load::idle_phase() {
  printf("READY open=%" PRIu64 " failed=%" PRIu64 "\n", st_.connect_ok, st_.connect_fail);
  fflush(stdout);
  const uint64_t end = now_ns() + uint64_t(o_.hold_s * 1e9);
  while (now_ns() < end && !timed_out()) poll_once(50000);
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') {
      o += '\\';
      o += ch;
    } else if (uint8_t(ch) < 0x20) {
      char b[8];
      snprintf(b, sizeof b, "\\u%04x", ch);
      o += b;
    } else {
      o += ch;
    }
  }
  return o;
}

void Load::report(double traffic_seconds) {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const double cpu = double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  const double wall = double(now_ns() - t_run0_) / 1e9;
  const auto us = [](uint64_t ns) { return double(ns) / 1e3; };
  const Histogram& L = st_.latency;
  const double meas = std::max(1e-9, o_.duration_s - o_.warmup_s);
  const bool direct = o_.mode == "direct";
  const bool bcast = o_.mode == "broadcast";
  // Broadcast: loss is counted over the clients still open at the end (each
  // should have every broadcast); direct: over every message sent.
  uint64_t received_open = 0;
  for (const Conn& c : c_)
    if (c.state == State::open) received_open += c.recv;
  const uint64_t expected = bcast ? bcast_sent_ * uint64_t(std::max(open_, 0)) : st_.sent;
  const int64_t lost = bcast ? int64_t(expected) - int64_t(received_open) : int64_t(expected) - int64_t(st_.received);
  std::string errs;
  for (auto& [k, v] : st_.errors) {
    if (!errs.empty()) errs.push_back(',');
    errs.push_back('"');
    errs.append(json_escape(k)).append("\":").append(std::to_string(v));
  }
  std::string codes;
  for (auto& [k, v] : st_.close_codes) {
    if (!codes.empty()) codes.push_back(',');
    codes.push_back('"');
    codes.append(std::to_string(k)).append("\":").append(std::to_string(v));
  }

  if (!o_.quiet) {
    if (direct || bcast) {
      printf("%s: sent %" PRIu64 " %s, received %" PRIu64 " (expected %" PRIu64 ", lost %" PRId64 ", dup %" PRIu64
             ", reordered %" PRIu64 ") over %.1f s\n",
             o_.mode.c_str(), st_.sent, bcast ? "broadcasts" : "messages", st_.received, expected, lost, st_.duplicates,
             st_.reordered, traffic_seconds);
      printf("throughput (steady window %.1f s): %.0f %s/s delivered, %.0f sends/s\n", meas,
             double(st_.received_window) / meas, bcast ? "deliveries" : "msgs", double(st_.sent_window) / meas);
      printf("latency us: p50 %.0f p90 %.0f p99 %.0f p99.9 %.0f max %.0f (n=%" PRIu64 ")\n", us(L.quantile(0.5)),
             us(L.quantile(0.9)), us(L.quantile(0.99)), us(L.quantile(0.999)), us(L.max), L.count);
      if (o_.targets.size() > 1)
        for (size_t t = 0; t < o_.targets.size(); ++t) {
          const Histogram& h = st_.latency_by_target[t];
          printf("  receivers on %s:%u: latency us p50 %.0f p99 %.0f max %.0f (n=%" PRIu64 ")\n", o_.targets[t].host.c_str(),
                 o_.targets[t].port, us(h.quantile(0.5)), us(h.quantile(0.99)), us(h.max), h.count);
        }
      printf("window stalls %" PRIu64 ", missed sends %" PRIu64 ", server errors %" PRIu64 "%s%s\n", st_.window_stalls,
             st_.missed_sends, st_.server_errors, st_.first_server_error.empty() ? "" : ": ",
             st_.first_server_error.c_str());
    }
    printf("connections: %" PRIu64 " opened, %" PRIu64 " failed, %d open at end, %" PRIu64
           " dropped by peer; pings answered %" PRIu64 "; client cpu %.0f%%\n",
           st_.connect_ok, st_.connect_fail, open_, st_.closed_by_peer, st_.pings, 100.0 * cpu / wall);
    for (auto& [k, v] : st_.errors) printf("  error: %s x%" PRIu64 "\n", k.c_str(), v);
    for (auto& [k, v] : st_.close_codes) printf("  server close code %d x%" PRIu64 "\n", k, v);
  }
  const Histogram& C = st_.connect;
  printf("RESULT {\"mode\":\"%s\",\"connections\":%d,\"targets\":%zu,\"rate\":%.0f,\"duration_s\":%.1f,"
         "\"connect_ok\":%" PRIu64 ",\"connect_fail\":%" PRIu64 ",\"connect_p50_us\":%.0f,\"connect_p99_us\":%.0f,"
         "\"connect_max_us\":%.0f,\"connect_tcp_p50_us\":%.0f,\"connect_tcp_p99_us\":%.0f,\"open_at_end\":%d,\"dropped_by_peer\":%" PRIu64 ",\"pings\":%" PRIu64 ","
         "\"sent\":%" PRIu64 ",\"received\":%" PRIu64 ",\"expected\":%" PRIu64 ",\"lost\":%" PRId64 ","
         "\"duplicates\":%" PRIu64 ",\"reordered\":%" PRIu64 ",\"gaps\":%" PRIu64 ",\"foreign\":%" PRIu64 ","
         "\"unparsed\":%" PRIu64 ",\"server_errors\":%" PRIu64 ",\"sends_per_s\":%.0f,\"delivered_per_s\":%.0f,"
         "\"lat_p50_us\":%.1f,\"lat_p90_us\":%.1f,\"lat_p99_us\":%.1f,\"lat_p999_us\":%.1f,\"lat_max_us\":%.1f,"
         "\"lat_n\":%" PRIu64 ",\"window_stalls\":%" PRIu64 ",\"missed_sends\":%" PRIu64 ",\"client_cpu_pct\":%.0f,"
         "\"expected_window\":%" PRIu64 ",\"timed_out\":%s,\"errors\":{%s},\"close_codes\":{%s}}\n",
         o_.mode.c_str(), o_.connections, o_.targets.size(), o_.rate, o_.duration_s, st_.connect_ok, st_.connect_fail,
         us(C.quantile(0.5)), us(C.quantile(0.99)), us(C.max), us(st_.tcp.quantile(0.5)), us(st_.tcp.quantile(0.99)), open_, st_.closed_by_peer, st_.pings, st_.sent,
         st_.received, expected, lost, st_.duplicates, st_.reordered, st_.gaps, st_.foreign, st_.unparsed,
         st_.server_errors, double(st_.sent_window) / meas, double(st_.received_window) / meas, us(L.quantile(0.5)),
         us(L.quantile(0.9)), us(L.quantile(0.99)), us(L.quantile(0.999)), us(L.max), L.count, st_.window_stalls,
         st_.missed_sends, 100.0 * cpu / wall,
         bcast ? deliveries_expected_window_ : st_.sent_window, timed_out() ? "true" : "false", errs.c_str(), codes.c_str());
  fflush(stdout);
}

int Load::run() {
  t_run0_ = now_ns();
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rlim_t(o_.connections) + 64 > rl.rlim_cur)
    fprintf(stderr, "wsgate_load: warning: %d connections but the open-file limit is %llu; use several processes\n",
            o_.connections, (unsigned long long)rl.rlim_cur);
  ep_ = epoll_create1(EPOLL_CLOEXEC);
  if (ep_ < 0) {
    perror("epoll_create1");
    return 1;
  }
  c_.resize(size_t(o_.connections));
  st_.latency_by_target.resize(o_.targets.size());
  if (o_.pad_bytes > 0) pad_.assign(size_t(o_.pad_bytes), 'x');
  msgbuf_.resize(pad_.size() + 512);
  if (o_.mode == "broadcast") {
    bseq_.assign(size_t(o_.connections) * size_t(o_.senders), -1);
    bsent_per_sender_.assign(size_t(o_.connections), 0);
  }
  connect_phase();
  if (!o_.samples_out.empty()) {
    // Connect-time samples are not kept individually; write the histogram as (us, count) pairs.
    FILE* f = fopen(o_.samples_out.c_str(), "w");
    if (f) {
      for (size_t k = 0; k < st_.connect.b.size(); ++k)
        if (st_.connect.b[k])
          fprintf(f, "%.1f %" PRIu64 "\n",
                  double(std::min(std::max(Histogram::lower(k) + (Histogram::lower(k + 1) - Histogram::lower(k)) / 2,
                                           st_.connect.min), st_.connect.max)) / 1e3,
                  st_.connect.b[k]);
      fclose(f);
    }
  }
  double traffic_s = 0;
  if (o_.mode == "idle") {
    idle_phase();
  } else if (open_ > 0 && !timed_out()) {
    const uint64_t t = now_ns();
    traffic_phase();
    traffic_s = double(now_ns() - t) / 1e9;
  }
  report(traffic_s);
  for (auto& c : c_)
    if (c.fd >= 0) close(c.fd);
  close(ep_);
  if (timed_out()) return 2;
  return st_.connect_fail == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, nullptr, _IOLBF, 0);
  Options o = parse_args(argc, argv);
  Load l(std::move(o));
  return l.run();
}

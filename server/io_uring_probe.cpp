#include "io_uring_probe.hpp"

#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace wsgate::server {
namespace {

constexpr unsigned probe_entries = 8;
constexpr int probe_buf_group = 7;

std::string read_sysctl_disabled() {
  std::ifstream f("/proc/sys/kernel/io_uring_disabled");
  std::string v;
  if (!f || !std::getline(f, v)) return {};
  return v;
}

std::string kernel_release() {
  utsname u{};
  if (uname(&u) != 0) return "unknown";
  return u.release;
}

std::string too_old(const char* what, int err) {
  return std::string("io_uring ") + what + " is not supported by this kernel (" + kernel_release() +
         ", error: " + std::strerror(err) + "); wsgate needs Linux >= 6.0";
}

// A ring for one probe; torn down on every path.
struct ProbeRing {
  io_uring ring{};
  bool up = false;
  ~ProbeRing() {
    if (up) io_uring_queue_exit(&ring);
  }
};

// Waits for one completion, at most a second: a probe must never hang start-up.
int wait_one(io_uring& ring, io_uring_cqe** cqe) {
  __kernel_timespec ts{.tv_sec = 1, .tv_nsec = 0};
  return io_uring_wait_cqe_timeout(&ring, cqe, &ts);
}

// Provided-buffer ring (5.19+) and multishot recv (6.0+), on a socketpair.
std::string probe_multishot_recv(io_uring& ring) {
  const size_t ring_bytes = probe_entries * sizeof(io_uring_buf);
  void* mem = mmap(nullptr, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) return std::string("mmap for the buffer ring failed: ") + std::strerror(errno);
  auto* br = static_cast<io_uring_buf_ring*>(mem);
  io_uring_buf_ring_init(br);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(br);
  reg.ring_entries = probe_entries;
  reg.bgid = probe_buf_group;
  std::string error;
  static char bufs[probe_entries][64];
  int sv[2] = {-1, -1};
  int r = io_uring_register_buf_ring(&ring, &reg, 0);
  if (r != 0) {
    error = too_old("provided buffer rings (io_uring_register_buf_ring)", -r);
  } else {
    for (unsigned i = 0; i < probe_entries; ++i)
      io_uring_buf_ring_add(br, bufs[i], sizeof bufs[i], uint16_t(i), io_uring_buf_ring_mask(probe_entries), int(i));
    io_uring_buf_ring_advance(br, probe_entries);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      error = std::string("socketpair failed: ") + std::strerror(errno);
    } else {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      io_uring_prep_recv_multishot(sqe, sv[0], nullptr, 0, 0);
      sqe->flags |= IOSQE_BUFFER_SELECT;
      sqe->buf_group = probe_buf_group;
      io_uring_submit(&ring);
      if (write(sv[1], "x", 1) != 1) error = "write to socketpair failed";
      io_uring_cqe* cqe = nullptr;
      if (error.empty() && (r = wait_one(ring, &cqe)) != 0) {
        error = std::string("no completion for the multishot recv probe: ") + std::strerror(-r);
      } else if (error.empty()) {
        if (cqe->res < 0) error = too_old("multishot recv", -cqe->res);
        else if (!(cqe->flags & IORING_CQE_F_MORE) || !(cqe->flags & IORING_CQE_F_BUFFER))
          error = too_old("multishot recv", EOPNOTSUPP);
        io_uring_cqe_seen(&ring, cqe);
      }
    }
    io_uring_unregister_buf_ring(&ring, probe_buf_group);
  }
  // Closing the pair ends the multishot recv; the ring is torn down next.
  if (sv[0] >= 0) close(sv[0]);
  if (sv[1] >= 0) close(sv[1]);
  munmap(mem, ring_bytes);
  return error;
}

// Multishot accept (5.19+), on a loopback listener with one connect.
std::string probe_multishot_accept(io_uring& ring) {
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  std::string error;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  if (lfd < 0 || cfd < 0 || bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      listen(lfd, 4) != 0 || getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &alen) != 0) {
    error = std::string("loopback socket for the accept probe failed: ") + std::strerror(errno);
  } else {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    io_uring_prep_multishot_accept(sqe, lfd, nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_submit(&ring);
    if (connect(cfd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      error = std::string("loopback connect for the accept probe failed: ") + std::strerror(errno);
    } else {
      io_uring_cqe* cqe = nullptr;
      int r = wait_one(ring, &cqe);
      if (r != 0) {
        error = std::string("no completion for the multishot accept probe: ") + std::strerror(-r);
      } else {
        if (cqe->res < 0) error = too_old("multishot accept", -cqe->res);
        else if (!(cqe->flags & IORING_CQE_F_MORE)) error = too_old("multishot accept", EOPNOTSUPP);
        if (cqe->res >= 0) close(cqe->res);
        io_uring_cqe_seen(&ring, cqe);
      }
    }
  }
  if (cfd >= 0) close(cfd);
  if (lfd >= 0) close(lfd);
  return error;
}

}  // namespace

std::string explain_uring_init_error(int err, const std::string& disabled_sysctl) {
  if (err == ENOSYS || err == EPERM) {
    std::string why =
        "io_uring is blocked (seccomp profile of Docker/Kubernetes/podman? run with a profile that "
        "allows io_uring, e.g. --security-opt seccomp=unconfined) or disabled by sysctl "
        "kernel.io_uring_disabled";
    why += disabled_sysctl.empty() ? " (not present on this kernel)" : " (value " + disabled_sysctl + ")";
    why += std::string("; io_uring_setup failed: ") + std::strerror(err);
    return why;
  }
  if (err == ENOMEM) {
    return "io_uring_setup failed: out of memory (on kernels before 5.12 the ring counts against "
           "RLIMIT_MEMLOCK: raise ulimit -l)";
  }
  if (err == EINVAL) return too_old("setup", err);
  return std::string("io_uring_setup failed: ") + std::strerror(err);
}

UringSupport probe_io_uring() {
  UringSupport s;
  // Best first: one issuer with deferred task work (6.1), then cooperative
  // task work (5.19), then none. Each is a hint, not a requirement.
  const unsigned candidates[] = {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                                 IORING_SETUP_COOP_TASKRUN, 0};
  ProbeRing p;
  int first_error = 0;
  for (unsigned flags : candidates) {
    int r = io_uring_queue_init(probe_entries, &p.ring, flags);
    if (r == 0) {
      p.up = true;
      s.setup_flags = flags;
      break;
    }
    if (!first_error) first_error = -r;
    // Blocked outright: every variant would fail the same way.
    if (r == -ENOSYS || r == -EPERM) break;
  }
  if (!p.up) {
    s.error = explain_uring_init_error(first_error, read_sysctl_disabled());
    return s;
  }
  if (!(p.ring.features & IORING_FEAT_SUBMIT_STABLE) || !(p.ring.features & IORING_FEAT_EXT_ARG)) {
    s.error = too_old("feature set (SUBMIT_STABLE, EXT_ARG)", EOPNOTSUPP);
    return s;
  }
  if (io_uring_probe* probe = io_uring_get_probe_ring(&p.ring)) {
    const int ops[] = {IORING_OP_ACCEPT, IORING_OP_RECV, IORING_OP_SENDMSG, IORING_OP_CLOSE,
                       IORING_OP_ASYNC_CANCEL, IORING_OP_READ};
    bool all = true;
    for (int op : ops) all = all && io_uring_opcode_supported(probe, op);
    io_uring_free_probe(probe);
    if (!all) {
      s.error = too_old("opcode set", EOPNOTSUPP);
      return s;
    }
  }
  if (std::string e = probe_multishot_accept(p.ring); !e.empty()) {
    s.error = e;
    return s;
  }
  if (std::string e = probe_multishot_recv(p.ring); !e.empty()) {
    s.error = e;
    return s;
  }
  s.ok = true;
  s.features = "multishot_accept,multishot_recv,buf_ring";
  return s;
}

}  // namespace wsgate::server

#pragma once
// Start-up check that io_uring can be used at all, and that the kernel has
// what the event loop relies on: multishot accept, multishot recv and
// provided-buffer rings. Each is tried for real on a throwaway ring (the
// opcode probe cannot tell whether multishot works), so a container that
// blocks io_uring or an old kernel fails here with a message naming the
// cause, not later with a bare errno.
#include <string>

namespace wsgate::server {

struct UringSupport {
  bool ok = false;
  std::string error;          // when !ok: one line naming the likely cause
  unsigned setup_flags = 0;   // io_uring_setup flags that worked
  std::string features;       // for the first log line
};

UringSupport probe_io_uring();

// The message for io_uring_queue_init failing with err (a positive errno).
// disabled_sysctl: the content of /proc/sys/kernel/io_uring_disabled, or
// empty if the file does not exist.
std::string explain_uring_init_error(int err, const std::string& disabled_sysctl);

}  // namespace wsgate::server

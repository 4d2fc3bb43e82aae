// An LD_PRELOAD shim over getaddrinfo, for integration tests that need a
// host name with several addresses (or a slow DNS server) that the machine
// does not have. Names listed in WSGATE_FAKE_HOSTS resolve to the listed
// numeric addresses, in that order:
//
//   WSGATE_FAKE_HOSTS="redis.test=::1,127.0.0.2,127.0.0.1;other.test=127.0.0.1"
//
// If WSGATE_FAKE_RESOLVER_GATE names a file, a lookup of a listed name
// waits (at most 60 s) until that file exists: a DNS server that does not
// answer yet. Every other name goes to the real getaddrinfo. The list is
// built from the real getaddrinfo's own results, so the real freeaddrinfo
// frees it.
#include <dlfcn.h>
#include <netdb.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace {

using GetAddrInfo = int (*)(const char*, const char*, const addrinfo*, addrinfo**);

GetAddrInfo real_getaddrinfo() {
  static GetAddrInfo real = reinterpret_cast<GetAddrInfo>(dlsym(RTLD_NEXT, "getaddrinfo"));
  return real;
}

// The comma-separated addresses listed for name, or empty.
std::string fake_addresses(std::string_view name) {
  const char* env = std::getenv("WSGATE_FAKE_HOSTS");
  if (!env) return {};
  std::string_view rest = env;
  while (!rest.empty()) {
    const size_t semi = rest.find(';');
    std::string_view entry = rest.substr(0, semi);
    rest = semi == std::string_view::npos ? std::string_view() : rest.substr(semi + 1);
    const size_t eq = entry.find('=');
    if (eq != std::string_view::npos && entry.substr(0, eq) == name) return std::string(entry.substr(eq + 1));
  }
  return {};
}

void wait_for_gate() {
  const char* gate = std::getenv("WSGATE_FAKE_RESOLVER_GATE");
  if (!gate) return;
  for (int i = 0; i < 6000 && access(gate, F_OK) != 0; ++i) usleep(10000);
}

}  // namespace

extern "C" int getaddrinfo(const char* node, const char* service, const addrinfo* hints, addrinfo** res) {
  const std::string list = node ? fake_addresses(node) : std::string();
  if (list.empty()) return real_getaddrinfo()(node, service, hints, res);
  wait_for_gate();
  addrinfo numeric{};
  if (hints) numeric = *hints;
  numeric.ai_flags |= AI_NUMERICHOST;
  addrinfo* head = nullptr;
  addrinfo** tail = &head;
  std::string_view rest = list;
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    const std::string addr(rest.substr(0, comma));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    addrinfo* one = nullptr;
    if (real_getaddrinfo()(addr.c_str(), service, &numeric, &one) != 0) continue;
    *tail = one;
    while (*tail) tail = &(*tail)->ai_next;
  }
  if (!head) return EAI_NONAME;
  *res = head;
  return 0;
}

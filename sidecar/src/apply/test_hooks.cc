// Test-only writer hooks (see test_hooks.h). install: main thread, before
// the writer thread starts; the hook: writer thread.
#include "apply/test_hooks.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "larder/writer/writer.h"

namespace larder::sidecar {
namespace {

// Written before the writer thread starts, then used by it alone.
long g_crash_at = 0;
long g_pause_at = 0;
long g_points = 0;
std::string g_pause_until;

void test_hook(CrashPoint) {
  ++g_points;
  if (g_points == g_crash_at) ::raise(SIGKILL);
  if (g_points == g_pause_at) {
    spdlog::warn("test hook: writer paused at crash point {} until {} exists", g_points, g_pause_until);
    while (::access(g_pause_until.c_str(), F_OK) != 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

bool parse_count(const char* name, long* out) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return true;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (*end != '\0' || n <= 0) {
    std::fprintf(stderr, "larder-sidecar: %s: expected a positive integer, got \"%s\"\n", name, v);
    return false;
  }
  *out = n;
  return true;
}

}  // namespace

bool install_test_hooks_from_env() {
  if (!parse_count("LARDER_TEST_CRASH_AT", &g_crash_at) || !parse_count("LARDER_TEST_PAUSE_AT", &g_pause_at)) {
    return false;
  }
  if (g_pause_at > 0) {
    const char* f = std::getenv("LARDER_TEST_PAUSE_UNTIL");
    if (f == nullptr || *f == '\0') {
      std::fprintf(stderr, "larder-sidecar: LARDER_TEST_PAUSE_AT needs LARDER_TEST_PAUSE_UNTIL (a file path)\n");
      return false;
    }
    g_pause_until = f;
  }
  if (g_crash_at == 0 && g_pause_at == 0) return true;
  spdlog::warn("test hook installed (LARDER_TEST_CRASH_AT={}, LARDER_TEST_PAUSE_AT={}): not for production", g_crash_at,
               g_pause_at);
  set_crash_hook(&test_hook);
  return true;
}

}  // namespace larder::sidecar

// Progress-based test loops and the no-silent-skip policy.
//
// Tests that run "for a while" (torture, churn) stop on progress, not on the
// clock: they run until a condition on counted work holds (N consistent
// reads, N writes) and at least a minimum duration has passed. The only
// wall-clock bound is a generous hang guard, which fails only when something
// stops making progress.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>

namespace larder::testing {

// Generous: a 2-core machine under full load finishes in seconds.
inline constexpr std::chrono::seconds kHangGuard{120};

// Calls `step` (or sleeps 1 ms when it is empty) until `done()` holds and
// `min_duration` has passed; false when the hang guard expired first.
inline bool run_until(const std::function<bool()>& done, std::chrono::duration<double> min_duration,
                      const std::function<void()>& step = {}, std::chrono::seconds hang_guard = kHangGuard) {
  const auto start = std::chrono::steady_clock::now();
  const auto earliest = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(min_duration);
  const auto guard = start + hang_guard;
  for (;;) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= earliest && done()) return true;
    if (now >= guard) return false;
    if (step) {
      step();
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
}

// True when the environment declares that it lacks what some tests need
// (LARDER_TEST_ALLOW_SKIP=1). CI never sets it: there a test that cannot run
// fails instead of skipping.
inline bool skips_allowed() {
  const char* v = std::getenv("LARDER_TEST_ALLOW_SKIP");
  return v != nullptr && std::string(v) == "1";
}

// LARDER_CRASH_ITERATIONS, else `fallback`. A count below 10 weakens the
// crash tests' checks, so it is refused (returned negated) unless
// LARDER_CRASH_ITERATIONS_REDUCED=1 is set too: a leftover setting cannot
// shrink a CI run. Fewer than 2 is always refused.
inline int crash_iterations(int fallback) {
  const char* env = std::getenv("LARDER_CRASH_ITERATIONS");
  const int n = env != nullptr ? std::atoi(env) : fallback;
  const char* reduced = std::getenv("LARDER_CRASH_ITERATIONS_REDUCED");
  if (n < 2 || (n < 10 && (reduced == nullptr || std::string(reduced) != "1"))) return -n;
  if (n < 10) std::printf("LARDER_CRASH_ITERATIONS=%d with LARDER_CRASH_ITERATIONS_REDUCED=1: a reduced run\n", n);
  return n;
}

}  // namespace larder::testing

// Skips the test when LARDER_TEST_ALLOW_SKIP=1, else fails it: a test that
// cannot run in this environment must not pass silently.
#define LARDER_SKIP_OR_FAIL(reason)                                              \
  if (::larder::testing::skips_allowed()) {                                      \
    GTEST_SKIP() << (reason);                                                    \
  } else                                                                         \
    FAIL() << (reason)                                                           \
           << " (LARDER_TEST_ALLOW_SKIP=1 declares this environment lacking it " \
              "and skips instead)"

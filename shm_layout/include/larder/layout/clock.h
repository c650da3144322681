// Clocks shared by writer and readers. Event and apply times are wall clock
// (CLOCK_REALTIME); the heartbeat is CLOCK_MONOTONIC so that a clock step
// cannot make a live writer look dead. Both come from the vDSO (~20 ns).
#pragma once

#include <time.h>

#include <cstdint>

namespace larder::layout {

inline int64_t now_unix_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

inline int64_t now_mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace larder::layout

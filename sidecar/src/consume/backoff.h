// Reconnect delays: exponential backoff with full jitter
// (delay = uniform(0, min(cap, base * 2^attempt))), so a fleet of sidecars
// that lost the same broker does not reconnect in lockstep.
//
// Threading: one instance per thread (the consumer thread owns one).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <random>

namespace larder::sidecar {

class Backoff {
 public:
  Backoff(double base_s, double cap_s, uint64_t seed = std::random_device{}())
      : base_s_(base_s), cap_s_(cap_s), rng_(seed) {}

  // The ceiling of the next delay: min(cap, base * 2^attempt).
  double ceiling_s() const {
    const double exp = base_s_ * std::pow(2.0, static_cast<double>(std::min<uint32_t>(attempt_, 62)));
    return std::min(cap_s_, exp);
  }

  // The next delay, and counts the attempt.
  std::chrono::milliseconds next() {
    std::uniform_real_distribution<double> dist(0.0, ceiling_s());
    ++attempt_;
    return std::chrono::milliseconds(static_cast<int64_t>(dist(rng_) * 1000.0));
  }

  void reset() { attempt_ = 0; }
  uint32_t attempt() const { return attempt_; }

 private:
  double base_s_;
  double cap_s_;
  uint32_t attempt_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace larder::sidecar

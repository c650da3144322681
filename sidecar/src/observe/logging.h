// Logging for the sidecar: spdlog to stderr, text or one JSON object per line,
// and a per-key rate limiter for messages that a bad producer could emit at
// the message rate (rejects).
//
// Threading: setup_logging() runs once on the main thread before any other
// thread starts; spdlog's default logger is thread-safe afterwards. A
// RateLimiter belongs to one thread (the consumer thread uses one).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace larder::sidecar {

// level: trace, debug, info, warn, error, critical, off. json: one object per
// line with ts, level, thread and msg (msg JSON-escaped).
void setup_logging(const std::string& level, bool json);

// Allows `burst` events per key, then one per `interval` and reports how many
// were suppressed in between.
class RateLimiter {
 public:
  RateLimiter(size_t keys, uint32_t burst, std::chrono::milliseconds interval)
      : slots_(keys), burst_(burst), interval_(interval) {}

  // True when the event may be logged; *suppressed is set to the number of
  // events of this key dropped since the last allowed one.
  bool allow(size_t key, uint64_t* suppressed) {
    Slot& s = slots_[key];
    const auto now = std::chrono::steady_clock::now();
    if (s.allowed < burst_ || now - s.last >= interval_) {
      ++s.allowed;
      s.last = now;
      *suppressed = s.suppressed;
      s.suppressed = 0;
      return true;
    }
    ++s.suppressed;
    return false;
  }

 private:
  struct Slot {
    uint64_t allowed = 0;
    uint64_t suppressed = 0;
    std::chrono::steady_clock::time_point last{};
  };
  std::vector<Slot> slots_;
  uint32_t burst_;
  std::chrono::milliseconds interval_;
};

}  // namespace larder::sidecar

// Event-time parsing for message format v1: RFC 3339 timestamps to
// milliseconds since the Unix epoch. Pure functions: safe on any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace larder::sidecar {

// Event times must lie in [0, kMaxEventTimeMs]: 1970-01-01T00:00:00Z up to
// 9999-12-31T23:59:59.999Z.
inline constexpr int64_t kMaxEventTimeMs = 253402300799999;

// Parses an RFC 3339 date-time ("2024-05-01T12:30:00.123Z",
// "2024-05-01T14:30:00+02:00") into ms since the epoch, in UTC. Accepts 'T',
// 't' or ' ' between date and time, 'Z' or 'z' or a numeric offset, and any
// number of fraction digits (truncated to milliseconds). A leap second (:60)
// counts as the first second of the next minute. Returns false on any syntax
// error, an impossible date (2023-02-29), or a result outside
// [0, kMaxEventTimeMs].
bool parse_rfc3339_ms(std::string_view text, int64_t* out_ms) noexcept;

// "2024-05-01T12:30:00.123Z" for ms since the epoch in [0, kMaxEventTimeMs]
// (for reject details and logs; allocates).
std::string format_rfc3339_ms(int64_t ms);

// Days since 1970-01-01 of a proleptic Gregorian date (month 1-12).
constexpr int64_t days_from_civil(int64_t y, unsigned m, unsigned d) noexcept {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

}  // namespace larder::sidecar

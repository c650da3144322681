// Strict text values (see text_values.h). Pure functions.
#include "consume/sql/text_values.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>

namespace larder::sidecar::sql {
namespace {

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
// days_from_civil).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) noexcept {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

void civil_from_days(int64_t z, int64_t* y, unsigned* m, unsigned* d) noexcept {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = static_cast<int64_t>(yoe) + era * 400 + (*m <= 2);
}

bool leap(int64_t y) noexcept { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

unsigned days_in_month(int64_t y, unsigned m) noexcept {
  static constexpr unsigned kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && leap(y) ? 29 : kDays[m - 1];
}

// Exactly `n` digits at s[*at], advancing *at.
bool digits(std::string_view s, size_t* at, size_t n, unsigned* out) noexcept {
  if (*at + n > s.size()) return false;
  unsigned v = 0;
  for (size_t i = 0; i < n; ++i) {
    const char c = s[*at + i];
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  *at += n;
  *out = v;
  return true;
}

bool expect(std::string_view s, size_t* at, char c) noexcept {
  if (*at >= s.size() || s[*at] != c) return false;
  ++*at;
  return true;
}

constexpr int64_t kUsPerDay = 86'400'000'000;

}  // namespace

std::optional<int64_t> parse_int(std::string_view s) noexcept {
  int64_t v = 0;
  if (s.empty()) return std::nullopt;
  const char* end = s.data() + s.size();
  const auto [p, ec] = std::from_chars(s.data(), end, v);
  if (ec != std::errc() || p != end) return std::nullopt;
  return v;
}

std::optional<double> parse_float(std::string_view s) noexcept {
  if (s == "NaN") return std::nan("");
  if (s == "Infinity") return HUGE_VAL;
  if (s == "-Infinity") return -HUGE_VAL;
  if (s.empty() || s.front() == '+') return std::nullopt;
  // Digits, sign, point and exponent only: from_chars would also take
  // "inf", "nan" and hex forms.
  for (const char c : s) {
    if (!((c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E')) return std::nullopt;
  }
  double v = 0;
  const char* end = s.data() + s.size();
  const auto [p, ec] = std::from_chars(s.data(), end, v);
  if (ec != std::errc() || p != end) return std::nullopt;
  return v;
}

std::optional<int64_t> parse_timestamp(std::string_view s) noexcept {
  size_t at = 0;
  unsigned y = 0, mo = 0, d = 0, h = 0, mi = 0, se = 0;
  if (!digits(s, &at, 4, &y) || !expect(s, &at, '-') || !digits(s, &at, 2, &mo) || !expect(s, &at, '-') ||
      !digits(s, &at, 2, &d) || !expect(s, &at, ' ') || !digits(s, &at, 2, &h) || !expect(s, &at, ':') ||
      !digits(s, &at, 2, &mi) || !expect(s, &at, ':') || !digits(s, &at, 2, &se)) {
    return std::nullopt;
  }
  if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 59) {
    return std::nullopt;
  }
  int64_t frac_us = 0;
  if (at < s.size() && s[at] == '.') {
    ++at;
    size_t n = 0;
    while (at < s.size() && s[at] >= '0' && s[at] <= '9') {
      if (++n > 6) return std::nullopt;
      frac_us = frac_us * 10 + (s[at] - '0');
      ++at;
    }
    if (n == 0) return std::nullopt;
    for (; n < 6; ++n) frac_us *= 10;
  }
  int64_t offset_s = 0;
  if (at < s.size()) {
    const char sign = s[at];
    if (sign != '+' && sign != '-') return std::nullopt;
    ++at;
    unsigned oh = 0, om = 0, os = 0;
    if (!digits(s, &at, 2, &oh)) return std::nullopt;
    if (at < s.size() && (!expect(s, &at, ':') || !digits(s, &at, 2, &om))) return std::nullopt;
    if (at < s.size() && (!expect(s, &at, ':') || !digits(s, &at, 2, &os))) return std::nullopt;
    if (at != s.size() || oh > 15 || om > 59 || os > 59) return std::nullopt;
    offset_s = (sign == '-' ? -1 : 1) * static_cast<int64_t>(oh * 3600 + om * 60 + os);
  }
  const int64_t days = days_from_civil(y, mo, d);
  return days * kUsPerDay + (static_cast<int64_t>(h) * 3600 + mi * 60 + se - offset_s) * 1'000'000 + frac_us;
}

std::optional<std::string> format_timestamp(int64_t us) {
  // Years 0001..9999: well inside int64 microseconds.
  constexpr int64_t kMin = -62135596800LL * 1'000'000;  // 0001-01-01
  constexpr int64_t kMax = 253402300799LL * 1'000'000 + 999'999;
  if (us < kMin || us > kMax) return std::nullopt;
  int64_t days = us / kUsPerDay, rem = us % kUsPerDay;
  if (rem < 0) {
    rem += kUsPerDay;
    --days;
  }
  int64_t y = 0;
  unsigned m = 0, d = 0;
  civil_from_days(days, &y, &m, &d);
  const int64_t s = rem / 1'000'000;
  return fmt::format("{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}", y, m, d, s / 3600, s / 60 % 60, s % 60,
                     rem % 1'000'000);
}

std::optional<std::string> quote_identifier(std::string_view name, char quote) {
  if (name.empty() || name.find('\0') != std::string_view::npos) return std::nullopt;
  std::string out(1, quote);
  for (const char c : name) {
    out += c;
    if (c == quote) out += c;
  }
  out += quote;
  return out;
}

}  // namespace larder::sidecar::sql

// The MariaDB driver's text-protocol pieces (mariadb_driver.cc), declared
// here so that unit tests reach them without a server: the strict parsers of
// a cell's bytes, the URL reader and the literals a cursor query is built of.
//
// MariaDB's text protocol returns every value as its decimal or calendar
// text. Each parser takes the bytes as the server sent them (not
// NUL-terminated, any length) and accepts exactly the server's own spelling:
// no spaces, no '+', no trailing bytes, every field in range.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace larder::sidecar::sql::mariadb {

// A signed decimal integer, or an unsigned one (BIGINT UNSIGNED) that must
// still fit int64.
std::optional<int64_t> parse_int(std::string_view text, bool is_unsigned) noexcept;
// FLOAT/DOUBLE text ("1.5", "-2e-05", "1e308"); finite values only.
std::optional<double> parse_float(std::string_view text) noexcept;
// "YYYY-MM-DD HH:MM:SS" with an optional '.' and 1 to 6 fraction digits, as
// UTC microseconds since the epoch. Years 1 to 9999; a zero date
// ("0000-00-00") or a day past its month's end is refused.
std::optional<int64_t> parse_datetime(std::string_view text) noexcept;
// The inverse, with six fraction digits: a cursor's value as a literal.
std::string format_datetime(int64_t utc_us);

// `name`, with backticks doubled; nullopt for an empty name, a NUL byte or
// more than 64 bytes (the server's limit for a column name).
std::optional<std::string> quote_identifier(std::string_view name);

// mysql://user@host:port/db?ssl-mode=...&ssl-ca=... (or mariadb://), with
// %XX escapes in the user and database names.
struct Url {
  std::string user;
  std::string host;
  unsigned port = 3306;
  std::string database;
  // ssl-mode=disabled (the default: Connector/C 3.3 does not encrypt unless
  // asked), required (TLS, the certificate unchecked) or verify-identity (the
  // certificate checked against ssl-ca, or the system's CAs, and the host).
  enum class SslMode : uint8_t { kDisabled, kRequired, kVerifyIdentity };
  SslMode ssl_mode = SslMode::kDisabled;
  std::string ssl_ca;  // ssl-ca=FILE
};
// nullopt with *error set naming what is wrong (never the password: a URL
// carrying one is refused, the password comes from the options).
std::optional<Url> parse_url(std::string_view url, std::string* error);

}  // namespace larder::sidecar::sql::mariadb

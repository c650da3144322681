// Strict parsers and printers for the text form of SQL values, shared by the
// drivers: every byte is the server's, so each parser takes the whole cell
// and refuses anything but the exact form (no leading spaces, no trailing
// bytes, no out-of-range values). Pure functions: any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace larder::sidecar::sql {

std::optional<int64_t> parse_int(std::string_view s) noexcept;
// Also NaN, Infinity, -Infinity (PostgreSQL's spelling).
std::optional<double> parse_float(std::string_view s) noexcept;
// `YYYY-MM-DD HH:MM:SS[.f{1,6}][(+|-)HH[:MM[:SS]]]` (ISO, years 0001-9999) as
// UTC microseconds since 1970; without an offset the time is taken as UTC.
std::optional<int64_t> parse_timestamp(std::string_view s) noexcept;
// `YYYY-MM-DD HH:MM:SS.ffffff` (UTC) for UTC microseconds in years
// 0001-9999; nullopt outside.
std::optional<std::string> format_timestamp(int64_t us);
// A double-quoted SQL identifier ("a""b"); nullopt for an empty name or one
// holding a NUL byte.
std::optional<std::string> quote_identifier(std::string_view name, char quote = '"');

}  // namespace larder::sidecar::sql

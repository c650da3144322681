// MariaDB and MySQL through MariaDB Connector/C (libmariadb), text protocol.
//
// Why the text protocol and not prepared statements: the only values a
// cursor query carries are integers and timestamps this file formats itself
// (never text from outside), so there is nothing to escape, and the text
// results let every cell be checked by one strict parser per type instead of
// trusting the connector's conversions (which silently truncate an
// out-of-range BIGINT UNSIGNED into int64). Identifiers are quoted with
// backticks, backticks doubled.
//
// The session runs with time_zone '+00:00', so TIMESTAMP columns come back in
// UTC; DATETIME carries no zone and is read as UTC too (docs/sidecar.md).
// The text protocol prints a FLOAT with 6 significant digits (1234567.875
// comes back as "1234570"), so poll() reads FLOAT columns as
// CAST(... AS DOUBLE), whose text is the exact value. It learns which columns
// are FLOAT from the select's metadata (a LIMIT 0 query), kept per select
// until the session ends or a poll fails (a changed table fails the query).
//
// Auto-reconnect is off: a lost server makes the call fail and connected()
// false, and the source decides when to connect() again (a silent reconnect
// would drop the session's time zone).
//
// Threads: one Connection per thread (driver.h); mysql_library_init runs once
// before the first connection, as the connector requires for threaded use.
#include <errmsg.h>
#include <fmt/format.h>
#include <mysql.h>
#include <mysqld_error.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <mutex>

#include "consume/sql/driver.h"
#include "consume/sql/mariadb_text.h"

namespace larder::sidecar::sql {
namespace mariadb {
namespace {

bool all_digits(std::string_view s) noexcept {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// Exactly n digits at s[pos..pos+n).
std::optional<int> digits_at(std::string_view s, size_t pos, size_t n) noexcept {
  if (pos + n > s.size()) return std::nullopt;
  int v = 0;
  for (size_t i = pos; i < pos + n; ++i) {
    if (s[i] < '0' || s[i] > '9') return std::nullopt;
    v = v * 10 + (s[i] - '0');
  }
  return v;
}

int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<std::string> percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    int hi = hex_value(s[i + 1]);
    int lo = hex_value(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    char c = static_cast<char>(hi * 16 + lo);
    if (c == '\0') return std::nullopt;
    out += c;
    i += 2;
  }
  return out;
}

}  // namespace

std::optional<int64_t> parse_int(std::string_view text, bool is_unsigned) noexcept {
  if (text.empty()) return std::nullopt;
  const char* first = text.data();
  const char* last = first + text.size();
  if (is_unsigned) {
    if (!all_digits(text)) return std::nullopt;
    uint64_t u = 0;
    auto [ptr, ec] = std::from_chars(first, last, u);
    if (ec != std::errc() || ptr != last || u > uint64_t{INT64_MAX}) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (!all_digits(text[0] == '-' ? text.substr(1) : text)) return std::nullopt;
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(first, last, v);
  if (ec != std::errc() || ptr != last) return std::nullopt;
  return v;
}

std::optional<double> parse_float(std::string_view text) noexcept {
  if (text.empty()) return std::nullopt;
  // from_chars also reads "inf" and "nan", which no FLOAT/DOUBLE column holds.
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E')) return std::nullopt;
  }
  if (text[0] == '+') return std::nullopt;
  double v = 0;
  const char* last = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), last, v);
  if (ec != std::errc() || ptr != last || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::optional<int64_t> parse_datetime(std::string_view t) noexcept {
  // YYYY-MM-DD HH:MM:SS[.f{1,6}]
  if (t.size() < 19 || t[4] != '-' || t[7] != '-' || t[10] != ' ' || t[13] != ':' || t[16] != ':') {
    return std::nullopt;
  }
  auto year = digits_at(t, 0, 4), month = digits_at(t, 5, 2), day = digits_at(t, 8, 2);
  auto hour = digits_at(t, 11, 2), minute = digits_at(t, 14, 2), second = digits_at(t, 17, 2);
  if (!year || !month || !day || !hour || !minute || !second) return std::nullopt;
  int64_t micros = 0;
  if (t.size() > 19) {
    size_t n = t.size() - 20;
    if (t[19] != '.' || n < 1 || n > 6) return std::nullopt;
    auto frac = digits_at(t, 20, n);
    if (!frac) return std::nullopt;
    micros = *frac;
    for (size_t i = n; i < 6; ++i) micros *= 10;
  }
  if (*year < 1 || *hour > 23 || *minute > 59 || *second > 59) return std::nullopt;
  std::chrono::year_month_day ymd{std::chrono::year{*year}, std::chrono::month{static_cast<unsigned>(*month)},
                                  std::chrono::day{static_cast<unsigned>(*day)}};
  if (!ymd.ok()) return std::nullopt;  // month 0 or 13, day 0, 2024-02-30
  int64_t days = std::chrono::sys_days{ymd}.time_since_epoch().count();
  int64_t seconds = days * 86400 + *hour * 3600 + *minute * 60 + *second;
  return seconds * 1'000'000 + micros;
}

std::string format_datetime(int64_t utc_us) {
  // Floor division, so that instants before 1970 keep a positive fraction.
  int64_t secs = utc_us / 1'000'000;
  int64_t micros = utc_us % 1'000'000;
  if (micros < 0) {
    micros += 1'000'000;
    secs -= 1;
  }
  int64_t days = secs / 86400;
  int64_t sod = secs % 86400;
  if (sod < 0) {
    sod += 86400;
    days -= 1;
  }
  std::chrono::year_month_day ymd{std::chrono::sys_days{std::chrono::days{days}}};
  return fmt::format("{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}", static_cast<int>(ymd.year()),
                     static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()), sod / 3600, sod / 60 % 60,
                     sod % 60, micros);
}

std::optional<std::string> quote_identifier(std::string_view name) {
  if (name.empty() || name.size() > 64 || name.find('\0') != std::string_view::npos) return std::nullopt;
  std::string out = "`";
  for (char c : name) {
    if (c == '`') out += '`';
    out += c;
  }
  out += '`';
  return out;
}

std::optional<Url> parse_url(std::string_view url, std::string* error) {
  auto fail = [&](std::string_view why) -> std::optional<Url> {
    *error = fmt::format("mariadb URL: {} (expected mysql://user@host:port/database)", why);
    return std::nullopt;
  };
  Url out;
  std::string_view rest;
  if (url.starts_with("mysql://")) {
    rest = url.substr(8);
  } else if (url.starts_with("mariadb://")) {
    rest = url.substr(10);
  } else {
    return fail("the scheme must be mysql:// or mariadb://");
  }
  std::string_view query;
  if (size_t q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  size_t slash = rest.find('/');
  if (slash == std::string_view::npos) return fail("no database name");
  std::string_view authority = rest.substr(0, slash);
  std::string_view db = rest.substr(slash + 1);
  size_t at = authority.rfind('@');
  if (at == std::string_view::npos) return fail("no user name");
  std::string_view userinfo = authority.substr(0, at);
  std::string_view hostport = authority.substr(at + 1);
  if (userinfo.find(':') != std::string_view::npos) {
    return fail("a password in the URL (give it in the password file or the environment instead)");
  }
  auto user = percent_decode(userinfo);
  if (!user || user->empty()) return fail("no user name, or a bad %XX escape in it");
  out.user = *user;
  std::string_view host = hostport;
  std::string_view port;
  if (hostport.starts_with('[')) {
    size_t close = hostport.find(']');
    if (close == std::string_view::npos) return fail("an unclosed '[' in the host");
    host = hostport.substr(1, close - 1);
    std::string_view after = hostport.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return fail("bytes after the ']' of the host");
      port = after.substr(1);
    }
  } else if (size_t colon = hostport.rfind(':'); colon != std::string_view::npos) {
    host = hostport.substr(0, colon);
    port = hostport.substr(colon + 1);
  }
  if (host.empty()) return fail("no host");
  for (char c : host) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' || c == ':')) {
      return fail(fmt::format("the host '{}' has a character hosts do not", host));
    }
  }
  out.host = std::string(host);
  if (!port.empty() || hostport.ends_with(':')) {
    unsigned p = 0;
    auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (!all_digits(port) || ec != std::errc() || ptr != port.data() + port.size() || p == 0 || p > 65535) {
      return fail(fmt::format("the port '{}' is not a number from 1 to 65535", port));
    }
    out.port = p;
  }
  auto database = percent_decode(db);
  if (!database || database->empty() || database->find('/') != std::string::npos) {
    return fail("no database name, a bad %XX escape, or a '/' in it");
  }
  out.database = *database;
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view kv = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    size_t eq = kv.find('=');
    if (eq == std::string_view::npos) return fail(fmt::format("the option '{}' has no value", kv));
    std::string_view key = kv.substr(0, eq);
    auto value = percent_decode(kv.substr(eq + 1));
    if (!value) return fail(fmt::format("a bad %XX escape in the option '{}'", key));
    if (key == "ssl-mode") {
      std::string v = *value;
      for (char& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (v == "disabled") {
        out.ssl_mode = Url::SslMode::kDisabled;
      } else if (v == "required") {
        out.ssl_mode = Url::SslMode::kRequired;
      } else if (v == "verify-identity" || v == "verify_identity") {
        out.ssl_mode = Url::SslMode::kVerifyIdentity;
      } else {
        return fail(fmt::format("ssl-mode '{}': use disabled, required or verify-identity", *value));
      }
    } else if (key == "ssl-ca") {
      out.ssl_ca = *value;
    } else {
      return fail(fmt::format("unknown option '{}' (known: ssl-mode, ssl-ca)", key));
    }
  }
  return out;
}

}  // namespace mariadb

namespace {

using mariadb::Url;

// The connector must be initialised once, before threads use it.
void library_init() {
  static std::once_flag once;
  std::call_once(once, [] { mysql_library_init(0, nullptr, nullptr); });
}

constexpr unsigned kBinaryCharset = 63;  // the "binary" character set: BLOB, VARBINARY, BINARY

std::string_view field_name(const MYSQL_FIELD& f) { return {f.name, f.name_length}; }

// The column's ColumnType and the server's name for it. TINYINT(1) and
// BIT(1) are booleans (BOOL is TINYINT(1)); a display width of 1 is how a
// result tells them from other TINYINTs.
ColumnInfo column_info(const MYSQL_FIELD& f) {
  ColumnInfo info;
  info.name = std::string(field_name(f));
  const bool is_unsigned = (f.flags & UNSIGNED_FLAG) != 0;
  const char* sign = is_unsigned ? " UNSIGNED" : "";
  auto set = [&](ColumnType t, std::string name) {
    info.type = t;
    info.server_type = std::move(name);
  };
  switch (f.type) {
    case MYSQL_TYPE_TINY:
      if (f.length == 1) {
        set(ColumnType::kBool, "TINYINT(1)");
      } else {
        set(ColumnType::kInt, fmt::format("TINYINT{}", sign));
      }
      break;
    case MYSQL_TYPE_SHORT: set(ColumnType::kInt, fmt::format("SMALLINT{}", sign)); break;
    case MYSQL_TYPE_INT24: set(ColumnType::kInt, fmt::format("MEDIUMINT{}", sign)); break;
    case MYSQL_TYPE_LONG: set(ColumnType::kInt, fmt::format("INT{}", sign)); break;
    case MYSQL_TYPE_LONGLONG: set(ColumnType::kInt, fmt::format("BIGINT{}", sign)); break;
    case MYSQL_TYPE_YEAR: set(ColumnType::kInt, "YEAR"); break;
    case MYSQL_TYPE_BIT:
      if (f.length == 1) {
        set(ColumnType::kBool, "BIT(1)");
      } else {
        set(ColumnType::kOther, fmt::format("BIT({})", f.length));
      }
      break;
    case MYSQL_TYPE_FLOAT: set(ColumnType::kFloat, "FLOAT"); break;
    case MYSQL_TYPE_DOUBLE: set(ColumnType::kFloat, "DOUBLE"); break;
    case MYSQL_TYPE_DECIMAL:
    case MYSQL_TYPE_NEWDECIMAL: set(ColumnType::kOther, "DECIMAL"); break;
    case MYSQL_TYPE_DATETIME:
    case MYSQL_TYPE_DATETIME2:
      set(ColumnType::kTimestamp,
          f.decimals > 0 && f.decimals <= 6 ? fmt::format("DATETIME({})", f.decimals) : std::string("DATETIME"));
      break;
    case MYSQL_TYPE_TIMESTAMP:
    case MYSQL_TYPE_TIMESTAMP2:
      set(ColumnType::kTimestamp,
          f.decimals > 0 && f.decimals <= 6 ? fmt::format("TIMESTAMP({})", f.decimals) : std::string("TIMESTAMP"));
      break;
    case MYSQL_TYPE_DATE:
    case MYSQL_TYPE_NEWDATE: set(ColumnType::kOther, "DATE"); break;
    case MYSQL_TYPE_TIME:
    case MYSQL_TYPE_TIME2: set(ColumnType::kOther, "TIME"); break;
    case MYSQL_TYPE_VARCHAR:
    case MYSQL_TYPE_VAR_STRING:
    case MYSQL_TYPE_STRING:
      if ((f.flags & ENUM_FLAG) != 0) {
        set(ColumnType::kText, "ENUM");
      } else if ((f.flags & SET_FLAG) != 0) {
        set(ColumnType::kText, "SET");
      } else if (f.charsetnr == kBinaryCharset) {
        set(ColumnType::kBytes, f.type == MYSQL_TYPE_STRING ? "BINARY" : "VARBINARY");
      } else {
        set(ColumnType::kText, f.type == MYSQL_TYPE_STRING ? "CHAR" : "VARCHAR");
      }
      break;
    case MYSQL_TYPE_TINY_BLOB:
    case MYSQL_TYPE_MEDIUM_BLOB:
    case MYSQL_TYPE_LONG_BLOB:
    case MYSQL_TYPE_BLOB:
      // JSON is LONGTEXT in MariaDB: text, like the other TEXT types.
      if (f.charsetnr == kBinaryCharset) {
        set(ColumnType::kBytes, "BLOB");
      } else {
        set(ColumnType::kText, "TEXT");
      }
      break;
    case MYSQL_TYPE_JSON: set(ColumnType::kText, "JSON"); break;
    case MYSQL_TYPE_ENUM: set(ColumnType::kText, "ENUM"); break;
    case MYSQL_TYPE_SET: set(ColumnType::kText, "SET"); break;
    case MYSQL_TYPE_GEOMETRY: set(ColumnType::kOther, "GEOMETRY"); break;
    case MYSQL_TYPE_NULL: set(ColumnType::kOther, "NULL"); break;
    default: set(ColumnType::kOther, fmt::format("type {}", static_cast<int>(f.type))); break;
  }
  return info;
}

// A stored result: rows and their lengths copied out of the connector's
// cursor once, so that cell() is random access.
class MariadbResult final : public Result {
 public:
  explicit MariadbResult(MYSQL_RES* res) : res_(res) {
    const unsigned n = mysql_num_fields(res_);
    MYSQL_FIELD* fields = mysql_fetch_fields(res_);
    columns_.reserve(n);
    unsigned_.reserve(n);
    for (unsigned i = 0; i < n; ++i) {
      columns_.push_back(column_info(fields[i]));
      unsigned_.push_back((fields[i].flags & UNSIGNED_FLAG) != 0);
    }
    const auto count = static_cast<size_t>(mysql_num_rows(res_));
    rows_.reserve(count);
    lengths_.reserve(count * n);
    while (MYSQL_ROW row = mysql_fetch_row(res_)) {
      unsigned long* len = mysql_fetch_lengths(res_);
      rows_.push_back(row);
      lengths_.insert(lengths_.end(), len, len + n);
    }
  }
  ~MariadbResult() override { mysql_free_result(res_); }
  MYSQL_RES* res() const noexcept { return res_; }
  MariadbResult(const MariadbResult&) = delete;
  MariadbResult& operator=(const MariadbResult&) = delete;

  std::span<const ColumnInfo> columns() const noexcept override { return columns_; }
  size_t rows() const noexcept override { return rows_.size(); }

  bool cell(size_t row, size_t column, Cell* out, std::string* error) const override {
    const ColumnInfo& col = columns_.at(column);
    const char* p = rows_.at(row)[column];
    *out = Cell{};
    if (p == nullptr) return true;  // NULL
    std::string_view text(p, lengths_[row * columns_.size() + column]);
    out->null = false;
    auto bad = [&](std::string_view what) {
      // At most 64 bytes of the value, escaped: it is outside input.
      std::string shown;
      for (unsigned char c : text.substr(0, 64)) {
        shown +=
            c >= 0x20 && c < 0x7f && c != '\'' ? std::string(1, static_cast<char>(c)) : fmt::format("\\x{:02x}", c);
      }
      *error = fmt::format("column '{}' ({}), row {}: {} '{}'{}", col.name, col.server_type, row, what, shown,
                           text.size() > 64 ? "..." : "");
      return false;
    };
    switch (col.type) {
      case ColumnType::kInt: {
        auto v = mariadb::parse_int(text, unsigned_[column]);
        if (!v) return bad(unsigned_[column] ? "not an integer in int64's range" : "not an int64 integer");
        out->i = *v;
        return true;
      }
      case ColumnType::kBool:
        if (col.server_type == "BIT(1)") {
          if (text.size() != 1 || (text[0] != '\0' && text[0] != '\1')) return bad("not a BIT(1) value");
          out->i = text[0];
        } else {
          if (text != "0" && text != "1") return bad("not a boolean (0 or 1)");
          out->i = text[0] - '0';
        }
        return true;
      case ColumnType::kFloat: {
        auto v = mariadb::parse_float(text);
        if (!v) return bad("not a finite floating-point number");
        out->f = *v;
        return true;
      }
      case ColumnType::kTimestamp: {
        auto v = mariadb::parse_datetime(text);
        if (!v) return bad("not a valid date and time");
        out->i = *v;
        return true;
      }
      case ColumnType::kText:
      case ColumnType::kBytes:
      case ColumnType::kOther: out->s = text; return true;
    }
    return true;
  }

 private:
  MYSQL_RES* res_;
  std::vector<ColumnInfo> columns_;
  std::vector<bool> unsigned_;
  std::vector<MYSQL_ROW> rows_;
  std::vector<unsigned long> lengths_;  // rows x columns
};

// Errors after which the session is gone: the client's own (2000-2999:
// server gone, lost, cannot connect) and the server's shutdown and kill.
bool connection_lost(unsigned err) {
  return (err >= CR_MIN_ERROR && err <= CR_MAX_ERROR) || err == ER_SERVER_SHUTDOWN || err == ER_CONNECTION_KILLED ||
         err == ER_QUERY_INTERRUPTED;
}

class MariadbConnection final : public Connection {
 public:
  explicit MariadbConnection(ConnectionOptions options) : options_(std::move(options)) {}
  ~MariadbConnection() override { close(); }
  MariadbConnection(const MariadbConnection&) = delete;
  MariadbConnection& operator=(const MariadbConnection&) = delete;

  bool connect() override {
    close();
    std::string why;
    auto url = mariadb::parse_url(options_.url, &why);
    if (!url) {
      error_ = why;
      return false;
    }
    library_init();
    mysql_ = mysql_init(nullptr);
    if (mysql_ == nullptr) {
      error_ = "mariadb: mysql_init failed (out of memory)";
      return false;
    }
    unsigned timeout = static_cast<unsigned>(std::max(1, options_.connect_timeout_s));
    // A read or write that waits longer than this means the server or the
    // network is gone; the call fails and the source reconnects.
    unsigned io_timeout = std::max(30u, timeout);
    my_bool no = 0, yes = 1;
    mysql_optionsv(mysql_, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    mysql_optionsv(mysql_, MYSQL_OPT_READ_TIMEOUT, &io_timeout);
    mysql_optionsv(mysql_, MYSQL_OPT_WRITE_TIMEOUT, &io_timeout);
    mysql_optionsv(mysql_, MYSQL_OPT_RECONNECT, &no);
    mysql_optionsv(mysql_, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    // No option file is read: what the URL says is all there is.
    if (url->ssl_mode != Url::SslMode::kDisabled) {
      mysql_optionsv(mysql_, MYSQL_OPT_SSL_ENFORCE, &yes);
      my_bool verify = url->ssl_mode == Url::SslMode::kVerifyIdentity ? 1 : 0;
      mysql_optionsv(mysql_, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &verify);
      if (!url->ssl_ca.empty()) mysql_optionsv(mysql_, MYSQL_OPT_SSL_CA, url->ssl_ca.c_str());
    }
    const char* password = options_.password.empty() ? nullptr : options_.password.c_str();
    if (mysql_real_connect(mysql_, url->host.c_str(), url->user.c_str(), password, url->database.c_str(), url->port,
                           nullptr, 0) == nullptr) {
      error_ = fmt::format("mariadb: cannot connect to {}:{} as {} (database {}): {}", url->host, url->port, url->user,
                           url->database, mysql_error(mysql_));
      close();
      return false;
    }
    where_ = fmt::format("{}:{}/{}", url->host, url->port, url->database);
    // Connector/C 3.3 carries on in the clear when the server offers no TLS,
    // enforce or not: check what was negotiated.
    if (url->ssl_mode != Url::SslMode::kDisabled && mysql_get_ssl_cipher(mysql_) == nullptr) {
      error_ = fmt::format("mariadb: {} did not negotiate SSL/TLS, and the URL asks for ssl-mode={}", where_,
                           url->ssl_mode == Url::SslMode::kRequired ? "required" : "verify-identity");
      close();
      return false;
    }
    if (!run("SET time_zone = '+00:00'", "setting the session time zone")) {
      close();
      return false;
    }
    return true;
  }

  bool connected() const noexcept override { return mysql_ != nullptr; }
  const std::string& error() const noexcept override { return error_; }

  bool describe(std::string_view select, std::vector<ColumnInfo>* out) override {
    auto res = query(fmt::format("SELECT * FROM ({}) AS `larder_q` LIMIT 0", trim_select(select)), "describe");
    if (!res) return false;
    auto cols = res->columns();
    out->assign(cols.begin(), cols.end());
    return true;
  }

  std::optional<int64_t> server_now_us() override {
    auto res = query("SELECT UTC_TIMESTAMP(6)", "reading the server's clock");
    if (!res) return std::nullopt;
    Cell cell;
    std::string why;
    if (res->rows() != 1 || res->columns().size() != 1 || !res->cell(0, 0, &cell, &why) || cell.null) {
      error_ = fmt::format("mariadb: UTC_TIMESTAMP(6) returned no valid time{}{}", why.empty() ? "" : ": ", why);
      return std::nullopt;
    }
    return cell.i;
  }

  std::unique_ptr<Result> poll(const CursorQuery& q) override {
    auto cursor = mariadb::quote_identifier(q.cursor_column);
    if (!cursor) {
      error_ = fmt::format("mariadb: the cursor column name '{}' cannot be quoted", q.cursor_column);
      return nullptr;
    }
    std::optional<std::string> tie;
    if (!q.tie_column.empty()) {
      tie = mariadb::quote_identifier(q.tie_column);
      if (!tie) {
        error_ = fmt::format("mariadb: the tie column name '{}' cannot be quoted", q.tie_column);
        return nullptr;
      }
    }
    if (q.cursor_type != ColumnType::kInt && q.cursor_type != ColumnType::kTimestamp) {
      error_ = "mariadb: a cursor is an integer or a timestamp column";
      return nullptr;
    }
    // Values are integers formatted here, or timestamps formatted from
    // integers: no outside text reaches the statement.
    auto literal = [&](int64_t v) {
      return q.cursor_type == ColumnType::kTimestamp ? fmt::format("'{}'", mariadb::format_datetime(v))
                                                     : std::to_string(v);
    };
    const std::string_view select = trim_select(q.select);
    if (select_list_of_ != select) {
      auto meta = query(fmt::format("SELECT * FROM ({}) AS `larder_q` LIMIT 0", select), "poll");
      if (!meta) return nullptr;
      select_list_.clear();
      MYSQL_FIELD* fields = mysql_fetch_fields(meta->res());
      for (unsigned i = 0, n = mysql_num_fields(meta->res()); i < n; ++i) {
        auto name = mariadb::quote_identifier(field_name(fields[i]));
        if (!name) {
          error_ = fmt::format("mariadb: the column name '{}' cannot be quoted", field_name(fields[i]));
          return nullptr;
        }
        if (!select_list_.empty()) select_list_ += ", ";
        select_list_ += fields[i].type == MYSQL_TYPE_FLOAT ? fmt::format("CAST({0} AS DOUBLE) AS {0}", *name) : *name;
      }
      select_list_of_ = std::string(select);
    }
    std::string sql = fmt::format("SELECT {} FROM ({}) AS `larder_q`", select_list_, select);
    std::vector<std::string> where;
    if (q.after_cursor) {
      // The OR form rather than a row comparison: MariaDB turns it into
      // index ranges on (cursor, tie), which it does not for (a, b) > (x, y).
      if (tie) {
        where.push_back(fmt::format("({0} > {1} OR ({0} = {1} AND {2} > {3}))", *cursor, literal(*q.after_cursor), *tie,
                                    q.after_tie));
      } else {
        where.push_back(fmt::format("{} > {}", *cursor, literal(*q.after_cursor)));
      }
    }
    if (q.before_cursor) where.push_back(fmt::format("{} < {}", *cursor, literal(*q.before_cursor)));
    for (size_t i = 0; i < where.size(); ++i) sql += fmt::format(" {} {}", i == 0 ? "WHERE" : "AND", where[i]);
    sql += fmt::format(" ORDER BY {}", *cursor);
    if (tie) sql += fmt::format(", {}", *tie);
    sql += fmt::format(" LIMIT {}", q.limit);
    auto res = query(sql, "poll");
    if (!res) select_list_of_.reset();
    return res;
  }

 private:
  // The configured SELECT inside a derived table: a trailing ';' or space
  // would end it early.
  static std::string_view trim_select(std::string_view s) {
    while (!s.empty() && (s.back() == ';' || std::isspace(static_cast<unsigned char>(s.back())))) s.remove_suffix(1);
    return s;
  }

  bool run(const std::string& sql, std::string_view what) {
    if (mysql_real_query(mysql_, sql.data(), sql.size()) != 0) {
      fail(what);
      return false;
    }
    return true;
  }

  std::unique_ptr<MariadbResult> query(const std::string& sql, std::string_view what) {
    if (mysql_ == nullptr) {
      error_ = "mariadb: not connected";
      return nullptr;
    }
    if (!run(sql, what)) return nullptr;
    MYSQL_RES* res = mysql_store_result(mysql_);
    if (res == nullptr) {
      if (mysql_errno(mysql_) != 0) {
        fail(what);
      } else {
        error_ = fmt::format("mariadb: {}: the statement returned no result set", what);
      }
      return nullptr;
    }
    return std::make_unique<MariadbResult>(res);
  }

  void fail(std::string_view what) {
    const unsigned err = mysql_errno(mysql_);
    error_ = fmt::format("mariadb: {} on {}: {} (error {})", what, where_, mysql_error(mysql_), err);
    if (connection_lost(err)) close();
  }

  void close() {
    if (mysql_ != nullptr) mysql_close(mysql_);
    mysql_ = nullptr;
    select_list_of_.reset();
  }

  ConnectionOptions options_;
  MYSQL* mysql_ = nullptr;
  std::string error_;
  std::string where_;
  // poll()'s outer select list and the select it was made for.
  std::string select_list_;
  std::optional<std::string> select_list_of_;
};

}  // namespace

std::unique_ptr<Connection> make_mariadb_connection(ConnectionOptions options) {
  return std::make_unique<MariadbConnection>(std::move(options));
}

}  // namespace larder::sidecar::sql

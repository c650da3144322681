// PostgreSQL behind the driver interface (driver.h), with libpq. Polled
// rows come in binary format (each type's send form: big-endian integers
// and IEEE floats, timestamps as microseconds since 2000-01-01, text as its
// bytes), read with a strict length check per type: nothing to parse, on
// either side (the server's text output of floats and timestamps cost as
// much as the client's parsing of it; docs/performance.md). The session
// runs with TimeZone=UTC, so timestamp (without zone) is taken as UTC as
// it is stored, and timestamptz is the instant it is. describe() and the
// server's clock use text, parsed strictly (text_values.h).
//
// Threads: one Connection per source thread (libpq connections are not
// shared).
#include <fmt/format.h>
#include <libpq-fe.h>

#include <bit>

#include "consume/sql/driver.h"
#include "consume/sql/text_values.h"

namespace larder::sidecar::sql {
namespace {

// Built-in type OIDs (src/include/catalog/pg_type.dat); stable across
// PostgreSQL versions.
struct TypeName {
  Oid oid;
  ColumnType type;
  const char* name;
};
constexpr TypeName kTypes[] = {
    {16, ColumnType::kBool, "boolean"},
    {17, ColumnType::kBytes, "bytea"},
    {18, ColumnType::kText, "\"char\""},
    {19, ColumnType::kText, "name"},
    {20, ColumnType::kInt, "bigint"},
    {21, ColumnType::kInt, "smallint"},
    {23, ColumnType::kInt, "integer"},
    {25, ColumnType::kText, "text"},
    {26, ColumnType::kInt, "oid"},
    {114, ColumnType::kText, "json"},
    {700, ColumnType::kFloat, "real"},
    {701, ColumnType::kFloat, "double precision"},
    {1042, ColumnType::kText, "character"},
    {1043, ColumnType::kText, "character varying"},
    {1082, ColumnType::kOther, "date"},
    {1083, ColumnType::kOther, "time"},
    {1114, ColumnType::kTimestamp, "timestamp without time zone"},
    {1184, ColumnType::kTimestamp, "timestamp with time zone"},
    {1186, ColumnType::kOther, "interval"},
    {1700, ColumnType::kOther, "numeric"},
    {2950, ColumnType::kOther, "uuid"},
    {3802, ColumnType::kText, "jsonb"},
};

// The OIDs whose binary form cell() reads itself (the rest of kTypes it
// reads as bytes: text, varchar, char(n), name, json, "char", bytea).
constexpr Oid kBoolOid = 16, kInt8Oid = 20, kInt2Oid = 21, kInt4Oid = 23, kOidOid = 26, kFloat4Oid = 700,
              kFloat8Oid = 701, kTimestampOid = 1114, kTimestamptzOid = 1184, kJsonbOid = 3802;
// Binary timestamps count microseconds from 2000-01-01 00:00:00 UTC; the
// driver's cells from 1970 (driver.h), years 1-9999 as the text parser.
constexpr int64_t kUnixUsAt2000 = 946'684'800LL * 1'000'000;
constexpr int64_t kFirstUs2000 = -62'135'596'800LL * 1'000'000 - kUnixUsAt2000;  // 0001-01-01 00:00:00
constexpr int64_t kLastUs2000 = 253'402'300'799'999'999LL - kUnixUsAt2000;       // 9999-12-31 23:59:59.999999

ColumnInfo column_info(const PGresult* r, int c) {
  ColumnInfo info;
  const char* name = PQfname(r, c);
  info.name = name != nullptr ? name : "";
  const Oid oid = PQftype(r, c);
  info.server_type = fmt::format("type oid {}", oid);
  for (const TypeName& t : kTypes) {
    if (t.oid == oid) {
      info.type = t.type;
      info.server_type = t.name;
    }
  }
  return info;
}

std::string trimmed(const char* message) {
  std::string s = message != nullptr ? message : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

class PgResult final : public Result {
 public:
  // `r` holds rows in binary format (resultFormat 1).
  explicit PgResult(PGresult* r) : r_(r) {
    const int n = PQnfields(r);
    for (int c = 0; c < n; ++c) {
      columns_.push_back(column_info(r, c));
      oids_.push_back(PQftype(r, c));
    }
    rows_ = static_cast<size_t>(std::max(0, PQntuples(r)));
  }
  ~PgResult() override { PQclear(r_); }
  PgResult(const PgResult&) = delete;
  PgResult& operator=(const PgResult&) = delete;

  std::span<const ColumnInfo> columns() const noexcept override { return columns_; }
  size_t rows() const noexcept override { return rows_; }

  bool cell(size_t row, size_t column, Cell* out, std::string* error) const override {
    *out = Cell{};
    if (row >= rows_ || column >= columns_.size()) {
      *error =
          fmt::format("no cell ({}, {}) in a result of {} rows and {} columns", row, column, rows_, columns_.size());
      return false;
    }
    const int r = static_cast<int>(row), c = static_cast<int>(column);
    if (PQgetisnull(r_, r, c)) return true;
    const int len = PQgetlength(r_, r, c);
    const char* p = PQgetvalue(r_, r, c);
    if (len < 0 || p == nullptr) {
      *error = fmt::format("column \"{}\": no value", columns_[column].name);
      return false;
    }
    const std::string_view s(p, static_cast<size_t>(len));
    const ColumnInfo& info = columns_[column];
    auto bad = [&](const char* what) {
      *error = fmt::format("column \"{}\" ({}): {} ({} bytes)", info.name, info.server_type, what, s.size());
      return false;
    };
    out->null = false;
    switch (oids_[column]) {
      case kInt8Oid:
        if (s.size() != 8) return bad("not an 8-byte bigint");
        out->i = static_cast<int64_t>(big_endian<uint64_t>(p));
        return true;
      case kInt4Oid:
        if (s.size() != 4) return bad("not a 4-byte integer");
        out->i = static_cast<int32_t>(big_endian<uint32_t>(p));
        return true;
      case kInt2Oid:
        if (s.size() != 2) return bad("not a 2-byte smallint");
        out->i = static_cast<int16_t>(big_endian<uint16_t>(p));
        return true;
      case kOidOid:
        if (s.size() != 4) return bad("not a 4-byte oid");
        out->i = big_endian<uint32_t>(p);  // unsigned
        return true;
      case kFloat8Oid:
        if (s.size() != 8) return bad("not an 8-byte double precision");
        out->f = std::bit_cast<double>(big_endian<uint64_t>(p));
        return true;
      case kFloat4Oid:
        if (s.size() != 4) return bad("not a 4-byte real");
        out->f = std::bit_cast<float>(big_endian<uint32_t>(p));
        return true;
      case kBoolOid:
        if (s.size() != 1 || (s[0] != 0 && s[0] != 1)) return bad("not a boolean");
        out->i = s[0];
        return true;
      case kTimestampOid:
      case kTimestamptzOid: {
        if (s.size() != 8) return bad("not an 8-byte timestamp");
        // Microseconds since 2000-01-01 (integer datetimes, the only kind
        // since PostgreSQL 10); +-infinity are INT64_MAX / INT64_MIN.
        const int64_t v = static_cast<int64_t>(big_endian<uint64_t>(p));
        if (v < kFirstUs2000 || v > kLastUs2000) return bad("not a timestamp in years 1-9999 (or infinity)");
        out->i = v + kUnixUsAt2000;
        return true;
      }
      case kJsonbOid:
        // jsonb's send form: a version byte (1), then the text.
        if (s.empty() || s[0] != 1) return bad("not jsonb version 1");
        out->s = s.substr(1);
        return true;
      default: break;
    }
    switch (info.type) {
      case ColumnType::kText:  // text, varchar, char(n), name, json, "char": their bytes
      case ColumnType::kBytes: out->s = s; return true;
      default: break;
    }
    return bad("a type Larder does not read");
  }

 private:
  template <typename T>
  static T big_endian(const char* p) noexcept {
    T v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v = static_cast<T>((v << 8) | static_cast<unsigned char>(p[i]));
    return v;
  }

  PGresult* r_;
  std::vector<ColumnInfo> columns_;
  std::vector<Oid> oids_;
  size_t rows_ = 0;
};

class PgConnection final : public Connection {
 public:
  explicit PgConnection(ConnectionOptions options) : options_(std::move(options)) {}
  ~PgConnection() override { close(); }
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;

  bool connect() override {
    close();
    const std::string timeout = std::to_string(options_.connect_timeout_s);
    // expand_dbname: the url is a connection URI; the keywords after it
    // override what it says (the password never comes from the url we log).
    std::vector<const char*> keys = {"dbname", "connect_timeout", "application_name", "client_encoding"};
    std::vector<const char*> values = {options_.url.c_str(), timeout.c_str(), "larder-sidecar", "UTF8"};
    if (!options_.password.empty()) {
      keys.push_back("password");
      values.push_back(options_.password.c_str());
    }
    keys.push_back(nullptr);
    values.push_back(nullptr);
    conn_ = PQconnectdbParams(keys.data(), values.data(), 1);
    if (conn_ == nullptr) {
      error_ = "out of memory";
      return false;
    }
    if (PQstatus(conn_) != CONNECTION_OK) {
      error_ = trimmed(PQerrorMessage(conn_));
      close();
      return false;
    }
    // UTC and ISO output: what the strict parsers of text read (describe,
    // the clock, the cursor bounds sent as text parameters).
    if (!exec_ok("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET bytea_output = 'hex'; "
                 "SET IntervalStyle = 'iso_8601'")) {
      close();
      return false;
    }
    return true;
  }

  bool connected() const noexcept override { return conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK; }
  const std::string& error() const noexcept override { return error_; }

  bool describe(std::string_view select, std::vector<ColumnInfo>* out) override {
    out->clear();
    if (!ready()) return false;
    const std::string sql = fmt::format("SELECT * FROM ({}) AS q", select);
    PGresult* r = PQprepare(conn_, "", sql.c_str(), 0, nullptr);
    if (!ok(r, PGRES_COMMAND_OK)) return false;
    r = PQdescribePrepared(conn_, "");
    if (!ok(r, PGRES_COMMAND_OK, /*keep=*/true)) return false;
    for (int c = 0; c < PQnfields(r); ++c) out->push_back(column_info(r, c));
    PQclear(r);
    return true;
  }

  std::optional<int64_t> server_now_us() override {
    if (!ready()) return std::nullopt;
    PGresult* r = PQexec(conn_, "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8");
    if (!ok(r, PGRES_TUPLES_OK, true)) return std::nullopt;
    std::optional<int64_t> v;
    if (PQntuples(r) == 1 && PQnfields(r) == 1 && !PQgetisnull(r, 0, 0)) {
      v = parse_int(std::string_view(PQgetvalue(r, 0, 0), static_cast<size_t>(PQgetlength(r, 0, 0))));
    }
    PQclear(r);
    if (!v) error_ = "the server's clock did not read as an integer";
    return v;
  }

  std::unique_ptr<Result> poll(const CursorQuery& q) override {
    if (!ready()) return nullptr;
    const std::optional<std::string> cursor = quote_identifier(q.cursor_column);
    const std::optional<std::string> tie =
        q.tie_column.empty() ? std::optional<std::string>("") : quote_identifier(q.tie_column);
    if (!cursor || !tie) {
      error_ = "a cursor or tie column name is empty or holds a NUL byte";
      return nullptr;
    }
    std::vector<std::string> params;
    auto value = [&](int64_t v) -> std::optional<std::string> {
      if (q.cursor_type == ColumnType::kTimestamp) return format_timestamp(v);
      return std::to_string(v);
    };
    std::string where;
    if (q.after_cursor) {
      const std::optional<std::string> after = value(*q.after_cursor);
      if (!after) {
        error_ = fmt::format("cursor {} is outside years 1-9999", *q.after_cursor);
        return nullptr;
      }
      params.push_back(*after);
      if (tie->empty()) {
        where = fmt::format("{} > $1", *cursor);
      } else {
        params.push_back(std::to_string(q.after_tie));
        where = fmt::format("({}, {}) > ($1, $2::int8)", *cursor, *tie);
      }
    }
    if (q.before_cursor) {
      const std::optional<std::string> before = value(*q.before_cursor);
      if (!before) {
        error_ = fmt::format("cursor bound {} is outside years 1-9999", *q.before_cursor);
        return nullptr;
      }
      params.push_back(*before);
      where += fmt::format("{}{} < ${}", where.empty() ? "" : " AND ", *cursor, params.size());
    }
    const std::string sql =
        fmt::format("SELECT * FROM ({}) AS q{}{} ORDER BY {}{}{} LIMIT {}", q.select, where.empty() ? "" : " WHERE ",
                    where, *cursor, tie->empty() ? "" : ", ", *tie, q.limit);
    std::vector<const char*> values;
    for (const std::string& p : params) values.push_back(p.c_str());
    // Parameters in text, rows in binary (PgResult::cell).
    PGresult* r =
        PQexecParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(), nullptr, nullptr, 1);
    if (!ok(r, PGRES_TUPLES_OK, true)) return nullptr;
    return std::make_unique<PgResult>(r);
  }

 private:
  bool ready() {
    if (conn_ == nullptr) {
      error_ = "not connected";
      return false;
    }
    return true;
  }

  // Checks r's status; clears it unless `keep` and it succeeded.
  bool ok(PGresult* r, ExecStatusType want, bool keep = false) {
    if (r != nullptr && PQresultStatus(r) == want) {
      if (!keep) PQclear(r);
      return true;
    }
    error_ = trimmed(r != nullptr ? PQresultErrorMessage(r) : PQerrorMessage(conn_));
    if (error_.empty()) error_ = trimmed(PQerrorMessage(conn_));
    if (r != nullptr) PQclear(r);
    return false;
  }

  bool exec_ok(const char* sql) { return ok(PQexec(conn_, sql), PGRES_COMMAND_OK); }

  void close() {
    if (conn_ != nullptr) PQfinish(conn_);
    conn_ = nullptr;
  }

  ConnectionOptions options_;
  PGconn* conn_ = nullptr;
  std::string error_;
};

}  // namespace

std::unique_ptr<Connection> make_postgres_connection(ConnectionOptions options) {
  return std::make_unique<PgConnection>(std::move(options));
}

}  // namespace larder::sidecar::sql

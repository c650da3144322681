// A database behind a polling source: one connection, the dialect of its
// cursor query, and its rows as typed cells. PostgreSQL (libpq) and
// MariaDB/MySQL (libmariadb) implement it; the poller owns the cursor, the
// mapping of columns to fields and the stored positions, and never sees a
// driver's own types or SQL dialect.
//
// Every byte a server returns is outside input: a driver checks lengths and
// parses numbers and timestamps strictly, and reports a cell it cannot
// convert as an error naming the column, never as a guess.
//
// Threads: a Connection is used by one thread at a time (the source's).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace larder::sidecar::sql {

enum class ColumnType : uint8_t {
  kInt,    // any integer type; bool is kBool
  kFloat,  // float4/float8, FLOAT/DOUBLE; exact decimals are kOther
  kBool,
  kText,       // text, varchar, char, json as text
  kBytes,      // bytea, BLOB/VARBINARY
  kTimestamp,  // timestamp(tz), DATETIME, TIMESTAMP: as UTC microseconds
  kOther,      // anything else (numeric, arrays, ...): refused where mapped
};

const char* to_string(ColumnType type) noexcept;

struct ColumnInfo {
  std::string name;
  ColumnType type = ColumnType::kOther;
  std::string server_type;  // the server's name for it, for error messages
};

// One cell of a result, valid while its Result lives.
struct Cell {
  bool null = true;
  int64_t i = 0;       // kInt; kBool as 0/1; kTimestamp as UTC microseconds
  double f = 0;        // kFloat
  std::string_view s;  // kText, kBytes
};

// The rows after a cursor, in cursor order:
//   SELECT * FROM (<select>) AS q
//   WHERE (cursor_column, tie_column) > (after_cursor, after_tie)
//     AND cursor_column < before_cursor          (when set)
//   ORDER BY cursor_column, tie_column LIMIT limit
// without the tie column when tie_column is empty; without the WHERE on the
// first poll (after_cursor unset).
struct CursorQuery {
  std::string_view select;
  std::string_view cursor_column;
  ColumnType cursor_type = ColumnType::kInt;  // kInt or kTimestamp
  std::string_view tie_column;                // "" or an integer column
  std::optional<int64_t> after_cursor;
  int64_t after_tie = 0;
  std::optional<int64_t> before_cursor;
  uint32_t limit = 1000;
};

class Result {
 public:
  virtual ~Result() = default;
  virtual std::span<const ColumnInfo> columns() const noexcept = 0;
  virtual size_t rows() const noexcept = 0;
  // false with *error set when the cell does not convert to its column's
  // type (e.g. an out-of-range integer).
  virtual bool cell(size_t row, size_t column, Cell* out, std::string* error) const = 0;
};

struct ConnectionOptions {
  // postgresql://user@host:port/db?sslmode=... or mysql://user@host:port/db
  std::string url;
  std::string password;  // from password_file or the environment, never logged
  int connect_timeout_s = 5;
};

class Connection {
 public:
  virtual ~Connection() = default;
  // Opens, or reopens after a failure; false with error() set.
  virtual bool connect() = 0;
  virtual bool connected() const noexcept = 0;
  // The last failure, with the server's message; no password in it.
  virtual const std::string& error() const noexcept = 0;
  // The columns of `select` (run with no rows), to check the mapping at start.
  virtual bool describe(std::string_view select, std::vector<ColumnInfo>* out) = 0;
  // The server's clock now, UTC microseconds (for the settle margin).
  virtual std::optional<int64_t> server_now_us() = 0;
  // nullptr with error() set on failure; the connection may then need connect().
  virtual std::unique_ptr<Result> poll(const CursorQuery& query) = 0;
};

std::unique_ptr<Connection> make_postgres_connection(ConnectionOptions options);
std::unique_ptr<Connection> make_mariadb_connection(ConnectionOptions options);

}  // namespace larder::sidecar::sql

// The MariaDB driver's polling rate against a bare Connector/C read of the
// same rows (docs/performance.md, "MariaDB polling"). Needs a server: the
// LARDER_TEST_MARIADB_URL and _PASSWORD of scripts/mariadb.sh.
//
//   scripts/mariadb.sh start --dir /tmp/larder-mariadb
//   set -a; . /tmp/larder-mariadb/mariadb.env; set +a
//   build/bench/sidecar/larder_bench_mariadb_poll --benchmark_min_time=2
//
// Both read every row of a 100,000-row table of the polling source's shape
// (key, cursor, tie, two numbers, a flag, a short string):
//   BareFetch   one SELECT, mysql_store_result, every row's cells and
//               lengths touched, nothing parsed (what a `mariadb --batch`
//               dump costs, without the printing)
//   DriverPoll  the driver's cursor queries, a page of `page` rows at a
//               time, every cell converted through Result::cell
#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <mysql.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "consume/sql/driver.h"
#include "consume/sql/mariadb_text.h"

namespace {

using namespace larder::sidecar::sql;

constexpr int kRows = 100'000;
constexpr const char* kTable = "larder_bench_poll";

struct Server {
  std::string url, password;
  mariadb::Url parsed;
};

const Server& server() {
  static const Server s = [] {
    Server out;
    const char* url = std::getenv("LARDER_TEST_MARIADB_URL");
    const char* password = std::getenv("LARDER_TEST_MARIADB_PASSWORD");
    if (url == nullptr || password == nullptr) {
      std::fprintf(stderr, "set LARDER_TEST_MARIADB_URL and LARDER_TEST_MARIADB_PASSWORD (scripts/mariadb.sh)\n");
      std::exit(2);
    }
    out.url = url;
    out.password = password;
    std::string why;
    auto parsed = mariadb::parse_url(out.url, &why);
    if (!parsed) {
      std::fprintf(stderr, "%s\n", why.c_str());
      std::exit(2);
    }
    out.parsed = *parsed;
    return out;
  }();
  return s;
}

MYSQL* bare_connect() {
  const Server& s = server();
  MYSQL* m = mysql_init(nullptr);
  if (mysql_real_connect(m, s.parsed.host.c_str(), s.parsed.user.c_str(), s.password.c_str(), s.parsed.database.c_str(),
                         s.parsed.port, nullptr, 0) == nullptr) {
    std::fprintf(stderr, "connect: %s\n", mysql_error(m));
    std::exit(2);
  }
  return m;
}

void exec(MYSQL* m, const std::string& sql) {
  if (mysql_real_query(m, sql.data(), sql.size()) != 0) {
    std::fprintf(stderr, "%s: %s\n", sql.substr(0, 80).c_str(), mysql_error(m));
    std::exit(2);
  }
}

// The table, made once per run.
void ensure_table() {
  static const bool done = [] {
    MYSQL* m = bare_connect();
    exec(m, fmt::format("DROP TABLE IF EXISTS {}", kTable));
    exec(m, fmt::format("CREATE TABLE {} (id BIGINT PRIMARY KEY, k VARCHAR(32) NOT NULL, n BIGINT, x DOUBLE, "
                        "flag BOOL, s VARCHAR(16), updated_at TIMESTAMP(6) NOT NULL, KEY (updated_at, id))",
                        kTable));
    for (int from = 0; from < kRows; from += 5000) {
      std::string sql = fmt::format("INSERT INTO {} VALUES ", kTable);
      for (int i = from; i < from + 5000; ++i) {
        sql += fmt::format("{}({}, 'user:{}', {}, {}, {}, 's{}', TIMESTAMP'2026-01-01 00:00:00' + INTERVAL {} SECOND)",
                           i == from ? "" : ",", i, i, i * 3, i * 0.25, i % 2, i % 1000, i / 4);
      }
      exec(m, sql);
    }
    mysql_close(m);
    return true;
  }();
  (void)done;
}

void BareFetch(benchmark::State& state) {
  ensure_table();
  MYSQL* m = bare_connect();
  const std::string sql =
      fmt::format("SELECT id, k, n, x, flag, s, updated_at FROM {} ORDER BY updated_at, id", kTable);
  size_t bytes = 0;
  for (auto _ : state) {
    exec(m, sql);
    MYSQL_RES* res = mysql_store_result(m);
    const unsigned n = mysql_num_fields(res);
    while (MYSQL_ROW row = mysql_fetch_row(res)) {
      const unsigned long* len = mysql_fetch_lengths(res);
      for (unsigned i = 0; i < n; ++i) bytes += row[i] != nullptr ? len[i] : 0;
    }
    mysql_free_result(res);
  }
  benchmark::DoNotOptimize(bytes);
  state.SetItemsProcessed(state.iterations() * kRows);
  mysql_close(m);
}

void DriverPoll(benchmark::State& state) {
  ensure_table();
  auto c = make_mariadb_connection({.url = server().url, .password = server().password});
  if (!c->connect()) {
    state.SkipWithError(c->error().c_str());
    return;
  }
  const std::string select = fmt::format("SELECT id, k, n, x, flag, s, updated_at FROM {}", kTable);
  int64_t sum = 0;
  for (auto _ : state) {
    CursorQuery q{.select = select,
                  .cursor_column = "updated_at",
                  .cursor_type = ColumnType::kTimestamp,
                  .tie_column = "id",
                  .limit = static_cast<uint32_t>(state.range(0))};
    size_t rows = 0;
    for (;;) {
      auto r = c->poll(q);
      if (!r) {
        state.SkipWithError(c->error().c_str());
        return;
      }
      if (r->rows() == 0) break;
      const size_t cols = r->columns().size();
      Cell cell;
      std::string error;
      for (size_t i = 0; i < r->rows(); ++i) {
        for (size_t j = 0; j < cols; ++j) {
          if (!r->cell(i, j, &cell, &error)) {
            state.SkipWithError(error.c_str());
            return;
          }
          sum += cell.i + static_cast<int64_t>(cell.s.size());
        }
      }
      rows += r->rows();
      Cell cursor, tie;
      (void)r->cell(r->rows() - 1, 6, &cursor, &error);
      (void)r->cell(r->rows() - 1, 0, &tie, &error);
      q.after_cursor = cursor.i;
      q.after_tie = tie.i;
    }
    if (rows != static_cast<size_t>(kRows)) {
      state.SkipWithError(fmt::format("read {} rows, not {}", rows, kRows).c_str());
      return;
    }
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations() * kRows);
}

BENCHMARK(BareFetch)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(DriverPoll)->Arg(1000)->Arg(10000)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();

// larder-bench-database: the sidecar's database polling source against the
// bare read of the same rows on the same server.
//
// Once: creates a table of --rows rows (bigint id, text key, five feature
// columns, a timestamp cursor shared by groups of 4 rows, a soft-delete
// flag; indexed on (updated_at, id)) on the server of --url. Then,
// --rounds times, alternating:
//   bare     the floor of reading those rows from this server, each row's
//            bytes counted and nothing parsed:
//              postgres  COPY (SELECT * FROM t ORDER BY updated_at, id)
//                        TO STDOUT read with PQgetCopyData;
//              mariadb   SELECT * FROM t ORDER BY updated_at, id read with
//                        mysql_use_result (streamed, as COPY is);
//   sidecar  a fresh larder-sidecar on its own segment polls the table
//            (page_rows --page) until every row is applied: timed from its
//            first applied update to the segment holding --rows keys
//            (Segment::info(), read every 100 µs), and from its exec; and
//            its CPU time over the first span (every thread, /proc/PID/stat)
//            per row, a figure the machine's load moves less than rates.
// Prints a Markdown table with the ratio sidecar / bare in rows/s.
//
// --driver postgres (default): --url defaults to LARDER_TEST_POSTGRES_URL,
// --password to LARDER_TEST_POSTGRES_PASSWORD (scripts/postgres.sh);
// --driver mariadb: LARDER_TEST_MARIADB_URL and _PASSWORD
// (scripts/mariadb.sh).
#include <fmt/format.h>
#include <libpq-fe.h>
#include <mysql.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>

#include "consume/sql/mariadb_text.h"
#include "larder/client.h"
#include "larder/writer/writer.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string driver = "postgres";
  uint32_t rows = 200'000;
  uint32_t page = 5000;
  uint32_t rounds = 3;
  std::string url;
  std::string password;
  std::string sidecar = LARDER_SIDECAR_BINARY;
};

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// One server: the table's setup, the bare read, the sidecar's config.
class Server {
 public:
  virtual ~Server() = default;
  virtual void exec(const std::string& sql) = 0;
  virtual void create_table(const std::string& table, uint32_t rows) = 0;
  // Rows per second of the bare read of every row in cursor order.
  virtual double bare_rate(const std::string& table, uint32_t rows) = 0;
  virtual const char* bare_name() const = 0;
  virtual std::string query(const std::string& table) const = 0;
};

class Postgres final : public Server {
 public:
  explicit Postgres(const Options& o) {
    const char* keys[] = {"dbname", "password", nullptr};
    const char* values[] = {o.url.c_str(), o.password.c_str(), nullptr};
    c_ = PQconnectdbParams(keys, values, 1);
    if (PQstatus(c_) != CONNECTION_OK) throw std::runtime_error(std::string("connect: ") + PQerrorMessage(c_));
  }
  ~Postgres() override { PQfinish(c_); }

  void exec(const std::string& sql) override {
    PGresult* r = PQexec(c_, sql.c_str());
    const ExecStatusType st = PQresultStatus(r);
    const std::string err = PQresultErrorMessage(r);
    PQclear(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) throw std::runtime_error("SQL: " + err);
  }

  void create_table(const std::string& table, uint32_t rows) override {
    exec(fmt::format(R"(CREATE TABLE {0} (id bigserial PRIMARY KEY, k text NOT NULL, n bigint,
  x double precision, f real, flag boolean, s text, updated_at timestamptz NOT NULL,
  deleted boolean NOT NULL DEFAULT false);
INSERT INTO {0} (k, n, x, f, flag, s, updated_at)
  SELECT 'k' || i, i, i * 0.25, i * 0.5, i % 2 = 0, 's' || i,
         timestamptz '2026-01-01 00:00:00+00' + (i / 4) * interval '1 millisecond'
  FROM generate_series(1, {1}) AS i;
CREATE INDEX ON {0} (updated_at, id);
ANALYZE {0})",
                     table, rows));
  }

  double bare_rate(const std::string& table, uint32_t rows) override {
    const auto start = Clock::now();
    PGresult* r = PQexec(c_, fmt::format("COPY (SELECT * FROM {} ORDER BY updated_at, id) TO STDOUT", table).c_str());
    if (PQresultStatus(r) != PGRES_COPY_OUT) throw std::runtime_error(PQresultErrorMessage(r));
    PQclear(r);
    uint64_t got = 0, bytes = 0;
    char* buf = nullptr;
    int n = 0;
    while ((n = PQgetCopyData(c_, &buf, 0)) > 0) {
      ++got;
      bytes += static_cast<uint64_t>(n);
      PQfreemem(buf);
    }
    if (n == -2) throw std::runtime_error(PQerrorMessage(c_));
    while ((r = PQgetResult(c_)) != nullptr) PQclear(r);
    const double s = seconds_since(start);
    if (got != rows) throw std::runtime_error(fmt::format("COPY returned {} rows, not {}", got, rows));
    return rows / s;
  }
  const char* bare_name() const override { return "COPY TO STDOUT"; }
  std::string query(const std::string& table) const override { return "SELECT * FROM " + table; }

 private:
  PGconn* c_ = nullptr;
};

class Mariadb final : public Server {
 public:
  explicit Mariadb(const Options& o) {
    std::string why;
    const auto url = larder::sidecar::sql::mariadb::parse_url(o.url, &why);
    if (!url) throw std::runtime_error("--url: " + why);
    m_ = mysql_init(nullptr);
    if (mysql_real_connect(m_, url->host.c_str(), url->user.c_str(), o.password.c_str(), url->database.c_str(),
                           url->port, nullptr, 0) == nullptr) {
      throw std::runtime_error(std::string("connect: ") + mysql_error(m_));
    }
  }
  ~Mariadb() override { mysql_close(m_); }

  void exec(const std::string& sql) override {
    if (mysql_real_query(m_, sql.data(), sql.size()) != 0)
      throw std::runtime_error(std::string("SQL: ") + mysql_error(m_));
    if (MYSQL_RES* r = mysql_store_result(m_)) mysql_free_result(r);
  }

  void create_table(const std::string& table, uint32_t rows) override {
    exec(fmt::format(R"(CREATE TABLE {} (id BIGINT AUTO_INCREMENT PRIMARY KEY, k VARCHAR(32) NOT NULL, n BIGINT,
  x DOUBLE, f FLOAT, flag BOOL, s VARCHAR(64), updated_at TIMESTAMP(6) NOT NULL,
  deleted BOOL NOT NULL DEFAULT FALSE, KEY (updated_at, id)))",
                     table));
    // The Sequence engine's seq_1_to_N (MariaDB 10.0.3 and later).
    exec(fmt::format(R"(INSERT INTO {} (k, n, x, f, flag, s, updated_at)
  SELECT CONCAT('k', seq), seq, seq * 0.25, seq * 0.5, seq % 2 = 0, CONCAT('s', seq),
         TIMESTAMP'2026-01-01 00:00:00' + INTERVAL (seq DIV 4) * 1000 MICROSECOND
  FROM seq_1_to_{})",
                     table, rows));
    exec("ANALYZE TABLE " + table);
  }

  double bare_rate(const std::string& table, uint32_t rows) override {
    const auto start = Clock::now();
    const std::string sql = fmt::format("SELECT * FROM {} ORDER BY updated_at, id", table);
    if (mysql_real_query(m_, sql.data(), sql.size()) != 0) throw std::runtime_error(mysql_error(m_));
    MYSQL_RES* res = mysql_use_result(m_);
    if (res == nullptr) throw std::runtime_error(mysql_error(m_));
    const unsigned fields = mysql_num_fields(res);
    uint64_t got = 0, bytes = 0;
    while (MYSQL_ROW row = mysql_fetch_row(res)) {
      const unsigned long* len = mysql_fetch_lengths(res);
      for (unsigned i = 0; i < fields; ++i) bytes += row[i] != nullptr ? len[i] : 0;
      ++got;
    }
    const bool failed = mysql_errno(m_) != 0;
    mysql_free_result(res);
    if (failed) throw std::runtime_error(mysql_error(m_));
    const double s = seconds_since(start);
    if (got != rows) throw std::runtime_error(fmt::format("the SELECT returned {} rows, not {}", got, rows));
    return rows / s;
  }
  const char* bare_name() const override { return "bare SELECT"; }
  std::string query(const std::string& table) const override { return "SELECT * FROM `" + table + "`"; }

 private:
  MYSQL* m_ = nullptr;
};

struct SidecarRun {
  double rate_from_first = 0;  // rows/s from its first applied update
  double rate_from_exec = 0;   // rows/s from its exec (connect, check, segment creation included)
  double cpu_us_per_row = 0;   // the sidecar's CPU time (every thread) from its first applied update, per row
};

// CPU seconds (user + system, every thread) of process `pid` so far.
double cpu_seconds(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Fields after the command (which may hold spaces) start past its ')'.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(stat.substr(close + 2));
  std::string f;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i) {
    if (i == 14) utime = std::stoull(f);
    if (i == 15) stime = std::stoull(f);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

SidecarRun sidecar_rate(const Options& o, const Server& server, const std::string& table, const std::string& segment) {
  larder::Writer::remove_segment(segment);
  const std::string config = fmt::format("/tmp/{}.yaml", segment);
  std::ofstream(config) << fmt::format(R"(segment: {{name: {segment}}}
tables:
  - name: users
    key_max_len: 32
    capacity: {capacity}
    event_time: {{max_future_skew: off, min_event_time: 0}}
    fields:
      - {{name: n, type: int64}}
      - {{name: x, type: float64}}
      - {{name: f, type: float32}}
      - {{name: flag, type: bool}}
      - {{name: s, type: string, max_len: 16}}
databases:
  - driver: {driver}
    url: "{url}"
    password_env: LARDER_BENCH_PASSWORD
    poll_interval: 1s
    tables:
      - {{table: users, query: "{query}", key: k, cursor: updated_at, tie: id, deleted: deleted,
          page_rows: {page}}}
logging: {{level: warn}}
metrics: {{enabled: false}}
)",
                                       fmt::arg("segment", segment), fmt::arg("capacity", o.rows + o.rows / 2),
                                       fmt::arg("driver", o.driver), fmt::arg("url", o.url),
                                       fmt::arg("query", server.query(table)), fmt::arg("page", o.page));
  ::setenv("LARDER_BENCH_PASSWORD", o.password.c_str(), 1);
  const auto exec_at = Clock::now();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl(o.sidecar.c_str(), "larder-sidecar", "--config", config.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  larder::Segment seg;
  for (int i = 0;; ++i) {
    try {
      seg = larder::Segment::open(segment);
      break;
    } catch (const larder::Error&) {
      if (i > 30000) throw std::runtime_error("the sidecar did not create its segment");
      std::this_thread::sleep_for(100us);
    }
  }
  while (seg.info().updates_applied == 0) std::this_thread::sleep_for(100us);
  const auto first = Clock::now();
  const double cpu_first = cpu_seconds(pid);
  const larder::Table users = seg.table("users");
  while (users.stats().live_keys < o.rows) std::this_thread::sleep_for(100us);
  SidecarRun run{o.rows / seconds_since(first), o.rows / seconds_since(exec_at),
                 (cpu_seconds(pid) - cpu_first) * 1e6 / o.rows};
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  larder::Writer::remove_segment(segment);
  std::remove(config.c_str());
  return run;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app("The database polling source against a bare read of the same rows");
  app.add_option("--driver", o.driver, "postgres or mariadb")->check(CLI::IsMember({"postgres", "mariadb"}));
  app.add_option("--rows", o.rows, "rows in the table")->check(CLI::Range(1u, 10'000'000u));
  app.add_option("--page", o.page, "the source's page_rows")->check(CLI::Range(1u, 100'000u));
  app.add_option("--rounds", o.rounds, "alternating rounds")->check(CLI::Range(1u, 100u));
  app.add_option("--url", o.url, "the server (default LARDER_TEST_POSTGRES_URL or LARDER_TEST_MARIADB_URL)");
  app.add_option("--password", o.password, "(default LARDER_TEST_POSTGRES_PASSWORD or LARDER_TEST_MARIADB_PASSWORD)");
  app.add_option("--sidecar", o.sidecar, "the larder-sidecar binary to run (default: this build's)");
  CLI11_PARSE(app, argc, argv);
  const bool pg = o.driver == "postgres";
  const char* env_url = std::getenv(pg ? "LARDER_TEST_POSTGRES_URL" : "LARDER_TEST_MARIADB_URL");
  const char* env_password = std::getenv(pg ? "LARDER_TEST_POSTGRES_PASSWORD" : "LARDER_TEST_MARIADB_PASSWORD");
  if (o.url.empty() && env_url != nullptr) o.url = env_url;
  if (o.password.empty() && env_password != nullptr) o.password = env_password;
  if (o.url.empty()) {
    std::fprintf(stderr, "larder-bench-database: no --url and no %s (%s)\n",
                 pg ? "LARDER_TEST_POSTGRES_URL" : "LARDER_TEST_MARIADB_URL",
                 pg ? "scripts/postgres.sh" : "scripts/mariadb.sh");
    return 2;
  }
  try {
    std::unique_ptr<Server> server;
    if (pg) {
      server = std::make_unique<Postgres>(o);
    } else {
      server = std::make_unique<Mariadb>(o);
    }
    const std::string table = fmt::format("larder_bench_{}", ::getpid());
    server->create_table(table, o.rows);
    std::printf(
        "| round | %s rows/s | sidecar rows/s (first apply) | ratio | sidecar rows/s (from exec) | sidecar CPU µs/row "
        "|\n",
        server->bare_name());
    std::printf("|---:|---:|---:|---:|---:|---:|\n");
    for (uint32_t r = 0; r < o.rounds; ++r) {
      const double bare = server->bare_rate(table, o.rows);
      const SidecarRun s = sidecar_rate(o, *server, table, fmt::format("larder-bench-db-{}-{}", ::getpid(), r));
      std::printf("| %u | %.0f | %.0f | %.2f | %.0f | %.2f |\n", r + 1, bare, s.rate_from_first,
                  s.rate_from_first / bare, s.rate_from_exec, s.cpu_us_per_row);
      std::fflush(stdout);
    }
    server->exec("DROP TABLE " + table);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "larder-bench-database: %s\n", e.what());
    return 1;
  }
  return 0;
}

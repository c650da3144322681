// larder-bench-database: the sidecar's database polling source against
// `COPY (query) TO STDOUT` of the same rows on the same PostgreSQL server.
//
// Once: creates a table of --rows rows (bigint id, text key, five feature
// columns, a timestamptz cursor, a soft-delete flag) on the server of
// --url (default LARDER_TEST_POSTGRES_URL; password --password or
// LARDER_TEST_POSTGRES_PASSWORD; scripts/postgres.sh starts one). Then,
// --rounds times, alternating:
//   copy     COPY (SELECT * FROM t ORDER BY updated_at, id) TO STDOUT read
//            with PQgetCopyData (each row's bytes counted, nothing parsed):
//            the floor of reading those rows from this server;
//   sidecar  a fresh larder-sidecar on its own segment polls the table
//            (page_rows --page) until every row is applied: timed from its
//            first applied update to the segment holding --rows keys
//            (Segment::info(), read every 100 µs), and from its exec.
// Prints a Markdown table with the ratio sidecar / copy in rows/s.
#include <fmt/format.h>
#include <libpq-fe.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>

#include "larder/client.h"
#include "larder/writer/writer.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Options {
  uint32_t rows = 200'000;
  uint32_t page = 5000;
  uint32_t rounds = 3;
  std::string url;
  std::string password;
  std::string sidecar = LARDER_SIDECAR_BINARY;
};

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

PGconn* connect(const Options& o) {
  const char* keys[] = {"dbname", "password", nullptr};
  const char* values[] = {o.url.c_str(), o.password.c_str(), nullptr};
  PGconn* c = PQconnectdbParams(keys, values, 1);
  if (PQstatus(c) != CONNECTION_OK) throw std::runtime_error(std::string("connect: ") + PQerrorMessage(c));
  return c;
}

void exec(PGconn* c, const std::string& sql) {
  PGresult* r = PQexec(c, sql.c_str());
  const ExecStatusType st = PQresultStatus(r);
  const std::string err = PQresultErrorMessage(r);
  PQclear(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) throw std::runtime_error("SQL: " + err);
}

// Rows per second of COPY (query) TO STDOUT.
double copy_rate(PGconn* c, const std::string& table, uint32_t rows) {
  const auto start = Clock::now();
  PGresult* r = PQexec(c, fmt::format("COPY (SELECT * FROM {} ORDER BY updated_at, id) TO STDOUT", table).c_str());
  if (PQresultStatus(r) != PGRES_COPY_OUT) throw std::runtime_error(PQresultErrorMessage(r));
  PQclear(r);
  uint64_t got = 0, bytes = 0;
  char* buf = nullptr;
  int n = 0;
  while ((n = PQgetCopyData(c, &buf, 0)) > 0) {
    ++got;
    bytes += static_cast<uint64_t>(n);
    PQfreemem(buf);
  }
  if (n == -2) throw std::runtime_error(PQerrorMessage(c));
  while ((r = PQgetResult(c)) != nullptr) PQclear(r);
  const double s = seconds_since(start);
  if (got != rows) throw std::runtime_error(fmt::format("COPY returned {} rows, not {}", got, rows));
  return rows / s;
}

struct SidecarRun {
  double rate_from_first = 0;  // rows/s from its first applied update
  double rate_from_exec = 0;   // rows/s from its exec (connect, check, segment creation included)
};

SidecarRun sidecar_rate(const Options& o, const std::string& table, const std::string& segment) {
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
  - driver: postgres
    url: "{url}"
    password_env: LARDER_BENCH_PASSWORD
    poll_interval: 1s
    tables:
      - {{table: users, query: "SELECT * FROM {table}", key: k, cursor: updated_at, tie: id, deleted: deleted,
          page_rows: {page}}}
logging: {{level: warn}}
metrics: {{enabled: false}}
)",
                                       fmt::arg("segment", segment), fmt::arg("capacity", o.rows + o.rows / 2),
                                       fmt::arg("url", o.url), fmt::arg("table", table), fmt::arg("page", o.page));
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
  const larder::Table users = seg.table("users");
  while (users.stats().live_keys < o.rows) std::this_thread::sleep_for(100us);
  SidecarRun run{o.rows / seconds_since(first), o.rows / seconds_since(exec_at)};
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
  if (const char* u = std::getenv("LARDER_TEST_POSTGRES_URL")) o.url = u;
  if (const char* p = std::getenv("LARDER_TEST_POSTGRES_PASSWORD")) o.password = p;
  CLI::App app("The database polling source against COPY TO STDOUT of the same rows");
  app.add_option("--rows", o.rows, "rows in the table")->check(CLI::Range(1u, 10'000'000u));
  app.add_option("--page", o.page, "the source's page_rows")->check(CLI::Range(1u, 100'000u));
  app.add_option("--rounds", o.rounds, "alternating rounds")->check(CLI::Range(1u, 100u));
  app.add_option("--url", o.url, "postgresql://user@host:port/db (default LARDER_TEST_POSTGRES_URL)");
  app.add_option("--password", o.password, "(default LARDER_TEST_POSTGRES_PASSWORD)");
  CLI11_PARSE(app, argc, argv);
  if (o.url.empty()) {
    std::fprintf(stderr, "larder-bench-database: no --url and no LARDER_TEST_POSTGRES_URL (scripts/postgres.sh)\n");
    return 2;
  }
  try {
    PGconn* c = connect(o);
    const std::string table = fmt::format("larder_bench_{}", ::getpid());
    exec(c, fmt::format(R"(CREATE TABLE {0} (id bigserial PRIMARY KEY, k text NOT NULL, n bigint,
  x double precision, f real, flag boolean, s text, updated_at timestamptz NOT NULL,
  deleted boolean NOT NULL DEFAULT false);
INSERT INTO {0} (k, n, x, f, flag, s, updated_at)
  SELECT 'k' || i, i, i * 0.25, i * 0.5, i % 2 = 0, 's' || i,
         timestamptz '2026-01-01 00:00:00+00' + (i / 4) * interval '1 millisecond'
  FROM generate_series(1, {1}) AS i;
CREATE INDEX ON {0} (updated_at, id);
ANALYZE {0})",
                        table, o.rows));
    std::printf(
        "| round | COPY TO STDOUT rows/s | sidecar rows/s (first apply) | ratio | sidecar rows/s (from exec) |\n");
    std::printf("|---:|---:|---:|---:|---:|\n");
    for (uint32_t r = 0; r < o.rounds; ++r) {
      const double copy = copy_rate(c, table, o.rows);
      const SidecarRun s = sidecar_rate(o, table, fmt::format("larder-bench-db-{}-{}", ::getpid(), r));
      std::printf("| %u | %.0f | %.0f | %.2f | %.0f |\n", r + 1, copy, s.rate_from_first, s.rate_from_first / copy,
                  s.rate_from_exec);
      std::fflush(stdout);
    }
    exec(c, "DROP TABLE " + table);
    PQfinish(c);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "larder-bench-database: %s\n", e.what());
    return 1;
  }
  return 0;
}

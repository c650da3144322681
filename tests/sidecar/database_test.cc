// The database polling source end to end (docs/sidecar.md, "Database
// polling"): the real larder-sidecar against the real PostgreSQL 15 server
// that scripts/postgres.sh starts (LARDER_TEST_POSTGRES_URL, _PASSWORD,
// _CTL). The reference is the database itself: after each step the test
// waits until the segment's table equals what a query of the source table
// says it must hold (rows, values, event times, soft deletes), an event, not
// a duration; every wait has a generous timeout.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <regex>
#include <string>
#include <vector>

#include "consume/sql/driver.h"
#include "larder/client.h"
#include "larder/writer/writer.h"
#include "sidecar/harness.h"

namespace larder::test {
namespace {

using namespace std::chrono_literals;

struct PgEnv {
  std::string url, password, ctl;
  // Records a failure naming the missing variable: no silent skip.
  static bool load(PgEnv* env) {
    const char* url = std::getenv("LARDER_TEST_POSTGRES_URL");
    const char* password = std::getenv("LARDER_TEST_POSTGRES_PASSWORD");
    const char* ctl = std::getenv("LARDER_TEST_POSTGRES_CTL");
    if (url == nullptr || password == nullptr || ctl == nullptr) {
      ADD_FAILURE() << "LARDER_TEST_POSTGRES_URL, _PASSWORD and _CTL must be set: run the tests with "
                       "scripts/test.sh, which starts a throwaway PostgreSQL (scripts/postgres.sh)";
      return false;
    }
    *env = PgEnv{url, password, ctl};
    return true;
  }
  bool control(const std::string& verb) const { return std::system((ctl + " " + verb).c_str()) == 0; }
};

// A libpq connection of the test's own.
class Db {
 public:
  explicit Db(const PgEnv& env) : env_(env) { connect(); }
  ~Db() {
    if (conn_ != nullptr) PQfinish(conn_);
  }
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;

  bool connect() {
    if (conn_ != nullptr) PQfinish(conn_);
    const char* keys[] = {"dbname", "password", nullptr};
    const char* values[] = {env_.url.c_str(), env_.password.c_str(), nullptr};
    conn_ = PQconnectdbParams(keys, values, 1);
    return PQstatus(conn_) == CONNECTION_OK;
  }
  // Runs `sql`; the test fails (and the result is empty) on an error.
  std::vector<std::vector<std::string>> query(const std::string& sql) {
    std::vector<std::vector<std::string>> rows;
    PGresult* r = PQexec(conn_, sql.c_str());
    const ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
      ADD_FAILURE() << "SQL failed: " << PQresultErrorMessage(r) << "\n" << sql.substr(0, 300);
    } else {
      for (int i = 0; i < PQntuples(r); ++i) {
        std::vector<std::string> row;
        for (int c = 0; c < PQnfields(r); ++c) row.emplace_back(PQgetisnull(r, i, c) ? "" : PQgetvalue(r, i, c));
        rows.push_back(std::move(row));
      }
    }
    PQclear(r);
    return rows;
  }

 private:
  const PgEnv& env_;
  PGconn* conn_ = nullptr;
};

class DatabaseSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    name_ = unique_name("pg" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    Writer::remove_segment(name_);
    ASSERT_TRUE(PgEnv::load(&env_));
    db_ = std::make_unique<Db>(env_);
    // Table names: the segment name's letters and digits.
    for (const char c : name_) table_ += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
    db_->query(fmt::format(R"(DROP TABLE IF EXISTS {0};
CREATE TABLE {0} (
  id bigserial PRIMARY KEY,
  k text NOT NULL UNIQUE,
  n bigint, x double precision, f real, flag boolean, s text,
  updated_at timestamptz NOT NULL,
  deleted boolean NOT NULL DEFAULT false))",
                           table_));
  }
  void TearDown() override {
    if (sidecar_ && HasFailure()) std::fprintf(stderr, "--- sidecar log tail:\n%s\n", sidecar_->log_tail().c_str());
    sidecar_.reset();
    if (db_) db_->query("DROP TABLE IF EXISTS " + table_);
    Writer::remove_segment(name_);
    ::unlink(("/dev/shm/" + name_ + ".lock").c_str());
  }

  std::string config(const std::string& top_level = "", uint32_t page_rows = 64,
                     const std::string& settle = "5s") const {
    return fmt::format(R"(segment: {{name: {}}}
tables:
  - name: users
    key_max_len: 32
    capacity: 20000
    event_time: {{max_future_skew: off, min_event_time: 0}}
    fields:
      - {{name: n, type: int64}}
      - {{name: x, type: float64}}
      - {{name: f, type: float32}}
      - {{name: flag, type: bool}}
      - {{name: s, type: string, max_len: 16}}
databases:
  - driver: postgres
    url: "{}"
    password_env: LARDER_IT_PASSWORD
    poll_interval: 50ms
    settle: {}
    reconnect: {{base_s: 0.05, cap_s: 0.5}}
    tables:
      - table: users
        query: SELECT * FROM {}
        key: k
        cursor: updated_at
        tie: id
        deleted: deleted
        page_rows: {}
{}
metrics: {{listen: "127.0.0.1:0"}}
)",
                       name_, env_.url, settle, table_, page_rows, top_level);
  }

  void start(const std::string& yaml) {
    BrokerEnv env;
    env.password = env_.password;
    sidecar_.reset();  // the previous one's files go first: the new one reuses their names
    sidecar_ = std::make_unique<SidecarProcess>(yaml, name_, env);
    sidecar_->start();
  }

  // Rows at base time + i ms; `ties` rows share each timestamp.
  void insert(int from, int to, int ties = 1, int64_t ms_base = 0) {
    std::string sql = fmt::format("INSERT INTO {} (k, n, x, f, flag, s, updated_at) VALUES ", table_);
    for (int i = from; i < to; ++i) {
      sql += fmt::format(
          "{}('k{}', {}, {}, {}, {}, 's{}', timestamptz '2026-01-01 00:00:00+00' + interval '{} milliseconds')",
          i == from ? "" : ",", i, i * 3, i * 0.25, i * 0.5, i % 2 == 0 ? "true" : "false", i, ms_base + i / ties);
    }
    db_->query(sql);
  }

  // "" when the segment's table equals the source table, else the first
  // differences. Soft-deleted rows must be absent.
  std::string compare() {
    Segment seg;
    try {
      seg = Segment::open(name_);
    } catch (const Error& e) {
      return std::string("no segment yet: ") + e.what();
    }
    const Table users = seg.table("users");
    const Field n = users.field("n"), x = users.field("x"), f = users.field("f"), flag = users.field("flag"),
                s = users.field("s");
    Row row = users.make_row();
    const auto rows = db_->query(fmt::format(
        "SELECT k, n, x, f, flag, s, deleted, floor(extract(epoch FROM updated_at) * 1000)::int8 FROM {}", table_));
    std::string diffs;
    size_t bad = 0, live = 0;
    for (const auto& r : rows) {
      const ReadResult got = users.get(r[0], row);
      std::string problem;
      if (r[6] == "t") {
        if (got.status != Status::kNotFound) problem = "soft-deleted, but the segment has it";
      } else {
        ++live;
        if (got.status != Status::kOk) {
          problem = std::string("missing: ") + status_name(got.status);
        } else if (got.event_time_ms != std::stoll(r[7])) {
          problem = fmt::format("event time {} vs {}", got.event_time_ms, r[7]);
        } else if (row.i64(n) != std::stoll(r[1]) || row.f64(x) != std::stod(r[2]) || row.f32(f) != std::stof(r[3]) ||
                   row.boolean(flag) != (r[4] == "t") || row.string(s) != r[5]) {
          problem = fmt::format("values differ (n {} vs {})", row.i64(n), r[1]);
        }
      }
      if (!problem.empty() && ++bad <= 5) diffs += fmt::format("\n  {}: {}", r[0], problem);
    }
    if (rows.empty()) return "the source table is empty";
    if (users.stats().live_keys != live) {
      diffs += fmt::format("\n  the segment holds {} keys, the table {} live rows", users.stats().live_keys, live);
    }
    if (bad > 0 || !diffs.empty()) return fmt::format("{} of {} rows differ:{}", bad, rows.size(), diffs);
    return "";
  }

  bool wait_equal(std::chrono::milliseconds timeout = 60s) {
    std::string last;
    const bool ok = wait_until(
        [&] {
          last = compare();
          return last.empty();
        },
        timeout);
    if (!ok) ADD_FAILURE() << "the segment never matched the table: " << last;
    return ok;
  }

  PgEnv env_;
  std::unique_ptr<Db> db_;
  std::string name_, table_;
  std::unique_ptr<SidecarProcess> sidecar_;
};

// Inserts (groups of 7 rows sharing a timestamp, read 64 rows a page so that
// pages end inside groups), then updates and soft deletes: the segment ends
// equal to the table, READY.
TEST_F(DatabaseSourceTest, InsertsUpdatesSoftDeletesAndTiesMatchTheTable) {
  insert(0, 1000, /*ties=*/7);
  start(config());
  ASSERT_TRUE(wait_equal());
  ASSERT_TRUE(wait_until([&] { return Segment::open(name_).sync().state == layout::SyncState::kReady; }, 30s));
  // Later changes: updates move rows to a newer cursor, some of them share it.
  db_->query(fmt::format(
      "UPDATE {} SET n = n + 1000000, s = 'upd', updated_at = timestamptz '2026-02-01 00:00:00+00' WHERE id % 5 = 0",
      table_));
  db_->query(fmt::format(
      "UPDATE {} SET deleted = true, updated_at = timestamptz '2026-02-02 00:00:00+00' + (id % 3) * interval '1 ms' "
      "WHERE id % 7 = 3",
      table_));
  insert(1000, 1100, /*ties=*/100, /*ms_base=*/40 * 86'400'000LL);
  ASSERT_TRUE(wait_equal());
  // A deleted row that comes back.
  db_->query(
      fmt::format("UPDATE {} SET deleted = false, n = 5, updated_at = timestamptz '2026-03-01 00:00:00+00' "
                  "WHERE k = 'k3'",
                  table_));
  ASSERT_TRUE(wait_equal());
  EXPECT_EQ(sidecar_->stop(), 0);
}

// Without a tie column, groups of 7 rows sharing a timestamp read 5 rows a
// page: a page ending inside a group is read again from that timestamp, a
// page of one timestamp doubles the next; nothing is missed.
TEST_F(DatabaseSourceTest, WithoutATieColumnGroupsLargerThanAPageAreRead) {
  insert(0, 300, /*ties=*/7);
  std::string yaml = config("", /*page_rows=*/5);
  yaml.replace(yaml.find("        tie: id\n"), 16, "");
  start(yaml);
  ASSERT_TRUE(wait_equal());
  db_->query(
      fmt::format("UPDATE {} SET n = -n, updated_at = timestamptz '2026-02-01 00:00:00+00' WHERE id < 40", table_));
  ASSERT_TRUE(wait_equal());
  EXPECT_EQ(sidecar_->stop(), 0);
}

// The classic trap: a transaction stamps its row, a later one commits first
// with a newer timestamp, then the first commits. Rows younger than the
// settle margin are not read yet, so the older row is still found (the
// first transaction commits well within the 10 s margin).
TEST_F(DatabaseSourceTest, SettleMarginSeesATransactionThatCommitsLate) {
  insert(0, 10);
  start(config("", 64, "10s"));
  ASSERT_TRUE(wait_equal());
  Db late(env_);
  late.query("BEGIN");
  late.query(
      fmt::format("INSERT INTO {} (k, n, x, f, flag, s, updated_at) "
                  "VALUES ('late', 1, 1, 1, true, 'late', clock_timestamp())",
                  table_));
  db_->query(
      fmt::format("INSERT INTO {} (k, n, x, f, flag, s, updated_at) "
                  "VALUES ('early', 2, 2, 2, false, 'early', clock_timestamp())",
                  table_));
  late.query("COMMIT");
  const auto order =
      db_->query(fmt::format("SELECT k FROM {} WHERE k IN ('late', 'early') ORDER BY updated_at", table_));
  ASSERT_EQ(order.size(), 2u);
  ASSERT_EQ(order[0][0], "late");  // committed last, stamped first
  ASSERT_TRUE(wait_equal());
  EXPECT_EQ(sidecar_->stop(), 0);
}

// READY means caught up to the server's clock minus `settle`, not to the
// clock: a row the margin holds back (here one stamped an hour ahead, so
// that it is held back for certain, however slow the start) does not keep
// the source CATCHING_UP, and is read once the bound passes its timestamp
// (here: once it is stamped back into the past), with no restart.
TEST_F(DatabaseSourceTest, ReadyDoesNotWaitForRowsInsideTheSettleMargin) {
  insert(0, 100);
  db_->query(
      fmt::format("INSERT INTO {} (k, n, x, f, flag, s, updated_at) "
                  "VALUES ('ahead', 7, 7, 7, true, 'ahead', clock_timestamp() + interval '1 hour')",
                  table_));
  start(config("", 64, "1s"));
  auto ready = [&] {
    try {
      return Segment::open(name_).sync().state == layout::SyncState::kReady;
    } catch (const Error&) {
      return false;  // not created yet
    }
  };
  ASSERT_TRUE(wait_until(ready, 60s)) << sidecar_->log_tail();
  {
    Segment seg = Segment::open(name_);
    const Table users = seg.table("users");
    Row row = users.make_row();
    EXPECT_EQ(users.stats().live_keys, 100u) << "READY before the rows below the bound were applied";
    EXPECT_FALSE(users.get("ahead", row).found()) << "a row inside the settle margin was read";
  }
  // The log says what READY covered (written just after the state).
  EXPECT_TRUE(wait_until([&] { return sidecar_->log_count("server's clock minus settle, 1000 ms") >= 1; }, 30s))
      << sidecar_->log_tail();
  db_->query(
      fmt::format("UPDATE {} SET updated_at = clock_timestamp() - interval '2 seconds' WHERE k = 'ahead'", table_));
  ASSERT_TRUE(wait_equal());
  EXPECT_TRUE(ready()) << "READY is kept while it reads on";
  EXPECT_EQ(sidecar_->stop(), 0);
}

// Half the rows, applied (the segment shows them), a SIGKILL, the rest and
// updates written while the sidecar is down, a restart: nothing lost, and
// the rows read again after the restart are read once, not on every poll.
TEST_F(DatabaseSourceTest, SigkillMidwayLosesNothingAndRepeatsNothingForever) {
  insert(0, 500, /*ties=*/3);
  start(config());
  ASSERT_TRUE(wait_equal());
  sidecar_->kill9();
  insert(500, 1000, /*ties=*/3);
  db_->query(
      fmt::format("UPDATE {} SET x = -1, updated_at = timestamptz '2026-02-01 00:00:00+00' WHERE id % 4 = 0", table_));
  start(config());
  ASSERT_TRUE(wait_equal());
  ASSERT_TRUE(sidecar_->log_count("resuming at cursor") >= 1) << sidecar_->log_tail();
  // Caught up: further polls read no row.
  const std::string rows = "larder_database_rows_polled_total{database=\"databases[0]\",table=\"users\"}";
  const std::string polls = "larder_database_polls_total{database=\"databases[0]\"}";
  ASSERT_TRUE(wait_until([&] { return Segment::open(name_).sync().state == layout::SyncState::kReady; }, 30s));
  const double rows_before = sidecar_->metric(rows), polls_before = sidecar_->metric(polls);
  ASSERT_GT(rows_before, 0);
  // Rows read after the restart: the 500 new ones, the updated ones, and at
  // most the group at the stored cursor again.
  EXPECT_LE(rows_before, 500 + 250 + 3);
  ASSERT_TRUE(wait_until([&] { return sidecar_->metric(polls) >= polls_before + 5; }, 30s));
  EXPECT_EQ(sidecar_->metric(rows), rows_before);
  EXPECT_EQ(sidecar_->stop(), 0);
}

// The server stops while the sidecar runs: the segment says DISCONNECTED; it
// comes back with new rows, and the sidecar reconnects and reads them.
TEST_F(DatabaseSourceTest, DatabaseRestartIsRidden) {
  insert(0, 300);
  start(config());
  ASSERT_TRUE(wait_equal());
  ASSERT_TRUE(env_.control("stop"));
  const bool disconnected =
      wait_until([&] { return Segment::open(name_).info().connection == ConnectionState::kDisconnected; }, 60s);
  ASSERT_TRUE(env_.control("start"));
  ASSERT_TRUE(disconnected) << "the segment never showed the connection lost";
  ASSERT_TRUE(wait_until([&] { return db_->connect(); }, 60s));
  insert(300, 600);
  ASSERT_TRUE(wait_equal());
  EXPECT_GE(sidecar_->log_count("reconnected to"), 1u);
  EXPECT_EQ(sidecar_->stop(), 0);
}

// An integer key column keys each row by its decimal text. The keys have 19
// digits, so their text is longer than a std::string keeps inline.
TEST_F(DatabaseSourceTest, AnIntegerKeyColumnKeysRowsByItsDecimalText) {
  constexpr int64_t kBase = 1'234'567'890'123'456'789;
  constexpr int kRows = 200;
  std::string sql = fmt::format("INSERT INTO {} (k, n, x, updated_at) VALUES ", table_);
  for (int i = 0; i < kRows; ++i) {
    sql += fmt::format("{}('k{}', {}, {}, timestamptz '2026-01-01 00:00:00+00' + interval '{} milliseconds')",
                       i == 0 ? "" : ",", i, kBase - i, i * 0.5, i);
  }
  db_->query(sql);
  std::string yaml = config();
  yaml.replace(yaml.find("key: k\n"), 7, "key: n\n");
  start(yaml);
  std::string last;
  const bool matched = wait_until(
      [&] {
        Segment seg;
        try {
          seg = Segment::open(name_);
        } catch (const Error& e) {
          last = e.what();
          return false;
        }
        const Table users = seg.table("users");
        const Field x = users.field("x");
        Row row = users.make_row();
        for (int i = 0; i < kRows; ++i) {
          const std::string key = std::to_string(kBase - i);
          if (users.get(key, row).status != Status::kOk) {
            last = key + " is missing";
            return false;
          }
          if (row.f64(x) != i * 0.5) {
            last = fmt::format("{}: x is {}, not {}", key, row.f64(x), i * 0.5);
            return false;
          }
        }
        if (users.stats().live_keys != kRows) {
          last = fmt::format("{} keys, not {}", users.stats().live_keys, kRows);
          return false;
        }
        return true;
      },
      60s);
  EXPECT_TRUE(matched) << last;
  EXPECT_EQ(sidecar_->stop(), 0);
}

// Bad configurations against the real server fail at start with the key
// path and the reason, exit code 2.
TEST_F(DatabaseSourceTest, BadColumnTypeUnknownColumnAndUnreachableServerFailAtStart) {
  insert(0, 10);
  struct Case {
    std::string yaml, expected;
  };
  std::string wrong_type = config();
  // s comes from a bigint column: a string field needs text.
  wrong_type.replace(wrong_type.find("SELECT * FROM " + table_), ("SELECT * FROM " + table_).size(),
                     fmt::format("SELECT id, k, n, x, f, flag, n AS s, updated_at, deleted FROM {}", table_));
  std::string unknown = config();
  unknown.replace(unknown.find("cursor: updated_at"), 18, "cursor: changed_at");
  std::string unreachable = config();
  const size_t port_at = unreachable.find("@127.0.0.1:") + 11;
  unreachable.replace(port_at, unreachable.find('/', port_at) - port_at, "1");
  const std::vector<Case> cases = {
      {wrong_type,
       "databases[0].tables[0]: column \"s\" is bigint, but field \"s\" of table \"users\" needs a text "
       "column"},
      {unknown, "databases[0].tables[0].cursor: the query has no column \"changed_at\""},
      {unreachable, "databases[0].url: cannot connect to postgresql://127.0.0.1:1/"},
  };
  for (const Case& c : cases) {
    start(c.yaml);
    EXPECT_EQ(sidecar_->wait_exit(60s), 2);
    EXPECT_GE(sidecar_->log_count(c.expected), 1u) << sidecar_->log_tail();
  }
}

// The driver's binary cells, type by type, against values the server
// itself computes: integers of every width (and an unsigned oid), floats
// with NaN and infinities, booleans, text, "char", bytea (raw bytes),
// jsonb (its version byte dropped), timestamps with and without zone at
// the ends of years 1-9999 and before 1970, and NULL; a timestamp at
// infinity is refused with the column's name.
TEST(PostgresDriverTest, BinaryCellsOfEveryReadType) {
  PgEnv env;
  ASSERT_TRUE(PgEnv::load(&env));
  auto c = sidecar::sql::make_postgres_connection({.url = env.url, .password = env.password});
  ASSERT_TRUE(c->connect()) << c->error();
  const std::string select = R"(SELECT * FROM (VALUES
  (1, -2::int2, -70000::int4, -5000000000::int8, 4294967295::oid, 1.5::float4, -0.1::float8, true,
   'héllo'::text, 'v'::varchar(4), 'c'::"char", '\x00ff41'::bytea, '{"a": 1}'::jsonb,
   '0001-01-01 00:00:00'::timestamp, '1969-12-31 23:59:59.999999+00'::timestamptz),
  (2, NULL, NULL, NULL, NULL, 'NaN'::float4, '-Infinity'::float8, false, '', NULL, NULL, ''::bytea, NULL,
   '9999-12-31 23:59:59.999999'::timestamp, '2026-01-02 03:04:05.678901+00'::timestamptz),
  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   'infinity'::timestamp, NULL)
) AS v(id, i2, i4, i8, o, f4, f8, b, t, vc, ch, by, jb, ts, tz))";
  sidecar::sql::CursorQuery q;
  q.select = select;
  q.cursor_column = "id";
  q.cursor_type = sidecar::sql::ColumnType::kInt;
  std::unique_ptr<sidecar::sql::Result> r = c->poll(q);
  ASSERT_NE(r, nullptr) << c->error();
  ASSERT_EQ(r->rows(), 3u);
  std::string error;
  auto cell = [&](size_t row, size_t col) {
    sidecar::sql::Cell out;
    EXPECT_TRUE(r->cell(row, col, &out, &error)) << "row " << row << " column " << col << ": " << error;
    return out;
  };
  EXPECT_EQ(cell(0, 0).i, 1);
  EXPECT_EQ(cell(0, 1).i, -2);
  EXPECT_EQ(cell(0, 2).i, -70000);
  EXPECT_EQ(cell(0, 3).i, -5000000000LL);
  EXPECT_EQ(cell(0, 4).i, 4294967295LL);
  EXPECT_EQ(cell(0, 5).f, 1.5);
  EXPECT_EQ(cell(0, 6).f, -0.1);
  EXPECT_EQ(cell(0, 7).i, 1);
  EXPECT_EQ(cell(0, 8).s, "héllo");
  EXPECT_EQ(cell(0, 9).s, "v");
  EXPECT_EQ(cell(0, 10).s, "c");
  EXPECT_EQ(cell(0, 11).s, std::string_view("\0\xff"
                                            "A",
                                            3));
  EXPECT_EQ(cell(0, 12).s, R"({"a": 1})");
  EXPECT_EQ(cell(0, 13).i, -62135596800LL * 1'000'000);
  EXPECT_EQ(cell(0, 14).i, -1);
  EXPECT_TRUE(std::isnan(cell(1, 5).f));
  EXPECT_EQ(cell(1, 6).f, -std::numeric_limits<double>::infinity());
  EXPECT_EQ(cell(1, 7).i, 0);
  EXPECT_EQ(cell(1, 8).s, "");
  EXPECT_FALSE(cell(1, 8).null);
  EXPECT_TRUE(cell(1, 9).null);
  EXPECT_EQ(cell(1, 11).s, "");
  EXPECT_EQ(cell(1, 13).i, 253402300799999999LL);
  EXPECT_EQ(cell(1, 14).i, 1767323045678901LL);
  for (size_t col = 1; col <= 12; ++col) EXPECT_TRUE(cell(2, col).null) << "column " << col;
  sidecar::sql::Cell inf;
  EXPECT_FALSE(r->cell(2, 13, &inf, &error));
  EXPECT_NE(error.find("column \"ts\""), std::string::npos) << error;
}

}  // namespace
}  // namespace larder::test

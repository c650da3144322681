// The database polling source end to end on MariaDB (docs/sidecar.md,
// "Database polling"): the real larder-sidecar against the real MariaDB
// server that scripts/mariadb.sh starts (LARDER_TEST_MARIADB_URL, _PASSWORD,
// _CTL). The reference is the database itself: after each step the test
// waits until the segment's table equals what a query of the source table
// says it must hold (rows, values, event times, soft deletes), an event, not
// a duration; every wait has a generous timeout.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "larder/client.h"
#include "larder/writer/writer.h"
#include "sidecar/harness.h"
#include "sidecar/mariadb_env.h"

namespace larder::test {
namespace {

using namespace std::chrono_literals;

class MariadbSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    name_ = unique_name("my" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    Writer::remove_segment(name_);
    ASSERT_TRUE(MariadbEnv::load(&env_));
    db_ = std::make_unique<MariadbAdmin>(env_);
    // Table names: the segment name's letters and digits.
    for (const char c : name_) table_ += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
    // MariaDB's own types: BOOL (TINYINT(1)) flags, FLOAT, TIMESTAMP(6).
    db_->exec(fmt::format("DROP TABLE IF EXISTS `{}`", table_));
    db_->exec(fmt::format(R"(CREATE TABLE `{}` (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  k VARCHAR(32) NOT NULL UNIQUE,
  n BIGINT, x DOUBLE, f FLOAT, flag BOOL, s VARCHAR(64),
  updated_at TIMESTAMP(6) NOT NULL,
  deleted BOOL NOT NULL DEFAULT FALSE,
  KEY (updated_at, id)))",
                          table_));
  }
  void TearDown() override {
    if (sidecar_ && HasFailure()) std::fprintf(stderr, "--- sidecar log tail:\n%s\n", sidecar_->log_tail().c_str());
    sidecar_.reset();
    if (db_) db_->exec(fmt::format("DROP TABLE IF EXISTS `{}`", table_));
    Writer::remove_segment(name_);
    ::unlink(("/dev/shm/" + name_ + ".lock").c_str());
  }

  std::string config(const std::string& query = "", uint32_t page_rows = 64) const {
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
  - driver: mariadb
    url: "{}"
    password_env: LARDER_IT_PASSWORD
    poll_interval: 50ms
    reconnect: {{base_s: 0.05, cap_s: 0.5}}
    tables:
      - table: users
        query: "{}"
        key: k
        cursor: updated_at
        tie: id
        deleted: deleted
        page_rows: {}
metrics: {{listen: "127.0.0.1:0"}}
)",
                       name_, env_.url, query.empty() ? fmt::format("SELECT * FROM `{}`", table_) : query, page_rows);
  }

  void start(const std::string& yaml) {
    BrokerEnv env;
    env.password = env_.password;
    // The previous process first: its destructor removes the config file,
    // whose name the next one reuses.
    sidecar_.reset();
    sidecar_ = std::make_unique<SidecarProcess>(yaml, name_, env);
    sidecar_->start();
  }

  // Rows at base time + i ms; `ties` rows share each timestamp. f takes
  // values a FLOAT's six printed digits would round.
  void insert(int from, int to, int ties = 1, int64_t ms_base = 0) {
    std::string sql = fmt::format("INSERT INTO `{}` (k, n, x, f, flag, s, updated_at) VALUES ", table_);
    for (int i = from; i < to; ++i) {
      sql += fmt::format("{}('k{}', {}, {}, {}, {}, 's{}', TIMESTAMP'2026-01-01 00:00:00' + INTERVAL {} MICROSECOND)",
                         i == from ? "" : ",", i, i * 3, i * 0.25, 1234567.0 + i * 0.125, i % 2 == 0 ? "TRUE" : "FALSE",
                         i, (ms_base + i / ties) * 1000);
    }
    db_->exec(sql);
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
    const auto rows =
        db_->rows(fmt::format("SELECT k, n, x, CAST(f AS DOUBLE), flag, s, deleted, "
                              "CAST(FLOOR(UNIX_TIMESTAMP(updated_at) * 1000) AS SIGNED) FROM `{}`",
                              table_));
    std::string diffs;
    size_t bad = 0, live = 0;
    for (const auto& r : rows) {
      const ReadResult got = users.get(r[0], row);
      std::string problem;
      if (r[6] == "1") {
        if (got.status != Status::kNotFound) problem = "soft-deleted, but the segment has it";
      } else {
        ++live;
        if (got.status != Status::kOk) {
          problem = std::string("missing: ") + status_name(got.status);
        } else if (got.event_time_ms != std::stoll(r[7])) {
          problem = fmt::format("event time {} vs {}", got.event_time_ms, r[7]);
        } else if (row.i64(n) != std::stoll(r[1]) || row.f64(x) != std::stod(r[2]) ||
                   row.f32(f) != static_cast<float>(std::stod(r[3])) || row.boolean(flag) != (r[4] == "1") ||
                   row.string(s) != r[5]) {
          problem = fmt::format("values differ (n {} vs {}, f {} vs {})", row.i64(n), r[1], row.f32(f), r[3]);
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

  MariadbEnv env_;
  std::unique_ptr<MariadbAdmin> db_;
  std::string name_, table_;
  std::unique_ptr<SidecarProcess> sidecar_;
};

// Inserts (groups of 7 rows sharing a timestamp, read 64 rows a page so that
// pages end inside groups), then updates and soft deletes: the segment ends
// equal to the table, READY.
TEST_F(MariadbSourceTest, InsertsUpdatesSoftDeletesAndTiesMatchTheTable) {
  insert(0, 1000, /*ties=*/7);
  start(config());
  ASSERT_TRUE(wait_equal());
  ASSERT_TRUE(wait_until([&] { return Segment::open(name_).sync().state == layout::SyncState::kReady; }, 30s));
  db_->exec(
      fmt::format("UPDATE `{}` SET n = n + 1000000, s = 'upd', f = -0.1, updated_at = TIMESTAMP'2026-02-01 00:00:00' "
                  "WHERE id % 5 = 0",
                  table_));
  db_->exec(
      fmt::format("UPDATE `{}` SET deleted = TRUE, updated_at = TIMESTAMP'2026-02-02 00:00:00' + "
                  "INTERVAL (id % 3) * 1000 MICROSECOND WHERE id % 7 = 3",
                  table_));
  insert(1000, 1100, /*ties=*/100, /*ms_base=*/40 * 86'400'000LL);
  ASSERT_TRUE(wait_equal());
  // A deleted row that comes back.
  db_->exec(fmt::format(
      "UPDATE `{}` SET deleted = FALSE, n = 5, updated_at = TIMESTAMP'2026-03-01 00:00:00' WHERE k = 'k3'", table_));
  ASSERT_TRUE(wait_equal());
  EXPECT_EQ(sidecar_->stop(), 0);
}

// Half the rows, applied (the segment shows them), a SIGKILL, the rest and
// updates written while the sidecar is down, a restart: nothing lost, and
// the rows read again after the restart are read once, not on every poll.
TEST_F(MariadbSourceTest, SigkillMidwayLosesNothingAndRepeatsNothingForever) {
  insert(0, 500, /*ties=*/3);
  start(config());
  ASSERT_TRUE(wait_equal());
  sidecar_->kill9();
  insert(500, 1000, /*ties=*/3);
  db_->exec(
      fmt::format("UPDATE `{}` SET x = -1, updated_at = TIMESTAMP'2026-02-01 00:00:00' WHERE id % 4 = 0", table_));
  start(config());
  ASSERT_TRUE(wait_equal());
  ASSERT_TRUE(sidecar_->log_count("resuming at cursor") >= 1) << sidecar_->log_tail();
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

// Killed inside the writer at a chosen crash point (LARDER_TEST_CRASH_AT:
// the process SIGKILLs itself mid-update, so the kill lands mid-poll with
// certainty), then restarted without the hook, three times at different
// points: each restart repairs the segment, resumes at the stored cursor, and
// the table ends equal to the database.
TEST_F(MariadbSourceTest, KilledAtWriterCrashPointsMidPollResumesExactly) {
  insert(0, 1000, /*ties=*/5);
  for (const long crash_at : {5L, 1500L, 4000L}) {
    ::setenv("LARDER_TEST_CRASH_AT", std::to_string(crash_at).c_str(), 1);
    start(config());
    ::unsetenv("LARDER_TEST_CRASH_AT");
    ASSERT_TRUE(wait_until([&] { return !sidecar_->running(); }, 60s))
        << "the sidecar did not reach crash point " << crash_at << "\n"
        << sidecar_->log_tail();
    ASSERT_EQ(sidecar_->stop(), 128 + SIGKILL) << sidecar_->log_tail();
    // Mid-way: the run died with rows still to apply.
    ASSERT_NE(compare(), "") << "crash point " << crash_at << " came after the last row";
    start(config());
    ASSERT_TRUE(wait_equal()) << "after the kill at crash point " << crash_at;
    EXPECT_GE(sidecar_->log_count("resuming at cursor"), crash_at == 5 ? 0u : 1u) << sidecar_->log_tail();
    EXPECT_EQ(sidecar_->stop(), 0);
    // More rows and updates for the next round to be killed in.
    db_->exec(fmt::format("UPDATE `{}` SET n = n + 1, updated_at = updated_at + INTERVAL 1 DAY", table_));
  }
}

// The server stops while the sidecar runs: the segment says DISCONNECTED; it
// comes back with new rows, and the sidecar reconnects and reads them.
TEST_F(MariadbSourceTest, DatabaseRestartIsRidden) {
  insert(0, 300);
  start(config());
  ASSERT_TRUE(wait_equal());
  db_.reset();
  ASSERT_TRUE(env_.run_ctl("stop"));
  const bool disconnected =
      wait_until([&] { return Segment::open(name_).info().connection == ConnectionState::kDisconnected; }, 60s);
  ASSERT_TRUE(env_.run_ctl("start"));
  ASSERT_TRUE(disconnected) << "the segment never showed the connection lost";
  db_ = std::make_unique<MariadbAdmin>(env_);
  insert(300, 600);
  ASSERT_TRUE(wait_equal());
  EXPECT_GE(sidecar_->log_count("reconnected to"), 1u);
  EXPECT_EQ(sidecar_->stop(), 0);
}

// Bad configurations against the real server fail at start with the key
// path and the reason, exit code 2.
TEST_F(MariadbSourceTest, BadColumnTypeUnknownColumnAndUnreachableServerFailAtStart) {
  insert(0, 10);
  struct Case {
    std::string yaml, expected;
  };
  const std::string columns = "id, k, n, x, f, flag, s, updated_at, deleted";
  auto with = [&](const std::string& from, const std::string& to) {
    return config(fmt::format(
        "SELECT {} FROM `{}`",
        [&] {
          std::string c = columns;
          c.replace(c.find(from), from.size(), to);
          return c;
        }(),
        table_));
  };
  std::string unknown = config();
  unknown.replace(unknown.find("cursor: updated_at"), 18, "cursor: changed_at");
  std::string unreachable = config();
  const size_t port_at = unreachable.find("@127.0.0.1:") + 11;
  unreachable.replace(port_at, unreachable.find('/', port_at) - port_at, "1");
  const std::vector<Case> cases = {
      // s from a BIGINT column: a string field needs text.
      {with(" s,", " n AS s,"), "databases[0].tables[0]: column \"s\" is BIGINT, but field \"s\" of table \"users\""},
      // An exact DECIMAL is not a float64.
      {with(" x,", " CAST(x AS DECIMAL(20,4)) AS x,"),
       "databases[0].tables[0]: column \"x\" is DECIMAL, but field \"x\" of table \"users\""},
      {unknown, "databases[0].tables[0].cursor: the query has no column \"changed_at\""},
      {unreachable, "cannot connect to 127.0.0.1:1"},
  };
  for (const Case& c : cases) {
    start(c.yaml);
    EXPECT_EQ(sidecar_->wait_exit(60s), 2);
    EXPECT_GE(sidecar_->log_count(c.expected), 1u) << sidecar_->log_tail();
  }
}

// examples/database/mariadb.sql run as written by the mariadb client, and
// examples/database/mariadb.yaml with only the segment name, the URL and the
// password variable changed: the segment ends as the script leaves the table.
TEST_F(MariadbSourceTest, ExampleScriptAndConfig) {
  auto read = [](const std::string& path) {
    std::ifstream in(std::string(LARDER_SOURCE_DIR) + "/" + path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  std::string why;
  const auto url = sidecar::sql::mariadb::parse_url(env_.url, &why);
  ASSERT_TRUE(url) << why;
  db_->exec("DROP TABLE IF EXISTS user_profile");
  const std::string client = fmt::format(
      "MYSQL_PWD='{}' mariadb --no-defaults --protocol=tcp -h{} -P{} -u{} {} < {}/examples/database/mariadb.sql",
      env_.password, url->host, url->port, url->user, url->database, LARDER_SOURCE_DIR);
  ASSERT_EQ(std::system(client.c_str()), 0) << client;

  std::string yaml = read("examples/database/mariadb.yaml");
  auto replace = [&](const std::string& from, const std::string& to) {
    const size_t at = yaml.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    yaml.replace(at, from.size(), to);
  };
  replace("name: reference", "name: " + name_);
  replace("mysql://larder@127.0.0.1:3306/features", env_.url);
  replace("password_env: LARDER_DB_PASSWORD", "password_env: LARDER_IT_PASSWORD");
  yaml += "metrics: {listen: \"127.0.0.1:0\"}\n";
  start(yaml);
  struct Want {
    const char* key;
    const char* plan;
    double limit;
    int64_t orders;
    bool verified;
  };
  const Want want[] = {
      {"user:1", "pro", 500, 0, false}, {"user:2", "pro", 2500, 14, true}, {"user:3", "pro", 1200.5, 3, true}};
  // "" once the segment holds what the script left: three users as written
  // last, user:4 soft-deleted. The rows are only seconds old, so they are
  // read once the settle margin has passed.
  auto differences = [&]() -> std::string {
    Segment seg;
    try {
      seg = Segment::open(name_);
    } catch (const Error& e) {
      return std::string("no segment yet: ") + e.what();
    }
    const Table users = seg.table("users");
    const Field plan = users.field("plan"), limit = users.field("credit_limit"), orders = users.field("orders_30d"),
                verified = users.field("verified");
    Row row = users.make_row();
    for (const Want& w : want) {
      if (users.get(w.key, row).status != Status::kOk) return fmt::format("{} missing", w.key);
      if (row.string(plan) != w.plan || row.f64(limit) != w.limit || row.i64(orders) != w.orders ||
          row.boolean(verified) != w.verified) {
        return fmt::format("{}: plan {}, limit {}, orders {}, verified {}", w.key, row.string(plan), row.f64(limit),
                           row.i64(orders), row.boolean(verified));
      }
    }
    if (users.get("user:4", row).status != Status::kNotFound) return "user:4 is present";
    if (users.stats().live_keys != 3) return fmt::format("{} keys, not 3", users.stats().live_keys);
    return "";
  };
  std::string last;
  EXPECT_TRUE(wait_until(
      [&] {
        last = differences();
        return last.empty();
      },
      60s))
      << last;
  EXPECT_EQ(sidecar_->stop(), 0);
  db_->exec("DROP TABLE IF EXISTS user_profile");
}

}  // namespace
}  // namespace larder::test

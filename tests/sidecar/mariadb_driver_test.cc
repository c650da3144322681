// The MariaDB/MySQL driver (consume/sql/mariadb_driver.cc) against the real
// server that scripts/mariadb.sh starts: column types, cursor order and ties,
// paging, NULLs, values the driver must refuse, a server restart, and
// connections that cannot succeed. Each test works in tables of its own.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "consume/sql/driver.h"
#include "sidecar/mariadb_env.h"

namespace larder::sidecar::sql {
namespace {

using test::MariadbAdmin;
using test::MariadbEnv;

class MariadbDriver : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!MariadbEnv::load(&env_)) GTEST_FAIL() << "no test server";
    admin_ = std::make_unique<MariadbAdmin>(env_);
    table_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    admin_->exec("DROP TABLE IF EXISTS `" + table_ + "`");
  }

  std::unique_ptr<Connection> connect(std::string url = "") {
    auto c = make_mariadb_connection({.url = url.empty() ? env_.url : url, .password = env_.password});
    EXPECT_TRUE(c->connect()) << c->error();
    return c;
  }

  // Every row's (cursor, tie) cells of `r`, in order.
  static std::vector<std::pair<int64_t, int64_t>> keys(const Result& r, size_t cursor_col, size_t tie_col) {
    std::vector<std::pair<int64_t, int64_t>> out;
    for (size_t i = 0; i < r.rows(); ++i) {
      Cell c, t;
      std::string error;
      EXPECT_TRUE(r.cell(i, cursor_col, &c, &error)) << error;
      EXPECT_TRUE(r.cell(i, tie_col, &t, &error)) << error;
      out.emplace_back(c.i, t.i);
    }
    return out;
  }

  MariadbEnv env_;
  std::unique_ptr<MariadbAdmin> admin_;
  std::string table_;
};

TEST_F(MariadbDriver, DescribeMapsEveryColumnType) {
  admin_->exec("CREATE TABLE `" + table_ +
               "` (c_tiny TINYINT, c_bool BOOL, c_bit1 BIT(1), c_bit8 BIT(8), c_small SMALLINT, c_medium MEDIUMINT,"
               " c_int INT, c_big BIGINT, c_ubig BIGINT UNSIGNED, c_year YEAR, c_float FLOAT, c_double DOUBLE,"
               " c_decimal DECIMAL(10,2), c_char CHAR(3), c_varchar VARCHAR(20), c_text TEXT, c_json JSON,"
               " c_enum ENUM('a','b'), c_set SET('x','y'), c_binary BINARY(4), c_varbinary VARBINARY(8), c_blob BLOB,"
               " c_datetime DATETIME, c_datetime6 DATETIME(6), c_timestamp TIMESTAMP(3) NULL, c_date DATE,"
               " c_time TIME, c_point POINT)");
  auto c = connect();
  std::vector<ColumnInfo> cols;
  ASSERT_TRUE(c->describe("SELECT * FROM `" + table_ + "`", &cols)) << c->error();
  const std::vector<std::tuple<std::string, ColumnType, std::string>> want = {
      {"c_tiny", ColumnType::kInt, "TINYINT"},
      {"c_bool", ColumnType::kBool, "TINYINT(1)"},
      {"c_bit1", ColumnType::kBool, "BIT(1)"},
      {"c_bit8", ColumnType::kOther, "BIT(8)"},
      {"c_small", ColumnType::kInt, "SMALLINT"},
      {"c_medium", ColumnType::kInt, "MEDIUMINT"},
      {"c_int", ColumnType::kInt, "INT"},
      {"c_big", ColumnType::kInt, "BIGINT"},
      {"c_ubig", ColumnType::kInt, "BIGINT UNSIGNED"},
      {"c_year", ColumnType::kInt, "YEAR"},
      {"c_float", ColumnType::kFloat, "FLOAT"},
      {"c_double", ColumnType::kFloat, "DOUBLE"},
      {"c_decimal", ColumnType::kOther, "DECIMAL"},
      {"c_char", ColumnType::kText, "CHAR"},
      {"c_varchar", ColumnType::kText, "VARCHAR"},
      {"c_text", ColumnType::kText, "TEXT"},
      {"c_json", ColumnType::kText, "TEXT"},
      {"c_enum", ColumnType::kText, "ENUM"},
      {"c_set", ColumnType::kText, "SET"},
      {"c_binary", ColumnType::kBytes, "BINARY"},
      {"c_varbinary", ColumnType::kBytes, "VARBINARY"},
      {"c_blob", ColumnType::kBytes, "BLOB"},
      {"c_datetime", ColumnType::kTimestamp, "DATETIME"},
      {"c_datetime6", ColumnType::kTimestamp, "DATETIME(6)"},
      {"c_timestamp", ColumnType::kTimestamp, "TIMESTAMP(3)"},
      {"c_date", ColumnType::kOther, "DATE"},
      {"c_time", ColumnType::kOther, "TIME"},
      {"c_point", ColumnType::kOther, "GEOMETRY"},
  };
  ASSERT_EQ(cols.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(cols[i].name, std::get<0>(want[i]));
    EXPECT_EQ(cols[i].type, std::get<1>(want[i])) << cols[i].name << " (" << cols[i].server_type << ")";
    EXPECT_EQ(cols[i].server_type, std::get<2>(want[i])) << cols[i].name;
  }
  // describe reads no rows: an expression's alias and type come through too.
  ASSERT_TRUE(c->describe("SELECT c_int + 1 AS plus_one, UTC_TIMESTAMP(6) AS now FROM `" + table_ + "`;", &cols))
      << c->error();
  ASSERT_EQ(cols.size(), 2u);
  EXPECT_EQ(cols[0].name, "plus_one");
  EXPECT_EQ(cols[0].type, ColumnType::kInt);
  EXPECT_EQ(cols[1].type, ColumnType::kTimestamp);
}

TEST_F(MariadbDriver, CellsOfEveryMappedTypeAndNulls) {
  admin_->exec("CREATE TABLE `" + table_ +
               "` (id INT PRIMARY KEY, b BOOL, bit1 BIT(1), i BIGINT, u BIGINT UNSIGNED, f DOUBLE, s VARCHAR(20),"
               " bin VARBINARY(8), ts DATETIME(6))");
  admin_->exec("INSERT INTO `" + table_ +
               "` VALUES (1, TRUE, b'1', -9223372036854775808, 9223372036854775807, -2.5e-05, 'h\xc3\xa9', "
               "x'00FF0A', '2024-02-29 12:34:56.000007'),"
               " (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL), (3, 0, b'0', 0, 0, 0, '', '', "
               "'1969-12-31 23:59:59.999999')");
  auto c = connect();
  auto r = c->poll({.select = "SELECT * FROM `" + table_ + "`", .cursor_column = "id"});
  ASSERT_TRUE(r) << c->error();
  ASSERT_EQ(r->rows(), 3u);
  ASSERT_EQ(r->columns().size(), 9u);
  Cell cell;
  std::string error;
  auto at = [&](size_t row, size_t col) {
    EXPECT_TRUE(r->cell(row, col, &cell, &error)) << error;
    return cell;
  };
  EXPECT_EQ(at(0, 1).i, 1);
  EXPECT_EQ(at(0, 2).i, 1);
  EXPECT_EQ(at(0, 3).i, INT64_MIN);
  EXPECT_EQ(at(0, 4).i, INT64_MAX);
  EXPECT_EQ(at(0, 5).f, -2.5e-05);
  EXPECT_EQ(at(0, 6).s, "h\xc3\xa9");
  EXPECT_EQ(at(0, 7).s, std::string_view("\x00\xff\x0a", 3));
  EXPECT_EQ(at(0, 8).i, int64_t{1709210096} * 1'000'000 + 7);
  for (size_t col = 1; col < 9; ++col) {
    EXPECT_TRUE(at(1, col).null) << col;
    EXPECT_FALSE(at(0, col).null) << col;
    EXPECT_FALSE(at(2, col).null) << col;
  }
  EXPECT_EQ(at(2, 1).i, 0);
  EXPECT_EQ(at(2, 2).i, 0);
  EXPECT_EQ(at(2, 6).s, "");
  EXPECT_EQ(at(2, 7).s, "");
  EXPECT_EQ(at(2, 8).i, -1);
}

// The text protocol prints a FLOAT with 6 significant digits; the driver
// reads FLOAT columns as DOUBLE so that the value is the stored one.
TEST_F(MariadbDriver, FloatColumnsKeepEveryDigit) {
  admin_->exec("CREATE TABLE `" + table_ + "` (id INT PRIMARY KEY, f FLOAT, g FLOAT, d DOUBLE)");
  admin_->exec("INSERT INTO `" + table_ +
               "` VALUES (1, 1234567.9, -3.4028234e38, 0.1), (2, NULL, 16777217, 1.7976931348623157e308)");
  auto c = connect();
  const std::string select = "SELECT * FROM `" + table_ + "`";
  auto r = c->poll({.select = select, .cursor_column = "id"});
  ASSERT_TRUE(r) << c->error();
  ASSERT_EQ(r->rows(), 2u);
  Cell cell;
  std::string error;
  auto f = [&](size_t row, size_t col) {
    EXPECT_TRUE(r->cell(row, col, &cell, &error)) << error;
    EXPECT_EQ(r->columns()[col].type, ColumnType::kFloat);
    return cell.f;
  };
  EXPECT_EQ(f(0, 1), static_cast<double>(1234567.9f));
  EXPECT_EQ(f(0, 2), static_cast<double>(-3.4028234e38f));
  EXPECT_EQ(f(1, 2), 16777216.0);
  EXPECT_EQ(f(0, 3), 0.1);
  EXPECT_EQ(f(1, 3), 1.7976931348623157e308);
  ASSERT_TRUE(r->cell(1, 1, &cell, &error)) << error;
  EXPECT_TRUE(cell.null);
  EXPECT_EQ(r->columns()[1].name, "f");

  // The table changes under the driver: the poll that finds its columns
  // gone fails, and the next one reads the new columns.
  admin_->exec("ALTER TABLE `" + table_ + "` DROP COLUMN g, ADD COLUMN h FLOAT DEFAULT 2.5");
  EXPECT_FALSE(c->poll({.select = select, .cursor_column = "id"}));
  EXPECT_TRUE(c->connected());
  r = c->poll({.select = select, .cursor_column = "id"});
  ASSERT_TRUE(r) << c->error();
  ASSERT_EQ(r->columns().size(), 4u);
  EXPECT_EQ(r->columns()[3].name, "h");
  EXPECT_EQ(f(1, 3), 2.5);
}

TEST_F(MariadbDriver, PollOrdersByCursorThenTieAndPages) {
  admin_->exec("CREATE TABLE `" + table_ + "` (id BIGINT PRIMARY KEY, version BIGINT NOT NULL, v INT)");
  // Inserted out of order, with runs of equal cursors longer than a page.
  std::vector<std::pair<int64_t, int64_t>> want;  // (version, id)
  std::string values;
  for (int64_t id = 40; id >= 1; --id) {
    int64_t version = (id * 7) % 9;  // 0..8, several ids each
    values += (values.empty() ? "(" : ",(") + std::to_string(id) + "," + std::to_string(version) + ",0)";
    want.emplace_back(version, id);
  }
  std::sort(want.begin(), want.end());
  admin_->exec("INSERT INTO `" + table_ + "` VALUES " + values);
  auto c = connect();
  const std::string select = "SELECT id, version FROM `" + table_ + "`";

  auto all = c->poll({.select = select, .cursor_column = "version", .tie_column = "id", .limit = 100});
  ASSERT_TRUE(all) << c->error();
  std::vector<std::pair<int64_t, int64_t>> got;
  for (auto [id, version] : keys(*all, 0, 1)) got.emplace_back(version, id);
  EXPECT_EQ(got, want);

  // Pages of 3 from the last (cursor, tie) seen: the same rows, each once,
  // though a page often ends inside a run of equal versions.
  std::vector<std::pair<int64_t, int64_t>> paged;
  CursorQuery q{.select = select, .cursor_column = "version", .tie_column = "id", .limit = 3};
  for (int pages = 0; pages < 100; ++pages) {
    auto page = c->poll(q);
    ASSERT_TRUE(page) << c->error();
    if (page->rows() == 0) break;
    EXPECT_LE(page->rows(), 3u);
    for (auto [id, version] : keys(*page, 0, 1)) paged.emplace_back(version, id);
    q.after_cursor = paged.back().first;
    q.after_tie = paged.back().second;
  }
  EXPECT_EQ(paged, want);

  // before_cursor: only versions below 4, still after the cursor given.
  q = {.select = select,
       .cursor_column = "version",
       .tie_column = "id",
       .after_cursor = 1,
       .after_tie = 0,
       .before_cursor = 4,
       .limit = 100};
  auto bounded = c->poll(q);
  ASSERT_TRUE(bounded) << c->error();
  std::vector<std::pair<int64_t, int64_t>> want_bounded;
  for (auto k : want) {
    if (k.first >= 1 && k.first < 4) want_bounded.push_back(k);
  }
  got.clear();
  for (auto [id, version] : keys(*bounded, 0, 1)) got.emplace_back(version, id);
  EXPECT_EQ(got, want_bounded);

  // Without a tie column the cursor alone orders and bounds.
  auto by_id = c->poll({.select = select, .cursor_column = "id", .after_cursor = 37, .limit = 100});
  ASSERT_TRUE(by_id) << c->error();
  ASSERT_EQ(by_id->rows(), 3u);
  EXPECT_EQ(keys(*by_id, 0, 1).front().first, 38);
}

TEST_F(MariadbDriver, TimestampCursorIsUtcWhateverTheWriterZone) {
  admin_->exec("CREATE TABLE `" + table_ + "` (id INT PRIMARY KEY, at TIMESTAMP(6) NULL, naive DATETIME(6))");
  // Written by a session five hours east of UTC: TIMESTAMP is stored as an
  // instant, DATETIME as the text given.
  admin_->exec("SET time_zone = '+05:00'");
  admin_->exec("INSERT INTO `" + table_ +
               "` VALUES (1, '2024-06-01 05:00:00.250000', '2024-06-01 00:00:00.000001'),"
               " (2, '2024-06-01 05:00:01', '2024-06-01 00:00:01'), (3, '2024-06-01 05:00:01', '2024-06-01 00:00:01')");
  admin_->exec("SET time_zone = '+00:00'");
  const int64_t midnight = int64_t{1717200000} * 1'000'000;  // 2024-06-01 00:00:00 UTC
  auto c = connect();
  const std::string select = "SELECT id, at, naive FROM `" + table_ + "`";
  auto r =
      c->poll({.select = select, .cursor_column = "at", .cursor_type = ColumnType::kTimestamp, .tie_column = "id"});
  ASSERT_TRUE(r) << c->error();
  ASSERT_EQ(r->rows(), 3u);
  Cell cell;
  std::string error;
  ASSERT_TRUE(r->cell(0, 1, &cell, &error)) << error;
  EXPECT_EQ(cell.i, midnight + 250'000);
  ASSERT_TRUE(r->cell(0, 2, &cell, &error)) << error;
  EXPECT_EQ(cell.i, midnight + 1);
  ASSERT_TRUE(r->cell(2, 1, &cell, &error)) << error;
  EXPECT_EQ(cell.i, midnight + 1'000'000);

  // After (midnight + 1 s, id 2): only id 3. A timestamp literal compares as
  // UTC because the driver's session runs at +00:00.
  r = c->poll({.select = select,
               .cursor_column = "at",
               .cursor_type = ColumnType::kTimestamp,
               .tie_column = "id",
               .after_cursor = midnight + 1'000'000,
               .after_tie = 2});
  ASSERT_TRUE(r) << c->error();
  ASSERT_EQ(r->rows(), 1u);
  ASSERT_TRUE(r->cell(0, 0, &cell, &error)) << error;
  EXPECT_EQ(cell.i, 3);
  // before_cursor on a timestamp, with sub-second precision.
  r = c->poll({.select = select,
               .cursor_column = "at",
               .cursor_type = ColumnType::kTimestamp,
               .tie_column = "id",
               .before_cursor = midnight + 250'001});
  ASSERT_TRUE(r) << c->error();
  EXPECT_EQ(r->rows(), 1u);
}

TEST_F(MariadbDriver, ServerNowIsUtcMicroseconds) {
  auto c = connect();
  auto now = c->server_now_us();
  ASSERT_TRUE(now) << c->error();
  // The server runs on this host: its clock is ours, whatever its zone.
  const int64_t ours =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  EXPECT_LT(std::abs(*now - ours), int64_t{60} * 1'000'000) << *now << " vs " << ours;
}

TEST_F(MariadbDriver, OutOfRangeAndMalformedCellsNameTheColumn) {
  admin_->exec("CREATE TABLE `" + table_ +
               "` (id INT PRIMARY KEY, big BIGINT UNSIGNED, flag TINYINT(1), at DATETIME, d DECIMAL(6,2))");
  // A zero date and a 30th of February: kept by a session that allows them.
  admin_->exec("SET SESSION sql_mode = 'ALLOW_INVALID_DATES'");
  admin_->exec("INSERT INTO `" + table_ +
               "` VALUES (1, 18446744073709551615, 1, '2024-01-01 00:00:00', 1.25),"
               " (2, 1, 7, '2024-01-01 00:00:00', 0), (3, 1, 1, '0000-00-00 00:00:00', 0),"
               " (4, 1, 1, '2024-02-30 10:00:00', 0), (5, 9223372036854775807, 0, '2024-01-01 00:00:00', 0)");
  auto c = connect();
  auto r = c->poll({.select = "SELECT * FROM `" + table_ + "`", .cursor_column = "id"});
  ASSERT_TRUE(r) << c->error();
  ASSERT_EQ(r->rows(), 5u);
  Cell cell;
  std::string error;
  struct Bad {
    size_t row, col;
    const char* says;
  };
  for (const Bad& b : {Bad{0, 1,
                           "column 'big' (BIGINT UNSIGNED), row 0: not an integer in int64's range "
                           "'18446744073709551615'"},
                       Bad{1, 2, "column 'flag' (TINYINT(1)), row 1: not a boolean (0 or 1) '7'"},
                       Bad{2, 3, "column 'at' (DATETIME), row 2: not a valid date and time '0000-00-00 00:00:00'"},
                       Bad{3, 3, "column 'at' (DATETIME), row 3: not a valid date and time '2024-02-30 10:00:00'"}}) {
    error.clear();
    EXPECT_FALSE(r->cell(b.row, b.col, &cell, &error)) << b.says;
    EXPECT_EQ(error, b.says);
  }
  ASSERT_TRUE(r->cell(4, 1, &cell, &error)) << error;
  EXPECT_EQ(cell.i, INT64_MAX);
  // DECIMAL is kOther: its text is handed over, for the caller to refuse.
  ASSERT_TRUE(r->cell(0, 4, &cell, &error)) << error;
  EXPECT_EQ(r->columns()[4].type, ColumnType::kOther);
  EXPECT_EQ(cell.s, "1.25");
}

TEST_F(MariadbDriver, QuotesIdentifiers) {
  admin_->exec("CREATE TABLE `" + table_ + "` (`we``ird col` INT PRIMARY KEY, `select` INT)");
  admin_->exec("INSERT INTO `" + table_ + "` VALUES (1, 10), (2, 20), (3, 30)");
  auto c = connect();
  auto r = c->poll({.select = "SELECT * FROM `" + table_ + "`",
                    .cursor_column = "we`ird col",
                    .tie_column = "select",
                    .after_cursor = 1,
                    .after_tie = 10});
  ASSERT_TRUE(r) << c->error();
  EXPECT_EQ(r->rows(), 2u);
  EXPECT_EQ(r->columns()[0].name, "we`ird col");
  EXPECT_FALSE(c->poll({.select = "SELECT * FROM `" + table_ + "`", .cursor_column = ""}));
  EXPECT_NE(c->error().find("cannot be quoted"), std::string::npos) << c->error();
}

TEST_F(MariadbDriver, ServerErrorKeepsTheConnection) {
  admin_->exec("CREATE TABLE `" + table_ + "` (id INT PRIMARY KEY)");
  admin_->exec("INSERT INTO `" + table_ + "` VALUES (1)");
  auto c = connect();
  EXPECT_FALSE(c->poll({.select = "SELECT * FROM `" + table_ + "`", .cursor_column = "missing"}));
  EXPECT_NE(c->error().find("Unknown column"), std::string::npos) << c->error();
  EXPECT_TRUE(c->connected());
  std::vector<ColumnInfo> cols;
  EXPECT_FALSE(c->describe("SELECT * FROM no_such_table", &cols));
  EXPECT_NE(c->error().find("no_such_table"), std::string::npos) << c->error();
  EXPECT_TRUE(c->connected());
  auto r = c->poll({.select = "SELECT * FROM `" + table_ + "`", .cursor_column = "id"});
  ASSERT_TRUE(r) << c->error();
  EXPECT_EQ(r->rows(), 1u);
}

TEST_F(MariadbDriver, ReconnectsAfterTheServerRestarts) {
  admin_->exec("CREATE TABLE `" + table_ + "` (id INT PRIMARY KEY, at TIMESTAMP(6) NULL)");
  admin_->exec("INSERT INTO `" + table_ + "` VALUES (1, '2024-06-01 00:00:00'), (2, '2024-06-01 00:00:01')");
  auto c = connect();
  const std::string select = "SELECT * FROM `" + table_ + "`";
  const CursorQuery q{.select = select, .cursor_column = "id"};
  ASSERT_TRUE(c->poll(q)) << c->error();

  admin_.reset();
  ASSERT_TRUE(env_.run_ctl("restart"));
  // The old session is gone: the call fails, says so, and leaves the
  // connection closed rather than reconnecting on its own.
  EXPECT_FALSE(c->poll(q));
  EXPECT_FALSE(c->connected());
  EXPECT_NE(c->error().find("poll on 127.0.0.1"), std::string::npos) << c->error();
  EXPECT_FALSE(c->poll(q));
  EXPECT_EQ(c->error(), "mariadb: not connected");

  ASSERT_TRUE(c->connect()) << c->error();
  auto r = c->poll(q);
  ASSERT_TRUE(r) << c->error();
  ASSERT_EQ(r->rows(), 2u);
  // The new session runs at UTC again.
  Cell cell;
  std::string error;
  ASSERT_TRUE(r->cell(1, 1, &cell, &error)) << error;
  EXPECT_EQ(cell.i, int64_t{1717200001} * 1'000'000);
}

TEST_F(MariadbDriver, BadUrlOrUnreachableServerIsAClearError) {
  struct Case {
    std::string url, password, says;
  };
  const std::string host = env_.url.substr(0, env_.url.rfind('/'));  // mysql://larder@127.0.0.1:PORT
  const std::vector<Case> cases = {
      {"postgresql://larder@127.0.0.1/x", env_.password, "scheme must be mysql:// or mariadb://"},
      {"mysql://larder:pw@127.0.0.1/x", env_.password, "password in the URL"},
      // Port 1 on loopback: nothing listens, the connection is refused.
      {"mysql://larder@127.0.0.1:1/larder_test", env_.password, "cannot connect to 127.0.0.1:1 as larder"},
      {env_.url, "wrong-password", "Access denied for user 'larder'"},
      {host + "/no_such_db", env_.password, "no_such_db"},
      // The test server has no TLS: asking for it fails instead of
      // carrying on in the clear.
      {env_.url + "?ssl-mode=required", env_.password, "SSL"},
  };
  for (const Case& k : cases) {
    auto c = make_mariadb_connection({.url = k.url, .password = k.password, .connect_timeout_s = 5});
    EXPECT_FALSE(c->connect()) << k.url;
    EXPECT_FALSE(c->connected()) << k.url;
    EXPECT_NE(c->error().find(k.says), std::string::npos) << k.url << ": " << c->error();
    EXPECT_EQ(c->error().find("wrong-password"), std::string::npos) << c->error();
    EXPECT_EQ(c->error().find(env_.password), std::string::npos) << c->error();
    EXPECT_FALSE(c->poll({.select = "SELECT 1", .cursor_column = "1"}));
  }
}

}  // namespace
}  // namespace larder::sidecar::sql

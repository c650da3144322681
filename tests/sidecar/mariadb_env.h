// The throwaway MariaDB server of the database tests (scripts/mariadb.sh,
// started by scripts/test.sh): its environment, and an administrative client
// (MariaDB Connector/C, the same library as the driver) that creates tables
// and changes rows behind the driver's back. Runs on the test's thread.
#pragma once

#include <gtest/gtest.h>
#include <mysql.h>

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "consume/sql/mariadb_text.h"

namespace larder::test {

// What scripts/mariadb.sh exports. load() records a test failure naming the
// missing variable: a database test that cannot reach its server fails.
struct MariadbEnv {
  std::string url;       // LARDER_TEST_MARIADB_URL: mysql://larder@127.0.0.1:PORT/larder_test
  std::string password;  // LARDER_TEST_MARIADB_PASSWORD
  std::string ctl;       // LARDER_TEST_MARIADB_CTL: a command prefix taking restart, stop, start

  static bool load(MariadbEnv* env) {
    auto get = [](const char* name) {
      const char* v = std::getenv(name);
      return std::string(v == nullptr ? "" : v);
    };
    env->url = get("LARDER_TEST_MARIADB_URL");
    env->password = get("LARDER_TEST_MARIADB_PASSWORD");
    env->ctl = get("LARDER_TEST_MARIADB_CTL");
    if (env->url.empty() || env->password.empty() || env->ctl.empty()) {
      ADD_FAILURE() << "LARDER_TEST_MARIADB_URL, LARDER_TEST_MARIADB_PASSWORD and LARDER_TEST_MARIADB_CTL must be set: "
                       "run the tests with scripts/test.sh, or start a server with scripts/mariadb.sh start --dir DIR "
                       "and export the variables of DIR/mariadb.env";
      return false;
    }
    return true;
  }

  // Runs "<ctl> <verb>" (restart, stop, start); true on exit status 0.
  bool run_ctl(const std::string& verb) const { return std::system((ctl + " " + verb + " 2>&1").c_str()) == 0; }
};

// A plain client session; throws std::runtime_error with the server's
// message when a statement fails.
class MariadbAdmin {
 public:
  explicit MariadbAdmin(const MariadbEnv& env) {
    std::string why;
    auto url = sidecar::sql::mariadb::parse_url(env.url, &why);
    if (!url) throw std::runtime_error(why);
    mysql_ = mysql_init(nullptr);
    if (mysql_real_connect(mysql_, url->host.c_str(), url->user.c_str(), env.password.c_str(), url->database.c_str(),
                           url->port, nullptr, 0) == nullptr) {
      std::string e = mysql_error(mysql_);
      mysql_close(mysql_);
      throw std::runtime_error("admin connection to " + env.url + ": " + e);
    }
    // Literals and TIMESTAMP values in UTC, as the driver's session reads them.
    exec("SET time_zone = '+00:00'");
  }
  ~MariadbAdmin() { mysql_close(mysql_); }
  MariadbAdmin(const MariadbAdmin&) = delete;
  MariadbAdmin& operator=(const MariadbAdmin&) = delete;

  void exec(const std::string& sql) {
    if (mysql_real_query(mysql_, sql.data(), sql.size()) != 0) {
      throw std::runtime_error("'" + sql + "': " + mysql_error(mysql_));
    }
    if (MYSQL_RES* res = mysql_store_result(mysql_)) mysql_free_result(res);
  }

  // Every row of a query, each cell as text ("" for NULL).
  std::vector<std::vector<std::string>> rows(const std::string& sql) {
    if (mysql_real_query(mysql_, sql.data(), sql.size()) != 0) {
      throw std::runtime_error("'" + sql + "': " + mysql_error(mysql_));
    }
    MYSQL_RES* res = mysql_store_result(mysql_);
    if (res == nullptr) throw std::runtime_error("'" + sql + "' returned no result");
    std::vector<std::vector<std::string>> out;
    const unsigned n = mysql_num_fields(res);
    while (MYSQL_ROW row = mysql_fetch_row(res)) {
      const unsigned long* len = mysql_fetch_lengths(res);
      auto& cells = out.emplace_back();
      for (unsigned i = 0; i < n; ++i) cells.emplace_back(row[i] == nullptr ? "" : std::string(row[i], len[i]));
    }
    mysql_free_result(res);
    return out;
  }

 private:
  MYSQL* mysql_ = nullptr;
};

}  // namespace larder::test

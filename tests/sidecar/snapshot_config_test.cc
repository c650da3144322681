// Unit tests of the snapshot and bootstrap settings: the config keys, peer
// URLs, the bearer token comparison and snapshot.dir listing. No broker.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "config/config.h"
#include "config/http_url.h"
#include "snapshot/snapshot_dir.h"
#include "snapshot/snapshot_http.h"

namespace larder::sidecar {
namespace {

namespace fs = std::filesystem;

const char* kBase = R"(
segment: {name: features}
tables:
  - name: users
    capacity: 100
    fields: [{name: age, type: int64}]
rabbitmq:
  url: amqp://larder@broker.local:5673/prod
  password_env: LARDER_TEST_CONFIG_PASSWORD
  queue: {name: features.host1, type: stream}
)";

class SnapshotConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::setenv("LARDER_TEST_CONFIG_PASSWORD", "s3cret", 1);
    dir_ = ::testing::TempDir() + "/snapshot-config-test-" + std::to_string(::getpid());
    fs::create_directories(dir_);
    token_ = dir_ + "/token";
    std::ofstream(token_) << "0123456789abcdef-token\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  static std::string error_of(const std::string& yaml) {
    try {
      parse_config(yaml);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "accepted";
  }

  std::string dir_;
  std::string token_;
};

TEST_F(SnapshotConfigTest, Defaults) {
  const Config c = parse_config(kBase);
  EXPECT_TRUE(c.snapshot.dir.empty());
  EXPECT_EQ(c.snapshot.interval_ms, 600'000);
  EXPECT_EQ(c.snapshot.keep, 3u);
  EXPECT_FALSE(c.snapshot.serve);
  EXPECT_EQ(c.bootstrap.restore, RestoreMode::kLatest);
  EXPECT_TRUE(c.bootstrap.peer.empty());
}

TEST_F(SnapshotConfigTest, AllKeys) {
  const Config c = parse_config(std::string(kBase) + "snapshot: {dir: " + dir_ +
                                ", interval: 90s, keep: 5, serve: true, token_file: " + token_ +
                                "}\nbootstrap: {restore: never, peer: \"http://10.0.0.7:9464/snapshot\", "
                                "peer_token_file: " +
                                token_ + ", peer_timeout_s: 30}\n");
  EXPECT_EQ(c.snapshot.dir, dir_);
  EXPECT_EQ(c.snapshot.interval_ms, 90'000);
  EXPECT_EQ(c.snapshot.keep, 5u);
  EXPECT_TRUE(c.snapshot.serve);
  EXPECT_EQ(c.snapshot.token, "0123456789abcdef-token");
  EXPECT_EQ(c.bootstrap.restore, RestoreMode::kNever);
  EXPECT_EQ(c.bootstrap.peer_token, "0123456789abcdef-token");
  EXPECT_EQ(c.bootstrap.peer_timeout_s, 30);
  const Config f = parse_config(std::string(kBase) + "bootstrap: {restore: /var/lib/x.lsnap}\n");
  EXPECT_EQ(f.bootstrap.restore, RestoreMode::kFile);
  EXPECT_EQ(f.bootstrap.restore_file, "/var/lib/x.lsnap");
}

TEST_F(SnapshotConfigTest, ErrorsNameTheKey) {
  const std::string b = kBase;
  EXPECT_EQ(error_of(b + "snapshot: {dir: relative}\n").rfind("snapshot.dir: ", 0), 0u);
  EXPECT_EQ(error_of(b + "snapshot: {interval: 500ms}\n").rfind("snapshot.interval: must be at least 1s", 0), 0u);
  EXPECT_EQ(error_of(b + "snapshot: {keep: 0}\n").rfind("snapshot.keep: ", 0), 0u);
  EXPECT_EQ(error_of(b + "snapshot: {color: red}\n").rfind("snapshot.color: unknown key", 0), 0u);
  // Serving on a non-loopback listener needs a token.
  EXPECT_EQ(error_of(b + "metrics: {listen: \"0.0.0.0:9464\"}\nsnapshot: {serve: true}\n")
                .rfind("snapshot.token_file: required when snapshot.serve is true", 0),
            0u);
  EXPECT_EQ(error_of(b + "metrics: {listen: \"\"}\nsnapshot: {serve: true}\n").rfind("snapshot.serve: ", 0), 0u);
  EXPECT_EQ(error_of(b + "snapshot: {serve: true, token_file: /nonexistent/token}\n").rfind("snapshot.token_file: ", 0),
            0u);
  const std::string shorty = dir_ + "/short";
  std::ofstream(shorty) << "abc\n";
  EXPECT_NE(error_of(b + "snapshot: {token_file: " + shorty + "}\n").find("at least 16"), std::string::npos);
  EXPECT_EQ(error_of(b + "bootstrap: {restore: sometimes}\n").rfind("bootstrap.restore: ", 0), 0u);
  EXPECT_EQ(error_of(b + "bootstrap: {peer: \"ftp://x/snapshot\"}\n").rfind("bootstrap.peer: ", 0), 0u);
  EXPECT_EQ(error_of(b + "bootstrap: {peer: \"http://user@x/snapshot\"}\n").rfind("bootstrap.peer: ", 0), 0u);
  // Loopback listeners may serve without a token.
  EXPECT_TRUE(parse_config(b + "snapshot: {serve: true}\n").snapshot.serve);
}

TEST(HttpUrlTest, ParsesAndRefuses) {
  HttpUrl u;
  std::string error;
  ASSERT_TRUE(parse_http_url("http://10.0.0.7:9464/snapshot", &u, &error)) << error;
  EXPECT_FALSE(u.tls);
  EXPECT_EQ(u.host, "10.0.0.7");
  EXPECT_EQ(u.port, 9464);
  EXPECT_EQ(u.path, "/snapshot");
  EXPECT_EQ(u.origin(), "http://10.0.0.7:9464");
  ASSERT_TRUE(parse_http_url("https://[::1]/x", &u, &error)) << error;
  EXPECT_TRUE(u.tls);
  EXPECT_EQ(u.host, "::1");
  EXPECT_EQ(u.port, 443);
  EXPECT_EQ(u.to_string(), "https://[::1]:443/x");
  ASSERT_TRUE(parse_http_url("http://peer", &u, &error)) << error;
  EXPECT_EQ(u.path, "/snapshot");
  for (const char* bad :
       {"", "peer:9464/snapshot", "http://", "http://:80/", "http://h:0/", "http://h:65536/", "http://h:/",
        "http://a@h/", "http://h/a b", "http://h/x?y", "http://[::1/x", "http://h h/"}) {
    EXPECT_FALSE(parse_http_url(bad, &u, &error)) << bad;
    EXPECT_FALSE(error.empty()) << bad;
  }
}

TEST(BearerTokenTest, ExactMatchOnly) {
  const std::string t = "0123456789abcdef-token";
  EXPECT_TRUE(bearer_token_matches("Bearer " + t, t));
  EXPECT_FALSE(bearer_token_matches("", t));
  EXPECT_FALSE(bearer_token_matches(t, t));
  EXPECT_FALSE(bearer_token_matches("bearer " + t, t));
  EXPECT_FALSE(bearer_token_matches("Bearer " + t + "x", t));
  EXPECT_FALSE(bearer_token_matches("Bearer " + t.substr(1), t));
  EXPECT_FALSE(bearer_token_matches("Bearer 1123456789abcdef-token", t));
  EXPECT_FALSE(bearer_token_matches("Bearer 0123456789abcdef-tokeN", t));
  EXPECT_FALSE(bearer_token_matches("Bearer ", ""));  // no token configured never matches
}

TEST(LoopbackTest, Hosts) {
  for (const char* h : {"127.0.0.1", "127.1.2.3", "::1", "localhost"}) EXPECT_TRUE(is_loopback_host(h)) << h;
  for (const char* h : {"0.0.0.0", "10.0.0.1", "127.0.0", "127.0.0.1.5", "::", "127.0.0.x"}) {
    EXPECT_FALSE(is_loopback_host(h)) << h;
  }
}

TEST_F(SnapshotConfigTest, ListAndPruneSnapshots) {
  for (const char* name : {"features-100.lsnap", "features-300.lsnap", "features-200.lsnap", "features-x.lsnap",
                           "features-300.lsnap.tmp", "other-400.lsnap", "features-.lsnap", "features2-500.lsnap"}) {
    std::ofstream(dir_ + "/" + name) << "x";
  }
  const std::vector<SnapshotEntry> all = list_snapshots(dir_, "features");
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].unix_ms, 300);
  EXPECT_EQ(all[1].unix_ms, 200);
  EXPECT_EQ(all[2].unix_ms, 100);
  EXPECT_EQ(all[0].path, snapshot_path(dir_, "features", 300));
  const std::vector<std::string> removed = prune_snapshots(dir_, "features", 2);
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_EQ(removed[0], snapshot_path(dir_, "features", 100));
  EXPECT_EQ(list_snapshots(dir_, "features").size(), 2u);
  EXPECT_TRUE(fs::exists(dir_ + "/other-400.lsnap"));
  EXPECT_TRUE(fs::exists(dir_ + "/features-x.lsnap"));
  EXPECT_TRUE(list_snapshots(dir_ + "/absent", "features").empty());
}

}  // namespace
}  // namespace larder::sidecar

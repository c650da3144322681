// Snapshots, restore and peer bootstrap of the real larder-sidecar against a
// real RabbitMQ stream (CTest label "integration"; docs/operations.md, "New
// host" and "Lost host"):
//  * a lost segment comes back from the latest snapshot in snapshot.dir, the
//    stream replays from the snapshot's position, and the segment shows
//    CATCHING_UP (and /readyz 503) until it is complete;
//  * three sidecars on one stream, the third bootstrapped from the first's
//    GET /snapshot while a producer keeps publishing: all three dumps agree;
//  * GET /snapshot: 401 with nothing else without the token, 200 with a
//    snapshot that verifies with it, 404 when snapshot.serve is false;
//  * refusals: a corrupt, truncated or other-schema snapshot given to
//    --restore leaves the existing segment byte for byte; an unreachable
//    peer, one answering garbage and one answering 401 end the start with
//    exit 5 and create no segment; a corrupt newest snapshot in snapshot.dir
//    is passed over for the next older one.
// Every wait polls a condition with a deadline; the states in between are
// made certain by holding the broker back (a TcpProxy that is not listening).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "config/config.h"
#include "harness.h"
#include "larder/client.h"
#include "larder/snapshot/snapshot_file.h"
#include "larder/writer/writer.h"
#include "support/tcp_proxy.h"

namespace larder::test {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

constexpr int64_t kT0 = 1'700'000'000'000;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// `larderctl dump SEGMENT users --format csv` without the apply-time column
// (it differs between hosts by design), rows sorted by key.
std::string dump_rows(const std::string& segment) {
  const std::string cmd = fmt::format("{} dump {} users --format csv 2>&1", LARDERCTL_PATH, segment);
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return "popen failed";
  std::string out;
  char buf[4096];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = ::pclose(p);
  if (status != 0) return "larderctl failed: " + out;
  std::vector<std::string> lines;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    const size_t c1 = line.find(',');
    const size_t c2 = c1 == std::string::npos ? c1 : line.find(',', c1 + 1);
    const size_t c3 = c2 == std::string::npos ? c2 : line.find(',', c2 + 1);
    if (c3 == std::string::npos) {
      lines.push_back(line);
      continue;
    }
    lines.push_back(line.substr(0, c2) + line.substr(c3));
  }
  std::sort(lines.begin(), lines.end());
  std::string joined;
  for (const std::string& l : lines) joined += l + "\n";
  return joined;
}

class SnapshotIntegrationTest : public SidecarTestBase {
 protected:
  bool setup() {
    if (!load_broker("s-", false, false)) return false;
    dir_ = ::testing::TempDir() + "/" + name_ + "-snaps";
    fs::remove_all(dir_);
    token_file_ = ::testing::TempDir() + "/" + name_ + ".token";
    write_bytes(token_file_, "s3cret-token-0123456789abcdef\n");
    return true;
  }

  void TearDown() override {
    for (auto& p : others_) {
      if (p && p->running()) p->kill9();
      if (p && HasFailure()) std::cerr << "---- other sidecar log tail ----\n" << p->log_tail() << "\n";
    }
    others_.clear();
    for (const std::string& s : {name_ + "-b", name_ + "-c"}) Writer::remove_segment(s);
    SidecarTestBase::TearDown();
    std::error_code ec;
    fs::remove_all(dir_, ec);
    fs::remove(token_file_, ec);
    if (!peer_token_.empty()) fs::remove(peer_token_, ec);
  }

  // A sidecar on the test's stream. `segment` defaults to the test's name.
  std::string config(const std::string& segment, const std::string& extra, const std::string& url = "",
                     const std::string& offset = "next") const {
    return fmt::format(R"(segment: {{name: {segment}}}
{tables}rabbitmq:
  url: {url}
  password_env: LARDER_IT_PASSWORD
  queue: {{name: {name}, type: stream, stream_offset: {offset}}}
  bindings: [{{exchange: {name}, routing_keys: ["users.#"]}}]
  prefetch: 200
  heartbeat_s: 5
  reconnect: {{base_s: 0.2, cap_s: 1}}
  drain_timeout_s: 5
{extra}logging: {{level: debug}}
metrics: {{listen: "127.0.0.1:0"}}
)",
                       fmt::arg("segment", segment), fmt::arg("name", name_), fmt::arg("tables", users_table_yaml()),
                       fmt::arg("url", url.empty() ? env_.amqp_url : url), fmt::arg("offset", offset),
                       fmt::arg("extra", extra));
  }

  std::string snapshot_yaml(bool serve = false) const {
    return fmt::format("snapshot: {{dir: {}, interval: 1s, keep: 3, serve: {}, token_file: {}}}\n", dir_,
                       serve ? "true" : "false", token_file_);
  }

  // The metrics port from a sidecar's log.
  static int metrics_port(SidecarProcess& p) {
    const std::regex listening(R"(metrics: listening on http://127\.0\.0\.1:(\d+))");
    int port = -1;
    wait_until(
        [&] {
          std::smatch m;
          const std::string log = p.log_tail(1 << 20);
          if (!std::regex_search(log, m, listening)) return false;
          port = std::stoi(m[1]);
          return true;
        },
        60s);
    return port;
  }

  // Waits for a periodic snapshot whose log line says it covers stream
  // offsets below `next` (next offset == `next`); returns its path.
  std::string wait_for_snapshot_at(SidecarProcess& p, uint64_t next) {
    const std::regex wrote(R"(snapshot: wrote (\S+) .*next offset (\d+))");
    std::string path;
    wait_until(
        [&] {
          const std::string log = p.log_tail(1 << 22);
          for (auto it = std::sregex_iterator(log.begin(), log.end(), wrote); it != std::sregex_iterator(); ++it) {
            if (std::stoull((*it)[2]) == next) path = (*it)[1];
          }
          return !path.empty();
        },
        60s);
    return path;
  }

  // Waits until `p` has subscribed to the stream (its consumer's log line;
  // a stream queue reports no consumer count to a passive declare).
  static void wait_for_consumer(SidecarProcess& p) {
    ASSERT_TRUE(wait_until([&] { return p.log_count("consumer: connected to") >= 1; }, 60s))
        << "the sidecar did not subscribe\n"
        << p.log_tail();
  }

  // `count` upserts of keys k0..k(keys-1), event times after `t0`.
  static std::vector<std::string> part(Oracle& oracle, int keys, int count, int64_t t0, int seed) {
    std::vector<std::string> out;
    for (int i = 0; i < count; ++i) {
      const std::string key = fmt::format("k{}", (i * 7 + seed) % keys);
      const Features f = Features::from_seed(seed * 100000 + i);
      oracle.upsert(key, t0 + i, f);
      out.push_back(upsert_json("users", key, t0 + i, f));
    }
    return out;
  }

  bool converges(const std::string& segment, const Oracle& oracle, std::string* diff) {
    return wait_until(
        [&] {
          *diff = compare_segment(segment, oracle);
          return diff->empty();
        },
        60s);
  }

  // A snapshot file of this test's schema holding `oracle`'s rows, written
  // by a plain Writer under segment `segment` (removed afterwards).
  std::string make_snapshot_file(const std::string& segment, const layout::Schema& schema) {
    std::vector<unsigned char> image;
    {
      auto w = Writer::open(segment, schema);
      w->copy_image(&image);
    }
    Writer::remove_segment(segment);
    const std::string path = dir_ + "/made-" + segment + ".lsnap";
    fs::create_directories(dir_);
    snapshot::write_snapshot_file(path, segment, image);
    return path;
  }

  // The schema every sidecar of the test uses.
  layout::Schema schema() const {
    ::setenv("LARDER_IT_PASSWORD", env_.password.c_str(), 1);
    return sidecar::parse_config(config(name_, ""), "test config").schema();
  }

  std::string dir_;
  std::string token_file_;
  std::string peer_token_;
  std::vector<std::unique_ptr<SidecarProcess>> others_;
};

// Simulated reboot: the segment is deleted while the sidecar is down and the
// stream goes on. The restart restores the newest snapshot, stays
// CATCHING_UP (and /readyz 503) while the broker is held back, then replays
// from the snapshot's position to exactly the published state and READY.
TEST_F(SnapshotIntegrationTest, LostSegmentRestoresLatestSnapshotThenReplays) {
  ASSERT_TRUE(setup());
  Oracle oracle;
  sidecar_.reset();  // its destructor removes the config file the next one writes
  sidecar_ = std::make_unique<SidecarProcess>(config(name_, snapshot_yaml()), name_, env_);
  sidecar_->start();
  wait_for_consumer(*sidecar_);
  const std::vector<std::string> first = part(oracle, 150, 300, kT0, 1);
  client_->publish(name_, "users.1", first);
  std::string diff;
  ASSERT_TRUE(converges(name_, oracle, &diff)) << diff;
  // A snapshot covering exactly the first part (offsets 0..299).
  const std::string snap = wait_for_snapshot_at(*sidecar_, first.size());
  ASSERT_FALSE(snap.empty()) << sidecar_->log_tail();
  ASSERT_EQ(sidecar_->stop(), 0);
  ASSERT_TRUE(fs::exists(snap)) << snap;

  // Reboot: the segment is gone; every snapshot but the one checked is
  // removed so the restore point is known; the stream moves on meanwhile.
  for (const auto& e : fs::directory_iterator(dir_)) {
    if (e.path().string() != snap) fs::remove(e.path());
  }
  Writer::remove_segment(name_);
  const std::vector<std::string> second = part(oracle, 200, 250, kT0 + 1'000'000, 2);
  client_->publish(name_, "users.1", second);

  // The broker is held back: the restart restores, then cannot replay.
  sidecar::AmqpUrl url;
  std::string error;
  ASSERT_TRUE(sidecar::parse_amqp_url(env_.amqp_url, &url, &error)) << error;
  TcpProxy broker(url.host, url.port);
  url.host = "127.0.0.1";
  url.port = broker.port();
  sidecar_.reset();  // its destructor removes the config file the next one writes
  sidecar_ = std::make_unique<SidecarProcess>(config(name_, snapshot_yaml(), url.to_string()), name_, env_);
  sidecar_->start();
  const int port = metrics_port(*sidecar_);
  ASSERT_GT(port, 0) << sidecar_->log_tail();
  EXPECT_EQ(sidecar_->log_count("restore: segment"), 1u) << sidecar_->log_tail();
  EXPECT_EQ(sidecar_->log_count(snap), 1u) << sidecar_->log_tail();
  {
    Segment seg = Segment::open(name_);
    EXPECT_EQ(seg.state(), layout::SyncState::kCatchingUp);
    const SyncInfo sync = seg.sync();
    ASSERT_FALSE(sync.partitions.empty());
    EXPECT_EQ(sync.partitions[0].next_offset, std::optional<uint64_t>(first.size()));
  }
  httplib::Client http("127.0.0.1", port);
  auto r = http.Get("/readyz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503) << r->body;
  // The restored table is the first part, before any replay.
  Oracle first_only;
  (void)part(first_only, 150, 300, kT0, 1);
  EXPECT_EQ(compare_segment(name_, first_only), "");

  broker.listen();
  ASSERT_TRUE(converges(name_, oracle, &diff)) << diff << "\n" << sidecar_->log_tail();
  EXPECT_TRUE(wait_until([&] { return Segment::open(name_).state() == layout::SyncState::kReady; }, 60s))
      << sidecar_->log_tail();
  EXPECT_TRUE(wait_until(
      [&] {
        auto rr = http.Get("/readyz");
        return rr && rr->status == 200;
      },
      60s));
  EXPECT_EQ(sidecar_->stop(), 0);
}

// GET /snapshot: 401 and nothing else without the right token, a verified
// snapshot with it; 404 when serving is off.
TEST_F(SnapshotIntegrationTest, SnapshotEndpointNeedsTheToken) {
  ASSERT_TRUE(setup());
  Oracle oracle;
  sidecar_.reset();  // its destructor removes the config file the next one writes
  sidecar_ = std::make_unique<SidecarProcess>(
      config(name_, fmt::format("snapshot: {{serve: true, token_file: {}}}\n", token_file_)), name_, env_);
  sidecar_->start();
  wait_for_consumer(*sidecar_);
  client_->publish(name_, "users.1", part(oracle, 50, 100, kT0, 3));
  std::string diff;
  ASSERT_TRUE(converges(name_, oracle, &diff)) << diff;
  const int port = metrics_port(*sidecar_);
  httplib::Client http("127.0.0.1", port);
  for (const httplib::Headers& h :
       {httplib::Headers{}, httplib::Headers{{"Authorization", "Bearer wrong-token-0123456789abcd"}},
        httplib::Headers{{"Authorization", "Bearer s3cret-token-0123456789abcdeX"}},
        httplib::Headers{{"Authorization", "s3cret-token-0123456789abcdef"}}}) {
    auto r = http.Get("/snapshot", h);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401);
    EXPECT_TRUE(r->body.empty()) << r->body.size() << " bytes";
  }
  auto r = http.Get("/snapshot", {{"Authorization", "Bearer s3cret-token-0123456789abcdef"}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  std::vector<unsigned char> image;
  const snapshot::SnapshotInfo info = snapshot::read_snapshot(
      std::span(reinterpret_cast<const unsigned char*>(r->body.data()), r->body.size()), "GET /snapshot", &image);
  EXPECT_EQ(info.image_bytes, image.size());
  // The image restores to the same table.
  const std::string copy = name_ + "-b";
  { auto w = Writer::restore(copy, schema(), image); }
  EXPECT_EQ(compare_segment(copy, oracle), "");
  EXPECT_EQ(sidecar_->stop(), 0);

  // serve: false (the default): no such route.
  sidecar_.reset();  // its destructor removes the config file the next one writes
  sidecar_ = std::make_unique<SidecarProcess>(config(name_, ""), name_, env_);
  sidecar_->start();
  const int port2 = metrics_port(*sidecar_);
  httplib::Client http2("127.0.0.1", port2);
  auto r2 = http2.Get("/snapshot", {{"Authorization", "Bearer s3cret-token-0123456789abcdef"}});
  ASSERT_TRUE(r2);
  EXPECT_EQ(r2->status, 404);
}

// Fan-out: A and B consume the stream from the start; C joins mid-stream by
// bootstrapping from A's GET /snapshot while a producer keeps publishing.
// All three converge to the published state and to identical dumps.
TEST_F(SnapshotIntegrationTest, FanOutThirdSidecarBootstrapsFromPeerMidStream) {
  ASSERT_TRUE(setup());
  Oracle oracle;
  sidecar_.reset();  // its destructor removes the config file the next one writes
  sidecar_ = std::make_unique<SidecarProcess>(config(name_, snapshot_yaml(true), "", "first"), name_, env_);
  sidecar_->start();
  wait_for_consumer(*sidecar_);
  others_.push_back(std::make_unique<SidecarProcess>(config(name_ + "-b", "", "", "first"), name_ + "-b", env_));
  others_.back()->start();
  wait_for_consumer(*others_.back());
  client_->publish(name_, "users.1", part(oracle, 300, 600, kT0, 4));
  std::string diff;
  ASSERT_TRUE(converges(name_, oracle, &diff)) << diff;
  const int port = metrics_port(*sidecar_);
  ASSERT_GT(port, 0);

  // The producer keeps publishing while C bootstraps: half of the batches
  // go out around C's start, the rest only once C has restored, so C
  // certainly replays messages after its snapshot's position.
  std::vector<std::vector<std::string>> batches;
  for (int b = 0; b < 20; ++b) batches.push_back(part(oracle, 400, 50, kT0 + 1'000'000 + b * 1000, 10 + b));
  std::atomic<int> published{0};
  std::atomic<bool> c_restored{false};
  std::thread producer([&] {
    AmqpClient c(env_);
    for (size_t b = 0; b < batches.size(); ++b) {
      if (b == batches.size() / 2) wait_until([&] { return c_restored.load(); }, 120s);
      c.publish(name_, "users.1", batches[b]);
      published.fetch_add(1);
    }
  });
  // C starts once some of the ongoing stream is out.
  EXPECT_TRUE(wait_until([&] { return published.load() >= 3; }, 60s));
  peer_token_ = ::testing::TempDir() + "/" + name_ + ".peer-token";
  write_bytes(peer_token_, read_bytes(token_file_));
  others_.push_back(std::make_unique<SidecarProcess>(
      config(name_ + "-c", fmt::format("bootstrap: {{peer_token_file: {}}}\n", peer_token_)), name_ + "-c", env_));
  others_.back()->start({"--bootstrap-from", fmt::format("http://127.0.0.1:{}/snapshot", port)});
  EXPECT_TRUE(wait_until([&] { return others_.back()->log_count("restore: segment") == 1; }, 60s))
      << others_.back()->log_tail();
  c_restored.store(true);
  producer.join();
  EXPECT_EQ(published.load(), 20);
  for (const std::string& s : {name_, name_ + "-b", name_ + "-c"}) {
    EXPECT_TRUE(converges(s, oracle, &diff)) << s << ": " << diff;
  }
  const std::string a = dump_rows(name_);
  EXPECT_EQ(std::count(a.begin(), a.end(), '\n'), static_cast<long>(oracle.rows().size() + 1));  // header + rows
  EXPECT_EQ(a, dump_rows(name_ + "-b"));
  EXPECT_EQ(a, dump_rows(name_ + "-c"));
  EXPECT_TRUE(wait_until([&] { return Segment::open(name_ + "-c").state() == layout::SyncState::kReady; }, 60s))
      << others_.back()->log_tail();
}

// --restore with a damaged or foreign file: exit 5, a clear reason, and the
// existing segment byte for byte as it was.
TEST_F(SnapshotIntegrationTest, BadRestoreFileLeavesTheSegmentUntouched) {
  ASSERT_TRUE(setup());
  Oracle oracle;
  sidecar_.reset();  // its destructor removes the config file the next one writes
  sidecar_ = std::make_unique<SidecarProcess>(config(name_, ""), name_, env_);
  sidecar_->start();
  wait_for_consumer(*sidecar_);
  client_->publish(name_, "users.1", part(oracle, 80, 160, kT0, 5));
  std::string diff;
  ASSERT_TRUE(converges(name_, oracle, &diff)) << diff;
  ASSERT_EQ(sidecar_->stop(), 0);
  const layout::Schema schema = this->schema();
  const std::string segment_file = "/dev/shm/" + name_;
  const std::string before = read_bytes(segment_file);
  ASSERT_FALSE(before.empty());

  const std::string good = make_snapshot_file(name_ + "-b", schema);
  const std::string bytes = read_bytes(good);
  const std::string corrupt = dir_ + "/corrupt.lsnap";
  std::string flipped = bytes;
  flipped[bytes.size() / 2] = static_cast<char>(flipped[bytes.size() / 2] ^ 0x40);
  write_bytes(corrupt, flipped);
  const std::string truncated = dir_ + "/truncated.lsnap";
  write_bytes(truncated, bytes.substr(0, bytes.size() - 100));
  layout::Schema other = schema;
  other.tables[0].capacity += 1;
  const std::string foreign = make_snapshot_file(name_ + "-c", other);

  struct Case {
    std::string file;
    std::string reason;
  };
  for (const Case& c : {Case{corrupt, "checksum"}, Case{truncated, "truncated"}, Case{foreign, "another schema"},
                        Case{dir_ + "/absent.lsnap", "No such file"}}) {
    sidecar_.reset();  // its destructor removes the config file the next one writes
    sidecar_ = std::make_unique<SidecarProcess>(config(name_, ""), name_, env_);
    sidecar_->start({"--restore", c.file});
    EXPECT_EQ(sidecar_->wait_exit(), 5) << c.file << "\n" << sidecar_->log_tail();
    EXPECT_GE(sidecar_->log_count(c.reason), 1u) << c.file << "\n" << sidecar_->log_tail();
    EXPECT_EQ(sidecar_->log_count("the segment was not changed"), 1u) << sidecar_->log_tail();
    EXPECT_TRUE(read_bytes(segment_file) == before) << c.file << ": the segment changed";
  }
  EXPECT_EQ(compare_segment(name_, oracle), "");
}

// A corrupt newest snapshot in snapshot.dir is reported and the next older
// one restored.
TEST_F(SnapshotIntegrationTest, CorruptNewestSnapshotFallsBackToOlder) {
  ASSERT_TRUE(setup());
  Oracle oracle;
  sidecar_.reset();  // its destructor removes the config file the next one writes
  sidecar_ = std::make_unique<SidecarProcess>(config(name_, snapshot_yaml()), name_, env_);
  sidecar_->start();
  wait_for_consumer(*sidecar_);
  const std::vector<std::string> first = part(oracle, 100, 200, kT0, 6);
  client_->publish(name_, "users.1", first);
  std::string diff;
  ASSERT_TRUE(converges(name_, oracle, &diff)) << diff;
  const std::string older = wait_for_snapshot_at(*sidecar_, first.size());
  ASSERT_FALSE(older.empty()) << sidecar_->log_tail();
  ASSERT_EQ(sidecar_->stop(), 0);
  for (const auto& e : fs::directory_iterator(dir_)) {
    if (e.path().string() != older) fs::remove(e.path());
  }
  // A newer file of the same name pattern, damaged (truncated mid-payload).
  const std::string bytes = read_bytes(older);
  const std::string newest = dir_ + "/" + name_ + "-99999999999999.lsnap";
  write_bytes(newest, bytes.substr(0, bytes.size() / 2));
  Writer::remove_segment(name_);

  sidecar_.reset();  // its destructor removes the config file the next one writes

  sidecar_ = std::make_unique<SidecarProcess>(config(name_, snapshot_yaml()), name_, env_);
  sidecar_->start();
  wait_for_consumer(*sidecar_);
  EXPECT_EQ(sidecar_->log_count("is unusable"), 1u) << sidecar_->log_tail();
  EXPECT_EQ(sidecar_->log_count("trying the next older one"), 1u) << sidecar_->log_tail();
  EXPECT_EQ(sidecar_->log_count("restored from " + older), 1u) << sidecar_->log_tail();
  EXPECT_TRUE(converges(name_, oracle, &diff)) << diff;
  EXPECT_EQ(sidecar_->stop(), 0);
}

// A peer that cannot help: unreachable, answering garbage, answering 401.
// The start fails with exit 5 naming the problem and creates no segment.
TEST_F(SnapshotIntegrationTest, UnusablePeerFailsTheStart) {
  ASSERT_TRUE(setup());
  // A port nothing listens on: bound, never listening.
  TcpProxy closed("127.0.0.1", 1);
  // A server answering 200 with bytes that are no snapshot, and one that
  // answers 401.
  httplib::Server garbage;
  garbage.Get("/snapshot", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string(4096, 'x'), "application/octet-stream");
  });
  garbage.Get("/denied", [](const httplib::Request&, httplib::Response& res) { res.status = 401; });
  const int port = garbage.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  std::thread server([&] { garbage.listen_after_bind(); });

  struct Case {
    std::string url;
    std::string reason;
  };
  for (const Case& c : {Case{fmt::format("http://127.0.0.1:{}/snapshot", closed.port()), "cannot fetch"},
                        Case{fmt::format("http://127.0.0.1:{}/snapshot", port), "magic"},
                        Case{fmt::format("http://127.0.0.1:{}/denied", port), "401"}}) {
    sidecar_.reset();  // its destructor removes the config file the next one writes
    sidecar_ = std::make_unique<SidecarProcess>(config(name_, ""), name_, env_);
    sidecar_->start({"--bootstrap-from", c.url});
    EXPECT_EQ(sidecar_->wait_exit(), 5) << c.url << "\n" << sidecar_->log_tail();
    EXPECT_EQ(sidecar_->log_count("bootstrap from a peer failed"), 1u) << sidecar_->log_tail();
    EXPECT_GE(sidecar_->log_count(c.reason), 1u) << c.url << "\n" << sidecar_->log_tail();
    EXPECT_FALSE(fs::exists("/dev/shm/" + name_)) << c.url << ": a segment was created";
  }
  garbage.stop();
  server.join();
}

}  // namespace
}  // namespace larder::test

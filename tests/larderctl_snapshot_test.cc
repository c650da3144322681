// larderctl's snapshot commands, run as the real binary against real
// segments and a real HTTP server in this process:
//  * snapshot: writes a file that reads back to the segment's bytes; refuses
//    with a live writer (another process holds the writer lock: the writer in
//    this test process) and with a segment left needing repair, writing no
//    file;
//  * snapshot-info: prints state, source id and positions of a valid file,
//    refuses a truncated one (exit 1) and a missing one (exit 3);
//  * fetch-snapshot against a cpp-httplib server that serves good bytes,
//    garbage, a 401 (with control characters in its body), a body cut short,
//    and against a listener that hangs up and a port that refuses: each exit
//    code and message is checked, and every failure leaves no file (an
//    existing FILE keeps its bytes) and no temporary file.
// Test main thread, plus the HTTP server's and the hang-up listener's threads.
#include <arpa/inet.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "larder/layout/format.h"
#include "larder/layout/segment_file.h"
#include "larder/snapshot/snapshot_file.h"
#include "larder/writer/writer.h"
#include "support/run_command.h"
#include "support/test_segment.h"

#ifndef LARDERCTL_PATH
#error "LARDERCTL_PATH must name the larderctl binary"
#endif

namespace larder {
namespace {

using Bytes = std::vector<unsigned char>;
using CtlRun = testing::CommandRun;

constexpr int64_t kEventTime = 1'700'000'000'000;

CtlRun run_larderctl(const std::string& args) { return testing::run_command(std::string(LARDERCTL_PATH) + " " + args); }

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

class LarderctlSnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/larderctl-snapshot-test-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    auto writer = open_writer();
    for (int i = 0; i < 100; ++i) {
      const FieldValue values[] = {FieldValue::int64(0, i), FieldValue::string(5, "se")};
      ASSERT_EQ(writer->upsert(0, "user-" + std::to_string(i), kEventTime + i, values), ApplyResult::kApplied);
    }
    ASSERT_TRUE(writer->set_source_id("amqp / stream features.stream"));
    writer->set_position({0, 42, 3});
    writer->set_sync_state(layout::SyncState::kCatchingUp);
    writer->set_target(0, 99);
    seg_path_ = writer->path();
    // The writer detaches here: the segment stays, as after a sidecar stop.
  }

  void TearDown() override {
    if (DIR* d = ::opendir(dir_.c_str())) {
      while (dirent* e = ::readdir(d)) {
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
          ::unlink((dir_ + "/" + e->d_name).c_str());
        }
      }
      ::closedir(d);
    }
    ::rmdir(dir_.c_str());
  }

  std::unique_ptr<Writer> open_writer() {
    return Writer::open(seg_.name(), testing::one_table_schema(testing::every_type_table()), seg_.writer_options());
  }

  Bytes segment_bytes() const {
    auto m = layout::MappedFile::open_read_only(seg_path_, seg_.name());
    const auto* p = static_cast<const unsigned char*>(m->data());
    return Bytes(p, p + m->size());
  }

  std::vector<std::string> dir_entries() const {
    std::vector<std::string> names;
    if (DIR* d = ::opendir(dir_.c_str())) {
      while (dirent* e = ::readdir(d)) {
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.push_back(e->d_name);
      }
      ::closedir(d);
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  CtlRun snapshot_to(const std::string& file) {
    return run_larderctl("--dir " + seg_.dir() + " snapshot " + seg_.name() + " " + file);
  }

  testing::ScratchSegment seg_;
  std::string seg_path_, dir_;
};

TEST_F(LarderctlSnapshotTest, SnapshotOfAStoppedSegmentReadsBackToItsBytes) {
  const std::string file = dir_ + "/s.snap";
  const CtlRun r = snapshot_to(file);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "segment \"" + seg_.name() + "\" -> " + file)) << r.out;
  Bytes image;
  const auto info = snapshot::read_snapshot_file(file, &image);
  EXPECT_EQ(image, segment_bytes());
  EXPECT_EQ(info.segment_name, seg_.name());
  EXPECT_EQ(dir_entries(), std::vector<std::string>{"s.snap"});
  // The segment can be snapshotted again, and a writer can attach after.
  EXPECT_EQ(snapshot_to(dir_ + "/t.snap").code, 0);
  EXPECT_NE(open_writer(), nullptr);
}

TEST_F(LarderctlSnapshotTest, SnapshotRefusesALiveWriterAndWritesNoFile) {
  auto writer = open_writer();
  const std::string file = dir_ + "/s.snap";
  const CtlRun r = snapshot_to(file);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "has a live writer (pid " + std::to_string(::getpid()) + ")")) << r.out;
  EXPECT_TRUE(contains(r.out, "not consistent")) << r.out;
  EXPECT_TRUE(contains(r.out, "fetch-snapshot")) << r.out;
  EXPECT_FALSE(exists(file));
  EXPECT_TRUE(dir_entries().empty());
}

TEST_F(LarderctlSnapshotTest, SnapshotRefusesASegmentThatNeedsRepair) {
  {
    auto m = layout::MappedFile::open_read_write(seg_path_, seg_.name());
    auto& h = *static_cast<layout::SegmentHeader*>(m->mutable_data());
    h.undo_armed.store(1);  // as a writer killed inside a slot write leaves it
  }
  const std::string file = dir_ + "/s.snap";
  const CtlRun r = snapshot_to(file);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "needs repair")) << r.out;
  EXPECT_FALSE(exists(file));
}

TEST_F(LarderctlSnapshotTest, SnapshotOfAMissingSegmentExits3) {
  const CtlRun r = run_larderctl("--dir " + seg_.dir() + " snapshot no-such-segment " + dir_ + "/s.snap");
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_TRUE(contains(r.out, "no such file")) << r.out;
  EXPECT_TRUE(dir_entries().empty());
}

TEST_F(LarderctlSnapshotTest, SnapshotInfoPrintsStatePositionsAndTables) {
  const std::string file = dir_ + "/s.snap";
  ASSERT_EQ(snapshot_to(file).code, 0);
  const CtlRun r = run_larderctl("snapshot-info " + file);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "snapshot " + file + ": valid")) << r.out;
  EXPECT_TRUE(contains(r.out, "segment " + seg_.name())) << r.out;
  EXPECT_TRUE(contains(r.out, "sync state catching_up")) << r.out;
  EXPECT_TRUE(contains(r.out, "source id \"amqp / stream features.stream\"")) << r.out;
  EXPECT_TRUE(contains(r.out, "partition 0: next offset 42, skip 3 updates, target 99, first retained -")) << r.out;
  EXPECT_TRUE(contains(r.out, "users: 100 live keys")) << r.out;

  const CtlRun j = run_larderctl("--json snapshot-info " + file);
  ASSERT_EQ(j.code, 0) << j.out;
  EXPECT_TRUE(contains(j.out, "\"sync_state\":\"catching_up\"")) << j.out;
  EXPECT_TRUE(contains(j.out,
                       "{\"partition\":0,\"next_offset\":42,\"skip_updates\":3,\"target\":99,"
                       "\"first_retained\":null}"))
      << j.out;
  EXPECT_TRUE(contains(j.out, "\"live_keys\":100")) << j.out;
}

TEST_F(LarderctlSnapshotTest, SnapshotInfoRefusesDamagedAndMissingFiles) {
  const std::string file = dir_ + "/s.snap";
  ASSERT_EQ(snapshot_to(file).code, 0);
  const Bytes good = read_file(file);
  const std::string cut = dir_ + "/cut.snap";
  write_file(cut, std::string_view(reinterpret_cast<const char*>(good.data()), good.size() - 1));
  CtlRun r = run_larderctl("snapshot-info " + cut);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "truncated: payload ends at byte " + std::to_string(good.size() - 1))) << r.out;

  Bytes flipped = good;
  flipped[200] ^= 0x40;
  const std::string bad = dir_ + "/bad.snap";
  write_file(bad, std::string_view(reinterpret_cast<const char*>(flipped.data()), flipped.size()));
  r = run_larderctl("snapshot-info " + bad);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "payload checksum mismatch")) << r.out;

  r = run_larderctl("snapshot-info " + dir_ + "/absent.snap");
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_TRUE(contains(r.out, "No such file")) << r.out;
}

// A peer: cpp-httplib serving a good snapshot, garbage, a 401 and a body cut
// short, on 127.0.0.1 at a port of its own choosing.
class Peer {
 public:
  explicit Peer(Bytes good) : good_(std::move(good)) {
    server_.Get("/good", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(reinterpret_cast<const char*>(good_.data()), good_.size(), "application/octet-stream");
    });
    server_.Get("/garbage", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(std::string(5000, '\x7f') + "not a snapshot", "application/octet-stream");
    });
    server_.Get("/secret", [this](const httplib::Request& req, httplib::Response& res) {
      if (req.get_header_value("Authorization") != "Bearer s3cret-token") {
        res.status = 401;
        // A peer's body goes to a terminal: the escape must not.
        res.set_content("unauthorized \x1b[31mred\x1b[0m\n" + std::string(400, 'x'), "text/plain");
        return;
      }
      res.set_content(reinterpret_cast<const char*>(good_.data()), good_.size(), "application/octet-stream");
    });
    server_.Get("/truncated", [this](const httplib::Request&, httplib::Response& res) {
      // Promises the whole file, sends half, then the connection closes.
      res.set_content_provider(good_.size(), "application/octet-stream",
                               [this](size_t offset, size_t, httplib::DataSink& sink) {
                                 if (offset >= good_.size() / 2) return false;
                                 sink.write(reinterpret_cast<const char*>(good_.data()), good_.size() / 2);
                                 return true;
                               });
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    // Connections queue in the backlog from here on; the thread accepts them.
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // stop() before the loop runs would be lost: wait for it to run.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!server_.is_running() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_TRUE(server_.is_running()) << "the test HTTP server did not start";
  }
  ~Peer() {
    server_.stop();
    thread_.join();
  }
  std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port_) + path; }
  int port() const { return port_; }

 private:
  Bytes good_;
  httplib::Server server_;
  int port_ = -1;
  std::thread thread_;
};

// A listener that accepts connections and closes each at once, unanswered.
class HangUp {
 public:
  HangUp() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_, 8), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      while (!stop_) {
        const int c = ::accept(fd_, nullptr, nullptr);
        if (c >= 0) ::close(c);
      }
    });
  }
  ~HangUp() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);  // wakes accept()
    thread_.join();
    ::close(fd_);
  }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class LarderctlFetchTest : public LarderctlSnapshotTest {
 protected:
  void SetUp() override {
    LarderctlSnapshotTest::SetUp();
    const std::string src = dir_ + "/source.snap";
    ASSERT_EQ(snapshot_to(src).code, 0);
    good_ = read_file(src);
    ::unlink(src.c_str());
    file_ = dir_ + "/fetched.snap";
  }

  CtlRun fetch(const std::string& url, const std::string& extra = "") {
    return run_larderctl("fetch-snapshot " + url + " " + file_ + " --timeout 10 " + extra);
  }

  // A failed fetch leaves FILE as it was (here: absent, or the old bytes) and
  // no temporary file.
  void expect_nothing_written(const std::vector<std::string>& expected_entries = {}) {
    EXPECT_EQ(dir_entries(), expected_entries);
  }

  Bytes good_;
  std::string file_;
};

TEST_F(LarderctlFetchTest, GoodAnswerIsVerifiedAndRenamedIntoPlace) {
  Peer peer(good_);
  const CtlRun r = fetch(peer.url("/good"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "verified (segment " + seg_.name())) << r.out;
  EXPECT_EQ(read_file(file_), good_);
  EXPECT_EQ(dir_entries(), std::vector<std::string>{"fetched.snap"});
}

TEST_F(LarderctlFetchTest, GarbageIsRefusedAndNoFileIsWritten) {
  Peer peer(good_);
  const CtlRun r = fetch(peer.url("/garbage"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "is not a snapshot this build accepts")) << r.out;
  EXPECT_TRUE(contains(r.out, "bad magic")) << r.out;
  EXPECT_TRUE(contains(r.out, "no file written")) << r.out;
  expect_nothing_written();
}

TEST_F(LarderctlFetchTest, FailedFetchKeepsAnExistingFile) {
  write_file(file_, "old bytes");
  Peer peer(good_);
  const CtlRun r = fetch(peer.url("/garbage"));
  EXPECT_EQ(r.code, 1) << r.out;
  expect_nothing_written({"fetched.snap"});
  const Bytes kept = read_file(file_);
  EXPECT_EQ(std::string(kept.begin(), kept.end()), "old bytes");
}

TEST_F(LarderctlFetchTest, UnauthorizedShowsTheStatusAndABoundedEscapedBody) {
  Peer peer(good_);
  const CtlRun r = fetch(peer.url("/secret"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "answered HTTP 401 (expected 200)")) << r.out;
  EXPECT_TRUE(contains(r.out, "unauthorized \\x1b[31mred\\x1b[0m\\x0a")) << r.out;
  EXPECT_FALSE(contains(r.out, "\x1b")) << "the peer's escape sequence reached the terminal";
  // At most the first 200 bytes of the body are shown.
  EXPECT_FALSE(contains(r.out, std::string(200, 'x'))) << r.out;
  EXPECT_TRUE(contains(r.out, "--token-file")) << r.out;
  expect_nothing_written();

  const std::string token = dir_ + "/token";
  write_file(token, "s3cret-token\n");
  const CtlRun ok = fetch(peer.url("/secret"), "--token-file " + token);
  ASSERT_EQ(ok.code, 0) << ok.out;
  EXPECT_EQ(read_file(file_), good_);
  EXPECT_FALSE(contains(ok.out, "s3cret")) << "the token must not be printed";
}

TEST_F(LarderctlFetchTest, BodyCutShortLeavesNoFile) {
  Peer peer(good_);
  const CtlRun r = fetch(peer.url("/truncated"));
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_TRUE(r.code == 1 || r.code == 3) << r.out;
  EXPECT_TRUE(contains(r.out, "no file written")) << r.out;
  expect_nothing_written();
}

TEST_F(LarderctlFetchTest, PeerThatHangsUpLeavesNoFile) {
  HangUp peer;
  const CtlRun r = fetch("http://127.0.0.1:" + std::to_string(peer.port()) + "/snapshot");
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_TRUE(contains(r.out, "no file written")) << r.out;
  expect_nothing_written();
}

TEST_F(LarderctlFetchTest, PeerThatIsGoneLeavesNoFile) {
  int port = 0;
  {
    Peer peer(good_);
    port = peer.port();
  }  // stopped: the port refuses connections now
  const CtlRun r = fetch("http://127.0.0.1:" + std::to_string(port) + "/good");
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_TRUE(contains(r.out, "no file written")) << r.out;
  expect_nothing_written();
}

TEST_F(LarderctlFetchTest, BadUrlsAndTokenFilesAreUsageErrors) {
  EXPECT_EQ(fetch("ftp://127.0.0.1/x").code, 2);
  EXPECT_EQ(fetch("http://").code, 2);
  const std::string empty = dir_ + "/empty-token";
  write_file(empty, "\n");
  const CtlRun r = fetch("http://127.0.0.1:1/x", "--token-file " + empty);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_TRUE(contains(r.out, "is empty")) << r.out;
  expect_nothing_written({"empty-token"});
}

}  // namespace
}  // namespace larder

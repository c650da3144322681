// `larderctl watch` on a real terminal, no broker (label unit). The test
// writes a segment from a thread (new keys at a steady rate, heartbeat kept
// fresh), runs `larderctl watch` inside a detached tmux session (a
// pseudo-terminal), and reads the screen back with `tmux capture-pane`: the
// view must show the live writer and numbers that change between refreshes.
// Without a terminal, watch must print plain lines with no escape codes.
//
// The tmux server runs on a socket of its own (-L), so the test never talks
// to, or kills, anyone else's tmux.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <regex>
#include <string>
#include <thread>

#include "larder/client.h"
#include "larder/layout/clock.h"
#include "larder/writer/writer.h"
#include "support/progress.h"

namespace larder::test {
namespace {

using namespace std::chrono_literals;

// Runs a shell command; returns its stdout (and its exit status in *status).
std::string run(const std::string& cmd, int* status = nullptr) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int rc = ::pclose(p);
  if (status != nullptr) *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  return out;
}

// A segment with one table, written by a background thread: a new key every
// millisecond or so (live keys grow), heartbeat every 50 ms.
class LiveSegment {
 public:
  explicit LiveSegment(std::string name) : name_(std::move(name)) {
    Writer::remove_segment(name_);
    layout::Schema schema;
    layout::TableSpec t;
    t.name = "users";
    t.key_max_len = 32;
    t.capacity = 200000;
    t.fields = {{"n", layout::FieldType::kInt64, 1}};
    schema.tables.push_back(t);
    writer_ = Writer::open(name_, schema);
    thread_ = std::thread([this] { loop(); });
  }
  ~LiveSegment() {
    stop_.store(true);
    thread_.join();
    writer_.reset();
    Writer::remove_segment(name_);
  }
  const std::string& name() const { return name_; }

 private:
  void loop() {
    int64_t i = 0;
    int64_t last_maintain = 0;
    while (!stop_.load()) {
      const FieldValue v = FieldValue::int64(0, i);
      writer_->upsert(0, fmt::format("user:{}", i), layout::now_unix_ns() / 1'000'000,
                      std::span<const FieldValue>(&v, 1));
      ++i;
      const int64_t now = layout::now_mono_ns();
      if (now - last_maintain > 50'000'000) {
        writer_->maintain();
        last_maintain = now;
      }
      std::this_thread::sleep_for(1ms);
    }
  }

  std::string name_;
  std::unique_ptr<Writer> writer_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// The row of table `users` on a captured screen: {updates/s, live keys}.
bool users_row(const std::string& screen, double* per_s, uint64_t* live) {
  static const std::regex row(R"(\n\s*users\s+(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+%\s+(\d+ ms|never))");
  std::smatch m;
  if (!std::regex_search(screen, m, row)) return false;
  *per_s = std::stod(m[1]);
  *live = std::stoull(m[2]);
  return true;
}

class WatchPtyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    socket_ = fmt::format("larder-watch-test-{}", ::getpid());
    session_ = "watch";
    int status = -1;
    run(fmt::format("{} -V >/dev/null 2>&1", LARDER_TMUX), &status);
    if (status != 0) {
      LARDER_SKIP_OR_FAIL(std::string("tmux (") + LARDER_TMUX +
                          ") does not run here; scripts/install-deps.sh installs it");
    }
  }
  void TearDown() override {
    // Only our own server, by its own socket.
    run(fmt::format("{} -L {} kill-server 2>/dev/null", LARDER_TMUX, socket_));
  }
  std::string tmux(const std::string& args, int* status = nullptr) {
    return run(fmt::format("{} -L {} {}", LARDER_TMUX, socket_, args), status);
  }
  std::string capture() { return tmux(fmt::format("capture-pane -p -t {}", session_)); }

  std::string socket_;
  std::string session_;
};

TEST_F(WatchPtyTest, ShowsLiveChangingNumbersOnATerminal) {
  LiveSegment seg(fmt::format("larder-watch-pty-{}", ::getpid()));
  int status = -1;
  tmux(fmt::format("new-session -d -s {} -x 120 -y 20 'exec {} watch {} --interval 0.5'", session_, LARDERCTL_PATH,
                   seg.name()),
       &status);
  ASSERT_EQ(status, 0) << "tmux new-session failed";

  // First screen: wait until watch has drawn the table (the event; only a
  // hang fails on time).
  std::string first;
  double rate1 = 0;
  uint64_t live1 = 0;
  testing::run_until(
      [&] {
        first = capture();
        return users_row(first, &rate1, &live1);
      },
      0s, [] { std::this_thread::sleep_for(50ms); });
  ASSERT_TRUE(users_row(first, &rate1, &live1)) << "no users row on the screen:\n" << first;
  EXPECT_NE(first.find(seg.name()), std::string::npos) << first;
  EXPECT_NE(first.find("writer alive"), std::string::npos) << first;
  EXPECT_NE(first.find("UPDATES/S"), std::string::npos) << first;
  EXPECT_GT(rate1, 0) << first;

  // A later screen shows other numbers: the view is live, not a snapshot.
  // Waits for the redraw that shows more live keys.
  std::string second;
  double rate2 = 0;
  uint64_t live2 = 0;
  testing::run_until(
      [&] {
        second = capture();
        return users_row(second, &rate2, &live2) && live2 > live1 && rate2 > 0;
      },
      0s, [] { std::this_thread::sleep_for(50ms); });
  ASSERT_TRUE(users_row(second, &rate2, &live2)) << second;
  EXPECT_GT(live2, live1) << "first:\n" << first << "\nsecond:\n" << second;
  EXPECT_GT(rate2, 0) << second;
  EXPECT_NE(first, second);
  // The screen is redrawn in place (cleared, then written from the top): the
  // header appears once, not once per refresh scrolled below the last.
  size_t headers = 0;
  for (size_t at = second.find("UPDATES/S"); at != std::string::npos; at = second.find("UPDATES/S", at + 1)) ++headers;
  EXPECT_EQ(headers, 1u) << second;

  // Ctrl-C ends it.
  tmux(fmt::format("send-keys -t {} C-c", session_));
  const bool gone = testing::run_until(
      [&] {
        tmux(fmt::format("has-session -t {} 2>/dev/null", session_), &status);
        return status != 0;
      },
      0s, [] { std::this_thread::sleep_for(50ms); });
  EXPECT_TRUE(gone) << "watch did not exit on Ctrl-C";
}

TEST_F(WatchPtyTest, PlainLinesWithoutATerminal) {
  LiveSegment seg(fmt::format("larder-watch-plain-{}", ::getpid()));
  int status = -1;
  const std::string out =
      run(fmt::format("{} watch {} --interval 0.3 --count 3 </dev/null 2>&1", LARDERCTL_PATH, seg.name()), &status);
  EXPECT_EQ(status, 0);
  EXPECT_EQ(out.find('\x1b'), std::string::npos) << "no escape codes when not a terminal:\n" << out;
  size_t headers = 0, rows = 0;
  for (size_t at = out.find("UPDATES/S"); at != std::string::npos; at = out.find("UPDATES/S", at + 1)) ++headers;
  for (size_t at = out.find("\n  users "); at != std::string::npos; at = out.find("\n  users ", at + 1)) ++rows;
  EXPECT_EQ(headers, 1u) << out;
  EXPECT_EQ(rows, 3u) << out;
}

}  // namespace
}  // namespace larder::test

// larder-backfill on small files: CSV and JSON Lines in and out, the
// out-of-order error, refused rows, partitions whose union is the whole, and
// peak memory that follows the keys, not the number of events (the child's
// ru_maxrss over 100k and 1M events).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "support/run_command.h"

namespace {

constexpr int64_t T0 = 1'700'000'000'000;

const char* kConfig = R"(
tables:
  - name: users
    key_max_len: 32
    capacity: 1000
    fields:
      - {name: spend, type: float64}
      - {name: country, type: string, max_len: 8}
      - {name: country_idx, type: int64, from: country, transform: [{vocabulary: {values: [US, DE, FR]}}]}
    # Every key may hold a dense ring: the writer never refuses an event, so
    # the partitions' union is the whole (a refusal depends on the other keys).
    arena_chunks: 1000
    aggregates:
      - {name: amount_1m, source: amount, fn: sum, window: 1m, resolution: 1s}
      - {name: n_1h, source: amount, fn: count, window: 1h}
      - {name: last2, source: amount, fn: last_n, n: 2}
)";

class Backfill : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("larder-backfill-test-" + std::to_string(::getpid()) + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    write("larder.yaml", kConfig);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  void write(const std::string& name, const std::string& text) const { std::ofstream(path(name)) << text; }
  std::string read(const std::string& name) const {
    std::ifstream in(path(name));
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  larder::testing::CommandRun backfill(const std::string& events, const std::string& spine, const std::string& out,
                                       const std::string& extra = "") const {
    return larder::testing::run_command(std::string(LARDER_BACKFILL_PATH) + " --config " + path("larder.yaml") +
                                        " --events " + events + " --spine " + path(spine) + " --out " + path(out) +
                                        " --scratch-dir " + dir_.string() + " " + extra);
  }

  std::filesystem::path dir_;
};

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream s(text);
  for (std::string line; std::getline(s, line);) out.push_back(line);
  return out;
}

// b's event arrives 1 s after its event time; e2 is delivered twice.
const char* kEventsCsv =
    "key,event_time,arrival_time,amount,spend,country,id\n"
    "a,1700000000000,1700000000000,1,10.5,US,e1\n"
    "a,1700000001000,1700000001000,2,,DE,e2\n"
    "b,1700000002000,1700000003000,5,,FR,e3\n"
    "a,1700000001000,1700000003000,2,,DE,e2\n"  // a redelivery: counts once
    "a,1700000070000,1700000070000,4,,,e4\n";

const char* kEventsJsonl =
    R"({"table":"users","key":"a","event_time":1700000000000,"id":"e1","fields":{"amount":1,"spend":10.5,"country":"US"}})"
    "\n"
    R"({"table":"users","key":"a","event_time":"2023-11-14T22:13:21Z","id":"e2","fields":{"amount":2,"country":"DE"}})"
    "\n"
    R"([{"table":"users","key":"b","event_time":1700000002000,"arrival_time":1700000003000,"id":"e3","fields":{"amount":5,"country":"FR"}}])"
    "\n"
    R"({"table":"users","key":"a","event_time":1700000001000,"arrival_time":"2023-11-14T22:13:23Z","id":"e2","fields":{"amount":2,"country":"DE"}})"
    "\n"
    R"({"table":"users","key":"a","event_time":1700000070000,"id":"e4","fields":{"amount":4}})"
    "\n";

const char* kSpineCsv =
    "key,timestamp,label\n"
    "a,1700000070000,\"x,y\"\n"
    "a,1700000000500,0\n"
    "b,2023-11-14T22:13:23Z,1\n"
    "c,1700000003000,0\n"
    "a,1700000001000,1\n";

TEST_F(Backfill, CsvEventsToCsvAnswersEachSpineRowAtItsInstantInSpineOrder) {
  write("ev.csv", kEventsCsv);
  write("spine.csv", kSpineCsv);
  const auto run = backfill(path("ev.csv"), "spine.csv", "out.csv");
  ASSERT_EQ(run.code, 0) << run.out;
  EXPECT_NE(run.out.find("1 duplicates"), std::string::npos) << run.out;
  const std::vector<std::string> out = lines_of(read("out.csv"));
  ASSERT_EQ(out.size(), 6u) << read("out.csv");
  EXPECT_EQ(out[0], "key,timestamp,label,spend,country,country_idx,amount_1m,n_1h,last2,found,event_time,computed_at");
  EXPECT_EQ(out[1], "a,1700000070000,\"x,y\",10.5,DE,2,4,3,\"[4,2]\",true,1700000070000,1700000070000");
  EXPECT_EQ(out[2], "a,1700000000500,0,10.5,US,1,1,1,\"[1,nan]\",true,1700000000000,1700000000500");
  EXPECT_EQ(out[3], "b,2023-11-14T22:13:23Z,1,,FR,3,5,1,\"[5,nan]\",true,1700000002000,1700000003000");
  EXPECT_EQ(out[4], "c,1700000003000,0,,,,,,,false,,");
  EXPECT_EQ(out[5], "a,1700000001000,1,10.5,DE,2,3,2,\"[2,1]\",true,1700000001000,1700000001000");
}

TEST_F(Backfill, JsonLinesEventsGiveTheSameAnswersAsCsvAndJsonLinesOutKeepsTypes) {
  write("ev.csv", kEventsCsv);
  write("ev.jsonl", kEventsJsonl);
  write("spine.csv", kSpineCsv);
  ASSERT_EQ(backfill(path("ev.csv"), "spine.csv", "from_csv.csv").code, 0);
  const auto run = backfill(path("ev.jsonl"), "spine.csv", "from_jsonl.csv");
  ASSERT_EQ(run.code, 0) << run.out;
  EXPECT_EQ(read("from_csv.csv"), read("from_jsonl.csv"));
  ASSERT_EQ(backfill(path("ev.jsonl"), "spine.csv", "out.jsonl").code, 0);
  const std::vector<std::string> out = lines_of(read("out.jsonl"));
  ASSERT_EQ(out.size(), 5u);
  EXPECT_EQ(out[3], R"({"key":"c","timestamp":1700000003000,"label":0,"spend":null,"country":null,"country_idx":null,)"
                    R"("amount_1m":null,"n_1h":null,"last2":null,"found":false,"event_time":null,"computed_at":null})");
  EXPECT_EQ(out[4], R"({"key":"a","timestamp":1700000001000,"label":1,"spend":10.5,"country":"DE","country_idx":2,)"
                    R"("amount_1m":3,"n_1h":2,"last2":[2,1],"found":true,"event_time":1700000001000,)"
                    R"("computed_at":1700000001000})");
  // A JSON Lines spine: its members go through with their types.
  write("spine.jsonl", R"({"key":"a","timestamp":1700000001000,"label":[1,2],"w":0.5})"
                       "\n");
  ASSERT_EQ(backfill(path("ev.csv"), "spine.jsonl", "out2.jsonl").code, 0);
  EXPECT_TRUE(
      lines_of(read("out2.jsonl")).at(0).starts_with(R"({"key":"a","timestamp":1700000001000,"label":[1,2],"w":0.5,)"))
      << read("out2.jsonl");
}

TEST_F(Backfill, EventsOutOfArrivalOrderAreAnErrorNamingFileAndLine) {
  write("ev.csv",
        "key,event_time,amount\n"
        "a,1700000001000,1\n"
        "a,1700000002000,1\n"
        "a,1700000001500,1\n");
  write("spine.csv", "key,timestamp\na,1700000005000\n");
  const auto run = backfill(path("ev.csv"), "spine.csv", "out.csv");
  EXPECT_EQ(run.code, 1) << run.out;
  EXPECT_NE(run.out.find("ev.csv:4: event time 1700000001500 is before the previous event's 1700000002000"),
            std::string::npos)
      << run.out;
  // With an arrival column, the order is by arrival: this file is fine.
  write("ev2.csv",
        "key,event_time,arrival_time,amount\n"
        "a,1700000001000,1700000001000,1\n"
        "a,1700000002000,1700000002000,1\n"
        "a,1700000001500,1700000002000,1\n");
  const auto ok = backfill(path("ev2.csv"), "spine.csv", "out.csv");
  EXPECT_EQ(ok.code, 0) << ok.out;
  EXPECT_NE(read("out.csv").find(",3,3,"), std::string::npos) << read("out.csv");
  // A malformed row is an error with its line.
  write("ev3.csv", "key,event_time,amount\na,1700000001000,1,2\n");
  const auto bad = backfill(path("ev3.csv"), "spine.csv", "out.csv");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.out.find("ev3.csv:2: 4 cells, the header has 3"), std::string::npos) << bad.out;
}

TEST_F(Backfill, RefusedEventsAreCountedOrWithStrictAnError) {
  write("ev.csv",
        "key,event_time,amount,country\n"
        "a,1700000001000,1,US\n"
        "a,1700000002000,oops,US\n"
        "a,1700000003000,2,Atlantis!\n");  // longer than max_len
  write("spine.csv", "key,timestamp\na,1700000005000\n");
  const auto run = backfill(path("ev.csv"), "spine.csv", "out.csv");
  ASSERT_EQ(run.code, 0) << run.out;
  EXPECT_NE(run.out.find("refused " + path("ev.csv") + ":3: wrong_type"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("refused " + path("ev.csv") + ":4: string_too_long"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("2 refused by the decoder"), std::string::npos) << run.out;
  const auto strict = backfill(path("ev.csv"), "spine.csv", "out.csv", "--strict");
  EXPECT_EQ(strict.code, 1);
  EXPECT_NE(strict.out.find(path("ev.csv") + ":3: wrong_type"), std::string::npos) << strict.out;
}

TEST_F(Backfill, PartitionsAreDisjointAndTheirUnionIsTheWhole) {
  std::string events = "key,event_time,amount\n", spine = "key,timestamp,row\n";
  for (int i = 0; i < 3000; ++i) {
    events += "k" + std::to_string((i * 7919) % 300) + "," + std::to_string(T0 + i * 250) + "," +
              std::to_string(i % 13) + "\n";
  }
  for (int i = 0; i < 600; ++i) {
    spine += "k" + std::to_string((i * 31) % 320) + "," + std::to_string(T0 + (i * 1237) % 800'000) + "," +
             std::to_string(i) + "\n";
  }
  write("ev.csv", events);
  write("spine.csv", spine);
  ASSERT_EQ(backfill(path("ev.csv"), "spine.csv", "all.csv").code, 0);
  std::vector<std::string> whole = lines_of(read("all.csv"));
  ASSERT_EQ(whole.size(), 601u);
  std::vector<std::string> parts;
  for (int p = 0; p < 4; ++p) {
    const std::string out = "part" + std::to_string(p) + ".csv";
    const auto run = backfill(path("ev.csv"), "spine.csv", out, "--partition " + std::to_string(p) + "/4");
    ASSERT_EQ(run.code, 0) << run.out;
    std::vector<std::string> lines = lines_of(read(out));
    ASSERT_FALSE(lines.empty());
    EXPECT_EQ(lines[0], whole[0]);
    EXPECT_GT(lines.size(), 60u);  // every part holds some of the 600 rows
    parts.insert(parts.end(), lines.begin() + 1, lines.end());
  }
  whole.erase(whole.begin());
  std::sort(whole.begin(), whole.end());
  std::sort(parts.begin(), parts.end());
  EXPECT_EQ(parts, whole);
}

// Runs larder-backfill as a child and returns its peak RSS in KiB (-1 when
// it failed).
long peak_rss_kib(const std::vector<std::string>& args) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, STDOUT_FILENO);
    ::dup2(null, STDERR_FILENO);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  struct rusage ru {};
  if (::wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
  return ru.ru_maxrss;
}

TEST_F(Backfill, PeakMemoryFollowsTheKeysNotTheNumberOfEvents) {
  auto generate = [&](const std::string& name, int events) {
    std::ofstream out(path(name));
    out << "key,event_time,amount\n";
    std::string line;
    for (int i = 0; i < events; ++i) {
      // Both streams cover the same hour, so the keys' aggregate state (the
      // buckets they fill) is the same; only the number of events differs.
      const int64_t t = T0 + static_cast<int64_t>(i) * 3'600'000 / events;
      line = "user" + std::to_string(i % 1000) + "," + std::to_string(t) + "," + std::to_string(i % 17) + "\n";
      out << line;
    }
  };
  // 1,000 keys, and room for all of them and their rings: a writer that
  // refuses would send the key-by-key replay back to arrival order.
  std::string config = kConfig;
  config.replace(config.find("capacity: 1000"), 14, "capacity: 2000");
  config.replace(config.find("arena_chunks: 1000"), 18, "arena_chunks: 40000");
  write("larder.yaml", config);
  generate("small.csv", 100'000);
  generate("large.csv", 1'000'000);
  write("spine.csv", "key,timestamp\nuser1,1700000050000\nuser2,1700003600000\n");
  auto args = [&](const std::string& events, const std::string& order) {
    return std::vector<std::string>{LARDER_BACKFILL_PATH, "--config",    path("larder.yaml"),
                                    "--events",           path(events),  "--spine",
                                    path("spine.csv"),    "--out",       path("out.csv"),
                                    "--scratch-dir",      dir_.string(), "--temp-dir",
                                    dir_.string(),        "--order",     order,
                                    "--memory",           "1M",          "--quiet"};
  };
  const auto by_key = backfill(path("small.csv"), "spine.csv", "out.csv", "--memory 1M --temp-dir " + dir_.string());
  ASSERT_EQ(by_key.code, 0) << by_key.out;
  ASSERT_NE(by_key.out.find("replayed key by key, "), std::string::npos) << by_key.out;
  ASSERT_EQ(by_key.out.find("key by key, 1 run"), std::string::npos) << by_key.out;
  // In arrival order memory follows the state alone; key by key, the state
  // and one run (here about 1 MiB of records read back, and the first
  // pass's write buffers, one per run), never the input: the 1M-event file
  // is 24 MiB, its records 56 MiB, and the peak grows by less than 8 MiB.
  for (const std::string order : {"key", "arrival"}) {
    SCOPED_TRACE("--order " + order);
    const long small = peak_rss_kib(args("small.csv", order));
    const long large = peak_rss_kib(args("large.csv", order));
    ASSERT_GT(small, 0);
    ASSERT_GT(large, 0);
    RecordProperty("peak_rss_kib_100k_" + order, std::to_string(small));
    RecordProperty("peak_rss_kib_1m_" + order, std::to_string(large));
    if (order == "arrival") {
      EXPECT_LT(static_cast<double>(large) / static_cast<double>(small), 1.2)
          << "peak RSS " << small << " KiB over 100k events, " << large << " KiB over 1M";
    } else {
      EXPECT_LT(large - small, 8 * 1024) << "peak RSS " << small << " KiB over 100k events, " << large
                                         << " KiB over 1M";
    }
  }
}

}  // namespace

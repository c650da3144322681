// larder-backfill key by key (docs/backfill.md, "Order of the replay"): the
// frame of a replay from run files, one run or many, equals the frame of
// arrival order byte for byte; where keys could share state it falls back to
// arrival order; its run files are removed, checked when read back, and a
// temporary directory it cannot use is a clear error.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "larder/offline/engine.h"
#include "runs.h"
#include "support/run_command.h"

namespace {

constexpr int64_t T0 = 1'700'000'000'000;

// Time windows of several kinds and resolutions (rings longer than their
// inline buckets take arena chunks), count windows, last_n, a string field
// and a vocabulary transform; a lateness that drops events. Room for every
// key and every ring: nothing is refused.
const char* kConfig = R"(
tables:
  - name: users
    key_max_len: 16
    capacity: 256
    allowed_lateness: 20s
    arena_chunks: 20000
    fields:
      - {name: spend, type: float64}
      - {name: country, type: string, max_len: 8}
      - {name: country_idx, type: int64, from: country, transform: [{vocabulary: {values: [fr, de, it]}}]}
    aggregates:
      - {name: sum_5s, source: amount, fn: sum, window: 5s, resolution: 1s}
      - {name: n_5s, source: amount, fn: count, window: 5s, resolution: 1s}
      - {name: var_5s, source: amount, fn: variance, window: 5s, resolution: 1s}
      - {name: std_30s, source: amount, fn: stddev, window: 30s, resolution: 1s}
      - {name: max_30s, source: amount, fn: max, window: 30s, resolution: 1s}
      - {name: min_2m, source: amount, fn: min, window: 2m, resolution: 10s}
      - {name: mean_2m, source: amount, fn: mean, window: 2m, resolution: 10s}
      - {name: clicks_1m, source: clicks, fn: sum, window: 1m, resolution: 5s}
      - {name: last4, source: amount, fn: mean, window: 4 events, min_periods: 1}
      - {name: recent, source: amount, fn: last_n, n: 3}
)";

class BackfillOrder : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("larder-backfill-order-" + std::to_string(::getpid()) + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_ / "tmp");
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
                                       const std::string& extra = "", const std::string& config = "larder.yaml") const {
    return larder::testing::run_command(std::string(LARDER_BACKFILL_PATH) + " --config " + path(config) + " --events " +
                                        events + " --spine " + path(spine) + " --out " + path(out) + " --scratch-dir " +
                                        dir_.string() + " --temp-dir " + path("tmp") + " " + extra);
  }
  bool temp_dir_empty() const { return std::filesystem::is_empty(dir_ / "tmp"); }

  std::filesystem::path dir_;
};

// The summary line's counts (up to the time it took).
std::string counts(const std::string& out) {
  const size_t at = out.find("larder-backfill: ");
  const size_t end = out.find(") in ", at);
  return at == std::string::npos || end == std::string::npos ? out : out.substr(at, end - at);
}

// A seeded stream over `keys` keys, in two files merged by arrival: a CSV
// and a JSON Lines file whose batches hold updates of several keys. Arrival
// after event time (some beyond the lateness), many events at one instant,
// deletes, inputs left out, events the decoder refuses (an empty key, an
// event time before 1970, a wrong type), outliers; and a spine of reads at
// random instants, at events' own arrivals and of keys with no event.
void generate(uint64_t seed, int keys, bool ids, std::string* csv, std::string* jsonl, std::string* spine) {
  std::mt19937_64 rng(seed);
  *csv = "key,event_time,arrival_time,op,amount,spend,country,clicks";
  *csv += ids ? ",id\n" : "\n";
  jsonl->clear();
  *spine = "key,timestamp,row\n";
  int64_t now = T0;
  std::vector<int64_t> arrivals;
  static const char* const kCountries[] = {"fr", "de", "it", "es"};
  for (int i = 0; i < 6000; ++i) {
    if (rng() % 3 != 0) now += static_cast<int64_t>(rng() % 900);  // else the same arrival as the last
    arrivals.push_back(now);
    auto event = [&](std::string key) {
      if (rng() % 200 == 0) key.clear();  // refused: no key
      int64_t t = now - static_cast<int64_t>(rng() % 4 == 0 ? rng() % 30'000 : rng() % 500);
      if (rng() % 300 == 0) t = -5;  // refused: before the epoch
      const double amount = (rng() % 40 == 0 ? 1e8 : 1.0) * std::ldexp(static_cast<double>(rng() >> 11), -40);
      const bool del = rng() % 30 == 0;
      struct {
        std::string key;
        int64_t t;
        bool del;
        double amount;
        std::string country;
        int64_t clicks;
        bool wrong;
      } e{key,
          t,
          del,
          amount,
          rng() % 3 != 0 ? kCountries[rng() % 4] : "",
          static_cast<int64_t>(rng() % 5),
          rng() % 250 == 0};
      return e;
    };
    if (rng() % 4 != 0) {
      auto e = event("k" + std::to_string(rng() % keys));
      *csv += e.key + "," + std::to_string(e.t) + "," + std::to_string(now) + "," + (e.del ? "delete" : "") + "," +
              (e.wrong ? "oops" : fmt::format("{}", e.amount)) + "," + fmt::format("{}", e.amount * 2) + "," +
              e.country + "," + (rng() % 2 ? std::to_string(e.clicks) : "");
      *csv += ids ? ",c" + std::to_string(i) + "\n" : "\n";
    } else {
      const int n = 1 + static_cast<int>(rng() % 3);
      std::string batch = "[";
      for (int u = 0; u < n; ++u) {
        auto e = event("k" + std::to_string(rng() % keys));
        std::string fields = "\"amount\":" + (e.wrong ? "\"oops\"" : fmt::format("{}", e.amount));
        if (!e.country.empty()) fields += ",\"country\":\"" + e.country + "\"";
        if (rng() % 2) fields += ",\"clicks\":" + std::to_string(e.clicks);
        batch += fmt::format(R"({}{{"table":"users","key":"{}","event_time":{},"arrival_time":{}{}{}{}}})",
                             u == 0 ? "" : ",", e.key, e.t, now, e.del ? R"(,"op":"delete")" : "",
                             ids ? ",\"id\":\"j" + std::to_string(i) + "-" + std::to_string(u) + "\"" : "",
                             e.del ? "" : ",\"fields\":{" + fields + "}");
      }
      *jsonl += batch + "]\n";
    }
  }
  for (int r = 0; r < 800; ++r) {
    const int64_t at = rng() % 2 ? arrivals[rng() % arrivals.size()] : T0 + static_cast<int64_t>(rng() % (now - T0));
    *spine += "k" + std::to_string(rng() % (keys + 5)) + "," + std::to_string(at) + "," + std::to_string(r) + "\n";
  }
}

TEST_F(BackfillOrder, KeyByKeyFromOneRunOrManyWritesTheFrameOfArrivalOrderByteForByte) {
  for (uint64_t seed : {11, 12, 13}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::string csv, jsonl, spine;
    generate(seed, 60, false, &csv, &jsonl, &spine);
    write("ev.csv", csv);
    write("ev.jsonl", jsonl);
    write("spine.csv", spine);
    const std::string events = path("ev.csv") + " " + path("ev.jsonl");
    const auto arrival = backfill(events, "spine.csv", "arrival.csv", "--order arrival");
    ASSERT_EQ(arrival.code, 0) << arrival.out;
    EXPECT_NE(arrival.out.find("refused by the decoder"), std::string::npos);
    EXPECT_NE(arrival.out.find("replayed in arrival order (--order arrival)"), std::string::npos) << arrival.out;

    const auto one = backfill(events, "spine.csv", "one.csv");
    ASSERT_EQ(one.code, 0) << one.out;
    EXPECT_NE(one.out.find("replayed key by key, 1 run"), std::string::npos) << one.out;
    EXPECT_EQ(read("one.csv"), read("arrival.csv"));
    EXPECT_EQ(counts(one.out), counts(arrival.out));

    // 4 KiB of memory per run: many runs, each read back and replayed alone.
    const auto many = backfill(events, "spine.csv", "many.jsonl", "--memory 4K");
    ASSERT_EQ(many.code, 0) << many.out;
    EXPECT_NE(many.out.find("replayed key by key, "), std::string::npos) << many.out;
    EXPECT_EQ(many.out.find("key by key, 1 run"), std::string::npos) << many.out;
    ASSERT_EQ(backfill(events, "spine.csv", "arrival.jsonl", "--order arrival").code, 0);
    EXPECT_EQ(read("many.jsonl"), read("arrival.jsonl"));
    EXPECT_EQ(counts(many.out), counts(arrival.out));

    // A partition, key by key in many runs, as the same partition in arrival order.
    const auto part = backfill(events, "spine.csv", "part.csv", "--memory 4K --partition 1/3");
    const auto part_arrival = backfill(events, "spine.csv", "part_arrival.csv", "--order arrival --partition 1/3");
    ASSERT_EQ(part.code, 0) << part.out;
    ASSERT_EQ(part_arrival.code, 0) << part_arrival.out;
    EXPECT_EQ(read("part.csv"), read("part_arrival.csv"));
    EXPECT_TRUE(temp_dir_empty());
  }
}

TEST_F(BackfillOrder, WhereKeysShareStateTheReplayGoesInArrivalOrder) {
  std::string csv, jsonl, spine;
  // Event ids on a table with aggregates: the dedup set is shared.
  generate(21, 60, true, &csv, &jsonl, &spine);
  write("ev.csv", csv);
  write("ev.jsonl", jsonl);
  write("spine.csv", spine);
  const std::string events = path("ev.csv") + " " + path("ev.jsonl");
  const auto ids = backfill(events, "spine.csv", "ids.csv");
  ASSERT_EQ(ids.code, 0) << ids.out;
  EXPECT_NE(ids.out.find("replayed in arrival order (event ids on a table with aggregates)"), std::string::npos)
      << ids.out;
  ASSERT_EQ(backfill(events, "spine.csv", "ids_arrival.csv", "--order arrival").code, 0);
  EXPECT_EQ(read("ids.csv"), read("ids_arrival.csv"));
  // The refusals the first pass showed are not shown again.
  const auto first = ids.out.find("larder-backfill: refused ");
  ASSERT_NE(first, std::string::npos) << ids.out;
  EXPECT_EQ(ids.out.find(ids.out.substr(first, ids.out.find('\n', first) - first), first + 1), std::string::npos)
      << ids.out;

  // A table too small for every key: the writer refuses, which depends on
  // the other keys.
  std::string small = kConfig;
  small.replace(small.find("capacity: 256"), 13, "capacity: 40");
  write("small.yaml", small);
  generate(22, 60, false, &csv, &jsonl, &spine);
  write("ev.csv", csv);
  write("ev.jsonl", jsonl);
  write("spine.csv", spine);
  const auto full = backfill(events, "spine.csv", "full.csv", "--memory 4K", "small.yaml");
  ASSERT_EQ(full.code, 0) << full.out;
  EXPECT_NE(full.out.find("replayed in arrival order (the writer refused events"), std::string::npos) << full.out;
  // (Which keys a full table refuses depends on the scratch segment's hash
  // seed, drawn anew for each replay: two replays in arrival order may
  // differ there too, so there is no frame to compare with.)
  EXPECT_TRUE(temp_dir_empty());
}

TEST_F(BackfillOrder, RunFilesAreRemovedOnErrorAndATempDirThatCannotBeUsedIsAClearError) {
  std::string csv, jsonl, spine;
  generate(31, 60, false, &csv, &jsonl, &spine);
  write("spine.csv", spine);
  // A malformed row near the end: the first pass has written runs by then.
  write("bad.csv", csv + "k1,1800000000000,1800000000000,,1,2,fr\n");
  const auto bad = backfill(path("bad.csv"), "spine.csv", "out.csv", "--memory 4K");
  EXPECT_EQ(bad.code, 1) << bad.out;
  EXPECT_NE(bad.out.find("7 cells, the header has 8"), std::string::npos) << bad.out;
  EXPECT_TRUE(temp_dir_empty());

  // Under a regular file: no directory can be made there.
  write("ev.csv", csv);
  write("file", "");
  const auto run = larder::testing::run_command(std::string(LARDER_BACKFILL_PATH) + " --config " + path("larder.yaml") +
                                                " --events " + path("ev.csv") + " --spine " + path("spine.csv") +
                                                " --out " + path("out.csv") + " --scratch-dir " + dir_.string() +
                                                " --temp-dir " + path("file") + "/sub");
  EXPECT_EQ(run.code, 1) << run.out;
  EXPECT_NE(run.out.find("cannot make a directory for run files under " + path("file") + "/sub: Not a directory"),
            std::string::npos)
      << run.out;
  EXPECT_FALSE(std::filesystem::exists(path("out.csv")));
}

// The run files' reader trusts nothing: a file cut short, a record whose
// length is out of bounds, a count that does not match.
TEST_F(BackfillOrder, RunFilesAreCheckedWhenReadBack) {
  auto engine = larder::offline::Engine::open(path("larder.yaml"));
  auto replay = engine->start();
  larder::sidecar::DecodedBatch batch;
  std::string dir;
  {
    larder::offline::RunWriter runs(path("tmp"), 2, 64);
    dir = runs.dir();
    for (int i = 0; i < 50; ++i) {
      int64_t arrival = T0 + i;
      const std::string body =
          fmt::format(R"([{{"table":"users","key":"k{}","event_time":{},"fields":{{"amount":{},"country":"fr"}}}},)"
                      R"({{"table":"users","key":"j{}","event_time":{},"op":"delete"}}])",
                      i, T0 + i, i * 0.5, i, T0 + i);
      ASSERT_TRUE(replay->decode_json(body, &arrival, batch).ok) << body;
      for (size_t u = 0; u < batch.size(); ++u) runs.add(static_cast<uint32_t>(u), batch, batch.update(u), arrival);
    }
    runs.finish();
    ASSERT_TRUE(std::filesystem::exists(runs.path(0)));

    larder::offline::RunData data;
    larder::offline::read_run(runs, 0, 1, data);
    data.seal();
    ASSERT_EQ(data.events.size(), 50u);
    EXPECT_EQ(data.events[7].key, "k7");
    EXPECT_EQ(data.events[7].arrival_ms, T0 + 7);
    ASSERT_FALSE(data.events[7].values.empty());
    ASSERT_EQ(data.events[7].sources.size(), 1u);  // amount (no clicks)
    EXPECT_EQ(data.events[7].sources[0].value, 3.5);
    bool country = false;  // a string value points into the file's bytes
    for (const larder::FieldValue& v : data.events[7].values) {
      if (v.type == larder::layout::FieldType::kString) {
        country = std::string_view(static_cast<const char*>(v.data), v.length) == "fr";
      }
    }
    EXPECT_TRUE(country);
    larder::offline::read_run(runs, 1, 1, data);
    data.seal();
    ASSERT_EQ(data.events.size(), 100u);
    EXPECT_EQ(data.events[60].op, larder::sidecar::UpdateOp::kDelete);
    EXPECT_EQ(data.events[60].key, "j10");

    auto error_of = [&](uint64_t bytes, uint64_t records) -> std::string {
      try {
        larder::offline::RunData d;
        larder::offline::read_run_file(runs.path(0), bytes, records, 1, d);
      } catch (const std::runtime_error& e) {
        return e.what();
      }
      return "";
    };
    const uint64_t bytes = runs.bytes(0);
    EXPECT_NE(error_of(bytes, 51).find("holds 50 records, 51 were written"), std::string::npos);
    std::filesystem::resize_file(runs.path(0), bytes - 3);
    EXPECT_NE(error_of(bytes, 50).find("was changed or truncated"), std::string::npos) << error_of(bytes, 50);
    // The file's own size: its last record is cut short.
    EXPECT_NE(error_of(bytes - 3, 50).find("the record at byte"), std::string::npos) << error_of(bytes - 3, 50);
    // A body length beyond the file.
    {
      std::fstream f(runs.path(0), std::ios::in | std::ios::out | std::ios::binary);
      const uint32_t huge = 0x7fffffff;
      f.write(reinterpret_cast<const char*>(&huge), sizeof huge);
    }
    EXPECT_NE(error_of(bytes - 3, 50).find("the record at byte 0 has a body length out of bounds"), std::string::npos)
        << error_of(bytes - 3, 50);
  }
  EXPECT_FALSE(std::filesystem::exists(dir));  // removed with the writer
}

}  // namespace

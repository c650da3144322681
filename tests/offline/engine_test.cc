// The offline engine (offline/include/larder/offline/engine.h): replays of
// message format v1 events read back at given instants. Each expectation is
// what a reader of a live sidecar would have read at that instant
// (docs/aggregates.md, docs/client.md "Two ages").
#include "larder/offline/engine.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

using larder::offline::Engine;
using larder::offline::Replay;

constexpr int64_t T0 = 1'700'000'000'000;  // an instant in 2023, on a whole minute

// users: a plain field, and time and count windows over "amount".
// items: no aggregates.
const char* kConfig = R"(
tables:
  - name: users
    key_max_len: 32
    capacity: 64
    allowed_lateness: 30s
    fields:
      - {name: spend, type: float64}
      - {name: country, type: string, max_len: 8}
    aggregates:
      - {name: amount_1m, source: amount, fn: sum, window: 1m, resolution: 1s}
      - {name: n_1m, source: amount, fn: count, window: 1m, resolution: 1s}
      - {name: last3_sum, source: amount, fn: sum, window: 3 events}
      - {name: last3_n, source: amount, fn: count, window: 3 events, min_periods: 1}
  - name: items
    capacity: 16
    fields:
      - {name: price, type: float64}
)";

class OfflineEngine : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("larder-offline-test-" + std::to_string(::getpid()) + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    config_ = (dir_ / "larder.yaml").string();
    std::ofstream(config_) << kConfig;
    larder::offline::EngineOptions options;
    options.scratch_dir = dir_.string();
    engine_ = Engine::open(config_, options);
    replay_ = engine_->start();
    row_users_ = replay_->table(0).make_row();
    row_items_ = replay_->table(1).make_row();
  }
  void TearDown() override {
    replay_.reset();
    engine_.reset();
    std::filesystem::remove_all(dir_);
  }

  // One users event, arriving at its event time unless `arrival` is given.
  void user(const std::string& key, int64_t t, double amount, int64_t arrival = -1, const std::string& id = "") {
    const std::string body = R"({"table":"users","key":")" + key + R"(","event_time":)" + std::to_string(t) +
                             (id.empty() ? "" : R"(,"id":")" + id + "\"") + R"(,"fields":{"amount":)" +
                             std::to_string(amount) + "}}";
    const auto r = replay_->apply_json(body, arrival);
    ASSERT_TRUE(r.ok) << r.detail;
  }
  larder::ReadResult read_user(const std::string& key, int64_t at) { return replay_->read(0, key, at, row_users_); }
  double field(const char* name) {
    const larder::Field f = replay_->table(0).field(name);
    return row_users_.valid(f) ? row_users_.as_f64(f) : NAN;
  }

  std::filesystem::path dir_;
  std::string config_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Replay> replay_;
  larder::Row row_users_;
  larder::Row row_items_;
};

TEST_F(OfflineEngine, LastWriteWinsByEventTimeAndAnOlderEventArrivingLaterIsStale) {
  auto set_price = [&](int64_t t, double price, int64_t arrival) {
    const std::string body = R"({"table":"items","key":"i1","event_time":)" + std::to_string(t) +
                             R"(,"fields":{"price":)" + std::to_string(price) + "}}";
    ASSERT_TRUE(replay_->apply_json(body, arrival).ok);
  };
  const larder::Field price = replay_->table(1).field("price");
  set_price(T0 + 2000, 2.0, T0 + 2000);
  set_price(T0 + 1000, 1.0, T0 + 3000);  // older, arrives later: ignored
  larder::ReadResult r = replay_->read(1, "i1", T0 + 3000, row_items_);
  ASSERT_TRUE(r.found());
  EXPECT_EQ(row_items_.f64(price), 2.0);
  EXPECT_EQ(r.event_time_ms, T0 + 2000);
  // Without aggregates the computed-at instant is the last apply: the
  // stale event's arrival does not count, the winning one's does.
  EXPECT_EQ(r.computed_at_ms, T0 + 2000);
  set_price(T0 + 2000, 3.0, T0 + 4000);  // a tie: the later apply wins
  r = replay_->read(1, "i1", T0 + 4000, row_items_);
  EXPECT_EQ(row_items_.f64(price), 3.0);
  EXPECT_EQ(r.computed_at_ms, T0 + 4000);
  EXPECT_EQ(replay_->counters().stale, 1u);
  EXPECT_EQ(replay_->counters().applied, 2u);
}

TEST_F(OfflineEngine, ADeleteHidesTheRowAndAnOlderUpsertStaysDeleted) {
  user("u1", T0, 5);
  ASSERT_TRUE(
      replay_
          ->apply_json(
              R"({"table":"users","key":"u1","event_time":)" + std::to_string(T0 + 1000) + R"(,"op":"delete"})", -1)
          .ok);
  EXPECT_FALSE(read_user("u1", T0 + 1000).found());
  user("u1", T0 + 500, 7, T0 + 2000);  // older than the delete
  EXPECT_FALSE(read_user("u1", T0 + 2000).found());
  user("u1", T0 + 3000, 9);  // newer: the row comes back with fresh windows
  ASSERT_TRUE(read_user("u1", T0 + 3000).found());
  EXPECT_EQ(field("amount_1m"), 9);
  EXPECT_EQ(field("n_1m"), 1);
}

TEST_F(OfflineEngine, ARedeliveredEventIdCountsOnce) {
  user("u1", T0, 5, -1, "e1");
  user("u1", T0, 5, T0 + 100, "e1");
  user("u1", T0 + 200, 1, -1, "e2");
  ASSERT_TRUE(read_user("u1", T0 + 200).found());
  EXPECT_EQ(field("amount_1m"), 6);
  EXPECT_EQ(field("n_1m"), 2);
  EXPECT_EQ(replay_->counters().duplicates, 1u);
}

TEST_F(OfflineEngine, ALateEventCountsWithinTheLatenessAndIsDroppedBeyondIt) {
  user("u1", T0 + 40'000, 1);
  user("u1", T0 + 20'000, 2, T0 + 40'000);  // 20 s late: within 30 s, still in the window
  user("u1", T0 + 5'000, 4, T0 + 40'000);   // 35 s late: dropped
  ASSERT_TRUE(read_user("u1", T0 + 40'000).found());
  EXPECT_EQ(field("amount_1m"), 3);
  EXPECT_EQ(replay_->counters().late, 1u);
}

TEST_F(OfflineEngine, TimeWindowsEndAtTheReadInstantAndDecayWithoutEvents) {
  user("u1", T0 + 1'000, 1);
  user("u1", T0 + 30'000, 2);
  ASSERT_TRUE(read_user("u1", T0 + 30'000).found());
  EXPECT_EQ(field("amount_1m"), 3);
  // (T0+60.5s-1m, T0+60.5s] to bucket resolution: the bucket of T0+1s has left.
  larder::ReadResult r = read_user("u1", T0 + 61'500);
  ASSERT_TRUE(r.found());
  EXPECT_EQ(field("amount_1m"), 2);
  EXPECT_EQ(field("n_1m"), 1);
  // Windows are current as of the read instant, not the last event.
  EXPECT_EQ(r.computed_at_ms, T0 + 61'500);
  EXPECT_EQ(r.event_time_ms, T0 + 30'000);
  r = read_user("u1", T0 + 95'000);
  ASSERT_TRUE(r.found());
  EXPECT_EQ(field("amount_1m"), 0);
  EXPECT_EQ(field("n_1m"), 0);
  // Count windows do not decay: the key's 3 newest events, whatever their age.
  EXPECT_EQ(field("last3_n"), 2);
  EXPECT_TRUE(std::isnan(field("last3_sum")));  // fewer than min_periods (3)
}

TEST_F(OfflineEngine, CountWindowsHoldTheNewestEventsByEventTime) {
  for (int i = 0; i < 5; ++i) user("u1", T0 + i * 1000, i + 1);  // 1..5
  ASSERT_TRUE(read_user("u1", T0 + 4000).found());
  EXPECT_EQ(field("last3_sum"), 3 + 4 + 5);
  EXPECT_EQ(field("last3_n"), 3);
  user("u1", T0 + 3500, 100, T0 + 5000);  // late, but among the 3 newest by event time
  ASSERT_TRUE(read_user("u1", T0 + 5000).found());
  EXPECT_EQ(field("last3_sum"), 4 + 100 + 5);
}

TEST_F(OfflineEngine, NoEventArrivingAfterTheReadInstantIsSeen) {
  user("u1", T0, 1);
  user("u1", T0 + 1000, 2);
  // An event arriving at the instant counts.
  ASSERT_TRUE(read_user("u1", T0 + 1000).found());
  EXPECT_EQ(field("amount_1m"), 3);
  EXPECT_EQ(replay_->counters().events, 2u);
  // One arriving 1 ms later cannot be applied before that read: the engine
  // refuses to read behind what it applied (the merge of events and reads
  // by time is the caller's: the C ABI and larder-backfill make it).
  user("u1", T0 + 1001, 4);
  EXPECT_THROW(read_user("u1", T0 + 1000), std::invalid_argument);
  ASSERT_TRUE(read_user("u1", T0 + 1001).found());
  EXPECT_EQ(field("amount_1m"), 7);
  // A key whose first event comes later is not found before it.
  EXPECT_FALSE(read_user("u2", T0 + 2000).found());
  user("u2", T0 + 2001, 1);
  EXPECT_TRUE(read_user("u2", T0 + 2001).found());
}

TEST_F(OfflineEngine, ArrivalOrderIsRequired) {
  user("u1", T0 + 1000, 1);
  EXPECT_THROW(
      replay_->apply_json(
          R"({"table":"users","key":"u1","event_time":)" + std::to_string(T0) + R"(,"fields":{"amount":1}})", T0 + 999),
      std::invalid_argument);
  EXPECT_THROW(read_user("u1", T0 + 999), std::invalid_argument);
}

TEST_F(OfflineEngine, RefusedMessagesAreCountedAndApplyNothing) {
  EXPECT_FALSE(replay_->apply_json(R"({"table":"users","key":"u1","event_time":1,"fields":{"nope":1}})", T0).ok);
  EXPECT_FALSE(replay_->apply_json(R"({"table":"nope","key":"u1","event_time":1,"fields":{}})", T0).ok);
  EXPECT_FALSE(replay_->apply_json("not json", T0).ok);
  // More than max_future_skew (5 min) ahead of its arrival.
  EXPECT_FALSE(replay_
                   ->apply_json(R"({"table":"users","key":"u1","event_time":)" + std::to_string(T0 + 400'000) +
                                    R"(,"fields":{"amount":1}})",
                                T0)
                   .ok);
  EXPECT_EQ(replay_->counters().rejected, 4u);
  EXPECT_FALSE(read_user("u1", T0 + 1).found());
}

// Sources are not read: a config whose connection settings the sidecar
// would refuse (no password_env, a kafka section without brokers, a
// database of no known driver) still gives its tables' features.
TEST_F(OfflineEngine, SourcesOfTheConfigAreNotRead) {
  const std::string config = (dir_ / "sources.yaml").string();
  std::ofstream(config) << kConfig << R"(
rabbitmq:
  url: amqp://larder@127.0.0.1:5672/
  queue: {name: offline}
kafka: {topics: []}
databases:
  - {driver: nosuch}
)";
  larder::offline::EngineOptions options;
  options.scratch_dir = dir_.string();
  std::unique_ptr<Engine> engine;
  ASSERT_NO_THROW(engine = Engine::open(config, options));
  EXPECT_EQ(engine->table_index("users"), 0);
  std::unique_ptr<Replay> replay = engine->start();
  ASSERT_TRUE(
      replay
          ->apply_json(
              R"({"table":"users","key":"u1","event_time":)" + std::to_string(T0) + R"(,"fields":{"spend":2.5}})", T0)
          .ok);
  larder::Row row = replay->table(0).make_row();
  ASSERT_TRUE(replay->read(0, "u1", T0, row).found());
  EXPECT_EQ(row.f64(replay->table(0).field("spend")), 2.5);
  // Its tables are still checked.
  std::ofstream(config) << "tables: [{name: t, capacity: 4, fields: [{name: x, type: nosuch}]}]\n";
  EXPECT_THROW(Engine::open(config, options), std::runtime_error);
}

// Time windows of every moment kind at three resolutions (keys fall due at
// different instants), a ring longer than the inline buckets, a count window
// and last, over two inputs; plain fields; dedup and lateness.
const char* kRefreshConfig = R"(
tables:
  - name: users
    key_max_len: 16
    capacity: 256
    allowed_lateness: 20s
    fields:
      - {name: spend, type: float64}
    aggregates:
      - {name: sum_5s, source: amount, fn: sum, window: 5s, resolution: 1s}
      - {name: n_5s, source: amount, fn: count, window: 5s, resolution: 1s}
      - {name: var_5s, source: amount, fn: variance, window: 5s, resolution: 1s}
      - {name: std_30s, source: amount, fn: stddev, window: 30s, resolution: 1s}
      - {name: max_30s, source: amount, fn: max, window: 30s, resolution: 1s}
      - {name: min_2m, source: amount, fn: min, window: 2m, resolution: 10s}
      - {name: mean_2m, source: amount, fn: mean, window: 2m, resolution: 10s}
      - {name: last_2m, source: amount, fn: last, window: 2m, resolution: 10s}
      - {name: clicks_1m, source: clicks, fn: sum, window: 1m, resolution: 5s}
      - {name: last4, source: amount, fn: mean, window: 4 events, min_periods: 1}
)";

// The variance and stddev outputs first (kRefreshSpreadFields), then the
// others.
const char* const kRefreshFields[] = {"var_5s", "std_30s", "spend",   "sum_5s",    "n_5s", "max_30s",
                                      "min_2m", "mean_2m", "last_2m", "clicks_1m", "last4"};
constexpr size_t kRefreshSpreadFields = 2;

// The frame read with each key refreshed alone (the default) equals the
// frame read after a refresh of every key at each instant (the sidecar's
// way, EngineOptions::refresh_all_keys), on a seeded stream with arrival
// after event time, late and duplicate events, deletes, outliers, and reads
// at random instants between them: bit for bit, except variance and stddev,
// to rounding. A window's M2 is recomputed from its buckets when a bucket
// that leaves takes most of it; a key refreshed between two such departures
// recomputes at the first, one refreshed once only at the end, so the last
// bits may differ (docs/backfill.md, "Refresh"). LARDER_SEED=N replays a
// seed.
TEST(OfflineRefresh, PerKeyRefreshReadsTheSameFrameAsAGlobalRefresh) {
  const char* env = std::getenv("LARDER_SEED");
  const uint64_t seed = env != nullptr
                            ? std::strtoull(env, nullptr, 10)
                            : static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  std::printf("OfflineRefresh: seed %llu (replay with LARDER_SEED=%llu)\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("larder-offline-refresh-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  // Removed on every exit, a failed assertion's too (after the replays,
  // declared later, are gone).
  struct RemoveDir {
    std::filesystem::path p;
    ~RemoveDir() { std::filesystem::remove_all(p); }
  } remove_dir{dir};
  const std::string config = (dir / "larder.yaml").string();
  std::ofstream(config) << kRefreshConfig;
  larder::offline::EngineOptions per_key;
  per_key.scratch_dir = dir.string();
  larder::offline::EngineOptions global = per_key;
  global.refresh_all_keys = true;
  const auto engine_a = Engine::open(config, per_key);
  const auto engine_b = Engine::open(config, global);
  auto a = engine_a->start();
  auto b = engine_b->start();
  larder::Row row_a = a->table(0).make_row(), row_b = b->table(0).make_row();

  std::mt19937_64 rng(seed);
  int64_t now = T0;
  uint64_t found = 0, spread_differs = 0;
  for (int step = 0; step < 20'000; ++step) {
    now += static_cast<int64_t>(rng() % 700);  // buckets of 1 s leave between events
    const std::string key = "k" + std::to_string(rng() % 60);
    const uint64_t what = rng() % 10;
    if (what < 3) {
      const larder::ReadResult ra = a->read(0, key, now, row_a);
      const larder::ReadResult rb = b->read(0, key, now, row_b);
      ASSERT_EQ(ra.status, rb.status) << key << " at step " << step;
      ASSERT_EQ(ra.event_time_ms, rb.event_time_ms) << key << " at step " << step;
      ASSERT_EQ(ra.computed_at_ms, rb.computed_at_ms) << key << " at step " << step;
      for (size_t i = 0; i < std::size(kRefreshFields); ++i) {
        const larder::Field field = a->table(0).field(kRefreshFields[i]);
        const auto where = [&] { return std::string(field.name) + " of " + key + " at step " + std::to_string(step); };
        ASSERT_EQ(row_a.valid(field), row_b.valid(field)) << where();
        if (!row_a.valid(field)) continue;
        if (field.type == larder::FieldType::kInt64) {
          ASSERT_EQ(row_a.i64(field), row_b.i64(field)) << where();
        } else if (i < kRefreshSpreadFields) {
          // The spread: to rounding (see above). move_window keeps an M2 by
          // subtraction only while what leaves is at most 1e6 times what
          // stays, so each step is exact to about 1e6 ulps (2e-10).
          ASSERT_NEAR(row_a.f64(field), row_b.f64(field), 1e-9 * std::max(std::abs(row_b.f64(field)), 1.0)) << where();
          spread_differs += row_a.f64(field) != row_b.f64(field);
        } else {
          ASSERT_EQ(std::bit_cast<uint64_t>(row_a.f64(field)), std::bit_cast<uint64_t>(row_b.f64(field)))
              << where() << ": " << row_a.f64(field) << " against " << row_b.f64(field);
        }
      }
      found += ra.found() ? 1 : 0;
      continue;
    }
    std::string body;
    // Up to 30 s before its arrival: some late (beyond 20 s), some in a
    // bucket that already left a short window.
    const int64_t t = now - static_cast<int64_t>(rng() % 4 == 0 ? rng() % 30'000 : rng() % 500);
    if (what == 3 && rng() % 4 == 0) {
      body = R"({"table":"users","key":")" + key + R"(","event_time":)" + std::to_string(t) + R"(,"op":"delete"})";
    } else {
      // Values of very different sizes now and then, so windows lose their
      // extremes and most of their spread.
      const double amount = (rng() % 40 == 0 ? 1e8 : 1.0) * std::ldexp(static_cast<double>(rng() >> 11), -40);
      const std::string id = rng() % 8 == 0 ? R"(,"id":")" + key + "-" + std::to_string(rng() % 4) + "\"" : "";
      body = R"({"table":"users","key":")" + key + R"(","event_time":)" + std::to_string(t) + id +
             R"(,"fields":{"spend":)" + std::to_string(amount) + R"(,"amount":)" + std::to_string(amount) +
             (rng() % 2 == 0 ? R"(,"clicks":)" + std::to_string(rng() % 5) : std::string()) + "}}";
    }
    ASSERT_TRUE(a->apply_json(body, now).ok) << body;
    ASSERT_TRUE(b->apply_json(body, now).ok) << body;
  }
  EXPECT_GT(found, 3000u);
  std::printf("OfflineRefresh: %llu reads found, %llu spread values differ in their last bits\n",
              static_cast<unsigned long long>(found), static_cast<unsigned long long>(spread_differs));
  const auto& ca = a->counters();
  const auto& cb = b->counters();
  EXPECT_EQ(ca.applied, cb.applied);
  EXPECT_EQ(ca.late, cb.late);
  EXPECT_EQ(ca.duplicates, cb.duplicates);
  EXPECT_EQ(ca.refused, 0u);
  EXPECT_GT(ca.late, 0u);
  EXPECT_GT(ca.duplicates, 0u);
}

TEST(OfflinePartition, SplitsKeysEvenlyAndTheSameWayEveryTime) {
  std::vector<size_t> counts(4, 0);
  for (int i = 0; i < 40'000; ++i) {
    const std::string key = "user:" + std::to_string(i);
    const uint32_t p = larder::offline::partition_of(key, 4);
    ASSERT_LT(p, 4u);
    ASSERT_EQ(p, larder::offline::partition_of(key, 4));
    ++counts[p];
  }
  for (size_t c : counts) EXPECT_NEAR(static_cast<double>(c), 10'000.0, 500.0);
  EXPECT_EQ(larder::offline::partition_of("anything", 1), 0u);
}

}  // namespace

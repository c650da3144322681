// The offline engine (offline/include/larder/offline/engine.h): replays of
// message format v1 events read back at given instants. Each expectation is
// what a reader of a live sidecar would have read at that instant
// (docs/aggregates.md, docs/client.md "Two ages").
#include "larder/offline/engine.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

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
    dir_ = std::filesystem::temp_directory_path() /
           ("larder-offline-test-" + std::to_string(::getpid()) + "-" +
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
  larder::ReadResult read_user(const std::string& key, int64_t at) {
    return replay_->read(0, key, at, row_users_);
  }
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
  ASSERT_TRUE(replay_->apply_json(R"({"table":"users","key":"u1","event_time":)" + std::to_string(T0 + 1000) +
                                      R"(,"op":"delete"})",
                                  -1)
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
  EXPECT_THROW(replay_->apply_json(R"({"table":"users","key":"u1","event_time":)" + std::to_string(T0) +
                                       R"(,"fields":{"amount":1}})",
                                   T0 + 999),
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
  ASSERT_TRUE(replay->apply_json(R"({"table":"users","key":"u1","event_time":)" + std::to_string(T0) +
                                     R"(,"fields":{"spend":2.5}})",
                                 T0)
                  .ok);
  larder::Row row = replay->table(0).make_row();
  ASSERT_TRUE(replay->read(0, "u1", T0, row).found());
  EXPECT_EQ(row.f64(replay->table(0).field("spend")), 2.5);
  // Its tables are still checked.
  std::ofstream(config) << "tables: [{name: t, capacity: 4, fields: [{name: x, type: nosuch}]}]\n";
  EXPECT_THROW(Engine::open(config, options), std::runtime_error);
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

// Writer::refresh_key (writer.h): one key's aggregates brought to an instant
// by the same per-key step as Writer::refresh, and a writer without the
// refresh queue (WriterOptions::refresh_queue = false).
//
// Two segments get the same seeded stream of events; one is refreshed
// globally at each read instant, the other refreshes only the key it reads.
// Every test drives the writer's clock itself; nothing sleeps. The seed is
// printed: replay with LARDER_SEED=N.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "larder/client.h"
#include "larder/layout/schema.h"
#include "larder/writer/writer.h"
#include "support/test_segment.h"

namespace larder {
namespace {

using layout::AggregateFn;
using layout::AggregateSpec;
using layout::FieldType;
using layout::TableSpec;
using testing::ScratchSegment;

constexpr int64_t kBaseMs = 4'102'444'800'000;  // 2100-01-01, a multiple of every resolution
constexpr int64_t ns(int64_t ms) { return ms * 1'000'000; }

uint64_t seed_for(const char* test) {
  const char* s = std::getenv("LARDER_SEED");
  const uint64_t seed = s != nullptr
                            ? std::strtoull(s, nullptr, 10)
                            : static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  std::printf("%s: seed %llu (replay with LARDER_SEED=%llu)\n", test, static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  return seed;
}

AggregateSpec agg(std::string name, AggregateFn fn, int64_t window_ms, int64_t resolution_ms) {
  AggregateSpec a;
  a.name = std::move(name);
  a.source = "amount";
  a.fn = fn;
  a.window_ms = window_ms;
  a.resolution_ms = resolution_ms;
  return a;
}

// Time windows at two resolutions, so keys fall due at different instants.
// No variance: its M2 may differ in the last bits with the refresh instants
// (the offline engine's OfflineRefresh test compares it to rounding).
layout::Schema schema() {
  TableSpec t;
  t.name = "users";
  t.key_max_len = 16;
  t.capacity = 64;
  t.fields = {{"amount", FieldType::kFloat64, 1}};
  t.aggregates = {
      agg("sum_5s", AggregateFn::kSum, 5000, 1000),       agg("n_5s", AggregateFn::kCount, 5000, 1000),
      agg("last_5s", AggregateFn::kLast, 5000, 1000),     agg("max_20s", AggregateFn::kMax, 20'000, 1000),
      agg("mean_1m", AggregateFn::kMean, 60'000, 10'000), agg("min_1m", AggregateFn::kMin, 60'000, 10'000),
  };
  layout::Schema s;
  s.tables.push_back(t);
  return s;
}

struct Side {
  ScratchSegment seg;
  std::unique_ptr<Writer> writer;
  Segment client;
  Table table;
  Row row;

  explicit Side(bool queue, bool crash_safety = true) {
    WriterOptions o = seg.writer_options();
    o.refresh_queue = queue;
    o.crash_safety = crash_safety;
    writer = Writer::open(seg.name(), schema(), o);
    ClientOptions c;
    c.dir = seg.dir();
    client = Segment::open(seg.name(), c);
    table = client.table("users");
    row = table.make_row();
  }
  std::vector<uint64_t> read(const std::string& key) {
    const ReadResult r = table.get(key, row);
    if (!r.found()) return {};
    return std::vector<uint64_t>(row.data(), row.data() + row.words());
  }
};

std::string key_of(uint64_t i) { return "k" + std::to_string(i); }

void apply(Writer& w, const std::string& key, int64_t t, double v) {
  const FieldValue f = FieldValue::float64(0, v);
  const SourceValue s{0, v, 0};
  ASSERT_EQ(w.apply(0, key, t, {&f, 1}, {&s, 1}, 0, ns(t)), ApplyResult::kApplied);
}

// A key refreshed alone reads, bit for bit, as after a global refresh at the
// same instant, on a seeded stream of events and reads over 20 keys.
TEST(RefreshKey, AKeyRefreshedAloneReadsAsAfterAGlobalRefresh) {
  std::mt19937_64 rng(seed_for("RefreshKey.AKeyRefreshedAloneReadsAsAfterAGlobalRefresh"));
  Side global(true), alone(false);
  int64_t now = kBaseMs;
  uint64_t rewritten = 0;
  for (int step = 0; step < 4000; ++step) {
    now += static_cast<int64_t>(rng() % 1500);  // gaps up to 1.5 s: buckets leave between events
    const std::string key = key_of(rng() % 20);
    if (rng() % 3 != 0) {
      // Values far apart now and then, so windows lose their extremes.
      const double v = (rng() % 50 == 0 ? 1e9 : 1.0) * std::ldexp(static_cast<double>(rng() >> 11), -53);
      apply(*global.writer, key, now, v);
      apply(*alone.writer, key, now, v);
      continue;
    }
    global.writer->refresh(ns(now));
    rewritten += alone.writer->refresh_key(0, key, ns(now)) ? 1 : 0;
    ASSERT_EQ(global.read(key), alone.read(key)) << key << " at step " << step;
  }
  EXPECT_GT(rewritten, 100u);  // the stream made keys due often
}

// refresh_key rewrites the key read and no other: every other row keeps
// every word, and a key not due is not rewritten.
TEST(RefreshKey, OtherKeysAreUntouched) {
  for (bool queue : {true, false}) {
    Side s(queue);
    for (uint64_t i = 0; i < 8; ++i) apply(*s.writer, key_of(i), kBaseMs + static_cast<int64_t>(i), 1.0 + i);
    std::vector<std::vector<uint64_t>> before;
    for (uint64_t i = 0; i < 8; ++i) before.push_back(s.read(key_of(i)));
    // Not due yet (the 5 s windows keep their first bucket until +5 s).
    EXPECT_FALSE(s.writer->refresh_key(0, key_of(3), ns(kBaseMs + 4000)));
    EXPECT_EQ(s.writer->stats(0).refreshes, 0u);
    const int64_t at = kBaseMs + 6000;
    EXPECT_TRUE(s.writer->refresh_key(0, key_of(3), ns(at)));
    EXPECT_EQ(s.writer->stats(0).refreshes, 1u);
    for (uint64_t i = 0; i < 8; ++i) {
      if (i == 3) {
        EXPECT_NE(s.read(key_of(i)), before[i]);
        continue;
      }
      EXPECT_EQ(s.read(key_of(i)), before[i]) << key_of(i);
    }
    const Field n5 = s.table.field("n_5s");
    ASSERT_TRUE(s.table.get(key_of(3), s.row).found());
    EXPECT_EQ(s.row.i64(n5), 0);
    // Brought to the instant already: a second call has nothing to do.
    EXPECT_FALSE(s.writer->refresh_key(0, key_of(3), ns(at)));
    // Absent keys, bad tables and keys: nothing, no throw.
    EXPECT_FALSE(s.writer->refresh_key(0, "absent", ns(at)));
    EXPECT_FALSE(s.writer->refresh_key(0, "", ns(at)));
    EXPECT_FALSE(s.writer->refresh_key(0, std::string(64, 'x'), ns(at)));
    EXPECT_FALSE(s.writer->refresh_key(7, key_of(1), ns(at)));
    // A deleted key has no windows to move.
    ASSERT_EQ(s.writer->remove(0, key_of(5), kBaseMs + 7000, ns(kBaseMs + 7000)), ApplyResult::kApplied);
    EXPECT_FALSE(s.writer->refresh_key(0, key_of(5), ns(kBaseMs + 8000)));
    EXPECT_EQ(s.writer->stats(0).refreshes, 1u);
  }
}

// Without the queue, refresh() refreshes no key and says none is due; the
// keys a read asks for are still brought to its instant.
TEST(RefreshKey, WithoutTheQueueRefreshOnlyMovesTheClock) {
  Side s(false);
  for (uint64_t i = 0; i < 8; ++i) apply(*s.writer, key_of(i), kBaseMs, 2.0);
  const auto before = s.read(key_of(0));
  EXPECT_EQ(s.writer->refresh(ns(kBaseMs + 120'000)), 0u);
  EXPECT_FALSE(s.writer->refresh_due());
  EXPECT_EQ(s.read(key_of(0)), before);
  EXPECT_EQ(s.table.stats().aggregate_clock_ms, kBaseMs + 120'000);
  EXPECT_TRUE(s.writer->refresh_key(0, key_of(0), ns(kBaseMs + 120'000)));
  ASSERT_TRUE(s.table.get(key_of(0), s.row).found());
  EXPECT_EQ(s.row.i64(s.table.field("n_5s")), 0);
  EXPECT_FALSE(s.row.valid(s.table.field("mean_1m")));  // an empty window has no mean
}

// A writer without crash safety (WriterOptions::crash_safety = false, the
// offline replay's scratch writer) skips only what a restart reads: every
// row, bit for bit, and the table's counters are those of a crash-safe
// writer given the same seeded stream of upserts, deletes and refreshes.
TEST(RefreshKey, WithoutCrashSafetyEveryRowReadsAsWithIt) {
  std::mt19937_64 rng(seed_for("RefreshKey.WithoutCrashSafetyEveryRowReadsAsWithIt"));
  Side safe(false, true), scratch(false, false);
  int64_t now = kBaseMs;
  for (int step = 0; step < 4000; ++step) {
    now += static_cast<int64_t>(rng() % 1500);
    const std::string key = key_of(rng() % 20);
    const uint64_t what = rng() % 10;
    if (what < 6) {
      const double v = std::ldexp(static_cast<double>(rng() >> 11), -53);
      apply(*safe.writer, key, now, v);
      apply(*scratch.writer, key, now, v);
    } else if (what == 6) {
      ASSERT_EQ(safe.writer->remove(0, key, now, ns(now)), scratch.writer->remove(0, key, now, ns(now)));
    } else {
      ASSERT_EQ(safe.writer->refresh_key(0, key, ns(now)), scratch.writer->refresh_key(0, key, ns(now)));
      ASSERT_EQ(safe.read(key), scratch.read(key)) << key << " at step " << step;
    }
  }
  for (uint64_t i = 0; i < 20; ++i) EXPECT_EQ(safe.read(key_of(i)), scratch.read(key_of(i))) << key_of(i);
  EXPECT_EQ(safe.table.stats().live_keys, scratch.table.stats().live_keys);
  EXPECT_EQ(safe.table.stats().tombstones, scratch.table.stats().tombstones);
  EXPECT_GT(safe.table.stats().live_keys, 0u);
}

}  // namespace
}  // namespace larder

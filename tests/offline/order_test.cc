// The order of the replay (larder/offline.h, larder_offline_set_order): a
// frame built key by key equals the frame built in arrival order, through
// the C ABI as the Python package calls it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "larder/offline.h"

namespace {

constexpr int64_t T0 = 1'700'000'000'000;  // on a whole minute

// Time windows of every moment kind at several resolutions (a ring longer
// than its inline buckets takes arena chunks), count windows, last_n, a
// plain string field and a plain float field with a lateness that drops
// events. The arena is large enough that nothing is refused.
const char* kConfig = R"(
tables:
  - name: users
    key_max_len: 16
    capacity: 64
    allowed_lateness: 20s
    arena_chunks: 8192
    fields:
      - {name: spend, type: float64}
      - {name: country, type: string, max_len: 8}
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
      - {name: n3, source: amount, fn: count, window: 3 events}
      - {name: recent, source: amount, fn: last_n, n: 3}
)";

struct Events {
  std::string keys, ids, country;
  std::vector<int64_t> key_offsets{0}, id_offsets{0}, country_offsets{0};
  std::vector<int64_t> event_time, arrival, clicks;
  std::vector<double> amount, spend;
  std::vector<uint8_t> op, clicks_present, country_present;
  std::string spine_keys;
  std::vector<int64_t> spine_offsets{0}, spine_at;
};

// A seeded stream over 40 keys: arrival after event time (some beyond the
// lateness, some in a bucket that already left a short window), many events
// arriving at the same instant, deletes, redeliveries of an earlier event
// (the same id, time and values), outliers, inputs left out, events the
// decoder refuses (an empty key, an event time before 1970), and a spine of
// reads at random instants, at events' own arrivals and of keys with no
// event.
Events generate(uint64_t seed) {
  Events e;
  std::mt19937_64 rng(seed);
  int64_t now = T0;
  std::vector<size_t> sent;
  for (int i = 0; i < 12'000; ++i) {
    if (rng() % 3 != 0) now += static_cast<int64_t>(rng() % 900);  // else the same arrival as the last
    size_t from = SIZE_MAX;
    if (!sent.empty() && rng() % 25 == 0) from = sent[rng() % sent.size()];  // a redelivery
    std::string key = from != SIZE_MAX ? std::string(e.keys.data() + e.key_offsets[from],
                                                     e.key_offsets[from + 1] - e.key_offsets[from])
                                       : "k" + std::to_string(rng() % 40);
    if (from == SIZE_MAX && rng() % 200 == 0) key.clear();  // refused: no key
    e.keys += key;
    e.key_offsets.push_back(static_cast<int64_t>(e.keys.size()));
    const std::string id =
        from != SIZE_MAX ? std::string(e.ids.data() + e.id_offsets[from], e.id_offsets[from + 1] - e.id_offsets[from])
                         : key + "-" + std::to_string(i);
    e.ids += id;
    e.id_offsets.push_back(static_cast<int64_t>(e.ids.size()));
    e.arrival.push_back(now);
    if (from != SIZE_MAX) {
      e.event_time.push_back(e.event_time[from]);
      e.op.push_back(e.op[from]);
      e.amount.push_back(e.amount[from]);
      e.spend.push_back(e.spend[from]);
      e.clicks.push_back(e.clicks[from]);
      e.clicks_present.push_back(e.clicks_present[from]);
      e.country += std::string(e.country.data() + e.country_offsets[from],
                               e.country_offsets[from + 1] - e.country_offsets[from]);
      e.country_present.push_back(e.country_present[from]);
    } else {
      int64_t t = now - static_cast<int64_t>(rng() % 4 == 0 ? rng() % 30'000 : rng() % 500);
      if (rng() % 300 == 0) t = -5;  // refused: before the epoch
      e.event_time.push_back(t);
      e.op.push_back(rng() % 30 == 0 ? 1 : 0);
      const double amount = (rng() % 40 == 0 ? 1e8 : 1.0) * std::ldexp(static_cast<double>(rng() >> 11), -40);
      e.amount.push_back(amount);
      e.spend.push_back(amount * 2);
      e.clicks.push_back(static_cast<int64_t>(rng() % 5));
      e.clicks_present.push_back(rng() % 2);
      static const char* const kCountries[] = {"fr", "de", "it", "es"};
      e.country += kCountries[rng() % 4];
      e.country_present.push_back(rng() % 3 != 0 ? 1 : 0);
    }
    e.country_offsets.push_back(static_cast<int64_t>(e.country.size()));
    sent.push_back(static_cast<size_t>(i));
  }
  for (int i = 0; i < 4'000; ++i) {
    e.spine_keys += "k" + std::to_string(rng() % 44);  // k40..k43: never written
    e.spine_offsets.push_back(static_cast<int64_t>(e.spine_keys.size()));
    const int64_t at =
        rng() % 3 == 0 ? e.arrival[rng() % e.arrival.size()] : T0 + static_cast<int64_t>(rng() % (now - T0));
    e.spine_at.push_back(at);
  }
  return e;
}

struct FrameFree {
  void operator()(larder_offline_frame* f) const { larder_offline_frame_free(f); }
};
using Frame = std::unique_ptr<larder_offline_frame, FrameFree>;

Frame build(const std::string& config, const Events& e, int32_t order, bool with_ids, uint32_t partition = 0,
            uint32_t partitions = 1) {
  char err[512];
  larder_offline* engine = nullptr;
  if (larder_offline_open(config.c_str(), partition, partitions, &engine, err, sizeof err) != 0) {
    ADD_FAILURE() << "open: " << err;
    return nullptr;
  }
  EXPECT_EQ(larder_offline_set_order(engine, order), 0);
  larder_offline_column cols[4] = {};
  cols[0].name = "amount";
  cols[0].type = LARDER_OFFLINE_FLOAT64;
  cols[0].data = e.amount.data();
  cols[1].name = "spend";
  cols[1].type = LARDER_OFFLINE_FLOAT64;
  cols[1].data = e.spend.data();
  cols[2].name = "clicks";
  cols[2].type = LARDER_OFFLINE_INT64;
  cols[2].data = e.clicks.data();
  cols[2].present = e.clicks_present.data();
  cols[3].name = "country";
  cols[3].type = LARDER_OFFLINE_STRING;
  cols[3].data = e.country.data();
  cols[3].offsets = e.country_offsets.data();
  cols[3].present = e.country_present.data();
  larder_offline_events ev{};
  ev.table = "users";
  ev.n = e.arrival.size();
  ev.keys = e.keys.data();
  ev.key_offsets = e.key_offsets.data();
  ev.event_time_ms = e.event_time.data();
  ev.arrival_ms = e.arrival.data();
  ev.op = e.op.data();
  if (with_ids) {
    ev.ids = e.ids.data();
    ev.id_offsets = e.id_offsets.data();
  }
  ev.columns = cols;
  ev.column_count = 4;
  larder_offline_spine sp{};
  sp.table = "users";
  sp.n = e.spine_at.size();
  sp.keys = e.spine_keys.data();
  sp.key_offsets = e.spine_offsets.data();
  sp.at_ms = e.spine_at.data();
  larder_offline_frame* frame = nullptr;
  if (larder_offline_build(engine, &ev, 1, &sp, &frame, err, sizeof err) != 0) ADD_FAILURE() << "build: " << err;
  larder_offline_close(engine);
  return Frame(frame);
}

// Every column of two frames: bit for bit, except variance and stddev to
// 1e-9 relative (docs/backfill.md, "Refresh": a window's M2 recomputed at
// another step rounds differently).
void expect_same(const larder_offline_frame* a, const larder_offline_frame* b) {
  const size_t rows = larder_offline_frame_rows(a);
  ASSERT_EQ(rows, larder_offline_frame_rows(b));
  ASSERT_EQ(0, std::memcmp(larder_offline_frame_spine_index(a), larder_offline_frame_spine_index(b), rows * 8));
  ASSERT_EQ(0, std::memcmp(larder_offline_frame_found(a), larder_offline_frame_found(b), rows));
  ASSERT_EQ(0, std::memcmp(larder_offline_frame_event_time_ms(a), larder_offline_frame_event_time_ms(b), rows * 8));
  ASSERT_EQ(0, std::memcmp(larder_offline_frame_computed_at_ms(a), larder_offline_frame_computed_at_ms(b), rows * 8));
  EXPECT_EQ(larder_offline_frame_events(a), larder_offline_frame_events(b));
  EXPECT_EQ(larder_offline_frame_applied(a), larder_offline_frame_applied(b));
  EXPECT_EQ(larder_offline_frame_stale(a), larder_offline_frame_stale(b));
  EXPECT_EQ(larder_offline_frame_duplicates(a), larder_offline_frame_duplicates(b));
  EXPECT_EQ(larder_offline_frame_late(a), larder_offline_frame_late(b));
  EXPECT_EQ(larder_offline_frame_rejected(a), larder_offline_frame_rejected(b));
  EXPECT_STREQ(larder_offline_frame_first_rejection(a), larder_offline_frame_first_rejection(b));
  const uint32_t fields = larder_offline_frame_field_count(a);
  ASSERT_EQ(fields, larder_offline_frame_field_count(b));
  for (uint32_t f = 0; f < fields; ++f) {
    const std::string name = larder_offline_frame_field_name(a, f);
    const uint8_t* va = larder_offline_frame_valid(a, f);
    ASSERT_EQ(0, std::memcmp(va, larder_offline_frame_valid(b, f), rows)) << name;
    const int32_t type = larder_offline_frame_field_type(a, f);
    const uint32_t dim = larder_offline_frame_field_dim(a, f);
    const int64_t* offsets = larder_offline_frame_string_offsets(a, f);
    if (offsets != nullptr) {  // a string: the offsets and the bytes
      ASSERT_EQ(0, std::memcmp(offsets, larder_offline_frame_string_offsets(b, f), (rows + 1) * 8)) << name;
      ASSERT_EQ(0, std::memcmp(larder_offline_frame_values(a, f), larder_offline_frame_values(b, f),
                               static_cast<size_t>(offsets[rows])))
          << name;
      continue;
    }
    if (name == "var_5s" || name == "std_30s") {
      const auto* xa = static_cast<const double*>(larder_offline_frame_values(a, f));
      const auto* xb = static_cast<const double*>(larder_offline_frame_values(b, f));
      for (size_t r = 0; r < rows; ++r) {
        if (va[r] == 0) continue;
        ASSERT_NEAR(xa[r], xb[r], 1e-9 * std::max(std::abs(xb[r]), 1.0)) << name << " row " << r;
      }
      continue;
    }
    // Widths of larder::layout::FieldType: bool 1 byte, float32 (and its
    // vectors) 4, int64 and float64 8. The values of rows not valid are 0.
    const size_t width = type == 4 ? 1 : (type == 3 || type == 5) ? 4 : 8;
    ASSERT_EQ(0, std::memcmp(larder_offline_frame_values(a, f), larder_offline_frame_values(b, f), rows * width * dim))
        << name << " (type " << type << ")";
  }
}

class OfflineOrder : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* env = std::getenv("LARDER_SEED");
    seed_ = env != nullptr ? std::strtoull(env, nullptr, 10)
                           : static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    std::printf("OfflineOrder: seed %llu (replay with LARDER_SEED=%llu)\n", static_cast<unsigned long long>(seed_),
                static_cast<unsigned long long>(seed_));
    dir_ = std::filesystem::temp_directory_path() / ("larder-offline-order-" + std::to_string(::getpid()) + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    config_ = (dir_ / "larder.yaml").string();
    std::ofstream(config_) << kConfig;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  uint64_t seed_ = 0;
  std::filesystem::path dir_;
  std::string config_;
};

TEST_F(OfflineOrder, KeyByKeyBuildsTheFrameOfArrivalOrder) {
  const Events e = generate(seed_);
  const Frame by_key = build(config_, e, LARDER_OFFLINE_ORDER_BY_KEY, false);
  const Frame arrival = build(config_, e, LARDER_OFFLINE_ORDER_ARRIVAL, false);
  ASSERT_TRUE(by_key && arrival);
  expect_same(by_key.get(), arrival.get());
  // The stream exercised what it should: reads found and not, stale
  // (deletes, older events), late, refused by the decoder, nothing refused
  // by the writer (which would make the build go in arrival order).
  size_t found = 0;
  for (size_t r = 0; r < larder_offline_frame_rows(arrival.get()); ++r)
    found += larder_offline_frame_found(arrival.get())[r];
  EXPECT_GT(found, 2'000u);
  EXPECT_LT(found, larder_offline_frame_rows(arrival.get()));
  EXPECT_GT(larder_offline_frame_stale(arrival.get()), 0u);
  EXPECT_GT(larder_offline_frame_late(arrival.get()), 0u);
  EXPECT_GT(larder_offline_frame_rejected(arrival.get()), 0u);
  EXPECT_NE(std::string(larder_offline_frame_first_rejection(arrival.get())), "");
  // Without ids a redelivery counts again, in both orders alike.
  EXPECT_EQ(larder_offline_frame_duplicates(arrival.get()), 0u);
}

// With event ids on a table with aggregates the dedup set is shared between
// keys: the build goes in arrival order, and the redeliveries count once.
TEST_F(OfflineOrder, EventIdsOnATableWithAggregatesGoInArrivalOrder) {
  const Events e = generate(seed_);
  const Frame by_key = build(config_, e, LARDER_OFFLINE_ORDER_BY_KEY, true);
  const Frame arrival = build(config_, e, LARDER_OFFLINE_ORDER_ARRIVAL, true);
  ASSERT_TRUE(by_key && arrival);
  expect_same(by_key.get(), arrival.get());
  EXPECT_GT(larder_offline_frame_duplicates(arrival.get()), 0u);
}

// A partition key by key is the same partition of the arrival-order frame.
TEST_F(OfflineOrder, PartitionsKeyByKeyMatchArrivalOrder) {
  const Events e = generate(seed_);
  for (uint32_t p = 0; p < 3; ++p) {
    const Frame by_key = build(config_, e, LARDER_OFFLINE_ORDER_BY_KEY, false, p, 3);
    const Frame arrival = build(config_, e, LARDER_OFFLINE_ORDER_ARRIVAL, false, p, 3);
    ASSERT_TRUE(by_key && arrival);
    expect_same(by_key.get(), arrival.get());
  }
}

TEST(OfflineOrderAbi, SetOrderRefusesWhatItDoesNotKnow) {
  EXPECT_EQ(larder_offline_set_order(nullptr, LARDER_OFFLINE_ORDER_BY_KEY), 1);
}

}  // namespace

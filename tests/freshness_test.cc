// The two ages of a row (docs/client.md, "Two ages"): since its newest event,
// and since the writer last brought its values up to date. A key with no
// recent event keeps current windowed aggregates while the writer refreshes
// them; the computed age says so, and stops saying so when the writer stops.
//
// The writer's clock is driven by the tests (apply_unix_ns, refresh(now));
// the bounds are hours apart from the ages they separate, so no outcome
// depends on how long a step takes.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "larder/client.h"
#include "larder/larder.h"
#include "larder/writer/writer.h"
#include "support/test_segment.h"

namespace larder {
namespace {

using layout::AggregateFn;
using layout::FieldType;
using layout::TableSpec;
using testing::ScratchSegment;

constexpr int64_t kHourMs = 3'600'000;
constexpr int64_t ns(int64_t ms) { return ms * 1'000'000; }

// A card: a plain field set rarely (its limit) and a count over a day.
TableSpec card_table(uint64_t capacity = 64) {
  TableSpec t;
  t.name = "cards";
  t.key_max_len = 16;
  t.capacity = capacity;
  t.fields = {{"credit_limit", FieldType::kFloat64, 1}};
  t.aggregates = {{"txn_24h", "", AggregateFn::kCount, 24 * kHourMs, 60'000}};
  return t;
}

ReadOptions by_event(int64_t max_age_ms) { return {.max_age_ms = max_age_ms, .age_of = AgeOf::kEvent}; }
ReadOptions by_computed(int64_t max_age_ms) { return {.max_age_ms = max_age_ms, .age_of = AgeOf::kComputed}; }

class FreshnessTest : public ::testing::Test {
 protected:
  void open(const TableSpec& spec = card_table()) {
    writer_ = Writer::open(seg_.name(), testing::one_table_schema(spec), seg_.writer_options());
    segment_ = Segment::open(seg_.name(), ClientOptions{seg_.dir()});
    table_ = segment_.table(spec.name);
    row_ = table_.make_row();
  }
  // One transaction of `key` at event time `at_ms`, applied with the
  // writer's clock at `at_ms`.
  void transaction(std::string_view key, int64_t at_ms) {
    ASSERT_EQ(writer_->apply(0, key, at_ms, {}, {}, 0, ns(at_ms)), ApplyResult::kApplied);
  }

  ScratchSegment seg_;
  std::unique_ptr<Writer> writer_;
  Segment segment_;
  Table table_;
  Row row_;
};

TEST_F(FreshnessTest, QuietKeyIsStaleByEventAndCurrentByComputation) {
  open();
  const int64_t now = now_unix_ms();
  const int64_t last_txn = now - 2 * kHourMs;
  transaction("card:1", last_txn);
  // The writer runs on: its refresh brings every key's windows to now.
  writer_->refresh(ns(now));
  ASSERT_EQ(table_.stats().refreshed_through_ms, now);

  const Field txn = table_.field("txn_24h", FieldType::kInt64);
  const ReadResult e = table_.get("card:1", row_, by_event(kHourMs));
  EXPECT_EQ(e.status, Status::kStale) << "no transaction in the last hour";
  EXPECT_EQ(e.event_time_ms, last_txn);
  EXPECT_EQ(row_.i64(txn), 1) << "a stale row is still filled";

  const ReadResult c = table_.get("card:1", row_, by_computed(kHourMs));
  EXPECT_EQ(c.status, Status::kOk) << "the day's count is current as of " << c.computed_at_ms;
  EXPECT_EQ(c.computed_at_ms, now);
  EXPECT_EQ(c.event_time_ms, last_txn);
  EXPECT_EQ(row_.i64(txn), 1);
  EXPECT_GE(c.age_ms(now), 2 * kHourMs);
  EXPECT_EQ(c.computed_age_ms(now), 0);
  EXPECT_EQ(c.age_ms(AgeOf::kComputed, now + 5), 5);
  EXPECT_EQ(c.age_ms(AgeOf::kEvent, now), 2 * kHourMs);

  // Without a bound the result still carries both instants.
  const ReadResult plain = table_.get("card:1", row_);
  EXPECT_EQ(plain.status, Status::kOk);
  EXPECT_EQ(plain.computed_at_ms, now);
}

TEST_F(FreshnessTest, StoppedWriterFailsTheComputedBound) {
  open();
  const int64_t now = now_unix_ms();
  // The writer's last refresh was two hours ago, then it stopped: the
  // instant stops with it, and the computed age grows with the wall clock.
  transaction("card:1", now - 3 * kHourMs);
  writer_->refresh(ns(now - 2 * kHourMs));
  writer_.reset();
  ASSERT_FALSE(segment_.writer_alive());

  const ReadResult c = table_.get("card:1", row_, by_computed(kHourMs));
  EXPECT_EQ(c.status, Status::kStale);
  EXPECT_EQ(c.computed_at_ms, now - 2 * kHourMs);
  EXPECT_EQ(table_.get("card:1", row_, by_computed(3 * kHourMs)).status, Status::kOk);
}

TEST_F(FreshnessTest, RefreshedThroughStopsBeforeARefreshStillOwed) {
  open();
  // 2100-01-01: a whole number of minutes, far from the wall clock; only
  // exact instants are compared here.
  const int64_t base = 4'102'444'800'000;
  for (int k = 0; k < 5; ++k) transaction("card:" + std::to_string(k), base);
  writer_->refresh(ns(base));
  ASSERT_EQ(table_.stats().refreshed_through_ms, base);

  // At base + 24 h every key's only bucket leaves its window: five keys owe
  // a refresh. A budget of two leaves three owed, so the instant stops just
  // before they fell due.
  const int64_t due = base + 24 * kHourMs;
  ASSERT_EQ(writer_->refresh(ns(due + 10), 2), 2u);
  EXPECT_EQ(table_.stats().refreshed_through_ms, due - 1);
  EXPECT_EQ(table_.stats().aggregate_clock_ms, due + 10) << "the clock itself moved on";
  for (int k = 0; k < 5; ++k) {
    const ReadResult r = table_.get("card:" + std::to_string(k), row_);
    ASSERT_EQ(r.status, Status::kOk);
    EXPECT_EQ(r.computed_at_ms, due - 1) << k;
  }
  // A key with an event after that is current as of its apply.
  transaction("card:1", due + 20);
  EXPECT_EQ(table_.get("card:1", row_).computed_at_ms, due + 20);
  EXPECT_EQ(table_.get("card:0", row_).computed_at_ms, due - 1);

  while (writer_->refresh(ns(due + 30), 2) > 0) {
  }
  EXPECT_EQ(table_.stats().refreshed_through_ms, due + 30);
  EXPECT_EQ(table_.get("card:0", row_).computed_at_ms, due + 30);
  EXPECT_EQ(row_.i64(table_.field("txn_24h")), 0) << "the refresh emptied the window";
}

TEST_F(FreshnessTest, ReopenedWriterKeepsTheInstantUntilItKnowsEveryDueTime) {
  // 400 slots: a refresh budget of 1 gathers the due times of 4 a call.
  open(card_table(256));
  const int64_t base = 4'102'444'800'000;
  for (int k = 0; k < 50; ++k) transaction("card:" + std::to_string(k), base);
  writer_->refresh(ns(base + 1000));
  ASSERT_EQ(table_.stats().refreshed_through_ms, base + 1000);
  writer_.reset();

  // A writer that opens a day later cannot vouch for keys whose due times it
  // has not read back yet: each might owe a refresh from the day it missed.
  const int64_t later = base + 25 * kHourMs;
  writer_ = Writer::open(seg_.name(), testing::one_table_schema(card_table(256)), seg_.writer_options());
  writer_->refresh(ns(later), 1);
  ASSERT_TRUE(writer_->refresh_due()) << "the due times are still being gathered";
  EXPECT_EQ(table_.stats().refreshed_through_ms, base + 1000);
  EXPECT_EQ(table_.stats().aggregate_clock_ms, later);
  int calls = 0;
  while (writer_->refresh_due()) {
    writer_->refresh(ns(later), 1);
    ASSERT_LT(++calls, 1000) << "refresh(budget 1) never finishes";
  }
  EXPECT_EQ(table_.stats().refreshed_through_ms, later);
  for (int k = 0; k < 50; ++k) {
    const ReadResult r = table_.get("card:" + std::to_string(k), row_);
    ASSERT_EQ(r.status, Status::kOk);
    EXPECT_EQ(r.computed_at_ms, later);
    EXPECT_EQ(row_.i64(table_.field("txn_24h")), 0) << k;
  }
}

TEST_F(FreshnessTest, TableWithoutAggregatesComputesAtApply) {
  TableSpec limits;
  limits.name = "limits";
  limits.key_max_len = 16;
  limits.capacity = 16;
  limits.fields = {{"credit_limit", FieldType::kFloat64, 1}};
  open(limits);
  const int64_t now = now_unix_ms();
  const FieldValue v[] = {FieldValue::float64(0, 5000)};
  // Set 30 days ago, delivered now (a replay): computed age is the
  // pipeline's delay, not the value's standing.
  ASSERT_EQ(writer_->upsert(0, "card:1", now - 30 * 24 * kHourMs, v, ns(now)), ApplyResult::kApplied);
  // Set and delivered 30 days ago: nothing computes it again.
  ASSERT_EQ(writer_->upsert(0, "card:2", now - 30 * 24 * kHourMs, v, ns(now - 30 * 24 * kHourMs)),
            ApplyResult::kApplied);
  ASSERT_EQ(table_.stats().refreshed_through_ms, 0);

  const ReadResult replayed = table_.get("card:1", row_, by_computed(kHourMs));
  EXPECT_EQ(replayed.status, Status::kOk);
  EXPECT_EQ(replayed.computed_at_ms, now);
  EXPECT_EQ(replayed.apply_unix_ns, ns(now));
  EXPECT_EQ(table_.get("card:1", row_, by_event(kHourMs)).status, Status::kStale);
  const ReadResult old = table_.get("card:2", row_, by_computed(kHourMs));
  EXPECT_EQ(old.status, Status::kStale);
  EXPECT_EQ(old.computed_at_ms, now - 30 * 24 * kHourMs);
}

TEST_F(FreshnessTest, BatchesAndTheCAbiAgreeWithGet) {
  open();
  const int64_t now = now_unix_ms();
  transaction("card:quiet", now - 2 * kHourMs);
  writer_->refresh(ns(now - kHourMs / 2));
  transaction("card:busy", now);
  // quiet: event 2 h, computed 30 min; busy: both 0.
  const std::vector<std::string_view> keys = {"card:quiet", "card:busy", "card:none"};
  for (const ReadOptions& o : {by_event(kHourMs), by_computed(kHourMs), by_computed(kHourMs / 4), ReadOptions{}}) {
    RowBatch batch = table_.make_batch(keys.size());
    std::vector<ReadResult> many(keys.size());
    table_.get_many(keys, batch, many, o);
    for (size_t i = 0; i < keys.size(); ++i) {
      const ReadResult one = table_.get(keys[i], row_, o);
      EXPECT_EQ(many[i].status, one.status) << keys[i];
      EXPECT_EQ(many[i].computed_at_ms, one.computed_at_ms) << keys[i];
    }
  }
  EXPECT_EQ(table_.get("card:quiet", row_, by_event(kHourMs)).status, Status::kStale);
  EXPECT_EQ(table_.get("card:quiet", row_, by_computed(kHourMs)).status, Status::kOk);
  EXPECT_EQ(table_.get("card:quiet", row_, by_computed(kHourMs / 4)).status, Status::kStale);
  EXPECT_EQ(table_.get("card:busy", row_, by_computed(kHourMs / 4)).status, Status::kOk);

  // The C ABI: larder_get_ex and larder_get_many_ex.
  char err[256];
  larder_segment* cseg = nullptr;
  ASSERT_EQ(larder_open(seg_.name().c_str(), seg_.dir().c_str(), &cseg, err, sizeof err), LARDER_E_OK) << err;
  larder_table* ct = nullptr;
  ASSERT_EQ(larder_table_open(cseg, "cards", &ct, err, sizeof err), LARDER_E_OK) << err;
  std::vector<uint64_t> buf(larder_table_row_bytes(ct) / 8 * keys.size());
  larder_read_options co{};
  co.size = sizeof co;
  co.age_of = LARDER_AGE_OF_COMPUTED;
  co.max_age_ms = kHourMs;
  larder_read_result cr{};
  int64_t computed = -1;
  EXPECT_EQ(larder_get_ex(ct, "card:quiet", 10, buf.data(), &co, &cr, &computed), LARDER_OK);
  EXPECT_EQ(cr.event_time_ms, now - 2 * kHourMs);
  EXPECT_EQ(computed, now - kHourMs / 2);
  co.age_of = LARDER_AGE_OF_EVENT;
  EXPECT_EQ(larder_get_ex(ct, "card:quiet", 10, buf.data(), &co, nullptr, &computed), LARDER_STALE);
  EXPECT_EQ(computed, now - kHourMs / 2);
  co.age_of = 2;  // neither age: refused, nothing read
  EXPECT_EQ(larder_get_ex(ct, "card:quiet", 10, buf.data(), &co, &cr, &computed), LARDER_INVALID_KEY);
  EXPECT_EQ(computed, 0);
  EXPECT_EQ(cr.event_time_ms, 0);

  const void* ckeys[] = {keys[0].data(), keys[1].data(), keys[2].data()};
  const size_t lens[] = {keys[0].size(), keys[1].size(), keys[2].size()};
  larder_read_result crs[3];
  int64_t cat[3];
  co.age_of = LARDER_AGE_OF_COMPUTED;
  co.max_age_ms = kHourMs / 4;
  larder_get_many_ex(ct, ckeys, lens, 3, buf.data(), crs, &co, cat);
  EXPECT_EQ(crs[0].status, LARDER_STALE);
  EXPECT_EQ(crs[1].status, LARDER_OK);
  EXPECT_EQ(crs[2].status, LARDER_NOT_FOUND);
  EXPECT_EQ(cat[0], now - kHourMs / 2);
  EXPECT_EQ(cat[1], now);
  EXPECT_EQ(cat[2], 0);
  larder_table_stats_t st{};
  st.size = sizeof st;
  ASSERT_EQ(larder_table_stats(ct, &st), LARDER_E_OK);
  EXPECT_EQ(st.refreshed_through_ms, now - kHourMs / 2);
  larder_table_close(ct);
  larder_close(cseg);
}

}  // namespace
}  // namespace larder

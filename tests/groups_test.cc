// Field groups: per-group last write wins, deletes across groups, ties,
// counters, aggregates in a group, reads with per-group ages, and the layout
// of a table without groups left as it was.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "larder/client.h"
#include "larder/layout/schema.h"
#include "larder/layout/segment_file.h"
#include "larder/writer/writer.h"
#include "support/test_segment.h"

namespace larder {
namespace {

using layout::FieldSpec;
using layout::FieldType;
using layout::kNoGroupTime;
using testing::ScratchSegment;

// A card-fraud table: a credit limit written every few days (profile), and
// transaction features written in real time (activity); `country` names no
// group, so it is in "default".
layout::TableSpec fraud_table() {
  layout::TableSpec t;
  t.name = "cards";
  t.key_max_len = 32;
  t.capacity = 64;
  t.fields = {
      FieldSpec{"credit_limit", FieldType::kFloat64, 1, "profile"},
      FieldSpec{"last_amount", FieldType::kFloat64, 1, "activity"},
      FieldSpec{"tx_count", FieldType::kInt64, 1, "activity"},
      FieldSpec{"country", FieldType::kString, 8, ""},
  };
  return t;
}

constexpr uint32_t kLimit = 0, kAmount = 1, kCount = 2, kCountry = 3;

class GroupsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    writer_ = Writer::open(seg_.name(), testing::one_table_schema(fraud_table()), seg_.writer_options());
    segment_ = Segment::open(seg_.name(), ClientOptions{seg_.dir()});
    cards_ = segment_.table("cards");
    row_ = cards_.make_row();
    profile_ = cards_.group("profile");
    activity_ = cards_.group("activity");
    default_ = cards_.group("default");
  }

  ApplyResult limit(std::string_view key, double v, int64_t t) {
    const FieldValue f[] = {FieldValue::float64(kLimit, v)};
    return writer_->upsert(0, key, t, f);
  }
  ApplyResult amount(std::string_view key, double v, int64_t t) {
    const FieldValue f[] = {FieldValue::float64(kAmount, v), FieldValue::int64(kCount, 1)};
    return writer_->upsert(0, key, t, f);
  }
  ReadResult get(std::string_view key, const ReadOptions& o = {}) { return cards_.get(key, row_, o); }
  TableStats stats() const { return cards_.stats(); }

  ScratchSegment seg_;
  std::unique_ptr<Writer> writer_;
  Segment segment_;
  Table cards_;
  Row row_;
  Group profile_, activity_, default_;
};

TEST_F(GroupsTest, GroupsInOrderOfFirstUseWithDefault) {
  ASSERT_EQ(cards_.groups().size(), 3u);
  EXPECT_EQ(cards_.groups()[0].name, "profile");
  EXPECT_EQ(cards_.groups()[1].name, "activity");
  EXPECT_EQ(cards_.groups()[2].name, "default");
  EXPECT_EQ(cards_.field("credit_limit").group, 0u);
  EXPECT_EQ(cards_.field("tx_count").group, 1u);
  EXPECT_EQ(cards_.field("country").group, 2u);
  try {
    (void)cards_.group("billing");
    FAIL() << "no such group";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_NE(std::string(e.what()).find("profile, activity, default"), std::string::npos) << e.what();
  }
}

TEST_F(GroupsTest, OlderProfileUpdateAppliesAlthoughActivityIsNewer) {
  ASSERT_EQ(amount("card:1", 12.5, 5000), ApplyResult::kApplied);
  // The credit limit carries its own, older event time: with one time per
  // row it would have been ignored as stale.
  ASSERT_EQ(limit("card:1", 3000.0, 1000), ApplyResult::kApplied);
  const ReadResult r = get("card:1");
  ASSERT_EQ(r.status, Status::kOk);
  EXPECT_EQ(r.event_time_ms, 5000);  // the row's newest group
  EXPECT_TRUE(row_.valid(cards_.field("credit_limit")));
  EXPECT_EQ(row_.f64(cards_.field("credit_limit")), 3000.0);
  EXPECT_EQ(row_.f64(cards_.field("last_amount")), 12.5);
  EXPECT_EQ(row_.group_event_time_ms(profile_), 1000);
  EXPECT_EQ(row_.group_event_time_ms(activity_), 5000);
  EXPECT_EQ(row_.group_event_time_ms(default_), kNoGroupTime);
  EXPECT_EQ(row_.group_age_ms(profile_, 61'000), 60'000);
  EXPECT_EQ(row_.group_age_ms(default_, 61'000), INT64_MAX);
  EXPECT_EQ(stats().stale_ignored, 0u);
  EXPECT_EQ(stats().upserts, 2u);
}

TEST_F(GroupsTest, OlderActivityUpdateAppliesAlthoughProfileIsNewer) {
  ASSERT_EQ(limit("card:1", 3000.0, 9000), ApplyResult::kApplied);
  ASSERT_EQ(amount("card:1", 7.0, 2000), ApplyResult::kApplied);
  ASSERT_EQ(get("card:1").status, Status::kOk);
  EXPECT_EQ(row_.f64(cards_.field("last_amount")), 7.0);
  EXPECT_EQ(row_.group_event_time_ms(activity_), 2000);
  EXPECT_EQ(row_.event_time_ms(), 9000);
}

TEST_F(GroupsTest, StaleWithinAGroupIsIgnoredAndCounted) {
  ASSERT_EQ(limit("card:1", 3000.0, 9000), ApplyResult::kApplied);
  EXPECT_EQ(limit("card:1", 1.0, 8999), ApplyResult::kStale);
  ASSERT_EQ(get("card:1").status, Status::kOk);
  EXPECT_EQ(row_.f64(cards_.field("credit_limit")), 3000.0);
  EXPECT_EQ(row_.group_event_time_ms(profile_), 9000);
  EXPECT_EQ(stats().stale_ignored, 1u);
  EXPECT_EQ(stats().upserts, 1u);
}

TEST_F(GroupsTest, TiesGoToTheLaterCallPerGroup) {
  ASSERT_EQ(limit("card:1", 1.0, 4000), ApplyResult::kApplied);
  ASSERT_EQ(limit("card:1", 2.0, 4000), ApplyResult::kApplied);
  ASSERT_EQ(get("card:1").status, Status::kOk);
  EXPECT_EQ(row_.f64(cards_.field("credit_limit")), 2.0);
  EXPECT_EQ(stats().stale_ignored, 0u);
}

TEST_F(GroupsTest, AnUpdateAcrossGroupsAppliesPerGroup) {
  ASSERT_EQ(limit("card:1", 3000.0, 9000), ApplyResult::kApplied);
  ASSERT_EQ(amount("card:1", 1.0, 1000), ApplyResult::kApplied);
  // One update touching both groups at 5000: activity (1000) takes it,
  // profile (9000) keeps its newer value.
  const FieldValue both[] = {FieldValue::float64(kLimit, 1.0), FieldValue::float64(kAmount, 99.0)};
  ASSERT_EQ(writer_->upsert(0, "card:1", 5000, both), ApplyResult::kApplied);
  ASSERT_EQ(get("card:1").status, Status::kOk);
  EXPECT_EQ(row_.f64(cards_.field("credit_limit")), 3000.0);
  EXPECT_EQ(row_.f64(cards_.field("last_amount")), 99.0);
  EXPECT_EQ(row_.group_event_time_ms(profile_), 9000);
  EXPECT_EQ(row_.group_event_time_ms(activity_), 5000);
  // Applied (upserts) and, for the profile part, ignored (stale_ignored).
  EXPECT_EQ(stats().upserts, 3u);
  EXPECT_EQ(stats().stale_ignored, 1u);
}

TEST_F(GroupsTest, AnUpdateWithoutFieldsTouchesEveryGroup) {
  ASSERT_EQ(limit("card:1", 3000.0, 9000), ApplyResult::kApplied);
  ASSERT_EQ(writer_->upsert(0, "card:1", 5000, {}), ApplyResult::kApplied);
  ASSERT_EQ(get("card:1").status, Status::kOk);
  EXPECT_EQ(row_.group_event_time_ms(profile_), 9000);
  EXPECT_EQ(row_.group_event_time_ms(activity_), 5000);
  EXPECT_EQ(row_.group_event_time_ms(default_), 5000);
  EXPECT_EQ(stats().stale_ignored, 1u);
}

TEST_F(GroupsTest, DeleteClearsGroupsNoNewerAndKeepsNewerOnes) {
  ASSERT_EQ(limit("card:1", 3000.0, 1000), ApplyResult::kApplied);
  ASSERT_EQ(amount("card:1", 5.0, 8000), ApplyResult::kApplied);
  ASSERT_EQ(writer_->remove(0, "card:1", 4000), ApplyResult::kApplied);
  // activity (8000) is newer than the delete: it survives and the row stays.
  const ReadResult r = get("card:1");
  ASSERT_EQ(r.status, Status::kOk);
  EXPECT_EQ(r.event_time_ms, 8000);
  EXPECT_FALSE(row_.valid(cards_.field("credit_limit")));
  EXPECT_TRUE(row_.valid(cards_.field("last_amount")));
  EXPECT_EQ(row_.f64(cards_.field("last_amount")), 5.0);
  EXPECT_EQ(row_.group_event_time_ms(profile_), 4000);
  EXPECT_EQ(row_.group_event_time_ms(default_), 4000);
  EXPECT_EQ(stats().live_keys, 1u);
  EXPECT_EQ(stats().tombstones, 0u);
  EXPECT_EQ(stats().deletes, 1u);
  EXPECT_EQ(stats().stale_ignored, 1u);  // the delete did not reach activity
  // A profile update older than the delete stays deleted; a newer one applies.
  EXPECT_EQ(limit("card:1", 1.0, 3999), ApplyResult::kStale);
  ASSERT_EQ(limit("card:1", 2500.0, 4001), ApplyResult::kApplied);
  ASSERT_EQ(get("card:1").status, Status::kOk);
  EXPECT_EQ(row_.f64(cards_.field("credit_limit")), 2500.0);
}

TEST_F(GroupsTest, DeleteNewerThanEveryGroupLeavesATombstone) {
  ASSERT_EQ(limit("card:1", 3000.0, 1000), ApplyResult::kApplied);
  ASSERT_EQ(amount("card:1", 5.0, 2000), ApplyResult::kApplied);
  ASSERT_EQ(writer_->remove(0, "card:1", 2000), ApplyResult::kApplied);  // ties: the delete wins
  EXPECT_EQ(get("card:1").status, Status::kNotFound);
  EXPECT_EQ(stats().live_keys, 0u);
  EXPECT_EQ(stats().tombstones, 1u);
  EXPECT_EQ(stats().stale_ignored, 0u);
  // Older than the delete in any group: stays deleted.
  EXPECT_EQ(amount("card:1", 1.0, 1999), ApplyResult::kStale);
  EXPECT_EQ(get("card:1").status, Status::kNotFound);
  // A newer activity update revives the key with activity only; profile
  // keeps the delete's time, so an older credit limit stays deleted.
  ASSERT_EQ(amount("card:1", 6.0, 2500), ApplyResult::kApplied);
  ASSERT_EQ(get("card:1").status, Status::kOk);
  EXPECT_FALSE(row_.valid(cards_.field("credit_limit")));
  EXPECT_EQ(row_.f64(cards_.field("last_amount")), 6.0);
  EXPECT_EQ(row_.group_event_time_ms(profile_), 2000);
  EXPECT_EQ(row_.group_event_time_ms(activity_), 2500);
  EXPECT_EQ(limit("card:1", 1.0, 1500), ApplyResult::kStale);
  EXPECT_EQ(stats().live_keys, 1u);
  EXPECT_EQ(stats().tombstones, 0u);
}

TEST_F(GroupsTest, DeleteOlderThanEveryGroupIsStale) {
  ASSERT_EQ(limit("card:1", 3000.0, 5000), ApplyResult::kApplied);
  ASSERT_EQ(amount("card:1", 5.0, 6000), ApplyResult::kApplied);
  // default (never written) would take any delete: the row stays for the
  // others, and only default's time moves.
  ASSERT_EQ(writer_->remove(0, "card:1", 100), ApplyResult::kApplied);
  ASSERT_EQ(get("card:1").status, Status::kOk);
  EXPECT_EQ(row_.group_event_time_ms(default_), 100);
  EXPECT_EQ(row_.group_event_time_ms(profile_), 5000);
  EXPECT_EQ(writer_->remove(0, "card:1", 50), ApplyResult::kStale);
  EXPECT_EQ(stats().deletes, 1u);
  EXPECT_EQ(stats().stale_ignored, 2u);  // the part of the first, all of the second
}

TEST_F(GroupsTest, DeleteOfAnUnknownKeyIsRememberedForEveryGroup) {
  ASSERT_EQ(writer_->remove(0, "card:9", 3000), ApplyResult::kApplied);
  EXPECT_EQ(limit("card:9", 1.0, 2999), ApplyResult::kStale);
  EXPECT_EQ(amount("card:9", 1.0, 2999), ApplyResult::kStale);
  ASSERT_EQ(limit("card:9", 7.0, 3000), ApplyResult::kApplied);
  ASSERT_EQ(get("card:9").status, Status::kOk);
  EXPECT_EQ(row_.group_event_time_ms(activity_), 3000);
}

TEST_F(GroupsTest, PerGroupMaxAge) {
  const int64_t now = now_unix_ms();
  ASSERT_EQ(limit("card:1", 3000.0, now - 3LL * 24 * 3600 * 1000), ApplyResult::kApplied);  // three days old
  ASSERT_EQ(amount("card:1", 5.0, now), ApplyResult::kApplied);
  const GroupMaxAge fresh_activity[] = {{activity_.index, 60'000}};
  EXPECT_EQ(get("card:1", {.group_max_age = fresh_activity}).status, Status::kOk);
  const GroupMaxAge fresh_profile[] = {{profile_.index, 60'000}};
  const ReadResult r = get("card:1", {.group_max_age = fresh_profile});
  EXPECT_EQ(r.status, Status::kStale);
  EXPECT_EQ(row_.f64(cards_.field("credit_limit")), 3000.0);  // the row is filled, as for max_age_ms
  // A group never written is infinitely old.
  const GroupMaxAge fresh_default[] = {{default_.index, 60'000}};
  EXPECT_EQ(get("card:1", {.group_max_age = fresh_default}).status, Status::kStale);
  // The row's own bound looks at its newest group.
  EXPECT_EQ(get("card:1", {.max_age_ms = 60'000}).status, Status::kOk);
  // A bound on a group the table does not have is ignored.
  const GroupMaxAge nowhere[] = {{7, 1}};
  EXPECT_EQ(get("card:1", {.group_max_age = nowhere}).status, Status::kOk);
}

TEST_F(GroupsTest, GetManyCarriesEachRowsGroupTimes) {
  ASSERT_EQ(limit("a", 1.0, 100), ApplyResult::kApplied);
  ASSERT_EQ(amount("b", 2.0, 200), ApplyResult::kApplied);
  const std::string_view keys[] = {"a", "b", "c"};
  RowBatch batch = cards_.make_batch(3);
  ReadResult results[3];
  cards_.get_many(keys, batch, results);
  ASSERT_EQ(results[0].status, Status::kOk);
  ASSERT_EQ(results[1].status, Status::kOk);
  EXPECT_EQ(results[2].status, Status::kNotFound);
  EXPECT_EQ(batch.row(0).group_event_time_ms(profile_), 100);
  EXPECT_EQ(batch.row(0).group_event_time_ms(activity_), kNoGroupTime);
  EXPECT_EQ(batch.row(1).group_event_time_ms(activity_), 200);
}

TEST_F(GroupsTest, ReopenKeepsGroupTimes) {
  ASSERT_EQ(limit("card:1", 3000.0, 1000), ApplyResult::kApplied);
  ASSERT_EQ(amount("card:1", 5.0, 8000), ApplyResult::kApplied);
  writer_.reset();
  writer_ = Writer::open(seg_.name(), testing::one_table_schema(fraud_table()), seg_.writer_options());
  EXPECT_EQ(limit("card:1", 1.0, 999), ApplyResult::kStale);
  ASSERT_EQ(get("card:1").status, Status::kOk);
  EXPECT_EQ(row_.group_event_time_ms(profile_), 1000);
}

// A segment image (what snapshots and peer bootstrap carry) restores with
// every group's time, and restore refuses an image whose group time is above
// its row's.
TEST_F(GroupsTest, ImageRestoresPerGroupTimes) {
  ASSERT_EQ(amount("card:1", 5.0, 8000), ApplyResult::kApplied);
  ASSERT_EQ(limit("card:1", 3000.0, 1000), ApplyResult::kApplied);
  ASSERT_EQ(writer_->remove(0, "card:1", 4000), ApplyResult::kApplied);
  std::vector<unsigned char> image;
  writer_->copy_image(&image);
  ScratchSegment copy;
  auto restored = Writer::restore(copy.name(), testing::one_table_schema(fraud_table()), image, copy.writer_options());
  Segment s = Segment::open(copy.name(), ClientOptions{copy.dir()});
  Table t = s.table("cards");
  Row row = t.make_row();
  ASSERT_EQ(t.get("card:1", row).status, Status::kOk);
  EXPECT_EQ(row.group_event_time_ms(t.group("profile")), 4000);
  EXPECT_EQ(row.group_event_time_ms(t.group("activity")), 8000);
  EXPECT_FALSE(row.valid(t.field("credit_limit")));
  EXPECT_EQ(restored->upsert(0, "card:1", 3999, std::vector<FieldValue>{FieldValue::float64(kLimit, 1.0)}),
            ApplyResult::kStale);
  restored.reset();

  // A group time above the row's event time: refused, naming the slot.
  const layout::TableDescriptor& d = layout::table_descriptor(image.data(), 0);
  const layout::TableGeometry g = layout::table_geometry(image.data(), d);
  bool damaged = false;
  for (uint64_t i = 0; i < g.slot_count && !damaged; ++i) {
    auto* slot = reinterpret_cast<uint64_t*>(image.data() + d.slots_offset + i * d.slot_bytes);
    if (slot[layout::kSlotMetaWord] == 0) continue;
    slot[g.group_word_offset()] = slot[layout::kSlotEventTimeWord] + 1;
    damaged = true;
  }
  ASSERT_TRUE(damaged);
  ScratchSegment other;
  try {
    Writer::restore(other.name(), testing::one_table_schema(fraud_table()), image, other.writer_options());
    FAIL() << "restored an image with a group time above its row's";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is newer than the row's"), std::string::npos) << e.what();
  }
}

TEST(GroupsSchema, TableWithoutGroupsKeepsItsLayout) {
  layout::TableSpec t = fraud_table();
  for (FieldSpec& f : t.fields) f.group.clear();
  EXPECT_TRUE(t.group_names().empty());
  const layout::LayoutPlan plain = layout::plan_layout(testing::one_table_schema(t));
  EXPECT_EQ(plain.tables[0].group_count, 0u);
  EXPECT_EQ(plain.tables[0].groups_offset, 0u);
  // 5 header words, 1 validity word, 4 key words and a 32-byte row: 112
  // bytes, padded to 128; the grouped table adds its 3 time words.
  EXPECT_EQ(plain.tables[0].slot_bytes, 128u);
  const layout::LayoutPlan grouped = layout::plan_layout(testing::one_table_schema(fraud_table()));
  EXPECT_EQ(grouped.tables[0].group_count, 3u);
  EXPECT_EQ(grouped.tables[0].slot_bytes, layout::round_up(8 * (5 + 1 + 4 + 3) + 32, 64));
  EXPECT_NE(layout::Schema{{t}}.fingerprint(), layout::Schema{{fraud_table()}}.fingerprint());
  // Naming "default" is naming no group.
  layout::TableSpec named = t;
  for (FieldSpec& f : named.fields) f.group = "default";
  EXPECT_TRUE(named.group_names().empty());
  EXPECT_EQ(layout::Schema{{named}}.fingerprint(), layout::Schema{{t}}.fingerprint());
  layout::TableSpec mixed = fraud_table();
  mixed.fields[3].group = "default";
  EXPECT_EQ(layout::Schema{{mixed}}.fingerprint(), layout::Schema{{fraud_table()}}.fingerprint());
}

TEST(GroupsSchema, AtMostEightGroups) {
  layout::TableSpec t;
  t.name = "wide";
  for (int i = 0; i < 9; ++i) {
    t.fields.push_back(FieldSpec{"f" + std::to_string(i), FieldType::kInt64, 1, "g" + std::to_string(i)});
  }
  try {
    layout::Schema{{t}}.validate();
    FAIL() << "nine groups";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("at most 8"), std::string::npos) << e.what();
  }
  t.fields.pop_back();
  EXPECT_NO_THROW(layout::Schema{{t}}.validate());
  t.fields[0].group = "bad name";
  EXPECT_THROW(layout::Schema{{t}}.validate(), Error);
}

// Aggregates in a group: the group's time follows the events folded, and a
// delete that leaves another group standing does not clear them.
TEST(GroupsAggregates, AggregateGroupTimeFollowsEvents) {
  ScratchSegment seg;
  layout::TableSpec t;
  t.name = "cards";
  t.key_max_len = 32;
  t.capacity = 64;
  t.fields = {FieldSpec{"credit_limit", FieldType::kFloat64, 1, "profile"},
              FieldSpec{"amount", FieldType::kFloat64, 1, "activity"}};
  layout::AggregateSpec sum;
  sum.name = "amount_sum_1h";
  sum.source = "amount";
  sum.fn = layout::AggregateFn::kSum;
  sum.window_ms = 3600'000;
  sum.end = layout::WindowEnd::kLatestEvent;
  sum.group = "activity";
  t.aggregates = {sum};
  auto writer = Writer::open(seg.name(), testing::one_table_schema(t), seg.writer_options());
  Segment segment = Segment::open(seg.name(), ClientOptions{seg.dir()});
  Table cards = segment.table("cards");
  Row row = cards.make_row();
  const Group profile = cards.group("profile");
  const Group activity = cards.group("activity");
  const int64_t now = now_unix_ms();

  const SourceValue in[] = {{0, 10.0}};
  ASSERT_EQ(writer->apply(0, "card:1", now - 1000, {}, in, 0), ApplyResult::kApplied);
  const FieldValue lim[] = {FieldValue::float64(0, 500.0)};
  ASSERT_EQ(writer->apply(0, "card:1", now - 50'000, lim, {}, 0), ApplyResult::kApplied);  // older, other group
  ASSERT_EQ(cards.get("card:1", row).status, Status::kOk);
  EXPECT_EQ(row.f64(cards.field("credit_limit")), 500.0);
  EXPECT_EQ(row.f64(cards.field("amount_sum_1h")), 10.0);
  EXPECT_EQ(row.group_event_time_ms(activity), now - 1000);
  EXPECT_EQ(row.group_event_time_ms(profile), now - 50'000);
  EXPECT_EQ(cards.stats().stale_ignored, 0u);

  // A delete between the two: profile is cleared, the aggregate's group stays.
  ASSERT_EQ(writer->remove(0, "card:1", now - 20'000), ApplyResult::kApplied);
  ASSERT_EQ(cards.get("card:1", row).status, Status::kOk);
  EXPECT_FALSE(row.valid(cards.field("credit_limit")));
  EXPECT_TRUE(row.valid(cards.field("amount_sum_1h")));
  EXPECT_EQ(row.f64(cards.field("amount_sum_1h")), 10.0);
  EXPECT_EQ(row.group_event_time_ms(profile), now - 20'000);

  // A stale field in an event that also feeds the aggregate: the aggregate
  // takes the event, the field does not.
  const FieldValue old_lim[] = {FieldValue::float64(0, 1.0)};
  const SourceValue in2[] = {{0, 5.0}};
  ASSERT_EQ(writer->apply(0, "card:1", now - 30'000, old_lim, in2, 0), ApplyResult::kApplied);
  ASSERT_EQ(cards.get("card:1", row).status, Status::kOk);
  EXPECT_FALSE(row.valid(cards.field("credit_limit")));
  EXPECT_EQ(row.f64(cards.field("amount_sum_1h")), 15.0);
  EXPECT_EQ(row.group_event_time_ms(activity), now - 1000);  // the newest event folded
  EXPECT_EQ(cards.stats().stale_ignored, 2u);                // the delete's part, the field's

  // A delete newer than everything clears the whole row.
  ASSERT_EQ(writer->remove(0, "card:1", now), ApplyResult::kApplied);
  EXPECT_EQ(cards.get("card:1", row).status, Status::kNotFound);
}

}  // namespace
}  // namespace larder

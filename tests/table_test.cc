// The writer and the client together in one process: upserts, deletes,
// last-write-wins, validity, statuses, a full table, batches, errors.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "larder/client.h"
#include "larder/larder.h"
#include "larder/writer/writer.h"
#include "support/test_segment.h"

namespace larder {
namespace {

using layout::FieldType;
using testing::ScratchSegment;

class TableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    writer_ = Writer::open(seg_.name(), testing::one_table_schema(testing::every_type_table()), seg_.writer_options());
    segment_ = Segment::open(seg_.name(), ClientOptions{seg_.dir()});
    users_ = segment_.table("users");
    row_ = users_.make_row();
  }

  ApplyResult put_clicks(std::string_view key, int64_t clicks, int64_t event_time) {
    const FieldValue v[] = {FieldValue::int64(0, clicks)};
    return writer_->upsert(0, key, event_time, v);
  }
  int64_t clicks(std::string_view key) {
    const ReadResult r = users_.get(key, row_);
    EXPECT_EQ(r.status, Status::kOk) << key;
    return row_.i64(users_.field("clicks"));
  }

  ScratchSegment seg_;
  std::unique_ptr<Writer> writer_;
  Segment segment_;
  Table users_;
  Row row_;
};

TEST_F(TableTest, UpsertThenGetEveryType) {
  const float emb[8] = {1, 2, 3, 4, 5, 6, 7, 8.5f};
  const FieldValue values[] = {
      FieldValue::int64(0, -42),    FieldValue::float64(1, 12.25), FieldValue::float32(2, 0.125f),
      FieldValue::boolean(3, true), FieldValue::vector(4, emb),    FieldValue::string(5, "SE"),
  };
  ASSERT_EQ(writer_->upsert(0, "user:1", 1000, values), ApplyResult::kApplied);
  const ReadResult r = users_.get("user:1", row_);
  ASSERT_EQ(r.status, Status::kOk);
  EXPECT_EQ(r.event_time_ms, 1000);
  EXPECT_GT(r.apply_unix_ns, 0);
  EXPECT_EQ(row_.key(), "user:1");
  EXPECT_EQ(row_.i64(users_.field("clicks", FieldType::kInt64)), -42);
  EXPECT_EQ(row_.f64(users_.field("spend")), 12.25);
  EXPECT_EQ(row_.f32(users_.field("ctr")), 0.125f);
  EXPECT_TRUE(row_.boolean(users_.field("premium")));
  const auto v = row_.vector(users_.field("embedding"));
  ASSERT_EQ(v.size(), 8u);
  EXPECT_EQ(v[7], 8.5f);
  EXPECT_EQ(row_.string(users_.field("country")), "SE");
  EXPECT_EQ(row_.as_f64(users_.field("clicks")), -42.0);
  EXPECT_EQ(row_.as_f64(users_.field("premium")), 1.0);
  for (const Field& f : users_.fields()) EXPECT_TRUE(row_.valid(f)) << f.name;
}

TEST_F(TableTest, ValidityTellsNeverWrittenFromZero) {
  const FieldValue values[] = {FieldValue::int64(0, 0)};
  ASSERT_EQ(writer_->upsert(0, "k", 1, values), ApplyResult::kApplied);
  ASSERT_EQ(users_.get("k", row_).status, Status::kOk);
  EXPECT_TRUE(row_.valid(users_.field("clicks")));
  EXPECT_EQ(row_.i64(users_.field("clicks")), 0);
  EXPECT_FALSE(row_.valid(users_.field("spend")));
  EXPECT_EQ(row_.f64(users_.field("spend")), 0.0);
}

TEST_F(TableTest, PartialUpsertKeepsOtherFields) {
  const FieldValue first[] = {FieldValue::int64(0, 5), FieldValue::string(5, "NO")};
  ASSERT_EQ(writer_->upsert(0, "k", 10, first), ApplyResult::kApplied);
  const FieldValue second[] = {FieldValue::float64(1, 3.5)};
  ASSERT_EQ(writer_->upsert(0, "k", 20, second), ApplyResult::kApplied);
  ASSERT_EQ(users_.get("k", row_).status, Status::kOk);
  EXPECT_EQ(row_.i64(users_.field("clicks")), 5);
  EXPECT_EQ(row_.string(users_.field("country")), "NO");
  EXPECT_EQ(row_.f64(users_.field("spend")), 3.5);
  EXPECT_EQ(row_.event_time_ms(), 20);
}

TEST_F(TableTest, OlderUpdatesAreIgnoredAndCounted) {
  ASSERT_EQ(put_clicks("k", 1, 100), ApplyResult::kApplied);
  EXPECT_EQ(put_clicks("k", 2, 99), ApplyResult::kStale);
  EXPECT_EQ(clicks("k"), 1);
  EXPECT_EQ(users_.stats().stale_ignored, 1u);
  // A tie applies: the later call wins.
  EXPECT_EQ(put_clicks("k", 3, 100), ApplyResult::kApplied);
  EXPECT_EQ(clicks("k"), 3);
}

TEST_F(TableTest, OutOfOrderDeliveryConverges) {
  // The same five updates in two orders give the same row.
  struct U {
    int64_t clicks, t;
  };
  const std::vector<U> updates = {{1, 10}, {2, 20}, {3, 30}, {4, 40}, {5, 50}};
  for (U u : updates) put_clicks("a", u.clicks, u.t);
  for (auto it = updates.rbegin(); it != updates.rend(); ++it) put_clicks("b", it->clicks, it->t);
  EXPECT_EQ(clicks("a"), 5);
  EXPECT_EQ(clicks("b"), 5);
}

TEST_F(TableTest, DeleteAndLastWriteWins) {
  ASSERT_EQ(put_clicks("k", 1, 100), ApplyResult::kApplied);
  EXPECT_EQ(writer_->remove(0, "k", 50), ApplyResult::kStale);  // older than the row
  EXPECT_EQ(users_.get("k", row_).status, Status::kOk);
  EXPECT_EQ(writer_->remove(0, "k", 200), ApplyResult::kApplied);
  EXPECT_EQ(users_.get("k", row_).status, Status::kNotFound);
  EXPECT_EQ(put_clicks("k", 9, 150), ApplyResult::kStale);  // older than the delete
  EXPECT_EQ(users_.get("k", row_).status, Status::kNotFound);
  EXPECT_EQ(put_clicks("k", 7, 300), ApplyResult::kApplied);  // newer: revives
  EXPECT_EQ(clicks("k"), 7);
  ASSERT_EQ(users_.get("k", row_).status, Status::kOk);
  EXPECT_FALSE(row_.valid(users_.field("spend"))) << "a revived row starts empty";
  EXPECT_EQ(users_.stats().live_keys, 1u);
  EXPECT_EQ(users_.stats().tombstones, 0u);
}

TEST_F(TableTest, DeleteOfAbsentKeyIsRemembered) {
  EXPECT_EQ(writer_->remove(0, "ghost", 500), ApplyResult::kApplied);
  EXPECT_EQ(users_.stats().tombstones, 1u);
  EXPECT_EQ(put_clicks("ghost", 1, 400), ApplyResult::kStale);
  EXPECT_EQ(users_.get("ghost", row_).status, Status::kNotFound);
}

TEST_F(TableTest, StatusesAndNames) {
  EXPECT_EQ(users_.get("absent", row_).status, Status::kNotFound);
  EXPECT_EQ(users_.get(std::string(33, 'x'), row_).status, Status::kInvalidKey);
  EXPECT_EQ(users_.get("", row_).status, Status::kInvalidKey);
  put_clicks("old", 1, now_unix_ms() - 60'000);
  ReadResult r = users_.get("old", row_, ReadOptions{.max_age_ms = 1000});
  EXPECT_EQ(r.status, Status::kStale);
  EXPECT_TRUE(r.found());
  EXPECT_GE(r.age_ms(), 60'000);
  r = users_.get("old", row_, ReadOptions{.max_age_ms = 120'000});
  EXPECT_EQ(r.status, Status::kOk);
  for (Status s :
       {Status::kOk, Status::kNotFound, Status::kStale, Status::kBusy, Status::kInvalidKey, Status::kCorrupt}) {
    EXPECT_STRNE(status_name(s), "unknown");
  }
  EXPECT_STREQ(status_name(Status::kBusy), "busy");
}

TEST_F(TableTest, InvalidUpdatesAreRefused) {
  const FieldValue wrong_type[] = {FieldValue::float64(0, 1.0)};  // clicks is int64
  EXPECT_EQ(writer_->upsert(0, "k", 1, wrong_type), ApplyResult::kInvalid);
  const float short_vec[3] = {1, 2, 3};
  const FieldValue wrong_dims[] = {FieldValue::vector(4, short_vec)};
  EXPECT_EQ(writer_->upsert(0, "k", 1, wrong_dims), ApplyResult::kInvalid);
  const FieldValue long_string[] = {FieldValue::string(5, "123456789")};
  EXPECT_EQ(writer_->upsert(0, "k", 1, long_string), ApplyResult::kInvalid);
  const FieldValue no_field[] = {FieldValue::int64(99, 1)};
  EXPECT_EQ(writer_->upsert(0, "k", 1, no_field), ApplyResult::kInvalid);
  EXPECT_EQ(writer_->upsert(0, std::string(33, 'k'), 1, {}), ApplyResult::kInvalid);
  EXPECT_EQ(writer_->upsert(7, "k", 1, {}), ApplyResult::kInvalid);
  EXPECT_EQ(users_.stats().live_keys, 0u);
}

TEST_F(TableTest, BatchAgreesWithSingleGets) {
  std::vector<std::string> keys;
  for (int i = 0; i < 200; ++i) {
    keys.push_back("user:" + std::to_string(i));
    if (i % 3 != 0) put_clicks(keys.back(), i, 1);
  }
  std::vector<std::string_view> views(keys.begin(), keys.end());
  RowBatch batch = users_.make_batch(views.size());
  std::vector<ReadResult> results(views.size());
  users_.get_many(views, batch, results);
  const Field c = users_.field("clicks");
  for (size_t i = 0; i < views.size(); ++i) {
    const ReadResult single = users_.get(views[i], row_);
    ASSERT_EQ(results[i].status, single.status) << i;
    if (single.ok()) {
      EXPECT_EQ(batch.row(i).i64(c), static_cast<int64_t>(i));
      EXPECT_EQ(batch.row(i).key(), views[i]);
    } else {
      EXPECT_EQ(i % 3, 0u);
    }
  }
}

TEST_F(TableTest, ResolvingUnknownNamesFailsClearly) {
  try {
    users_.field("nope");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_NE(std::string(e.what()).find("fields: clicks, spend"), std::string::npos) << e.what();
  }
  try {
    users_.field("clicks", FieldType::kFloat64);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kSchemaMismatch);
    EXPECT_NE(std::string(e.what()).find("is int64, the reader expects float64"), std::string::npos) << e.what();
  }
  EXPECT_THROW(segment_.table("items"), Error);
}

TEST(Table, FullTableRefusesNewKeysButUpdatesExisting) {
  ScratchSegment seg;
  auto writer =
      Writer::open(seg.name(), testing::one_table_schema(testing::every_type_table("t", 50)), seg.writer_options());
  const FieldValue v[] = {FieldValue::int64(0, 1)};
  for (int i = 0; i < 50; ++i) ASSERT_EQ(writer->upsert(0, "k" + std::to_string(i), 1, v), ApplyResult::kApplied);
  EXPECT_EQ(writer->upsert(0, "one-too-many", 1, v), ApplyResult::kTableFull);
  const FieldValue v2[] = {FieldValue::int64(0, 2)};
  EXPECT_EQ(writer->upsert(0, "k7", 2, v2), ApplyResult::kApplied);
  // Deleting makes room again.
  EXPECT_EQ(writer->remove(0, "k8", 3), ApplyResult::kApplied);
  EXPECT_EQ(writer->upsert(0, "one-too-many", 4, v), ApplyResult::kApplied);

  Segment segment = Segment::open(seg.name(), ClientOptions{seg.dir()});
  Table t = segment.table("t");
  EXPECT_EQ(t.stats().full_rejected, 1u);
  EXPECT_EQ(t.stats().live_keys, 50u);
  Row row = t.make_row();
  ASSERT_EQ(t.get("k7", row).status, Status::kOk);
  EXPECT_EQ(row.i64(t.field("clicks")), 2);
  EXPECT_EQ(t.get("one-too-many", row).status, Status::kOk);
}

TEST(Table, ManyKeysWithCollisionsAndChurnStayFindable) {
  ScratchSegment seg;
  layout::TableSpec spec = testing::every_type_table("t", 1000);
  spec.max_load_factor = 0.8;  // long probe chains
  WriterOptions opts = seg.writer_options();
  opts.tombstone_retention_ms = 0;
  auto writer = Writer::open(seg.name(), testing::one_table_schema(spec), opts);
  Segment segment = Segment::open(seg.name(), ClientOptions{seg.dir()});
  Table t = segment.table("t");
  Row row = t.make_row();
  const Field c = t.field("clicks");
  std::map<std::string, int64_t> model;
  uint64_t rng = 12345;
  for (int step = 0; step < 50'000; ++step) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    const std::string key = "k" + std::to_string((rng >> 33) % 1500);
    if ((rng >> 20) % 4 == 0) {
      writer->remove(0, key, step);
      model.erase(key);
    } else if (model.size() < 1000 || model.count(key)) {
      const FieldValue v[] = {FieldValue::int64(0, step)};
      ASSERT_EQ(writer->upsert(0, key, step, v), ApplyResult::kApplied)
          << step << " live " << writer->stats(0).live_keys << " tomb " << writer->stats(0).tombstones << " model "
          << model.size();
      model[key] = step;
    }
    if (step % 100 == 0) writer->maintain(1 << 20);
  }
  EXPECT_EQ(t.stats().live_keys, model.size());
  for (int k = 0; k < 1500; ++k) {
    const std::string key = "k" + std::to_string(k);
    const ReadResult r = t.get(key, row);
    auto it = model.find(key);
    if (it == model.end()) {
      EXPECT_EQ(r.status, Status::kNotFound) << key;
    } else {
      ASSERT_EQ(r.status, Status::kOk) << key;
      EXPECT_EQ(row.i64(c), it->second);
    }
  }
}

TEST(Table, MaintainReclaimsExpiredTombstones) {
  ScratchSegment seg;
  WriterOptions opts = seg.writer_options();
  opts.tombstone_retention_ms = 0;
  auto writer = Writer::open(seg.name(), testing::one_table_schema(testing::every_type_table("t", 100)), opts);
  for (int i = 0; i < 100; ++i) writer->remove(0, "gone" + std::to_string(i), 1);
  EXPECT_GT(writer->stats(0).tombstones, 0u);
  ::usleep(2000);
  EXPECT_GT(writer->maintain(1 << 20), 0u);
  EXPECT_EQ(writer->stats(0).tombstones, 0u);
}

TEST(CApi, ReadsThroughTheCAbi) {
  ScratchSegment seg;
  auto writer = Writer::open(seg.name(), testing::one_table_schema(testing::every_type_table()), seg.writer_options());
  const float emb[8] = {0.5f, 1, 2, 3, 4, 5, 6, 7};
  const FieldValue values[] = {FieldValue::int64(0, 11), FieldValue::float64(1, 2.5), FieldValue::vector(4, emb),
                               FieldValue::string(5, "DE")};
  ASSERT_EQ(writer->upsert(0, "u1", 5, values), ApplyResult::kApplied);

  char err[256];
  larder_segment* s = nullptr;
  ASSERT_EQ(larder_open(seg.name().c_str(), seg.dir().c_str(), &s, err, sizeof err), LARDER_E_OK) << err;
  larder_table* t = nullptr;
  larder_table* missing = nullptr;
  EXPECT_EQ(larder_table_open(s, "nope", &missing, err, sizeof err), LARDER_E_NOT_FOUND);
  EXPECT_EQ(missing, nullptr);
  EXPECT_NE(std::string(err).find("no table \"nope\""), std::string::npos) << err;
  ASSERT_EQ(larder_table_open(s, "users", &t, err, sizeof err), LARDER_E_OK) << err;
  std::vector<uint64_t> row(larder_table_row_bytes(t) / 8);
  uint32_t clicks, spend, ctr, embedding, country, missing_field;
  ASSERT_EQ(larder_field_lookup(t, "clicks", &clicks), LARDER_E_OK);
  ASSERT_EQ(larder_field_lookup(t, "spend", &spend), LARDER_E_OK);
  ASSERT_EQ(larder_field_lookup(t, "ctr", &ctr), LARDER_E_OK);
  ASSERT_EQ(larder_field_lookup(t, "embedding", &embedding), LARDER_E_OK);
  ASSERT_EQ(larder_field_lookup(t, "country", &country), LARDER_E_OK);
  EXPECT_EQ(larder_field_lookup(t, "missing", &missing_field), LARDER_E_NOT_FOUND);
  EXPECT_EQ(missing_field, LARDER_NO_FIELD);
  larder_read_result r = larder_get(t, "u1", 2, row.data(), 0);
  ASSERT_EQ(r.status, LARDER_OK);
  EXPECT_EQ(r.event_time_ms, 5);
  EXPECT_EQ(larder_row_int64(t, row.data(), clicks), 11);
  EXPECT_EQ(larder_row_float64(t, row.data(), spend), 2.5);
  EXPECT_EQ(larder_row_valid(t, row.data(), ctr), 0);
  uint32_t dims = 0, len = 0;
  const float* v = larder_row_vector(t, row.data(), embedding, &dims);
  ASSERT_EQ(dims, 8u);
  EXPECT_EQ(v[0], 0.5f);
  const char* str = larder_row_string(t, row.data(), country, &len);
  EXPECT_EQ(std::string(str, len), "DE");
  EXPECT_EQ(larder_get(t, "nobody", 6, row.data(), 0).status, LARDER_NOT_FOUND);

  const void* keys[] = {"u1", "nobody"};
  const size_t lens[] = {2, 6};
  std::vector<uint64_t> rows(2 * row.size());
  larder_read_result results[2];
  larder_get_many(t, keys, lens, 2, rows.data(), results, 0);
  EXPECT_EQ(results[0].status, LARDER_OK);
  EXPECT_EQ(results[1].status, LARDER_NOT_FOUND);
  EXPECT_EQ(larder_row_int64(t, rows.data(), clicks), 11);
  EXPECT_EQ(larder_writer_alive(s, 5000), 1);
  EXPECT_STREQ(larder_status_name(LARDER_STALE), "stale");
  larder_table_close(t);
  larder_close(s);

  EXPECT_EQ(larder_open("no-such-segment", seg.dir().c_str(), &s, err, sizeof err), LARDER_E_NOT_FOUND);
  EXPECT_EQ(s, nullptr);
  EXPECT_NE(std::string(err).find("Is the sidecar running"), std::string::npos) << err;
}

TEST(Errors, EveryCodeHasAName) {
  for (int c = 1; c <= 10; ++c) EXPECT_STRNE(error_code_name(static_cast<ErrorCode>(c)), "unknown error") << c;
}

}  // namespace
}  // namespace larder

// Writer::upsert_many against one apply() per update: two segments fed the
// same seeded stream, one each way, must agree on every result, every row
// (values, validity, times) and every counter. The stream mixes what the
// single path decides: inserts, updates, ties and stale updates (last write
// wins inside a batch too), revivals after deletes, a full table, invalid
// updates (unknown table or field, wrong type, bad key), aggregate events
// with duplicate ids and late ones, and staged source positions.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "larder/client.h"
#include "larder/layout/segment_file.h"
#include "larder/layout/table_view.h"
#include "larder/writer/writer.h"
#include "support/process.h"
#include "support/test_segment.h"

namespace larder {
namespace {

using layout::FieldType;
using testing::ScratchSegment;

// One update of the stream, with storage for what its Upsert points to.
struct Item {
  Upsert u;
  std::string key;
  std::vector<FieldValue> values;
  std::vector<SourceValue> sources;
  SourcePosition position;
  bool is_delete = false;  // between batches: a delete of `key`
};

// Both sides' reads of `key` agree: status, times, every field's validity
// and value.
void expect_same_row(Table& a, Table& b, const std::string& key) {
  Row ra = a.make_row(), rb = b.make_row();
  const ReadResult x = a.get(key, ra), y = b.get(key, rb);
  ASSERT_EQ(x.status, y.status) << key;
  if (x.status != Status::kOk) return;
  EXPECT_EQ(x.event_time_ms, y.event_time_ms) << key;
  EXPECT_EQ(x.apply_unix_ns, y.apply_unix_ns) << key;
  for (const Field& f : a.fields()) {
    const Field g = b.field(f.name);
    ASSERT_EQ(ra.valid(f), rb.valid(g)) << key << " " << f.name;
    if (!ra.valid(f)) continue;
    switch (f.type) {
      case FieldType::kInt64: EXPECT_EQ(ra.i64(f), rb.i64(g)) << key << " " << f.name; break;
      case FieldType::kFloat64: EXPECT_EQ(ra.f64(f), rb.f64(g)) << key << " " << f.name; break;
      case FieldType::kFloat32: EXPECT_EQ(ra.f32(f), rb.f32(g)) << key << " " << f.name; break;
      case FieldType::kBool: EXPECT_EQ(ra.boolean(f), rb.boolean(g)) << key << " " << f.name; break;
      case FieldType::kString: EXPECT_EQ(ra.string(f), rb.string(g)) << key << " " << f.name; break;
      case FieldType::kFloat32Vector: {
        const auto va = ra.vector(f), vb = rb.vector(g);
        ASSERT_EQ(va.size(), vb.size());
        for (size_t i = 0; i < va.size(); ++i) EXPECT_EQ(va[i], vb[i]) << key << " " << f.name << "[" << i << "]";
        break;
      }
    }
  }
}

void expect_same_stats(const Table& a, const Table& b) {
  const TableStats x = a.stats(), y = b.stats();
  EXPECT_EQ(x.live_keys, y.live_keys);
  EXPECT_EQ(x.tombstones, y.tombstones);
  EXPECT_EQ(x.upserts, y.upserts);
  EXPECT_EQ(x.deletes, y.deletes);
  EXPECT_EQ(x.stale_ignored, y.stale_ignored);
  EXPECT_EQ(x.full_rejected, y.full_rejected);
  EXPECT_EQ(x.last_apply_unix_ns, y.last_apply_unix_ns);
  EXPECT_EQ(x.max_event_time_ms, y.max_event_time_ms);
  EXPECT_EQ(x.aggregate_events, y.aggregate_events);
  EXPECT_EQ(x.late_dropped, y.late_dropped);
  EXPECT_EQ(x.outside_window, y.outside_window);
  EXPECT_EQ(x.duplicates, y.duplicates);
  EXPECT_EQ(x.aggregate_clock_ms, y.aggregate_clock_ms);
}

// A second, empty writer with the same hash seed as `a` (a segment's seed is
// drawn at creation): restored from a's image, so both place every key in
// the same slot and their slot arrays can be compared word for word.
std::unique_ptr<Writer> same_seed_twin(const Writer& a, const ScratchSegment& sb, const layout::Schema& schema) {
  std::vector<unsigned char> image;
  a.copy_image(&image);
  return Writer::restore(sb.name(), schema, image, sb.writer_options());
}

// Every slot of table 0, every word (seq included: both sides wrote each
// slot as often), equal.
void expect_same_slots(const Writer& a, const Writer& b) {
  const layout::TableGeometry ga = layout::table_geometry(a.data(), layout::table_descriptor(a.data(), 0));
  const layout::TableGeometry gb = layout::table_geometry(b.data(), layout::table_descriptor(b.data(), 0));
  ASSERT_EQ(ga.slot_count, gb.slot_count);
  ASSERT_EQ(ga.slot_words, gb.slot_words);
  uint64_t differ = 0;
  for (uint64_t i = 0; i < ga.slot_count; ++i) {
    for (uint32_t w = 0; w < ga.slot_words; ++w) differ += ga.slot(i)[w].load() != gb.slot(i)[w].load();
  }
  EXPECT_EQ(differ, 0u) << "slot words that differ";
}

// Feeds `stream` to `single` one apply() (or remove()) at a time and to
// `batched` through upsert_many, in batches of random sizes that end at each
// delete; every batch shares one apply time, passed to both.
void feed_both(Writer& single, Writer& batched, std::vector<Item>& stream, std::mt19937_64& rng, bool positions) {
  int64_t apply_ns = 1'700'000'000'000'000'000;
  size_t i = 0;
  std::vector<Upsert> batch;
  std::vector<ApplyResult> got;
  while (i < stream.size()) {
    apply_ns += 1'000'000;  // 1 ms per batch: the aggregate clock moves
    if (stream[i].is_delete) {
      const Item& d = stream[i++];
      ASSERT_EQ(single.remove(0, d.key, d.u.event_time_ms, apply_ns),
                batched.remove(0, d.key, d.u.event_time_ms, apply_ns));
      continue;
    }
    // Up to 100: past the prefetch ring (64 keys), through several groups
    // of kPrefetchGroup and their partial tails.
    const size_t want = 1 + rng() % 100;
    batch.clear();
    size_t end = i;
    while (end < stream.size() && !stream[end].is_delete && end - i < want) {
      Item& it = stream[end++];
      it.u.key = it.key;
      it.u.values = it.values;
      it.u.sources = it.sources;
      it.u.position = positions ? &it.position : nullptr;
      batch.push_back(it.u);
    }
    got.assign(batch.size(), ApplyResult::kApplied);
    batched.upsert_many(batch, got, apply_ns);
    for (size_t j = 0; j < batch.size(); ++j) {
      const Upsert& u = batch[j];
      if (u.position != nullptr) single.stage_position(*u.position);
      const ApplyResult want_r =
          single.apply(u.table, u.key, u.event_time_ms, u.values, u.sources, u.event_id, apply_ns);
      ASSERT_EQ(got[j], want_r) << "update " << i + j << " (" << u.key << ")";
    }
    if (positions) {
      ASSERT_TRUE(batched.position(0).has_value());
      ASSERT_EQ(batched.position(0)->next_offset, single.position(0)->next_offset) << "after update " << end;
      ASSERT_EQ(batched.position(0)->skip_updates, single.position(0)->skip_updates) << "after update " << end;
    }
    i = end;
  }
}

TEST(UpsertMany, EqualsOneApplyPerUpdate) {
  const uint64_t seed = testing::test_seed("UpsertMany.EqualsOneApplyPerUpdate");
  std::mt19937_64 rng(seed);
  constexpr uint64_t kCapacity = 64;
  constexpr uint64_t kKeys = 100;  // more than the capacity: some inserts find the table full
  const layout::Schema schema = testing::one_table_schema(testing::every_type_table("users", kCapacity));
  ScratchSegment sa, sb;
  auto a = Writer::open(sa.name(), schema, sa.writer_options());
  auto b = same_seed_twin(*a, sb, schema);

  std::vector<Item> stream(3000);
  int64_t newest = 1000;
  uint64_t n = 0;
  for (Item& it : stream) {
    ++n;
    const uint64_t k = rng() % kKeys;
    it.key = "user:" + std::to_string(k);
    // Event times wander: ties, older (stale) and newer updates of a key,
    // also inside one batch.
    newest += static_cast<int64_t>(rng() % 3);
    it.u.event_time_ms = newest - static_cast<int64_t>(rng() % 8);
    it.position = {0, n, 0};
    const uint64_t kind = rng() % 100;
    if (kind < 6) {
      it.is_delete = true;
      continue;
    }
    it.values.push_back(FieldValue::int64(0, static_cast<int64_t>(n)));
    if (rng() % 2) it.values.push_back(FieldValue::float64(1, static_cast<double>(n) * 0.25));
    if (rng() % 3 == 0) it.values.push_back(FieldValue::string(5, n % 2 ? "SE" : "NO"));
    if (kind < 8) it.values.push_back(FieldValue::int64(1, 7));   // "spend" is float64: kInvalid
    if (kind == 8) it.values.push_back(FieldValue::int64(9, 7));  // no such field
    if (kind == 9) it.u.table = 3;                                // no such table
    if (kind == 10) it.key = std::string(40, 'k');                // longer than key_max_len
    if (kind == 11) it.key.clear();
  }
  feed_both(*a, *b, stream, rng, /*positions=*/false);

  Segment ga = Segment::open(sa.name(), ClientOptions{sa.dir()});
  Segment gb = Segment::open(sb.name(), ClientOptions{sb.dir()});
  Table ta = ga.table("users"), tb = gb.table("users");
  expect_same_stats(ta, tb);
  expect_same_slots(*a, *b);
  for (uint64_t k = 0; k < kKeys; ++k) expect_same_row(ta, tb, "user:" + std::to_string(k));
  // The stream reached what it was built to reach.
  const TableStats st = ta.stats();
  EXPECT_GT(st.stale_ignored, 0u);
  EXPECT_GT(st.full_rejected, 0u);
  EXPECT_GT(st.deletes, 0u);
  EXPECT_EQ(st.live_keys + st.tombstones <= st.slot_count, true);
}

// The aggregate stream above through both paths. `capacity` and
// `load_factor` decide how far keys sit from their home slot, which the
// batch's prefetch guesses (upsert_many.cc).
void aggregates_and_positions(const char* test, uint64_t capacity, double load_factor, uint64_t keys) {
  const uint64_t seed = testing::test_seed(test);
  std::mt19937_64 rng(seed);
  layout::TableSpec t;
  t.name = "users";
  t.key_max_len = 16;
  t.capacity = capacity;
  t.max_load_factor = load_factor;
  t.fields = {{"amount", FieldType::kFloat64, 1}, {"label", FieldType::kInt64, 1}};
  t.allowed_lateness_ms = 5'000;
  layout::AggregateSpec sum;
  sum.name = "amount_sum_10s";
  sum.source = "amount";
  sum.fn = layout::AggregateFn::kSum;
  sum.window_ms = 10'000;
  sum.resolution_ms = 1'000;
  layout::AggregateSpec count = sum;
  count.name = "events_10s";
  count.source = "";
  count.fn = layout::AggregateFn::kCount;
  t.aggregates = {sum, count};
  const layout::Schema schema = testing::one_table_schema(t);
  ScratchSegment sa, sb;
  auto a = Writer::open(sa.name(), schema, sa.writer_options());
  auto b = same_seed_twin(*a, sb, schema);
  ASSERT_EQ(a->source_index(0, "amount"), 0);

  std::vector<Item> stream(2000);
  // Event times near the apply clock of feed_both (1 ms per batch), some
  // older than the allowed lateness.
  const int64_t clock0_ms = 1'700'000'000'000;
  uint64_t n = 0;
  for (Item& it : stream) {
    ++n;
    it.key = "u" + std::to_string(rng() % keys);
    it.u.event_time_ms = clock0_ms + static_cast<int64_t>(n / 20) - static_cast<int64_t>(rng() % 7'000);
    it.position = {0, n, static_cast<uint32_t>(n % 3)};
    if (rng() % 100 < 4) {
      it.is_delete = true;
      continue;
    }
    it.sources.push_back({0, static_cast<double>(rng() % 1000) / 8});
    if (rng() % 2) it.values.push_back(FieldValue::int64(1, static_cast<int64_t>(n)));
    // Ids from a small pool: redeliveries are recognised as duplicates.
    if (rng() % 2) it.u.event_id = event_id_hash("e" + std::to_string(rng() % 600));
    if (rng() % 50 == 0) it.sources.push_back({5, 1.0});  // no such source: kInvalid
  }
  feed_both(*a, *b, stream, rng, /*positions=*/true);

  Segment ga = Segment::open(sa.name(), ClientOptions{sa.dir()});
  Segment gb = Segment::open(sb.name(), ClientOptions{sb.dir()});
  Table ta = ga.table("users"), tb = gb.table("users");
  expect_same_stats(ta, tb);
  expect_same_slots(*a, *b);
  for (uint64_t k = 0; k < keys; ++k) expect_same_row(ta, tb, "u" + std::to_string(k));
  ASSERT_TRUE(a->position(0).has_value());
  EXPECT_EQ(b->position(0)->next_offset, a->position(0)->next_offset);
  EXPECT_EQ(b->position(0)->skip_updates, a->position(0)->skip_updates);
  const TableStats st = ta.stats();
  EXPECT_GT(st.duplicates, 0u);
  EXPECT_GT(st.late_dropped + st.stale_ignored, 0u);
  EXPECT_GT(st.aggregate_events, 0u);
}

TEST(UpsertMany, EqualsOneApplyPerUpdateWithAggregatesAndPositions) {
  aggregates_and_positions("UpsertMany.EqualsOneApplyPerUpdateWithAggregatesAndPositions", 256, 0.75, 50);
}

// A nearly full table: most keys sit past their home slot, chains run
// through tombstones, and a new key is refused.
TEST(UpsertMany, EqualsOneApplyPerUpdateWithAggregatesInAFullTable) {
  aggregates_and_positions("UpsertMany.EqualsOneApplyPerUpdateWithAggregatesInAFullTable", 60, 0.95, 64);
}

TEST(UpsertMany, EmptyBatchAndShortResults) {
  ScratchSegment s;
  auto w = Writer::open(s.name(), testing::one_table_schema(testing::every_type_table()), s.writer_options());
  w->upsert_many({}, {});  // nothing to do
  const FieldValue v[] = {FieldValue::int64(0, 1)};
  Upsert u[2];
  u[0].key = "a";
  u[0].values = v;
  u[1] = u[0];
  u[1].key = "b";
  ApplyResult one[1];
  try {
    w->upsert_many(u, one);
    FAIL() << "a results span shorter than the updates was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  }
  EXPECT_EQ(w->stats(0).live_keys, 0u) << "nothing is applied when the results do not fit";
  ApplyResult two[2];
  w->upsert_many(u, two);
  EXPECT_EQ(two[0], ApplyResult::kApplied);
  EXPECT_EQ(two[1], ApplyResult::kApplied);
  EXPECT_EQ(w->stats(0).live_keys, 2u);
}

// Upsert::apply_unix_ns: each update of a batch applied at its own instant
// (a replay's arrival times); 0 takes the batch's.
TEST(UpsertMany, AnUpdateMayCarryItsOwnApplyTime) {
  ScratchSegment s;
  auto w = Writer::open(s.name(), testing::one_table_schema(testing::every_type_table()), s.writer_options());
  const FieldValue v[] = {FieldValue::int64(0, 1)};
  Upsert u[3];
  const char* keys[] = {"a", "b", "c"};
  for (int i = 0; i < 3; ++i) {
    u[i].key = keys[i];
    u[i].event_time_ms = 1000;
    u[i].values = v;
  }
  u[0].apply_unix_ns = 5'000'000'000;
  u[1].apply_unix_ns = 6'000'000'000;
  ApplyResult results[3];
  w->upsert_many(u, results, 7'000'000'000);
  const Segment segment = Segment::open(s.name(), ClientOptions{s.dir()});
  const Table t = segment.table(testing::every_type_table().name);
  Row row = t.make_row();
  const int64_t expected[] = {5'000'000'000, 6'000'000'000, 7'000'000'000};
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(results[i], ApplyResult::kApplied);
    EXPECT_EQ(t.get(keys[i], row).apply_unix_ns, expected[i]) << keys[i];
  }
}

}  // namespace
}  // namespace larder

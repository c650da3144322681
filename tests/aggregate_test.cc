// Windowed aggregates (docs/aggregates.md) against a brute-force reference
// (support/aggregate_reference.h): seeded random streams, decay under
// refresh, warm restarts, crash injection, distinct_count, and the schema
// checks.
//
// Every test drives the writer's clock itself (apply_unix_ns, refresh(now));
// nothing sleeps. Randomized tests print their seed: replay one with
// `larder_aggregate_tests --seed=N` (or LARDER_SEED=N).
// LARDER_CRASH_ITERATIONS sets the number of SIGKILLs (default 20; fewer than
// 10 only with LARDER_CRASH_ITERATIONS_REDUCED=1).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>

#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "larder/client.h"
#include "larder/layout/error.h"
#include "larder/layout/schema.h"
#include "larder/writer/writer.h"
#include "support/aggregate_reference.h"
#include "support/process.h"
#include "support/progress.h"
#include "support/recount.h"
#include "support/test_segment.h"

namespace larder::aggregate_test {
std::optional<uint64_t> seed_flag;  // --seed=N
}  // namespace larder::aggregate_test

namespace larder {
namespace {

using layout::AggregateFn;
using layout::AggregateSpec;
using layout::FieldType;
using layout::TableSpec;
using layout::WindowEnd;
using testing::ScratchSegment;
using Ref = testing::AggregateReference;
using Outcome = Ref::Outcome;

// 2100-01-01T00:00:00Z: a multiple of every resolution used here, and later
// than any wall clock these tests will meet (so a writer that started its
// clock from CLOCK_REALTIME would still follow the test's clock).
constexpr int64_t kBaseMs = 4'102'444'800'000;
constexpr int64_t kNsPerMs = 1'000'000;
// Tombstones must outlive the test's clock jumps (days), or a new key could
// take a deleted key's slot and its tombstone with it.
constexpr int64_t kLongRetentionMs = 50LL * 365 * 86'400'000;

constexpr int64_t ns(int64_t ms) { return ms * kNsPerMs; }

uint64_t seed_for(const char* test) {
  uint64_t seed = 0;
  if (aggregate_test::seed_flag) {
    seed = *aggregate_test::seed_flag;
  } else if (const char* s = std::getenv("LARDER_SEED"); s != nullptr) {
    seed = std::strtoull(s, nullptr, 10);
  } else {
    seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }
  std::printf("%s: seed %llu (replay with --seed=%llu or LARDER_SEED=%llu)\n", test,
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  return seed;
}

AggregateSpec agg(std::string name, std::string source, AggregateFn fn, int64_t window_ms, int64_t resolution_ms = 0,
                  WindowEnd end = WindowEnd::kNow) {
  AggregateSpec a;
  a.name = std::move(name);
  a.source = std::move(source);
  a.fn = fn;
  a.window_ms = window_ms;
  a.resolution_ms = resolution_ms;
  a.end = end;
  return a;
}

// Every fn; two windows sharing a ring (amount 4 s and 10 s at 1 s); one
// source at three resolutions; latest_event windows sharing a ring with now
// windows; counts with and without a source; default resolutions (50 ms,
// 10 ms). Lateness: the default (10 s).
TableSpec wide_table() {
  TableSpec t;
  t.name = "users";
  t.key_max_len = 32;
  t.capacity = 64;
  t.fields = {{"amount", FieldType::kFloat64, 1}, {"tag", FieldType::kInt64, 1}};
  const WindowEnd latest = WindowEnd::kLatestEvent;
  t.aggregates = {
      agg("events_10s", "", AggregateFn::kCount, 10'000, 1000),
      agg("events_3s_latest", "", AggregateFn::kCount, 3000, 1000, latest),
      agg("amount_sum_10s", "amount", AggregateFn::kSum, 10'000, 1000),
      agg("amount_sum_4s", "amount", AggregateFn::kSum, 4000, 1000),
      agg("amount_count_4s", "amount", AggregateFn::kCount, 4000, 1000),
      agg("amount_mean_10s", "amount", AggregateFn::kMean, 10'000, 1000),
      agg("amount_min_10s", "amount", AggregateFn::kMin, 10'000, 1000),
      agg("amount_max_10s", "amount", AggregateFn::kMax, 10'000, 1000),
      agg("amount_last_10s", "amount", AggregateFn::kLast, 10'000, 1000),
      agg("amount_var_10s", "amount", AggregateFn::kVariance, 10'000, 1000),
      agg("amount_std_10s", "amount", AggregateFn::kStddev, 10'000, 1000),
      agg("amount_sum_6s_latest", "amount", AggregateFn::kSum, 6000, 1000, latest),
      agg("amount_count_6s_latest", "amount", AggregateFn::kCount, 6000, 1000, latest),
      agg("amount_last_6s_latest", "amount", AggregateFn::kLast, 6000, 1000, latest),
      agg("amount_max_6s_latest", "amount", AggregateFn::kMax, 6000, 1000, latest),
      agg("amount_mean_6s_latest", "amount", AggregateFn::kMean, 6000, 1000, latest),
      agg("amount_mean_2s", "amount", AggregateFn::kMean, 2000, 500),
      agg("amount_std_2s", "amount", AggregateFn::kStddev, 2000, 500),
      agg("amount_min_2s", "amount", AggregateFn::kMin, 2000, 500),
      agg("latency_min_3s", "latency", AggregateFn::kMin, 3000, 250),
      agg("latency_max_3s", "latency", AggregateFn::kMax, 3000, 250),
      agg("latency_last_3s", "latency", AggregateFn::kLast, 3000, 250),
      agg("latency_var_3s", "latency", AggregateFn::kVariance, 3000, 250),
      agg("latency_count_5s_latest", "latency", AggregateFn::kCount, 5000, 250, latest),
      agg("latency_distinct_3s", "latency", AggregateFn::kDistinctCount, 3000, 250),  // many values: the sketch
      agg("item_distinct_10s", "item", AggregateFn::kDistinctCount, 10'000, 1000),
      agg("item_distinct_4s_latest", "item", AggregateFn::kDistinctCount, 4000, 1000, latest),
      agg("latency_sum_3s", "latency", AggregateFn::kSum, 3000),    // default resolution: 50 ms
      agg("latency_mean_1s", "latency", AggregateFn::kMean, 1000),  // default resolution: 10 ms
  };
  return t;
}

// No count without a source (an upsert feeds no aggregate), a lateness (3 s)
// shorter than the rings (8 s), a longer dedup horizon and a small dedup set.
TableSpec tight_table() {
  TableSpec t;
  t.name = "items";
  t.key_max_len = 32;
  t.capacity = 64;
  t.fields = {{"amount", FieldType::kFloat64, 1}, {"tag", FieldType::kInt64, 1}};
  const WindowEnd latest = WindowEnd::kLatestEvent;
  t.aggregates = {
      agg("amount_sum_5s", "amount", AggregateFn::kSum, 5000, 500),
      agg("amount_count_5s", "amount", AggregateFn::kCount, 5000, 500),
      agg("amount_last_5s", "amount", AggregateFn::kLast, 5000, 500),
      agg("amount_min_5s", "amount", AggregateFn::kMin, 5000, 500),
      agg("amount_var_5s", "amount", AggregateFn::kVariance, 5000, 500),
      agg("amount_mean_5s", "amount", AggregateFn::kMean, 5000, 500),
      agg("amount_sum_2s_latest", "amount", AggregateFn::kSum, 2000, 500, latest),
      agg("amount_last_2s_latest", "amount", AggregateFn::kLast, 2000, 500, latest),
      agg("latency_mean_8s", "latency", AggregateFn::kMean, 8000, 1000),
      agg("latency_max_8s", "latency", AggregateFn::kMax, 8000, 1000),
      agg("latency_std_8s", "latency", AggregateFn::kStddev, 8000, 1000),
      agg("latency_sum_8s", "latency", AggregateFn::kSum, 8000, 1000),
      agg("latency_last_2s_latest", "latency", AggregateFn::kLast, 2000, 1000, latest),
  };
  t.allowed_lateness_ms = 3000;
  t.dedup_horizon_ms = 6000;
  t.dedup_capacity = 4096;
  return t;
}

AggregateSpec events_agg(std::string name, std::string source, AggregateFn fn, uint32_t n, uint32_t min_periods = 0,
                         uint32_t ddof = 0) {
  AggregateSpec a;
  a.name = std::move(name);
  a.source = std::move(source);
  a.fn = fn;
  a.window_events = n;
  a.min_periods = min_periods;
  a.ddof = ddof;
  return a;
}

// Count windows and sequences of every fn, beside time windows of the same
// sources (the generators place events by the time groups): one store per
// source, windows smaller than the store, min_periods and ddof, a count of
// every event, a sample variance of a time window.
TableSpec events_table() {
  TableSpec t;
  t.name = "clicks";
  t.key_max_len = 32;
  t.capacity = 64;
  t.fields = {{"amount", FieldType::kFloat64, 1}, {"tag", FieldType::kInt64, 1}};
  t.aggregates = {
      agg("amount_sum_10s", "amount", AggregateFn::kSum, 10'000, 1000),
      agg("amount_var1_10s", "amount", AggregateFn::kVariance, 10'000, 1000),
      agg("latency_std1_4s", "latency", AggregateFn::kStddev, 4000, 500),
      events_agg("amount_sum_5e", "amount", AggregateFn::kSum, 5),
      events_agg("amount_mean_5e_min2", "amount", AggregateFn::kMean, 5, 2),
      events_agg("amount_var_8e_ddof1", "amount", AggregateFn::kVariance, 8, 1, 1),
      events_agg("amount_std_3e", "amount", AggregateFn::kStddev, 3),
      events_agg("amount_std_6e_ddof1", "amount", AggregateFn::kStddev, 6, 2, 1),
      events_agg("amount_min_4e", "amount", AggregateFn::kMin, 4, 1),
      events_agg("amount_max_4e", "amount", AggregateFn::kMax, 4, 1),
      events_agg("amount_first_6e", "amount", AggregateFn::kFirst, 6, 1),
      events_agg("amount_last_6e", "amount", AggregateFn::kLast, 6, 1),
      events_agg("amount_count_7e", "amount", AggregateFn::kCount, 7, 1),
      events_agg("amount_seq_4", "amount", AggregateFn::kLastN, 4, 2),
      events_agg("events_count_3e", "", AggregateFn::kCount, 3),
      events_agg("latency_seq_12", "latency", AggregateFn::kLastN, 12),
      events_agg("latency_mean_10e", "latency", AggregateFn::kMean, 10, 1),
  };
  t.aggregates[1].ddof = 1;
  t.aggregates[2].ddof = 1;
  return t;
}

// ---------------------------------------------------------------------------
// Steps: what a stream does, applied identically to the writer and the model.

struct Step {
  enum class Kind { kApply, kUpsert, kRemove, kRefresh } kind = Kind::kApply;
  Ref::Event event;  // kRefresh: event.apply_ns is the refresh time
  bool redelivery = false;
};

std::string describe(const Step& s) {
  char buf[256];
  const char* kind = s.kind == Step::Kind::kApply    ? "apply"
                     : s.kind == Step::Kind::kUpsert ? "upsert"
                     : s.kind == Step::Kind::kRemove ? "remove"
                                                     : "refresh";
  std::snprintf(buf, sizeof buf, "%s%s key=%s te=base%+lld at=base%+.6f ms id=%016llx fields=%zu sources=%zu", kind,
                s.redelivery ? "(redelivery)" : "", s.event.key.c_str(), static_cast<long long>(s.event.te - kBaseMs),
                static_cast<double>(s.event.apply_ns - ns(kBaseMs)) / kNsPerMs,
                static_cast<unsigned long long>(s.event.id), s.event.fields.size(), s.event.sources.size());
  return buf;
}

// The writer side of a step. `source_map` maps the model's source indices to
// the writer's.
ApplyResult write_step(Writer& w, const TableSpec& spec, const std::vector<uint32_t>& source_map, const Step& s) {
  const Ref::Event& e = s.event;
  std::vector<FieldValue> values;
  for (const Ref::FieldWrite& f : e.fields) {
    values.push_back(spec.fields[f.field].type == FieldType::kInt64 ? FieldValue::int64(f.field, f.i64)
                                                                    : FieldValue::float64(f.field, f.f64));
  }
  std::vector<SourceValue> sources;
  for (const Ref::SourceInput& in : e.sources) sources.push_back({source_map[in.source], in.value});
  switch (s.kind) {
    case Step::Kind::kApply: return w.apply(0, e.key, e.te, values, sources, e.id, e.apply_ns);
    case Step::Kind::kUpsert: return w.upsert(0, e.key, e.te, values, e.apply_ns);
    case Step::Kind::kRemove: return w.remove(0, e.key, e.te, e.apply_ns);
    case Step::Kind::kRefresh: w.refresh(e.apply_ns); return ApplyResult::kApplied;
  }
  return ApplyResult::kInvalid;
}

Outcome model_step(Ref& ref, const Step& s) {
  const Ref::Event& e = s.event;
  switch (s.kind) {
    case Step::Kind::kApply: return ref.apply(e);
    case Step::Kind::kUpsert: return ref.upsert(e.key, e.te, e.fields, e.apply_ns);
    case Step::Kind::kRemove: return ref.remove(e.key, e.te, e.apply_ns);
    case Step::Kind::kRefresh: ref.refresh(e.apply_ns); return Outcome::kApplied;
  }
  return Outcome::kApplied;
}

// What the writer may return for what the model did. Where the docs leave the
// result open (sources folded while the fields are older than the row; an
// event neither late nor inside any ring), any non-duplicate result that
// changes nothing else is accepted.
bool compatible(Outcome want, ApplyResult got) {
  switch (want) {
    case Outcome::kApplied: return got == ApplyResult::kApplied;
    case Outcome::kFoldedFieldsStale: return got == ApplyResult::kApplied || got == ApplyResult::kStale;
    case Outcome::kNoEffect:
      return got == ApplyResult::kApplied || got == ApplyResult::kStale || got == ApplyResult::kLate;
    case Outcome::kDuplicate: return got == ApplyResult::kDuplicate;
    case Outcome::kStale: return got == ApplyResult::kStale;
    case Outcome::kLate: return got == ApplyResult::kLate;
  }
  return false;
}

// ---------------------------------------------------------------------------
// A writer, a reader and the model of one table.

class Harness {
 public:
  Harness(const TableSpec& spec, std::string label, uint64_t seed, std::vector<std::string> keys)
      : spec_(spec), ref_(spec), label_(std::move(label)), seed_(seed), keys_(std::move(keys)) {
    schema_.tables.push_back(spec);
    open_writer();
  }

  WriterOptions options() const {
    WriterOptions o = seg_.writer_options();
    o.tombstone_retention_ms = kLongRetentionMs;
    return o;
  }
  void open_writer() {
    writer_ = Writer::open(seg_.name(), schema_, options());
    segment_ = Segment::open(seg_.name(), ClientOptions{seg_.dir()});
    table_ = segment_.table(spec_.name);
    row_ = table_.make_row();
    fields_.clear();
    for (size_t f = 0; f < ref_.field_count(); ++f) fields_.push_back(table_.field(ref_.field_name(f)));
    source_map_.clear();
    for (const std::string& s : ref_.sources()) {
      const int i = writer_->source_index(0, s);
      if (i < 0) throw std::runtime_error("writer has no source " + s);
      source_map_.push_back(static_cast<uint32_t>(i));
    }
  }
  void close_writer() { writer_.reset(); }

  Writer& writer() { return *writer_; }
  Ref& ref() { return ref_; }
  const Ref& ref() const { return ref_; }
  const TableSpec& spec() const { return spec_; }
  const layout::Schema& schema() const { return schema_; }
  const ScratchSegment& segment() const { return seg_; }
  const std::vector<uint32_t>& source_map() const { return source_map_; }
  std::vector<std::string>& keys() { return keys_; }
  uint64_t comparisons() const { return comparisons_; }
  uint64_t mismatches() const { return mismatches_; }
  uint64_t steps() const { return steps_; }
  // The largest |got - want| / tolerance seen (sum, mean, variance, stddev).
  double max_error_ratio() const { return max_error_ratio_; }
  const std::map<std::string, uint64_t>& outcomes() const { return outcomes_; }
  void set_label(std::string label) { label_ = std::move(label); }

  // Applies the step to both; checks the writer's result against the model's.
  // An event the writer refuses for want of an arena chunk is applied to
  // neither (the model only takes its clock), and only with no chunk free.
  Outcome run(const Step& s) {
    ++steps_;
    const ApplyResult got = write_step(*writer_, spec_, source_map_, s);
    if (got == ApplyResult::kArenaFull) {
      ref_.advance(s.event.apply_ns);
      ++outcomes_["arena_full"];
      remember(describe(s) + " -> arena_full");
      // It needs at most one chunk per long ring it feeds.
      uint64_t could_need = 0;
      for (const layout::AggregatePlan::Group& g : layout::plan_aggregates(spec_).groups) {
        bool fed = g.source.empty();
        for (const Ref::SourceInput& in : s.event.sources) fed |= ref_.sources()[in.source] == g.source;
        could_need += g.sparse() && fed;
      }
      const WriterStats st = writer_->stats(0);
      if (st.arena_chunks - st.arena_used >= could_need) {
        fail("step " + std::to_string(steps_) + " (" + describe(s) + ") refused for want of an arena chunk, but " +
             std::to_string(st.arena_chunks - st.arena_used) + " of " + std::to_string(st.arena_chunks) +
             " are free and it feeds " + std::to_string(could_need) + " long rings\n" + history());
      }
      return Outcome::kStale;  // nothing applied
    }
    const Outcome want = model_step(ref_, s);
    ++outcomes_[std::string(Ref::outcome_name(want)) + "->" + apply_result_name(got)];
    remember(describe(s) + " -> " + apply_result_name(got) + " (model " + Ref::outcome_name(want) + ", clock base" +
             signed_ms(ref_.clock_ms() - kBaseMs) + ")");
    if (!compatible(want, got)) {
      fail("result of step " + std::to_string(steps_) + " (" + describe(s) + "): got " + apply_result_name(got) +
           ", model " + Ref::outcome_name(want) + "\n" + history());
    }
    return want;
  }
  ApplyResult write(const Step& s) {
    const ApplyResult got = write_step(*writer_, spec_, source_map_, s);
    remember(describe(s) + " -> " + apply_result_name(got) + " (writer only)");
    return got;
  }
  void remember(std::string what) {
    history_.push_back(std::to_string(steps_) + ": " + std::move(what));
    if (history_.size() > 30) history_.erase(history_.begin());
  }
  std::string history() const {
    std::string out = "  last steps:\n";
    for (const std::string& h : history_) out += "    " + h + "\n";
    return out;
  }

  enum class Part { kAll, kPlain, kAggregates };
  // Compares the row of `key` (`part` of its fields) with `model`; returns ""
  // or the first mismatch.
  std::string compare_key(const Ref& model, const std::string& key, Part part = Part::kAll) {
    const Ref::Row want = model.read(key);
    const ReadResult r = table_.get(key, row_);
    if (!want.found)
      return r.status == Status::kNotFound ? "" : std::string("row: got ") + status_name(r.status) + ", want not-found";
    if (r.status != Status::kOk) return std::string("row: got ") + status_name(r.status) + ", want ok";
    for (size_t f = 0; f < fields_.size(); ++f) {
      const bool plain = f < spec_.fields.size();
      if ((part == Part::kPlain && !plain) || (part == Part::kAggregates && plain)) continue;
      ++comparisons_;
      const bool is_int = fields_[f].type == FieldType::kInt64;
      std::string why;
      if (fields_[f].type == FieldType::kFloat32Vector) {  // last_n
        const std::span<const float> got = row_.vector(fields_[f]);
        if (!Ref::matches_vector(want.fields[f], row_.valid(fields_[f]), got.data(), got.size(), &why)) {
          return ref_.field_name(f) + ": " + why;
        }
        continue;
      }
      if (!Ref::matches(want.fields[f], row_.valid(fields_[f]), is_int ? row_.i64(fields_[f]) : 0,
                        is_int ? 0 : row_.f64(fields_[f]), &why)) {
        return ref_.field_name(f) + ": " + why;
      }
      if (!is_int)
        max_error_ratio_ = std::max(max_error_ratio_, Ref::error_ratio(want.fields[f], row_.f64(fields_[f])));
    }
    return "";
  }

  // Brings the writer to the model's clock (unless told not to) and compares
  // every key. Returns the keys that differ.
  int check(bool refresh_first = true) {
    if (refresh_first && ref_.clock_ms() > 0) writer_->refresh(ns(ref_.clock_ms()));  // 0 would read the wall clock
    int bad = 0;
    for (const std::string& key : keys_) {
      const std::string why = compare_key(ref_, key);
      if (!why.empty()) {
        ++bad;
        std::string what = "key " + key + " at T=base" + signed_ms(ref_.clock_ms() - kBaseMs) + " after step " +
                           std::to_string(steps_) + ": " + why;
        if (mismatches_ == 0) what += "\n" + ref_.dump(key, kBaseMs) + history();
        fail(what);
      }
    }
    return bad;
  }

  void fail(const std::string& what) {
    ++mismatches_;
    if (mismatches_ <= 12) {
      ADD_FAILURE() << "[" << label_ << " seed=" << seed_ << "] " << what;
    }
  }

  // Typed reads for the hand-written expectations.
  Status status(const std::string& key) { return table_.get(key, row_).status; }
  int64_t i64(const std::string& key, const std::string& field) {
    EXPECT_EQ(table_.get(key, row_).status, Status::kOk) << key;
    return row_.i64(table_.field(field, FieldType::kInt64));
  }
  double f64(const std::string& key, const std::string& field, bool* valid = nullptr) {
    EXPECT_EQ(table_.get(key, row_).status, Status::kOk) << key;
    const Field f = table_.field(field, FieldType::kFloat64);
    if (valid != nullptr) *valid = row_.valid(f);
    return row_.f64(f);
  }

  static std::string signed_ms(int64_t ms) { return (ms >= 0 ? "+" : "") + std::to_string(ms) + "ms"; }

 private:
  ScratchSegment seg_;
  TableSpec spec_;
  layout::Schema schema_;
  Ref ref_;
  std::string label_;
  uint64_t seed_;
  std::vector<std::string> keys_;
  std::unique_ptr<Writer> writer_;
  Segment segment_;
  Table table_;
  Row row_;
  std::vector<Field> fields_;
  std::vector<uint32_t> source_map_;
  uint64_t comparisons_ = 0;
  uint64_t mismatches_ = 0;
  uint64_t steps_ = 0;
  double max_error_ratio_ = 0;
  std::map<std::string, uint64_t> outcomes_;
  std::vector<std::string> history_;
};

// ---------------------------------------------------------------------------
// Random streams.

struct GeneratorOptions {
  bool ids_always = false;  // every apply carries an id (crash replay needs them)
  bool upserts = true;
  bool removes = true;
};

// Draws steps from the model's current state: the caller applies each step
// to the model (and the writer) and then calls record(). Duplicates are
// redeliveries of folded events of the key since its last delete, within the
// lateness (hence the dedup horizon); ids are never reused across a delete.
// After a delete, events of the revived key are no older than the delete.
class StreamGenerator {
 public:
  StreamGenerator(const Ref& ref, std::vector<std::string> keys, uint64_t seed, GeneratorOptions options = {})
      : ref_(ref), keys_(std::move(keys)), rng_(seed), options_(options) {
    amount_ = ref_.source_index("amount");
    latency_ = ref_.source_index("latency");
    item_ = ref_.source_index("item");
  }

  Step next() {
    ++n_;
    const int64_t c = std::max(ref_.clock_ms(), kBaseMs);
    const double u = unit();
    if (u < 0.10) return refresh_step(c);
    if (u < 0.18) {
      if (std::optional<Step> s = redelivery(c)) return *s;
      return apply_step(c);
    }
    if (options_.removes && u < 0.195) return remove_step(c);
    if (options_.upserts && u < 0.25) return upsert_step(c);
    return apply_step(c);
  }

  void record(const Step& s, Outcome outcome, bool folded) {
    const std::string& key = s.event.key;
    if (s.kind == Step::Kind::kRemove && outcome == Outcome::kApplied) {
      ++epoch_[key];
      floor_[key] = s.event.te;
    }
    if (s.kind == Step::Kind::kApply && !s.redelivery && s.event.id != 0 && folded &&
        (outcome == Outcome::kApplied || outcome == Outcome::kFoldedFieldsStale)) {
      redeliverable_.push_back({s, epoch_[key]});
      if (redeliverable_.size() > 64) redeliverable_.erase(redeliverable_.begin());
    }
    if (s.kind == Step::Kind::kApply || s.kind == Step::Kind::kUpsert) {
      auto& tes = recent_te_[key];
      tes.push_back(s.event.te);
      if (tes.size() > 8) tes.erase(tes.begin());
    }
  }

  // Redeliveries still possible at the current clock.
  std::vector<Step> redeliverable() const {
    std::vector<Step> out;
    for (const auto& [s, epoch] : redeliverable_) {
      auto it = epoch_.find(s.event.key);
      if (epoch == (it == epoch_.end() ? 0 : it->second) && !ref_.would_be_late(s.event.te, ns(ref_.clock_ms())))
        out.push_back(s);
    }
    return out;
  }

 private:
  double unit() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng_); }
  int64_t range(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng_); }

  const std::string& pick_key() {
    // Skewed: the first key gets a third of the traffic.
    if (unit() < 0.34) return keys_[0];
    return keys_[static_cast<size_t>(range(0, static_cast<int64_t>(keys_.size()) - 1))];
  }

  int64_t next_apply_ms(int64_t c) {
    const double u = unit();
    if (u < 0.30) return c;
    if (u < 0.85) return c + range(1, 30);
    if (u < 0.955) return c + range(30, 300);
    if (u < 0.996) return c - range(1, 2000);          // a wall clock behind the writer's clock
    if (u < 0.9992) return c + range(11'000, 40'000);  // silence longer than every window
    return c + range(3'600'000, 3 * 86'400'000);       // hours to days
  }
  int64_t apply_ns(int64_t ms) { return ns(ms) + (unit() < 0.3 ? range(0, kNsPerMs - 1) : 0); }

  int64_t pick_te(const std::string& key, int64_t cn) {
    const int64_t lateness = ref_.lateness_ms();
    const auto& groups = ref_.groups();
    const Ref::Group& g = groups[static_cast<size_t>(range(0, static_cast<int64_t>(groups.size()) - 1))];
    const int64_t row_time = ref_.row_time(key);
    const Ref::KeyState state = ref_.key_state(key);
    const double u = unit();
    int64_t te;
    if (u < 0.52) {
      te = cn - range(0, 1500);
    } else if (u < 0.67) {
      te = cn - range(1500, lateness + 2000);  // out of order; some late
    } else if (u < 0.72) {
      te = cn - lateness + range(0, 1);  // exactly late, or one ms inside
    } else if (u < 0.77) {
      te = cn + range(1, 3000);  // a producer clock ahead of the writer's
    } else if (u < 0.85) {
      te = (testing::floor_div(cn, g.r) - range(0, g.ring)) * g.r - range(0, 1);  // on a bucket edge
    } else if (u < 0.90) {
      te = (testing::floor_div(cn, g.r) - g.ring) * g.r + range(-g.r, 2 * g.r);  // at the ring's edge
    } else if (u < 0.95 && state == Ref::KeyState::kLive) {
      te = row_time;  // a tie with the row
    } else if (!recent_te_[key].empty()) {
      const auto& tes = recent_te_[key];
      te = tes[static_cast<size_t>(range(0, static_cast<int64_t>(tes.size()) - 1))];  // a tie for `last`
    } else {
      te = cn - range(0, 500);
    }
    if (state == Ref::KeyState::kTombstone) {
      if (unit() < 0.6) te = std::max(te, row_time);  // else maybe older than the delete: stale
    } else if (auto it = floor_.find(key); it != floor_.end()) {
      te = std::max(te, it->second);
    }
    return te;
  }

  double value(double lo, double hi, std::vector<double>& recent) {
    const double u = unit();
    double v;
    if (u < 0.6 || recent.empty()) {
      v = lo + static_cast<double>(range(0, static_cast<int64_t>((hi - lo) * 8))) / 8;
    } else if (u < 0.85) {
      v = lo + unit() * (hi - lo);
    } else {
      v = recent[static_cast<size_t>(range(0, static_cast<int64_t>(recent.size()) - 1))];  // ties for min/max
    }
    recent.push_back(v);
    if (recent.size() > 16) recent.erase(recent.begin());
    return v;
  }

  uint64_t pick_id(const std::string& key) {
    if (!options_.ids_always && unit() < 0.15) return 0;
    std::string text = "e" + std::to_string(n_);
    if (unit() < 0.05 && !id_texts_.empty()) {
      // The id of another key's event: a different event here.
      const auto& [other, t] = id_texts_[static_cast<size_t>(range(0, static_cast<int64_t>(id_texts_.size()) - 1))];
      if (other != key && used_.count({key, t}) == 0) text = t;
    }
    used_.insert({key, text});
    id_texts_.push_back({key, text});
    if (id_texts_.size() > 64) id_texts_.erase(id_texts_.begin());
    return event_id_hash(text);
  }

  Step apply_step(int64_t c) {
    Step s;
    s.kind = Step::Kind::kApply;
    Ref::Event& e = s.event;
    e.key = pick_key();
    const int64_t a = next_apply_ms(c);
    e.apply_ns = apply_ns(a);
    e.te = pick_te(e.key, std::max(c, a));
    bool amount = unit() < 0.75, latency = unit() < 0.55;
    if (!amount && !latency && !ref_.has_sourceless_group()) amount = true;
    if (amount) {
      const double v = value(-100, 1000, recent_amounts_);
      e.sources.push_back({static_cast<uint32_t>(amount_), v});
      if (unit() < 0.8) e.fields.push_back({0, 0, v});
    }
    if (latency) e.sources.push_back({static_cast<uint32_t>(latency_), value(0, 500, recent_latencies_)});
    // Items: at most 30 values per key, so their distinct_counts stay exact.
    if (item_ >= 0 && unit() < 0.6)
      e.sources.push_back({static_cast<uint32_t>(item_), static_cast<double>(range(0, 29))});
    if (unit() < 0.5) e.fields.push_back({1, static_cast<int64_t>(n_), 0});
    e.id = pick_id(e.key);
    return s;
  }

  Step upsert_step(int64_t c) {
    Step s;
    s.kind = Step::Kind::kUpsert;
    s.event.key = pick_key();
    const int64_t a = next_apply_ms(c);
    s.event.apply_ns = apply_ns(a);
    s.event.te = pick_te(s.event.key, std::max(c, a));
    s.event.fields.push_back({1, static_cast<int64_t>(n_), 0});
    if (unit() < 0.5) s.event.fields.push_back({0, 0, value(-100, 1000, recent_amounts_)});
    return s;
  }

  Step remove_step(int64_t c) {
    Step s;
    s.kind = Step::Kind::kRemove;
    s.event.key = pick_key();
    s.event.apply_ns = apply_ns(c + range(0, 100));
    const int64_t row_time = ref_.row_time(s.event.key);
    if (row_time == Ref::kNone) {
      s.event.te = c - range(0, 1000);
    } else if (unit() < 0.2) {
      s.event.te = row_time - range(1, 1000);  // older than the row: stale
    } else {
      s.event.te = row_time + range(0, 500);
    }
    return s;
  }

  Step refresh_step(int64_t c) {
    Step s;
    s.kind = Step::Kind::kRefresh;
    const auto& groups = ref_.groups();
    const Ref::Group& g = groups[static_cast<size_t>(range(0, static_cast<int64_t>(groups.size()) - 1))];
    const double u = unit();
    int64_t t;
    if (u < 0.15) {
      t = c;
    } else if (u < 0.50) {
      t = c + range(1, 300);
    } else if (u < 0.80) {
      t = (testing::floor_div(c, g.r) + range(1, 3)) * g.r - range(0, 1);  // on or just before a bucket edge
    } else if (u < 0.97) {
      t = c + range(300, 3000);
    } else if (u < 0.995) {
      t = c + range(11'000, 40'000);
    } else {
      t = c + range(3'600'000, 86'400'000);
    }
    s.event.apply_ns = apply_ns(t);
    return s;
  }

  std::optional<Step> redelivery(int64_t c) {
    for (int tries = 0; tries < 4 && !redeliverable_.empty(); ++tries) {
      const size_t i = static_cast<size_t>(range(0, static_cast<int64_t>(redeliverable_.size()) - 1));
      const auto& [original, epoch] = redeliverable_[i];
      Step s = original;
      s.redelivery = true;
      s.event.apply_ns = apply_ns(c + range(0, 200));
      if (epoch != epoch_[s.event.key] || ref_.would_be_late(s.event.te, s.event.apply_ns + kNsPerMs)) {
        redeliverable_.erase(redeliverable_.begin() + static_cast<std::ptrdiff_t>(i));
        continue;
      }
      return s;
    }
    return std::nullopt;
  }

  const Ref& ref_;
  std::vector<std::string> keys_;
  std::mt19937_64 rng_;
  GeneratorOptions options_;
  int amount_ = -1, latency_ = -1, item_ = -1;
  uint64_t n_ = 0;
  std::map<std::string, uint64_t> epoch_;
  std::map<std::string, int64_t> floor_;
  std::map<std::string, std::vector<int64_t>> recent_te_;
  std::vector<std::pair<Step, uint64_t>> redeliverable_;
  std::vector<double> recent_amounts_, recent_latencies_;
  std::set<std::pair<std::string, std::string>> used_;
  std::vector<std::pair<std::string, std::string>> id_texts_;
};

std::vector<std::string> stream_keys() { return {"user:0", "user:1", "user:2", "a-much-longer-key:3", "user:4"}; }

void print_outcomes(const Harness& h) {
  std::string line;
  for (const auto& [k, n] : h.outcomes()) line += " " + k + "=" + std::to_string(n);
  std::printf("  results (model->writer):%s\n", line.c_str());
}

// ---------------------------------------------------------------------------
// 1. Seeded property test.

void run_property(const TableSpec& spec, const char* label, uint64_t seed, int steps,
                  const std::vector<std::string>& keys = stream_keys()) {
  const auto start = std::chrono::steady_clock::now();
  Harness h(spec, label, seed, keys);
  StreamGenerator gen(h.ref(), keys, seed);
  std::mt19937_64 read_rng(seed ^ 0x9e3779b97f4a7c15ULL);
  uint64_t checks = 0;
  for (int i = 0; i < steps && h.mismatches() == 0; ++i) {
    const Step s = gen.next();
    const Outcome o = h.run(s);
    gen.record(s, o, h.ref().last_folded());
    if (s.kind == Step::Kind::kRefresh || read_rng() % 2 == 0) {
      h.check();
      ++checks;
    }
  }
  if (h.mismatches() == 0) h.check();
  const WriterStats st = h.writer().stats(0);
  EXPECT_EQ(st.duplicates, h.ref().duplicates()) << label << " seed " << seed;
  EXPECT_EQ(st.dedup_evictions, 0u) << label << " seed " << seed;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "%s: %llu steps, %llu checks, %llu field comparisons, %llu mismatches (largest error %.2g of the tolerance), "
      "%.2f s; writer: %llu events, %llu late, %llu duplicates, %llu refreshes; arena: %llu chunks, peak %llu "
      "held, %llu held at the end, %llu refused\n",
      label, static_cast<unsigned long long>(h.steps()), static_cast<unsigned long long>(checks),
      static_cast<unsigned long long>(h.comparisons()), static_cast<unsigned long long>(h.mismatches()),
      h.max_error_ratio(), secs, static_cast<unsigned long long>(st.aggregate_events),
      static_cast<unsigned long long>(st.late_dropped), static_cast<unsigned long long>(st.duplicates),
      static_cast<unsigned long long>(st.refreshes), static_cast<unsigned long long>(st.arena_chunks),
      static_cast<unsigned long long>(st.arena_peak_used), static_cast<unsigned long long>(st.arena_used),
      static_cast<unsigned long long>(st.arena_refused));
  print_outcomes(h);
  EXPECT_EQ(h.mismatches(), 0u) << label << ": replay with --seed=" << seed;
  EXPECT_GT(h.comparisons(), 10'000u);
  // The streams keep more than kInlineBuckets buckets of some keys' long
  // rings: rings were promoted (and, with every key deleted in the end,
  // every chunk came back).
  if (st.arena_chunks > 0) {
    EXPECT_GT(st.arena_peak_used, 0u) << label;
  }
  for (const std::string& key : keys) {
    Step del;
    del.kind = Step::Kind::kRemove;
    del.event.key = key;
    del.event.te = h.ref().clock_ms() + 3'600'000;  // newer than any row
    del.event.apply_ns = ns(h.ref().clock_ms());
    h.run(del);
  }
  EXPECT_EQ(h.writer().stats(0).arena_used, 0u) << label << ": chunks held after every key was deleted";
}

// Each stream's own seed is derived from the test's (printed) seed.
TEST(AggregateProperty, RandomStreamsMatchTheReference) {
  const uint64_t seed = seed_for("AggregateProperty");
  run_property(wide_table(), "wide", seed, 40'000);
  run_property(tight_table(), "tight", seed + 1, 40'000);
  // Many keys in a small table: probe chains and tombstones next to each other.
  std::vector<std::string> many;
  for (int i = 0; i < 44; ++i) many.push_back("k" + std::to_string(i * 7919));
  TableSpec crowded = wide_table();
  crowded.capacity = 48;
  run_property(crowded, "crowded", seed + 2, 10'000, many);
}

// Count windows and sequences: late events inserted in order, events older
// than a full store dropped, deletes, ties, redeliveries.
TEST(AggregateProperty, CountWindowsAndSequencesMatchTheReference) {
  const uint64_t seed = seed_for("AggregatePropertyEvents");
  run_property(events_table(), "events", seed, 40'000);
}

// An arena of 2 chunks for 5 keys and 4 long rings: keys are promoted and
// demoted all the time, events are refused when no chunk is free (the
// model skips exactly those), and every accepted event stays exact.
TEST(AggregateProperty, SmallArenaPromotesDemotesAndRefusesExactly) {
  const uint64_t seed = seed_for("AggregateArena");
  TableSpec wide = wide_table();
  wide.arena_chunks = 2;
  run_property(wide, "wide-arena2", seed, 20'000);
  TableSpec tight = tight_table();
  tight.arena_chunks = 1;
  run_property(tight, "tight-arena1", seed + 1, 20'000);
}

// ---------------------------------------------------------------------------
// Hand-computed cases: the same model, and explicit numbers.

Step event(std::string key, int64_t te, int64_t at_ms, std::vector<Ref::SourceInput> sources, std::string id = "",
           std::vector<Ref::FieldWrite> fields = {}) {
  Step s;
  s.kind = Step::Kind::kApply;
  s.event.key = std::move(key);
  s.event.te = te;
  s.event.apply_ns = ns(at_ms);
  s.event.sources = std::move(sources);
  s.event.fields = std::move(fields);
  s.event.id = id.empty() ? 0 : event_id_hash(id);
  return s;
}
Step refresh_at(int64_t ms) {
  Step s;
  s.kind = Step::Kind::kRefresh;
  s.event.apply_ns = ns(ms);
  return s;
}
Step remove_at(std::string key, int64_t te, int64_t at_ms) {
  Step s;
  s.kind = Step::Kind::kRemove;
  s.event.key = std::move(key);
  s.event.te = te;
  s.event.apply_ns = ns(at_ms);
  return s;
}

TableSpec small_table() {
  TableSpec t;
  t.name = "small";
  t.capacity = 16;
  t.fields = {{"note", FieldType::kInt64, 1}};
  t.aggregates = {
      agg("events_10s", "", AggregateFn::kCount, 10'000, 1000),
      agg("x_sum_10s", "x", AggregateFn::kSum, 10'000, 1000),
      agg("x_last_10s", "x", AggregateFn::kLast, 10'000, 1000),
      agg("x_sum_3s_latest", "x", AggregateFn::kSum, 3000, 1000, WindowEnd::kLatestEvent),
  };
  return t;
}

TEST(AggregateSemantics, FutureEventsCountInTheCurrentBucket) {
  Harness h(small_table(), "future", 0, {"k"});
  const int64_t b = kBaseMs;
  // Applied at b + 500 with an event time 5 s ahead: bucket b/1000, not (b + 5000)/1000.
  h.run(event("k", b + 5000, b + 500, {{0, 7}}, "f1"));
  h.run(refresh_at(b + 9999));
  EXPECT_EQ(h.check(), 0);
  EXPECT_EQ(h.i64("k", "events_10s"), 1);
  EXPECT_EQ(h.f64("k", "x_last_10s"), 7);
  h.run(refresh_at(b + 10'000));
  EXPECT_EQ(h.check(), 0);
  EXPECT_EQ(h.i64("k", "events_10s"), 0);
  bool valid = true;
  EXPECT_TRUE(std::isnan(h.f64("k", "x_last_10s", &valid)));
  EXPECT_FALSE(valid);
  EXPECT_EQ(h.f64("k", "x_sum_3s_latest"), 7);  // latest_event: no decay
}

TEST(AggregateSemantics, LatenessBoundary) {
  Harness h(small_table(), "lateness", 0, {"k"});
  const int64_t b = kBaseMs;
  h.run(event("k", b + 20'000, b + 20'000, {{0, 1}}, "l0"));
  // Lateness 10 s (the longest window): te <= C - 10 s is dropped (run()
  // also checks that the writer returned kLate).
  EXPECT_EQ(h.run(event("k", b + 10'000, b + 20'000, {{0, 2}}, "l1")), Outcome::kLate);
  EXPECT_EQ(h.run(event("k", b + 9000, b + 20'000, {{0, 4}}, "l2")), Outcome::kLate);
  // 9 s old: bucket b/1000 + 11, inside the ring (b/1000 + 10, b/1000 + 20].
  h.run(event("k", b + 11'000, b + 20'000, {{0, 8}}, "l3"));
  EXPECT_EQ(h.check(), 0);
  EXPECT_EQ(h.i64("k", "events_10s"), 2);
  EXPECT_EQ(h.f64("k", "x_sum_10s"), 9);
  EXPECT_EQ(h.f64("k", "x_last_10s"), 1);  // the newest event time wins, not the last applied
  EXPECT_GE(h.writer().stats(0).late_dropped, 2u);
}

TEST(AggregateSemantics, DedupIsPerKeyAndCountsDuplicates) {
  Harness h(small_table(), "dedup", 0, {"a", "b"});
  const int64_t b = kBaseMs;
  EXPECT_EQ(h.run(event("a", b, b, {{0, 1}}, "same")), Outcome::kApplied);
  EXPECT_EQ(h.run(event("b", b, b, {{0, 2}}, "same")), Outcome::kApplied);  // another key: another event
  EXPECT_EQ(h.run(event("a", b, b + 10, {{0, 1}}, "same")), Outcome::kDuplicate);
  EXPECT_EQ(h.run(event("a", b + 1, b + 20, {{0, 3}})), Outcome::kApplied);  // no id: counted every time
  EXPECT_EQ(h.run(event("a", b + 1, b + 30, {{0, 3}})), Outcome::kApplied);
  EXPECT_EQ(h.check(), 0);
  EXPECT_EQ(h.i64("a", "events_10s"), 3);
  EXPECT_EQ(h.f64("a", "x_sum_10s"), 7);
  EXPECT_EQ(h.i64("b", "events_10s"), 1);
  EXPECT_EQ(h.writer().stats(0).duplicates, 1u);
}

TEST(AggregateSemantics, LatestEventWindowEndsAtTheNewestBucket) {
  Harness h(small_table(), "latest", 0, {"k"});
  const int64_t b = kBaseMs;
  h.run(event("k", b + 100, b + 100, {{0, 1}}, "a"));
  h.run(event("k", b + 1500, b + 1500, {{0, 2}}, "b"));
  h.run(refresh_at(b + 3'600'000));
  EXPECT_EQ(h.check(), 0);
  EXPECT_EQ(h.f64("k", "x_sum_3s_latest"), 3);  // an hour later: unchanged
  EXPECT_EQ(h.f64("k", "x_sum_10s"), 0);
  const int64_t t = b + 3'600'000;
  h.run(event("k", t, t, {{0, 4}}, "c"));
  h.run(event("k", t - 2500, t, {{0, 8}}, "d"));   // bucket H - 3: outside (H - 3, H]
  h.run(event("k", t - 1500, t, {{0, 16}}, "e"));  // bucket H - 2: inside
  EXPECT_EQ(h.check(), 0);
  EXPECT_EQ(h.f64("k", "x_sum_3s_latest"), 20);
  EXPECT_EQ(h.f64("k", "x_sum_10s"), 28);
}

TEST(AggregateSemantics, DeleteForgetsAggregates) {
  Harness h(small_table(), "delete", 0, {"k"});
  const int64_t b = kBaseMs;
  h.run(event("k", b, b, {{0, 1}}, "a"));
  h.run(event("k", b + 10, b + 10, {{0, 2}}, "b"));
  EXPECT_EQ(h.run(remove_at("k", b + 20, b + 30)), Outcome::kApplied);
  EXPECT_EQ(h.status("k"), Status::kNotFound);
  EXPECT_EQ(h.run(event("k", b + 15, b + 40, {{0, 4}}, "c")), Outcome::kStale);  // older than the delete
  EXPECT_EQ(h.run(event("k", b + 25, b + 50, {{0, 8}}, "d")), Outcome::kApplied);
  EXPECT_EQ(h.check(), 0);
  EXPECT_EQ(h.i64("k", "events_10s"), 1);
  EXPECT_EQ(h.f64("k", "x_sum_10s"), 8);
  EXPECT_EQ(h.f64("k", "x_sum_3s_latest"), 8);
}

TEST(AggregateSemantics, ClockIsWriterWide) {
  // Two tables, one clock: an apply to one table moves the clock of both.
  ScratchSegment seg;
  layout::Schema schema;
  TableSpec a = small_table();
  a.name = "a";
  TableSpec b = small_table();
  b.name = "b";
  schema.tables = {a, b};
  WriterOptions o = seg.writer_options();
  o.tombstone_retention_ms = kLongRetentionMs;
  auto w = Writer::open(seg.name(), schema, o);
  const SourceValue x[] = {{static_cast<uint32_t>(w->source_index(1, "x")), 1}};
  EXPECT_EQ(w->apply(0, "k", kBaseMs + 100'000, {}, x, 0, ns(kBaseMs + 100'000)), ApplyResult::kApplied);
  // 10 s behind the clock that table "a" moved: late in table "b" too.
  EXPECT_EQ(w->apply(1, "k", kBaseMs + 90'000, {}, x, 0, ns(kBaseMs + 50'000)), ApplyResult::kLate);
}

// The documented limits of the dedup set: a full bucket forgets its oldest id
// early and counts it (dedup_evictions); ids past the horizon make room
// without counting. dedup_capacity 8: one bucket of 8 ways.
TEST(AggregateSemantics, DedupCapacityAndHorizon) {
  TableSpec t = small_table();
  t.dedup_capacity = 8;
  Harness h(t, "dedup-capacity", 0, {"k"});
  const int64_t b = kBaseMs;
  for (int i = 0; i < 8; ++i) h.run(event("k", b + i, b + i, {{0, 1}}, "old" + std::to_string(i)));
  // The clock passes the horizon (10 s, the lateness) of all eight.
  h.run(refresh_at(b + 20'000));
  const int64_t c = b + 20'000;
  for (int i = 0; i < 12; ++i) h.write(event("k", c + i, c + i, {{0, 1}}, "new" + std::to_string(i)));
  EXPECT_EQ(h.writer().stats(0).dedup_evictions, 4u) << "12 ids in the horizon, 8 ways";
  // The newest eight are remembered.
  for (int i = 4; i < 12; ++i) {
    EXPECT_EQ(h.write(event("k", c + i, c + 20, {{0, 1}}, "new" + std::to_string(i))), ApplyResult::kDuplicate) << i;
  }
  // An evicted id is not (the documented limit): its redelivery counts again.
  EXPECT_EQ(h.write(event("k", c, c + 20, {{0, 1}}, "new0")), ApplyResult::kApplied);
  EXPECT_EQ(h.i64("k", "events_10s"), 13);
}

// A delete moves the aggregate clock like every other call: the clock is the
// largest apply_unix_ns the writer has been given (writer.h).
TEST(AggregateSemantics, RemoveMovesTheClock) {
  Harness h(small_table(), "remove-clock", 0, {"k"});
  const int64_t b = kBaseMs;
  h.run(event("k", b, b, {{0, 1}}, "a"));
  EXPECT_EQ(h.write(remove_at("other", b, b + 20'000)), ApplyResult::kApplied);  // the clock: b + 20 s
  // The lateness (10 s) behind that clock: late, whatever this call's own time.
  EXPECT_EQ(h.write(event("k", b + 10'000, b + 1, {{0, 2}}, "b")), ApplyResult::kLate)
      << "remove() did not move the aggregate clock";
}

// `last` is the value of the event with the newest event time in the window
// (docs/aggregates.md), where an event stamped ahead of the writer's clock
// counts as of the clock: in the current bucket, and for `last` at the
// clock's time.
TEST(AggregateSemantics, LastOfAnEventStampedAhead) {
  Harness h(small_table(), "last-ahead", 0, {"k"});
  const int64_t b = kBaseMs;
  h.run(event("k", b + 5000, b + 500, {{0, 7}}, "ahead"));    // counts in bucket b/1000
  h.run(event("k", b + 1200, b + 1200, {{0, 9}}, "behind"));  // an older event time, applied later
  EXPECT_EQ(h.f64("k", "x_last_10s"), 9);                     // "ahead" counts as of b + 500
  EXPECT_EQ(h.check(), 0);
}

// The sum of squares is kept about a shift, first the key's first value; a
// key whose level moves far from it (1e9 + {0..4} after a 0) would meet the
// textbook formula's cancellation and read variance 0, not 2, unless the
// writer re-centres the shift on the window's mean.
TEST(AggregateSemantics, VarianceFarFromTheFirstValue) {
  TableSpec t = small_table();
  t.aggregates.push_back(agg("x_var_10s", "x", AggregateFn::kVariance, 10'000, 1000));
  Harness h(t, "precision", 0, {"k"});
  const int64_t b = kBaseMs;
  h.run(event("k", b, b, {{0, 0.0}}));
  for (int i = 1; i <= 40; ++i) h.run(event("k", b + i * 1000, b + i * 1000, {{0, 1e9 + i % 5}}));
  h.run(refresh_at(b + 40'000));
  EXPECT_NEAR(h.f64("k", "x_var_10s"), 2.0, 1e-6);  // the window holds 1e9 + {1, 2, 3, 4, 0} twice
}

// ---------------------------------------------------------------------------
// 2. Decay: no new events, only the clock.

// Count windows by hand: the numbers pandas gives for
// pd.Series([1, 2, 3, 4, 5]).rolling(3) and what a late, a too old and a
// deleted event do to them.
TEST(CountWindows, HandComputedValuesLateEventsAndDeletes) {
  TableSpec t;
  t.name = "roll";
  t.capacity = 16;
  t.fields = {{"note", FieldType::kInt64, 1}};
  t.aggregates = {
      events_agg("sum3", "x", AggregateFn::kSum, 3),
      events_agg("mean3", "x", AggregateFn::kMean, 3),
      events_agg("var3", "x", AggregateFn::kVariance, 3, 0, 1),
      events_agg("var3_pop", "x", AggregateFn::kVariance, 3),
      events_agg("std3", "x", AggregateFn::kStddev, 3, 0, 1),
      events_agg("min3", "x", AggregateFn::kMin, 3),
      events_agg("max3", "x", AggregateFn::kMax, 3),
      events_agg("first3", "x", AggregateFn::kFirst, 3),
      events_agg("last3", "x", AggregateFn::kLast, 3),
      events_agg("count3", "x", AggregateFn::kCount, 3, 1),
      events_agg("seq4", "x", AggregateFn::kLastN, 4),
  };
  Harness h(t, "count-windows", 0, {"k"});
  const int64_t b = kBaseMs;
  for (int i = 1; i <= 2; ++i) h.run(event("k", b + i * 1000, b + 10'000, {{0, static_cast<double>(i)}}));
  bool valid = true;
  h.f64("k", "sum3", &valid);
  EXPECT_FALSE(valid) << "2 events, min_periods 3: NaN in pandas";
  EXPECT_EQ(h.i64("k", "count3"), 2);  // min_periods 1
  for (int i = 3; i <= 5; ++i) h.run(event("k", b + i * 1000, b + 10'000, {{0, static_cast<double>(i)}}));
  EXPECT_EQ(h.f64("k", "sum3"), 12.0);
  EXPECT_EQ(h.f64("k", "mean3"), 4.0);
  EXPECT_EQ(h.f64("k", "var3"), 1.0);
  EXPECT_NEAR(h.f64("k", "var3_pop"), 2.0 / 3.0, 1e-15);
  EXPECT_EQ(h.f64("k", "std3"), 1.0);
  EXPECT_EQ(h.f64("k", "min3"), 3.0);
  EXPECT_EQ(h.f64("k", "max3"), 5.0);
  EXPECT_EQ(h.f64("k", "first3"), 3.0);
  EXPECT_EQ(h.f64("k", "last3"), 5.0);
  EXPECT_EQ(h.i64("k", "count3"), 3);
  EXPECT_EQ(h.check(), 0);  // seq4 = [5, 4, 3, 2]
  // Late, between 3 and 4: the window is now 10, 4, 5.
  h.run(event("k", b + 3500, b + 10'000, {{0, 10.0}}));
  EXPECT_EQ(h.f64("k", "sum3"), 19.0);
  EXPECT_EQ(h.f64("k", "first3"), 10.0);
  EXPECT_EQ(h.f64("k", "last3"), 5.0);
  // Older than the store's 4 newest (3, 10, 4, 5): in no window; counted late.
  const uint64_t late = h.writer().stats(0).late_dropped;
  h.run(event("k", b + 2500, b + 10'000, {{0, 100.0}}));
  EXPECT_EQ(h.writer().stats(0).late_dropped, late + 1);
  EXPECT_EQ(h.f64("k", "max3"), 10.0);
  EXPECT_EQ(h.check(), 0);
  // A delete forgets the events; one new event is below min_periods.
  h.run(remove_at("k", b + 6000, b + 10'000));
  h.run(event("k", b + 7000, b + 10'000, {{0, 7.0}}));
  h.f64("k", "mean3", &valid);
  EXPECT_FALSE(valid);
  EXPECT_EQ(h.i64("k", "count3"), 1);
  EXPECT_EQ(h.check(), 0);  // seq4 = [7, NaN, NaN, NaN]
}

// ddof 1 on a time window: one value has no sample variance.
TEST(CountWindows, SampleVarianceOfATimeWindow) {
  TableSpec t = small_table();
  t.aggregates.push_back(agg("x_var1_10s", "x", AggregateFn::kVariance, 10'000, 1000));
  t.aggregates.back().ddof = 1;
  Harness h(t, "ddof", 0, {"k"});
  const int64_t b = kBaseMs;
  h.run(event("k", b, b, {{0, 1.0}}));
  bool valid = true;
  h.f64("k", "x_var1_10s", &valid);
  EXPECT_FALSE(valid);
  h.run(event("k", b + 1000, b + 1000, {{0, 3.0}}));
  EXPECT_EQ(h.f64("k", "x_var1_10s", &valid), 2.0);
  EXPECT_TRUE(valid);
  EXPECT_EQ(h.check(), 0);
}

TableSpec decay_table() {
  TableSpec t;
  t.name = "decay";
  t.capacity = 64;
  t.fields = {{"note", FieldType::kInt64, 1}};
  t.aggregates = {
      agg("events_10s", "", AggregateFn::kCount, 10'000, 1000),
      agg("x_sum_10s", "x", AggregateFn::kSum, 10'000, 1000),
      agg("x_mean_10s", "x", AggregateFn::kMean, 10'000, 1000),
      agg("x_min_10s", "x", AggregateFn::kMin, 10'000, 1000),
      agg("x_max_10s", "x", AggregateFn::kMax, 10'000, 1000),
      agg("x_last_10s", "x", AggregateFn::kLast, 10'000, 1000),
      agg("x_var_10s", "x", AggregateFn::kVariance, 10'000, 1000),
      agg("x_std_10s", "x", AggregateFn::kStddev, 10'000, 1000),
      agg("x_sum_4s", "x", AggregateFn::kSum, 4000, 1000),
      agg("x_count_2s", "x", AggregateFn::kCount, 2000, 500),
      agg("x_mean_5s", "x", AggregateFn::kMean, 5000, 250),
      agg("x_sum_10s_latest", "x", AggregateFn::kSum, 10'000, 1000, WindowEnd::kLatestEvent),
      agg("x_last_3s_latest", "x", AggregateFn::kLast, 3000, 1000, WindowEnd::kLatestEvent),
  };
  return t;
}

TEST(AggregateDecay, ValuesFollowTheClockDownToEmpty) {
  Harness h(decay_table(), "decay", 0, {"k0", "k1", "k2"});
  for (int i = 0; i < 30; ++i) {
    const int64_t te = kBaseMs + i * 97;
    const double x = static_cast<double>((i * 37) % 23) - 5.5;
    h.run(event("k" + std::to_string(i % 3), te, te + 5, {{0, x}}, "d" + std::to_string(i)));
    ASSERT_EQ(h.check(), 0);
  }
  // Read times: every 100 ms and each bucket edge (250/500/1000 ms) and one
  // ms either side, until every now window is empty.
  const int64_t c = h.ref().clock_ms();
  std::set<int64_t> times;
  for (int64_t t = c; t <= kBaseMs + 15'000; t += 100) times.insert(t);
  for (int64_t e = kBaseMs; e <= kBaseMs + 15'000; e += 250) {
    for (int64_t d = -1; d <= 1; ++d) {
      if (e + d > c) times.insert(e + d);
    }
  }
  for (int64_t t : times) {
    h.run(refresh_at(t));
    ASSERT_EQ(h.check(false), 0) << "at base+" << t - kBaseMs << " ms (no refresh beyond the step's)";
  }
  for (const std::string k : {"k0", "k1", "k2"}) {
    EXPECT_EQ(h.i64(k, "events_10s"), 0) << k;
    EXPECT_EQ(h.f64(k, "x_sum_10s"), 0) << k;
    for (const char* f : {"x_mean_10s", "x_min_10s", "x_max_10s", "x_last_10s", "x_var_10s", "x_std_10s"}) {
      bool valid = true;
      EXPECT_TRUE(std::isnan(h.f64(k, f, &valid))) << k << " " << f;
      EXPECT_FALSE(valid) << k << " " << f;
    }
    bool valid = false;
    h.f64(k, "x_sum_10s_latest", &valid);
    EXPECT_TRUE(valid) << k << ": a latest_event window does not decay";
  }
  // Every now window is empty and was rewritten: nothing left to refresh.
  EXPECT_EQ(h.writer().refresh(ns(kBaseMs + 60'000)), 0u);
  EXPECT_EQ(h.writer().refresh(ns(kBaseMs + 86'400'000)), 0u);
}

TEST(AggregateDecay, BudgetedRefreshCatchesUp) {
  std::vector<std::string> keys;
  for (int i = 0; i < 40; ++i) keys.push_back("key:" + std::to_string(i));
  Harness h(decay_table(), "decay-budget", 0, keys);
  for (int i = 0; i < 40; ++i) {
    for (int j = 0; j < 3; ++j) {
      const int64_t te = kBaseMs + 37 * i + 400 * j;
      h.run(event(keys[i], te, kBaseMs + 1500, {{0, static_cast<double>(i + j)}}, "b" + std::to_string(i * 3 + j)));
    }
  }
  ASSERT_EQ(h.check(), 0);
  uint64_t rewritten = 0;
  for (int64_t t : {kBaseMs + 2000, kBaseMs + 4000, kBaseMs + 4999, kBaseMs + 10'000, kBaseMs + 10'500,
                    kBaseMs + 11'000, kBaseMs + 12'000}) {
    h.ref().refresh(ns(t));
    int calls = 0;
    for (uint64_t n; (n = h.writer().refresh(ns(t), 7)) > 0; ++calls) {
      ASSERT_LE(n, 7u);
      ASSERT_LT(calls, 100) << "refresh(budget 7) never finishes";
      rewritten += n;
    }
    ASSERT_EQ(h.check(false), 0) << "at base+" << t - kBaseMs;
  }
  std::printf("budgeted refresh: %llu key rewrites\n", static_cast<unsigned long long>(rewritten));
  EXPECT_GT(rewritten, 40u);
}

// ---------------------------------------------------------------------------
// 3. Restart: close and reopen warm.

// A reopened writer does not read the keys' due times when it opens (open
// visits no slot); refresh() gathers them a slice per call (4 slots per key
// of its budget) and refresh_due() stays true until it has. With a budget of
// 7 and a reopen before every step, every key still decays with the
// reference.
TEST(AggregateRestart, ReopenedWriterGathersDueTimesAsItRefreshes) {
  std::vector<std::string> keys;
  for (int i = 0; i < 40; ++i) keys.push_back("key:" + std::to_string(i));
  Harness h(decay_table(), "decay-reopen", 0, keys);
  for (int i = 0; i < 40; ++i) {
    for (int j = 0; j < 3; ++j) {
      const int64_t te = kBaseMs + 37 * i + 400 * j;
      h.run(event(keys[i], te, kBaseMs + 1500, {{0, static_cast<double>(i + j)}}, "r" + std::to_string(i * 3 + j)));
    }
  }
  ASSERT_EQ(h.check(), 0);
  uint64_t rewritten = 0;
  for (int64_t t : {kBaseMs + 2000, kBaseMs + 4000, kBaseMs + 4999, kBaseMs + 10'000, kBaseMs + 11'000}) {
    h.close_writer();
    h.open_writer();
    ASSERT_EQ(h.writer().attach_report().slots_visited, 0u);
    ASSERT_TRUE(h.writer().refresh_due()) << "the due times are not gathered yet";
    h.ref().refresh(ns(t));
    int calls = 0;
    while (h.writer().refresh_due()) {
      rewritten += h.writer().refresh(ns(t), 7);
      ASSERT_LT(++calls, 100) << "refresh(budget 7) never finishes";
    }
    ASSERT_GT(calls, 1) << "a budget of 7 covers 28 slots per call: the gathering takes several";
    ASSERT_EQ(h.check(false), 0) << "at base+" << t - kBaseMs;
  }
  EXPECT_GT(rewritten, 40u);
}

void warm_reopen(const TableSpec& spec, const char* label) {
  const uint64_t seed = seed_for(label);
  std::vector<std::string> keys = stream_keys();
  keys.push_back("probe");
  Harness h(spec, label, seed, keys);
  StreamGenerator gen(h.ref(), stream_keys(), seed);
  auto run_steps = [&](int n) {
    for (int i = 0; i < n && h.mismatches() == 0; ++i) {
      const Step s = gen.next();
      const Outcome o = h.run(s);
      gen.record(s, o, h.ref().last_folded());
      h.check();
    }
  };
  run_steps(600);
  const int64_t c = h.ref().clock_ms();
  const Step probe1 = event("probe", c, c, {{0, 5}}, "probe-1");
  h.run(probe1);
  ASSERT_EQ(h.check(), 0);
  const uint64_t duplicates_before = h.writer().stats(0).duplicates;

  h.close_writer();
  h.open_writer();
  EXPECT_FALSE(h.writer().created());
  EXPECT_EQ(h.writer().repaired_slots(), 0u);
  EXPECT_EQ(h.writer().stats(0).duplicates, duplicates_before);
  EXPECT_EQ(h.check(), 0) << "after the reopen";

  // The clock survived: late by the old clock, applied with an earlier wall clock.
  EXPECT_EQ(h.run(event("probe", c - h.ref().lateness_ms(), c - 5000, {{0, 100}}, "probe-2")), Outcome::kLate);
  // Redeliveries of events applied before the restart are duplicates.
  int redelivered = 0;
  std::vector<Step> again = gen.redeliverable();
  again.push_back(probe1);
  for (Step s : again) {
    s.redelivery = true;
    s.event.apply_ns = ns(h.ref().clock_ms());
    EXPECT_EQ(h.run(s), Outcome::kDuplicate);
    ++redelivered;
  }
  EXPECT_GT(redelivered, 0);
  EXPECT_EQ(h.check(), 0);
  run_steps(600);
  EXPECT_EQ(h.writer().stats(0).duplicates, h.ref().duplicates());
  std::printf("restart: %d redeliveries after the reopen, %llu comparisons, %llu mismatches\n", redelivered,
              static_cast<unsigned long long>(h.comparisons()), static_cast<unsigned long long>(h.mismatches()));
  print_outcomes(h);
  EXPECT_EQ(h.mismatches(), 0u) << "replay with --seed=" << seed;
}

TEST(AggregateRestart, WarmReopenContinuesAggregatesAndDedup) { warm_reopen(wide_table(), "AggregateRestart"); }

TEST(AggregateRestart, WarmReopenContinuesCountWindowsAndSequences) {
  warm_reopen(events_table(), "AggregateRestartEvents");
}

// ---------------------------------------------------------------------------
// 4. Crash injection.

template <class T>
T* shared_array(size_t n) {
  void* p = ::mmap(nullptr, sizeof(T) * n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) std::abort();
  return new (p) T[n]();
}

uint64_t g_points_all = 0, g_points_journal = 0;
void count_points(CrashPoint p) {
  ++g_points_all;
  if (p == CrashPoint::kJournal) ++g_points_journal;
}
int64_t g_countdown = 0;  // set before fork; counted down in the child
bool g_journal_only = false;
void crash_at_countdown(CrashPoint p) {
  if (g_journal_only && p != CrashPoint::kJournal) return;
  if (--g_countdown == 0) ::raise(SIGKILL);
}

CrashPoint g_kill_at = CrashPoint::kSeqEven;
void kill_at_point(CrashPoint p) {
  if (p == g_kill_at) ::raise(SIGKILL);
}

// A writer killed once an event's row is written (seq even again) but before
// its aggregate change is marked committed. The row and the aggregate state
// (with the event's id) must come back together: both after the event (its
// redelivery is then a duplicate) or both before it. A repair that rolled the
// state back and kept the row showed the event's fields with aggregates
// without it until the redelivery.
TEST(AggregateCrash, KillAtSeqEvenIsAllOrNothing) {
  Harness h(small_table(), "seq-even", 0, {"k"});
  const int64_t b = kBaseMs;
  h.run(event("k", b, b, {{0, 1}}, "a", {{0, 1}}));
  const Step second = event("k", b + 1500, b + 1500, {{0, 2}}, "b", {{0, 2}});
  h.close_writer();
  testing::Children kids;
  const pid_t child = kids.add(testing::spawn([&] {
    auto w = Writer::open(h.segment().name(), h.schema(), h.options());
    g_kill_at = CrashPoint::kSeqEven;
    set_crash_hook(&kill_at_point);
    write_step(*w, h.spec(), h.source_map(), second);
    return 0;
  }));
  ASSERT_EQ(kids.wait(child), 128 + SIGKILL);
  h.open_writer();
  // At b + 10 s the first event's bucket leaves the 10 s window: a refresh.
  Ref before = h.ref();
  Ref after = h.ref();
  model_step(after, second);
  before.refresh(ns(b + 10'000));
  after.refresh(ns(b + 10'000));
  h.writer().refresh(ns(b + 10'000));
  const std::string vs_before = h.compare_key(before, "k"), vs_after = h.compare_key(after, "k");
  EXPECT_TRUE(vs_before.empty() || vs_after.empty())
      << "after repair the row is neither before nor after the interrupted event: vs before: " << vs_before
      << "; vs after: " << vs_after;
  // Redelivered, the event counts exactly once.
  h.write(second);
  h.ref() = after;
  EXPECT_EQ(h.check(), 0);
}

void killed_writer_replays_exactly_once(const TableSpec& spec, const char* label) {
  const uint64_t seed = seed_for(label);
  const int iterations = larder::testing::crash_iterations(20);
  ASSERT_GE(iterations, 2)
      << "LARDER_CRASH_ITERATIONS=" << -iterations
      << " refused: at least 10 (fewer with LARDER_CRASH_ITERATIONS_REDUCED=1), never fewer than 2";
  std::mt19937_64 rng(seed);

  // The stream, drawn against its own model; every event carries an id.
  std::vector<Step> steps;
  std::vector<size_t> ends;
  {
    Ref gen_ref(spec);
    StreamGenerator gen(gen_ref, stream_keys(), seed, {.ids_always = true, .upserts = false, .removes = true});
    size_t total = 0;
    for (int it = 0; it < iterations; ++it) ends.push_back(total += 40 + rng() % 110);
    while (steps.size() < total) {
      const Step s = gen.next();
      const Outcome o = model_step(gen_ref, s);
      gen.record(s, o, gen_ref.last_folded());
      steps.push_back(s);
    }
  }

  Harness h(spec, "crash", seed, stream_keys());
  // Crash points per step, from a dry run on another segment.
  std::vector<uint64_t> cum_all{0}, cum_journal{0};
  {
    ScratchSegment dry;
    WriterOptions o = h.options();
    o.dir = dry.dir();
    auto w = Writer::open(dry.name(), h.schema(), o);
    g_points_all = g_points_journal = 0;
    set_crash_hook(&count_points);
    for (const Step& s : steps) {
      write_step(*w, spec, h.source_map(), s);
      cum_all.push_back(g_points_all);
      cum_journal.push_back(g_points_journal);
    }
    set_crash_hook(nullptr);
  }
  std::printf("crash: %zu steps, %llu crash points (%llu journal) in a dry run\n", steps.size(),
              static_cast<unsigned long long>(g_points_all), static_cast<unsigned long long>(g_points_journal));
  ASSERT_GT(g_points_journal, 0u) << "no CrashPoint::kJournal reported";

  auto* completed = shared_array<std::atomic<int64_t>>(1);
  testing::Children kids;
  h.close_writer();
  size_t begin = 0;
  int kills = 0, mid_checks = 0;
  uint64_t repaired = 0;
  for (int it = 0; it < iterations && h.mismatches() == 0; ++it) {
    const size_t end = ends[it];
    g_journal_only = it % 2 == 0;
    const uint64_t points = g_journal_only ? cum_journal[end] - cum_journal[begin] : cum_all[end] - cum_all[begin];
    g_countdown = 1 + static_cast<int64_t>(rng() % std::max<uint64_t>(points, 1));
    completed->store(static_cast<int64_t>(begin) - 1);
    const pid_t child = kids.add(testing::spawn([&] {
      auto w = Writer::open(h.segment().name(), h.schema(), h.options());
      set_crash_hook(&crash_at_countdown);
      for (size_t i = begin; i < end; ++i) {
        write_step(*w, spec, h.source_map(), steps[i]);
        completed->store(static_cast<int64_t>(i));
      }
      set_crash_hook(nullptr);
      return 0;
    }));
    const int status = kids.wait(child);
    ASSERT_TRUE(status == 0 || status == 128 + SIGKILL) << "child exit " << status;
    const size_t next = static_cast<size_t>(completed->load() + 1);  // the interrupted step, if killed
    if (status != 0) ++kills;
    for (size_t i = begin; i < next; ++i) model_step(h.ref(), steps[i]);

    h.open_writer();  // repairs
    repaired += h.writer().repaired_slots();
    ASSERT_LE(h.writer().attach_report().slots_visited, 1u) << "iteration " << it;
    ASSERT_TRUE(larder::testing::counters_match_recount(h.writer().path(), h.segment().name())) << "iteration " << it;
    h.set_label("crash it=" + std::to_string(it) + " step=" + std::to_string(next));
    if (next < end) {
      // Repaired: every key (plain fields and aggregates together) is as
      // before the interrupted step or as after it.
      Ref before = h.ref();
      Ref after = h.ref();
      model_step(after, steps[next]);
      before.refresh(ns(after.clock_ms()));
      h.writer().refresh(ns(after.clock_ms()));
      for (const std::string& key : h.keys()) {
        const std::string b = h.compare_key(before, key);
        const std::string a = h.compare_key(after, key);
        if (b.empty() || a.empty()) continue;
        // Say which part is split: the aggregates, the plain fields, or the row between them.
        std::string split = "row";
        for (Harness::Part part : {Harness::Part::kAggregates, Harness::Part::kPlain}) {
          if (!h.compare_key(before, key, part).empty() && !h.compare_key(after, key, part).empty()) {
            split = part == Harness::Part::kAggregates ? "aggregates" : "plain fields";
          }
        }
        h.fail("after repair, key " + key + " (" + split + ") is neither before nor after step " +
               std::to_string(next) + " (" + describe(steps[next]) + "): vs before: " + b + "; vs after: " + a);
      }
      ++mid_checks;
      // Redeliver the unacknowledged steps, the interrupted one included.
      for (size_t i = next; i < end; ++i) {
        if (i == next) {
          h.write(steps[i]);
          model_step(h.ref(), steps[i]);
        } else {
          h.run(steps[i]);
        }
      }
    }
    h.check();
    h.close_writer();
    begin = end;
  }
  std::printf("crash: %d iterations, %d kills, %d repaired states checked, %llu slots repaired, %llu comparisons\n",
              iterations, kills, mid_checks, static_cast<unsigned long long>(repaired),
              static_cast<unsigned long long>(h.comparisons()));
  EXPECT_EQ(h.mismatches(), 0u) << "replay with --seed=" << seed;
  // Fewer than 10 iterations only with LARDER_CRASH_ITERATIONS_REDUCED=1
  // (see crash_iterations): then too few kills to expect most to land.
  if (iterations >= 10 && h.mismatches() == 0) {
    EXPECT_GT(kills, iterations / 2);
  }
}

TEST(AggregateCrash, KilledWriterRepairsAndReplaysExactlyOnce) {
  killed_writer_replays_exactly_once(wide_table(), "AggregateCrash");
}

// The event stores of count windows and sequences: a kill inside a late
// event's insertion (entries moving up) is undone like any aggregate change.
TEST(AggregateCrash, CountWindowsAndSequencesRepairAndReplayExactlyOnce) {
  killed_writer_replays_exactly_once(events_table(), "AggregateCrashEvents");
}

// ---------------------------------------------------------------------------
// 5. distinct_count: exact sets, the sketch beyond them, decay, lateness,
// restarts and kills.

TableSpec distinct_table() {
  TableSpec t;
  t.name = "cards";
  t.capacity = 64;
  t.fields = {{"country", FieldType::kString, 8}};
  t.aggregates = {
      agg("countries_60s", "country", AggregateFn::kDistinctCount, 60'000, 1000),
      agg("countries_10s", "country", AggregateFn::kDistinctCount, 10'000, 1000),
      agg("countries_10s_latest", "country", AggregateFn::kDistinctCount, 10'000, 1000, WindowEnd::kLatestEvent),
      agg("countries_count_60s", "country", AggregateFn::kCount, 60'000, 1000),
      agg("devices_60s", "device", AggregateFn::kDistinctCount, 60'000, 1000),
  };
  return t;
}

// Events whose source values are strings: the writer gets their distinct
// hashes, the model one number per string.
class StringEvents {
 public:
  explicit StringEvents(Harness& h) : h_(h) {}
  Outcome apply(const std::string& key, int64_t te, int64_t at_ms,
                const std::vector<std::pair<std::string, std::string>>& values, const std::string& id = "") {
    Step s = event(key, te, at_ms, {}, id);
    std::vector<SourceValue> sources;
    for (const auto& [source, text] : values) {
      const int i = h_.ref().source_index(source);
      const auto [it, added] = numbers_.emplace(text, static_cast<double>(numbers_.size()));
      s.event.sources.push_back({static_cast<uint32_t>(i), it->second});
      sources.push_back({h_.source_map()[static_cast<size_t>(i)], 0.0, distinct_hash_string(text)});
    }
    const ApplyResult got = h_.writer().apply(0, key, te, {}, sources, s.event.id, s.event.apply_ns);
    const Outcome want = model_step(h_.ref(), s);
    EXPECT_TRUE(compatible(want, got)) << key << " te=base" << te - kBaseMs << ": writer " << apply_result_name(got)
                                       << ", model " << Ref::outcome_name(want);
    return want;
  }

 private:
  Harness& h_;
  std::map<std::string, double> numbers_;
};

TEST(DistinctCount, ExactForSmallSetsAndDecaysByTheBucket) {
  Harness h(distinct_table(), "distinct-exact", 0, {"card:1", "card:2"});
  StringEvents ev(h);
  const int64_t b = kBaseMs;
  // 32 countries (K) on card:1 over 40 s, each seen three times, out of
  // order; card:2 sees two countries and a device.
  for (int round = 0; round < 3; ++round) {
    for (int c = 0; c < 32; ++c) {
      const int64_t te = b + c * 1250 + round * 17 - (c % 5) * 900;
      ev.apply("card:1", te, b + 40'000 + round, {{"country", "C" + std::to_string(c)}});
      ASSERT_EQ(h.check(), 0);
    }
  }
  ev.apply("card:2", b + 39'000, b + 40'000, {{"country", "US"}, {"device", "phone-7"}});
  ev.apply("card:2", b + 39'500, b + 40'000, {{"country", "DE"}});
  ev.apply("card:2", b + 39'900, b + 40'000, {{"country", "US"}});
  ASSERT_EQ(h.check(), 0);
  EXPECT_EQ(h.i64("card:1", "countries_60s"), 32);
  EXPECT_EQ(h.i64("card:1", "countries_count_60s"), 96);
  EXPECT_EQ(h.i64("card:2", "countries_60s"), 2);
  EXPECT_EQ(h.i64("card:2", "devices_60s"), 1);
  EXPECT_EQ(h.i64("card:1", "devices_60s"), 0);
  // Every bucket edge and one ms either side until the windows are empty:
  // exact at every read, with only the refreshes the writer schedules itself.
  for (int64_t t = b + 40'000; t <= b + 110'000; t += 500) {
    for (int64_t d : {-1, 0, 1}) {
      h.run(refresh_at(t + d));
      ASSERT_EQ(h.check(false), 0) << "at base+" << t + d - b;
    }
  }
  EXPECT_EQ(h.i64("card:1", "countries_60s"), 0);
  EXPECT_EQ(h.i64("card:1", "countries_10s_latest"), h.ref().read("card:1").fields[3].i64);
  EXPECT_GT(h.i64("card:1", "countries_10s_latest"), 0);  // latest_event windows do not decay
}

TEST(DistinctCount, LateEventsAndRedeliveriesCountOnce) {
  Harness h(distinct_table(), "distinct-late", 0, {"k"});
  StringEvents ev(h);
  const int64_t b = kBaseMs + 100'000;
  ev.apply("k", b, b, {{"country", "US"}}, "e1");
  ev.apply("k", b - 5000, b, {{"country", "US"}}, "e2");    // late, a value already counted
  ev.apply("k", b - 8000, b, {{"country", "FR"}}, "e3");    // late, new: in both windows
  ev.apply("k", b - 30'000, b, {{"country", "DE"}}, "e4");  // late, new: outside the 10 s windows
  EXPECT_EQ(h.check(), 0);
  EXPECT_EQ(h.i64("k", "countries_60s"), 3);
  EXPECT_EQ(h.i64("k", "countries_10s"), 2);
  EXPECT_EQ(h.i64("k", "countries_10s_latest"), 2);
  // A redelivery is a duplicate; an event older than the lateness (60 s) is dropped.
  EXPECT_EQ(ev.apply("k", b - 8000, b + 10, {{"country", "FR"}}, "e3"), Outcome::kDuplicate);
  EXPECT_EQ(ev.apply("k", b - 60'000, b + 10, {{"country", "IT"}}, "e5"), Outcome::kLate);
  EXPECT_EQ(h.check(), 0);
  EXPECT_EQ(h.i64("k", "countries_60s"), 3);
  // FR (bucket b/1000 - 8) leaves the 10 s window first, then US.
  h.run(refresh_at(b + 2000));
  EXPECT_EQ(h.check(false), 0);
  EXPECT_EQ(h.i64("k", "countries_10s"), 1);
  EXPECT_EQ(h.i64("k", "countries_10s_latest"), 2);  // ends at the newest event: no decay
  h.run(refresh_at(b + 10'000));
  EXPECT_EQ(h.check(false), 0);
  EXPECT_EQ(h.i64("k", "countries_10s"), 0);
  EXPECT_EQ(h.i64("k", "countries_60s"), 3);
}

// The sketch: 1.04 / sqrt(128) = 9.2% relative standard error. Every
// estimate must be within 3 standard errors, and their mean absolute error
// within 1.5.
TEST(DistinctCount, LargeSetsEstimateWithinTheDocumentedError) {
  constexpr double kSigma = 1.04 / 11.313708498984761;  // sqrt(128)
  TableSpec t;
  t.name = "large";
  t.capacity = 16;
  t.aggregates = {agg("d_60s", "v", AggregateFn::kDistinctCount, 60'000, 1000)};
  double sum_abs = 0;
  int runs = 0;
  for (uint64_t seed : {11u, 12u, 13u}) {
    for (int n : {10'000, 30'000, 100'000}) {
      ScratchSegment seg;
      auto w = Writer::open(seg.name(), testing::one_table_schema(t), seg.writer_options());
      auto segment = Segment::open(seg.name(), ClientOptions{seg.dir()});
      Table table = segment.table("large");
      Row row = table.make_row();
      const Field d = table.field("d_60s", FieldType::kInt64);
      auto read = [&](int64_t now_ms) {
        w->refresh(ns(now_ms));
        EXPECT_EQ(table.get("k", row).status, Status::kOk);
        return row.i64(d);
      };
      std::mt19937_64 rng(seed * 1'000'003 + static_cast<uint64_t>(n));
      // The first half of the values in [0, 32 s), the second in [32 s, 60 s)
      // (32: a sketch slice edge, 60 / 8 buckets rounded up); every value twice.
      const int64_t b = kBaseMs;
      for (int i = 0; i < n; ++i) {
        const int64_t v = static_cast<int64_t>(rng());
        const bool first = i < n / 2;
        const int64_t span = first ? 32'000 : 28'000;
        const int64_t te = b + (first ? 0 : 32'000) + static_cast<int64_t>(rng() % static_cast<uint64_t>(span));
        const SourceValue sv[] = {{0, 0.0, distinct_hash_int64(v)}};
        // Applied at 59.999 s: none is late (lateness 60 s), all in bucket 0..59.
        ASSERT_EQ(w->apply(0, "k", te, {}, sv, 0, ns(b + 59'999)), ApplyResult::kApplied);
        ASSERT_EQ(w->apply(0, "k", te, {}, sv, 0, ns(b + 59'999)), ApplyResult::kApplied);
      }
      const auto check = [&](int64_t got, int want, const char* what) {
        const double err = (static_cast<double>(got) - want) / want;
        std::printf("distinct seed %llu n %d %s: %lld (want %d, error %+.3f)\n", static_cast<unsigned long long>(seed),
                    n, what, static_cast<long long>(got), want, err);
        EXPECT_LE(std::fabs(err), 3 * kSigma) << "seed " << seed << " n " << n << " " << what;
        sum_abs += std::fabs(err);
        ++runs;
      };
      check(read(b + 60'000), n, "whole window");
      // At 91 s the window is buckets (31, 91]: the first half left.
      check(read(b + 91'000), n - n / 2, "second half");
      EXPECT_EQ(read(b + 120'000), 0) << "every bucket left";
      // The values let go have left the window: exact again.
      for (int i = 0; i < 5; ++i) {
        const SourceValue sv[] = {{0, 0.0, distinct_hash_int64(i)}};
        ASSERT_EQ(w->apply(0, "k", b + 120'000, {}, sv, 0, ns(b + 120'000)), ApplyResult::kApplied);
      }
      EXPECT_EQ(read(b + 120'000), 5);
    }
  }
  std::printf("distinct: mean absolute relative error %.4f over %d estimates (sigma %.4f)\n", sum_abs / runs, runs,
              kSigma);
  EXPECT_LE(sum_abs / runs, 1.5 * kSigma);
}

// Reopened, the writer continues from the exact set and the sketches in the
// segment.
TEST(DistinctCount, ReopenedWriterContinues) {
  Harness h(distinct_table(), "distinct-reopen", 0, {"small", "large"});
  StringEvents ev(h);
  const int64_t b = kBaseMs;
  for (int i = 0; i < 20; ++i) ev.apply("small", b + i * 1000, b + 20'000, {{"country", "c" + std::to_string(i % 7)}});
  for (int i = 0; i < 2000; ++i) ev.apply("large", b + i * 10, b + 20'000, {{"device", "d" + std::to_string(i)}});
  ASSERT_EQ(h.check(), 0);
  const int64_t small = h.i64("small", "countries_60s"), large = h.i64("large", "devices_60s");
  EXPECT_EQ(small, 7);
  h.close_writer();
  h.open_writer();
  EXPECT_EQ(h.i64("small", "countries_60s"), small);
  EXPECT_EQ(h.i64("large", "devices_60s"), large);
  // The same values again count nothing new; refreshes still decay them.
  for (int i = 0; i < 2000; ++i) ev.apply("large", b + 20'000, b + 20'000, {{"device", "d" + std::to_string(i)}});
  ev.apply("small", b + 20'000, b + 20'000, {{"country", "c3"}});
  ASSERT_EQ(h.check(), 0);
  EXPECT_EQ(h.i64("small", "countries_60s"), 7);
  EXPECT_EQ(h.i64("large", "devices_60s"), large);
  h.run(refresh_at(b + 79'000));  // the window is buckets (19, 79]: only the last c3
  ASSERT_EQ(h.check(false), 0);
  EXPECT_EQ(h.i64("small", "countries_60s"), 1);
}

// A writer killed at every crash point of an event that lets a value go
// from a full exact set and starts a new sketch slice: after repair the key
// is as before the event or as after it, its redelivery counts once, and the
// state then behaves as a writer's that was never killed.
TEST(AggregateCrash, DistinctChangeIsAllOrNothing) {
  const TableSpec spec = distinct_table();
  const int64_t b = kBaseMs;
  auto setup = [&](Writer& w) {
    for (int i = 0; i < 40; ++i) {
      const SourceValue sv[] = {{0, 0.0, distinct_hash_string("c" + std::to_string(i))}};
      w.apply(0, "k", b + i * 500, {}, sv, event_id_hash("s" + std::to_string(i)), ns(b + 20'000));
    }
  };
  const SourceValue hit[] = {{0, 0.0, distinct_hash_string("new")}};
  const uint64_t hit_id = event_id_hash("hit");
  auto hit_event = [&](Writer& w) { return w.apply(0, "k", b + 49'000, {}, hit, hit_id, ns(b + 50'000)); };
  // What comes after: refreshes across the windows and more values.
  auto follow = [&](Writer& w, Table& table, Row& row, std::vector<int64_t>* out) {
    const std::vector<Field> fields = {table.field("countries_60s", FieldType::kInt64),
                                       table.field("countries_10s", FieldType::kInt64),
                                       table.field("countries_10s_latest", FieldType::kInt64)};
    auto read = [&] {
      EXPECT_EQ(table.get("k", row).status, Status::kOk);
      for (const Field& f : fields) out->push_back(row.i64(f));
    };
    read();
    for (int i = 0; i < 6; ++i) {
      const SourceValue sv[] = {{0, 0.0, distinct_hash_string("f" + std::to_string(i % 4))}};
      w.apply(0, "k", b + 50'000 + i * 4000, {}, sv, event_id_hash("f" + std::to_string(i)), ns(b + 50'000 + i * 4000));
      read();
    }
    for (int64_t t = b + 70'000; t <= b + 130'000; t += 5000) {
      w.refresh(ns(t));
      read();
    }
  };
  // The model run: never killed.
  std::vector<int64_t> want_before, want_after, want_follow;
  uint64_t points = 0;
  {
    ScratchSegment seg;
    auto w = Writer::open(seg.name(), testing::one_table_schema(spec), seg.writer_options());
    setup(*w);
    auto segment = Segment::open(seg.name(), ClientOptions{seg.dir()});
    Table table = segment.table("cards");
    Row row = table.make_row();
    const Field f60 = table.field("countries_60s", FieldType::kInt64);
    ASSERT_EQ(table.get("k", row).status, Status::kOk);
    want_before.push_back(row.i64(f60));
    g_points_all = g_points_journal = 0;
    set_crash_hook(&count_points);
    ASSERT_EQ(hit_event(*w), ApplyResult::kApplied);
    set_crash_hook(nullptr);
    points = g_points_all;
    ASSERT_EQ(table.get("k", row).status, Status::kOk);
    want_after.push_back(row.i64(f60));
    follow(*w, table, row, &want_follow);
  }
  std::printf("distinct crash: %llu crash points in the event, 60 s count %lld before, %lld after\n",
              static_cast<unsigned long long>(points), static_cast<long long>(want_before[0]),
              static_cast<long long>(want_after[0]));
  ASSERT_GT(points, 20u) << "the event should let a value go and reset a slice";
  int rolled_back = 0, kept = 0;
  for (uint64_t p = 1; p <= points; ++p) {
    ScratchSegment seg;
    const layout::Schema schema = testing::one_table_schema(spec);
    {
      auto w = Writer::open(seg.name(), schema, seg.writer_options());
      setup(*w);
    }
    testing::Children kids;
    const pid_t child = kids.add(testing::spawn([&] {
      auto w = Writer::open(seg.name(), schema, seg.writer_options());
      g_journal_only = false;
      g_countdown = static_cast<int64_t>(p);
      set_crash_hook(&crash_at_countdown);
      hit_event(*w);
      return 0;
    }));
    ASSERT_EQ(kids.wait(child), 128 + SIGKILL) << "crash point " << p;
    auto w = Writer::open(seg.name(), schema, seg.writer_options());
    auto segment = Segment::open(seg.name(), ClientOptions{seg.dir()});
    Table table = segment.table("cards");
    Row row = table.make_row();
    ASSERT_EQ(table.get("k", row).status, Status::kOk);
    const int64_t got = row.i64(table.field("countries_60s", FieldType::kInt64));
    ASSERT_TRUE(got == want_before[0] || got == want_after[0]) << "crash point " << p << ": " << got;
    const ApplyResult again = hit_event(*w);  // the redelivery
    if (again == ApplyResult::kDuplicate) {
      ++kept;
    } else {
      ASSERT_EQ(again, ApplyResult::kApplied) << "crash point " << p;
      ++rolled_back;
    }
    std::vector<int64_t> got_follow;
    follow(*w, table, row, &got_follow);
    ASSERT_EQ(got_follow, want_follow) << "crash point " << p;
  }
  std::printf("distinct crash: %d kills rolled back, %d kept\n", rolled_back, kept);
  EXPECT_GT(rolled_back, 0);
  EXPECT_GT(kept, 0);
}

// ---------------------------------------------------------------------------
// 5b. Buckets in proportion to activity: sparse rings, the arena.

// A 20 s window at 1 s (a ring of 20, longer than kInlineBuckets) and an
// arena of one chunk.
TableSpec arena_table(uint64_t chunks) {
  TableSpec t;
  t.name = "arena";
  t.capacity = 16;
  t.fields = {{"note", FieldType::kInt64, 1}};
  t.aggregates = {
      agg("x_count_20s", "x", AggregateFn::kCount, 20'000, 1000),
      agg("x_sum_20s", "x", AggregateFn::kSum, 20'000, 1000),
      agg("x_max_20s", "x", AggregateFn::kMax, 20'000, 1000),
      agg("x_std_20s", "x", AggregateFn::kStddev, 20'000, 1000),
  };
  t.arena_chunks = chunks;
  return t;
}

TEST(AggregateArena, PromotesDemotesRefusesAndFreesExactly) {
  Harness h(arena_table(1), "arena", 0, {"a", "b"});
  const int64_t b = kBaseMs;
  auto stats = [&] { return h.writer().stats(0); };
  // Key a: 8 buckets fit inline; the 9th takes the only chunk.
  for (int i = 0; i < 8; ++i) h.run(event("a", b + i * 1000, b + i * 1000, {{0, 1.0 + i}}));
  EXPECT_EQ(stats().arena_used, 0u) << "8 buckets are inline";
  h.run(event("a", b + 8000, b + 8000, {{0, 9}}));
  EXPECT_EQ(stats().arena_used, 1u) << "the 9th bucket promotes the ring";
  EXPECT_EQ(h.i64("a", "x_count_20s"), 9);
  // Key b: 8 buckets inline, then a 9th bucket needs a chunk: refused.
  for (int i = 0; i < 8; ++i) h.run(event("b", b + 10'000 + i * 1000, b + 10'000 + i * 1000, {{0, 100.0 + i}}));
  Step ninth = event("b", b + 18'000, b + 18'000, {{0, 108}});
  EXPECT_EQ(write_step(h.writer(), h.spec(), h.source_map(), ninth), ApplyResult::kArenaFull);
  h.ref().advance(ninth.event.apply_ns);
  EXPECT_EQ(stats().arena_refused, 1u);
  EXPECT_EQ(h.i64("b", "x_count_20s"), 8) << "a refused event changes nothing";
  // Another event in a bucket b already holds needs no chunk.
  h.run(event("b", b + 17'500, b + 18'000, {{0, 50}}));
  EXPECT_EQ(h.i64("b", "x_count_20s"), 9);
  EXPECT_EQ(h.check(), 0);
  // At b + 24 s key a's window (b + 4 s, b + 24 s] holds 4 events: its
  // refresh demotes the ring, and the chunk is free again.
  h.run(refresh_at(b + 24'000));
  EXPECT_EQ(h.check(), 0);
  EXPECT_EQ(stats().arena_used, 0u) << "a's ring holds 4 events: demoted";
  EXPECT_EQ(h.i64("a", "x_count_20s"), 4);
  // Now b's new bucket takes the chunk.
  h.run(event("b", b + 24'000, b + 24'000, {{0, 108}}));
  EXPECT_EQ(stats().arena_used, 1u);
  EXPECT_EQ(h.i64("b", "x_count_20s"), 10);
  EXPECT_EQ(h.check(), 0);
  // A promoted key deleted gives its chunk back; the revived key starts sparse.
  Step del;
  del.kind = Step::Kind::kRemove;
  del.event.key = "b";
  del.event.te = b + 24'500;
  del.event.apply_ns = ns(b + 24'500);
  h.run(del);
  EXPECT_EQ(stats().arena_used, 0u) << "the delete frees b's chunk";
  h.run(event("b", b + 25'000, b + 25'000, {{0, 7}}));
  EXPECT_EQ(h.i64("b", "x_count_20s"), 1);
  // Both keys decay to empty; every window is exact on the way.
  for (int64_t t = b + 26'000; t <= b + 50'000; t += 1000) {
    h.run(refresh_at(t));
    EXPECT_EQ(h.check(), 0) << "at b + " << (t - b) << " ms";
  }
  EXPECT_EQ(stats().arena_peak_used, 1u);
  EXPECT_EQ(h.mismatches(), 0u);
}

// A ring that never fits inline (an event every second of a 20 s window)
// keeps its chunk, and reads exactly as a dense ring: the reference.
TEST(AggregateArena, BusyKeyKeepsItsChunkAndStaysExact) {
  Harness h(arena_table(1), "busy", 0, {"k"});
  const int64_t b = kBaseMs;
  for (int i = 0; i < 120; ++i) {
    h.run(event("k", b + i * 1000 + 3, b + i * 1000 + 3, {{0, std::sin(i) * 1e3}}));
    if (i % 7 == 0) {
      ASSERT_EQ(h.check(), 0) << "event " << i;
    }
  }
  EXPECT_EQ(h.writer().stats(0).arena_used, 1u);
  EXPECT_EQ(h.i64("k", "x_count_20s"), 20);
  EXPECT_EQ(h.check(), 0);
}

// SIGKILL at every crash point of an event that promotes a ring (takes a
// chunk, moves the inline buckets to their ring positions) and of a refresh
// that demotes it (copies the live buckets inline, frees the chunk): after
// repair the key and the arena are as before or as after, and what follows
// matches an uninterrupted run.
TEST(AggregateCrash, PromotionAndDemotionAreAllOrNothing) {
  const TableSpec spec = arena_table(2);
  const int64_t b = kBaseMs;
  const layout::Schema schema = testing::one_table_schema(spec);
  // Key k: 8 buckets inline; then `promote`, the 9th bucket.
  auto setup = [&](Writer& w) {
    for (int i = 0; i < 8; ++i) {
      const SourceValue sv[] = {{0, 1.0 + i}};
      ASSERT_EQ(w.apply(0, "k", b + i * 1000, {}, sv, event_id_hash("e" + std::to_string(i)), ns(b + i * 1000)),
                ApplyResult::kApplied);
    }
  };
  auto promote = [&](Writer& w) {
    const SourceValue sv[] = {{0, 9.0}};
    return w.apply(0, "k", b + 8000, {}, sv, event_id_hash("e8"), ns(b + 8000));
  };
  // Past b + 24 s the window holds 4 events: this refresh demotes.
  auto demote = [&](Writer& w) { w.refresh(ns(b + 24'000)); };
  struct Seen {
    std::vector<uint64_t> values;  // count, then the bits of sum, max, std of k (NaN equals NaN)
    uint64_t arena_used = 0;
    bool operator==(const Seen&) const = default;
  };
  auto seen = [&](Writer& w, const ScratchSegment& seg) {
    auto segment = Segment::open(seg.name(), ClientOptions{seg.dir()});
    Table table = segment.table("arena");
    Row row = table.make_row();
    Seen s;
    EXPECT_EQ(table.get("k", row).status, Status::kOk);
    s.values.push_back(static_cast<uint64_t>(row.i64(table.field("x_count_20s", FieldType::kInt64))));
    for (const char* f : {"x_sum_20s", "x_max_20s", "x_std_20s"}) {
      s.values.push_back(std::bit_cast<uint64_t>(row.f64(table.field(f, FieldType::kFloat64))));
    }
    s.arena_used = w.stats(0).arena_used;
    return s;
  };
  // What follows either interruption: more events (one promotes again) and
  // refreshes down to empty.
  auto follow = [&](Writer& w, const ScratchSegment& seg, std::vector<Seen>* out) {
    for (int i = 0; i < 10; ++i) {
      const int64_t t = b + 25'000 + i * 1000;
      const SourceValue sv[] = {{0, 20.0 + i}};
      w.apply(0, "k", t, {}, sv, event_id_hash("f" + std::to_string(i)), ns(t));
      out->push_back(seen(w, seg));
    }
    for (int64_t t = b + 36'000; t <= b + 60'000; t += 2000) {
      w.refresh(ns(t));
      out->push_back(seen(w, seg));
    }
  };

  for (const bool demotion : {false, true}) {
    const char* what = demotion ? "demotion" : "promotion";
    // The uninterrupted run.
    Seen want_before, want_after;
    std::vector<Seen> want_follow;
    uint64_t points = 0;
    {
      ScratchSegment seg;
      auto w = Writer::open(seg.name(), schema, seg.writer_options());
      setup(*w);
      if (demotion) {
        ASSERT_EQ(promote(*w), ApplyResult::kApplied);
      }
      want_before = seen(*w, seg);
      g_points_all = g_points_journal = 0;
      set_crash_hook(&count_points);
      if (demotion) {
        demote(*w);
      } else {
        ASSERT_EQ(promote(*w), ApplyResult::kApplied);
      }
      set_crash_hook(nullptr);
      points = g_points_all;
      want_after = seen(*w, seg);
      follow(*w, seg, &want_follow);
    }
    ASSERT_EQ(want_before.arena_used, demotion ? 1u : 0u) << what;
    ASSERT_EQ(want_after.arena_used, demotion ? 0u : 1u) << what;
    std::printf("arena crash, %s: %llu crash points\n", what, static_cast<unsigned long long>(points));
    ASSERT_GT(points, 30u) << what << ": the change should journal the inline buckets and the arena";
    int as_before = 0, as_after = 0;
    for (uint64_t p = 1; p <= points; ++p) {
      ScratchSegment seg;
      {
        auto w = Writer::open(seg.name(), schema, seg.writer_options());
        setup(*w);
        if (demotion) {
          ASSERT_EQ(promote(*w), ApplyResult::kApplied);
        }
      }
      testing::Children kids;
      const pid_t child = kids.add(testing::spawn([&] {
        auto w = Writer::open(seg.name(), schema, seg.writer_options());
        g_journal_only = false;
        g_countdown = static_cast<int64_t>(p);
        set_crash_hook(&crash_at_countdown);
        if (demotion) {
          demote(*w);
        } else {
          promote(*w);
        }
        return 0;
      }));
      ASSERT_EQ(kids.wait(child), 128 + SIGKILL) << what << " crash point " << p;
      auto w = Writer::open(seg.name(), schema, seg.writer_options());  // repairs
      const Seen got = seen(*w, seg);
      ASSERT_TRUE(got == want_before || got == want_after)
          << what << " crash point " << p << ": arena used " << got.arena_used << ", count " << got.values[0];
      (got == want_before ? as_before : as_after)++;
      // Redelivered (or refreshed again), then the same future.
      if (demotion) {
        demote(*w);
      } else {
        const ApplyResult again = promote(*w);
        ASSERT_EQ(again, got == want_before ? ApplyResult::kApplied : ApplyResult::kDuplicate) << what << " " << p;
      }
      ASSERT_EQ(seen(*w, seg), want_after) << what << " crash point " << p;
      std::vector<Seen> got_follow;
      follow(*w, seg, &got_follow);
      ASSERT_EQ(got_follow, want_follow) << what << " crash point " << p;
    }
    std::printf("arena crash, %s: %d repaired to before, %d to after\n", what, as_before, as_after);
    EXPECT_GT(as_before, 0) << what;
  }
}

// ---------------------------------------------------------------------------
// 6. Schema checks and the API around it.

TableSpec one_field_table() {
  TableSpec t;
  t.name = "t";
  t.fields = {{"x", FieldType::kFloat64, 1}};
  return t;
}

void expect_invalid(const TableSpec& t, const std::string& what) {
  const layout::Schema s = testing::one_table_schema(t);
  try {
    s.validate();
    ADD_FAILURE() << what << ": validate() accepted it";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << what << ": " << e.what();
  }
  ScratchSegment seg;
  EXPECT_THROW(Writer::open(seg.name(), s, seg.writer_options()), Error) << what;
}

void expect_valid(const TableSpec& t, const std::string& what) {
  const layout::Schema s = testing::one_table_schema(t);
  EXPECT_NO_THROW(s.validate()) << what;
}

TEST(AggregateSchema, ValidateRefusesBadCountWindows) {
  auto with = [](AggregateSpec a) {
    TableSpec t = one_field_table();
    t.aggregates.push_back(std::move(a));
    return t;
  };
  expect_valid(with(events_agg("w", "x", AggregateFn::kMean, 10)), "mean over 10 events");
  expect_valid(with(events_agg("w", "x", AggregateFn::kLastN, 1024)), "last_n of 1024");
  expect_valid(with(events_agg("w", "", AggregateFn::kCount, 5, 5)), "count of every event");
  expect_invalid(with(events_agg("w", "x", AggregateFn::kMean, 1025)), "1025 events");
  expect_invalid(with(events_agg("w", "x", AggregateFn::kLastN, 0)), "last_n without n");
  expect_invalid(with(events_agg("w", "x", AggregateFn::kMean, 10, 11)), "min_periods above N");
  expect_invalid(with(events_agg("w", "x", AggregateFn::kMean, 10, 0, 1)), "ddof on a mean");
  expect_invalid(with(events_agg("w", "x", AggregateFn::kVariance, 10, 0, 2)), "ddof 2");
  expect_invalid(with(events_agg("w", "x", AggregateFn::kDistinctCount, 10)), "distinct_count of 10 events");
  expect_invalid(with(events_agg("w", "", AggregateFn::kLastN, 10)), "last_n without a source");
  AggregateSpec timed = events_agg("w", "x", AggregateFn::kSum, 10);
  timed.window_ms = 60'000;
  expect_invalid(with(timed), "a count window with a time window");
  AggregateSpec first = agg("w", "x", AggregateFn::kFirst, 60'000);
  expect_invalid(with(first), "first over a time window");
  AggregateSpec min_periods = agg("w", "x", AggregateFn::kSum, 60'000);
  min_periods.min_periods = 2;
  expect_invalid(with(min_periods), "min_periods on a time window");
  // Only count windows: the lateness defaults to an hour and may reach 30 days.
  TableSpec only = with(events_agg("w", "x", AggregateFn::kSum, 10));
  EXPECT_EQ(only.lateness_ms(), 3'600'000);
  only.allowed_lateness_ms = 30LL * 86'400'000;
  expect_valid(only, "30 days of lateness with a count window");
}

TEST(AggregateSchema, ValidateRefusesBadWindows) {
  auto with = [](AggregateSpec a) {
    TableSpec t = one_field_table();
    t.aggregates.push_back(std::move(a));
    return t;
  };
  expect_invalid(with(agg("s", "x", AggregateFn::kSum, 10'000, 3000)), "window not a multiple of the resolution");
  expect_invalid(with(agg("s", "x", AggregateFn::kSum, 3'600'000, 100)), "36000 buckets");
  expect_invalid(with(agg("s", "x", AggregateFn::kSum, 4'097'000, 1000)), "4097 buckets");
  expect_invalid(with(agg("s", "x", AggregateFn::kSum, 500)), "window under 1 s");
  expect_invalid(with(agg("s", "x", AggregateFn::kSum, 31LL * 86'400'000)), "window over 30 d");
  expect_invalid(with(agg("s", "", AggregateFn::kSum, 10'000)), "sum without a source");
  expect_invalid(with(agg("x", "y", AggregateFn::kSum, 10'000)), "aggregate named like a field");
  {
    TableSpec t = with(agg("s", "x", AggregateFn::kSum, 10'000));
    t.aggregates.push_back(agg("s", "x", AggregateFn::kMax, 10'000));
    expect_invalid(t, "aggregate declared twice");
  }
  {
    TableSpec t = with(agg("s", "x", AggregateFn::kSum, 10'000));
    t.allowed_lateness_ms = 20'000;
    expect_invalid(t, "lateness over the longest window");
  }
  {
    TableSpec t = with(agg("s", "x", AggregateFn::kSum, 10'000));
    t.allowed_lateness_ms = 5000;
    t.dedup_horizon_ms = 1000;
    expect_invalid(t, "dedup horizon under the lateness");
  }
  expect_valid(with(agg("s", "x", AggregateFn::kSum, 4'096'000, 1000)), "exactly 4096 buckets");
  expect_valid(with(agg("c", "", AggregateFn::kCount, 1000)), "count without a source, 1 s");
  expect_valid(with(agg("s", "x", AggregateFn::kMean, 30LL * 86'400'000)), "30 d, default resolution");
  expect_invalid(with(agg("d", "x", AggregateFn::kDistinctCount, 10'000)), "distinct_count of a float64 field");
  expect_invalid(with(agg("d", "", AggregateFn::kDistinctCount, 10'000)), "distinct_count without a source");
  expect_valid(with(agg("d", "member", AggregateFn::kDistinctCount, 10'000)), "distinct_count of an event member");
  {
    TableSpec t = one_field_table();
    t.fields.push_back({"country", FieldType::kString, 2});
    t.fields.push_back({"n", FieldType::kInt64, 1});
    t.fields.push_back({"b", FieldType::kBool, 1});
    for (const char* f : {"country", "n", "b"})
      t.aggregates.push_back(agg(std::string("d_") + f, f, AggregateFn::kDistinctCount, 10'000));
    expect_valid(t, "distinct_count of string, int64 and bool fields");
    t.aggregates.push_back(agg("s", "country", AggregateFn::kSum, 10'000));
    expect_invalid(t, "sum of a string field");
  }
}

// resolution_ms 0 picks the default; a negative width is not a bucket width.
TEST(AggregateSchema, ValidateRefusesNegativeResolution) {
  TableSpec t = one_field_table();
  t.aggregates.push_back(agg("s", "x", AggregateFn::kSum, 10'000, -1000));
  expect_invalid(t, "negative resolution");
}

TEST(AggregateSchema, DefaultsSourcesAndOutputFields) {
  EXPECT_EQ(layout::default_resolution_ms(3'600'000), 60'000);
  EXPECT_EQ(layout::default_resolution_ms(86'400'000), 1'440'000);
  EXPECT_EQ(layout::default_resolution_ms(5000), 50);
  EXPECT_EQ(layout::default_resolution_ms(1000), 10);
  EXPECT_EQ(layout::default_resolution_ms(90'000), 1500);
  for (int64_t w = 1000; w <= 200'000; w += 500) {
    ASSERT_EQ(layout::default_resolution_ms(w), testing::reference_default_resolution(w)) << w;
  }

  const TableSpec t = wide_table();
  const std::vector<layout::FieldSpec> all = t.all_fields();
  ASSERT_EQ(all.size(), t.fields.size() + t.aggregates.size());
  for (size_t i = 0; i < t.aggregates.size(); ++i) {
    const layout::FieldSpec& f = all[t.fields.size() + i];
    EXPECT_EQ(f.name, t.aggregates[i].name);
    const bool integer = t.aggregates[i].fn == AggregateFn::kCount || t.aggregates[i].fn == AggregateFn::kDistinctCount;
    EXPECT_EQ(f.type, integer ? FieldType::kInt64 : FieldType::kFloat64) << f.name;
  }
  EXPECT_EQ(t.resolution_of(t.aggregates.back()), 10);  // latency_mean_1s
  EXPECT_EQ(t.lateness_ms(), 10'000);
  EXPECT_EQ(t.dedup_ids(), 65'536u);
  EXPECT_EQ(t.dedup_horizon(), 10'000);
  EXPECT_EQ(tight_table().dedup_horizon(), 6000);
  EXPECT_EQ(one_field_table().dedup_ids(), 0u);

  AggregateFn fn{};
  for (auto [text, want] :
       std::vector<std::pair<const char*, AggregateFn>>{{"count", AggregateFn::kCount},
                                                        {"avg", AggregateFn::kMean},
                                                        {"var", AggregateFn::kVariance},
                                                        {"std", AggregateFn::kStddev},
                                                        {"last", AggregateFn::kLast},
                                                        {"distinct_count", AggregateFn::kDistinctCount},
                                                        {"distinct", AggregateFn::kDistinctCount}}) {
    EXPECT_TRUE(layout::parse_aggregate_fn(text, &fn)) << text;
    EXPECT_EQ(fn, want) << text;
  }
  EXPECT_FALSE(layout::parse_aggregate_fn("median", &fn));

  Harness h(t, "api", 0, {});
  EXPECT_EQ(h.writer().source_index(0, "amount"), 0);  // order of first use
  EXPECT_EQ(h.writer().source_index(0, "latency"), 1);
  EXPECT_EQ(h.writer().source_index(0, "tag"), -1);
  EXPECT_EQ(h.writer().source_index(0, ""), -1);
  EXPECT_EQ(h.writer().source_index(5, "amount"), -1);
  EXPECT_NE(event_id_hash(""), 0u);
  EXPECT_NE(event_id_hash("x"), 0u);
  EXPECT_NE(event_id_hash("x"), event_id_hash("y"));
  // Unknown source index: kInvalid, nothing applied.
  const SourceValue bad[] = {{7, 1.0}};
  EXPECT_EQ(h.writer().apply(0, "k", kBaseMs, {}, bad, 0, ns(kBaseMs)), ApplyResult::kInvalid);
  EXPECT_EQ(h.status("k"), Status::kNotFound);
}

}  // namespace
}  // namespace larder

int main(int argc, char** argv) {
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a.starts_with("--seed=")) {
      larder::aggregate_test::seed_flag = std::strtoull(argv[i] + 7, nullptr, 10);
      continue;
    }
    args.push_back(argv[i]);
  }
  int n = static_cast<int>(args.size());
  args.push_back(nullptr);
  ::testing::InitGoogleTest(&n, args.data());
  return RUN_ALL_TESTS();
}

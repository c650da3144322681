// Schemas: what the writer is asked to create, and how it maps to bytes.
//
// A Schema is a list of tables; a table has a key length limit, a capacity in
// live keys and typed fields. plan_layout() turns a Schema into the offsets of
// every structure in the segment; it is the only place that decides them, so
// the writer, `larderctl size` and the docs agree.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "larder/layout/format.h"

namespace larder::layout {

struct FieldSpec {
  std::string name;
  FieldType type = FieldType::kFloat64;
  uint32_t count = 1;  // dimensions for kFloat32Vector, max bytes for kString
  // The field group (docs/segment-format.md#field-groups); "" is the group
  // named kDefaultGroup once any field of the table names a group.
  std::string group;
  // Schema changes by a generation switch (docs/operations.md, "Schema
  // changes"); neither is part of the layout or the fingerprint.
  // default_value: the value, as text, that every row carried from the
  // previous generation takes for this field when that generation has no
  // field of this name (the row then holds it as valid); unset, such a field
  // starts not valid. A vector's is its numbers separated by commas.
  std::optional<std::string> default_value;
  // convert_from: the field's type in the previous generation, converted as
  // each row is carried (int64 <-> float64, float32 <-> float64,
  // int64 -> string, bool -> int64).
  std::optional<FieldType> convert_from;
};

// The group of the fields that name none, in a table where others do.
inline constexpr const char* kDefaultGroup = "default";

// Windowed aggregates (docs/aggregates.md). An aggregate folds the values
// that events carry for its `source` into time buckets of `resolution_ms` and
// publishes fn over the last `window_ms` as an ordinary field of the row.
// AggregateFn and WindowEnd are stored in AggregateDescriptor (format.h).
const char* aggregate_fn_name(AggregateFn fn);
// Accepts the names ("count", "sum", "mean", "min", "max", "last",
// "variance", "stddev", "distinct_count", "last_n", "first") and the short
// forms "avg", "var", "std" and "distinct".
bool parse_aggregate_fn(std::string_view text, AggregateFn* out);

inline constexpr int64_t kMinWindowMs = 1000;                     // 1 s
inline constexpr int64_t kMaxWindowMs = 30LL * 24 * 3600 * 1000;  // 30 days
inline constexpr int64_t kMaxBucketsPerWindow = 4096;
inline constexpr size_t kMaxAggregates = 64;  // per table
// The allowed lateness of a table whose aggregates are all count windows or
// sequences, when it gives none.
inline constexpr int64_t kDefaultEventLatenessMs = 3600 * 1000;

struct AggregateSpec {
  std::string name;    // the output field
  std::string source;  // the event field it folds; "" counts every event of the key (kCount only)
  AggregateFn fn = AggregateFn::kSum;
  int64_t window_ms = 0;
  int64_t resolution_ms = 0;  // bucket width; 0 picks default_resolution_ms(window_ms)
  WindowEnd end = WindowEnd::kNow;
  std::string group;  // the output field's group, as FieldSpec::group
  // Count windows and sequences (docs/aggregates.md#count-windows): a
  // window of the key's `window_events` newest events by event time instead
  // of a time window (window_ms and resolution_ms stay 0), or the n of
  // kLastN. 1..kMaxWindowEvents.
  uint32_t window_events = 0;
  // Fewer events in the window read not valid, as pandas' min_periods.
  // 0: the default, window_events for a count window and 1 for kLastN.
  uint32_t min_periods = 0;
  // variance and stddev divide the sum of squared deviations by count - ddof
  // (0: population, the default; 1: sample, as pandas' var and std).
  uint32_t ddof = 0;

  bool counts_events() const { return window_events != 0; }
  uint32_t min_periods_or_default() const {
    return min_periods != 0 ? min_periods : (fn == AggregateFn::kLastN ? 1 : window_events);
  }
};

// The default bucket width: window / n for the smallest n >= 60 that divides
// the window into whole milliseconds (1 h -> 1 min, 24 h -> 24 min, 5 s -> 50 ms).
int64_t default_resolution_ms(int64_t window_ms);

struct TableSpec {
  std::string name;
  uint32_t key_max_len = 64;
  uint64_t capacity = 1024;       // live keys
  double max_load_factor = 0.75;  // live keys / slots; in (0, 0.95]
  std::vector<FieldSpec> fields;
  std::vector<AggregateSpec> aggregates;
  // Aggregate inputs whose event time is at least this much older than the
  // writer's clock are dropped and counted (late_dropped). 0: the longest
  // window. At most the longest window.
  int64_t allowed_lateness_ms = 0;
  // Event ids remembered to drop redelivered events (tables with aggregates
  // only). 0: max(capacity, 65536). Memory: 16 bytes per id.
  uint64_t dedup_capacity = 0;
  // How long an id is remembered, by event time. 0: the allowed lateness. At
  // least the allowed lateness, so an event too old to be checked is also too
  // old to be aggregated.
  int64_t dedup_horizon_ms = 0;
  // Chunks of the aggregate arena: how many (key, group) pairs may hold a
  // dense ring at once (format.h, "Buckets in proportion to activity").
  // 0: the default, arena_chunks_default().
  uint64_t arena_chunks = 0;

  // The row's fields: `fields`, then one per aggregate, in order.
  std::vector<FieldSpec> all_fields() const;
  // The field groups in order of first use over all_fields() (a field that
  // names none is in kDefaultGroup); empty when no field or aggregate names
  // a group, and then the table keeps the ungrouped layout.
  std::vector<std::string> group_names() const;
  // The group index of each of all_fields() (all 0 without groups).
  std::vector<uint32_t> field_groups() const;
  // resolution_ms / allowed_lateness_ms / dedup_* with defaults applied.
  int64_t resolution_of(const AggregateSpec& a) const;
  int64_t lateness_ms() const;
  // The largest allowed_lateness accepted: the longest window, or 30 days
  // when a count window or sequence is in the table.
  int64_t max_lateness_ms() const;
  uint64_t dedup_ids() const;  // 0 when the table has no aggregates
  int64_t dedup_horizon() const;
  // arena_chunks with the default applied: 0 when no group's ring is longer
  // than kInlineBuckets, else max(16, 1% of capacity per such group).
  uint64_t arena_chunk_count() const;
};

// Most arena chunks a table may declare (TableDescriptor::arena_chunks is 32-bit).
inline constexpr uint64_t kMaxArenaChunks = 0xffffffffULL;

struct Schema {
  std::vector<TableSpec> tables;

  // Throws Error(kInvalidArgument) naming the table/field and the problem.
  void validate() const;
  // XXH3 of a canonical text of every table and field, including capacities:
  // two schemas with the same fingerprint produce the same layout.
  uint64_t fingerprint() const;
};

const char* field_type_name(FieldType type);
// Parses "int64", "float64", "float32", "bool", "vector" and "string".
bool parse_field_type(std::string_view text, FieldType* out);
// True for names of [A-Za-z0-9_.-], 1..63 bytes, not starting with '.' or '-'.
bool valid_identifier(std::string_view name);

struct FieldPlan {
  uint32_t offset = 0;
  uint32_t bytes = 0;
};

// Where one table's aggregate state lives: per slot, a state block of
// `stride_words` words that only the writer reads (word map in format.h).
struct AggregatePlan {
  struct Window {
    int64_t window_ms = 0;
    int64_t buckets = 0;  // window / resolution
    WindowEnd end = WindowEnd::kNow;
    uint32_t offset = 0;  // words into the slot's state block
  };
  struct Group {  // the aggregates of one (source, resolution): one ring of buckets
    std::string source;
    int64_t resolution_ms = 0;
    int64_t ring_buckets = 0;  // the longest window of the group / resolution
    bool sum = false, sumsq = false, min = false, max = false, last = false;  // sumsq: M2 is kept
    bool distinct = false;         // some distinct_count: the group has a distinct area
    uint32_t bucket_words = 0;     // tag, count, then one word per statistic of stats()
    uint32_t offset = 0;           // words into the slot's state block: group header
    uint32_t ring_offset = 0;      // words: first bucket
    uint32_t inline_buckets = 0;   // min(ring, kInlineBuckets): the ring is sparse when it is longer
    uint32_t distinct_offset = 0;  // words: the distinct area (format.h), when `distinct`
    int64_t slice_buckets = 0;     // buckets per sketch slice, when `distinct`
    std::vector<Window> windows;

    // Whether the ring may be sparse and then need an arena chunk.
    bool sparse() const { return ring_buckets > inline_buckets; }
    // Words of the dense ring kept in an arena chunk.
    uint32_t chunk_words() const {
      return sparse() ? static_cast<uint32_t>(ring_buckets - inline_buckets) * bucket_words : 0;
    }
    // The kBucket* statistics the group's buckets keep (format.h).
    uint32_t stats() const {
      return (sum ? kBucketSum : 0) | (sumsq ? kBucketM2 : 0) | (min ? kBucketMin : 0) | (max ? kBucketMax : 0);
    }
  };
  struct Output {
    uint32_t field = 0;   // index into all_fields()
    uint32_t group = 0;   // into groups, or into event_stores for a count window or sequence
    uint32_t window = 0;  // index into the group's windows
    AggregateFn fn = AggregateFn::kSum;
    uint32_t events = 0;       // the N of a count window or the n of last_n; 0: a time window
    uint32_t min_periods = 0;  // with `events`: fewer events read not valid
    uint32_t ddof = 0;         // variance and stddev
  };
  // The newest events of one source, for its count windows and sequences
  // (format.h, "Event store").
  struct EventStore {
    std::string source;     // "" for a count of every event
    uint32_t capacity = 0;  // the largest N or n over its aggregates
    uint32_t offset = 0;    // words into the slot's state block
  };
  std::vector<std::string> sources;  // distinct non-empty sources, in order of first use
  std::vector<Group> groups;
  std::vector<EventStore> event_stores;
  std::vector<Output> outputs;
  uint32_t hot_words = 0;      // slot header, then every group's header and windows
  uint32_t stride_words = 0;   // 0 when the table has no aggregates
  uint32_t journal_words = 0;  // most state words one event or refresh can change
  uint32_t chunk_words = 0;    // arena chunk: the largest chunk_words() of a group (0: no group is sparse)
  uint32_t sparse_groups = 0;  // groups that may need a chunk
};
AggregatePlan plan_aggregates(const TableSpec& table);
// The hooks of plan_aggregates for count windows and sequences
// (aggregate_events_plan.cc): adds a's output and its source's event store;
// then, once every time group is placed, places the stores at *at, adding
// the words one event may change to *journal.
void plan_event_output(const TableSpec& table, const AggregateSpec& a, AggregatePlan& p);
void place_event_stores(AggregatePlan& p, uint32_t* at, uint32_t* journal);

struct TablePlan {
  uint64_t slot_count = 0;
  uint32_t slot_bytes = 0;
  uint32_t row_bytes = 0;
  uint32_t validity_words = 0;
  uint32_t key_words = 0;
  uint64_t fields_offset = 0;
  uint64_t slots_offset = 0;
  uint64_t slots_bytes = 0;
  std::vector<FieldPlan> fields;
  uint64_t aggregates_offset = 0;  // AggregateDescriptor[aggregates.size()]
  uint64_t state_offset = 0;       // aggregate state, slot_count * stride
  uint64_t state_bytes = 0;
  uint64_t dedup_offset = 0;  // dedup set: dedup_buckets * kDedupBucketBytes
  uint64_t dedup_buckets = 0;
  uint64_t arena_offset = 0;  // aggregate arena: header, then arena_chunks * chunk_words words
  uint64_t arena_chunks = 0;
  uint64_t arena_bytes = 0;
  AggregatePlan aggregates;
  uint32_t group_count = 0;            // field groups; 0: none (no group time words)
  uint64_t groups_offset = 0;          // GroupDescriptor[group_count]
  std::vector<uint32_t> field_groups;  // per field of all_fields()
};

struct LayoutPlan {
  uint64_t header_bytes = kSegmentHeaderBytes;
  uint64_t undo_offset = 0;
  uint64_t undo_bytes = 0;
  uint64_t journal_offset = 0;  // JournalEntry[journal_capacity]
  uint64_t journal_capacity = 0;
  uint64_t source_offset = 0;  // SourceBlock
  uint64_t segment_bytes = 0;
  std::vector<TablePlan> tables;
};

// Deterministic for a given (validated) schema.
LayoutPlan plan_layout(const Schema& schema);

// Bytes a field of this type and count occupies in a row, and its alignment.
uint32_t field_bytes(FieldType type, uint32_t count);
uint32_t field_align(FieldType type);

}  // namespace larder::layout

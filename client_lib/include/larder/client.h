// Larder client: read features from a shared-memory segment, with no network
// hop. This header and larder/larder.h (the C ABI) are the whole public
// surface of the client library.
//
//   auto seg = larder::Segment::open("features");          // throws larder::Error
//   larder::Table users = seg.table("users");
//   larder::Field spend = users.field("spend_1h", larder::FieldType::kFloat64);
//   larder::Row row = users.make_row();                      // allocate once
//   larder::ReadResult r = users.get("user:42", row, {.max_age_ms = 5000, .age_of = larder::AgeOf::kComputed});
//   if (r.ok() && row.valid(spend)) use(row.f64(spend), r.computed_age_ms());
//
// Threading: Segment, Table and Field are safe to share between threads (a
// Table moves to a new segment generation on its own, docs/client.md,
// "Generations"). A Row or RowBatch is a caller-owned buffer: one per
// thread (or per request).
//
// The read path (get, get_many and the Row accessors) never throws, never
// allocates, never takes a lock and never writes to shared memory: the
// segment is mapped read-only.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "larder/layout/error.h"
#include "larder/layout/format.h"
#include "larder/layout/table_view.h"

namespace larder {

using layout::ConnectionState;
using layout::FieldType;
using layout::SegmentState;
using layout::SyncState;

enum class Status : uint8_t {
  kOk = 0,          // found; the row buffer holds it
  kNotFound = 1,    // no such key (never written, or deleted)
  kStale = 2,       // found, but older than ReadOptions::max_age_ms; row filled
  kBusy = 3,        // the slot stayed mid-write for max_retries; try again
                    // (a writer killed mid-update until it restarts)
  kInvalidKey = 4,  // longer than the table's key_max_len
  kCorrupt = 5,     // the slot was read consistently but holds a value outside
                    // the table's schema (a string length above its max_len,
                    // a key length above key_max_len): the row buffer must not
                    // be used. Other rows are unaffected.
};
const char* status_name(Status s) noexcept;

struct ClientOptions {
  // Directory holding the segment (a tmpfs: /dev/shm, or a volume mount).
  std::string dir = "/dev/shm";
  // Seqlock retries on one slot before a read returns kBusy.
  uint32_t max_retries = 256;
  // When non-zero, open() fails with kSchemaMismatch unless the segment's
  // schema fingerprint equals this.
  uint64_t expected_schema_fingerprint = 0;
};

// The instant a read's age counts from (docs/client.md, "Two ages").
enum class AgeOf : uint8_t {
  kEvent = 0,     // the newest event applied to the row: ReadResult::event_time_ms
  kComputed = 1,  // when the writer last brought the row's values up to date: ReadResult::computed_at_ms
};

// A bound on the age of one field group of a row (ReadOptions::group_max_age).
struct GroupMaxAge {
  uint32_t group = 0;  // Group::index (Table::group); a bound on a group the table lacks is ignored
  int64_t max_age_ms = 0;
};

struct ReadOptions {
  // When > 0, a row older than this (by age_of) returns kStale.
  int64_t max_age_ms = 0;
  // kEvent bounds how long ago the key last had an event: a quiet key goes
  // stale. kComputed bounds how current the values are: windowed aggregates
  // the writer keeps decaying stay fresh while the writer runs, and go stale
  // once it stops.
  AgeOf age_of = AgeOf::kEvent;
  // Tables with field groups: a row any of whose listed groups is older than
  // its bound returns kStale (a group never written counts as infinitely
  // old). The row's own max_age_ms above applies to its newest group.
  std::span<const GroupMaxAge> group_max_age = {};
};

// Wall clock in milliseconds, the clock event times are compared against.
int64_t now_unix_ms() noexcept;

// a - b, clamped to the int64 range: times read from a segment are
// untrusted, and their difference with the clock must not overflow.
constexpr int64_t saturating_sub(int64_t a, int64_t b) noexcept {
  int64_t d;
  if (__builtin_sub_overflow(a, b, &d)) return b < 0 ? INT64_MAX : INT64_MIN;
  return d;
}

struct ReadResult {
  Status status = Status::kNotFound;
  int64_t event_time_ms = 0;  // newest event applied to the row (kOk, kStale)
  int64_t apply_unix_ns = 0;  // when the writer applied it
  // When the row's values were last brought up to date (kOk, kStale): for a
  // table with aggregates, the later of the apply time and the instant as of
  // which the writer had refreshed every key's windows; for a table without,
  // the apply time (docs/client.md, "Two ages").
  int64_t computed_at_ms = 0;

  bool ok() const noexcept { return status == Status::kOk; }
  bool found() const noexcept { return status == Status::kOk || status == Status::kStale; }
  // Age of the data: now - event time (clamped to the int64 range).
  int64_t age_ms(int64_t now_ms) const noexcept { return saturating_sub(now_ms, event_time_ms); }
  int64_t age_ms() const noexcept { return age_ms(now_unix_ms()); }
  // Age of the computation: now - computed_at_ms (clamped likewise).
  int64_t computed_age_ms(int64_t now_ms) const noexcept { return saturating_sub(now_ms, computed_at_ms); }
  int64_t computed_age_ms() const noexcept { return computed_age_ms(now_unix_ms()); }
  // The age ReadOptions::age_of names.
  int64_t age_ms(AgeOf of, int64_t now_ms) const noexcept {
    return of == AgeOf::kComputed ? computed_age_ms(now_ms) : age_ms(now_ms);
  }
};

// A resolved field: resolve once by name, then use on every read.
struct Field {
  uint32_t index = 0;
  FieldType type = FieldType::kInt64;
  uint32_t count = 1;   // vector dimensions, string max length
  uint32_t offset = 0;  // inside the row payload
  std::string_view name;
  bool aggregate = false;  // written by the writer from a windowed aggregate
  uint32_t group = 0;      // its field group's index (0 when the table has none)
};

// A field group of a table (docs/client.md#field-groups): fields with their
// own event time, last write wins and age. Resolve once with Table::group.
struct Group {
  uint32_t index = 0;
  std::string_view name;  // NUL-terminated; valid while a Table of the segment is open
  uint32_t word = 0;      // where its event time sits in a row buffer
};

class Table;

// A caller-owned copy of one row. Accessors read the copy, not shared memory.
// Typed accessors expect the field's type (checked in debug builds); as_f64
// converts any scalar. A field that was never written reads as zero and
// valid() says false.
class RowView {
 public:
  RowView() = default;
  RowView(const uint64_t* words, uint32_t validity_words, uint32_t key_words)
      : words_(words), validity_words_(validity_words), key_words_(key_words) {}

  int64_t event_time_ms() const noexcept { return static_cast<int64_t>(words_[0]); }
  int64_t apply_unix_ns() const noexcept { return static_cast<int64_t>(words_[1]); }
  // The stored key length is clamped to the key words the row has, so even a
  // corrupted row never yields a view past its buffer (Table::check_row
  // reports such a row as kCorrupt).
  std::string_view key() const noexcept {
    const size_t len = static_cast<size_t>(words_[2] & 0xffffffffu);
    const size_t room = size_t{key_words_} * 8;
    return {reinterpret_cast<const char*>(words_ + 3 + validity_words_), len <= room ? len : room};
  }
  bool valid(const Field& f) const noexcept { return (words_[3 + f.index / 64] >> (f.index % 64)) & 1u; }

  int64_t i64(const Field& f) const noexcept { return load<int64_t>(f); }
  double f64(const Field& f) const noexcept { return load<double>(f); }
  float f32(const Field& f) const noexcept { return load<float>(f); }
  bool boolean(const Field& f) const noexcept { return load<uint8_t>(f) != 0; }
  std::span<const float> vector(const Field& f) const noexcept {
    return {reinterpret_cast<const float*>(payload() + f.offset), f.count};
  }
  std::string_view string(const Field& f) const noexcept {
    uint32_t len = load<uint32_t>(f);
    return {reinterpret_cast<const char*>(payload() + f.offset + 4), len <= f.count ? len : f.count};
  }
  // Any scalar as double (bool: 0 or 1; vectors and strings: NaN).
  double as_f64(const Field& f) const noexcept;

  // The newest event time applied to a field group of the row (an update of
  // its fields, or a delete that cleared them); layout::kNoGroupTime
  // (INT64_MIN) when none was. Requires a Group of this row's table.
  int64_t group_event_time_ms(const Group& g) const noexcept { return static_cast<int64_t>(words_[g.word]); }
  // now - the group's event time, clamped: INT64_MAX for a group never written.
  int64_t group_age_ms(const Group& g, int64_t now_ms) const noexcept {
    return saturating_sub(now_ms, group_event_time_ms(g));
  }
  int64_t group_age_ms(const Group& g) const noexcept { return group_age_ms(g, now_unix_ms()); }

 private:
  const unsigned char* payload() const noexcept {
    return reinterpret_cast<const unsigned char*>(words_ + 3 + validity_words_ + key_words_);
  }
  template <class T>
  T load(const Field& f) const noexcept {
    T v;
    std::memcpy(&v, payload() + f.offset, sizeof(T));
    return v;
  }

  const uint64_t* words_ = nullptr;
  uint32_t validity_words_ = 0;
  uint32_t key_words_ = 0;
};

// A buffer for one row of one table. Make it with Table::make_row().
class Row : public RowView {
 public:
  Row() = default;
  uint64_t* data() noexcept { return buffer_.data(); }
  size_t words() const noexcept { return buffer_.size(); }

 private:
  friend class Table;
  Row(size_t words, uint32_t validity_words, uint32_t key_words);
  std::vector<uint64_t> buffer_;
};

// Buffers for a batch of rows of one table. Make it with Table::make_batch().
class RowBatch {
 public:
  RowBatch() = default;
  size_t capacity() const noexcept { return capacity_; }
  RowView row(size_t i) const noexcept { return RowView(buffer_.data() + i * row_words_, validity_words_, key_words_); }
  uint64_t* row_data(size_t i) noexcept { return buffer_.data() + i * row_words_; }

 private:
  friend class Table;
  RowBatch(size_t capacity, size_t row_words, uint32_t validity_words, uint32_t key_words);
  std::vector<uint64_t> buffer_;
  size_t capacity_ = 0;
  size_t row_words_ = 0;
  uint32_t validity_words_ = 0;
  uint32_t key_words_ = 0;
};

struct TableStats {
  uint64_t capacity = 0;
  uint64_t slot_count = 0;
  uint64_t live_keys = 0;
  uint64_t tombstones = 0;
  uint64_t upserts = 0;
  uint64_t deletes = 0;
  uint64_t stale_ignored = 0;
  uint64_t full_rejected = 0;
  int64_t last_apply_unix_ns = 0;
  int64_t max_event_time_ms = 0;
  // Tables with aggregates (docs/aggregates.md).
  uint32_t aggregates = 0;
  uint64_t aggregate_events = 0;  // events folded into aggregates
  uint64_t late_dropped = 0;      // aggregate inputs older than the allowed lateness
  uint64_t outside_window = 0;    // inputs within the lateness whose bucket had left every window
  uint64_t duplicates = 0;        // events ignored because their id was seen
  uint64_t dedup_evictions = 0;   // ids forgotten inside their horizon (dedup set too small)
  uint64_t refreshes = 0;         // keys rewritten because a bucket left a window
  int64_t aggregate_clock_ms = 0;
  // Every key's aggregates are exact as of this aggregate clock instant; it
  // stops when the writer does (0: not yet known, or an older writer).
  int64_t refreshed_through_ms = 0;
};

struct SegmentInfo {
  SegmentState state = SegmentState::kCreating;
  ConnectionState connection = ConnectionState::kUnknown;
  uint32_t layout_version = 0;
  uint64_t schema_fingerprint = 0;
  uint64_t segment_bytes = 0;
  uint64_t generation = 0;
  uint64_t writer_pid = 0;        // 0: no writer attached
  int64_t heartbeat_age_ms = -1;  // -1: never
  uint64_t writer_sessions = 0;
  uint64_t repaired_slots = 0;
  uint64_t updates_applied = 0;
  uint64_t messages_rejected = 0;
  int64_t last_apply_unix_ns = 0;
  int64_t created_unix_ns = 0;
};

// Where the segment stands in the log it is built from (SourceBlock), as its
// writer last stored it.
struct SyncInfo {
  layout::SyncState state = layout::SyncState::kUnknown;
  std::string source_id;
  struct Partition {
    uint32_t partition = 0;
    std::optional<uint64_t> next_offset;     // the first message not wholly applied
    uint32_t skip_updates = 0;               // updates of message next_offset already applied
    std::optional<uint64_t> target;          // CATCHING_UP: the offset replay must reach
    std::optional<uint64_t> first_retained;  // INCOMPLETE: the first offset the log still holds
  };
  std::vector<Partition> partitions;  // those with a position, target or first_retained
  int64_t changed_unix_ns = 0;        // when state last changed
};

struct Mapping;          // the read-only mapping, shared by a Segment and its Tables
struct TableFollow;      // a Table's generations (client.cc)
struct TableGeneration;  // one generation of a table, as a Table reads it

class Table {
 public:
  Table() = default;

  const std::string& name() const noexcept { return name_; }
  uint32_t key_max_len() const noexcept { return geo_.key_max_len; }
  const std::vector<Field>& fields() const noexcept { return fields_; }
  // Throws Error(kNotFound) naming the table and the fields it has.
  Field field(std::string_view name) const;
  // As above, and Error(kSchemaMismatch) when the field has another type.
  Field field(std::string_view name, FieldType expected) const;
  // The field groups, in the segment's order; empty for a table without.
  const std::vector<Group>& groups() const noexcept { return groups_; }
  // Throws Error(kNotFound) naming the table and the groups it has.
  Group group(std::string_view name) const;

  Row make_row() const;
  RowBatch make_batch(size_t capacity) const;
  // Words (8 bytes each) of one row buffer, for callers that manage their own
  // buffers (the C ABI, language bindings); view() reads such a buffer.
  size_t row_words() const noexcept { return geo_.copy_words(); }
  RowView view(const uint64_t* row) const noexcept { return RowView(row, geo_.validity_words, geo_.key_words); }

  // Looks `key` up and copies its row into `out` (a row of this table).
  // Lock-free. Never allocates. Never blocks on the writer: at most
  // max_retries retries on a slot being written, then kBusy.
  ReadResult get(std::string_view key, Row& out, const ReadOptions& options = {}) const noexcept;

  // Looks up keys[i] into out.row(i) and results[i], for i < keys.size(),
  // prefetching slots ahead. Requires keys.size() <= out.capacity() and
  // <= results.size(). Same promises as get().
  void get_many(std::span<const std::string_view> keys, RowBatch& out, std::span<ReadResult> results,
                const ReadOptions& options = {}) const noexcept;

  // The same reads into caller-managed buffers of row_words() words each
  // (rows[i * row_words()] for key i). Same promises as get().
  ReadResult get(std::string_view key, uint64_t* row, const ReadOptions& options = {}) const noexcept;
  void get_many(std::span<const std::string_view> keys, uint64_t* rows, std::span<ReadResult> results,
                const ReadOptions& options = {}) const noexcept;

  TableStats stats() const noexcept;

  // kOk when a row buffer's stored lengths fit the table's schema (key length
  // 1..key_max_len, every string length <= its max_len), else kCorrupt. get
  // and get_many apply it to every row they return; larderctl applies it to
  // rows it reads slot by slot. Only meaningful for a consistent (seqlock
  // validated) copy: a torn copy is retried, never judged.
  Status check_row(const uint64_t* row) const noexcept;

  // For larderctl and tests: raw geometry of the generation read now.
  uint64_t slot_count() const noexcept;
  // The segment generation this table reads now (SegmentInfo::generation):
  // it moves on when the writer publishes a new one (docs/client.md,
  // "Generations").
  uint64_t generation() const noexcept;

 private:
  friend class Segment;
  ReadResult lookup(const TableGeneration& g, std::string_view key, uint64_t hash, uint64_t* out, int64_t now_ms,
                    int64_t refreshed_ms, const ReadOptions& options) const noexcept;
  // The generation to read: the current one, or, when the writer retired it,
  // the next one (mapped by the first lookup that sees the retirement).
  const TableGeneration& generation_to_read() const noexcept;
  const TableGeneration* follow() const noexcept;
  // The table's refreshed-through instant, loaded before the rows it is
  // applied to; 0 for a table without aggregates.
  static int64_t refreshed_through_ms(const TableGeneration& g) noexcept;

  std::shared_ptr<TableFollow> follow_;
  // The layout of the rows this table returns: the generation it was opened
  // on. Fields and groups keep their places in it across generations.
  layout::TableGeometry geo_;
  std::string name_;
  std::vector<Field> fields_;
  std::vector<std::string> field_names_;
  std::vector<Group> groups_;
  // Byte offsets (from the row buffer's start) and max lengths of the string
  // fields, the per-row lengths check_row compares; empty for most tables.
  struct StringBound {
    uint32_t offset = 0;
    uint32_t max_len = 0;
  };
  std::vector<StringBound> string_bounds_;
  uint32_t max_retries_ = 0;
};

class Segment {
 public:
  // Maps the segment `name` read-only. Throws Error: kInvalidArgument (bad
  // name), kNotFound (no segment: is the sidecar running, is dir right?),
  // kPermissionDenied (mode/group), kVersionMismatch (names both versions),
  // kSchemaMismatch, kNotReady (still being created), kCorrupt.
  static Segment open(std::string_view name, const ClientOptions& options = {});

  Segment() = default;
  const std::string& name() const noexcept { return name_; }
  std::vector<std::string> table_names() const;
  // The same without allocating: table_name(i) for i < table_count(), empty
  // beyond (names are validated non-empty at open).
  uint32_t table_count() const noexcept;
  std::string_view table_name(uint32_t index) const noexcept;
  // Throws Error(kNotFound) naming the tables the segment has.
  Table table(std::string_view name) const;

  SegmentInfo info() const noexcept;
  // True when a writer is attached and its heartbeat is younger than the bound.
  bool writer_alive(int64_t max_heartbeat_age_ms = 1000) const noexcept;
  // True once a newer segment replaced this one: open the name again.
  bool retired() const noexcept;

  // How complete the segment is (SourceBlock::sync_state). Lock-free, never
  // allocates: cheap enough to check before every read.
  layout::SyncState state() const noexcept;
  // The state with the source id and every partition's position. Allocates.
  SyncInfo sync() const;

 private:
  std::shared_ptr<const Mapping> mapping_;
  std::string name_;
  ClientOptions options_;
};

}  // namespace larder

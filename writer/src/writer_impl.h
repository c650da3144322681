// The writer's state: the mapping, one TableState per table, the aggregate
// journal and clock. Internal to larder::writer.
//
// Threading: a Writer::Impl is used by one thread only (writer.h), so none of
// its own members need synchronisation. What it shares with readers lives in
// the mapping and is written through sync.h: slots under their seqlock
// (row_write.h), counters and header words relaxed, the publication words
// (state, writer_pid, undo_armed, journal_armed) release.
//
// Where things are:
//   writer.cc          the public API: open, lookups, apply dispatch, stats
//   segment_create.cc  the lock file, creating a segment, attaching to one
//   repair.cc          restoring what a killed writer left half-done
//   table.h            probing a table, choosing a slot for a new key
//   row_write.h        the one routine that writes a row into a slot
//   update.cc          upsert, aggregated apply, delete
//   upsert_many.cc     a batch of upserts with the next keys' slots prefetched
//   aggregate.h/.cc    the aggregate engine and its journal
//   maintenance.cc     refresh of aggregates, tombstone reclaim, heartbeat
//   source.cc          source positions (the pending record), source id, sync state
//   restore.cc         copy_image, and restore: building a segment from an image
//   generation.cc      the generation switch: growth and schema changes while serving
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <queue>
#include <span>
#include <string>
#include <vector>

#include "aggregate.h"
#include "larder/layout/format.h"
#include "larder/layout/schema.h"
#include "larder/layout/segment_file.h"
#include "larder/layout/sync.h"
#include "larder/layout/table_view.h"
#include "larder/writer/writer.h"

namespace larder::writer {

class Pager;  // pager.h

// No slot.
inline constexpr uint64_t kNone = ~uint64_t{0};

// Counters in the segment: only the writer changes them, readers load them
// on their own, so a relaxed load and store is the whole increment.
inline void bump(layout::Word& w, uint64_t by = 1) {
  layout::sync::store_relaxed(w, layout::sync::load_relaxed(w) + by);
}

[[noreturn]] inline void throw_errno(ErrorCode code, const std::string& what) {
  throw Error(code, what + ": " + std::strerror(errno));
}

// Fill the descriptors of table `t` of `schema` as planned (segment_create.cc):
// creation writes them into a new segment, restore compares an image's
// against them.
void fill_table_descriptor(layout::TableDescriptor* d, const layout::TableSpec& spec, const layout::TablePlan& tp,
                           size_t field_count, uint64_t hash_seed);
void fill_field_descriptor(layout::FieldDescriptor* out, const layout::FieldSpec& fs, const layout::FieldPlan& fp,
                           size_t index, bool aggregate, uint32_t group);
void fill_group_descriptor(layout::GroupDescriptor* out, const std::string& name);
void fill_aggregate_descriptor(layout::AggregateDescriptor* out, const layout::AggregateSpec& as, size_t field);

// Points `agg` (its plan already set) at the state, dedup set and arena of
// table `d` of the segment mapped at `base`, as `spec` configures them
// (segment_create.cc): attach() does it for the segment it serves, a
// generation switch for the one it builds.
void bind_aggregates(AggregateTable& agg, char* base, const layout::TableDescriptor& d, const layout::TableSpec& spec);

// The lock file that holds a segment's single writer. validate_segment_name
// refuses names ending in ".lock", so it never collides with a segment.
std::string lock_path(std::string_view dir, std::string_view name);

}  // namespace larder::writer

namespace larder {

struct Writer::Impl {
  // One table of the segment, with a local copy of everything the writer
  // must not re-read from shared memory.
  struct TableState {
    layout::TableDescriptor* desc = nullptr;
    layout::Word* slots = nullptr;
    layout::TableGeometry geo;
    std::vector<layout::FieldDescriptor> fields;  // local copy
    uint64_t max_used = 0;                        // live + tombstones before empties are kept back
    uint64_t purge_cursor = 0;
    uint64_t due_scan = 0;         // slots below this have their due times in the heap (scan_due)
    uint32_t declared_fields = 0;  // fields an update may write; aggregate outputs follow
    uint32_t outputs_lo = 0;       // the row words [lo, hi) that hold aggregate outputs (lo >= hi: none)
    uint32_t outputs_hi = 0;
    writer::AggregateTable agg;
    // Field groups (geo.group_count > 0): a bit per group; each group's
    // validity bits (group_count x validity_words); the groups that hold
    // aggregates, those an event of every kind reaches (count without a
    // source) and those each aggregate source reaches.
    uint32_t all_groups = 0;
    std::vector<uint64_t> group_validity;
    uint32_t aggregate_groups = 0;
    uint32_t every_event_groups = 0;
    std::vector<uint32_t> source_groups;
    layout::Word* slot(uint64_t i) const { return slots + i * geo.slot_words; }
    // The group times of slot i, into times[0, group_count).
    void load_group_times(uint64_t i, int64_t* times) const {
      const layout::Word* s = slot(i);
      for (uint32_t g = 0; g < geo.group_count; ++g) {
        times[g] = static_cast<int64_t>(layout::sync::load_relaxed(s[geo.group_word_offset() + g]));
      }
    }
  };

  // A probe for one key along its chain (table.h).
  struct Probe {
    uint64_t found = writer::kNone;      // slot holding the key (live or tombstone)
    uint64_t empty = writer::kNone;      // first empty slot, ending the chain
    uint64_t tombstone = writer::kNone;  // first tombstone of another key
    uint64_t expired = writer::kNone;    // first tombstone past its retention
  };

  // What one slot write stores (row_write.h). Words it does not name keep
  // their values.
  struct RowChange {
    // The slot takes this key (insert, revive, record of a delete): the key
    // is written and the row starts from zeros with every field invalid.
    const layout::PackedKey* new_key = nullptr;
    // Fields to store and mark valid.
    std::span<const FieldValue> values;
    // A state block whose aggregate outputs are stored (value and validity).
    const layout::Word* outputs_of = nullptr;
    // The row's event and apply times.
    bool set_times = false;
    int64_t event_time_ms = 0;
    int64_t apply_unix_ns = 0;
    // The meta word (hash and state; 0 empties the slot).
    bool set_meta = false;
    uint64_t meta = 0;
    // Field groups: every group's time word (group_count values), and the
    // groups whose fields become invalid (a delete that clears them).
    const int64_t* group_times = nullptr;
    uint32_t clear_groups = 0;

    // The slot takes `key`, with `meta`.
    void take_key(const layout::PackedKey& key, uint64_t new_meta) {
      new_key = &key;
      set_meta = true;
      meta = new_meta;
    }
  };

  // A key whose aggregates must be refreshed at due_ms.
  struct Due {
    int64_t due_ms;
    uint32_t table;
    uint64_t slot;
    bool operator>(const Due& o) const { return due_ms > o.due_ms; }
  };

  std::string name;
  std::string dir;
  WriterOptions options;
  layout::Schema schema;
  int lock_fd = -1;
  std::unique_ptr<layout::MappedFile> map;
  layout::SegmentHeader* header = nullptr;
  layout::Word* undo = nullptr;
  std::vector<TableState> tables;
  std::vector<uint64_t> scratch;         // the row image being built (row_write.h)
  layout::PackedKey packed;              // the key of the update in progress
  std::vector<FieldValue> group_values;  // the values of an update its groups take (update.cc)
  bool created = false;
  bool restored = false;  // created from a snapshot image (Writer::restore)
  uint64_t repaired = 0;
  AttachReport report;

  // Source positions (source.cc). `staged`: stage_position() was called and
  // the next update stores `staged_position` with its effect. `pending_armed`:
  // the pending record is armed (state 1) for the update in progress, so
  // write_row marks it done (state 2) right after the slot's W2.
  layout::SourceBlock* source = nullptr;
  bool staged = false;
  bool pending_armed = false;
  SourcePosition staged_position;

  // Aggregates: the journal of state changes, the aggregate clock (ms, never
  // decreasing) and the keys to refresh, soonest first.
  writer::Journal journal;
  int64_t clock_ms = 0;
  std::priority_queue<Due, std::vector<Due>, std::greater<Due>> due;
  bool due_scan_pending = false;

  // A generation switch in progress (generation.cc), and its record.
  struct Switch;
  struct SwitchDeleter {
    void operator()(Switch* s) const;
  };
  std::unique_ptr<Switch, SwitchDeleter> next_gen;
  // The switch's page thread (pager.h): started by the first switch, joined
  // first thing in ~Impl, before either generation is unmapped.
  std::unique_ptr<writer::Pager> pager;
  SwitchProgress switch_record;
  int64_t grow_retry_mono_ns = 0;    // automatic growth refused: not tried again before this
  int64_t grow_request_mono_ns = 0;  // the grow request file is not looked for again before this

  ~Impl();

  // writer.cc: checks the name, schema and directory, takes the writer lock
  // and removes the leftovers of dead creators.
  static std::unique_ptr<Impl> prepare(std::string_view name, const layout::Schema& schema,
                                       const WriterOptions& options);

  // segment_create.cc
  // As options.huge_pages asks, collapses the file into 2 MiB pages where
  // it is not already. Nothing it does changes a byte of the file, and a
  // refusal of the kernel leaves 4 KiB pages (huge_pages() says so).
  void prepare_pages();
  std::unique_ptr<layout::MappedFile> build_file(const layout::Schema& of, const layout::LayoutPlan& plan,
                                                 const std::string& tmp, std::span<const uint64_t> seeds) const;
  void acquire_lock();
  void remove_leftovers();
  void create(bool replace_existing);
  void attach(bool repair_first = true);
  // repair.cc
  void repair();
  bool guarded_write_finished();
  void repair_counts(bool trusted, bool finished);
  void full_scan();
  void repair_position(bool finished);  // source.cc
  // Rebuilds the due heap from the segment after attach, `slot_budget` slots
  // at a time (maintenance.cc). due_scan_pending: some table is not scanned yet.
  void scan_due(uint64_t slot_budget);
  // restore.cc
  void restore_image(std::span<const unsigned char> image);

  // source.cc. arm_position(): before the first effect of an update, when a
  // position is staged. finish_position(): after the update, whatever its
  // result, when one is staged.
  void arm_position();
  void finish_position();
  void write_pending(const SourcePosition& p);
  void commit_pending();
  void mark_pending_done();
  void arm_if_staged() {
    if (staged) [[unlikely]]
      arm_position();
  }

  // table.h (inline: the update path)
  inline Probe probe(const TableState& ts, uint64_t hash, int64_t now_ns) const;
  inline uint64_t used(const TableState& ts) const;
  inline uint64_t choose_slot(const TableState& ts, const Probe& p, bool for_tombstone) const;
  inline uint64_t slot_for_upsert(uint32_t table, const Probe& p, bool fresh_row, uint64_t hash, int64_t now_ns);

  // row_write.h (inline: the update path)
  inline void write_row(uint32_t table, uint64_t slot, const RowChange& change);
  void write_tombstone(uint32_t table, uint64_t slot, const RowChange& change);

  // update.cc
  bool values_valid(const TableState& ts, std::span<const FieldValue> values) const;
  // `key_hash` (both): the key's hash_key when the caller has it (a batch),
  // else nullptr.
  ApplyResult upsert_plain(uint32_t table, std::string_view key, int64_t event_time_ms,
                           std::span<const FieldValue> values, int64_t apply_unix_ns,
                           const uint64_t* key_hash = nullptr);
  ApplyResult apply_aggregated(uint32_t table, std::string_view key, int64_t event_time_ms,
                               std::span<const FieldValue> values, std::span<const SourceValue> sources,
                               uint64_t event_id, int64_t apply_unix_ns, const uint64_t* key_hash = nullptr);
  ApplyResult upsert_grouped(uint32_t table, std::string_view key, int64_t event_time_ms,
                             std::span<const FieldValue> values, int64_t apply_unix_ns);
  // The groups an update at event_time_ms takes, of those it touches (times:
  // the slot's group times), and the values of those groups into group_values.
  uint32_t take_groups(const TableState& ts, std::span<const FieldValue> values, const int64_t* times,
                       int64_t event_time_ms, uint32_t* touched);
  ApplyResult remove(uint32_t table, std::string_view key, int64_t event_time_ms, int64_t apply_unix_ns);
  ApplyResult unpin(uint32_t table, std::string_view key, int64_t event_time_ms, int64_t pinned_after_ms,
                    int64_t apply_unix_ns);
  void count_upsert(TableState& ts, int64_t event_time_ms, int64_t now_ns);
  // upsert_many.cc: the steps of a batch's prefetch for writing. The key's
  // hash and its home slot's first meta lines (keeping the hash in `k`);
  // for a table with aggregates, a few updates later, the slot guessed from
  // those words and its state's headers; later still the bucket lines that
  // state points to. And the undo area.
  struct PrefetchedKey {
    uint64_t hash = 0;
    uint64_t slot = writer::kNone;  // the guessed slot (tables with aggregates)
    bool hashed = false;            // false: apply() refuses the key, or the table
  };
  static constexpr size_t kPrefetchRing = 64;  // >= Writer::kUpsertAhead + kPrefetchGroup
  void prefetch_upsert(const Upsert& u, PrefetchedKey& k) const;
  void prefetch_slot(const Upsert& u, int64_t clock, PrefetchedKey& k) const;
  void prefetch_buckets(const Upsert& u, int64_t clock, const PrefetchedKey& k) const;
  void prefetch_undo() const;
  void count_apply(TableState& ts, int64_t event_time_ms, int64_t now_ns);

  // generation.cc. switch_follow(): after an update of `key` while a switch
  // is in progress, copies its row again when the copy has passed it.
  void start_switch(const layout::Schema& next);
  void switch_follow(uint32_t table, std::string_view key);
  // The same for slot `slot`, changed by other than an update (a refresh).
  // A live row is marked to copy again at the sweep, a tombstone is logged.
  void switch_follow_slot(uint32_t table, uint64_t slot);
  // `image`: the slot's words as logged (switch_follow_slot), else read from
  // the slot.
  bool copy_to_next(uint32_t table, uint64_t slot, const uint64_t* image = nullptr);
  bool drain_follow_log();
  // Copies the marked rows of table `table` from the sweep's place on, for
  // at most `*budget` units of work (taken from it). False when abandoned.
  bool sweep_marked(uint32_t table, uint64_t* budget);
  uint64_t paced_budget(int64_t now_mono_ns, int64_t now_cpu_ns, int64_t drain_ns);
  // Writer::switch_step: `paced`, the budget is paced_budget's.
  bool step(uint64_t slot_budget, bool paced);
  void end_switch();
  bool carry_state(uint32_t table, uint64_t slot, uint64_t at, bool live);
  void prefetch_copy(uint32_t table, uint64_t slot) const;
  void prefetch_row(uint32_t table, const uint64_t* image) const;
  void publish_next();
  void fail_switch(const std::string& why);
  void maybe_grow();
  void take_grow_request();

  // maintenance.cc
  void advance_clock(int64_t now_unix_ns) {
    // WriterOptions::clock_per_update: a replay key by key; else the newest.
    clock_ms = options.clock_per_update ? now_unix_ns / 1'000'000 : std::max(clock_ms, now_unix_ns / 1'000'000);
  }
  void schedule(uint32_t table, uint64_t slot, layout::Word* block);
  bool refresh_slot(uint32_t table, uint64_t slot);
  uint64_t refresh(int64_t now_unix_ns, uint64_t key_budget);
  bool refresh_key(uint32_t table, std::string_view key, int64_t now_unix_ns);
  uint64_t purge(uint32_t table, uint64_t steps);
};

}  // namespace larder

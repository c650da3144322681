// The writer side of a segment: create or reopen it, upsert and delete rows.
//
// Threading: one Writer per segment per host, and every call on it from one
// thread (the sidecar's writer thread). Another process that tries to open a
// writer on the same segment gets Error(kWriterLocked) at once.
//
// Last write wins by event time: an upsert or delete whose event_time_ms is
// older than the row's is ignored (ApplyResult::kStale) and counted. On a tie
// the later call wins, so two messages with the same event time that set
// different fields both take effect, and a redelivered duplicate rewrites the
// same values. Deletes leave a tombstone that remembers the delete's event
// time, so an older upsert that arrives after a delete is ignored too, for as
// long as the tombstone lives (see WriterOptions::tombstone_retention_ms).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "larder/layout/error.h"
#include "larder/layout/format.h"
#include "larder/layout/schema.h"
#include "larder/layout/segment_file.h"

namespace larder {

// What the writer does for huge pages when it opens a segment
// (docs/deployment.md, "Huge pages"). Every mapping of a segment carries
// MADV_HUGEPAGE and starts on a 2 MiB boundary whatever this says.
enum class HugePages {
  // Where the directory's tmpfs is mounted huge=always, within_size or
  // advise, make every whole 2 MiB of the file a huge page: the allocation
  // does it on the first two, MADV_COLLAPSE on advise (whose fallocated
  // pages are 4 KiB). huge=never (plain /dev/shm) keeps 4 KiB pages.
  kAuto,
  // kAuto, and collapse on a huge=never mount too: MADV_COLLAPSE (Linux 6.1)
  // overrides the mount's option (not the system-wide "deny"). Costs a copy
  // of the segment at open; the pages stay huge for every reader.
  kCollapse,
  // Never collapse: the mount's allocation alone decides.
  kOff,
};

// "auto", "collapse", "off".
const char* huge_pages_name(HugePages h);

struct WriterOptions {
  // Directory of the segment file: a tmpfs such as /dev/shm or a Kubernetes
  // emptyDir with medium Memory.
  std::string dir = "/dev/shm";
  // File mode of the segment (umask does not apply). 0640 lets readers in the
  // file's group map it read-only.
  uint32_t mode = 0640;
  // A segment of this name with another schema: refuse (false) or retire it
  // and create a new one in its place (true; readers see kRetired and reopen).
  bool recreate_on_schema_change = false;
  // A tombstone whose delete was applied longer ago than this may be turned
  // back into an empty slot by maintain(). Until then a late, older upsert of
  // the deleted key is still recognised as stale.
  int64_t tombstone_retention_ms = 10 * 60 * 1000;
  // A segment in a directory that is not memory-backed (tmpfs, ramfs) is
  // refused: on a disk file system every update would be written back to
  // disk. Set to allow one anyway (e.g. a test on a developer machine).
  bool allow_non_tmpfs = false;
  // Opening a segment reads only what a killed writer left in flight (one
  // slot at most, the journal, the count and position records): the counters
  // are kept exact with every write. Set to also visit every slot: recount
  // live keys and tombstones and hide a slot whose seq is odd without an undo
  // record (damage, which no writer leaves) behind a tombstone. Costs a pass
  // over the slot arrays (docs/performance.md, "Writer restart"). A segment
  // last written by a build that kept no count record is checked this way
  // once, whatever this says (AttachReport::full_scan).
  bool full_check = false;
  // An existing segment with another schema: build a new generation with the
  // configured schema, rows carried over (fields matched by name; an added
  // field starts not valid, a dropped one goes), publish it under the name
  // and retire the old one, instead of refusing (kSchemaMismatch). Refused
  // like begin_switch() when the change cannot carry the rows (a field's type
  // changed, a capacity below the live keys, no room for two generations, a
  // carried table with aggregates); the segment is then left as it was.
  bool migrate_on_schema_change = false;
  // Automatic growth (docs/operations.md, "Growth"): when above 0, maintain()
  // starts a generation switch that multiplies a table's capacity by
  // grow_factor (at most max_capacity, 0: no bound) once its live keys reach
  // grow_at x capacity. A table grown this way keeps its larger capacity
  // when the writer reopens the segment with the configured, smaller one.
  double grow_at = 0;
  double grow_factor = 2;
  uint64_t max_capacity = 0;
  // Keep the refresh queue: every update that moves a key's next refresh
  // time queues the key, and refresh() (and maintain()) pops the keys due.
  // Set to false for a writer whose reads bring each key up to date
  // themselves (Writer::refresh_key; the offline replay): nothing is queued,
  // so no memory grows with the number of updates, and refresh() only moves
  // the aggregate clock (no key is refreshed, refreshed_through_ms stays).
  bool refresh_queue = true;
  // The aggregate clock of each update (and refresh_key) is that call's own
  // apply_unix_ns, even when it is earlier than a previous call's, instead
  // of the newest one seen. For a replay that applies each key's events and
  // reads on their own, key after key (the offline engine): one key's clock
  // must not move another's. Online the clock only moves forward.
  bool clock_per_update = false;
  // false: the writer skips the work that only a restart after a crash
  // reads (the undo copy of each slot before its write, the count record,
  // the journal entries of each aggregate change), for a scratch segment no
  // process reopens after a crash (the offline replay). Readers still see
  // every write through the slot's seqlock. A writer killed mid-write leaves
  // such a segment torn: open it with a crash-safe writer only to remove it.
  bool crash_safety = true;
  // Huge pages for the segment: see HugePages.
  HugePages huge_pages = HugePages::kAuto;
};

// A generation switch (Writer::begin_switch): the one in progress, and what
// this writer did before.
struct SwitchProgress {
  bool active = false;
  uint64_t generation = 0;    // the generation of the segment being served
  uint64_t slots_copied = 0;  // of the switch in progress: slots of the current generation visited
  uint64_t slots_total = 0;
  int64_t started_mono_ns = 0;
  // Of the switch in progress: the writer thread's CPU time in switch_step
  // on the copy (both passes) and on the follow log (docs/design.md,
  // "Generations").
  int64_t copy_cpu_ns = 0;
  int64_t follow_cpu_ns = 0;
  uint64_t switches = 0;         // switches this writer published
  int64_t last_duration_ns = 0;  // the last published switch, begin to publish
  std::string last_error;        // why the last switch was refused or abandoned ("": none was)
};

// What opening a writer did to the segment it found (Writer::attach_report).
struct AttachReport {
  // Slots whose words the open read: the one an interrupted write left (0 or
  // 1), plus every slot of every table when it scanned (full_scan).
  uint64_t slots_visited = 0;
  // Slots restored from the undo copy, and (full scan) slots found odd
  // without one and hidden behind a tombstone.
  uint64_t repaired_slots = 0;
  // Aggregate state words restored from the journal (a change undone).
  uint64_t journal_entries_undone = 0;
  // A killed writer's counter stores were finished from its count record.
  bool counts_redone = false;
  // The counters were recounted by a pass over every slot: full_check was
  // set, or the segment's counters_session did not match (see format.h).
  bool full_scan = false;
};

// One typed value for one field of a row, by field index.
struct FieldValue {
  uint32_t field = 0;
  layout::FieldType type = layout::FieldType::kInt64;
  int64_t i64 = 0;
  double f64 = 0;
  const void* data = nullptr;  // string bytes or float vector
  uint32_t length = 0;         // string bytes or vector dimensions

  static FieldValue int64(uint32_t f, int64_t v) { return {f, layout::FieldType::kInt64, v, 0, nullptr, 0}; }
  static FieldValue float64(uint32_t f, double v) { return {f, layout::FieldType::kFloat64, 0, v, nullptr, 0}; }
  static FieldValue float32(uint32_t f, float v) { return {f, layout::FieldType::kFloat32, 0, v, nullptr, 0}; }
  static FieldValue boolean(uint32_t f, bool v) { return {f, layout::FieldType::kBool, v ? 1 : 0, 0, nullptr, 0}; }
  static FieldValue string(uint32_t f, std::string_view v) {
    return {f, layout::FieldType::kString, 0, 0, v.data(), static_cast<uint32_t>(v.size())};
  }
  static FieldValue vector(uint32_t f, std::span<const float> v) {
    return {f, layout::FieldType::kFloat32Vector, 0, 0, v.data(), static_cast<uint32_t>(v.size())};
  }
};

// One input of a table's aggregates: `value` for the source at index
// `source` (Writer::source_index, the order of AggregatePlan::sources).
// `distinct` is the value as distinct_count sees it (a distinct_hash_*
// below); 0 derives it from `value`, which is exact for integers up to 2^53.
// A string source passes value 0 and distinct_hash_string().
struct SourceValue {
  uint32_t source = 0;
  double value = 0;
  uint64_t distinct = 0;
};

// The 64-bit values distinct_count keeps (never 0). They are stored in the
// segment, so they are part of the format (docs/segment-format.md): XXH3-64
// of the string's bytes (seed 1), of the int64's 8 little-endian bytes (seed
// 2; bool is 0 or 1), of a non-integral double's bits (seed 3).
uint64_t distinct_hash_string(std::string_view s) noexcept;
uint64_t distinct_hash_int64(int64_t v) noexcept;
// An integral value (and -0) hashes as that int64; others by their bits.
uint64_t distinct_hash_number(double v) noexcept;

// The 64-bit id apply() takes for an event id string. Never 0.
uint64_t event_id_hash(std::string_view id) noexcept;

enum class ApplyResult : uint8_t {
  kApplied = 0,    // the row now reflects the update
  kStale = 1,      // older than the row's event time: ignored and counted
  kTableFull = 2,  // a new key, and the table holds `capacity` keys: refused and counted
  kInvalid = 3,    // key too long, unknown field or source index, wrong type or length
  kDuplicate = 4,  // the event's id was applied before (within the dedup horizon): ignored and counted
  kLate = 5,       // nothing applied: the aggregate inputs were older than the allowed lateness
                   // (counted as late_dropped) and the fields, if any, older than the row
  kArenaFull = 6,  // nothing applied: the key's windows need an arena chunk (more live buckets
                   // than its inline ones) and the table's aggregate arena has none free
};
const char* apply_result_name(ApplyResult r);

struct WriterStats {
  uint64_t live_keys = 0;
  uint64_t tombstones = 0;
  uint64_t slot_count = 0;
  uint64_t capacity = 0;
  uint64_t aggregate_events = 0;
  uint64_t late_dropped = 0;
  uint64_t outside_window = 0;
  uint64_t duplicates = 0;
  uint64_t dedup_evictions = 0;
  uint64_t refreshes = 0;
  // The aggregate arena (docs/aggregates.md, "Memory"): chunks, held now,
  // most held at once, updates refused for want of one (kArenaFull).
  uint64_t arena_chunks = 0;
  uint64_t arena_used = 0;
  uint64_t arena_peak_used = 0;
  uint64_t arena_refused = 0;
};

// Points inside a slot update, in order, for crash tests.
enum class CrashPoint : int {
  kUndoArmed = 1,       // the undo copy is armed, seq still even
  kSeqOdd = 2,          // seq is odd, nothing written yet
  kMidPayload = 3,      // before each payload word store
  kPayloadWritten = 4,  // every word written, seq still odd
  kSeqEven = 5,         // seq even again, undo still armed
  kJournal = 6,         // before each aggregate state or dedup word store
  kPosition = 7,        // before each source position store (pending record, partition words)
  kCounts = 8,          // before the count record is armed and before each counter store it guards
  kSwitch = 9,          // each step of a generation switch: the new file built, each copied chunk, before
                        // publishing, before and after the rename, after the old generation is retired
};
// When set, called at every CrashPoint of every slot update (crash tests
// raise SIGKILL from it). Process-wide; not for production use.
using CrashHook = void (*)(CrashPoint point);
void set_crash_hook(CrashHook hook);

// A position in a source's log: where to resume. The committed-offset
// convention (Kafka's): next_offset is the first message not wholly applied.
struct SourcePosition {
  uint32_t partition = 0;
  uint64_t next_offset = 0;
  uint32_t skip_updates = 0;  // updates of message next_offset already applied
};

// One upsert of a batch (Writer::upsert_many): the arguments of apply().
struct Upsert {
  uint32_t table = 0;
  std::string_view key;
  int64_t event_time_ms = 0;
  std::span<const FieldValue> values;
  std::span<const SourceValue> sources;  // tables with aggregates only
  uint64_t event_id = 0;
  // When set, stored with this upsert's effect, as stage_position() before
  // apply() would.
  const SourcePosition* position = nullptr;
  // When non-zero, this update's apply time (and aggregate clock) instead of
  // the batch's: a replay applies each event at its own arrival instant.
  int64_t apply_unix_ns = 0;
};

class Writer {
 public:
  // Opens the segment `name` in options.dir for writing, creating it if it
  // does not exist. An existing segment with the same schema is reopened warm
  // (its rows stay) after repairing any slot a crashed writer left
  // half-written. Throws Error: kInvalidArgument (name, schema), kWriterLocked,
  // kSchemaMismatch, kVersionMismatch, kNoSpace, kPermissionDenied, kSystem.
  static std::unique_ptr<Writer> open(std::string_view name, const layout::Schema& schema,
                                      const WriterOptions& options = {});

  // Detaches: clears writer_pid, records ConnectionState::kStopped if nothing
  // else was reported, releases the lock. The segment stays for readers.
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // -1 when absent.
  int table_index(std::string_view table) const;
  int field_index(uint32_t table, std::string_view field) const;
  const layout::Schema& schema() const;

  // -1 when the table has no aggregate with that source.
  int source_index(uint32_t table, std::string_view source) const;

  // Upserts the given fields of the row `key`; fields not given keep their
  // values (and validity). apply_unix_ns = 0 reads CLOCK_REALTIME. On a
  // table with aggregates this is apply() with no sources and no id.
  ApplyResult upsert(uint32_t table, std::string_view key, int64_t event_time_ms, std::span<const FieldValue> values,
                     int64_t apply_unix_ns = 0);

  // One event for the row `key`: its fields are upserted under last write
  // wins (as upsert()), and its source values are folded into the table's
  // aggregates by event time, even when the fields are stale (late events
  // count in their bucket). An event with a non-zero `event_id`
  // (event_id_hash) that was applied before, within the dedup horizon, is
  // ignored (kDuplicate). `apply_unix_ns` is also the aggregate clock: the
  // writer's clock is the largest value it has been given (0 reads
  // CLOCK_REALTIME), so tests can drive time. See docs/aggregates.md.
  ApplyResult apply(uint32_t table, std::string_view key, int64_t event_time_ms, std::span<const FieldValue> values,
                    std::span<const SourceValue> sources, uint64_t event_id = 0, int64_t apply_unix_ns = 0);

  // Applies updates[i] as apply() would, in order, and stores its result in
  // results[i]: the same rows, counters, last-write-wins decisions and crash
  // safety as one apply() per update. Faster for keys spread over a large
  // table: it hashes the key kUpsertAhead updates before applying it and
  // prefetches that key's home slot for writing; with aggregates, the slot
  // the key sits in and its state's headers kSlotAhead updates ahead, and
  // the buckets that state points to kBucketsAhead updates ahead, each step
  // for kPrefetchGroup updates at a time (writer/src/upsert_many.cc), so the
  // cache misses and page walks of the next updates overlap each other and
  // this one's work. apply_unix_ns = 0 reads CLOCK_REALTIME once for the
  // whole batch.
  // Throws Error(kInvalidArgument) when results is shorter than updates, or
  // as stage_position() for an update's position (the updates before it are
  // applied).
  static constexpr size_t kUpsertAhead = 20;
  static constexpr size_t kSlotAhead = 12;
  static constexpr size_t kBucketsAhead = 4;
  static constexpr size_t kPrefetchGroup = 8;
  void upsert_many(std::span<const Upsert> updates, std::span<ApplyResult> results, int64_t apply_unix_ns = 0);

  // Moves the aggregate clock to `now_unix_ns` (0: CLOCK_REALTIME) and
  // rewrites the aggregates of every key whose windows lost a bucket since
  // they were last written, at most `key_budget` keys. Returns the keys
  // rewritten. maintain() calls it; tests call it with their own clock.
  // After open, the writer learns the keys' due times from the segment a
  // slice per call (4 slots per key of `key_budget`; all of them for an
  // unbounded budget), so open does not scan: until the slice reaches a key,
  // its refresh waits (docs/operations.md, "Restarts").
  uint64_t refresh(int64_t now_unix_ns = 0, uint64_t key_budget = ~uint64_t{0});
  // refresh() for one key: moves the aggregate clock to `now_unix_ns` (0:
  // CLOCK_REALTIME) and, when the live key `key` of `table` is due (its
  // windows lost a bucket since it was last written), rewrites its
  // aggregates as refresh() would (the same per-key step). Other keys and
  // refreshed_through_ms are left as they are. Returns true when the key's
  // row was rewritten; false when it was not due, is absent or deleted, or
  // the table has no aggregates (or an invalid table or key). Costs one
  // probe, plus the refresh when due.
  bool refresh_key(uint32_t table, std::string_view key, int64_t now_unix_ns = 0);
  // The seed of table `table`'s key hash: a key's home slot grows with
  // layout::hash_key(key, seed), so updates in that order visit the slots
  // (and their aggregate state) from the first to the last (the offline
  // replay orders keys so). 0 for an invalid table.
  uint64_t key_hash_seed(uint32_t table) const noexcept;
  // True when some key's aggregates are due for refresh by the wall clock, or
  // the due times are still being gathered after open. Always false without
  // the refresh queue (WriterOptions::refresh_queue).
  bool refresh_due() const;
  // Deletes `key` (leaves a tombstone with the delete's event time, also when
  // the key was absent, so an older upsert arriving later stays deleted).
  ApplyResult remove(uint32_t table, std::string_view key, int64_t event_time_ms, int64_t apply_unix_ns = 0);
  // Clears a key pinned by an event time from the future: when the row's (or
  // its tombstone's) event time is after `pinned_after_ms`, deletes it as
  // remove() would, whatever that time, leaving a tombstone at
  // `event_time_ms`, so updates newer than that apply again (and an
  // aggregate row starts from empty windows). Otherwise changes nothing and
  // returns kStale, so a replayed unpin never deletes a healthy row.
  ApplyResult unpin(uint32_t table, std::string_view key, int64_t event_time_ms, int64_t pinned_after_ms,
                    int64_t apply_unix_ns = 0);

  // Publishes liveness: call at least every 100 ms from the writer thread.
  void heartbeat();
  // Heartbeat, refresh() with the wall clock for at most 5 ms, then reclaims up to
  // `slot_budget` slots' worth of expired tombstones (incrementally, from a
  // cursor). Returns slots reclaimed.
  uint64_t maintain(uint64_t slot_budget = 4096);

  void set_connection_state(layout::ConnectionState state);
  void add_messages_rejected(uint64_t n);

  // Positions. stage_position(): the next update call (upsert, apply, remove,
  // unpin) stores `next` together with its effect, whatever its result: after
  // a kill at any instruction, the stored position covers exactly the updates
  // whose effect is in the table (the pending record is committed or dropped
  // by repair, by the same test that keeps or undoes the slot write).
  // Throws Error(kInvalidArgument) for a partition >= kMaxSourcePartitions.
  void stage_position(const SourcePosition& next);
  // Stores `next` now, with no update (a message with no updates, a message
  // the consumer rejected, a message before the resume point). Atomic too.
  void set_position(const SourcePosition& next);
  // The stored position of `partition`, if any.
  std::optional<SourcePosition> position(uint32_t partition) const;
  // What the positions refer to. Setting another id than the stored one
  // clears every position (they meant another log) and returns false; the
  // same id (or none stored yet) returns true. Throws
  // Error(kInvalidArgument) for an id longer than 127 bytes or holding a NUL.
  bool set_source_id(std::string_view id);
  std::string source_id() const;
  // The segment's completeness for readers (SourceBlock::sync_state), with
  // the partition's target (CATCHING_UP) or first retained offset (INCOMPLETE).
  void set_sync_state(layout::SyncState state);
  void set_target(uint32_t partition, std::optional<uint64_t> target_offset);
  void set_first_retained(uint32_t partition, std::optional<uint64_t> first_offset);

  // Snapshots. A copy of the whole segment, taken on the writer thread between
  // updates, so it is consistent: every row, the aggregate state, the dedup
  // set and the positions it covers. `out` is resized to the segment size
  // (reuse it between calls: no allocation after the first). Costs one memcpy
  // of the segment (the writer thread pauses for it; readers do not).
  void copy_image(std::vector<unsigned char>* out) const;

  // Builds segment `name` from `image` (a copy_image() of a segment, e.g. read
  // from a snapshot file) and opens it as open() would. The image is
  // untrusted: it must be a valid v3 segment (validate_segment) whose header,
  // descriptors and layout equal what `schema` plans here (recompute the plan
  // and compare every offset and size), with no armed undo/journal/pending
  // record, every slot's seq even, meta state valid, key_len within bounds,
  // string lengths within their fields. It is written to a temporary file in
  // options.dir and renamed over the segment only when complete, under the
  // writer lock, so any failure leaves an existing segment untouched (readers
  // of the old segment see kRetired, as with recreate_on_schema_change).
  // Throws Error: kCorrupt (says what is wrong), kSchemaMismatch,
  // kVersionMismatch, kWriterLocked, kNoSpace, ...
  static std::unique_ptr<Writer> restore(std::string_view name, const layout::Schema& schema,
                                         std::span<const unsigned char> image, const WriterOptions& options = {});

  // Generation switch (docs/design.md, "Generations"). Starts building the
  // next generation of the segment with `next`: a new file beside the
  // current one, filled from it a chunk at a time by switch_step() while
  // updates keep being applied here (an update of a row already copied is
  // copied again right after it is applied). The last step publishes the new
  // file under the segment's name and marks the current one retired; readers
  // follow on their own (docs/client.md, "Generations"). Tables match by
  // name, fields by name; an added field starts not valid, a dropped field
  // goes. Throws, changing nothing: kInvalidArgument (a switch in progress,
  // nothing to change, a capacity below a table's live keys, a shorter
  // key_max_len, a carried table with aggregates), kSchemaMismatch (a field
  // whose type or size changed), kNoSpace (the directory cannot hold both
  // generations).
  void begin_switch(const layout::Schema& next);
  // begin_switch() with table `table`'s capacity set to `capacity`.
  void grow(uint32_t table, uint64_t capacity);
  // Copies up to `slot_budget` slots of the current generation into the next
  // one; publishes and moves this writer to it after the last. Returns true
  // when no switch is left in progress (published, or abandoned: the next
  // generation ran out of room for keys added during the copy, see
  // switch_progress().last_error). Throws Error(kSystem) when publishing
  // fails; the current generation keeps serving.
  static constexpr uint64_t kSwitchStepSlots = 16384;
  bool switch_step(uint64_t slot_budget);
  // switch_step() paced to the writer's own work: the copy takes 8% of this
  // thread's CPU time (so updates keep 92% while they come back to back),
  // plus half of the time it was not running when no update was applied
  // meanwhile and it waited (idle between messages), at least 16 slots a
  // step so that a switch always ends; the rows updates logged behind the
  // copy are copied first, on top of that share (docs/design.md,
  // "Generations"). Call it between updates as often as convenient: after
  // each bulk of messages.
  bool switch_step();
  // begin_switch() and switch_step() until published.
  void switch_now(const layout::Schema& next);
  // Discards the next generation being built; the current one keeps serving.
  void abort_switch();
  bool switch_active() const;
  SwitchProgress switch_progress() const;

  bool created() const;             // this open created the segment
  bool restored() const;            // ... from a snapshot image (restore())
  uint64_t repaired_slots() const;  // slots restored by this open
  // What this open found and did; all zero for a segment it created or
  // restored.
  const AttachReport& attach_report() const;
  // How the writer's mapping of the segment is backed: one byte of every
  // 2 MiB of the file read, then /proc/self/smaps (and the mount of the
  // directory). One fault per 2 MiB page the first time. The pages a writer gets
  // are the pages its readers get (one page cache), as long as their
  // mappings are aligned (MappedFile's are).
  layout::HugePageReport huge_pages() const;
  std::string path() const;
  WriterStats stats(uint32_t table) const;
  // The writer's own mapping, for readers in the same process (the
  // single-mapping concurrency tests that ThreadSanitizer can follow).
  const void* data() const;

  // Unlinks the segment file, its lock file and a grow request. Readers that have it mapped
  // keep their mapping until they close it.
  static void remove_segment(std::string_view name, const std::string& dir = "/dev/shm");

  // A grow asked of the live writer from outside (`larderctl grow`,
  // docs/operations.md, "Growth"): the file ".<name>.grow" in the segment's
  // directory, holding "<table> <capacity>\n", written whole (a rename).
  // maintain() looks for it at most every 100 ms, removes it and starts
  // grow(table, capacity); a refusal goes to switch_progress().last_error.
  // While a switch runs the request waits.
  static std::string grow_request_path(std::string_view name, const std::string& dir = "/dev/shm");

  struct Impl;

 private:
  explicit Writer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace larder

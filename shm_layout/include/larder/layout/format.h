// The Larder segment format, layout version 5.
//
// One definition of the bytes that the writer (sidecar), the client library
// and larderctl all compile against. docs/segment-format.md describes the same
// format in prose; tests/layout_test.cc pins every size and offset below, so an
// accidental change fails the build or the tests.
//
// A segment is one file in a tmpfs directory (default /dev/shm):
//
//   offset 0                                                     segment_bytes
//   +----------------+---------------------+-----------+------+---------------+
//   | SegmentHeader  | TableDescriptor[T]  | Field-    | Undo | slot array of |
//   | (256 bytes)    | (384 bytes each)    | Desc[],   | area,| table 0, 1 .. |
//   |                |                     | Aggregate-| jour-| then its      |
//   |                |                     | Desc[]    | nal  | aggregate     |
//   |                |                     |           |      | state & dedup |
//   +----------------+---------------------+-----------+------+---------------+
//                     ^header_bytes                            ^4 KiB aligned
//
// A slot (all words are 8-byte atomics, the slot is padded to 64 bytes):
//
//   word 0        seq            even: stable, odd: the writer is inside
//   word 1        meta           hash with the low 2 bits replaced by the state
//                                (0 empty, 1 live, 2 tombstone)
//   word 2        event_time_ms  newest event time applied (last write wins)
//   word 3        apply_unix_ns  when the writer applied it (CLOCK_REALTIME)
//   word 4        key_len        low 32 bits
//   words 5..     validity       one bit per field: set once the field is written
//   then          key            key_words words, zero padded
//   then          row            row_bytes of typed fields at FieldDescriptor::offset
//   then          group times    group_count words (tables that declare field
//                                groups only): each group's event time
//
// Invariants (see docs/design.md for the arguments):
//  * Exactly one writer per segment; it holds an exclusive flock on
//    "<dir>/<name>.lock" for its lifetime.
//  * Everything a reader touches is an always-lock-free 8-byte atomic; nothing
//    wider, and readers never write (their mapping is PROT_READ).
//  * Keys never move once inserted. Deleting a key leaves a tombstone (which
//    keeps the key and the delete's event time); a tombstone becomes empty only
//    when the slot after it is empty, so a present key's probe chain never
//    contains an empty slot.
//  * Before the writer makes a slot's seq odd it copies the slot into the undo
//    area and arms it; a writer that restarts restores an odd slot from there.
//  * Aggregate state and the dedup set are the writer's alone (readers see
//    aggregates as ordinary fields of the row). Before the writer changes one
//    of their words it appends the old value to the journal; a writer that
//    restarts with the journal armed undoes those changes, newest first.
//
// Everything here is standard layout, trivially copyable where it has no
// atomics, and addressed by offsets only: the mapping address differs per
// process.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace larder::layout {

// "LARDSEG1" read as a little-endian 64-bit integer.
inline constexpr uint64_t kMagic = 0x314745534452414CULL;
inline constexpr uint32_t kLayoutVersion = 5;
inline constexpr uint32_t kEndianTag = 0x01020304U;

inline constexpr size_t kNameBytes = 64;  // table and field names, NUL padded
inline constexpr size_t kMaxNameLength = kNameBytes - 1;
inline constexpr size_t kMaxTables = 64;
inline constexpr size_t kMaxFields = 1024;
inline constexpr size_t kMaxKeyLength = 1024;
inline constexpr size_t kMaxStringLength = 65535;
inline constexpr size_t kMaxVectorDims = 16384;
inline constexpr size_t kSlotAlign = 64;
inline constexpr size_t kSlotArrayAlign = 4096;
// Field groups: named sets of fields of one table, each with its own event
// time, last-write-wins and age (docs/segment-format.md#field-groups).
inline constexpr size_t kMaxFieldGroups = 8;
// A group time word that no update or delete has set yet: older than any
// event time, so its age is "infinitely old".
inline constexpr int64_t kNoGroupTime = INT64_MIN;

enum class SegmentState : uint32_t {
  kCreating = 0,  // being built; readers must not attach
  kReady = 1,     // published; readers may attach
  kRetired = 2,   // replaced by a newer segment of the same name; reopen
};

// What the sidecar last knew about its broker connection. Informational.
enum class ConnectionState : uint32_t {
  kUnknown = 0,  // no sidecar has reported (e.g. a test writer)
  kConnecting = 1,
  kConnected = 2,
  kDisconnected = 3,  // retrying with backoff; readers keep the last values
  kStopped = 4,       // the sidecar shut down cleanly
};

enum class FieldType : uint32_t {
  kInt64 = 1,
  kFloat64 = 2,
  kFloat32 = 3,
  kBool = 4,
  kFloat32Vector = 5,  // count = dimensions
  kString = 6,         // count = maximum length in bytes
};

enum class SlotState : uint64_t { kEmpty = 0, kLive = 1, kTombstone = 2 };

inline constexpr uint64_t kMetaStateMask = 0x3;

// meta = hash with its low two bits replaced by the state. An empty slot has
// meta == 0, so a zero-filled slot array is a valid empty table.
constexpr uint64_t make_meta(uint64_t hash, SlotState state) {
  return (hash & ~kMetaStateMask) | static_cast<uint64_t>(state);
}
constexpr SlotState meta_state(uint64_t meta) { return static_cast<SlotState>(meta & kMetaStateMask); }
constexpr bool meta_matches(uint64_t meta, uint64_t hash) { return meta == make_meta(hash, SlotState::kLive); }

using Word = std::atomic<uint64_t>;
static_assert(Word::is_always_lock_free, "8-byte atomics must be lock-free");
static_assert(sizeof(Word) == 8 && alignof(Word) == 8);

// Per-table counters, written by the writer with relaxed stores, read by
// anyone. They are statistics, not synchronisation.
struct TableCounters {
  Word live_keys;           // slots in state live
  Word tombstones;          // slots in state tombstone
  Word upserts;             // upserts applied
  Word deletes;             // deletes applied
  Word stale_ignored;       // updates/deletes older than the row (LWW)
  Word full_rejected;       // new keys refused because the table was full
  Word last_apply_unix_ns;  // when the writer last changed this table
  Word max_event_time_ms;   // newest event time applied to this table
};
static_assert(sizeof(TableCounters) == 64);

// Per-table aggregate counters (same rules as TableCounters).
struct AggregateCounters {
  Word events;           // events folded into aggregates
  Word late_dropped;     // aggregate inputs older than the allowed lateness
  Word duplicates;       // events dropped because their id was seen before
  Word dedup_evictions;  // ids forgotten before their horizon (set too small)
  Word refreshes;        // keys whose windows were brought up to the clock
  Word clock_ms;         // the writer's aggregate clock
  // Inputs within the allowed lateness whose bucket had already left every
  // window (the lateness check is by time, the windows by whole buckets).
  // Was reserved (always 0) in earlier builds: the layout and ABI signature
  // are unchanged, and a segment such a build wrote shows 0.
  Word outside_window;
  // The aggregate clock instant as of which every live key's aggregate
  // fields are exact: every key due for a refresh at or before it has been
  // rewritten (docs/client.md, "Two ages"). It stops when the writer does.
  // Stored with release after the refreshed rows, so a reader that loads it
  // with acquire before copying a row gets a copy at least that current.
  // Was reserved (always 0) in earlier builds, like outside_window.
  Word refreshed_through_ms;
};
static_assert(sizeof(AggregateCounters) == 64);
static_assert(offsetof(AggregateCounters, outside_window) == 48);
static_assert(offsetof(AggregateCounters, refreshed_through_ms) == 56);

// FieldDescriptor::flags
inline constexpr uint32_t kFieldAggregate = 1;  // written by the writer from an aggregate

struct FieldDescriptor {
  char name[kNameBytes];  //  0
  uint32_t type;          // 64  FieldType
  uint32_t count;         // 68  vector dimensions, string max length, else 1
  uint32_t offset;        // 72  byte offset inside the row payload
  uint32_t bytes;         // 76  bytes the field occupies in the row
  uint32_t index;         // 80  bit in the validity bitmap
  uint32_t flags;         // 84  kFieldAggregate
  uint32_t group;         // 88  field group (0 when the table has none)
  uint32_t reserved;      // 92
};

// One field group of a table: its name. Group g's event time is slot word
// row_word_offset + row_words + g.
struct GroupDescriptor {
  char name[kNameBytes];  //  0
};

// One aggregate of a table; its output is field `field` (flags kFieldAggregate).
struct AggregateDescriptor {
  char source[kNameBytes];  //   0  "" counts every event
  uint32_t fn;              //  64  AggregateFn
  uint32_t end;             //  68  WindowEnd
  int64_t window_ms;        //  72
  int64_t resolution_ms;    //  80
  uint32_t field;           //  88
  uint32_t window_events;   //  92  a count window of the N newest events, or last_n's n (0: a time window)
  uint32_t min_periods;     //  96  count windows and last_n: fewer events read not valid
  uint32_t ddof;            // 100  variance and stddev: divide by count - ddof
  uint64_t reserved[3];     // 104
};

struct TableDescriptor {
  char name[kNameBytes];                 //   0
  uint32_t field_count;                  //  64
  uint32_t key_max_len;                  //  68
  uint64_t capacity;                     //  72  live keys the table accepts
  uint64_t slot_count;                   //  80
  uint32_t slot_bytes;                   //  88  multiple of 64
  uint32_t row_bytes;                    //  92  multiple of 8
  uint32_t validity_words;               //  96
  uint32_t key_words;                    // 100
  uint64_t fields_offset;                // 104  FieldDescriptor[field_count], from segment start
  uint64_t slots_offset;                 // 112  slot array, from segment start
  uint64_t hash_seed;                    // 120
  uint32_t max_load_permille;            // 128  capacity / slot_count, rounded up
  uint32_t flags;                        // 132  reserved, 0
  uint32_t max_load_ppm;                 // 136  the schema's max_load_factor × 10^6
  uint32_t arena_chunk_words;            // 140  words per aggregate arena chunk (0: no arena)
  TableCounters counters;                // 144
  uint32_t aggregate_count;              // 208
  uint32_t state_stride_words;           // 212  aggregate state words per slot
  uint64_t aggregates_offset;            // 216  AggregateDescriptor[aggregate_count]
  uint64_t state_offset;                 // 224  slot_count * state_stride_words words
  uint64_t dedup_offset;                 // 232  dedup_buckets * kDedupBucketBytes
  uint64_t dedup_buckets;                // 240
  int64_t allowed_lateness_ms;           // 248  as configured (0: default)
  int64_t dedup_horizon_ms;              // 256  as configured (0: default)
  uint64_t dedup_capacity;               // 264  as configured (0: default)
  AggregateCounters aggregate_counters;  // 272
  // The count record (writer only): the live_keys and tombstones a slot write
  // in progress leaves, armed before its undo copy is, so that a writer
  // killed between the slot's W2 and the counter stores is finished by the
  // next one without a recount (writer/src/row_write.h).
  Word count_armed;        // 336  1 while the two words below await a slot write
  Word count_live;         // 344  live_keys after the slot write
  Word count_tombstones;   // 352  tombstones after the slot write
  uint32_t group_count;    // 360  field groups (0: none; the slot has no group time words)
  uint32_t arena_chunks;   // 364  chunks of the aggregate arena
  uint64_t groups_offset;  // 368  GroupDescriptor[group_count]
  uint64_t arena_offset;   // 376  the arena: kArenaHeaderWords, then arena_chunks chunks
};

// The dedup set: buckets of kDedupWays entries {id hash, event time + 1}.
inline constexpr size_t kDedupWays = 8;
inline constexpr size_t kDedupEntryWords = 2;
inline constexpr size_t kDedupIdWord = 0;    // the key-scoped event id hash (0: never used)
inline constexpr size_t kDedupTimeWord = 1;  // its event time + 1 (0: never used)
inline constexpr size_t kDedupBucketBytes = kDedupWays * kDedupEntryWords * 8;

// ---------------------------------------------------------------------------
// Aggregate state. Only the writer reads or writes these words (readers see
// aggregates as ordinary row fields), but they outlive the writer: the next
// writer to attach, possibly another build, resumes from them. So their map
// is part of the format and of abi_signature().

// AggregateDescriptor::fn. The output field is int64 for kCount and
// kDistinctCount, float64 for the others.
enum class AggregateFn : uint32_t {
  kCount = 1,
  kSum = 2,
  kMean = 3,
  kMin = 4,
  kMax = 5,
  kLast = 6,      // the value of the newest event in the window
  kVariance = 7,  // population variance (divides by the count)
  kStddev = 8,
  kDistinctCount = 9,  // distinct values: exact up to kDistinctExactEntries, then a sketch
  kLastN = 10,         // the n newest values, newest first, as a vector (an event store only)
  kFirst = 11,         // the value of the oldest event in a count window (an event store only)
};
inline constexpr AggregateFn kAllAggregateFns[] = {
    AggregateFn::kCount,         AggregateFn::kSum,   AggregateFn::kMean,     AggregateFn::kMin,
    AggregateFn::kMax,           AggregateFn::kLast,  AggregateFn::kVariance, AggregateFn::kStddev,
    AggregateFn::kDistinctCount, AggregateFn::kLastN, AggregateFn::kFirst,
};

// AggregateDescriptor::end: where a window ends when it is read.
enum class WindowEnd : uint32_t {
  kNow = 0,          // the current time: the value decays as buckets leave the window
  kLatestEvent = 1,  // the newest event time seen for the key: no decay
};

// Each slot of a table with aggregates owns a state block of
// TableDescriptor::state_stride_words words at state_offset + slot * stride.
// A group is the aggregates of one (source, resolution); plan_aggregates()
// (schema.h) places the parts, all of them 8-byte words:
//
//   slot header                    kAggregateSlotHeaderWords
//   for each group: group header   kAggregateGroupHeaderWords
//     for each distinct window     kAggregateWindowWords     (the "hot" words)
//   for each group: inline buckets, min(ring, kInlineBuckets) buckets of
//                  aggregate_bucket_words(group stats) each
//   for each group with a distinct_count: its distinct area  kDistinctAreaWords
//   for each event store: its header and entries             kEventStoreHeaderWords
//                                                            + capacity * kEventEntryWords
//
// An event store keeps, per source of the count windows and last_n
// sequences (AggregateSpec::window_events), the newest events of the key in
// event-time order; see below.
//
// Buckets in proportion to activity. A group whose ring (longest window /
// resolution) is at most kInlineBuckets keeps the whole ring inline: bucket k
// at position k mod ring. A longer ring starts *sparse*: the inline buckets
// are a set, each tagged with its bucket index, so a key with a few events
// keeps only those. When an event needs a bucket and every inline one still
// lies in some window, the group is *promoted*: it takes a chunk from the
// table's arena (kGroupChunkWord) and keeps the dense ring, positions
// [0, ring - inline) in the chunk and the last `inline` positions in the
// inline buckets. It is demoted (the chunk freed) once its windows hold at
// most kInlineBuckets / 2 events.
//
//   arena_offset: header   kArenaHeaderWords
//                 chunk 0 .. arena_chunks - 1, arena_chunk_words each
//
// A free chunk's word 0 links the next free chunk (index + 1, 0: none).
//
// Times are stored + 1 so that 0 means "none"; statistics are float64 bits.

// Slot header.
inline constexpr uint32_t kStateDueWord = 0;              // when a window next decays, ms + 1 (0: never)
inline constexpr uint32_t kAggregateSlotHeaderWords = 2;  // word 1 reserved

// Group header.
inline constexpr uint32_t kGroupHeadWord = 0;       // newest bucket index + 1 (0: no event yet)
inline constexpr uint32_t kGroupLastTimeWord = 1;   // newest event time + 1
inline constexpr uint32_t kGroupLastValueWord = 2;  // that event's value (kLast reads it)
inline constexpr uint32_t kGroupChunkWord = 3;      // dense ring's arena chunk index + 1 (0: sparse)
inline constexpr uint32_t kAggregateGroupHeaderWords = 4;

// Inline buckets per group (K): a longer ring is sparse until it needs more.
inline constexpr uint32_t kInlineBuckets = 8;

// Arena header. Chunks [fresh, arena_chunks) were never taken; a freed
// chunk goes on the free list, which is taken from first.
inline constexpr uint32_t kArenaFreeHeadWord = 0;   // first chunk of the free list, index + 1 (0: empty)
inline constexpr uint32_t kArenaUsedWord = 1;       // chunks held by some group
inline constexpr uint32_t kArenaFreshWord = 2;      // the first chunk never taken
inline constexpr uint32_t kArenaPeakUsedWord = 3;   // most chunks held at once
inline constexpr uint32_t kArenaRefusedWord = 4;    // updates refused for want of a chunk (a counter)
inline constexpr uint32_t kArenaHeaderWords = 8;    // words 5..7 reserved
inline constexpr uint32_t kArenaChunkNextWord = 0;  // a chunk on the free list: the next one's index + 1

// Window: running totals of the buckets it covers.
inline constexpr uint32_t kWindowStartWord = 0;  // oldest bucket index that may hold events
inline constexpr uint32_t kWindowCountWord = 1;  // uint64
inline constexpr uint32_t kWindowSumWord = 2;
inline constexpr uint32_t kWindowM2Word = 3;   // sum of squared deviations from the mean
inline constexpr uint32_t kWindowMinWord = 4;  // +inf when empty
inline constexpr uint32_t kWindowMaxWord = 5;  // -inf when empty
inline constexpr uint32_t kAggregateWindowWords = 6;

// Bucket: a tag and a count, then one word per statistic the group keeps, in
// the order of the kBucket* bits (sum, M2, min, max).
inline constexpr uint32_t kBucketTagWord = 0;    // bucket index + 1 (0: empty; another index: a stale lap)
inline constexpr uint32_t kBucketCountWord = 1;  // uint64
inline constexpr uint32_t kBucketFixedWords = 2;
inline constexpr uint32_t kBucketSum = 1U << 0;
inline constexpr uint32_t kBucketM2 = 1U << 1;
inline constexpr uint32_t kBucketMin = 1U << 2;
inline constexpr uint32_t kBucketMax = 1U << 3;

// Distinct area (a group with a kDistinctCount): a header, an exact set of
// up to K values, each with the newest bucket it was seen in, then a ring of
// HyperLogLog sketches, one per slice of distinct_slice_buckets() buckets
// (slice s at position s mod kDistinctSlices). Values are 64-bit hashes
// (writer.h, distinct_hash()), never 0. The hash functions are part of the
// format: a writer hashing differently would count a value twice.
inline constexpr uint32_t kDistinctDroppedWord = 0;    // newest bucket + 1 of a value the exact set let go (0: none)
inline constexpr uint32_t kDistinctHeaderWords = 2;    // word 1 reserved
inline constexpr uint32_t kDistinctExactEntries = 32;  // K: values kept exactly
inline constexpr uint32_t kDistinctEntryHashWord = 0;  // the value's hash (0: unused)
inline constexpr uint32_t kDistinctEntrySeenWord = 1;  // the newest bucket it was seen in + 1
inline constexpr uint32_t kDistinctEntryWords = 2;
inline constexpr uint32_t kDistinctRegisterBits = 7;  // HyperLogLog: m = 2^7 = 128 one-byte registers
inline constexpr uint32_t kDistinctRegisters = 1U << kDistinctRegisterBits;
inline constexpr uint32_t kDistinctSliceTagWord = 0;  // newest bucket folded into the slice + 1 (0: empty)
inline constexpr uint32_t kDistinctSliceWords = 1 + kDistinctRegisters / 8;  // tag, then 8 registers a word
inline constexpr uint32_t kDistinctSlicesPerRing = 8;                        // slices spanning the group's ring
inline constexpr uint32_t kDistinctSlices = kDistinctSlicesPerRing + 1;      // + 1: a window straddles one more
inline constexpr uint32_t kDistinctAreaWords =
    kDistinctHeaderWords + kDistinctExactEntries * kDistinctEntryWords + kDistinctSlices * kDistinctSliceWords;
// Event store: the `capacity` newest events of one source (the largest N of
// its count windows and sequences), oldest first, in a ring: entry i (0 the
// oldest) is at position (head + i) mod capacity. An event with an equal
// time sorts after those applied before it.
inline constexpr uint32_t kEventStoreCountWord = 0;  // entries held, <= capacity
inline constexpr uint32_t kEventStoreHeadWord = 1;   // ring position of the oldest entry
inline constexpr uint32_t kEventStoreHeaderWords = 2;
inline constexpr uint32_t kEventEntryTimeWord = 0;   // event time + 1
inline constexpr uint32_t kEventEntryValueWord = 1;  // float64 bits
inline constexpr uint32_t kEventEntryWords = 2;
inline constexpr uint32_t kMaxWindowEvents = 1024;  // N of a count window, n of last_n

// Buckets per sketch slice of a group whose ring holds `ring_buckets`.
constexpr int64_t distinct_slice_buckets(int64_t ring_buckets) {
  return (ring_buckets + kDistinctSlicesPerRing - 1) / kDistinctSlicesPerRing;
}

// The statistics a group's buckets keep for function fn (a group keeps the
// union over its aggregates). kCount needs only the count word, kLast the
// group header and kDistinctCount its distinct area.
constexpr uint32_t aggregate_bucket_stats(AggregateFn fn) {
  switch (fn) {
    case AggregateFn::kSum:
    case AggregateFn::kMean: return kBucketSum;
    case AggregateFn::kVariance:
    case AggregateFn::kStddev: return kBucketSum | kBucketM2;
    case AggregateFn::kMin: return kBucketMin;
    case AggregateFn::kMax: return kBucketMax;
    case AggregateFn::kCount:
    case AggregateFn::kLast:
    case AggregateFn::kDistinctCount:
    case AggregateFn::kLastN:
    case AggregateFn::kFirst: return 0;
  }
  return 0;
}
// The bits set in a set of kBucket* statistics (4 bits), from a table of
// the 16 answers: the writer asks on every bucket it folds, and without
// -mpopcnt std::popcount is a call into libgcc.
constexpr uint32_t bucket_stat_count(uint32_t stats) {
  return static_cast<uint32_t>((0x4332322132212110ULL >> (4 * (stats & 0xf))) & 0xf);
}
static_assert((kBucketSum | kBucketM2 | kBucketMin | kBucketMax) == 0xf, "bucket_stat_count covers 4 statistics");
static_assert([] {
  for (uint32_t s = 0; s < 16; ++s) {
    if (bucket_stat_count(s) != static_cast<uint32_t>(std::popcount(s))) return false;
  }
  return true;
}());
// Words of a bucket that keeps `stats`.
constexpr uint32_t aggregate_bucket_words(uint32_t stats) { return kBucketFixedWords + bucket_stat_count(stats); }
// The word of statistic `stat` (one kBucket* bit) in a bucket that keeps `stats`.
constexpr uint32_t aggregate_bucket_word(uint32_t stats, uint32_t stat) {
  return kBucketFixedWords + bucket_stat_count(stats & (stat - 1));
}

// One journal entry: the old value of the word at `word` (8-byte words from
// the segment start).
struct JournalEntry {
  Word word;
  Word old;
};

struct SegmentHeader {
  // Identity: written before the segment is published, then immutable.
  uint64_t magic;               //   0  kMagic
  uint32_t layout_version;      //   8  kLayoutVersion
  uint32_t endian_tag;          //  12  kEndianTag
  uint64_t abi_signature;       //  16  abi_signature() of the writer's build
  uint64_t schema_fingerprint;  //  24  Schema::fingerprint()
  uint64_t segment_bytes;       //  32  file size
  uint32_t table_count;         //  40
  uint32_t header_bytes;        //  44  offset of TableDescriptor[0]
  uint64_t undo_offset;         //  48  undo area, from segment start
  uint64_t undo_bytes;          //  56
  uint64_t created_unix_ns;     //  64
  uint64_t generation;          //  72  bumped when a segment replaces another
  char creator[32];             //  80  e.g. "larder 0.1.0", NUL padded

  // Lifecycle and liveness: written by the writer, read by anyone.
  std::atomic<uint32_t> state;             // 112  SegmentState; kReady is a release store
  std::atomic<uint32_t> connection_state;  // 116  ConnectionState
  Word writer_pid;                         // 120  0 when no writer is attached
  Word writer_start_unix_ns;               // 128
  Word heartbeat_mono_ns;                  // 136  CLOCK_MONOTONIC, >= every 100 ms while alive
  Word writer_sessions;                    // 144  writers that have attached, ever
  Word repaired_slots;                     // 152  slots the last attach repaired
  Word last_apply_unix_ns;                 // 160
  Word undo_armed;                         // 168  1 while the undo area guards a slot
  Word undo_table;                         // 176
  Word undo_slot;                          // 184
  Word messages_rejected;                  // 192  maintained by the sidecar
  Word updates_applied;                    // 200  all tables
  Word journal_armed;                      // 208  1 while journal entries guard a change
  Word journal_count;                      // 216  valid entries
  uint64_t journal_offset;                 // 224  JournalEntry[journal_capacity]
  uint64_t journal_capacity;               // 232
  uint64_t source_offset;                  // 240  SourceBlock, from segment start
  // The writer session whose counters are exact: equal to writer_sessions
  // while writers that keep the counters through the count record (every
  // TableDescriptor) have attached. A writer that finds it different (a
  // segment last written by a build without the record) recounts by a scan.
  Word counters_session;  // 248
};

// ---------------------------------------------------------------------------
// The source block: where the segment stands in the log it is built from (a
// RabbitMQ stream, later Kafka partitions), and how complete it is. Written by
// the writer only; readers see it through Segment::state() / sync().

inline constexpr size_t kMaxSourcePartitions = 64;
inline constexpr size_t kSourceIdWords = 16;  // 128 bytes of text, NUL padded

// SourceBlock::sync_state: how complete the segment is, as its writer knows it.
enum class SyncState : uint32_t {
  kUnknown = 0,     // no source reports positions (a plain Writer, a queue that is not a stream)
  kCatchingUp = 1,  // restoring a snapshot or replaying the log towards target
  kReady = 2,       // caught up: lag below the configured bound
  kIncomplete = 3,  // the log no longer holds what follows the stored position (retention cut past it)
};

// SourceBlock::pending_state
inline constexpr uint64_t kPendingIdle = 0;
inline constexpr uint64_t kPendingArmed = 1;  // the staged position waits for its update's effect
inline constexpr uint64_t kPendingDone = 2;   // the effect is in the table: copy to the partition

struct PartitionWords {          // 32 bytes
  Word next_plus_one;            // the next offset to apply + 1 (0: no position stored)
  Word skip_updates;             // updates of message `next` already applied (resume skips them)
  Word target_plus_one;          // CATCHING_UP: the offset replay must reach + 1 (0: unknown)
  Word first_retained_plus_one;  // INCOMPLETE: the first offset the log still holds + 1 (0: unknown)
};

struct SourceBlock {
  Word source_id[kSourceIdWords];                   //   0  what the positions refer to, text, NUL padded
  Word sync_state;                                  // 128  SyncState
  Word partition_count;                             // 136  partitions 0..count-1 may hold positions
  Word pending_state;                               // 144  kPendingIdle, kPendingArmed, kPendingDone
  Word pending_partition;                           // 152
  Word pending_next_plus_one;                       // 160
  Word pending_skip_updates;                        // 168
  Word sync_changed_unix_ns;                        // 176  when sync_state last changed
  Word reserved[9];                                 // 184
  PartitionWords partitions[kMaxSourcePartitions];  // 256
};

inline constexpr size_t kSourceBlockBytes = 256 + kMaxSourcePartitions * 32;
static_assert(sizeof(PartitionWords) == 32);
static_assert(sizeof(SourceBlock) == kSourceBlockBytes);
static_assert(std::is_standard_layout_v<SourceBlock>);
static_assert(offsetof(SourceBlock, sync_state) == 128);
static_assert(offsetof(SourceBlock, pending_state) == 144);
static_assert(offsetof(SourceBlock, sync_changed_unix_ns) == 176);
static_assert(offsetof(SourceBlock, partitions) == 256);

inline constexpr size_t kSegmentHeaderBytes = 256;
inline constexpr size_t kTableDescriptorBytes = 384;
inline constexpr size_t kFieldDescriptorBytes = 96;
inline constexpr size_t kAggregateDescriptorBytes = 128;
inline constexpr size_t kGroupDescriptorBytes = 64;

// Slot header words, in order; then validity, key and row words.
inline constexpr size_t kSlotSeqWord = 0;
inline constexpr size_t kSlotMetaWord = 1;
inline constexpr size_t kSlotEventTimeWord = 2;
inline constexpr size_t kSlotApplyTimeWord = 3;
inline constexpr size_t kSlotKeyLenWord = 4;
inline constexpr size_t kSlotHeaderWords = 5;

static_assert(std::is_standard_layout_v<SegmentHeader>);
static_assert(std::is_standard_layout_v<TableDescriptor>);
static_assert(std::is_standard_layout_v<FieldDescriptor>);
static_assert(std::is_trivially_copyable_v<FieldDescriptor>);
static_assert(sizeof(SegmentHeader) == kSegmentHeaderBytes);
static_assert(sizeof(TableDescriptor) == kTableDescriptorBytes);
static_assert(sizeof(FieldDescriptor) == kFieldDescriptorBytes);
static_assert(sizeof(AggregateDescriptor) == kAggregateDescriptorBytes);
static_assert(std::is_trivially_copyable_v<AggregateDescriptor>);
static_assert(sizeof(GroupDescriptor) == kGroupDescriptorBytes);
static_assert(offsetof(TableDescriptor, group_count) == 360);
static_assert(offsetof(TableDescriptor, groups_offset) == 368);
static_assert(offsetof(FieldDescriptor, group) == 88);
static_assert(sizeof(JournalEntry) == 16);
static_assert(offsetof(SegmentHeader, journal_armed) == 208);
static_assert(offsetof(TableDescriptor, aggregate_count) == 208);
static_assert(offsetof(TableDescriptor, aggregate_counters) == 272);
static_assert(offsetof(SegmentHeader, state) == 112);
static_assert(offsetof(SegmentHeader, heartbeat_mono_ns) == 136);
static_assert(offsetof(SegmentHeader, undo_armed) == 168);
static_assert(offsetof(SegmentHeader, updates_applied) == 200);
static_assert(offsetof(SegmentHeader, source_offset) == 240);
static_assert(offsetof(TableDescriptor, slots_offset) == 112);
static_assert(offsetof(TableDescriptor, counters) == 144);
static_assert(offsetof(TableDescriptor, count_armed) == 336);
static_assert(offsetof(SegmentHeader, counters_session) == 248);
static_assert(offsetof(FieldDescriptor, index) == 80);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

// A fingerprint of this build's view of the format: sizes and offsets of every
// shared structure, then the word map of the aggregate state and dedup set
// (which words a slot header, group header, window and bucket keep, and which
// statistics each AggregateFn needs). Two builds that disagree on any of them
// refuse to share a segment even if someone forgot to bump kLayoutVersion.
constexpr uint64_t abi_signature() {
  const uint64_t facts[] = {
      kLayoutVersion,
      sizeof(SegmentHeader),
      sizeof(TableDescriptor),
      sizeof(FieldDescriptor),
      sizeof(TableCounters),
      offsetof(SegmentHeader, state),
      offsetof(SegmentHeader, undo_slot),
      offsetof(TableDescriptor, slots_offset),
      offsetof(TableDescriptor, counters),
      offsetof(FieldDescriptor, index),
      sizeof(AggregateDescriptor),
      offsetof(SegmentHeader, journal_offset),
      offsetof(TableDescriptor, aggregate_counters),
      kDedupWays,
      kSlotHeaderWords,
      kSlotAlign,
      sizeof(Word),
      alignof(Word),
      // The aggregate state and dedup word map.
      kDedupEntryWords,
      kDedupIdWord,
      kDedupTimeWord,
      kStateDueWord,
      kAggregateSlotHeaderWords,
      kGroupHeadWord,
      kGroupLastTimeWord,
      kGroupLastValueWord,
      kGroupChunkWord,
      kAggregateGroupHeaderWords,
      kInlineBuckets,
      kArenaFreeHeadWord,
      kArenaUsedWord,
      kArenaFreshWord,
      kArenaPeakUsedWord,
      kArenaRefusedWord,
      kArenaHeaderWords,
      kArenaChunkNextWord,
      offsetof(TableDescriptor, arena_chunk_words),
      offsetof(TableDescriptor, arena_chunks),
      offsetof(TableDescriptor, arena_offset),
      kWindowStartWord,
      kWindowCountWord,
      kWindowSumWord,
      kWindowM2Word,
      kWindowMinWord,
      kWindowMaxWord,
      kAggregateWindowWords,
      kBucketTagWord,
      kBucketCountWord,
      kBucketFixedWords,
      aggregate_bucket_word(kBucketSum | kBucketM2 | kBucketMin | kBucketMax, kBucketSum),
      aggregate_bucket_word(kBucketSum | kBucketM2 | kBucketMin | kBucketMax, kBucketM2),
      aggregate_bucket_word(kBucketSum | kBucketM2 | kBucketMin | kBucketMax, kBucketMin),
      aggregate_bucket_word(kBucketSum | kBucketM2 | kBucketMin | kBucketMax, kBucketMax),
      static_cast<uint64_t>(WindowEnd::kNow),
      static_cast<uint64_t>(WindowEnd::kLatestEvent),
      // The distinct area.
      kDistinctDroppedWord,
      kDistinctHeaderWords,
      kDistinctExactEntries,
      kDistinctEntryHashWord,
      kDistinctEntrySeenWord,
      kDistinctEntryWords,
      kDistinctRegisterBits,
      kDistinctSliceTagWord,
      kDistinctSliceWords,
      kDistinctSlicesPerRing,
      kDistinctSlices,
      kDistinctAreaWords,
      // The event store.
      kEventStoreCountWord,
      kEventStoreHeadWord,
      kEventStoreHeaderWords,
      kEventEntryTimeWord,
      kEventEntryValueWord,
      kEventEntryWords,
      kMaxWindowEvents,
      offsetof(AggregateDescriptor, window_events),
      offsetof(AggregateDescriptor, min_periods),
      offsetof(AggregateDescriptor, ddof),
      // The source block.
      offsetof(SegmentHeader, source_offset),
      sizeof(SourceBlock),
      kMaxSourcePartitions,
      // Field groups.
      sizeof(GroupDescriptor),
      offsetof(TableDescriptor, group_count),
      offsetof(TableDescriptor, groups_offset),
      offsetof(FieldDescriptor, group),
      kMaxFieldGroups,
      static_cast<uint64_t>(kNoGroupTime),
  };
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a over the facts' bytes
  auto mix = [&h](uint64_t f) {
    for (int i = 0; i < 8; ++i) {
      h ^= (f >> (8 * i)) & 0xff;
      h *= 0x100000001b3ULL;
    }
  };
  for (uint64_t f : facts) mix(f);
  for (AggregateFn fn : kAllAggregateFns) {  // each function's number and what its buckets keep
    mix(static_cast<uint64_t>(fn));
    const uint32_t stats = aggregate_bucket_stats(fn);
    mix(aggregate_bucket_words(stats));
    for (uint32_t stat : {kBucketSum, kBucketM2, kBucketMin, kBucketMax}) {
      mix((stats & stat) != 0 ? aggregate_bucket_word(stats, stat) : 0);
    }
  }
  return h;
}

constexpr uint64_t round_up(uint64_t v, uint64_t align) { return (v + align - 1) / align * align; }

}  // namespace larder::layout

// Windowed aggregates: the writer-side state machine (docs/aggregates.md).
//
// Each slot of a table with aggregates owns a state block of
// AggregatePlan::stride_words words (word map in format.h). Only the writer
// reads or writes it; readers see the results as ordinary row fields, which
// the writer recomputes whenever the state changes.
//
// Every store into a state block or the dedup set goes through a Journal,
// which first records the word's old value in the segment's journal, so that
// a writer restarting after a crash can undo a half-made change
// (Journal::rollback). The one exception is reset_block(): it only runs on a
// slot that is not live yet, and a crash before the slot turns live leaves the
// block unused.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <span>
#include <vector>

#include "crash_hook.h"
#include "larder/layout/format.h"
#include "larder/layout/schema.h"
#include "larder/writer/writer.h"

namespace larder::writer {

using layout::AggregatePlan;
using layout::JournalEntry;
using layout::kArenaHeaderWords;
using layout::kStateDueWord;
using layout::SegmentHeader;
using layout::Word;

// The undo journal of one change (armed from begin() to commit()).
class Journal {
 public:
  Journal() = default;
  Journal(SegmentHeader* header, Word* base, JournalEntry* entries, uint64_t capacity)
      : header_(header), base_(base), entries_(entries), capacity_(capacity) {}

  // journal_armed: 1 while the change is being made, kDone once the slot
  // write that publishes it finished (the change is then complete).
  static constexpr uint64_t kDone = 2;

  void begin();
  void mark_done();
  // Records the old value of `w`, then stores `v` (no-op when equal).
  // Inline: a folded event makes a few dozen of these.
  void set(Word& w, uint64_t v) {
    const uint64_t old = layout::sync::load_relaxed(w);
    if (old == v) return;
    if (!recording_) [[unlikely]] {  // WriterOptions::crash_safety off: nothing to roll back
      layout::sync::store_relaxed(w, v);
      return;
    }
    crash_point(CrashPoint::kJournal);
    if (count_ >= capacity_) [[unlikely]]
      std::abort();  // plan_aggregates bounds every change; a bug otherwise
    JournalEntry& e = entries_[count_];
    layout::sync::store_relaxed(e.word, static_cast<uint64_t>(&w - base_));
    layout::sync::store_relaxed(e.old, old);
    layout::sync::store_release(header_->journal_count, ++count_);
    // The entry is in memory before the word changes: a SIGKILL after this
    // point finds the entry. Only the compiler could reorder these stores,
    // and a release store keeps every store before it in place (a plain mov
    // on x86); unlike a signal fence it does not make the compiler reload
    // every member and plan word the next set() reads.
    layout::sync::store_release(w, v);
  }
  void set_f64(Word& w, double v) { set(w, std::bit_cast<uint64_t>(v)); }
  void commit();
  bool armed() const { return armed_; }
  // false (WriterOptions::crash_safety off): set() stores without an entry.
  void set_recording(bool on) { recording_ = on; }

  // A restarting writer: undoes an armed change, newest entry first. Returns
  // the entries undone. (repair.cc decides whether to undo.)
  uint64_t rollback(uint64_t segment_words);

 private:
  SegmentHeader* header_ = nullptr;
  Word* base_ = nullptr;
  JournalEntry* entries_ = nullptr;
  uint64_t capacity_ = 0;
  uint64_t count_ = 0;
  bool armed_ = false;
  bool recording_ = true;
};

// An output of a time window resolved once at bind time
// (bind_aggregates), for the slot write: the words it reads and the row
// bytes it writes, so that rewriting a row's outputs after every event
// neither walks the plan nor dispatches on the field type per output. The
// outputs that need more than their window's words (distinct_count, count
// windows, sequences) or a conversion (a float32 or bool field) are kGeneral
// and go through output().
struct OutputSlot {
  enum class Kind : uint8_t { kGeneral, kFloat64, kInt64 };
  Kind kind = Kind::kGeneral;
  layout::AggregateFn fn = layout::AggregateFn::kSum;
  uint32_t ddof = 0;
  uint32_t window_word = 0;  // the window's first word in the block
  uint32_t last_word = 0;    // the group's kGroupLastValueWord in the block
  uint32_t row_byte = 0;     // the field's offset in the row
  uint32_t field = 0;        // the field's index (its validity bit)
};

// One table's aggregate configuration and state arrays.
struct AggregateTable {
  AggregatePlan plan;
  Word* state = nullptr;  // slot_count * plan.stride_words
  Word* dedup = nullptr;  // dedup_buckets * kDedupWays * kDedupEntryWords
  uint64_t dedup_buckets = 0;
  int64_t lateness_ms = 0;
  int64_t horizon_ms = 0;
  // plan.sources index of each group's source, -1 for a count of events.
  std::vector<int> group_source;
  // plan.sources index of each event store's source, -1 for a count of
  // events (aggregate_events.h).
  std::vector<int> store_source;
  bool counts_every_event = false;  // some group or event store has no source

  // The arena of dense rings (format.h): header, then chunk_count chunks.
  Word* arena = nullptr;
  uint64_t chunk_count = 0;

  // The bucket number of a time in each group, memoised: an event asks for
  // its own bucket and the clock's in every group several times (prefetch,
  // advance, fold), and the next events of a batch mostly ask for the same
  // ones, where a 64-bit division costs tens of cycles. Two per group, the
  // clock's and the last event's: [lo, lo + span) are bucket k's times
  // (span 0: none yet). Writer thread only; sized at attach (empty: every
  // call divides).
  struct BucketMemo {
    int64_t lo = 0;
    uint64_t span = 0;
    int64_t k = 0;
  };
  mutable std::vector<BucketMemo> bucket_memo;

  // One per plan.outputs entry, in order (bind_aggregates; empty: every
  // output goes through output()).
  std::vector<OutputSlot> output_slots;

  bool enabled() const { return plan.stride_words != 0; }
  Word* block(uint64_t slot) const { return state + slot * plan.stride_words; }
  Word* chunk(uint64_t index) const { return arena + kArenaHeaderWords + index * plan.chunk_words; }
};

// Prefetches for writing the cache lines an event at `event_time_ms` touches
// in `block`: the headers and windows, and one bucket per group, or for a
// sparse ring its first `sparse_lines` lines. Issued before the probe, so
// that these misses overlap the slot's. Reads nothing of the block.
void prefetch_event(const AggregateTable& t, const Word* block, int64_t clock_ms, int64_t event_time_ms,
                    uint32_t sparse_lines = 2);

// The second step of a batch's prefetch, once prefetch_event(..., 1) has
// brought the block's headers and first ring lines in: reads them to
// prefetch the lines that depend on the state, a dense ring's bucket (in an
// arena chunk) and the rest of a busy sparse ring. Reads only; the block may
// be any slot's (a wrong guess costs a useless prefetch).
void prefetch_buckets(const AggregateTable& t, const Word* block, int64_t clock_ms, int64_t event_time_ms);

// Prefetches the dedup set's bucket of `id` (scoped_event_id).
void prefetch_dedup(const AggregateTable& t, uint64_t id);

// Zeroes a block for a key that is about to be inserted. Call
// release_chunks() on it first: the block may hold chunks of an earlier key.
void reset_block(const AggregateTable& t, Word* block);

// Returns the block's arena chunks to the free list (a key deleted or
// replaced): the block's groups read as empty and sparse afterwards.
void release_chunks(const AggregateTable& t, Word* block, Journal& j);

// The arena chunks fold() would take for this event (groups whose inline
// buckets are all still in some window), and the chunks free now. An
// update is refused when the first exceeds the second: no window may lose
// an event. Read only.
uint32_t chunks_needed(const AggregateTable& t, const Word* block, int64_t clock_ms, int64_t event_time_ms,
                       std::span<const SourceValue> sources);
uint64_t chunks_free(const AggregateTable& t);
// Counts an update refused for want of a chunk (kArenaRefusedWord).
void count_arena_refusal(const AggregateTable& t);

// Drops from every `end: now` window the buckets that left it by clock_ms,
// and demotes a dense ring whose windows hold at most kInlineBuckets / 2
// events. Returns true when some window changed.
bool advance(const AggregateTable& t, Word* block, int64_t clock_ms, Journal& j);

// Folds one event into every group whose ring still holds its bucket,
// promoting a sparse group to a dense ring when it needs one more bucket
// (call chunks_needed() first). Returns false when no group took it (too
// late for all of them). *starts_moved (if given) tells whether the start
// or the emptiness of some window changed, which is all next_due_ms()
// reads besides what advance() moves: when neither changed them, the
// block's due word stands.
bool fold(const AggregateTable& t, Word* block, int64_t clock_ms, int64_t event_time_ms,
          std::span<const SourceValue> sources, Journal& j, bool* starts_moved = nullptr);

// The value and validity of output `o` as of the block's state.
struct OutputValue {
  double f64 = 0;
  int64_t i64 = 0;
  bool valid = false;
};

// The value of time-window output `fn` (any but distinct_count) from its
// window's words `w` and, for `last`, the group's last value: the one
// definition output() and the slot write's resolved outputs share. Reads
// only the words `fn` needs.
inline OutputValue window_value(layout::AggregateFn fn, uint32_t ddof, const Word* w, const Word& last) {
  using layout::AggregateFn;
  namespace sync = layout::sync;
  OutputValue r;
  const uint64_t count = sync::load_relaxed(w[layout::kWindowCountWord]);
  if (fn == AggregateFn::kCount) {
    r.i64 = static_cast<int64_t>(count);
    r.valid = true;
    return r;
  }
  auto f64 = [&](uint32_t word) { return std::bit_cast<double>(sync::load_relaxed(w[word])); };
  if (fn == AggregateFn::kSum) {
    r.f64 = count > 0 ? f64(layout::kWindowSumWord) : 0.0;
    r.valid = true;
    return r;
  }
  const bool spread = fn == AggregateFn::kVariance || fn == AggregateFn::kStddev;
  // Empty, or one value with ddof 1 (no sample variance, as in pandas).
  if (count == 0 || (spread && count <= ddof)) {
    r.f64 = std::numeric_limits<double>::quiet_NaN();
    return r;
  }
  const double n = static_cast<double>(count);
  r.valid = true;
  switch (fn) {
    case AggregateFn::kMean: r.f64 = f64(layout::kWindowSumWord) / n; break;
    case AggregateFn::kMin: r.f64 = f64(layout::kWindowMinWord); break;
    case AggregateFn::kMax: r.f64 = f64(layout::kWindowMaxWord); break;
    case AggregateFn::kLast: r.f64 = std::bit_cast<double>(sync::load_relaxed(last)); break;
    case AggregateFn::kVariance: r.f64 = std::max(0.0, f64(layout::kWindowM2Word) / (n - ddof)); break;
    case AggregateFn::kStddev: r.f64 = std::sqrt(std::max(0.0, f64(layout::kWindowM2Word) / (n - ddof))); break;
    default: break;
  }
  return r;
}
// `clock_ms` places the `end: now` windows of distinct_count, which the
// block's window words do not describe alone.
OutputValue output(const AggregateTable& t, const Word* block, size_t o, int64_t clock_ms);

// The distinct_count of `registers` (kDistinctRegisters one-byte HyperLogLog
// registers): Flajolet et al.'s estimate, linear counting below 2.5 m.
double hll_estimate(const uint8_t* registers);

// When the block's next bucket leaves an `end: now` window (ms), 0 if never.
int64_t next_due_ms(const AggregateTable& t, const Word* block);

// The block's slot-header word holding next_due_ms + 1.
inline Word& due_word(Word* block) { return block[kStateDueWord]; }

// The dedup set. `id` is the key-scoped id (scoped_event_id).
uint64_t scoped_event_id(uint64_t event_id, uint64_t key_hash);
bool dedup_contains(const AggregateTable& t, uint64_t id, int64_t clock_ms);
// Returns true when it forgot an id still inside its horizon to make room.
bool dedup_insert(const AggregateTable& t, uint64_t id, int64_t event_time_ms, int64_t clock_ms, Journal& j);
// Copies every id `from` remembers into `to`, the dedup set of a generation
// being built that nothing else reads yet: plain stores, no journal. A
// bucket of `to` with no room left keeps the ids with the newest event
// times, as dedup_insert would. Returns the ids that found no room.
uint64_t dedup_carry(const AggregateTable& from, const AggregateTable& to);

}  // namespace larder::writer

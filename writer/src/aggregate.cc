// Windowed aggregates: bucket rings, window totals, refresh times and the
// dedup set (see aggregate.h and docs/aggregates.md).
//
// A group (one source at one resolution) keeps a ring of buckets indexed by
// bucket number modulo the ring length; each bucket is tagged with its number
// + 1, so an entry left by an older lap of the ring reads as empty. Each
// distinct window of the group keeps running totals of the buckets it covers
// and `start`, the oldest bucket that may still hold some of them. Moving a
// window forward subtracts the buckets that left it; min and max are
// recomputed from the remaining buckets only when the bucket that left held
// the extreme.
//
// Spread is kept as M2, the sum of squared deviations from the set's own
// mean, per bucket and per window: Welford's update adds one value and Chan's
// formula merges or removes a bucket, so no sum of squares about a distant
// origin ever cancels (1e9 + {0..4} reads variance 2). A removal that would
// cancel most of the window's M2 (an outlier leaving) recomputes it from the
// remaining buckets instead.
//
// distinct_count (a group's distinct area, format.h) keeps up to K values
// exactly, each with the newest bucket it was seen in: a window counts the
// values seen inside it, so it decays by the bucket like the other functions.
// Every value also goes into a HyperLogLog sketch of its time slice (1/8 of
// the ring). When the exact set is full of values still inside some window,
// the value seen longest ago is let go and its bucket recorded (the dropped
// word); a window that still covers that bucket may be missing values, and
// reads the merged sketches of the slices whose newest bucket it covers
// instead (at least the exact values it holds). The refreshes that move the
// windows happen when a non-empty bucket leaves them, and every bucket these
// rules compare (a value's, the dropped one, a slice's newest) holds an event.
#include "aggregate.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "aggregate_events.h"
#include "crash_hook.h"
#include "larder/layout/sync.h"

namespace larder::writer {

using namespace layout;  // NOLINT: the engine works on the layout's words

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

inline uint64_t load(const Word& w) { return sync::load_relaxed(w); }
inline double load_f64(const Word& w) { return std::bit_cast<double>(sync::load_relaxed(w)); }
inline int64_t load_i64(const Word& w) { return static_cast<int64_t>(sync::load_relaxed(w)); }
// A "+ 1" word (0: none reads -1), unsigned so that no stored value overflows.
inline int64_t load_less1(const Word& w) { return static_cast<int64_t>(sync::load_relaxed(w) - 1); }

inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

inline int64_t ring_pos(int64_t bucket, int64_t ring) {
  const int64_t m = bucket % ring;
  return m < 0 ? m + ring : m;
}

// A window's words, read into locals, changed, and written back once.
struct WindowState {
  int64_t start = 0;
  uint64_t count = 0;
  double sum = 0, m2 = 0, min = kInf, max = -kInf;

  static WindowState read(const Word* w) {
    WindowState s;
    s.start = load_i64(w[kWindowStartWord]);
    s.count = load(w[kWindowCountWord]);
    s.sum = load_f64(w[kWindowSumWord]);
    s.m2 = load_f64(w[kWindowM2Word]);
    s.min = load_f64(w[kWindowMinWord]);
    s.max = load_f64(w[kWindowMaxWord]);
    return s;
  }
  void write(Word* w, Journal& j) const {
    j.set(w[kWindowStartWord], static_cast<uint64_t>(start));
    j.set(w[kWindowCountWord], count);
    j.set_f64(w[kWindowSumWord], sum);
    j.set_f64(w[kWindowM2Word], m2);
    j.set_f64(w[kWindowMinWord], min);
    j.set_f64(w[kWindowMaxWord], max);
  }
  void clear(int64_t new_start) {
    *this = WindowState{};
    start = new_start;
  }
};

// A bucket entry's statistics, at the offsets the group keeps.
struct BucketView {
  const AggregatePlan::Group& g;
  Word* b;
  uint32_t at_sum() const { return aggregate_bucket_word(g.stats(), kBucketSum); }
  uint32_t at_m2() const { return aggregate_bucket_word(g.stats(), kBucketM2); }
  uint32_t at_min() const { return aggregate_bucket_word(g.stats(), kBucketMin); }
  uint32_t at_max() const { return aggregate_bucket_word(g.stats(), kBucketMax); }
  int64_t tag() const { return load_i64(b[kBucketTagWord]); }
  uint64_t count() const { return load(b[kBucketCountWord]); }
  double sum() const { return g.sum ? load_f64(b[at_sum()]) : 0; }
  double m2() const { return g.sumsq ? load_f64(b[at_m2()]) : 0; }
  double min() const { return g.min ? load_f64(b[at_min()]) : kInf; }
  double max() const { return g.max ? load_f64(b[at_max()]) : -kInf; }
};

BucketView bucket_at(const AggregatePlan::Group& g, Word* block, int64_t bucket) {
  return BucketView{g, block + g.ring_offset + ring_pos(bucket, g.ring_buckets) * g.bucket_words};
}

// The bucket that `bucket` names, if the ring still holds it with data.
bool holds(const BucketView& v, int64_t bucket) { return v.tag() == bucket + 1 && v.count() > 0; }

// Welford: adds one value to a set of n values with sum `sum` and M2 `m2`.
inline void add_value(uint64_t n, double sum, double m2, double v, double* new_sum, double* new_m2) {
  *new_sum = sum + v;
  if (n == 0) {
    *new_m2 = 0;
    return;
  }
  *new_m2 = m2 + (v - sum / static_cast<double>(n)) * (v - *new_sum / static_cast<double>(n + 1));
}

// Chan et al.: the M2 of the union of two sets.
inline double merged_m2(double na, double sa, double m2a, double nb, double sb, double m2b) {
  if (na == 0) return m2b;
  if (nb == 0) return m2a;
  const double d = sb / nb - sa / na;
  return m2a + m2b + d * d * na * nb / (na + nb);
}

// Recomputes a window's statistics from its buckets [lo, hi]: min and max
// always, count, sum and M2 when `moments`.
void rescan(const AggregatePlan::Group& g, Word* block, int64_t lo, int64_t hi, bool moments, WindowState& w) {
  w.min = kInf;
  w.max = -kInf;
  uint64_t n = 0;
  double sum = 0, m2 = 0;
  for (int64_t k = lo; k <= hi; ++k) {
    const BucketView v = bucket_at(g, block, k);
    if (!holds(v, k)) continue;
    w.min = std::min(w.min, v.min());
    w.max = std::max(w.max, v.max());
    if (moments) {
      m2 = merged_m2(static_cast<double>(n), sum, m2, static_cast<double>(v.count()), v.sum(), v.m2());
      n += v.count();
      sum += v.sum();
    }
  }
  if (moments) {
    w.count = n;
    w.sum = sum;
    w.m2 = m2;
  }
}

// Moves window `w` (n buckets) so that it ends at bucket `end`: subtracts the
// buckets that left it. Returns true when the window's state changed.
bool move_window(const AggregatePlan::Group& g, const AggregatePlan::Window& win, Word* block, int64_t end,
                 Journal& j) {
  Word* words = block + win.offset;
  WindowState w = WindowState::read(words);
  const int64_t lo = end - win.buckets + 1;
  if (w.count == 0 || w.start >= lo) return false;
  bool min_dirty = false, max_dirty = false, moments_dirty = false;
  // Every bucket the window holds lies in [start, end_before], and
  // end_before - start < n, so this loop is bounded by the window length.
  const int64_t stop = std::min(lo, w.start + win.buckets);
  for (int64_t k = w.start; k < stop; ++k) {
    const BucketView v = bucket_at(g, block, k);
    if (!holds(v, k)) continue;
    const uint64_t nb = std::min(w.count, v.count());
    const uint64_t na = w.count - nb;
    if (g.sumsq && na > 0 && !moments_dirty) {
      // Chan's formula backwards: the M2 of what stays.
      const double n = static_cast<double>(w.count), dna = static_cast<double>(na), dnb = static_cast<double>(nb);
      const double sa = w.sum - v.sum();
      const double d = v.sum() / dnb - sa / dna;
      const double removed = v.m2() + d * d * dna * dnb / n;
      const double m2a = w.m2 - removed;
      // Most of the M2 leaving with this bucket: the difference would be
      // rounding noise; recompute from the buckets that stay.
      moments_dirty = removed > 1e6 * std::max(m2a, 0.0);
      w.m2 = std::max(m2a, 0.0);
    }
    w.count = na;
    w.sum -= v.sum();
    min_dirty |= g.min && v.min() <= w.min;
    max_dirty |= g.max && v.max() >= w.max;
  }
  if (w.count == 0) {
    // Exact zeros: no rounding residue survives an empty window.
    w.clear(lo);
  } else {
    w.start = lo;
    while (w.start < end && !holds(bucket_at(g, block, w.start), w.start)) ++w.start;
    if (min_dirty || max_dirty || moments_dirty) rescan(g, block, w.start, end, moments_dirty, w);
  }
  w.write(words, j);
  return true;
}

int64_t group_head(const Word* gh) { return load_i64(gh[kGroupHeadWord]) - 1; }  // -1: no event yet

// Where window `w` of group `g` ends: the clock's bucket, or the newest event's.
int64_t window_end(const AggregatePlan::Group& g, const AggregatePlan::Window& w, const Word* block, int64_t h) {
  return w.end == WindowEnd::kNow ? h : group_head(block + g.offset);
}

Word* distinct_entries(const AggregatePlan::Group& g, Word* block) {
  return block + g.distinct_offset + kDistinctHeaderWords;
}
Word* distinct_slice(const AggregatePlan::Group& g, Word* block, int64_t slice) {
  return block + g.distinct_offset + kDistinctHeaderWords + kDistinctExactEntries * kDistinctEntryWords +
         ring_pos(slice, kDistinctSlices) * kDistinctSliceWords;
}

// Folds value `dh` seen in bucket k into the distinct area. `h` is the
// clock's bucket; the group's head already includes k.
void fold_distinct(const AggregatePlan::Group& g, Word* block, int64_t h, int64_t k, uint64_t dh, Journal& j) {
  // An entry seen before every window's first bucket counts nowhere, now or
  // later (window ends only move forward): its place is free.
  int64_t first_needed = std::numeric_limits<int64_t>::max();
  for (const AggregatePlan::Window& w : g.windows) {
    first_needed = std::min(first_needed, window_end(g, w, block, h) - w.buckets + 1);
  }
  Word* entries = distinct_entries(g, block);
  Word* free = nullptr;
  Word* oldest = nullptr;
  int64_t oldest_seen = std::numeric_limits<int64_t>::max();
  for (uint32_t i = 0; i < kDistinctExactEntries; ++i) {
    Word* e = entries + i * kDistinctEntryWords;
    const uint64_t hash = load(e[kDistinctEntryHashWord]);
    const int64_t seen = load_less1(e[kDistinctEntrySeenWord]);
    if (hash == dh) {
      if (k > seen) j.set(e[kDistinctEntrySeenWord], static_cast<uint64_t>(k + 1));
      free = oldest = nullptr;
      oldest_seen = std::numeric_limits<int64_t>::min();
      break;
    }
    if (hash == 0 || seen < first_needed) {
      if (free == nullptr) free = e;
    } else if (seen < oldest_seen) {
      oldest_seen = seen;
      oldest = e;
    }
  }
  if (free != nullptr) {
    j.set(free[kDistinctEntryHashWord], dh);
    j.set(free[kDistinctEntrySeenWord], static_cast<uint64_t>(k + 1));
  } else if (oldest_seen != std::numeric_limits<int64_t>::min()) {
    // Full: keep the value seen more recently, and remember the other's bucket.
    int64_t dropped = k;
    if (oldest != nullptr && oldest_seen < k) {
      dropped = oldest_seen;
      j.set(oldest[kDistinctEntryHashWord], dh);
      j.set(oldest[kDistinctEntrySeenWord], static_cast<uint64_t>(k + 1));
    }
    Word& dw = block[g.distinct_offset + kDistinctDroppedWord];
    if (load(dw) == 0 || load_less1(dw) < dropped) j.set(dw, static_cast<uint64_t>(dropped + 1));
  }

  const int64_t s = floor_div(k, g.slice_buckets);
  Word* sl = distinct_slice(g, block, s);
  const bool empty = load(sl[kDistinctSliceTagWord]) == 0;
  const int64_t newest = load_less1(sl[kDistinctSliceTagWord]);
  const int64_t held = empty ? std::numeric_limits<int64_t>::min() : floor_div(newest, g.slice_buckets);
  if (held > s) return;  // a newer lap: cannot happen for a bucket the ring holds
  if (held < s) {        // empty, or an older lap of the slice ring
    j.set(sl[kDistinctSliceTagWord], static_cast<uint64_t>(k + 1));
    for (uint32_t i = 1; i < kDistinctSliceWords; ++i) j.set(sl[i], 0);
  } else if (k > newest) {
    j.set(sl[kDistinctSliceTagWord], static_cast<uint64_t>(k + 1));
  }
  const uint32_t reg = static_cast<uint32_t>(dh >> (64 - kDistinctRegisterBits));
  // The rank of the first 1 bit after the index bits (1-based); the sentinel
  // bounds it at 64 - kDistinctRegisterBits + 1.
  const uint64_t rest = (dh << kDistinctRegisterBits) | (uint64_t{1} << (kDistinctRegisterBits - 1));
  const uint64_t rank = static_cast<uint64_t>(std::countl_zero(rest)) + 1;
  Word& rw = sl[1 + reg / 8];
  const uint64_t word = load(rw);
  const unsigned shift = 8 * (reg % 8);
  if (((word >> shift) & 0xff) < rank) j.set(rw, (word & ~(uint64_t{0xff} << shift)) | (rank << shift));
}

// distinct_count of window `win` ending at bucket `end`.
int64_t distinct_output(const AggregatePlan::Group& g, const AggregatePlan::Window& win, const Word* block,
                        int64_t end) {
  Word* b = const_cast<Word*>(block);    // read only; the helpers serve fold too
  const int64_t lo = end - win.buckets;  // the window is (lo, end]
  int64_t exact = 0;
  const Word* entries = distinct_entries(g, b);
  for (uint32_t i = 0; i < kDistinctExactEntries; ++i) {
    const Word* e = entries + i * kDistinctEntryWords;
    const int64_t seen = load_less1(e[kDistinctEntrySeenWord]);
    exact += load(e[kDistinctEntryHashWord]) != 0 && seen > lo && seen <= end;
  }
  const Word& dw = b[g.distinct_offset + kDistinctDroppedWord];
  if (load(dw) == 0 || load_less1(dw) <= lo) return exact;  // nothing let go inside the window: exact
  uint8_t merged[kDistinctRegisters] = {};
  for (uint32_t p = 0; p < kDistinctSlices; ++p) {
    const Word* sl = b + g.distinct_offset + kDistinctHeaderWords + kDistinctExactEntries * kDistinctEntryWords +
                     p * kDistinctSliceWords;
    const int64_t newest = load_less1(sl[kDistinctSliceTagWord]);
    if (newest <= lo || newest > end) continue;
    for (uint32_t r = 0; r < kDistinctRegisters; ++r) {
      const uint8_t v = static_cast<uint8_t>(load(sl[1 + r / 8]) >> (8 * (r % 8)));
      merged[r] = std::max(merged[r], v);
    }
  }
  return std::max(exact, static_cast<int64_t>(std::llround(hll_estimate(merged))));
}

}  // namespace

double hll_estimate(const uint8_t* registers) {
  constexpr double m = kDistinctRegisters;
  // 2^-rank for every rank a register can hold (at most 64 - 7 + 1).
  static constexpr auto kInverse = [] {
    std::array<double, 256> t{};
    double v = 1;
    for (size_t i = 0; i < t.size(); ++i, v = i < 65 ? v / 2 : v) t[i] = v;  // no rank above 64 (damage) reads 0
    return t;
  }();
  double z = 0;
  uint32_t zeros = 0;
  for (uint32_t r = 0; r < kDistinctRegisters; ++r) {
    z += kInverse[registers[r]];
    zeros += registers[r] == 0;
  }
  const double alpha = 0.7213 / (1 + 1.079 / m);
  const double e = alpha * m * m / z;
  if (e <= 2.5 * m && zeros > 0) return m * std::log(m / zeros);
  return std::min(e, 0x1p62);  // only damaged registers come near: stays an int64
}

// ---------------------------------------------------------------------------
// Journal

void Journal::begin() {
  count_ = 0;
  sync::store_relaxed(header_->journal_count, uint64_t{0});
  sync::store_release(header_->journal_armed, uint64_t{1});
  armed_ = true;
}

void Journal::set(Word& w, uint64_t v) {
  const uint64_t old = sync::load_relaxed(w);
  if (old == v) return;
  crash_point(CrashPoint::kJournal);
  if (count_ >= capacity_) std::abort();  // plan_aggregates bounds every change; a bug otherwise
  JournalEntry& e = entries_[count_];
  sync::store_relaxed(e.word, static_cast<uint64_t>(&w - base_));
  sync::store_relaxed(e.old, old);
  sync::store_release(header_->journal_count, ++count_);
  // The entry is in memory before the word changes: a SIGKILL after this
  // point finds the entry (only the compiler could reorder these stores).
  sync::signal_fence();
  sync::store_relaxed(w, v);
}

void Journal::set_f64(Word& w, double v) { set(w, std::bit_cast<uint64_t>(v)); }

void Journal::mark_done() {
  sync::signal_fence();
  sync::store_release(header_->journal_armed, kDone);
}

void Journal::commit() {
  sync::signal_fence();
  sync::store_release(header_->journal_armed, uint64_t{0});
  sync::store_relaxed(header_->journal_count, uint64_t{0});
  count_ = 0;
  armed_ = false;
}

uint64_t Journal::rollback(uint64_t segment_words) {
  if (sync::load_acquire(header_->journal_armed) == 0) return 0;
  const uint64_t n = std::min(sync::load_relaxed(header_->journal_count), capacity_);
  for (uint64_t i = n; i-- > 0;) {
    const uint64_t at = sync::load_relaxed(entries_[i].word);
    if (at < segment_words) sync::store_relaxed(base_[at], sync::load_relaxed(entries_[i].old));
  }
  commit();
  return n;
}

// ---------------------------------------------------------------------------
// State

void prefetch_event(const AggregateTable& t, const Word* block, int64_t clock_ms, int64_t event_time_ms) {
  const char* hot = reinterpret_cast<const char*>(block);
  const uint32_t hot_bytes = std::min<uint32_t>(t.plan.hot_words * 8, 8 * 64);
  for (uint32_t at = 0; at < hot_bytes; at += 64) __builtin_prefetch(hot + at, 1, 3);
  const int64_t te = std::min(event_time_ms, clock_ms);
  for (const AggregatePlan::Group& g : t.plan.groups) {
    const int64_t k = floor_div(te, g.resolution_ms);
    __builtin_prefetch(block + g.ring_offset + ring_pos(k, g.ring_buckets) * g.bucket_words, 1, 3);
  }
}

void reset_block(const AggregateTable& t, Word* block) {
  for (uint32_t i = 0; i < t.plan.stride_words; ++i) sync::store_relaxed(block[i], uint64_t{0});
  for (const AggregatePlan::Group& g : t.plan.groups) {
    for (const AggregatePlan::Window& w : g.windows) {
      sync::store_relaxed(block[w.offset + kWindowMinWord], std::bit_cast<uint64_t>(kInf));
      sync::store_relaxed(block[w.offset + kWindowMaxWord], std::bit_cast<uint64_t>(-kInf));
    }
  }
}

bool advance(const AggregateTable& t, Word* block, int64_t clock_ms, Journal& j) {
  bool changed = false;
  for (const AggregatePlan::Group& g : t.plan.groups) {
    const int64_t h = floor_div(clock_ms, g.resolution_ms);
    for (const AggregatePlan::Window& w : g.windows) {
      if (w.end == WindowEnd::kNow) changed |= move_window(g, w, block, h, j);
    }
  }
  return changed;
}

bool fold(const AggregateTable& t, Word* block, int64_t clock_ms, int64_t event_time_ms,
          std::span<const SourceValue> sources, Journal& j) {
  // An event stamped after the clock counts as of the clock.
  const int64_t te = std::min(event_time_ms, clock_ms);
  bool folded = false;
  for (size_t gi = 0; gi < t.plan.groups.size(); ++gi) {
    const AggregatePlan::Group& g = t.plan.groups[gi];
    double v = 0;
    uint64_t dh = 0;
    if (const int src = t.group_source[gi]; src >= 0) {
      bool found = false;
      for (const SourceValue& s : sources) {
        if (s.source == static_cast<uint32_t>(src)) {
          v = s.value;
          dh = s.distinct;
          found = true;
        }
      }
      if (!found) continue;
    }
    const int64_t h = floor_div(clock_ms, g.resolution_ms);
    const int64_t k = floor_div(te, g.resolution_ms);
    if (k <= h - g.ring_buckets) continue;  // older than every window of the group
    folded = true;

    Word* gh = block + g.offset;
    int64_t head = group_head(gh);
    if (k > head) {
      head = k;
      j.set(gh[kGroupHeadWord], static_cast<uint64_t>(head + 1));
      for (const AggregatePlan::Window& w : g.windows) {
        if (w.end == WindowEnd::kLatestEvent) move_window(g, w, block, head, j);
      }
    }
    if (const int64_t latest = load_i64(gh[kGroupLastTimeWord]) - 1; te >= latest) {
      j.set(gh[kGroupLastTimeWord], static_cast<uint64_t>(te + 1));
      j.set_f64(gh[kGroupLastValueWord], v);
    }

    BucketView b = bucket_at(g, block, k);
    if (b.tag() != k + 1) {
      j.set(b.b[kBucketTagWord], static_cast<uint64_t>(k + 1));
      j.set(b.b[kBucketCountWord], 0);
      if (g.sum) j.set_f64(b.b[b.at_sum()], 0);
      if (g.sumsq) j.set_f64(b.b[b.at_m2()], 0);
      if (g.min) j.set_f64(b.b[b.at_min()], kInf);
      if (g.max) j.set_f64(b.b[b.at_max()], -kInf);
    }
    {
      double sum, m2;
      add_value(b.count(), b.sum(), b.m2(), v, &sum, &m2);
      if (g.sum) j.set_f64(b.b[b.at_sum()], sum);
      if (g.sumsq) j.set_f64(b.b[b.at_m2()], m2);
      j.set(b.b[kBucketCountWord], b.count() + 1);
    }
    if (g.min) j.set_f64(b.b[b.at_min()], std::min(b.min(), v));
    if (g.max) j.set_f64(b.b[b.at_max()], std::max(b.max(), v));

    for (const AggregatePlan::Window& win : g.windows) {
      const int64_t end = win.end == WindowEnd::kNow ? h : head;
      if (k <= end - win.buckets) continue;  // left this window already
      Word* words = block + win.offset;
      WindowState w = WindowState::read(words);
      if (w.count == 0) {
        w.clear(k);
      } else {
        w.start = std::min(w.start, k);
      }
      if (g.sum) {
        double sum, m2;
        add_value(w.count, w.sum, w.m2, v, &sum, &m2);
        w.sum = sum;
        if (g.sumsq) w.m2 = m2;
      }
      ++w.count;
      if (g.min) w.min = std::min(w.min, v);
      if (g.max) w.max = std::max(w.max, v);
      w.write(words, j);
    }
    if (g.distinct) fold_distinct(g, block, h, k, dh != 0 ? dh : distinct_hash_number(v), j);
  }
  return folded;
}

OutputValue output(const AggregateTable& t, const Word* block, size_t o, int64_t clock_ms) {
  const AggregatePlan::Output& out = t.plan.outputs[o];
  if (out.events != 0) return event_output(t, block, out);  // a count window (aggregate_events.cc)
  const AggregatePlan::Group& g = t.plan.groups[out.group];
  const WindowState w = WindowState::read(block + g.windows[out.window].offset);
  OutputValue r;
  const double n = static_cast<double>(w.count);
  auto variance = [&] { return std::max(0.0, w.m2 / (n - out.ddof)); };
  switch (out.fn) {
    case AggregateFn::kCount:
      r.i64 = static_cast<int64_t>(w.count);
      r.valid = true;
      return r;
    case AggregateFn::kSum:
      r.f64 = w.count > 0 ? w.sum : 0.0;
      r.valid = true;
      return r;
    case AggregateFn::kDistinctCount: {
      const AggregatePlan::Window& win = g.windows[out.window];
      r.i64 = w.count > 0
                  ? distinct_output(g, win, block, window_end(g, win, block, floor_div(clock_ms, g.resolution_ms)))
                  : 0;
      r.valid = true;
      return r;
    }
    default: break;
  }
  // Empty, or one value with ddof 1 (no sample variance, as in pandas).
  if (w.count == 0 || ((out.fn == AggregateFn::kVariance || out.fn == AggregateFn::kStddev) && w.count <= out.ddof)) {
    r.f64 = kNaN;
    return r;
  }
  r.valid = true;
  switch (out.fn) {
    case AggregateFn::kMean: r.f64 = w.sum / n; break;
    case AggregateFn::kMin: r.f64 = w.min; break;
    case AggregateFn::kMax: r.f64 = w.max; break;
    case AggregateFn::kLast: r.f64 = load_f64(block[g.offset + kGroupLastValueWord]); break;
    case AggregateFn::kVariance: r.f64 = variance(); break;
    case AggregateFn::kStddev: r.f64 = std::sqrt(variance()); break;
    default: break;
  }
  return r;
}

int64_t next_due_ms(const AggregateTable& t, const Word* block) {
  int64_t due = 0;
  for (const AggregatePlan::Group& g : t.plan.groups) {
    for (const AggregatePlan::Window& w : g.windows) {
      if (w.end != WindowEnd::kNow || load(block[w.offset + kWindowCountWord]) == 0) continue;
      // Bucket `start` leaves the window when the clock reaches bucket start + n.
      const int64_t at = (load_i64(block[w.offset + kWindowStartWord]) + w.buckets) * g.resolution_ms;
      if (due == 0 || at < due) due = at;
    }
  }
  return due;
}

// ---------------------------------------------------------------------------
// Dedup

uint64_t scoped_event_id(uint64_t event_id, uint64_t key_hash) {
  uint64_t x = event_id ^ (key_hash * 0x9E3779B97F4A7C15ULL);
  // murmur3's finaliser: every input bit reaches every output bit.
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x == 0 ? 1 : x;
}

namespace {
Word* dedup_bucket(const AggregateTable& t, uint64_t id) {
  __extension__ using u128 = unsigned __int128;
  const uint64_t b = static_cast<uint64_t>((static_cast<u128>(id) * t.dedup_buckets) >> 64);
  return t.dedup + b * kDedupWays * kDedupEntryWords;
}
}  // namespace

bool dedup_contains(const AggregateTable& t, uint64_t id, int64_t clock_ms) {
  if (t.dedup_buckets == 0) return false;
  const Word* b = dedup_bucket(t, id);
  for (size_t i = 0; i < kDedupWays; ++i) {
    const Word* e = b + i * kDedupEntryWords;
    if (load(e[kDedupIdWord]) != id) continue;
    const int64_t time1 = load_i64(e[kDedupTimeWord]);
    if (time1 != 0 && time1 - 1 > clock_ms - t.horizon_ms) return true;
  }
  return false;
}

bool dedup_insert(const AggregateTable& t, uint64_t id, int64_t event_time_ms, int64_t clock_ms, Journal& j) {
  if (t.dedup_buckets == 0) return false;
  Word* b = dedup_bucket(t, id);
  size_t victim = 0;
  int64_t oldest = std::numeric_limits<int64_t>::max();
  for (size_t i = 0; i < kDedupWays; ++i) {
    const Word* e = b + i * kDedupEntryWords;
    const int64_t time1 = load_i64(e[kDedupTimeWord]);
    if (load(e[kDedupIdWord]) == id || time1 == 0) {
      victim = i;
      oldest = std::numeric_limits<int64_t>::min();
      break;
    }
    if (time1 < oldest) {
      oldest = time1;
      victim = i;
    }
  }
  const bool evicted = oldest != std::numeric_limits<int64_t>::min() && oldest - 1 > clock_ms - t.horizon_ms;
  Word* e = b + victim * kDedupEntryWords;
  j.set(e[kDedupIdWord], id);
  j.set(e[kDedupTimeWord], static_cast<uint64_t>(event_time_ms + 1));
  return evicted;
}

}  // namespace larder::writer

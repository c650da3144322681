// Windowed aggregates: bucket rings, window totals, refresh times and the
// dedup set (see aggregate.h and docs/aggregates.md).
//
// A group (one source at one resolution) keeps a ring of buckets indexed by
// bucket number modulo the ring length; each bucket is tagged with its number
// + 1, so an entry left by an older lap of the ring reads as empty. A ring
// longer than kInlineBuckets is sparse until a key needs more buckets than
// that (format.h): the inline buckets are then a set searched by tag, and
// every walk over buckets visits them in bucket order, so a sparse ring and
// a dense one compute the same floating-point sums. A bucket is dead, free
// for another, once it is older than every window of its group can reach
// (first_needed): window ends only move forward, and every window has been
// moved to the current ends before fold() chooses a bucket. The unused
// inline buckets (tag 0) of a sparse ring are always the last ones: a
// bucket is reused in place and a new one takes the first unused place, so
// a walk stops at the first tag 0 (a quiet key reads one cache line). Each
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

// Which memo of AggregateTable::bucket_memo a time uses.
enum class TimeOf { kClock = 0, kEvent = 1 };

// floor_div(ms, g.resolution_ms), through the group's memo. `g` is an
// element of t.plan.groups.
inline int64_t bucket_of(const AggregateTable& t, const AggregatePlan::Group& g, int64_t ms, TimeOf which) {
  const size_t at = 2 * static_cast<size_t>(&g - t.plan.groups.data()) + static_cast<size_t>(which);
  if (at >= t.bucket_memo.size()) [[unlikely]]
    return floor_div(ms, g.resolution_ms);
  AggregateTable::BucketMemo& m = t.bucket_memo[at];
  // ms - lo as unsigned is exact once ms >= lo: no overflow at either end.
  if (ms >= m.lo && static_cast<uint64_t>(ms) - static_cast<uint64_t>(m.lo) < m.span) return m.k;
  const int64_t k = floor_div(ms, g.resolution_ms);
  int64_t lo = 0;
  if (!__builtin_mul_overflow(k, g.resolution_ms, &lo)) m = {lo, static_cast<uint64_t>(g.resolution_ms), k};
  return k;
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

// The arena chunk holding group g's dense ring, index + 1; 0 when the ring
// is sparse, or when the word names no chunk of the arena (damage: the
// group then reads as sparse rather than touch memory outside the arena).
uint64_t chunk_of(const AggregateTable& t, const AggregatePlan::Group& g, const Word* block) {
  if (!g.sparse()) return 0;
  const uint64_t c = load(block[g.offset + kGroupChunkWord]);
  return c <= t.chunk_count ? c : 0;
}
bool is_dense(const AggregateTable& t, const AggregatePlan::Group& g, const Word* block) {
  return !g.sparse() || chunk_of(t, g, block) != 0;
}
Word* inline_bucket(const AggregatePlan::Group& g, Word* block, uint32_t i) {
  return block + g.ring_offset + i * g.bucket_words;
}

// Bucket `bucket`'s place in a dense ring: positions [0, ring - inline) in
// the chunk, the rest in the inline buckets.
Word* dense_bucket(const AggregateTable& t, const AggregatePlan::Group& g, Word* block, int64_t bucket) {
  const int64_t p = ring_pos(bucket, g.ring_buckets);
  const int64_t split = g.ring_buckets - g.inline_buckets;
  if (p >= split) return inline_bucket(g, block, static_cast<uint32_t>(p - split));
  return t.chunk(chunk_of(t, g, block) - 1) + p * g.bucket_words;
}

// The bucket that `bucket` names, if the ring still holds it with data.
bool holds(const BucketView& v, int64_t bucket) { return v.tag() == bucket + 1 && v.count() > 0; }

// Calls f(k, view) for every bucket k in [lo, hi] that holds data, in
// increasing k.
template <class F>
void for_each_held(const AggregateTable& t, const AggregatePlan::Group& g, Word* block, int64_t lo, int64_t hi, F&& f) {
  if (is_dense(t, g, block)) {
    for (int64_t k = lo; k <= hi; ++k) {
      const BucketView v{g, dense_bucket(t, g, block, k)};
      if (holds(v, k)) f(k, v);
    }
    return;
  }
  struct Held {
    int64_t k;
    Word* b;
  };
  Held held[kInlineBuckets];
  uint32_t n = 0;
  for (uint32_t i = 0; i < g.inline_buckets; ++i) {
    Word* b = inline_bucket(g, block, i);
    if (load(b[kBucketTagWord]) == 0) break;
    const int64_t k = load_less1(b[kBucketTagWord]);
    if (load(b[kBucketCountWord]) == 0 || k < lo || k > hi) continue;
    uint32_t at = n++;
    for (; at > 0 && held[at - 1].k > k; --at) held[at] = held[at - 1];
    held[at] = Held{k, b};
  }
  for (uint32_t i = 0; i < n; ++i) f(held[i].k, BucketView{g, held[i].b});
}

// The first bucket in [lo, end) that holds data, else end.
int64_t first_held(const AggregateTable& t, const AggregatePlan::Group& g, Word* block, int64_t lo, int64_t end) {
  int64_t first = end;
  if (is_dense(t, g, block)) {
    for (int64_t k = lo; k < end; ++k) {
      if (holds(BucketView{g, dense_bucket(t, g, block, k)}, k)) return k;
    }
    return end;
  }
  for (uint32_t i = 0; i < g.inline_buckets; ++i) {
    const Word* b = inline_bucket(g, block, i);
    if (load(b[kBucketTagWord]) == 0) break;
    const int64_t k = load_less1(b[kBucketTagWord]);
    if (load(b[kBucketCountWord]) != 0 && k >= lo && k < first) first = k;
  }
  return first;
}

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
void rescan(const AggregateTable& t, const AggregatePlan::Group& g, Word* block, int64_t lo, int64_t hi, bool moments,
            WindowState& w) {
  w.min = kInf;
  w.max = -kInf;
  uint64_t n = 0;
  double sum = 0, m2 = 0;
  for_each_held(t, g, block, lo, hi, [&](int64_t, const BucketView& v) {
    w.min = std::min(w.min, v.min());
    w.max = std::max(w.max, v.max());
    if (moments) {
      m2 = merged_m2(static_cast<double>(n), sum, m2, static_cast<double>(v.count()), v.sum(), v.m2());
      n += v.count();
      sum += v.sum();
    }
  });
  if (moments) {
    w.count = n;
    w.sum = sum;
    w.m2 = m2;
  }
}

// The work of move_window(), once its test found a bucket that left the
// window (older than end - n + 1).
bool shift_window(const AggregateTable& t, const AggregatePlan::Group& g, const AggregatePlan::Window& win, Word* block,
                  int64_t end, Journal& j) {
  Word* words = block + win.offset;
  const int64_t lo = end - win.buckets + 1;
  WindowState w = WindowState::read(words);
  bool min_dirty = false, max_dirty = false, moments_dirty = false;
  // Every bucket the window holds lies in [start, end_before], and
  // end_before - start < n, so this loop is bounded by the window length.
  const int64_t stop = std::min(lo, w.start + win.buckets);
  for_each_held(t, g, block, w.start, stop - 1, [&](int64_t, const BucketView& v) {
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
  });
  if (w.count == 0) {
    // Exact zeros: no rounding residue survives an empty window.
    w.clear(lo);
  } else {
    w.start = first_held(t, g, block, lo, end);
    if (min_dirty || max_dirty || moments_dirty) rescan(t, g, block, w.start, end, moments_dirty, w);
  }
  w.write(words, j);
  return true;
}

// Moves window `win` (n buckets) so that it ends at bucket `end`: subtracts
// the buckets that left it. Returns true when the window's state changed.
// Most calls find nothing to subtract: the test on two words is inline.
inline bool move_window(const AggregateTable& t, const AggregatePlan::Group& g, const AggregatePlan::Window& win,
                        Word* block, int64_t end, Journal& j) {
  const Word* words = block + win.offset;
  if (load(words[kWindowCountWord]) == 0 || load_i64(words[kWindowStartWord]) >= end - win.buckets + 1) return false;
  return shift_window(t, g, win, block, end, j);
}

int64_t group_head(const Word* gh) { return load_i64(gh[kGroupHeadWord]) - 1; }  // -1: no event yet

// Where window `w` of group `g` ends: the clock's bucket, or the newest event's.
int64_t window_end(const AggregatePlan::Group& g, const AggregatePlan::Window& w, const Word* block, int64_t h) {
  return w.end == WindowEnd::kNow ? h : group_head(block + g.offset);
}

// The oldest bucket any window of the group can still reach, with the
// clock at bucket h and the group's head as stored: older ones are dead.
int64_t first_needed(const AggregatePlan::Group& g, const Word* block, int64_t h) {
  int64_t first = std::numeric_limits<int64_t>::max();
  for (const AggregatePlan::Window& w : g.windows) first = std::min(first, window_end(g, w, block, h) - w.buckets + 1);
  return first;
}

// The arena. Chunk words are journaled except the contents of a chunk this
// change took: a rollback puts the chunk back, so they are never read. Its
// link word is journaled, since the free list reads it.

constexpr uint64_t kNoChunk = ~uint64_t{0};

uint64_t take_chunk(const AggregateTable& t, Journal& j) {
  Word* a = t.arena;
  uint64_t c = kNoChunk;
  const uint64_t head = load(a[kArenaFreeHeadWord]);
  if (head != 0 && head <= t.chunk_count) {
    c = head - 1;
    const uint64_t next = load(t.chunk(c)[kArenaChunkNextWord]);
    j.set(a[kArenaFreeHeadWord], next <= t.chunk_count ? next : 0);  // a damaged link ends the list
  } else if (const uint64_t fresh = load(a[kArenaFreshWord]); fresh < t.chunk_count) {
    c = fresh;
    j.set(a[kArenaFreshWord], fresh + 1);
  } else {
    return kNoChunk;
  }
  const uint64_t used = load(a[kArenaUsedWord]) + 1;
  j.set(a[kArenaUsedWord], used);
  if (used > load(a[kArenaPeakUsedWord])) j.set(a[kArenaPeakUsedWord], used);
  j.set(t.chunk(c)[kArenaChunkNextWord], 0);
  return c;
}

void free_chunk(const AggregateTable& t, uint64_t c, Journal& j) {
  Word* a = t.arena;
  j.set(t.chunk(c)[kArenaChunkNextWord], load(a[kArenaFreeHeadWord]));
  j.set(a[kArenaFreeHeadWord], c + 1);
  const uint64_t used = load(a[kArenaUsedWord]);
  j.set(a[kArenaUsedWord], used > 0 ? used - 1 : 0);
}

// A bucket's words, copied out while the place it came from is rewritten.
struct BucketCopy {
  int64_t k = 0;
  uint64_t w[kBucketFixedWords + 4] = {};
};

// Sparse to dense: every inline bucket is in some window (fold found none
// free), so they span less than the ring and land on distinct positions.
bool promote(const AggregateTable& t, const AggregatePlan::Group& g, Word* block, Journal& j) {
  const uint64_t c = take_chunk(t, j);
  if (c == kNoChunk) return false;
  BucketCopy kept[kInlineBuckets];
  uint32_t n = 0;
  for (uint32_t i = 0; i < g.inline_buckets; ++i) {
    const Word* b = inline_bucket(g, block, i);
    if (load(b[kBucketTagWord]) == 0) break;
    if (load(b[kBucketCountWord]) == 0) continue;
    kept[n].k = load_less1(b[kBucketTagWord]);
    for (uint32_t w = 0; w < g.bucket_words; ++w) kept[n].w[w] = load(b[w]);
    ++n;
  }
  Word* chunk = t.chunk(c);
  for (uint32_t w = 1; w < g.chunk_words(); ++w) sync::store_relaxed(chunk[w], uint64_t{0});
  j.set(block[g.offset + kGroupChunkWord], c + 1);
  for (uint32_t i = 0; i < g.inline_buckets; ++i) j.set(inline_bucket(g, block, i)[kBucketTagWord], 0);
  for (uint32_t e = 0; e < n; ++e) {
    Word* b = dense_bucket(t, g, block, kept[e].k);
    const bool in_chunk = b < block || b >= block + t.plan.stride_words;
    for (uint32_t w = 0; w < g.bucket_words; ++w) {
      if (in_chunk) {
        sync::store_relaxed(b[w], kept[e].w[w]);
      } else {
        j.set(b[w], kept[e].w[w]);
      }
    }
  }
  return true;
}

// Dense to sparse, once the windows hold at most kInlineBuckets / 2 events
// (so at most that many buckets: each bucket a window can still reach lies
// in some window). The margin keeps a key near K buckets from taking and
// freeing a chunk on every event.
void demote(const AggregateTable& t, const AggregatePlan::Group& g, Word* block, int64_t h, Journal& j, uint64_t c) {
  uint64_t events = 0;
  for (const AggregatePlan::Window& w : g.windows) events += load(block[w.offset + kWindowCountWord]);
  if (events > kInlineBuckets / 2) return;
  BucketCopy kept[kInlineBuckets];
  uint32_t n = 0;
  const int64_t head = group_head(block + g.offset);
  if (head >= 0) {
    for_each_held(t, g, block, first_needed(g, block, h), head, [&](int64_t k, const BucketView& v) {
      if (n == kInlineBuckets) return;  // cannot happen: fewer buckets than events
      kept[n].k = k;
      for (uint32_t w = 0; w < g.bucket_words; ++w) kept[n].w[w] = load(v.b[w]);
      ++n;
    });
  }
  j.set(block[g.offset + kGroupChunkWord], 0);
  for (uint32_t i = 0; i < g.inline_buckets; ++i) {
    Word* b = inline_bucket(g, block, i);
    if (i < n) {
      for (uint32_t w = 0; w < g.bucket_words; ++w) j.set(b[w], kept[i].w[w]);
    } else {
      j.set(b[kBucketTagWord], 0);
      j.set(b[kBucketCountWord], 0);
    }
  }
  free_chunk(t, c - 1, j);
}
// demote() when the ring is dense (c: its chunk + 1) and the windows are
// quiet enough; the test on the chunk word inline, since nearly every call
// finds the ring sparse.
inline void maybe_demote(const AggregateTable& t, const AggregatePlan::Group& g, Word* block, int64_t h, Journal& j) {
  if (const uint64_t c = chunk_of(t, g, block); c != 0) [[unlikely]]
    demote(t, g, block, h, j, c);
}

// A sparse group's inline bucket for bucket k: the one tagged k, else a
// dead or unused one; nullptr when every one is still needed. first() gives
// the oldest bucket still needed (first_needed), asked only when a bucket
// other than k's is in use: the common event finds k's bucket first.
template <class First>
Word* sparse_bucket(const AggregatePlan::Group& g, Word* block, int64_t k, First&& first) {
  Word* free = nullptr;
  int64_t needed = 0;
  bool asked = false;
  for (uint32_t i = 0; i < g.inline_buckets; ++i) {
    Word* b = inline_bucket(g, block, i);
    const uint64_t tag = load(b[kBucketTagWord]);
    if (tag == 0) return free != nullptr ? free : b;  // the unused ones follow: k is not held
    if (tag == static_cast<uint64_t>(k + 1)) return b;
    if (free != nullptr) continue;
    if (load(b[kBucketCountWord]) == 0) {
      free = b;
      continue;
    }
    if (!asked) {
      needed = first();
      asked = true;
    }
    if (static_cast<int64_t>(tag - 1) < needed) free = b;
  }
  return free;
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

void prefetch_event(const AggregateTable& t, const Word* block, int64_t clock_ms, int64_t event_time_ms,
                    uint32_t sparse_lines) {
  const char* hot = reinterpret_cast<const char*>(block);
  const uint32_t hot_bytes = std::min<uint32_t>(t.plan.hot_words * 8, 8 * 64);
  for (uint32_t at = 0; at < hot_bytes; at += 64) __builtin_prefetch(hot + at, 1, 3);
  const int64_t te = std::min(event_time_ms, clock_ms);
  for (const AggregatePlan::Group& g : t.plan.groups) {
    if (!g.sparse()) {
      const int64_t k = bucket_of(t, g, te, TimeOf::kEvent);
      __builtin_prefetch(block + g.ring_offset + ring_pos(k, g.ring_buckets) * g.bucket_words, 1, 3);
      continue;
    }
    // Sparse (the usual case for a long ring): the fold reads the inline
    // tags up to the first unused one, for a quiet key the first line or
    // two. A dense ring's bucket would need the chunk word, not loaded yet.
    const char* first = reinterpret_cast<const char*>(block + g.ring_offset);
    for (uint32_t l = 0; l < sparse_lines; ++l) __builtin_prefetch(first + 64 * l, 1, 3);
  }
}

void prefetch_buckets(const AggregateTable& t, const Word* block, int64_t clock_ms, int64_t event_time_ms) {
  const int64_t te = std::min(event_time_ms, clock_ms);
  Word* b = const_cast<Word*>(block);  // read only; the helpers serve fold too
  for (const AggregatePlan::Group& g : t.plan.groups) {
    if (!g.sparse()) continue;  // prefetch_event() fetched its bucket
    if (chunk_of(t, g, block) != 0) {
      // Dense: the bucket's place in the chunk, or inline.
      __builtin_prefetch(dense_bucket(t, g, b, bucket_of(t, g, te, TimeOf::kEvent)), 1, 3);
      continue;
    }
    // Sparse: the walk reads tags up to the first unused bucket, and the
    // fold writes the bucket it stops at. prefetch_event() fetched the line
    // of the first tag; the lines after it are needed only when that line's
    // buckets are all in use, and then, for a key this busy, likely all.
    const auto first_line = reinterpret_cast<uintptr_t>(block + g.ring_offset) & ~uintptr_t{63};
    const auto ring_end = reinterpret_cast<uintptr_t>(block + g.ring_offset + g.inline_buckets * g.bucket_words);
    uintptr_t end = 0;  // one past the last byte the fold may touch
    for (uint32_t i = 0; i < g.inline_buckets; ++i) {
      const Word* bucket = inline_bucket(g, b, i);
      const auto at = reinterpret_cast<uintptr_t>(bucket);
      if (at >= first_line + 64) {
        end = ring_end;
        break;
      }
      end = at + 8 * g.bucket_words;
      if (load(bucket[kBucketTagWord]) == 0) break;
    }
    for (uintptr_t line = first_line + 64; line < end; line += 64) {
      __builtin_prefetch(reinterpret_cast<const void*>(line), 1, 3);
    }
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
    const int64_t h = bucket_of(t, g, clock_ms, TimeOf::kClock);
    for (const AggregatePlan::Window& w : g.windows) {
      if (w.end == WindowEnd::kNow) changed |= move_window(t, g, w, block, h, j);
    }
    maybe_demote(t, g, block, h, j);
  }
  return changed;
}

void release_chunks(const AggregateTable& t, Word* block, Journal& j) {
  for (const AggregatePlan::Group& g : t.plan.groups) {
    if (const uint64_t c = chunk_of(t, g, block); c != 0) {
      j.set(block[g.offset + kGroupChunkWord], 0);
      free_chunk(t, c - 1, j);
    }
  }
}

uint32_t chunks_needed(const AggregateTable& t, const Word* block, int64_t clock_ms, int64_t event_time_ms,
                       std::span<const SourceValue> sources) {
  if (t.plan.chunk_words == 0) return 0;
  Word* b = const_cast<Word*>(block);  // read only; the helpers serve fold too
  const int64_t te = std::min(event_time_ms, clock_ms);
  uint32_t needed = 0;
  for (size_t gi = 0; gi < t.plan.groups.size(); ++gi) {
    const AggregatePlan::Group& g = t.plan.groups[gi];
    if (is_dense(t, g, block)) continue;
    if (const int src = t.group_source[gi]; src >= 0) {
      bool found = false;
      for (const SourceValue& sv : sources) found |= sv.source == static_cast<uint32_t>(src);
      if (!found) continue;
    }
    const int64_t h = bucket_of(t, g, clock_ms, TimeOf::kClock);
    const int64_t k = bucket_of(t, g, te, TimeOf::kEvent);
    if (k <= h - g.ring_buckets) continue;
    // As fold() will see it: the head moved to k first.
    int64_t first = std::numeric_limits<int64_t>::max();
    const int64_t head = std::max(group_head(block + g.offset), k);
    for (const AggregatePlan::Window& w : g.windows) {
      first = std::min(first, (w.end == WindowEnd::kNow ? h : head) - w.buckets + 1);
    }
    needed += sparse_bucket(g, b, k, [first] { return first; }) == nullptr;
  }
  return needed;
}

uint64_t chunks_free(const AggregateTable& t) {
  if (t.arena == nullptr) return 0;
  const uint64_t used = load(t.arena[kArenaUsedWord]);
  return used < t.chunk_count ? t.chunk_count - used : 0;
}

void count_arena_refusal(const AggregateTable& t) {
  if (t.arena != nullptr) sync::store_relaxed(t.arena[kArenaRefusedWord], load(t.arena[kArenaRefusedWord]) + 1);
}

bool fold(const AggregateTable& t, Word* block, int64_t clock_ms, int64_t event_time_ms,
          std::span<const SourceValue> sources, Journal& j, bool* starts_moved) {
  // An event stamped after the clock counts as of the clock.
  const int64_t te = std::min(event_time_ms, clock_ms);
  bool folded = false;
  bool moved = false;  // some window's start or emptiness changed
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
    const int64_t h = bucket_of(t, g, clock_ms, TimeOf::kClock);
    const int64_t k = bucket_of(t, g, te, TimeOf::kEvent);
    if (k <= h - g.ring_buckets) continue;  // older than every window of the group
    folded = true;

    Word* gh = block + g.offset;
    int64_t head = group_head(gh);
    if (k > head) {
      head = k;
      j.set(gh[kGroupHeadWord], static_cast<uint64_t>(head + 1));
      for (const AggregatePlan::Window& w : g.windows) {
        if (w.end == WindowEnd::kLatestEvent) move_window(t, g, w, block, head, j);
      }
    }
    if (const int64_t latest = load_i64(gh[kGroupLastTimeWord]) - 1; te >= latest) {
      j.set(gh[kGroupLastTimeWord], static_cast<uint64_t>(te + 1));
      j.set_f64(gh[kGroupLastValueWord], v);
    }

    Word* at = nullptr;
    if (is_dense(t, g, block)) {
      at = dense_bucket(t, g, block, k);
    } else if (at = sparse_bucket(g, block, k, [&] { return first_needed(g, block, h); }); at == nullptr) {
      // chunks_needed() said a chunk is free; only a damaged free list
      // disagrees, and then the event cannot count in this group.
      if (!promote(t, g, block, j)) continue;
      at = dense_bucket(t, g, block, k);
    }
    BucketView b{g, at};
    if (b.tag() != k + 1) {
      j.set(b.b[kBucketTagWord], static_cast<uint64_t>(k + 1));
      j.set(b.b[kBucketCountWord], 0);
      if (g.sum) j.set_f64(b.b[b.at_sum()], 0);
      if (g.sumsq) j.set_f64(b.b[b.at_m2()], 0);
      if (g.min) j.set_f64(b.b[b.at_min()], kInf);
      if (g.max) j.set_f64(b.b[b.at_max()], -kInf);
    }
    // M2 only where the group keeps it: its update costs two divisions.
    if (g.sumsq) {
      double sum, m2;
      add_value(b.count(), b.sum(), b.m2(), v, &sum, &m2);
      j.set_f64(b.b[b.at_sum()], sum);
      j.set_f64(b.b[b.at_m2()], m2);
    } else if (g.sum) {
      j.set_f64(b.b[b.at_sum()], b.sum() + v);
    }
    j.set(b.b[kBucketCountWord], b.count() + 1);
    if (g.min) j.set_f64(b.b[b.at_min()], std::min(b.min(), v));
    if (g.max) j.set_f64(b.b[b.at_max()], std::max(b.max(), v));

    for (const AggregatePlan::Window& win : g.windows) {
      const int64_t end = win.end == WindowEnd::kNow ? h : head;
      if (k <= end - win.buckets) continue;  // left this window already
      Word* words = block + win.offset;
      WindowState w = WindowState::read(words);
      if (w.count == 0) {
        w.clear(k);
        moved = true;
      } else if (k < w.start) {
        w.start = k;
        moved = true;
      }
      if (g.sumsq) {
        double sum, m2;
        add_value(w.count, w.sum, w.m2, v, &sum, &m2);
        w.sum = sum;
        w.m2 = m2;
      } else if (g.sum) {
        w.sum += v;
      }
      ++w.count;
      if (g.min) w.min = std::min(w.min, v);
      if (g.max) w.max = std::max(w.max, v);
      w.write(words, j);
    }
    if (g.distinct) fold_distinct(g, block, h, k, dh != 0 ? dh : distinct_hash_number(v), j);
  }
  if (starts_moved != nullptr) *starts_moved = moved;
  return folded;
}

OutputValue output(const AggregateTable& t, const Word* block, size_t o, int64_t clock_ms) {
  const AggregatePlan::Output& out = t.plan.outputs[o];
  if (out.events != 0) return event_output(t, block, out);  // a count window (aggregate_events.cc)
  const AggregatePlan::Group& g = t.plan.groups[out.group];
  const AggregatePlan::Window& win = g.windows[out.window];
  if (out.fn == AggregateFn::kDistinctCount) {
    OutputValue r;
    r.i64 = load(block[win.offset + kWindowCountWord]) > 0
                ? distinct_output(g, win, block, window_end(g, win, block, bucket_of(t, g, clock_ms, TimeOf::kClock)))
                : 0;
    r.valid = true;
    return r;
  }
  return window_value(out.fn, out.ddof, block + win.offset, block[g.offset + kGroupLastValueWord]);
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

void prefetch_dedup(const AggregateTable& t, uint64_t id) {
  if (t.dedup_buckets == 0) return;
  const char* b = reinterpret_cast<const char*>(dedup_bucket(t, id));
  for (size_t at = 0; at < kDedupBucketBytes; at += 64) __builtin_prefetch(b + at, 1, 3);
}

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

uint64_t dedup_carry(const AggregateTable& from, const AggregateTable& to) {
  if (from.dedup_buckets == 0 || to.dedup_buckets == 0) return 0;
  uint64_t lost = 0;
  const uint64_t entries = from.dedup_buckets * kDedupWays;
  for (uint64_t n = 0; n < entries; ++n) {
    const Word* e = from.dedup + n * kDedupEntryWords;
    const uint64_t id = load(e[kDedupIdWord]);
    const int64_t time1 = load_i64(e[kDedupTimeWord]);
    if (id == 0 || time1 == 0) continue;
    Word* b = dedup_bucket(to, id);
    size_t victim = kDedupWays;
    int64_t oldest = time1;  // only an older id gives way
    for (size_t i = 0; i < kDedupWays; ++i) {
      const Word* d = b + i * kDedupEntryWords;
      const int64_t t1 = load_i64(d[kDedupTimeWord]);
      if (t1 == 0 || load(d[kDedupIdWord]) == id) {
        victim = i;
        break;
      }
      if (t1 < oldest) {
        oldest = t1;
        victim = i;
      }
    }
    ++lost;  // this id, or the one it replaces
    if (victim == kDedupWays) continue;
    Word* d = b + victim * kDedupEntryWords;
    if (load_i64(d[kDedupTimeWord]) == 0 || load(d[kDedupIdWord]) == id) --lost;
    sync::store_relaxed(d[kDedupIdWord], id);
    sync::store_relaxed(d[kDedupTimeWord], static_cast<uint64_t>(time1));
  }
  return lost;
}

}  // namespace larder::writer

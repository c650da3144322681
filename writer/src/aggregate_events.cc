// Event stores: insertion in event-time order, and the outputs of count
// windows and sequences computed from the stored values (see
// aggregate_events.h and docs/aggregates.md#count-windows).
//
// A store is a ring of its source's newest events, oldest first. Events in
// order append at the ring's end: two entry words and the header, O(1) in
// the journal. A late event moves the newer entries up by one; when the
// store is full the oldest entry leaves first, and an event older than every
// held entry of a full store is dropped (too late for every count window of
// its source, which only cover the newest events).
//
// The header words come from the segment: a count or head beyond the
// capacity (damage) is clamped, never followed out of the store.
#include "aggregate_events.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "larder/layout/sync.h"

namespace larder::writer {

using namespace layout;  // NOLINT: the engine works on the layout's words

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

inline uint64_t load(const Word& w) { return sync::load_relaxed(w); }

// One store's view: entry i (0 the oldest) of `count`.
struct StoreView {
  Word* words;
  uint64_t capacity;
  uint64_t count;
  uint64_t head;

  static StoreView of(const AggregatePlan::EventStore& s, const Word* block) {
    Word* w = const_cast<Word*>(block) + s.offset;  // read only unless folding
    const uint64_t cap = s.capacity;
    return StoreView{w, cap, std::min<uint64_t>(load(w[kEventStoreCountWord]), cap),
                     cap == 0 ? 0 : load(w[kEventStoreHeadWord]) % cap};
  }
  Word* entry(uint64_t i) const { return words + kEventStoreHeaderWords + ((head + i) % capacity) * kEventEntryWords; }
  int64_t time(uint64_t i) const { return static_cast<int64_t>(load(entry(i)[kEventEntryTimeWord]) - 1); }
  double value(uint64_t i) const { return std::bit_cast<double>(load(entry(i)[kEventEntryValueWord])); }
};

// Returns false when the store is full of events newer than `te`.
bool insert(const AggregatePlan::EventStore& s, Word* block, int64_t te, double v, Journal& j) {
  StoreView st = StoreView::of(s, block);
  if (st.capacity == 0) return false;
  if (st.count == st.capacity && te < st.time(0)) return false;
  // After every entry no newer than the event: equal times keep their
  // order of application, as `last` does.
  uint64_t p = st.count;
  while (p > 0 && st.time(p - 1) > te) --p;
  if (st.count == st.capacity) {  // the oldest leaves; its place becomes the free one at the end
    st.head = (st.head + 1) % st.capacity;
    --st.count;
    --p;  // p >= 1: the event is no older than entry 0
    j.set(st.words[kEventStoreHeadWord], st.head);
  }
  for (uint64_t i = st.count; i > p; --i) {
    Word* to = st.entry(i);
    const Word* from = st.entry(i - 1);
    j.set(to[kEventEntryTimeWord], load(from[kEventEntryTimeWord]));
    j.set(to[kEventEntryValueWord], load(from[kEventEntryValueWord]));
  }
  Word* e = st.entry(p);
  j.set(e[kEventEntryTimeWord], static_cast<uint64_t>(te + 1));
  j.set_f64(e[kEventEntryValueWord], v);
  j.set(st.words[kEventStoreCountWord], st.count + 1);
  return true;
}

// Neumaier's compensated sum of entries [lo, hi).
double compensated_sum(const StoreView& st, uint64_t lo, uint64_t hi, double shift = 0) {
  double sum = 0, c = 0;
  for (uint64_t i = lo; i < hi; ++i) {
    const double x = st.value(i) - shift;
    const double t = sum + x;
    c += std::abs(sum) >= std::abs(x) ? (sum - t) + x : (x - t) + sum;
    sum = t;
  }
  return sum + c;
}

}  // namespace

EventFold fold_events(const AggregateTable& t, Word* block, int64_t clock_ms, int64_t event_time_ms,
                      std::span<const SourceValue> sources, Journal& j) {
  const int64_t te = std::min(event_time_ms, clock_ms);
  EventFold r = EventFold::kNone;
  for (size_t si = 0; si < t.plan.event_stores.size(); ++si) {
    double v = 0;
    if (const int src = t.store_source[si]; src >= 0) {
      bool found = false;
      for (const SourceValue& s : sources) {
        if (s.source == static_cast<uint32_t>(src)) {
          v = s.value;
          found = true;
        }
      }
      if (!found) continue;
    }
    if (insert(t.plan.event_stores[si], block, te, v, j)) {
      r = EventFold::kFolded;
    } else if (r == EventFold::kNone) {
      r = EventFold::kTooOld;
    }
  }
  return r;
}

OutputValue event_output(const AggregateTable& t, const Word* block, const AggregatePlan::Output& o) {
  const StoreView st = StoreView::of(t.plan.event_stores[o.group], block);
  const uint64_t k = std::min<uint64_t>(o.events, st.count);  // the window: entries [lo, count)
  const uint64_t lo = st.count - k;
  OutputValue r;
  r.f64 = kNaN;
  if (k == 0 || k < o.min_periods) return r;
  const double n = static_cast<double>(k);
  switch (o.fn) {
    case AggregateFn::kCount: r.i64 = static_cast<int64_t>(k); break;
    case AggregateFn::kSum: r.f64 = compensated_sum(st, lo, st.count); break;
    case AggregateFn::kMean: r.f64 = compensated_sum(st, lo, st.count) / n; break;
    case AggregateFn::kMin:
    case AggregateFn::kMax: {
      double m = st.value(lo);
      for (uint64_t i = lo + 1; i < st.count; ++i) {
        m = o.fn == AggregateFn::kMin ? std::min(m, st.value(i)) : std::max(m, st.value(i));
      }
      r.f64 = m;
      break;
    }
    case AggregateFn::kLast: r.f64 = st.value(st.count - 1); break;
    case AggregateFn::kFirst: r.f64 = st.value(lo); break;
    case AggregateFn::kVariance:
    case AggregateFn::kStddev: {
      if (k <= o.ddof) return r;  // pandas: NaN for one value with ddof 1
      // Two passes about the mean, the second compensated: the deviations'
      // sum (zero but for rounding) corrects the mean's error.
      const double mean = compensated_sum(st, lo, st.count) / n;
      double m2 = 0, dev = 0;
      for (uint64_t i = lo; i < st.count; ++i) {
        const double d = st.value(i) - mean;
        m2 += d * d;
        dev += d;
      }
      const double var = std::max(0.0, (m2 - dev * dev / n) / (n - o.ddof));
      r.f64 = o.fn == AggregateFn::kVariance ? var : std::sqrt(var);
      break;
    }
    default: return r;
  }
  r.valid = true;
  return r;
}

bool sequence_output(const AggregateTable& t, const Word* block, const AggregatePlan::Output& o, float* out) {
  const StoreView st = StoreView::of(t.plan.event_stores[o.group], block);
  const uint64_t k = std::min<uint64_t>(o.events, st.count);
  for (uint64_t i = 0; i < k; ++i) out[i] = static_cast<float>(st.value(st.count - 1 - i));
  std::fill(out + k, out + o.events, std::numeric_limits<float>::quiet_NaN());
  return k > 0 && k >= o.min_periods;
}

}  // namespace larder::writer

// A brute-force model of the windowed aggregates of docs/aggregates.md, for
// tests. It keeps every event folded for every key and recomputes each
// aggregate from scratch when asked, so that it shares no code (and as few
// assumptions as possible) with the writer: it reads only the TableSpec, and
// derives the groups, default resolutions and output order itself.
//
// The model (the writer's view):
//  * Clock C (ms): the largest apply_unix_ns / 1e6 (floored) ever passed to
//    apply/upsert/remove, and now_unix_ns / 1e6 passed to refresh. Never
//    moves backwards.
//  * Group: the aggregates of one (source, resolution r); ring B = the
//    longest window of the group / r.
//  * An event (key, te) applied at clock C (after the clock update): bucket
//    k = min(floor(te / r), floor(C / r)). The table's aggregate inputs are
//    late if te <= C - L (L: allowed lateness, default the longest window).
//    Otherwise the event is folded into every group g that it feeds (a group
//    with a source the event carries; a group without a source: every event)
//    and whose ring still holds k: k > floor(C / r) - B_g.
//  * Read at clock T: a kNow window of n buckets covers (floor(T/r) - n,
//    floor(T/r)]; a kLatestEvent window covers (H - n, H], H the largest
//    bucket folded into the group for the key.
//  * Plain fields: last write wins by event time (a tie: the later call). A
//    delete newer than the row forgets the aggregates; events older than the
//    tombstone are ignored entirely.
//  * Dedup: an event whose (key, id) was applied before is a duplicate.
//
// Count windows and sequences (AggregateSpec::window_events): every event
// folded for the key that carries the aggregate's source (any event for a
// count without one), ordered by (min(te, C at apply), apply order); a count
// window of N reads the last N of them, last_n the last n, newest first and
// NaN past the key's events. Not valid below min_periods (default N, or 1 for
// last_n), variance and stddev not below ddof + 1. The writer keeps only the
// newest `capacity` per source (the largest N); an event older than all of a
// full store's is folded nowhere, which changes no window of N <= capacity.
// Without a time window the default lateness is an hour.
//
// Tolerances (matches()): count, min, max and last are exact; sum and mean
// within 1e-9 * (sum of |x| in the window + M) (+ 1e-12), M the largest |x|
// the key folded into the group since it was last deleted (the writer may
// keep window sums incrementally, and their rounding grows with what it added
// and removed); variance within 1e-9 * (mean^2 + var + M^2) + 1e-12 (the
// writer keeps sums of squares about the key's first value, |first| <= M);
// stddev: got^2 against want^2 with the variance tolerance. Empty windows are
// exact: count and sum read 0 (valid), the others NaN with the validity bit
// clear. distinct_count is exact while the key has folded at most K = 32
// distinct values into the group since it was last deleted (so the exact set
// never let one go); beyond that it may be the sketch's estimate, over the
// window extended back to the start of the sketch slice (ring / 8 buckets,
// rounded up) that holds its first bucket: accepted within 4 standard errors
// (4 x 1.04 / sqrt(128)) below the exact count and above the extended one.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "larder/layout/schema.h"

namespace larder::testing {

inline int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

// docs/aggregates.md: window / n for the smallest n >= 60 that gives whole
// milliseconds. Written independently of layout::default_resolution_ms.
inline int64_t reference_default_resolution(int64_t window_ms) {
  for (int64_t n = 60; n <= window_ms; ++n) {
    if (window_ms % n == 0) return window_ms / n;
  }
  return 1;
}

class AggregateReference {
 public:
  static constexpr int64_t kNone = std::numeric_limits<int64_t>::min();
  static constexpr int64_t kDistinctExact = 32;  // K, docs/aggregates.md

  enum class Outcome {
    kApplied,            // fields/row time written (and sources folded unless late)
    kFoldedFieldsStale,  // sources folded; the fields older than the row
    kNoEffect,           // not late, but folded nowhere and the fields older than the row
    kDuplicate,          // (key, id) applied before
    kStale,              // older than the key's tombstone: ignored entirely
    kLate,               // aggregate inputs late, and no fields or fields older than the row
  };

  struct FieldWrite {
    uint32_t field = 0;  // index into the declared fields (int64 or float64 only)
    int64_t i64 = 0;
    double f64 = 0;
  };
  struct SourceInput {
    uint32_t source = 0;  // index into sources()
    double value = 0;
  };
  struct Event {
    std::string key;
    int64_t te = 0;
    std::vector<FieldWrite> fields;
    std::vector<SourceInput> sources;
    uint64_t id = 0;  // 0: none
    int64_t apply_ns = 0;
  };

  struct Group {
    std::string source;  // "" counts every event
    int source_index = -1;
    int64_t r = 0;
    int64_t ring = 0;
  };
  struct Aggregate {
    std::string name;
    layout::AggregateFn fn = layout::AggregateFn::kSum;
    size_t group = 0;
    int64_t n = 0;  // buckets
    layout::WindowEnd end = layout::WindowEnd::kNow;
    uint32_t events = 0;  // a count window of N events or last_n's n; group is then a store
    uint32_t min_periods = 0;
    uint32_t ddof = 0;
  };
  // The events of one source that count windows and sequences read.
  struct Store {
    std::string source;
    int source_index = -1;
    uint32_t capacity = 0;
  };

  // One expected field value.
  struct Value {
    bool is_int = false;
    bool is_vector = false;  // last_n: `vector`, NaN past the key's events
    std::vector<float> vector;
    bool valid = false;
    int64_t i64 = 0;
    double f64 = 0;
    // Comparison mode for aggregates.
    enum class Mode { kExact, kSum, kMean, kVariance, kStddev, kDistinct } mode = Mode::kExact;
    double tolerance = 0;                      // absolute
    int64_t distinct_lo = 0, distinct_hi = 0;  // kDistinct: the accepted range
  };
  struct Row {
    bool found = false;
    std::vector<Value> fields;  // all fields: declared, then aggregates
  };

  explicit AggregateReference(const layout::TableSpec& spec) : spec_(spec) {
    int64_t longest = 0;
    for (const layout::AggregateSpec& a : spec.aggregates) {
      int source_index = -1;
      if (!a.source.empty()) {
        auto it = std::find(sources_.begin(), sources_.end(), a.source);
        source_index = static_cast<int>(it - sources_.begin());
        if (it == sources_.end()) sources_.push_back(a.source);
      }
      if (a.window_events != 0) {
        size_t st = 0;
        while (st < stores_.size() && stores_[st].source != a.source) ++st;
        if (st == stores_.size()) stores_.push_back({a.source, source_index, 0});
        stores_[st].capacity = std::max(stores_[st].capacity, a.window_events);
        const uint32_t min_periods =
            a.min_periods != 0 ? a.min_periods : (a.fn == layout::AggregateFn::kLastN ? 1 : a.window_events);
        aggregates_.push_back({a.name, a.fn, st, 0, layout::WindowEnd::kNow, a.window_events, min_periods, a.ddof});
        continue;
      }
      const int64_t r = a.resolution_ms != 0 ? a.resolution_ms : reference_default_resolution(a.window_ms);
      longest = std::max(longest, a.window_ms);
      size_t g = 0;
      while (g < groups_.size() && !(groups_[g].source == a.source && groups_[g].r == r)) ++g;
      if (g == groups_.size()) groups_.push_back({a.source, source_index, r, 0});
      groups_[g].ring = std::max(groups_[g].ring, a.window_ms / r);
      aggregates_.push_back({a.name, a.fn, g, a.window_ms / r, a.end, 0, 0, a.ddof});
    }
    lateness_ = spec.allowed_lateness_ms != 0 ? spec.allowed_lateness_ms : longest > 0 ? longest : 3'600'000;
  }

  const layout::TableSpec& spec() const { return spec_; }
  const std::vector<std::string>& sources() const { return sources_; }
  const std::vector<Group>& groups() const { return groups_; }
  const std::vector<Aggregate>& aggregates() const { return aggregates_; }
  int64_t clock_ms() const { return clock_; }
  int64_t lateness_ms() const { return lateness_; }
  uint64_t duplicates() const { return duplicates_; }
  uint64_t late_events() const { return late_events_; }
  // Whether the last apply() folded the event into at least one group.
  bool last_folded() const { return last_folded_; }
  const std::vector<Store>& stores() const { return stores_; }
  bool has_sourceless_group() const {
    return std::any_of(groups_.begin(), groups_.end(), [](const Group& g) { return g.source.empty(); }) ||
           std::any_of(stores_.begin(), stores_.end(), [](const Store& st) { return st.source.empty(); });
  }
  int source_index(const std::string& name) const {
    auto it = std::find(sources_.begin(), sources_.end(), name);
    return it == sources_.end() ? -1 : static_cast<int>(it - sources_.begin());
  }
  size_t field_count() const { return spec_.fields.size() + aggregates_.size(); }
  std::string field_name(size_t f) const {
    return f < spec_.fields.size() ? spec_.fields[f].name : aggregates_[f - spec_.fields.size()].name;
  }

  void advance(int64_t ns) { clock_ = std::max(clock_, floor_div(ns, 1'000'000)); }
  void refresh(int64_t now_ns) { advance(now_ns); }

  // The state of a key, for generators.
  enum class KeyState { kAbsent, kLive, kTombstone };
  KeyState key_state(const std::string& key) const {
    auto it = keys_.find(key);
    return it == keys_.end() ? KeyState::kAbsent : it->second.state;
  }
  int64_t row_time(const std::string& key) const {
    auto it = keys_.find(key);
    return it == keys_.end() ? kNone : it->second.row_time;
  }
  bool seen_id(const std::string& key, uint64_t id) const {
    auto it = keys_.find(key);
    return it != keys_.end() && it->second.ids.count(id) != 0;
  }
  // Events folded for the key since it was last deleted.
  size_t folded_events(const std::string& key) const {
    auto it = keys_.find(key);
    return it == keys_.end() ? 0 : it->second.events.size();
  }

  // Whether the inputs of an event with this event time would be late now
  // (after the clock moves to apply_ns).
  bool would_be_late(int64_t te, int64_t apply_ns) const {
    return te <= std::max(clock_, floor_div(apply_ns, 1'000'000)) - lateness_;
  }

  Outcome apply(const Event& e) {
    last_folded_ = false;
    advance(e.apply_ns);
    Key& k = keys_[e.key];
    if (k.fields.empty()) k.fields.assign(spec_.fields.size(), Value{});
    if (e.id != 0 && k.ids.count(e.id) != 0) {
      ++duplicates_;
      return Outcome::kDuplicate;
    }
    if (k.state == KeyState::kTombstone && e.te < k.row_time) return Outcome::kStale;
    const bool has_inputs = has_sourceless_group() || !e.sources.empty();
    const bool late = has_inputs && e.te <= clock_ - lateness_;
    const bool touch = k.state != KeyState::kLive || e.te >= k.row_time;
    if (late) {
      ++late_events_;
      if (e.fields.empty() || !touch) return Outcome::kLate;
    }
    bool folded = false;
    if (!late) {
      Folded f;
      f.te = e.te;
      // An event stamped after the clock counts as stamped at the clock,
      // for its bucket and for `last` (docs/aggregates.md).
      f.order_te = std::min(e.te, clock_);
      f.seq = ++seq_;
      f.k.assign(groups_.size(), kNone);
      f.v.assign(groups_.size(), 0.0);
      f.in_store.assign(stores_.size(), 0);
      f.sv.assign(stores_.size(), 0.0);
      bool in_time = false;
      for (size_t g = 0; g < groups_.size(); ++g) {
        const Group& gr = groups_[g];
        double v = 1;
        if (gr.source_index >= 0) {
          auto it = std::find_if(e.sources.begin(), e.sources.end(),
                                 [&](const SourceInput& s) { return static_cast<int>(s.source) == gr.source_index; });
          if (it == e.sources.end()) continue;
          v = it->value;
        }
        const int64_t h = floor_div(clock_, gr.r);
        const int64_t kb = std::min(floor_div(e.te, gr.r), h);
        if (kb <= h - gr.ring) continue;
        f.k[g] = kb;
        f.v[g] = v;
        folded = in_time = true;
      }
      for (size_t st = 0; st < stores_.size(); ++st) {
        double v = 0;
        if (stores_[st].source_index >= 0) {
          auto it = std::find_if(e.sources.begin(), e.sources.end(), [&](const SourceInput& in) {
            return static_cast<int>(in.source) == stores_[st].source_index;
          });
          if (it == e.sources.end()) continue;
          v = it->value;
        }
        // Older than every one of the `capacity` newest events: kept nowhere.
        const std::vector<const Folded*> held = store_events(k, st);
        const size_t cap = stores_[st].capacity;
        if (held.size() >= cap && f.order_te < held[held.size() - cap]->order_te) continue;
        f.in_store[st] = 1;
        f.sv[st] = v;
        folded = true;
      }
      if (folded) {
        if (k.high.empty()) k.high.assign(groups_.size(), kNone);
        for (size_t g = 0; g < groups_.size() && in_time; ++g) {
          if (f.k[g] != kNone) k.high[g] = std::max(k.high[g], f.k[g]);
        }
        k.events.push_back(std::move(f));
        last_folded_ = true;
      }
    }
    if (e.id != 0) k.ids.insert(e.id);
    if (touch) {
      if (k.state != KeyState::kLive) {
        k.state = KeyState::kLive;
        k.fields.assign(spec_.fields.size(), Value{});
      }
      for (const FieldWrite& w : e.fields) {
        Value& v = k.fields[w.field];
        v.valid = true;
        v.is_int = spec_.fields[w.field].type == layout::FieldType::kInt64;
        v.i64 = w.i64;
        v.f64 = w.f64;
      }
      k.row_time = e.te;
      return Outcome::kApplied;
    }
    return folded ? Outcome::kFoldedFieldsStale : Outcome::kNoEffect;
  }

  Outcome upsert(const std::string& key, int64_t te, std::vector<FieldWrite> fields, int64_t apply_ns) {
    Event e;
    e.key = key;
    e.te = te;
    e.fields = std::move(fields);
    e.apply_ns = apply_ns;
    return apply(e);
  }

  Outcome remove(const std::string& key, int64_t te, int64_t apply_ns) {
    advance(apply_ns);
    Key& k = keys_[key];
    if (k.state != KeyState::kAbsent && te < k.row_time) return Outcome::kStale;
    k.state = KeyState::kTombstone;
    k.row_time = te;
    k.events.clear();
    k.high.clear();
    k.fields.assign(spec_.fields.size(), Value{});
    return Outcome::kApplied;
  }

  // Statistics of one window of one group for a key, at the current clock.
  struct Stats {
    int64_t count = 0;
    int64_t distinct = 0;           // distinct values in the window
    int64_t distinct_extended = 0;  // ... in the window extended to its first sketch slice
    int64_t distinct_ever = 0;      // ... folded into the group since the delete
    long double sum = 0, sum_abs = 0;
    double min = 0, max = 0, last = 0, mean = 0, variance = 0;
    double scale = 0;  // M: the largest |x| folded into the group since the delete
  };
  Stats stats(const std::string& key, const Aggregate& a) const {
    Stats s;
    auto it = keys_.find(key);
    if (it == keys_.end() || it->second.state != KeyState::kLive) return s;
    const Key& k = it->second;
    const Group& gr = groups_[a.group];
    int64_t hi = floor_div(clock_, gr.r);
    if (a.end == layout::WindowEnd::kLatestEvent) {
      if (k.high.empty() || k.high[a.group] == kNone) return s;
      hi = k.high[a.group];
    }
    const int64_t lo = hi - a.n;
    const int64_t slice = (gr.ring + 7) / 8;
    const int64_t extended_first = floor_div(lo + 1, slice) * slice;
    std::set<double> in_window, in_extended, ever;
    int64_t last_te = kNone;
    uint64_t last_seq = 0;
    for (const Folded& f : k.events) {
      if (f.k[a.group] == kNone) continue;
      const double x = f.v[a.group];
      s.scale = std::max(s.scale, std::fabs(x));
      ever.insert(x);
      if (f.k[a.group] >= extended_first && f.k[a.group] <= hi) in_extended.insert(x);
      if (f.k[a.group] <= lo || f.k[a.group] > hi) continue;
      in_window.insert(x);
      if (s.count == 0) {
        s.min = s.max = x;
      } else {
        s.min = std::min(s.min, x);
        s.max = std::max(s.max, x);
      }
      ++s.count;
      s.sum += x;
      s.sum_abs += std::fabs(x);
      if (f.order_te > last_te || (f.order_te == last_te && f.seq > last_seq)) {
        last_te = f.order_te;
        last_seq = f.seq;
        s.last = x;
      }
    }
    s.distinct = static_cast<int64_t>(in_window.size());
    s.distinct_extended = static_cast<int64_t>(in_extended.size());
    s.distinct_ever = static_cast<int64_t>(ever.size());
    if (s.count > 0) {
      const long double mean = s.sum / s.count;
      long double ss = 0;
      for (const Folded& f : k.events) {
        if (f.k[a.group] == kNone || f.k[a.group] <= lo || f.k[a.group] > hi) continue;
        const long double d = f.v[a.group] - mean;
        ss += d * d;
      }
      s.mean = static_cast<double>(mean);
      s.variance = s.count > a.ddof ? static_cast<double>(ss / (s.count - a.ddof)) : 0;
    }
    return s;
  }

  // A count window or sequence, computed from the key's events.
  Value event_value(const std::string& key, const Aggregate& a) const {
    using layout::AggregateFn;
    using Mode = Value::Mode;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    std::vector<double> x;  // the window, oldest first
    auto it = keys_.find(key);
    if (it != keys_.end() && it->second.state == KeyState::kLive) {
      const std::vector<const Folded*> held = store_events(it->second, a.group);
      const size_t k = std::min<size_t>(a.events, held.size());
      for (size_t i = held.size() - k; i < held.size(); ++i) x.push_back(held[i]->sv[a.group]);
    }
    Value v;
    const size_t n = x.size();
    const bool enough = n > 0 && n >= a.min_periods;
    if (a.fn == AggregateFn::kLastN) {
      v.is_vector = true;
      v.valid = enough;
      for (size_t i = 0; i < a.events; ++i) {
        v.vector.push_back(i < n ? static_cast<float>(x[n - 1 - i]) : std::numeric_limits<float>::quiet_NaN());
      }
      return v;
    }
    v.is_int = a.fn == AggregateFn::kCount;
    v.f64 = nan;
    if (!enough) return v;
    long double sum = 0, sum_abs = 0;
    double scale = 0, mn = x[0], mx = x[0];
    for (double xi : x) {
      sum += xi;
      sum_abs += std::fabs(xi);
      scale = std::max(scale, std::fabs(xi));
      mn = std::min(mn, xi);
      mx = std::max(mx, xi);
    }
    const long double mean = sum / n;
    long double ss = 0;
    for (double xi : x) ss += (xi - mean) * (xi - mean);
    v.valid = true;
    switch (a.fn) {
      case AggregateFn::kCount: v.i64 = static_cast<int64_t>(n); break;
      case AggregateFn::kSum:
        v.f64 = static_cast<double>(sum);
        v.mode = Mode::kSum;
        v.tolerance = 1e-9 * static_cast<double>(sum_abs) + 1e-12;
        break;
      case AggregateFn::kMean:
        v.f64 = static_cast<double>(mean);
        v.mode = Mode::kMean;
        v.tolerance = 1e-9 * static_cast<double>(sum_abs) / n + 1e-12;
        break;
      case AggregateFn::kMin: v.f64 = mn; break;
      case AggregateFn::kMax: v.f64 = mx; break;
      case AggregateFn::kLast: v.f64 = x[n - 1]; break;
      case AggregateFn::kFirst: v.f64 = x[0]; break;
      case AggregateFn::kVariance:
      case AggregateFn::kStddev: {
        if (n <= a.ddof) {
          v.valid = false;
          break;
        }
        const double var = static_cast<double>(ss / (n - a.ddof));
        v.tolerance = 1e-9 * (static_cast<double>(mean * mean) + var + scale * scale) + 1e-12;
        v.mode = a.fn == AggregateFn::kVariance ? Mode::kVariance : Mode::kStddev;
        v.f64 = a.fn == AggregateFn::kVariance ? var : std::sqrt(var);
        break;
      }
      default: v.valid = false; break;
    }
    return v;
  }

  Value aggregate_value(const std::string& key, const Aggregate& a) const {
    if (a.events != 0) return event_value(key, a);
    const Stats s = stats(key, a);
    Value v;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    using layout::AggregateFn;
    using Mode = Value::Mode;
    const double scale = s.scale;
    switch (a.fn) {
      case AggregateFn::kCount:
        v.is_int = true;
        v.valid = true;
        v.i64 = s.count;
        break;
      case AggregateFn::kSum:
        v.valid = true;
        v.f64 = static_cast<double>(s.sum);
        if (s.count > 0) {
          v.mode = Mode::kSum;
          v.tolerance = 1e-9 * (static_cast<double>(s.sum_abs) + scale) + 1e-12;
        }
        break;
      case AggregateFn::kMean:
        v.valid = s.count > 0;
        v.f64 = s.count > 0 ? s.mean : nan;
        if (s.count > 0) {
          v.mode = Mode::kMean;
          v.tolerance = 1e-9 * (static_cast<double>(s.sum_abs) / s.count + scale) + 1e-12;
        }
        break;
      case AggregateFn::kMin:
        v.valid = s.count > 0;
        v.f64 = s.count > 0 ? s.min : nan;
        break;
      case AggregateFn::kMax:
        v.valid = s.count > 0;
        v.f64 = s.count > 0 ? s.max : nan;
        break;
      case AggregateFn::kLast:
        v.valid = s.count > 0;
        v.f64 = s.count > 0 ? s.last : nan;
        break;
      case AggregateFn::kVariance:
      case AggregateFn::kStddev: {
        v.valid = s.count > a.ddof;
        if (!v.valid) {
          v.f64 = nan;
          break;
        }
        v.tolerance = 1e-9 * (s.mean * s.mean + s.variance + scale * scale) + 1e-12;
        if (a.fn == AggregateFn::kVariance) {
          v.mode = Mode::kVariance;
          v.f64 = s.variance;
        } else {
          v.mode = Mode::kStddev;
          v.f64 = std::sqrt(s.variance);
        }
        break;
      }
      case AggregateFn::kDistinctCount:
        v.is_int = true;
        v.valid = true;
        v.i64 = s.distinct;
        if (s.distinct_ever > kDistinctExact) {
          const double band = 4 * 1.04 / std::sqrt(128.0);
          v.mode = Mode::kDistinct;
          v.distinct_lo = static_cast<int64_t>(std::floor(static_cast<double>(s.distinct) * (1 - band)));
          v.distinct_hi = static_cast<int64_t>(std::ceil(static_cast<double>(s.distinct_extended) * (1 + band)));
        }
        break;
      default: break;  // kLastN and kFirst: count windows only
    }
    return v;
  }

  // The row a reader should see now (after refresh to clock_ms()).
  Row read(const std::string& key) const {
    Row row;
    auto it = keys_.find(key);
    if (it == keys_.end() || it->second.state != KeyState::kLive) return row;
    row.found = true;
    row.fields = it->second.fields;
    for (size_t f = 0; f < spec_.fields.size(); ++f) {
      row.fields[f].is_int = spec_.fields[f].type == layout::FieldType::kInt64;
    }
    for (const Aggregate& a : aggregates_) row.fields.push_back(aggregate_value(key, a));
    return row;
  }

  // Whether a sequence read from a row matches `want` (float32 values and
  // NaN padding exactly).
  static bool matches_vector(const Value& want, bool got_valid, const float* got, size_t n, std::string* why) {
    bool ok = got_valid == want.valid && n == want.vector.size();
    for (size_t i = 0; ok && i < n; ++i) {
      ok = std::isnan(want.vector[i]) ? std::isnan(got[i]) : got[i] == want.vector[i];
    }
    if (ok) return true;
    std::string g = "[", w = "[";
    for (size_t i = 0; i < n; ++i) g += std::to_string(got[i]) + " ";
    for (float f : want.vector) w += std::to_string(f) + " ";
    *why = "got " + g + "] (valid " + std::to_string(got_valid) + "), want " + w + "] (valid " +
           std::to_string(want.valid) + ")";
    return false;
  }

  // Whether a value read from a row matches `want`; `why` says how not.
  static bool matches(const Value& want, bool got_valid, int64_t got_i64, double got_f64, std::string* why) {
    char buf[256];
    if (want.is_int && want.mode == Value::Mode::kDistinct) {
      if (got_valid && got_i64 >= want.distinct_lo && got_i64 <= want.distinct_hi) return true;
      std::snprintf(buf, sizeof buf, "got %lld (valid %d), want %lld, within [%lld, %lld]",
                    static_cast<long long>(got_i64), got_valid, static_cast<long long>(want.i64),
                    static_cast<long long>(want.distinct_lo), static_cast<long long>(want.distinct_hi));
      *why = buf;
      return false;
    }
    if (want.is_int) {
      if (got_valid == want.valid && (!want.valid || got_i64 == want.i64)) return true;
      std::snprintf(buf, sizeof buf, "got %lld (valid %d), want %lld (valid %d)", static_cast<long long>(got_i64),
                    got_valid, static_cast<long long>(want.i64), want.valid);
      *why = buf;
      return false;
    }
    bool ok = got_valid == want.valid;
    if (ok && want.valid) {
      const double d = std::fabs(got_f64 - want.f64);
      switch (want.mode) {
        case Value::Mode::kExact: ok = (std::isnan(want.f64) && std::isnan(got_f64)) || got_f64 == want.f64; break;
        case Value::Mode::kSum:
        case Value::Mode::kMean:
        case Value::Mode::kVariance: ok = d <= want.tolerance; break;
        case Value::Mode::kStddev:
          ok = got_f64 >= 0 && std::fabs(got_f64 * got_f64 - want.f64 * want.f64) <= want.tolerance;
          break;
        case Value::Mode::kDistinct: break;  // integers, above
      }
    } else if (ok && !want.valid) {
      // Empty windows: NaN for float aggregates, and 0 for a never-written plain field.
      ok = std::isnan(want.f64) ? std::isnan(got_f64) : true;
    }
    if (ok) return true;
    std::snprintf(buf, sizeof buf, "got %.17g (valid %d), want %.17g (valid %d, tolerance %.3g, diff %.3g)", got_f64,
                  got_valid, want.f64, want.valid, want.tolerance, std::fabs(got_f64 - want.f64));
    *why = buf;
    return false;
  }

  // The last `max_events` events folded for the key, for failure messages:
  // event time and apply order, then bucket:value per group it was folded into
  // (times relative to `base_ms`).
  std::string dump(const std::string& key, int64_t base_ms, size_t max_events = 24) const {
    std::string out;
    auto it = keys_.find(key);
    if (it == keys_.end()) return "  (no such key)\n";
    const Key& k = it->second;
    char buf[160];
    std::snprintf(buf, sizeof buf, "  key %s: row time %+lld, %zu events folded since the last delete\n", key.c_str(),
                  static_cast<long long>(k.row_time == kNone ? 0 : k.row_time - base_ms), k.events.size());
    out += buf;
    const size_t from = k.events.size() > max_events ? k.events.size() - max_events : 0;
    for (size_t i = from; i < k.events.size(); ++i) {
      const Folded& f = k.events[i];
      std::snprintf(buf, sizeof buf, "    te %+lld seq %llu:", static_cast<long long>(f.te - base_ms),
                    static_cast<unsigned long long>(f.seq));
      out += buf;
      for (size_t g = 0; g < groups_.size(); ++g) {
        if (f.k[g] == kNone) continue;
        std::snprintf(buf, sizeof buf, " g%zu[%s/%lld] k%+lld=%.17g", g, groups_[g].source.c_str(),
                      static_cast<long long>(groups_[g].r), static_cast<long long>(f.k[g] - base_ms / groups_[g].r),
                      f.v[g]);
        out += buf;
      }
      out += "\n";
    }
    return out;
  }

  // |got - want| as a fraction of the tolerance (0 for exact comparisons).
  static double error_ratio(const Value& want, double got) {
    if (want.is_int || !want.valid || want.tolerance <= 0) return 0;
    if (want.mode == Value::Mode::kStddev) return std::fabs(got * got - want.f64 * want.f64) / want.tolerance;
    return std::fabs(got - want.f64) / want.tolerance;
  }

  static const char* outcome_name(Outcome o) {
    switch (o) {
      case Outcome::kApplied: return "applied";
      case Outcome::kFoldedFieldsStale: return "folded-fields-stale";
      case Outcome::kNoEffect: return "no-effect";
      case Outcome::kDuplicate: return "duplicate";
      case Outcome::kStale: return "stale";
      case Outcome::kLate: return "late";
    }
    return "?";
  }

 private:
  struct Folded {
    int64_t te = 0;
    int64_t order_te = 0;        // orders `last`: min(te, C at apply)
    uint64_t seq = 0;            // apply order: breaks ties of `last`
    std::vector<int64_t> k;      // bucket per group, kNone: not folded there
    std::vector<double> v;       // value per group
    std::vector<char> in_store;  // per store: kept by it
    std::vector<double> sv;      // value per store
  };
  struct Key {
    KeyState state = KeyState::kAbsent;
    int64_t row_time = kNone;  // the row's or the tombstone's event time
    std::vector<Folded> events;
    std::vector<int64_t> high;  // per group: H, the largest bucket folded
    std::set<uint64_t> ids;
    std::vector<Value> fields;
  };

  // The events of store `st` for a key, oldest first by (order_te, seq).
  std::vector<const Folded*> store_events(const Key& k, size_t st) const {
    std::vector<const Folded*> out;
    for (const Folded& f : k.events) {
      if (f.in_store[st]) out.push_back(&f);
    }
    std::sort(out.begin(), out.end(), [](const Folded* a, const Folded* b) {
      return a->order_te != b->order_te ? a->order_te < b->order_te : a->seq < b->seq;
    });
    return out;
  }

  layout::TableSpec spec_;
  std::vector<std::string> sources_;
  std::vector<Group> groups_;
  std::vector<Aggregate> aggregates_;
  std::vector<Store> stores_;
  int64_t lateness_ = 0;
  int64_t clock_ = 0;
  uint64_t seq_ = 0;
  uint64_t duplicates_ = 0;
  uint64_t late_events_ = 0;
  bool last_folded_ = false;
  std::map<std::string, Key> keys_;
};

}  // namespace larder::testing

// larder_bench_aggregates: the cost of windowed aggregates (docs/aggregates.md)
// in the writer and in the reader, next to plain fields in the same run.
//
//   writer/<keys>/agg_*     Writer::apply of one event (4 plain float64 fields
//                           and the source `amount`) to a table with sum, mean
//                           and max of `amount` over 5 m, 1 h and 24 h at the
//                           default resolutions (5 s, 1 min, 24 min): 9
//                           aggregate outputs in 3 bucket rings. Event times
//                           increase and the writer clock (apply_unix_ns)
//                           moves with them, LARDER_AGG_EVENT_RATE events per
//                           second of event time; `_ids` gives every event an
//                           id (dedup on). Keys: random over all keys, or the
//                           first 1,024 (hot1K).
//   writer/<keys>/agg_{random,hot1K}_many64
//                           the same events 64 at a time through
//                           Writer::upsert_many, which prefetches the slots and
//                           state blocks of the events ahead while it applies
//                           one; time per event = time / 64.
//   (stderr, before the runs) memory per entity, and in proportion to
//                           activity: a quiet key (5 events a day) and a busy
//                           one (an event a second) fed through a writer,
//                           against the dense layout of version 4.
//   writer/<keys>/plain_*   the baseline: Writer::upsert of the same 13 float64
//                           fields (4 + 9 in place of the outputs) into a
//                           table without aggregates, same keys, same row size.
//   read/<keys>/typical/... Table::get and get_many(64) of `amount_sum_24h` in
//                           the table above and of f12 in the baseline table
//                           (same keys, 192-byte slots); the gets are chained
//                           through a hash of the value read.
//   refresh/<keys>/typical  Writer::refresh of the table above while the clock
//                           moves 5 s per call, after every key was given 8
//                           events spread over the last 24 h: refreshes/s is
//                           keys rewritten per CPU second.
//   read/<keys>/...         Table::get and get_many(64) of a float64 field
//                           that is a sum over 24 h at 1-minute resolution
//                           (1,440 buckets) and of a plain float64 field, two
//                           tables with the same keys and the same 64-byte row.
//                           Dependent gets: each key comes from the value just
//                           read (the sum of the one event the key received).
//   read/<keys>/agg24h_1min/get_{dependent,many64}_{event,computed}_bound
//                           the same reads of the 24 h table with a max_age_ms
//                           bound on the event age, then on the computed age
//                           (docs/client.md, "Two ages").
//   refresh/<keys>/24h_1min the refresh benchmark on the 24 h at 1-minute table.
//   read/<keys>/events/...  Table::get (chained) and get_many(64) of a count
//                           window (mean of `x` over 10 events, float64,
//                           beside f1..f7) against f0 of a plain table with
//                           the same 64-byte row; and of a last_n sequence
//                           (20 float32, newest first) against a plain
//                           20-dimension vector field. Each key got 12
//                           events; the reads sum or hash the value read.
//   event_id_hash/36B       event_id_hash of a 36-byte id (a UUID's length).
//   distinct/<keys>/...     Writer::apply of one event with the source `item`
//                           (an int64, as distinct_hash_int64) to a table with
//                           one aggregate over 1 h (60 buckets): count_* a
//                           count of `item`, distinct8_* a distinct_count of
//                           it with 8 values per key (the exact set),
//                           distinct_new_* a distinct_count where every value
//                           is new (a full exact set lets one go each event,
//                           and the sketch takes it). Random keys or hot1K.
//
// The run prints the aggregate state per slot and the segment size of the
// configurations to stderr first, then a summary with the medians and ratios.
// See docs/performance.md, "Aggregates".
//
// Knobs (environment, or the same as flags):
//   LARDER_AGG_SIZES       --sizes=       keys of the writer and refresh runs (default 10K,1M)
//   LARDER_AGG_READ_SIZES  --read_sizes=  keys of the read runs (default 10K,100K; a
//                                         24 h @ 1 min sum keeps 34.6 KB of state per slot)
//   LARDER_AGG_EVENT_RATE  --event_rate=  events per second of event time (default 1000000)
//   LARDER_BENCH_DIR       --dir=         tmpfs directory of the segments (default /dev/shm);
//                                         a comma-separated list runs the writer/<keys>/agg_*
//                                         benchmarks on a segment in each further directory too,
//                                         in the same run, named ...@<last path component>
//                                         (e.g. a tmpfs mounted huge=within_size beside /dev/shm)
//   LARDER_BENCH_REPETITIONS --repetitions= runs of each benchmark (default 3); the
//                                         summary uses the medians
// --benchmark_filter= also skips building the segments no selected benchmark uses.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <regex>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_support.h"
#include "larder/client.h"
#include "larder/layout/schema.h"
#include "larder/layout/segment_file.h"
#include "larder/layout/table_view.h"
#include "larder/writer/writer.h"

namespace larder::bench {
namespace {

constexpr size_t kBatch = 64;
constexpr uint64_t kHotKeys = 1024;
constexpr int64_t kSecond = 1000, kMinute = 60 * kSecond, kHour = 60 * kMinute, kDay = 24 * kHour;
constexpr int64_t kNsPerMs = 1'000'000;
constexpr uint32_t kPlainFields = 4;  // f0..f3 of the aggregate table
constexpr uint32_t kOutputs = 9;      // 3 functions x 3 windows
// The sidecar runs Writer::refresh every 50 ms; the writer loops do too, by event time.
constexpr int64_t kRefreshPeriodNs = 50 * kNsPerMs;
// The refresh benchmark moves the clock by this much per Writer::refresh call.
constexpr int64_t kRefreshStepMs = 5 * kSecond;

uint64_t g_seed = 0xa66e5;

// ---------------------------------------------------------------------------
// options

struct Options {
  std::vector<uint64_t> sizes{10'000, 1'000'000};
  std::vector<uint64_t> read_sizes{10'000, 100'000};
  double event_rate = 1e6;
  std::string dir = "/dev/shm";
  std::vector<std::string> extra_dirs;  // writer/<keys>/agg_* again on a segment in each
  std::string filter;
  int repetitions = 3;
};

[[noreturn]] void usage_error(const std::string& what) {
  std::fprintf(stderr, "larder_bench_aggregates: %s\n", what.c_str());
  std::exit(2);
}

std::vector<uint64_t> parse_counts(std::string_view list, const char* what) {
  std::vector<uint64_t> out;
  for (std::string_view s : split(list, ',')) {
    uint64_t v = 0;
    if (!parse_count(s, &v)) usage_error(std::string("bad ") + what + " '" + std::string(s) + "'");
    if (v < kBatch || v > UINT32_MAX) usage_error(std::string(what) + " out of range: " + std::string(s));
    out.push_back(v);
  }
  return out;
}

// Takes our flags out of argv (Google Benchmark rejects unknown ones).
Options parse_options(int* argc, char** argv) {
  std::map<std::string, std::string> given = take_settings(argc, argv,
                                                           {{"--sizes=", "LARDER_AGG_SIZES"},
                                                            {"--read_sizes=", "LARDER_AGG_READ_SIZES"},
                                                            {"--event_rate=", "LARDER_AGG_EVENT_RATE"},
                                                            {"--dir=", "LARDER_BENCH_DIR"},
                                                            {"--repetitions=", "LARDER_BENCH_REPETITIONS"}});

  Options o;
  if (given.count("LARDER_AGG_SIZES")) o.sizes = parse_counts(given["LARDER_AGG_SIZES"], "size");
  if (given.count("LARDER_AGG_READ_SIZES")) o.read_sizes = parse_counts(given["LARDER_AGG_READ_SIZES"], "read size");
  if (given.count("LARDER_AGG_EVENT_RATE")) {
    o.event_rate = std::atof(given["LARDER_AGG_EVENT_RATE"].c_str());
    if (!(o.event_rate >= 1 && o.event_rate <= 1e9)) usage_error("LARDER_AGG_EVENT_RATE must be in [1, 1e9]");
  }
  if (given.count("LARDER_BENCH_DIR")) {
    std::vector<std::string> dirs;
    for (std::string_view d : split(given["LARDER_BENCH_DIR"], ',')) {
      if (!d.empty()) dirs.emplace_back(d);
    }
    if (dirs.empty()) usage_error("LARDER_BENCH_DIR is empty");
    o.dir = dirs[0];
    o.extra_dirs.assign(dirs.begin() + 1, dirs.end());
  }
  if (given.count("filter")) o.filter = given["filter"];
  if (given.count("LARDER_BENCH_REPETITIONS"))
    o.repetitions = std::max(1, std::atoi(given["LARDER_BENCH_REPETITIONS"].c_str()));
  return o;
}

std::string count_label(uint64_t n) {
  return n % 1'000'000 == 0 ? std::to_string(n / 1'000'000) + "M"
         : n % 1'000 == 0   ? std::to_string(n / 1'000) + "K"
                            : std::to_string(n);
}

// ---------------------------------------------------------------------------
// schemas

layout::TableSpec base_table(const char* name, uint64_t keys) {
  layout::TableSpec t;
  t.name = name;
  t.key_max_len = kKeyMaxLen;
  t.capacity = keys;
  t.max_load_factor = 0.75;
  return t;
}

void add_float_fields(layout::TableSpec& t, uint32_t from, uint32_t to) {
  for (uint32_t f = from; f < to; ++f) {
    std::string name = "f";
    name += std::to_string(f);  // not "f" + ...: g++ 12 warns (-Wrestrict) on that
    t.fields.push_back({name, layout::FieldType::kFloat64, 1});
  }
}

struct WindowName {
  const char* name;
  int64_t ms;
};
constexpr WindowName kWindows[] = {{"5m", 5 * kMinute}, {"1h", kHour}, {"24h", kDay}};

// `fns` of `amount` over 5 m, 1 h and 24 h at the default resolutions
// (5 s, 1 min, 24 min: 60 buckets each, three rings).
void add_three_windows(layout::TableSpec& t, std::initializer_list<layout::AggregateFn> fns) {
  for (const WindowName& w : kWindows) {
    for (layout::AggregateFn fn : fns) {
      layout::AggregateSpec a;
      a.name = std::string("amount_") + layout::aggregate_fn_name(fn) + "_" + w.name;
      a.source = fn == layout::AggregateFn::kCount ? "" : "amount";
      a.fn = fn;
      a.window_ms = w.ms;
      t.aggregates.push_back(a);
    }
  }
}

// The writer benchmarks' table: f0..f3, then sum, mean, max x 5m, 1h, 24h.
layout::Schema typical_schema(uint64_t keys) {
  layout::TableSpec t = base_table("events", keys);
  add_float_fields(t, 0, kPlainFields);
  add_three_windows(t, {layout::AggregateFn::kSum, layout::AggregateFn::kMean, layout::AggregateFn::kMax});
  return {{t}};
}

// The baseline: the same row (13 float64 fields), no aggregates.
layout::Schema plain_schema(uint64_t keys) {
  layout::TableSpec t = base_table("events", keys);
  add_float_fields(t, 0, kPlainFields + kOutputs);
  return {{t}};
}

// 24 h at 1-minute resolution (1,440 buckets) of `source`, after plain fields f1..f7.
layout::TableSpec day_by_minute_table(uint64_t keys, const char* source,
                                      std::initializer_list<layout::AggregateFn> fns) {
  layout::TableSpec t = base_table("events", keys);
  add_float_fields(t, 1, 8);
  for (layout::AggregateFn fn : fns) {
    layout::AggregateSpec a;
    a.name = std::string(source) + "_" + layout::aggregate_fn_name(fn) + "_24h";
    a.source = source;
    a.fn = fn;
    a.window_ms = kDay;
    a.resolution_ms = kMinute;
    t.aggregates.push_back(a);
  }
  return t;
}

// The read benchmarks: f1..f7 and `next_sum_24h` (the chain's next index, as
// the sum of the one event each key receives), 64-byte rows ...
layout::Schema read_agg_schema(uint64_t keys) {
  return {{day_by_minute_table(keys, "next", {layout::AggregateFn::kSum})}};
}
// ... and f0 (the next index), f1..f7: the same 64-byte row, plain.
layout::Schema read_plain_schema(uint64_t keys) {
  layout::TableSpec t = base_table("events", keys);
  add_float_fields(t, 0, 8);
  return {{t}};
}

// count or distinct_count of `item` over 1 h (default resolution: 1 min,
// 60 buckets), no plain fields.
layout::Schema item_schema(uint64_t keys, layout::AggregateFn fn) {
  layout::TableSpec t = base_table("events", keys);
  layout::AggregateSpec a;
  a.name = std::string("item_") + layout::aggregate_fn_name(fn) + "_1h";
  a.source = "item";
  a.fn = fn;
  a.window_ms = kHour;
  t.aggregates.push_back(a);
  return {{t}};
}

// ---------------------------------------------------------------------------
// memory per entity

void print_memory(const Options& o) {
  struct Config {
    const char* name;
    std::function<layout::TableSpec(uint64_t)> table;
  };
  using F = layout::AggregateFn;
  const Config configs[] = {
      {"plain: 13 float64 fields (baseline)", [](uint64_t k) { return plain_schema(k).tables[0]; }},
      {"typical: sum,mean,max x 5m,1h,24h", [](uint64_t k) { return typical_schema(k).tables[0]; }},
      {"count(all),sum,stddev x 5m,1h,24h",
       [](uint64_t k) {
         layout::TableSpec t = base_table("events", k);
         add_float_fields(t, 0, kPlainFields);
         add_three_windows(t, {F::kCount, F::kSum, F::kStddev});
         return t;
       }},
      {"count(amount),sum,stddev x 5m,1h,24h",
       [](uint64_t k) {
         layout::TableSpec t = base_table("events", k);
         add_float_fields(t, 0, kPlainFields);
         add_three_windows(t, {F::kCount, F::kSum, F::kStddev});
         for (layout::AggregateSpec& a : t.aggregates) a.source = "amount";  // the count shares the rings
         return t;
       }},
      {"24h@1min: sum (the read table)", [](uint64_t k) { return read_agg_schema(k).tables[0]; }},
      {"24h@1min: sum,mean,max",
       [](uint64_t k) {
         return day_by_minute_table(k, "amount", {F::kSum, F::kMean, F::kMax});
       }},
      {"24h@1min: count,sum,stddev",
       [](uint64_t k) {
         return day_by_minute_table(k, "amount", {F::kCount, F::kSum, F::kStddev});
       }},
      {"count(item) x 1h", [](uint64_t k) { return item_schema(k, F::kCount).tables[0]; }},
      {"distinct_count(item) x 1h", [](uint64_t k) { return item_schema(k, F::kDistinctCount).tables[0]; }},
      {"distinct_count(item) x 5m,1h,24h",
       [](uint64_t k) {
         layout::TableSpec t = base_table("events", k);
         for (const WindowName& w : kWindows) {
           layout::AggregateSpec a;
           a.name = std::string("item_distinct_") + w.name;
           a.source = "item";
           a.fn = F::kDistinctCount;
           a.window_ms = w.ms;
           t.aggregates.push_back(a);
         }
         return t;
       }},
  };
  std::vector<uint64_t> caps = o.sizes;
  if (std::find(caps.begin(), caps.end(), uint64_t{1'000'000}) == caps.end()) caps.push_back(1'000'000);
  std::fprintf(stderr,
               "# Memory per entity: segment bytes ~= slots x (slot_bytes + stride_words x 8) + dedup ids x 16,\n"
               "# slots = ceil(capacity / max_load_factor), max_load_factor 0.75, 16-byte keys\n"
               "# %-40s %9s %6s %11s %10s %10s %13s %13s %10s\n",
               "config", "capacity", "slot B", "state B/slot", "slots", "dedup ids", "formula B", "segment B",
               "B/entity");
  for (const Config& c : configs) {
    for (uint64_t cap : caps) {
      layout::Schema s{{c.table(cap)}};
      s.validate();
      const layout::LayoutPlan plan = layout::plan_layout(s);
      const layout::TablePlan& tp = plan.tables[0];
      const uint64_t state = uint64_t{layout::plan_aggregates(s.tables[0]).stride_words} * 8;
      const uint64_t dedup_ids = s.tables[0].dedup_ids();
      const uint64_t formula = tp.slot_count * (tp.slot_bytes + state) + dedup_ids * 16;
      std::fprintf(stderr, "# %-40s %9s %6u %11llu %10llu %10llu %13llu %13llu %10.0f\n", c.name,
                   count_label(cap).c_str(), tp.slot_bytes, static_cast<unsigned long long>(state),
                   static_cast<unsigned long long>(tp.slot_count), static_cast<unsigned long long>(dedup_ids),
                   static_cast<unsigned long long>(formula), static_cast<unsigned long long>(plan.segment_bytes),
                   static_cast<double>(formula) / static_cast<double>(cap));
    }
  }
  std::fflush(stderr);
}

// ---------------------------------------------------------------------------
// segments

std::vector<std::string> g_segments;  // removed at exit, also after an error
std::string g_dir;
std::vector<std::pair<std::string, std::string>> g_extra_segments;  // {name, dir} outside g_dir

void remove_segments() {
  for (const std::string& s : g_segments) Writer::remove_segment(s, g_dir);
  g_segments.clear();
  for (const auto& [name, dir] : g_extra_segments) Writer::remove_segment(name, dir);
  g_extra_segments.clear();
}

// "@huge" for /mnt/huge: the suffix of the benchmarks on a segment there.
std::string dir_suffix(const std::string& dir) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  return "@" + d.substr(d.find_last_of('/') + 1);
}

double seconds_since(uint64_t t0) { return static_cast<double>(now_ns() - t0) / 1e9; }

// One segment with its writer and its own event-time stream: event times
// (and the writer clock) only move forward, across every benchmark that uses
// the segment.
struct Store {
  std::string name;
  layout::Schema schema;
  std::unique_ptr<Writer> w;
  uint64_t keys = 0;
  int64_t sim_ns = 0;   // event time and writer clock of the last event
  int64_t step_ns = 1;  // event time between two events
  int64_t next_refresh_ns = 0;
  uint64_t events = 0;     // ids: 1, 2, ...
  uint32_t source = 0;     // Writer::source_index of the aggregates' source
  int64_t drained_ns = 0;  // refresh benchmark: every seeded window is empty after this
  std::string dir;         // where the segment is

  int64_t event_ms() const { return sim_ns / kNsPerMs; }
  void tick() { sim_ns += step_ns; }
};

std::unique_ptr<Store> create_store(const Options& o, const std::string& tag, layout::Schema schema, uint64_t keys,
                                    const std::string& dir = "") {
  auto st = std::make_unique<Store>();
  st->dir = dir.empty() ? o.dir : dir;
  st->name = "larder-aggbench-" + std::to_string(::getpid()) + "-" + tag;
  st->schema = std::move(schema);
  st->keys = keys;
  st->step_ns = std::max<int64_t>(1, std::llround(1e9 / o.event_rate));
  // Start at the wall clock, on a whole second.
  st->sim_ns = now_unix_ms() / 1000 * 1000 * kNsPerMs;
  st->next_refresh_ns = st->sim_ns + kRefreshPeriodNs;
  WriterOptions wo;
  wo.dir = st->dir;
  Writer::remove_segment(st->name, st->dir);
  if (st->dir == o.dir) {
    g_segments.push_back(st->name);
  } else {
    g_extra_segments.emplace_back(st->name, st->dir);
  }
  st->w = Writer::open(st->name, st->schema, wo);
  return st;
}

void drop_store(std::unique_ptr<Store>& st) {
  if (!st) return;
  st->w.reset();
  Writer::remove_segment(st->name, st->dir);
  g_segments.erase(std::remove(g_segments.begin(), g_segments.end(), st->name), g_segments.end());
  std::erase(g_extra_segments, std::make_pair(st->name, st->dir));
  st.reset();
}

// ---------------------------------------------------------------------------
// memory in proportion to activity

// Bytes per slot of the state block as layout v4 kept it: every ring dense
// in the block (the hot words and distinct areas are unchanged).
uint64_t dense_stride_bytes(const layout::AggregatePlan& p) {
  uint64_t words = p.stride_words;
  for (const layout::AggregatePlan::Group& g : p.groups) {
    words += static_cast<uint64_t>(g.ring_buckets - g.inline_buckets) * g.bucket_words;
  }
  return words * 8;
}

// Memory per entity for a quiet key (5 events a day) and a busy one (an
// event every second), measured: a writer is fed 24 h of event time, `quiet`
// keys at 5 events at random times each and `busy` keys at one event per
// second each, and the chunks the busy keys hold are read from the arena.
// Printed next to the dense layout (v4) of the same table.
void print_activity_memory(const Options& o) {
  struct Config {
    const char* name;
    layout::TableSpec (*table)(uint64_t);
  };
  const Config configs[] = {
      {"(a) sum,mean,max x 5m,1h,24h", [](uint64_t k) { return typical_schema(k).tables[0]; }},
      {"(b) 24h@1min: sum", [](uint64_t k) { return read_agg_schema(k).tables[0]; }},
  };
  constexpr uint64_t kQuiet = 2000, kBusy = 4;
  std::fprintf(stderr,
               "# Memory per entity in proportion to activity (16-byte keys, load factor 0.75, dedup 16 B/id):\n"
               "# %llu quiet keys (5 events at random times in 24 h) and %llu busy keys (1 event/s for 24 h),\n"
               "# one writer, events in time order; chunks held read from the arena after the last event.\n"
               "# %-30s %8s %9s %9s %10s %8s %12s %12s %12s %12s\n",
               static_cast<unsigned long long>(kQuiet), static_cast<unsigned long long>(kBusy), "config", "slot B",
               "v4 state", "v5 state", "chunk B", "busy ch", "v4 B/entity", "quiet B/ent", "busy B/ent", "quiet ratio");
  for (const Config& c : configs) {
    layout::TableSpec spec = c.table(kQuiet + kBusy);
    spec.arena_chunks = (kQuiet + kBusy) * 3;  // never refuses here: what the keys hold, not the default
    layout::Schema schema{{spec}};
    schema.validate();
    const layout::LayoutPlan plan = layout::plan_layout(schema);
    const layout::TablePlan& tp = plan.tables[0];
    const layout::AggregatePlan& ap = tp.aggregates;
    // The stream: every event in time order over 24 h.
    struct Ev {
      int64_t t;
      uint32_t key;
    };
    std::vector<Ev> evs;
    Rng rng(++g_seed);
    const int64_t t0 = now_unix_ms() / kDay * kDay - 2 * kDay;
    for (uint32_t k = 0; k < kQuiet; ++k) {
      for (int e = 0; e < 5; ++e) evs.push_back({t0 + static_cast<int64_t>(rng.below(kDay)), k});
    }
    for (uint32_t k = kQuiet; k < kQuiet + kBusy; ++k) {
      for (int64_t t = t0 + static_cast<int64_t>(k); t < t0 + kDay; t += kSecond) evs.push_back({t, k});
    }
    std::sort(evs.begin(), evs.end(), [](const Ev& a, const Ev& b) { return a.t < b.t; });
    const std::string name = "larder-aggbench-" + std::to_string(::getpid()) + "-activity";
    WriterOptions wo;
    wo.dir = o.dir;
    Writer::remove_segment(name, o.dir);
    g_segments.push_back(name);
    uint64_t busy_chunks = 0, quiet_chunks = 0, refused = 0;
    {
      auto w = Writer::open(name, schema, wo);
      const uint32_t src = static_cast<uint32_t>(w->source_index(0, spec.aggregates[0].source));
      KeyBuf key;
      for (const Ev& e : evs) {
        format_key(e.key, key);
        const SourceValue sv{src, 1.0};
        refused += w->apply(0, key.view(), e.t, {}, {&sv, 1}, 0, e.t * kNsPerMs) == ApplyResult::kArenaFull;
      }
      w->refresh((t0 + kDay) * kNsPerMs);
      // What the busy keys hold: delete them and count what comes back.
      const uint64_t held = w->stats(0).arena_used;
      for (uint32_t k = kQuiet; k < kQuiet + kBusy; ++k) {
        format_key(k, key);
        w->remove(0, key.view(), t0 + kDay, (t0 + kDay) * kNsPerMs);
      }
      busy_chunks = held - w->stats(0).arena_used;
      quiet_chunks = w->stats(0).arena_used;
    }
    Writer::remove_segment(name, o.dir);
    g_segments.pop_back();
    if (refused != 0) throw std::runtime_error("activity memory: events refused for want of an arena chunk");
    const double slots_per_key = static_cast<double>(tp.slot_count) / static_cast<double>(spec.capacity);
    const double base = slots_per_key * (tp.slot_bytes + ap.stride_words * 8.0) + 16;  // per key, no chunk
    const double v4 = slots_per_key * static_cast<double>(tp.slot_bytes + dense_stride_bytes(ap)) + 16;
    const double chunk = ap.chunk_words * 8.0;
    const double quiet = base + chunk * static_cast<double>(quiet_chunks) / kQuiet;
    const double busy = base + chunk * static_cast<double>(busy_chunks) / kBusy;
    std::fprintf(stderr, "# %-30s %8u %9llu %9u %10.0f %8.2f %12.0f %12.0f %12.0f %12.3f\n", c.name, tp.slot_bytes,
                 static_cast<unsigned long long>(dense_stride_bytes(ap)), ap.stride_words * 8, chunk,
                 static_cast<double>(busy_chunks) / kBusy, v4, quiet, busy, quiet / v4);
    std::fprintf(stderr,
                 "#   busy / v4 %.3f; quiet keys hold %llu chunks; with the default arena (%llu chunks at 1M keys) a "
                 "quiet key costs %.0f B (segment / capacity)\n",
                 busy / v4, static_cast<unsigned long long>(quiet_chunks), static_cast<unsigned long long>([&] {
                   layout::TableSpec big = c.table(1'000'000);
                   return big.arena_chunk_count();
                 }()),
                 [&] {
                   layout::TableSpec big = c.table(1'000'000);
                   layout::Schema bs{{big}};
                   return static_cast<double>(layout::plan_layout(bs).segment_bytes) / 1e6;
                 }());
  }
  std::fflush(stderr);
}

void check_applied(ApplyResult r, const char* what, uint64_t i) {
  if (r != ApplyResult::kApplied) {
    throw std::runtime_error(std::string(what) + ": key " + key_string(i) + ": " + apply_result_name(r));
  }
}

// The aggregate table, every key given one event.
std::unique_ptr<Store> load_typical(const Options& o, uint64_t keys, const std::string& dir = "") {
  auto st = create_store(o, "typical-" + count_label(keys) + (dir.empty() ? "" : "-" + dir_suffix(dir).substr(1)),
                         typical_schema(keys), keys, dir);
  const int src = st->w->source_index(0, "amount");
  if (src < 0) throw std::runtime_error("no source 'amount'");
  st->source = static_cast<uint32_t>(src);
  const uint64_t t0 = now_ns();
  KeyBuf key;
  FieldValue values[kPlainFields];
  for (uint64_t i = 0; i < keys; ++i) {
    format_key(i, key);
    for (uint32_t f = 0; f < kPlainFields; ++f) values[f] = FieldValue::float64(f, static_cast<double>(i + f));
    const SourceValue sv{st->source, static_cast<double>(i % 100)};
    st->tick();
    check_applied(st->w->apply(0, key.view(), st->event_ms(), values, {&sv, 1}, 0, st->sim_ns), "loading", i);
  }
  std::printf("# typical %s: %llu keys loaded in %.1f s (%.2f M events/s, inserts), segment %.1f MB in %s\n",
              count_label(keys).c_str(), static_cast<unsigned long long>(keys), seconds_since(t0),
              static_cast<double>(keys) / seconds_since(t0) / 1e6,
              static_cast<double>(layout::plan_layout(st->schema).segment_bytes) / 1e6, st->dir.c_str());
  std::printf("#   huge pages: %s\n", layout::describe(st->w->huge_pages()).c_str());
  return st;
}

std::unique_ptr<Store> load_plain(const Options& o, uint64_t keys) {
  auto st = create_store(o, "plain-" + count_label(keys), plain_schema(keys), keys);
  KeyBuf key;
  FieldValue values[kPlainFields + kOutputs];
  for (uint64_t i = 0; i < keys; ++i) {
    format_key(i, key);
    for (uint32_t f = 0; f < kPlainFields + kOutputs; ++f)
      values[f] = FieldValue::float64(f, static_cast<double>(i + f));
    st->tick();
    check_applied(st->w->upsert(0, key.view(), st->event_ms(), values, st->sim_ns), "loading plain", i);
  }
  return st;
}

// ---------------------------------------------------------------------------
// writer loops

// One event per iteration: the 4 plain fields and the source, to a random
// key of [0, key_range), event time one step after the previous event.
void event_loop(benchmark::State& state, Store& st, uint64_t key_range, bool ids) {
  Writer& w = *st.w;
  Rng rng(++g_seed);
  KeyBuf key;
  FieldValue values[kPlainFields];
  SourceValue sv{st.source, 0};
  uint64_t not_applied = 0;
  for (auto _ : state) {
    const uint64_t i = rng.below(key_range);
    format_key(i, key);
    const uint64_t n = ++st.events;
    st.tick();
    const double amount = 1.0 + static_cast<double>(n % 1000) * 0.25;
    for (uint32_t f = 0; f < kPlainFields; ++f) values[f] = FieldValue::float64(f, amount + f);
    sv.value = amount;
    not_applied +=
        w.apply(0, key.view(), st.event_ms(), values, {&sv, 1}, ids ? n : 0, st.sim_ns) != ApplyResult::kApplied;
    if (st.sim_ns >= st.next_refresh_ns) {
      w.refresh(st.sim_ns);
      st.next_refresh_ns += kRefreshPeriodNs;
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
  const WriterStats ws = w.stats(0);
  state.counters["dedup_evictions"] = static_cast<double>(ws.dedup_evictions);
  state.counters["refreshes"] = static_cast<double>(ws.refreshes);
  if (not_applied != 0) state.SkipWithError("some events were not applied");
}

// The batched apply: Writer::upsert_many of kBatch events per iteration
// (the sidecar's writer thread hands it runs of up to 64), the same events
// as event_loop. Time per event = time / kBatch.
void batch_loop(benchmark::State& state, Store& st, uint64_t key_range) {
  Writer& w = *st.w;
  Rng rng(++g_seed);
  KeyBuf keys[kBatch];
  FieldValue values[kBatch][kPlainFields];
  SourceValue sv[kBatch];
  Upsert batch[kBatch];
  ApplyResult results[kBatch];
  uint64_t not_applied = 0;
  for (auto _ : state) {
    for (size_t j = 0; j < kBatch; ++j) {
      format_key(rng.below(key_range), keys[j]);
      const uint64_t n = ++st.events;
      st.tick();
      const double amount = 1.0 + static_cast<double>(n % 1000) * 0.25;
      for (uint32_t f = 0; f < kPlainFields; ++f) values[j][f] = FieldValue::float64(f, amount + f);
      sv[j] = SourceValue{st.source, amount};
      batch[j].key = keys[j].view();
      batch[j].event_time_ms = st.event_ms();
      batch[j].values = values[j];
      batch[j].sources = {&sv[j], 1};
    }
    w.upsert_many(batch, results, st.sim_ns);
    for (ApplyResult r : results) not_applied += r != ApplyResult::kApplied;
    if (st.sim_ns >= st.next_refresh_ns) {
      w.refresh(st.sim_ns);
      st.next_refresh_ns += kRefreshPeriodNs;
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
  if (not_applied != 0) state.SkipWithError("some events were not applied");
}

// The baseline: upsert of all 13 fields of a random key of [0, key_range).
void upsert_loop(benchmark::State& state, Store& st, uint64_t key_range) {
  Writer& w = *st.w;
  Rng rng(++g_seed);
  KeyBuf key;
  FieldValue values[kPlainFields + kOutputs];
  uint64_t not_applied = 0;
  for (auto _ : state) {
    const uint64_t i = rng.below(key_range);
    format_key(i, key);
    const uint64_t n = ++st.events;
    st.tick();
    const double amount = 1.0 + static_cast<double>(n % 1000) * 0.25;
    for (uint32_t f = 0; f < kPlainFields + kOutputs; ++f) values[f] = FieldValue::float64(f, amount + f);
    not_applied += w.upsert(0, key.view(), st.event_ms(), values, st.sim_ns) != ApplyResult::kApplied;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
  if (not_applied != 0) state.SkipWithError("some upserts were not applied");
}

// One event per iteration with the source `item` to a random key of
// [0, key_range): one of `values` values per key, or a new value every
// event when `values` is 0.
void item_loop(benchmark::State& state, Store& st, uint64_t key_range, uint64_t values) {
  Writer& w = *st.w;
  Rng rng(++g_seed);
  KeyBuf key;
  SourceValue sv{st.source, 0};
  uint64_t not_applied = 0;
  for (auto _ : state) {
    const uint64_t i = rng.below(key_range);
    format_key(i, key);
    const uint64_t n = ++st.events;
    st.tick();
    sv.distinct = distinct_hash_int64(static_cast<int64_t>(values == 0 ? n : rng.below(values)));
    not_applied += w.apply(0, key.view(), st.event_ms(), {}, {&sv, 1}, 0, st.sim_ns) != ApplyResult::kApplied;
    if (st.sim_ns >= st.next_refresh_ns) {
      w.refresh(st.sim_ns);
      st.next_refresh_ns += kRefreshPeriodNs;
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
  if (not_applied != 0) state.SkipWithError("some events were not applied");
}

// ---------------------------------------------------------------------------
// refresh

// Gives every key 8 events at the current clock: 2 in the last 5 minutes, 2
// in the hour before, 4 in the rest of the last 24 h, so that as the clock
// moves each key loses buckets from every window until they are all empty.
void seed_history(Store& st) {
  constexpr struct {
    int64_t lo, hi;
    int n;
  } kSpans[] = {{0, 5 * kMinute, 2}, {5 * kMinute, kHour, 2}, {kHour, kDay - 2 * kMinute, 4}};
  Rng rng(++g_seed);
  KeyBuf key;
  const int64_t now_ms = st.event_ms();
  for (uint64_t i = 0; i < st.keys; ++i) {
    format_key(i, key);
    for (const auto& sp : kSpans) {
      for (int e = 0; e < sp.n; ++e) {
        const SourceValue sv{st.source, static_cast<double>(rng.below(1000))};
        const int64_t t = now_ms - sp.lo - static_cast<int64_t>(rng.below(static_cast<uint64_t>(sp.hi - sp.lo)));
        check_applied(st.w->apply(0, key.view(), t, {}, {&sv, 1}, 0, st.sim_ns), "seeding", i);
      }
    }
  }
  // The last bucket of the 24 h window (24 min, or 1 min) leaves it by then.
  st.drained_ns = st.sim_ns + (kDay + kHour) * kNsPerMs;
}

void refresh_loop(benchmark::State& state, Store& st) {
  Writer& w = *st.w;
  uint64_t refreshed = 0, calls = 0, seeds = 0;
  if (st.drained_ns <= st.sim_ns) seed_history(st);
  for (auto _ : state) {
    st.sim_ns += kRefreshStepMs * kNsPerMs;
    if (st.sim_ns > st.drained_ns) {
      state.PauseTiming();
      seed_history(st);
      ++seeds;
      state.ResumeTiming();
    }
    refreshed += w.refresh(st.sim_ns);
    ++calls;
  }
  st.next_refresh_ns = st.sim_ns + kRefreshPeriodNs;
  state.SetItemsProcessed(static_cast<int64_t>(refreshed));
  state.counters["keys_per_call"] = calls ? static_cast<double>(refreshed) / static_cast<double>(calls) : 0;
  state.counters["ns_per_refresh"] =
      benchmark::Counter(static_cast<double>(refreshed), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["reseeds"] = static_cast<double>(seeds);
  // (Short estimation runs may fall between two bucket boundaries.)
  if (refreshed == 0 && calls >= 100'000) state.SkipWithError("nothing was refreshed");
}

// ---------------------------------------------------------------------------
// read loops (as in larder_bench_core)

// Batches of 64 random keys; per-key cost = time / 64.
template <class ReadBatch>
void batch_loop(benchmark::State& state, uint64_t keys, ReadBatch read_batch) {
  Rng rng(++g_seed);
  KeyBuf key_bufs[kBatch];
  std::string_view views[kBatch];
  uint64_t misses = 0;
  double acc = 0;
  for (auto _ : state) {
    for (size_t i = 0; i < kBatch; ++i) {
      format_key(rng.below(keys), key_bufs[i]);
      views[i] = key_bufs[i].view();
    }
    misses += read_batch(std::span<std::string_view>(views, kBatch), &acc);
  }
  benchmark::DoNotOptimize(acc);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
  state.counters["ns_per_key"] = benchmark::Counter(static_cast<double>(state.iterations() * kBatch),
                                                    benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  if (misses != 0) state.SkipWithError("some keys of a batch were not found");
}

// A bound no row of a bench store reaches (their clocks are simulated).
constexpr int64_t kNoAgeLimitMs = int64_t{1} << 62;

uint64_t next_of(double v) { return v >= 0 && v < 4294967296.0 ? static_cast<uint64_t>(v) : UINT64_MAX; }

struct ReadSet {
  Segment seg;
  Table table;
  Field field;
};

ReadSet open_reader(const Options& o, const Store& st, const char* field) {
  ClientOptions co;
  co.dir = o.dir;
  ReadSet r;
  r.seg = Segment::open(st.name, co);
  r.table = r.seg.table("events");
  r.field = r.table.field(field, FieldType::kFloat64);
  return r;
}

void read_dependent(benchmark::State& state, const ReadSet& r, uint64_t keys, const ReadOptions& options = {}) {
  Row row = r.table.make_row();
  dependent_loop(state, keys, ++g_seed, [&](std::string_view key) -> uint64_t {
    return r.table.get(key, row, options).ok() && row.valid(r.field) ? next_of(row.f64(r.field)) : UINT64_MAX;
  });
}

void read_many(benchmark::State& state, const ReadSet& r, uint64_t keys, const ReadOptions& options = {}) {
  RowBatch batch = r.table.make_batch(kBatch);
  ReadResult results[kBatch];
  batch_loop(state, keys, [&](std::span<std::string_view> ks, double* acc) -> uint64_t {
    r.table.get_many(ks, batch, results, options);
    uint64_t missing = 0;
    for (size_t i = 0; i < kBatch; ++i) {
      missing += !results[i].ok();
      *acc += batch.row(i).f64(r.field);
    }
    return missing;
  });
}

// Gets made dependent by the value read, whatever it holds: the next key is a
// hash of the previous choice and the field's bits (the writer tables, whose
// fields do not hold a chain).
void read_chained(benchmark::State& state, const ReadSet& r, uint64_t keys) {
  Row row = r.table.make_row();
  uint64_t x = 0x243f6a8885a308d3ull;
  dependent_loop(state, keys, ++g_seed, [&](std::string_view key) -> uint64_t {
    if (!r.table.get(key, row).ok()) return UINT64_MAX;
    x = (x ^ std::bit_cast<uint64_t>(row.f64(r.field))) * 0x9E3779B97F4A7C15ull + 0x632be59bd9b4e019ull;
    x ^= x >> 29;
    __extension__ using u128 = unsigned __int128;
    return static_cast<uint64_t>((static_cast<u128>(x) * keys) >> 64);
  });
}

// ---------------------------------------------------------------------------
// phases (Phase and RecordingReporter are in bench_support.h)

void run_writer(const Options& o, RecordingReporter& rep, uint64_t keys) {
  Phase phase(o.filter, o.repetitions, rep);
  const std::string p = "writer/" + count_label(keys) + "/";
  const std::string rp = "refresh/" + count_label(keys) + "/typical";
  const std::string q0 = "read/" + count_label(keys) + "/typical/";
  const bool want_reads = phase.wanted_any({q0 + "plain_f12/get_chained", q0 + "agg_sum_24h/get_chained",
                                            q0 + "plain_f12/get_many64", q0 + "agg_sum_24h/get_many64"});
  const bool want_agg =
      want_reads || phase.wanted_any({p + "agg_random", p + "agg_random_ids", p + "agg_hot1K", p + "agg_hot1K_ids",
                                      p + "agg_random_many64", p + "agg_hot1K_many64", rp});
  const bool want_plain = want_reads || phase.wanted_any({p + "plain_random", p + "plain_hot1K"});
  if (!want_agg && !want_plain) return;
  std::unique_ptr<Store> agg, plain;
  std::vector<std::unique_ptr<Store>> extra;  // the same table in each extra directory
  if (want_agg) agg = load_typical(o, keys);
  for (const std::string& d : o.extra_dirs) {
    const std::string x = dir_suffix(d);
    if (phase.wanted_any(
            {p + "agg_random" + x, p + "agg_hot1K" + x, p + "agg_random_many64" + x, p + "agg_hot1K_many64" + x})) {
      extra.push_back(load_typical(o, keys, d));
    }
  }
  if (want_plain) plain = load_plain(o, keys);
  const uint64_t hot = std::min(keys, kHotKeys);
  if (plain) {
    phase.add(p + "plain_random", [&](benchmark::State& s) { upsert_loop(s, *plain, keys); });
    phase.add(p + "plain_hot1K", [&](benchmark::State& s) { upsert_loop(s, *plain, hot); });
  }
  if (agg) {
    phase.add(p + "agg_random", [&](benchmark::State& s) { event_loop(s, *agg, keys, false); });
    phase.add(p + "agg_random_ids", [&](benchmark::State& s) { event_loop(s, *agg, keys, true); });
    phase.add(p + "agg_hot1K", [&](benchmark::State& s) { event_loop(s, *agg, hot, false); });
    phase.add(p + "agg_hot1K_ids", [&](benchmark::State& s) { event_loop(s, *agg, hot, true); });
    phase.add(p + "agg_random_many64", [&](benchmark::State& s) { batch_loop(s, *agg, keys); });
    phase.add(p + "agg_hot1K_many64", [&](benchmark::State& s) { batch_loop(s, *agg, hot); });
  }
  for (std::unique_ptr<Store>& e : extra) {
    // Registered with the ones above: --benchmark_enable_random_interleaving
    // alternates the directories.
    Store& st = *e;
    const std::string x = dir_suffix(st.dir);
    phase.add(p + "agg_random" + x, [&st, keys](benchmark::State& s) { event_loop(s, st, keys, false); });
    phase.add(p + "agg_hot1K" + x, [&st, hot](benchmark::State& s) { event_loop(s, st, hot, false); });
    phase.add(p + "agg_random_many64" + x, [&st, keys](benchmark::State& s) { batch_loop(s, st, keys); });
    phase.add(p + "agg_hot1K_many64" + x, [&st, hot](benchmark::State& s) { batch_loop(s, st, hot); });
  }
  phase.run();
  for (std::unique_ptr<Store>& e : extra) drop_store(e);
  // Reads of an aggregate output and of a plain field of the same slot size,
  // same keys: the two tables above.
  const std::string q = "read/" + count_label(keys) + "/typical/";
  if (agg && plain) {
    ReadSet ra = open_reader(o, *agg, "amount_sum_24h"), rplain = open_reader(o, *plain, "f12");
    phase.add(q + "plain_f12/get_chained", [&](benchmark::State& s) { read_chained(s, rplain, keys); });
    phase.add(q + "agg_sum_24h/get_chained", [&](benchmark::State& s) { read_chained(s, ra, keys); });
    phase.add(q + "plain_f12/get_many64", [&](benchmark::State& s) { read_many(s, rplain, keys); });
    phase.add(q + "agg_sum_24h/get_many64", [&](benchmark::State& s) { read_many(s, ra, keys); });
    phase.run();
  }
  drop_store(plain);
  if (agg && phase.wanted(rp)) {
    phase.add(rp, [&](benchmark::State& s) { refresh_loop(s, *agg); });
    phase.run();
  }
  drop_store(agg);
}

// Count windows and sequences against plain fields of the same size.
layout::Schema events_read_schema(uint64_t keys, bool aggregate) {
  layout::TableSpec t = base_table("events", keys);
  if (!aggregate) {
    add_float_fields(t, 0, 8);
    t.fields.push_back({"seq", layout::FieldType::kFloat32Vector, 20});
    return {{t}};
  }
  add_float_fields(t, 1, 8);
  layout::AggregateSpec mean;
  mean.name = "x_mean_10e";
  mean.source = "x";
  mean.fn = layout::AggregateFn::kMean;
  mean.window_events = 10;
  layout::AggregateSpec seq = mean;
  seq.name = "x_last_20";
  seq.fn = layout::AggregateFn::kLastN;
  seq.window_events = 20;
  t.aggregates = {mean, seq};
  return {{t}};
}

void read_vector_chained(benchmark::State& state, const Table& table, const Field& field, uint64_t keys) {
  Row row = table.make_row();
  uint64_t x = 0x243f6a8885a308d3ull;
  dependent_loop(state, keys, ++g_seed, [&](std::string_view key) -> uint64_t {
    if (!table.get(key, row).ok()) return UINT64_MAX;
    float sum = 0;
    for (float v : row.vector(field)) sum += v;  // every value read
    x = (x ^ std::bit_cast<uint32_t>(sum)) * 0x9E3779B97F4A7C15ull + 0x632be59bd9b4e019ull;
    x ^= x >> 29;
    __extension__ using u128 = unsigned __int128;
    return static_cast<uint64_t>((static_cast<u128>(x) * keys) >> 64);
  });
}

void read_vector_many(benchmark::State& state, const Table& table, const Field& field, uint64_t keys) {
  RowBatch batch = table.make_batch(kBatch);
  ReadResult results[kBatch];
  batch_loop(state, keys, [&](std::span<std::string_view> ks, double* acc) -> uint64_t {
    table.get_many(ks, batch, results);
    uint64_t missing = 0;
    for (size_t i = 0; i < kBatch; ++i) {
      missing += !results[i].ok();
      for (float v : batch.row(i).vector(field)) *acc += v;
    }
    return missing;
  });
}

void run_event_reads(const Options& o, RecordingReporter& rep, uint64_t keys) {
  Phase phase(o.filter, o.repetitions, rep);
  const std::string p = "read/" + count_label(keys) + "/events/";
  if (!phase.wanted_any({p + "plain_f0/get_chained", p + "count_window_mean10/get_chained", p + "plain_f0/get_many64",
                         p + "count_window_mean10/get_many64", p + "plain_vector20/get_chained",
                         p + "last_n20/get_chained", p + "plain_vector20/get_many64", p + "last_n20/get_many64"})) {
    return;
  }
  constexpr int kEventsPerKey = 12;
  std::unique_ptr<Store> plain =
      create_store(o, "ev-plain-" + count_label(keys), events_read_schema(keys, false), keys);
  std::unique_ptr<Store> agg = create_store(o, "ev-agg-" + count_label(keys), events_read_schema(keys, true), keys);
  agg->source = static_cast<uint32_t>(agg->w->source_index(0, "x"));
  KeyBuf key;
  std::vector<float> vec(20);
  FieldValue values[9], agg_values[7];  // f0..f7 and seq; f1..f7 (fields 0..6 of the aggregate table)
  for (uint64_t i = 0; i < keys; ++i) {
    format_key(i, key);
    for (uint32_t f = 0; f < 8; ++f) values[f] = FieldValue::float64(f, static_cast<double>(i + f));
    for (uint32_t f = 1; f < 8; ++f) agg_values[f - 1] = FieldValue::float64(f - 1, static_cast<double>(i + f));
    for (size_t d = 0; d < vec.size(); ++d) vec[d] = static_cast<float>(i + d);
    values[8] = FieldValue::vector(8, vec);
    plain->tick();
    check_applied(plain->w->upsert(0, key.view(), plain->event_ms(), values, plain->sim_ns), "loading", i);
    for (int e = 0; e < kEventsPerKey; ++e) {
      const SourceValue sv{agg->source, static_cast<double>(i + e)};
      agg->tick();
      check_applied(agg->w->apply(0, key.view(), agg->event_ms(), agg_values, {&sv, 1}, 0, agg->sim_ns), "loading", i);
    }
  }
  const ReadSet rp = open_reader(o, *plain, "f0"), ra = open_reader(o, *agg, "x_mean_10e");
  const Table& tp = rp.table;
  const Table& ta = ra.table;
  const Field vp = tp.field("seq", FieldType::kFloat32Vector), va = ta.field("x_last_20", FieldType::kFloat32Vector);
  std::printf("# read %s: count-window and plain tables loaded, %d events per key\n", count_label(keys).c_str(),
              kEventsPerKey);
  phase.add(p + "plain_f0/get_chained", [&](benchmark::State& s) { read_chained(s, rp, keys); });
  phase.add(p + "count_window_mean10/get_chained", [&](benchmark::State& s) { read_chained(s, ra, keys); });
  phase.add(p + "plain_f0/get_many64", [&](benchmark::State& s) { read_many(s, rp, keys); });
  phase.add(p + "count_window_mean10/get_many64", [&](benchmark::State& s) { read_many(s, ra, keys); });
  phase.add(p + "plain_vector20/get_chained", [&](benchmark::State& s) { read_vector_chained(s, tp, vp, keys); });
  phase.add(p + "last_n20/get_chained", [&](benchmark::State& s) { read_vector_chained(s, ta, va, keys); });
  phase.add(p + "plain_vector20/get_many64", [&](benchmark::State& s) { read_vector_many(s, tp, vp, keys); });
  phase.add(p + "last_n20/get_many64", [&](benchmark::State& s) { read_vector_many(s, ta, va, keys); });
  phase.run();
  drop_store(plain);
  drop_store(agg);
}

void run_reads(const Options& o, RecordingReporter& rep, uint64_t keys) {
  Phase phase(o.filter, o.repetitions, rep);
  const std::string p = "read/" + count_label(keys) + "/";
  const std::string rp = "refresh/" + count_label(keys) + "/24h_1min";
  const bool want_plain = phase.wanted_any({p + "plain/get_dependent", p + "plain/get_many64"});
  const bool want_agg =
      phase.wanted_any({p + "agg24h_1min/get_dependent", p + "agg24h_1min/get_many64", rp,
                        p + "agg24h_1min/get_dependent_event_bound", p + "agg24h_1min/get_dependent_computed_bound",
                        p + "agg24h_1min/get_many64_event_bound", p + "agg24h_1min/get_many64_computed_bound"});
  if (!want_plain && !want_agg) return;
  const std::vector<uint32_t> chain = make_chain(keys, 42);
  std::unique_ptr<Store> plain, agg;
  KeyBuf key;
  if (want_plain) {
    plain = create_store(o, "read-plain-" + count_label(keys), read_plain_schema(keys), keys);
    std::vector<double> row(8);
    FieldValue values[8];
    for (uint64_t i = 0; i < keys; ++i) {
      fill_row(i, chain[i], 8, row.data());
      for (uint32_t f = 0; f < 8; ++f) values[f] = FieldValue::float64(f, row[f]);
      format_key(i, key);
      plain->tick();
      check_applied(plain->w->upsert(0, key.view(), plain->event_ms(), values, plain->sim_ns), "loading", i);
    }
  }
  if (want_agg) {
    const uint64_t t0 = now_ns();
    agg = create_store(o, "read-agg-" + count_label(keys), read_agg_schema(keys), keys);
    agg->source = static_cast<uint32_t>(agg->w->source_index(0, "next"));
    std::vector<double> row(8);
    FieldValue values[7];
    for (uint64_t i = 0; i < keys; ++i) {
      fill_row(i, chain[i], 8, row.data());
      for (uint32_t f = 1; f < 8; ++f) values[f - 1] = FieldValue::float64(f - 1, row[f]);  // f1..f7 are fields 0..6
      const SourceValue sv{agg->source, static_cast<double>(chain[i])};
      format_key(i, key);
      agg->tick();
      check_applied(agg->w->apply(0, key.view(), agg->event_ms(), values, {&sv, 1}, 0, agg->sim_ns), "loading", i);
    }
    std::printf("# read %s: 24h@1min table loaded in %.1f s, segment %.1f MB\n", count_label(keys).c_str(),
                seconds_since(t0), static_cast<double>(layout::plan_layout(agg->schema).segment_bytes) / 1e6);
  }
  {
    std::unique_ptr<ReadSet> rplain, ragg;
    if (plain) rplain = std::make_unique<ReadSet>(open_reader(o, *plain, "f0"));
    if (agg) {
      ragg = std::make_unique<ReadSet>(open_reader(o, *agg, "next_sum_24h"));
      // The aggregate field holds the chain: check one key before timing.
      Row row = ragg->table.make_row();
      format_key(7, key);
      if (!ragg->table.get(key.view(), row).ok() || row.f64(ragg->field) != static_cast<double>(chain[7]))
        throw std::runtime_error("read table: next_sum_24h does not hold the chain");
    }
    if (rplain) phase.add(p + "plain/get_dependent", [&](benchmark::State& s) { read_dependent(s, *rplain, keys); });
    if (ragg) phase.add(p + "agg24h_1min/get_dependent", [&](benchmark::State& s) { read_dependent(s, *ragg, keys); });
    if (rplain) phase.add(p + "plain/get_many64", [&](benchmark::State& s) { read_many(s, *rplain, keys); });
    if (ragg) phase.add(p + "agg24h_1min/get_many64", [&](benchmark::State& s) { read_many(s, *ragg, keys); });
    // The two ages (docs/client.md, "Two ages"): the same reads with a bound
    // on each. The store's clock is simulated, so the bound is one no row
    // exceeds: every read takes the clock and compares, none turns stale.
    const ReadOptions by_event{.max_age_ms = kNoAgeLimitMs, .age_of = AgeOf::kEvent};
    const ReadOptions by_computed{.max_age_ms = kNoAgeLimitMs, .age_of = AgeOf::kComputed};
    if (ragg) {
      phase.add(p + "agg24h_1min/get_dependent_event_bound",
                [&](benchmark::State& s) { read_dependent(s, *ragg, keys, by_event); });
      phase.add(p + "agg24h_1min/get_dependent_computed_bound",
                [&](benchmark::State& s) { read_dependent(s, *ragg, keys, by_computed); });
      phase.add(p + "agg24h_1min/get_many64_event_bound",
                [&](benchmark::State& s) { read_many(s, *ragg, keys, by_event); });
      phase.add(p + "agg24h_1min/get_many64_computed_bound",
                [&](benchmark::State& s) { read_many(s, *ragg, keys, by_computed); });
    }
    phase.run();
  }
  drop_store(plain);
  if (agg && phase.wanted(rp)) {
    phase.add(rp, [&](benchmark::State& s) { refresh_loop(s, *agg); });
    phase.run();
  }
  drop_store(agg);
}

void run_distinct(const Options& o, RecordingReporter& rep, uint64_t keys) {
  Phase phase(o.filter, o.repetitions, rep);
  const std::string p = "distinct/" + count_label(keys) + "/";
  const bool want_count = phase.wanted_any({p + "count_random", p + "count_hot1K"});
  const bool want_distinct = phase.wanted_any(
      {p + "distinct8_random", p + "distinct8_hot1K", p + "distinct_new_random", p + "distinct_new_hot1K"});
  if (!want_count && !want_distinct) return;
  auto load = [&](const char* tag, layout::AggregateFn fn) {
    auto st = create_store(o, std::string(tag) + "-" + count_label(keys), item_schema(keys, fn), keys);
    st->source = static_cast<uint32_t>(st->w->source_index(0, "item"));
    KeyBuf key;
    for (uint64_t i = 0; i < keys; ++i) {
      format_key(i, key);
      const SourceValue sv{st->source, 0, distinct_hash_int64(0)};
      st->tick();
      check_applied(st->w->apply(0, key.view(), st->event_ms(), {}, {&sv, 1}, 0, st->sim_ns), "loading", i);
    }
    std::printf("# %s %s: segment %.1f MB, %u B of aggregate state per slot\n", tag, count_label(keys).c_str(),
                static_cast<double>(layout::plan_layout(st->schema).segment_bytes) / 1e6,
                layout::plan_aggregates(st->schema.tables[0]).stride_words * 8);
    return st;
  };
  std::unique_ptr<Store> count, distinct;
  if (want_count) count = load("count", layout::AggregateFn::kCount);
  if (want_distinct) distinct = load("distinct", layout::AggregateFn::kDistinctCount);
  const uint64_t hot = std::min(keys, kHotKeys);
  if (count) {
    phase.add(p + "count_random", [&](benchmark::State& s) { item_loop(s, *count, keys, 8); });
    phase.add(p + "count_hot1K", [&](benchmark::State& s) { item_loop(s, *count, hot, 8); });
  }
  if (distinct) {
    phase.add(p + "distinct8_random", [&](benchmark::State& s) { item_loop(s, *distinct, keys, 8); });
    phase.add(p + "distinct8_hot1K", [&](benchmark::State& s) { item_loop(s, *distinct, hot, 8); });
    phase.add(p + "distinct_new_random", [&](benchmark::State& s) { item_loop(s, *distinct, keys, 0); });
    phase.add(p + "distinct_new_hot1K", [&](benchmark::State& s) { item_loop(s, *distinct, hot, 0); });
  }
  phase.run();
  drop_store(count);
  drop_store(distinct);
}

void run_misc(const Options& o, RecordingReporter& rep) {
  Phase phase(o.filter, o.repetitions, rep);
  phase.add("event_id_hash/36B", [](benchmark::State& s) {
    std::string id = "3f2a9c1e-8b7d-4e6f-a5c4-0d1e2f3a4b5c";
    uint64_t acc = 0, n = 0;
    for (auto _ : s) {
      id[35] = static_cast<char>('0' + (++n & 7));
      acc += event_id_hash(id);
    }
    benchmark::DoNotOptimize(acc);
    s.SetItemsProcessed(static_cast<int64_t>(s.iterations()));
  });
  phase.run();
}

// ---------------------------------------------------------------------------
// summary

void print_summary(const Options& o, const std::map<std::string, Result>& r) {
  auto find = [&](const std::string& name) -> const Result* {
    auto it = r.find(name);
    return it == r.end() ? nullptr : &it->second;
  };
  auto counter = [](const Result* x, const char* c) -> double {
    if (x == nullptr) return NAN;
    auto it = x->counters.find(c);
    return it == x->counters.end() ? NAN : it->second;
  };
  auto ns = [](const Result* x) { return x == nullptr ? NAN : x->ns; };
  auto verdict = [](double v, bool met) { return std::isnan(v) ? "-" : met ? "met" : "MISSED"; };

  std::printf("\n==== Summary (medians of %d repetitions; CPU time of the measuring thread) ====\n", o.repetitions);
  std::printf("event time moves %.0f events per second; writer clock = event time\n", o.event_rate);
  for (uint64_t keys : o.sizes) {
    const std::string p = "writer/" + count_label(keys) + "/";
    std::printf("\nwriter, %s keys                    ns/event   M events/s   / plain upsert   target >= 2 M/s\n",
                count_label(keys).c_str());
    const Result* pr = find(p + "plain_random");
    const Result* ph = find(p + "plain_hot1K");
    auto row = [&](const char* what, const Result* x, const Result* base, double per = 1) {
      if (x == nullptr) return;
      const double rate = 1e3 / (ns(x) / per);
      std::printf("  %-34s %8.1f %12.3f %16.2f   %s\n", what, ns(x) / per, rate, ns(base) / (ns(x) / per),
                  base == x ? "" : verdict(rate, rate >= 2.0));
    };
    row("plain upsert, random keys", pr, pr);
    row("plain upsert, 1K hot keys", ph, ph);
    row("agg event, random keys", find(p + "agg_random"), pr);
    row("agg event, random keys, ids", find(p + "agg_random_ids"), pr);
    row("agg event, 1K hot keys", find(p + "agg_hot1K"), ph);
    row("agg event, 1K hot keys, ids", find(p + "agg_hot1K_ids"), ph);
    const Result* bm = find(p + "agg_random_many64");
    const Result* bh = find(p + "agg_hot1K_many64");
    row("agg upsert_many(64), random keys", bm, pr, kBatch);
    row("agg upsert_many(64), 1K hot keys", bh, ph, kBatch);
    if (bm != nullptr && bh != nullptr) {
      const double ratio = ns(bh) / ns(bm);
      std::printf("  %-34s %8.2f   target >= 0.7   %s\n", "batched random / batched hot rate", ratio,
                  verdict(ratio, ratio >= 0.7));
    }
    if (bm != nullptr && find(p + "agg_random") != nullptr) {
      std::printf("  %-34s %8.2f\n", "batched / single, random keys rate",
                  ns(find(p + "agg_random")) / (ns(bm) / kBatch));
    }
    for (const std::string& d : o.extra_dirs) {
      const std::string x = dir_suffix(d);
      const Result* xm = find(p + "agg_random_many64" + x);
      const Result* xh = find(p + "agg_hot1K_many64" + x);
      if (xm == nullptr && xh == nullptr) continue;
      std::printf("  the same table in %s (%s):\n", d.c_str(), x.c_str());
      row("agg event, random keys", find(p + "agg_random" + x), pr);
      row("agg event, 1K hot keys", find(p + "agg_hot1K" + x), ph);
      row("agg upsert_many(64), random keys", xm, pr, kBatch);
      row("agg upsert_many(64), 1K hot keys", xh, ph, kBatch);
      if (xm != nullptr && xh != nullptr) {
        const double ratio = ns(xh) / ns(xm);
        std::printf("  %-34s %8.2f   target >= 0.7   %s\n", "batched random / batched hot rate", ratio,
                    verdict(ratio, ratio >= 0.7));
      }
      if (xm != nullptr && bm != nullptr) {
        std::printf("  %-34s %8.2f\n", ("batched random rate, " + x + " / " + dir_suffix(o.dir)).c_str(),
                    ns(bm) / ns(xm));
      }
    }
    {
      const std::string q = "read/" + count_label(keys) + "/typical/";
      const Result* pc = find(q + "plain_f12/get_chained");
      const Result* ac = find(q + "agg_sum_24h/get_chained");
      const Result* pm = find(q + "plain_f12/get_many64");
      const Result* am = find(q + "agg_sum_24h/get_many64");
      if (pc && ac) {
        std::printf(
            "  reads of these tables (192-byte slots), chained get mean/p50 ns: plain f12 %.1f/%.1f, "
            "sum_24h %.1f/%.1f (ratio %.2f/%.2f)\n",
            ns(pc), counter(pc, "p50_ns"), ns(ac), counter(ac, "p50_ns"), ns(ac) / ns(pc),
            counter(ac, "p50_ns") / counter(pc, "p50_ns"));
      }
      if (pm && am) {
        std::printf("  get_many64 per key: plain f12 %.1f, sum_24h %.1f (ratio %.2f)\n", ns(pm) / kBatch,
                    ns(am) / kBatch, ns(am) / ns(pm));
      }
    }
    if (const Result* x = find("refresh/" + count_label(keys) + "/typical")) {
      std::printf("  %-34s %8.1f %12.3f   (M refreshes/s, %.0f keys per call)\n", "refresh, typical config",
                  1e9 / counter(x, "items_per_second"), counter(x, "items_per_second") / 1e6,
                  counter(x, "keys_per_call"));
    }
  }
  for (uint64_t keys : o.read_sizes) {
    const std::string p = "read/" + count_label(keys) + "/";
    const Result* pd = find(p + "plain/get_dependent");
    const Result* ad = find(p + "agg24h_1min/get_dependent");
    const Result* pm = find(p + "plain/get_many64");
    const Result* am = find(p + "agg24h_1min/get_many64");
    std::printf("\nreads, %s keys, 64-byte rows          mean ns   p50 ns   p99 ns\n", count_label(keys).c_str());
    auto row = [&](const char* what, const Result* x, double div) {
      if (x == nullptr) return;
      std::printf("  %-36s %8.1f %8.1f %8.1f\n", what, ns(x) / div, counter(x, "p50_ns"), counter(x, "p99_ns"));
    };
    row("plain float64, get dependent", pd, 1);
    row("24h@1min sum, get dependent", ad, 1);
    row("plain float64, get_many64 per key", pm, kBatch);
    row("24h@1min sum, get_many64 per key", am, kBatch);
    const double r1 = counter(ad, "p50_ns") / counter(pd, "p50_ns"), r1m = ns(ad) / ns(pd), r2 = ns(am) / ns(pm);
    std::printf("  %-36s %8.2f   target <= 2   %s\n", "agg / plain, dependent get (p50)", r1, verdict(r1, r1 <= 2));
    std::printf("  %-36s %8.2f   target <= 2   %s\n", "agg / plain, dependent get (mean)", r1m, verdict(r1m, r1m <= 2));
    std::printf("  %-36s %8.2f   target <= 2   %s\n", "agg / plain, get_many64 per key", r2, verdict(r2, r2 <= 2));
    const Result* ed = find(p + "agg24h_1min/get_dependent_event_bound");
    const Result* cd = find(p + "agg24h_1min/get_dependent_computed_bound");
    const Result* em = find(p + "agg24h_1min/get_many64_event_bound");
    const Result* cm = find(p + "agg24h_1min/get_many64_computed_bound");
    row("24h@1min, get dep., event bound", ed, 1);
    row("24h@1min, get dep., computed bound", cd, 1);
    row("24h@1min, get_many64 event bound", em, kBatch);
    row("24h@1min, get_many64 computed bound", cm, kBatch);
    if (ed != nullptr && cd != nullptr) {
      std::printf("  %-36s %8.2f (mean %.2f)\n", "computed / event bound, get (p50)",
                  counter(cd, "p50_ns") / counter(ed, "p50_ns"), ns(cd) / ns(ed));
    }
    if (em != nullptr && cm != nullptr) {
      std::printf("  %-36s %8.2f\n", "computed / event bound, get_many64", ns(cm) / ns(em));
    }
    if (const Result* x = find("refresh/" + count_label(keys) + "/24h_1min")) {
      std::printf("  refresh, 24h@1min sum: %.1f ns per key (%.3f M refreshes/s, %.0f keys per call)\n",
                  1e9 / counter(x, "items_per_second"), counter(x, "items_per_second") / 1e6,
                  counter(x, "keys_per_call"));
    }
  }
  for (uint64_t keys : o.read_sizes) {
    const std::string p = "read/" + count_label(keys) + "/events/";
    if (find(p + "plain_f0/get_chained") == nullptr) continue;
    std::printf("\ncount windows and last_n vs plain fields, %s keys    ns/key   p50 ns   ratio\n",
                count_label(keys).c_str());
    auto pair = [&](const char* what, const char* plain_name, const char* agg_name, double div) {
      const Result* a = find(p + agg_name);
      const Result* b = find(p + plain_name);
      if (a == nullptr || b == nullptr) return;
      const double ratio = ns(a) / ns(b);
      std::printf("  %s\n", what);
      std::printf("    %-42s %8.1f %8.1f\n", plain_name, ns(b) / div, counter(b, "p50_ns"));
      std::printf("    %-42s %8.1f %8.1f %7.2f   target <= 1.3   %s\n", agg_name, ns(a) / div, counter(a, "p50_ns"),
                  ratio, verdict(ratio, ratio <= 1.3));
    };
    pair("count window mean(10), get chained", "plain_f0/get_chained", "count_window_mean10/get_chained", 1);
    pair("count window mean(10), get_many64", "plain_f0/get_many64", "count_window_mean10/get_many64", kBatch);
    pair("last_n 20, get chained", "plain_vector20/get_chained", "last_n20/get_chained", 1);
    pair("last_n 20, get_many64", "plain_vector20/get_many64", "last_n20/get_many64", kBatch);
  }
  if (const Result* x = find("event_id_hash/36B")) std::printf("\nevent_id_hash of a 36-byte id: %.1f ns\n", ns(x));
  for (uint64_t keys : o.sizes) {
    const std::string p = "distinct/" + count_label(keys) + "/";
    const Result* cr = find(p + "count_random");
    const Result* ch = find(p + "count_hot1K");
    if (cr == nullptr && find(p + "distinct8_random") == nullptr) continue;
    std::printf("\ncount vs distinct_count of one source over 1 h, %s keys   ns/event   / count\n",
                count_label(keys).c_str());
    auto row = [&](const char* what, const Result* x, const Result* base) {
      if (x != nullptr) std::printf("  %-44s %8.1f %8.2f\n", what, ns(x), ns(x) / ns(base));
    };
    row("count, random keys", cr, cr);
    row("distinct_count, 8 values per key, random keys", find(p + "distinct8_random"), cr);
    row("distinct_count, every value new, random keys", find(p + "distinct_new_random"), cr);
    row("count, 1K hot keys", ch, ch);
    row("distinct_count, 8 values per key, 1K hot keys", find(p + "distinct8_hot1K"), ch);
    row("distinct_count, every value new, 1K hot keys", find(p + "distinct_new_hot1K"), ch);
  }
}

}  // namespace
}  // namespace larder::bench

int main(int argc, char** argv) {
  using namespace larder::bench;
  Options o = parse_options(&argc, argv);
  g_dir = o.dir;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  int rc = 0;
  RecordingReporter reporter;
  try {
    print_memory(o);
    print_activity_memory(o);
    run_misc(o, reporter);
    for (uint64_t keys : o.sizes) run_writer(o, reporter, keys);
    for (uint64_t keys : o.sizes) run_distinct(o, reporter, keys);
    for (uint64_t keys : o.read_sizes) run_reads(o, reporter, keys);
    for (uint64_t keys : o.read_sizes) run_event_reads(o, reporter, keys);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "larder_bench_aggregates: %s\n", e.what());
    rc = 1;
  }
  remove_segments();
  print_summary(o, reporter.results);
  benchmark::Shutdown();
  return rc;
}

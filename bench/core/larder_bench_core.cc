// larder_bench_core: read and write costs of the shared-memory table, next
// to an in-process floor and to Redis and LMDB, on the same keys and rows.
//
// The run starts with the platform's own memory latency and parallelism
// (platform/...), then for each configuration (keys x row bytes) goes
// through three phases:
//   A  reads alone: the floor, Larder, Redis and LMDB
//   B  Larder reads while a forked writer process upserts at a fixed rate
//   C  Larder upsert throughput from the (single) writer
// and ends with a summary of the ratios against the targets. Benchmarks
// named proto_* measure candidate changes to the client or writer, built
// here from the public layout headers; the others use the library as is.
// See docs/performance.md for the command and the figures.
//
// Sizes: LARDER_BENCH_CONFIGS=1Mx64,1Mx512,10Mx64 (the default; 250Kx4096 for
// 4 KiB rows), or the cross
// product LARDER_BENCH_SIZES=1M,10M x LARDER_BENCH_ROWS=64,512. The same names
// work as flags (--configs=, --sizes=, --rows=). Other knobs:
//   LARDER_BENCH_BASELINE_KEYS  keys loaded into Redis and LMDB (default 1M)
//   LARDER_BENCH_WRITER_RATE    upserts/s of the phase B writer (default 1M)
//   LARDER_BENCH_DIR            tmpfs directory of the segment (/dev/shm)
//   LARDER_BENCH_REPETITIONS    runs of each benchmark (default 3); the console
//                               shows mean/median/stddev, the summary medians
//   LARDER_BENCH_FLOOR_THP=1    the floor on transparent huge pages
#include <benchmark/benchmark.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
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
#include "floor_table.h"
#include "larder/client.h"
#include "larder/layout/segment_file.h"
#include "larder/writer/writer.h"
#include "lmdb_baseline.h"
#include "read_path_prototype.h"
#include "redis_baseline.h"

namespace larder::bench {
namespace {

constexpr size_t kBatch = 64;
// upsert_hot1K: keys whose slots (and 4 KiB pages) stay in the caches and the
// TLB, so the figure is the writer's own CPU cost.
constexpr uint64_t kHotKeys = 1024;

// ---------------------------------------------------------------------------
// options

struct Options {
  std::vector<Config> configs;
  uint64_t baseline_keys = 1'000'000;
  double writer_rate = 1e6;
  std::string dir = "/dev/shm";
  std::string filter;   // --benchmark_filter, to skip building unused stores
  int repetitions = 3;  // each benchmark; the summary uses the medians
};

[[noreturn]] void usage_error(const std::string& what) {
  std::fprintf(stderr, "larder_bench_core: %s\n", what.c_str());
  std::exit(2);
}

std::vector<uint64_t> parse_counts(std::string_view list, const char* what) {
  std::vector<uint64_t> out;
  for (std::string_view s : split(list, ',')) {
    uint64_t v = 0;
    if (!parse_count(s, &v)) usage_error(std::string("bad ") + what + " '" + std::string(s) + "'");
    out.push_back(v);
  }
  return out;
}

// Takes our flags out of argv (Google Benchmark rejects unknown ones).
Options parse_options(int* argc, char** argv) {
  std::map<std::string, std::string> given = take_settings(argc, argv,
                                                           {{"--configs=", "LARDER_BENCH_CONFIGS"},
                                                            {"--sizes=", "LARDER_BENCH_SIZES"},
                                                            {"--rows=", "LARDER_BENCH_ROWS"},
                                                            {"--baseline_keys=", "LARDER_BENCH_BASELINE_KEYS"},
                                                            {"--writer_rate=", "LARDER_BENCH_WRITER_RATE"},
                                                            {"--dir=", "LARDER_BENCH_DIR"},
                                                            {"--repetitions=", "LARDER_BENCH_REPETITIONS"}});

  Options o;
  if (given.count("LARDER_BENCH_SIZES") || given.count("LARDER_BENCH_ROWS")) {
    const auto sizes = parse_counts(given.count("LARDER_BENCH_SIZES") ? given["LARDER_BENCH_SIZES"] : "1M", "size");
    const auto rows = parse_counts(given.count("LARDER_BENCH_ROWS") ? given["LARDER_BENCH_ROWS"] : "64", "row size");
    for (uint64_t k : sizes) {
      for (uint64_t r : rows) o.configs.push_back({k, static_cast<uint32_t>(r)});
    }
  } else {
    const std::string list =
        given.count("LARDER_BENCH_CONFIGS") ? given["LARDER_BENCH_CONFIGS"] : "1Mx64,1Mx512,10Mx64";
    for (std::string_view c : split(list, ',')) {
      const size_t x = c.find('x');
      uint64_t k = 0, r = 0;
      if (x == std::string_view::npos || !parse_count(c.substr(0, x), &k) || !parse_count(c.substr(x + 1), &r)) {
        usage_error("bad configuration '" + std::string(c) + "' (want e.g. 1Mx64)");
      }
      o.configs.push_back({k, static_cast<uint32_t>(r)});
    }
  }
  for (const Config& c : o.configs) {
    if (c.row_bytes % 8 != 0 || c.row_bytes < 8 || c.row_bytes > 4096) {
      usage_error("row bytes must be a multiple of 8 in [8, 4096], got " + std::to_string(c.row_bytes));
    }
    if (c.keys < kBatch || c.keys > UINT32_MAX) usage_error("key count out of range: " + std::to_string(c.keys));
  }
  if (given.count("LARDER_BENCH_BASELINE_KEYS") &&
      !parse_count(given["LARDER_BENCH_BASELINE_KEYS"], &o.baseline_keys)) {
    usage_error("bad LARDER_BENCH_BASELINE_KEYS");
  }
  if (given.count("LARDER_BENCH_WRITER_RATE")) o.writer_rate = std::atof(given["LARDER_BENCH_WRITER_RATE"].c_str());
  if (given.count("LARDER_BENCH_DIR")) o.dir = given["LARDER_BENCH_DIR"];
  if (given.count("filter")) o.filter = given["filter"];
  if (given.count("LARDER_BENCH_REPETITIONS"))
    o.repetitions = std::max(1, std::atoi(given["LARDER_BENCH_REPETITIONS"].c_str()));
  return o;
}

// ---------------------------------------------------------------------------
// the data set of one configuration

std::vector<std::string> g_segments;  // removed at exit, also after an error
std::string g_dir;

void remove_segments() {
  for (const std::string& s : g_segments) Writer::remove_segment(s, g_dir);
}

struct Dataset {
  Config cfg;
  std::vector<uint32_t> chain;  // over all keys
  uint64_t baseline_keys = 0;
  std::vector<uint32_t> baseline_chain;  // over the first baseline_keys keys
  layout::Schema schema;
  std::string segment;
  std::unique_ptr<FloorTable> floor;
  std::unique_ptr<RedisBaseline> redis;
  std::unique_ptr<LmdbBaseline> lmdb;
  Segment seg;
  Table table;
  Field next_field;
  double load_seconds = 0;
};

layout::Schema make_schema(const Config& cfg) {
  layout::TableSpec t;
  t.name = "features";
  t.key_max_len = kKeyMaxLen;
  t.capacity = cfg.keys;
  t.max_load_factor = 0.75;
  for (uint32_t f = 0; f < cfg.fields(); ++f)
    t.fields.push_back({"f" + std::to_string(f), layout::FieldType::kFloat64, 1});
  layout::Schema s;
  s.tables.push_back(t);
  return s;
}

double seconds_since(uint64_t t0) { return static_cast<double>(now_ns() - t0) / 1e9; }

void load_larder(Dataset& d, const Options& o) {
  d.schema = make_schema(d.cfg);
  d.segment = "larder-bench-" + std::to_string(::getpid()) + "-" + d.cfg.label();
  WriterOptions wo;
  wo.dir = o.dir;
  Writer::remove_segment(d.segment, o.dir);
  g_segments.push_back(d.segment);
  const uint64_t t0 = now_ns();
  {
    auto w = Writer::open(d.segment, d.schema, wo);
    std::vector<FieldValue> values(d.cfg.fields());
    std::vector<double> row(d.cfg.fields());
    KeyBuf key;
    const int64_t event_ms = now_unix_ms();
    for (uint64_t i = 0; i < d.cfg.keys; ++i) {
      fill_row(i, d.chain[i], d.cfg.fields(), row.data());
      for (uint32_t f = 0; f < d.cfg.fields(); ++f) values[f] = FieldValue::float64(f, row[f]);
      format_key(i, key);
      if (w->upsert(0, key.view(), event_ms, values) != ApplyResult::kApplied) {
        throw std::runtime_error("loading Larder: upsert of " + key_string(i) + " was not applied");
      }
      if ((i & 0xffff) == 0) w->heartbeat();
    }
  }  // the writer detaches: phase B's writer process attaches next
  d.load_seconds = seconds_since(t0);
  ClientOptions co;
  co.dir = o.dir;
  d.seg = Segment::open(d.segment, co);
  d.table = d.seg.table("features");
  d.next_field = d.table.field("f0", FieldType::kFloat64);
  // Read every key once: the reader's fresh mapping would otherwise pay a
  // page fault on the first read of each page inside the timed loops (with
  // 4 KiB rows, one per key).
  {
    RowBatch batch = d.table.make_batch(kBatch);
    ReadResult results[kBatch];
    KeyBuf bufs[kBatch];
    std::string_view views[kBatch];
    for (uint64_t i = 0; i < d.cfg.keys; i += kBatch) {
      const size_t m = static_cast<size_t>(std::min<uint64_t>(kBatch, d.cfg.keys - i));
      for (size_t j = 0; j < m; ++j) {
        format_key(i + j, bufs[j]);
        views[j] = bufs[j].view();
      }
      d.table.get_many(std::span<const std::string_view>(views, m), batch, std::span<ReadResult>(results, m));
    }
  }
  std::printf("# %s: Larder segment loaded, %llu keys in %.1f s (%.2f M inserts/s, one writer)\n",
              d.cfg.label().c_str(), static_cast<unsigned long long>(d.cfg.keys), d.load_seconds,
              static_cast<double>(d.cfg.keys) / d.load_seconds / 1e6);
}

void load_floor(Dataset& d) {
  d.floor = std::make_unique<FloorTable>(d.cfg.keys, d.cfg.fields());
  std::vector<double> row(d.cfg.fields());
  KeyBuf key;
  for (uint64_t i = 0; i < d.cfg.keys; ++i) {
    fill_row(i, d.chain[i], d.cfg.fields(), row.data());
    format_key(i, key);
    d.floor->insert(key.view(), reinterpret_cast<const uint64_t*>(row.data()));
  }
}

void load_redis(Dataset& d) {
  d.redis = std::make_unique<RedisBaseline>();
  if (!d.redis->available()) return;
  const uint64_t t0 = now_ns();
  std::vector<double> row(d.cfg.fields());
  KeyBuf key;
  for (uint64_t i = 0; i < d.baseline_keys; ++i) {
    fill_row(i, d.baseline_chain[i], d.cfg.fields(), row.data());
    format_key(i, key);
    d.redis->set(key.view(), row.data(), d.cfg.row_bytes);
  }
  d.redis->flush();
  std::printf("# %s: Redis loaded, %llu keys in %.1f s\n", d.cfg.label().c_str(),
              static_cast<unsigned long long>(d.baseline_keys), seconds_since(t0));
}

void load_lmdb(Dataset& d) {
  d.lmdb = std::make_unique<LmdbBaseline>(d.baseline_keys, d.cfg.row_bytes);
  if (!d.lmdb->available()) return;
  const uint64_t t0 = now_ns();
  std::vector<KeyBuf> keys(d.baseline_keys);
  std::vector<uint32_t> order(d.baseline_keys);
  for (uint64_t i = 0; i < d.baseline_keys; ++i) {
    format_key(i, keys[i]);
    order[i] = static_cast<uint32_t>(i);
  }
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return keys[a].view() < keys[b].view(); });
  std::vector<double> row(d.cfg.fields());
  d.lmdb->begin_load();
  for (uint32_t i : order) {
    fill_row(i, d.baseline_chain[i], d.cfg.fields(), row.data());
    d.lmdb->append(keys[i].view(), row.data(), d.cfg.row_bytes);
  }
  d.lmdb->end_load();
  std::printf("# %s: LMDB loaded, %llu keys in %.1f s\n", d.cfg.label().c_str(),
              static_cast<unsigned long long>(d.baseline_keys), seconds_since(t0));
}

// ---------------------------------------------------------------------------
// read loops, shared by every store

uint64_t g_seed = 0x1a2de5;

// Runs `f` with the calling thread pinned to `cpu`, then restores its
// affinity. Google Benchmark runs a single-threaded benchmark on the thread
// that called RunSpecifiedBenchmarks, so this pins the measuring thread.
template <class F>
void on_cpu(int cpu, F&& f) {
  cpu_set_t before, pinned;
  const bool saved = ::sched_getaffinity(0, sizeof before, &before) == 0;
  CPU_ZERO(&pinned);
  CPU_SET(cpu, &pinned);
  ::sched_setaffinity(0, sizeof pinned, &pinned);
  f();
  if (saved) ::sched_setaffinity(0, sizeof before, &before);
}

// CPUs this process may run on.
int usable_cpus() {
  cpu_set_t set;
  return ::sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
}

// Independent gets: random keys that do not depend on earlier results, so the
// CPU may overlap their cache misses. Throughput.
template <class Read>
void independent_loop(benchmark::State& state, uint64_t keys, Read read) {
  Rng rng(++g_seed);
  KeyBuf key;
  uint64_t acc = 0;
  for (auto _ : state) {
    format_key(rng.below(keys), key);
    acc += read(key.view());
  }
  benchmark::DoNotOptimize(acc);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}

// Batches of 64 random keys; per-key cost = time / 64.
template <class ReadBatch>
void batch_loop(benchmark::State& state, uint64_t keys, ReadBatch read_batch) {
  Rng rng(++g_seed);
  KeyBuf key_bufs[kBatch];
  std::string_view views[kBatch];
  uint64_t misses = 0;
  for (auto _ : state) {
    for (size_t i = 0; i < kBatch; ++i) {
      format_key(rng.below(keys), key_bufs[i]);
      views[i] = key_bufs[i].view();
    }
    misses += read_batch(std::span<std::string_view>(views, kBatch));
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
  state.counters["ns_per_key"] = benchmark::Counter(static_cast<double>(state.iterations() * kBatch),
                                                    benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  if (misses != 0) state.SkipWithError("some keys of a batch were not found");
}

uint64_t next_of(double v) { return static_cast<uint64_t>(v); }

// Larder reads, used alone (phase A) and under the writer (phase B).
void larder_dependent(benchmark::State& state, Dataset& d) {
  Row row = d.table.make_row();
  dependent_loop(state, d.cfg.keys, ++g_seed, [&](std::string_view key) -> uint64_t {
    return d.table.get(key, row).ok() ? next_of(row.f64(d.next_field)) : UINT64_MAX;
  });
}
void larder_independent(benchmark::State& state, Dataset& d) {
  Row row = d.table.make_row();
  independent_loop(state, d.cfg.keys, [&](std::string_view key) -> uint64_t {
    return d.table.get(key, row).ok() ? next_of(row.f64(d.next_field)) : 0;
  });
}
void larder_get_many(benchmark::State& state, Dataset& d) {
  RowBatch batch = d.table.make_batch(kBatch);
  ReadResult results[kBatch];
  batch_loop(state, d.cfg.keys, [&](std::span<std::string_view> keys) -> uint64_t {
    d.table.get_many(keys, batch, results);
    uint64_t missing = 0;
    for (size_t i = 0; i < kBatch; ++i) missing += !results[i].ok();
    return missing;
  });
}

// Prefetch schedules of get_many tried as prototypes (read_path_prototype.h).
const std::vector<std::pair<std::string, PrototypeReader::Schedule>>& proto_schedules() {
  static const std::vector<std::pair<std::string, PrototypeReader::Schedule>> list = {
      {"proto_get_many64_w8", {8, false, false}},           {"proto_get_many64_w32", {32, false, false}},
      {"proto_get_many64_hash_first", {16, true, false}},   {"proto_get_many64_touch_ahead", {16, false, true}},
      {"proto_get_many64_w8_touch_ahead", {8, true, true}},
  };
  return list;
}

// ---------------------------------------------------------------------------
// phase B: a writer in another process

struct WriterReport {
  std::atomic<int> ready{0};
  std::atomic<int> stop{0};
  std::atomic<uint64_t> updates{0};
  std::atomic<uint64_t> elapsed_ns{0};
  char error[256] = {};
};

class WriterProcess {
 public:
  // Forks a process that opens the segment's writer and upserts 7 float64
  // fields (f1..f7, never the chain's f0) of random existing keys at `rate`
  // per second until stopped.
  WriterProcess(const Dataset& d, const Options& o) {
    void* mem = ::mmap(nullptr, sizeof(WriterReport), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) throw std::runtime_error("mmap for the writer report failed");
    report_ = new (mem) WriterReport();
    std::fflush(stdout);
    pid_ = ::fork();
    if (pid_ == 0) ::_exit(run_child(d, o));
    if (pid_ < 0) throw std::runtime_error("fork failed");
    while (report_->ready.load() == 0) ::usleep(1000);
    if (report_->ready.load() < 0) {
      std::string e = report_->error;
      stop();
      throw std::runtime_error("writer process: " + e);
    }
  }
  ~WriterProcess() {
    stop();
    ::munmap(report_, sizeof(WriterReport));
  }
  void stop() {
    if (pid_ <= 0) return;
    report_->stop.store(1);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  double achieved_rate() const {
    const double s = static_cast<double>(report_->elapsed_ns.load()) / 1e9;
    return s > 0 ? static_cast<double>(report_->updates.load()) / s : 0;
  }

 private:
  int run_child(const Dataset& d, const Options& o) {
    try {
      WriterOptions wo;
      wo.dir = o.dir;
      auto w = Writer::open(d.segment, d.schema, wo);
      report_->ready.store(1);
      const uint32_t fields = std::min<uint32_t>(7, d.cfg.fields() - 1);
      std::vector<FieldValue> values(fields);
      Rng rng(0xfeed);
      KeyBuf key;
      const uint64_t start = now_ns();
      uint64_t n = 0;
      constexpr uint64_t kChunk = 256;
      while (layout::sync::load_relaxed(report_->stop) == 0) {  // a stop flag; it guards no data
        const int64_t event_ms = now_unix_ms();
        for (uint64_t c = 0; c < kChunk; ++c, ++n) {
          format_key(rng.below(d.cfg.keys), key);
          for (uint32_t f = 0; f < fields; ++f) values[f] = FieldValue::float64(f + 1, static_cast<double>(n + f));
          w->upsert(0, key.view(), event_ms, values);
        }
        w->heartbeat();
        // Pace to the rate: sleep off any lead over the schedule.
        const uint64_t due = start + static_cast<uint64_t>(static_cast<double>(n) * 1e9 / o.writer_rate);
        const uint64_t now = now_ns();
        if (due > now) {
          timespec ts{static_cast<time_t>((due - now) / 1'000'000'000u),
                      static_cast<long>((due - now) % 1'000'000'000u)};
          ::nanosleep(&ts, nullptr);
        }
      }
      report_->updates.store(n);
      report_->elapsed_ns.store(now_ns() - start);
      return 0;
    } catch (const std::exception& e) {
      std::snprintf(report_->error, sizeof report_->error, "%s", e.what());
      report_->ready.store(-1);
      return 1;
    }
  }

  WriterReport* report_ = nullptr;
  pid_t pid_ = -1;
};

// ---------------------------------------------------------------------------
// phase C: upserts from the writer

struct UpsertOptions {
  uint64_t key_range = 0;
  // Prototype of a batched upsert: hash the key 16 upserts ahead and prefetch
  // its home slot for writing, through the writer's own mapping.
  bool prefetch_ahead = false;
};

void upsert_loop(benchmark::State& state, Dataset& d, Writer& w, const UpsertOptions& uo) {
  constexpr size_t kAhead = 16;
  std::vector<FieldValue> values(d.cfg.fields());
  Rng rng(++g_seed);
  KeyBuf key;
  uint64_t n = 0, not_applied = 0;
  const int64_t event_ms = now_unix_ms();
  layout::TableGeometry geo;
  if (uo.prefetch_ahead) {
    geo = layout::table_geometry(w.data(), layout::table_descriptor(w.data(), 0));
  }
  uint64_t ring[kAhead];
  auto prefetch = [&](uint64_t index) {
    KeyBuf k;
    format_key(index, k);
    const char* s = reinterpret_cast<const char*>(geo.slot(geo.home(layout::hash_key(k.view(), geo.hash_seed))));
    for (size_t off = 0; off < size_t{geo.slot_words} * 8; off += 64) __builtin_prefetch(s + off, 1, 3);
  };
  for (size_t j = 0; j < kAhead; ++j) {
    ring[j] = rng.below(uo.key_range);
    if (uo.prefetch_ahead) prefetch(ring[j]);
  }
  for (auto _ : state) {
    const uint64_t i = ring[n % kAhead];
    ring[n % kAhead] = rng.below(uo.key_range);
    if (uo.prefetch_ahead) prefetch(ring[n % kAhead]);
    format_key(i, key);
    values[0] = FieldValue::float64(0, static_cast<double>(d.chain[i]));  // keep the chain intact
    for (uint32_t f = 1; f < d.cfg.fields(); ++f) values[f] = FieldValue::float64(f, static_cast<double>(n + f));
    not_applied += w.upsert(0, key.view(), event_ms, values) != ApplyResult::kApplied;
    ++n;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
  if (not_applied != 0) state.SkipWithError("some upserts were not applied");
}

// Writer::upsert_many of batches of kBatch random existing keys, every
// field, as upsert_loop writes them; per-upsert cost = time / kBatch.
void upsert_many_loop(benchmark::State& state, Dataset& d, Writer& w, uint64_t key_range) {
  const uint32_t fields = d.cfg.fields();
  std::vector<FieldValue> values(kBatch * fields);
  std::vector<KeyBuf> keys(kBatch);
  std::vector<Upsert> batch(kBatch);
  std::vector<ApplyResult> results(kBatch);
  Rng rng(++g_seed);
  uint64_t n = 0, not_applied = 0;
  const int64_t event_ms = now_unix_ms();
  for (auto _ : state) {
    for (size_t b = 0; b < kBatch; ++b, ++n) {
      const uint64_t i = rng.below(key_range);
      format_key(i, keys[b]);
      FieldValue* v = &values[b * fields];
      v[0] = FieldValue::float64(0, static_cast<double>(d.chain[i]));  // keep the chain intact
      for (uint32_t f = 1; f < fields; ++f) v[f] = FieldValue::float64(f, static_cast<double>(n + f));
      batch[b] = Upsert{0, keys[b].view(), event_ms, std::span<const FieldValue>(v, fields), {}, 0, nullptr};
    }
    w.upsert_many(batch, results);
    for (ApplyResult r : results) not_applied += r != ApplyResult::kApplied;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
  state.counters["ns_per_key"] = benchmark::Counter(static_cast<double>(state.iterations() * kBatch),
                                                    benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  if (not_applied != 0) state.SkipWithError("some upserts were not applied");
}

// ---------------------------------------------------------------------------
// platform: what the memory system allows, before any table is involved

// Random 64-byte lines of a 1 GiB buffer, read as a dependent chain (one
// DRAM latency each) and as independent loads (as many misses in flight as
// the core and its page walkers allow), on 4 KiB pages and on transparent
// huge pages. The tables' figures cannot beat these.
void run_platform(const Options& o, RecordingReporter& rep) {
  Phase phase(o.filter, o.repetitions, rep);
  const char* names[] = {"platform/4KiB/load_dependent", "platform/4KiB/load_independent",
                         "platform/THP/load_dependent", "platform/THP/load_independent"};
  bool any = false;
  for (const char* n : names) any = any || phase.wanted(n);
  if (!any) return;
  constexpr size_t kBytes = size_t{1} << 30, kLines = kBytes / 64;
  std::vector<uint32_t> chain = make_chain(kLines, 7);
  struct Buffer {
    uint64_t* words = nullptr;
    ~Buffer() {
      if (words != nullptr) ::munmap(words, kBytes);
    }
  } bufs[2];
  for (int thp = 0; thp < 2; ++thp) {
    void* m = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("mmap of the platform buffer failed");
    ::madvise(m, kBytes, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    bufs[thp].words = static_cast<uint64_t*>(m);
    for (size_t l = 0; l < kLines; ++l) bufs[thp].words[l * 8] = chain[l];
  }
  chain = {};
  for (int thp = 0; thp < 2; ++thp) {
    const uint64_t* w = bufs[thp].words;
    phase.add(names[thp * 2], [w](benchmark::State& s) {
      Rng rng(++g_seed);
      uint64_t idx = rng.below(kLines);
      for (auto _ : s) idx = w[idx * 8];
      benchmark::DoNotOptimize(idx);
    });
    phase.add(names[thp * 2 + 1], [w](benchmark::State& s) {
      Rng rng(++g_seed);
      uint64_t acc = 0;
      for (auto _ : s) acc += w[rng.below(kLines) * 8];
      benchmark::DoNotOptimize(acc);
    });
  }
  phase.run();
}

std::map<std::string, double> g_writer_rates;  // config label -> achieved updates/s

void run_config(const Config& cfg, const Options& o, RecordingReporter& rep) {
  Dataset d;
  d.cfg = cfg;
  d.baseline_keys = std::min(cfg.keys, o.baseline_keys);
  const std::string p = cfg.label() + "/";
  Phase phase(o.filter, o.repetitions, rep);
  auto wanted_any = [&](std::initializer_list<const char*> names) {
    for (const char* n : names) {
      if (phase.wanted(p + n)) return true;
    }
    return false;
  };

  d.chain = make_chain(cfg.keys, 42);
  if (d.baseline_keys != cfg.keys)
    d.baseline_chain = make_chain(d.baseline_keys, 43);
  else
    d.baseline_chain = d.chain;
  load_larder(d, o);

  // Phase A: reads alone.
  if (wanted_any({"floor/get_dependent", "floor/get_independent", "floor/get_many64"})) load_floor(d);
  if (wanted_any({"redis/get_dependent_cross_cpu", "redis/get_dependent_same_cpu"})) {
    load_redis(d);
    if (!d.redis->available())
      std::printf("# %s: Redis skipped: %s\n", cfg.label().c_str(), d.redis->skip_reason().c_str());
  }
  if (wanted_any({"lmdb/get_dependent"})) {
    load_lmdb(d);
    if (!d.lmdb->available())
      std::printf("# %s: LMDB skipped: %s\n", cfg.label().c_str(), d.lmdb->skip_reason().c_str());
  }
  std::vector<uint64_t> row_buf(cfg.fields() + 8);
  std::vector<uint64_t> batch_buf(kBatch * cfg.fields());
  auto as_next = [](uint64_t word) { return next_of(std::bit_cast<double>(word)); };
  if (d.floor) {
    phase.add(p + "floor/get_dependent", [&](benchmark::State& s) {
      dependent_loop(s, cfg.keys, ++g_seed, [&](std::string_view k) {
        return d.floor->get(k, row_buf.data()) ? as_next(row_buf[0]) : UINT64_MAX;
      });
    });
  }
  phase.add(p + "larder/get_dependent", [&](benchmark::State& s) { larder_dependent(s, d); });
  if (d.redis && d.redis->available()) {
    // Two placements: the client and redis-server on different CPUs (each
    // GET wakes the server on the other CPU: the usual deployment), and on
    // the same CPU (each GET is two context switches on one CPU).
    struct Placement {
      const char* name;
      int client_cpu, server_cpu;
    };
    std::vector<Placement> placements = {{"redis/get_dependent_same_cpu", 0, 0}};
    if (usable_cpus() >= 2) {
      placements.insert(placements.begin(), Placement{"redis/get_dependent_cross_cpu", 0, 1});
    } else {
      std::printf("# %s: one usable CPU: Redis measured on the same CPU only\n", cfg.label().c_str());
    }
    for (const Placement& pl : placements) {
      phase.add(
          p + pl.name,
          [&, pl](benchmark::State& s) {
            d.redis->pin_server(pl.server_cpu);
            on_cpu(pl.client_cpu, [&] {
              dependent_loop(s, d.baseline_keys, ++g_seed, [&](std::string_view k) {
                return d.redis->get(k, row_buf.data(), cfg.row_bytes) ? as_next(row_buf[0]) : UINT64_MAX;
              });
            });
            d.redis->pin_server(-1);
          },
          /*wall=*/true);
    }
  }
  if (d.lmdb && d.lmdb->available()) {
    phase.add(p + "lmdb/get_dependent", [&](benchmark::State& s) {
      dependent_loop(s, d.baseline_keys, ++g_seed, [&](std::string_view k) {
        return d.lmdb->get(k, row_buf.data(), cfg.row_bytes) ? as_next(row_buf[0]) : UINT64_MAX;
      });
    });
  }
  if (d.floor) {
    phase.add(p + "floor/get_independent", [&](benchmark::State& s) {
      independent_loop(s, cfg.keys, [&](std::string_view k) -> uint64_t {
        return d.floor->get(k, row_buf.data()) ? as_next(row_buf[0]) : 0;
      });
    });
  }
  phase.add(p + "larder/get_independent", [&](benchmark::State& s) { larder_independent(s, d); });
  if (d.floor) {
    phase.add(p + "floor/get_many64", [&](benchmark::State& s) {
      bool found[kBatch];
      batch_loop(s, cfg.keys, [&](std::span<std::string_view> keys) -> uint64_t {
        d.floor->get_many(keys.data(), keys.size(), batch_buf.data(), found);
        uint64_t missing = 0;
        for (size_t i = 0; i < kBatch; ++i) missing += !found[i];
        return missing;
      });
    });
  }
  phase.add(p + "larder/get_many64", [&](benchmark::State& s) { larder_get_many(s, d); });
  std::unique_ptr<PrototypeReader> proto;
  bool want_schedules = false;
  for (const auto& ps : proto_schedules()) want_schedules = want_schedules || phase.wanted(p + "larder/" + ps.first);
  if (wanted_any({"larder/proto_get_many64"}) || want_schedules)
    proto = std::make_unique<PrototypeReader>(o.dir, d.segment);
  if (wanted_any({"larder/proto_get_dependent"}) && !proto) proto = std::make_unique<PrototypeReader>(o.dir, d.segment);
  if (proto) {
    phase.add(p + "larder/proto_get_dependent", [&](benchmark::State& s) {
      std::vector<uint64_t> row(proto->row_words());
      // Field 0 is the first row word: after event time, apply time, key
      // length, validity and key words.
      const size_t next_at = proto->row_words() - cfg.fields();
      dependent_loop(s, cfg.keys, ++g_seed, [&](std::string_view k) {
        return proto->get(k, row.data()) ? as_next(row[next_at]) : UINT64_MAX;
      });
    });
    phase.add(p + "larder/proto_get_many64", [&](benchmark::State& s) {
      std::vector<uint64_t> rows(kBatch * proto->row_words());
      batch_loop(s, cfg.keys,
                 [&](std::span<std::string_view> keys) -> uint64_t { return proto->get_many(keys, rows.data()); });
    });
    for (const auto& [name, sc] : proto_schedules()) {
      phase.add(p + "larder/" + name, [&, sc = sc](benchmark::State& s) {
        std::vector<uint64_t> rows(kBatch * proto->row_words());
        batch_loop(s, cfg.keys, [&](std::span<std::string_view> keys) -> uint64_t {
          return proto->get_many_scheduled(keys, rows.data(), sc);
        });
      });
    }
  }
  phase.run();
  proto.reset();
  d.floor.reset();
  d.redis.reset();
  d.lmdb.reset();

  // Phase B: the same Larder reads while another process writes.
  if (wanted_any({"larder/under_writer/get_dependent", "larder/under_writer/get_independent",
                  "larder/under_writer/get_many64"})) {
    WriterProcess writer(d, o);
    phase.add(p + "larder/under_writer/get_dependent", [&](benchmark::State& s) { larder_dependent(s, d); });
    phase.add(p + "larder/under_writer/get_independent", [&](benchmark::State& s) { larder_independent(s, d); });
    phase.add(p + "larder/under_writer/get_many64", [&](benchmark::State& s) { larder_get_many(s, d); });
    phase.run();
    writer.stop();
    g_writer_rates[cfg.label()] = writer.achieved_rate();
    std::printf("# %s: writer process applied %.2f M upserts/s during the reads (target %.2f M/s)\n",
                cfg.label().c_str(), writer.achieved_rate() / 1e6, o.writer_rate / 1e6);
  }

  // Phase C: upsert throughput from the writer.
  if (wanted_any({"larder/upsert_random", "larder/upsert_hot1K", "larder/proto_upsert_random_prefetch",
                  "larder/upsert_many64_random", "larder/upsert_many64_hot1K"})) {
    WriterOptions wo;
    wo.dir = o.dir;
    auto w = Writer::open(d.segment, d.schema, wo);
    // Map every page of the fresh writer mapping now: otherwise a random-key
    // upsert of a large table pays a page fault (tens of µs on this VM) on
    // each page it reaches first, in its CPU time.
    if (::madvise(const_cast<void*>(w->data()), d.seg.info().segment_bytes, MADV_POPULATE_WRITE) != 0) {
      std::printf("# %s: MADV_POPULATE_WRITE failed: upserts include page faults\n", cfg.label().c_str());
    }
    phase.add(p + "larder/upsert_random", [&](benchmark::State& s) { upsert_loop(s, d, *w, {cfg.keys}); });
    phase.add(p + "larder/upsert_hot1K", [&](benchmark::State& s) { upsert_loop(s, d, *w, {kHotKeys}); });
    phase.add(p + "larder/proto_upsert_random_prefetch", [&](benchmark::State& s) {
      upsert_loop(s, d, *w, {cfg.keys, true});
    });
    phase.add(p + "larder/upsert_many64_random", [&](benchmark::State& s) { upsert_many_loop(s, d, *w, cfg.keys); });
    phase.add(p + "larder/upsert_many64_hot1K", [&](benchmark::State& s) { upsert_many_loop(s, d, *w, kHotKeys); });
    phase.run();
  }

  d.table = Table();
  d.seg = Segment();
  Writer::remove_segment(d.segment, o.dir);
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
  auto ns = [](const Result* x) -> double { return x == nullptr ? NAN : x->ns; };
  auto line = [](const char* what, double value, const char* rule, bool met) {
    if (std::isnan(value)) {
      std::printf("  %-46s %10s   %-10s %s\n", what, "n/a", rule, "-");
    } else {
      std::printf("  %-46s %10.3f   %-10s %s\n", what, value, rule, rule[0] == '(' ? "" : met ? "met" : "MISSED");
    }
  };

  std::printf(
      "\n==== Summary ====\n"
      "mean: CPU time per op of the measuring thread (Redis: wall time); p50/p99: per-op TSC\n"
      "samples (wall, including ~20 ns of timer overhead)\n");
  for (const char* n : {"platform/4KiB/load_dependent", "platform/4KiB/load_independent", "platform/THP/load_dependent",
                        "platform/THP/load_independent"}) {
    if (const Result* x = find(n)) std::printf("  %-34s %9.1f ns per load\n", n, ns(x));
  }
  for (const Config& c : o.configs) {
    const std::string p = c.label() + "/";
    const Result* fd = find(p + "floor/get_dependent");
    const Result* ld = find(p + "larder/get_dependent");
    const Result* fi = find(p + "floor/get_independent");
    const Result* li = find(p + "larder/get_independent");
    const Result* fm = find(p + "floor/get_many64");
    const Result* lm = find(p + "larder/get_many64");
    const Result* rd = find(p + "redis/get_dependent_cross_cpu");
    const Result* rs = find(p + "redis/get_dependent_same_cpu");
    const Result* umr = find(p + "larder/upsert_many64_random");
    const Result* umh = find(p + "larder/upsert_many64_hot1K");
    const Result* md = find(p + "lmdb/get_dependent");
    const Result* wd = find(p + "larder/under_writer/get_dependent");
    const Result* wi = find(p + "larder/under_writer/get_independent");
    const Result* wm = find(p + "larder/under_writer/get_many64");
    const Result* ur = find(p + "larder/upsert_random");
    const Result* uh = find(p + "larder/upsert_hot1K");
    const Result* up = find(p + "larder/proto_upsert_random_prefetch");
    const Result* pm = find(p + "larder/proto_get_many64");
    const Result* pd = find(p + "larder/proto_get_dependent");
    std::printf("\n%s (Redis/LMDB on %llu keys)\n", c.label().c_str(),
                static_cast<unsigned long long>(std::min(c.keys, o.baseline_keys)));
    std::printf("  %-34s %9s %9s %9s\n", "", "mean ns", "p50 ns", "p99 ns");
    auto row = [&](const char* what, const Result* x, double div = 1) {
      if (x == nullptr) return;
      const double p50 = counter(x, "p50_ns"), p99 = counter(x, "p99_ns");
      if (std::isnan(p50)) {
        std::printf("  %-34s %9.1f %9s %9s\n", what, ns(x) / div, "-", "-");
      } else {
        std::printf("  %-34s %9.1f %9.1f %9.1f\n", what, ns(x) / div, p50, p99);
      }
    };
    row("floor get, dependent", fd);
    row("larder get, dependent", ld);
    row("larder get, dependent, +writer", wd);
    row("redis GET, dependent, across CPUs", rd);
    row("redis GET, dependent, same CPU", rs);
    row("lmdb mdb_get, dependent", md);
    row("floor get, independent", fi);
    row("larder get, independent", li);
    row("larder get, independent, +writer", wi);
    row("floor batch64, per key", fm, kBatch);
    row("larder get_many64, per key", lm, kBatch);
    row("larder get_many64, per key, +writer", wm, kBatch);
    row("larder upsert, random keys", ur);
    row("larder upsert, 1K hot keys", uh);
    row("proto: upsert random, prefetched", up);
    row("proto: get, dependent, slot pf", pd);
    row("proto: get_many64 full-slot pf, /key", pm, kBatch);
    for (const auto& ps : proto_schedules()) {
      row(("proto: " + ps.first.substr(6) + ", /key").c_str(), find(p + "larder/" + ps.first), kBatch);
    }
    row("larder upsert_many64, random, /upsert", umr, kBatch);
    row("larder upsert_many64, 1K hot, /upsert", umh, kBatch);
    if (auto it = g_writer_rates.find(c.label()); it != g_writer_rates.end()) {
      std::printf("  writer process during +writer reads: %.2f M upserts/s\n", it->second / 1e6);
    }
    std::printf("  %-46s %10s   %-10s %s\n", "ratio", "value", "target", "");
    auto p50 = [&](const Result* x) { return counter(x, "p50_ns"); };
    const double r1 = p50(ld) / p50(fd), r1m = ns(ld) / ns(fd), r2 = ns(li) / ns(fi);
    const double r3 = (ns(lm) / kBatch) / ns(ld);
    const double r4 = p50(rd) / p50(ld), r4s = p50(rs) / p50(ld), r5 = p50(md) / p50(ld);
    const double r8 = umr ? 1e9 / (ns(umr) / kBatch) / 1e6 : NAN, r8h = umh ? 1e9 / (ns(umh) / kBatch) / 1e6 : NAN;
    const double r6 = ur ? 1e9 / ns(ur) / 1e6 : NAN, r6h = uh ? 1e9 / ns(uh) / 1e6 : NAN;
    const double r7 = counter(wd, "p99_ns") / counter(ld, "p99_ns");
    line("dependent get / floor (p50)", r1, "<= 1.15", r1 <= 1.15);
    line("dependent get / floor (mean)", r1m, "<= 1.15", r1m <= 1.15);
    line("independent get / floor (mean)", r2, "<= 1.40", r2 <= 1.40);
    line("get_many per key / dependent get (means)", r3, "<= 0.25", r3 <= 0.25);
    for (const auto& ps : proto_schedules()) {
      const double v = (ns(find(p + "larder/" + ps.first)) / kBatch) / ns(ld);
      line((ps.first.substr(6) + " per key / dependent get").c_str(), v, "<= 0.25", v <= 0.25);
    }
    line("redis GET across CPUs / larder get (p50)", r4, ">= 150", r4 >= 150);
    line("redis GET same CPU / larder get (p50)", r4s, "(report)", true);
    line("lmdb get / larder get (dependent, p50)", r5, ">= 3", r5 >= 3);
    line("upserts, random keys (M/s)", r6, "(report)", true);
    line("upserts, 1K hot keys (M/s)", r6h, "(report)", true);
    line("upsert_many64, random keys (M/s)", r8, ">= 5", r8 >= 5);
    line("upsert_many64, 1K hot keys (M/s)", r8h, "(report)", true);
    line("p99 dependent +writer / alone", r7, "<= 1.50", r7 <= 1.50);
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
  {
    LatencySamples empty(100000);
    for (int i = 0; i < 100000; ++i) {
      const uint64_t t0 = tsc_begin();
      empty.add(tsc_end() - t0);
    }
    std::printf("# TSC %.3f GHz; per-op timer overhead %.1f ns (median), included in every dependent figure\n",
                tsc_per_ns(), empty.percentile_ns(0.5));
  }
  RecordingReporter reporter;
  int rc = 0;
  try {
    run_platform(o, reporter);
    for (const Config& c : o.configs) run_config(c, o, reporter);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "larder_bench_core: %s\n", e.what());
    rc = 1;
  }
  remove_segments();
  print_summary(o, reporter.results);
  benchmark::Shutdown();
  return rc;
}

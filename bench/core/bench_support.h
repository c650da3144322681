// Shared pieces of the core benchmark: the key set, the dependent chain, the
// row contents, a TSC latency sampler and the size options.
//
// Every store in the benchmark (Larder, the in-process floor, Redis, LMDB)
// holds the same keys and the same row bytes, built from the functions here,
// so the figures compare the stores and nothing else.
#pragma once

#include <benchmark/benchmark.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <initializer_list>
#include <map>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

namespace larder::bench {

// Keys are "user:<n>" with n a bijective scramble of the key index into 32
// bits, so they look random, never collide, and fit in 16 bytes.
inline constexpr uint32_t kKeyMaxLen = 16;

struct KeyBuf {
  char bytes[kKeyMaxLen];
  uint32_t length = 0;
  std::string_view view() const { return {bytes, length}; }
};

inline uint32_t scramble(uint64_t index) { return static_cast<uint32_t>(index) * 2654435761u + 0x9e3779b9u; }

// Formats the key of `index` without allocating (the read loops call it).
inline void format_key(uint64_t index, KeyBuf& out) {
  uint32_t n = scramble(index);
  char digits[10];
  int d = 0;
  do {
    digits[d++] = static_cast<char>('0' + n % 10);
    n /= 10;
  } while (n != 0);
  std::memcpy(out.bytes, "user:", 5);
  for (int i = 0; i < d; ++i) out.bytes[5 + i] = digits[d - 1 - i];
  out.length = static_cast<uint32_t>(5 + d);
}

inline std::string key_string(uint64_t index) {
  KeyBuf k;
  format_key(index, k);
  return std::string(k.view());
}

// xorshift64*: cheap enough to sit inside the timed loops.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed ? seed : 0x2545F4914F6CDD1Dull) {}
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  uint64_t below(uint64_t n) {
    __extension__ using u128 = unsigned __int128;
    return static_cast<uint64_t>((static_cast<u128>(next()) * n) >> 64);
  }
};

// A random single cycle over [0, n) (Sattolo): following next[i] from any
// key visits every key before it repeats, in an order the prefetchers cannot
// guess. Field 0 of key i's row holds next[i], so a reader can only learn the
// next key by reading the row: the loads of a dependent chain cannot overlap.
inline std::vector<uint32_t> make_chain(uint64_t n, uint64_t seed) {
  std::vector<uint32_t> next(n);
  for (uint64_t i = 0; i < n; ++i) next[i] = static_cast<uint32_t>(i);
  Rng rng(seed);
  for (uint64_t i = n - 1; i > 0; --i) std::swap(next[i], next[rng.below(i)]);
  return next;
}

// Row contents: `fields` float64 values, field 0 being the chain's next index.
inline void fill_row(uint64_t index, uint32_t next, uint32_t fields, double* out) {
  out[0] = static_cast<double>(next);
  for (uint32_t f = 1; f < fields; ++f) out[f] = static_cast<double>(index) + 0.25 * f;
}

// --- latency sampling --------------------------------------------------------

inline uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

// Reads the TSC after every earlier instruction has executed (lfence; rdtsc).
inline uint64_t tsc_begin() {
  _mm_lfence();
  return __rdtsc();
}
// Reads the TSC once every earlier load has completed (rdtscp), and keeps
// later instructions from starting before it (lfence).
inline uint64_t tsc_end() {
  unsigned aux;
  const uint64_t t = __rdtscp(&aux);
  _mm_lfence();
  return t;
}

// TSC ticks per nanosecond, measured against CLOCK_MONOTONIC once.
inline double tsc_per_ns() {
  static const double rate = [] {
    const uint64_t n0 = now_ns(), t0 = __rdtsc();
    while (now_ns() - n0 < 50'000'000) {
    }
    const uint64_t n1 = now_ns(), t1 = __rdtsc();
    return static_cast<double>(t1 - t0) / static_cast<double>(n1 - n0);
  }();
  return rate;
}

// Per-operation latencies in TSC ticks; percentiles in nanoseconds.
class LatencySamples {
 public:
  explicit LatencySamples(size_t cap = 4u << 20) { ticks_.reserve(cap); }
  void add(uint64_t ticks) {
    if (ticks_.size() < ticks_.capacity())
      ticks_.push_back(static_cast<uint32_t>(std::min<uint64_t>(ticks, UINT32_MAX)));
  }
  size_t size() const { return ticks_.size(); }
  double percentile_ns(double p) {
    if (ticks_.empty()) return 0;
    const size_t at = std::min(ticks_.size() - 1, static_cast<size_t>(p * static_cast<double>(ticks_.size())));
    std::nth_element(ticks_.begin(), ticks_.begin() + static_cast<std::ptrdiff_t>(at), ticks_.end());
    return ticks_[at] / tsc_per_ns();
  }

 private:
  std::vector<uint32_t> ticks_;
};

// Dependent chain: the key of each get comes from the row the previous get
// returned (read_next returns that key's index, or >= keys for a miss). Each
// get is timed on its own (TSC, serialised at both ends) for p50/p99/p99.9;
// the benchmark time is the mean including that timer overhead, which every
// store measured this way pays alike.
template <class ReadNext>
void dependent_loop(benchmark::State& state, uint64_t keys, uint64_t seed, ReadNext read_next) {
  LatencySamples samples;
  Rng rng(seed);
  uint64_t idx = rng.below(keys);  // a fresh starting point: no warm prefix
  uint64_t misses = 0;
  KeyBuf key;
  for (auto _ : state) {
    const uint64_t t0 = tsc_begin();
    format_key(idx, key);
    const uint64_t next = read_next(key.view());
    const uint64_t t1 = tsc_end();
    samples.add(t1 - t0);
    if (next >= keys) {
      ++misses;
      idx = rng.below(keys);
    } else {
      idx = next;
    }
  }
  state.counters["p50_ns"] = samples.percentile_ns(0.50);
  state.counters["p99_ns"] = samples.percentile_ns(0.99);
  state.counters["p999_ns"] = samples.percentile_ns(0.999);
  state.counters["misses"] = static_cast<double>(misses);
  if (misses != 0) state.SkipWithError("some gets did not find their key or value");
}

// --- settings ----------------------------------------------------------------

// A benchmark binary's settings: each `--flag=value` of `flags` overrides the
// environment variable it names. Takes those flags out of argv (Google
// Benchmark rejects unknown ones) and records --benchmark_filter= (which it
// leaves for Google Benchmark) as "filter". Keyed by variable name.
inline std::map<std::string, std::string> take_settings(
    int* argc, char** argv, std::initializer_list<std::pair<const char*, const char*>> flags) {
  std::map<std::string, std::string> given;
  for (auto [flag, env] : flags) {
    if (const char* v = std::getenv(env)) given[env] = v;
  }
  int kept = 1;
  for (int i = 1; i < *argc; ++i) {
    const std::string a = argv[i];
    bool ours = false;
    for (auto [flag, env] : flags) {
      if (a.rfind(flag, 0) == 0) {
        given[env] = a.substr(std::strlen(flag));
        ours = true;
      }
    }
    if (a.rfind("--benchmark_filter=", 0) == 0) given["filter"] = a.substr(19);
    if (!ours) argv[kept++] = argv[i];
  }
  *argc = kept;
  return given;
}

// --- results and phases -----------------------------------------------------

struct Result {
  double ns = 0;  // CPU time per iteration (the median run with repetitions)
  std::map<std::string, double> counters;
};

// The console reporter, keeping every run (or the median of repeated runs)
// for the summary a binary prints at the end.
class RecordingReporter : public benchmark::ConsoleReporter {
 public:
  RecordingReporter() : ConsoleReporter(::isatty(STDOUT_FILENO) ? OO_Defaults : OO_Tabular) {}
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.error_occurred) continue;
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name != "median") continue;
      Result res;
      res.ns = r.GetAdjustedCPUTime();  // ns; CPU time of the measuring thread
      for (const auto& [name, c] : r.counters) res.counters[name] = c.value;
      results[r.run_name.function_name] = res;
    }
  }
  std::map<std::string, Result> results;
};

// Benchmarks registered and run together, while the data they read exists;
// `filter` (a regex, "" for all) skips the others.
class Phase {
 public:
  Phase(const std::string& filter, int repetitions, RecordingReporter& rep)
      : filter_(filter.empty() ? ".*" : filter), rep_(rep), repetitions_(repetitions) {}
  bool wanted(const std::string& name) const { return std::regex_search(name, filter_); }
  bool wanted_any(std::initializer_list<std::string> names) const {
    for (const std::string& n : names) {
      if (wanted(n)) return true;
    }
    return false;
  }
  // wall: time the benchmark by the wall clock (for a server on the other
  // side of a socket, where the client thread mostly waits); otherwise the
  // CPU time of the measuring thread, which a busy shared machine disturbs
  // less.
  void add(const std::string& name, std::function<void(benchmark::State&)> fn, bool wall = false) {
    if (!wanted(name)) return;
    auto* b =
        benchmark::RegisterBenchmark(name.c_str(), [fn](benchmark::State& s) { fn(s); })->Unit(benchmark::kNanosecond);
    if (repetitions_ > 1) b->Repetitions(repetitions_)->DisplayAggregatesOnly(true);
    if (wall) b->UseRealTime();
    ++count_;
  }
  void run() {
    if (count_ > 0) benchmark::RunSpecifiedBenchmarks(&rep_);
    benchmark::ClearRegisteredBenchmarks();
    count_ = 0;
  }

 private:
  std::regex filter_;
  RecordingReporter& rep_;
  int repetitions_ = 1;
  int count_ = 0;
};

// --- sizes ------------------------------------------------------------------

struct Config {
  uint64_t keys = 0;
  uint32_t row_bytes = 0;  // 8 bytes per float64 field
  uint32_t fields() const { return row_bytes / 8; }
  std::string label() const {
    const std::string k = keys % 1'000'000 == 0 ? std::to_string(keys / 1'000'000) + "M"
                          : keys % 1'000 == 0   ? std::to_string(keys / 1'000) + "K"
                                                : std::to_string(keys);
    return k + "x" + std::to_string(row_bytes) + "B";
  }
};

// "10M", "250K", "5000".
inline bool parse_count(std::string_view s, uint64_t* out) {
  if (s.empty()) return false;
  uint64_t mult = 1;
  if (s.back() == 'M' || s.back() == 'm')
    mult = 1'000'000, s.remove_suffix(1);
  else if (s.back() == 'K' || s.back() == 'k')
    mult = 1'000, s.remove_suffix(1);
  if (s.empty()) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = v * mult;
  return v > 0;
}

inline std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  while (!s.empty()) {
    const size_t at = s.find(sep);
    parts.push_back(s.substr(0, at));
    if (at == std::string_view::npos) break;
    s.remove_prefix(at + 1);
  }
  return parts;
}

}  // namespace larder::bench

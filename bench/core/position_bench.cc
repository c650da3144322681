// larder_bench_positions: what source positions and images cost the writer,
// next to their baselines in the same run.
//
//   upsert/plain/<keys>        Writer::upsert of 4 fields (2 int64, 2 float64)
//                              of a random present key, no position.
//   upsert/staged/<keys>       the same, each upsert preceded by
//                              stage_position (the sidecar's pattern on a
//                              stream): the pending record's stores ride with
//                              the update.
//   churn/<keys>               Writer::remove of a random present key, then
//                              its upsert back: every call changes the slot's
//                              state and so writes the count record (items:
//                              the calls).
//   set_position               Writer::set_position alone (a message with no
//                              updates).
//   copy_image/<keys>          Writer::copy_image of the whole segment into a
//                              reused buffer: bytes/s.
//   memcpy/<keys>              std::memcpy of the same number of bytes between
//                              two buffers touched beforehand: the floor.
//   memcpy_fresh/<keys>        std::memcpy of the same bytes into a new file
//                              of the same size in the same tmpfs (created,
//                              mapped, written, unmapped, removed in the
//                              timing): the floor of a copy that must also
//                              allocate the new pages and free them after.
//   cp/<keys>                  what `cp` of the segment file does: read it in
//                              1 MiB blocks into a new file in the same
//                              tmpfs, then unlink that file: bytes/s. The
//                              fair floor of a restore, which also fills
//                              fresh tmpfs pages (on some virtual machines
//                              the first write to a fresh page costs far more
//                              than the copy: compare restore with cp).
//   restore/<keys>             Writer::restore of that image over the segment
//                              name (write to tmpfs, rename, attach and its
//                              repair scan): bytes/s.
//   switch/<keys>              Writer::switch_now to a capacity 1,000 keys
//                              larger (then back): a generation switch of the
//                              whole segment with no update meanwhile (items:
//                              rows copied; bytes: the current generation's
//                              size). Compare its bytes/s with memcpy;
//                              counter vs_memcpy: the switch's bytes/s over
//                              a memcpy of the same bytes between two
//                              buffers touched beforehand, timed in the same
//                              run (best of 3).
//   upsert/switching/<keys>    upsert/plain while a generation switch runs:
//                              every update also copies its row again when the
//                              copy has passed it. The copy's slices (4,096
//                              slots per 256 upserts) are not timed: the
//                              update path's own cost during a switch.
//   upsert/paced_switch/<keys> upsert/plain while a generation switch runs,
//                              Writer::switch_step() (paced) called after
//                              every 256 upserts and timed with them: the
//                              writer's update rate over a switch, copy
//                              included, against upsert/plain (counters:
//                              switches published, copy_share of the
//                              thread's CPU time spent in switch_step).
//   apply_ratio/<keys>         the writer's apply rate over a whole paced
//                              switch against its rate with no switch, in
//                              one row. Each iteration: upserts as
//                              upsert/plain (its thread's CPU time), then a
//                              switch from begin_switch to its publish with
//                              the same upserts back to back and
//                              switch_step() (paced) after every 256, then
//                              plain upserts again. Counters: ratio (updates
//                              per CPU second during the switch, copy
//                              included, over those of the plain parts;
//                              the goal is >= 0.9), step_share (the share
//                              of the switch's CPU time in switch_step),
//                              copy_share and follow_share (the parts of it
//                              on the copy, paced at 8%, and on the follow
//                              log: SwitchProgress), switch_s (the switch's
//                              CPU time, start to publish: the pace the
//                              copy ran at) and updates (applied during the
//                              switch).
//   read/alone/<keys>          Table::get (the client) of random present keys,
//                              each get timed on its own (TSC): p50_ns,
//                              p99_ns, p999_ns. Nothing else runs.
//   read/upserting/<keys>      the same while another thread upserts random
//                              keys back to back (the writer's normal work).
//   read/switching/<keys>      the same while another thread runs generation
//                              switches back to back (switch_now, nothing
//                              applied meanwhile): every get overlaps a copy
//                              and each table moves generation at each
//                              publish (counter switches). Compare p99 with
//                              read/alone and read/upserting.
//   read/paced_switch/<keys>   the same while another thread upserts back to
//                              back with a switch always running, paced
//                              (switch_step() after every 256 upserts), as
//                              the sidecar's writer thread does. Compare
//                              with read/upserting.
//
// Knobs (environment): LARDER_BENCH_DIR (tmpfs directory, default /dev/shm),
// LARDER_POS_KEYS (keys of the image benchmarks, default 1000000).
// See docs/performance.md, "Positions and images".
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.h"
#include "larder/client.h"
#include "larder/writer/writer.h"

namespace larder::bench {
namespace {

std::string bench_dir() {
  const char* d = std::getenv("LARDER_BENCH_DIR");
  return d != nullptr ? d : "/dev/shm";
}

uint64_t image_keys() {
  const char* k = std::getenv("LARDER_POS_KEYS");
  return k != nullptr ? std::strtoull(k, nullptr, 10) : 1'000'000;
}

layout::Schema schema_for(uint64_t keys) {
  layout::TableSpec t;
  t.name = "features";
  t.key_max_len = kKeyMaxLen;
  t.capacity = keys;
  t.fields = {{"clicks", layout::FieldType::kInt64, 1},
              {"views", layout::FieldType::kInt64, 1},
              {"spend", layout::FieldType::kFloat64, 1},
              {"score", layout::FieldType::kFloat64, 1}};
  layout::Schema s;
  s.tables = {t};
  return s;
}

// A segment of `keys` keys, all written once; removed at exit.
struct Filled {
  std::string name;
  layout::Schema schema;
  std::unique_ptr<Writer> writer;
  std::vector<std::string> keys;

  explicit Filled(uint64_t n) : name("larder-bench-pos-" + std::to_string(::getpid()) + "-" + std::to_string(n)) {
    schema = schema_for(n);
    WriterOptions o;
    o.dir = bench_dir();
    Writer::remove_segment(name, o.dir);
    writer = Writer::open(name, schema, o);
    keys.reserve(n);
    for (uint64_t k = 0; k < n; ++k) {
      keys.push_back(key_string(k));
      const FieldValue v[] = {FieldValue::int64(0, 1), FieldValue::int64(1, 2), FieldValue::float64(2, 3),
                              FieldValue::float64(3, 4)};
      writer->upsert(0, keys.back(), 1, v);
    }
  }
  ~Filled() {
    writer.reset();
    Writer::remove_segment(name, bench_dir());
  }
};

Filled& filled(uint64_t n) {
  static std::map<uint64_t, std::unique_ptr<Filled>> all;
  auto& f = all[n];
  if (!f) f = std::make_unique<Filled>(n);
  return *f;
}

void run_upserts(benchmark::State& state, bool staged) {
  Filled& f = filled(static_cast<uint64_t>(state.range(0)));
  std::mt19937_64 rng(42);
  std::vector<uint32_t> order(1 << 16);
  for (uint32_t& i : order) i = static_cast<uint32_t>(rng() % f.keys.size());
  int64_t t = 1000;
  uint64_t offset = 0;
  size_t i = 0;
  for (auto _ : state) {
    ++t;
    const FieldValue v[] = {FieldValue::int64(0, t), FieldValue::int64(1, t + 1), FieldValue::float64(2, 0.5),
                            FieldValue::float64(3, 1.5)};
    if (staged) f.writer->stage_position({0, ++offset, 0});
    benchmark::DoNotOptimize(f.writer->upsert(0, f.keys[order[i++ & 0xffff]], t, v, t * 1'000'000));
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_UpsertPlain(benchmark::State& state) { run_upserts(state, false); }
void BM_UpsertStaged(benchmark::State& state) { run_upserts(state, true); }
BENCHMARK(BM_UpsertPlain)->Name("upsert/plain")->Arg(10'000)->Arg(1'000'000);
BENCHMARK(BM_UpsertStaged)->Name("upsert/staged")->Arg(10'000)->Arg(1'000'000);

// A delete of a random present key, then its upsert back (a revive): every
// call changes a slot's state (live, tombstone), so each one keeps the
// counters through the table's count record. Event times start above every
// upsert above (which run first), and every key is present again after it.
void BM_Churn(benchmark::State& state) {
  Filled& f = filled(static_cast<uint64_t>(state.range(0)));
  std::mt19937_64 rng(7);
  std::vector<uint32_t> order(1 << 16);
  for (uint32_t& i : order) i = static_cast<uint32_t>(rng() % f.keys.size());
  static int64_t t = int64_t{1} << 40;
  size_t i = 0;
  for (auto _ : state) {
    const std::string& key = f.keys[order[i++ & 0xffff]];
    ++t;
    benchmark::DoNotOptimize(f.writer->remove(0, key, t, t * 1'000'000));
    ++t;
    const FieldValue v[] = {FieldValue::int64(0, t), FieldValue::int64(1, t + 1), FieldValue::float64(2, 0.5),
                            FieldValue::float64(3, 1.5)};
    benchmark::DoNotOptimize(f.writer->upsert(0, key, t, v, t * 1'000'000));
  }
  state.SetItemsProcessed(2 * state.iterations());
}
BENCHMARK(BM_Churn)->Name("churn")->Arg(10'000)->Arg(1'000'000);

void BM_SetPosition(benchmark::State& state) {
  Filled& f = filled(10'000);
  uint64_t offset = 0;
  for (auto _ : state) f.writer->set_position({0, ++offset, 0});
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SetPosition)->Name("set_position");

void BM_CopyImage(benchmark::State& state) {
  Filled& f = filled(image_keys());
  std::vector<unsigned char> image;
  f.writer->copy_image(&image);  // the first call allocates and faults the pages in
  for (auto _ : state) {
    f.writer->copy_image(&image);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * image.size()));
  state.counters["segment_MB"] = static_cast<double>(image.size()) / 1e6;
}
BENCHMARK(BM_CopyImage)->Name("copy_image")->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Memcpy(benchmark::State& state) {
  Filled& f = filled(image_keys());
  std::vector<unsigned char> image;
  f.writer->copy_image(&image);
  std::vector<unsigned char> to(image.size(), 1);
  for (auto _ : state) {
    std::memcpy(to.data(), image.data(), image.size());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * image.size()));
}
BENCHMARK(BM_Memcpy)->Name("memcpy")->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_MemcpyFresh(benchmark::State& state) {
  Filled& f = filled(image_keys());
  std::vector<unsigned char> image;
  f.writer->copy_image(&image);
  const std::string to = f.writer->path() + "-fresh";
  for (auto _ : state) {
    const int fd = ::open(to.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(image.size())) != 0) {
      state.SkipWithError("create failed");
      break;
    }
    void* p = ::mmap(nullptr, image.size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) {
      state.SkipWithError("mmap failed");
      break;
    }
    std::memcpy(p, image.data(), image.size());
    benchmark::ClobberMemory();
    ::munmap(p, image.size());
    ::unlink(to.c_str());
  }
  ::unlink(to.c_str());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * image.size()));
}
BENCHMARK(BM_MemcpyFresh)->Name("memcpy_fresh")->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Cp(benchmark::State& state) {
  Filled& f = filled(image_keys());
  const std::string from = f.writer->path();
  const std::string to = from + "-cp";
  std::vector<char> buf(1 << 20);
  uint64_t bytes = 0;
  for (auto _ : state) {
    const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
    const int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (in < 0 || out < 0) {
      state.SkipWithError("open failed");
      break;
    }
    ssize_t n;
    bytes = 0;
    while ((n = ::read(in, buf.data(), buf.size())) > 0) {
      if (::write(out, buf.data(), static_cast<size_t>(n)) != n) {
        state.SkipWithError("write failed");
        break;
      }
      bytes += static_cast<uint64_t>(n);
    }
    ::close(in);
    ::close(out);
    ::unlink(to.c_str());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
}
BENCHMARK(BM_Cp)->Name("cp")->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Restore(benchmark::State& state) {
  Filled& f = filled(image_keys());
  std::vector<unsigned char> image;
  f.writer->copy_image(&image);
  const std::string name = f.name + "-restored";
  WriterOptions o;
  o.dir = bench_dir();
  Writer::remove_segment(name, o.dir);
  for (auto _ : state) {
    auto w = Writer::restore(name, f.schema, image, o);
    benchmark::DoNotOptimize(w.get());
  }
  Writer::remove_segment(name, o.dir);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * image.size()));
}
BENCHMARK(BM_Restore)->Name("restore")->Unit(benchmark::kMillisecond)->UseRealTime();

// The schema of `f` with its capacity moved away from the current one and
// back on alternate calls.
layout::Schema next_capacity(const Filled& f, uint64_t n) {
  layout::Schema s = f.writer->schema();
  s.tables[0].capacity = s.tables[0].capacity == n + 1000 ? n + 2000 : n + 1000;
  return s;
}

void BM_Switch(benchmark::State& state) {
  const uint64_t n = image_keys();
  Filled& f = filled(n);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) f.writer->switch_now(next_capacity(f, n));
  const double switch_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<unsigned char> image;
  f.writer->copy_image(&image);
  // The floor in the same run: memcpy of the same bytes, best of 3.
  std::vector<unsigned char> to(image.size(), 1);
  double memcpy_s = 1e9;
  for (int r = 0; r < 3; ++r) {
    const auto m0 = std::chrono::steady_clock::now();
    std::memcpy(to.data(), image.data(), image.size());
    benchmark::ClobberMemory();
    memcpy_s = std::min(memcpy_s, std::chrono::duration<double>(std::chrono::steady_clock::now() - m0).count());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * image.size()));
  state.counters["vs_memcpy"] = memcpy_s * static_cast<double>(state.iterations()) / switch_s;
}
BENCHMARK(BM_Switch)->Name("switch")->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_UpsertSwitching(benchmark::State& state) {
  const uint64_t n = static_cast<uint64_t>(state.range(0));
  Filled& f = filled(n);
  std::mt19937_64 rng(42);
  std::vector<uint32_t> order(1 << 16);
  for (uint32_t& i : order) i = static_cast<uint32_t>(rng() % f.keys.size());
  int64_t t = 1'000'000;
  size_t i = 0;
  uint64_t switches = 0;
  f.writer->begin_switch(next_capacity(f, n));
  for (auto _ : state) {
    ++t;
    const FieldValue v[] = {FieldValue::int64(0, t), FieldValue::int64(1, t + 1), FieldValue::float64(2, 0.5),
                            FieldValue::float64(3, 1.5)};
    benchmark::DoNotOptimize(f.writer->upsert(0, f.keys[order[i++ & 0xffff]], t, v, t * 1'000'000));
    if ((i & 255) == 0) {
      state.PauseTiming();
      if (f.writer->switch_step(4096)) {
        ++switches;
        f.writer->begin_switch(next_capacity(f, n));
      }
      state.ResumeTiming();
    }
  }
  f.writer->abort_switch();
  state.SetItemsProcessed(state.iterations());
  state.counters["switches"] = static_cast<double>(switches);
}
BENCHMARK(BM_UpsertSwitching)->Name("upsert/switching")->Arg(10'000)->Arg(1'000'000);

int64_t thread_cpu_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

void BM_UpsertPacedSwitch(benchmark::State& state) {
  const uint64_t n = static_cast<uint64_t>(state.range(0));
  Filled& f = filled(n);
  std::mt19937_64 rng(42);
  std::vector<uint32_t> order(1 << 16);
  for (uint32_t& i : order) i = static_cast<uint32_t>(rng() % f.keys.size());
  int64_t t = 2'000'000;
  size_t i = 0;
  uint64_t switches = 0;
  int64_t step_ns = 0;
  f.writer->begin_switch(next_capacity(f, n));
  const int64_t cpu0 = thread_cpu_ns();
  for (auto _ : state) {
    ++t;
    const FieldValue v[] = {FieldValue::int64(0, t), FieldValue::int64(1, t + 1), FieldValue::float64(2, 0.5),
                            FieldValue::float64(3, 1.5)};
    benchmark::DoNotOptimize(f.writer->upsert(0, f.keys[order[i++ & 0xffff]], t, v, t * 1'000'000));
    if ((i & 255) == 0) {
      const int64_t s0 = thread_cpu_ns();
      if (f.writer->switch_step()) {
        ++switches;
        f.writer->begin_switch(next_capacity(f, n));
      }
      step_ns += thread_cpu_ns() - s0;
    }
  }
  const int64_t cpu = thread_cpu_ns() - cpu0;
  f.writer->abort_switch();
  state.SetItemsProcessed(state.iterations());
  state.counters["switches"] = static_cast<double>(switches);
  state.counters["copy_share"] = cpu > 0 ? static_cast<double>(step_ns) / static_cast<double>(cpu) : 0;
}
BENCHMARK(BM_UpsertPacedSwitch)->Name("upsert/paced_switch")->Arg(10'000)->Arg(1'000'000);

void BM_ApplyRatio(benchmark::State& state) {
  const uint64_t n = static_cast<uint64_t>(state.range(0));
  Filled& f = filled(n);
  std::mt19937_64 rng(5);
  std::vector<uint32_t> order(1 << 16);
  for (uint32_t& i : order) i = static_cast<uint32_t>(rng() % f.keys.size());
  static int64_t t = int64_t{3} << 40;
  size_t i = 0;
  auto upsert = [&] {
    ++t;
    const FieldValue v[] = {FieldValue::int64(0, t), FieldValue::int64(1, t + 1), FieldValue::float64(2, 0.5),
                            FieldValue::float64(3, 1.5)};
    benchmark::DoNotOptimize(f.writer->upsert(0, f.keys[order[i++ & 0xffff]], t, v, t * 1'000'000));
  };
  // Plain upserts: half before the switch, half after, so a drift of the
  // machine's load over the iteration weighs on both sides alike.
  const uint64_t plain_half = std::max<uint64_t>(n / 2, 65'536);
  double plain_ns = 0, switch_ns = 0, step_ns = 0, copy_ns = 0, follow_ns = 0;
  uint64_t plain = 0, during = 0;
  auto run_plain = [&] {
    const int64_t c0 = thread_cpu_ns();
    for (uint64_t k = 0; k < plain_half; ++k) upsert();
    plain_ns += static_cast<double>(thread_cpu_ns() - c0);
    plain += plain_half;
  };
  for (auto _ : state) {
    run_plain();
    const int64_t c0 = thread_cpu_ns();
    f.writer->begin_switch(next_capacity(f, n));
    bool done = false;
    SwitchProgress p;
    while (!done) {
      for (int k = 0; k < 256; ++k) upsert();
      during += 256;
      const int64_t s0 = thread_cpu_ns();
      done = f.writer->switch_step();
      step_ns += static_cast<double>(thread_cpu_ns() - s0);
      if (!done) p = f.writer->switch_progress();  // the last before publish
    }
    switch_ns += static_cast<double>(thread_cpu_ns() - c0);
    copy_ns += static_cast<double>(p.copy_cpu_ns);
    follow_ns += static_cast<double>(p.follow_cpu_ns);
    run_plain();
  }
  const double plain_rate = static_cast<double>(plain) / plain_ns;
  const double switch_rate = static_cast<double>(during) / switch_ns;
  state.counters["ratio"] = switch_rate / plain_rate;
  state.counters["step_share"] = step_ns / switch_ns;
  state.counters["copy_share"] = copy_ns / switch_ns;
  state.counters["follow_share"] = follow_ns / switch_ns;
  state.counters["switch_s"] = switch_ns / 1e9 / static_cast<double>(state.iterations());
  state.counters["updates"] = static_cast<double>(during) / static_cast<double>(state.iterations());
}
BENCHMARK(BM_ApplyRatio)->Name("apply_ratio")->Arg(1'000'000)->Iterations(2)->Unit(benchmark::kMillisecond);

// Reads of random present keys through the client while another thread
// does `background` with the writer: 0 nothing, 1 upserts, 2 generation
// switches back to back, 3 upserts with a paced switch always running. Each get is timed on its own (TSC, serialised at
// both ends); a get that does not find its key fails the benchmark, one
// that returns kBusy (on a loaded machine the writer thread can be
// preempted in the middle of an update) is counted.
void run_reads(benchmark::State& state, int background) {
  const uint64_t n = static_cast<uint64_t>(state.range(0));
  Filled& f = filled(n);
  Segment segment = Segment::open(f.name, ClientOptions{bench_dir()});
  const Table table = segment.table("features");
  Row row = table.make_row();
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> switches{0}, upserts{0};
  std::thread writer([&] {
    Rng rng(11);
    int64_t t = int64_t{1} << 42;
    if (background == 3) f.writer->begin_switch(next_capacity(f, n));
    while (background != 0 && !stop.load(std::memory_order_relaxed)) {
      if (background == 2) {
        f.writer->switch_now(next_capacity(f, n));
        switches.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      if (background == 3 && f.writer->switch_step()) {
        switches.fetch_add(1, std::memory_order_relaxed);
        f.writer->begin_switch(next_capacity(f, n));
      }
      for (int i = 0; i < 256; ++i) {
        ++t;
        const FieldValue v[] = {FieldValue::int64(0, t), FieldValue::int64(1, t + 1), FieldValue::float64(2, 0.5),
                                FieldValue::float64(3, 1.5)};
        f.writer->upsert(0, f.keys[rng.below(n)], t, v, t * 1'000'000);
      }
      upserts.fetch_add(256, std::memory_order_relaxed);
    }
  });
  // A switch in progress before the first timed get.
  if (background >= 2) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  LatencySamples samples;
  Rng rng(99);
  KeyBuf key;
  uint64_t misses = 0, busy = 0;
  for (auto _ : state) {
    format_key(rng.below(n), key);
    const uint64_t t0 = tsc_begin();
    const ReadResult r = table.get(key.view(), row);
    const uint64_t t1 = tsc_end();
    samples.add(t1 - t0);
    if (r.status == Status::kBusy) {
      ++busy;  // the slot stayed mid-write for max_retries: the writer thread was preempted mid-update
    } else if (r.status != Status::kOk) {
      ++misses;
    }
  }
  const uint64_t generation_read = table.generation();
  stop.store(true, std::memory_order_relaxed);
  writer.join();
  if (background == 3) f.writer->abort_switch();
  state.counters["p50_ns"] = samples.percentile_ns(0.50);
  state.counters["p99_ns"] = samples.percentile_ns(0.99);
  state.counters["p999_ns"] = samples.percentile_ns(0.999);
  state.counters["switches"] = static_cast<double>(switches.load());
  state.counters["upserts"] = static_cast<double>(upserts.load());
  state.counters["generation"] = static_cast<double>(generation_read);
  state.counters["busy"] = static_cast<double>(busy);
  state.SetItemsProcessed(state.iterations());
  if (misses != 0) state.SkipWithError("some gets did not find their key");
}

void BM_ReadAlone(benchmark::State& state) { run_reads(state, 0); }
void BM_ReadUpserting(benchmark::State& state) { run_reads(state, 1); }
void BM_ReadSwitching(benchmark::State& state) { run_reads(state, 2); }
void BM_ReadPacedSwitch(benchmark::State& state) { run_reads(state, 3); }
BENCHMARK(BM_ReadAlone)->Name("read/alone")->Arg(1'000'000)->MinTime(3.0)->UseRealTime();
BENCHMARK(BM_ReadUpserting)->Name("read/upserting")->Arg(1'000'000)->MinTime(3.0)->UseRealTime();
BENCHMARK(BM_ReadSwitching)->Name("read/switching")->Arg(1'000'000)->MinTime(3.0)->UseRealTime();
BENCHMARK(BM_ReadPacedSwitch)->Name("read/paced_switch")->Arg(1'000'000)->MinTime(3.0)->UseRealTime();

}  // namespace
}  // namespace larder::bench

BENCHMARK_MAIN();

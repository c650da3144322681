// larder_bench_attach: how long a writer takes to open a segment whose last
// writer was SIGKILLed in the middle of its updates, by segment size, idle
// and with reader processes looping get() beside it.
//
// For each size the tool builds a segment of one table (128-byte slots),
// fills 70% of its capacity and deletes a tenth of those keys (tombstones),
// then runs a chain of writer processes: each opens the segment (timed:
// Writer::open, which maps, validates and repairs), then upserts, inserts and
// deletes random keys until a crash hook SIGKILLs it at a random crash point.
// The next one opens after that kill. Every open but the first (which follows
// a clean close) is a sample. With --full-check each open also recounts every
// slot (WriterOptions::full_check: what every open cost before the count
// record). After the runs the tool checks the counters against a recount.
//
//   larder_bench_attach [--sizes-mb 100,1024,4096] [--readers 0,2]
//                       [--repeats 15] [--full-check] [--dir /dev/shm]
//
// The segments are removed at the end. See docs/performance.md, "Writer
// restart".
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_support.h"
#include "larder/client.h"
#include "larder/layout/clock.h"
#include "larder/layout/segment_file.h"
#include "larder/layout/table_view.h"
#include "larder/writer/writer.h"

namespace larder::bench {
namespace {

constexpr uint32_t kFields = 8;  // float64: 64 row bytes, a 128-byte slot with the header and a 16-byte key

struct Options {
  std::vector<uint64_t> sizes_mb = {100, 1024, 4096};
  std::vector<int> readers = {0, 2};
  int repeats = 15;
  bool full_check = false;
  std::string dir = "/dev/shm";
};

std::vector<uint64_t> parse_list(const char* s) {
  std::vector<uint64_t> out;
  for (const char* p = s; *p != '\0';) {
    char* end = nullptr;
    out.push_back(std::strtoull(p, &end, 10));
    if (end == p) break;
    p = *end == ',' ? end + 1 : end;
  }
  return out;
}

layout::Schema schema_for(uint64_t capacity) {
  layout::TableSpec t;
  t.name = "features";
  t.key_max_len = kKeyMaxLen;
  t.capacity = capacity;
  for (uint32_t f = 0; f < kFields; ++f) t.fields.push_back({"f" + std::to_string(f), layout::FieldType::kFloat64, 1});
  layout::Schema s;
  s.tables.push_back(t);
  return s;
}

// The capacity whose segment is about `bytes`: the slot array dominates.
uint64_t capacity_for(uint64_t bytes) {
  const layout::LayoutPlan probe = layout::plan_layout(schema_for(1'000'000));
  const double per_key = static_cast<double>(probe.segment_bytes) / 1'000'000;
  return static_cast<uint64_t>(static_cast<double>(bytes) / per_key);
}

ApplyResult upsert(Writer& w, uint64_t k, int64_t t) {
  FieldValue v[kFields];
  for (uint32_t f = 0; f < kFields; ++f) v[f] = FieldValue::float64(f, static_cast<double>(k + f));
  return w.upsert(0, key_string(k), t, v);
}

// Shared with the writer children (MAP_SHARED | MAP_ANONYMOUS).
struct Shared {
  std::atomic<int64_t> open_ns;
  std::atomic<uint64_t> slots_visited;
  std::atomic<bool> full_scan;
  std::atomic<int64_t> next_time;  // event times only grow across the chain
  std::atomic<bool> stop_readers;
  std::atomic<uint64_t> reads;
};

int crash_countdown = 0;
void crash_after_countdown(CrashPoint) {
  if (--crash_countdown == 0) ::raise(SIGKILL);
}

// One writer of the chain: opens (timed), then writes until killed.
[[noreturn]] void writer_child(const std::string& name, const layout::Schema& schema, const WriterOptions& wo,
                               uint64_t keys, uint64_t seed, Shared* sh) {
  const int64_t t0 = layout::now_mono_ns();
  auto w = Writer::open(name, schema, wo);
  const int64_t t1 = layout::now_mono_ns();
  sh->open_ns.store(t1 - t0);
  sh->slots_visited.store(w->attach_report().slots_visited);
  sh->full_scan.store(w->attach_report().full_scan);
  Rng rng(seed);
  crash_countdown = 1 + static_cast<int>(rng.below(20'000));
  set_crash_hook(&crash_after_countdown);
  for (;;) {
    const int64_t t = sh->next_time.fetch_add(1);
    const uint64_t r = rng.below(10);
    const uint64_t k = rng.below(keys + keys / 8);  // some keys beyond the fill: inserts
    if (r == 0) {
      w->remove(0, key_string(k), t);
    } else {
      upsert(*w, k, t);
    }
    if (t % 64 == 0) w->maintain(4096);
  }
}

[[noreturn]] void reader_child(const std::string& name, const std::string& dir, uint64_t keys, uint64_t seed,
                               Shared* sh) {
  Segment seg = Segment::open(name, ClientOptions{dir});
  Table t = seg.table("features");
  Row row = t.make_row();
  Rng rng(seed);
  uint64_t n = 0;
  while (!sh->stop_readers.load(std::memory_order_relaxed)) {
    KeyBuf k;
    format_key(rng.below(keys), k);
    (void)t.get(k.view(), row);
    if (++n % 4096 == 0) sh->reads.fetch_add(4096, std::memory_order_relaxed);
  }
  std::_Exit(0);
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

int run(const Options& o) {
  auto* sh =
      static_cast<Shared*>(::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (sh == MAP_FAILED) return 1;
  new (sh) Shared();
  WriterOptions wo;
  wo.dir = o.dir;
  wo.full_check = o.full_check;
  std::printf("%-9s %-8s %-7s %8s %10s %10s %10s %10s %s\n", "size", "readers", "mode", "samples", "median_ms",
              "p90_ms", "max_ms", "visited", "reads/s");
  int status = 0;
  for (const uint64_t mb : o.sizes_mb) {
    const std::string name = "larder-bench-attach-" + std::to_string(::getpid()) + "-" + std::to_string(mb);
    const uint64_t capacity = capacity_for(mb << 20);
    const layout::Schema schema = schema_for(capacity);
    const uint64_t keys = capacity * 7 / 10;
    sh->next_time.store(1);
    uint64_t bytes = 0;
    {
      auto w = Writer::open(name, schema, wo);
      for (uint64_t k = 0; k < keys; ++k) upsert(*w, k, sh->next_time.fetch_add(1));
      for (uint64_t k = 0; k < keys; k += 10) w->remove(0, key_string(k), sh->next_time.fetch_add(1));
      bytes = layout::plan_layout(schema).segment_bytes;
    }
    for (const int nreaders : o.readers) {
      sh->stop_readers.store(false);
      sh->reads.store(0);
      std::vector<pid_t> readers;
      for (int r = 0; r < nreaders; ++r) {
        const pid_t p = ::fork();
        if (p == 0) reader_child(name, o.dir, keys, 1000 + static_cast<uint64_t>(r), sh);
        readers.push_back(p);
      }
      const int64_t r0 = layout::now_mono_ns();
      std::vector<double> ms;
      uint64_t visited_max = 0;
      bool scanned = false;
      for (int i = 0; i <= o.repeats; ++i) {
        const pid_t p = ::fork();
        if (p == 0) writer_child(name, schema, wo, keys, 77 + static_cast<uint64_t>(i) + mb, sh);
        int st = 0;
        ::waitpid(p, &st, 0);
        if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL) {
          std::fprintf(stderr, "writer child ended with status %d, not SIGKILL\n", st);
          status = 1;
        }
        if (i == 0) continue;  // that open followed a clean close
        ms.push_back(static_cast<double>(sh->open_ns.load()) / 1e6);
        visited_max = std::max(visited_max, sh->slots_visited.load());
        scanned |= sh->full_scan.load();
      }
      const double seconds = static_cast<double>(layout::now_mono_ns() - r0) / 1e9;
      sh->stop_readers.store(true);
      for (const pid_t p : readers) ::waitpid(p, nullptr, 0);
      char size[32];
      std::snprintf(size, sizeof size, "%.0fMB", static_cast<double>(bytes) / (1 << 20));
      std::printf("%-9s %-8d %-7s %8zu %10.3f %10.3f %10.3f %10" PRIu64 " %.0f\n", size, nreaders,
                  scanned ? "scan" : "repair", ms.size(), percentile(ms, 0.5), percentile(ms, 0.9), percentile(ms, 1.0),
                  visited_max, static_cast<double>(sh->reads.load()) / seconds);
      std::fflush(stdout);
    }
    // The counters after the chain of kills equal a recount.
    {
      WriterOptions check = wo;
      check.full_check = false;
      auto w = Writer::open(name, schema, check);
      const WriterStats st = w->stats(0);
      auto m = layout::MappedFile::open_read_only(w->path(), name);
      const layout::TableGeometry g = layout::table_geometry(m->data(), layout::table_descriptor(m->data(), 0));
      uint64_t live = 0, tomb = 0;
      for (uint64_t i = 0; i < g.slot_count; ++i) {
        const layout::SlotState s = layout::meta_state(g.slot(i)[layout::kSlotMetaWord].load());
        live += s == layout::SlotState::kLive;
        tomb += s == layout::SlotState::kTombstone;
      }
      if (live != st.live_keys || tomb != st.tombstones) {
        std::fprintf(stderr,
                     "%s: counters %" PRIu64 " live / %" PRIu64 " tombstones, recount %" PRIu64 " / %" PRIu64 "\n",
                     name.c_str(), st.live_keys, st.tombstones, live, tomb);
        status = 1;
      }
    }
    Writer::remove_segment(name, o.dir);
  }
  return status;
}

}  // namespace
}  // namespace larder::bench

int main(int argc, char** argv) {
  larder::bench::Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--sizes-mb") {
      o.sizes_mb = larder::bench::parse_list(value());
    } else if (a == "--readers") {
      o.readers.clear();
      for (uint64_t r : larder::bench::parse_list(value())) o.readers.push_back(static_cast<int>(r));
    } else if (a == "--repeats") {
      o.repeats = std::max(1, std::atoi(value()));
    } else if (a == "--full-check") {
      o.full_check = true;
    } else if (a == "--dir") {
      o.dir = value();
    } else {
      std::fprintf(stderr,
                   "usage: larder_bench_attach [--sizes-mb 100,1024,4096] [--readers 0,2] [--repeats 15] "
                   "[--full-check] [--dir /dev/shm]\n");
      return 2;
    }
  }
  return larder::bench::run(o);
}

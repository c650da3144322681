// larder_bench_snapshot: snapshot files against a plain copy of the segment,
// in one run on one machine (docs/performance.md, "Snapshots").
//
//   larder_bench_snapshot [--keys 1000000,10000000] [--dir /dev/shm]
//                         [--out-dir /dev/shm] [--levels -1,1,3] [--reps 3]
//                         [--read-seconds 5] [--read-keys 1000000]
//
// For each table size: fills a segment (table "users": 16-byte keys, an
// int64, a float64, a float32, a bool, an 8-byte string and an 8-float
// embedding, random values), then times, each the median of --reps runs:
//  * cp: /bin/cp of the segment file into --out-dir (fork + exec, as a shell
//    would run it);
//  * snapshot: Writer::copy_image (the writer thread's pause) plus
//    write_snapshot_file at each level (compress, write, fsync, rename);
//  * restore: read_snapshot_file (read, checksums, decompress, validate),
//    then Writer::restore into a new segment name.
// Rates are image bytes per second; ratios are against cp (higher is faster).
// Then, with --read-keys keys: a reader thread doing Table::get on random
// keys while the writer thread upserts random keys, for --read-seconds with
// no snapshot and again with the writer thread taking copy_image +
// write_snapshot_file back to back; reports the reader's p50/p99/p99.9.
// Threads: main (fills, times), the reader thread, the writer thread.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.h"
#include "larder/client.h"
#include "larder/layout/segment_file.h"
#include "larder/snapshot/snapshot_file.h"
#include "larder/writer/writer.h"

namespace {

using namespace larder;  // NOLINT: a benchmark over the library
using Clock = std::chrono::steady_clock;

struct Args {
  std::vector<uint64_t> keys = {1'000'000, 10'000'000};
  std::string dir = "/dev/shm";
  std::string out_dir = "/dev/shm";
  std::vector<int> levels = {-1, 1, 3};
  int reps = 3;
  double read_seconds = 5;
  uint64_t read_keys = 1'000'000;
};

template <class T>
std::vector<T> parse_list(const std::string& s) {
  std::vector<T> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(static_cast<T>(std::stoll(item)));
  return out;
}

layout::Schema bench_schema(uint64_t keys) {
  layout::TableSpec t;
  t.name = "users";
  t.key_max_len = bench::kKeyMaxLen;
  t.capacity = keys;
  t.fields = {
      {"clicks", layout::FieldType::kInt64, 1},   {"spend", layout::FieldType::kFloat64, 1},
      {"ctr", layout::FieldType::kFloat32, 1},    {"premium", layout::FieldType::kBool, 1},
      {"country", layout::FieldType::kString, 8}, {"embedding", layout::FieldType::kFloat32Vector, 8},
  };
  layout::Schema s;
  s.tables.push_back(t);
  return s;
}

struct Rng {
  uint64_t s;
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  double unit() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
};

ApplyResult upsert_key(Writer& w, uint64_t index, int64_t event_time, Rng& rng) {
  bench::KeyBuf k;
  bench::format_key(index, k);
  float emb[8];
  for (float& f : emb) f = static_cast<float>(rng.unit());
  static const char* kCountries[] = {"se", "de", "fr", "us", "br", "jp", "in", "gb"};
  const FieldValue values[] = {
      FieldValue::int64(0, static_cast<int64_t>(rng.next() % 100000)),
      FieldValue::float64(1, rng.unit() * 1000),
      FieldValue::float32(2, static_cast<float>(rng.unit())),
      FieldValue::boolean(3, rng.next() & 1),
      FieldValue::string(4, kCountries[rng.next() % 8]),
      FieldValue::vector(5, emb),
  };
  return w.upsert(0, k.view(), event_time, values);
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double run_cp(const std::string& from, const std::string& to) {
  const auto t = Clock::now();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/cp", "cp", from.c_str(), to.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  const double s = seconds_since(t);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "cp %s %s failed\n", from.c_str(), to.c_str());
    std::exit(1);
  }
  ::unlink(to.c_str());
  return s;
}

double gbps(uint64_t bytes, double s) { return static_cast<double>(bytes) / s / 1e9; }

void bench_size(const Args& a, uint64_t keys) {
  const std::string name = "larder-bench-snap-" + std::to_string(::getpid());
  const std::string restored = name + "-restored";
  WriterOptions wo;
  wo.dir = a.dir;
  const layout::Schema schema = bench_schema(keys);
  Writer::remove_segment(name, a.dir);
  auto w = Writer::open(name, schema, wo);
  Rng rng{0x9e3779b97f4a7c15ULL ^ keys};
  const auto fill = Clock::now();
  for (uint64_t i = 0; i < keys; ++i) upsert_key(*w, i, 1'700'000'000'000 + static_cast<int64_t>(i), rng);
  const std::string seg = w->path();
  std::vector<unsigned char> image;
  w->copy_image(&image);  // first call allocates; timed calls reuse
  const uint64_t bytes = image.size();
  std::printf("\n%" PRIu64 " keys: segment %" PRIu64 " bytes (%.2f GB), filled in %.1f s\n", keys, bytes, bytes / 1e9,
              seconds_since(fill));

  std::vector<double> cp_s, copy_s;
  for (int r = 0; r < a.reps; ++r) cp_s.push_back(run_cp(seg, a.out_dir + "/" + name + ".cp"));
  for (int r = 0; r < a.reps; ++r) {
    const auto t = Clock::now();
    w->copy_image(&image);
    copy_s.push_back(seconds_since(t));
  }
  const double cp = median(cp_s), copy = median(copy_s);
  std::printf("  %-34s %8.3f s  %6.2f GB/s\n", "cp of the segment file", cp, gbps(bytes, cp));
  std::printf("  %-34s %8.3f s  %6.2f GB/s  (%.2fx cp)\n", "copy_image (writer pause)", copy, gbps(bytes, copy),
              cp / copy);

  const std::string file = a.out_dir + "/" + name + ".snap";
  for (int level : a.levels) {
    std::vector<double> write_s;
    snapshot::SnapshotInfo info;
    for (int r = 0; r < a.reps; ++r) {
      const auto t = Clock::now();
      info = snapshot::write_snapshot_file(file, name, image, {level, 0});
      write_s.push_back(seconds_since(t));
    }
    const double ws = median(write_s), total = copy + ws;
    std::printf("  snapshot level %2d: write %.3f s, with copy_image %.3f s  %6.2f GB/s  (%.2fx cp), file %" PRIu64
                " bytes (%.1fx smaller)\n",
                level, ws, total, gbps(bytes, total), cp / total, info.payload_bytes + 128,
                static_cast<double>(bytes) / static_cast<double>(info.payload_bytes + 128));

    std::vector<double> read_s, restore_s;
    std::vector<unsigned char> back;
    for (int r = 0; r < a.reps; ++r) {
      auto t = Clock::now();
      snapshot::read_snapshot_file(file, &back);
      read_s.push_back(seconds_since(t));
      t = Clock::now();
      { auto rw = Writer::restore(restored, schema, back, wo); }
      restore_s.push_back(seconds_since(t));
      Writer::remove_segment(restored, a.dir);
    }
    const double rs = median(read_s), ts = median(restore_s), sum = rs + ts;
    std::printf(
        "  restore  level %2d: read+verify %.3f s  %6.2f GB/s  (%.2fx cp); + Writer::restore %.3f s = %.3f s"
        "  %6.2f GB/s  (%.2fx cp)\n",
        level, rs, gbps(bytes, rs), cp / rs, ts, sum, gbps(bytes, sum), cp / sum);
  }
  ::unlink(file.c_str());
  w.reset();
  Writer::remove_segment(name, a.dir);
}

struct Percentiles {
  double p50, p99, p999;
  size_t n;
};

Percentiles percentiles(std::vector<uint32_t>& ns) {
  std::sort(ns.begin(), ns.end());
  auto at = [&](double q) { return static_cast<double>(ns[std::min(ns.size() - 1, size_t(q * ns.size()))]); };
  return {at(0.5), at(0.99), at(0.999), ns.size()};
}

void bench_reads(const Args& a) {
  const std::string name = "larder-bench-snapread-" + std::to_string(::getpid());
  WriterOptions wo;
  wo.dir = a.dir;
  Writer::remove_segment(name, a.dir);
  auto w = Writer::open(name, bench_schema(a.read_keys), wo);
  Rng fill{42};
  for (uint64_t i = 0; i < a.read_keys; ++i) upsert_key(*w, i, 1'700'000'000'000, fill);
  Segment segment = Segment::open(name, ClientOptions{a.dir});
  Table table = segment.table("users");
  const std::string file = a.out_dir + "/" + name + ".snap";
  std::printf("\nreader latency, %" PRIu64 " keys, %.0f s per phase (Table::get of random keys; writer upserting)\n",
              a.read_keys, a.read_seconds);

  for (int phase = 0; phase < 2; ++phase) {
    const bool snapshots = phase == 1;
    std::atomic<bool> stop{false};
    std::vector<uint32_t> lat;
    lat.reserve(static_cast<size_t>(a.read_seconds * 8e6));
    uint64_t updates = 0, taken = 0;
    std::thread writer([&] {
      Rng rng{7};
      std::vector<unsigned char> image;
      int64_t t = 1'700'000'000'001;
      auto next_snapshot = Clock::now();
      while (!stop.load(std::memory_order_relaxed)) {
        for (int i = 0; i < 256; ++i, ++updates) upsert_key(*w, rng.next() % a.read_keys, ++t, rng);
        if (snapshots && Clock::now() >= next_snapshot) {
          w->copy_image(&image);
          snapshot::write_snapshot_file(file, name, image, {1, 0});
          ++taken;
          next_snapshot = Clock::now();
        }
      }
    });
    std::thread reader([&] {
      Rng rng{99};
      Row row = table.make_row();
      bench::KeyBuf k;
      while (!stop.load(std::memory_order_relaxed)) {
        bench::format_key(rng.next() % a.read_keys, k);
        const auto t0 = Clock::now();
        const ReadResult r = table.get(k.view(), row);
        const auto t1 = Clock::now();
        benchmark::DoNotOptimize(r);
        if (lat.size() < lat.capacity()) {
          lat.push_back(static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()));
        }
      }
    });
    std::this_thread::sleep_for(std::chrono::duration<double>(a.read_seconds));
    stop = true;
    writer.join();
    reader.join();
    const Percentiles p = percentiles(lat);
    std::printf("  %-28s p50 %5.0f ns  p99 %6.0f ns  p99.9 %7.0f ns  (%zu reads, %" PRIu64 " updates, %" PRIu64
                " snapshots)\n",
                snapshots ? "with snapshots back to back" : "reads alone (writer running)", p.p50, p.p99, p.p999, p.n,
                updates, taken);
  }
  ::unlink(file.c_str());
  w.reset();
  Writer::remove_segment(name, a.dir);
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--keys") {
      a.keys = parse_list<uint64_t>(v);
    } else if (k == "--dir") {
      a.dir = v;
    } else if (k == "--out-dir") {
      a.out_dir = v;
    } else if (k == "--levels") {
      a.levels = parse_list<int>(v);
    } else if (k == "--reps") {
      a.reps = std::max(1, std::stoi(v));
    } else if (k == "--read-seconds") {
      a.read_seconds = std::stod(v);
    } else if (k == "--read-keys") {
      a.read_keys = std::stoull(v);
    } else {
      std::fprintf(stderr, "unknown option %s (see the comment at the top of snapshot_bench.cc)\n", k.c_str());
      return 2;
    }
  }
  std::printf("larder_bench_snapshot: dir %s, out-dir %s, %u hardware threads, zstd workers up to %d\n", a.dir.c_str(),
              a.out_dir.c_str(), std::thread::hardware_concurrency(), snapshot::max_compression_workers());
  for (uint64_t keys : a.keys) bench_size(a, keys);
  if (a.read_keys > 0 && a.read_seconds > 0) bench_reads(a);
  return 0;
}

// Throughput and peak memory of the offline engine (docs/backfill.md,
// "Performance"): events per second replayed by larder_offline_build from
// in-memory columns (the C ABI the Python package calls), and by
// larder-backfill from a CSV file, with 3 aggregates x 3 windows; the peak
// RSS of each (getrusage of this process, and of the larder-backfill child).
//
//   offline_bench [--events N] [--keys K] [--spine S] [--mode columns|csv|both|files]
//                 [--order key|arrival|both] [--backfill PATH] [--dir DIR]
//
// --order: the replay order of the columns run (larder_offline_set_order);
// both runs the two one after the other on the same data. --mode files only
// writes bench.yaml, events.csv and spine.csv into --dir and keeps them.
//
// Defaults are small (1M events over 100k keys) so it runs in seconds; the
// documented figures use --events 10000000 --keys 1000000.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "larder/offline.h"

namespace {

constexpr int64_t T0 = 1'700'000'000'000;
constexpr int64_t kSpanMs = 24LL * 3600 * 1000;  // the events cover one day

std::string config_text(uint64_t keys) {
  // 3 functions x 3 windows of one source; each ring fits the inline buckets.
  return "tables:\n"
         "  - name: users\n"
         "    key_max_len: 24\n"
         "    capacity: " +
         std::to_string(keys) +
         "\n"
         "    fields:\n"
         "      - {name: amount, type: float64}\n"
         "    aggregates:\n"
         "      - {name: sum_1h, source: amount, fn: sum, window: 1h, resolution: 10m}\n"
         "      - {name: n_1h, source: amount, fn: count, window: 1h, resolution: 10m}\n"
         "      - {name: max_1h, source: amount, fn: max, window: 1h, resolution: 10m}\n"
         "      - {name: sum_6h, source: amount, fn: sum, window: 6h, resolution: 1h}\n"
         "      - {name: n_6h, source: amount, fn: count, window: 6h, resolution: 1h}\n"
         "      - {name: max_6h, source: amount, fn: max, window: 6h, resolution: 1h}\n"
         "      - {name: sum_24h, source: amount, fn: sum, window: 24h, resolution: 3h}\n"
         "      - {name: n_24h, source: amount, fn: count, window: 24h, resolution: 3h}\n"
         "      - {name: max_24h, source: amount, fn: max, window: 24h, resolution: 3h}\n";
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

double cpu_s(const struct rusage& ru) {
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

double self_cpu_s() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return cpu_s(ru);
}

long self_rss_kib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

struct Data {
  std::string keys;  // event keys, concatenated
  std::vector<int64_t> key_offsets, times;
  std::vector<double> amount;
  std::string spine_keys;
  std::vector<int64_t> spine_offsets, spine_at;
};

Data generate(uint64_t events, uint64_t keys, uint64_t spine) {
  Data d;
  std::mt19937_64 rng(42);
  d.key_offsets.reserve(events + 1);
  d.key_offsets.push_back(0);
  d.times.reserve(events);
  d.amount.reserve(events);
  for (uint64_t i = 0; i < events; ++i) {
    d.keys += "user:" + std::to_string(rng() % keys);
    d.key_offsets.push_back(static_cast<int64_t>(d.keys.size()));
    d.times.push_back(T0 + static_cast<int64_t>(i * static_cast<uint64_t>(kSpanMs) / events));
    d.amount.push_back(static_cast<double>(rng() % 10000) / 100.0);
  }
  d.spine_offsets.push_back(0);
  for (uint64_t i = 0; i < spine; ++i) {
    d.spine_keys += "user:" + std::to_string(rng() % keys);
    d.spine_offsets.push_back(static_cast<int64_t>(d.spine_keys.size()));
    d.spine_at.push_back(T0 + static_cast<int64_t>(rng() % kSpanMs));
  }
  return d;
}

int run_columns(const std::string& config, const Data& d, uint64_t events, int32_t order) {
  char err[512];
  larder_offline* engine = nullptr;
  if (larder_offline_open(config.c_str(), 0, 1, &engine, err, sizeof err) != 0) {
    std::fprintf(stderr, "open: %s\n", err);
    return 1;
  }
  larder_offline_set_order(engine, order);
  larder_offline_column amount{};
  amount.name = "amount";
  amount.type = LARDER_OFFLINE_FLOAT64;
  amount.data = d.amount.data();
  larder_offline_events ev{};
  ev.table = "users";
  ev.n = events;
  ev.keys = d.keys.data();
  ev.key_offsets = d.key_offsets.data();
  ev.event_time_ms = d.times.data();
  ev.columns = &amount;
  ev.column_count = 1;
  larder_offline_spine sp{};
  sp.table = "users";
  sp.n = d.spine_at.size();
  sp.keys = d.spine_keys.data();
  sp.key_offsets = d.spine_offsets.data();
  sp.at_ms = d.spine_at.data();
  larder_offline_frame* frame = nullptr;
  const auto start = std::chrono::steady_clock::now();
  const double cpu0 = self_cpu_s();
  if (larder_offline_build(engine, &ev, 1, &sp, &frame, err, sizeof err) != 0) {
    std::fprintf(stderr, "build: %s\n", err);
    return 1;
  }
  const double s = seconds_since(start);
  const double cpu = self_cpu_s() - cpu0;
  size_t found = 0;
  for (size_t r = 0; r < larder_offline_frame_rows(frame); ++r) found += larder_offline_frame_found(frame)[r];
  std::printf(
      "columns (%s): %llu events, %zu spine rows (%zu found) in %.3f s (%.3f s CPU): %.2f M events/s (%.2f M per "
      "CPU second); peak RSS %ld MiB (inputs included); applied %llu, rejected %llu\n",
      order == LARDER_OFFLINE_ORDER_ARRIVAL ? "arrival order" : "key by key", static_cast<unsigned long long>(events),
      larder_offline_frame_rows(frame), found, s, cpu, events / s / 1e6, events / cpu / 1e6, self_rss_kib() / 1024,
      static_cast<unsigned long long>(larder_offline_frame_applied(frame)),
      static_cast<unsigned long long>(larder_offline_frame_rejected(frame)));
  larder_offline_frame_free(frame);
  larder_offline_close(engine);
  return 0;
}

// The events and the spine as CSV files in dir (events.csv, spine.csv).
void write_csv(const std::string& dir, const Data& d, uint64_t events) {
  const std::string ev = dir + "/events.csv", spine = dir + "/spine.csv";
  {
    std::ofstream f(ev);
    f << "key,event_time,amount\n";
    char line[128];
    for (uint64_t i = 0; i < events; ++i) {
      const int n = std::snprintf(line, sizeof line, ",%lld,%.2f\n", static_cast<long long>(d.times[i]), d.amount[i]);
      f.write(d.keys.data() + d.key_offsets[i], d.key_offsets[i + 1] - d.key_offsets[i]);
      f.write(line, n);
    }
    std::ofstream s(spine);
    s << "key,timestamp\n";
    for (size_t i = 0; i < d.spine_at.size(); ++i) {
      s.write(d.spine_keys.data() + d.spine_offsets[i], d.spine_offsets[i + 1] - d.spine_offsets[i]);
      s << ',' << d.spine_at[i] << '\n';
    }
  }
}

int run_csv(const std::string& backfill, const std::string& dir, const std::string& config, const Data& d,
            uint64_t events) {
  const std::string ev = dir + "/events.csv", spine = dir + "/spine.csv", out = dir + "/out.csv";
  write_csv(dir, d, events);
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid == 0) {
    execl(backfill.c_str(), backfill.c_str(), "--config", config.c_str(), "--events", ev.c_str(), "--spine",
          spine.c_str(), "--out", out.c_str(), "--scratch-dir", dir.c_str(), "--quiet", static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  struct rusage ru {};
  wait4(pid, &status, 0, &ru);
  const double s = seconds_since(start);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "larder-backfill failed (status %d)\n", status);
    return 1;
  }
  std::printf(
      "csv: %llu events through larder-backfill in %.3f s (%.3f s CPU): %.2f M events/s (%.2f M per CPU "
      "second); its peak RSS %ld MiB; file %.0f MiB\n",
      static_cast<unsigned long long>(events), s, cpu_s(ru), events / s / 1e6, events / cpu_s(ru) / 1e6,
      ru.ru_maxrss / 1024, static_cast<double>(std::filesystem::file_size(ev)) / (1 << 20));
  std::filesystem::remove(ev);
  std::filesystem::remove(out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t events = 1'000'000, keys = 100'000, spine = 10'000;
  std::string mode = "both", order = "key", backfill = LARDER_BACKFILL_PATH, dir;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--events") {
      events = std::stoull(v);
    } else if (a == "--keys") {
      keys = std::stoull(v);
    } else if (a == "--spine") {
      spine = std::stoull(v);
    } else if (a == "--order") {
      order = v;
    } else if (a == "--mode") {
      mode = v;
    } else if (a == "--backfill") {
      backfill = v;
    } else if (a == "--dir") {
      dir = v;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  if (dir.empty()) {
    std::string t = (std::getenv("TMPDIR") != nullptr ? std::getenv("TMPDIR") : "/tmp") +
                    std::string("/larder-offline-bench-XXXXXX");
    if (mkdtemp(t.data()) == nullptr) return 2;
    dir = t;
  }
  // The C ABI makes its scratch segment under $TMPDIR: here too.
  setenv("TMPDIR", dir.c_str(), 1);
  const std::string config = dir + "/bench.yaml";
  std::ofstream(config) << config_text(keys);
  std::printf(
      "offline_bench: %llu events over %llu keys (24 h), %llu spine rows, 3 aggregates x 3 windows; scratch in %s\n",
      static_cast<unsigned long long>(events), static_cast<unsigned long long>(keys),
      static_cast<unsigned long long>(spine), dir.c_str());
  const Data d = generate(events, keys, spine);
  if (mode == "files") {
    // Only the inputs, kept: bench.yaml, events.csv and spine.csv in --dir,
    // for a larder-backfill run of one's own (docs/backfill.md).
    write_csv(dir, d, events);
    return 0;
  }
  int rc = 0;
  if (mode == "columns" || mode == "both") {
    if (order == "arrival" || order == "both") rc |= run_columns(config, d, events, LARDER_OFFLINE_ORDER_ARRIVAL);
    if (order == "key" || order == "both") rc |= run_columns(config, d, events, LARDER_OFFLINE_ORDER_BY_KEY);
  }
  if (mode == "csv" || mode == "both") rc |= run_csv(backfill, dir, config, d, events);
  std::filesystem::remove_all(dir);
  return rc;
}

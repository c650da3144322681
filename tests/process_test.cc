// Real processes and real shared memory: torn-read torture, churn, crash
// injection, read-only mappings, the writer lock, tmpfs sizing, versioning,
// liveness and permissions.
//
// The torture tests run until they have done a minimum of verified work
// (consistent reads and writes) and at least LARDER_TORTURE_SECONDS (default
// 2; run minutes on demand); only a hang fails on time. LARDER_CRASH_ITERATIONS
// sets the number of SIGKILLs (default 25, at least 2: one certain mid-update
// kill and one at a random time) and LARDER_SEED replays a randomized run.
#include "support/process.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "larder/client.h"
#include "larder/layout/clock.h"
#include "larder/layout/segment_file.h"
#include "support/derived_rows.h"
#include "support/progress.h"
#include "support/recount.h"
#include "support/test_segment.h"

namespace larder {
namespace {

using namespace std::chrono_literals;
using testing::ScratchSegment;

// Memory shared with forked children (MAP_SHARED | MAP_ANONYMOUS).
template <class T>
T* shared_array(size_t n) {
  void* p = ::mmap(nullptr, sizeof(T) * n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) std::abort();
  return new (p) T[n]();
}

// Filled by reader processes while they run. `consistent` counts reads that
// returned kOk with a verified row: a reader that only ever answers kBusy
// makes no progress there.
struct ReaderReport {
  std::atomic<uint64_t> reads;
  std::atomic<uint64_t> consistent;
  std::atomic<uint64_t> torn;
  std::atomic<uint64_t> missing;
  std::atomic<uint64_t> busy;
  std::atomic<int64_t> max_get_ns;
};

enum ReaderExit { kReaderOk = 0, kReaderFailed = 1 };

// A reader process: reads random keys in [0, keys) until *stop, verifying
// every row it gets. Missing keys count only when `all_present`.
int reader_process(const std::string& name, const std::string& dir, uint64_t keys, bool all_present,
                   const std::atomic<bool>* stop, ReaderReport* report, uint64_t seed) {
  Segment seg = Segment::open(name, ClientOptions{dir});
  Table t = seg.table("rows");
  const auto f = testing::DerivedFields::of(t);
  Row row = t.make_row();
  std::mt19937_64 rng(seed);
  uint64_t reads = 0;
  uint64_t consistent = 0;
  int64_t max_ns = 0;
  while (!layout::sync::load_relaxed(*stop)) {  // a stop flag; it guards no data
    const uint64_t k = rng() % keys;
    char key[32];
    std::snprintf(key, sizeof key, "key:%llu", static_cast<unsigned long long>(k));
    const int64_t t0 = layout::now_mono_ns();
    const ReadResult r = t.get(key, row);
    max_ns = std::max(max_ns, layout::now_mono_ns() - t0);
    switch (r.status) {
      case Status::kOk:
        if (testing::verify_derived(row, f, k, r.event_time_ms)) {
          ++consistent;
        } else {
          report->torn.fetch_add(1);
        }
        break;
      case Status::kNotFound:
        if (all_present) report->missing.fetch_add(1);
        break;
      case Status::kBusy: report->busy.fetch_add(1); break;
      default: report->torn.fetch_add(1); break;
    }
    // Published while running: the test waits on this progress (relaxed:
    // progress counters; they guard no data).
    if (++reads % 256 == 0) {
      report->reads.fetch_add(256, std::memory_order_relaxed);
      report->consistent.fetch_add(consistent, std::memory_order_relaxed);
      consistent = 0;
    }
  }
  report->reads.fetch_add(reads % 256);
  report->consistent.fetch_add(consistent);
  int64_t prev = report->max_get_ns.load();
  while (max_ns > prev && !report->max_get_ns.compare_exchange_weak(prev, max_ns)) {
  }
  return kReaderOk;
}

// The minimum verified work of a torture test.
constexpr uint64_t kMinConsistentReads = 10000;
constexpr uint64_t kMinWrites = 10000;

std::unique_ptr<Writer> open_derived(const ScratchSegment& seg, uint64_t capacity, WriterOptions opts = {}) {
  opts.dir = seg.dir();
  return Writer::open(seg.name(), testing::one_table_schema(testing::derived_table(capacity)), opts);
}

TEST(Processes, TornReadTorture) {
  testing::Children kids;
  ScratchSegment seg;
  constexpr uint64_t kKeys = 256;
  {
    auto w = open_derived(seg, kKeys);
    for (uint64_t k = 0; k < kKeys; ++k) ASSERT_EQ(testing::write_derived(*w, k, 1), ApplyResult::kApplied);
  }
  auto* stop = shared_array<std::atomic<bool>>(1);
  auto* report = shared_array<ReaderReport>(1);
  auto* writes = shared_array<std::atomic<uint64_t>>(1);
  const double seconds = testing::torture_seconds(2.0);

  const pid_t writer = kids.add(testing::spawn([&] {
    auto w = open_derived(seg, kKeys);
    int64_t c = 2;
    while (!layout::sync::load_relaxed(*stop)) {  // a stop flag; it guards no data
      for (uint64_t k = 0; k < kKeys; ++k) testing::write_derived(*w, k, c++);
      w->heartbeat();
      writes->store(static_cast<uint64_t>(c - 2), std::memory_order_relaxed);  // a progress counter; it guards no data
    }
    return 0;
  }));
  std::vector<pid_t> readers;
  for (int r = 0; r < 3; ++r) {
    readers.push_back(kids.add(
        testing::spawn([&, r] { return reader_process(seg.name(), seg.dir(), kKeys, true, stop, report, 1000 + r); })));
  }
  const bool progressed = testing::run_until(
      [&] { return report->consistent.load() >= kMinConsistentReads && writes->load() >= kMinWrites; },
      std::chrono::duration<double>(seconds));
  stop->store(true);
  for (pid_t r : readers) EXPECT_EQ(kids.wait(r), 0);
  EXPECT_EQ(kids.wait(writer), 0);
  std::printf("torn-read torture: %llu reads, %llu consistent, %llu busy, %llu writes\n",
              static_cast<unsigned long long>(report->reads.load()),
              static_cast<unsigned long long>(report->consistent.load()),
              static_cast<unsigned long long>(report->busy.load()), static_cast<unsigned long long>(writes->load()));
  EXPECT_TRUE(progressed) << "no progress within " << testing::kHangGuard.count() << " s";
  EXPECT_GE(report->consistent.load(), kMinConsistentReads) << "reads that returned a verified row (kBusy is not one)";
  EXPECT_GE(writes->load(), kMinWrites);
  EXPECT_EQ(report->torn.load(), 0u);
  EXPECT_EQ(report->missing.load(), 0u);
}

TEST(Processes, ChurnNeverHidesStableKeys) {
  testing::Children kids;
  ScratchSegment seg;
  constexpr uint64_t kStable = 500;
  layout::TableSpec spec = testing::derived_table(4000);
  spec.max_load_factor = 0.8;
  WriterOptions opts;
  opts.dir = seg.dir();
  opts.tombstone_retention_ms = 0;
  {
    auto w = Writer::open(seg.name(), testing::one_table_schema(spec), opts);
    for (uint64_t k = 0; k < kStable; ++k) ASSERT_EQ(testing::write_derived(*w, k, 1), ApplyResult::kApplied);
  }
  auto* stop = shared_array<std::atomic<bool>>(1);
  auto* report = shared_array<ReaderReport>(1);
  auto* churn = shared_array<std::atomic<uint64_t>>(1);
  const pid_t writer = kids.add(testing::spawn([&] {
    auto w = Writer::open(seg.name(), testing::one_table_schema(spec), opts);
    std::mt19937_64 rng(3);
    int64_t c = 2;
    uint64_t n = 0;
    while (!layout::sync::load_relaxed(*stop)) {  // a stop flag; it guards no data
      const uint64_t k = kStable + rng() % 6000;
      if (rng() % 2 == 0) {
        testing::write_derived(*w, k, c++);
      } else {
        w->remove(0, testing::derived_key(k), c++);
      }
      if (++n % 1024 == 0) {
        w->maintain(8192);
        churn->store(n, std::memory_order_relaxed);  // a progress counter; it guards no data
      }
    }
    return 0;
  }));
  std::vector<pid_t> readers;
  for (int r = 0; r < 2; ++r) {
    readers.push_back(kids.add(testing::spawn(
        [&, r] { return reader_process(seg.name(), seg.dir(), kStable, true, stop, report, 2000 + r); })));
  }
  const bool progressed = testing::run_until(
      [&] { return report->consistent.load() >= kMinConsistentReads && churn->load() >= kMinWrites; },
      std::chrono::duration<double>(testing::torture_seconds(2.0)));
  stop->store(true);
  for (pid_t r : readers) EXPECT_EQ(kids.wait(r), 0);
  EXPECT_EQ(kids.wait(writer), 0);
  std::printf("churn: %llu inserts/deletes, %llu stable-key reads, %llu consistent, %llu busy\n",
              static_cast<unsigned long long>(churn->load()), static_cast<unsigned long long>(report->reads.load()),
              static_cast<unsigned long long>(report->consistent.load()),
              static_cast<unsigned long long>(report->busy.load()));
  EXPECT_TRUE(progressed) << "no progress within " << testing::kHangGuard.count() << " s";
  EXPECT_GE(churn->load(), kMinWrites);
  EXPECT_GE(report->consistent.load(), kMinConsistentReads) << "reads that returned a verified row (kBusy is not one)";
  EXPECT_EQ(report->missing.load(), 0u);
  EXPECT_EQ(report->torn.load(), 0u);
}

int crash_countdown = 0;  // set before fork, counted down in the writer child
void crash_after_countdown(CrashPoint) {
  if (--crash_countdown == 0) ::raise(SIGKILL);
}
// Kills the writer at the Nth count record crash point: between the record
// being armed and the counters it guards being stored.
void crash_at_counts(CrashPoint point) {
  if (point == CrashPoint::kCounts && --crash_countdown == 0) ::raise(SIGKILL);
}
// Kills the writer the first time it reaches kPayloadWritten: seq is odd
// there, so the next writer certainly has a slot to repair.
void crash_with_seq_odd(CrashPoint point) {
  if (point == CrashPoint::kPayloadWritten) ::raise(SIGKILL);
}

// SIGKILL the writer at random points, many times. Readers must never hang or
// read a torn row; each restarted writer repairs; nothing the writer
// acknowledged (upsert returned) is lost; the counters equal a full recount
// after every restart (the writer does not recount: it repairs what was in
// flight); after replaying what was in flight the table equals the model.
// Besides the keys the readers check, the writer inserts, deletes and
// reclaims churn keys, so that kills land in writes that change the counters.
// `batched`: the writer upserts the checked keys kBatch at a time through
// Writer::upsert_many (each update acknowledged when the batch returns), so
// kills land while the next keys' slots are being prefetched.
void crash_injection(bool batched) {
  testing::Children kids;
  ScratchSegment seg;
  constexpr uint64_t kKeys = 128;
  constexpr uint64_t kChurnKeys = 64;
  WriterOptions opts;
  opts.tombstone_retention_ms = 0;  // maintain() reclaims tombstones at once
  auto open_writer = [&] { return open_derived(seg, kKeys + kChurnKeys, opts); };
  const uint64_t seed = testing::test_seed(batched ? "CrashInjectionUpsertMany" : "CrashInjection");
  const int iterations = testing::crash_iterations(25);
  ASSERT_GE(iterations, 2)
      << "LARDER_CRASH_ITERATIONS=" << -iterations
      << " refused: at least 10 (fewer with LARDER_CRASH_ITERATIONS_REDUCED=1), never fewer than 2";
  std::mt19937_64 rng(seed);

  auto* attempted = shared_array<std::atomic<int64_t>>(kKeys);   // written before upsert
  auto* acked = shared_array<std::atomic<int64_t>>(kKeys);       // written after upsert returned
  auto* last_attempted = shared_array<std::atomic<int64_t>>(1);  // the newest event time of any call
  auto* stop = shared_array<std::atomic<bool>>(1);
  auto* report = shared_array<ReaderReport>(1);
  {
    auto w = open_writer();
    for (uint64_t k = 0; k < kKeys; ++k) {
      ASSERT_EQ(testing::write_derived(*w, k, 1), ApplyResult::kApplied);
      attempted[k] = acked[k] = 1;
    }
  }
  std::vector<pid_t> readers;
  for (int r = 0; r < 2; ++r) {
    readers.push_back(kids.add(
        testing::spawn([&, r] { return reader_process(seg.name(), seg.dir(), kKeys, true, stop, report, seed + r); })));
  }
  uint64_t repaired_total = 0, counts_redone = 0, at_counts_kills = 0;
  for (int it = 0; it < iterations; ++it) {
    const int64_t base = (it + 1) * 100'000'000LL;
    // Odd iterations kill from inside an update at a random crash point
    // (whitebox; the first one with seq odd, certainly; every other one
    // inside a count record); even ones at a random time once the writer
    // has acknowledged an update (blackbox).
    const bool whitebox = it % 2 == 1;
    const bool at_counts = it % 4 == 3;
    // A write that changes the counters passes four kCounts points: one
    // before its record is armed, three while it is: the countdown lands on
    // one of those three, so the restart must finish the record.
    crash_countdown = at_counts ? 4 * static_cast<int>(rng() % 50) + 2 + static_cast<int>(rng() % 3)
                                : 1 + static_cast<int>(rng() % 5000);
    at_counts_kills += at_counts ? 1 : 0;
    const pid_t writer = kids.add(testing::spawn([&] {
      auto w = open_writer();
      if (whitebox) {
        set_crash_hook(it == 1 ? &crash_with_seq_odd : at_counts ? &crash_at_counts : &crash_after_countdown);
      }
      constexpr int kBatch = 8;
      testing::DerivedUpsert batch[kBatch];
      Upsert upserts[kBatch];
      ApplyResult results[kBatch];
      for (int64_t c = base;; ++c) {
        const uint64_t k = static_cast<uint64_t>(c) % kKeys;
        if (!batched) {
          last_attempted->store(c);
          attempted[k].store(c);
          if (testing::write_derived(*w, k, c) != ApplyResult::kApplied) return 3;
          acked[k].store(c);
        } else if (c % kBatch == 0) {
          // Keys k .. k+7 (kKeys is a multiple of kBatch) at versions c .. c+7.
          last_attempted->store(c + kBatch - 1);
          for (int b = 0; b < kBatch; ++b) {
            attempted[k + b].store(c + b);
            upserts[b] = batch[b].set(k + b, c + b);
          }
          w->upsert_many(upserts, results);
          for (int b = 0; b < kBatch; ++b) {
            if (results[b] != ApplyResult::kApplied) return 3;
            acked[k + b].store(c + b);
          }
        }
        // A churn key: inserted on even calls, deleted on odd ones, its
        // tombstone reclaimed by maintain().
        const uint64_t churn = kKeys + (static_cast<uint64_t>(c) / 2 * 7) % kChurnKeys;
        if (last_attempted->load() < c) last_attempted->store(c);  // a batch may have stored a later one
        if (c % 2 == 0) {
          testing::write_derived(*w, churn, c);
        } else {
          w->remove(0, testing::derived_key(churn), c);
        }
        if (c % 16 == 0) w->maintain(kKeys + kChurnKeys);
      }
    }));
    if (!whitebox) {
      const bool writing = testing::run_until(
          [&] {
            for (uint64_t k = 0; k < kKeys; ++k) {
              if (acked[k].load() >= base) return true;
            }
            return false;
          },
          0s);
      ASSERT_TRUE(writing) << "iteration " << it << ": the writer acknowledged no update";
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));  // anywhere in the stream
      ::kill(writer, SIGKILL);
    }
    ASSERT_EQ(kids.wait(writer), 128 + SIGKILL);

    // Restart: the new writer repairs what the dead one left half-written,
    // visiting no slot but the one the undo record guards.
    auto w = open_writer();
    repaired_total += w->repaired_slots();
    counts_redone += w->attach_report().counts_redone ? 1 : 0;
    ASSERT_LE(w->attach_report().slots_visited, 1u) << "iteration " << it;
    ASSERT_FALSE(w->attach_report().full_scan) << "iteration " << it;
    ASSERT_TRUE(testing::counters_match_recount(w->path(), seg.name())) << "iteration " << it;
    {
      const WriterStats st = w->stats(0);
      auto m = layout::MappedFile::open_read_only(w->path(), seg.name());
      const auto newest = static_cast<int64_t>(
          layout::table_descriptor(m->data(), 0).counters.max_event_time_ms.load(std::memory_order_relaxed));
      ASSERT_LE(newest, last_attempted->load()) << "iteration " << it;
      ASSERT_GE(st.live_keys, kKeys) << "iteration " << it;
    }
    Segment s = Segment::open(seg.name(), ClientOptions{seg.dir()});
    Table t = s.table("rows");
    const auto f = testing::DerivedFields::of(t);
    Row row = t.make_row();
    for (uint64_t k = 0; k < kKeys; ++k) {
      const ReadResult r = t.get(testing::derived_key(k), row);
      ASSERT_EQ(r.status, Status::kOk) << "iteration " << it << " key " << k;
      ASSERT_TRUE(testing::verify_derived(row, f, k, r.event_time_ms)) << "iteration " << it << " key " << k;
      ASSERT_GE(r.event_time_ms, acked[k].load()) << "an acknowledged update was lost, key " << k;
      ASSERT_LE(r.event_time_ms, attempted[k].load());
    }
  }
  // Replay what may have been in flight (as the broker redelivers unacked
  // messages): then the table equals the model exactly.
  {
    auto w = open_writer();
    for (uint64_t k = 0; k < kKeys; ++k) ASSERT_EQ(testing::write_derived(*w, k, attempted[k]), ApplyResult::kApplied);
    EXPECT_TRUE(testing::counters_match_recount(w->path(), seg.name()));
    Segment s = Segment::open(seg.name(), ClientOptions{seg.dir()});
    Table t = s.table("rows");
    Row row = t.make_row();
    for (uint64_t k = 0; k < kKeys; ++k) {
      ASSERT_EQ(t.get(testing::derived_key(k), row).status, Status::kOk);
      EXPECT_EQ(row.i64(t.field("clicks")), attempted[k].load()) << k;
    }
    // Every slot is even (no reader can be left spinning).
    auto m = layout::MappedFile::open_read_only(w->path(), seg.name());
    const layout::TableGeometry g = layout::table_geometry(m->data(), layout::table_descriptor(m->data(), 0));
    for (uint64_t i = 0; i < g.slot_count; ++i) ASSERT_EQ(g.slot(i)[0].load() & 1, 0u) << "slot " << i;
  }
  EXPECT_TRUE(testing::run_until([&] { return report->consistent.load() >= 1000; }, 0s))
      << "the readers returned no verified row (kBusy is not one)";
  stop->store(true);
  for (pid_t r : readers) EXPECT_EQ(kids.wait(r), 0);
  std::printf(
      "crash injection: %d kills, %llu slots repaired, %llu count records redone, %llu reads, %llu busy, "
      "max get %.3f ms\n",
      iterations, static_cast<unsigned long long>(repaired_total), static_cast<unsigned long long>(counts_redone),
      static_cast<unsigned long long>(report->reads.load()), static_cast<unsigned long long>(report->busy.load()),
      report->max_get_ns.load() / 1e6);
  EXPECT_EQ(report->torn.load(), 0u);
  EXPECT_EQ(report->missing.load(), 0u);
  // Iteration 1 killed the writer with seq odd: the restart repaired it.
  EXPECT_GT(repaired_total, 0u);
  // Each kill inside a count record left one for the restart to finish.
  EXPECT_GE(counts_redone, at_counts_kills);
  // A get never waits on a dead writer: the readers returned when told to
  // stop (kids.wait above), and Processes.ReaderGivesUpWithBusyOnASlotLeftMidWrite
  // shows the bound (max_retries).
}

// The same kills on a table with field groups: the group time words are
// payload words of the slot, under its undo copy and seqlock like the row.
// Per call c on key c % kKeys: group "a" takes (c, mix(c)) at time 2c + 1;
// every third call a delete at 2c clears group "b" and leaves "a"; then "b"
// takes (c, mix(c)) at 2c. Whatever the kill, every key stays live, each
// group's fields match each other and its time, or "b" is cleared with the
// time of a delete of that key (the same call's, or an earlier call's that a
// kill cut short before its "b" write), and the row's time is the newest
// group's.
int64_t mix(int64_t c) { return c * 2654435761LL + 12345; }

layout::Schema grouped_schema(uint64_t keys) {
  layout::TableSpec t;
  t.name = "g";
  t.key_max_len = 16;
  t.capacity = keys;
  t.fields = {layout::FieldSpec{"a_count", layout::FieldType::kInt64, 1, "a"},
              layout::FieldSpec{"a_check", layout::FieldType::kInt64, 1, "a"},
              layout::FieldSpec{"b_count", layout::FieldType::kInt64, 1, "b"},
              layout::FieldSpec{"b_check", layout::FieldType::kInt64, 1, "b"}};
  return testing::one_table_schema(t);
}

TEST(Processes, CrashInjectionGroupedTable) {
  testing::Children kids;
  ScratchSegment seg;
  constexpr uint64_t kKeys = 64;
  const layout::Schema schema = grouped_schema(kKeys);
  auto open_writer = [&] { return Writer::open(seg.name(), schema, seg.writer_options()); };
  auto key = [](uint64_t k) { return "k" + std::to_string(k); };
  auto write = [&](Writer& w, int64_t c) {
    const uint64_t k = static_cast<uint64_t>(c) % kKeys;
    const FieldValue a[] = {FieldValue::int64(0, c), FieldValue::int64(1, mix(c))};
    if (w.upsert(0, key(k), 2 * c + 1, a) != ApplyResult::kApplied) return false;
    if (c % 3 == 0 && w.remove(0, key(k), 2 * c) != ApplyResult::kApplied) return false;
    const FieldValue b[] = {FieldValue::int64(2, c), FieldValue::int64(3, mix(c))};
    return w.upsert(0, key(k), 2 * c, b) == ApplyResult::kApplied;
  };
  const uint64_t seed = testing::test_seed("CrashInjectionGroupedTable");
  const int iterations = testing::crash_iterations(25);
  ASSERT_GE(iterations, 2);
  std::mt19937_64 rng(seed);
  auto* acked = shared_array<std::atomic<int64_t>>(kKeys);  // the newest call that returned, per key
  {
    auto w = open_writer();
    for (uint64_t k = 0; k < kKeys; ++k) {
      ASSERT_TRUE(write(*w, static_cast<int64_t>(k)));
      acked[k] = static_cast<int64_t>(k);
    }
  }
  uint64_t repaired_total = 0;
  for (int it = 0; it < iterations; ++it) {
    const int64_t base = (it + 1) * 1'000'000LL * kKeys;
    crash_countdown = it == 1 ? 0 : 1 + static_cast<int>(rng() % 3000);
    const pid_t writer = kids.add(testing::spawn([&] {
      auto w = open_writer();
      set_crash_hook(it == 1 ? &crash_with_seq_odd : &crash_after_countdown);
      for (int64_t c = base;; ++c) {
        if (!write(*w, c)) return 3;
        acked[static_cast<uint64_t>(c) % kKeys].store(c);
      }
    }));
    ASSERT_EQ(kids.wait(writer), 128 + SIGKILL);

    auto w = open_writer();
    repaired_total += w->repaired_slots();
    ASSERT_TRUE(testing::counters_match_recount(w->path(), seg.name())) << "iteration " << it;
    Segment s = Segment::open(seg.name(), ClientOptions{seg.dir()});
    Table t = s.table("g");
    const Group ga = t.group("a"), gb = t.group("b");
    const Field ac = t.field("a_count"), ak = t.field("a_check"), bc = t.field("b_count"), bk = t.field("b_check");
    Row row = t.make_row();
    for (uint64_t k = 0; k < kKeys; ++k) {
      const ReadResult r = t.get(key(k), row);
      ASSERT_EQ(r.status, Status::kOk) << "iteration " << it << " key " << k;
      ASSERT_TRUE(row.valid(ac) && row.valid(ak)) << "group a is never deleted, key " << k;
      const int64_t a = row.i64(ac);
      ASSERT_EQ(row.i64(ak), mix(a)) << "key " << k;
      ASSERT_EQ(row.group_event_time_ms(ga), 2 * a + 1) << "key " << k;
      ASSERT_GE(a, acked[k].load()) << "an acknowledged update was lost, key " << k;
      const int64_t tb = row.group_event_time_ms(gb);
      if (row.valid(bc)) {
        ASSERT_TRUE(row.valid(bk));
        ASSERT_EQ(row.i64(bk), mix(row.i64(bc))) << "key " << k;
        ASSERT_EQ(tb, 2 * row.i64(bc)) << "key " << k;
      } else {
        // Cleared by a delete of this key: the one of the call that wrote
        // "a", or that of an earlier call a kill cut short before its "b"
        // write (the next calls of the key then wrote only "a" before this
        // kill). Either way the time is 2c' for a delete call c' <= a.
        ASSERT_FALSE(row.valid(bk));
        ASSERT_TRUE(tb % 2 == 0 && tb / 2 % 3 == 0 && static_cast<uint64_t>(tb / 2) % kKeys == k && tb <= 2 * a)
            << "b cleared with the time of no delete of key " << k << ": " << tb << ", a " << a;
      }
      ASSERT_EQ(r.event_time_ms, std::max(row.group_event_time_ms(ga), tb)) << "key " << k;
    }
  }
  std::printf("grouped crash injection: %d kills, %llu slots repaired\n", iterations,
              static_cast<unsigned long long>(repaired_total));
  EXPECT_GT(repaired_total, 0u);  // iteration 1 killed with seq odd
}
TEST(Processes, CrashInjection) { crash_injection(false); }
TEST(Processes, CrashInjectionUpsertMany) { crash_injection(true); }

CrashPoint kill_kind = CrashPoint::kUndoArmed;  // set before fork
void kill_at_first_of_kind(CrashPoint point) {
  if (point == kill_kind) ::raise(SIGKILL);
}

// Opening a segment after a kill reads what was in flight, not the table:
// the slots it visits (AttachReport::slots_visited, which counts every slot
// open reads) are at most the one the undo record guards, the same for a
// table of 1,000 keys and one of 100,000, whatever crash point the previous
// writer died at; the counters still equal a full recount. A clean reopen
// visits none. full_check, and a segment whose counters_session says a
// writer without the count record wrote it last, visit every slot.
TEST(Processes, OpenAfterAKillVisitsOnlyWhatWasInFlight) {
  testing::Children kids;
  static constexpr CrashPoint kKinds[] = {CrashPoint::kCounts,     CrashPoint::kUndoArmed,      CrashPoint::kSeqOdd,
                                          CrashPoint::kMidPayload, CrashPoint::kPayloadWritten, CrashPoint::kSeqEven};
  std::vector<std::vector<uint64_t>> visited;
  for (const uint64_t capacity : {uint64_t{1'000}, uint64_t{100'000}}) {
    ScratchSegment seg;
    const uint64_t keys = capacity / 2;
    uint64_t slot_count = 0;
    int64_t c = 1;
    {
      auto w = open_derived(seg, capacity);
      for (uint64_t k = 0; k < keys; ++k) ASSERT_EQ(testing::write_derived(*w, k, c++), ApplyResult::kApplied);
      for (uint64_t k = 0; k < keys; k += 10)
        ASSERT_EQ(w->remove(0, testing::derived_key(k), c++), ApplyResult::kApplied);
      slot_count = w->stats(0).slot_count;
    }
    {
      auto w = open_derived(seg, capacity);
      EXPECT_EQ(w->attach_report().slots_visited, 0u) << "a clean reopen";
      EXPECT_FALSE(w->attach_report().full_scan);
    }
    visited.emplace_back();
    for (const CrashPoint kind : kKinds) {
      kill_kind = kind;
      // Inserts a new key, deletes it, and updates an old one: every write
      // passes the crash points of its kind.
      const pid_t writer = kids.add(testing::spawn([&] {
        auto w = open_derived(seg, capacity);
        set_crash_hook(&kill_at_first_of_kind);
        testing::write_derived(*w, keys + 1, c);
        w->remove(0, testing::derived_key(keys + 1), c + 1);
        testing::write_derived(*w, 1, c + 2);
        return 0;
      }));
      ASSERT_EQ(kids.wait(writer), 128 + SIGKILL) << "not killed at crash point " << static_cast<int>(kind);
      c += 3;
      auto w = open_derived(seg, capacity);
      const AttachReport& r = w->attach_report();
      EXPECT_LE(r.slots_visited, 1u) << "capacity " << capacity << ", crash point " << static_cast<int>(kind);
      EXPECT_FALSE(r.full_scan);
      EXPECT_TRUE(testing::counters_match_recount(w->path(), seg.name()))
          << "capacity " << capacity << ", crash point " << static_cast<int>(kind);
      visited.back().push_back(r.slots_visited);
    }
    {
      WriterOptions full;
      full.full_check = true;
      auto w = open_derived(seg, capacity, full);
      EXPECT_TRUE(w->attach_report().full_scan);
      EXPECT_EQ(w->attach_report().slots_visited, slot_count);
    }
    // A segment last opened by a writer that kept no count record: it
    // attached (writer_sessions moved on) without stamping counters_session,
    // and may have died with the counters one write off.
    {
      auto m = layout::MappedFile::open_read_write(layout::segment_path(seg.dir(), seg.name()), seg.name());
      auto* h = static_cast<layout::SegmentHeader*>(m->mutable_data());
      h->writer_sessions.fetch_add(1);
      auto& counters = const_cast<layout::TableDescriptor&>(layout::table_descriptor(m->data(), 0)).counters;
      counters.live_keys.fetch_add(1);
    }
    {
      auto w = open_derived(seg, capacity);
      EXPECT_TRUE(w->attach_report().full_scan);
      EXPECT_EQ(w->attach_report().slots_visited, slot_count);
      EXPECT_TRUE(testing::counters_match_recount(w->path(), seg.name()));
    }
    {
      auto w = open_derived(seg, capacity);
      EXPECT_FALSE(w->attach_report().full_scan) << "the scan stamped the counters exact";
      EXPECT_EQ(w->attach_report().slots_visited, 0u);
    }
  }
  // The same in-flight work at both sizes: the cost does not follow capacity.
  ASSERT_EQ(visited.size(), 2u);
  EXPECT_EQ(visited[0], visited[1]);
  // A kill with seq odd or after seq even leaves the guarded slot to look at.
  EXPECT_EQ(visited[0][2], 1u);
}

// A writer stopped between seq odd and seq even, at the crash point it
// reports (it SIGSTOPs itself there): a read of that key retries max_retries
// times and answers kBusy; other keys read normally; once the writer
// finishes the update, the key reads kOk.
void stop_with_seq_odd(CrashPoint point) {
  if (point == CrashPoint::kPayloadWritten) ::raise(SIGSTOP);
}

TEST(Processes, ReaderGivesUpWithBusyOnASlotLeftMidWrite) {
  testing::Children kids;
  ScratchSegment seg;
  {
    auto w = open_derived(seg, 16);
    ASSERT_EQ(testing::write_derived(*w, 1, 1), ApplyResult::kApplied);
  }
  const pid_t writer = kids.add(testing::spawn([&] {
    auto w = open_derived(seg, 16);
    set_crash_hook(&stop_with_seq_odd);
    const bool applied = testing::write_derived(*w, 1, 2) == ApplyResult::kApplied;
    set_crash_hook(nullptr);
    return applied ? 0 : 3;
  }));
  int status = 0;
  ASSERT_EQ(::waitpid(writer, &status, WUNTRACED), writer);
  ASSERT_TRUE(WIFSTOPPED(status)) << "the writer should stop itself with seq odd";

  for (const uint32_t retries : {0u, 1u, 1000u}) {
    ClientOptions o{seg.dir()};
    o.max_retries = retries;
    Segment s = Segment::open(seg.name(), o);
    Table t = s.table("rows");
    Row row = t.make_row();
    EXPECT_EQ(t.get(testing::derived_key(1), row).status, Status::kBusy) << "max_retries " << retries;
  }
  ::kill(writer, SIGCONT);
  EXPECT_EQ(kids.wait(writer), 0);
  Segment s = Segment::open(seg.name(), ClientOptions{seg.dir()});
  Table t = s.table("rows");
  Row row = t.make_row();
  const ReadResult r = t.get(testing::derived_key(1), row);
  EXPECT_EQ(r.status, Status::kOk);
  EXPECT_EQ(r.event_time_ms, 2);
}

TEST(Processes, WriteThroughReadOnlyMappingFaults) {
  ScratchSegment seg;
  auto w = open_derived(seg, 16);
  auto m = layout::MappedFile::open_read_only(w->path(), seg.name());
  auto write_through_reader = [&] {
    auto* header = const_cast<layout::SegmentHeader*>(&m->header());
    header->writer_pid.store(1);
  };
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer catches the SIGSEGV and aborts with a report.
  EXPECT_DEATH(write_through_reader(), "SEGV");
#else
  EXPECT_EXIT(write_through_reader(), ::testing::KilledBySignal(SIGSEGV), "");
#endif
  // The client's own mapping is read-only too: a full read works.
  Segment s = Segment::open(seg.name(), ClientOptions{seg.dir()});
  Row row = s.table("rows").make_row();
  EXPECT_EQ(s.table("rows").get("key:1", row).status, Status::kNotFound);
}

TEST(Processes, SecondWriterIsRefused) {
  testing::Children kids;
  ScratchSegment seg;
  auto w = open_derived(seg, 16);
  // Refused at once, not after waiting for the lock: kids.wait's bound only
  // catches a hang.
  const pid_t other = kids.add(testing::spawn([&] {
    try {
      open_derived(seg, 16);
    } catch (const Error& e) {
      const bool names_pid = std::string(e.what()).find("pid " + std::to_string(::getppid())) != std::string::npos;
      return e.code() == ErrorCode::kWriterLocked && names_pid ? 0 : 2;
    }
    return 1;
  }));
  EXPECT_EQ(kids.wait(other), 0);
  // Once the first writer is gone the lock is free.
  w.reset();
  EXPECT_NO_THROW(open_derived(seg, 16));
}

TEST(Processes, ReaderDeathLeavesNothingBehind) {
  testing::Children kids;
  // A directory of its own: other tests create and remove files in /dev/shm
  // meanwhile, and any file the reader left would show here.
  const std::string dir = "/dev/shm/larder-reader-death-" + std::to_string(::getpid());
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0) << dir;
  struct RemoveDir {
    std::string path;
    ~RemoveDir() { ::rmdir(path.c_str()); }
  } remove_dir{dir};
  ScratchSegment seg(dir);
  auto w = open_derived(seg, 16);
  testing::write_derived(*w, 1, 5);
  auto files = [&] {
    std::set<std::string> names;
    DIR* d = ::opendir(seg.dir().c_str());
    while (dirent* e = ::readdir(d)) names.insert(e->d_name);
    ::closedir(d);
    return names;
  };
  const auto before = files();
  auto* reading = shared_array<std::atomic<bool>>(1);
  const pid_t reader = kids.add(testing::spawn([&] {
    Segment s = Segment::open(seg.name(), ClientOptions{seg.dir()});
    Row row = s.table("rows").make_row();
    if (!s.table("rows").get("key:1", row).ok()) return 2;
    reading->store(true);  // mapped and reading: the kill lands mid-use
    while (true) (void)s.table("rows").get("key:1", row);
    return 0;
  }));
  ASSERT_TRUE(testing::run_until([&] { return reading->load(); }, 0s)) << "the reader never read";
  ::kill(reader, SIGKILL);
  EXPECT_EQ(kids.wait(reader), 128 + SIGKILL);
  EXPECT_EQ(files(), before);
  EXPECT_EQ(testing::write_derived(*w, 1, 6), ApplyResult::kApplied);
}

TEST(Processes, HeartbeatShowsAStoppedWriter) {
  testing::Children kids;
  ScratchSegment seg;
  { open_derived(seg, 16); }
  const pid_t writer = kids.add(testing::spawn([&] {
    auto w = open_derived(seg, 16);
    while (true) {
      w->heartbeat();
      std::this_thread::sleep_for(10ms);
    }
    return 0;
  }));
  Segment s = Segment::open(seg.name(), ClientOptions{seg.dir()});
  // Waits for the event; only a hang fails on time.
  auto wait_until = [&](bool alive) { return testing::run_until([&] { return s.writer_alive(200) == alive; }, 0s); };
  EXPECT_TRUE(wait_until(true));
  EXPECT_EQ(s.info().writer_pid, static_cast<uint64_t>(writer));
  ::kill(writer, SIGSTOP);
  EXPECT_TRUE(wait_until(false)) << "a stopped writer must look dead";
  ::kill(writer, SIGCONT);
  EXPECT_TRUE(wait_until(true));
  ::kill(writer, SIGKILL);
  kids.wait(writer);
  EXPECT_TRUE(wait_until(false));
  EXPECT_GT(s.info().heartbeat_age_ms, 0);
}

// ---------------------------------------------------------------------------
// Refusals

class Refusals : public ::testing::Test {
 protected:
  void SetUp() override {
    auto w = open_derived(seg_, 16);
    testing::write_derived(*w, 1, 1);
    path_ = w->path();
  }
  // Edits the closed segment's bytes.
  template <class F>
  void edit(F&& f) {
    auto m = layout::MappedFile::open_read_write(path_, seg_.name());
    f(*static_cast<layout::SegmentHeader*>(m->mutable_data()), static_cast<char*>(m->mutable_data()));
  }
  Error open_error() {
    try {
      Segment::open(seg_.name(), ClientOptions{seg_.dir()});
    } catch (const Error& e) {
      return e;
    }
    return Error(ErrorCode::kSystem, "(opened)");
  }
  ScratchSegment seg_;
  std::string path_;
};

TEST_F(Refusals, OlderLayoutVersionNamesBothVersions) {
  edit([](layout::SegmentHeader& h, char*) { h.layout_version = layout::kLayoutVersion - 1; });
  const Error e = open_error();
  EXPECT_EQ(e.code(), ErrorCode::kVersionMismatch);
  const std::string want = "has layout v" + std::to_string(layout::kLayoutVersion - 1) + ", this build reads v" +
                           std::to_string(layout::kLayoutVersion);
  EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  // The writer refuses it too rather than overwrite it.
  try {
    open_derived(seg_, 16);
    ADD_FAILURE() << "writer opened an old segment";
  } catch (const Error& we) {
    EXPECT_EQ(we.code(), ErrorCode::kVersionMismatch);
  }
}

TEST_F(Refusals, NewerLayoutVersionSaysUpgradeTheClient) {
  edit([](layout::SegmentHeader& h, char*) { h.layout_version = layout::kLayoutVersion + 1; });
  const Error e = open_error();
  EXPECT_EQ(e.code(), ErrorCode::kVersionMismatch);
  EXPECT_NE(std::string(e.what()).find("upgrade the client"), std::string::npos) << e.what();
}

TEST_F(Refusals, AbiSignatureMismatch) {
  edit([](layout::SegmentHeader& h, char*) { h.abi_signature ^= 1; });
  const Error e = open_error();
  EXPECT_EQ(e.code(), ErrorCode::kVersionMismatch);
  EXPECT_NE(std::string(e.what()).find("ABI signature"), std::string::npos) << e.what();
}

TEST_F(Refusals, BadMagic) {
  edit([](layout::SegmentHeader& h, char*) { h.magic = 0; });
  EXPECT_EQ(open_error().code(), ErrorCode::kCorrupt);
}

TEST_F(Refusals, SegmentStillBeingCreated) {
  edit([](layout::SegmentHeader& h, char*) { h.state.store(0); });
  EXPECT_EQ(open_error().code(), ErrorCode::kNotReady);
}

TEST_F(Refusals, DescriptorPointingOutsideTheFile) {
  edit([](layout::SegmentHeader& h, char* base) {
    auto* d = reinterpret_cast<layout::TableDescriptor*>(base + h.header_bytes);
    d->slot_count *= 1000;
  });
  const Error e = open_error();
  EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
  EXPECT_NE(std::string(e.what()).find("slot array outside the file"), std::string::npos) << e.what();
}

TEST_F(Refusals, SchemaFingerprintExpectedByTheReader) {
  ClientOptions o{seg_.dir()};
  o.expected_schema_fingerprint = 0x1234;
  try {
    Segment::open(seg_.name(), o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kSchemaMismatch);
    EXPECT_NE(std::string(e.what()).find("the reader expects 0000000000001234"), std::string::npos) << e.what();
  }
}

TEST_F(Refusals, WriterWithAnotherSchema) {
  try {
    open_derived(seg_, 17);  // another capacity: another layout
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kSchemaMismatch);
    EXPECT_NE(std::string(e.what()).find("schema fingerprint"), std::string::npos) << e.what();
  }
  // Allowed explicitly: the old segment is retired and replaced.
  Segment old = Segment::open(seg_.name(), ClientOptions{seg_.dir()});
  WriterOptions o;
  o.recreate_on_schema_change = true;
  auto w = open_derived(seg_, 17, o);
  EXPECT_TRUE(w->created());
  EXPECT_TRUE(old.retired());
  Segment fresh = Segment::open(seg_.name(), ClientOptions{seg_.dir()});
  EXPECT_FALSE(fresh.retired());
  EXPECT_EQ(fresh.info().generation, 1u);
}

TEST(Creation, MissingSegmentAndBadName) {
  try {
    Segment::open("larder-no-such-segment", ClientOptions{});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
  }
  try {
    Segment::open("../etc/passwd", ClientOptions{});
    FAIL() << "opened a name with a path in it";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
  }
}

TEST(Creation, ModeIsExactWhateverTheUmask) {
  for (mode_t mask : {mode_t{077}, mode_t{000}}) {
    ScratchSegment seg;
    const mode_t old = ::umask(mask);
    auto w = open_derived(seg, 16);
    ::umask(old);
    struct stat st;
    ASSERT_EQ(::stat(w->path().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0640u) << "umask " << mask;
  }
}

TEST(Creation, ReaderOutsideTheGroupIsRefusedClearly) {
  testing::Children kids;
  if (::geteuid() != 0) {
    LARDER_SKIP_OR_FAIL("needs root to switch to an unprivileged user");
  }
  ScratchSegment seg;
  auto w = open_derived(seg, 16);
  testing::write_derived(*w, 1, 7);
  auto read_as_nobody = [&] {
    return kids.wait(kids.add(testing::spawn([&] {
      if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 10;
      try {
        Segment s = Segment::open(seg.name(), ClientOptions{seg.dir()});
        Row row = s.table("rows").make_row();
        return s.table("rows").get("key:1", row).ok() ? 0 : 11;
      } catch (const Error& e) {
        const bool clear = std::string(e.what()).find("permission denied (mode 0640") != std::string::npos;
        return e.code() == ErrorCode::kPermissionDenied && clear ? 20 : 21;
      }
    })));
  };
  EXPECT_EQ(read_as_nobody(), 20) << "mode 0640 root:root must refuse user nobody";
  ASSERT_EQ(::chown(w->path().c_str(), 0, 65534), 0);  // the segment's group: nogroup
  EXPECT_EQ(read_as_nobody(), 0) << "a reader in the segment's group reads it";
}

TEST(Creation, DiskDirectoryIsRefusedUnlessAllowed) {
  char dir[] = "/var/tmp/larder-disk-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  struct statfs fs;
  ASSERT_EQ(::statfs(dir, &fs), 0);
  if (fs.f_type == TMPFS_MAGIC) {
    ::rmdir(dir);
    LARDER_SKIP_OR_FAIL("/var/tmp is a tmpfs here: no disk directory to refuse");
  }
  ScratchSegment seg(dir);
  try {
    open_derived(seg, 16);
    ADD_FAILURE() << "created a segment on a disk file system";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("is not a tmpfs"), std::string::npos) << e.what();
  }
  WriterOptions allow;
  allow.allow_non_tmpfs = true;
  EXPECT_NO_THROW(open_derived(seg, 16, allow));
  Writer::remove_segment(seg.name(), dir);
  ::rmdir(dir);
}

TEST(Creation, TooSmallTmpfsIsRefusedCleanly) {
  char dir[] = "/tmp/larder-small-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  if (::mount("tmpfs", dir, "tmpfs", 0, "size=4m") != 0) {
    const std::string why = std::string("cannot mount a tmpfs here (needs root): ") + std::strerror(errno);
    ::rmdir(dir);
    LARDER_SKIP_OR_FAIL(why);
  }
  ScratchSegment seg(dir);
  try {
    open_derived(seg, 200'000);  // ~40 MB
    ADD_FAILURE() << "created a segment larger than the tmpfs";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNoSpace);
    EXPECT_NE(std::string(e.what()).find("--shm-size"), std::string::npos) << e.what();
  }
  // Nothing is left behind, and a segment that fits works.
  struct stat st;
  EXPECT_NE(::stat(layout::segment_path(dir, seg.name()).c_str(), &st), 0);
  EXPECT_NO_THROW(open_derived(seg, 1000));
  ::umount2(dir, MNT_DETACH);
  ::rmdir(dir);
}

TEST(Creation, WriterKilledWhileCreatingLeavesNoHalfBuiltSegment) {
  testing::Children kids;
  const uint64_t seed = testing::test_seed("WriterKilledWhileCreating");
  std::mt19937_64 rng(seed);
  for (int it = 0; it < 5; ++it) {
    ScratchSegment seg;
    const pid_t creator = kids.add(testing::spawn([&] {
      open_derived(seg, 500'000);  // ~128 MB: creation takes a while
      ::pause();                   // created: waits for the kill like an unfinished one
      return 0;
    }));
    // Creation has begun once its temporary file exists (or, on a very fast
    // machine, the segment does); the kill lands after a random delay, before
    // or after creation completes: both must leave a usable directory.
    const std::string creating = "." + seg.name() + ".creating.";
    const bool begun = testing::run_until(
        [&] {
          bool found = false;
          DIR* d = ::opendir(seg.dir().c_str());
          while (dirent* e = ::readdir(d)) {
            const std::string n = e->d_name;
            found = found || n.rfind(creating, 0) == 0 || n.find(seg.name()) != std::string::npos;
          }
          ::closedir(d);
          return found;
        },
        0s);
    ASSERT_TRUE(begun) << "the creator never started creating";
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 30000));
    ::kill(creator, SIGKILL);
    EXPECT_EQ(kids.wait(creator), 128 + SIGKILL);
    // Readers see either no segment or a complete one, never a half-built one.
    try {
      Segment s = Segment::open(seg.name(), ClientOptions{seg.dir()});
      EXPECT_EQ(s.info().state, SegmentState::kReady);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kNotFound) << e.what();
    }
    // The next writer cleans up and succeeds.
    auto w = open_derived(seg, 500'000);
    DIR* d = ::opendir(seg.dir().c_str());
    const std::string leftover = "." + seg.name() + ".creating.";
    while (dirent* e = ::readdir(d)) EXPECT_NE(std::string(e->d_name).rfind(leftover, 0), 0u) << e->d_name;
    ::closedir(d);
  }
}

}  // namespace
}  // namespace larder

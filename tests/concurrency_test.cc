// In-process concurrency: one writer thread and reader threads on ONE
// mapping, so that ThreadSanitizer (LARDER_SANITIZE=thread) can follow every
// access of the seqlock protocol. The cross-process versions of these tests
// are in process_test.cc.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "larder/client.h"
#include "larder/layout/segment_file.h"
#include "larder/layout/table_view.h"
#include "support/derived_rows.h"
#include "support/progress.h"
#include "support/test_segment.h"

namespace larder {
namespace {

using namespace std::chrono_literals;

// The minimum verified work of each test; it runs at least test_duration().
constexpr uint64_t kMinConsistentReads = 10000;
constexpr int64_t kMinWrites = 10000;

std::chrono::milliseconds test_duration() {
  const char* s = std::getenv("LARDER_TORTURE_SECONDS");
  return std::chrono::milliseconds(s != nullptr ? static_cast<int64_t>(std::atof(s) * 1000) : 1000);
}

// A reader over the writer's own mapping, through the same protocol the
// client uses.
struct SameMappingReader {
  explicit SameMappingReader(const void* base) {
    const layout::TableDescriptor& d = layout::table_descriptor(base, 0);
    geo = layout::table_geometry(base, d);
    for (uint32_t f = 0; f < d.field_count; ++f) {
      const layout::FieldDescriptor& fd = layout::field_descriptor(base, d, f);
      fields.push_back(Field{fd.index, static_cast<layout::FieldType>(fd.type), fd.count, fd.offset, ""});
    }
    words.resize(geo.copy_words());
  }
  layout::FindResult find(std::string_view key) {
    layout::PackedKey packed;
    packed.assign(key);
    return layout::find(geo, packed, layout::hash_key(key, geo.hash_seed), words.data(), 1 << 16);
  }
  RowView row() const { return RowView(words.data(), geo.validity_words, geo.key_words); }

  layout::TableGeometry geo;
  std::vector<Field> fields;
  std::vector<uint64_t> words;
};

TEST(Concurrency, ReadersNeverSeeATornRow) {
  testing::ScratchSegment seg;
  constexpr uint64_t kKeys = 64;  // few keys: readers and writer collide often
  auto writer =
      Writer::open(seg.name(), testing::one_table_schema(testing::derived_table(kKeys)), seg.writer_options());
  for (uint64_t k = 0; k < kKeys; ++k) ASSERT_EQ(testing::write_derived(*writer, k, 1), ApplyResult::kApplied);

  std::atomic<bool> stop{false};
  // `consistent` counts verified rows: a reader that only answers kBusy makes
  // no progress.
  std::atomic<uint64_t> reads{0}, consistent{0}, busy{0}, torn{0}, missing{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&, r] {
      SameMappingReader reader(writer->data());
      const auto f = testing::DerivedFields::in_order(reader.fields);
      std::mt19937_64 rng(r);
      uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {  // a thread-local stop flag; it guards no data
        const uint64_t k = rng() % kKeys;
        const std::string key = testing::derived_key(k);
        switch (reader.find(key)) {
          case layout::FindResult::kFound:
            if (testing::verify_derived(reader.row(), f, k, reader.row().event_time_ms())) {
              consistent.fetch_add(1, std::memory_order_relaxed);  // a progress counter; it guards no data
            } else {
              torn.fetch_add(1);
            }
            break;
          case layout::FindResult::kAbsent: missing.fetch_add(1); break;
          case layout::FindResult::kBusy: busy.fetch_add(1); break;
        }
        ++n;
      }
      reads.fetch_add(n);
    });
  }
  int64_t c = 2;
  const bool progressed =
      testing::run_until([&] { return consistent.load() >= kMinConsistentReads && c >= kMinWrites; }, test_duration(),
                         [&] {
                           for (uint64_t k = 0; k < kKeys; ++k) testing::write_derived(*writer, k, c++);
                         });
  stop = true;
  for (auto& t : readers) t.join();
  std::printf("reads %llu, consistent %llu, busy %llu, writes %lld\n", static_cast<unsigned long long>(reads.load()),
              static_cast<unsigned long long>(consistent.load()), static_cast<unsigned long long>(busy.load()),
              static_cast<long long>(c));
  EXPECT_TRUE(progressed) << "no progress within " << testing::kHangGuard.count() << " s";
  EXPECT_GE(consistent.load(), kMinConsistentReads) << "reads that found a verified row (kBusy is not one)";
  EXPECT_EQ(torn.load(), 0u);
  EXPECT_EQ(missing.load(), 0u);
}

TEST(Concurrency, ChurnNeverHidesAStableKey) {
  testing::ScratchSegment seg;
  layout::TableSpec spec = testing::derived_table(2000);
  spec.max_load_factor = 0.8;
  WriterOptions opts = seg.writer_options();
  opts.tombstone_retention_ms = 0;  // reclaim tombstones as fast as possible
  auto writer = Writer::open(seg.name(), testing::one_table_schema(spec), opts);
  constexpr uint64_t kStable = 200;
  for (uint64_t k = 0; k < kStable; ++k) ASSERT_EQ(testing::write_derived(*writer, k, 1), ApplyResult::kApplied);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0}, consistent{0}, busy{0}, misses{0}, wrong{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&, r] {
      SameMappingReader reader(writer->data());
      const auto f = testing::DerivedFields::in_order(reader.fields);
      std::mt19937_64 rng(100 + r);
      uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {  // a thread-local stop flag; it guards no data
        const uint64_t k = rng() % kStable;
        switch (reader.find(testing::derived_key(k))) {
          case layout::FindResult::kFound:
            if (testing::verify_derived(reader.row(), f, k, reader.row().event_time_ms())) {
              consistent.fetch_add(1, std::memory_order_relaxed);  // a progress counter; it guards no data
            } else {
              wrong.fetch_add(1);
            }
            break;
          case layout::FindResult::kAbsent: misses.fetch_add(1); break;
          case layout::FindResult::kBusy: busy.fetch_add(1); break;
        }
        // Keys that were never inserted must never be found.
        if (reader.find("never:" + std::to_string(rng() % 1000)) == layout::FindResult::kFound) wrong.fetch_add(1);
        n += 2;
      }
      reads.fetch_add(n);
    });
  }
  std::mt19937_64 rng(7);
  int64_t c = 2;
  uint64_t churned = 0;
  const bool progressed = testing::run_until(
      [&] { return consistent.load() >= kMinConsistentReads && churned >= static_cast<uint64_t>(kMinWrites); },
      test_duration(),
      [&] {
        // Insert and delete keys beyond the stable set, forcing long chains and
        // tombstone reuse and reclamation around the stable keys.
        const uint64_t k = kStable + rng() % 3000;
        if (rng() % 2 == 0) {
          testing::write_derived(*writer, k, c++);
        } else {
          writer->remove(0, testing::derived_key(k), c++);
        }
        if (++churned % 512 == 0) writer->maintain(4096);
      });
  stop = true;
  for (auto& t : readers) t.join();
  std::printf("reads %llu, consistent %llu, busy %llu, churn operations %llu\n",
              static_cast<unsigned long long>(reads.load()), static_cast<unsigned long long>(consistent.load()),
              static_cast<unsigned long long>(busy.load()), static_cast<unsigned long long>(churned));
  EXPECT_TRUE(progressed) << "no progress within " << testing::kHangGuard.count() << " s";
  EXPECT_GE(consistent.load(), kMinConsistentReads) << "reads that found a verified row (kBusy is not one)";
  EXPECT_EQ(misses.load(), 0u);
  EXPECT_EQ(wrong.load(), 0u);
}

}  // namespace
}  // namespace larder

// larder_bench_c_abi: the C ABI's row accessors for the event time, apply time
// and key (larder.h 1.1) against reading the same at the byte offsets that
// ABI 1.0 callers used (0, 8, the key length at 16 and larder_row_key_offset).
//
//   rows/offsets    three loads and a memcpy of the key per row
//   rows/accessors  larder_row_event_time_ms, larder_row_apply_unix_ns and
//                   larder_row_key per row (calls into the library, which
//                   check their arguments and the stored key length)
//   get/offsets, get/accessors
//                   larder_get of a key and then the same, so the accessors'
//                   cost is seen next to the read it follows
//
// 4,096 rows of a one-table segment, read once into caller buffers; the
// benchmarks cycle through them. LARDER_BENCH_DIR: tmpfs directory of the
// segment (default /dev/shm).
// It times the offset path against its replacement.
#define LARDER_ALLOW_DEPRECATED
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "larder/larder.h"
#include "larder/layout/schema.h"
#include "larder/writer/writer.h"

namespace {

constexpr size_t kRows = 4096;

struct Fixture {
  std::string dir;
  std::string name = "larder-bench-c-abi-" + std::to_string(::getpid());
  larder_segment* seg = nullptr;
  larder_table* table = nullptr;
  size_t row_words = 0;
  std::vector<std::string> keys;
  std::vector<uint64_t> rows;  // kRows filled row buffers
  uint32_t key_offset = 0;

  Fixture() {
    const char* d = std::getenv("LARDER_BENCH_DIR");
    dir = d != nullptr ? d : "/dev/shm";
    larder::layout::TableSpec t;
    t.name = "users";
    t.key_max_len = 24;
    t.capacity = kRows * 2;
    t.fields = {{"clicks", larder::layout::FieldType::kInt64, 1}, {"spend", larder::layout::FieldType::kFloat64, 1}};
    larder::layout::Schema schema;
    schema.tables = {t};
    larder::WriterOptions wo;
    wo.dir = dir;
    auto w = larder::Writer::open(name, schema, wo);
    const int64_t now = larder_now_unix_ms();
    for (size_t k = 0; k < kRows; ++k) {
      keys.push_back("user:" + std::to_string(k * 2654435761u % 100000000));
      const larder::FieldValue v[] = {larder::FieldValue::int64(0, static_cast<int64_t>(k)),
                                      larder::FieldValue::float64(1, static_cast<double>(k) * 0.5)};
      w->upsert(0, keys.back(), now, v);
    }
    w.reset();
    char err[256];
    if (larder_open(name.c_str(), dir.c_str(), &seg, err, sizeof err) != LARDER_E_OK ||
        larder_table_open(seg, "users", &table, err, sizeof err) != LARDER_E_OK) {
      std::fprintf(stderr, "larder_bench_c_abi: %s\n", err);
      std::exit(1);
    }
    row_words = larder_table_row_bytes(table) / 8;
    rows.assign(kRows * row_words, 0);
    for (size_t k = 0; k < kRows; ++k) {
      if (larder_get(table, keys[k].data(), keys[k].size(), row(k), 0).status != LARDER_OK) std::exit(1);
    }
    key_offset = larder_row_key_offset(table);
  }
  ~Fixture() {
    larder_table_close(table);
    larder_close(seg);
    ::unlink((dir + "/" + name).c_str());
    ::unlink((dir + "/" + name + ".lock").c_str());
  }
  uint64_t* row(size_t k) { return rows.data() + k * row_words; }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

// What an ABI 1.0 binding did: fixed offsets for the times and the key length.
int64_t offsets_path(const Fixture& f, const uint64_t* row, char* key, size_t* key_len) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(row);
  int64_t event, apply;
  uint32_t len;
  std::memcpy(&event, bytes + 0, 8);
  std::memcpy(&apply, bytes + 8, 8);
  std::memcpy(&len, bytes + 16, 4);
  if (len > 24) len = 24;
  std::memcpy(key, bytes + f.key_offset, len);
  *key_len = len;
  return event ^ apply;
}

int64_t accessors_path(const Fixture& f, const uint64_t* row, char* key, size_t* key_len) {
  const int64_t event = larder_row_event_time_ms(f.table, row);
  const int64_t apply = larder_row_apply_unix_ns(f.table, row);
  if (larder_row_key(f.table, row, key, 32, key_len) != LARDER_E_OK) *key_len = 0;
  return event ^ apply;
}

template <int64_t (*Path)(const Fixture&, const uint64_t*, char*, size_t*)>
void BM_Rows(benchmark::State& state) {
  Fixture& f = fixture();
  char key[32];
  size_t key_len = 0;
  size_t k = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(Path(f, f.row(k), key, &key_len));
    benchmark::DoNotOptimize(key_len);
    benchmark::ClobberMemory();
    k = (k + 1) % kRows;
  }
}
BENCHMARK(BM_Rows<offsets_path>)->Name("rows/offsets");
BENCHMARK(BM_Rows<accessors_path>)->Name("rows/accessors");

template <int64_t (*Path)(const Fixture&, const uint64_t*, char*, size_t*)>
void BM_Get(benchmark::State& state) {
  Fixture& f = fixture();
  std::vector<uint64_t> row(f.row_words);
  char key[32];
  size_t key_len = 0;
  size_t k = 0;
  for (auto _ : state) {
    const std::string& key_in = f.keys[k];
    const larder_read_result r = larder_get(f.table, key_in.data(), key_in.size(), row.data(), 0);
    benchmark::DoNotOptimize(r);
    benchmark::DoNotOptimize(Path(f, row.data(), key, &key_len));
    benchmark::ClobberMemory();
    k = (k + 1) % kRows;
  }
}
BENCHMARK(BM_Get<offsets_path>)->Name("get/offsets");
BENCHMARK(BM_Get<accessors_path>)->Name("get/accessors");

}  // namespace

BENCHMARK_MAIN();

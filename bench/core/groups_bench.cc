// larder_bench_groups: what field groups cost a reader, against the same
// fields without groups, in the same run and the same segment.
//
//   <shape>/plain/get          Table::get of a random present key whose row
//   <shape>/grouped/get        says which key to read next (a dependent
//                              chain: every read pays its own cache misses),
//                              latency percentiles as in larder_bench_core.
//   <shape>/grouped/get_bound  the same with a per-group max age
//                              (ReadOptions::group_max_age, one group).
//   <shape>/plain/get_many     Table::get_many of 64 random keys (per key:
//   <shape>/grouped/get_many   time / 64).
//
// Shapes: "fits" has 4 float64 fields, whose grouped slot (3 group words)
// keeps the plain slot's 128 bytes; "spills" has 6, whose grouped slot grows
// from 128 to 192 bytes (one more cache line per read: the worst case of the
// padding). Groups: profile (1 field), activity (the rest but one), default
// (one field).
//
// Knobs (environment): LARDER_BENCH_DIR (tmpfs directory, default /dev/shm),
// LARDER_GROUPS_KEYS (keys per table, default 500000).
// See docs/performance.md, "Field groups".
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
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

uint64_t table_keys() {
  const char* k = std::getenv("LARDER_GROUPS_KEYS");
  return k != nullptr ? std::strtoull(k, nullptr, 10) : 500'000;
}

layout::TableSpec shape(const std::string& name, uint32_t fields, bool grouped, uint64_t keys) {
  layout::TableSpec t;
  t.name = name;
  t.key_max_len = kKeyMaxLen;
  t.capacity = keys;
  for (uint32_t f = 0; f < fields; ++f) {
    std::string group;
    if (grouped) group = f == 1 ? "profile" : f + 1 == fields ? "" : "activity";
    t.fields.push_back(layout::FieldSpec{"f" + std::to_string(f), layout::FieldType::kFloat64, 1, group});
  }
  return t;
}

struct Segments {
  std::string name = "larder-bench-groups-" + std::to_string(::getpid());
  uint64_t keys = table_keys();
  std::unique_ptr<Writer> writer;
  Segment segment;

  Segments() {
    layout::Schema schema;
    for (const auto& [shape_name, fields] : {std::pair{"fits", 4u}, std::pair{"spills", 6u}}) {
      schema.tables.push_back(shape(std::string(shape_name) + "_plain", fields, false, keys));
      schema.tables.push_back(shape(std::string(shape_name) + "_grouped", fields, true, keys));
    }
    WriterOptions wo;
    wo.dir = bench_dir();
    writer = Writer::open(name, schema, wo);
    const std::vector<uint32_t> chain = make_chain(keys, 7);
    const int64_t now = now_unix_ms();
    for (uint32_t t = 0; t < schema.tables.size(); ++t) {
      const uint32_t fields = static_cast<uint32_t>(schema.tables[t].fields.size());
      const bool grouped = t % 2 == 1;
      double row[8];
      for (uint64_t i = 0; i < keys; ++i) {
        fill_row(i, chain[i], fields, row);
        std::vector<FieldValue> values;
        for (uint32_t f = 0; f < fields; ++f) values.push_back(FieldValue::float64(f, row[f]));
        const std::string key = key_string(i);
        if (grouped) {
          // Each cadence with its own time: profile (f1) an hour ago, the
          // others now.
          writer->upsert(t, key, now - 3'600'000, std::span(values).subspan(1, 1));
          std::vector<FieldValue> rest = values;
          rest.erase(rest.begin() + 1);
          writer->upsert(t, key, now, rest);
        } else {
          writer->upsert(t, key, now, values);
        }
      }
    }
    segment = Segment::open(name, ClientOptions{bench_dir()});
  }
  ~Segments() {
    writer.reset();
    std::remove((bench_dir() + "/" + name).c_str());
    std::remove((bench_dir() + "/" + name + ".lock").c_str());
  }
};

Segments& segments() {
  static Segments s;
  return s;
}

uint64_t next_of(double v) { return static_cast<uint64_t>(v); }

void get_chain(benchmark::State& state, const std::string& table, bool bound) {
  Segments& s = segments();
  const Table t = s.segment.table(table);
  const Field next = t.field("f0");
  Row row = t.make_row();
  GroupMaxAge bounds[1];
  ReadOptions options;
  if (bound) {
    bounds[0] = {t.group("activity").index, 86'400'000};
    options.group_max_age = bounds;
  }
  dependent_loop(state, s.keys, 11, [&](std::string_view key) -> uint64_t {
    return t.get(key, row, options).ok() ? next_of(row.f64(next)) : s.keys;
  });
}

void get_many(benchmark::State& state, const std::string& table) {
  Segments& s = segments();
  const Table t = s.segment.table(table);
  constexpr size_t kBatch = 64;
  RowBatch batch = t.make_batch(kBatch);
  ReadResult results[kBatch];
  KeyBuf keys[kBatch];
  std::string_view views[kBatch];
  Rng rng(13);
  uint64_t missing = 0;
  for (auto _ : state) {
    for (size_t i = 0; i < kBatch; ++i) {
      format_key(rng.below(s.keys), keys[i]);
      views[i] = keys[i].view();
    }
    t.get_many(views, batch, results);
    for (size_t i = 0; i < kBatch; ++i) missing += !results[i].ok();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
  if (missing != 0) state.SkipWithError("some keys were not found");
}

void register_all() {
  for (const char* shape_name : {"fits", "spills"}) {
    const std::string sh = shape_name;
    benchmark::RegisterBenchmark((sh + "/plain/get").c_str(),
                                 [sh](benchmark::State& st) { get_chain(st, sh + "_plain", false); });
    benchmark::RegisterBenchmark((sh + "/grouped/get").c_str(),
                                 [sh](benchmark::State& st) { get_chain(st, sh + "_grouped", false); });
    benchmark::RegisterBenchmark((sh + "/grouped/get_bound").c_str(),
                                 [sh](benchmark::State& st) { get_chain(st, sh + "_grouped", true); });
    benchmark::RegisterBenchmark((sh + "/plain/get_many").c_str(),
                                 [sh](benchmark::State& st) { get_many(st, sh + "_plain"); });
    benchmark::RegisterBenchmark((sh + "/grouped/get_many").c_str(),
                                 [sh](benchmark::State& st) { get_many(st, sh + "_grouped"); });
  }
}

}  // namespace
}  // namespace larder::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  larder::bench::register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

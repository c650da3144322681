// Microbenchmarks of the sidecar's per-message work without a broker
// (Google Benchmark): decoding message format v1 (consumer thread) and
// applying decoded batches through larder::Writer (writer thread). They show
// which side bounds the pipeline; larder-bench-sidecar measures the whole.
// Single-threaded.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <string>
#include <vector>

#include <fmt/format.h>

#include "decoder.h"
#include "larder/layout/writer.h"
#include "writer_thread.h"

namespace {

using larder::layout::FieldType;

larder::layout::Schema bench_schema() {
  larder::layout::Schema s;
  larder::layout::TableSpec t;
  t.name = "t";
  t.key_max_len = 32;
  t.capacity = 200000;
  t.fields = {{"n", FieldType::kInt64, 1}, {"x", FieldType::kFloat64, 1}, {"v", FieldType::kFloat32Vector, 4}};
  s.tables.push_back(t);
  return s;
}

std::string message(int updates, int64_t first) {
  std::string b = updates > 1 ? "[" : "";
  for (int j = 0; j < updates; ++j) {
    const int64_t i = first + j;
    b += fmt::format(R"({}{{"table":"t","key":"k{}","event_time":{},"fields":{{"n":{},"x":{},"v":[{},0.5,-1,2]}}}})",
                     j ? "," : "", i % 100000, 1'700'000'000'000 + i, i, static_cast<double>(i) * 0.5, i % 100);
  }
  return updates > 1 ? b + "]" : b;
}

void BM_Decode(benchmark::State& state) {
  const int updates = static_cast<int>(state.range(0));
  larder::sidecar::Decoder decoder(bench_schema(), {});
  larder::sidecar::DecodedBatch batch;
  const std::string body = message(updates, 0);
  for (auto _ : state) {
    auto r = decoder.decode(body, batch);
    benchmark::DoNotOptimize(r.ok);
  }
  state.SetItemsProcessed(state.iterations() * updates);
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(body.size()));
}
BENCHMARK(BM_Decode)->Arg(1)->Arg(100);

void BM_Apply(benchmark::State& state) {
  const int updates = static_cast<int>(state.range(0));
  const std::string name = fmt::format("larder-bench-apply-{}", ::getpid());
  larder::Writer::remove_segment(name);
  auto writer = larder::Writer::open(name, bench_schema());
  larder::sidecar::Decoder decoder(bench_schema(), {});
  std::vector<larder::sidecar::DecodedBatch> batches(1000);
  for (size_t m = 0; m < batches.size(); ++m) decoder.decode(message(updates, static_cast<int64_t>(m) * updates), batches[m]);
  size_t m = 0;
  uint64_t stale = 0;
  larder::sidecar::RejectReason reason;
  for (auto _ : state) {
    benchmark::DoNotOptimize(larder::sidecar::apply_batch(*writer, batches[m], &reason, &stale));
    m = (m + 1) % batches.size();
  }
  state.SetItemsProcessed(state.iterations() * updates);
  writer.reset();
  larder::Writer::remove_segment(name);
}
BENCHMARK(BM_Apply)->Arg(1)->Arg(100);

}  // namespace

BENCHMARK_MAIN();

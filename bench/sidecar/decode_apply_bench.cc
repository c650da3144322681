// Microbenchmarks of the sidecar's per-message work without a broker
// (Google Benchmark): decoding message format v1 (consumer thread) and
// applying decoded batches through larder::Writer (writer thread). They show
// which side bounds the pipeline; larder-bench-sidecar measures the whole.
// Single-threaded.
#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <google/protobuf/compiler/importer.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/text_format.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "apply/writer_thread.h"
#include "decode/decoder.h"
#include "decode/message_decoder.h"
#include "larder/layout/clock.h"
#include "larder/writer/writer.h"
#include "observe/metrics.h"
#include "sidecar/format_test_schema.h"

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

// The Config defaults: every message passes the event-time bounds check.
std::vector<larder::sidecar::TableDecodeOptions> bench_options() {
  std::vector<larder::sidecar::TableDecodeOptions> o(1);
  o[0].event_time = {larder::sidecar::kDefaultMaxFutureSkewMs, larder::sidecar::kDefaultMinEventTimeMs};
  return o;
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
  larder::sidecar::Decoder decoder(bench_schema(), bench_options());
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

// BM_Decode plus what the consumer thread records per delivery for /metrics:
// two clock reads, a histogram observation and the counters.
void BM_DecodeWithMetrics(benchmark::State& state) {
  const int updates = static_cast<int>(state.range(0));
  larder::sidecar::Decoder decoder(bench_schema(), bench_options());
  larder::sidecar::DecodedBatch batch;
  larder::sidecar::SidecarMetrics metrics;
  const std::string body = message(updates, 0);
  for (auto _ : state) {
    metrics.messages_received.add();
    const int64_t t0 = larder::layout::now_mono_ns();
    auto r = decoder.decode(body, batch);
    const int64_t t1 = larder::layout::now_mono_ns();
    metrics.decode_seconds.observe_ns(t1 - t0);
    if (metrics.work_enqueued.value() == metrics.work_done.value_acquire()) metrics.backlog_start_mono_ns.set(t1);
    metrics.work_enqueued.add_release();
    benchmark::DoNotOptimize(r.ok);
  }
  state.SetItemsProcessed(state.iterations() * updates);
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(body.size()));
}
BENCHMARK(BM_DecodeWithMetrics)->Arg(1)->Arg(100);

void BM_Apply(benchmark::State& state) {
  const int updates = static_cast<int>(state.range(0));
  const std::string name = fmt::format("larder-bench-apply-{}", ::getpid());
  larder::Writer::remove_segment(name);
  auto writer = larder::Writer::open(name, bench_schema());
  larder::sidecar::Decoder decoder(bench_schema(), bench_options());
  std::vector<larder::sidecar::DecodedBatch> batches(1000);
  for (size_t m = 0; m < batches.size(); ++m)
    decoder.decode(message(updates, static_cast<int64_t>(m) * updates), batches[m]);
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

// Decode + apply per update of the fields an exported scikit-learn pipeline
// gives (larder.sklearn, the shape of examples/sklearn_pipeline.py: impute
// and standardize, bins one-hot, categories one-hot, standardize), against
// the same members stored without transforms. First arg 0: plain, 1:
// transformed; second arg 1: decode and apply, 0: decode only. 100 updates a
// message, 100,000 keys.
larder::layout::Schema pipeline_schema(bool transformed) {
  larder::layout::Schema s;
  larder::layout::TableSpec t;
  t.name = "t";
  t.key_max_len = 32;
  t.capacity = 200000;
  if (transformed) {
    t.fields = {{"amount", FieldType::kFloat64, 1},
                {"hour", FieldType::kFloat32Vector, 6},
                {"country", FieldType::kFloat32Vector, 4},
                {"risk", FieldType::kFloat64, 1}};
  } else {
    t.fields = {{"amount", FieldType::kFloat64, 1},
                {"hour", FieldType::kFloat64, 1},
                {"country", FieldType::kString, 4},
                {"risk", FieldType::kFloat64, 1}};
  }
  s.tables.push_back(t);
  return s;
}

std::vector<larder::sidecar::TableDecodeOptions> pipeline_options(bool transformed) {
  std::vector<larder::sidecar::TableDecodeOptions> o = bench_options();
  if (!transformed) return o;
  using larder::sidecar::TransformChain;
  o[0].fields.resize(4);
  o[0].fields[0].transform =
      TransformChain::parse_yaml("[{impute: {value: 33.115}}, {standardize: {mean: 52.61907, std: 61.20934}}]");
  o[0].fields[1].transform = TransformChain::parse_yaml(
      "[{bucketize: {boundaries: [3.8333, 7.6667, 11.5, 15.3333, 19.1667]}}, "
      "{one_hot: {categories: [0, 1, 2, 3, 4, 5], handle_unknown: ignore}}]");
  o[0].fields[2].transform =
      TransformChain::parse_yaml("[{one_hot: {categories: [BR, DE, FR, US], handle_unknown: ignore}}]");
  o[0].fields[3].transform = TransformChain::parse_yaml("[{standardize: {mean: 0.2, std: 0.12}}]");
  return o;
}

std::string pipeline_message(int updates, int64_t first) {
  static const char* const kCountries[] = {"US", "DE", "FR", "BR", "JP"};
  std::string b = "[";
  for (int j = 0; j < updates; ++j) {
    const int64_t i = first + j;
    const std::string amount = i % 20 == 0 ? "null" : fmt::format("{}", static_cast<double>(i % 997) * 0.37);
    b += fmt::format(
        R"({}{{"table":"t","key":"k{}","event_time":{},"fields":{{"amount":{},"hour":{},"country":"{}","risk":{}}}}})",
        j ? "," : "", i % 100000, 1'700'000'000'000 + i, amount, i % 24, kCountries[i % 5],
        static_cast<double>(i % 101) / 101);
  }
  return b + "]";
}

void BM_DecodeApplyPipeline(benchmark::State& state) {
  const bool transformed = state.range(0) != 0;
  const bool apply = state.range(1) != 0;
  constexpr int kUpdates = 100;
  const std::string name = fmt::format("larder-bench-pipeline-{}", ::getpid());
  larder::Writer::remove_segment(name);
  const larder::layout::Schema schema = pipeline_schema(transformed);
  auto writer = larder::Writer::open(name, schema);
  larder::sidecar::Decoder decoder(schema, pipeline_options(transformed));
  std::vector<std::string> bodies;
  for (int64_t m = 0; m < 1000; ++m) {
    // The plain table stores the amount as it comes: it cannot take a null.
    std::string body = pipeline_message(kUpdates, m * kUpdates);
    if (!transformed) {
      for (size_t at = body.find("\"amount\":null"); at != std::string::npos; at = body.find("\"amount\":null")) {
        body.replace(at, 13, "\"amount\":0");
      }
    }
    bodies.push_back(std::move(body));
  }
  larder::sidecar::DecodedBatch batch;
  size_t m = 0;
  uint64_t stale = 0;
  larder::sidecar::RejectReason reason;
  for (auto _ : state) {
    const larder::sidecar::DecodeResult r = decoder.decode(bodies[m], batch);
    if (!r.ok) {
      state.SkipWithError(r.detail.c_str());
      break;
    }
    if (apply) benchmark::DoNotOptimize(larder::sidecar::apply_batch(*writer, batch, &reason, &stale));
    m = (m + 1) % bodies.size();
  }
  state.SetItemsProcessed(state.iterations() * kUpdates);
  state.SetLabel(std::string(transformed ? "exported pipeline" : "same members, no transforms") +
                 (apply ? "" : ", decode only"));
  writer.reset();
  larder::Writer::remove_segment(name);
}
BENCHMARK(BM_DecodeApplyPipeline)->Args({0, 1})->Args({1, 1})->Args({0, 0})->Args({1, 0});

// BM_Apply plus what the writer thread records per message for /metrics: a
// clock read per message (the wall clock once per bulk of up to 64), the
// apply-duration histogram, the lag histogram per applied update, counters.
// Same messages as BM_Apply, so the two compare directly (after the first
// pass over the 1000 messages their updates are stale, and the lag histogram
// is skipped: BM_HistogramObserve prices one observation).
void BM_ApplyWithMetrics(benchmark::State& state) {
  const int updates = static_cast<int>(state.range(0));
  const std::string name = fmt::format("larder-bench-apply-m-{}", ::getpid());
  larder::Writer::remove_segment(name);
  auto writer = larder::Writer::open(name, bench_schema());
  larder::sidecar::Decoder decoder(bench_schema(), bench_options());
  larder::sidecar::SidecarMetrics metrics;
  std::vector<larder::sidecar::DecodedBatch> batches(1000);
  for (size_t m = 0; m < batches.size(); ++m)
    decoder.decode(message(updates, static_cast<int64_t>(m) * updates), batches[m]);
  size_t m = 0;
  uint64_t stale = 0, applied = 0;
  larder::sidecar::RejectReason reason;
  int64_t t0 = larder::layout::now_mono_ns();
  larder::sidecar::LagRecorder lag{&metrics.visible_lag_seconds, larder::layout::now_unix_ns() / 1'000'000};
  for (auto _ : state) {
    if (m % 64 == 0) lag.now_unix_ms = larder::layout::now_unix_ns() / 1'000'000;
    benchmark::DoNotOptimize(larder::sidecar::apply_batch(*writer, batches[m], &reason, &stale, &applied, &lag));
    const int64_t t1 = larder::layout::now_mono_ns();
    metrics.apply_seconds.observe_ns(t1 - t0);
    t0 = t1;
    metrics.messages_applied.add();
    metrics.work_done.add_release();
    m = (m + 1) % batches.size();
  }
  state.SetItemsProcessed(state.iterations() * updates);
  writer.reset();
  larder::Writer::remove_segment(name);
}
BENCHMARK(BM_ApplyWithMetrics)->Arg(1)->Arg(100);

// One observation into an 18-bucket histogram (the lag histogram's size),
// values spread over the buckets.
void BM_HistogramObserve(benchmark::State& state) {
  larder::sidecar::SidecarMetrics metrics;
  int64_t v = 1;
  for (auto _ : state) {
    metrics.visible_lag_seconds.observe_ns(v);
    v = v < 4'000'000'000'000 ? v * 3 : 1;
  }
  benchmark::DoNotOptimize(metrics.visible_lag_seconds.snapshot().sum_s);
}
BENCHMARK(BM_HistogramObserve);

// Decode + apply of the same logical updates in each message format (JSON v1,
// Protocol Buffers, Avro), with the schema files of the format tests
// (tests/sidecar/formats/): per update, six fields of every type (int64,
// float64, float32, bool, string, a 3-float vector). Arg 0: the format
// (0 JSON, 1 Protobuf, 2 Avro); arg 1: updates per message.
namespace formats {

namespace ft = larder::sidecar::format_test;
const std::string kDir = std::string(LARDER_SOURCE_DIR) + "/tests/sidecar/formats";

larder::layout::Schema schema() {
  larder::layout::Schema s = ft::schema();
  s.tables[0].capacity = 200000;
  return s;
}

struct Update {
  int64_t i;
  int64_t keys = 100000;
  std::string key() const { return fmt::format("u{}", i % keys); }
  int64_t time() const { return 1'700'000'000'000 + i; }
  double ctr() const { return static_cast<double>(i) * 0.5; }
  float score() const { return static_cast<float>(i % 1000) * 0.25f; }
  float e0() const { return static_cast<float>(i % 100); }
};

std::string json(const std::vector<Update>& us) {
  std::string b = us.size() > 1 ? "[" : "";
  for (size_t j = 0; j < us.size(); ++j) {
    const Update& u = us[j];
    b += fmt::format(R"({}{{"table":"users","key":"{}","event_time":{},"fields":{{"clicks":{},"ctr":{},"score":{},)"
                     R"("premium":{},"country":"DE","embedding":[{},0.5,-1]}}}})",
                     j ? "," : "", u.key(), u.time(), u.i, u.ctr(), u.score(), u.i % 2 ? "true" : "false", u.e0());
  }
  return us.size() > 1 ? b + "]" : b;
}

class Proto {
 public:
  Proto() {
    tree_.MapPath("", kDir);
    importer_ = std::make_unique<google::protobuf::compiler::Importer>(&tree_, nullptr);
    importer_->Import("features.proto");
  }
  std::string encode(const std::vector<Update>& us) {
    std::string text;
    for (const Update& u : us) {
      text += fmt::format(
          R"({}{{ table: "users" key: "{}" event_time: {} fields {{ clicks: {} ctr: {} score: {} premium: {} )"
          R"(country: "DE" embedding: [{}, 0.5, -1] }} }})",
          us.size() > 1 ? "updates " : "", u.key(), u.time(), u.i, u.ctr(), u.score(), u.i % 2 ? "true" : "false",
          u.e0());
    }
    if (us.size() == 1) text = text.substr(1, text.size() - 2);  // one Update: its members only
    const auto* d =
        importer_->pool()->FindMessageTypeByName(us.size() > 1 ? "larder.test.Batch" : "larder.test.Update");
    std::unique_ptr<google::protobuf::Message> m(factory_.GetPrototype(d)->New());
    google::protobuf::TextFormat::ParseFromString(text, m.get());
    return m->SerializeAsString();
  }

 private:
  google::protobuf::compiler::DiskSourceTree tree_;
  std::unique_ptr<google::protobuf::compiler::Importer> importer_;
  google::protobuf::DynamicMessageFactory factory_;
};

std::string avro(const std::vector<Update>& us) {
  ft::AvroWriter w;
  if (us.size() > 1) w.lng(static_cast<int64_t>(us.size()));
  for (const Update& u : us) {
    const double ctr = u.ctr();
    const float score = u.score();
    const bool premium = u.i % 2;
    ft::AvroUpdate a;
    a.key = u.key();
    a.event_time = u.time();
    a.clicks = &u.i;
    a.ctr = &ctr;
    a.score = &score;
    a.premium = &premium;
    a.country = "DE";
    a.embedding = {u.e0(), 0.5f, -1};
    a.write(w);
  }
  if (us.size() > 1) w.lng(0);
  return w.out;
}

// `keys`: the updates cycle over that many keys (the table holds 200,000).
// `huge`: the segment on 2 MiB pages (HugePages::kCollapse), else as the
// directory's mount gives it (4 KiB pages on a plain /dev/shm).
void decode_apply_format(benchmark::State& state, int64_t keys, bool huge) {
  const int format = static_cast<int>(state.range(0));
  const int updates = static_cast<int>(state.range(1));
  larder::sidecar::FormatConfig config;
  if (format == 1) config = ft::protobuf(kDir, updates > 1 ? "larder.test.Batch" : "larder.test.Update");
  if (format == 2) config = ft::avro(kDir, updates > 1 ? "batch.avsc" : "update.avsc");
  auto decoder = larder::sidecar::make_message_decoder(schema(), ft::options(), config);
  Proto proto;
  // Each key once per cycle of the bodies: a key's update in the next cycle
  // carries the same event time, a tie the later call wins, so every update
  // is applied (none stale).
  std::vector<std::string> bodies(static_cast<size_t>(std::clamp<int64_t>(keys / updates, 1, 1000)));
  for (size_t m = 0; m < bodies.size(); ++m) {
    std::vector<Update> us;
    for (int j = 0; j < updates; ++j) us.push_back(Update{static_cast<int64_t>(m) * updates + j, keys});
    bodies[m] = format == 0 ? json(us) : format == 1 ? proto.encode(us) : avro(us);
  }
  const std::string name = fmt::format("larder-bench-formats-{}", ::getpid());
  larder::Writer::remove_segment(name);
  larder::WriterOptions options;
  if (huge) options.huge_pages = larder::HugePages::kCollapse;
  auto writer = larder::Writer::open(name, schema(), options);
  larder::sidecar::DecodedBatch batch;
  size_t m = 0, bytes = 0;
  uint64_t stale = 0;
  larder::sidecar::RejectReason reason;
  for (auto _ : state) {
    const larder::sidecar::DecodeResult r = decoder->decode(bodies[m], batch);
    if (!r.ok) {
      state.SkipWithError(r.detail.c_str());
      break;
    }
    benchmark::DoNotOptimize(larder::sidecar::apply_batch(*writer, batch, &reason, &stale));
    bytes += bodies[m].size();
    m = (m + 1) % bodies.size();
  }
  state.SetItemsProcessed(state.iterations() * updates);
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
  state.counters["stale"] = static_cast<double>(stale) / static_cast<double>(state.iterations() * updates);
  std::string label = format == 0 ? "json" : format == 1 ? "protobuf" : "avro";
  if (huge) label += ", " + larder::layout::describe(writer->huge_pages());
  state.SetLabel(label);
  writer.reset();
  larder::Writer::remove_segment(name);
}

// 100,000 random keys of a 34 MB table: every update's slot is a cache and
// TLB miss.
void BM_DecodeApplyFormat(benchmark::State& state) { decode_apply_format(state, 100000, false); }
BENCHMARK(BM_DecodeApplyFormat)->ArgsProduct({{0, 1, 2}, {1, 100}});

// The same on 2 MiB pages: the slot is still a cache miss, its page walk
// mostly not.
void BM_DecodeApplyFormatHugePages(benchmark::State& state) { decode_apply_format(state, 100000, true); }
BENCHMARK(BM_DecodeApplyFormatHugePages)->ArgsProduct({{0, 1, 2}, {1, 100}});

// 1,000 keys: their slots stay in the caches, so the apply is the writer's
// own work (hash, probe, undo copy, seqlocked stores, counters).
void BM_DecodeApplyFormatCached(benchmark::State& state) { decode_apply_format(state, 1000, false); }
BENCHMARK(BM_DecodeApplyFormatCached)->ArgsProduct({{0, 1, 2}, {1, 100}});

// Decode alone, same messages: what the format itself costs.
void BM_DecodeFormat(benchmark::State& state) {
  const int format = static_cast<int>(state.range(0));
  const int updates = static_cast<int>(state.range(1));
  larder::sidecar::FormatConfig config;
  if (format == 1) config = ft::protobuf(kDir, updates > 1 ? "larder.test.Batch" : "larder.test.Update");
  if (format == 2) config = ft::avro(kDir, updates > 1 ? "batch.avsc" : "update.avsc");
  auto decoder = larder::sidecar::make_message_decoder(schema(), ft::options(), config);
  Proto proto;
  std::vector<Update> us;
  for (int j = 0; j < updates; ++j) us.push_back(Update{j});
  const std::string body = format == 0 ? json(us) : format == 1 ? proto.encode(us) : avro(us);
  larder::sidecar::DecodedBatch batch;
  for (auto _ : state) {
    auto r = decoder->decode(body, batch);
    benchmark::DoNotOptimize(r.ok);
  }
  state.SetItemsProcessed(state.iterations() * updates);
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(body.size()));
  state.SetLabel(format == 0 ? "json" : format == 1 ? "protobuf" : "avro");
}
BENCHMARK(BM_DecodeFormat)->ArgsProduct({{0, 1, 2}, {1, 100}});

}  // namespace formats

}  // namespace

BENCHMARK_MAIN();

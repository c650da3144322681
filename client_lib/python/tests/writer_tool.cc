// larder-test-writer: writes segments for the Python client's tests and
// benchmark with the C++ writer, and times the C++ client for comparison.
//
//   larder-test-writer write --segment NAME --dir DIR [--schema demo|rows|cards|groups]
//                            [--rows N] [--seed S] [--age-step-ms MS]
//                            [--stopped-ms MS]
//   larder-test-writer churn --segment NAME --dir DIR --rows N --seconds S
//   larder-test-writer grow --segment NAME --dir DIR --rows N
//   larder-test-writer sync --segment NAME --dir DIR [--seed STATE]
//   larder-test-writer bench --segment NAME --dir DIR [--table users]
//                            [--rows N] [--batch 256] [--iters I] [--seed S]
//
// write, schema "demo": the tables of examples/demo.yaml. users u000001..
// and items i00001.. get values that client_lib/python/tests/expected.py
// recomputes from (k, seed); some fields are left unwritten on purpose. Event
// time of key k is now - (k % 10) * age_step_ms.
// write, schema "cards": table "cards" with a plain credit_limit, a string
// network and an aggregate txn_24h (count over 24 h). card:1's one
// transaction is two hours before the writer's last refresh, card:2's at it;
// that refresh is --stopped-ms (default 0) before now, as if the writer had
// stopped then.
// write, schema "rows" / churn: table "rows" of tests/support/derived_rows.h,
// every field derived from one counter so a torn row is detectable. churn
// fills keys key:0..N-1, prints "ready" and rewrites them round-robin with an
// ever-increasing counter for S seconds (or until SIGTERM), then prints
// "done WRITES".
// write, schema "groups": table "cards" with field groups (profile:
// credit_limit; activity: last_amount, tx_count; default: country), rows whose
// group times are --at-ms (default now) minus the offsets in write_grouped_cards():
// older updates of one group applied after newer ones of the other, and a
// delete between two groups' times.
// grow: fills keys key:0..N-1 of table "rows" (as churn), prints "ready",
// waits for a line on stdin (the reader has mapped generation 0), then
// switches generations three times while rewriting the keys round-robin
// with an ever-increasing counter: the capacity x2, x2 again, then a new
// int64 field "extra" at the end. Then it writes key:N (only the last
// generation has it), prints "done GENERATION" and exits.
// sync: on a "demo" segment, stores the source id "amqp / stream
// features.stream", sync state --seed (a SyncState number, default 1:
// catching up), partition 0 at offset 1234 with 2 updates applied and target
// 5000, partition 1 with first retained offset 77.
// bench: random keys of the "demo" schema: Table::get, Table::get_many of
// --batch keys and the C ABI's larder_gather; prints one JSON line with
// nanoseconds per call (best block and mean).
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "larder/client.h"
#include "larder/larder.h"
#include "larder/layout/schema.h"
#include "larder/writer/writer.h"
#include "support/derived_rows.h"

namespace {

using larder::FieldValue;
using larder::layout::FieldType;

struct Args {
  std::string command;
  std::string segment;
  std::string dir = "/dev/shm";
  std::string schema = "demo";
  std::string table = "users";
  uint64_t rows = 1000;
  int64_t seed = 1;
  int64_t age_step_ms = 60'000;
  int64_t stopped_ms = 0;
  double seconds = 1.0;
  size_t batch = 256;
  uint64_t iters = 20000;
  int64_t at_ms = 0;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(
      stderr,
      "larder-test-writer: %s\n"
      "usage: larder-test-writer write|churn|bench --segment NAME [--dir DIR] [--schema demo|rows|cards|groups]\n"
      "       [--rows N] [--seed S] [--age-step-ms MS] [--stopped-ms MS] [--seconds S] [--table T]\n"
      "       [--batch B] [--iters I]\n",
      why);
  std::exit(2);
}

Args parse(int argc, char** argv) {
  if (argc < 2) usage("missing command");
  Args a;
  a.command = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (i + 1 >= argc) usage("flag without a value");
    const char* v = argv[++i];
    if (flag == "--segment")
      a.segment = v;
    else if (flag == "--dir")
      a.dir = v;
    else if (flag == "--schema")
      a.schema = v;
    else if (flag == "--table")
      a.table = v;
    else if (flag == "--rows")
      a.rows = std::strtoull(v, nullptr, 10);
    else if (flag == "--seed")
      a.seed = std::strtoll(v, nullptr, 10);
    else if (flag == "--age-step-ms")
      a.age_step_ms = std::strtoll(v, nullptr, 10);
    else if (flag == "--stopped-ms")
      a.stopped_ms = std::strtoll(v, nullptr, 10);
    else if (flag == "--seconds")
      a.seconds = std::strtod(v, nullptr);
    else if (flag == "--batch")
      a.batch = std::strtoull(v, nullptr, 10);
    else if (flag == "--iters")
      a.iters = std::strtoull(v, nullptr, 10);
    else if (flag == "--at-ms")
      a.at_ms = std::strtoll(v, nullptr, 10);
    else
      usage("unknown flag");
  }
  if (a.segment.empty()) usage("--segment is required");
  return a;
}

// The tables of examples/demo.yaml, same names, types and capacities.
larder::layout::Schema demo_schema() {
  larder::layout::TableSpec users;
  users.name = "users";
  users.key_max_len = 32;
  users.capacity = 20000;
  users.fields = {{"clicks_1h", FieldType::kInt64, 1},
                  {"spend_usd", FieldType::kFloat64, 1},
                  {"is_premium", FieldType::kBool, 1},
                  {"country", FieldType::kString, 8},
                  {"embedding", FieldType::kFloat32Vector, 16}};
  larder::layout::TableSpec items;
  items.name = "items";
  items.key_max_len = 32;
  items.capacity = 5000;
  items.fields = {
      {"price", FieldType::kFloat64, 1}, {"ctr", FieldType::kFloat32, 1}, {"category", FieldType::kString, 16}};
  larder::layout::Schema s;
  s.tables = {users, items};
  return s;
}

std::string user_key(uint64_t k) {
  char b[24];
  std::snprintf(b, sizeof b, "u%06llu", static_cast<unsigned long long>(k));
  return b;
}
std::string item_key(uint64_t k) {
  char b[24];
  std::snprintf(b, sizeof b, "i%05llu", static_cast<unsigned long long>(k));
  return b;
}

// Keep in step with client_lib/python/tests/expected.py.
void write_demo(larder::Writer& w, const Args& a) {
  static const char* const kCountries[] = {"SE", "US", "DE", "FR", "JP"};
  const int64_t now = larder::now_unix_ms();
  for (uint64_t k = 1; k <= std::min<uint64_t>(a.rows, 20000); ++k) {
    const int64_t t = now - static_cast<int64_t>(k % 10) * a.age_step_ms;
    float emb[16];
    for (uint32_t i = 0; i < 16; ++i) emb[i] = static_cast<float>(k % 1000) / 8.0f + static_cast<float>(i) * 0.5f;
    std::vector<FieldValue> v;
    v.push_back(FieldValue::int64(0, static_cast<int64_t>((k * 7 + static_cast<uint64_t>(a.seed)) % 1000)));
    if (k % 13 != 0) v.push_back(FieldValue::float64(1, static_cast<double>(k) * 0.25 + static_cast<double>(a.seed)));
    v.push_back(FieldValue::boolean(2, k % 3 == 0));
    if (k % 11 != 0) v.push_back(FieldValue::string(3, kCountries[k % 5]));
    if (k % 7 != 0) v.push_back(FieldValue::vector(4, emb));
    if (w.upsert(0, user_key(k), t, v) != larder::ApplyResult::kApplied) usage("users upsert refused");
  }
  for (uint64_t k = 1; k <= std::min<uint64_t>(a.rows, 5000); ++k) {
    const int64_t t = now - static_cast<int64_t>(k % 10) * a.age_step_ms;
    const std::string category = "cat-" + std::to_string(k % 13);
    std::vector<FieldValue> v;
    v.push_back(FieldValue::float64(0, static_cast<double>(k) * 1.5 + static_cast<double>(a.seed)));
    if (k % 9 != 0) v.push_back(FieldValue::float32(1, static_cast<float>(k % 100) / 100.0f));
    v.push_back(FieldValue::string(2, category));
    if (w.upsert(1, item_key(k), t, v) != larder::ApplyResult::kApplied) usage("items upsert refused");
  }
}

larder::layout::Schema cards_schema() {
  larder::layout::TableSpec cards;
  cards.name = "cards";
  cards.key_max_len = 16;
  cards.capacity = 16;
  cards.fields = {{"credit_limit", FieldType::kFloat64, 1}, {"network", FieldType::kString, 8}};
  cards.aggregates = {{"txn_24h", "", larder::layout::AggregateFn::kCount, 86'400'000, 60'000}};
  larder::layout::Schema s;
  s.tables = {cards};
  return s;
}

// The writer's clock is the tool's: apply_unix_ns and refresh(now) (the
// sidecar's writer thread passes 0, the wall clock).
void write_cards(larder::Writer& w, const Args& a) {
  const int64_t ms = 1'000'000;
  const int64_t last_refresh = larder::now_unix_ms() - a.stopped_ms;
  const int64_t quiet = last_refresh - 2 * 3'600'000;
  const FieldValue v[] = {FieldValue::float64(0, 5000), FieldValue::string(1, "visa")};
  if (w.apply(0, "card:1", quiet, v, {}, 0, quiet * ms) != larder::ApplyResult::kApplied) usage("card:1 refused");
  if (w.apply(0, "card:2", last_refresh, v, {}, 0, last_refresh * ms) != larder::ApplyResult::kApplied) {
    usage("card:2 refused");
  }
  w.refresh(last_refresh * ms);
}

larder::WriterOptions writer_options(const Args& a) {
  larder::WriterOptions o;
  o.dir = a.dir;
  o.recreate_on_schema_change = true;
  return o;
}

larder::layout::Schema rows_schema(uint64_t rows) {
  larder::layout::Schema s;
  s.tables.push_back(larder::testing::derived_table(std::max<uint64_t>(rows, 16)));
  return s;
}

larder::layout::Schema grouped_cards_schema() {
  using larder::layout::FieldSpec;
  using larder::layout::FieldType;
  larder::layout::TableSpec t;
  t.name = "cards";
  t.key_max_len = 32;
  t.capacity = 64;
  t.fields = {FieldSpec{"credit_limit", FieldType::kFloat64, 1, "profile"},
              FieldSpec{"last_amount", FieldType::kFloat64, 1, "activity"},
              FieldSpec{"tx_count", FieldType::kInt64, 1, "activity"}, FieldSpec{"country", FieldType::kString, 4, ""}};
  larder::layout::Schema s;
  s.tables.push_back(std::move(t));
  return s;
}

// The "groups" rows, times relative to `at` (ms):
//   card:1  activity at -1 s (12.5, 3), then profile at -3 d (3000): applies
//   card:2  profile at -1 s (500), then activity at -3 d (1.0, 1): applies
//   card:3  profile at -5 s (800), activity at -2 s (7.0, 2), then a delete
//           at -3 s: profile cleared (its time -3 s), activity kept
//   card:4  profile at -9 s, then a delete at -1 s: a tombstone
void write_grouped_cards(larder::Writer& w, int64_t at) {
  using larder::FieldValue;
  constexpr int64_t kDay = 24 * 3600 * 1000;
  const FieldValue act1[] = {FieldValue::float64(1, 12.5), FieldValue::int64(2, 3)};
  w.upsert(0, "card:1", at - 1000, act1);
  const FieldValue prof1[] = {FieldValue::float64(0, 3000.0)};
  w.upsert(0, "card:1", at - 3 * kDay, prof1);
  const FieldValue prof2[] = {FieldValue::float64(0, 500.0)};
  w.upsert(0, "card:2", at - 1000, prof2);
  const FieldValue act2[] = {FieldValue::float64(1, 1.0), FieldValue::int64(2, 1)};
  w.upsert(0, "card:2", at - 3 * kDay, act2);
  const FieldValue prof3[] = {FieldValue::float64(0, 800.0)};
  w.upsert(0, "card:3", at - 5000, prof3);
  const FieldValue act3[] = {FieldValue::float64(1, 7.0), FieldValue::int64(2, 2)};
  w.upsert(0, "card:3", at - 2000, act3);
  w.remove(0, "card:3", at - 3000);
  w.upsert(0, "card:4", at - 9000, prof3);
  w.remove(0, "card:4", at - 1000);
}

int write(const Args& a) {
  if (a.schema == "demo") {
    auto w = larder::Writer::open(a.segment, demo_schema(), writer_options(a));
    write_demo(*w, a);
  } else if (a.schema == "rows") {
    auto w = larder::Writer::open(a.segment, rows_schema(a.rows), writer_options(a));
    for (uint64_t k = 0; k < a.rows; ++k) larder::testing::write_derived(*w, k, 1);
  } else if (a.schema == "cards") {
    auto w = larder::Writer::open(a.segment, cards_schema(), writer_options(a));
    write_cards(*w, a);
  } else if (a.schema == "groups") {
    auto w = larder::Writer::open(a.segment, grouped_cards_schema(), writer_options(a));
    write_grouped_cards(*w, a.at_ms != 0 ? a.at_ms : larder::now_unix_ms());
  } else {
    usage("--schema is demo, rows, cards or groups");
  }
  std::printf("ready\n");
  return 0;
}

int sync(const Args& a) {
  auto w = larder::Writer::open(a.segment, demo_schema(), writer_options(a));
  w->set_source_id("amqp / stream features.stream");
  w->set_position({0, 1234, 2});
  w->set_target(0, 5000);
  w->set_first_retained(1, 77);
  w->set_sync_state(static_cast<larder::layout::SyncState>(a.seed == 1 ? 1 : a.seed));
  std::printf("ready\n");
  return 0;
}

volatile std::sig_atomic_t churn_stop = 0;  // set by SIGTERM: churn ends early

int churn(const Args& a) {
  std::signal(SIGTERM, [](int) { churn_stop = 1; });
  auto w = larder::Writer::open(a.segment, rows_schema(a.rows), writer_options(a));
  int64_t counter = 1;
  for (uint64_t k = 0; k < a.rows; ++k) larder::testing::write_derived(*w, k, counter++);
  std::printf("ready\n");
  std::fflush(stdout);
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(a.seconds);
  uint64_t writes = 0;
  uint64_t k = 0;
  while (churn_stop == 0 && std::chrono::steady_clock::now() < until) {
    for (int i = 0; i < 256; ++i) {
      larder::testing::write_derived(*w, k, counter++);
      k = (k + 1) % a.rows;
      ++writes;
    }
    w->heartbeat();
  }
  std::printf("done %llu\n", static_cast<unsigned long long>(writes));
  return 0;
}

int grow(const Args& a) {
  larder::layout::Schema schema = rows_schema(a.rows);
  auto w = larder::Writer::open(a.segment, schema, writer_options(a));
  int64_t counter = 1;
  for (uint64_t k = 0; k < a.rows; ++k) larder::testing::write_derived(*w, k, counter++);
  std::printf("ready\n");
  std::fflush(stdout);
  char line[16];
  if (std::fgets(line, sizeof line, stdin) == nullptr) return 3;
  uint64_t k = 0;
  for (int step = 0; step < 3; ++step) {
    if (step < 2) {
      schema.tables[0].capacity *= 2;
    } else {
      schema.tables[0].fields.push_back({"extra", FieldType::kInt64, 1});
    }
    w->begin_switch(schema);
    do {
      for (int i = 0; i < 64; ++i) {
        larder::testing::write_derived(*w, k, counter++);
        k = (k + 1) % a.rows;
      }
    } while (!w->switch_step(128));
    if (!w->switch_progress().last_error.empty()) {
      std::fprintf(stderr, "%s\n", w->switch_progress().last_error.c_str());
      return 4;
    }
  }
  larder::testing::write_derived(*w, a.rows, counter++);
  std::printf("done %llu\n", static_cast<unsigned long long>(w->switch_progress().generation));
  return 0;
}

// Runs op(i) for i < total in blocks of `block`; returns {best block's ns
// per op, mean ns per op}. The best block is the one least disturbed by
// other load on the host.
template <class Op>
std::pair<double, double> time_blocks(uint64_t total, uint64_t block, Op&& op) {
  using clock = std::chrono::steady_clock;
  double best = 1e300, sum = 0;
  uint64_t i = 0;
  while (i < total) {
    const uint64_t begin = i, end = std::min(total, i + block);
    const auto t0 = clock::now();
    for (; i < end; ++i) op(i);
    const double ns = std::chrono::duration<double, std::nano>(clock::now() - t0).count();
    sum += ns;
    best = std::min(best, ns / static_cast<double>(end - begin));
  }
  return {best, sum / static_cast<double>(total)};
}

int bench(const Args& a) {
  auto seg = larder::Segment::open(a.segment, larder::ClientOptions{a.dir});
  const larder::Table table = seg.table(a.table);
  const bool users = a.table == "users";
  // 4096 random keys: 16 windows of 256 for the batches (the Python side of
  // bench/python/bench_client.py draws the same way).
  std::mt19937_64 rng(static_cast<uint64_t>(a.seed));
  std::vector<std::string> pool(4096);
  for (auto& key : pool) {
    const uint64_t k = rng() % a.rows + 1;
    key = users ? user_key(k) : item_key(k);
  }
  const size_t windows = pool.size() / a.batch;
  std::vector<std::string_view> views(pool.begin(), pool.end());
  larder::Row row = table.make_row();
  double sink = 0;  // touched so that the reads cannot be optimised away

  const auto get = time_blocks(a.iters, 4096, [&](uint64_t i) {
    sink += static_cast<double>(table.get(views[i % views.size()], row).event_time_ms);
  });

  larder::RowBatch rows = table.make_batch(a.batch);
  std::vector<larder::ReadResult> results(a.batch);
  const uint64_t batches = std::max<uint64_t>(1, a.iters / a.batch);
  const auto many = time_blocks(batches, 16, [&](uint64_t b) {
    const size_t start = (b % windows) * a.batch;
    table.get_many(std::span<const std::string_view>(views.data() + start, a.batch), rows, results);
    sink += static_cast<double>(results[0].event_time_ms);
  });

  // The C ABI's one-pass gather (what the Python client calls) over the same
  // windows: every scalar and vector field, keys NUL-terminated.
  char err[256];
  larder_segment* cseg = nullptr;
  larder_table* ctab = nullptr;
  if (larder_open(a.segment.c_str(), a.dir.c_str(), &cseg, err, sizeof err) != LARDER_E_OK ||
      larder_table_open(cseg, a.table.c_str(), &ctab, err, sizeof err) != LARDER_E_OK) {
    usage(err);
  }
  std::vector<uint32_t> scalars, vectors;
  size_t dims = 0;
  for (const larder::Field& f : table.fields()) {
    if (f.type == FieldType::kFloat32Vector) {
      vectors.push_back(f.index);
      dims += f.count;
    } else if (f.type != FieldType::kString) {
      scalars.push_back(f.index);
    }
  }
  std::vector<std::string> packed(windows);
  for (size_t w = 0; w < windows; ++w) {
    for (size_t i = 0; i < a.batch; ++i) {
      packed[w] += pool[w * a.batch + i];
      packed[w] += '\0';
    }
  }
  std::vector<double> values(a.batch * scalars.size());
  std::vector<float> vecs(a.batch * std::max<size_t>(dims, 1));
  std::vector<int32_t> status(a.batch);
  std::vector<int64_t> times(a.batch);
  const auto gather = time_blocks(batches, 16, [&](uint64_t b) {
    const std::string& keys = packed[b % windows];
    larder_gather(ctab, keys.data(), keys.size(), nullptr, 0, a.batch, scalars.data(), scalars.size(), values.data(),
                  0.0, vectors.data(), vectors.size(), vecs.data(), 0.0f, status.data(), times.data(), 0);
    sink += static_cast<double>(times[0]);
  });
  larder_table_close(ctab);
  larder_close(cseg);

  std::printf(
      "{\"get_ns\": %.1f, \"get_mean_ns\": %.1f, \"get_many_ns\": %.1f, \"get_many_mean_ns\": %.1f, "
      "\"c_gather_ns\": %.1f, \"c_gather_mean_ns\": %.1f, \"batch\": %zu, \"sink\": %d}\n",
      get.first, get.second, many.first, many.second, gather.first, gather.second, a.batch, sink != 0 ? 1 : 0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  try {
    if (a.command == "write") return write(a);
    if (a.command == "churn") return churn(a);
    if (a.command == "grow") return grow(a);
    if (a.command == "sync") return sync(a);
    if (a.command == "bench") return bench(a);
    usage("command is write, churn or bench");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "larder-test-writer: %s\n", e.what());
    return 1;
  }
}

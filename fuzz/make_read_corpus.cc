// Writes the seed corpus of the read-side fuzzer (read_segment_fuzz.cc):
// small real segments made with the writer, one file each, covering every
// field type, aggregates and the dedup set, field groups, tombstones, strings, vectors,
// several tables, stream positions and the sync state, and the records a
// killed writer leaves (an odd slot under the undo record, an armed
// aggregate journal, a pending position).
//
//   build/tests/larder_make_read_corpus fuzz/corpus/read_segment
//
// Capacities are tiny so that each segment stays a few KB to tens of KB:
// the fuzzer mutates every byte. Run it again whenever the layout changes
// (kLayoutVersion or abi_signature()); the test FuzzSeeds.OpenWithThisLayout
// fails until then.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "larder/layout/segment_file.h"
#include "larder/writer/writer.h"

namespace {

using namespace larder;  // NOLINT: a tool over the writer
using layout::AggregateFn;
using layout::FieldType;

constexpr int64_t kT0 = 1'700'000'000'000;

layout::TableSpec users_table() {
  layout::TableSpec t;
  t.name = "users";
  t.key_max_len = 16;
  t.capacity = 4;
  t.fields = {{"clicks", FieldType::kInt64, 1},
              {"spend", FieldType::kFloat64, 1},
              {"ctr", FieldType::kFloat32, 1},
              {"premium", FieldType::kBool, 1},
              {"embedding", FieldType::kFloat32Vector, 3},
              {"country", FieldType::kString, 6}};
  return t;
}

layout::TableSpec items_table() {
  layout::TableSpec t;
  t.name = "items";
  t.key_max_len = 12;
  t.capacity = 3;
  t.fields = {{"flag", FieldType::kBool, 1},
              {"title", FieldType::kString, 5},
              {"vec", FieldType::kFloat32Vector, 2},
              {"price", FieldType::kFloat32, 1}};
  return t;
}

layout::TableSpec events_table() {
  layout::TableSpec t;
  t.name = "events";
  t.key_max_len = 8;
  t.capacity = 2;
  t.fields = {{"tag", FieldType::kInt64, 1}};
  auto agg = [](const char* name, const char* source, AggregateFn fn, layout::WindowEnd end) {
    layout::AggregateSpec a;
    a.name = name;
    a.source = source;
    a.fn = fn;
    a.window_ms = 60'000;
    a.resolution_ms = 10'000;
    a.end = end;
    return a;
  };
  using layout::WindowEnd;
  t.aggregates = {agg("n", "", AggregateFn::kCount, WindowEnd::kNow),
                  agg("sum", "x", AggregateFn::kSum, WindowEnd::kNow),
                  agg("mean", "x", AggregateFn::kMean, WindowEnd::kLatestEvent),
                  agg("lo", "x", AggregateFn::kMin, WindowEnd::kNow),
                  agg("hi", "x", AggregateFn::kMax, WindowEnd::kNow),
                  agg("last", "x", AggregateFn::kLast, WindowEnd::kNow),
                  agg("var", "y", AggregateFn::kVariance, WindowEnd::kNow),
                  agg("sd", "y", AggregateFn::kStddev, WindowEnd::kLatestEvent),
                  agg("kinds", "y", AggregateFn::kDistinctCount, WindowEnd::kNow)};
  t.aggregates[6].ddof = 1;
  // A count window and a sequence: descriptor words past the time window's,
  // and a vector the writer computes.
  layout::AggregateSpec mean5 = agg("mean5", "x", AggregateFn::kMean, WindowEnd::kNow);
  mean5.window_ms = mean5.resolution_ms = 0;
  mean5.window_events = 5;
  mean5.min_periods = 2;
  layout::AggregateSpec seq = mean5;
  seq.name = "seq";
  seq.fn = AggregateFn::kLastN;
  seq.window_events = 4;
  seq.min_periods = 0;
  t.aggregates.push_back(mean5);
  t.aggregates.push_back(seq);
  t.dedup_capacity = 8;
  t.dedup_horizon_ms = 60'000;
  return t;
}

// Field groups: a profile and an activity group, the default group, and an
// aggregate in the activity group.
layout::TableSpec cards_table() {
  layout::TableSpec t;
  t.name = "cards";
  t.key_max_len = 8;
  t.capacity = 3;
  t.fields = {{"limit", FieldType::kFloat64, 1, "profile"},
              {"amount", FieldType::kFloat64, 1, "activity"},
              {"country", FieldType::kString, 2, ""}};
  layout::AggregateSpec n;
  n.name = "n";
  n.source = "amount";
  n.fn = AggregateFn::kCount;
  n.window_ms = 60'000;
  n.resolution_ms = 10'000;
  n.end = layout::WindowEnd::kLatestEvent;
  n.group = "activity";
  t.aggregates = {n};
  t.dedup_capacity = 8;
  t.dedup_horizon_ms = 60'000;
  return t;
}

void fill_cards(Writer& w, uint32_t table) {
  const int amount = w.source_index(table, "amount");
  const FieldValue act[] = {FieldValue::float64(1, 12.5)};
  const SourceValue in[] = {{static_cast<uint32_t>(amount), 12.5}};
  w.apply(table, "c1", kT0 + 5000, act, in, 0, (kT0 + 5000) * 1'000'000);
  const FieldValue prof[] = {FieldValue::float64(0, 3000.0), FieldValue::string(2, "fr")};
  w.apply(table, "c1", kT0, prof, {}, 0, (kT0 + 5000) * 1'000'000);  // older, another group: applies
  w.apply(table, "c2", kT0 + 1, prof, {}, 0, (kT0 + 5000) * 1'000'000);
  w.apply(table, "c2", kT0 + 2, act, in, 0, (kT0 + 5000) * 1'000'000);
  w.remove(table, "c2", kT0 + 1, (kT0 + 5000) * 1'000'000);  // clears profile and default, keeps activity
}

void fill_users(Writer& w, uint32_t table) {
  const float emb[] = {0.5f, -1.25f, 3.0f};
  const FieldValue u1[] = {FieldValue::int64(0, 7),      FieldValue::float64(1, 12.5), FieldValue::float32(2, 0.25f),
                           FieldValue::boolean(3, true), FieldValue::vector(4, emb),   FieldValue::string(5, "fr")};
  const FieldValue u2[] = {FieldValue::int64(0, -3), FieldValue::string(5, "se-abc")};
  const FieldValue u3[] = {FieldValue::float64(1, 1e300)};
  w.upsert(table, "u1", kT0, u1);
  w.upsert(table, "u2", kT0 + 5, u2);
  w.upsert(table, "u3", kT0 + 9, u3);
  w.remove(table, "u3", kT0 + 10);  // a tombstone
}

void fill_items(Writer& w, uint32_t table) {
  const float v[] = {1.0f, 2.0f};
  const FieldValue i7[] = {FieldValue::boolean(0, true), FieldValue::string(1, "lamp"), FieldValue::vector(2, v),
                           FieldValue::float32(3, 9.99f)};
  const FieldValue i8[] = {FieldValue::string(1, "")};
  w.upsert(table, "item:7", kT0, i7);
  w.upsert(table, "item:8", kT0 + 1, i8);
}

void fill_events(Writer& w, uint32_t table) {
  const int x = w.source_index(table, "x"), y = w.source_index(table, "y");
  for (int e = 0; e < 6; ++e) {
    const SourceValue values[] = {{static_cast<uint32_t>(x), 1.5 * e}, {static_cast<uint32_t>(y), 10.0 - e}};
    const FieldValue tag[] = {FieldValue::int64(0, e)};
    const std::string id = "ev" + std::to_string(e % 5);  // one redelivery: a duplicate
    w.apply(table, e % 2 ? "u1" : "u2", kT0 + 1000 * e, tag, values, event_id_hash(id), (kT0 + 1000 * e) * 1'000'000);
  }
}

std::string g_dir;

std::vector<char> bytes_of(const std::string& name) {
  std::ifstream in(layout::segment_path(g_dir, name), std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void save(const std::string& out_dir, const std::string& file, const std::vector<char>& bytes) {
  const std::string path = out_dir + "/" + file;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "make_read_corpus: cannot write %s\n", path.c_str());
    std::exit(1);
  }
  std::printf("%s: %zu bytes\n", path.c_str(), bytes.size());
}

WriterOptions options() {
  WriterOptions o;
  o.dir = g_dir;
  return o;
}

// Builds segment `name` with `fill`, detaches the writer, returns the bytes.
std::vector<char> build(const std::string& name, const layout::Schema& schema,
                        const std::function<void(Writer&)>& fill) {
  Writer::remove_segment(name, g_dir);
  {
    auto w = Writer::open(name, schema, options());
    fill(*w);
  }
  std::vector<char> bytes = bytes_of(name);
  Writer::remove_segment(name, g_dir);
  return bytes;
}

CrashPoint g_kill_at;
int g_kill_countdown = 0;
void kill_hook(CrashPoint p) {
  if (p == g_kill_at && --g_kill_countdown == 0) ::raise(SIGKILL);
}

// As build(), then a writer child that `last` kills at the n-th `point`:
// the segment as a SIGKILLed writer leaves it (writer_pid set, records armed).
std::vector<char> build_killed(const std::string& name, const layout::Schema& schema,
                               const std::function<void(Writer&)>& fill, const std::function<void(Writer&)>& last,
                               CrashPoint point, int n) {
  Writer::remove_segment(name, g_dir);
  {
    auto w = Writer::open(name, schema, options());
    fill(*w);
  }
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    auto w = Writer::open(name, schema, options());
    g_kill_at = point;
    g_kill_countdown = n;
    set_crash_hook(&kill_hook);
    last(*w);
    ::_exit(3);  // the crash point was never reached
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
    std::fprintf(stderr, "make_read_corpus: the writer of %s was not killed at its crash point\n", name.c_str());
    std::exit(1);
  }
  std::vector<char> bytes = bytes_of(name);
  Writer::remove_segment(name, g_dir);
  return bytes;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string out = argv[1];
  char tmpl[] = "/dev/shm/larder-corpus-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    std::perror("make_read_corpus: mkdtemp");
    return 1;
  }
  g_dir = tmpl;
  const std::string name = "corpus";

  layout::Schema users;
  users.tables = {users_table()};
  save(out, "seed-every-type", build(name, users, [](Writer& w) { fill_users(w, 0); }));

  layout::Schema events;
  events.tables = {events_table()};
  save(out, "seed-aggregates", build(name, events, [](Writer& w) { fill_events(w, 0); }));

  // Long rings (30 buckets) and an arena of 2 chunks: one key promoted to a
  // dense ring in a chunk, one sparse, one chunk freed by a delete.
  layout::Schema arena;
  {
    layout::TableSpec t;
    t.name = "arena";
    t.key_max_len = 16;
    t.capacity = 4;
    t.fields = {{"tag", FieldType::kInt64, 1}};
    layout::AggregateSpec a;
    a.name = "sum";
    a.source = "x";
    a.fn = AggregateFn::kSum;
    a.window_ms = 60'000;
    a.resolution_ms = 2'000;
    t.aggregates = {a};
    t.arena_chunks = 2;
    t.dedup_capacity = 8;
    arena.tables = {t};
  }
  save(out, "seed-arena", build(name, arena, [](Writer& w) {
         const uint32_t x = static_cast<uint32_t>(w.source_index(0, "x"));
         for (int e = 0; e < 12; ++e) {
           const SourceValue v[] = {{x, 1.0 * e}};
           const int64_t t = kT0 + 2000 * e;
           w.apply(0, "busy", t, {}, v, 0, t * 1'000'000);
           w.apply(0, "gone", t, {}, v, 0, t * 1'000'000);
           if (e % 4 == 0) w.apply(0, "quiet", t, {}, v, 0, t * 1'000'000);
         }
         w.remove(0, "gone", kT0 + 30'000, (kT0 + 30'000) * 1'000'000);
       }));

  layout::Schema cards;
  cards.tables = {cards_table()};
  save(out, "seed-groups", build(name, cards, [](Writer& w) { fill_cards(w, 0); }));

  layout::Schema several;
  several.tables = {users_table(), items_table(), events_table()};
  save(out, "seed-tables-positions", build(name, several, [](Writer& w) {
         w.set_source_id("stream:features");
         w.stage_position({0, 41, 0});
         fill_users(w, 0);
         w.stage_position({1, 7, 1});
         fill_items(w, 1);
         fill_events(w, 2);
         w.set_position({1, 9, 0});
         w.set_target(1, 20);
         w.set_sync_state(layout::SyncState::kCatchingUp);
       }));

  // Killed with a slot's sequence odd: undo armed, writer_pid left behind.
  save(out, "seed-killed-mid-update",
       build_killed(
           name, users, [](Writer& w) { fill_users(w, 0); },
           [](Writer& w) {
             const FieldValue v[] = {FieldValue::int64(0, 8), FieldValue::string(5, "de")};
             w.upsert(0, "u1", kT0 + 100, v);
           },
           CrashPoint::kMidPayload, 3));

  // Killed inside an aggregate change (journal armed) with a position staged.
  save(out, "seed-killed-in-journal",
       build_killed(
           name, events, [](Writer& w) { fill_events(w, 0); },
           [](Writer& w) {
             w.set_source_id("stream:events");
             w.stage_position({0, 100, 0});
             const SourceValue x[] = {{static_cast<uint32_t>(w.source_index(0, "x")), 4.0}};
             w.apply(0, "u1", kT0 + 7000, {}, x, event_id_hash("ev9"), (kT0 + 7000) * 1'000'000);
           },
           CrashPoint::kJournal, 2));

  ::rmdir(g_dir.c_str());
  return 0;
}

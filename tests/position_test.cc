// Source positions across real processes: a writer child applies a
// deterministic stream of messages (each 0..3 updates, a plain table and a
// table with count and sum aggregates, events without ids) with
// stage_position before every update, and kills itself with SIGKILL at the
// Nth crash point of a chosen kind. After each kill a restarted writer
// repairs; the stored position P must describe the table exactly (it equals
// a reference model that applied the updates before P, and only those); the
// next child resumes from P. At the end the table equals the whole stream:
// nothing applied twice, nothing skipped.
//
// Also: the source id clears positions, set_position, and the sync state seen
// by a reader process (C++ Segment::state/sync and the C ABI).
//
// LARDER_CRASH_ITERATIONS sets the number of kills (default 28: four at each
// kind of crash point); LARDER_SEED replays a run.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <atomic>
#include <random>
#include <string>
#include <vector>

#include "larder/client.h"
#include "larder/larder.h"
#include "larder/writer/writer.h"
#include "support/aggregate_reference.h"
#include "support/process.h"
#include "support/progress.h"
#include "support/recount.h"
#include "support/test_segment.h"

namespace larder {
namespace {

using layout::SyncState;
using Ref = testing::AggregateReference;
using testing::ScratchSegment;

constexpr uint64_t kFirstOffset = 1000;  // the stream's first offset (any value: offsets are the log's)
constexpr int kKeys = 24;

layout::Schema stream_schema() {
  layout::TableSpec plain;
  plain.name = "plain";
  plain.key_max_len = 16;
  plain.capacity = 64;
  plain.fields = {{"clicks", layout::FieldType::kInt64, 1}, {"score", layout::FieldType::kFloat64, 1}};
  layout::TableSpec agg;
  agg.name = "agg";
  agg.key_max_len = 16;
  agg.capacity = 64;
  agg.fields = {{"tag", layout::FieldType::kInt64, 1}};
  // kLatestEvent windows of an hour: a stream of seconds never decays, so
  // every event counts exactly once (the point is to see doubles and gaps).
  layout::AggregateSpec events{"events",  "", layout::AggregateFn::kCount,
                               3'600'000, 0,  layout::WindowEnd::kLatestEvent};
  layout::AggregateSpec spent{"spent",   "amount", layout::AggregateFn::kSum,
                              3'600'000, 0,        layout::WindowEnd::kLatestEvent};
  agg.aggregates = {events, spent};
  layout::Schema s;
  s.tables = {plain, agg};
  return s;
}

struct Update {
  uint32_t table = 0;  // 0 plain, 1 agg
  bool remove = false;
  std::string key;
  int64_t te = 0;
  int64_t value = 0;
  double amount = 0;
};
struct Message {
  uint64_t offset = 0;
  std::vector<Update> updates;
};

// A deterministic stream: event times strictly increase, so last write wins
// is the order of the stream and nothing is late.
std::vector<Message> make_stream(size_t messages, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Message> out;
  int64_t te = 1'700'000'000'000;
  for (size_t m = 0; m < messages; ++m) {
    Message msg;
    msg.offset = kFirstOffset + m;
    const uint64_t r = rng() % 10;
    const size_t n = r == 0 ? 0 : r < 5 ? 1 : r < 8 ? 2 : 3;
    for (size_t i = 0; i < n; ++i) {
      Update u;
      u.table = static_cast<uint32_t>(rng() % 2);
      u.remove = rng() % 12 == 0;
      u.key = "k" + std::to_string(rng() % kKeys);
      te += 1 + static_cast<int64_t>(rng() % 7);
      u.te = te;
      u.value = static_cast<int64_t>(rng() % 1'000'000);
      u.amount = static_cast<double>(rng() % 1000) / 8;  // exact in binary: sums are exact
      msg.updates.push_back(u);
    }
    out.push_back(std::move(msg));
  }
  return out;
}

int64_t apply_ns(const Update& u) { return u.te * 1'000'000; }

ApplyResult apply_update(Writer& w, const Update& u) {
  if (u.remove) return w.remove(u.table, u.key, u.te, apply_ns(u));
  if (u.table == 0) {
    const FieldValue values[] = {FieldValue::int64(0, u.value), FieldValue::float64(1, u.amount)};
    return w.upsert(0, u.key, u.te, values, apply_ns(u));
  }
  const FieldValue values[] = {FieldValue::int64(0, u.value)};
  const SourceValue sources[] = {{0, u.amount}};
  return w.apply(1, u.key, u.te, values, sources, 0, apply_ns(u));
}

// Applies the stream from `from` on, as the sidecar does (fleet design):
// before update i of an n-update message at offset O, stage {O, i + 1} or,
// for the last one, {O + 1, 0}; a message with no updates stores {O + 1, 0}.
void run_stream(Writer& w, const std::vector<Message>& stream, const std::optional<SourcePosition>& from) {
  size_t m = 0;
  uint32_t skip = 0;
  if (from) {
    m = static_cast<size_t>(from->next_offset - kFirstOffset);
    skip = from->skip_updates;
  }
  for (; m < stream.size(); ++m, skip = 0) {
    const Message& msg = stream[m];
    const size_t n = msg.updates.size();
    if (n == 0) {
      w.set_position({0, msg.offset + 1, 0});
      continue;
    }
    for (size_t i = skip; i < n; ++i) {
      w.stage_position({0, i + 1 < n ? msg.offset : msg.offset + 1, static_cast<uint32_t>(i + 1 < n ? i + 1 : 0)});
      apply_update(w, msg.updates[i]);
    }
  }
}

// The updates a position covers: every update of the messages before
// next_offset, and skip_updates of message next_offset.
size_t covered_updates(const std::vector<Message>& stream, const std::optional<SourcePosition>& p) {
  if (!p) return 0;
  size_t n = 0;
  for (size_t m = 0; m < p->next_offset - kFirstOffset; ++m) n += stream[m].updates.size();
  return n + p->skip_updates;
}

// The reference models of both tables after the first `count` updates.
struct Model {
  explicit Model(const layout::Schema& s) : plain(s.tables[0]), agg(s.tables[1]) {}
  Ref plain;
  Ref agg;
};
Model model_after(const layout::Schema& schema, const std::vector<Message>& stream, size_t count) {
  Model model(schema);
  size_t done = 0;
  for (const Message& msg : stream) {
    for (const Update& u : msg.updates) {
      if (done++ == count) return model;
      Ref& r = u.table == 0 ? model.plain : model.agg;
      if (u.remove) {
        r.remove(u.key, u.te, apply_ns(u));
      } else {
        Ref::Event e;
        e.key = u.key;
        e.te = u.te;
        e.apply_ns = apply_ns(u);
        e.fields.push_back({0, u.value, 0});
        if (u.table == 0) {
          e.fields.push_back({1, 0, u.amount});
        } else {
          e.sources.push_back({0, u.amount});
        }
        r.apply(e);
      }
    }
  }
  return model;
}

// Every key of both tables, read through the client, against the model.
// Returns "" when equal, else the first difference.
std::string compare_tables(const ScratchSegment& seg, const Model& model) {
  Segment s = Segment::open(seg.name(), ClientOptions{seg.dir()});
  for (uint32_t t = 0; t < 2; ++t) {
    Table table = s.table(t == 0 ? "plain" : "agg");
    const Ref& ref = t == 0 ? model.plain : model.agg;
    Row row = table.make_row();
    for (int k = 0; k < kKeys; ++k) {
      const std::string key = "k" + std::to_string(k);
      const Ref::Row want = ref.read(key);
      const ReadResult r = table.get(key, row);
      const std::string where = table.name() + " " + key + ": ";
      if (r.found() != want.found) {
        return where + (want.found ? "missing" : "present") + " (status " + status_name(r.status) + ")";
      }
      if (!want.found) continue;
      for (size_t f = 0; f < want.fields.size(); ++f) {
        const Field& field = table.fields()[f];
        const bool is_int = field.type == FieldType::kInt64;
        std::string why;
        if (!Ref::matches(want.fields[f], row.valid(field), is_int ? row.i64(field) : 0, is_int ? 0 : row.f64(field),
                          &why)) {
          return where + std::string(field.name) + " " + why;
        }
      }
    }
  }
  return "";
}

CrashPoint g_kill_point = CrashPoint::kPosition;  // set before fork
int g_kill_countdown = 0;
void kill_at_nth_point(CrashPoint point) {
  if (point == g_kill_point && --g_kill_countdown == 0) ::raise(SIGKILL);
}

const char* point_name(CrashPoint p) {
  switch (p) {
    case CrashPoint::kUndoArmed: return "undo_armed";
    case CrashPoint::kSeqOdd: return "seq_odd";
    case CrashPoint::kMidPayload: return "mid_payload";
    case CrashPoint::kPayloadWritten: return "payload_written";
    case CrashPoint::kSeqEven: return "seq_even";
    case CrashPoint::kJournal: return "journal";
    case CrashPoint::kPosition: return "position";
    case CrashPoint::kCounts: return "counts";
    case CrashPoint::kSwitch: return "switch";
  }
  return "?";
}

TEST(Positions, KilledAtEveryKindOfCrashPointTheStoredPositionDescribesTheTable) {
  const int iterations = testing::crash_iterations(28);
  ASSERT_GE(iterations, 2) << "LARDER_CRASH_ITERATIONS=" << -iterations
                           << " refused: at least 10 (fewer with LARDER_CRASH_ITERATIONS_REDUCED=1)";
  const uint64_t seed = testing::test_seed("Positions.Killed");
  std::mt19937_64 rng(seed);
  const layout::Schema schema = stream_schema();
  // Each kill consumes at most ~40 updates; the stream outlasts them all.
  const std::vector<Message> stream = make_stream(std::max<size_t>(1500, 60 * static_cast<size_t>(iterations)), seed);
  size_t total_updates = 0;
  for (const Message& m : stream) total_updates += m.updates.size();

  ScratchSegment seg;
  testing::Children kids;
  static constexpr CrashPoint kKinds[] = {CrashPoint::kPosition,  CrashPoint::kJournal,        CrashPoint::kMidPayload,
                                          CrashPoint::kSeqEven,   CrashPoint::kPayloadWritten, CrashPoint::kSeqOdd,
                                          CrashPoint::kUndoArmed, CrashPoint::kCounts};
  size_t last_covered = 0;
  int positions_moved = 0;
  for (int it = 0; it < iterations; ++it) {
    g_kill_point = kKinds[it % std::size(kKinds)];
    // Points per update: ~8 position stores, ~10 payload words, ~4 journal
    // entries on the aggregate table, one of each of the others.
    const bool frequent = g_kill_point == CrashPoint::kPosition || g_kill_point == CrashPoint::kMidPayload ||
                          g_kill_point == CrashPoint::kJournal;
    g_kill_countdown = 1 + static_cast<int>(rng() % (frequent ? 60 : 25));
    const pid_t child = kids.add(testing::spawn([&] {
      auto w = Writer::open(seg.name(), schema, seg.writer_options());
      const std::optional<SourcePosition> from = w->position(0);
      set_crash_hook(&kill_at_nth_point);
      run_stream(*w, stream, from);
      return 0;  // the stream ended before the kill: the test below fails
    }));
    ASSERT_EQ(kids.wait(child), 128 + SIGKILL) << "iteration " << it << ": the writer was not killed at "
                                               << point_name(g_kill_point) << " #" << g_kill_countdown;

    // Restart: repair, then the stored position must describe the table.
    std::optional<SourcePosition> p;
    {
      auto w = Writer::open(seg.name(), schema, seg.writer_options());
      p = w->position(0);
      ASSERT_LE(w->attach_report().slots_visited, 1u) << "iteration " << it;
      ASSERT_TRUE(testing::counters_match_recount(w->path(), seg.name()))
          << "iteration " << it << ", killed at " << point_name(g_kill_point);
    }
    if (p) {
      ASSERT_GE(p->next_offset, kFirstOffset);
      ASSERT_LT(p->next_offset - kFirstOffset, stream.size());
      const Message& msg = stream[p->next_offset - kFirstOffset];
      ASSERT_TRUE(p->skip_updates == 0 || p->skip_updates < msg.updates.size())
          << "skip " << p->skip_updates << " of a message with " << msg.updates.size() << " updates";
    }
    const size_t covered = covered_updates(stream, p);
    ASSERT_GE(covered, last_covered) << "iteration " << it << ": the position moved backwards";
    if (covered > last_covered) ++positions_moved;
    last_covered = covered;
    const std::string diff = compare_tables(seg, model_after(schema, stream, covered));
    ASSERT_EQ(diff, "") << "iteration " << it << ", killed at " << point_name(g_kill_point) << ", position "
                        << (p ? std::to_string(p->next_offset) + "+" + std::to_string(p->skip_updates) : "none") << " ("
                        << covered << " updates)";
  }
  EXPECT_GT(positions_moved, iterations / 2) << "the kills did not land mid-stream";

  // Resume to the end: exactly the whole stream, each update once.
  {
    auto w = Writer::open(seg.name(), schema, seg.writer_options());
    run_stream(*w, stream, w->position(0));
    const std::optional<SourcePosition> end = w->position(0);
    ASSERT_TRUE(end.has_value());
    EXPECT_EQ(end->next_offset, kFirstOffset + stream.size());
    EXPECT_EQ(end->skip_updates, 0u);
  }
  EXPECT_EQ(compare_tables(seg, model_after(schema, stream, total_updates)), "");
  std::printf("positions: %d kills, %zu updates in the stream\n", iterations, total_updates);
}

// An update that writes no slot (stale, invalid) still stores its position;
// set_position stores one alone and supersedes a staged one.
TEST(Positions, EveryOutcomeStoresThePosition) {
  ScratchSegment seg;
  auto w = Writer::open(seg.name(), stream_schema(), seg.writer_options());
  EXPECT_FALSE(w->position(0).has_value());
  const FieldValue v[] = {FieldValue::int64(0, 1)};
  w->stage_position({0, 5, 1});
  EXPECT_EQ(w->upsert(0, "a", 100, v), ApplyResult::kApplied);
  ASSERT_TRUE(w->position(0).has_value());
  EXPECT_EQ(w->position(0)->next_offset, 5u);
  EXPECT_EQ(w->position(0)->skip_updates, 1u);
  w->stage_position({0, 6, 0});
  EXPECT_EQ(w->upsert(0, "a", 50, v), ApplyResult::kStale);
  EXPECT_EQ(w->position(0)->next_offset, 6u);
  w->stage_position({0, 7, 0});
  EXPECT_EQ(w->upsert(0, std::string(40, 'x'), 200, v), ApplyResult::kInvalid);
  EXPECT_EQ(w->position(0)->next_offset, 7u);
  w->stage_position({0, 8, 0});
  EXPECT_EQ(w->upsert(9, "a", 200, v), ApplyResult::kInvalid);  // no such table
  EXPECT_EQ(w->position(0)->next_offset, 8u);
  w->stage_position({0, 9, 0});
  w->set_position({0, 20, 0});
  EXPECT_EQ(w->position(0)->next_offset, 20u);
  EXPECT_EQ(w->upsert(0, "b", 300, v), ApplyResult::kApplied);  // nothing staged any more
  EXPECT_EQ(w->position(0)->next_offset, 20u);
  // Partitions are independent; out of range is refused.
  w->set_position({3, 42, 2});
  EXPECT_EQ(w->position(3)->next_offset, 42u);
  EXPECT_EQ(w->position(0)->next_offset, 20u);
  EXPECT_FALSE(w->position(1).has_value());
  EXPECT_THROW(w->stage_position({static_cast<uint32_t>(layout::kMaxSourcePartitions), 1, 0}), Error);
  EXPECT_THROW(w->set_position({1000, 1, 0}), Error);
  EXPECT_FALSE(w->position(1000).has_value());
}

TEST(Positions, AnotherSourceIdClearsThePositions) {
  ScratchSegment seg;
  {
    auto w = Writer::open(seg.name(), stream_schema(), seg.writer_options());
    EXPECT_EQ(w->source_id(), "");
    w->set_position({0, 10, 0});
    EXPECT_TRUE(w->set_source_id("amqp / stream features"));  // none stored: positions stay
    EXPECT_EQ(w->position(0)->next_offset, 10u);
    w->set_position({1, 11, 0});
    w->set_target(2, 99);
  }
  auto w = Writer::open(seg.name(), stream_schema(), seg.writer_options());
  EXPECT_EQ(w->source_id(), "amqp / stream features");  // it outlives the writer
  EXPECT_TRUE(w->set_source_id("amqp / stream features"));
  EXPECT_EQ(w->position(1)->next_offset, 11u);
  EXPECT_FALSE(w->set_source_id("amqp / stream other"));
  EXPECT_EQ(w->source_id(), "amqp / stream other");
  EXPECT_FALSE(w->position(0).has_value());
  EXPECT_FALSE(w->position(1).has_value());
  Segment s = Segment::open(seg.name(), ClientOptions{seg.dir()});
  EXPECT_TRUE(s.sync().partitions.empty());  // targets went too
  EXPECT_EQ(s.sync().source_id, "amqp / stream other");
  EXPECT_THROW(w->set_source_id(std::string(128, 'x')), Error);
  EXPECT_THROW(w->set_source_id(std::string("a\0b", 3)), Error);
  EXPECT_FALSE(w->set_source_id(std::string(127, 'y')));  // another id: clears again
  EXPECT_EQ(w->source_id(), std::string(127, 'y'));
}

// What the reader of SyncStateIsVisibleToAReaderProcess must see first: 0,
// else a code naming the check.
int check_catching_up(const Segment& s, const larder_segment* c) {
  if (s.state() != SyncState::kCatchingUp) return 10;
  const SyncInfo info = s.sync();
  if (info.state != SyncState::kCatchingUp || info.source_id != "amqp / stream features.stream") return 11;
  if (info.changed_unix_ns <= 0 || info.partitions.size() != 2) return 12;
  const SyncInfo::Partition& p0 = info.partitions[0];
  if (p0.partition != 0 || p0.next_offset != 1234u || p0.skip_updates != 2 || p0.target != 5000u ||
      p0.first_retained.has_value()) {
    return 13;
  }
  const SyncInfo::Partition& p1 = info.partitions[1];
  if (p1.partition != 1 || p1.next_offset.has_value() || p1.target.has_value() || p1.first_retained != 77u) return 14;
  // The C ABI.
  if (larder_segment_state(c) != LARDER_SYNC_CATCHING_UP) return 21;
  larder_position_t pos;
  if (larder_segment_position(c, 0, &pos) != LARDER_OK) return 22;
  if (pos.flags != (LARDER_POSITION_HAS_NEXT | LARDER_POSITION_HAS_TARGET) || pos.next_offset != 1234 ||
      pos.skip_updates != 2 || pos.target != 5000) {
    return 23;
  }
  if (larder_segment_position(c, 1, &pos) != LARDER_OK || pos.flags != LARDER_POSITION_HAS_FIRST_RETAINED ||
      pos.first_retained != 77) {
    return 24;
  }
  if (larder_segment_position(c, 2, &pos) != LARDER_NOT_FOUND || pos.flags != 0) return 25;
  if (larder_segment_position(c, 100000, &pos) != LARDER_NOT_FOUND) return 26;
  return 0;
}

// The state a writer sets is what a reader process sees, through C++ and C.
TEST(Positions, SyncStateIsVisibleToAReaderProcess) {
  ScratchSegment seg;
  testing::Children kids;
  auto w = Writer::open(seg.name(), stream_schema(), seg.writer_options());
  {
    Segment s = Segment::open(seg.name(), ClientOptions{seg.dir()});
    EXPECT_EQ(s.state(), SyncState::kUnknown);  // a plain writer reports nothing
    EXPECT_TRUE(s.sync().partitions.empty());
  }
  w->set_source_id("amqp / stream features.stream");
  w->set_sync_state(SyncState::kCatchingUp);
  w->set_position({0, 1234, 2});
  w->set_target(0, 5000);
  w->set_first_retained(1, 77);

  // The reader checks what is there, then waits for READY (the parent sets it
  // after the child reported, through its exit code, so nothing races).
  int* stage =
      static_cast<int*>(::mmap(nullptr, sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(stage, MAP_FAILED);
  std::atomic_ref<int> step(*stage);
  const pid_t reader = kids.add(testing::spawn([&] {
    Segment s = Segment::open(seg.name(), ClientOptions{seg.dir()});
    larder_segment* c = nullptr;
    char err[256];
    if (larder_open(seg.name().c_str(), seg.dir().c_str(), &c, err, sizeof err) != LARDER_E_OK) return 20;
    const int first = check_catching_up(s, c);
    step.store(first == 0 ? 1 : 2);
    if (first != 0) return first;
    // Now wait for the parent's READY.
    const bool ready = testing::run_until([&] { return s.state() == SyncState::kReady; }, std::chrono::seconds(0));
    if (!ready || larder_segment_state(c) != LARDER_SYNC_READY) return 30;
    larder_close(c);
    return 0;
  }));
  ASSERT_TRUE(testing::run_until([&] { return step.load() != 0; }, std::chrono::seconds(0)));
  w->set_target(0, std::nullopt);
  w->set_sync_state(SyncState::kReady);
  EXPECT_EQ(kids.wait(reader), 0);
  ::munmap(stage, sizeof(int));
}

}  // namespace
}  // namespace larder

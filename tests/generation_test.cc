// Generation switches: growing a table and changing the schema while the
// segment serves. Every row, tombstone, counter and position of generation N
// is in N+1 after the switch, updates applied during the copy included;
// refused switches change nothing; readers (in this process and in other
// processes) follow through several switches with no torn row and no false
// miss; a writer killed at each step of a switch restarts into exactly one
// serving generation that holds every acknowledged update.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "larder/client.h"
#include "larder/layout/segment_file.h"
#include "larder/writer/writer.h"
#include "support/process.h"
#include "support/test_segment.h"

namespace larder {
namespace {

using testing::ScratchSegment;

constexpr int64_t kBaseMs = 1'700'000'000'000;

layout::Schema users_schema(uint64_t capacity) {
  return testing::one_table_schema(testing::every_type_table("users", capacity, 4));
}

// The schema with `add` as a new int64 field and `drop` removed.
layout::Schema changed(layout::Schema s, const std::string& add, const std::string& drop) {
  auto& fields = s.tables[0].fields;
  if (!drop.empty()) {
    std::erase_if(fields, [&](const layout::FieldSpec& f) { return f.name == drop; });
  }
  if (!add.empty()) fields.push_back({add, layout::FieldType::kInt64, 1});
  return s;
}

// One update's values, all derived from `v`, so that a reader can tell a
// torn row (fields of two updates) from a whole one.
ApplyResult upsert_row(Writer& w, const std::string& key, int64_t v, int64_t event_ms) {
  const int clicks = w.field_index(0, "clicks");
  const int spend = w.field_index(0, "spend");
  const int ctr = w.field_index(0, "ctr");
  const int emb = w.field_index(0, "embedding");
  const int country = w.field_index(0, "country");
  const float e[4] = {static_cast<float>(v), 1, 2, 3};
  const std::string c = std::to_string(v % 100'000'000);
  std::vector<FieldValue> values = {FieldValue::int64(static_cast<uint32_t>(clicks), v),
                                    FieldValue::float64(static_cast<uint32_t>(spend), static_cast<double>(v) * 0.5),
                                    FieldValue::vector(static_cast<uint32_t>(emb), e),
                                    FieldValue::string(static_cast<uint32_t>(country), c)};
  if (ctr >= 0) values.push_back(FieldValue::float32(static_cast<uint32_t>(ctr), static_cast<float>(v)));
  const int extra = w.field_index(0, "extra");
  if (extra >= 0) values.push_back(FieldValue::int64(static_cast<uint32_t>(extra), v + 1));
  return w.upsert(0, key, event_ms, values, event_ms * 1'000'000);
}

void write_row(Writer& w, const std::string& key, int64_t v, int64_t event_ms) {
  ASSERT_EQ(upsert_row(w, key, v, event_ms), ApplyResult::kApplied) << key;
}

// Empty when the row is one whole update, else what is wrong.
std::string torn(const Table& t, const RowView& row) {
  const Field clicks = t.field("clicks");
  const int64_t v = row.i64(clicks);
  if (!row.valid(clicks)) return "clicks not valid";
  if (row.f64(t.field("spend")) != static_cast<double>(v) * 0.5) return "spend of another update";
  if (row.vector(t.field("embedding"))[0] != static_cast<float>(v)) return "embedding of another update";
  if (row.string(t.field("country")) != std::to_string(v % 100'000'000)) return "country of another update";
  for (const Field& f : t.fields()) {
    if (f.name == "ctr" && row.valid(f) && row.f32(f) != static_cast<float>(v)) return "ctr of another update";
  }
  return "";
}

// Reads every key of `model` (key -> clicks, -1 deleted) through `users`:
// a deleted key is not found, a live one holds its value in one whole
// update. Returns how many keys are live.
uint64_t expect_model(const Table& users, const std::map<std::string, int64_t>& model) {
  Row row = users.make_row();
  uint64_t live = 0;
  for (const auto& [key, value] : model) {
    const ReadResult r = users.get(key, row);
    if (value < 0) {
      EXPECT_EQ(r.status, Status::kNotFound) << key;
      continue;
    }
    ++live;
    EXPECT_EQ(r.status, Status::kOk) << key;
    if (r.status != Status::kOk) continue;
    EXPECT_EQ(row.i64(users.field("clicks")), value) << key;
    EXPECT_EQ(torn(users, row), "") << key;
  }
  return live;
}

std::vector<std::string> leftovers(const std::string& dir, const std::string& name) {
  std::vector<std::string> found;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string f = e.path().filename().string();
    if (f.rfind("." + name + ".", 0) == 0) found.push_back(f);
  }
  return found;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(Generation, GrowCarriesEveryRowAndUpdatesDuringTheCopy) {
  ScratchSegment seg;
  auto w = Writer::open(seg.name(), users_schema(100), seg.writer_options());
  std::map<std::string, int64_t> model;  // key -> value, -1 deleted
  int64_t t = kBaseMs;
  for (int i = 0; i < 90; ++i) {
    write_row(*w, "k" + std::to_string(i), i, ++t);
    model["k" + std::to_string(i)] = i;
  }
  for (int i = 0; i < 10; ++i) {
    ASSERT_EQ(w->remove(0, "k" + std::to_string(i), ++t), ApplyResult::kApplied);
    model["k" + std::to_string(i)] = -1;
  }
  w->set_position({0, 1234, 2});
  Segment before = Segment::open(seg.name(), ClientOptions{seg.dir()});
  Table users = before.table("users");
  ASSERT_EQ(users.generation(), 0u);

  w->grow(0, 400);
  EXPECT_TRUE(w->switch_active());
  // Small steps, each followed by updates of keys on both sides of the copy,
  // new keys and deletes.
  std::mt19937_64 rng(7);
  int64_t v = 1000;
  while (!w->switch_step(16)) {
    for (int j = 0; j < 5; ++j) {
      const std::string key = "k" + std::to_string(rng() % 120);
      if (rng() % 6 == 0) {
        ASSERT_NE(w->remove(0, key, ++t), ApplyResult::kInvalid);
        model[key] = -1;
      } else {
        write_row(*w, key, ++v, ++t);
        model[key] = v;
      }
    }
  }
  EXPECT_FALSE(w->switch_active());
  const SwitchProgress p = w->switch_progress();
  EXPECT_EQ(p.generation, 1u);
  EXPECT_EQ(p.switches, 1u);
  EXPECT_TRUE(p.last_error.empty()) << p.last_error;
  EXPECT_EQ(w->stats(0).capacity, 400u);
  EXPECT_TRUE(leftovers(seg.dir(), seg.name()).empty());

  // The old mapping is retired; the table handle opened on it follows.
  EXPECT_TRUE(before.retired());
  Row row = users.make_row();
  const uint64_t live = expect_model(users, model);
  EXPECT_EQ(users.generation(), 1u);
  EXPECT_EQ(users.stats().capacity, 400u);
  EXPECT_EQ(users.stats().live_keys, live);
  EXPECT_EQ(w->stats(0).live_keys, live);
  // The positions and the writer go on in the new generation.
  ASSERT_TRUE(w->position(0).has_value());
  EXPECT_EQ(w->position(0)->next_offset, 1234u);
  EXPECT_EQ(w->position(0)->skip_updates, 2u);
  write_row(*w, "after", 5, ++t);
  EXPECT_EQ(users.get("after", row).status, Status::kOk);
  Segment now = Segment::open(seg.name(), ClientOptions{seg.dir()});
  EXPECT_EQ(now.info().generation, 1u);
  EXPECT_FALSE(now.retired());
  EXPECT_EQ(now.info().writer_pid, static_cast<uint64_t>(::getpid()));
  EXPECT_EQ(before.info().writer_pid, 0u);
}

// The paced switch_step() (the sidecar's) on a table large enough that the
// pager thread is still populating the next generation while the copy runs:
// rows updated, deleted and added behind the copy go through the follow log
// (copied at the next step), and the generation published holds exactly the
// model. Then a switch abandoned half way, and a writer closed half way
// through one, leave nothing behind: the pager thread leaves the next
// generation's pages before it is removed and is joined at close.
TEST(Generation, PacedStepsCarryEveryUpdateAndAnUnfinishedSwitchLeavesNothing) {
  ScratchSegment seg;
  constexpr int kKeys = 6000;
  auto w = Writer::open(seg.name(), users_schema(8000), seg.writer_options());
  std::map<std::string, int64_t> model;  // key -> value, -1 deleted
  int64_t t = kBaseMs;
  for (int i = 0; i < kKeys; ++i) {
    write_row(*w, "k" + std::to_string(i), i, ++t);
    model["k" + std::to_string(i)] = i;
  }
  Table users = Segment::open(seg.name(), ClientOptions{seg.dir()}).table("users");
  w->grow(0, 30000);
  std::mt19937_64 rng(11);
  int64_t v = 100'000;
  // Updates come before every step, the first included: a step after updates
  // is paced by the writer's CPU time alone, never by the wall time it spent
  // off the CPU, so how a loaded machine schedules the test cannot let one
  // step copy the whole table.
  uint64_t steps = 0;
  for (bool done = false; !done; ++steps) {
    // Updates on both sides of the copy, deletes, and keys new to the table
    // (which may take the slot of a tombstone the copy has passed).
    for (int j = 0; j < 50; ++j) {
      const std::string key = "k" + std::to_string(rng() % (kKeys + 1500));
      if (rng() % 5 == 0) {
        ASSERT_NE(w->remove(0, key, ++t), ApplyResult::kInvalid);
        model[key] = -1;
      } else {
        write_row(*w, key, ++v, ++t);
        model[key] = v;
      }
    }
    done = w->switch_step();
  }
  EXPECT_GT(steps, 2u) << "the paced steps copy a slice at a time";
  const SwitchProgress p = w->switch_progress();
  EXPECT_EQ(p.generation, 1u);
  EXPECT_TRUE(p.last_error.empty()) << p.last_error;
  EXPECT_TRUE(leftovers(seg.dir(), seg.name()).empty());
  const uint64_t live = expect_model(users, model);
  EXPECT_EQ(users.generation(), 1u);
  EXPECT_EQ(users.stats().live_keys, live);

  // Abandoned half way: the next generation's file goes, this one serves.
  w->grow(0, 60000);
  for (int i = 0; i < 3; ++i) ASSERT_FALSE(w->switch_step(64));
  w->abort_switch();
  EXPECT_FALSE(w->switch_active());
  EXPECT_TRUE(leftovers(seg.dir(), seg.name()).empty());
  // Closed half way: the same, and the next open finds generation 1.
  w->grow(0, 60000);
  ASSERT_FALSE(w->switch_step(64));
  w.reset();
  EXPECT_TRUE(leftovers(seg.dir(), seg.name()).empty());
  w = Writer::open(seg.name(), users_schema(30000), seg.writer_options());
  EXPECT_EQ(w->switch_progress().generation, 1u);
  EXPECT_EQ(w->stats(0).live_keys, live);
}

// Rows marked behind the copy and swept later, on a table so small that
// slots go from key to key all the time: tombstones expire at once
// (retention 0), so a new key takes the slot of a deleted one, often
// between the mark of the old key's row and the sweep. Steps of a few slots
// interleave the copy, the sweep and the follow log with every kind of
// update; each published generation must hold exactly the model. 56 keys
// in all: N+1 keeps the tombstones it was given until it serves, so more
// distinct keys than its slots would fill it. Seeded (LARDER_TEST_SEED
// replays a run).
TEST(Generation, SweptRowsKeepEveryStateWhileSlotsChangeKeys) {
  const char* env = std::getenv("LARDER_TEST_SEED");
  const uint64_t seed = env != nullptr ? std::strtoull(env, nullptr, 10) : std::random_device{}();
  SCOPED_TRACE("LARDER_TEST_SEED=" + std::to_string(seed));
  ScratchSegment seg;
  WriterOptions o = seg.writer_options();
  o.tombstone_retention_ms = 0;
  uint64_t capacity = 40;
  auto w = Writer::open(seg.name(), users_schema(capacity), o);
  Table users = Segment::open(seg.name(), ClientOptions{seg.dir()}).table("users");
  std::map<std::string, int64_t> model;  // key -> value, -1 deleted
  std::mt19937_64 rng(seed);
  int64_t t = kBaseMs;
  int64_t v = 0;
  auto random_op = [&] {
    const std::string key = "k" + std::to_string(rng() % 56);
    if (rng() % 3 == 0) {
      ASSERT_NE(w->remove(0, key, ++t), ApplyResult::kInvalid);
      model[key] = -1;
      return;
    }
    const ApplyResult r = upsert_row(*w, key, ++v, ++t);
    ASSERT_TRUE(r == ApplyResult::kApplied || r == ApplyResult::kTableFull) << key;
    if (r == ApplyResult::kApplied) model[key] = v;
  };
  for (int i = 0; i < 200; ++i) random_op();
  for (int s = 0; s < 16; ++s) {
    capacity += 2;  // a table kept tight: slots change keys at every step
    w->grow(0, capacity);
    uint64_t steps = 0;
    while (!w->switch_step(1 + rng() % 6)) {
      ++steps;
      for (uint64_t j = rng() % 8; j > 0; --j) random_op();
    }
    ASSERT_GT(steps, 4u);
    const SwitchProgress p = w->switch_progress();
    ASSERT_TRUE(p.last_error.empty()) << p.last_error;
    const uint64_t live = expect_model(users, model);
    EXPECT_EQ(users.generation(), static_cast<uint64_t>(s + 1));
    EXPECT_EQ(users.stats().live_keys, live);
    if (HasFailure()) return;
  }
}

TEST(Generation, AddedFieldStartsNotValidAndDroppedFieldReadsNotValid) {
  ScratchSegment seg;
  const layout::Schema v1 = users_schema(100);
  auto w = Writer::open(seg.name(), v1, seg.writer_options());
  for (int i = 0; i < 50; ++i) write_row(*w, "k" + std::to_string(i), i, kBaseMs + i);
  Table old_handle = Segment::open(seg.name(), ClientOptions{seg.dir()}).table("users");
  const Field ctr = old_handle.field("ctr");
  const Field clicks = old_handle.field("clicks");

  const layout::Schema v2 = changed(v1, "extra", "ctr");
  w->switch_now(v2);
  EXPECT_EQ(w->switch_progress().generation, 1u);
  EXPECT_EQ(w->field_index(0, "ctr"), -1);
  ASSERT_GE(w->field_index(0, "extra"), 0);

  Row row = old_handle.make_row();
  for (int i = 0; i < 50; ++i) {
    ASSERT_EQ(old_handle.get("k" + std::to_string(i), row).status, Status::kOk);
    EXPECT_EQ(row.i64(clicks), i);
    EXPECT_FALSE(row.valid(ctr)) << "a dropped field reads not valid";
    EXPECT_EQ(torn(old_handle, row), "");
  }
  Table fresh = Segment::open(seg.name(), ClientOptions{seg.dir()}).table("users");
  const Field extra = fresh.field("extra", FieldType::kInt64);
  Row frow = fresh.make_row();
  ASSERT_EQ(fresh.get("k7", frow).status, Status::kOk);
  EXPECT_FALSE(frow.valid(extra)) << "an added field starts not valid";
  EXPECT_EQ(frow.i64(fresh.field("clicks")), 7);
  write_row(*w, "k7", 700, kBaseMs + 1000);
  ASSERT_EQ(fresh.get("k7", frow).status, Status::kOk);
  EXPECT_TRUE(frow.valid(extra));
  EXPECT_EQ(frow.i64(extra), 701);
  ASSERT_EQ(old_handle.get("k7", row).status, Status::kOk);
  EXPECT_EQ(row.i64(clicks), 700);
  EXPECT_EQ(torn(old_handle, row), "");
}

TEST(Generation, RefusalsChangeNothing) {
  ScratchSegment seg;
  const layout::Schema v1 = users_schema(100);
  auto w = Writer::open(seg.name(), v1, seg.writer_options());
  for (int i = 0; i < 60; ++i) write_row(*w, "k" + std::to_string(i), i, kBaseMs + i);
  const std::string path = w->path();
  const std::string bytes = file_bytes(path);

  layout::Schema retyped = v1;
  retyped.tables[0].fields[1].type = layout::FieldType::kInt64;  // spend: float64 -> int64
  try {
    w->begin_switch(retyped);
    FAIL() << "a type change was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kSchemaMismatch);
    EXPECT_NE(std::string(e.what()).find("users.spend"), std::string::npos) << e.what();
  }
  try {
    w->grow(0, 59);
    FAIL() << "a capacity below the live keys was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("60 live keys"), std::string::npos) << e.what();
  }
  try {
    w->grow(0, uint64_t{1} << 35);  // terabytes: no tmpfs holds two such generations
    FAIL() << "a switch the directory cannot hold was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNoSpace);
    EXPECT_NE(std::string(e.what()).find("beside"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(w->switch_active());
  EXPECT_FALSE(w->switch_progress().last_error.empty());
  EXPECT_TRUE(file_bytes(path) == bytes) << "a refused switch changed the segment";
  EXPECT_TRUE(leftovers(seg.dir(), seg.name()).empty());
  // And the writer goes on as before.
  write_row(*w, "k1", 100, kBaseMs + 100);
  EXPECT_EQ(w->switch_progress().generation, 0u);
}

TEST(Generation, ReopenAdoptsGrownCapacityAndMigratesASchemaChange) {
  ScratchSegment seg;
  const layout::Schema v1 = users_schema(100);
  {
    auto w = Writer::open(seg.name(), v1, seg.writer_options());
    for (int i = 0; i < 70; ++i) write_row(*w, "k" + std::to_string(i), i, kBaseMs + i);
    w->grow(0, 300);
    while (!w->switch_step(32)) {
    }
  }
  // The configured capacity is the one the table started with: the grown
  // table stays grown.
  {
    auto w = Writer::open(seg.name(), v1, seg.writer_options());
    EXPECT_FALSE(w->created());
    EXPECT_EQ(w->stats(0).capacity, 300u);
    EXPECT_EQ(w->stats(0).live_keys, 70u);
  }
  const layout::Schema v2 = changed(v1, "extra", "premium");
  try {
    Writer::open(seg.name(), v2, seg.writer_options());
    FAIL() << "a schema change was accepted without migrate_on_schema_change";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kSchemaMismatch);
  }
  WriterOptions migrate = seg.writer_options();
  migrate.migrate_on_schema_change = true;
  auto w = Writer::open(seg.name(), v2, migrate);
  EXPECT_EQ(w->switch_progress().generation, 2u);
  EXPECT_EQ(w->stats(0).capacity, 300u);
  EXPECT_EQ(w->stats(0).live_keys, 70u);
  Table users = Segment::open(seg.name(), ClientOptions{seg.dir()}).table("users");
  Row row = users.make_row();
  for (int i = 0; i < 70; ++i) {
    ASSERT_EQ(users.get("k" + std::to_string(i), row).status, Status::kOk);
    EXPECT_EQ(torn(users, row), "");
  }
  EXPECT_THROW(users.field("premium"), Error);
  // A type change on reopen is refused, and the generation serving stays as
  // it was (its rows, fields and generation; the refused writer's attach is
  // counted in its header like any other).
  layout::Schema retyped = v2;
  retyped.tables[0].fields[0].type = layout::FieldType::kFloat64;
  w.reset();
  try {
    Writer::open(seg.name(), retyped, migrate);
    FAIL() << "a type change was migrated";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kSchemaMismatch);
  }
  EXPECT_TRUE(leftovers(seg.dir(), seg.name()).empty());
  Segment after = Segment::open(seg.name(), ClientOptions{seg.dir()});
  EXPECT_EQ(after.info().generation, 2u);
  EXPECT_FALSE(after.retired());
  Table again = after.table("users");
  EXPECT_EQ(again.field("clicks").type, FieldType::kInt64);
  for (int i = 0; i < 70; ++i) {
    ASSERT_EQ(again.get("k" + std::to_string(i), row).status, Status::kOk);
    EXPECT_EQ(again.view(row.data()).i64(again.field("clicks")), i);
  }
}

TEST(Generation, AutomaticGrowthAtTheConfiguredLoad) {
  ScratchSegment seg;
  WriterOptions o = seg.writer_options();
  o.grow_at = 0.8;
  o.grow_factor = 2;
  o.max_capacity = 300;
  auto w = Writer::open(seg.name(), users_schema(100), o);
  for (int i = 0; i < 79; ++i) write_row(*w, "k" + std::to_string(i), i, kBaseMs + i);
  w->maintain();
  EXPECT_FALSE(w->switch_active()) << "below grow_at";
  write_row(*w, "k79", 79, kBaseMs + 79);
  w->maintain();
  while (w->switch_active()) w->maintain();
  EXPECT_EQ(w->stats(0).capacity, 200u);
  for (int i = 80; i < 160; ++i) write_row(*w, "k" + std::to_string(i), i, kBaseMs + i);
  while (w->switch_active() || w->stats(0).capacity < 300) w->maintain();
  EXPECT_EQ(w->stats(0).capacity, 300u) << "bounded by max_capacity";
  for (int i = 160; i < 300; ++i) write_row(*w, "k" + std::to_string(i), i, kBaseMs + i);
  w->maintain();
  EXPECT_FALSE(w->switch_active());
  EXPECT_EQ(w->stats(0).capacity, 300u);
  EXPECT_EQ(w->stats(0).live_keys, 300u);
}

// The writer of the crash test: applies updates of its own sequence and
// steps the switch, writing the number of each update it acknowledges to a
// pipe after the call returns.
std::atomic<int> g_switch_points{0};
int g_kill_at = 0;
void kill_at_switch_point(CrashPoint p) {
  if (p == CrashPoint::kSwitch && ++g_switch_points == g_kill_at) ::raise(SIGKILL);
}

constexpr int kCrashKeys = 200;

std::string crash_key(int u) { return "key" + std::to_string(u * 7919 % (kCrashKeys + 40)); }

TEST(Generation, WriterKilledAtEachStepOfASwitch) {
  const layout::Schema v1 = users_schema(kCrashKeys + 100);
  const layout::Schema target = changed(users_schema(4 * (kCrashKeys + 100)), "extra", "premium");
  // Count the steps of one switch first: a kill at each one, then one past
  // the last (the switch completes).
  int steps = 0;
  for (int kill_at = 1;; ++kill_at) {
    ScratchSegment seg;
    {
      auto w = Writer::open(seg.name(), v1, seg.writer_options());
      for (int i = 0; i < kCrashKeys; ++i) write_row(*w, "key" + std::to_string(i), i, kBaseMs + i);
    }
    Table reader = Segment::open(seg.name(), ClientOptions{seg.dir()}).table("users");
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t child = testing::spawn([&] {
      ::close(fds[0]);
      auto w = Writer::open(seg.name(), v1, seg.writer_options());
      g_kill_at = kill_at;
      set_crash_hook(kill_at_switch_point);
      w->begin_switch(target);
      int u = 0;
      bool done = false;
      while (!done) {
        for (int j = 0; j < 3; ++j, ++u) {
          write_row(*w, crash_key(u), 100'000 + u, kBaseMs + 10'000 + u);
          if (::write(fds[1], &u, sizeof u) != sizeof u) return 2;
        }
        done = w->switch_step(24);
      }
      return 0;
    });
    ::close(fds[1]);
    std::vector<int> acked;
    int u;
    while (::read(fds[0], &u, sizeof u) == sizeof u) acked.push_back(u);
    ::close(fds[0]);
    const int code = testing::wait_for(child);
    const bool finished = code == 0;
    if (!finished) {
      ASSERT_EQ(code, 128 + SIGKILL) << "kill at step " << kill_at;
    }
    steps = kill_at;

    // The restart, configured with the schema the switch was to: exactly one
    // generation at the name, nothing else left. A switch that did not
    // publish is done again from the start by the migration.
    WriterOptions migrate = seg.writer_options();
    migrate.migrate_on_schema_change = true;
    auto w = Writer::open(seg.name(), target, migrate);
    EXPECT_EQ(w->switch_progress().generation, 1u);
    EXPECT_TRUE(leftovers(seg.dir(), seg.name()).empty()) << "kill at step " << kill_at;
    Segment serving = Segment::open(seg.name(), ClientOptions{seg.dir()});
    EXPECT_FALSE(serving.retired());
    // Every acknowledged update is there (or a later one of the same key).
    std::map<std::string, int64_t> want;
    for (int i = 0; i < kCrashKeys; ++i) want["key" + std::to_string(i)] = i;
    for (int a : acked) want[crash_key(a)] = 100'000 + a;
    Table now = serving.table("users");
    Row row = now.make_row();
    Row rrow = reader.make_row();
    for (const auto& [key, value] : want) {
      ASSERT_EQ(now.get(key, row).status, Status::kOk) << key << ", kill at step " << kill_at;
      EXPECT_GE(row.i64(now.field("clicks")), value) << key << ", kill at step " << kill_at;
      EXPECT_EQ(torn(now, row), "");
      // A reader that mapped generation 0 before the switch reads the
      // serving generation's row, or generation 0's when that still serves.
      ASSERT_EQ(reader.get(key, rrow).status, Status::kOk) << key;
      EXPECT_EQ(rrow.i64(reader.field("clicks")), row.i64(now.field("clicks"))) << key;
    }
    EXPECT_EQ(w->stats(0).live_keys, now.stats().live_keys);
    if (finished) break;
  }
  // The last run was not killed: every step before it was a kill point.
  std::printf("writer killed at %d steps of a switch\n", steps - 1);
  EXPECT_GE(steps - 1, 20) << "kill points spread over the switch";
}

// Cross-process torture: reader processes read every key continuously
// (single gets and batches) through two growths and a schema change while
// this process applies updates; each reader counts torn rows, misses of
// keys that exist throughout, and errors, and stops when it reads the key
// "done", which the writer writes last.
TEST(Generation, ReadersInOtherProcessesFollowEverySwitch) {
  ScratchSegment seg;
  constexpr int kKeys = 3000;
  const layout::Schema v1 = users_schema(4000);
  auto w = Writer::open(seg.name(), v1, seg.writer_options());
  for (int i = 0; i < kKeys; ++i) write_row(*w, "k" + std::to_string(i), i, kBaseMs + i);

  auto* counts = static_cast<std::atomic<uint64_t>*>(
      ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(counts, MAP_FAILED);
  constexpr int kReaders = 3;
  // Per reader: [0] reads, [1] torn, [2] false misses, [3] other statuses,
  // [4] generations seen (the last), [5] started, [6] kBusy, [7] the last
  // other status. kBusy (a writer held the slot through every retry, e.g.
  // preempted mid-write on a loaded machine) asks for a retry; it is not a
  // wrong answer, and process_test counts it the same way.
  testing::Children children;
  std::vector<pid_t> pids;
  for (int r = 0; r < kReaders; ++r) {
    pids.push_back(children.add(testing::spawn([&, r] {
      std::atomic<uint64_t>* c = counts + 8 * r;
      Table t = Segment::open(seg.name(), ClientOptions{seg.dir()}).table("users");
      Row row = t.make_row();
      RowBatch batch = t.make_batch(64);
      std::vector<std::string> names(64);
      std::vector<std::string_view> keys(64);
      std::vector<ReadResult> results(64);
      c[5] = 1;
      std::mt19937_64 rng(static_cast<uint64_t>(r));
      for (uint64_t n = 0;; ++n) {
        if (n % 64 == 0 && t.get("done", row).status == Status::kOk) break;
        if (r % 2 == 0) {
          const std::string key = "k" + std::to_string(rng() % kKeys);
          const ReadResult res = t.get(key, row);
          ++c[0];
          if (res.status == Status::kNotFound) {
            ++c[2];
          } else if (res.status == Status::kBusy) {
            ++c[6];
          } else if (res.status != Status::kOk) {
            ++c[3];
            c[7] = static_cast<uint64_t>(res.status);
          } else if (!torn(t, row).empty()) {
            ++c[1];
          }
        } else {
          for (size_t i = 0; i < 64; ++i) {
            names[i] = "k" + std::to_string(rng() % kKeys);
            keys[i] = names[i];
          }
          t.get_many(keys, batch, results);
          for (size_t i = 0; i < 64; ++i) {
            ++c[0];
            if (results[i].status == Status::kNotFound) {
              ++c[2];
            } else if (results[i].status == Status::kBusy) {
              ++c[6];
            } else if (results[i].status != Status::kOk) {
              ++c[3];
              c[7] = static_cast<uint64_t>(results[i].status);
            } else if (!torn(t, batch.row(i)).empty()) {
              ++c[1];
            }
          }
        }
      }
      c[4] = t.generation();
      return 0;
    })));
  }
  for (int r = 0; r < kReaders; ++r) {
    while (counts[8 * r + 5].load() == 0) std::this_thread::yield();  // the readers are reading
  }

  std::vector<int64_t> model(kKeys);
  for (int i = 0; i < kKeys; ++i) model[static_cast<size_t>(i)] = i;
  int64_t v = kKeys, t = kBaseMs + kKeys;
  std::mt19937_64 rng(11);
  auto apply_some = [&](int n) {
    for (int j = 0; j < n; ++j) {
      const size_t k = rng() % kKeys;
      write_row(*w, "k" + std::to_string(k), ++v, ++t);
      model[k] = v;
    }
  };
  const layout::Schema plans[] = {users_schema(8000), users_schema(16000),
                                  changed(users_schema(16000), "extra", "ctr")};
  for (const layout::Schema& next : plans) {
    apply_some(2000);
    w->begin_switch(next);
    do {
      apply_some(200);
    } while (!w->switch_step(512));
    ASSERT_TRUE(w->switch_progress().last_error.empty()) << w->switch_progress().last_error;
  }
  apply_some(2000);
  write_row(*w, "done", 0, ++t);
  for (pid_t pid : pids) EXPECT_EQ(children.wait(pid), 0);
  EXPECT_EQ(w->switch_progress().generation, 3u);
  for (int r = 0; r < kReaders; ++r) {
    const std::atomic<uint64_t>* c = counts + 8 * r;
    EXPECT_GT(c[0].load(), c[6].load()) << "reader " << r << " read no verified row";
    EXPECT_EQ(c[1].load(), 0u) << "reader " << r << " torn rows";
    EXPECT_EQ(c[2].load(), 0u) << "reader " << r << " false misses";
    EXPECT_EQ(c[3].load(), 0u) << "reader " << r << " other statuses, the last "
                               << status_name(static_cast<Status>(c[7].load()));
    EXPECT_EQ(c[4].load(), 3u) << "reader " << r << " generation";
  }
  // Every update is in the final generation.
  Table users = Segment::open(seg.name(), ClientOptions{seg.dir()}).table("users");
  Row row = users.make_row();
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_EQ(users.get("k" + std::to_string(i), row).status, Status::kOk);
    EXPECT_EQ(row.i64(users.field("clicks")), model[static_cast<size_t>(i)]);
  }
  ::munmap(counts, 4096);
}

// ---------------------------------------------------------------------------
// Aggregates across a switch. A segment that switches part-way through a
// stream of events is compared with one fed the same stream without a
// switch (the reference): every aggregate output of every key must be
// bit-for-bit the same, which holds only if each row's windows, buckets,
// dense rings (arena chunks), distinct sets, event stores and the dedup set
// went across exactly, with the rows changed during the copy taken again.

// 2100-01-01: later than the wall clock, so the events' clock rules.
constexpr int64_t kAggBaseMs = 4'102'444'800'000;

layout::AggregateSpec agg(std::string name, std::string source, layout::AggregateFn fn, int64_t window_ms,
                          int64_t resolution_ms, layout::WindowEnd end = layout::WindowEnd::kNow) {
  layout::AggregateSpec a;
  a.name = std::move(name);
  a.source = std::move(source);
  a.fn = fn;
  a.window_ms = window_ms;
  a.resolution_ms = resolution_ms;
  a.end = end;
  return a;
}

layout::AggregateSpec events_agg(std::string name, std::string source, layout::AggregateFn fn, uint32_t events) {
  layout::AggregateSpec a;
  a.name = std::move(name);
  a.source = std::move(source);
  a.fn = fn;
  a.window_events = events;
  return a;
}

// Rings longer than the inline buckets (dense in an arena chunk for the hot
// keys), several statistics in one ring, a latest_event window, a distinct
// count, a count window and a sequence.
layout::Schema events_schema(uint64_t capacity) {
  using layout::AggregateFn;
  layout::TableSpec t;
  t.name = "users";
  t.key_max_len = 16;
  t.capacity = capacity;
  t.arena_chunks = 96;  // every key's rings may be dense at once: no refusal depends on the capacity
  t.fields = {{"amount", layout::FieldType::kFloat64, 1}, {"item", layout::FieldType::kInt64, 1}};
  t.aggregates = {
      agg("events_10s", "", AggregateFn::kCount, 10'000, 1000),
      agg("amount_sum_10s", "amount", AggregateFn::kSum, 10'000, 1000),
      agg("amount_std_10s", "amount", AggregateFn::kStddev, 10'000, 1000),
      agg("amount_max_3s", "amount", AggregateFn::kMax, 3000, 250, layout::WindowEnd::kLatestEvent),
      agg("item_distinct_10s", "item", AggregateFn::kDistinctCount, 10'000, 1000),
      events_agg("amount_last5", "amount", AggregateFn::kLastN, 5),
      events_agg("amount_mean_4ev", "amount", AggregateFn::kMean, 4),
  };
  return testing::one_table_schema(t);
}

// A stream of events over 24 keys, two of them hot (dense rings), with
// deletes, redeliveries and refreshes, applied alike to every writer given.
struct EventStream {
  std::mt19937_64 rng{11};
  uint64_t n = 0;
  int64_t t = kAggBaseMs;

  // One step: an event, a delete or a redelivered event id; every writer
  // must answer alike. Then, every 16 steps, a refresh of every due key.
  void step(const std::vector<Writer*>& ws) {
    ++n;
    t += 37 + static_cast<int64_t>(rng() % 200);
    const uint64_t r = rng() % 100;
    const std::string key = r < 50 ? "hot" + std::to_string(r % 2) : "k" + std::to_string(rng() % 22);
    std::vector<ApplyResult> results;
    if (r >= 97) {
      for (Writer* w : ws) results.push_back(w->remove(0, key, t, t * 1'000'000));
    } else {
      const double amount = static_cast<double>(rng() % 10'000) / 7.0 - 300.0;
      const auto item = static_cast<int64_t>(rng() % 40);
      // Now and then an id seen a few seconds ago comes again.
      const uint64_t id = r >= 94 && n > 100 ? n - 20 - rng() % 30 : n;
      for (Writer* w : ws) {
        std::vector<SourceValue> sources;  // the sources this writer's schema has
        if (const int s = w->source_index(0, "amount"); s >= 0)
          sources.push_back({static_cast<uint32_t>(s), amount, 0});
        if (const int s = w->source_index(0, "item"); s >= 0) {
          sources.push_back({static_cast<uint32_t>(s), static_cast<double>(item), distinct_hash_int64(item)});
        }
        results.push_back(w->apply(0, key, t, {}, sources, id, t * 1'000'000));
      }
    }
    for (size_t i = 1; i < results.size(); ++i) {
      ASSERT_EQ(results[i], results[0]) << "event " << n << " key " << key;
    }
    if (n % 16 == 0) {
      for (Writer* w : ws) w->refresh(t * 1'000'000);
    }
  }
};

// Empty when every field named in both tables reads the same (validity and
// bits) for every key of the stream, else the first difference.
std::string same_outputs(const Table& a, const Table& b, const std::vector<std::string>& skip = {}) {
  Row ra = a.make_row();
  Row rb = b.make_row();
  std::vector<std::string> keys = {"hot0", "hot1"};
  for (int i = 0; i < 22; ++i) keys.push_back("k" + std::to_string(i));
  for (const std::string& key : keys) {
    const Status sa = a.get(key, ra).status;
    const Status sb = b.get(key, rb).status;
    if (sa != sb) return key + ": found in one and not the other";
    if (sa != Status::kOk) continue;
    for (const Field& fa : a.fields()) {
      if (std::find(skip.begin(), skip.end(), fa.name) != skip.end()) continue;
      const Field fb = b.field(fa.name);
      const std::string where = key + "." + std::string(fa.name);
      if (ra.valid(fa) != rb.valid(fb)) return where + ": valid in one only";
      if (!ra.valid(fa)) continue;
      bool same = true;
      switch (fa.type) {
        case FieldType::kInt64: same = ra.i64(fa) == rb.i64(fb); break;
        case FieldType::kFloat64:
          same = std::bit_cast<uint64_t>(ra.f64(fa)) == std::bit_cast<uint64_t>(rb.f64(fb));
          break;
        case FieldType::kFloat32Vector: {
          const auto va = ra.vector(fa);
          const auto vb = rb.vector(fb);
          // Bits, not values: a sequence pads with NaN.
          same = va.size() == vb.size() && std::memcmp(va.data(), vb.data(), va.size_bytes()) == 0;
          break;
        }
        default: break;
      }
      if (!same) return where + ": values differ";
    }
  }
  return "";
}

TEST(GenerationAggregates, GrowCarriesEveryWindowExactly) {
  ScratchSegment seg_a, seg_ref;
  auto a = Writer::open(seg_a.name(), events_schema(40), seg_a.writer_options());
  auto ref = Writer::open(seg_ref.name(), events_schema(40), seg_ref.writer_options());
  EventStream stream;
  const std::vector<Writer*> both = {a.get(), ref.get()};
  for (int i = 0; i < 600; ++i) ASSERT_NO_FATAL_FAILURE(stream.step(both));
  ASSERT_GT(a->stats(0).arena_used, 0u) << "the hot keys' rings are dense: chunks go across";
  a->grow(0, 160);
  // A few slots per step, events between them: rows on both sides of the
  // copy change, are deleted, refreshed and come back.
  while (!a->switch_step(3)) {
    for (int i = 0; i < 4; ++i) ASSERT_NO_FATAL_FAILURE(stream.step(both));
  }
  ASSERT_TRUE(a->switch_progress().last_error.empty()) << a->switch_progress().last_error;
  EXPECT_EQ(a->switch_progress().generation, 1u);
  EXPECT_EQ(a->stats(0).capacity, 160u);
  Table ta = Segment::open(seg_a.name(), ClientOptions{seg_a.dir()}).table("users");
  Table tr = Segment::open(seg_ref.name(), ClientOptions{seg_ref.dir()}).table("users");
  EXPECT_EQ(same_outputs(ta, tr), "") << "right after the switch";
  for (int i = 0; i < 600; ++i) ASSERT_NO_FATAL_FAILURE(stream.step(both));
  a->refresh(stream.t * 1'000'000);
  ref->refresh(stream.t * 1'000'000);
  EXPECT_EQ(same_outputs(ta, tr), "") << "600 events later";
  const WriterStats sa = a->stats(0);
  const WriterStats sr = ref->stats(0);
  EXPECT_EQ(sa.aggregate_events, sr.aggregate_events);
  EXPECT_GT(sa.duplicates, 0u) << "ids seen before the switch are still known after it";
  EXPECT_EQ(sa.duplicates, sr.duplicates);
  EXPECT_EQ(sa.dedup_evictions, sr.dedup_evictions);
  EXPECT_EQ(sa.arena_used, sr.arena_used);
  EXPECT_EQ(sa.live_keys, sr.live_keys);
}

TEST(GenerationAggregates, SchemaChangeCarriesKeptAggregatesAndStartsNewOnesEmpty) {
  using layout::AggregateFn;
  const layout::Schema v1 = events_schema(40);
  // v2: item_distinct_10s dropped (its ring goes), amount_mean_10s added to
  // the kept amount ring (computed from the carried state), amount_min_2s in
  // a ring of its own (starts empty at the switch).
  layout::Schema v2 = v1;
  auto& aggs = v2.tables[0].aggregates;
  std::erase_if(aggs, [](const layout::AggregateSpec& x) { return x.name == "item_distinct_10s"; });
  aggs.push_back(agg("amount_mean_10s", "amount", AggregateFn::kMean, 10'000, 1000));
  aggs.push_back(agg("amount_min_2s", "amount", AggregateFn::kMin, 2000, 500));

  ScratchSegment seg_a, seg_ref, seg_new;
  auto a = Writer::open(seg_a.name(), v1, seg_a.writer_options());
  auto ref = Writer::open(seg_ref.name(), v2, seg_ref.writer_options());  // v2 from the start
  EventStream stream;
  for (int i = 0; i < 500; ++i) ASSERT_NO_FATAL_FAILURE(stream.step({a.get(), ref.get()}));
  a->begin_switch(v2);
  while (!a->switch_step(5)) ASSERT_NO_FATAL_FAILURE(stream.step({a.get(), ref.get()}));
  ASSERT_TRUE(a->switch_progress().last_error.empty()) << a->switch_progress().last_error;
  ASSERT_EQ(a->switch_progress().generation, 1u);
  Table ta = Segment::open(seg_a.name(), ClientOptions{seg_a.dir()}).table("users");
  Table tr = Segment::open(seg_ref.name(), ClientOptions{seg_ref.dir()}).table("users");
  const Field min2 = ta.field("amount_min_2s");
  Row row = ta.make_row();
  ASSERT_EQ(ta.get("hot0", row).status, Status::kOk);
  EXPECT_FALSE(row.valid(min2)) << "a new aggregate starts empty";
  EXPECT_TRUE(row.valid(ta.field("amount_mean_10s"))) << "an added aggregate of a kept ring has its value now";
  EXPECT_EQ(same_outputs(ta, tr, {"amount_min_2s"}), "");

  // From the switch on, the new ring sees what a segment fed only the
  // events after the switch sees.
  auto fresh = Writer::open(seg_new.name(), v2, seg_new.writer_options());
  for (int i = 0; i < 400; ++i) ASSERT_NO_FATAL_FAILURE(stream.step({a.get(), ref.get(), fresh.get()}));
  for (Writer* w : {a.get(), ref.get(), fresh.get()}) w->refresh(stream.t * 1'000'000);
  EXPECT_EQ(same_outputs(ta, tr, {"amount_min_2s"}), "");
  Table tn = Segment::open(seg_new.name(), ClientOptions{seg_new.dir()}).table("users");
  Row nrow = tn.make_row();
  for (const std::string key : {"hot0", "hot1", "k3", "k9"}) {
    ASSERT_EQ(ta.get(key, row).status, Status::kOk) << key;
    if (tn.get(key, nrow).status != Status::kOk) {
      EXPECT_FALSE(row.valid(min2)) << key;
      continue;
    }
    ASSERT_EQ(row.valid(min2), nrow.valid(tn.field("amount_min_2s"))) << key;
    if (row.valid(min2)) {
      EXPECT_EQ(row.f64(min2), nrow.f64(tn.field("amount_min_2s"))) << key;
    }
  }
}

TEST(GenerationAggregates, ChangedRingsAndStoresAreRefused) {
  using layout::AggregateFn;
  ScratchSegment seg;
  const layout::Schema v1 = events_schema(40);
  auto w = Writer::open(seg.name(), v1, seg.writer_options());
  EventStream stream;
  for (int i = 0; i < 100; ++i) ASSERT_NO_FATAL_FAILURE(stream.step({w.get()}));
  const std::string bytes = file_bytes(w->path());

  // max over the amount ring at 1 s: its buckets never kept a maximum.
  layout::Schema more = v1;
  more.tables[0].aggregates.push_back(agg("amount_max_10s", "amount", AggregateFn::kMax, 10'000, 1000));
  // A longer window at the same resolution: a longer ring.
  layout::Schema longer = v1;
  longer.tables[0].aggregates[1].window_ms = 20'000;
  // A sequence of 8: the store keeps 5 events.
  layout::Schema seq = v1;
  seq.tables[0].aggregates[5].window_events = 8;
  for (const auto& [schema, names] : std::vector<std::pair<layout::Schema, std::string>>{
           {more, "amount_max_10s"}, {longer, "amount_sum_10s"}, {seq, "amount_last5"}}) {
    try {
      w->begin_switch(schema);
      FAIL() << names << ": accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kSchemaMismatch) << e.what();
      EXPECT_NE(std::string(e.what()).find(names), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("table \"users\""), std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(w->switch_active());
  EXPECT_TRUE(file_bytes(w->path()) == bytes) << "a refused switch changed the segment";
  EXPECT_TRUE(leftovers(seg.dir(), seg.name()).empty());
}

// ---------------------------------------------------------------------------
// Field defaults and declared conversions.

TEST(GenerationFields, AddedFieldsTakeTheirDefaultInEveryCarriedRow) {
  ScratchSegment seg;
  const layout::Schema v1 = users_schema(100);
  auto w = Writer::open(seg.name(), v1, seg.writer_options());
  for (int i = 0; i < 40; ++i) write_row(*w, "k" + std::to_string(i), i, kBaseMs + i);
  ASSERT_EQ(w->remove(0, "k3", kBaseMs + 100), ApplyResult::kApplied);

  layout::Schema v2 = v1;
  auto& fields = v2.tables[0].fields;
  fields.push_back({"tier", layout::FieldType::kInt64, 1});
  fields.back().default_value = "-3";
  fields.push_back({"score", layout::FieldType::kFloat64, 1});
  fields.back().default_value = "0.25";
  fields.push_back({"plan", layout::FieldType::kString, 8});
  fields.back().default_value = "free";
  fields.push_back({"beta", layout::FieldType::kBool, 1});
  fields.back().default_value = "true";
  fields.push_back({"bias", layout::FieldType::kFloat32Vector, 2});
  fields.back().default_value = "1.5, -2";
  fields.push_back({"unset", layout::FieldType::kInt64, 1});
  // A default on a field the rows already have changes nothing.
  fields[0].default_value = "999";

  // A default that is not of the field's type: refused, nothing changes.
  layout::Schema bad = v2;
  bad.tables[0].fields[bad.tables[0].fields.size() - 6].default_value = "three";
  const std::string bytes = file_bytes(w->path());
  try {
    w->begin_switch(bad);
    FAIL() << "a default that is not an int64 was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("users.tier"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(file_bytes(w->path()) == bytes);
  EXPECT_TRUE(leftovers(seg.dir(), seg.name()).empty());

  w->begin_switch(v2);
  // Rows updated during the copy take the default too when taken again.
  while (!w->switch_step(8)) write_row(*w, "k1", 1001, kBaseMs + 1000);
  ASSERT_EQ(w->switch_progress().generation, 1u);
  write_row(*w, "new", 5, kBaseMs + 2000);

  Table t = Segment::open(seg.name(), ClientOptions{seg.dir()}).table("users");
  Row row = t.make_row();
  for (int i = 0; i < 40; ++i) {
    const std::string key = "k" + std::to_string(i);
    if (i == 3) {
      EXPECT_EQ(t.get(key, row).status, Status::kNotFound);
      continue;
    }
    ASSERT_EQ(t.get(key, row).status, Status::kOk) << key;
    EXPECT_EQ(row.i64(t.field("clicks")), i == 1 ? 1001 : i) << key;
    ASSERT_TRUE(row.valid(t.field("tier"))) << key;
    EXPECT_EQ(row.i64(t.field("tier")), -3);
    EXPECT_EQ(row.f64(t.field("score")), 0.25);
    EXPECT_EQ(row.string(t.field("plan")), "free");
    EXPECT_TRUE(row.valid(t.field("beta")));
    const auto bias = row.vector(t.field("bias"));
    ASSERT_EQ(bias.size(), 2u);
    EXPECT_EQ(bias[0], 1.5f);
    EXPECT_EQ(bias[1], -2.0f);
    EXPECT_FALSE(row.valid(t.field("unset"))) << "no default: not valid";
  }
  ASSERT_EQ(t.get("new", row).status, Status::kOk);
  EXPECT_FALSE(row.valid(t.field("tier"))) << "a key written after the switch has only what it was sent";
}

layout::Schema numbers_schema() {
  layout::TableSpec t;
  t.name = "nums";
  t.key_max_len = 16;
  t.capacity = 64;
  t.fields = {{"i", layout::FieldType::kInt64, 1},   {"d", layout::FieldType::kFloat64, 1},
              {"f", layout::FieldType::kFloat32, 1}, {"g", layout::FieldType::kFloat64, 1},
              {"b", layout::FieldType::kBool, 1},    {"n", layout::FieldType::kInt64, 1},
              {"s", layout::FieldType::kString, 8}};
  return testing::one_table_schema(t);
}

TEST(GenerationFields, DeclaredConversionsAndRefusedOnes) {
  ScratchSegment seg;
  const layout::Schema v1 = numbers_schema();
  auto w = Writer::open(seg.name(), v1, seg.writer_options());
  struct In {
    int64_t i;
    double d;
    float f;
    double g;
    bool b;
    int64_t n;
  };
  const std::vector<In> in = {{9'007'199'254'740'993, 2.5, 0.1f, 1e300, true, 42},
                              {-7, -2.5, -3.75f, 0.1, false, 123'456'789'012},
                              {0, std::nan(""), 1e-3f, -2.0, true, -1234567},
                              {1, 1e30, 0, 3.5, false, 0}};
  int64_t t = kBaseMs;
  for (size_t k = 0; k < in.size(); ++k) {
    const std::vector<FieldValue> v = {FieldValue::int64(0, in[k].i),   FieldValue::float64(1, in[k].d),
                                       FieldValue::float32(2, in[k].f), FieldValue::float64(3, in[k].g),
                                       FieldValue::boolean(4, in[k].b), FieldValue::int64(5, in[k].n),
                                       FieldValue::string(6, "x")};
    ++t;
    ASSERT_EQ(w->upsert(0, "r" + std::to_string(k), t, v, t * 1'000'000), ApplyResult::kApplied);
  }

  auto convert = [&](layout::Schema s, size_t field, layout::FieldType to, uint32_t count,
                     std::optional<layout::FieldType> from) {
    s.tables[0].fields[field].type = to;
    s.tables[0].fields[field].count = count;
    s.tables[0].fields[field].convert_from = from;
    return s;
  };
  using F = layout::FieldType;
  // Refused: a conversion not in the list, one declared from the wrong type,
  // a change with none declared. Each names the field.
  const std::vector<std::pair<layout::Schema, std::string>> refused = {
      {convert(v1, 6, F::kInt64, 1, F::kString), "nums.s"},
      {convert(v1, 0, F::kFloat64, 1, F::kFloat32), "nums.i"},
      {convert(v1, 4, F::kFloat64, 1, std::nullopt), "nums.b"},
      {convert(v1, 0, F::kBool, 1, F::kInt64), "nums.i"},
  };
  const std::string bytes = file_bytes(w->path());
  for (const auto& [schema, name] : refused) {
    try {
      w->begin_switch(schema);
      FAIL() << name << ": accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kSchemaMismatch) << e.what();
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
  EXPECT_TRUE(file_bytes(w->path()) == bytes) << "a refused switch changed the segment";

  layout::Schema v2 = convert(v1, 0, F::kFloat64, 1, F::kInt64);  // i: int64 -> float64
  v2 = convert(v2, 1, F::kInt64, 1, F::kFloat64);                 // d: float64 -> int64
  v2 = convert(v2, 2, F::kFloat64, 1, F::kFloat32);               // f: float32 -> float64
  v2 = convert(v2, 3, F::kFloat32, 1, F::kFloat64);               // g: float64 -> float32
  v2 = convert(v2, 4, F::kInt64, 1, F::kBool);                    // b: bool -> int64
  v2 = convert(v2, 5, F::kString, 6, F::kInt64);                  // n: int64 -> string(6)
  w->switch_now(v2);
  ASSERT_EQ(w->switch_progress().generation, 1u);

  Table tab = Segment::open(seg.name(), ClientOptions{seg.dir()}).table("nums");
  Row row = tab.make_row();
  const Field i = tab.field("i", FieldType::kFloat64), d = tab.field("d", FieldType::kInt64);
  const Field f = tab.field("f", FieldType::kFloat64), g = tab.field("g", FieldType::kFloat32);
  const Field b = tab.field("b", FieldType::kInt64), n = tab.field("n", FieldType::kString);
  for (size_t k = 0; k < in.size(); ++k) {
    const std::string key = "r" + std::to_string(k);
    ASSERT_EQ(tab.get(key, row).status, Status::kOk) << key;
    EXPECT_TRUE(row.valid(i));
    EXPECT_EQ(row.f64(i), static_cast<double>(in[k].i)) << key << ": the nearest double";
    EXPECT_EQ(row.f64(f), static_cast<double>(in[k].f)) << key << ": exact";
    EXPECT_EQ(row.f32(g), static_cast<float>(in[k].g)) << key << ": the nearest float (inf beyond)";
    EXPECT_EQ(row.i64(b), in[k].b ? 1 : 0) << key;
    EXPECT_EQ(row.string(tab.field("s")), "x") << key << ": unchanged fields are copied";
  }
  // float64 -> int64: nearest, halves away from zero; NaN and beyond int64
  // read not valid.
  ASSERT_EQ(tab.get("r0", row).status, Status::kOk);
  EXPECT_EQ(row.i64(d), 3);
  EXPECT_EQ(row.string(n), "42");
  ASSERT_EQ(tab.get("r1", row).status, Status::kOk);
  EXPECT_EQ(row.i64(d), -3);
  EXPECT_FALSE(row.valid(n)) << "123456789012 does not fit 6 bytes";
  ASSERT_EQ(tab.get("r2", row).status, Status::kOk);
  EXPECT_FALSE(row.valid(d)) << "NaN";
  EXPECT_FALSE(row.valid(n)) << "-1234567 does not fit 6 bytes";
  ASSERT_EQ(tab.get("r3", row).status, Status::kOk);
  EXPECT_FALSE(row.valid(d)) << "1e30";
  EXPECT_EQ(row.string(n), "0");

  // Converted once: a writer reopened with the same config finds the new
  // types in place and switches nothing.
  w.reset();
  auto again = Writer::open(seg.name(), v2, seg.writer_options());
  EXPECT_EQ(again->switch_progress().generation, 1u);
}

}  // namespace
}  // namespace larder

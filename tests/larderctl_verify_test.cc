// larderctl verify's outcomes and exit codes (docs/operations.md): clean (0),
// corrupt (1), repairable (4) and in flight (5), against real writers in
// child processes: SIGKILLed at each kind of crash point (an odd slot under
// the undo record, the undo record armed over a finished write, an armed
// aggregate journal, a pending stream position), stopped mid-update while
// alive, and running. Each repairable case is then repaired by attaching a
// writer, after which verify is clean. Test main thread only; the writers
// are forked children.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <atomic>
#include <cstring>
#include <string>

#include "larder/layout/clock.h"
#include "larder/layout/format.h"
#include "larder/layout/segment_file.h"
#include "larder/writer/writer.h"
#include "support/process.h"
#include "support/progress.h"
#include "support/run_command.h"
#include "support/test_segment.h"

#ifndef LARDERCTL_PATH
#error "LARDERCTL_PATH must name the larderctl binary"
#endif

namespace larder {
namespace {

using CtlRun = testing::CommandRun;

constexpr int kClean = 0, kCorrupt = 1, kRepairable = 4, kInFlight = 5;
// Event times near the clock: the aggregates' allowed lateness is measured
// from the writer's clock, which plain upserts set to now.
const int64_t kT0 = layout::now_unix_ns() / 1'000'000;

layout::Schema schema() {
  layout::TableSpec t = testing::every_type_table("users", 16, 4);
  layout::TableSpec agg;
  agg.name = "events";
  agg.key_max_len = 16;
  agg.capacity = 16;
  agg.fields = {{"tag", layout::FieldType::kInt64, 1}};
  agg.aggregates = {{"n", "", layout::AggregateFn::kCount, 60'000, 0, layout::WindowEnd::kLatestEvent},
                    {"sum", "x", layout::AggregateFn::kSum, 60'000, 0, layout::WindowEnd::kLatestEvent}};
  layout::Schema s;
  s.tables = {t, agg};
  return s;
}

// The crash point a writer child kills itself at (its n-th occurrence).
CrashPoint g_point;
int g_countdown = 0;
void kill_at_point(CrashPoint p) {
  if (p == g_point && --g_countdown == 0) ::raise(SIGKILL);
}
void stop_at_point(CrashPoint p) {
  if (p == g_point && --g_countdown == 0) ::raise(SIGSTOP);
}

class LarderctlVerify : public ::testing::Test {
 protected:
  void SetUp() override {
    auto w = open_writer();
    for (const char* key : {"u1", "u2", "u3"}) {
      const FieldValue values[] = {FieldValue::int64(0, 7), FieldValue::string(5, "se")};
      ASSERT_EQ(w->upsert(0, key, kT0, values), ApplyResult::kApplied);
    }
    ASSERT_EQ(w->remove(0, "u3", kT0 + 1), ApplyResult::kApplied);
    w->set_source_id("stream:test");
    ASSERT_EQ(event(*w, "e1", 1.0, 1), ApplyResult::kApplied);
  }

  std::unique_ptr<Writer> open_writer() { return Writer::open(seg_.name(), schema(), seg_.writer_options()); }

  static ApplyResult event(Writer& w, const char* key, double x, int64_t dt) {
    const SourceValue v[] = {{static_cast<uint32_t>(w.source_index(1, "x")), x}};
    // The aggregate clock at the event time: nothing is late.
    return w.apply(1, key, kT0 + dt, {}, v, event_id_hash(std::string(key) + std::to_string(dt)),
                   (kT0 + dt) * 1'000'000);
  }

  CtlRun verify(const std::string& extra = "") const {
    return testing::run_command(std::string(LARDERCTL_PATH) + " --dir " + seg_.dir() + " " + extra + "verify " +
                                seg_.name());
  }

  // A writer child that runs `update` with hook `hook` set at the n-th
  // `point`. Returns its pid.
  pid_t writer_child(void (*hook)(CrashPoint), CrashPoint point, int n, const std::function<void(Writer&)>& update) {
    return kids_.add(testing::spawn([=, this] {
      auto w = open_writer();
      g_point = point;
      g_countdown = n;
      set_crash_hook(hook);
      update(*w);
      return 3;  // the crash point was not reached
    }));
  }

  // SIGKILLs a writer at the n-th `point` inside `update`, reaps it.
  void kill_writer_at(CrashPoint point, int n, const std::function<void(Writer&)>& update) {
    const pid_t pid = writer_child(&kill_at_point, point, n, update);
    ASSERT_EQ(kids_.wait(pid), 128 + SIGKILL) << "the writer was not killed at its crash point";
  }

  // Verify says repairable (exit 4) and mentions `what`; a writer attaching
  // repairs it, after which verify is clean.
  void expect_repairable_then_repaired(const std::string& what, uint64_t slots) {
    CtlRun r = verify();
    EXPECT_EQ(r.code, kRepairable) << r.out;
    EXPECT_NE(r.out.find("repairable (writer pid"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("attaching a writer repairs " + std::to_string(slots) + " slot(s)"), std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find(what), std::string::npos) << r.out;
    r = verify("--json ");
    EXPECT_EQ(r.code, kRepairable) << r.out;
    EXPECT_NE(r.out.find("\"outcome\":\"repairable\""), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("\"repairable_slots\":" + std::to_string(slots)), std::string::npos) << r.out;
    { auto w = open_writer(); }  // attach (repair), detach
    r = verify();
    EXPECT_EQ(r.code, kClean) << r.out;
    EXPECT_NE(r.out.find(": ok ("), std::string::npos) << r.out;
  }

  testing::ScratchSegment seg_;
  testing::Children kids_;
};

TEST_F(LarderctlVerify, CleanWithoutAndWithALiveWriter) {
  CtlRun r = verify();
  EXPECT_EQ(r.code, kClean) << r.out;
  EXPECT_NE(r.out.find("no writer attached"), std::string::npos) << r.out;
  auto w = open_writer();
  r = verify();
  EXPECT_EQ(r.code, kClean) << r.out;
  EXPECT_NE(r.out.find("writer pid " + std::to_string(::getpid()) + " live"), std::string::npos) << r.out;
  r = verify("--json ");
  EXPECT_EQ(r.code, kClean) << r.out;
  EXPECT_NE(r.out.find("\"outcome\":\"clean\",\"writer\":{\"pid\":" + std::to_string(::getpid()) + ",\"live\":true}"),
            std::string::npos)
      << r.out;
}

// A writer SIGKILLed with a slot's sequence odd: the undo record covers it.
TEST_F(LarderctlVerify, KilledWithSeqOddIsRepairableOneSlot) {
  kill_writer_at(CrashPoint::kMidPayload, 2, [](Writer& w) {
    const FieldValue v[] = {FieldValue::int64(0, 8), FieldValue::string(5, "de")};
    w.upsert(0, "u1", kT0 + 10, v);
  });
  expect_repairable_then_repaired("restores it from the undo copy", 1);
}

// Killed after the undo copy was armed, before seq went odd (and again after
// it went even): no slot to restore, but a record to clear.
TEST_F(LarderctlVerify, KilledWithUndoArmedOverAnEvenSlotIsRepairable) {
  for (const CrashPoint p : {CrashPoint::kUndoArmed, CrashPoint::kSeqEven}) {
    SCOPED_TRACE(static_cast<int>(p));
    kill_writer_at(p, 1, [](Writer& w) {
      const FieldValue v[] = {FieldValue::int64(0, 9)};
      w.upsert(0, "u2", kT0 + 20 + static_cast<int>(g_point), v);
    });
    expect_repairable_then_repaired("the undo record is armed for users slot", 0);
  }
}

// Killed inside an aggregate change: the journal is armed.
TEST_F(LarderctlVerify, KilledInsideAnAggregateChangeIsRepairable) {
  kill_writer_at(CrashPoint::kJournal, 2, [](Writer& w) { event(w, "e1", 5.0, 30); });
  expect_repairable_then_repaired("the aggregate journal is armed with", 0);
}

// Killed with a stream position pending: its record written and armed (the
// first four position stores), the slot written, the record not yet marked
// done (the fifth).
TEST_F(LarderctlVerify, KilledWithAPendingPositionIsRepairable) {
  kill_writer_at(CrashPoint::kPosition, 5, [](Writer& w) {
    w.stage_position({0, 12, 0});
    const FieldValue v[] = {FieldValue::int64(0, 10)};
    w.upsert(0, "u1", kT0 + 40, v);
  });
  expect_repairable_then_repaired("a stream position for partition 0 is pending", 0);
}

// Counters behind the slots after a writer died mid-write: the next writer
// finishes them from its count record (repairable); a mismatch with no such
// record is corruption, which a writer opened with full_check recounts.
TEST_F(LarderctlVerify, CounterMismatchIsRepairableOnlyAfterAWriterDied) {
  auto damage_counter = [&] {
    auto m = layout::MappedFile::open_read_write(layout::segment_path(seg_.dir(), seg_.name()), seg_.name());
    auto& d = const_cast<layout::TableDescriptor&>(layout::table_descriptor(m->data(), 0));
    d.counters.live_keys.store(d.counters.live_keys.load() + 1);
  };
  damage_counter();
  CtlRun r = verify();
  EXPECT_EQ(r.code, kCorrupt) << r.out;
  EXPECT_NE(r.out.find("counters say 3 live keys, the slots hold 2"), std::string::npos) << r.out;

  EXPECT_NE(r.out.find("segment.full_check recounts them"), std::string::npos) << r.out;
  {
    WriterOptions o = seg_.writer_options();
    o.full_check = true;  // a normal open trusts the counters; this one recounts
    auto w = Writer::open(seg_.name(), schema(), o);
  }
  EXPECT_EQ(verify().code, kClean);
  kill_writer_at(CrashPoint::kSeqEven, 1, [](Writer& w) {
    const FieldValue v[] = {FieldValue::int64(0, 11)};
    w.upsert(0, "u9", kT0 + 50, v);  // a new key: live_keys moves after the slot write
  });
  r = verify();
  EXPECT_EQ(r.code, kRepairable) << r.out;
  EXPECT_NE(r.out.find("its count record armed; attaching a writer finishes the counters"), std::string::npos) << r.out;
  { auto w = open_writer(); }
  EXPECT_EQ(verify().code, kClean);
}

// The aggregate arena: a key with more than 8 non-empty buckets of its 60 s
// ring holds a chunk, which verify accounts for; a second group naming the
// same chunk, or a chunk beyond the arena, is corruption.
TEST_F(LarderctlVerify, ArenaChunkHeldTwiceOrOutsideIsCorrupt) {
  {
    auto w = open_writer();
    for (int i = 0; i < 10; ++i) ASSERT_EQ(event(*w, "busy", 1.0, 2 + 1000 * i), ApplyResult::kApplied);
    ASSERT_EQ(w->stats(1).arena_used, 2u);  // the count's ring and the sum's
  }
  EXPECT_EQ(verify().code, kClean) << verify().out;
  const layout::AggregatePlan plan = layout::plan_aggregates(schema().tables[1]);
  ASSERT_TRUE(plan.groups[0].sparse());
  const uint32_t at = plan.groups[0].offset + layout::kGroupChunkWord;
  auto damage = [&](uint64_t chunk_word) {
    auto m = layout::MappedFile::open_read_write(layout::segment_path(seg_.dir(), seg_.name()), seg_.name());
    const auto& d = layout::table_descriptor(m->data(), 1);
    auto* blocks = reinterpret_cast<layout::Word*>(static_cast<char*>(m->mutable_data()) + d.state_offset);
    uint64_t held = 0, spare = d.slot_count;
    for (uint64_t slot = 0; slot < d.slot_count; ++slot) {
      layout::Word* block = blocks + slot * d.state_stride_words;
      if (block[at].load() != 0) held = block[at].load();
      if (block[at].load() == 0 && spare == d.slot_count) spare = slot;
    }
    ASSERT_NE(held, 0u);
    blocks[spare * d.state_stride_words + at].store(chunk_word == 0 ? held : chunk_word);
  };
  damage(0);  // the busy key's chunk, named by a second block too
  CtlRun r = verify();
  EXPECT_EQ(r.code, kCorrupt) << r.out;
  EXPECT_NE(r.out.find("held by another too"), std::string::npos) << r.out;
  damage(1000);  // beyond the arena's 16 chunks
  r = verify();
  EXPECT_EQ(r.code, kCorrupt) << r.out;
  EXPECT_NE(r.out.find("beyond the arena"), std::string::npos) << r.out;
}

// An odd slot the undo record does not cover cannot be restored: corrupt.
TEST_F(LarderctlVerify, OddSlotWithoutUndoRecordIsCorrupt) {
  kill_writer_at(CrashPoint::kMidPayload, 2, [](Writer& w) {
    const FieldValue v[] = {FieldValue::int64(0, 8)};
    w.upsert(0, "u1", kT0 + 10, v);
  });
  {
    auto m = layout::MappedFile::open_read_write(layout::segment_path(seg_.dir(), seg_.name()), seg_.name());
    auto& h = *static_cast<layout::SegmentHeader*>(m->mutable_data());
    h.undo_armed.store(0);
  }
  const CtlRun r = verify();
  EXPECT_EQ(r.code, kCorrupt) << r.out;
  EXPECT_NE(r.out.find("sequence stays odd, not covered by the undo record"), std::string::npos) << r.out;
}

// A live writer stopped with a slot odd: verify re-reads it a bounded number
// of times, then says it could not finish (5) instead of calling it corrupt
// or repairable; once the writer goes on, verify is clean.
TEST_F(LarderctlVerify, LiveWriterStoppedMidUpdateIsInFlight) {
  const pid_t pid = writer_child(&stop_at_point, CrashPoint::kPayloadWritten, 1, [](Writer& w) {
    const FieldValue v[] = {FieldValue::int64(0, 12)};
    w.upsert(0, "u2", kT0 + 60, v);
    set_crash_hook(nullptr);
    ::raise(SIGSTOP);  // stay attached, still alive, until the test is done
  });
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, WUNTRACED), pid);
  ASSERT_TRUE(WIFSTOPPED(status));
  CtlRun r = verify();
  EXPECT_EQ(r.code, kInFlight) << r.out;
  EXPECT_NE(r.out.find("writer pid " + std::to_string(pid) + " live kept 1 slot(s) mid-update"), std::string::npos)
      << r.out;
  r = verify("--json ");
  EXPECT_EQ(r.code, kInFlight) << r.out;
  EXPECT_NE(r.out.find("\"outcome\":\"in_flight\""), std::string::npos) << r.out;

  // The write finishes; the writer stops again, attached: clean, live.
  ::kill(pid, SIGCONT);
  ASSERT_EQ(::waitpid(pid, &status, WUNTRACED), pid);
  ASSERT_TRUE(WIFSTOPPED(status));
  r = verify();
  EXPECT_EQ(r.code, kClean) << r.out;
  EXPECT_NE(r.out.find("writer pid " + std::to_string(pid) + " live"), std::string::npos) << r.out;
  ::kill(pid, SIGKILL);
  kids_.wait(pid);
}

// A live writer busy with updates while verify runs: the slots move and the
// counters move, and verify still finds it clean (the counters within the
// updates made during the scan).
TEST_F(LarderctlVerify, BusyLiveWriterIsClean) {
  auto* stop = static_cast<std::atomic<int>*>(
      ::mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(stop, MAP_FAILED);
  new (stop) std::atomic<int>(0);
  const pid_t pid = kids_.add(testing::spawn([&] {
    auto w = open_writer();
    stop->store(1);  // attached
    for (int64_t i = 0; stop->load() != 2; ++i) {
      const std::string key = "k" + std::to_string(i % 12);
      const FieldValue v[] = {FieldValue::int64(0, i), FieldValue::string(5, "xx")};
      if (i % 5 == 4) {
        w->remove(0, key, kT0 + 100 + i);
      } else {
        w->upsert(0, key, kT0 + 100 + i, v);
      }
      event(*w, key.c_str(), 1.0, 100 + i);
    }
    return 0;
  }));
  ASSERT_TRUE(testing::run_until([&] { return stop->load() == 1; }, std::chrono::seconds(0)));
  for (int i = 0; i < 5; ++i) {
    const CtlRun r = verify();
    EXPECT_EQ(r.code, kClean) << r.out;
  }
  stop->store(2);
  EXPECT_EQ(kids_.wait(pid), 0);
  ::munmap(stop, sizeof(std::atomic<int>));
}

}  // namespace
}  // namespace larder

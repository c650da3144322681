// The integrity check behind `larderctl verify`, as a library so that the
// read-side fuzzer (fuzz/read_segment_fuzz.cc) runs the same code over
// corrupt bytes that larderctl runs over real segments.
//
// A check has one of four outcomes (docs/operations.md lists them with
// larderctl's exit codes):
//
//   clean       every check passed
//   repairable  no writer is attached and the segment holds exactly what a
//               writer fixes when it attaches (writer/src/repair.cc): an odd
//               slot guarded by the armed undo record, an armed aggregate
//               journal, a pending stream position, counters that disagree
//               with the slots after a writer died
//   corrupt     anything else wrong (the report names each problem)
//   in_flight   a live writer kept some slot mid-update through every
//               re-read: nothing wrong was seen, but the check is incomplete
//
// With a live writer (its pid exists, or its heartbeat moves) the check
// runs against a moving segment: a slot read mid-update is read again, up to
// Options::live_rounds times; a per-slot finding is confirmed by a second
// read of a slot whose sequence moved; the undo record, journal and pending
// position are the writer's work in progress, not findings; and counters are
// compared with a tolerance equal to the updates the writer made during the
// scan.
//
// Threading: any thread; reads the mapping only (it may be read-only).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace larder::verify {

enum class Outcome : uint8_t { kClean, kRepairable, kCorrupt, kInFlight };
const char* outcome_name(Outcome o) noexcept;

enum class WriterCheck : uint8_t {
  kDetect,        // from the header: writer_pid alive, or a heartbeat that moves (below)
  kAssumeAbsent,  // treat the segment as having no live writer (tests, the fuzzer)
  kAssumeLive,
};

// A writer is live when its pid is a process here. When it is not (the
// writer died, or runs in another pid namespace) and its heartbeat is
// younger than kLiveHeartbeatMs, the check watches the heartbeat for up to
// kHeartbeatWatchMs: a sidecar beats every 100 ms or less, so a heartbeat
// that moves means a live writer elsewhere, one that stays means a dead one.
inline constexpr int64_t kLiveHeartbeatMs = 1000;
inline constexpr int64_t kHeartbeatWatchMs = 500;

struct Options {
  WriterCheck writer = WriterCheck::kDetect;
  // Seqlock retries for one read of one slot.
  uint32_t max_retries = 4096;
  // Live writer: times a slot found mid-update is read again (each read up
  // to max_retries attempts, the thread yielding between rounds).
  uint32_t live_rounds = 1000;
};

struct Report {
  Outcome outcome = Outcome::kClean;
  uint64_t writer_pid = 0;  // as the header records it (0: none attached)
  bool writer_live = false;
  uint64_t slots_checked = 0;          // occupied slots read consistently
  uint64_t repairable_slots = 0;       // odd slots a writer restores from the undo copy
  std::vector<std::string> problems;   // corrupt: one line each
  std::vector<std::string> repairs;    // repairable: what attaching a writer fixes
  std::vector<std::string> in_flight;  // slots a live writer kept mid-update
};

// Checks a segment that layout::validate_segment accepted (base: its
// mapping). Never writes to the mapping. Allocates; throws only bad_alloc.
Report verify_segment(const void* base, const Options& options = {});

}  // namespace larder::verify

// The full recount a writer no longer does when it opens a segment: every
// slot of every table counted, and compared with the counters the writer
// keeps exact with each write (row_write.h, the count record) and repairs
// after a kill (repair.cc). Crash tests check it after each restart.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "larder/layout/format.h"
#include "larder/layout/segment_file.h"
#include "larder/layout/table_view.h"

namespace larder::testing {

struct Recount {
  uint64_t live = 0;
  uint64_t tombstones = 0;
  int64_t max_event_ms = 0;  // newest event time of an occupied slot
};

// Counts table `t` of the mapped segment at `base`, slot by slot.
inline Recount recount_table(const void* base, uint32_t t) {
  const layout::TableGeometry g = layout::table_geometry(base, layout::table_descriptor(base, t));
  Recount r;
  for (uint64_t i = 0; i < g.slot_count; ++i) {
    const uint64_t meta = g.slot(i)[layout::kSlotMetaWord].load(std::memory_order_relaxed);
    if (meta == 0) continue;
    if (layout::meta_state(meta) == layout::SlotState::kLive) ++r.live;
    if (layout::meta_state(meta) == layout::SlotState::kTombstone) ++r.tombstones;
    r.max_event_ms = std::max(
        r.max_event_ms, static_cast<int64_t>(g.slot(i)[layout::kSlotEventTimeWord].load(std::memory_order_relaxed)));
  }
  return r;
}

// Every table's live_keys and tombstones equal the recount, no count record
// is left armed, and max_event_time_ms (a high-water mark of applied events,
// which a reclaimed tombstone may have held) is not older than any row. Call
// with no writer attached or between its updates.
inline ::testing::AssertionResult counters_match_recount(const std::string& path, const std::string& name) {
  auto m = layout::MappedFile::open_read_only(path, name);
  const void* base = m->data();
  ::testing::AssertionResult failure = ::testing::AssertionFailure();
  bool ok = true;
  for (uint32_t t = 0; t < m->header().table_count; ++t) {
    const layout::TableDescriptor& d = layout::table_descriptor(base, t);
    const Recount r = recount_table(base, t);
    const uint64_t live = d.counters.live_keys.load(), tomb = d.counters.tombstones.load();
    const auto max_event = static_cast<int64_t>(d.counters.max_event_time_ms.load());
    if (live != r.live || tomb != r.tombstones || max_event < r.max_event_ms || d.count_armed.load() != 0) {
      ok = false;
      failure << "table " << t << ": counters say " << live << " live, " << tomb << " tombstones, newest event "
              << max_event << "; the slots hold " << r.live << " live, " << r.tombstones << " tombstones, newest event "
              << r.max_event_ms << "; count record armed " << d.count_armed.load() << ". ";
    }
  }
  if (ok) return ::testing::AssertionSuccess();
  return failure;
}

}  // namespace larder::testing

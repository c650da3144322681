// What a config's segment costs, before it exists: the bytes by table, by
// aggregate and by dedup set, what sharing a source would save, and whether
// each dedup set holds the ids its horizon implies at the stated event rate.
// `larder-sidecar --check-config` and `larderctl size` print it.
//
// Every number comes from layout::plan_layout, the planner the writer
// creates segments with: an aggregate's cost is the plan's total minus the
// plan of the same schema without it, a sharing hint the plan's total minus
// the plan with the change made. No second formula.
//
// Threading: pure functions; main thread at start, or larderctl.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/config.h"
#include "larder/layout/schema.h"

namespace larder::sidecar {

struct AggregateCost {
  std::string name;
  std::string fn;      // "sum", ...
  std::string source;  // "" for a count of every event
  int64_t window_ms = 0;
  int64_t resolution_ms = 0;
  uint32_t window_events = 0;            // a count window of N events, or last_n's n (window_ms is then 0)
  uint64_t bytes = 0;                    // the segment without this aggregate is this much smaller
  std::vector<std::string> shares_with;  // aggregates whose bucket ring it shares (same source and resolution)
};

// A change to one aggregate that lets it use another one's bucket ring.
struct SharingHint {
  std::string aggregate;
  std::string change;  // e.g. "source: amount", "resolution: 1m"
  std::string note;    // what the change means beyond bytes
  uint64_t saves_bytes = 0;
};

struct TableSize {
  std::string name;
  uint64_t capacity = 0;
  uint64_t slot_count = 0;
  uint32_t slot_bytes = 0;
  uint64_t slots_bytes = 0;  // keys, rows, validity: the slot array
  uint32_t state_bytes_per_slot = 0;
  uint64_t state_bytes = 0;  // aggregate state (slot_count x per slot)
  uint64_t dedup_ids = 0;
  uint64_t dedup_bytes = 0;
  int64_t dedup_horizon_ms = 0;
  double expected_events_per_s = 0;  // dedup.expected_rate; 0: not stated
  uint64_t arena_chunks = 0;         // the aggregate arena (0: no ring longer than the inline buckets)
  uint64_t arena_chunk_bytes = 0;    // one key's dense ring of one long ring
  uint64_t arena_bytes = 0;
  uint32_t long_rings = 0;     // groups whose ring may need a chunk
  bool arena_default = false;  // arena_chunks not set in the config
  std::vector<AggregateCost> aggregates;
  std::vector<SharingHint> sharing;
  uint64_t bytes() const { return slots_bytes + state_bytes + dedup_bytes + arena_bytes; }
};

struct SizeReport {
  std::string segment;
  uint64_t fingerprint = 0;
  std::vector<TableSize> tables;
  uint64_t header_bytes = 0;          // header and table, field and aggregate descriptors
  uint64_t undo_bytes = 0;            // one slot's undo copy
  uint64_t journal_bytes = 0;         // the aggregate journal
  uint64_t source_bytes = 0;          // stream positions
  uint64_t alignment_bytes = 0;       // padding between the parts
  uint64_t total_bytes = 0;           // the segment file
  std::vector<std::string> warnings;  // dedup sets too small for their stated rate, default arenas
};

SizeReport size_report(const Config& config);

// Text for a terminal: one line per table, aggregate state, aggregate and
// dedup set, the fixed parts, the total, sharing hints and warnings.
std::string format_size_report(const SizeReport& report);

// Bytes as "123456789 B (117.7 MiB)".
std::string format_bytes(uint64_t bytes);

}  // namespace larder::sidecar

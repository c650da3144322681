// Repair: what a restarting writer does before its first update, so that a
// writer killed at any instruction leaves every row either as it was before
// the interrupted update or as after it (row_write.h, journal in aggregate.h),
// and every counter matching the rows.
//
// The cost is what was in flight, not the segment: the pending source
// position, each table's count record, the aggregate journal and the one slot
// the undo record guards. A write finishes its counters through the count
// record (row_write.h, step 6), so nothing needs counting again. Only when the
// counters cannot be trusted does repair visit every slot (full_scan): the
// segment was last written by a build that kept no count record
// (counters_session differs from writer_sessions), or the operator asked for
// it (WriterOptions::full_check).
//
// Threading: the thread that opens the Writer, before any other use.
#include <algorithm>

#include "writer_impl.h"

namespace larder {

using namespace layout;  // NOLINT: the writer works on the layout's words

// Whether the slot write the undo record guards finished: the slot's seq moved
// on by 2 from its undo copy. Must be asked before the slot is restored, which
// also leaves it at the copy's seq + 2.
bool Writer::Impl::guarded_write_finished() {
  if (sync::load_acquire(header->undo_armed) == 0) return false;
  const uint64_t t = sync::load_relaxed(header->undo_table);
  const uint64_t i = sync::load_relaxed(header->undo_slot);
  if (t >= tables.size() || i >= tables[t].geo.slot_count) return false;
  ++report.slots_visited;
  return sync::load_relaxed(tables[t].slot(i)[kSlotSeqWord]) == sync::load_relaxed(undo[kSlotSeqWord]) + 2;
}

// Brings each table's counters to what its slots hold. An armed count record
// belongs to the slot write the undo record guards: when that write finished,
// its counters are stored (again: the stores are absolute, so a record the
// dead writer had half applied comes out the same); otherwise they were never
// touched. A finished write's event time raises max_event_time_ms, which
// count_apply would have done after it.
void Writer::Impl::repair_counts(bool trusted, bool finished) {
  const uint64_t undo_table = sync::load_relaxed(header->undo_table);
  for (uint32_t t = 0; t < tables.size(); ++t) {
    TableDescriptor& d = *tables[t].desc;
    if (sync::load_acquire(d.count_armed) == 0) continue;
    if (trusted && finished && undo_table == t) {
      sync::store_relaxed(d.counters.live_keys, sync::load_relaxed(d.count_live));
      sync::store_relaxed(d.counters.tombstones, sync::load_relaxed(d.count_tombstones));
      report.counts_redone = true;
    }
    sync::store_release(d.count_armed, uint64_t{0});
  }
  if (finished) {
    TableCounters& c = tables[undo_table].desc->counters;
    const uint64_t at =
        sync::load_relaxed(tables[undo_table].slot(sync::load_relaxed(header->undo_slot))[kSlotEventTimeWord]);
    if (static_cast<int64_t>(at) > static_cast<int64_t>(sync::load_relaxed(c.max_event_time_ms))) {
      sync::store_relaxed(c.max_event_time_ms, at);
    }
  }
}

void Writer::Impl::repair() {
  report = AttachReport{};
  const bool trusted = !options.full_check &&
                       sync::load_relaxed(header->counters_session) == sync::load_relaxed(header->writer_sessions);
  const bool finished = guarded_write_finished();
  // The pending source position and the count record first, while the undo
  // record still describes the slot write they may guard (source.cc).
  repair_position(finished);
  repair_counts(trusted, finished);
  // An unfinished aggregate change. Its state words were all written before
  // its slot write began, so it is complete once that slot write finished
  // (the journal says so, or the guarded slot's seq moved on): keep it.
  // Otherwise undo it; the slot, if it got that far, is restored from the
  // undo copy below.
  if (sync::load_acquire(header->journal_armed) != 0) {
    if (sync::load_relaxed(header->journal_armed) == writer::Journal::kDone || finished) {
      journal.commit();
    } else {
      report.journal_entries_undone = journal.rollback(header->segment_bytes / 8);
    }
  }
  repaired = 0;
  if (sync::load_acquire(header->undo_armed) != 0) {
    const uint64_t t = sync::load_relaxed(header->undo_table);
    const uint64_t i = sync::load_relaxed(header->undo_slot);
    if (t < tables.size() && i < tables[t].geo.slot_count) {
      Word* s = tables[t].slot(i);
      const uint64_t seq = sync::load_relaxed(s[kSlotSeqWord]);
      if (seq & 1) {
        // Not write_row: the undo copy is the source here, and write_row
        // would overwrite it with the torn slot. The slot is already odd, so
        // this is write_row's steps 3 and 4 with the copy as the payload.
        const uint64_t before = sync::load_relaxed(undo[kSlotSeqWord]);  // even: the slot before the change
        sync::writer_fence();
        for (uint32_t k = 1; k < tables[t].geo.slot_words; ++k) sync::store_payload(s[k], sync::load_relaxed(undo[k]));
        // A new even value: a reader that saw `before` and then torn words
        // must not validate against the restored slot.
        sync::store_release(s[kSlotSeqWord], std::max(before, seq - 1) + 2);
        ++repaired;
      }
    }
    sync::store_release(header->undo_armed, uint64_t{0});
  }
  if (!trusted) full_scan();
  report.repaired_slots = repaired;
  sync::store_relaxed(header->repaired_slots, repaired);
}

// Every slot: recounts live keys and tombstones, and hides a slot left odd
// without an undo record (no writer leaves one: damage) behind a tombstone.
// max_event_time_ms is a high-water mark of applied events, which a reclaimed
// tombstone may have held: the scan only raises it.
void Writer::Impl::full_scan() {
  report.full_scan = true;
  for (TableState& ts : tables) {
    uint64_t live = 0, tomb = 0;
    int64_t max_event = static_cast<int64_t>(sync::load_relaxed(ts.desc->counters.max_event_time_ms));
    for (uint64_t i = 0; i < ts.geo.slot_count; ++i) {
      Word* s = ts.slot(i);
      const uint64_t seq = sync::load_relaxed(s[kSlotSeqWord]);
      uint64_t meta = sync::load_relaxed(s[kSlotMetaWord]);
      if (seq & 1) {
        // Its contents cannot be trusted. Keep it out of every reader's
        // sight as a tombstone; replay refills it.
        if (meta != 0) meta = make_meta(meta, SlotState::kTombstone);
        sync::store_relaxed(s[kSlotMetaWord], meta);
        sync::store_release(s[kSlotSeqWord], seq + 1);
        ++repaired;
      }
      switch (meta_state(meta)) {
        case SlotState::kLive: ++live; break;
        case SlotState::kTombstone: ++tomb; break;
        default: break;
      }
      if (meta != 0) max_event = std::max(max_event, static_cast<int64_t>(sync::load_relaxed(s[kSlotEventTimeWord])));
    }
    report.slots_visited += ts.geo.slot_count;
    sync::store_relaxed(ts.desc->counters.live_keys, live);
    sync::store_relaxed(ts.desc->counters.tombstones, tomb);
    sync::store_relaxed(ts.desc->counters.max_event_time_ms, static_cast<uint64_t>(max_event));
  }
}

}  // namespace larder

// Repair: what a restarting writer does before its first update, so that a
// writer killed at any instruction leaves every row either as it was before
// the interrupted update or as after it (row_write.h, journal in aggregate.h).
//
// Threading: the thread that opens the Writer, before any other use.
#include <algorithm>

#include "writer_impl.h"

namespace larder {

using namespace layout;  // NOLINT: the writer works on the layout's words

// Restores the slot a dead writer was changing, then recounts every table.
void Writer::Impl::repair() {
  // The pending source position first, while the undo record still
  // describes the slot write it may guard (source.cc).
  repair_position();
  // An unfinished aggregate change first. Its state words were all written
  // before its slot write began, so it is complete once that slot write
  // finished (the journal says so, or the guarded slot's seq moved on by 2
  // from its undo copy): keep it. Otherwise undo it; the slot, if it got
  // that far, is restored from the undo copy below.
  if (sync::load_acquire(header->journal_armed) != 0) {
    bool slot_written = sync::load_relaxed(header->journal_armed) == writer::Journal::kDone;
    if (!slot_written && sync::load_acquire(header->undo_armed) != 0) {
      const uint64_t t = sync::load_relaxed(header->undo_table);
      const uint64_t i = sync::load_relaxed(header->undo_slot);
      if (t < tables.size() && i < tables[t].geo.slot_count) {
        slot_written =
            sync::load_relaxed(tables[t].slot(i)[kSlotSeqWord]) == sync::load_relaxed(undo[kSlotSeqWord]) + 2;
      }
    }
    if (slot_written) {
      journal.commit();
    } else {
      journal.rollback(header->segment_bytes / 8);
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
  for (TableState& ts : tables) {
    uint64_t live = 0, tomb = 0;
    int64_t max_event = 0;
    for (uint64_t i = 0; i < ts.geo.slot_count; ++i) {
      Word* s = ts.slot(i);
      const uint64_t seq = sync::load_relaxed(s[kSlotSeqWord]);
      uint64_t meta = sync::load_relaxed(s[kSlotMetaWord]);
      if (seq & 1) {
        // Odd without an undo record: its contents cannot be trusted. Keep it
        // out of every reader's sight as a tombstone; replay refills it.
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
    sync::store_relaxed(ts.desc->counters.live_keys, live);
    sync::store_relaxed(ts.desc->counters.tombstones, tomb);
    sync::store_relaxed(ts.desc->counters.max_event_time_ms, static_cast<uint64_t>(max_event));
  }
  sync::store_relaxed(header->repaired_slots, repaired);
}

}  // namespace larder

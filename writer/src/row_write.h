// The one routine that changes a slot: Writer::Impl::write_row. Every path
// that writes a row (upsert, aggregated apply, delete, tombstone reclaim,
// aggregate refresh) describes its change as a RowChange and calls it.
//
// Invariants it keeps, in the order of the stores:
//  1. Undo copy. Before seq turns odd, the whole slot is copied to the undo
//     area and undo_armed is set (release, after the copy). A writer killed
//     anywhere between here and step 4 leaves an armed undo copy and an odd
//     slot; repair() restores the slot from the copy, so a row is always
//     either as before the change or as after it.
//  2. Seqlock, odd. seq = s + 1, then the W1 fence: pairs with the readers'
//     R2 (sync.h), so a reader that saw any payload store of this change sees
//     seq move and retries.
//  3. Payload. Every word (key, validity, row words, times, group times,
//     meta) is an 8-byte atomic stored relaxed, each after a kMidPayload
//     crash point.
//  4. Seqlock, even. seq = s + 2 with release (W2): pairs with the readers'
//     R1, so a reader that sees s + 2 sees every payload word of the change.
//  5. Journal. If an aggregate change is in progress (Journal::begin), it is
//     marked done right after W2: its state words were all stored before the
//     slot write began, so the change is complete and a restart keeps it.
//     The same point marks a staged source position done (pending_state 2).
//  6. Counters. A write that changes the slot's state (empty, live,
//     tombstone) changes live_keys and tombstones. Their values after the
//     write are stored in the table's count record, armed (release) before
//     step 1; the counters themselves are stored after step 5 and the record
//     disarmed before step 7. repair() redoes an armed record whose guarded
//     slot write finished and drops it otherwise, so the counters always
//     match the slots without a recount (repair.cc).
//  6b. max_event_time_ms is raised to the row's event time, still under the
//     undo record (repair() raises it from a finished write it guards).
//  7. undo_armed = 0 (release): the copy is no longer needed.
//
// Threading: the writer thread only. The routine never reads what readers
// write (readers never write), so it needs no read-side synchronisation.
#pragma once

#include <algorithm>
#include <cstring>

#include "aggregate_events.h"
#include "crash_hook.h"
#include "writer_impl.h"

namespace larder::writer {

// The word range [lo, hi) of the row that holds field `fd`.
inline uint32_t field_first_word(const layout::FieldDescriptor& fd) { return fd.offset / 8; }
inline uint32_t field_end_word(const layout::FieldDescriptor& fd) {
  return static_cast<uint32_t>((fd.offset + fd.bytes + 7) / 8);
}

// Writes `v` into the row image `row` at the field's offset.
inline void encode_field(unsigned char* row, const layout::FieldDescriptor& fd, const FieldValue& v) {
  using layout::FieldType;
  unsigned char* at = row + fd.offset;
  switch (v.type) {
    case FieldType::kInt64: std::memcpy(at, &v.i64, 8); break;
    case FieldType::kFloat64: std::memcpy(at, &v.f64, 8); break;
    case FieldType::kFloat32: {
      const float f = static_cast<float>(v.f64);
      std::memcpy(at, &f, 4);
      break;
    }
    case FieldType::kBool: *at = v.i64 != 0 ? 1 : 0; break;
    case FieldType::kFloat32Vector: std::memcpy(at, v.data, 4ull * v.length); break;
    case FieldType::kString:
      std::memset(at, 0, fd.bytes);
      std::memcpy(at, &v.length, 4);
      if (v.length > 0) std::memcpy(at + 4, v.data, v.length);
      break;
  }
}

inline void set_valid(uint64_t* validity, uint32_t field, bool valid) {
  const uint64_t bit = uint64_t{1} << (field % 64);
  validity[field / 64] = valid ? (validity[field / 64] | bit) : (validity[field / 64] & ~bit);
}

}  // namespace larder::writer

namespace larder {

// Always inlined: each caller's RowChange is then known at compile time and
// the branches on it fold away (measured: out of line, a hot-key upsert cost
// 1.4x as much).
[[gnu::always_inline]] inline void Writer::Impl::write_row(uint32_t table, uint64_t slot, const RowChange& change) {
  namespace sync = layout::sync;
  using layout::Word;
  using writer::crash_point;
  const TableState& ts = tables[table];
  const layout::TableGeometry& geo = ts.geo;
  Word* s = ts.slot(slot);
  const uint32_t validity_at = layout::kSlotHeaderWords;
  const uint32_t row_at = geo.row_word_offset();
  const bool fresh = change.new_key != nullptr;
  const bool writes_row = fresh || !change.values.empty() || change.outputs_of != nullptr || change.clear_groups != 0;

  // The row image: the words [lo, hi) that change, built in scratch over the
  // slot's current words (or zeros for a new key), and the validity words.
  uint32_t lo = geo.row_words, hi = 0;
  uint64_t validity[layout::kMaxFields / 64];
  if (writes_row) {
    if (fresh) {
      lo = 0;
      hi = geo.row_words;
      std::fill(scratch.begin(), scratch.begin() + hi, 0);
      std::fill(validity, validity + geo.validity_words, 0);
    } else {
      for (const FieldValue& v : change.values) {
        lo = std::min(lo, writer::field_first_word(ts.fields[v.field]));
        hi = std::max(hi, writer::field_end_word(ts.fields[v.field]));
      }
      if (change.outputs_of != nullptr) {
        lo = std::min(lo, ts.outputs_lo);
        hi = std::max(hi, ts.outputs_hi);
      }
      for (uint32_t k = lo; k < hi; ++k) scratch[k] = sync::load_relaxed(s[row_at + k]);
      for (uint32_t k = 0; k < geo.validity_words; ++k) validity[k] = sync::load_relaxed(s[validity_at + k]);
      for (uint32_t g = 0; g < geo.group_count; ++g) {
        if ((change.clear_groups >> g) & 1u) {
          for (uint32_t k = 0; k < geo.validity_words; ++k) {
            validity[k] &= ~ts.group_validity[size_t{g} * geo.validity_words + k];
          }
        }
      }
    }
    auto* row = reinterpret_cast<unsigned char*>(scratch.data());
    for (const FieldValue& v : change.values) {
      writer::encode_field(row, ts.fields[v.field], v);
      writer::set_valid(validity, v.field, true);
    }
    if (change.outputs_of != nullptr) {
      const size_t resolved = ts.agg.output_slots.size();
      for (size_t o = 0; o < ts.agg.plan.outputs.size(); ++o) {
        if (o < resolved) {
          // A time window into a float64 or int64 field (writer::OutputSlot).
          const writer::OutputSlot& os = ts.agg.output_slots[o];
          if (os.kind != writer::OutputSlot::Kind::kGeneral) {
            const writer::OutputValue v = writer::window_value(os.fn, os.ddof, change.outputs_of + os.window_word,
                                                               change.outputs_of[os.last_word]);
            if (os.kind == writer::OutputSlot::Kind::kInt64) {
              std::memcpy(row + os.row_byte, &v.i64, 8);
            } else {
              std::memcpy(row + os.row_byte, &v.f64, 8);
            }
            writer::set_valid(validity, os.field, v.valid);
            continue;
          }
        }
        const uint32_t f = ts.agg.plan.outputs[o].field;
        const layout::FieldDescriptor& fd = ts.fields[f];
        if (ts.agg.plan.outputs[o].fn == layout::AggregateFn::kLastN) {  // a sequence (aggregate_events.h)
          float seq[layout::kMaxWindowEvents];
          const bool valid = writer::sequence_output(ts.agg, change.outputs_of, ts.agg.plan.outputs[o], seq);
          writer::encode_field(row, fd, FieldValue::vector(f, std::span<const float>(seq, fd.count)));
          writer::set_valid(validity, f, valid);
          continue;
        }
        const writer::OutputValue v = writer::output(ts.agg, change.outputs_of, o, clock_ms);
        writer::encode_field(row, fd,
                             static_cast<layout::FieldType>(fd.type) == layout::FieldType::kInt64
                                 ? FieldValue::int64(f, v.i64)
                                 : FieldValue::float64(f, v.f64));
        writer::set_valid(validity, f, v.valid);
      }
    }
  }

  // 0. The count record, when the slot changes state: the counters this
  // write leaves, armed before the undo copy (step 6 says why).
  const layout::SlotState from = layout::meta_state(sync::load_relaxed(s[layout::kSlotMetaWord]));
  const layout::SlotState to = change.set_meta ? layout::meta_state(change.meta) : from;
  const bool counts = from != to;
  // WriterOptions::crash_safety off: no count record and no undo copy (a
  // local: the compiler reloads members after every atomic store).
  const bool safe = options.crash_safety;
  layout::TableDescriptor& d = *ts.desc;
  uint64_t live_after = 0, tombstones_after = 0;
  if (counts) {
    using layout::SlotState;
    live_after = sync::load_relaxed(d.counters.live_keys) + (to == SlotState::kLive) - (from == SlotState::kLive);
    tombstones_after =
        sync::load_relaxed(d.counters.tombstones) + (to == SlotState::kTombstone) - (from == SlotState::kTombstone);
    if (safe) {
      crash_point(CrashPoint::kCounts);
      sync::store_relaxed(d.count_live, live_after);
      sync::store_relaxed(d.count_tombstones, tombstones_after);
      sync::store_release(d.count_armed, uint64_t{1});  // after its values, before the undo copy is armed
    }
  }
  // 1. The undo copy, armed before seq turns odd. (Locals: the compiler
  // reloads members after every atomic store.)
  if (safe) {
    Word* const u = undo;
    const uint32_t words = geo.slot_words;
    for (uint32_t k = 0; k < words; ++k) sync::store_relaxed(u[k], sync::load_relaxed(s[k]));
    sync::store_relaxed(header->undo_table, uint64_t{table});
    sync::store_relaxed(header->undo_slot, slot);
    sync::store_release(header->undo_armed, uint64_t{1});  // after the copy, before seq turns odd
    crash_point(CrashPoint::kUndoArmed);
  }
  // 2. seq odd.
  const uint64_t seq = sync::load_relaxed(s[layout::kSlotSeqWord]);
  sync::store_relaxed(s[layout::kSlotSeqWord], seq + 1);
  sync::writer_fence();  // W1: pairs with the readers' R2
  crash_point(CrashPoint::kSeqOdd);
  // 3. The payload.
  auto set = [s](size_t word, uint64_t v) {
    crash_point(CrashPoint::kMidPayload);
    sync::store_payload(s[word], v);
  };
  if (fresh) {
    set(layout::kSlotKeyLenWord, change.new_key->length);
    for (uint32_t k = 0; k < geo.key_words; ++k) {
      set(geo.key_word_offset() + k, k < change.new_key->word_count ? change.new_key->words[k] : 0);
    }
  }
  if (writes_row) {
    for (uint32_t k = 0; k < geo.validity_words; ++k) set(validity_at + k, validity[k]);
    for (uint32_t k = lo; k < hi; ++k) set(row_at + k, scratch[k]);
  }
  if (change.set_times) {
    set(layout::kSlotEventTimeWord, static_cast<uint64_t>(change.event_time_ms));
    set(layout::kSlotApplyTimeWord, static_cast<uint64_t>(change.apply_unix_ns));
  }
  if (change.group_times != nullptr) {
    for (uint32_t g = 0; g < geo.group_count; ++g) {
      set(geo.group_word_offset() + g, static_cast<uint64_t>(change.group_times[g]));
    }
  }
  if (change.set_meta) set(layout::kSlotMetaWord, change.meta);
  crash_point(CrashPoint::kPayloadWritten);
  // 4. seq even.
  sync::store_release(s[layout::kSlotSeqWord], seq + 2);  // W2: pairs with the readers' R1
  // 5. The aggregate change this slot publishes is complete: a restart keeps
  // it (repair() also recognises the instant between these two stores by the
  // slot's seq).
  if (journal.armed()) journal.mark_done();
  // 5b. So is the update's staged source position (source.cc): repair()
  // recognises the instant before this store the same way.
  if (pending_armed) [[unlikely]]
    mark_pending_done();
  crash_point(CrashPoint::kSeqEven);
  // 6. The counters, then the record is disarmed, before the undo copy is.
  if (counts) {
    crash_point(CrashPoint::kCounts);
    sync::store_relaxed(d.counters.live_keys, live_after);
    crash_point(CrashPoint::kCounts);
    sync::store_relaxed(d.counters.tombstones, tombstones_after);
    crash_point(CrashPoint::kCounts);
    if (safe) sync::store_release(d.count_armed, uint64_t{0});
  }
  // 6b. The table's newest event time, while the undo record still guards
  // the write: a writer killed before this store leaves a finished write
  // that repair() recognises and raises the counter from (repair_counts).
  // Raised after the undo copy is disarmed, a kill in between would leave a
  // row newer than max_event_time_ms.
  if (change.set_times &&
      change.event_time_ms > static_cast<int64_t>(sync::load_relaxed(d.counters.max_event_time_ms))) {
    sync::store_relaxed(d.counters.max_event_time_ms, static_cast<uint64_t>(change.event_time_ms));
  }
  // 7. The undo copy is no longer needed.
  if (safe) sync::store_release(header->undo_armed, uint64_t{0});
}

}  // namespace larder

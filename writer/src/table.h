// Finding a key's slot in a table and choosing one for a new key. Inline:
// every update probes, and there is no link-time optimisation.
//
// The table is open addressing with linear probing from home (table_view.h).
// The writer keeps these invariants, which readers rely on:
//  * A key never moves: it stays in its slot, live or as a tombstone, until
//    the slot is reclaimed.
//  * A slot becomes empty only when no probe chain runs through it
//    (maintenance.cc, purge), so a present key's chain holds no empty slot.
//  * At least one slot stays empty, so every probe ends.
//
// Threading: the writer thread only; it reads its own words relaxed.
#pragma once

#include "larder/layout/sync.h"
#include "writer_impl.h"

namespace larder {

inline Writer::Impl::Probe Writer::Impl::probe(const TableState& ts, uint64_t hash, int64_t now_ns) const {
  namespace sync = layout::sync;
  using layout::kSlotMetaWord;
  Probe p;
  const int64_t retention_ns = options.tombstone_retention_ms * 1'000'000;
  uint64_t i = ts.geo.home(hash);
  const uint32_t key_at = ts.geo.key_word_offset();
  for (uint64_t n = 0; n < ts.geo.slot_count; ++n) {
    const layout::Word* s = ts.slot(i);
    const uint64_t meta = sync::load_relaxed(s[kSlotMetaWord]);
    if (meta == 0) {
      p.empty = i;
      return p;
    }
    if ((meta & ~layout::kMetaStateMask) == (hash & ~layout::kMetaStateMask) &&
        (sync::load_relaxed(s[layout::kSlotKeyLenWord]) & 0xffffffffu) == packed.length) {
      bool same = true;
      for (uint32_t w = 0; same && w < packed.word_count; ++w) {
        same = sync::load_relaxed(s[key_at + w]) == packed.words[w];
      }
      if (same) {
        p.found = i;
        return p;
      }
    }
    if (layout::meta_state(meta) == layout::SlotState::kTombstone) {
      if (p.tombstone == writer::kNone) p.tombstone = i;
      if (p.expired == writer::kNone &&
          static_cast<int64_t>(sync::load_relaxed(s[layout::kSlotApplyTimeWord])) + retention_ns < now_ns) {
        p.expired = i;
      }
    }
    if (++i == ts.geo.slot_count) i = 0;
  }
  return p;
}

inline uint64_t Writer::Impl::used(const TableState& ts) const {
  return layout::sync::load_relaxed(ts.desc->counters.live_keys) +
         layout::sync::load_relaxed(ts.desc->counters.tombstones);
}

// Where a key that is not in the table goes, or kNone. `for_tombstone`:
// the record of a delete of an absent key, which never displaces anything.
inline uint64_t Writer::Impl::choose_slot(const TableState& ts, const Probe& p, bool for_tombstone) const {
  using writer::kNone;
  if (p.expired != kNone) return p.expired;
  const uint64_t u = used(ts);
  if (p.empty != kNone && u < ts.max_used) return p.empty;
  if (for_tombstone) return kNone;
  if (p.tombstone != kNone) return p.tombstone;
  if (p.empty != kNone && u + 1 < ts.geo.slot_count) return p.empty;  // always keep one empty slot
  return kNone;
}

// The slot an upsert writes: the key's own (p.found) or, for a key not in
// the table, a new one. Out of slots along the chain, it reclaims expired
// tombstones (a full pass) and probes again. kNone, counted as
// full_rejected, when the row would be a new live key beyond the capacity or
// no slot is left. `fresh_row`: the key is not live (absent or deleted).
inline uint64_t Writer::Impl::slot_for_upsert(uint32_t table, const Probe& p, bool fresh_row, uint64_t hash,
                                              int64_t now_ns) {
  const TableState& ts = tables[table];
  layout::TableCounters& c = ts.desc->counters;
  uint64_t at = p.found;
  if (fresh_row && layout::sync::load_relaxed(c.live_keys) >= ts.desc->capacity)
    at = writer::kNone;
  else if (at == writer::kNone) {
    at = choose_slot(ts, p, false);
    if (at == writer::kNone && purge(table, ts.geo.slot_count) > 0) {
      at = choose_slot(ts, probe(ts, hash, now_ns), false);
    }
  }
  if (at == writer::kNone) writer::bump(c.full_rejected);
  return at;
}

}  // namespace larder

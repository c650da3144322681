// Updates of one key: upsert into a plain table, apply an event to a table
// with aggregates, delete. Each reads top to bottom as: validate, probe,
// decide (stale, duplicate, late, full), place, build and write the row
// (write_row, row_write.h), count. A staged source position is armed right
// before the update's first effect (arm_if_staged, source.cc); the dispatch in
// writer.cc finishes it whatever the result.
//
// Last write wins by event time (writer.h). Deletes leave a tombstone with
// the delete's event time, so an older upsert that arrives later is stale.
// In a table with field groups it wins per group: each group has its own
// time word, and the row's event time is the newest of them
// (docs/segment-format.md#field-groups).
//
// Threading: the writer thread only.
#include <algorithm>
#include <cmath>

#include "larder/layout/clock.h"
#include "row_write.h"
#include "table.h"

namespace larder {

using namespace layout;  // NOLINT: the writer works on the layout's words
using writer::bump;
using writer::kNone;

bool Writer::Impl::values_valid(const TableState& ts, std::span<const FieldValue> values) const {
  for (const FieldValue& v : values) {
    if (v.field >= ts.fields.size()) return false;
    const FieldDescriptor& fd = ts.fields[v.field];
    if (static_cast<FieldType>(fd.type) != v.type) return false;
    if (v.type == FieldType::kString && (v.length > fd.count || (v.length > 0 && v.data == nullptr))) return false;
    if (v.type == FieldType::kFloat32Vector && (v.length != fd.count || v.data == nullptr)) return false;
  }
  return true;
}

// Counts an applied upsert. live_keys and tombstones follow the slot's
// state in write_row (row_write.h).
void Writer::Impl::count_upsert(TableState& ts, int64_t event_time_ms, int64_t now_ns) {
  bump(ts.desc->counters.upserts);
  count_apply(ts, event_time_ms, now_ns);
}

void Writer::Impl::count_apply(TableState& ts, int64_t event_time_ms, int64_t now_ns) {
  sync::store_relaxed(ts.desc->counters.last_apply_unix_ns, static_cast<uint64_t>(now_ns));
  if (event_time_ms > static_cast<int64_t>(sync::load_relaxed(ts.desc->counters.max_event_time_ms))) {
    sync::store_relaxed(ts.desc->counters.max_event_time_ms, static_cast<uint64_t>(event_time_ms));
  }
  sync::store_relaxed(header->last_apply_unix_ns, static_cast<uint64_t>(now_ns));
  bump(header->updates_applied);
}

// ---------------------------------------------------------------------------
// Plain tables

ApplyResult Writer::Impl::upsert_plain(uint32_t table, std::string_view key, int64_t event_time_ms,
                                       std::span<const FieldValue> values, int64_t apply_unix_ns,
                                       const uint64_t* key_hash) {
  TableState& ts = tables[table];
  if (key.empty() || key.size() > ts.geo.key_max_len || !values_valid(ts, values)) return ApplyResult::kInvalid;
  const int64_t now = apply_unix_ns != 0 ? apply_unix_ns : now_unix_ns();
  // A batch (upsert_many.cc) hashed the key when it prefetched its slot.
  const uint64_t hash = key_hash != nullptr ? *key_hash : hash_key(key, ts.geo.hash_seed);
  packed.assign(key);
  const Probe p = probe(ts, hash, now);
  TableCounters& c = ts.desc->counters;

  uint64_t at = p.found;
  bool fresh_row = true;  // insert or revive: fields not given become invalid
  if (at != kNone) {
    const Word* s = ts.slot(at);
    if (event_time_ms < static_cast<int64_t>(sync::load_relaxed(s[kSlotEventTimeWord]))) {
      bump(c.stale_ignored);
      return ApplyResult::kStale;
    }
    fresh_row = meta_state(sync::load_relaxed(s[kSlotMetaWord])) != SlotState::kLive;
  }
  at = slot_for_upsert(table, p, fresh_row, hash, now);
  if (at == kNone) return ApplyResult::kTableFull;

  RowChange change;
  change.values = values;
  change.set_times = true;
  change.event_time_ms = event_time_ms;
  change.apply_unix_ns = now;
  if (fresh_row) change.take_key(packed, make_meta(hash, SlotState::kLive));
  arm_if_staged();
  write_row(table, at, change);

  count_upsert(ts, event_time_ms, now);
  return ApplyResult::kApplied;
}

// ---------------------------------------------------------------------------
// Tables with field groups

uint32_t Writer::Impl::take_groups(const TableState& ts, std::span<const FieldValue> values, const int64_t* times,
                                   int64_t event_time_ms, uint32_t* touched) {
  // An update without fields says "the row is current at t" for every group.
  uint32_t t = values.empty() ? ts.all_groups : 0;
  for (const FieldValue& v : values) t |= uint32_t{1} << ts.fields[v.field].group;
  uint32_t take = 0;
  for (uint32_t g = 0; g < ts.geo.group_count; ++g) {
    if (((t >> g) & 1u) && event_time_ms >= times[g]) take |= uint32_t{1} << g;  // ties: the later call wins
  }
  group_values.clear();
  for (const FieldValue& v : values) {
    if ((take >> ts.fields[v.field].group) & 1u) group_values.push_back(v);
  }
  *touched = t;
  return take;
}

namespace {
int64_t newest_group_time(const int64_t* times, uint32_t groups) {
  int64_t newest = kNoGroupTime;
  for (uint32_t g = 0; g < groups; ++g) newest = std::max(newest, times[g]);
  return newest;
}
}  // namespace

ApplyResult Writer::Impl::upsert_grouped(uint32_t table, std::string_view key, int64_t event_time_ms,
                                         std::span<const FieldValue> values, int64_t apply_unix_ns) {
  TableState& ts = tables[table];
  if (key.empty() || key.size() > ts.geo.key_max_len || !values_valid(ts, values)) return ApplyResult::kInvalid;
  const int64_t now = apply_unix_ns != 0 ? apply_unix_ns : now_unix_ns();
  const uint64_t hash = hash_key(key, ts.geo.hash_seed);
  packed.assign(key);
  const Probe p = probe(ts, hash, now);
  TableCounters& c = ts.desc->counters;

  // A new key starts with no group written; the key's own tombstone keeps
  // the times of the delete that made it, so older updates stay deleted.
  int64_t times[kMaxFieldGroups];
  std::fill(times, times + kMaxFieldGroups, kNoGroupTime);
  bool fresh_row = true;
  if (p.found != kNone) {
    ts.load_group_times(p.found, times);
    fresh_row = meta_state(sync::load_relaxed(ts.slot(p.found)[kSlotMetaWord])) != SlotState::kLive;
  }
  uint32_t touched = 0;
  const uint32_t take = take_groups(ts, values, times, event_time_ms, &touched);
  if (take == 0) {
    bump(c.stale_ignored);
    return ApplyResult::kStale;
  }
  const uint64_t at = slot_for_upsert(table, p, fresh_row, hash, now);
  if (at == kNone) return ApplyResult::kTableFull;
  for (uint32_t g = 0; g < ts.geo.group_count; ++g) {
    if ((take >> g) & 1u) times[g] = event_time_ms;
  }

  RowChange change;
  change.values = group_values;
  change.set_times = true;
  change.event_time_ms = newest_group_time(times, ts.geo.group_count);
  change.apply_unix_ns = now;
  change.group_times = times;
  if (fresh_row) change.take_key(packed, make_meta(hash, SlotState::kLive));
  arm_if_staged();
  write_row(table, at, change);

  if (take != touched) bump(c.stale_ignored);  // applied in part: some group was newer
  count_upsert(ts, event_time_ms, now);
  return ApplyResult::kApplied;
}

// ---------------------------------------------------------------------------
// Tables with aggregates
//
// The aggregate state changes (advance, fold, dedup) go through the journal
// between journal.begin() and journal.commit(); write_row then publishes
// the outputs and marks the journal done (row_write.h, step 5).

ApplyResult Writer::Impl::apply_aggregated(uint32_t table, std::string_view key, int64_t event_time_ms,
                                           std::span<const FieldValue> values, std::span<const SourceValue> sources,
                                           uint64_t event_id, int64_t apply_unix_ns, const uint64_t* key_hash) {
  TableState& ts = tables[table];
  if (key.empty() || key.size() > ts.geo.key_max_len || !values_valid(ts, values)) return ApplyResult::kInvalid;
  for (const FieldValue& v : values) {
    if (v.field >= ts.declared_fields) return ApplyResult::kInvalid;  // outputs belong to the writer
  }
  for (const SourceValue& sv : sources) {
    if (sv.source >= ts.agg.plan.sources.size() || !std::isfinite(sv.value)) return ApplyResult::kInvalid;
  }
  const int64_t now = apply_unix_ns != 0 ? apply_unix_ns : now_unix_ns();
  advance_clock(now);
  const int64_t clock = clock_ms;
  // A batch (upsert_many.cc) hashed the key and prefetched its lines already.
  const uint64_t hash = key_hash != nullptr ? *key_hash : hash_key(key, ts.geo.hash_seed);
  if (key_hash == nullptr) {
    // Most keys sit in their home slot: start fetching its row and state now.
    prefetch_home(ts.geo, hash);
    writer::prefetch_event(ts.agg, ts.agg.block(ts.geo.home(hash)), clock, event_time_ms);
  }
  packed.assign(key);
  const Probe p = probe(ts, hash, now);
  TableCounters& c = ts.desc->counters;
  AggregateCounters& ac = ts.desc->aggregate_counters;
  sync::store_relaxed(ac.clock_ms, static_cast<uint64_t>(clock));

  const uint64_t scoped = event_id != 0 ? writer::scoped_event_id(event_id, hash) : 0;
  if (scoped != 0 && writer::dedup_contains(ts.agg, scoped, clock)) {
    bump(ac.duplicates);
    return ApplyResult::kDuplicate;
  }

  uint64_t at = p.found;
  bool live = false;
  int64_t row_time = 0;
  const uint32_t groups = ts.geo.group_count;
  int64_t times[kMaxFieldGroups];
  std::fill(times, times + kMaxFieldGroups, kNoGroupTime);
  if (at != kNone) {
    const Word* s = ts.slot(at);
    row_time = static_cast<int64_t>(sync::load_relaxed(s[kSlotEventTimeWord]));
    live = meta_state(sync::load_relaxed(s[kSlotMetaWord])) == SlotState::kLive;
    if (!live && event_time_ms < row_time) {  // older than the delete: the key stays deleted
      bump(c.stale_ignored);
      return ApplyResult::kStale;
    }
    if (groups > 0) ts.load_group_times(at, times);
  }
  // Fields follow last write wins (per group with field groups); aggregates
  // take any event within the allowed lateness.
  bool fields_fresh = !live || event_time_ms >= row_time;
  bool fields_partial = false;  // some of the event's fields were older than their group
  uint32_t take = 0;
  if (groups > 0 && !values.empty()) {
    uint32_t touched = 0;
    take = take_groups(ts, values, times, event_time_ms, &touched);
    values = group_values;
    fields_fresh = take != 0;
    fields_partial = fields_fresh && take != touched;
  }
  // Only an event that carries aggregate input can be late: a count without
  // a source counts every event.
  const bool aggregate_input = !sources.empty() || ts.agg.counts_every_event;
  if (!aggregate_input && !fields_fresh) {
    bump(c.stale_ignored);
    return ApplyResult::kStale;
  }
  const bool late = aggregate_input && event_time_ms <= clock - ts.agg.lateness_ms;
  if (late && !(fields_fresh && !values.empty())) {
    bump(ac.late_dropped);
    return ApplyResult::kLate;
  }
  const bool fresh_row = !live;
  // A key whose windows need one more bucket than its inline ones hold
  // takes an arena chunk; without one the update is refused before any
  // change, rather than counted inexactly. A new key never needs one, and
  // an event takes at most one chunk per group, so with that many free the
  // walk over the buckets (a second one, fold walks them too) is not needed.
  if (const uint64_t free = writer::chunks_free(ts.agg);
      !fresh_row && !late && free < ts.agg.plan.groups.size() &&
      writer::chunks_needed(ts.agg, ts.agg.block(at), clock, event_time_ms, sources) > free) [[unlikely]] {
    writer::count_arena_refusal(ts.agg);
    return ApplyResult::kArenaFull;
  }
  at = slot_for_upsert(table, p, fresh_row, hash, now);
  if (at == kNone) return ApplyResult::kTableFull;

  // The aggregate state, journalled.
  Word* block = ts.agg.block(at);
  arm_if_staged();  // before the first state word changes
  journal.begin();
  if (fresh_row) {
    // The slot may hold a deleted key's state: its chunks go back first
    // (journalled); the rest is zeroed without a journal, since the slot is
    // not live until write_row.
    writer::release_chunks(ts.agg, block, journal);
    writer::reset_block(ts.agg, block);
  }
  // The due word depends only on the windows' starts and emptiness: it is
  // recomputed when advance() moved a window or fold() changed either.
  bool due_may_move = !fresh_row && writer::advance(ts.agg, block, clock, journal);
  if (late) {
    bump(ac.late_dropped);
  } else {
    bool starts_moved = false;
    const bool folded = writer::fold(ts.agg, block, clock, event_time_ms, sources, journal, &starts_moved);
    due_may_move |= starts_moved;
    // Count windows and sequences (aggregate_events.h).
    const writer::EventFold in_stores = writer::fold_events(ts.agg, block, clock, event_time_ms, sources, journal);
    if (folded || in_stores == writer::EventFold::kFolded) {
      bump(ac.events);
    } else if (in_stores == writer::EventFold::kTooOld) {
      bump(ac.late_dropped);  // older than the N newest events its count windows cover
    } else if (aggregate_input) {
      bump(ac.outside_window);  // within the lateness, but its bucket left every window
    }
  }
  if (scoped != 0 && writer::dedup_insert(ts.agg, scoped, event_time_ms, clock, journal)) bump(ac.dedup_evictions);
  // A fresh row's block was reset, due word included, and folded into
  // empty windows (starts_moved), so it is scheduled whenever it has one.
  if (due_may_move) schedule(table, at, block);

  // The row: the event's fields if they are fresh, then every output.
  RowChange change;
  if (fields_fresh) change.values = values;
  change.outputs_of = block;
  change.set_times = true;
  change.event_time_ms = fresh_row ? event_time_ms : std::max(row_time, event_time_ms);
  change.apply_unix_ns = now;
  if (groups > 0) {
    // The groups whose fields it wrote, and those whose aggregates it fed,
    // are now at least as new as the event.
    uint32_t fed = 0;
    if (!late) {
      fed = ts.every_event_groups;
      for (const SourceValue& sv : sources) fed |= ts.source_groups[sv.source];
    }
    if (values.empty() && fields_fresh && !aggregate_input) fed = ts.all_groups;  // "current at t", as a plain table
    for (uint32_t g = 0; g < groups; ++g) {
      if (((take | fed) >> g) & 1u) times[g] = std::max(times[g], event_time_ms);
    }
    change.group_times = times;
  }
  if (fresh_row) change.take_key(packed, make_meta(hash, SlotState::kLive));
  write_row(table, at, change);
  journal.commit();

  if (!fields_fresh || fields_partial) bump(c.stale_ignored);
  count_upsert(ts, event_time_ms, now);
  return ApplyResult::kApplied;
}

// ---------------------------------------------------------------------------
// Deletes

// write_row for a delete or unpin. A change that turns the row into a
// tombstone forgets its aggregates: their arena chunks go back to the free
// list in the same crash-safe change (the journal is marked done by the
// slot write, as for an event).
void Writer::Impl::write_tombstone(uint32_t table, uint64_t slot, const RowChange& change) {
  TableState& ts = tables[table];
  const bool release = change.set_meta && ts.agg.chunk_count > 0;
  if (release) {
    journal.begin();
    writer::release_chunks(ts.agg, ts.agg.block(slot), journal);
  }
  write_row(table, slot, change);
  if (release) journal.commit();
}

ApplyResult Writer::Impl::remove(uint32_t table, std::string_view key, int64_t event_time_ms, int64_t apply_unix_ns) {
  TableState& ts = tables[table];
  if (key.empty() || key.size() > ts.geo.key_max_len) return ApplyResult::kInvalid;
  const int64_t now = apply_unix_ns != 0 ? apply_unix_ns : now_unix_ns();
  advance_clock(now);  // every call moves the aggregate clock (writer.h)
  const uint64_t hash = hash_key(key, ts.geo.hash_seed);
  packed.assign(key);
  const Probe p = probe(ts, hash, now);
  TableCounters& c = ts.desc->counters;

  RowChange change;
  change.set_times = true;
  change.event_time_ms = event_time_ms;
  change.apply_unix_ns = now;
  change.set_meta = true;
  change.meta = make_meta(hash, SlotState::kTombstone);
  const uint32_t groups = ts.geo.group_count;
  int64_t times[kMaxFieldGroups];
  std::fill(times, times + kMaxFieldGroups, event_time_ms);
  if (groups > 0) change.group_times = times;
  if (p.found != kNone && groups > 0) {
    // Per group: a group no newer than the delete is cleared and takes its
    // time; a newer one survives, and the row stays live for it. Groups
    // that hold aggregates are cleared only with the whole row: their
    // values come from windows of events, which a delete does not reach
    // (the windows restart when the key is written again).
    ts.load_group_times(p.found, times);
    uint32_t clear = 0;
    for (uint32_t g = 0; g < groups; ++g) {
      if (times[g] <= event_time_ms) clear |= uint32_t{1} << g;
    }
    if (clear != ts.all_groups) clear &= ~ts.aggregate_groups;
    if (clear == 0) {
      bump(c.stale_ignored);
      return ApplyResult::kStale;
    }
    for (uint32_t g = 0; g < groups; ++g) {
      if ((clear >> g) & 1u) times[g] = event_time_ms;
    }
    if (clear != ts.all_groups) {
      change.set_meta = false;
      change.clear_groups = clear;
      change.event_time_ms = newest_group_time(times, groups);
      bump(c.stale_ignored);  // applied in part: some group was newer
    }
    arm_if_staged();
    write_tombstone(table, p.found, change);
  } else if (p.found != kNone) {
    // The row stays as it was, hidden behind the tombstone's meta.
    const Word* s = ts.slot(p.found);
    if (event_time_ms < static_cast<int64_t>(sync::load_relaxed(s[kSlotEventTimeWord]))) {
      bump(c.stale_ignored);
      return ApplyResult::kStale;
    }
    arm_if_staged();
    write_tombstone(table, p.found, change);
  } else {
    // Remember the delete so that an older upsert arriving later stays
    // deleted; without room for the record the delete is still a no-op.
    const uint64_t at = choose_slot(ts, p, true);
    if (at != kNone) {
      change.take_key(packed, change.meta);
      arm_if_staged();
      write_row(table, at, change);
    }
  }
  bump(c.deletes);
  count_apply(ts, event_time_ms, now);
  return ApplyResult::kApplied;
}

ApplyResult Writer::Impl::unpin(uint32_t table, std::string_view key, int64_t event_time_ms, int64_t pinned_after_ms,
                                int64_t apply_unix_ns) {
  TableState& ts = tables[table];
  if (key.empty() || key.size() > ts.geo.key_max_len) return ApplyResult::kInvalid;
  const int64_t now = apply_unix_ns != 0 ? apply_unix_ns : now_unix_ns();
  advance_clock(now);  // every call moves the aggregate clock (writer.h)
  const uint64_t hash = hash_key(key, ts.geo.hash_seed);
  packed.assign(key);
  const Probe p = probe(ts, hash, now);
  TableCounters& c = ts.desc->counters;
  if (p.found == kNone ||
      static_cast<int64_t>(sync::load_relaxed(ts.slot(p.found)[kSlotEventTimeWord])) <= pinned_after_ms) {
    bump(c.stale_ignored);  // not pinned: a healthy row is never cleared
    return ApplyResult::kStale;
  }
  RowChange change;
  change.set_times = true;
  change.event_time_ms = event_time_ms;
  change.apply_unix_ns = now;
  change.set_meta = true;
  change.meta = make_meta(hash, SlotState::kTombstone);
  int64_t times[kMaxFieldGroups];
  std::fill(times, times + kMaxFieldGroups, event_time_ms);
  if (ts.geo.group_count > 0) change.group_times = times;
  arm_if_staged();
  write_tombstone(table, p.found, change);
  bump(c.deletes);
  count_apply(ts, event_time_ms, now);
  return ApplyResult::kApplied;
}

}  // namespace larder

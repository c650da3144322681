// Updates of one key: upsert into a plain table, apply an event to a table
// with aggregates, delete. Each reads top to bottom as: validate, probe,
// decide (stale, duplicate, late, full), place, build and write the row
// (write_row, row_write.h), count. A staged source position is armed right
// before the update's first effect (arm_if_staged, source.cc); the dispatch in
// writer.cc finishes it whatever the result.
//
// Last write wins by event time (writer.h). Deletes leave a tombstone with
// the delete's event time, so an older upsert that arrives later is stale.
//
// Threading: the writer thread only.
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
                                       std::span<const FieldValue> values, int64_t apply_unix_ns) {
  TableState& ts = tables[table];
  if (key.empty() || key.size() > ts.geo.key_max_len || !values_valid(ts, values)) return ApplyResult::kInvalid;
  const int64_t now = apply_unix_ns != 0 ? apply_unix_ns : now_unix_ns();
  const uint64_t hash = hash_key(key, ts.geo.hash_seed);
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
// Tables with aggregates
//
// The aggregate state changes (advance, fold, dedup) go through the journal
// between journal.begin() and journal.commit(); write_row then publishes
// the outputs and marks the journal done (row_write.h, step 5).

ApplyResult Writer::Impl::apply_aggregated(uint32_t table, std::string_view key, int64_t event_time_ms,
                                           std::span<const FieldValue> values, std::span<const SourceValue> sources,
                                           uint64_t event_id, int64_t apply_unix_ns) {
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
  const uint64_t hash = hash_key(key, ts.geo.hash_seed);
  // Most keys sit in their home slot: start fetching its row and state now.
  prefetch_home(ts.geo, hash);
  writer::prefetch_event(ts.agg, ts.agg.block(ts.geo.home(hash)), clock, event_time_ms);
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
  if (at != kNone) {
    const Word* s = ts.slot(at);
    row_time = static_cast<int64_t>(sync::load_relaxed(s[kSlotEventTimeWord]));
    live = meta_state(sync::load_relaxed(s[kSlotMetaWord])) == SlotState::kLive;
    if (!live && event_time_ms < row_time) {  // older than the delete: the key stays deleted
      bump(c.stale_ignored);
      return ApplyResult::kStale;
    }
  }
  // Fields follow last write wins; aggregates take any event within the
  // allowed lateness.
  const bool fields_fresh = !live || event_time_ms >= row_time;
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
  at = slot_for_upsert(table, p, fresh_row, hash, now);
  if (at == kNone) return ApplyResult::kTableFull;

  // The aggregate state, journalled.
  Word* block = ts.agg.block(at);
  arm_if_staged();                                    // before the first state word changes
  if (fresh_row) writer::reset_block(ts.agg, block);  // not live yet: no journal needed
  journal.begin();
  if (!fresh_row) writer::advance(ts.agg, block, clock, journal);
  if (late) {
    bump(ac.late_dropped);
  } else if (writer::fold(ts.agg, block, clock, event_time_ms, sources, journal)) {
    bump(ac.events);
  } else if (aggregate_input) {
    bump(ac.outside_window);  // within the lateness, but its bucket left every window
  }
  if (scoped != 0 && writer::dedup_insert(ts.agg, scoped, event_time_ms, clock, journal)) bump(ac.dedup_evictions);
  schedule(table, at, block);

  // The row: the event's fields if they are fresh, then every output.
  RowChange change;
  if (fields_fresh) change.values = values;
  change.outputs_of = block;
  change.set_times = true;
  change.event_time_ms = fresh_row ? event_time_ms : std::max(row_time, event_time_ms);
  change.apply_unix_ns = now;
  if (fresh_row) change.take_key(packed, make_meta(hash, SlotState::kLive));
  write_row(table, at, change);
  journal.commit();

  if (!fields_fresh) bump(c.stale_ignored);
  count_upsert(ts, event_time_ms, now);
  return ApplyResult::kApplied;
}

// ---------------------------------------------------------------------------
// Deletes

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
  if (p.found != kNone) {
    // The row stays as it was, hidden behind the tombstone's meta.
    const Word* s = ts.slot(p.found);
    if (event_time_ms < static_cast<int64_t>(sync::load_relaxed(s[kSlotEventTimeWord]))) {
      bump(c.stale_ignored);
      return ApplyResult::kStale;
    }
    arm_if_staged();
    write_row(table, p.found, change);
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
  arm_if_staged();
  write_row(table, p.found, change);
  bump(c.deletes);
  count_apply(ts, event_time_ms, now);
  return ApplyResult::kApplied;
}

}  // namespace larder

// Work the writer does between updates: the heartbeat, refreshing aggregates
// whose windows lost a bucket, and reclaiming expired tombstones.
//
// Threading: the writer thread only.
#include <algorithm>

#include "larder/layout/clock.h"
#include "row_write.h"
#include "table.h"

namespace larder {

using namespace layout;  // NOLINT: the writer works on the layout's words
using writer::bump;

namespace {

// The most time one maintain() call spends refreshing aggregates.
constexpr int64_t kMaintainRefreshNs = 5'000'000;

// Slots of the due scan after attach per key of a refresh() budget: the
// sidecar's refresh(0, 2048) between bulks then reads 8,192 slots' meta and
// due words, a slice of the same order as the refreshes it may do.
constexpr uint64_t kDueScanSlotsPerKey = 4;

}  // namespace

// ---------------------------------------------------------------------------
// Aggregate refresh

// Records when the block must next be refreshed, and queues it.
void Writer::Impl::schedule(uint32_t table, uint64_t slot, Word* block) {
  const int64_t at = writer::next_due_ms(tables[table].agg, block);
  const uint64_t word = at > 0 ? static_cast<uint64_t>(at) + 1 : 0;
  if (sync::load_relaxed(writer::due_word(block)) == word) return;
  journal.set(writer::due_word(block), word);
  if (at > 0 && options.refresh_queue) due.push(Due{at, table, slot});
}

// Brings one live key's windows up to the clock and rewrites its outputs.
bool Writer::Impl::refresh_slot(uint32_t table, uint64_t slot) {
  TableState& ts = tables[table];
  if (meta_state(sync::load_relaxed(ts.slot(slot)[kSlotMetaWord])) != SlotState::kLive) return false;
  Word* block = ts.agg.block(slot);
  journal.begin();
  writer::advance(ts.agg, block, clock_ms, journal);
  schedule(table, slot, block);
  RowChange change;
  change.outputs_of = block;
  write_row(table, slot, change);
  journal.commit();
  bump(ts.desc->aggregate_counters.refreshes);
  // A switch whose copy has passed the slot takes the refreshed row again.
  if (next_gen) [[unlikely]]
    switch_follow_slot(table, slot);
  return true;
}

// Puts the due times of the next `slot_budget` slots not scanned since attach
// into the heap. A key an update rescheduled meanwhile may be queued twice;
// refresh() drops the entry that no longer matches its due word.
void Writer::Impl::scan_due(uint64_t slot_budget) {
  due_scan_pending = false;
  for (uint32_t t = 0; t < tables.size(); ++t) {
    TableState& ts = tables[t];
    const uint64_t end = ts.due_scan + std::min(slot_budget, ts.geo.slot_count - ts.due_scan);
    for (uint64_t i = ts.due_scan; i < end; ++i) {
      if (meta_state(sync::load_relaxed(ts.slot(i)[kSlotMetaWord])) != SlotState::kLive) continue;
      const uint64_t word = sync::load_relaxed(writer::due_word(ts.agg.block(i)));
      if (word != 0) due.push(Due{static_cast<int64_t>(word - 1), t, i});
    }
    slot_budget -= end - ts.due_scan;
    ts.due_scan = end;
    due_scan_pending |= end < ts.geo.slot_count;
  }
}

uint64_t Writer::Impl::refresh(int64_t now_unix_ns, uint64_t key_budget) {
  if (!options.refresh_queue) {
    // No queue to pop (writer.h): the clock moves, no key is refreshed, and
    // refreshed_through_ms stays, since keys not read may be owed one.
    advance_clock(now_unix_ns != 0 ? now_unix_ns : layout::now_unix_ns());
    for (TableState& ts : tables) {
      if (ts.agg.enabled()) sync::store_relaxed(ts.desc->aggregate_counters.clock_ms, static_cast<uint64_t>(clock_ms));
    }
    return 0;
  }
  // Until the heap holds every key again, each call scans kDueScanSlotsPerKey
  // slots per key of its budget: bounded work per call, the whole table
  // for an unbounded one.
  if (due_scan_pending) {
    scan_due(key_budget > ~uint64_t{0} / kDueScanSlotsPerKey ? ~uint64_t{0} : key_budget * kDueScanSlotsPerKey);
  }
  advance_clock(now_unix_ns != 0 ? now_unix_ns : layout::now_unix_ns());
  uint64_t done = 0;
  while (!due.empty() && done < key_budget && due.top().due_ms <= clock_ms) {
    const Due d = due.top();
    due.pop();
    // A queued time the key has since moved past (an event or an earlier
    // refresh rescheduled it) is dropped; the key's current time is queued too.
    const TableState& ts = tables[d.table];
    if (sync::load_relaxed(writer::due_word(ts.agg.block(d.slot))) != static_cast<uint64_t>(d.due_ms) + 1) continue;
    if (refresh_slot(d.table, d.slot)) ++done;
  }
  // Every key owed a refresh at or before `through` has had it: the clock,
  // or just before the earliest refresh the budget left owed (an entry the
  // key moved past makes it earlier than need be, never later). While the due
  // times are still being gathered after open, a key not gathered yet may be
  // owed one from before the restart, so the instant stays where the last
  // writer left it.
  int64_t through = clock_ms;
  if (!due.empty() && due.top().due_ms <= clock_ms) through = due.top().due_ms - 1;
  for (TableState& ts : tables) {
    if (!ts.agg.enabled()) continue;
    AggregateCounters& ac = ts.desc->aggregate_counters;
    sync::store_relaxed(ac.clock_ms, static_cast<uint64_t>(clock_ms));
    if (!due_scan_pending && through > static_cast<int64_t>(sync::load_relaxed(ac.refreshed_through_ms))) {
      // After the rows this call rewrote (each published by its slot's W2):
      // pairs with the reader's acquire load before it copies a row
      // (client.cc, Table::get), so the copy is at least this current.
      sync::store_release(ac.refreshed_through_ms, static_cast<uint64_t>(through));
    }
  }
  return done;
}

// The key's entry in the queue, if any, stays: refresh() drops it when it
// finds the due word moved past it.
bool Writer::Impl::refresh_key(uint32_t table, std::string_view key, int64_t now_unix_ns) {
  const int64_t now = now_unix_ns != 0 ? now_unix_ns : layout::now_unix_ns();
  advance_clock(now);
  TableState& ts = tables[table];
  if (!ts.agg.enabled()) return false;
  // As refresh() publishes it (the key's row is rewritten at this clock).
  sync::store_relaxed(ts.desc->aggregate_counters.clock_ms, static_cast<uint64_t>(clock_ms));
  if (key.empty() || key.size() > ts.geo.key_max_len) return false;
  packed.assign(key);
  const Probe p = probe(ts, hash_key(key, ts.geo.hash_seed), now);
  if (p.found == writer::kNone) return false;
  // Due as refresh() pops a key: its due word names a time at or before the
  // clock (0: no window holds an event, nothing to move).
  const uint64_t word = sync::load_relaxed(writer::due_word(ts.agg.block(p.found)));
  if (word == 0 || static_cast<int64_t>(word - 1) > clock_ms) return false;
  return refresh_slot(table, p.found);
}

uint64_t Writer::refresh(int64_t now_unix_ns, uint64_t key_budget) { return impl_->refresh(now_unix_ns, key_budget); }

bool Writer::refresh_key(uint32_t table, std::string_view key, int64_t now_unix_ns) {
  return table < impl_->tables.size() && impl_->refresh_key(table, key, now_unix_ns);
}

uint64_t Writer::key_hash_seed(uint32_t table) const noexcept {
  return table < impl_->tables.size() ? impl_->tables[table].geo.hash_seed : 0;
}

bool Writer::refresh_due() const {
  const Impl& w = *impl_;
  if (!w.options.refresh_queue) return false;
  if (w.due_scan_pending) return true;
  return !w.due.empty() && w.due.top().due_ms <= std::max(w.clock_ms, layout::now_unix_ns() / 1'000'000);
}

// ---------------------------------------------------------------------------
// Tombstone reclaim

// Turns expired tombstones that no probe chain needs back into empty
// slots, visiting `steps` slots from the table's cursor. A tombstone at i
// is needed while some key after it in the same cluster has its home at or
// before i (its chain runs through i); otherwise emptying i hides nothing
// from any reader. Returns the slots reclaimed.
uint64_t Writer::Impl::purge(uint32_t table, uint64_t steps) {
  TableState& ts = tables[table];
  if (sync::load_relaxed(ts.desc->counters.tombstones) == 0) return 0;
  const uint64_t n = ts.geo.slot_count;
  const int64_t expiry_ns = now_unix_ns() - options.tombstone_retention_ms * 1'000'000;
  auto distance = [n](uint64_t from, uint64_t to) { return to >= from ? to - from : to + n - from; };
  uint64_t reclaimed = 0;
  for (uint64_t step = 0; step < steps; ++step) {
    const uint64_t i = ts.purge_cursor;
    ts.purge_cursor = (i + 1 == n) ? 0 : i + 1;
    const Word* s = ts.slot(i);
    if (meta_state(sync::load_relaxed(s[kSlotMetaWord])) != SlotState::kTombstone ||
        static_cast<int64_t>(sync::load_relaxed(s[kSlotApplyTimeWord])) >= expiry_ns) {
      continue;
    }
    bool needed = false;
    for (uint64_t q = (i + 1) % n, k = 0; k + 1 < n && !needed; q = (q + 1) % n, ++k) {
      const uint64_t meta = sync::load_relaxed(ts.slot(q)[kSlotMetaWord]);
      if (meta == 0) break;
      needed = distance(ts.geo.home(meta), q) >= distance(i, q);
    }
    if (needed) continue;
    RowChange change;
    change.set_meta = true;
    change.meta = 0;
    write_row(table, i, change);  // counts the tombstone out
    ++reclaimed;
  }
  return reclaimed;
}

// ---------------------------------------------------------------------------
// The writer thread's periodic call

void Writer::heartbeat() {
  sync::store_relaxed(impl_->header->heartbeat_mono_ns, static_cast<uint64_t>(now_mono_ns()));
}

uint64_t Writer::maintain(uint64_t slot_budget) {
  heartbeat();
  // Bounded in time, so that a bucket boundary shared by many keys delays
  // updates by at most a few milliseconds per call; the sidecar's writer
  // thread works off a backlog between bulks of messages (refresh_due()).
  const int64_t until = now_mono_ns() + kMaintainRefreshNs;
  while (refresh(0, 512) == 512 && now_mono_ns() < until) {
  }
  Impl& w = *impl_;
  // Growth and the copy of a switch: a slice per call between updates.
  w.take_grow_request();
  w.maybe_grow();
  if (w.next_gen) switch_step();
  uint64_t reclaimed = 0;
  for (uint32_t t = 0; t < w.tables.size() && slot_budget > 0; ++t) {
    const uint64_t steps = std::min(w.tables[t].geo.slot_count, slot_budget);
    reclaimed += w.purge(t, steps);
    slot_budget -= steps;
  }
  return reclaimed;
}

}  // namespace larder

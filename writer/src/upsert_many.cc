// A batch of upserts: Writer::upsert_many. Each update is applied by the
// same apply() as a single call, so the slot write and its crash-safety
// protocol (undo copy before the first store, row_write.h) are unchanged;
// the batch only adds prefetches. A random-key upsert of a large table waits
// mostly on the first miss of its probe (the home slot's meta word,
// docs/performance.md): with the batch in hand the writer can start fetching
// the next keys' slots while it applies the current one.
//
// Threading: the writer thread only.
#include "larder/layout/clock.h"
#include "larder/layout/table_view.h"
#include "writer_impl.h"

namespace larder {

using namespace layout;  // NOLINT: the writer works on the layout's words

void Writer::Impl::prefetch_upsert(const Upsert& u) const {
  // What apply() would refuse touches nothing; the hash reads only the key.
  if (u.table >= tables.size()) return;
  const TableState& ts = tables[u.table];
  if (u.key.empty() || u.key.size() > ts.geo.key_max_len) return;
  const uint64_t hash = hash_key(u.key, ts.geo.hash_seed);
  const auto* s = reinterpret_cast<const char*>(ts.slot(ts.geo.home(hash)));
  // For writing (the slot is rewritten), every line of the slot up to 1 KiB
  // as prefetch_home() does for readers.
  const uint32_t lines = std::min<uint32_t>(ts.geo.slot_words / 8, 16);
  for (uint32_t l = 0; l < lines; ++l) __builtin_prefetch(s + 64 * l, 1, 3);
  if (ts.agg.enabled()) {
    writer::prefetch_event(ts.agg, ts.agg.block(ts.geo.home(hash)), clock_ms, u.event_time_ms);
  }
}

void Writer::Impl::prefetch_undo() const {
  // Every slot write copies its slot here first; after the batch's first
  // update the area stays in the cache, so once per batch is enough.
  uint32_t words = 0;
  for (const TableState& ts : tables) words = std::max(words, ts.geo.slot_words);
  const auto* u = reinterpret_cast<const char*>(undo);
  for (uint32_t at = 0; at < words * 8; at += 64) __builtin_prefetch(u + at, 1, 3);
}

void Writer::upsert_many(std::span<const Upsert> updates, std::span<ApplyResult> results, int64_t apply_unix_ns) {
  if (results.size() < updates.size()) {
    throw Error(ErrorCode::kInvalidArgument, "upsert_many: " + std::to_string(updates.size()) +
                                                 " updates but room for " + std::to_string(results.size()) +
                                                 " results");
  }
  const Impl& w = *impl_;
  const int64_t now = apply_unix_ns != 0 ? apply_unix_ns : now_unix_ns();
  const size_t n = updates.size();
  if (n == 0) return;
  w.prefetch_undo();
  for (size_t j = 0; j < std::min(n, kUpsertAhead); ++j) w.prefetch_upsert(updates[j]);
  for (size_t i = 0; i < n; ++i) {
    if (i + kUpsertAhead < n) w.prefetch_upsert(updates[i + kUpsertAhead]);
    const Upsert& u = updates[i];
    if (u.position != nullptr) stage_position(*u.position);
    results[i] = apply(u.table, u.key, u.event_time_ms, u.values, u.sources, u.event_id, now);
  }
}

}  // namespace larder

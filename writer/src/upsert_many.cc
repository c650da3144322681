// A batch of upserts: Writer::upsert_many. Each update is applied by the
// same apply() as a single call, so the slot write and its crash-safety
// protocol (undo copy before the first store, row_write.h) are unchanged;
// the batch only adds prefetches. A random-key upsert of a large table waits
// mostly on the first miss of its probe (the home slot's meta word,
// docs/performance.md): with the batch in hand the writer can start fetching
// the next keys' slots while it applies the current one.
//
// For a table with aggregates an update touches about ten lines in two
// pages (slot, state headers and windows, a bucket per group), and which
// lines depends on what the earlier lines hold: at the default load factor
// a key sits on average 1.5 slots past its home, and its state block is its
// own slot's, not its home's; which bucket lines the fold touches depends on
// the group headers. So the prefetch runs in three steps, each reading only
// lines an earlier step fetched:
//  1. kUpsertAhead updates ahead: hash the key (kept for the apply) and
//     fetch the meta lines of the first kProbeAhead slots from home.
//  2. kSlotAhead updates ahead: guess the key's slot from those meta words
//     (the first slot whose meta matches the hash, or the first empty one)
//     and fetch all its lines, its state's headers and windows, and each
//     ring's first line.
//  3. kBucketsAhead updates ahead: read the headers and first ring lines to
//     fetch the bucket lines the fold will touch (writer::prefetch_buckets).
// A wrong guess costs only misses; the apply itself probes as always.
//
// Each step runs for kPrefetchGroup updates at once, every kPrefetchGroup
// updates, rather than for one update per update. A prefetch into a page
// the TLB does not hold waits for its page walk before it retires, and an
// apply is long enough to fill the reorder buffer behind it: one prefetch
// per apply walks the pages one after another, while a group's prefetches
// sit close together in the instruction stream and their walks overlap
// (docs/performance.md, "Per-event CPU and grouped prefetch"). The
// distances keep each step at least a group behind the step whose lines it
// reads: kUpsertAhead - kSlotAhead and kSlotAhead - kBucketsAhead are both
// at least kPrefetchGroup.
//
// Threading: the writer thread only.
#include "larder/layout/clock.h"
#include "larder/layout/table_view.h"
#include "writer_impl.h"

namespace larder {

using namespace layout;  // NOLINT: the writer works on the layout's words

namespace {
constexpr uint64_t kProbeAhead = 3;
}  // namespace

void Writer::Impl::prefetch_upsert(const Upsert& u, PrefetchedKey& k) const {
  // What apply() would refuse touches nothing; the hash reads only the key.
  k.hashed = false;
  k.slot = writer::kNone;
  if (u.table >= tables.size()) return;
  const TableState& ts = tables[u.table];
  if (u.key.empty() || u.key.size() > ts.geo.key_max_len) return;
  k.hash = hash_key(u.key, ts.geo.hash_seed);
  k.hashed = true;
  const uint64_t home = ts.geo.home(k.hash);
  if (!ts.agg.enabled()) {
    // A plain row: every line of the home slot up to 1 KiB, for writing, as
    // prefetch_home() does for readers.
    const auto* s = reinterpret_cast<const char*>(ts.slot(home));
    const uint32_t lines = std::min<uint32_t>(ts.geo.slot_words / 8, 16);
    for (uint32_t l = 0; l < lines; ++l) __builtin_prefetch(s + 64 * l, 1, 3);
    return;
  }
  for (uint64_t p = 0, i = home; p < std::min(kProbeAhead, ts.geo.slot_count); ++p) {
    __builtin_prefetch(ts.slot(i), 1, 3);
    if (++i == ts.geo.slot_count) i = 0;
  }
}

void Writer::Impl::prefetch_slot(const Upsert& u, int64_t clock, PrefetchedKey& k) const {
  if (!k.hashed || !tables[u.table].agg.enabled()) return;
  const TableState& ts = tables[u.table];
  // The probe's first steps on the meta words step 1 fetched: a matching
  // hash is the key's slot but for a rare collision, an empty slot ends the
  // chain (a new key: the slot it will likely take).
  uint64_t i = ts.geo.home(k.hash);
  for (uint64_t p = 0; p < std::min(kProbeAhead, ts.geo.slot_count); ++p) {
    const uint64_t meta = sync::load_relaxed(ts.slot(i)[kSlotMetaWord]);
    if (meta == 0 || (meta & ~kMetaStateMask) == (k.hash & ~kMetaStateMask)) {
      k.slot = i;
      break;
    }
    if (++i == ts.geo.slot_count) i = 0;
  }
  if (k.slot == writer::kNone) return;
  const auto* s = reinterpret_cast<const char*>(ts.slot(k.slot));
  const uint32_t lines = std::min<uint32_t>(ts.geo.slot_words / 8, 16);
  for (uint32_t l = 0; l < lines; ++l) __builtin_prefetch(s + 64 * l, 1, 3);
  writer::prefetch_event(ts.agg, ts.agg.block(k.slot), clock, u.event_time_ms, 1);
  if (u.event_id != 0) writer::prefetch_dedup(ts.agg, writer::scoped_event_id(u.event_id, k.hash));
}

void Writer::Impl::prefetch_buckets(const Upsert& u, int64_t clock, const PrefetchedKey& k) const {
  if (k.slot == writer::kNone) return;
  const TableState& ts = tables[u.table];
  writer::prefetch_buckets(ts.agg, ts.agg.block(k.slot), clock, u.event_time_ms);
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
  Impl& w = *impl_;
  const int64_t now = apply_unix_ns != 0 ? apply_unix_ns : now_unix_ns();
  const size_t n = updates.size();
  if (n == 0) return;
  // The prefetches place buckets by the clock the batch's events will see.
  const int64_t clock = std::max(w.clock_ms, now / 1'000'000);
  constexpr size_t kGroup = kPrefetchGroup;
  static_assert(kUpsertAhead - kSlotAhead >= kGroup && kSlotAhead - kBucketsAhead >= kGroup,
                "a step reads lines the step before it fetched a group earlier");
  static_assert(kUpsertAhead + kGroup <= Impl::kPrefetchRing, "the ring holds every key from step 1 to its apply");
  Impl::PrefetchedKey ahead[Impl::kPrefetchRing];
  auto at = [&](size_t j) -> Impl::PrefetchedKey& { return ahead[j % Impl::kPrefetchRing]; };
  auto stage_upsert = [&](size_t from, size_t to) {
    for (size_t j = from; j < std::min(to, n); ++j) w.prefetch_upsert(updates[j], at(j));
  };
  auto stage_slot = [&](size_t from, size_t to) {
    for (size_t j = from; j < std::min(to, n); ++j) w.prefetch_slot(updates[j], clock, at(j));
  };
  auto stage_buckets = [&](size_t from, size_t to) {
    for (size_t j = from; j < std::min(to, n); ++j) w.prefetch_buckets(updates[j], clock, at(j));
  };
  w.prefetch_undo();
  // The first updates go through the steps back to back: their lines
  // arrive late, the rest of the batch's do not.
  stage_upsert(0, kUpsertAhead);
  stage_slot(0, kSlotAhead);
  stage_buckets(0, kBucketsAhead);
  for (size_t i = 0; i < n; ++i) {
    if (i % kGroup == 0) {
      stage_upsert(i + kUpsertAhead, i + kUpsertAhead + kGroup);
      stage_slot(i + kSlotAhead, i + kSlotAhead + kGroup);
      stage_buckets(i + kBucketsAhead, i + kBucketsAhead + kGroup);
    }
    const Upsert& u = updates[i];
    if (u.position != nullptr) stage_position(*u.position);
    const Impl::PrefetchedKey& k = at(i);
    const int64_t applied_at = u.apply_unix_ns != 0 ? u.apply_unix_ns : now;
    if (k.hashed && w.tables[u.table].agg.enabled()) {
      // apply() for a table with aggregates, with the hash at hand.
      results[i] =
          w.apply_aggregated(u.table, u.key, u.event_time_ms, u.values, u.sources, u.event_id, applied_at, &k.hash);
      if (w.staged) [[unlikely]]
        w.finish_position();
      if (w.next_gen) [[unlikely]]
        w.switch_follow(u.table, u.key);
    } else if (k.hashed && u.sources.empty() && w.tables[u.table].geo.group_count == 0) {
      // apply() for a plain table, with the hash at hand.
      results[i] = w.upsert_plain(u.table, u.key, u.event_time_ms, u.values, applied_at, &k.hash);
      if (w.staged) [[unlikely]]
        w.finish_position();
      if (w.next_gen) [[unlikely]]
        w.switch_follow(u.table, u.key);
    } else {
      results[i] = apply(u.table, u.key, u.event_time_ms, u.values, u.sources, u.event_id, applied_at);
    }
  }
}

}  // namespace larder

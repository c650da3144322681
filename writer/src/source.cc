// Source positions: where the segment stands in the log it is built from,
// stored in the SourceBlock atomically with the updates they cover.
//
// The pending record. A position staged for an update travels with it:
//  1. pending_partition, pending_next_plus_one, pending_skip_updates are
//     stored (relaxed), then pending_state = 1 (release, kPendingArmed),
//     all before the update's first effect (arm_position, called by the
//     update paths in update.cc).
//  2. write_row marks pending_state = 2 (kPendingDone) right after the
//     slot's W2, at the point where it marks the aggregate journal done
//     (row_write.h, step 5b). An update that writes no slot (stale,
//     duplicate, late, invalid, full) marks 2 after it returns.
//  3. The partition's words are copied from the pending record, then
//     pending_state = 0 (release, kPendingIdle).
// repair() (repair_position below): state 2 copies the record and clears it;
// state 1 copies it only if the guarded slot write finished (the journal's
// test: undo armed and the slot's seq equal to the undo copy's + 2), else
// drops it. So after a kill at any instruction the stored position covers
// exactly the updates whose effect is in the table.
//
// Readers load the partition words one at a time (Segment::sync): a reader
// may see next_plus_one and skip_updates of two successive positions. The
// resume point is only ever read by the writer, on its own thread.
//
// Threading: the writer thread only.
#include <cstring>

#include "crash_hook.h"
#include "larder/layout/clock.h"
#include "writer_impl.h"

namespace larder {

using namespace layout;  // NOLINT: the writer works on the layout's words
using writer::crash_point;

namespace {

void check_partition(uint32_t partition) {
  if (partition >= kMaxSourcePartitions) {
    throw Error(ErrorCode::kInvalidArgument, "source partition " + std::to_string(partition) + " is out of range (0.." +
                                                 std::to_string(kMaxSourcePartitions - 1) + ")");
  }
}

// Stores v into a position word, after the crash point tests kill at.
void store_position_word(Word& w, uint64_t v) {
  crash_point(CrashPoint::kPosition);
  sync::store_relaxed(w, v);
}

// Partition `partition` (< kMaxSourcePartitions) may now hold words.
void cover_partition(SourceBlock& b, uint64_t partition) {
  if (sync::load_relaxed(b.partition_count) <= partition) store_position_word(b.partition_count, partition + 1);
}

}  // namespace

void Writer::Impl::write_pending(const SourcePosition& p) {
  store_position_word(source->pending_partition, p.partition);
  store_position_word(source->pending_next_plus_one, p.next_offset + 1);
  store_position_word(source->pending_skip_updates, p.skip_updates);
}

void Writer::Impl::arm_position() {
  write_pending(staged_position);
  crash_point(CrashPoint::kPosition);
  // After the record's words, before the update's first effect.
  sync::store_release(source->pending_state, kPendingArmed);
  pending_armed = true;
}

void Writer::Impl::mark_pending_done() {
  crash_point(CrashPoint::kPosition);
  // After the slot's W2 (release): a restart that sees 2 finds the effect.
  sync::store_release(source->pending_state, kPendingDone);
  pending_armed = false;
}

// Copies the record (state kPendingDone) into its partition and clears it.
void Writer::Impl::commit_pending() {
  const uint64_t partition = sync::load_relaxed(source->pending_partition);
  if (partition < kMaxSourcePartitions) {
    PartitionWords& pw = source->partitions[partition];
    cover_partition(*source, partition);
    store_position_word(pw.next_plus_one, sync::load_relaxed(source->pending_next_plus_one));
    store_position_word(pw.skip_updates, sync::load_relaxed(source->pending_skip_updates));
  }
  crash_point(CrashPoint::kPosition);
  sync::store_release(source->pending_state, kPendingIdle);  // after the partition's words
}

void Writer::Impl::finish_position() {
  staged = false;
  if (sync::load_relaxed(source->pending_state) == kPendingIdle) {
    // The update stopped before any effect: the position is stored alone.
    write_pending(staged_position);
  }
  if (sync::load_relaxed(source->pending_state) != kPendingDone) mark_pending_done();
  commit_pending();
}

// repair.cc calls this first, while the undo record still describes the
// slot write the pending record may guard; `finished`: that write finished
// (guarded_write_finished).
void Writer::Impl::repair_position(bool finished) {
  const uint64_t state = sync::load_acquire(source->pending_state);
  if (state == kPendingIdle) return;
  const bool keep = state == kPendingDone || (state == kPendingArmed && finished);
  if (keep) {
    commit_pending();
  } else {
    sync::store_release(source->pending_state, kPendingIdle);  // dropped: its update left no effect
  }
}

// ---------------------------------------------------------------------------
// The public API (writer.h)

void Writer::stage_position(const SourcePosition& next) {
  check_partition(next.partition);
  impl_->staged_position = next;
  impl_->staged = true;
}

void Writer::set_position(const SourcePosition& next) {
  check_partition(next.partition);
  Impl& w = *impl_;
  w.staged = false;  // superseded
  w.write_pending(next);
  w.mark_pending_done();
  w.commit_pending();
}

std::optional<SourcePosition> Writer::position(uint32_t partition) const {
  if (partition >= kMaxSourcePartitions) return std::nullopt;
  const PartitionWords& pw = impl_->source->partitions[partition];
  const uint64_t next = sync::load_relaxed(pw.next_plus_one);
  if (next == 0) return std::nullopt;
  return SourcePosition{partition, next - 1, static_cast<uint32_t>(sync::load_relaxed(pw.skip_updates))};
}

std::string Writer::source_id() const {
  char text[kSourceIdWords * 8];
  for (size_t k = 0; k < kSourceIdWords; ++k) {
    const uint64_t w = sync::load_relaxed(impl_->source->source_id[k]);
    std::memcpy(text + 8 * k, &w, 8);
  }
  return std::string(text, strnlen(text, sizeof text));
}

bool Writer::set_source_id(std::string_view id) {
  if (id.size() >= kSourceIdWords * 8 || id.find('\0') != std::string_view::npos) {
    throw Error(ErrorCode::kInvalidArgument,
                "source id must be at most " + std::to_string(kSourceIdWords * 8 - 1) + " bytes without NUL");
  }
  const std::string stored = source_id();
  if (stored == id) return true;
  Impl& w = *impl_;
  SourceBlock& b = *w.source;
  const bool none_stored = stored.empty();
  if (!none_stored) {
    // The positions meant another log: clear them before the new id is
    // stored, so a kill in between leaves no position under either id that
    // does not belong to it.
    w.staged = false;
    sync::store_release(b.pending_state, kPendingIdle);
    for (PartitionWords& pw : b.partitions) {
      sync::store_relaxed(pw.next_plus_one, uint64_t{0});
      sync::store_relaxed(pw.skip_updates, uint64_t{0});
      sync::store_relaxed(pw.target_plus_one, uint64_t{0});
      sync::store_relaxed(pw.first_retained_plus_one, uint64_t{0});
    }
    sync::store_relaxed(b.partition_count, uint64_t{0});
  }
  char text[kSourceIdWords * 8] = {};
  std::memcpy(text, id.data(), id.size());
  sync::signal_fence();  // the positions are cleared before the id changes
  for (size_t k = 0; k < kSourceIdWords; ++k) {
    uint64_t word;
    std::memcpy(&word, text + 8 * k, 8);
    sync::store_relaxed(b.source_id[k], word);
  }
  return none_stored;
}

void Writer::set_sync_state(SyncState state) {
  SourceBlock& b = *impl_->source;
  if (sync::load_relaxed(b.sync_state) == static_cast<uint64_t>(state)) return;
  sync::store_relaxed(b.sync_changed_unix_ns, static_cast<uint64_t>(now_unix_ns()));
  sync::store_release(b.sync_state, static_cast<uint64_t>(state));  // readers load it with acquire
}

void Writer::set_target(uint32_t partition, std::optional<uint64_t> target_offset) {
  check_partition(partition);
  SourceBlock& b = *impl_->source;
  cover_partition(b, partition);
  sync::store_relaxed(b.partitions[partition].target_plus_one, target_offset ? *target_offset + 1 : 0);
}

void Writer::set_first_retained(uint32_t partition, std::optional<uint64_t> first_offset) {
  check_partition(partition);
  SourceBlock& b = *impl_->source;
  cover_partition(b, partition);
  sync::store_relaxed(b.partitions[partition].first_retained_plus_one, first_offset ? *first_offset + 1 : 0);
}

}  // namespace larder

// The writer thread: the only thread that touches larder::Writer. It applies
// decoded messages from Pipeline::work in order, reports each message's
// outcome on Pipeline::done, forwards connection state and reject counts to
// the segment header, keeps the segment's heartbeat fresh (maintain()
// at least every kMaintainInterval, busy or idle), and copies the segment
// between bulks when a snapshot asks for it (Pipeline::images).
#pragma once

#include <chrono>
#include <span>

#include "apply/pipeline.h"
#include "apply/stream_sync.h"
#include "larder/writer/writer.h"

namespace larder::sidecar {

inline constexpr std::chrono::milliseconds kMaintainInterval{50};

// Runs until pipeline.writer_stop is set and the work queue is empty, then
// records ConnectionState::kStopped. Sends each Completion to the lane of
// its WorkItem (pipeline.lanes, at least one), and forwards the lanes'
// combined connection and sync states to the segment every round. `sync`:
// the sync state of a RabbitMQ stream source (nullptr otherwise), polled
// every round. Runs on the writer thread.
void run_writer_thread(Writer& writer, Pipeline& pipeline, StreamSync* sync = nullptr);

// Where a stream message sits: apply_batch stores the position after each
// update with it (Writer::stage_position), so that after a kill the stored
// position covers exactly the updates in the table.
struct StreamPlace {
  uint64_t offset = 0;        // the message's offset
  uint32_t skip_updates = 0;  // its first updates, applied before a restart: not applied again
  uint32_t partition = 0;     // the SourceBlock partition of its position
  // A poller's batch of rows (WorkItem::update_next_offsets): when not
  // empty, update i of n stores {partition, next_offsets[i], 0} and the
  // last {partition, offset + 1, 0}; skip_updates is then 0.
  std::span<const uint64_t> next_offsets;
};

// Where apply_batch records the event-to-visible lag of each applied update:
// `now_unix_ms` (taken once per dequeued bulk) minus the update's event time.
struct LagRecorder {
  Histogram* histogram = nullptr;
  int64_t now_unix_ms = 0;
};

// Applies one message's updates: runs of upserts through
// Writer::upsert_many (fields, aggregate sources and the event id; the same
// effect as one Writer::apply each), deletes through Writer::remove.
// Returns kApplied, or kRejected with the reason of the first refused update
// (the other updates still apply: they are idempotent under last-write-wins,
// and aggregate inputs are deduplicated by event id, so a later replay from
// the dead-letter queue is harmless). Counts applied updates in `*applied`,
// stale ones in `*stale` (when given; the sidecar exports the segment's own
// per-table count instead, which also sees aggregate events whose fields are
// older than the row), redelivered events the writer recognised by id in
// `*duplicates` and events too late for their aggregates (and older than the
// row) in `*late`; those three are not rejections: the message is acked.
// Observes each applied update's lag into `lag` when given. Stores the index
// of the first refused update in `*refused_update` when given. With `place`
// (a stream message), skips its first place->skip_updates updates and stages
// before update i of n the position {partition, offset, i + 1} (the message
// is not wholly applied yet) or, for the last, {partition, offset + 1, 0}; a
// message with no update left stores {partition, offset + 1, 0} directly;
// with place->next_offsets, update i stores its own {partition,
// next_offsets[i], 0} instead (a poller's rows). Writer thread. Never
// allocates.
// The least ready of the lanes' states, and the worst of their connection
// states (any disconnected, else any connecting, else connected when any
// is, else stopped). Writer thread (reads relaxed atomics).
layout::SyncState combined_sync_state(const Pipeline& pipeline) noexcept;
layout::ConnectionState combined_connection_state(const Pipeline& pipeline) noexcept;

Outcome apply_batch(Writer& writer, const DecodedBatch& batch, RejectReason* reason, uint64_t* stale,
                    uint64_t* applied = nullptr, const LagRecorder* lag = nullptr, uint64_t* duplicates = nullptr,
                    uint64_t* late = nullptr, const StreamPlace* place = nullptr, uint32_t* refused_update = nullptr);

}  // namespace larder::sidecar

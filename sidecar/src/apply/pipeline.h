// What the source threads and the writer thread share.
//
//   source thread (one per source)           writer thread
//   ------------------------------           -------------
//   receive (AMQP, Kafka) -> decode
//   WorkItem ------ work (BlockingConcurrentQueue) ------> Writer::upsert/remove
//   ack / commit / refuse <-- lane.done (ConcurrentQueue) -- Completion
//
// Each source has a SourceLane: its index (WorkItem::source routes the
// Completion back to lane.done), its range of SourceBlock partitions and
// the states it reports. moodycamel keeps FIFO order per producer: each
// source's completions come back in its delivery order, and two updates of
// one source with the same event time apply in delivery order (between
// sources there is no order; last-write-wins by event time decides).
// The number of WorkItems in flight is bounded by each source's window
// (AMQP prefetch, kafka.max_in_flight), the only backpressure: a source
// never blocks on the queue.
//
// Atomics: each lane's connection_state and sync_state are written by its
// source thread (sync_state of a RabbitMQ stream by StreamSync, on the
// writer thread) and read by the writer thread, which combines them and
// forwards them to the segment (the Writer is used by the writer thread
// only) and to connection_state here. pending_rejects is added to by every
// source (fetch_add). Relaxed order suffices: they are statistics, not
// synchronisation; the queues synchronise the items.
//
// Metrics: counters and histograms of `metrics` take several writer threads
// (metrics.h); the HTTP thread reads them and connection_state, and the
// consumer's stats log line reads them too, so the log and /metrics give
// the same numbers under the same names.
#pragma once

#include <concurrentqueue/blockingconcurrentqueue.h>
#include <concurrentqueue/concurrentqueue.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "decode/decoder.h"
#include "larder/layout/format.h"
#include "observe/metrics.h"
#include "snapshot/image_exchange.h"

namespace larder::sidecar {

// "No offset": the queue is not a stream, or the value is unknown.
inline constexpr uint64_t kNoOffset = ~uint64_t{0};

// One decoded message on its way to the writer.
struct WorkItem {
  uint32_t source = 0;  // its lane (SourceLane::index): where the Completion goes
  // The SourceBlock partition its position is stored in (absolute: the
  // lane's partition_base plus the source's own partition number).
  uint32_t partition = 0;
  uint64_t epoch = 0;  // the connection it came from
  uint64_t delivery_tag = 0;
  // Stream queues: the message's offset in the stream (its x-stream-offset
  // header); the writer stores positions with it. kNoOffset for other queues.
  uint64_t offset = kNoOffset;
  // Updates of this message that were applied before a restart (the stored
  // position's skip_updates): the writer does not apply them again.
  uint32_t skip_updates = 0;
  // The consumer refused the message (it did not decode): apply nothing,
  // store the position past it.
  bool position_only = false;
  // The first delivery after subscribing at offset `gap_from` came from a
  // later offset: the stream no longer holds gap_from..offset-1 (retention
  // removed them). kNoOffset: no gap.
  uint64_t gap_from = kNoOffset;
  DecodedBatch batch;
  // CLOCK_MONOTONIC: the delivery came off the connection; it was handed to
  // the writer (SidecarMetrics' pipeline stages).
  int64_t received_mono_ns = 0;
  int64_t enqueued_mono_ns = 0;
  // A poller's rows (consume/sql_source.h): several rows in one batch, each
  // with its own place. When not empty, one entry per update of `batch`:
  // the next_offset stored with that update's effect (skip_updates 0); the
  // last update stores `offset` + 1 instead, which also covers rows after
  // it that gave no update (refused ones). Handed back in the Completion
  // for reuse, like `batch`.
  std::vector<uint64_t> update_next_offsets;
};

enum class Outcome : uint8_t {
  kApplied = 0,   // every update reached shared memory (stale ones counted, not an error)
  kRejected = 1,  // the writer refused an update: dead-letter the message
  kSkipped = 2,   // a position_only item: its position is stored, nothing applied; ack it
};

// The writer's answer for one WorkItem. It hands the batch back so the
// consumer reuses its buffers.
struct Completion {
  uint32_t partition = 0;       // the WorkItem's
  uint64_t offset = kNoOffset;  // the WorkItem's
  uint64_t epoch = 0;
  uint64_t delivery_tag = 0;
  Outcome outcome = Outcome::kApplied;
  RejectReason reason = RejectReason::kInternal;  // when kRejected
  uint32_t refused_update = 0;                    // when kRejected: the first refused update of `batch`
  DecodedBatch batch;
  std::vector<uint64_t> update_next_offsets;  // the WorkItem's, handed back for reuse
  int64_t applied_mono_ns = 0;                // CLOCK_MONOTONIC: the writer finished it
};

// What a source reports beside its lane's states: the HTTP thread asks it
// for /readyz and /metrics. Both are called on HTTP threads while the
// source runs: implementations read atomics or take their own lock.
class SourceHealth {
 public:
  virtual ~SourceHealth() = default;
  // "" when the source is ready, else a one-line reason.
  virtual std::string not_ready_reason() const = 0;
  // Appends the source's own Prometheus families (e.g. per-partition lag).
  virtual void render_metrics(std::string& out) const = 0;
};

// One source's channel to the writer thread (see the top of this file).
struct SourceLane {
  SourceLane(uint32_t lane_index, uint32_t base, uint32_t count)
      : index(lane_index), partition_base(base), partition_count(count) {}

  const uint32_t index;
  // The SourceBlock partitions partition_base .. partition_base +
  // partition_count - 1 hold this source's positions (count 0: none).
  const uint32_t partition_base;
  const uint32_t partition_count;
  moodycamel::ConcurrentQueue<Completion> done;
  std::atomic<uint32_t> connection_state{static_cast<uint32_t>(layout::ConnectionState::kConnecting)};
  // A source that stores positions: its layout::SyncState (kUnknown: it
  // stores none, or has not said). The segment's is the least ready of all.
  std::atomic<uint32_t> sync_state{static_cast<uint32_t>(layout::SyncState::kUnknown)};
  const SourceHealth* health = nullptr;  // set before the HTTP thread starts; may stay null
};

struct Pipeline {
  moodycamel::BlockingConcurrentQueue<WorkItem> work;
  // One per source, indexed by WorkItem::source; built before any thread
  // starts and fixed afterwards.
  std::vector<std::unique_ptr<SourceLane>> lanes;

  // The lanes' connection states combined (the worst), written by the
  // writer thread; what the segment header and /metrics show.
  std::atomic<uint32_t> connection_state{static_cast<uint32_t>(layout::ConnectionState::kConnecting)};
  std::atomic<uint64_t> pending_rejects{0};  // sources add, writer moves into the segment
  std::atomic<bool> writer_stop{false};      // set by main once every source has finished

  // Stream queues: what the consumer learned of the stream, for the writer
  // thread's sync state (apply/stream_sync.h). The consumer writes
  // stream_tail and then bumps stream_probes with release; the writer reads
  // stream_probes with acquire, then stream_tail. stream_at_tail is a hint
  // on its own (relaxed): set when a wait for a delivery found nothing while
  // nothing was in flight (the broker had no more to send), cleared by each
  // delivery and each new connection.
  std::atomic<uint64_t> stream_tail{kNoOffset};  // the last offset when the consumer attached; kNoOffset: empty
  std::atomic<uint64_t> stream_probes{0};        // attaches whose stream_tail is published
  std::atomic<bool> stream_at_tail{false};

  SidecarMetrics metrics;

  // Segment images for snapshots: the snapshot thread and GET /snapshot ask,
  // the writer thread copies between bulks (snapshot/image_exchange.h).
  ImageExchange images;
};

}  // namespace larder::sidecar

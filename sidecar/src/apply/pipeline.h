// What the consumer thread and the writer thread share.
//
//   consumer thread                          writer thread
//   ---------------                          -------------
//   amqp_consume_message -> decode
//   WorkItem ------ work (BlockingConcurrentQueue) ------> Writer::upsert/remove
//   basic.ack / basic.reject <--- done (ConcurrentQueue) --- Completion
//
// Both queues have one producer thread each, so moodycamel keeps their FIFO
// order (it orders per producer): completions come back in delivery order,
// and two updates with the same event time apply in delivery order.
// The number of WorkItems in flight is bounded by the channel's prefetch
// (basic.qos), which is the only backpressure: the consumer never blocks on
// the queue.
//
// Atomics: connection_state and pending_rejects are written by the consumer
// thread and read by the writer thread, which forwards them to the segment
// (the Writer is used by the writer thread only). Relaxed order suffices:
// they are statistics, not synchronisation; the queues synchronise the items.
//
// Metrics: each member of `metrics` has one writer thread (consumer or
// writer, see metrics.h); the HTTP thread reads them and connection_state,
// and the consumer's stats log line reads them too, so the log and /metrics
// give the same numbers under the same names.
#pragma once

#include <concurrentqueue/blockingconcurrentqueue.h>
#include <concurrentqueue/concurrentqueue.h>

#include <atomic>
#include <cstdint>

#include "decode/decoder.h"
#include "larder/layout/format.h"
#include "observe/metrics.h"
#include "snapshot/image_exchange.h"

namespace larder::sidecar {

// "No offset": the queue is not a stream, or the value is unknown.
inline constexpr uint64_t kNoOffset = ~uint64_t{0};

// One decoded message on its way to the writer.
struct WorkItem {
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
};

enum class Outcome : uint8_t {
  kApplied = 0,   // every update reached shared memory (stale ones counted, not an error)
  kRejected = 1,  // the writer refused an update: dead-letter the message
  kSkipped = 2,   // a position_only item: its position is stored, nothing applied; ack it
};

// The writer's answer for one WorkItem. It hands the batch back so the
// consumer reuses its buffers.
struct Completion {
  uint64_t epoch = 0;
  uint64_t delivery_tag = 0;
  Outcome outcome = Outcome::kApplied;
  RejectReason reason = RejectReason::kInternal;  // when kRejected
  uint32_t refused_update = 0;                    // when kRejected: the first refused update of `batch`
  DecodedBatch batch;
  int64_t applied_mono_ns = 0;  // CLOCK_MONOTONIC: the writer finished it
};

struct Pipeline {
  moodycamel::BlockingConcurrentQueue<WorkItem> work;
  moodycamel::ConcurrentQueue<Completion> done;

  std::atomic<uint32_t> connection_state{static_cast<uint32_t>(layout::ConnectionState::kConnecting)};
  std::atomic<uint64_t> pending_rejects{0};  // consumer adds, writer moves into the segment
  std::atomic<bool> writer_stop{false};      // set by main once the consumer has finished

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

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
// writer, see metrics.h); the HTTP thread reads them and connection_state.
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

// One decoded message on its way to the writer.
struct WorkItem {
  uint64_t epoch = 0;  // the connection it came from
  uint64_t delivery_tag = 0;
  DecodedBatch batch;
};

enum class Outcome : uint8_t {
  kApplied = 0,   // every update reached shared memory (stale ones counted, not an error)
  kRejected = 1,  // the writer refused an update: dead-letter the message
};

// The writer's answer for one WorkItem. It hands the batch back so the
// consumer reuses its buffers.
struct Completion {
  uint64_t epoch = 0;
  uint64_t delivery_tag = 0;
  Outcome outcome = Outcome::kApplied;
  RejectReason reason = RejectReason::kInternal;  // when kRejected
  DecodedBatch batch;
};

struct Pipeline {
  moodycamel::BlockingConcurrentQueue<WorkItem> work;
  moodycamel::ConcurrentQueue<Completion> done;

  std::atomic<uint32_t> connection_state{static_cast<uint32_t>(layout::ConnectionState::kConnecting)};
  std::atomic<uint64_t> pending_rejects{0};  // consumer adds, writer moves into the segment
  std::atomic<bool> writer_stop{false};      // set by main once the consumer has finished

  // Statistics for logs (writer thread writes, anyone reads).
  std::atomic<uint64_t> messages_applied{0};
  std::atomic<uint64_t> updates_applied{0};
  std::atomic<uint64_t> updates_stale{0};
  std::atomic<uint64_t> updates_duplicate{0};  // ids seen before: ignored, acked
  std::atomic<uint64_t> updates_late{0};       // too late for the aggregates and older than the row: acked

  SidecarMetrics metrics;

  // Segment images for snapshots: the snapshot thread and GET /snapshot ask,
  // the writer thread copies between bulks (snapshot/image_exchange.h).
  ImageExchange images;
};

}  // namespace larder::sidecar

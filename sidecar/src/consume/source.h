// A source of feature updates: what the sidecar consumes (RabbitMQ, Kafka;
// database pollers later). Every source runs on its own thread and talks to
// the writer thread only through its SourceLane (apply/pipeline.h):
//
//   delivers   WorkItems on pipeline.work: one decoded message (a batch of
//              updates) each, with its position (lane partition, offset) when
//              the source keeps positions; a message it cannot decode goes
//              as a position-only item (stored past, nothing applied) or is
//              refused by the source itself (dead-lettered);
//   is told    Completions on lane.done, in its delivery order: kApplied or
//              kSkipped (ack it, commit its offset), kRejected (the writer
//              refused an update: dead-letter it, or skip and count it);
//   resumes    from the positions the segment stores for its partition range
//              (resume(), before run()): the segment is the truth, a commit
//              elsewhere (a broker's consumer offsets) only a report;
//   reports    lane.connection_state and lane.sync_state (the writer thread
//              combines every source's into the segment's), and its own
//              readiness and metrics through SourceHealth.
//
// A position is (partition, next_offset, skip_updates), stored atomically
// with the updates it covers (writer/src/source.cc). A log source (a stream,
// a Kafka topic) maps each of its partitions to one SourceBlock partition; a
// poller keeps its cursor there (e.g. a monotonically increasing id as
// next_offset, with skip_updates counting rows already applied at that id)
// and needs no ack protocol: it simply moves the cursor when its Completion
// comes back.
//
// Threads: constructed and resumed on the main thread before any source or
// writer thread starts; run() on the source's own thread; the SourceHealth
// methods on HTTP threads.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "apply/pipeline.h"
#include "larder/writer/writer.h"

namespace larder::sidecar {

class Source : public SourceHealth {
 public:
  ~Source() override = default;

  // "rabbitmq", "kafka": for logs.
  virtual const char* kind() const noexcept = 0;
  // SourceBlock partitions this source stores positions in (0: none, e.g. a
  // RabbitMQ quorum queue: the broker keeps what is unacknowledged).
  virtual uint32_t partitions_needed() const = 0;
  // What those positions refer to, e.g. `kafka group=g topics=a,b`: part of
  // the segment's source id, so that positions of another log are never
  // taken for this one's. "" when partitions_needed() is 0.
  virtual std::string position_id() const = 0;
  // The stored positions of the lane's partitions (index = the source's own
  // partition number, 0 .. partitions_needed() - 1; nullopt: none stored).
  // Main thread, before run().
  virtual void resume(std::span<const std::optional<SourcePosition>> stored) = 0;
  // Before resume(): the segment was restored from a snapshot or a peer's
  // image at this start, so files kept beside it may be older or newer than
  // its positions. Main thread.
  virtual void segment_restored() {}
  // Consumes until a stop is requested (stop_requests > 0) and what is in
  // flight has been settled or abandoned. Returns the exit code (0: clean).
  // The source's own thread.
  virtual int run() = 0;
};

}  // namespace larder::sidecar

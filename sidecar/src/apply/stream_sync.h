// The segment's sync state for a stream source (fleet design: SourceBlock):
// CATCHING_UP from start until the writer has applied the stream up to the
// tail the consumer found when it attached and the lag is below
// readiness.max_lag, then READY; INCOMPLETE when the stream no longer held
// the offsets after the stored position (retention removed them), for good:
// only a newer snapshot or a peer's can make the table whole again.
//
//   start ──> CATCHING_UP ──(next_offset > target, lag <= max_lag)──> READY
//                  └───────────(first delivery after the position)──────> INCOMPLETE
//
// READY is kept for the life of the process (a burst that delays the writer
// does not take every host out of service at once); lag and offsets stay
// visible in the metrics.
//
// The lag: 0 when the consumer's last wait for a delivery found nothing with
// nothing in flight (the broker had no more to send: at the tail), else now
// minus the newest event time of the last message applied (the producer's
// clock; a producer that backfills old events keeps CATCHING_UP until the
// backfill is applied).
//
// Threads: constructed on the main thread before the writer thread starts;
// every other member runs on the writer thread, the only user of the Writer.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "apply/pipeline.h"
#include "config/config.h"
#include "larder/writer/writer.h"

namespace larder::sidecar {

class StreamSync {
 public:
  // Sets CATCHING_UP (no target yet), or keeps INCOMPLETE when the segment
  // says so already (`incomplete`: its stored state for the same source).
  // `report`: the lane's sync_state, which the writer thread combines with
  // the other sources' into the segment's; nullptr: set the segment's
  // directly.
  StreamSync(Writer& writer, Pipeline& pipeline, int64_t max_lag_ms, bool incomplete,
             std::atomic<uint32_t>* report = nullptr);

  // The writer applied (or skipped) the message at `offset`; its newest event
  // time, or 0 when it had no updates. Never allocates.
  void applied(uint64_t offset, int64_t newest_event_ms) noexcept;
  // The first delivery after subscribing at `requested` came from `first`
  // (> requested): INCOMPLETE, with both offsets in the log.
  void gap(uint64_t requested, uint64_t first);
  // Takes a new probe of the stream's tail from the consumer and moves to
  // READY when due. Call every writer-loop round.
  void poll(int64_t now_unix_ms);

  layout::SyncState state() const noexcept { return state_; }
  // The lag as last computed by poll(), in ms; -1 when unknown.
  int64_t lag_ms() const noexcept { return lag_ms_; }

 private:
  void set_state(layout::SyncState state);

  Writer& writer_;
  Pipeline& pipeline_;
  std::atomic<uint32_t>* report_;
  const int64_t max_lag_ms_;
  layout::SyncState state_ = layout::SyncState::kCatchingUp;
  uint64_t probes_seen_ = 0;
  bool probed_ = false;               // the consumer attached and reported the tail
  uint64_t target_ = kNoOffset;       // the tail at attach; kNoOffset: the stream was empty
  uint64_t next_offset_ = kNoOffset;  // after the last applied message; kNoOffset: none yet
  int64_t newest_event_ms_ = 0;       // of the last applied message with updates
  int64_t lag_ms_ = -1;
};

// What a stream queue's positions refer to: its vhost and name (not the
// host: every node of a cluster serves the same stream), e.g.
// `rabbitmq stream vhost=/ queue=features`. Longer than 127 bytes: cut, with
// a hash of the whole appended.
std::string stream_source_id(const Config& config);

// Cuts an id longer than the SourceBlock holds (127 bytes), with a hash of
// the whole appended, and replaces NUL bytes.
std::string fit_source_id(std::string id);

// Main thread, before the writer thread starts. A stream queue: sets the
// source id (a segment whose positions were for another source has them
// cleared, and says so loudly), puts the stored position in *resume (if any)
// and returns the StreamSync (CATCHING_UP, or INCOMPLETE kept). Other queues:
// sets SyncState::kUnknown and returns nullptr. `id_set`: the caller set the
// source id already (several sources share it; see consume/sources.h).
// `report`: as StreamSync's.
std::unique_ptr<StreamSync> start_stream_source(Writer& writer, Pipeline& pipeline, const Config& config,
                                                std::optional<SourcePosition>* resume, bool id_set = false,
                                                std::atomic<uint32_t>* report = nullptr);

}  // namespace larder::sidecar

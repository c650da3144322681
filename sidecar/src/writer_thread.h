// The writer thread: the only thread that touches larder::Writer. It applies
// decoded messages from Pipeline::work in order, reports each message's
// outcome on Pipeline::done, forwards connection state and reject counts to
// the segment header, and keeps the segment's heartbeat fresh (maintain()
// at least every kMaintainInterval, busy or idle).
#pragma once

#include <chrono>

#include "larder/layout/writer.h"
#include "pipeline.h"

namespace larder::sidecar {

inline constexpr std::chrono::milliseconds kMaintainInterval{50};

// Runs until pipeline.writer_stop is set and the work queue is empty, then
// records ConnectionState::kStopped. Runs on the writer thread.
void run_writer_thread(Writer& writer, Pipeline& pipeline);

// Where apply_batch records the event-to-visible lag of each applied update:
// `now_unix_ms` (taken once per dequeued bulk) minus the update's event time.
struct LagRecorder {
  Histogram* histogram = nullptr;
  int64_t now_unix_ms = 0;
};

// Applies one message's updates. Returns kApplied, or kRejected with the
// reason of the first refused update (the other updates still apply: they
// are idempotent under last-write-wins, so a later replay from the
// dead-letter queue is harmless). Counts applied updates in `*applied` and
// stale ones in `*stale`; observes each applied update's lag into `lag` when
// given. Writer thread. Never allocates.
Outcome apply_batch(Writer& writer, const DecodedBatch& batch, RejectReason* reason, uint64_t* stale,
                    uint64_t* applied = nullptr, const LagRecorder* lag = nullptr);

}  // namespace larder::sidecar

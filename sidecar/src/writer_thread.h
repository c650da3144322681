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

// Applies one message's updates. Returns kApplied, or kRejected with the
// reason of the first refused update (the other updates still apply: they
// are idempotent under last-write-wins, so a later replay from the
// dead-letter queue is harmless). Writer thread.
Outcome apply_batch(Writer& writer, const DecodedBatch& batch, RejectReason* reason, uint64_t* stale);

}  // namespace larder::sidecar

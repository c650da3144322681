// The stream sync state (see stream_sync.h). The constructor runs on the main
// thread before the writer thread starts; everything else on the writer
// thread.
#include "apply/stream_sync.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <string>

#include "larder/client.h"

namespace larder::sidecar {
namespace {

const char* state_name(layout::SyncState s) noexcept {
  switch (s) {
    case layout::SyncState::kUnknown: return "UNKNOWN";
    case layout::SyncState::kCatchingUp: return "CATCHING_UP";
    case layout::SyncState::kReady: return "READY";
    case layout::SyncState::kIncomplete: return "INCOMPLETE";
  }
  return "?";
}

}  // namespace

StreamSync::StreamSync(Writer& writer, Pipeline& pipeline, int64_t max_lag_ms, bool incomplete,
                       std::atomic<uint32_t>* report)
    : writer_(writer), pipeline_(pipeline), report_(report), max_lag_ms_(max_lag_ms) {
  if (const std::optional<SourcePosition> p = writer_.position(0)) next_offset_ = p->next_offset;
  if (incomplete) {
    state_ = layout::SyncState::kIncomplete;
    // relaxed: a status report (see pipeline.h).
    if (report_ != nullptr) report_->store(static_cast<uint32_t>(state_), std::memory_order_relaxed);
    spdlog::error(
        "sync: the segment is INCOMPLETE (a retention gap found earlier): it stays so until it is restored from a "
        "newer snapshot or bootstrapped from a peer (docs/operations.md, \"Retention gap\")");
    return;
  }
  writer_.set_target(0, std::nullopt);
  writer_.set_first_retained(0, std::nullopt);
  set_state(layout::SyncState::kCatchingUp);
}

void StreamSync::set_state(layout::SyncState state) {
  if (report_ != nullptr) {
    report_->store(static_cast<uint32_t>(state), std::memory_order_relaxed);  // relaxed: see pipeline.h
  } else {
    writer_.set_sync_state(state);
  }
  state_ = state;
}

void StreamSync::applied(uint64_t offset, int64_t newest_event_ms) noexcept {
  next_offset_ = offset + 1;
  if (newest_event_ms > 0) newest_event_ms_ = newest_event_ms;
}

void StreamSync::gap(uint64_t requested, uint64_t first) {
  spdlog::error(
      "sync: retention gap: resuming at stream offset {}, but the stream's first retained offset is {}: offsets "
      "{}..{} are gone and their updates are missing from the table. The segment is INCOMPLETE (readers see it, "
      "/readyz fails) and keeps applying the stream. Recover by restoring a newer snapshot or bootstrapping from a "
      "peer (docs/operations.md, \"Retention gap\")",
      requested, first, requested, first - 1);
  writer_.set_first_retained(0, first);
  writer_.set_target(0, std::nullopt);
  set_state(layout::SyncState::kIncomplete);
}

void StreamSync::poll(int64_t now_unix_ms) {
  // acquire: pairs with the consumer's release bump, after its stream_tail store.
  const uint64_t probes = pipeline_.stream_probes.load(std::memory_order_acquire);
  if (probes != probes_seen_) {
    probes_seen_ = probes;
    probed_ = true;
    target_ = pipeline_.stream_tail.load(std::memory_order_relaxed);  // relaxed: ordered by the acquire above
    if (state_ == layout::SyncState::kCatchingUp) {
      writer_.set_target(0, target_ == kNoOffset ? std::nullopt : std::optional<uint64_t>(target_));
      if (target_ == kNoOffset) {
        spdlog::info("sync: CATCHING_UP: the stream was empty when the consumer attached");
      } else {
        spdlog::info("sync: CATCHING_UP: target offset {} (the stream's tail at attach), next offset to apply {}",
                     target_, next_offset_ == kNoOffset ? std::string("unknown") : std::to_string(next_offset_));
      }
    }
  }
  // relaxed: a hint, see pipeline.h.
  const bool at_tail = pipeline_.stream_at_tail.load(std::memory_order_relaxed);
  if (at_tail) {
    lag_ms_ = 0;
  } else if (newest_event_ms_ > 0) {
    lag_ms_ = std::max<int64_t>(0, now_unix_ms - newest_event_ms_);
  } else {
    lag_ms_ = -1;
  }
  pipeline_.metrics.source_lag_ms.set(lag_ms_);
  if (state_ != layout::SyncState::kCatchingUp || !probed_) return;
  const bool reached = target_ == kNoOffset || (next_offset_ != kNoOffset && next_offset_ > target_);
  if (!reached || lag_ms_ < 0 || lag_ms_ > max_lag_ms_) return;
  writer_.set_target(0, std::nullopt);
  set_state(layout::SyncState::kReady);
  spdlog::info("sync: {}: applied up to offset {} (target {}), lag {} ms (limit {} ms)", state_name(state_),
               next_offset_ == kNoOffset ? std::string("none") : std::to_string(next_offset_ - 1),
               target_ == kNoOffset ? std::string("none: empty stream") : std::to_string(target_), lag_ms_,
               max_lag_ms_);
}

std::string stream_source_id(const Config& config) {
  return fit_source_id(
      fmt::format("rabbitmq stream vhost={} queue={}", config.rabbitmq.url.vhost, config.rabbitmq.queue.name));
}

std::string fit_source_id(std::string id) {
  constexpr size_t kMax = layout::kSourceIdWords * 8 - 1;
  if (id.size() > kMax) {
    uint64_t h = 14695981039346656037ull;  // FNV-1a 64 of the whole id
    for (unsigned char c : id) h = (h ^ c) * 1099511628211ull;
    id = fmt::format("{} #{:016x}", id.substr(0, kMax - 18), h);
  }
  for (char& c : id) {
    if (c == '\0') c = '?';
  }
  return id;
}

std::unique_ptr<StreamSync> start_stream_source(Writer& writer, Pipeline& pipeline, const Config& config,
                                                std::optional<SourcePosition>* resume, bool id_set,
                                                std::atomic<uint32_t>* report) {
  resume->reset();
  if (!config.rabbitmq_enabled || config.rabbitmq.queue.type != QueueType::kStream) {
    if (report == nullptr) writer.set_sync_state(layout::SyncState::kUnknown);
    return nullptr;
  }
  const std::string id = id_set ? writer.source_id() : stream_source_id(config);
  const std::string stored_id = writer.source_id();
  bool incomplete = false;
  if (!id_set && !writer.set_source_id(id)) {
    spdlog::error(
        "source: the segment's stored stream positions were for another source (\"{}\"), not \"{}\": they are "
        "cleared, and the table's contents do not come from this stream. Consuming from rabbitmq.queue.stream_offset "
        "(\"{}\"); delete the segment to start clean",
        stored_id, id, config.rabbitmq.queue.stream_offset);
  } else {
    *resume = writer.position(0);
    try {
      ClientOptions options;
      options.dir = config.segment.dir;
      incomplete = Segment::open(config.segment.name, options).state() == layout::SyncState::kIncomplete;
    } catch (const Error& e) {
      spdlog::warn("source: cannot read the segment's sync state: {}", e.what());
    }
  }
  if (*resume) {
    spdlog::info("source: \"{}\": resuming at stored offset {} (skipping {} updates of it already applied)", id,
                 (*resume)->next_offset, (*resume)->skip_updates);
  } else {
    spdlog::info("source: \"{}\": no stored position; starting at rabbitmq.queue.stream_offset \"{}\"", id,
                 config.rabbitmq.queue.stream_offset);
  }
  return std::make_unique<StreamSync>(writer, pipeline, config.readiness.max_lag_ms, incomplete, report);
}

}  // namespace larder::sidecar

// RabbitMQ as a Source (see rabbitmq_source.h).
#include "consume/rabbitmq_source.h"

#include "apply/stream_sync.h"

namespace larder::sidecar {

RabbitSource::RabbitSource(const Config& config, Pipeline& pipeline, SourceLane& lane,
                           const std::atomic<int>& stop_requests)
    : config_(config), consumer_(config, pipeline, lane, stop_requests) {}

uint32_t RabbitSource::partitions_needed() const { return config_.rabbitmq.queue.type == QueueType::kStream ? 1 : 0; }

std::string RabbitSource::position_id() const {
  return partitions_needed() > 0 ? stream_source_id(config_) : std::string();
}

void RabbitSource::resume(std::span<const std::optional<SourcePosition>> stored) {
  if (!stored.empty() && stored[0]) consumer_.resume_stream_at(stored[0]->next_offset, stored[0]->skip_updates);
}

int RabbitSource::run() { return consumer_.run(); }

}  // namespace larder::sidecar

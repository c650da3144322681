// RabbitMQ as a Source: a thin adapter over the Consumer (consumer.h), which
// keeps its own ack, dead-letter and reconnect logic. A stream queue stores
// one position (its offset) in the lane's one partition; other queues store
// none. Threads: as source.h.
#pragma once

#include <atomic>
#include <memory>
#include <optional>

#include "config/config.h"
#include "consume/consumer.h"
#include "consume/source.h"

namespace larder::sidecar {

class RabbitSource final : public Source {
 public:
  RabbitSource(const Config& config, Pipeline& pipeline, SourceLane& lane, const std::atomic<int>& stop_requests);

  const char* kind() const noexcept override { return "rabbitmq"; }
  uint32_t partitions_needed() const override;
  std::string position_id() const override;
  void resume(std::span<const std::optional<SourcePosition>> stored) override;
  int run() override;

  // The stream's readiness is the segment's sync state (StreamSync), which
  // not_ready_reason() in metrics.cc reports already.
  std::string not_ready_reason() const override { return {}; }
  void render_metrics(std::string&) const override {}

 private:
  const Config& config_;
  Consumer consumer_;
};

}  // namespace larder::sidecar

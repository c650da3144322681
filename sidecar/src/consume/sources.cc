// The sidecar's sources (see sources.h). Main thread, at start.
#include "consume/sources.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "apply/writer_thread.h"
#include "consume/kafka_source.h"
#include "consume/rabbitmq_source.h"
#include "consume/sql_source.h"
#include "larder/client.h"
#include "snapshot/bootstrap.h"

namespace larder::sidecar {

Sources make_sources(const Config& config, Pipeline& pipeline, const std::atomic<int>& stop_requests) {
  Sources s;
  uint32_t base = 0;
  if (config.rabbitmq_enabled) {
    const uint32_t count = config.rabbitmq.queue.type == QueueType::kStream ? 1 : 0;
    pipeline.lanes.push_back(std::make_unique<SourceLane>(static_cast<uint32_t>(pipeline.lanes.size()), base, count));
    s.sources.push_back(std::make_unique<RabbitSource>(config, pipeline, *pipeline.lanes.back(), stop_requests));
    base += count;
  }
  if (config.kafka_enabled) {
    const uint32_t count = config.kafka.partitions_per_topic * config.kafka.topic_ranges();
    pipeline.lanes.push_back(std::make_unique<SourceLane>(static_cast<uint32_t>(pipeline.lanes.size()), base, count));
    s.sources.push_back(std::make_unique<KafkaSource>(config, pipeline, *pipeline.lanes.back(), stop_requests));
    base += count;
  }
  for (size_t d = 0; d < config.databases.size(); ++d) {
    const DatabaseConfig& db = config.databases[d];
    const uint32_t count = static_cast<uint32_t>(db.tables.size());
    pipeline.lanes.push_back(std::make_unique<SourceLane>(static_cast<uint32_t>(pipeline.lanes.size()), base, count));
    sql::ConnectionOptions options{db.url, db.password, db.connect_timeout_s};
    std::unique_ptr<sql::Connection> connection;
    if (db.driver == SqlDriver::kPostgres) {
      connection = sql::make_postgres_connection(std::move(options));
    } else {
#ifdef LARDER_HAVE_MARIADB
      connection = sql::make_mariadb_connection(std::move(options));
#else
      throw StartError(2, db.path + ".driver: this larder-sidecar was built without the MariaDB driver");
#endif
    }
    auto source =
        std::make_unique<SqlSource>(config, d, pipeline, *pipeline.lanes.back(), stop_requests, std::move(connection));
    source->check();
    s.sources.push_back(std::move(source));
    base += count;
  }
  for (size_t i = 0; i < s.sources.size(); ++i) pipeline.lanes[i]->health = s.sources[i].get();
  return s;
}

std::string combined_source_id(const Sources& s, const Pipeline& pipeline) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < s.sources.size(); ++i) {
    const SourceLane& lane = *pipeline.lanes[i];
    if (lane.partition_count == 0) continue;
    parts.push_back(fmt::format("{} @{}", s.sources[i]->position_id(), lane.partition_base));
  }
  if (parts.empty()) return {};
  // One RabbitMQ stream alone: its own id, as before several sources.
  if (parts.size() == 1 && pipeline.lanes[0]->partition_count > 0 && s.sources[0]->kind() == std::string("rabbitmq")) {
    return s.sources[0]->position_id();
  }
  std::string id;
  for (const std::string& p : parts) id += (id.empty() ? "" : " + ") + p;
  return fit_source_id(id);
}

void start_sources(Writer& writer, Pipeline& pipeline, const Config& config, Sources& s) {
  const std::string id = combined_source_id(s, pipeline);
  bool id_matches = true;
  if (!id.empty()) {
    const std::string stored = writer.source_id();
    if (!writer.set_source_id(id)) {
      id_matches = false;
      spdlog::error(
          "source: the segment's stored positions were for another source set (\"{}\"), not \"{}\": they are "
          "cleared, and the table's contents do not come from these sources. Each source starts at its configured "
          "start; delete the segment to start clean",
          stored, id);
    }
  }
  // The RabbitMQ stream: its stored position, its INCOMPLETE state, its
  // StreamSync (apply/stream_sync.h).
  std::optional<SourcePosition> stream_resume;
  if (config.rabbitmq_enabled) {
    s.stream_sync =
        start_stream_source(writer, pipeline, config, &stream_resume, /*id_set=*/true, &pipeline.lanes[0]->sync_state);
  }
  for (size_t i = 0; i < s.sources.size(); ++i) {
    const SourceLane& lane = *pipeline.lanes[i];
    std::vector<std::optional<SourcePosition>> stored(lane.partition_count);
    if (id_matches) {
      for (uint32_t p = 0; p < lane.partition_count; ++p) {
        if (std::optional<SourcePosition> pos = writer.position(lane.partition_base + p)) {
          pos->partition = p;
          stored[p] = pos;
        }
      }
    }
    if (writer.restored()) s.sources[i]->segment_restored();
    s.sources[i]->resume(stored);
  }
  writer.set_sync_state(combined_sync_state(pipeline));
}

}  // namespace larder::sidecar

// The sidecar's sources (consume/source.h) from its config: a RabbitMQ
// source (`rabbitmq:`), a Kafka source (`kafka:`), polled databases
// (`databases:`), or several, each with its own lane and range of stored
// partitions: a RabbitMQ stream takes partition 0, Kafka the next
// partitions_per_topic x topics, then each database one per polled table.
//
// Threads: the main thread, before the writer and source threads start.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <vector>

#include "apply/pipeline.h"
#include "apply/stream_sync.h"
#include "config/config.h"
#include "consume/source.h"
#include "larder/writer/writer.h"

namespace larder::sidecar {

struct Sources {
  std::vector<std::unique_ptr<Source>> sources;  // sources[i] feeds pipeline.lanes[i]
  std::unique_ptr<StreamSync> stream_sync;       // a RabbitMQ stream's (lane 0), else null
};

// Builds the lanes in `pipeline` and the sources. Databases are connected
// and their queries checked against the tables (SqlSource::check); no other
// connection is made. Throws StartError.
Sources make_sources(const Config& config, Pipeline& pipeline, const std::atomic<int>& stop_requests);

// The segment's source id for these sources: a RabbitMQ stream alone keeps
// its own id (segments from before several sources stay valid); several
// join theirs with their partition ranges, e.g.
// `rabbitmq stream vhost=/ queue=q @0 + kafka topics=a slots=16 @1`.
std::string combined_source_id(const Sources& s, const Pipeline& pipeline);

// Sets the segment's source id (positions of another source set are
// cleared, loudly), resumes each source at its stored positions and starts
// the RabbitMQ stream's sync state. Sets the segment's sync state to the
// lanes' combined state. Throws StartError when a source cannot keep what
// its positions need (the Kafka topic table cannot be written).
void start_sources(Writer& writer, Pipeline& pipeline, const Config& config, Sources& s);

}  // namespace larder::sidecar

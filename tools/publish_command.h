// larderctl publish: the rows of a CSV or JSON Lines file, validated against
// a table's schema, to RabbitMQ in message format v1 (docs/message-format.md)
// with publisher confirms. The sidecar's own decoder checks every row before
// anything is sent, so a row passes here exactly when the sidecar would
// accept it (docs/operations.md, "Publishing from batch jobs").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "larder/layout/schema.h"

namespace larder::ctl {

struct PublishOptions {
  std::string file;
  std::string format;       // "csv", "jsonl", or "" to choose by the file's extension
  std::string config_path;  // the sidecar config: schema, transforms, broker, TLS, password
  std::string segment;      // or the schema of this live segment (with url and the TLS options below)
  std::string table;
  std::string key_column;
  std::string event_time_column;  // a column of ms since the epoch or RFC 3339 strings
  int64_t event_time_ms = -1;     // or one event time for every row
  std::string id_column;          // the updates' `id` (deduplication on tables with aggregates)
  std::string delete_column;      // rows whose value is true are deletes
  bool delete_all = false;        // every row is a delete
  bool skip_bad = false;          // send the good rows, report the bad; default: send nothing
  bool dry_run = false;           // validate only
  std::string url;                // amqp://user@host:port/vhost (required with segment; overrides the config's)
  std::string password_env = "LARDER_AMQP_PASSWORD";
  std::string password_file;
  std::string ca_file, cert_file, key_file;
  bool no_verify_peer = false;
  std::string exchange;     // default: the config's first binding's exchange
  std::string routing_key;  // default: the table's name
  size_t max_message_bytes = size_t{1} << 20;
  size_t max_updates = 1000;
  bool json = false;  // the report as one JSON object
};

// Runs the command. `segment_schema` is the live segment's schema when
// options.segment is set (larderctl opened it), else null. Returns the exit
// code: 0 every row sent was confirmed and routed; 1 bad rows (nothing sent
// unless skip_bad) or messages the broker returned or refused; 2 bad usage or
// config; 3 the file or the broker cannot be reached.
int cmd_publish(const PublishOptions& options, const layout::Schema* segment_schema);

}  // namespace larder::ctl

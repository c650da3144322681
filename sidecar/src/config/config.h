// The sidecar's YAML configuration (examples/sidecar.example.yaml documents
// every key; docs/sidecar.md is the reference).
//
// load_config() reads and validates everything at start, so the daemon never
// fails later on a bad setting. Every error is a ConfigError whose message
// starts with the key path, e.g.
//   tables[1].fields[0].type: unknown type "floot" (expected int64, float64, float32, bool, vector, string)
//
// Threading: loaded once on the main thread before any other thread starts;
// read-only afterwards.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "config/amqp_url.h"
#include "config/config_error.h"
#include "config/format.h"
#include "config/ingest.h"
#include "larder/layout/schema.h"

namespace larder::sidecar {

struct SegmentConfig {
  std::string name;
  std::string dir = "/dev/shm";
  uint32_t mode = 0640;
  // WriterOptions::full_check: visit every slot when reopening the segment.
  bool full_check = false;
  // on_schema_change: migrate (WriterOptions::migrate_on_schema_change):
  // a segment of another schema is carried into a new generation with the
  // configured one instead of refused.
  bool migrate_on_schema_change = false;
  // Automatic growth (WriterOptions::grow_at, grow_factor, max_capacity).
  double grow_at = 0;
  double grow_factor = 2;
  uint64_t max_capacity = 0;
  // huge_pages: "auto", "collapse" or "off" (WriterOptions::huge_pages).
  std::string huge_pages = "auto";
};

struct TableConfig {
  // The schema part: fields, and aggregates with their lateness and dedup
  // settings (they shape the segment, so Config::schema() carries them).
  layout::TableSpec spec;
  bool allow_unknown_fields = false;
  // Ingest-only settings, one per spec.fields entry: the event member a field
  // is computed from (`from`) and its transform. Not part of the schema.
  std::vector<FieldIngest> ingest;
  // The top-level `event_time` bounds with this table's `event_time` keys
  // applied over them. Not part of the schema.
  EventTimeBounds event_time;
  // dedup.expected_rate: events per second the table is expected to fold
  // (0: not stated). A sizing hint only: --check-config and `larderctl size`
  // warn when the dedup set holds fewer ids than this rate over the horizon.
  double expected_events_per_s = 0;
};

enum class QueueType : uint8_t { kQuorum = 0, kClassic = 1, kStream = 2 };
const char* queue_type_name(QueueType type) noexcept;

struct QueueConfig {
  std::string name;
  QueueType type = QueueType::kQuorum;
  bool durable = true;
  uint32_t delivery_limit = 5;  // quorum only
  // stream only: "first", "last", "next" or a numeric offset.
  std::string stream_offset = "next";
  bool stream_offset_is_number = false;
  int64_t stream_offset_number = 0;
};

struct BindingConfig {
  std::string exchange;
  std::string type = "topic";  // direct, topic, fanout, headers
  std::vector<std::string> routing_keys;
};

struct TlsConfig {
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  bool verify_peer = true;
  bool verify_hostname = true;
};

struct DeadLetterConfig {
  std::string exchange;  // default "<queue>.dlx"
  std::string queue;     // default "<queue>.dlq"
};

struct ReconnectConfig {
  double base_s = 0.5;
  double cap_s = 30.0;
};

struct RabbitConfig {
  AmqpUrl url;
  std::string password;         // resolved from password_env / password_file
  std::string password_source;  // "env LARDER_AMQP_PASSWORD" or "file /run/..." (for logs)
  QueueConfig queue;
  std::vector<BindingConfig> bindings;
  uint32_t prefetch = 200;
  uint32_t heartbeat_s = 15;
  TlsConfig tls;
  DeadLetterConfig dead_letter;
  ReconnectConfig reconnect;
  double rpc_timeout_s = 10.0;
  double drain_timeout_s = 10.0;
  std::string connection_name;  // default "larder-sidecar <segment>"
  FormatConfig format;          // the message format of the queue's bodies (default JSON v1)
};

// A Kafka source (docs/sidecar.md, "Kafka"), consumed with librdkafka.
enum class KafkaStart : uint8_t {
  kStored = 0,    // the segment's position; a partition without one from its earliest offset
  kEarliest = 1,  // every partition from its earliest offset, stored positions ignored (a replay)
  kLatest = 2,    // the segment's position; a partition without one from its end (older events are missed)
};
const char* kafka_start_name(KafkaStart start) noexcept;

// How a Kafka source gets its partitions.
enum class KafkaAssignment : uint8_t {
  kAll = 0,    // every partition of the topics, assigned by the sidecar itself (no group rebalances)
  kGroup = 1,  // the consumer group shares them among its members (subscribe; rebalances)
};

struct KafkaConfig {
  std::string bootstrap_servers;  // host:port[,host:port...]
  KafkaAssignment assignment = KafkaAssignment::kAll;
  // The topics consumed, in order. Without a regex, topic i uses position
  // slots i * ppt ..; an entry starting with '^' is a POSIX extended regex
  // (librdkafka's convention), and then every topic, named or matched, gets
  // its range of slots from the topic table beside the segment
  // (consume/kafka_topic_table.h).
  std::vector<std::string> topics;
  bool regex = false;                     // some entry of topics is a regex
  uint32_t max_topics = 0;                // with a regex: the topics that can hold positions (ranges of ppt slots)
  bool max_topics_default = false;        // not given: lowered by load_config to fit the other sources
  int64_t metadata_interval_ms = 30'000;  // how often the topics' metadata is re-read (new partitions, topics)
  std::string group_id;                   // default "larder-<hostname>-<segment>": commits per host and segment
  KafkaStart start = KafkaStart::kStored;
  uint32_t partitions_per_topic = 16;  // SourceBlock partitions each topic reserves (its partitions 0..n-1)
  uint32_t max_in_flight = 1000;       // messages handed to the writer and not yet applied (and <= 16,384 updates)
  int64_t commit_interval_ms = 1000;   // applied offsets are committed at most this often (and on revoke, stop)
  double drain_timeout_s = 10.0;       // on stop and revoke: how long to wait for in-flight messages
  std::string client_id;               // default "larder-sidecar <segment>"
  // Passed to librdkafka as they are (security.protocol, ssl.*, sasl.*, ...),
  // in file order, after Larder's own settings.
  std::vector<std::pair<std::string, std::string>> properties;
  std::string sasl_password;         // from sasl_password_env / sasl_password_file; "" none
  std::string sasl_password_source;  // for logs
  FormatConfig format;               // the message format of the records' values (default JSON v1)

  // Ranges of partitions_per_topic position slots: one per listed topic, or
  // max_topics with a regex.
  uint32_t topic_ranges() const { return regex ? max_topics : static_cast<uint32_t>(topics.size()); }
};

// A database polled for rows (docs/sidecar.md, "Database polling"): one
// source per `databases:` entry, one stored position per polled table.
enum class SqlDriver : uint8_t { kPostgres = 0, kMariadb = 1 };
const char* sql_driver_name(SqlDriver driver) noexcept;

struct PolledTableConfig {
  std::string path;               // "databases[0].tables[1]", for errors
  std::string table;              // the Larder table it feeds
  std::string query;              // a SELECT; polled as a subquery
  std::string key_column;         // integer or text
  std::string cursor_column;      // integer or timestamp, increasing with each change
  std::string tie_column;         // "" or an integer column unique among rows of one cursor value
  std::string event_time_column;  // "": the cursor when it is a timestamp, else the poll's server time
  std::string deleted_column;     // "" or a boolean column: true removes the key
  std::vector<std::pair<std::string, std::string>> columns;  // column -> field input; empty: by name
  uint32_t page_rows = 1000;                                 // rows per query
};

struct DatabaseConfig {
  std::string path;  // "databases[0]"
  SqlDriver driver = SqlDriver::kPostgres;
  std::string url;  // postgresql://user@host:port/db, mysql://user@host:port/db
  std::string password;
  std::string password_source;  // for logs
  int64_t poll_interval_ms = 1000;
  // Rows whose timestamp cursor is newer than the server's clock minus this
  // are left for a later poll (transactions that commit late).
  int64_t settle_ms = 5000;
  int connect_timeout_s = 5;
  ReconnectConfig reconnect;
  std::vector<PolledTableConfig> tables;
};

struct LoggingConfig {
  std::string level = "info";
  bool json = false;
};

// The HTTP listener for /metrics, /healthz and /readyz (docs/operations.md).
struct MetricsConfig {
  bool enabled = true;  // false, or listen: "", turns the listener off
  std::string listen = "127.0.0.1:9464";
  std::string host = "127.0.0.1";  // parsed from listen
  uint16_t port = 9464;            // 0: any free port (the log names it)
  double ready_max_lag_s = 30.0;   // readyz: unapplied messages with no progress for longer
};

// Periodic snapshots of the segment and GET /snapshot (docs/sidecar.md,
// "Snapshots and bootstrap").
struct SnapshotConfig {
  std::string dir;                       // "": no periodic snapshots
  int64_t interval_ms = 10 * 60 * 1000;  // between two periodic snapshots
  uint32_t keep = 3;                     // newest files kept in dir
  bool serve = false;                    // GET /snapshot on the metrics listener
  std::string token_file;                // bearer token for GET /snapshot
  std::string token;                     // read from token_file at load ("" without one)
};

// What a start without a segment restores from (docs/operations.md, "New host").
enum class RestoreMode : uint8_t {
  kLatest = 0,  // the newest valid snapshot in snapshot.dir
  kNever = 1,   // no local snapshot (a peer, if set, still applies)
  kFile = 2,    // the file bootstrap.restore names
};

struct BootstrapConfig {
  RestoreMode restore = RestoreMode::kLatest;
  std::string restore_file;     // kFile
  std::string peer;             // http(s)://HOST:PORT/snapshot of a peer sidecar; "" none
  std::string peer_token_file;  // bearer token sent to the peer
  std::string peer_token;       // read from peer_token_file at load
  double peer_timeout_s = 600;  // the whole fetch (connect, transfer)
};

// When the sidecar calls itself ready (stream queues; docs/sidecar.md,
// "Positions, resume and readiness").
struct ReadinessConfig {
  // READY (and /readyz) need the stream lag below this: 0 at the stream's
  // tail, else now minus the newest event time of the last applied message.
  int64_t max_lag_ms = 5000;
};

struct Config {
  SegmentConfig segment;
  // The top-level `event_time` section; each TableConfig holds its own result.
  EventTimeBounds event_time{kDefaultMaxFutureSkewMs, kDefaultMinEventTimeMs};
  std::vector<TableConfig> tables;
  // The sources: a `rabbitmq:` block, a `kafka:` block, `databases:`, or
  // several (each runs on its own thread into the one segment). At least one.
  bool rabbitmq_enabled = true;
  RabbitConfig rabbitmq;
  bool kafka_enabled = false;
  KafkaConfig kafka;
  std::vector<DatabaseConfig> databases;  // `databases:`, each its own source
  LoggingConfig logging;
  MetricsConfig metrics;
  SnapshotConfig snapshot;
  BootstrapConfig bootstrap;
  ReadinessConfig readiness;

  // What loading with ConfigLoad::require_secrets false let pass: a
  // password or token that could not be read, each with its key path.
  std::vector<std::string> warnings;

  layout::Schema schema() const;
  std::vector<TableDecodeOptions> decode_options() const;
};

struct ConfigLoad {
  // false: a password or token that cannot be read (variable not set, file
  // missing) is a warning in Config::warnings instead of an error, so that a
  // config can be checked and sized where the secret is not available (CI).
  bool require_secrets = true;
  // false: the sources (rabbitmq, kafka, databases) are not read at all,
  // for tools that use only the tables (the offline engine): a config that
  // larder-sidecar would refuse for its connection settings alone still
  // gives its features. The sidecar always reads them.
  bool sources = true;
};

// Reads and validates a config file. Throws ConfigError.
Config load_config_file(const std::string& path, const ConfigLoad& load = {});
// Same, from YAML text (for tests). `origin` names the source in messages.
Config parse_config(std::string_view yaml_text, const std::string& origin = "config", const ConfigLoad& load = {});

// The shortest exact spelling of a duration that the parser reads back:
// 86400000 -> "1d", 5400000 -> "90m", 1500 -> "1500ms".
std::string format_duration(int64_t ms);

// True for addresses only this host can reach: 127.0.0.0/8, ::1, localhost.
bool is_loopback_host(std::string_view host);

// The log levels accepted by logging.level and --log-level.
bool valid_log_level(std::string_view level);

}  // namespace larder::sidecar

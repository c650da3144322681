// larder-sidecar: consumes feature updates from RabbitMQ and/or Kafka and
// applies them to a shared-memory segment that inference processes read
// (docs/sidecar.md).
//
// Threads:
//  * main thread = the first source's thread: parses the config, opens the
//    segment, starts the writer thread and the other sources' threads, then
//    runs the first source (RabbitMQ's Consumer owns the broker connection)
//    until SIGTERM/SIGINT, and joins the others and the writer.
//  * a thread for each further source (consume/source.h; the Kafka source
//    beside a RabbitMQ one).
//  * writer thread: run_writer_thread(), the only user of larder::Writer.
//  * HTTP thread and its workers (metrics_server.h): /metrics, /healthz,
//    /readyz; they only read atomics and the segment (read-only mapping);
//    GET /snapshot (snapshot.serve) asks the writer thread for an image.
//  * snapshot thread (snapshot/snapshot_thread.h, snapshot.dir set): writes
//    periodic snapshot files from images the writer thread copies.
//  * before any of them, the main thread opens, restores or bootstraps the
//    segment (snapshot/bootstrap.h).
//  * signal handlers only bump an atomic counter.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <thread>

#include "apply/pipeline.h"
#include "apply/stream_sync.h"
#include "apply/test_hooks.h"
#include "apply/writer_thread.h"
#include "config/config.h"
#include "config/size_report.h"
#include "consume/sources.h"
#include "decode/message_decoder.h"
#include "larder/layout/clock.h"
#include "larder/writer/writer.h"
#include "observe/logging.h"
#include "observe/metrics_server.h"
#include "snapshot/bootstrap.h"
#include "snapshot/snapshot_thread.h"

namespace {

std::atomic<int> g_stop_requests{0};
static_assert(std::atomic<int>::is_always_lock_free, "used from a signal handler");

extern "C" void on_stop_signal(int) { g_stop_requests.fetch_add(1); }

void install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: blocking calls return EINTR and loops re-check the flag
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a broker that vanishes must not kill us on write
}

constexpr const char* kConfigHelp = R"(
CONFIG FILE (YAML; annotated example: examples/sidecar.example.yaml; reference: docs/sidecar.md)
  segment:
    name            segment name, the file <dir>/<name> (required)
    dir             tmpfs directory (default /dev/shm)
    mode            octal file mode as a string (default "0640": group may read)
  tables:           list, at least one
    - name          table name (required)
      key_max_len   longest key in bytes (default 64, max 1024)
      capacity      live keys the table holds (required)
      max_load_factor  live keys / slots, in (0, 0.95] (default 0.75)
      allow_unknown_fields  false (default): a message naming an unknown field is
                    dead-lettered; true: unknown fields are ignored
      fields:       list, at least one
        - name      field name (required)
          type      int64 | float64 | float32 | bool | vector | string
          dims      vector dimensions (vector only, required)
          max_len   longest value in bytes (string only, required)
          from      message member the field is computed from (default: its name);
                    a list [a, b, ..] makes the array of a project step
          transform list of steps: log1p | {clip: {min, max}} |
                    {standardize: {mean, std}} | {minmax: {min, max}} |
                    {bucketize: {boundaries: [..]}} |
                    {vocabulary: {values: [..], unknown_index}} (first step only) |
                    {impute: {value, missing}} (first; null -> value) |
                    {affine: {scale, offset}} (x * scale + offset) |
                    {ordinal: {categories: [..], unknown_value, missing_value}} |
                    {one_hot: {categories: [..], handle_unknown, drop, index}}
                    (last; a vector field, or bool with index) |
                    {project: {components: [[..]], mean, divide}} (alone; an
                    array member -> a vector field); see docs/sidecar.md
      aggregates:   list of windowed aggregates (docs/aggregates.md), at most 64
        - name      output field name (required)
          source    field or member it folds (required but for count)
          fn        count | sum | mean | min | max | last | variance | stddev |
                    distinct_count | first (count windows) | last_n
          window    1s..30d, e.g. 90s, 5m, 1h, 7d or milliseconds; or
                    N events (1..1024): the key's N newest events, as pandas
                    rolling(N) (required but for last_n)
          resolution  bucket width (default about window/60; <= 4096 buckets)
          end       now (default) | latest_event
          min_periods  count windows, last_n: fewer events read not valid
                    (default N; 1 for last_n)
          ddof      variance, stddev: 0 population (default) | 1 sample (pandas)
          n         last_n: values kept, a float32 vector newest first (1..1024)
      allowed_lateness  older events count in no aggregate (default: longest window;
                    1h with only count windows)
      dedup:        {horizon (default: allowed_lateness), capacity (default:
                    max(capacity, 65536)), expected_rate (events the table folds,
                    e.g. 50/s or 3000/h; a sizing hint: --check-config warns when
                    capacity < rate x horizon)}: event ids remembered to drop redeliveries
  rabbitmq:         a RabbitMQ source (required unless kafka is set)
    url             amqp://user@host:port/vhost or amqps://... (no password in it)
    password_env    name of an environment variable holding the password, or
    password_file   a file holding the password (never on the command line)
    queue:
      name          queue to consume (required; declared if missing)
      type          quorum (default) | classic | stream
      durable       true (default); quorum and stream are always durable
      delivery_limit  redeliveries before dead-lettering (quorum; default 5)
      stream_offset   first | last | next (default) | <offset> (stream only)
    bindings:       list of {exchange, type (topic default; direct, fanout,
                    headers), routing_keys [..]}; exchanges are declared durable
    prefetch        unacked deliveries in flight (default 200)
    heartbeat_s     AMQP heartbeat in seconds (default 15)
    tls:            {ca_file, cert_file, key_file, verify_peer (true),
                    verify_hostname (= verify_peer)}; with amqps:// only
    dead_letter:    {exchange (default "<queue>.dlx", fanout),
                    queue (default "<queue>.dlq")}
    reconnect:      {base_s (0.5), cap_s (30)}: exponential backoff, full jitter
    rpc_timeout_s   connect/login/declare timeout (default 10)
    drain_timeout_s on SIGTERM, how long to finish in-flight messages (default 10)
    connection_name shown in the management UI (default "larder-sidecar <segment>")
    format:         the bodies' format (docs/message-format.md; default JSON v1)
      type          json (default) | protobuf | avro
      proto         protobuf: the .proto file, parsed at start (no generated code)
      import_paths  protobuf: more directories for its imports
      message       protobuf: full name of the body's type, an update or a batch
                    wrapper (one repeated update member), e.g. shop.UserBatch
      schema        avro: the .avsc file (a record: an update or a batch)
      confluent:    avro: {schema_id}: bodies start with the Confluent 5-byte
                    header; another schema id is rejected (unknown_schema_id)
      table         the table of every update when the type has no table member
      members:      {table, key, event_time, op, id, fields}: member names
                    (default: the JSON names)
  kafka:            a Kafka source, instead of or beside rabbitmq (docs/sidecar.md, "Kafka")
    bootstrap_servers  host:port[,host:port] (required)
    topics          list of topic names (required; no regex: each topic has its
                    own stored positions)
    assignment      all (default: every partition, assigned by the sidecar) |
                    group (the consumer group shares the partitions)
    group_id        consumer group for commits (default larder-<hostname>-<segment>)
    start           stored (default: the segment's positions, else earliest) |
                    earliest (replay, stored positions ignored) | latest (the
                    segment's positions, else the end)
    partitions_per_topic  stored positions per topic, partitions 0..n-1 (default 16;
                    topics x this <= 64, minus 1 with a rabbitmq stream)
    max_in_flight   messages handed to the writer, not yet applied (default 1000)
    commit_interval applied offsets committed at most this often (default 1s)
    drain_timeout_s on stop and revoke, wait for in-flight messages (default 10)
    client_id       default "larder-sidecar <segment>"
    properties      librdkafka settings passed as they are (security.protocol,
                    ssl.*, sasl.mechanism, sasl.username, ...); not the ones
                    above, not sasl.password
    sasl_password_env / sasl_password_file  the SASL password (never in the file)
    format          the records' format, as rabbitmq.format (default JSON v1)
  logging:
    level           trace | debug | info (default) | warn | error | critical | off
    json            one JSON object per log line (default false)
  readiness:        stream queues (docs/sidecar.md, "Positions, resume and readiness")
    max_lag         READY and /readyz need the stream lag below this (default 5s)
  metrics:          HTTP listener for /metrics, /healthz, /readyz (docs/operations.md)
    listen          HOST:PORT (default "127.0.0.1:9464"; port 0: any free port; "" turns it off)
    enabled         false turns the listener off (default true)
    ready_max_lag_s /readyz fails when delivered messages wait this long with no
                    apply progress (default 30)
  snapshot:         periodic snapshots and GET /snapshot (docs/operations.md)
    dir             directory of <segment>-<unix_ms>.lsnap files ("" default: none)
    interval        between two snapshots (default 10m, at least 1s)
    keep            newest files kept (default 3)
    serve           GET /snapshot on the metrics listener (default false)
    token_file      bearer token for GET /snapshot; required when serve is true
                    and metrics.listen is not a loopback address
  bootstrap:        what a start without a segment restores from
    restore         latest (default: newest valid snapshot in snapshot.dir) |
                    never | /path/to/file.lsnap
    peer            http(s)://HOST:PORT/snapshot of a peer, used when no local
                    snapshot was restored
    peer_token_file bearer token sent to the peer
    peer_timeout_s  the whole fetch (default 600)

SIGNALS
  SIGTERM, SIGINT   stop consuming, apply and ack in-flight messages, close, exit 0;
                    a second signal abandons the drain (the broker redelivers)

CHECKING A CONFIG
  --check-config validates the config and prints the segment's size by table,
  by aggregate (what removing it saves; which aggregates share a bucket ring;
  what giving a count a source would save) and by dedup set, with the event
  rate each dedup set covers. It needs no broker and no password: a password
  or token it cannot read is a warning. larderctl size --config prints the same.

EXIT CODES
  0 clean stop, 2 bad config or arguments, 3 cannot open the segment (a
  segment of another schema: the message says what works),
  4 cannot listen on metrics.listen, 5 cannot restore (--restore,
  bootstrap.restore FILE, a peer): the segment was not changed
)";

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"larder-sidecar: apply feature updates from RabbitMQ and/or Kafka to a Larder shared-memory segment"};
  std::string config_path;
  std::string log_level;
  bool check_only = false;
  larder::sidecar::StartOptions start;
  app.add_option("-c,--config", config_path, "YAML config file")->required();
  app.add_option("--restore", start.restore_file,
                 "verify this snapshot file and replace the segment with it (even if one exists), then consume "
                 "from its stream position");
  app.add_option("--bootstrap-from", start.bootstrap_from,
                 "without a segment (and no local snapshot restored): fetch a snapshot from this peer URL, "
                 "e.g. http://10.0.0.7:9464/snapshot (instead of bootstrap.peer)");
  app.add_option("--log-level", log_level, "override logging.level: trace, debug, info, warn, error, critical, off");
  app.add_flag("--check-config", check_only,
               "validate the config, print the segment's size by table, aggregate and dedup set, and exit 0; a "
               "password or token that cannot be read is a warning here, not an error");
  app.footer(kConfigHelp);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }

  larder::sidecar::Config config;
  try {
    // --check-config runs where the secrets may not be (CI): a password or
    // token it cannot read is a warning there, not an error.
    config =
        larder::sidecar::load_config_file(config_path, larder::sidecar::ConfigLoad{.require_secrets = !check_only});
  } catch (const larder::sidecar::ConfigError& e) {
    std::fprintf(stderr, "larder-sidecar: invalid config: %s\n", e.what());
    return 2;
  }
  // Each source's message format (its schema file against the tables),
  // before anything starts; the sources build their decoders the same way.
  std::string format_description;
  try {
    const auto describe = [&](const char* source, const larder::sidecar::FormatConfig& format) {
      if (format.type == larder::sidecar::MessageFormat::kJson) return;
      const std::string d =
          larder::sidecar::make_message_decoder(config.schema(), config.decode_options(), format)->describe();
      format_description += std::string("format (") + source + "): " + d + "\n";
    };
    if (config.rabbitmq_enabled) describe("rabbitmq", config.rabbitmq.format);
    if (config.kafka_enabled) describe("kafka", config.kafka.format);
  } catch (const larder::sidecar::ConfigError& e) {
    std::fprintf(stderr, "larder-sidecar: invalid config: %s\n", e.what());
    return 2;
  }
  if (!log_level.empty()) {
    if (!larder::sidecar::valid_log_level(log_level)) {
      std::fprintf(stderr, "larder-sidecar: --log-level: unknown level \"%s\"\n", log_level.c_str());
      return 2;
    }
    config.logging.level = log_level;
  }
  if (check_only) {
    // Sizes from the writer's own planner (size_report.h): what the segment
    // will cost, before it exists. Its warnings are part of the report.
    const larder::sidecar::SizeReport sizes = larder::sidecar::size_report(config);
    for (const std::string& w : config.warnings) std::fprintf(stderr, "larder-sidecar: warning: %s\n", w.c_str());
    std::fputs(format_description.c_str(), stdout);
    std::string sources_text;
    if (config.rabbitmq_enabled) sources_text = "queue \"" + config.rabbitmq.queue.name + "\"";
    if (config.kafka_enabled) {
      std::string topics;
      for (const std::string& t : config.kafka.topics) topics += (topics.empty() ? "" : ",") + t;
      sources_text += (sources_text.empty() ? "" : ", ") + std::string("kafka topics ") + topics;
    }
    std::printf("config ok: segment \"%s\", %zu tables, %s\n%s", config.segment.name.c_str(), config.tables.size(),
                sources_text.c_str(), larder::sidecar::format_size_report(sizes).c_str());
    return 0;
  }
  larder::sidecar::setup_logging(config.logging.level, config.logging.json);
  // The sizing warnings --check-config prints (a dedup set too small for its
  // rate, an aggregate arena left at its default) belong in the log as well:
  // a config that was never checked still says what may refuse events.
  for (const std::string& w : config.warnings) spdlog::warn("config: {}", w);
  for (const std::string& w : larder::sidecar::size_report(config).warnings) spdlog::warn("config: {}", w);
  install_signal_handlers();
  if (!larder::sidecar::install_test_hooks_from_env()) return 2;

  std::unique_ptr<larder::Writer> writer;
  try {
    writer = larder::sidecar::open_segment(config, start);
  } catch (const larder::sidecar::StartError& e) {
    spdlog::critical("{}", e.what());
    return e.exit_code();
  }
  const larder::AttachReport& attached = writer->attach_report();
  spdlog::info("segment {}: {} ({} slots repaired, {} slots visited{})", writer->path(),
               writer->restored()  ? "restored"
               : writer->created() ? "created"
                                   : "reopened warm",
               writer->repaired_slots(), attached.slots_visited,
               attached.full_scan ? ", counters recounted by a full scan" : "");
  {
    // What the kernel gave the segment (docs/deployment.md, "Huge pages").
    const larder::layout::HugePageReport hp = writer->huge_pages();
    if (hp.all_huge()) {
      spdlog::info("segment {}: huge pages: {}", writer->path(), larder::layout::describe(hp));
    } else if (hp.eligible_bytes > 0) {
      spdlog::info(
          "segment {}: huge pages: {} (segment.huge_pages {}): random keys pay TLB misses; a tmpfs "
          "mounted huge=within_size for segment.dir gives 2 MiB pages (docs/deployment.md, \"Huge pages\")",
          writer->path(), larder::layout::describe(hp), config.segment.huge_pages);
    }
  }

  larder::sidecar::Pipeline pipeline;
  // The sources and their lanes, before the HTTP thread reads the lanes.
  larder::sidecar::Sources sources;
  try {
    sources = larder::sidecar::make_sources(config, pipeline, g_stop_requests);
  } catch (const larder::sidecar::StartError& e) {
    spdlog::critical("{}", e.what());
    return e.exit_code();
  }
  // Both threads count as alive from the start (their loops refresh these).
  pipeline.metrics.writer_heartbeat_mono_ns.set(larder::layout::now_mono_ns());
  pipeline.metrics.consumer_heartbeat_mono_ns.set(larder::layout::now_mono_ns());

  std::unique_ptr<larder::sidecar::MetricsServer> metrics_server;
  if (config.metrics.enabled) {
    metrics_server = std::make_unique<larder::sidecar::MetricsServer>(config, pipeline);
    std::string error;
    const int port = metrics_server->bind(&error);
    if (port < 0) {
      spdlog::critical("metrics: {}", error);
      return 4;
    }
    if (config.snapshot.serve) metrics_server->serve_snapshots(pipeline.images);
    metrics_server->start();
    if (config.snapshot.serve) {
      spdlog::info("snapshot: GET /snapshot is served {}",
                   config.snapshot.token.empty() ? "without a token (loopback listener)"
                                                 : "to requests with the bearer token of snapshot.token_file");
    }
    spdlog::info(
        "metrics: listening on http://{}:{} (/metrics, /healthz, /readyz)",
        config.metrics.host.find(':') != std::string::npos ? "[" + config.metrics.host + "]" : config.metrics.host,
        port);
  } else {
    spdlog::info("metrics: listener off (metrics.listen is empty or metrics.enabled is false)");
  }

  // The stored positions, the source id and the sync state, before the
  // writer thread owns the Writer.
  try {
    larder::sidecar::start_sources(*writer, pipeline, config, sources);
  } catch (const larder::sidecar::StartError& e) {  // a Kafka topic table that cannot be written
    spdlog::critical("{}", e.what());
    return e.exit_code();
  }

  std::thread writer_thread([&] { larder::sidecar::run_writer_thread(*writer, pipeline, sources.stream_sync.get()); });
  std::unique_ptr<larder::sidecar::SnapshotThread> snapshot_thread;
  if (!config.snapshot.dir.empty()) {
    snapshot_thread = std::make_unique<larder::sidecar::SnapshotThread>(config, pipeline.images, pipeline.metrics);
    snapshot_thread->start();
    spdlog::info("snapshot: every {} s into {}, keeping {}", config.snapshot.interval_ms / 1000, config.snapshot.dir,
                 config.snapshot.keep);
  }

  // One thread per source; the first on this (the main) thread. A source
  // that fails for good (exit code != 0) stops the others.
  int code = 0;
  {
    std::vector<int> codes(sources.sources.size(), 0);
    std::vector<std::thread> source_threads;
    for (size_t i = 1; i < sources.sources.size(); ++i) {
      source_threads.emplace_back([&, i] {
        codes[i] = sources.sources[i]->run();
        if (codes[i] != 0) g_stop_requests.fetch_add(1);
      });
    }
    codes[0] = sources.sources[0]->run();
    if (codes[0] != 0) g_stop_requests.fetch_add(1);
    for (std::thread& t : source_threads) t.join();
    for (int c : codes) code = code != 0 ? code : c;
  }
  if (snapshot_thread) snapshot_thread->stop();  // finishes a snapshot in progress
  // release: pairs with the writer thread's acquire load; every item the
  // sources enqueued is visible to it before it sees the stop.
  pipeline.writer_stop.store(true, std::memory_order_release);
  writer_thread.join();
  if (metrics_server) metrics_server->stop();
  writer.reset();  // detaches: the segment stays for readers
  spdlog::info("larder-sidecar: exit {}", code);
  return code;
}

// Unit tests of the sidecar's metrics without a broker: histogram bucketing,
// the Prometheus text rendering, the readiness and liveness rules, the
// metrics config keys, and the HTTP listener itself (against a segment made
// by larder::Writer in the test).
#include "observe/metrics.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <simdjson.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "apply/pipeline.h"
#include "config/config.h"
#include "consume/kafka_source.h"
#include "larder/layout/clock.h"
#include "larder/writer/writer.h"
#include "observe/metrics_server.h"
#include "prometheus_parse.h"

namespace larder::sidecar {
namespace {

constexpr int64_t kMs = 1'000'000;

TEST(Histogram, BucketsAreUpperInclusiveAndCountEverything) {
  Histogram h({0.001, 0.01, 0.1});
  h.observe_ns(-5);  // clock skew: counts as 0
  h.observe_ns(0);
  h.observe_ns(1 * kMs);      // exactly on a bound: that bucket (le)
  h.observe_ns(1 * kMs + 1);  // just above: the next
  h.observe_ns(10 * kMs);
  h.observe_ns(100 * kMs);
  h.observe_ns(100 * kMs + 1);  // above the last bound: +Inf
  h.observe_ns(3'600'000 * kMs);
  const Histogram::Snapshot s = h.snapshot();
  ASSERT_EQ(s.upper_bounds_s, (std::vector<double>{0.001, 0.01, 0.1}));
  EXPECT_EQ(s.counts, (std::vector<uint64_t>{3, 2, 1, 2}));
  EXPECT_EQ(s.count(), 8u);
  EXPECT_NEAR(s.sum_s, 0 + 0 + 0.001 + 0.001 + 0.01 + 0.1 + 0.1 + 3600, 1e-6);
}

TEST(Histogram, RejectsBadBounds) {
  EXPECT_THROW(Histogram({}), std::invalid_argument);
  EXPECT_THROW(Histogram({0.1, 0.01}), std::invalid_argument);
  EXPECT_THROW(Histogram({0.1, 0.1}), std::invalid_argument);
}

TEST(PrometheusText, HistogramIsCumulativeWithInfSumAndCount) {
  Histogram h({0.5, 1});
  h.observe_ns(250 * kMs);
  h.observe_ns(750 * kMs);
  h.observe_ns(5000 * kMs);
  PrometheusText p;
  p.histogram("x_seconds", "An example.", h.snapshot());
  EXPECT_EQ(p.text(),
            "# HELP x_seconds An example.\n"
            "# TYPE x_seconds histogram\n"
            "x_seconds_bucket{le=\"0.5\"} 1\n"
            "x_seconds_bucket{le=\"1\"} 2\n"
            "x_seconds_bucket{le=\"+Inf\"} 3\n"
            "x_seconds_sum 6\n"
            "x_seconds_count 3\n");
}

TEST(PrometheusText, ValuesAndEscaping) {
  EXPECT_EQ(format_sample_value(0.25), "0.25");
  EXPECT_EQ(format_sample_value(3), "3");
  EXPECT_EQ(format_sample_value(1e-6), "1e-06");
  EXPECT_EQ(format_sample_value(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(format_sample_value(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(format_sample_value(std::nan("")), "NaN");
  EXPECT_EQ(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  PrometheusText p;
  p.family("y_total", "counter", "Help with a \\ and a\nnewline.");
  p.sample("y_total", "k=\"v\"", uint64_t{18446744073709551615u});
  p.sample("y_total", "", int64_t{-1});
  EXPECT_EQ(p.text(),
            "# HELP y_total Help with a \\\\ and a\\nnewline.\n"
            "# TYPE y_total counter\n"
            "y_total{k=\"v\"} 18446744073709551615\n"
            "y_total -1\n");
}

SegmentSample fake_segment(int64_t now_unix_ns) {
  SegmentSample s;
  s.open = true;
  s.info.state = SegmentState::kReady;
  s.info.segment_bytes = 4096;
  s.info.heartbeat_age_ms = 20;
  SegmentSample::TableSample users;
  users.name = "users";
  users.stats.capacity = 100;
  users.stats.slot_count = 256;
  users.stats.live_keys = 64;
  users.stats.tombstones = 3;
  users.stats.upserts = 70;
  users.stats.deletes = 6;
  users.stats.stale_ignored = 2;
  users.stats.full_rejected = 1;
  users.stats.last_apply_unix_ns = now_unix_ns - 2'500 * kMs;
  users.stats.max_event_time_ms = now_unix_ns / kMs - 10'000;
  s.tables.push_back(users);
  SegmentSample::TableSample empty;
  empty.name = "never\"written";
  empty.stats.capacity = 10;
  empty.stats.slot_count = 16;
  s.tables.push_back(empty);
  return s;
}

TEST(RenderMetrics, EveryFamilyIsWellFormedAndValuesAreRight) {
  SidecarMetrics m;
  const int64_t now_mono = layout::now_mono_ns();
  const int64_t now_unix = 1'800'000'000'000 * kMs;
  m.messages_received.add(10);
  m.messages_redelivered.add(1);
  m.messages_applied.add(7);
  m.messages_rejected[static_cast<size_t>(RejectReason::kBadJson)].add(2);
  m.messages_rejected[static_cast<size_t>(RejectReason::kTableFull)].add(1);
  m.messages_acked.add(7);
  m.updates_applied.add(12);
  m.updates_duplicate.add(3);
  m.updates_late.add(4);
  m.connects.add(2);
  m.connections_lost.add(1);
  m.connect_attempts.add(6);
  m.dead_letters_published.add(3);
  m.work_enqueued.add(8);
  m.work_done.add(7);
  m.writer_heartbeat_mono_ns.set(now_mono - 5 * kMs);
  m.decode_seconds.observe_ns(3'000);
  m.apply_seconds.observe_ns(700);
  m.visible_lag_seconds.observe_ns(40 * kMs);
  const std::string text =
      render_metrics(m, static_cast<uint32_t>(ConnectionState::kConnected), fake_segment(now_unix), now_unix, now_mono);
  const test::ParsedMetrics p = test::parse_prometheus(text);
  ASSERT_EQ(p.error, "") << text;

  EXPECT_EQ(p.at("larder_messages_received_total"), 10);
  EXPECT_EQ(p.at("larder_messages_redelivered_total"), 1);
  EXPECT_EQ(p.at("larder_messages_applied_total"), 7);
  EXPECT_EQ(p.at("larder_messages_acked_total"), 7);
  EXPECT_EQ(p.at("larder_updates_applied_total"), 12);
  EXPECT_EQ(p.at("larder_updates_duplicate_total"), 3);
  EXPECT_EQ(p.at("larder_updates_late_total"), 4);
  EXPECT_EQ(p.at("larder_messages_in_flight"), 1);
  EXPECT_EQ(p.at("larder_connects_total"), 2);
  EXPECT_EQ(p.at("larder_connections_lost_total"), 1);
  EXPECT_EQ(p.at("larder_connect_attempts_total"), 6);
  EXPECT_EQ(p.at("larder_dead_letters_published_total"), 3);
  EXPECT_FALSE(p.has("larder_reconnects_total")) << "replaced by connections_lost and connect_attempts";
  EXPECT_FALSE(p.has("larder_updates_stale_total")) << "larder_table_stale_ignored_total is the one stale count";
  // Every reason is present (zeros too), so rate() and sum() work from the start.
  for (RejectReason r : all_reject_reasons()) {
    const std::string key = fmt::format("larder_messages_rejected_total{{reason=\"{}\"}}", reject_reason_name(r));
    ASSERT_TRUE(p.has(key)) << key;
    EXPECT_EQ(p.at(key), r == RejectReason::kBadJson ? 2 : r == RejectReason::kTableFull ? 1 : 0) << key;
  }
  EXPECT_EQ(p.at("larder_connection_state{state=\"connected\"}"), 1);
  EXPECT_EQ(p.at("larder_connection_state{state=\"disconnected\"}"), 0);
  EXPECT_EQ(p.types.at("larder_decode_duration_seconds"), "histogram");
  EXPECT_EQ(p.at("larder_decode_duration_seconds_count"), 1);
  EXPECT_EQ(p.at("larder_decode_duration_seconds_bucket{le=\"5e-06\"}"), 1);
  EXPECT_EQ(p.at("larder_decode_duration_seconds_bucket{le=\"2.5e-06\"}"), 0);
  EXPECT_EQ(p.at("larder_event_to_visible_seconds_bucket{le=\"0.05\"}"), 1);
  EXPECT_EQ(p.at("larder_event_to_visible_seconds_bucket{le=\"0.025\"}"), 0);
  EXPECT_NEAR(p.at("larder_writer_thread_heartbeat_age_seconds"), 0.005, 0.001);

  EXPECT_EQ(p.at("larder_segment_up"), 1);
  EXPECT_EQ(p.at("larder_segment_bytes"), 4096);
  EXPECT_EQ(p.at("larder_writer_heartbeat_age_seconds"), 0.02);
  EXPECT_EQ(p.at("larder_table_live_keys{table=\"users\"}"), 64);
  EXPECT_EQ(p.at("larder_table_capacity{table=\"users\"}"), 100);
  EXPECT_EQ(p.at("larder_table_slots{table=\"users\"}"), 256);
  EXPECT_EQ(p.at("larder_table_load_factor{table=\"users\"}"), 0.25);
  EXPECT_EQ(p.at("larder_table_tombstones{table=\"users\"}"), 3);
  EXPECT_EQ(p.at("larder_table_upserts_total{table=\"users\"}"), 70);
  EXPECT_EQ(p.at("larder_table_deletes_total{table=\"users\"}"), 6);
  EXPECT_EQ(p.at("larder_table_stale_ignored_total{table=\"users\"}"), 2);
  EXPECT_EQ(p.at("larder_table_full_rejected_total{table=\"users\"}"), 1);
  EXPECT_DOUBLE_EQ(p.at("larder_table_freshness_seconds{table=\"users\"}"), 2.5);
  EXPECT_DOUBLE_EQ(p.at("larder_table_event_age_seconds{table=\"users\"}"), 10);
  // A table never written has no freshness (absent, not a fake number), and
  // its label value is escaped.
  EXPECT_EQ(p.at("larder_table_live_keys{table=\"never\\\"written\"}"), 0);
  EXPECT_FALSE(p.has("larder_table_freshness_seconds{table=\"never\\\"written\"}"));
}

TEST(RenderMetrics, SegmentNotOpenStillRendersProcessMetrics) {
  SidecarMetrics m;
  SegmentSample closed;
  closed.error = "no such segment";
  const std::string text = render_metrics(m, 1, closed, layout::now_unix_ns(), layout::now_mono_ns());
  const test::ParsedMetrics p = test::parse_prometheus(text);
  ASSERT_EQ(p.error, "") << text;
  EXPECT_EQ(p.at("larder_segment_up"), 0);
  EXPECT_EQ(p.at("larder_connection_state{state=\"connecting\"}"), 1);
  EXPECT_FALSE(p.has("larder_segment_bytes"));
}

TEST(Probes, ReadinessRules) {
  SidecarMetrics m;
  const int64_t now = 1000'000 * kMs;
  const uint32_t connected = static_cast<uint32_t>(ConnectionState::kConnected);
  SegmentSample seg = fake_segment(layout::now_unix_ns());
  ReadyPolicy policy;
  policy.max_lag_s = 30;
  m.writer_heartbeat_mono_ns.set(now - 100 * kMs);
  EXPECT_EQ(not_ready_reason(m, connected, seg, policy, now), "");

  SegmentSample closed;
  closed.error = "gone";
  EXPECT_EQ(not_ready_reason(m, connected, closed, policy, now), "segment not open: gone");
  EXPECT_EQ(not_ready_reason(m, static_cast<uint32_t>(ConnectionState::kDisconnected), seg, policy, now),
            "broker connection is disconnected");
  m.writer_heartbeat_mono_ns.set(now - 1500 * kMs);
  EXPECT_EQ(not_ready_reason(m, connected, seg, policy, now), "writer thread heartbeat is 1.500 s old (limit 1 s)");
  m.writer_heartbeat_mono_ns.set(now);
  seg.info.heartbeat_age_ms = 2000;
  EXPECT_EQ(not_ready_reason(m, connected, seg, policy, now), "segment heartbeat is 2000 ms old (limit 1 s)");
  seg.info.heartbeat_age_ms = 10;

  // Backlog: pending messages are fine until no progress for max_lag_s.
  m.last_done_mono_ns.set(now - 3600'000 * kMs);  // idle for an hour before
  m.backlog_start_mono_ns.set(now - 10'000 * kMs);
  m.work_enqueued.add(5);
  m.work_done.add(3);
  EXPECT_EQ(not_ready_reason(m, connected, seg, policy, now), "");
  m.backlog_start_mono_ns.set(now - 31'000 * kMs);
  EXPECT_EQ(not_ready_reason(m, connected, seg, policy, now),
            "2 messages delivered but not applied, no progress for 31.0 s (limit 30 s)");
  m.last_done_mono_ns.set(now - 1'000 * kMs);  // the writer is moving
  EXPECT_EQ(not_ready_reason(m, connected, seg, policy, now), "");
  m.work_done.add(2);  // caught up: no backlog, however old the timestamps
  m.last_done_mono_ns.set(now - 3600'000 * kMs);
  EXPECT_EQ(not_ready_reason(m, connected, seg, policy, now), "");
}

TEST(Probes, LivenessRules) {
  SidecarMetrics m;
  const int64_t now = 1000'000 * kMs;
  m.writer_heartbeat_mono_ns.set(now - 100 * kMs);
  m.consumer_heartbeat_mono_ns.set(now - 100 * kMs);
  EXPECT_EQ(not_alive_reason(m, 50, 5, now), "");
  m.writer_heartbeat_mono_ns.set(now - 6'000 * kMs);
  EXPECT_EQ(not_alive_reason(m, 50, 5, now), "writer thread made no round for 6.000 s (limit 5 s)");
  m.writer_heartbeat_mono_ns.set(now);
  m.consumer_heartbeat_mono_ns.set(now - 51'000 * kMs);
  EXPECT_EQ(not_alive_reason(m, 50, 5, now), "consumer thread made no round for 51.000 s (limit 50 s)");
}

std::string config_with(const std::string& metrics_yaml) {
  ::setenv("LARDER_TEST_METRICS_PASSWORD", "pw", 1);
  return fmt::format(R"(segment: {{name: {}}}
tables:
  - name: users
    capacity: 100
    fields: [{{name: n, type: int64}}]
rabbitmq:
  url: amqp://larder@127.0.0.1:1/
  password_env: LARDER_TEST_METRICS_PASSWORD
  queue: {{name: q}}
{})",
                     fmt::format("larder-metrics-unit-{}", ::getpid()), metrics_yaml);
}

std::string config_error(const std::string& metrics_yaml) {
  try {
    parse_config(config_with(metrics_yaml));
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(MetricsConfig, DefaultsAndForms) {
  Config c = parse_config(config_with(""));
  EXPECT_TRUE(c.metrics.enabled);
  EXPECT_EQ(c.metrics.host, "127.0.0.1");
  EXPECT_EQ(c.metrics.port, 9464);
  EXPECT_EQ(c.metrics.ready_max_lag_s, 30);

  c = parse_config(config_with("metrics: {listen: \"0.0.0.0:0\", ready_max_lag_s: 2.5}"));
  EXPECT_EQ(c.metrics.host, "0.0.0.0");
  EXPECT_EQ(c.metrics.port, 0);
  EXPECT_EQ(c.metrics.ready_max_lag_s, 2.5);
  c = parse_config(config_with("metrics: {listen: \"[::1]:9100\"}"));
  EXPECT_EQ(c.metrics.host, "::1");
  EXPECT_EQ(c.metrics.port, 9100);
  EXPECT_FALSE(parse_config(config_with("metrics: {listen: \"\"}")).metrics.enabled);
  EXPECT_FALSE(parse_config(config_with("metrics: {enabled: false}")).metrics.enabled);
}

TEST(MetricsConfig, ErrorsNameTheKey) {
  EXPECT_EQ(config_error("metrics: {listen: \"9464\"}"),
            "metrics.listen: expected HOST:PORT such as \"127.0.0.1:9464\" (port 0: any free port; \"\" turns the "
            "listener off), got \"9464\"");
  EXPECT_EQ(config_error("metrics: {listen: \"localhost:99999\"}").rfind("metrics.listen: ", 0), 0u);
  EXPECT_EQ(config_error("metrics: {listen: \":80\"}").rfind("metrics.listen: ", 0), 0u);
  EXPECT_EQ(config_error("metrics: {ready_max_lag_s: 0}"),
            "metrics.ready_max_lag_s: expected a number in (0, 86400], got \"0\"");
  EXPECT_EQ(config_error("metrics: {enabled: maybe}"), "metrics.enabled: expected true or false, got \"maybe\"");
  EXPECT_EQ(config_error("metrics: {port: 1}").rfind("metrics.port: unknown key", 0), 0u);
}

// The listener end to end over HTTP, with a segment but no broker: /metrics
// parses and shows the segment, /healthz is 200, /readyz is 503 naming the
// connection (nothing connected it).
TEST(MetricsServer, ServesTheThreeEndpoints) {
  const Config config = parse_config(config_with("metrics: {listen: \"127.0.0.1:0\"}"));
  Writer::remove_segment(config.segment.name);
  auto writer = Writer::open(config.segment.name, config.schema());
  const FieldValue v = FieldValue::int64(0, 7);
  ASSERT_EQ(writer->upsert(0, "k1", layout::now_unix_ns() / kMs, std::span<const FieldValue>(&v, 1)),
            ApplyResult::kApplied);
  writer->heartbeat();

  Pipeline pipeline;
  pipeline.metrics.writer_heartbeat_mono_ns.set(layout::now_mono_ns());
  pipeline.metrics.consumer_heartbeat_mono_ns.set(layout::now_mono_ns());
  MetricsServer server(config, pipeline);
  std::string error;
  const int port = server.bind(&error);
  ASSERT_GT(port, 0) << error;
  server.start();

  httplib::Client http("127.0.0.1", port);
  auto res = http.Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  const test::ParsedMetrics p = test::parse_prometheus(res->body);
  ASSERT_EQ(p.error, "") << res->body;
  EXPECT_EQ(p.at("larder_segment_up"), 1);
  EXPECT_EQ(p.at("larder_table_live_keys{table=\"users\"}"), 1);
  EXPECT_EQ(p.at("larder_table_upserts_total{table=\"users\"}"), 1);
  EXPECT_LT(p.at("larder_table_freshness_seconds{table=\"users\"}"), 60);

  res = http.Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "ok\n");
  res = http.Get("/readyz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_EQ(res->body, "not ready: broker connection is connecting\n");
  pipeline.connection_state.store(static_cast<uint32_t>(ConnectionState::kConnected));
  pipeline.metrics.writer_heartbeat_mono_ns.set(layout::now_mono_ns());
  writer->heartbeat();
  res = http.Get("/readyz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->body, "ok\n");
  res = http.Get("/nope");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);

  // A second listener on the same port is refused with a useful message.
  const Config same = parse_config(config_with(fmt::format("metrics: {{listen: \"127.0.0.1:{}\"}}", port)));
  MetricsServer clash(same, pipeline);
  EXPECT_EQ(clash.bind(&error), -1);
  EXPECT_NE(error.find("cannot listen on 127.0.0.1:"), std::string::npos) << error;

  server.stop();
  writer.reset();
  Writer::remove_segment(config.segment.name);
}

std::string read_source_file(const std::string& relative) {
  std::ifstream in(std::string(LARDER_SOURCE_DIR) + "/" + relative);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Stream sources: the sync state, offsets and lag on /metrics, and /readyz
// failing while CATCHING_UP or INCOMPLETE with the offsets.
TEST(RenderMetrics, SourceMetricsAndReadinessFollowTheSyncState) {
  SidecarMetrics m;
  m.source_lag_ms.set(2500);
  const int64_t now = layout::now_unix_ns();
  SegmentSample seg = fake_segment(now);
  seg.sync.state = layout::SyncState::kCatchingUp;
  SyncInfo::Partition part;
  part.partition = 0;
  part.next_offset = 1200;
  part.target = 5310;
  seg.sync.partitions.push_back(part);
  test::ParsedMetrics p = test::parse_prometheus(render_metrics(m, 2, seg, now, layout::now_mono_ns()));
  ASSERT_EQ(p.error, "");
  EXPECT_EQ(p.at("larder_sync_state{state=\"catching_up\"}"), 1);
  EXPECT_EQ(p.at("larder_sync_state{state=\"ready\"}"), 0);
  EXPECT_EQ(p.at("larder_source_offset{partition=\"0\"}"), 1200);
  EXPECT_EQ(p.at("larder_source_target_offset{partition=\"0\"}"), 5310);
  EXPECT_EQ(p.at("larder_source_lag_messages{partition=\"0\"}"), 4111);
  EXPECT_EQ(p.at("larder_source_lag_seconds"), 2.5);
  EXPECT_EQ(p.at("larder_source_incomplete"), 0);
  ReadyPolicy policy;
  const uint32_t connected = static_cast<uint32_t>(layout::ConnectionState::kConnected);
  const int64_t mono = layout::now_mono_ns();
  m.writer_heartbeat_mono_ns.set(mono);
  EXPECT_EQ(not_ready_reason(m, connected, seg, policy, mono),
            "catching up with the stream: next offset 1200, target 5310");

  seg.sync.state = layout::SyncState::kIncomplete;
  seg.sync.partitions[0].target.reset();
  seg.sync.partitions[0].first_retained = 1532;
  p = test::parse_prometheus(render_metrics(m, 2, seg, now, layout::now_mono_ns()));
  EXPECT_EQ(p.at("larder_source_incomplete"), 1);
  EXPECT_EQ(p.at("larder_source_first_retained_offset{partition=\"0\"}"), 1532);
  EXPECT_FALSE(p.has("larder_source_target_offset{partition=\"0\"}"));
  const std::string reason = not_ready_reason(m, connected, seg, policy, mono);
  EXPECT_NE(reason.find("incomplete"), std::string::npos) << reason;
  EXPECT_NE(reason.find("first retained offset 1532"), std::string::npos) << reason;

  seg.sync.state = layout::SyncState::kReady;
  EXPECT_EQ(not_ready_reason(m, connected, seg, policy, mono), "");
}

// The families /metrics serves (a fully populated page), with a Kafka
// source's own families after them (MetricsServer appends each source's;
// with a regex in its topics, so that the regex families are there too).
std::set<std::string> rendered_families() {
  SidecarMetrics m;
  const int64_t now = layout::now_unix_ns();
  std::string text = render_metrics(m, 2, fake_segment(now), now, layout::now_mono_ns());
  const Config config = parse_config(R"(segment: {name: metrics-docs}
tables: [{name: t, capacity: 10, fields: [{name: a, type: int64}]}]
kafka: {bootstrap_servers: "127.0.0.1:1", topics: [events, "^more\\..*"], partitions_per_topic: 4}
)");
  Pipeline pipeline;
  SourceLane lane(0, 0, config.kafka.partitions_per_topic * config.kafka.topic_ranges());
  const std::atomic<int> stop{0};
  KafkaSource kafka(config, pipeline, lane, stop);  // not run: no connection
  kafka.render_metrics(text);
  const test::ParsedMetrics p = test::parse_prometheus(text);
  std::set<std::string> out;
  for (const auto& [name, type] : p.types) out.insert(name);
  return out;
}

// docs/operations.md documents every metric, and names none that does not exist.
TEST(MetricsDocs, OperationsGuideListsEveryMetric) {
  const std::string doc = read_source_file("docs/operations.md");
  ASSERT_FALSE(doc.empty());
  const std::set<std::string> families = rendered_families();
  for (const std::string& f : families) EXPECT_NE(doc.find("`" + f + "`"), std::string::npos) << f;
  // The rows of the metrics table.
  const std::regex name(R"(\n\| `(larder_[a-z_]+)` \|)");
  size_t rows = 0;
  for (auto it = std::sregex_iterator(doc.begin(), doc.end(), name); it != std::sregex_iterator(); ++it) {
    EXPECT_TRUE(families.count((*it)[1])) << "documented but not served: " << (*it)[1];
    ++rows;
  }
  EXPECT_EQ(rows, families.size());
}

// The example dashboard is valid JSON and queries only metrics that exist.
TEST(MetricsDocs, GrafanaDashboardIsValidAndUsesRealMetrics) {
  const std::string text = read_source_file("examples/grafana/larder-dashboard.json");
  ASSERT_FALSE(text.empty());
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  ASSERT_EQ(parser.parse(text).get(root), simdjson::SUCCESS) << "invalid JSON";
  simdjson::dom::array panels;
  ASSERT_EQ(root["panels"].get(panels), simdjson::SUCCESS);
  EXPECT_GE(panels.size(), 10u);
  const std::set<std::string> families = rendered_families();
  const std::regex name(R"(\b(larder_[a-z_]+))");
  size_t uses = 0;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), name); it != std::sregex_iterator(); ++it, ++uses) {
    std::string n = (*it)[1];
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string sfx(suffix);
      if (!families.count(n) && n.size() > sfx.size() && n.compare(n.size() - sfx.size(), sfx.size(), sfx) == 0) {
        n = n.substr(0, n.size() - sfx.size());
      }
    }
    EXPECT_TRUE(families.count(n)) << "the dashboard queries an unknown metric: " << (*it)[1];
  }
  EXPECT_GE(uses, 20u);
  EXPECT_NE(text.find("histogram_quantile(0.99"), std::string::npos);
}

}  // namespace
}  // namespace larder::sidecar

// Unit tests of config loading: defaults, conversion to a Schema, and that
// every error message starts with the key path it is about. No broker.
#include "config/config.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <fstream>
#include <string>

namespace larder::sidecar {
namespace {

const char* kValid = R"(
segment:
  name: features
tables:
  - name: users
    capacity: 1000
    fields:
      - {name: age, type: int64}
      - {name: emb, type: vector, dims: 8}
      - {name: country, type: string, max_len: 2}
  - name: items
    key_max_len: 32
    capacity: 10
    max_load_factor: 0.5
    allow_unknown_fields: true
    fields:
      - {name: price, type: float64}
      - {name: ctr, type: float32}
      - {name: live, type: bool}
rabbitmq:
  url: amqp://larder@broker.local:5673/prod
  password_env: LARDER_TEST_CONFIG_PASSWORD
  queue:
    name: features.host1
  bindings:
    - exchange: features
      routing_keys: ["users.#", "items.#"]
)";

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override { ::setenv("LARDER_TEST_CONFIG_PASSWORD", "s3cret", 1); }

  // Expects parse_config(yaml) to fail with a message starting with `path: `
  // and containing `fragment`.
  static void expect_error(const std::string& yaml, const std::string& path, const std::string& fragment = "") {
    try {
      parse_config(yaml);
      ADD_FAILURE() << "accepted:\n" << yaml;
    } catch (const ConfigError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << "message \"" << msg << "\" does not start with \"" << path << ": \"";
      EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
    }
  }

  static std::string replace(std::string s, const std::string& from, const std::string& to) {
    const size_t pos = s.find(from);
    EXPECT_NE(pos, std::string::npos) << from;
    if (pos != std::string::npos) s.replace(pos, from.size(), to);
    return s;
  }
};

TEST_F(ConfigTest, ValidConfigAndDefaults) {
  const Config c = parse_config(kValid);
  EXPECT_EQ(c.segment.name, "features");
  EXPECT_EQ(c.segment.dir, "/dev/shm");
  EXPECT_EQ(c.segment.mode, 0640u);
  EXPECT_FALSE(c.segment.full_check);
  ASSERT_EQ(c.tables.size(), 2u);
  EXPECT_EQ(c.tables[0].spec.key_max_len, 64u);
  EXPECT_EQ(c.tables[0].spec.max_load_factor, 0.75);
  EXPECT_FALSE(c.tables[0].allow_unknown_fields);
  EXPECT_TRUE(c.tables[1].allow_unknown_fields);
  EXPECT_EQ(c.tables[0].spec.fields[1].type, layout::FieldType::kFloat32Vector);
  EXPECT_EQ(c.tables[0].spec.fields[1].count, 8u);
  EXPECT_EQ(c.tables[0].spec.fields[2].count, 2u);
  const RabbitConfig& r = c.rabbitmq;
  EXPECT_FALSE(r.url.tls);
  EXPECT_EQ(r.url.user, "larder");
  EXPECT_EQ(r.url.host, "broker.local");
  EXPECT_EQ(r.url.port, 5673);
  EXPECT_EQ(r.url.vhost, "prod");
  EXPECT_EQ(r.password, "s3cret");
  EXPECT_EQ(r.queue.type, QueueType::kQuorum);
  EXPECT_TRUE(r.queue.durable);
  EXPECT_EQ(r.queue.delivery_limit, 5u);
  EXPECT_EQ(r.prefetch, 200u);
  EXPECT_EQ(r.heartbeat_s, 15u);
  EXPECT_EQ(r.dead_letter.exchange, "features.host1.dlx");
  EXPECT_EQ(r.dead_letter.queue, "features.host1.dlq");
  EXPECT_EQ(r.bindings[0].type, "topic");
  EXPECT_EQ(r.bindings[0].routing_keys.size(), 2u);
  EXPECT_EQ(r.reconnect.base_s, 0.5);
  EXPECT_EQ(r.reconnect.cap_s, 30.0);
  EXPECT_EQ(c.logging.level, "info");
  const layout::Schema s = c.schema();
  EXPECT_EQ(s.tables.size(), 2u);
  EXPECT_EQ(c.decode_options()[1].allow_unknown_fields, true);
}

TEST_F(ConfigTest, FieldDefaultsAndConversionsForASchemaChange) {
  std::string v = replace(kValid, "{name: age, type: int64}", "{name: age, type: float64, convert_from: int64}");
  v = replace(v, "{name: emb, type: vector, dims: 8}", "{name: emb, type: vector, dims: 2, default: [0.5, -1]}");
  v = replace(v, "{name: country, type: string, max_len: 2}", "{name: country, type: string, max_len: 2, default: NL}");
  const Config c = parse_config(v);
  const auto& f = c.tables[0].spec.fields;
  ASSERT_TRUE(f[0].convert_from.has_value());
  EXPECT_EQ(*f[0].convert_from, layout::FieldType::kInt64);
  EXPECT_FALSE(f[0].default_value.has_value());
  EXPECT_EQ(f[1].default_value, "0.5,-1");
  EXPECT_EQ(f[2].default_value, "NL");
  EXPECT_FALSE(f[2].convert_from.has_value());
  // Neither changes the layout: the fingerprint is the one without them.
  const std::string plain =
      replace(replace(replace(v, ", convert_from: int64", ""), ", default: [0.5, -1]", ""), ", default: NL", "");
  EXPECT_EQ(c.schema().fingerprint(), parse_config(plain).schema().fingerprint());
  expect_error(replace(v, "convert_from: int64", "convert_from: integer"), "tables[0].fields[0].convert_from",
               "unknown type \"integer\"");
}

TEST_F(ConfigTest, PasswordFile) {
  const std::string file = ::testing::TempDir() + "/larder-config-test-password";
  std::ofstream(file) << "from-file\n";
  const Config c = parse_config(replace(kValid, "password_env: LARDER_TEST_CONFIG_PASSWORD", "password_file: " + file));
  EXPECT_EQ(c.rabbitmq.password, "from-file");
  std::remove(file.c_str());
}

// ConfigLoad::sources = false (the offline engine): the sources are not
// read, whatever they hold; the sidecar's own load still refuses them.
TEST_F(ConfigTest, SourcesUnreadWhenNotWanted) {
  const std::string yaml = replace(kValid, "  password_env: LARDER_TEST_CONFIG_PASSWORD\n", "") +
                           "kafka: {topics: []}\n"
                           "databases:\n  - {driver: nosuch}\n";
  ConfigLoad tables_only;
  tables_only.require_secrets = false;
  tables_only.sources = false;
  const Config c = parse_config(yaml, "config", tables_only);
  EXPECT_FALSE(c.rabbitmq_enabled);
  EXPECT_FALSE(c.kafka_enabled);
  EXPECT_TRUE(c.databases.empty());
  EXPECT_EQ(c.tables.size(), 2u);
  EXPECT_EQ(c.schema().tables[1].name, "items");
  // A config of tables alone needs no source either.
  EXPECT_EQ(parse_config("segment: {name: s}\ntables: [{name: t, capacity: 4, fields: [{name: x, type: int64}]}]\n",
                         "config", tables_only)
                .tables.size(),
            1u);
  // Unknown top-level keys are still refused.
  EXPECT_THROW(parse_config(yaml + "rabbit: {}\n", "config", tables_only), ConfigError);

  // The sidecar reads them: a missing password_env is refused, with
  // secrets required or not.
  ConfigLoad unchecked_secrets;
  unchecked_secrets.require_secrets = false;
  for (const ConfigLoad& load : {ConfigLoad{}, unchecked_secrets}) {
    try {
      parse_config(replace(kValid, "  password_env: LARDER_TEST_CONFIG_PASSWORD\n", ""), "config", load);
      ADD_FAILURE() << "a rabbitmq section without password_env accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("password_env"), std::string::npos) << e.what();
    }
  }
}

TEST_F(ConfigTest, ErrorsNameTheKey) {
  const std::string v = kValid;
  expect_error(replace(v, "type: int64", "type: floot"), "tables[0].fields[0].type", "unknown type \"floot\"");
  expect_error(replace(v, "type: float32", "type: floot"), "tables[1].fields[1].type", "expected int64, float64");
  expect_error(replace(v, "dims: 8", "dims: 0"), "tables[0].fields[1].dims");
  expect_error(replace(v, ", dims: 8", ""), "tables[0].fields[1].dims", "required");
  expect_error(replace(v, ", max_len: 2", ""), "tables[0].fields[2].max_len", "required");
  expect_error(replace(v, "{name: age, type: int64}", "{name: age, type: int64, dims: 3}"), "tables[0].fields[0].dims");
  expect_error(replace(v, "{name: age, type: int64}", "{name: age, type: int64, max_len: 3}"),
               "tables[0].fields[0].max_len");
  expect_error(replace(v, "{name: age, type: int64}", "{name: age, typ: int64}"), "tables[0].fields[0].typ",
               "unknown key");
  expect_error(replace(v, "name: emb", "name: age"), "tables[0].fields[1].name", "duplicate");
  expect_error(replace(v, "name: emb", "name: \"bad name\""), "tables[0].fields[1].name");
  expect_error(replace(v, "capacity: 1000", "capacity: lots"), "tables[0].capacity");
  expect_error(replace(v, "    capacity: 1000\n", ""), "tables[0].capacity", "required");
  expect_error(replace(v, "max_load_factor: 0.5", "max_load_factor: 0.99"), "tables[1].max_load_factor");
  expect_error(replace(v, "key_max_len: 32", "key_max_len: 5000"), "tables[1].key_max_len");
  expect_error(replace(v, "allow_unknown_fields: true", "allow_unknown_fields: maybe"),
               "tables[1].allow_unknown_fields");
  expect_error(replace(v, "name: items", "name: users"), "tables[1].name", "duplicate");
  expect_error(replace(v, "  name: features\n", "  name: features\n  size: 3\n"), "segment.size", "unknown key");
  expect_error(replace(v, "  name: features\n", "  name: features\n  mode: \"0999\"\n"), "segment.mode");
  expect_error(replace(v, "  name: features\n", "  name: features\n  mode: \"0440\"\n"), "segment.mode");
  expect_error(replace(v, "  name: features\n", "  name: features\n  dir: relative\n"), "segment.dir");
  expect_error(replace(v, "  name: features\n", "  name: features\n  full_check: sometimes\n"), "segment.full_check");
  EXPECT_TRUE(
      parse_config(replace(v, "  name: features\n", "  name: features\n  full_check: true\n")).segment.full_check);
  // Generation switches: migration and automatic growth, off by default.
  EXPECT_FALSE(parse_config(v).segment.migrate_on_schema_change);
  EXPECT_EQ(parse_config(v).segment.grow_at, 0.0);
  expect_error(replace(v, "  name: features\n", "  name: features\n  on_schema_change: recreate\n"),
               "segment.on_schema_change", "refuse or migrate");
  expect_error(replace(v, "  name: features\n", "  name: features\n  grow_at: 1.5\n"), "segment.grow_at");
  expect_error(replace(v, "  name: features\n", "  name: features\n  grow_factor: 1\n"), "segment.grow_factor");
  {
    const Config c = parse_config(replace(
        v, "  name: features\n",
        "  name: features\n  on_schema_change: migrate\n  grow_at: 0.8\n  grow_factor: 3\n  max_capacity: 5000000\n"));
    EXPECT_TRUE(c.segment.migrate_on_schema_change);
    EXPECT_EQ(c.segment.grow_at, 0.8);
    EXPECT_EQ(c.segment.grow_factor, 3.0);
    EXPECT_EQ(c.segment.max_capacity, 5'000'000u);
  }
  expect_error(replace(v, "  name: features\n", "  nam: features\n"), "segment.nam");
  expect_error(replace(v, "amqp://larder@broker.local:5673/prod", "amqp://larder:pw@broker.local/"), "rabbitmq.url",
               "password");
  expect_error(replace(v, "amqp://larder@broker.local:5673/prod", "http://x/"), "rabbitmq.url", "amqp://");
  expect_error(replace(v, "amqp://larder@broker.local:5673/prod", "amqp://h:99999/"), "rabbitmq.url", "port");
  expect_error(replace(v, "LARDER_TEST_CONFIG_PASSWORD", "LARDER_TEST_NO_SUCH_VAR"), "rabbitmq.password_env",
               "not set");
  expect_error(replace(v, "  password_env: LARDER_TEST_CONFIG_PASSWORD\n", ""), "rabbitmq", "password_env");
  expect_error(replace(v, "password_env: LARDER_TEST_CONFIG_PASSWORD", "password_file: /nonexistent/pw"),
               "rabbitmq.password_file");
  expect_error(replace(v, "    name: features.host1\n", "    name: features.host1\n    type: lazy\n"),
               "rabbitmq.queue.type");
  expect_error(replace(v, "    name: features.host1\n", "    name: features.host1\n    durable: false\n"),
               "rabbitmq.queue.durable");
  expect_error(
      replace(v, "    name: features.host1\n", "    name: features.host1\n    type: classic\n    delivery_limit: 3\n"),
      "rabbitmq.queue.delivery_limit");
  expect_error(replace(v, "    name: features.host1\n", "    name: features.host1\n    stream_offset: first\n"),
               "rabbitmq.queue.stream_offset");
  expect_error(
      replace(v, "    name: features.host1\n", "    name: features.host1\n    type: stream\n    stream_offset: soon\n"),
      "rabbitmq.queue.stream_offset");
  expect_error(replace(v, "    name: features.host1\n", "    name: amq.mine\n"), "rabbitmq.queue.name");
  expect_error(replace(v, "      routing_keys: [\"users.#\", \"items.#\"]\n", ""), "rabbitmq.bindings[0].routing_keys");
  expect_error(replace(v, "    - exchange: features\n", "    - exchange: features\n      type: special\n"),
               "rabbitmq.bindings[0].type");
  expect_error(v + "  prefetch: 0\n", "rabbitmq.prefetch");
  expect_error(v + "  heartbeat_s: 0\n", "rabbitmq.heartbeat_s");
  expect_error(v + "  tls: {ca_file: /etc/hostname}\n", "rabbitmq.tls", "amqps://");
  expect_error(v + "  reconnect: {base_s: 2, cap_s: 1}\n", "rabbitmq.reconnect.cap_s");
  expect_error(v + "  dead_letter: {queue: features.host1}\n", "rabbitmq.dead_letter.queue");
  expect_error(v + "  colour: blue\n", "rabbitmq.colour", "unknown key");
  expect_error(v + "logging: {level: loud}\n", "logging.level");
  expect_error(v + "extra: 1\n", "extra", "unknown key");
  expect_error("segment: {name: x}\n", "tables", "required");
  expect_error("segment: {name: x}\ntables: []\n", "tables");
}

// A table with transforms and aggregates (docs/aggregates.md's example).
const char* kAggregates = R"(
segment:
  name: features
tables:
  - name: users
    capacity: 1000
    fields:
      - {name: country, type: string, max_len: 2}
      - {name: country_idx, type: int64, from: country,
         transform: [{vocabulary: {values: [US, DE, FR]}}]}
      - {name: amount_log, type: float64, from: amount,
         transform: [{clip: {min: 0, max: 10000}}, log1p]}
      - {name: score, type: float32}
      - {name: emb, type: vector, dims: 4}
      - {name: premium, type: bool}
    aggregates:
      - {name: clicks_1h, fn: count, window: 1h}
      - {name: spend_1h, source: amount, fn: sum, window: 1h}
      - {name: spend_24h, source: amount, fn: sum, window: 24h}
      - {name: basket_std_24h, source: amount, fn: std, window: 24h, resolution: 10m}
      - {name: last_amount_log, source: amount_log, fn: last, window: 7d, end: latest_event}
      - {name: premium_share, source: premium, fn: avg, window: 90000}
    allowed_lateness: 1h
    dedup: {horizon: 2h, capacity: 1000000}
rabbitmq:
  url: amqp://larder@broker.local/
  password_env: LARDER_TEST_CONFIG_PASSWORD
  queue:
    name: features.host1
)";

TEST_F(ConfigTest, TransformsAndAggregates) {
  const Config c = parse_config(kAggregates);
  const TableConfig& t = c.tables[0];
  ASSERT_EQ(t.ingest.size(), t.spec.fields.size());
  EXPECT_EQ(t.ingest[0].from, "");
  EXPECT_TRUE(t.ingest[0].transform.empty());
  EXPECT_EQ(t.ingest[1].from, "country");
  EXPECT_TRUE(t.ingest[1].transform.string_input());
  EXPECT_EQ(t.ingest[2].from, "amount");
  EXPECT_EQ(t.ingest[2].transform.describe(), "clip, log1p");

  ASSERT_EQ(t.spec.aggregates.size(), 6u);
  const layout::AggregateSpec& clicks = t.spec.aggregates[0];
  EXPECT_EQ(clicks.name, "clicks_1h");
  EXPECT_EQ(clicks.source, "");
  EXPECT_EQ(clicks.fn, layout::AggregateFn::kCount);
  EXPECT_EQ(clicks.window_ms, 3'600'000);
  EXPECT_EQ(clicks.resolution_ms, 0);  // the default, resolved by the layout
  EXPECT_EQ(clicks.end, layout::WindowEnd::kNow);
  EXPECT_EQ(t.spec.aggregates[1].source, "amount");
  EXPECT_EQ(t.spec.aggregates[3].fn, layout::AggregateFn::kStddev);
  EXPECT_EQ(t.spec.aggregates[3].resolution_ms, 600'000);
  EXPECT_EQ(t.spec.aggregates[4].window_ms, 7 * 86'400'000LL);
  EXPECT_EQ(t.spec.aggregates[4].end, layout::WindowEnd::kLatestEvent);
  EXPECT_EQ(t.spec.aggregates[5].fn, layout::AggregateFn::kMean);
  EXPECT_EQ(t.spec.aggregates[5].window_ms, 90'000);
  EXPECT_EQ(t.spec.allowed_lateness_ms, 3'600'000);
  EXPECT_EQ(t.spec.dedup_horizon_ms, 7'200'000);
  EXPECT_EQ(t.spec.dedup_capacity, 1'000'000u);

  // The schema carries the aggregates; the decoder options carry from and transforms.
  const layout::Schema s = c.schema();
  EXPECT_EQ(s.tables[0].aggregates.size(), 6u);
  EXPECT_EQ(s.tables[0].allowed_lateness_ms, 3'600'000);
  const std::vector<TableDecodeOptions> opts = c.decode_options();
  ASSERT_EQ(opts[0].fields.size(), t.spec.fields.size());
  EXPECT_EQ(opts[0].fields[2].from, "amount");
  EXPECT_EQ(opts[0].fields[2].transform.size(), 2u);

  // Transforms are ingest config: the schema fingerprint does not see them.
  const Config other = parse_config(replace(kAggregates, "max: 10000}}, log1p]", "max: 500}}]"));
  EXPECT_EQ(other.schema().fingerprint(), s.fingerprint());

  // Defaults: lateness and dedup filled in by the layout (0 here).
  const Config d = parse_config(replace(replace(kAggregates, "    allowed_lateness: 1h\n", ""),
                                        "    dedup: {horizon: 2h, capacity: 1000000}\n", ""));
  EXPECT_EQ(d.tables[0].spec.allowed_lateness_ms, 0);
  EXPECT_EQ(d.tables[0].spec.dedup_horizon_ms, 0);
  EXPECT_EQ(d.tables[0].spec.dedup_capacity, 0u);

  // Durations in every unit; an int64 field takes an int64 transform output,
  // float fields take it converted.
  const std::string more = replace(kAggregates, "      - {name: premium, type: bool}\n",
                                   "      - {name: premium, type: bool}\n"
                                   "      - {name: amount_bucket, type: int64, from: amount,\n"
                                   "         transform: [{bucketize: {boundaries: [10, 100]}}]}\n"
                                   "      - {name: amount_bucket_f, type: float32, from: amount,\n"
                                   "         transform: [{bucketize: {boundaries: [10, 100]}}]}\n"
                                   "      - {name: country_idx_f, type: float64, from: country,\n"
                                   "         transform: [{vocabulary: {values: [US]}}]}\n"
                                   "      - {name: amount_raw, type: float64, from: amount}\n");
  const Config m =
      parse_config(replace(more, "      - {name: clicks_1h, fn: count, window: 1h}\n",
                           "      - {name: clicks_1h, fn: count, window: 1h}\n"
                           "      - {name: c_ms, fn: count, window: 1500ms, resolution: 500ms}\n"
                           "      - {name: c_s, fn: count, window: 90s}\n"
                           "      - {name: c_m, fn: count, window: 5m, resolution: 1m}\n"
                           "      - {name: c_d, fn: count, window: 30d}\n"
                           "      - {name: c_src, source: amount_raw, fn: count, window: 1s, resolution: 1000}\n"));
  const auto& a = m.tables[0].spec.aggregates;
  EXPECT_EQ(a[1].window_ms, 1500);
  EXPECT_EQ(a[1].resolution_ms, 500);
  EXPECT_EQ(a[2].window_ms, 90'000);
  EXPECT_EQ(a[3].window_ms, 300'000);
  EXPECT_EQ(a[3].resolution_ms, 60'000);
  EXPECT_EQ(a[4].window_ms, 30 * 86'400'000LL);
  EXPECT_EQ(a[5].source, "amount_raw");
  EXPECT_EQ(a[5].resolution_ms, 1000);
}

TEST_F(ConfigTest, FieldGroups) {
  const std::string yaml =
      replace(replace(kValid, "{name: age, type: int64}", "{name: age, type: int64, group: profile}"),
              "{name: emb, type: vector, dims: 8}", "{name: emb, type: vector, dims: 8, group: activity}");
  const Config c = parse_config(yaml);
  const layout::Schema s = c.schema();
  EXPECT_EQ(s.tables[0].fields[0].group, "profile");
  EXPECT_EQ(s.tables[0].fields[1].group, "activity");
  EXPECT_EQ(s.tables[0].fields[2].group, "");
  EXPECT_EQ(s.tables[0].group_names(), (std::vector<std::string>{"profile", "activity", "default"}));
  EXPECT_TRUE(s.tables[1].group_names().empty());
  EXPECT_NE(s.fingerprint(), parse_config(kValid).schema().fingerprint()) << "groups are schema";
  expect_error(replace(kValid, "{name: age, type: int64}", "{name: age, type: int64, group: \"a b\"}"),
               "tables[0].fields[0].group", "not a valid group name");
  std::string nine;
  for (int g = 0; g < 9; ++g)
    nine += "      - {name: f" + std::to_string(g) + ", type: int64, group: g" + std::to_string(g) + "}\n";
  expect_error(replace(kValid, "      - {name: age, type: int64}\n", nine), "tables[0].fields", "at most 8");
}

// The steps an exported scikit-learn transformer uses: outputs into vector
// and bool fields, a projection's input length, and their errors.
TEST_F(ConfigTest, FittedTransformerSteps) {
  const std::string v = kAggregates;
  const std::string extra =
      "      - {name: score, type: float32}\n"
      "      - {name: country_oh, type: vector, dims: 3, from: country,\n"
      "         transform: [{one_hot: {categories: [US, DE, FR], handle_unknown: ignore}}]}\n"
      "      - {name: country_us, type: bool, from: country,\n"
      "         transform: [{one_hot: {categories: [US, DE, FR], handle_unknown: ignore, index: 0}}]}\n"
      "      - {name: emb_pca, type: vector, dims: 2, from: emb,\n"
      "         transform: [{project: {components: [[1, 0, 0, 0], [0, 1, 0, 0]]}}]}\n"
      "      - {name: amount_imp, type: float64, from: amount,\n"
      "         transform: [{impute: {value: 3}}, {affine: {scale: 2, offset: 1}}]}\n";
  const Config c = parse_config(replace(v, "      - {name: score, type: float32}\n", extra));
  const TableConfig& t = c.tables[0];
  EXPECT_EQ(t.ingest[4].transform.output_dims(), 3u);
  EXPECT_EQ(t.ingest[5].transform.output(), TransformOutput::kBool);
  EXPECT_EQ(t.ingest[6].transform.input_dims(), 4u);
  EXPECT_TRUE(t.ingest[7].transform.takes_null());

  expect_error(replace(v, "      - {name: score, type: float32}\n",
                       replace(extra, "{name: country_oh, type: vector, dims: 3,",
                               "{name: country_oh, type: vector, "
                               "dims: 2,")),
               "tables[0].fields[4].dims", "gives 3 numbers, but dims is 2");
  expect_error(replace(v, "      - {name: score, type: float32}\n",
                       replace(extra, "{name: country_us, type: bool,", "{name: country_us, type: float64,")),
               "tables[0].fields[5].transform", "gives a bool");
  expect_error(replace(v, "      - {name: score, type: float32}\n",
                       replace(extra, "[[1, 0, 0, 0], [0, 1, 0, 0]]", "[[1, 0, 0], [0, 1, 0]]")),
               "tables[0].fields[8].name", "array of 4 numbers");
}

// `from: [a, b]`: a projection gathered from several members.
TEST_F(ConfigTest, ProjectionFromSeveralMembers) {
  const std::string v = kAggregates;
  const std::string pca =
      "      - {name: score, type: float32}\n"
      "      - {name: pca, type: vector, dims: 1, from: [x1, x2],\n"
      "         transform: [{project: {components: [[0.6, 0.8]], mean: [1, 2]}}]}\n";
  const Config c = parse_config(replace(v, "      - {name: score, type: float32}\n", pca));
  EXPECT_EQ(c.tables[0].ingest[4].from_members, (std::vector<std::string>{"x1", "x2"}));
  EXPECT_TRUE(c.tables[0].ingest[4].from.empty());
  expect_error(replace(v, "      - {name: score, type: float32}\n", replace(pca, "[x1, x2]", "[x1, x2, x3]")),
               "tables[0].fields[4].from", "a list of 3 members makes an array for a project step of 2 columns");
  expect_error(replace(v, "      - {name: score, type: float32}\n", replace(pca, "[x1, x2]", "[x1, x1]")),
               "tables[0].fields[4].from[1]", "twice");
  // A member is read as a number by the projection: not also as a string.
  expect_error(replace(v, "      - {name: score, type: float32}\n", replace(pca, "[x1, x2]", "[x1, country]")),
               "tables[0].fields[4].from[1]", "input \"country\" is read as a number");
}

TEST_F(ConfigTest, TransformErrorsNameTheKey) {
  const std::string v = kAggregates;
  expect_error(replace(v, "max: 10000}}, log1p]", "max: 10000}}, {standardize: {mean: 0, std: 0}}]"),
               "tables[0].fields[2].transform[1].standardize.std", "must be > 0");
  expect_error(
      replace(v, "transform: [{vocabulary: {values: [US, DE, FR]}}]", "transform: [{vocabulary: {values: []}}]"),
      "tables[0].fields[1].transform[0].vocabulary.values", "at least one");
  expect_error(replace(v, "max_len: 2}", "max_len: 2, transform: [log1p]}"), "tables[0].fields[0].transform",
               "string fields take no transform");
  expect_error(replace(v, "dims: 4}", "dims: 4, transform: [log1p]}"), "tables[0].fields[4].transform",
               "vector fields take no transform");
  expect_error(replace(v, "{name: premium, type: bool}", "{name: premium, type: bool, transform: [log1p]}"),
               "tables[0].fields[5].transform", "bool fields take no transform");
  // A vocabulary reads a string, but stores a number: not into a string field.
  expect_error(replace(v, "{name: country_idx, type: int64,", "{name: country_idx, type: string, max_len: 4,"),
               "tables[0].fields[1].transform", "string fields take no transform");
  expect_error(replace(v, "{name: amount_log, type: float64,", "{name: amount_log, type: int64,"),
               "tables[0].fields[2].transform",
               "ends in log1p, which gives a float64, but field \"amount_log\" is int64");
  expect_error(replace(v, "transform: [{clip: {min: 0, max: 10000}}, log1p]", "transform: log1p"),
               "tables[0].fields[2].transform", "expected a list of steps");
  // One member, two JSON types.
  expect_error(
      replace(v, "      - {name: score, type: float32}\n",
              "      - {name: score, type: float32}\n      - {name: country_num, type: float64, from: country}\n"),
      "tables[0].fields[4].from",
      "input \"country\" is read as a number by field \"country_num\" (fields[4]) but as a string by field "
      "\"country\" (fields[0])");
  expect_error(replace(v, "      - {name: score, type: float32}\n",
                       "      - {name: score, type: float32}\n"
                       "      - {name: amount_idx, type: int64, from: amount,\n"
                       "         transform: [{vocabulary: {values: [a]}}]}\n"),
               "tables[0].fields[4].from", "input \"amount\" is read as a string by field \"amount_idx\"");
  // from names an event member, not another field's result or an aggregate.
  expect_error(replace(v, "{name: score, type: float32}", "{name: score, type: float32, from: amount_log}"),
               "tables[0].fields[3].from", "\"amount_log\" is a field computed from \"amount\"");
  expect_error(replace(v, "{name: score, type: float32}", "{name: score, type: float32, from: spend_1h}"),
               "tables[0].fields[3].from", "\"spend_1h\" is an aggregate");
  expect_error(replace(v, "{name: score, type: float32}", "{name: score, type: float32, from: \"a b\"}"),
               "tables[0].fields[3].from", "not a valid member name");
  expect_error(replace(v, "{name: score, type: float32}", "{name: score, type: float32, form: x}"),
               "tables[0].fields[3].form", "unknown key");
}

TEST_F(ConfigTest, AggregateErrorsNameTheKey) {
  const std::string v = kAggregates;
  const std::string clicks = "{name: clicks_1h, fn: count, window: 1h}";
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: median, window: 1h}"), "tables[0].aggregates[0].fn",
               "unknown fn \"median\" (expected count, sum, mean (avg), min, max, last, variance (var), stddev (std), "
               "distinct_count (distinct), last_n, first)");
  expect_error(replace(v, clicks, "{name: clicks_1h, window: 1h}"), "tables[0].aggregates[0].fn", "required");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count}"), "tables[0].aggregates[0].window", "required");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 500ms}"), "tables[0].aggregates[0].window",
               "500ms is outside 1s..30d");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 31d}"), "tables[0].aggregates[0].window",
               "31d is outside 1s..30d");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 1.5h}"), "tables[0].aggregates[0].window",
               "expected a duration such as 500ms, 90s, 5m, 1h, 7d");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 1w}"), "tables[0].aggregates[0].window",
               "expected a duration");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: -5s}"), "tables[0].aggregates[0].window",
               "expected a duration");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 1h, resolution: 7m}"),
               "tables[0].aggregates[0].resolution", "window 1h is not a multiple of resolution 7m");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 1h, resolution: 0}"),
               "tables[0].aggregates[0].resolution", "must be > 0");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 1h, resolution: 500ms}"),
               "tables[0].aggregates[0].resolution", "7200 buckets; at most 4096");
  // A prime number of milliseconds has no default resolution.
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 4099}"), "tables[0].aggregates[0].window",
               "4099ms has no default resolution");
  // An explicit resolution that divides it is fine.
  EXPECT_NO_THROW(parse_config(replace(v, clicks, "{name: clicks_1h, fn: count, window: 4099, resolution: 4099}")));
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 1h, end: sometime}"),
               "tables[0].aggregates[0].end", "expected now or latest_event");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: sum, window: 1h}"), "tables[0].aggregates[0].source",
               "required for sum");
  expect_error(replace(v, clicks, "{name: clicks_1h, source: country, fn: sum, window: 1h}"),
               "tables[0].aggregates[0].source", "\"country\" is a string field; an aggregate folds numbers");
  expect_error(replace(v, clicks, "{name: clicks_1h, source: amount_log, fn: distinct_count, window: 1h}"),
               "tables[0].aggregates[0].source", "\"amount_log\" is a float64 field; distinct_count compares values");
  expect_error(replace(v, clicks, "{name: clicks_1h, source: score, fn: distinct, window: 1h}"),
               "tables[0].aggregates[0].source", "\"score\" is a float32 field; distinct_count compares values");
  expect_error(replace(v, clicks, "{name: clicks_1h, source: emb, fn: distinct_count, window: 1h}"),
               "tables[0].aggregates[0].source", "\"emb\" is a vector field");
  // distinct_count of a string, int64 or bool field, or of any member; count of a string field.
  for (const char* ok : {"{name: clicks_1h, source: country, fn: distinct_count, window: 1h}",
                         "{name: clicks_1h, source: country_idx, fn: distinct, window: 1h}",
                         "{name: clicks_1h, source: premium, fn: distinct_count, window: 1h}",
                         "{name: clicks_1h, source: device, fn: distinct_count, window: 1h}",
                         "{name: clicks_1h, source: amount, fn: distinct_count, window: 1h}",
                         "{name: clicks_1h, source: country, fn: count, window: 1h}"}) {
    EXPECT_NO_THROW(parse_config(replace(v, clicks, ok))) << ok;
  }
  {
    const Config c = parse_config(replace(v, clicks, "{name: clicks_1h, source: country, fn: distinct, window: 1h}"));
    EXPECT_EQ(c.tables[0].spec.aggregates[0].fn, layout::AggregateFn::kDistinctCount);
    EXPECT_EQ(c.tables[0].spec.all_fields()[6].type, layout::FieldType::kInt64);
  }
  // A member read as an array by a field cannot feed a distinct_count.
  expect_error(replace(replace(v, clicks, "{name: clicks_1h, source: vec, fn: distinct_count, window: 1h}"),
                       "{name: emb, type: vector, dims: 4}", "{name: emb, type: vector, dims: 4, from: vec}"),
               "tables[0].aggregates[0].source", "input \"vec\" is read as");
  expect_error(replace(v, clicks, "{name: clicks_1h, source: emb, fn: max, window: 1h}"),
               "tables[0].aggregates[0].source", "\"emb\" is a vector field");
  expect_error(replace(v, clicks, "{name: clicks_1h, source: spend_24h, fn: max, window: 1h}"),
               "tables[0].aggregates[0].source", "\"spend_24h\" is an aggregate");
  expect_error(replace(v, clicks, "{name: clicks_1h, source: \"a b\", fn: max, window: 1h}"),
               "tables[0].aggregates[0].source", "not a valid name");
  expect_error(replace(v, clicks, "{name: score, fn: count, window: 1h}"), "tables[0].aggregates[0].name",
               "\"score\" is already a field (fields[3])");
  expect_error(replace(v, clicks, "{name: spend_1h, fn: count, window: 1h}"), "tables[0].aggregates[1].name",
               "duplicate aggregate \"spend_1h\" (also aggregates[0])");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 1h, every: 2}"),
               "tables[0].aggregates[0].every", "unknown key");
  // A raw member that a vocabulary reads as a string cannot also be a source.
  expect_error(replace(replace(v, "      - {name: score, type: float32}\n",
                               "      - {name: score, type: float32}\n"
                               "      - {name: cc_idx, type: int64, from: cc,\n"
                               "         transform: [{vocabulary: {values: [a]}}]}\n"),
                       clicks, "{name: clicks_1h, source: cc, fn: sum, window: 1h}"),
               "tables[0].aggregates[0].source",
               "input \"cc\" is read as a number (or true/false) by aggregate \"clicks_1h\" (aggregates[0]) but as a "
               "string by field \"cc_idx\" (fields[4])");

  expect_error(replace(v, "allowed_lateness: 1h", "allowed_lateness: 8d"), "tables[0].allowed_lateness",
               "8d is longer than the longest window (7d)");
  expect_error(replace(v, "allowed_lateness: 1h", "allowed_lateness: 0"), "tables[0].allowed_lateness", "must be > 0");
  expect_error(replace(v, "allowed_lateness: 1h", "allowed_lateness: soon"), "tables[0].allowed_lateness",
               "expected a duration");
  expect_error(replace(v, "horizon: 2h", "horizon: 30m"), "tables[0].dedup.horizon",
               "30m is shorter than the allowed lateness (1h)");
  expect_error(replace(replace(v, "    allowed_lateness: 1h\n", ""), "horizon: 2h", "horizon: 2d"),
               "tables[0].dedup.horizon", "shorter than the allowed lateness (7d, the longest window)");
  expect_error(replace(v, "capacity: 1000000}", "capacity: 0}"), "tables[0].dedup.capacity", "expected an integer");
  expect_error(replace(v, "capacity: 1000000}", "size: 3}"), "tables[0].dedup.size", "unknown key");

  // Tables without aggregates take neither lateness nor dedup.
  expect_error(std::string(kValid).replace(std::string(kValid).find("    fields:\n"), 0, "    allowed_lateness: 1h\n"),
               "tables[0].allowed_lateness", "only tables with aggregates");
  expect_error(std::string(kValid).replace(std::string(kValid).find("    fields:\n"), 0, "    dedup: {horizon: 1h}\n"),
               "tables[0].dedup", "only tables with aggregates");

  // At most 64 aggregates.
  std::string many;
  for (int i = 0; i < 65; ++i) many += "      - {name: n" + std::to_string(i) + ", fn: count, window: 1h}\n";
  expect_error(replace(v, "      - " + clicks + "\n", many), "tables[0].aggregates",
               "70 aggregates; a table has at most 64");
}

// Count windows (`window: N events`), last_n sequences, min_periods and ddof.
TEST_F(ConfigTest, CountWindowsSequencesAndDdof) {
  const std::string v = kAggregates;
  const std::string clicks = "{name: clicks_1h, fn: count, window: 1h}";
  {
    const Config c =
        parse_config(replace(v, clicks,
                             "{name: clicks_1h, source: amount, fn: var, window: 10 events, min_periods: 3, ddof: 1}\n"
                             "      - {name: recent, source: country_idx, fn: last_n, n: 20}\n"
                             "      - {name: first_5, source: amount, fn: first, window: 5events}\n"
                             "      - {name: std_1h, source: amount, fn: stddev, window: 1h, ddof: 1}"));
    const layout::TableSpec& t = c.tables[0].spec;
    const layout::AggregateSpec& w = t.aggregates[0];
    EXPECT_EQ(w.fn, layout::AggregateFn::kVariance);
    EXPECT_EQ(w.window_events, 10u);
    EXPECT_EQ(w.window_ms, 0);
    EXPECT_EQ(w.min_periods, 3u);
    EXPECT_EQ(w.ddof, 1u);
    EXPECT_EQ(t.aggregates[1].fn, layout::AggregateFn::kLastN);
    EXPECT_EQ(t.aggregates[1].window_events, 20u);
    EXPECT_EQ(t.aggregates[1].min_periods_or_default(), 1u);
    EXPECT_EQ(t.aggregates[2].fn, layout::AggregateFn::kFirst);
    EXPECT_EQ(t.aggregates[2].window_events, 5u);
    EXPECT_EQ(t.aggregates[2].min_periods_or_default(), 5u);  // pandas' default: the window
    EXPECT_EQ(t.aggregates[3].window_ms, 3'600'000);
    EXPECT_EQ(t.aggregates[3].ddof, 1u);
    const std::vector<layout::FieldSpec> all = t.all_fields();
    const layout::FieldSpec& seq = all[t.fields.size() + 1];
    EXPECT_EQ(seq.type, layout::FieldType::kFloat32Vector);
    EXPECT_EQ(seq.count, 20u);
    EXPECT_NO_THROW(layout::Schema{{t}}.validate());
  }
  // var and std keep meaning the population form (ddof 0) unless told.
  EXPECT_EQ(parse_config(v).tables[0].spec.aggregates[3].ddof, 0u);
  const std::string at = "tables[0].aggregates[0].";
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 0 events}"), at + "window",
               "0 events is outside 1..1024 events");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 1025 events}"), at + "window",
               "1025 events is outside 1..1024 events");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 10 evnts}"), at + "window",
               "expected a duration");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 10 events, min_periods: 11}"),
               at + "min_periods", "expected an integer in [1, 10]");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 10 events, resolution: 1s}"), at + "resolution",
               "a count window has no buckets");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 10 events, end: latest_event}"), at + "end",
               "always ends at the key's newest event");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 1h, min_periods: 2}"), at + "min_periods",
               "only count windows");
  expect_error(replace(v, clicks, "{name: clicks_1h, fn: count, window: 1h, ddof: 1}"), at + "ddof",
               "only variance and stddev");
  expect_error(replace(v, clicks, "{name: clicks_1h, source: amount, fn: var, window: 1h, ddof: 2}"), at + "ddof",
               "expected an integer in [0, 1]");
  expect_error(replace(v, clicks, "{name: clicks_1h, source: amount, fn: first, window: 1h}"), at + "window",
               "first needs a count window");
  expect_error(replace(v, clicks, "{name: clicks_1h, source: amount, fn: last_n}"), at + "n", "required");
  expect_error(replace(v, clicks, "{name: clicks_1h, source: amount, fn: last_n, n: 2000}"), at + "n",
               "expected an integer in [1, 1024]");
  expect_error(replace(v, clicks, "{name: clicks_1h, source: amount, fn: last_n, n: 5, window: 1h}"), at + "window",
               "takes n");
  expect_error(replace(v, clicks, "{name: clicks_1h, source: country, fn: distinct_count, window: 10 events}"),
               at + "window", "distinct_count takes a time window");
  expect_error(replace(v, clicks, "{name: clicks_1h, source: emb, fn: last_n, n: 4}"), at + "source",
               "\"emb\" is a vector field");
  // With only count windows the lateness may reach 30 days.
  EXPECT_NO_THROW(parse_config(
      replace(replace(replace(v, "horizon: 2h", "horizon: 20d"), "allowed_lateness: 1h", "allowed_lateness: 20d"),
              "fn: sum, window: 24h}", "fn: sum, window: 24 events}")));
  expect_error(replace(v, "allowed_lateness: 1h", "allowed_lateness: 20d"), "tables[0].allowed_lateness",
               "longer than the longest window");
}

TEST_F(ConfigTest, EventTimeBounds) {
  // Defaults: five minutes ahead, nothing before 2000-01-01.
  const Config c = parse_config(kValid);
  EXPECT_EQ(c.tables[0].event_time.max_future_skew_ms, 5 * 60 * 1000);
  EXPECT_EQ(c.tables[0].event_time.min_event_time_ms, 946684800000);
  EXPECT_EQ(c.decode_options()[1].event_time.min_event_time_ms, 946684800000);
  // A global section, and a table's keys over it one by one.
  const Config g = parse_config(replace(
      replace(kValid, "tables:\n", "event_time: {max_future_skew: 90s, min_event_time: 2020-02-29}\ntables:\n"),
      "    allow_unknown_fields: true\n", "    allow_unknown_fields: true\n    event_time: {max_future_skew: off}\n"));
  EXPECT_EQ(g.tables[0].event_time.max_future_skew_ms, 90'000);
  EXPECT_EQ(g.tables[0].event_time.min_event_time_ms, 1582934400000);
  EXPECT_EQ(g.tables[1].event_time.max_future_skew_ms, EventTimeBounds::kOff);
  EXPECT_EQ(g.tables[1].event_time.min_event_time_ms, 1582934400000);
  const Config zero = parse_config(
      replace(kValid, "    capacity: 1000\n", "    capacity: 1000\n    event_time: {min_event_time: 0}\n"));
  EXPECT_EQ(zero.tables[0].event_time.min_event_time_ms, 0);
  EXPECT_EQ(zero.tables[1].event_time.min_event_time_ms, 946684800000);

  const std::string table_key = "    capacity: 1000\n";
  expect_error(replace(kValid, table_key, table_key + "    event_time: {max_future_skew: soon}\n"),
               "tables[0].event_time.max_future_skew");
  expect_error(replace(kValid, table_key, table_key + "    event_time: {min_event_time: 2023-02-29}\n"),
               "tables[0].event_time.min_event_time");
  expect_error(replace(kValid, table_key, table_key + "    event_time: {min_event_time: yesterday}\n"),
               "tables[0].event_time.min_event_time");
  expect_error(replace(kValid, table_key, table_key + "    event_time: {min_event_time: 253402300800000}\n"),
               "tables[0].event_time.min_event_time");
  expect_error(replace(kValid, "tables:\n", "event_time: {skew: 5m}\ntables:\n"), "event_time.skew");
}

TEST_F(ConfigTest, TlsSettings) {
  std::string v = replace(kValid, "amqp://larder@broker.local:5673/prod", "amqps://larder@broker.local/");
  expect_error(v, "rabbitmq.tls.ca_file", "required");
  expect_error(v + "  tls: {ca_file: /nonexistent/ca.pem}\n", "rabbitmq.tls.ca_file", "cannot read");
  expect_error(v + "  tls: {ca_file: /etc/hostname, cert_file: /etc/hostname}\n", "rabbitmq.tls.key_file");
  const Config c = parse_config(v + "  tls: {ca_file: /etc/hostname}\n");
  EXPECT_TRUE(c.rabbitmq.url.tls);
  EXPECT_EQ(c.rabbitmq.url.port, 5671);
  EXPECT_TRUE(c.rabbitmq.tls.verify_peer);
  EXPECT_TRUE(c.rabbitmq.tls.verify_hostname);
  const Config unverified = parse_config(v + "  tls: {verify_peer: false}\n");
  EXPECT_FALSE(unverified.rabbitmq.tls.verify_hostname);
}

TEST_F(ConfigTest, StreamQueue) {
  const Config c = parse_config(replace(kValid, "    name: features.host1\n",
                                        "    name: features.host1\n    type: stream\n    stream_offset: 42\n"));
  EXPECT_EQ(c.rabbitmq.queue.type, QueueType::kStream);
  EXPECT_TRUE(c.rabbitmq.queue.stream_offset_is_number);
  EXPECT_EQ(c.rabbitmq.queue.stream_offset_number, 42);
}

// The shipped examples must stay valid.
TEST_F(ConfigTest, ExampleConfigsAreValid) {
  ::setenv("LARDER_AMQP_PASSWORD", "example", 0);
  for (const char* file : {"examples/sidecar.example.yaml", "examples/demo.yaml"}) {
    const std::string path = std::string(LARDER_SOURCE_DIR) + "/" + file;
    try {
      const Config c = load_config_file(path);
      EXPECT_FALSE(c.tables.empty()) << path;
    } catch (const ConfigError& e) {
      ADD_FAILURE() << e.what();
    }
  }
}

TEST_F(ConfigTest, YamlSyntaxErrorNamesTheLine) {
  try {
    parse_config("segment: {name: x\ntables: [\n", "my.yaml");
    ADD_FAILURE();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("my.yaml: line"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace larder::sidecar

namespace larder::sidecar {
namespace {

const char* kKafkaOnly = R"(
segment:
  name: features
tables:
  - name: users
    capacity: 1000
    fields:
      - {name: age, type: int64}
kafka:
  bootstrap_servers: "k1:9092,k2:9092"
  topics: [events, prices]
)";

TEST(KafkaConfigTest, AKafkaBlockAloneIsASourceWithDefaults) {
  const Config c = parse_config(kKafkaOnly);
  EXPECT_FALSE(c.rabbitmq_enabled);
  ASSERT_TRUE(c.kafka_enabled);
  EXPECT_EQ(c.kafka.bootstrap_servers, "k1:9092,k2:9092");
  EXPECT_EQ(c.kafka.topics, (std::vector<std::string>{"events", "prices"}));
  EXPECT_EQ(c.kafka.start, KafkaStart::kStored);
  EXPECT_EQ(c.kafka.partitions_per_topic, 16u);
  // Per host and segment: every host reads every partition.
  EXPECT_EQ(c.kafka.group_id.rfind("larder-", 0), 0u);
  EXPECT_NE(c.kafka.group_id.find("-features"), std::string::npos) << c.kafka.group_id;
}

TEST(KafkaConfigTest, BothSourcesAndPassThroughSettings) {
  ::setenv("LARDER_TEST_KAFKA_PASSWORD", "pw", 1);
  const std::string avsc = "/tmp/larder_kafka_config_test.avsc";  // read at start, not parsed here
  std::ofstream(avsc) << R"({"type": "record", "name": "U", "fields": []})";
  std::string yaml = std::string(kKafkaOnly) + R"(  start: latest
  group_id: g1
  format: {type: avro, schema: /tmp/larder_kafka_config_test.avsc, confluent: {schema_id: 7}}
  properties: {security.protocol: SASL_SSL, sasl.mechanism: SCRAM-SHA-512, sasl.username: larder}
  sasl_password_env: LARDER_TEST_KAFKA_PASSWORD
rabbitmq:
  url: amqp://larder@broker.local:5673/prod
  password_env: LARDER_TEST_KAFKA_PASSWORD
  queue: {name: q, type: stream}
)";
  const Config c = parse_config(yaml);
  EXPECT_TRUE(c.rabbitmq_enabled);
  EXPECT_TRUE(c.kafka_enabled);
  EXPECT_EQ(c.kafka.start, KafkaStart::kLatest);
  EXPECT_EQ(c.kafka.group_id, "g1");
  ASSERT_EQ(c.kafka.properties.size(), 3u);
  EXPECT_EQ(c.kafka.properties[0], (std::pair<std::string, std::string>{"security.protocol", "SASL_SSL"}));
  EXPECT_EQ(c.kafka.sasl_password, "pw");
  // Each source has its own format: the Kafka records are Avro, the queue's bodies JSON.
  EXPECT_EQ(c.kafka.format.type, MessageFormat::kAvro);
  EXPECT_EQ(c.kafka.format.confluent_schema_id, std::optional<uint32_t>(7));
  EXPECT_EQ(c.rabbitmq.format.type, MessageFormat::kJson);
  std::remove(avsc.c_str());
}

TEST(KafkaConfigTest, ErrorsNameTheKey) {
  auto expect_error = [](const std::string& yaml, const std::string& path, const std::string& fragment) {
    try {
      parse_config(yaml);
      ADD_FAILURE() << "accepted:\n" << yaml;
    } catch (const ConfigError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
      EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
    }
  };
  const std::string base = kKafkaOnly;
  expect_error(base + "  start: newest\n", "kafka.start", "expected stored, earliest or latest");
  expect_error(base + "  format: {type: xml}\n", "kafka.format.type", "unknown format \"xml\"");
  expect_error(base + "  properties: {sasl.password: x}\n", "kafka.properties.sasl.password", "no secrets");
  expect_error(base + "  properties: {enable.auto.commit: 'true'}\n", "kafka.properties.enable.auto.commit",
               "set by Larder");
  expect_error(base + "  partitions_per_topic: 40\n", "kafka.partitions_per_topic", "the segment holds 64");
  expect_error(base + "  sasl_password_env: LARDER_TEST_UNSET_VARIABLE_XYZ\n", "kafka.sasl_password_env", "is not set");
  std::string regex = base;
  regex.replace(regex.find("[events, prices]"), 16, "[\"^events\\\\.(\", prices]");
  expect_error(regex, "kafka.topics[0]", "invalid regex \"^events\\.(\"");
  expect_error(base + "  max_topics: 2\n", "kafka.max_topics", "only with a regex");
  std::string empty = base;
  empty.replace(empty.find("[events, prices]"), 16, "[]");
  expect_error(empty, "kafka.topics", "at least one topic");
}

// A '^' entry is a regex (librdkafka's convention): the topics then get
// their ranges from the topic table, max_topics of them.
TEST(KafkaConfigTest, RegexTopicsReserveMaxTopicsRanges) {
  std::string yaml = kKafkaOnly;
  yaml.replace(yaml.find("[events, prices]"), 16, "[\"^events\\\\..*\", prices]");
  const Config c = parse_config(yaml + "  partitions_per_topic: 4\n  max_topics: 5\n  metadata_interval: 250ms\n");
  EXPECT_TRUE(c.kafka.regex);
  EXPECT_EQ(c.kafka.topics, (std::vector<std::string>{"^events\\..*", "prices"}));
  EXPECT_EQ(c.kafka.max_topics, 5u);
  EXPECT_EQ(c.kafka.topic_ranges(), 5u);
  EXPECT_EQ(c.kafka.metadata_interval_ms, 250);
  // Default: 4 ranges (64 stored positions at the default 16 per topic).
  const Config d = parse_config(yaml);
  EXPECT_EQ(d.kafka.max_topics, 4u);
  EXPECT_EQ(d.kafka.metadata_interval_ms, 30'000);
  // Beside a RabbitMQ stream (one stored position) and a polled table, the
  // default takes the ranges that still fit: 3 of 16.
  ::setenv("LARDER_TEST_KAFKA_PASSWORD", "pw", 1);
  const Config beside = parse_config(yaml + R"(rabbitmq:
  url: amqp://broker.local:5672/prod
  password_env: LARDER_TEST_KAFKA_PASSWORD
  queue: {name: q, type: stream}
databases:
  - driver: postgres
    url: postgresql://larder@db.local:5432/app
    password_env: LARDER_TEST_KAFKA_PASSWORD
    tables:
      - {table: users, query: "SELECT id, age, updated_at FROM users", key: id, cursor: updated_at, tie: id, columns: {age: age}}
)");
  EXPECT_EQ(beside.kafka.max_topics, 3u);
  // Without a regex nothing changes: one range per listed topic.
  const Config plain = parse_config(kKafkaOnly);
  EXPECT_FALSE(plain.kafka.regex);
  EXPECT_EQ(plain.kafka.topic_ranges(), 2u);

  auto expect_error = [](const std::string& bad, const std::string& path, const std::string& fragment) {
    try {
      parse_config(bad);
      ADD_FAILURE() << "accepted:\n" << bad;
    } catch (const ConfigError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
      EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
    }
  };
  expect_error(yaml + "  max_topics: 5\n", "kafka.max_topics", "need 80 stored positions; the segment holds 64");
  expect_error(yaml + "  max_topics: 0\n", "kafka.max_topics", "");
  // Given, it is kept: 4 x 16 and the stream's one are too many.
  expect_error(yaml +
                   "  max_topics: 4\nrabbitmq: {url: \"amqp://broker.local:5672/prod\", password_env: "
                   "LARDER_TEST_KAFKA_PASSWORD, queue: {name: q, type: stream}}\n",
               "kafka.max_topics", "+ 1 for the RabbitMQ stream need 65 stored positions");
  std::string two_named = kKafkaOnly;
  two_named.replace(two_named.find("[events, prices]"), 16, "[a, b, \"^c.*\"]");
  expect_error(two_named + "  max_topics: 1\n", "kafka.max_topics", "2 topics are listed by name");
  expect_error(yaml + "  metadata_interval: 1ms\n", "kafka.metadata_interval", "at least 10ms");
  std::string bad = kKafkaOnly;
  bad.replace(bad.find("[events, prices]"), 16, "[\"^[a-\"]");
  expect_error(bad, "kafka.topics[0]", "invalid regex");
}

}  // namespace
}  // namespace larder::sidecar

namespace larder::sidecar {
namespace {

const char* kDatabases = R"(
segment: {name: features}
tables:
  - name: users
    capacity: 1000
    fields:
      - {name: age, type: int64}
databases:
  - driver: postgres
    url: postgresql://larder@db.local:5432/app
    password_env: LARDER_TEST_CONFIG_PASSWORD
    poll_interval: 250ms
    tables:
      - table: users
        query: SELECT id, age, updated_at FROM users;
        key: id
        cursor: updated_at
        tie: id
        columns: {age: age}
)";

class DatabaseConfigTest : public ConfigTest {};

TEST_F(DatabaseConfigTest, DatabasesAreSourcesWithTheirDefaults) {
  const Config c = parse_config(kDatabases);
  EXPECT_FALSE(c.rabbitmq_enabled);  // the databases are the only source
  ASSERT_EQ(c.databases.size(), 1u);
  const DatabaseConfig& d = c.databases[0];
  EXPECT_EQ(d.driver, SqlDriver::kPostgres);
  EXPECT_EQ(d.password, "s3cret");
  EXPECT_EQ(d.poll_interval_ms, 250);
  EXPECT_EQ(d.settle_ms, 5000);
  ASSERT_EQ(d.tables.size(), 1u);
  EXPECT_EQ(d.tables[0].query, "SELECT id, age, updated_at FROM users");  // the ';' is dropped
  EXPECT_EQ(d.tables[0].page_rows, 1000u);
  EXPECT_EQ(d.tables[0].tie_column, "id");
  ASSERT_EQ(d.tables[0].columns.size(), 1u);
}

TEST_F(DatabaseConfigTest, ErrorsNameTheirKey) {
  const std::string v = kDatabases;
  expect_error(replace(v, "driver: postgres", "driver: oracle"), "databases[0].driver", "unknown driver \"oracle\"");
  expect_error(replace(v, "larder@db.local", "larder:pw@db.local"), "databases[0].url", "no password in the url");
  expect_error(replace(v, "table: users\n        query", "table: people\n        query"),
               "databases[0].tables[0].table", "no table \"people\"");
  expect_error(replace(v, "FROM users;", "FROM users; DROP TABLE users"), "databases[0].tables[0].query", "one SELECT");
  expect_error(replace(v, "        cursor: updated_at\n", ""), "databases[0].tables[0].cursor", "required");
  expect_error(replace(v, "poll_interval: 250ms", "poll_interval: soon"), "databases[0].poll_interval");
  expect_error(replace(v, "columns: {age: age}", "columns: {age: age, years: age}"),
               "databases[0].tables[0].columns.years", "fed by two columns");
}

}  // namespace
}  // namespace larder::sidecar

// Unit tests of config loading: defaults, conversion to a Schema, and that
// every error message starts with the key path it is about. No broker.
#include "config.h"

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

TEST_F(ConfigTest, PasswordFile) {
  const std::string file = ::testing::TempDir() + "/larder-config-test-password";
  std::ofstream(file) << "from-file\n";
  const Config c = parse_config(replace(kValid, "password_env: LARDER_TEST_CONFIG_PASSWORD", "password_file: " + file));
  EXPECT_EQ(c.rabbitmq.password, "from-file");
  std::remove(file.c_str());
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

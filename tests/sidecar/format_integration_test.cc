// End-to-end tests of the Protocol Buffers and Avro formats (CTest label
// "integration"): the real larder-sidecar with `rabbitmq.format` set,
// consuming from the real broker. Bodies are encoded by libprotobuf
// (DynamicMessage from the same .proto), by the Avro encoder of the format
// tests, and by the example producer examples/protobuf_producer.py; the
// segment must equal an oracle of what was published, and malformed bodies
// must be dead-lettered with their reason.
#include <fmt/format.h>
#include <google/protobuf/compiler/importer.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <random>

#include "harness.h"
#include "larder/client.h"
#include "sidecar/format_test_schema.h"

namespace larder::test {
namespace {

using namespace std::chrono_literals;
namespace pb = google::protobuf;

const std::string kFormats = std::string(LARDER_SOURCE_DIR) + "/tests/sidecar/formats";

// The users table's fields as Protobuf text format.
std::string features_text(const Features& f) {
  return fmt::format(R"(n: {} x: {} f: {} flag: {} s: "{}" v: [{}, {}, {}, {}])", f.n, f.x, f.f,
                     f.flag ? "true" : "false", f.s, f.v[0], f.v[1], f.v[2], f.v[3]);
}

class ProtoBatches {
 public:
  ProtoBatches() {
    tree_.MapPath("", kFormats);
    importer_ = std::make_unique<pb::compiler::Importer>(&tree_, nullptr);
    if (importer_->Import("it_users.proto") == nullptr) throw std::runtime_error("it_users.proto");
  }
  std::string encode(const std::string& text) {
    const pb::Descriptor* d = importer_->pool()->FindMessageTypeByName("larder.it.UserBatch");
    std::unique_ptr<pb::Message> m(factory_.GetPrototype(d)->New());
    if (!pb::TextFormat::ParseFromString(text, m.get())) throw std::runtime_error("bad text: " + text);
    return m->SerializeAsString();
  }

 private:
  pb::compiler::DiskSourceTree tree_;
  std::unique_ptr<pb::compiler::Importer> importer_;
  pb::DynamicMessageFactory factory_;
};

void avro_update(sidecar::format_test::AvroWriter& w, const std::string& key, int64_t t, const Features* f) {
  w.str("users").str(key).lng(t);
  if (f == nullptr) {
    w.some().str("delete").null().null().null().null().null().null().null();  // op, id, then six null fields
    return;
  }
  w.null().null();  // op, id
  w.some().lng(f->n).some().dbl(f->x).some().flt(f->f).some().boolean(f->flag).some().str(f->s);
  w.some().lng(4);
  for (float x : f->v) w.flt(x);
  w.lng(0);
}

class FormatIntegrationTest : public SidecarTestBase {
 protected:
  std::string config(const std::string& format) const {
    return fmt::format(R"(segment: {{name: {name}}}
{tables}rabbitmq:
  url: {url}
  password_env: LARDER_IT_PASSWORD
  queue: {{name: {name}}}
  bindings: [{{exchange: {name}, routing_keys: ["users.#"]}}]
  reconnect: {{base_s: 0.2, cap_s: 2}}
  format: {format}
logging: {{level: debug}}
metrics: {{listen: "127.0.0.1:0"}}
)",
                       fmt::arg("name", name_), fmt::arg("tables", users_table_yaml()), fmt::arg("url", env_.amqp_url),
                       fmt::arg("format", format));
  }

  void start(const std::string& yaml) {
    sidecar_ = std::make_unique<SidecarProcess>(yaml, name_, env_);
    sidecar_->start();
    ASSERT_TRUE(wait_until(
        [&] {
          const auto q = client_->inspect(name_);
          return q && q->second >= 1;
        },
        60s))
        << sidecar_->log_tail();
  }

  void expect_converges(const Oracle& oracle) {
    std::string diff;
    EXPECT_TRUE(wait_until(
        [&] {
          diff = compare_segment(name_, oracle);
          return diff.empty();
        },
        60s))
        << diff;
  }

  // The dead letters, once `count` have arrived: reason by body.
  std::map<std::string, std::string> dead_letters(size_t count) {
    std::map<std::string, std::string> out;
    wait_until(
        [&] {
          for (auto& g : client_->drain(name_ + ".dlq")) out[g.body] = g.headers["x-larder-reason"];
          return out.size() >= count;
        },
        60s);
    return out;
  }
};

TEST_F(FormatIntegrationTest, ProtobufBatchesApplyAndMalformedOnesAreDeadLettered) {
  if (!load_broker("pb", false, false)) return;
  start(config(fmt::format("{{type: protobuf, proto: {}/it_users.proto, message: larder.it.UserBatch}}", kFormats)));
  ProtoBatches proto;
  Oracle oracle;
  std::mt19937 rng(11);
  std::vector<std::string> bodies;
  int64_t t = 1'700'000'000'000;
  for (int m = 0; m < 200; ++m) {
    std::string text;
    const int batch = std::uniform_int_distribution<int>(1, 30)(rng);
    for (int i = 0; i < batch; ++i) {
      const std::string key = fmt::format("u{}", std::uniform_int_distribution<int>(0, 99)(rng));
      if (++t % 17 == 0) {
        oracle.remove(key, t);
        text += fmt::format(R"(updates {{ table: "users" key: "{}" event_time: {} op: "delete" }} )", key, t);
      } else {
        const Features f = Features::from_seed(t);
        oracle.upsert(key, t, f);
        text += fmt::format(R"(updates {{ table: "users" key: "{}" event_time: {} fields {{ {} }} }} )", key, t,
                            features_text(f));
      }
    }
    bodies.push_back(proto.encode(text));
  }
  const std::string good = proto.encode(R"(updates { table: "users" key: "bad" event_time: 5 fields { n: 1 } })");
  const std::string truncated = good.substr(0, good.size() - 2);
  const std::string long_string =
      proto.encode(R"(updates { table: "users" key: "bad" event_time: 5 fields { s: "seventeen bytes!!" } })");
  bodies.insert(bodies.begin() + 50, truncated);
  bodies.insert(bodies.begin() + 100, long_string);
  client_->publish(name_, "users.1", bodies);
  expect_converges(oracle);
  const auto dead = dead_letters(2);
  ASSERT_EQ(dead.size(), 2u);
  EXPECT_EQ(dead.at(truncated), "bad_protobuf");
  EXPECT_EQ(dead.at(long_string), "string_too_long");
  EXPECT_EQ(Segment::open(name_).info().messages_rejected, 2u);
  EXPECT_EQ(sidecar_->stop(), 0);
}

TEST_F(FormatIntegrationTest, AvroWithConfluentHeaderAppliesAndRefusesOtherSchemaIds) {
  if (!load_broker("avro", false, false)) return;
  start(config(fmt::format("{{type: avro, schema: {}/it_users.avsc, confluent: {{schema_id: 42}}}}", kFormats)));
  Oracle oracle;
  std::vector<std::string> bodies;
  int64_t t = 1'700'000'000'000;
  auto header = [](uint32_t id) {
    return std::string{'\0', static_cast<char>(id >> 24), static_cast<char>(id >> 16), static_cast<char>(id >> 8),
                       static_cast<char>(id)};
  };
  for (int m = 0; m < 200; ++m) {
    sidecar::format_test::AvroWriter w;
    const int batch = 1 + m % 20;
    w.lng(batch);
    for (int i = 0; i < batch; ++i) {
      const std::string key = fmt::format("u{}", (m * 7 + i * 13) % 100);
      if (++t % 19 == 0) {
        oracle.remove(key, t);
        avro_update(w, key, t, nullptr);
      } else {
        const Features f = Features::from_seed(t);
        oracle.upsert(key, t, f);
        avro_update(w, key, t, &f);
      }
    }
    w.lng(0);
    bodies.push_back(header(42) + w.out);
  }
  const std::string other_id = header(43) + bodies[0].substr(5);
  const std::string truncated = bodies[1].substr(0, bodies[1].size() - 3);
  bodies.push_back(other_id);
  bodies.push_back(truncated);
  client_->publish(name_, "users.1", bodies);
  expect_converges(oracle);
  const auto dead = dead_letters(2);
  ASSERT_EQ(dead.size(), 2u);
  EXPECT_EQ(dead.at(other_id), "unknown_schema_id");
  EXPECT_EQ(dead.at(truncated), "bad_avro");
  EXPECT_EQ(sidecar_->stop(), 0);
}

// examples/protobuf_producer.py publishes what the test writes as JSON lines;
// the sidecar decodes its Protobuf into the same rows.
TEST_F(FormatIntegrationTest, PythonProtobufProducerExample) {
  if (!load_broker("pypb", false, false)) return;
  const std::string proto = kFormats + "/it_users.proto";
  start(config(fmt::format("{{type: protobuf, proto: {}, message: larder.it.UserBatch}}", proto)));
  Oracle oracle;
  const std::string input = ::testing::TempDir() + "/" + name_ + ".jsonl";
  {
    std::ofstream out(input);
    for (int64_t t = 1'700'000'000'000; t < 1'700'000'000'500; ++t) {
      const std::string key = fmt::format("u{}", t % 37);
      const Features f = Features::from_seed(t);
      oracle.upsert(key, t, f);
      out << upsert_json("users", key, t, f) << "\n";
    }
  }
  ::setenv("LARDER_IT_PRODUCER_PASSWORD", env_.password.c_str(), 1);
  const std::string cmd = fmt::format(
      "/usr/bin/python3 {}/examples/protobuf_producer.py --url '{}' --password-env LARDER_IT_PRODUCER_PASSWORD "
      "--exchange {} --routing-key users.1 --proto {} --message larder.it.UserBatch --batch 40 --input {}",
      LARDER_SOURCE_DIR, env_.amqp_url, name_, proto, input);
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  expect_converges(oracle);
  EXPECT_EQ(Segment::open(name_).info().messages_rejected, 0u);
  EXPECT_EQ(sidecar_->stop(), 0);
}

}  // namespace
}  // namespace larder::test

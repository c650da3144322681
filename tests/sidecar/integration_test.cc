// End-to-end tests of larder-sidecar against a real RabbitMQ (CTest label
// "integration"). Each test starts the real binary as a child process with its
// own segment, queue and exchange, publishes with publisher confirms, and
// compares the segment (read through the client library) with an oracle of
// what was published. The broker comes from scripts/broker.sh (see
// harness.h); without it every test fails with instructions.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <thread>

#include "harness.h"
#include "larder/client.h"
#include "larder/writer/writer.h"
#include "upstream_hold_proxy.h"

namespace larder::test {
namespace {

using namespace std::chrono_literals;

class SidecarIntegrationTest : public SidecarTestBase {
 protected:
  // Loads the broker environment; false (with a recorded failure) if absent.
  bool setup(bool need_tls = false, bool need_ctl = false) { return load_broker("", need_tls, need_ctl); }

  std::string config(const std::string& queue_type = "quorum", const std::string& url = "",
                     const std::string& extra = "") const {
    return fmt::format(R"(segment: {{name: {name}}}
{tables}rabbitmq:
  url: {url}
  password_env: LARDER_IT_PASSWORD
  queue: {{name: {name}, type: {type}}}
  bindings: [{{exchange: {name}, routing_keys: ["users.#"]}}]
  prefetch: {prefetch}
  heartbeat_s: 5
  reconnect: {{base_s: 0.2, cap_s: 2}}
  drain_timeout_s: 5
{extra}logging: {{level: debug}}
metrics: {{listen: "127.0.0.1:0"}}
)",
                       fmt::arg("name", name_), fmt::arg("tables", users_table_yaml()),
                       fmt::arg("url", url.empty() ? env_.amqp_url : url), fmt::arg("type", queue_type),
                       fmt::arg("extra", extra), fmt::arg("prefetch", prefetch_));
  }

  void start_sidecar(const std::string& yaml) {
    sidecar_.reset();  // a previous (stopped or killed) process and its files
    sidecar_ = std::make_unique<SidecarProcess>(yaml, name_, env_);
    sidecar_->start();
    wait_for_consumer();
  }

  void wait_for_consumer(std::chrono::milliseconds timeout = 60s) {
    const bool ready = wait_until(
        [&] {
          const auto q = client_->inspect(name_);
          return q && q->second >= 1;
        },
        timeout);
    ASSERT_TRUE(ready) << "the sidecar did not start consuming " << name_ << "\n" << sidecar_->log_tail();
  }

  void publish(const std::vector<std::string>& bodies) { client_->publish(name_, "users.1", bodies); }

  void expect_converges(const Oracle& oracle, std::chrono::milliseconds timeout = 60s) {
    std::string diff;
    const bool ok = wait_until(
        [&] {
          diff = compare_segment(name_, oracle);
          return diff.empty();
        },
        timeout);
    EXPECT_TRUE(ok) << diff;
  }

  SegmentInfo info() { return Segment::open(name_).info(); }

  int prefetch_ = 200;
};

// Builds `messages` messages of random batch sizes over `keys` keys with
// increasing event times, recording them in the oracle and adding the number
// of updates to *updates when given.
std::vector<std::string> make_stream(Oracle& oracle, int keys, int messages, int max_batch, int64_t t0, uint32_t seed,
                                     uint64_t* updates = nullptr) {
  std::mt19937 rng(seed);
  std::vector<std::string> bodies;
  int64_t t = t0;
  for (int m = 0; m < messages; ++m) {
    const int batch = std::uniform_int_distribution<int>(1, max_batch)(rng);
    std::string body = batch > 1 ? "[" : "";
    for (int i = 0; i < batch; ++i) {
      const std::string key = fmt::format("u{}", std::uniform_int_distribution<int>(0, keys - 1)(rng));
      const Features f = Features::from_seed(++t);
      oracle.upsert(key, t, f);
      if (updates != nullptr) ++*updates;
      if (i > 0) body += ",";
      body += upsert_json("users", key, t, f);
    }
    if (batch > 1) body += "]";
    bodies.push_back(std::move(body));
  }
  return bodies;
}

TEST_F(SidecarIntegrationTest, HappyPathWithBatchesQuorum) {
  if (!setup()) return;
  start_sidecar(config("quorum"));
  Oracle oracle;
  publish(make_stream(oracle, 300, 600, 40, 1'700'000'000'000, 1));
  expect_converges(oracle);
  const SegmentInfo i = info();
  EXPECT_EQ(i.connection, ConnectionState::kConnected);
  EXPECT_EQ(i.messages_rejected, 0u);
  EXPECT_GT(i.writer_pid, 0u);
  EXPECT_EQ(sidecar_->stop(), 0) << "SIGTERM must drain and exit 0";
  EXPECT_EQ(info().connection, ConnectionState::kStopped);
  const auto q = client_->inspect(name_);
  ASSERT_TRUE(q);
  EXPECT_EQ(q->first, 0u) << "everything applied was acked";
}

TEST_F(SidecarIntegrationTest, HappyPathWithBatchesClassic) {
  if (!setup()) return;
  start_sidecar(config("classic"));
  Oracle oracle;
  publish(make_stream(oracle, 200, 400, 20, 1'700'000'000'000, 2));
  expect_converges(oracle);
  EXPECT_EQ(sidecar_->stop(), 0);
}

TEST_F(SidecarIntegrationTest, OutOfOrderAndDuplicateEventsConvergeToLastWriteWins) {
  if (!setup()) return;
  start_sidecar(config());
  std::mt19937 rng(3);
  Oracle oracle;
  std::vector<std::string> updates;
  for (int k = 0; k < 100; ++k) {
    const std::string key = fmt::format("u{}", k);
    for (int version = 0; version < 5; ++version) {
      const int64_t t = 1'700'000'000'000 + std::uniform_int_distribution<int64_t>(0, 1'000'000)(rng);
      const Features f = Features::from_seed(t);  // same event time, same values: duplicates are exact
      oracle.upsert(key, t, f);
      const int copies = 1 + std::uniform_int_distribution<int>(0, 2)(rng);
      for (int c = 0; c < copies; ++c) updates.push_back(upsert_json("users", key, t, f));
    }
  }
  std::shuffle(updates.begin(), updates.end(), rng);
  std::vector<std::string> bodies;
  for (size_t i = 0; i < updates.size();) {
    const size_t n = std::min<size_t>(updates.size() - i, std::uniform_int_distribution<size_t>(1, 8)(rng));
    std::string body = "[";
    for (size_t j = 0; j < n; ++j) body += (j ? "," : "") + updates[i + j];
    bodies.push_back(body + "]");
    i += n;
  }
  publish(bodies);
  expect_converges(oracle);
}

TEST_F(SidecarIntegrationTest, DeletesAndLateUpserts) {
  if (!setup()) return;
  start_sidecar(config());
  Oracle oracle;
  std::vector<std::string> bodies;
  const int64_t t0 = 1'700'000'000'000;
  for (int k = 0; k < 100; ++k) {
    const std::string key = fmt::format("u{}", k);
    oracle.upsert(key, t0 + k, Features::from_seed(k));
    bodies.push_back(upsert_json("users", key, t0 + k, Features::from_seed(k)));
  }
  publish(bodies);
  bodies.clear();
  for (int k = 0; k < 100; k += 2) {
    const std::string key = fmt::format("u{}", k);
    oracle.remove(key, t0 + 1000 + k);
    bodies.push_back(delete_json("users", key, t0 + 1000 + k));
    // A late upsert older than the delete stays deleted.
    oracle.upsert(key, t0 + 500, Features::from_seed(-k));
    bodies.push_back(upsert_json("users", key, t0 + 500, Features::from_seed(-k)));
  }
  for (int k = 0; k < 20; k += 2) {  // a newer upsert revives a deleted key
    const std::string key = fmt::format("u{}", k);
    oracle.upsert(key, t0 + 5000 + k, Features::from_seed(k + 7));
    bodies.push_back(upsert_json("users", key, t0 + 5000 + k, Features::from_seed(k + 7)));
  }
  bodies.push_back(delete_json("users", "never-written", t0));
  oracle.remove("never-written", t0);
  publish(bodies);
  expect_converges(oracle);
}

TEST_F(SidecarIntegrationTest, MalformedMessagesAreDeadLetteredWhileGoodOnesApply) {
  if (!setup()) return;
  start_sidecar(config());
  const std::vector<std::string> malformed = {
      "not json",
      "42",
      "[]",
      R"({"key":"k","event_time":1,"fields":{}})",
      R"({"table":7,"key":"k","event_time":1,"fields":{}})",
      R"({"table":"users","table":"users","key":"k","event_time":1,"fields":{}})",
      R"({"table":"nope","key":"k","event_time":1,"fields":{}})",
      R"({"table":"users","key":"k","event_time":1,"fields":{"nope":1}})",
      R"({"table":"users","key":"k","event_time":1,"fields":{"n":"x"}})",
      R"({"table":"users","key":"k","event_time":1,"fields":{"n":9223372036854775808}})",
      R"({"table":"users","key":"k","event_time":1,"fields":{"x":1e999}})",
      R"({"table":"users","key":"","event_time":1,"fields":{}})",
      R"({"table":"users","key":"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk","event_time":1,"fields":{}})",
      R"({"table":"users","key":"k","event_time":1,"fields":{"s":"seventeen bytes!!"}})",
      R"({"table":"users","key":"k","event_time":1,"fields":{"v":[1,2,3]}})",
      R"({"table":"users","key":"k","event_time":"yesterday","fields":{}})",
      R"({"table":"users","key":"k","event_time":1,"op":"merge","fields":{}})",
      R"([{"table":"users","key":"ok","event_time":1,"fields":{"n":1}},{"table":"users","key":"k","event_time":1,"fields":{"n":1.5}}])",
  };
  Oracle oracle;
  std::vector<std::string> bodies;
  int64_t t = 1'700'000'000'000;
  for (size_t i = 0; i < malformed.size(); ++i) {
    const std::string key = fmt::format("good{}", i);
    ++t;
    oracle.upsert(key, t, Features::from_seed(t));
    bodies.push_back(upsert_json("users", key, t, Features::from_seed(t)));
    bodies.push_back(malformed[i]);
  }
  publish(bodies);
  expect_converges(oracle);

  std::vector<AmqpClient::Got> dead;
  wait_until(
      [&] {
        for (auto& g : client_->drain(name_ + ".dlq")) dead.push_back(std::move(g));
        return dead.size() >= malformed.size();
      },
      60s);
  ASSERT_EQ(dead.size(), malformed.size());
  // Every message is processed now (the batch with "ok" is dead-lettered):
  // "ok" came in a batch with a bad update, and nothing of it applied.
  Oracle absent;
  absent.remove("ok", 0);
  EXPECT_EQ(compare_segment(name_, absent), "");
  std::multiset<std::string> want(malformed.begin(), malformed.end()), got;
  for (const auto& d : dead) {
    got.insert(d.body);
    EXPECT_TRUE(d.headers.count("x-larder-reason")) << d.body << ": published by the sidecar, with its reason";
    EXPECT_FALSE(d.has_x_death) << d.body << ": the sidecar's copy, not a broker dead letter";
  }
  EXPECT_EQ(got, want);
  EXPECT_TRUE(wait_until([&] { return info().messages_rejected == malformed.size(); }, 60s))
      << "segment counts " << info().messages_rejected << " rejects";
  const auto q = client_->inspect(name_);
  ASSERT_TRUE(q);
  EXPECT_EQ(q->first, 0u) << "no message is left looping in the queue";
}

TEST_F(SidecarIntegrationTest, BrokerRestartedMidStream) {
  if (!setup(false, true)) return;
  prefetch_ = 2;  // slow consumption down so that the broker stops mid-backlog
  start_sidecar(config());
  Oracle oracle;
  // The stream is two parts; the broker stops after the sidecar applied some
  // of the first and before the second is published: certainly mid-stream.
  uint64_t first_updates = 0, second_updates = 0;
  publish(make_stream(oracle, 500, 4000, 10, 1'700'000'000'000, 4, &first_updates));
  ASSERT_TRUE(wait_until([&] { return info().updates_applied > 0; }, 60s)) << "the sidecar applied nothing";
  ASSERT_TRUE(env_.ctl("stop_app")) << "broker stop_app failed";
  const uint64_t applied_at_stop = info().updates_applied;
  std::cerr << "updates applied when the broker stopped: " << applied_at_stop << "\n";
  EXPECT_TRUE(wait_until([&] { return info().connection != ConnectionState::kConnected; }, 60s))
      << "the segment header should show the lost connection";
  // The sidecar noticed and began its reconnect loop before the broker
  // returns (the event, not a pause).
  EXPECT_TRUE(wait_until([&] { return sidecar_->log_count("reconnecting in") >= 1; }, 60s));
  ASSERT_TRUE(env_.ctl("start_app")) << "broker start_app failed";
  ASSERT_TRUE(reconnect_client(30s)) << "no broker connection for the test client";
  wait_for_consumer(30s);
  publish(make_stream(oracle, 500, 500, 10, 1'800'000'000'000, 5, &second_updates));
  EXPECT_LT(applied_at_stop, first_updates + second_updates);
  expect_converges(oracle, 60s);
  EXPECT_EQ(info().connection, ConnectionState::kConnected);
  EXPECT_GE(sidecar_->log_count("reconnecting in"), 1u);
  EXPECT_EQ(sidecar_->log_count("PRECONDITION_FAILED"), 0u) << "no ack of an old connection's tag";
  EXPECT_EQ(sidecar_->stop(), 0);
}

// The kill lands mid-stream with applied-but-unacked messages, certainly.
// The first part of the stream is applied and acked (the sidecar stops
// cleanly); the next sidecar runs through a proxy whose upstream is held
// before the second part is published, so every message it applies stays
// unacked at the broker and is redelivered after the kill; the last part is
// published only after the restart.
TEST_F(SidecarIntegrationTest, SidecarKilledMidStreamAndRestarted) {
  if (!setup()) return;
  start_sidecar(config());
  Oracle oracle;
  uint64_t first_updates = 0, held_updates = 0, last_updates = 0;
  publish(make_stream(oracle, 1000, 2000, 20, 1'700'000'000'000, 6, &first_updates));
  // Every update has a newer event time than the last: each one applies.
  ASSERT_TRUE(wait_until([&] { return info().updates_applied == first_updates; }, 60s))
      << "applied " << info().updates_applied << " of " << first_updates;
  ASSERT_EQ(sidecar_->stop(), 0);  // everything applied is acked
  wait_for_no_consumer();

  auto proxy = make_hold_proxy(env_.amqp_url);
  start_sidecar(config("quorum", proxy->url_through(env_.amqp_url)));
  proxy->hold_upstream();
  const uint64_t applied_at_hold = info().updates_applied;
  const std::vector<std::string> held = make_stream(oracle, 1000, 2000, 20, 1'750'000'000'000, 7, &held_updates);
  publish(held);
  ASSERT_TRUE(wait_until([&] { return info().updates_applied > applied_at_hold; }, 60s))
      << "nothing applied after the hold\n"
      << sidecar_->log_tail();
  sidecar_->kill9();
  proxy->cut();  // the broker sees the connection close and requeues
  wait_for_no_consumer();
  const uint64_t applied_before = info().updates_applied;
  std::cerr << "updates applied when the sidecar was killed: " << applied_before << " of "
            << first_updates + held_updates << "\n";
  // At most a prefetch window of the held part was delivered.
  EXPECT_LT(applied_before - applied_at_hold, held_updates) << "the kill came after the stream";

  start_sidecar(config());
  publish(make_stream(oracle, 1000, 200, 20, 1'800'000'000'000, 8, &last_updates));
  expect_converges(oracle, 60s);
  const SegmentInfo i = info();
  EXPECT_GE(i.writer_sessions, 3u) << "the restarts reopened the same segment";
  // Counters kept: everything before the kill, then at least every update
  // the sidecar had not applied. A reset counter would hold at most the
  // redelivered window plus the rest, far fewer.
  EXPECT_GE(i.updates_applied, first_updates + held_updates + last_updates) << "reopened warm: counters kept";
  EXPECT_EQ(sidecar_->stop(), 0);
}

TEST_F(SidecarIntegrationTest, QueueDeletedUnderTheSidecarIsRedeclared) {
  if (!setup()) return;
  start_sidecar(config());
  Oracle oracle;
  publish(make_stream(oracle, 50, 50, 5, 1'700'000'000'000, 8));
  expect_converges(oracle);
  client_->delete_queue(name_);
  // Documented behaviour: the cancel is noticed at once, the queue and its
  // bindings are re-declared and consumption resumes.
  EXPECT_TRUE(wait_until([&] { return sidecar_->log_count("broker cancelled consumer") >= 1; }, 60s));
  wait_for_consumer(60s);
  publish(make_stream(oracle, 50, 50, 5, 1'800'000'000'000, 9));
  expect_converges(oracle);
  EXPECT_TRUE(sidecar_->running());
  EXPECT_EQ(sidecar_->stop(), 0);
}

TEST_F(SidecarIntegrationTest, TlsConnection) {
  if (!setup(true)) return;
  // broker.sh's server certificate is for "localhost", the host of LARDER_TEST_AMQPS_URL.
  std::string tls =
      fmt::format("  tls:\n    ca_file: {}\n    verify_peer: true\n    verify_hostname: true\n", env_.ca_file);
  if (!env_.client_cert.empty() && !env_.client_key.empty()) {
    tls += fmt::format("    cert_file: {}\n    key_file: {}\n", env_.client_cert, env_.client_key);
  }
  start_sidecar(config("quorum", env_.amqps_url, tls));
  Oracle oracle;
  publish(make_stream(oracle, 100, 100, 10, 1'700'000'000'000, 10));
  expect_converges(oracle);
  EXPECT_EQ(sidecar_->stop(), 0);
}

}  // namespace
}  // namespace larder::test

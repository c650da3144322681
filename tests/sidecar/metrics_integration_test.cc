// End-to-end tests of the sidecar's HTTP listener against a real RabbitMQ
// (CTest label "integration"): publish a known mix of good and malformed
// messages and check that /metrics counts exactly that; stop the broker and
// watch /readyz go to 503 and come back. Each test has its own segment, queue,
// exchange and an ephemeral port (metrics.listen port 0; the port is read
// from the sidecar's log).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <regex>
#include <thread>

#include "harness.h"
#include "larder/client.h"
#include "larder/writer/writer.h"
#include "prometheus_parse.h"

namespace larder::test {
namespace {

using namespace std::chrono_literals;

class SidecarMetricsTest : public SidecarTestBase {
 protected:
  bool setup(bool need_ctl = false) { return load_broker("m-", false, need_ctl); }

  std::string config() const {
    return fmt::format(R"(segment: {{name: {name}}}
{tables}rabbitmq:
  url: {url}
  password_env: LARDER_IT_PASSWORD
  queue: {{name: {name}, type: quorum}}
  bindings: [{{exchange: {name}, routing_keys: ["users.#"]}}]
  heartbeat_s: 5
  reconnect: {{base_s: 0.2, cap_s: 2}}
  drain_timeout_s: 5
logging: {{level: debug}}
metrics: {{listen: "127.0.0.1:0", ready_max_lag_s: 10}}
)",
                       fmt::arg("name", name_), fmt::arg("tables", users_table_yaml()), fmt::arg("url", env_.amqp_url));
  }

  // Starts the sidecar and finds its metrics port in the log.
  void start_sidecar() {
    sidecar_ = std::make_unique<SidecarProcess>(config(), name_, env_);
    sidecar_->start();
    const std::regex listening(R"(metrics: listening on http://127\.0\.0\.1:(\d+))");
    ASSERT_TRUE(wait_until(
        [&] {
          std::smatch m;
          const std::string log = sidecar_->log_tail(100000);
          if (!std::regex_search(log, m, listening)) return false;
          port_ = std::stoi(m[1]);
          return true;
        },
        60s))
        << "no \"metrics: listening on\" line in the log\n"
        << sidecar_->log_tail();
    ASSERT_TRUE(wait_until(
        [&] {
          const auto q = client_->inspect(name_);
          return q && q->second >= 1;
        },
        60s))
        << "the sidecar did not start consuming " << name_;
  }

  // GET `path`; status -1 when the request failed.
  std::pair<int, std::string> get(const std::string& path) {
    httplib::Client http("127.0.0.1", port_);
    http.set_connection_timeout(2);
    http.set_read_timeout(5);
    auto res = http.Get(path.c_str());
    if (!res) return {-1, httplib::to_string(res.error())};
    return {res->status, res->body};
  }

  ParsedMetrics scrape() {
    const auto [status, body] = get("/metrics");
    EXPECT_EQ(status, 200) << body;
    ParsedMetrics p = parse_prometheus(body);
    EXPECT_EQ(p.error, "") << body;
    return p;
  }

  int port_ = 0;
};

std::string rejected(const char* reason) {
  return fmt::format("larder_messages_rejected_total{{reason=\"{}\"}}", reason);
}

TEST_F(SidecarMetricsTest, CountsMatchThePublishedMessagesExactly) {
  if (!setup()) return;
  start_sidecar();
  if (HasFatalFailure()) return;

  const int64_t now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  std::vector<std::string> bodies;
  int good_messages = 0, good_updates = 0;
  // 30 single upserts.
  for (int i = 0; i < 30; ++i, ++good_messages, ++good_updates) {
    bodies.push_back(upsert_json("users", fmt::format("g{}", i), now_ms - 500, Features::from_seed(i)));
  }
  // 5 batches of 4 upserts.
  for (int b = 0; b < 5; ++b, ++good_messages) {
    std::string body = "[";
    for (int j = 0; j < 4; ++j, ++good_updates) {
      body +=
          (j ? "," : "") + upsert_json("users", fmt::format("b{}", b * 4 + j), now_ms - 500, Features::from_seed(j));
    }
    bodies.push_back(body + "]");
  }
  // 2 deletes, newer than the rows they delete.
  for (int i = 0; i < 2; ++i, ++good_messages, ++good_updates) {
    bodies.push_back(delete_json("users", fmt::format("g{}", i), now_ms - 400));
  }
  // 1 upsert older than its row: applied as a message, ignored as an update.
  bodies.push_back(upsert_json("users", "g2", now_ms - 100'000, Features::from_seed(99)));
  ++good_messages;
  // Malformed, by reason.
  const std::vector<std::pair<const char*, std::string>> bad = {
      {"bad_json", "{not json"},
      {"bad_json", "{\"table\":"},
      {"bad_json", "{} trailing"},
      {"unknown_table", R"({"table":"nope","key":"k","event_time":1,"fields":{"n":1}})"},
      {"unknown_table", R"({"table":"nada","key":"k","event_time":1,"fields":{"n":1}})"},
      {"unknown_field", R"({"table":"users","key":"k","event_time":1,"fields":{"nope":1}})"},
      {"wrong_type", R"({"table":"users","key":"k","event_time":1,"fields":{"n":"x"}})"},
      {"wrong_type", R"({"table":"users","key":"k","event_time":1,"fields":{"flag":3}})"},
      {"key_too_long", R"({"table":"users","key":"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk","event_time":1,"fields":{}})"},
  };
  // Interleave the bad ones with the good ones.
  std::vector<std::string> all;
  for (size_t i = 0; i < bodies.size() || i < bad.size(); ++i) {
    if (i < bodies.size()) all.push_back(bodies[i]);
    if (i < bad.size()) all.push_back(bad[i].second);
  }
  client_->publish(name_, "users.1", all);
  const size_t total = all.size();

  // Settled: every message received, acked or rejected, and observed by
  // every histogram. Counts that overshoot never settle and fail here.
  ParsedMetrics p;
  const bool settled = wait_until(
      [&] {
        p = scrape();
        double rejects = 0;
        for (const auto& [key, value] : p.samples) {
          if (key.rfind("larder_messages_rejected_total{", 0) == 0) rejects += value;
        }
        // Refused messages are acked too, once their dead letter is confirmed.
        return p.at("larder_messages_received_total") == static_cast<double>(total) &&
               p.at("larder_messages_acked_total") == static_cast<double>(total) &&
               rejects == static_cast<double>(bad.size()) && p.at("larder_messages_in_flight") == 0 &&
               p.at("larder_decode_duration_seconds_count") == static_cast<double>(total) &&
               p.at("larder_apply_duration_seconds_count") == good_messages &&
               p.at("larder_event_to_visible_seconds_count") == good_updates &&
               p.at("larder_table_live_keys{table=\"users\"}") == 48;
      },
      60s);
  ASSERT_TRUE(settled) << "received " << p.at("larder_messages_received_total") << " of " << total << ", acked "
                       << p.at("larder_messages_acked_total") << " of " << total;

  EXPECT_EQ(p.at("larder_messages_received_total"), static_cast<double>(total));
  EXPECT_EQ(p.at("larder_messages_redelivered_total"), 0);
  EXPECT_EQ(p.at("larder_messages_applied_total"), good_messages);
  EXPECT_EQ(p.at("larder_messages_acked_total"), static_cast<double>(total));
  EXPECT_EQ(p.at("larder_messages_in_flight"), 0);
  EXPECT_EQ(p.at("larder_updates_applied_total"), good_updates);
  EXPECT_EQ(p.at("larder_table_stale_ignored_total{table=\"users\"}"), 1) << "the one stale count";
  EXPECT_EQ(p.at("larder_dead_letters_published_total"), static_cast<double>(bad.size()));
  std::map<std::string, int> want_rejects;
  for (const auto& [reason, body] : bad) ++want_rejects[reason];
  double rejects = 0;
  for (const auto& [key, value] : p.samples) {
    if (key.rfind("larder_messages_rejected_total{", 0) != 0) continue;
    const std::string reason = key.substr(key.find('"') + 1, key.rfind('"') - key.find('"') - 1);
    EXPECT_EQ(value, want_rejects.count(reason) ? want_rejects[reason] : 0) << key;
    rejects += value;
  }
  EXPECT_EQ(rejects, static_cast<double>(bad.size()));
  EXPECT_EQ(p.at(rejected("bad_json")), 3);
  EXPECT_EQ(p.at("larder_connects_total"), 1);
  EXPECT_EQ(p.at("larder_connect_attempts_total"), 1);
  EXPECT_EQ(p.at("larder_connections_lost_total"), 0);
  EXPECT_EQ(p.at("larder_connection_state{state=\"connected\"}"), 1);
  EXPECT_EQ(p.at("larder_connection_state{state=\"disconnected\"}"), 0);

  // Histograms: every delivery decoded once, every message applied once,
  // every applied update observed once; buckets cumulative up to +Inf.
  EXPECT_EQ(p.at("larder_decode_duration_seconds_count"), static_cast<double>(total));
  EXPECT_EQ(p.at("larder_apply_duration_seconds_count"), good_messages);
  EXPECT_EQ(p.at("larder_event_to_visible_seconds_count"), good_updates);
  for (const char* h :
       {"larder_decode_duration_seconds", "larder_apply_duration_seconds", "larder_event_to_visible_seconds"}) {
    double prev = 0;
    int buckets = 0;
    for (const auto& [key, value] : p.samples) {
      if (key.rfind(std::string(h) + "_bucket{", 0) != 0) continue;
      ++buckets;
      if (key.find("+Inf") == std::string::npos) {
        EXPECT_LE(value, p.at(std::string(h) + "_count")) << key;
      }
      prev = std::max(prev, value);
    }
    EXPECT_GE(buckets, 5) << h;
    EXPECT_EQ(p.at(fmt::format("{}_bucket{{le=\"+Inf\"}}", h)), p.at(std::string(h) + "_count")) << h;
    EXPECT_EQ(prev, p.at(std::string(h) + "_count")) << h;
  }
  // The published event times were 0.5 s old (the stale one is not observed):
  // none was visible before that, and all within a minute.
  EXPECT_EQ(p.at("larder_event_to_visible_seconds_bucket{le=\"0.25\"}"), 0);
  EXPECT_EQ(p.at("larder_event_to_visible_seconds_bucket{le=\"60\"}"), good_updates);

  // Per-table numbers come from the segment itself.
  EXPECT_EQ(p.at("larder_segment_up"), 1);
  EXPECT_GT(p.at("larder_segment_bytes"), 0);
  // The writer heartbeats (every few hundred ms): a fresh age is seen.
  EXPECT_TRUE(wait_until([&] { return scrape().at("larder_writer_heartbeat_age_seconds") < 1; }, 60s));
  EXPECT_EQ(p.at("larder_table_live_keys{table=\"users\"}"), 48);
  EXPECT_EQ(p.at("larder_table_capacity{table=\"users\"}"), 100000);
  EXPECT_EQ(p.at("larder_table_upserts_total{table=\"users\"}"), 50);
  EXPECT_EQ(p.at("larder_table_deletes_total{table=\"users\"}"), 2);
  EXPECT_EQ(p.at("larder_table_stale_ignored_total{table=\"users\"}"), 1);
  EXPECT_EQ(p.at("larder_table_full_rejected_total{table=\"users\"}"), 0);
  EXPECT_DOUBLE_EQ(p.at("larder_table_load_factor{table=\"users\"}"),
                   48.0 / p.at("larder_table_slots{table=\"users\"}"));
  EXPECT_GE(p.at("larder_table_freshness_seconds{table=\"users\"}"), 0);
  EXPECT_LT(p.at("larder_table_freshness_seconds{table=\"users\"}"), 30);
  const SegmentInfo info = Segment::open(name_).info();
  EXPECT_EQ(static_cast<double>(info.messages_rejected), rejects) << "the segment header agrees";

  const auto [status, body] = get("/readyz");
  EXPECT_EQ(status, 200) << body;
  EXPECT_EQ(sidecar_->stop(), 0);
}

TEST_F(SidecarMetricsTest, ReadyzFlipsWhenTheBrokerStopsAndRecovers) {
  if (!setup(true)) return;
  start_sidecar();
  if (HasFatalFailure()) return;
  std::pair<int, std::string> r;
  EXPECT_TRUE(wait_until([&] { return (r = get("/readyz")).first == 200; }, 60s)) << r.first << " " << r.second;
  EXPECT_EQ(r.second, "ok\n");
  EXPECT_EQ(get("/healthz"), std::make_pair(200, std::string("ok\n")));

  ASSERT_TRUE(env_.ctl("stop_app")) << "broker stop_app failed";
  EXPECT_TRUE(wait_until([&] { return (r = get("/readyz")).first == 503; }, 60s)) << r.first << " " << r.second;
  EXPECT_EQ(r.second.rfind("not ready: broker connection is ", 0), 0u) << r.second;
  EXPECT_EQ(std::count(r.second.begin(), r.second.end(), '\n'), 1) << "one line";
  // Alive all the while: only readiness depends on the broker.
  EXPECT_EQ(get("/healthz").first, 200);
  // Several attempts fail while the broker is away; they lose no further
  // connection: a restart counts once in connections lost.
  ParsedMetrics p;
  EXPECT_TRUE(wait_until([&] { return (p = scrape()).at("larder_connect_attempts_total") >= 3; }, 60s))
      << "attempts: " << p.at("larder_connect_attempts_total");
  EXPECT_EQ(p.at("larder_connection_state{state=\"connected\"}"), 0);
  EXPECT_EQ(p.at("larder_connections_lost_total"), 1);

  ASSERT_TRUE(env_.ctl("start_app")) << "broker start_app failed";
  EXPECT_TRUE(wait_until([&] { return (r = get("/readyz")).first == 200; }, 60s)) << r.first << " " << r.second;
  p = scrape();
  EXPECT_EQ(p.at("larder_connection_state{state=\"connected\"}"), 1);
  EXPECT_EQ(p.at("larder_connects_total"), 2);
  EXPECT_EQ(p.at("larder_connections_lost_total"), 1) << "one broker restart, one connection lost";
  EXPECT_GT(p.at("larder_connect_attempts_total"), p.at("larder_connects_total")) << "failed attempts count too";

  // The connection is usable again: a message published now is applied.
  ASSERT_TRUE(reconnect_client(30s)) << "no broker connection for the test client";
  ASSERT_TRUE(wait_until(
      [&] {
        const auto q = client_->inspect(name_);
        return q && q->second >= 1;
      },
      30s));
  const double applied_before = scrape().at("larder_messages_applied_total");
  client_->publish(name_, "users.1", upsert_json("users", "after", 1'700'000'000'000, Features::from_seed(1)));
  EXPECT_TRUE(wait_until([&] { return scrape().at("larder_messages_applied_total") == applied_before + 1; }, 60s));
  EXPECT_EQ(sidecar_->stop(), 0);
  // The final log line names its counts as the metrics do.
  EXPECT_EQ(sidecar_->log_count("consumer: stopped cleanly (messages_received="), 1u) << sidecar_->log_tail();
  EXPECT_EQ(sidecar_->log_count(" connections_lost=1)"), 1u) << sidecar_->log_tail();
}

}  // namespace
}  // namespace larder::test

// Stream positions, resume and readiness end to end (CTest label
// "integration"): the real larder-sidecar consuming a real RabbitMQ stream
// (docs/sidecar.md, "Positions, resume and readiness").
//
//  * SIGKILLs mid-stream at writer crash points (LARDER_TEST_CRASH_AT, a
//    test-only hook): after each kill the stored position describes exactly
//    what the tables hold, and after each restart the tables equal the
//    reference of every message: nothing applied twice (a count/sum aggregate
//    without event ids shows it), nothing skipped.
//  * Readiness: CATCHING_UP with the stream's tail as target, /readyz 503
//    naming the offsets while the writer is held mid-replay
//    (LARDER_TEST_PAUSE_AT), then READY and 200.
//  * Retention: a stream whose head was removed while the sidecar was
//    stopped: INCOMPLETE with both offsets in the log, the metric, /readyz
//    and larderctl info.
//  * Fan-out: three sidecars with their own segments on one stream converge
//    to identical `larderctl dump` output, including after one is killed.
//
// LARDER_CRASH_ITERATIONS sets the number of kills (default 20; fewer than 10
// only with LARDER_CRASH_ITERATIONS_REDUCED=1).
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include "config/config.h"
#include "harness.h"
#include "larder/client.h"
#include "larder/layout/clock.h"
#include "larder/writer/writer.h"
#include "support/process.h"
#include "support/progress.h"
#include "support/run_command.h"

namespace larder::test {
namespace {

using namespace std::chrono_literals;

// One update of a message: a plain row (key, value) or an aggregate event
// (key, amount) without an event id, so applying it twice counts twice.
struct Update {
  bool aggregate = false;
  std::string key;
  int64_t event_time_ms = 0;
  int64_t value = 0;  // plain: the field value; aggregate: the amount (whole numbers: sums stay exact)
};
using Message = std::vector<Update>;

// What the tables must hold after a prefix of the stream.
struct Reference {
  std::map<std::string, std::pair<int64_t, int64_t>> plain;  // key -> (value, event time)
  std::map<std::string, std::pair<int64_t, int64_t>> agg;    // key -> (count, sum)

  void apply(const Update& u) {
    if (u.aggregate) {
      auto& a = agg[u.key];
      ++a.first;
      a.second += u.value;
    } else {
      plain[u.key] = {u.value, u.event_time_ms};  // event times increase: the last write wins
    }
  }
};

// The reference after messages [0, next) and the first `skip` updates of
// message `next`.
Reference reference_at(const std::vector<Message>& messages, uint64_t next, uint32_t skip) {
  Reference r;
  for (uint64_t m = 0; m < next && m < messages.size(); ++m) {
    for (const Update& u : messages[m]) r.apply(u);
  }
  if (next < messages.size()) {
    for (uint32_t i = 0; i < skip && i < messages[next].size(); ++i) r.apply(messages[next][i]);
  }
  return r;
}

std::string body_of(const Message& m) {
  std::string body = "[";
  for (size_t i = 0; i < m.size(); ++i) {
    const Update& u = m[i];
    body += fmt::format(R"({}{{"table":"{}","key":"{}","event_time":{},"fields":{{"{}":{}}}}})", i ? "," : "",
                        u.aggregate ? "agg" : "plain", u.key, u.event_time_ms, u.aggregate ? "amount" : "v", u.value);
  }
  return body + "]";
}

// Compares both tables of `segment` with `ref`: every expected key with its
// values, and no other live key. "" when they agree.
std::string compare_tables(const std::string& segment, const Reference& ref, size_t plain_keys, size_t agg_keys) {
  Segment seg = Segment::open(segment);
  Table plain = seg.table("plain");
  Table agg = seg.table("agg");
  const Field v = plain.field("v", FieldType::kInt64);
  const Field count = agg.field("events_7d", FieldType::kInt64);
  const Field sum = agg.field("amount_7d", FieldType::kFloat64);
  Row prow = plain.make_row();
  Row arow = agg.make_row();
  std::string diff;
  for (size_t k = 0; k < plain_keys; ++k) {
    const std::string key = fmt::format("p{}", k);
    const ReadResult r = plain.get(key, prow);
    const auto it = ref.plain.find(key);
    if (it == ref.plain.end()) {
      if (r.found()) diff += fmt::format("plain {}: present ({}), expected absent\n", key, prow.i64(v));
    } else if (!r.ok()) {
      diff += fmt::format("plain {}: {}, expected {}\n", key, status_name(r.status), it->second.first);
    } else if (prow.i64(v) != it->second.first || r.event_time_ms != it->second.second) {
      diff += fmt::format("plain {}: v {} at {}, expected {} at {}\n", key, prow.i64(v), r.event_time_ms,
                          it->second.first, it->second.second);
    }
  }
  for (size_t k = 0; k < agg_keys; ++k) {
    const std::string key = fmt::format("a{}", k);
    const ReadResult r = agg.get(key, arow);
    const auto it = ref.agg.find(key);
    if (it == ref.agg.end()) {
      if (r.found()) diff += fmt::format("agg {}: present (count {}), expected absent\n", key, arow.i64(count));
    } else if (!r.ok()) {
      diff += fmt::format("agg {}: {}, expected count {}\n", key, status_name(r.status), it->second.first);
    } else if (arow.i64(count) != it->second.first || arow.f64(sum) != static_cast<double>(it->second.second)) {
      diff += fmt::format("agg {}: count {} sum {}, expected count {} sum {}\n", key, arow.i64(count), arow.f64(sum),
                          it->second.first, it->second.second);
    }
  }
  return diff;
}

// The stored position of partition 0, as readers see it; nullopt when none.
std::optional<std::pair<uint64_t, uint32_t>> stored_position(const std::string& segment) {
  const SyncInfo s = Segment::open(segment).sync();
  for (const SyncInfo::Partition& p : s.partitions) {
    if (p.partition == 0 && p.next_offset) return std::make_pair(*p.next_offset, p.skip_updates);
  }
  return std::nullopt;
}

struct HttpReply {
  int status = -1;
  std::string body;
};
HttpReply http_get(int port, const std::string& path) {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(5);
  c.set_read_timeout(5);
  const auto r = c.Get(path);
  if (!r) return {};
  return {r->status, r->body};
}

// Sets an environment variable for the children started while it lives.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) { ::setenv(name, value.c_str(), 1); }
  ~ScopedEnv() { ::unsetenv(name_); }

 private:
  const char* name_;
};

void declare_stream(const BrokerEnv& env, const std::string& name);

class StreamPositionTest : public SidecarTestBase {
 protected:
  static constexpr size_t kPlainKeys = 40;
  static constexpr size_t kAggKeys = 20;

  bool setup() {
    if (!load_broker("pos_", false, false)) return false;
    declare_stream(env_, name_);
    return !HasFailure();
  }

  std::string config(const std::string& segment, const std::string& extra = "") const {
    return fmt::format(R"(segment: {{name: {segment}}}
tables:
  - name: plain
    key_max_len: 16
    capacity: 1000
    fields:
      - {{name: v, type: int64}}
  - name: agg
    key_max_len: 16
    capacity: 1000
    fields:
      - {{name: last_amount, type: int64, from: amount}}
    aggregates:
      - {{name: events_7d, fn: count, window: 7d}}
      - {{name: amount_7d, source: amount, fn: sum, window: 7d}}
rabbitmq:
  url: {url}
  password_env: LARDER_IT_PASSWORD
  queue: {{name: {queue}, type: stream, stream_offset: first}}
  bindings: [{{exchange: {queue}, routing_keys: ["features.#"]}}]
  prefetch: 50
  heartbeat_s: 5
  reconnect: {{base_s: 0.2, cap_s: 2}}
  drain_timeout_s: 5
readiness: {{max_lag: 1h}}
logging: {{level: info}}
metrics: {{listen: "127.0.0.1:0"}}
{extra})",
                       fmt::arg("segment", segment), fmt::arg("url", env_.amqp_url), fmt::arg("queue", name_),
                       fmt::arg("extra", extra));
  }

  // `count` messages of 2..5 updates over both tables; event times increase
  // by 1 ms per update from ten minutes ago, inside every window.
  void make_messages(size_t count, std::mt19937_64& rng) {
    for (size_t i = 0; i < count; ++i) {
      Message m;
      const int n = std::uniform_int_distribution<int>(2, 5)(rng);
      for (int j = 0; j < n; ++j) {
        Update u;
        u.aggregate = std::uniform_int_distribution<int>(0, 1)(rng) == 1;
        u.key = u.aggregate ? fmt::format("a{}", std::uniform_int_distribution<size_t>(0, kAggKeys - 1)(rng))
                            : fmt::format("p{}", std::uniform_int_distribution<size_t>(0, kPlainKeys - 1)(rng));
        u.event_time_ms = base_time_ms_ + static_cast<int64_t>(next_time_++);
        u.value = std::uniform_int_distribution<int64_t>(1, 1000)(rng);
        m.push_back(u);
      }
      messages_.push_back(std::move(m));
    }
  }

  // Publishes messages_[from, to) (offsets equal indexes: one publisher on a
  // fresh stream).
  void publish_range(size_t from, size_t to) {
    std::vector<std::string> bodies;
    for (size_t i = from; i < to; ++i) bodies.push_back(body_of(messages_[i]));
    client_->publish(name_, "features.1", bodies);
  }

  // Starts a sidecar for `segment` in `slot`, after the previous one there is
  // gone (its destructor removes the config file both use).
  void start(std::unique_ptr<SidecarProcess>& slot, const std::string& segment) {
    slot.reset();
    slot = std::make_unique<SidecarProcess>(config(segment), segment, env_);
    slot->start();
  }

  // Waits until `segment` stores position {target, 0}.
  ::testing::AssertionResult wait_position(const std::string& segment, uint64_t target, SidecarProcess& p,
                                           std::chrono::milliseconds timeout = 60s) {
    std::optional<std::pair<uint64_t, uint32_t>> pos;
    const bool ok = wait_until(
        [&] {
          try {
            pos = stored_position(segment);
          } catch (const Error&) {
            return false;  // not created yet
          }
          return pos && pos->first == target && pos->second == 0;
        },
        timeout);
    if (ok) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << segment << ": stored position "
                                         << (pos ? fmt::format("{}+{}", pos->first, pos->second) : "none")
                                         << ", expected " << target << "\n"
                                         << p.log_tail();
  }

  // Opens the segment with a Writer (which repairs what a killed writer left)
  // and closes it again, as the next sidecar would before it serves.
  void repair(const std::string& segment) {
    ::setenv("LARDER_IT_PASSWORD", env_.password.c_str(), 1);  // the config names it
    const sidecar::Config c = sidecar::parse_config(config(segment), "test");
    auto w = Writer::open(segment, c.schema());
    w.reset();
  }

  std::string dump(const std::string& segment, const std::string& table) {
    const auto r = testing::run_command(fmt::format("{} dump {} {} --format csv", LARDERCTL_PATH, segment, table));
    EXPECT_EQ(r.code, 0) << r.out;
    // Drop the apply time (each sidecar applies at its own time) and sort.
    std::vector<std::string> lines;
    std::istringstream in(r.out);
    for (std::string line; std::getline(in, line);) {
      std::vector<std::string> cells;
      std::string cell;
      std::istringstream ls(line);
      while (std::getline(ls, cell, ',')) cells.push_back(cell);
      if (cells.size() > 2) cells.erase(cells.begin() + 2);
      std::string out;
      for (const std::string& c : cells) out += c + ",";
      lines.push_back(out);
    }
    std::sort(lines.begin(), lines.end());
    std::string all;
    for (const std::string& l : lines) all += l + "\n";
    return all;
  }

  void TearDown() override {
    for (const std::string& s : extra_segments_) Writer::remove_segment(s);
    SidecarTestBase::TearDown();
  }

  std::vector<Message> messages_;
  int64_t base_time_ms_ = layout::now_unix_ns() / 1'000'000 - 10 * 60 * 1000;
  uint64_t next_time_ = 0;
  std::vector<std::string> extra_segments_;
};

// Each round publishes new messages, starts the sidecar with a kill armed at
// a random writer crash point below what the round needs (so the kill lands
// mid-stream with certainty), and checks: the process died by SIGKILL before
// the end; after repair the stored position describes exactly what the
// tables hold; a clean restart resumes from it and reaches the reference of
// every message, nothing twice, nothing skipped.
TEST_F(StreamPositionTest, KilledMidStreamResumesExactlyFromTheStoredPosition) {
  if (!setup()) return;
  const int iterations = testing::crash_iterations(20);
  ASSERT_GE(iterations, 2)
      << "LARDER_CRASH_ITERATIONS=" << -iterations
      << " refused: at least 10 (fewer with LARDER_CRASH_ITERATIONS_REDUCED=1), never fewer than 2";
  const uint64_t seed = testing::test_seed("StreamPositionTest.KilledMidStream");
  std::mt19937_64 rng(seed);
  constexpr size_t kPerRound = 40;        // >= 80 updates, each passing >= 6 crash points
  std::map<uint32_t, int> kills_by_skip;  // how often the kill left a message half applied
  for (int round = 0; round < iterations; ++round) {
    const size_t from = messages_.size();
    make_messages(kPerRound, rng);
    publish_range(from, messages_.size());
    const long crash_at = std::uniform_int_distribution<long>(1, 400)(rng);
    {
      ScopedEnv crash("LARDER_TEST_CRASH_AT", std::to_string(crash_at));
      start(sidecar_, name_);
    }
    ASSERT_TRUE(wait_until([&] { return !sidecar_->running(); }, 60s))
        << "round " << round << ": the sidecar did not reach crash point " << crash_at << "\n"
        << sidecar_->log_tail();
    ASSERT_EQ(sidecar_->stop(), 128 + SIGKILL) << "round " << round << "\n" << sidecar_->log_tail();

    repair(name_);
    const auto pos = stored_position(name_);
    const uint64_t next = pos ? pos->first : 0;
    const uint32_t skip = pos ? pos->second : 0;
    ASSERT_LT(next, messages_.size()) << "round " << round << ": the kill came after the stream's end";
    ASSERT_GE(next, from) << "round " << round << ": the position went back";
    ++kills_by_skip[skip > 0 ? 1 : 0];
    EXPECT_EQ(compare_tables(name_, reference_at(messages_, next, skip), kPlainKeys, kAggKeys), "")
        << "round " << round << ": after the kill at crash point " << crash_at << " the tables do not match position "
        << next << "+" << skip;

    start(sidecar_, name_);
    ASSERT_TRUE(wait_position(name_, messages_.size(), *sidecar_));
    EXPECT_EQ(compare_tables(name_, reference_at(messages_, messages_.size(), 0), kPlainKeys, kAggKeys), "")
        << "round " << round << ": after the restart from " << next << "+" << skip;
    ASSERT_EQ(sidecar_->stop(), 0) << sidecar_->log_tail();
    if (HasFailure()) return;
  }
  std::cerr << kills_by_skip[1] << " of " << iterations << " kills left a message partly applied\n";
}

// The writer is held at a crash point mid-replay: the segment is CATCHING_UP
// with the stream's tail as target and /readyz says 503 with the offsets;
// released, it becomes READY and /readyz 200.
TEST_F(StreamPositionTest, ReadyzFailsWhileCatchingUpAndPassesOnceCaughtUp) {
  if (!setup()) return;
  std::mt19937_64 rng(7);
  make_messages(300, rng);
  publish_range(0, messages_.size());
  const std::string release = ::testing::TempDir() + "/" + name_ + ".release";
  std::remove(release.c_str());
  {
    ScopedEnv at("LARDER_TEST_PAUSE_AT", "200");
    ScopedEnv until("LARDER_TEST_PAUSE_UNTIL", release);
    start(sidecar_, name_);
  }
  ASSERT_TRUE(wait_until([&] { return sidecar_->log_count("test hook: writer paused") > 0; }, 60s))
      << sidecar_->log_tail();
  const int port = sidecar_->metrics_port();
  ASSERT_GT(port, 0) << sidecar_->log_tail();
  const uint64_t tail = messages_.size() - 1;
  // The target reaches the segment before the first bulk is applied.
  SyncInfo s;
  ASSERT_TRUE(wait_until(
      [&] {
        s = Segment::open(name_).sync();
        return !s.partitions.empty() && s.partitions[0].target.has_value();
      },
      30s))
      << sidecar_->log_tail();
  EXPECT_EQ(s.state, layout::SyncState::kCatchingUp);
  EXPECT_EQ(s.partitions[0].target, tail);
  EXPECT_LT(s.partitions[0].next_offset.value_or(0), tail);
  const HttpReply not_ready = http_get(port, "/readyz");
  EXPECT_EQ(not_ready.status, 503) << not_ready.body;
  EXPECT_NE(not_ready.body.find("catching up"), std::string::npos) << not_ready.body;
  EXPECT_NE(not_ready.body.find(fmt::format("target {}", tail)), std::string::npos) << not_ready.body;
  const HttpReply metrics = http_get(port, "/metrics");
  EXPECT_NE(metrics.body.find("larder_sync_state{state=\"catching_up\"} 1"), std::string::npos);
  EXPECT_NE(metrics.body.find(fmt::format("larder_source_target_offset{{partition=\"0\"}} {}", tail)),
            std::string::npos);

  std::ofstream(release) << "go\n";
  ASSERT_TRUE(wait_position(name_, messages_.size(), *sidecar_));
  ASSERT_TRUE(wait_until([&] { return Segment::open(name_).state() == layout::SyncState::kReady; }, 30s))
      << sidecar_->log_tail();
  HttpReply ready;
  ASSERT_TRUE(wait_until(
      [&] {
        ready = http_get(port, "/readyz");
        return ready.status == 200;
      },
      30s))
      << ready.status << " " << ready.body;
  EXPECT_EQ(compare_tables(name_, reference_at(messages_, messages_.size(), 0), kPlainKeys, kAggKeys), "");
  const std::string log = sidecar_->log_tail(std::string::npos);
  const size_t catching = log.find(fmt::format("sync: CATCHING_UP: target offset {}", tail));
  const size_t ready_line = log.find("sync: READY");
  EXPECT_NE(catching, std::string::npos) << log;
  EXPECT_NE(ready_line, std::string::npos) << log;
  EXPECT_LT(catching, ready_line);
  EXPECT_EQ(sidecar_->stop(), 0);
  std::remove(release.c_str());
}

// A rabbitmq-c connection with channel 1 open; nullptr (with a recorded
// failure) when it cannot connect.
amqp_connection_state_t connect_raw(const BrokerEnv& env) {
  sidecar::AmqpUrl url;
  std::string error;
  if (!sidecar::parse_amqp_url(env.amqp_url, &url, &error)) {
    ADD_FAILURE() << env.amqp_url << ": " << error;
    return nullptr;
  }
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t* socket = amqp_tcp_socket_new(conn);
  if (amqp_socket_open(socket, url.host.c_str(), url.port) != AMQP_STATUS_OK ||
      amqp_login(conn, url.vhost.c_str(), 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, url.user.c_str(), env.password.c_str())
              .reply_type != AMQP_RESPONSE_NORMAL) {
    ADD_FAILURE() << "cannot connect to " << env.amqp_url;
    amqp_destroy_connection(conn);
    return nullptr;
  }
  amqp_channel_open(conn, 1);
  return conn;
}

void close_raw(amqp_connection_state_t conn) {
  amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(conn);
}

amqp_table_entry_t utf8_arg(const char* key, const char* value) {
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_UTF8;
  e.value.value.bytes = amqp_cstring_bytes(value);
  return e;
}

// Declares the topology the sidecar's config names (the stream, its
// exchange, the binding) with the sidecar's arguments, so that messages can
// be published before any sidecar ran.
void declare_stream(const BrokerEnv& env, const std::string& name) {
  amqp_connection_state_t conn = connect_raw(env);
  if (conn == nullptr) return;
  amqp_exchange_declare(conn, 1, amqp_cstring_bytes(name.c_str()), amqp_cstring_bytes("topic"), 0, 1, 0, 0,
                        amqp_empty_table);
  EXPECT_EQ(amqp_get_rpc_reply(conn).reply_type, AMQP_RESPONSE_NORMAL) << "exchange.declare";
  amqp_table_entry_t arg = utf8_arg("x-queue-type", "stream");
  amqp_queue_declare(conn, 1, amqp_cstring_bytes(name.c_str()), 0, 1, 0, 0, amqp_table_t{1, &arg});
  EXPECT_EQ(amqp_get_rpc_reply(conn).reply_type, AMQP_RESPONSE_NORMAL) << "queue.declare";
  amqp_queue_bind(conn, 1, amqp_cstring_bytes(name.c_str()), amqp_cstring_bytes(name.c_str()),
                  amqp_cstring_bytes("features.#"), amqp_empty_table);
  EXPECT_EQ(amqp_get_rpc_reply(conn).reply_type, AMQP_RESPONSE_NORMAL) << "queue.bind";
  close_raw(conn);
}

// The offset a consumer attached at `at` ("first" or "last") finds: the
// first delivery's, or for "last" the largest until 2 s pass without one (the
// stream must not grow meanwhile). nullopt when nothing arrives within 10 s.
std::optional<uint64_t> probe_offset(const BrokerEnv& env, const std::string& queue, const char* at) {
  amqp_connection_state_t conn = connect_raw(env);
  if (conn == nullptr) return std::nullopt;
  std::optional<uint64_t> out;
  amqp_basic_qos(conn, 1, 0, 1000, 0);
  amqp_table_entry_t arg = utf8_arg("x-stream-offset", at);
  amqp_basic_consume(conn, 1, amqp_cstring_bytes(queue.c_str()), amqp_empty_bytes, 0, 0, 0, amqp_table_t{1, &arg});
  if (amqp_get_rpc_reply(conn).reply_type == AMQP_RESPONSE_NORMAL) {
    for (;;) {
      amqp_envelope_t e;
      timeval tv{out ? 2 : 10, 0};
      if (amqp_consume_message(conn, &e, &tv, 0).reply_type != AMQP_RESPONSE_NORMAL) break;
      const amqp_table_t& h = e.message.properties.headers;
      for (int i = 0; i < h.num_entries; ++i) {
        if (std::string(static_cast<const char*>(h.entries[i].key.bytes), h.entries[i].key.len) == "x-stream-offset") {
          const uint64_t o = static_cast<uint64_t>(h.entries[i].value.value.i64);
          if (!out || o > *out) out = o;
        }
      }
      amqp_basic_ack(conn, 1, e.delivery_tag, 0);
      amqp_destroy_envelope(&e);
      if (std::string(at) == "first") break;
    }
  }
  close_raw(conn);
  return out;
}

// A stream with a small retention (a policy: max-length-bytes and small
// segments); the sidecar stops after offset 9, the head is removed while it
// is down: restarted, it reports INCOMPLETE with both offsets (log, metric,
// /readyz, larderctl info) and keeps applying what the stream still holds.
TEST_F(StreamPositionTest, RetentionGapIsReportedIncompleteWithBothOffsets) {
  if (!setup()) return;
  const char* ctl = std::getenv("LARDER_TEST_RABBITMQCTL");
  ASSERT_TRUE(ctl != nullptr && *ctl != '\0') << "LARDER_TEST_RABBITMQCTL is not set (source scripts/broker.sh's env)";
  const std::string policy = name_ + "-retention";
  const auto set = testing::run_command(fmt::format(
      R"({} set_policy --apply-to queues {} '^{}$' '{{"max-length-bytes":60000,"stream-max-segment-size-bytes":8000}}')",
      ctl, policy, name_));
  ASSERT_EQ(set.code, 0) << set.out;
  struct PolicyCleanup {
    std::string cmd;
    ~PolicyCleanup() { testing::run_command(cmd); }
  } cleanup{fmt::format("{} clear_policy {}", ctl, policy)};
  // The segment size is fixed when the stream is created: create it again
  // under the policy.
  client_->delete_queue(name_);
  declare_stream(env_, name_);
  ASSERT_FALSE(HasFailure());

  std::mt19937_64 rng(11);
  make_messages(10, rng);
  start(sidecar_, name_);
  ASSERT_TRUE(wait_until([&] { return client_->inspect(name_).has_value(); }, 60s)) << sidecar_->log_tail();
  publish_range(0, 10);
  ASSERT_TRUE(wait_position(name_, 10, *sidecar_));
  ASSERT_EQ(sidecar_->stop(), 0);

  // Enough to roll many small segments: retention removes the head.
  make_messages(2000, rng);
  publish_range(10, messages_.size());
  std::optional<uint64_t> first;
  ASSERT_TRUE(wait_until(
      [&] {
        first = probe_offset(env_, name_, "first");
        if (!first) {
          // Retention may leave only a freshly rolled, empty segment, and a
          // consumer at "first" then waits for the next message: send one.
          make_messages(1, rng);
          publish_range(messages_.size() - 1, messages_.size());
        }
        return first && *first > 10;
      },
      60s))
      << "retention did not remove the stream's head (first offset "
      << (first ? std::to_string(*first) : std::string("none")) << ")";

  start(sidecar_, name_);
  ASSERT_TRUE(wait_until([&] { return Segment::open(name_).state() == layout::SyncState::kIncomplete; }, 60s))
      << sidecar_->log_tail();
  const SyncInfo s = Segment::open(name_).sync();
  ASSERT_FALSE(s.partitions.empty());
  ASSERT_TRUE(s.partitions[0].first_retained.has_value());
  const uint64_t retained = *s.partitions[0].first_retained;
  EXPECT_GE(retained, *first);
  EXPECT_GE(sidecar_->log_count(
                fmt::format("resuming at stream offset 10, but the stream's first retained offset is {}", retained)),
            1u)
      << sidecar_->log_tail();
  // It keeps applying what the stream holds: the tail arrives. (Offsets are
  // not message indexes here: each of the many small segments starts with a
  // chunk of the broker's own that takes an offset.)
  const std::optional<uint64_t> last = probe_offset(env_, name_, "last");
  ASSERT_TRUE(last.has_value());
  ASSERT_TRUE(wait_until(
      [&] {
        const auto p = stored_position(name_);
        return p && p->first > *last;
      },
      60s))
      << "the position did not pass the stream's last offset " << *last << "\n"
      << sidecar_->log_tail();
  EXPECT_EQ(Segment::open(name_).state(), layout::SyncState::kIncomplete);
  const int port = sidecar_->metrics_port();
  ASSERT_GT(port, 0);
  const HttpReply metrics = http_get(port, "/metrics");
  EXPECT_NE(metrics.body.find("larder_source_incomplete 1"), std::string::npos) << metrics.body;
  EXPECT_NE(metrics.body.find(fmt::format("larder_source_first_retained_offset{{partition=\"0\"}} {}", retained)),
            std::string::npos);
  const HttpReply readyz = http_get(port, "/readyz");
  EXPECT_EQ(readyz.status, 503);
  EXPECT_NE(readyz.body.find(fmt::format("first retained offset {}", retained)), std::string::npos) << readyz.body;
  const auto info = testing::run_command(fmt::format("{} info {}", LARDERCTL_PATH, name_));
  EXPECT_EQ(info.code, 0) << info.out;
  EXPECT_NE(info.out.find("sync incomplete"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find(fmt::format("first retained {}", retained)), std::string::npos) << info.out;
  // A restart keeps INCOMPLETE: the gap is in the table for good.
  ASSERT_EQ(sidecar_->stop(), 0);
  start(sidecar_, name_);
  ASSERT_TRUE(wait_until([&] { return sidecar_->log_count("the segment is INCOMPLETE") > 0; }, 60s))
      << sidecar_->log_tail();
  EXPECT_EQ(Segment::open(name_).state(), layout::SyncState::kIncomplete);
  EXPECT_EQ(sidecar_->stop(), 0);
}

// Three sidecars, each with its own segment and consumer on one stream,
// converge to identical dumps, also after one of them is killed mid-stream
// (at a writer crash point) and restarted.
TEST_F(StreamPositionTest, ThreeSidecarsOnOneStreamConvergeToIdenticalDumps) {
  if (!setup()) return;
  const std::vector<std::string> segments = {name_ + "-a", name_ + "-b", name_ + "-c"};
  for (const std::string& s : segments) {
    Writer::remove_segment(s);
    extra_segments_.push_back(s);
  }
  std::mt19937_64 rng(5);
  make_messages(200, rng);
  publish_range(0, 200);
  std::vector<std::unique_ptr<SidecarProcess>> sidecars(3);
  start(sidecars[0], segments[0]);
  start(sidecars[1], segments[1]);
  {
    ScopedEnv crash("LARDER_TEST_CRASH_AT", "700");
    start(sidecars[2], segments[2]);
  }
  make_messages(200, rng);
  publish_range(200, 400);
  ASSERT_TRUE(wait_until([&] { return !sidecars[2]->running(); }, 60s)) << sidecars[2]->log_tail();
  ASSERT_EQ(sidecars[2]->stop(), 128 + SIGKILL);
  repair(segments[2]);
  const auto killed_at = stored_position(segments[2]);
  ASSERT_TRUE(killed_at.has_value());
  EXPECT_LT(killed_at->first, 400u) << "the kill came after the stream's end";
  start(sidecars[2], segments[2]);
  make_messages(100, rng);
  publish_range(400, messages_.size());
  const Reference ref = reference_at(messages_, messages_.size(), 0);
  for (size_t i = 0; i < segments.size(); ++i) {
    ASSERT_TRUE(wait_position(segments[i], messages_.size(), *sidecars[i]));
    EXPECT_EQ(compare_tables(segments[i], ref, kPlainKeys, kAggKeys), "") << segments[i];
  }
  for (const char* table : {"plain", "agg"}) {
    const std::string a = dump(segments[0], table);
    EXPECT_FALSE(a.empty());
    EXPECT_EQ(dump(segments[1], table), a) << table;
    EXPECT_EQ(dump(segments[2], table), a) << table;
  }
  for (auto& p : sidecars) EXPECT_EQ(p->stop(), 0);
}

}  // namespace
}  // namespace larder::test

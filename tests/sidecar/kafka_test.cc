// The Kafka source end to end: the real larder-sidecar against librdkafka's
// mock cluster (larder_kafka_mock_cluster, a process speaking the Kafka
// protocol over loopback TCP), fed by producer processes (a librdkafka
// producer forked from this test, and examples/kafka_producer.py). Needs no
// RabbitMQ (label kafka).
//
// Every wait is for an event: the segment's stored positions reaching a
// count, a log line, a /readyz answer. The final check is the same as the
// RabbitMQ tests': the table equals a last-write-wins model of what was
// produced.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <librdkafka/rdkafka.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <new>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "consume/kafka_topic_table.h"
#include "larder/client.h"
#include "sidecar/harness.h"
#include "support/process.h"

namespace larder::test {
namespace {

using namespace std::chrono_literals;

// The mock cluster process: started with its topics, controlled through its
// stdin (tests/sidecar/kafka_mock_cluster.cc).
class MockCluster {
 public:
  MockCluster(const std::vector<std::string>& topics, int brokers = 1) {
    int in[2], out[2];
    if (::pipe(in) != 0 || ::pipe(out) != 0) throw std::runtime_error("pipe");
    std::vector<std::string> args = {LARDER_KAFKA_MOCK_BINARY, "--brokers", std::to_string(brokers)};
    for (const std::string& t : topics) {
      args.push_back("--topic");
      args.push_back(t);
    }
    std::fflush(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::close(in[1]);
      ::close(out[0]);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    to_ = ::fdopen(in[1], "w");
    from_ = ::fdopen(out[0], "r");
    const std::string first = line();
    if (first.rfind("bootstrap ", 0) != 0) throw std::runtime_error("mock cluster said: " + first);
    bootstrap_ = first.substr(10);
  }
  ~MockCluster() {
    if (to_ != nullptr) std::fclose(to_);  // end of input: it exits (SIGKILLed after 10 s)
    if (pid_ > 0) larder::testing::wait_for(pid_, 10s);
    if (from_ != nullptr) std::fclose(from_);
  }
  const std::string& bootstrap() const { return bootstrap_; }
  // Sends one command; returns its answer ("ok" or "error ...").
  std::string command(const std::string& c) {
    std::fprintf(to_, "%s\n", c.c_str());
    std::fflush(to_);
    return line();
  }

 private:
  std::string line() {
    char buf[1024];
    if (std::fgets(buf, sizeof buf, from_) == nullptr) return "(the mock cluster exited)";
    std::string s(buf);
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    return s;
  }
  pid_t pid_ = -1;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
  std::string bootstrap_;
};

struct Message {
  std::string key;
  std::string body;
};

// Produces `messages` (keyed: a key's updates stay in one partition, in
// order) from a child process, and returns once every one is acknowledged
// by the cluster. Returns the child's exit code (0: all delivered).
int produce(const std::string& bootstrap, const std::string& topic, const std::vector<Message>& messages) {
  const pid_t pid = larder::testing::spawn([&]() -> int {
    char err[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), err, sizeof err);
    rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof err);
    static int failed = 0;
    rd_kafka_conf_set_dr_msg_cb(conf, [](rd_kafka_t*, const rd_kafka_message_t* m, void*) {
      if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) ++failed;
    });
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (rk == nullptr) return 3;
    for (const Message& m : messages) {
      for (;;) {
        const rd_kafka_resp_err_t e =
            rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_KEY(m.key.data(), m.key.size()),
                              RD_KAFKA_V_VALUE(const_cast<char*>(m.body.data()), m.body.size()),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR) break;
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) return 4;
        rd_kafka_poll(rk, 100);  // the local queue is full: serve delivery reports
      }
    }
    const rd_kafka_resp_err_t flushed = rd_kafka_flush(rk, 60'000);
    rd_kafka_destroy(rk);
    return flushed == RD_KAFKA_RESP_ERR_NO_ERROR && failed == 0 ? 0 : 5;
  });
  return larder::testing::wait_for(pid, 90s);
}

// Messages `from` .. `to` - 1 of the test stream: key i % keys, event time
// i + 1 (so the last message of a key wins), recorded in the oracle.
std::vector<Message> stream(int from, int to, int keys, Oracle& oracle) {
  std::vector<Message> out;
  for (int i = from; i < to; ++i) {
    const std::string key = fmt::format("u{}", i % keys);
    const Features f = Features::from_seed(i);
    oracle.upsert(key, i + 1, f);
    out.push_back({key, upsert_json("users", key, i + 1, f)});
  }
  return out;
}

// As stream(), with keys of their own per topic (`prefix`): the topics'
// messages interleave in any order, so no key is written by two.
std::vector<Message> keyed_stream(const std::string& prefix, int from, int to, int keys, Oracle& oracle) {
  std::vector<Message> out;
  for (int i = from; i < to; ++i) {
    const std::string key = fmt::format("{}{}", prefix, i % keys);
    const Features f = Features::from_seed(i);
    oracle.upsert(key, i + 1, f);
    out.push_back({key, upsert_json("users", key, i + 1, f)});
  }
  return out;
}

// The sum of the next offsets the segment stores (dense offsets: the number
// of messages applied), or -1 when it cannot be opened yet.
int64_t applied_messages(const std::string& segment) {
  try {
    const SyncInfo s = Segment::open(segment).sync();
    int64_t n = 0;
    for (const SyncInfo::Partition& p : s.partitions) n += p.next_offset ? static_cast<int64_t>(*p.next_offset) : 0;
    return n;
  } catch (const Error&) {
    return -1;
  }
}

class KafkaSourceTest : public ::testing::Test {
 protected:
  void SetUp() override { name_ = unique_name("kafka"); }
  void TearDown() override {
    for (auto& s : sidecars_) {
      if (HasFailure() && s) std::fprintf(stderr, "--- sidecar log tail:\n%s\n", s->log_tail().c_str());
      s.reset();
    }
    for (const std::string& seg : segments_) {
      ::unlink(("/dev/shm/" + seg).c_str());
      ::unlink(("/dev/shm/" + seg + ".lock").c_str());               // the writer lock file outlives the segment
      ::unlink(("/dev/shm/." + seg + ".kafka-topics").c_str());      // the topic table of a regex subscription
      ::unlink(("/dev/shm/." + seg + ".kafka-topics.tmp").c_str());  // and its temporary file, after a kill
    }
  }

  // A sidecar consuming `topic` into segment `segment`.
  SidecarProcess& sidecar(const std::string& segment, const std::string& bootstrap, const std::string& topic,
                          const std::string& extra = "") {
    segments_.push_back(segment);
    const std::string yaml = fmt::format(R"(segment: {{name: {}}}
{}
kafka:
  bootstrap_servers: "{}"
  topics: [{}]
  partitions_per_topic: 8
  commit_interval: 100ms
{}
metrics: {{listen: "127.0.0.1:0"}}
)",
                                         segment, users_table_yaml(), bootstrap, topic, extra);
    sidecars_.push_back(std::make_unique<SidecarProcess>(yaml, segment, BrokerEnv{}));
    return *sidecars_.back();
  }

  std::string name_;
  std::vector<std::string> segments_;
  std::vector<std::unique_ptr<SidecarProcess>> sidecars_;
};

// Half the stream applied, the sidecar SIGKILLed, the rest produced, a
// restart: it resumes at the segment's positions and the table ends equal
// to the model. Nothing is lost.
TEST_F(KafkaSourceTest, SigkillMidStreamLosesNothing) {
  const std::string topic = name_ + "-t";
  MockCluster cluster({topic + ":4"});
  Oracle oracle;
  constexpr int kTotal = 4000, kKeys = 300;
  ASSERT_EQ(produce(cluster.bootstrap(), topic, stream(0, kTotal / 2, kKeys, oracle)), 0);

  SidecarProcess& s = sidecar(name_, cluster.bootstrap(), topic);
  s.start();
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == kTotal / 2; }, 60s))
      << "applied " << applied_messages(name_);
  s.kill9();

  ASSERT_EQ(produce(cluster.bootstrap(), topic, stream(kTotal / 2, kTotal, kKeys, oracle)), 0);
  s.start();
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == kTotal; }, 60s))
      << "applied " << applied_messages(name_);
  EXPECT_EQ(compare_segment(name_, oracle), "");
  EXPECT_GE(s.log_count("resuming at stored offset"), 1u);
  // Caught up: READY, and /readyz agrees.
  ASSERT_TRUE(wait_until([&] { return Segment::open(name_).sync().state == layout::SyncState::kReady; }, 30s));
  httplib::Client http("127.0.0.1", s.metrics_port());
  auto ready = http.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200) << ready->body;
  auto metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("larder_kafka_partition_lag_messages{topic=\"" + topic + "\",partition=\"0\"} 0"),
            std::string::npos)
      << metrics->body.substr(metrics->body.find("larder_kafka"));
  EXPECT_EQ(s.stop(), 0);
}

// Two sidecars (two segments) in one group split the partitions; when one
// leaves, the other takes its partitions and reads them from the start
// (its segment has no position for them), and when partitions come back
// after another rebalance they seek to the segment's positions: the
// remaining segment ends equal to the whole model.
TEST_F(KafkaSourceTest, RebalanceMovesPartitionsWithoutLoss) {
  const std::string topic = name_ + "-t";
  MockCluster cluster({topic + ":4"});
  // The mock cluster's coordinator waits up to a member's session timeout
  // for the group to rejoin: keep it short so that each rebalance is quick.
  const std::string extra = fmt::format(
      "  assignment: group\n  group_id: {}-g\n  properties: {{session.timeout.ms: 6000, heartbeat.interval.ms: 500}}",
      name_);
  Oracle oracle;
  constexpr int kKeys = 200;
  SidecarProcess& a = sidecar(name_ + "a", cluster.bootstrap(), topic, extra);
  a.start();
  ASSERT_TRUE(wait_until([&] { return a.log_count("kafka: assigned 4 partitions") >= 1; }, 60s));
  SidecarProcess& b = sidecar(name_ + "b", cluster.bootstrap(), topic, extra);
  b.start();
  // The group rebalances: each gets two of the four partitions.
  ASSERT_TRUE(wait_until([&] { return a.log_count("kafka: assigned 2 partitions") >= 1; }, 60s)) << a.log_tail();
  ASSERT_TRUE(wait_until([&] { return b.log_count("kafka: assigned 2 partitions") >= 1; }, 60s)) << b.log_tail();

  ASSERT_EQ(produce(cluster.bootstrap(), topic, stream(0, 2000, kKeys, oracle)), 0);
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_ + "a") + applied_messages(name_ + "b") == 2000; }, 60s));
  const int64_t a_before = applied_messages(name_ + "a");
  EXPECT_GT(a_before, 0);
  EXPECT_LT(a_before, 2000);

  // b leaves: a gets all four, and reads b's two from their start.
  const size_t a_fours_first = a.log_count("kafka: assigned 4 partitions");
  EXPECT_EQ(b.stop(), 0);
  ASSERT_TRUE(wait_until([&] { return a.log_count("kafka: assigned 4 partitions") > a_fours_first; }, 60s))
      << a.log_tail();
  ASSERT_EQ(produce(cluster.bootstrap(), topic, stream(2000, 3000, kKeys, oracle)), 0);
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_ + "a") == 3000; }, 60s))
      << "applied " << applied_messages(name_ + "a");
  EXPECT_EQ(compare_segment(name_ + "a", oracle), "");

  // b comes back (a gives two partitions away) and leaves again (they come
  // back to a, which seeks to its own stored positions). The coordinator
  // may take more than one round to settle a join, so each wait counts the
  // log lines that come after the step, never a total.
  const size_t a_twos = a.log_count("kafka: assigned 2 partitions");
  const size_t b_twos = b.log_count("kafka: assigned 2 partitions");
  b.start();
  ASSERT_TRUE(wait_until([&] { return a.log_count("kafka: assigned 2 partitions") > a_twos; }, 60s)) << a.log_tail();
  // b has its partitions, so it is consuming and has its signal handlers.
  ASSERT_TRUE(wait_until([&] { return b.log_count("kafka: assigned 2 partitions") > b_twos; }, 60s)) << b.log_tail();
  ASSERT_EQ(produce(cluster.bootstrap(), topic, stream(3000, 3500, kKeys, oracle)), 0);
  const size_t a_fours = a.log_count("kafka: assigned 4 partitions");
  EXPECT_EQ(b.stop(), 0);
  ASSERT_TRUE(wait_until([&] { return a.log_count("kafka: assigned 4 partitions") > a_fours; }, 60s)) << a.log_tail();
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_ + "a") == 3500; }, 60s))
      << "applied " << applied_messages(name_ + "a");
  EXPECT_EQ(compare_segment(name_ + "a", oracle), "");
  EXPECT_EQ(a.stop(), 0);
}

// Injected broker errors (failing fetches and commits) and a broker that
// goes down and comes back: the sidecar reports it (log, connection state)
// and ends with everything applied.
TEST_F(KafkaSourceTest, BrokerErrorsAndABrokerDownAreRecovered) {
  const std::string topic = name_ + "-t";
  MockCluster cluster({topic + ":2"});
  Oracle oracle;
  SidecarProcess& s = sidecar(name_, cluster.bootstrap(), topic);
  s.start();
  ASSERT_TRUE(wait_until([&] { return s.log_count("kafka: assigned 2 partitions") >= 1; }, 60s));

  // Fetch (API key 1) fails with NOT_LEADER_OR_FOLLOWER (6) five times,
  // OffsetCommit (8) with REQUEST_TIMED_OUT (7) three times.
  ASSERT_EQ(cluster.command("errors 1 6 5"), "ok");
  ASSERT_EQ(cluster.command("errors 8 7 3"), "ok");
  ASSERT_EQ(produce(cluster.bootstrap(), topic, stream(0, 1000, 100, oracle)), 0);
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == 1000; }, 60s));

  ASSERT_EQ(cluster.command("down 1"), "ok");
  ASSERT_TRUE(wait_until([&] { return s.log_count("kafka: all brokers are down") >= 1; }, 60s)) << s.log_tail();
  ASSERT_TRUE(
      wait_until([&] { return Segment::open(name_).info().connection == ConnectionState::kDisconnected; }, 30s));
  ASSERT_EQ(cluster.command("up 1"), "ok");
  ASSERT_EQ(produce(cluster.bootstrap(), topic, stream(1000, 1500, 100, oracle)), 0);
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == 1500; }, 60s))
      << "applied " << applied_messages(name_);
  EXPECT_EQ(compare_segment(name_, oracle), "");
  EXPECT_EQ(s.stop(), 0);
}

// Bootstrap servers nobody listens on: the sidecar starts (brokers may come
// later), stays not ready with the reason on /readyz, and logs it.
TEST_F(KafkaSourceTest, UnreachableBootstrapIsNotReadyWithTheReason) {
  // A port bound here and never listened on: connecting to it is refused,
  // and no other process can take it while the test runs (a port freed
  // again could be, and would then accept).
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  struct Closer {
    int socket;
    ~Closer() { ::close(socket); }
  } closer{fd};
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string bootstrap = fmt::format("127.0.0.1:{}", ntohs(addr.sin_port));

  SidecarProcess& s = sidecar(name_, bootstrap, name_ + "-t");
  s.start();
  ASSERT_TRUE(wait_until([&] { return s.log_count("kafka: all brokers are down") >= 1; }, 60s)) << s.log_tail();
  ASSERT_TRUE(wait_until([&] { return s.metrics_port() > 0; }, 30s));
  httplib::Client http("127.0.0.1", s.metrics_port());
  auto ready = http.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 503);
  EXPECT_NE(ready->body.find("kafka: all brokers are down (" + bootstrap + ")"), std::string::npos) << ready->body;
  EXPECT_TRUE(s.running());
  EXPECT_EQ(Segment::open(name_).sync().state, layout::SyncState::kCatchingUp);
  EXPECT_EQ(s.stop(), 0);
}

// examples/kafka_producer.py as the producer process: it reads Larder
// messages on stdin and produces them keyed by their key.
TEST_F(KafkaSourceTest, PythonExampleProducerFeedsTheSidecar) {
  const std::string topic = name_ + "-t";
  MockCluster cluster({topic + ":3"});
  Oracle oracle;
  const std::vector<Message> messages = stream(0, 600, 50, oracle);
  SidecarProcess& s = sidecar(name_, cluster.bootstrap(), topic);
  s.start();

  const std::string input = ::testing::TempDir() + name_ + ".jsonl";
  {
    FILE* f = std::fopen(input.c_str(), "w");
    ASSERT_NE(f, nullptr);
    for (const Message& m : messages) std::fprintf(f, "%s\n", m.body.c_str());
    std::fclose(f);
  }
  const std::string cmd =
      fmt::format("/usr/bin/python3 {}/examples/kafka_producer.py --bootstrap {} --topic {} --stdin < {}",
                  LARDER_SOURCE_DIR, cluster.bootstrap(), topic, input);
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == 600; }, 60s)) << "applied " << applied_messages(name_);
  EXPECT_EQ(compare_segment(name_, oracle), "");
  EXPECT_EQ(s.stop(), 0);
  std::remove(input.c_str());
}

// What a reader process and the test share (an anonymous shared mapping made
// before the fork): the test publishes how many keys are written, the reader
// counts its passes per generation and what it found wrong.
struct ReaderShared {
  static constexpr int kGenerations = 8;
  std::atomic<uint32_t> written{0};  // keys u0 .. u(written - 1) are in the table
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> passes{0};                     // whole passes over the written keys
  std::atomic<uint64_t> passes_at[kGenerations] = {};  // by the generation read at the pass's end
  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> misses{0};  // a written key not found
  std::atomic<uint64_t> busy{0};    // kBusy answers, each read again
  std::atomic<uint64_t> torn{0};    // a row whose fields are not all of one message
  char first_problem[256] = {};
};

// The reader process: the C++ client reading every written key again and
// again until told to stop. A row is whole when all its fields and its event
// time come from one message of stream() (Features::from_seed(i), event time
// i + 1, key u(i % keys)). Exits 0 when it could read at all.
int read_written_keys(const std::string& segment, int keys, ReaderShared* shared) {
  Segment seg = Segment::open(segment);
  const Table users = seg.table("users");
  const Field n = users.field("n"), x = users.field("x"), f = users.field("f"), flag = users.field("flag"),
              s = users.field("s"), v = users.field("v");
  Row row = users.make_row();
  auto problem = [&](const std::string& what) {
    if (shared->first_problem[0] == '\0')
      std::snprintf(shared->first_problem, sizeof shared->first_problem, "%s", what.c_str());
  };
  // acquire: pairs with the test's release store of `stop`.
  while (!shared->stop.load(std::memory_order_acquire)) {
    // acquire: pairs with the test's release store, made after the sidecar
    // applied those keys' messages.
    const uint32_t written = shared->written.load(std::memory_order_acquire);
    if (written == 0) {
      ::sched_yield();  // nothing written yet: leave the core to the sidecar
      continue;
    }
    for (uint32_t k = 0; k < written; ++k) {
      const std::string key = fmt::format("u{}", k);
      ReadResult r = users.get(key, row);
      // kBusy: the slot stayed mid-write for max_retries reads (the sidecar's
      // writer thread preempted in the middle of an update on a loaded
      // machine). The client's contract is "try again": not a miss.
      while (r.status == Status::kBusy) {
        shared->busy.fetch_add(1, std::memory_order_relaxed);
        ::sched_yield();
        r = users.get(key, row);
      }
      shared->reads.fetch_add(1, std::memory_order_relaxed);
      if (r.status != Status::kOk) {
        shared->misses.fetch_add(1, std::memory_order_relaxed);
        problem(fmt::format("{}: {} at generation {}", key, status_name(r.status), users.generation()));
        continue;
      }
      const int64_t seed = r.event_time_ms - 1;
      const Features w = Features::from_seed(seed);
      const auto vec = row.vector(v);
      if (seed < 0 || seed % keys != k || row.i64(n) != w.n || row.f64(x) != w.x || row.f32(f) != w.f ||
          row.boolean(flag) != w.flag || row.string(s) != w.s || vec.size() != 4 || vec[0] != w.v[0] ||
          vec[2] != w.v[2]) {
        shared->torn.fetch_add(1, std::memory_order_relaxed);
        problem(fmt::format("{}: event {} with n {} s \"{}\" at generation {}", key, r.event_time_ms, row.i64(n),
                            row.string(s), users.generation()));
      }
    }
    const uint64_t g = users.generation();
    if (g < ReaderShared::kGenerations) shared->passes_at[g].fetch_add(1, std::memory_order_relaxed);
    // release: a test that sees the new count sees this pass's findings.
    shared->passes.fetch_add(1, std::memory_order_release);
  }
  return 0;
}

// The value of an unlabelled gauge or counter on /metrics, -1 when absent.
int64_t metric_value(int port, const std::string& name) {
  httplib::Client http("127.0.0.1", port);
  auto r = http.Get("/metrics");
  if (!r || r->status != 200) return -1;
  const std::regex line("\n" + name + " (\\d+)");
  std::smatch m;
  if (!std::regex_search(r->body, m, line)) return -1;
  return std::stoll(m[1]);
}

// Automatic growth end to end: a table of 20,000 keys with grow_at 0.5
// grows ×2 twice (20,000 → 40,000 → 80,000, the max_capacity) while a
// separate reader process reads every key the test knows is written, over
// and over. The table spans a few copy slices (Writer::kSwitchStepSlots), so
// the copy runs between bulks of the batch that crossed the threshold. Each
// step waits for an event: the positions the segment stores (messages
// applied), the generation in the segment header and on /metrics, the
// reader's pass counter. The reader must never miss a written key nor see a
// torn row, in either generation; no update is refused or lost (the table
// ends equal to the model).
TEST_F(KafkaSourceTest, AutomaticGrowthWithAReaderThroughout) {
  constexpr int kCapacity = 20000;
  constexpr int kKeys = kCapacity * 18 / 10;  // message i writes key u(i % kKeys)
  const std::string topic = name_ + "-t";
  MockCluster cluster({topic + ":4"});
  segments_.push_back(name_);
  const std::string yaml = fmt::format(R"(segment: {{name: {}, grow_at: 0.5, grow_factor: 2, max_capacity: {}}}
{}
kafka:
  bootstrap_servers: "{}"
  topics: [{}]
  partitions_per_topic: 8
  commit_interval: 100ms
metrics: {{listen: "127.0.0.1:0"}}
)",
                                       name_, 4 * kCapacity, users_table_yaml(kCapacity), cluster.bootstrap(), topic);
  sidecars_.push_back(std::make_unique<SidecarProcess>(yaml, name_, BrokerEnv{}));
  SidecarProcess& s = *sidecars_.back();
  s.start();
  ASSERT_TRUE(wait_until([&] { return s.log_count("kafka: assigned 4 partitions") >= 1; }, 60s)) << s.log_tail();
  ASSERT_TRUE(wait_until([&] { return s.metrics_port() > 0; }, 30s));
  const int port = s.metrics_port();
  auto generation = [&] { return Segment::open(name_).info().generation; };
  ASSERT_EQ(generation(), 0u);

  void* mem = ::mmap(nullptr, sizeof(ReaderShared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  auto* shared = new (mem) ReaderShared();
  struct Unmap {
    void* p;
    ~Unmap() { ::munmap(p, sizeof(ReaderShared)); }
  } unmap{mem};
  larder::testing::Children children;
  const pid_t reader = children.add(larder::testing::spawn([&] { return read_written_keys(name_, kKeys, shared); }));

  // Publishes `keys` as written once `applied` messages are, then waits for
  // two more whole passes of the reader: one that may have begun before, one
  // that read all of them.
  Oracle oracle;
  int produced = 0;
  auto feed = [&](int to, int keys) {
    ASSERT_EQ(produce(cluster.bootstrap(), topic, stream(produced, to, kKeys, oracle)), 0);
    produced = to;
    ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == to; }, 60s))
        << "applied " << applied_messages(name_);
    shared->written.store(static_cast<uint32_t>(keys), std::memory_order_release);
    const uint64_t passes = shared->passes.load(std::memory_order_acquire);
    ASSERT_TRUE(wait_until([&] { return shared->passes.load(std::memory_order_acquire) >= passes + 2; }, 60s));
  };
  // The reader at generation 0 first: 0.4 × capacity keys, below grow_at.
  ASSERT_NO_FATAL_FAILURE(feed(kCapacity * 4 / 10, kCapacity * 4 / 10));
  EXPECT_EQ(generation(), 0u);
  EXPECT_GT(shared->passes_at[0].load(), 0u);
  // 0.6 × capacity keys pass grow_at: the writer grows the table ×2 while
  // the reader keeps reading the first ones.
  ASSERT_NO_FATAL_FAILURE(feed(kCapacity * 6 / 10, kCapacity * 4 / 10));
  ASSERT_TRUE(wait_until([&] { return generation() >= 1; }, 60s)) << s.log_tail();
  ASSERT_TRUE(wait_until([&] { return metric_value(port, "larder_segment_generation") == 1; }, 30s));
  shared->written.store(static_cast<uint32_t>(kCapacity * 6 / 10), std::memory_order_release);
  ASSERT_TRUE(wait_until([&] { return shared->passes_at[1].load(std::memory_order_acquire) >= 2; }, 60s));
  EXPECT_EQ(Segment::open(name_).table("users").stats().capacity, 2u * kCapacity);
  // 1.2 × capacity keys pass 0.5 × the grown capacity: grown ×2 again, to
  // max_capacity, the reader reading the 0.6 × capacity keys throughout.
  ASSERT_NO_FATAL_FAILURE(feed(kCapacity * 12 / 10, kCapacity * 6 / 10));
  ASSERT_TRUE(wait_until([&] { return generation() >= 2; }, 60s)) << s.log_tail();
  ASSERT_TRUE(wait_until([&] { return metric_value(port, "larder_segment_generation") == 2; }, 30s));
  shared->written.store(static_cast<uint32_t>(kCapacity * 12 / 10), std::memory_order_release);
  ASSERT_TRUE(wait_until([&] { return shared->passes_at[2].load(std::memory_order_acquire) >= 2; }, 60s));
  // The rest of the keys, then an update of every key: 1.8 × capacity keys
  // stay below 0.5 × max_capacity, which is the bound anyway.
  ASSERT_NO_FATAL_FAILURE(feed(kKeys, kKeys));
  ASSERT_NO_FATAL_FAILURE(feed(2 * kKeys, kKeys));

  // acquire/release: pairs with the reader's acquire load; it ends its pass.
  shared->stop.store(true, std::memory_order_release);
  EXPECT_EQ(children.wait(reader, 30s), 0);
  EXPECT_EQ(shared->misses.load(), 0u) << shared->first_problem;
  EXPECT_EQ(shared->torn.load(), 0u) << shared->first_problem;
  EXPECT_GT(shared->reads.load(), 0u);
  std::fprintf(stderr, "reader: %llu reads (%llu kBusy read again), passes at generations 0/1/2: %llu/%llu/%llu\n",
               static_cast<unsigned long long>(shared->reads.load()),
               static_cast<unsigned long long>(shared->busy.load()),
               static_cast<unsigned long long>(shared->passes_at[0].load()),
               static_cast<unsigned long long>(shared->passes_at[1].load()),
               static_cast<unsigned long long>(shared->passes_at[2].load()));

  EXPECT_EQ(generation(), 2u);
  const TableStats stats = Segment::open(name_).table("users").stats();
  EXPECT_EQ(stats.capacity, 4u * kCapacity);
  EXPECT_EQ(stats.live_keys, static_cast<uint64_t>(kKeys));
  EXPECT_EQ(stats.full_rejected, 0u);
  EXPECT_EQ(compare_segment(name_, oracle), "");
  // A table this small is copied within the maintain() that starts its
  // switch, so the log may show the publication alone.
  EXPECT_EQ(s.log_count("writer: generation 1 published in"), 1u);
  EXPECT_EQ(s.log_count("writer: generation 2 published in"), 1u);
  EXPECT_EQ(s.stop(), 0);
}

}  // namespace
}  // namespace larder::test

namespace larder::test {
namespace {

using namespace std::chrono_literals;
using sidecar::KafkaTopicTable;

// Regex subscriptions (docs/sidecar.md, "Kafka"): topics matched by a
// pattern, given ranges of stored positions by the topic table beside the
// segment.
class KafkaRegexTest : public KafkaSourceTest {
 protected:
  // The `prices` topic never matches; `events.*` do.
  static constexpr const char* kTopics = R"("^events\\..*")";

  static std::string yaml_extra(const std::string& more = "") {
    return "  partitions_per_topic: 4\n  max_topics: 4\n  metadata_interval: 100ms\n" + more;
  }
  // A line of the topic table, e.g. "topic 0 events.a".
  bool table_has(const std::string& segment, const std::string& line) {
    FILE* f = std::fopen(("/dev/shm/." + segment + ".kafka-topics").c_str(), "r");
    if (f == nullptr) return false;
    char buf[512];
    bool found = false;
    while (std::fgets(buf, sizeof buf, f) != nullptr) found = found || std::string(buf) == line + "\n";
    std::fclose(f);
    return found;
  }
};

// Assignment all: the two matching topics are consumed and the other is not;
// a matching topic created mid-run is picked up; a SIGKILL and a restart
// resume exactly; a new topic that sorts before the others gets a new range
// and the old topics keep theirs (a moved range would replay its topic and
// the applied count would pass the number of messages).
TEST_F(KafkaRegexTest, MatchingTopicsAreConsumedAndKeepTheirRanges) {
  MockCluster cluster({"events.b:2", "events.a:3", "prices:2"});
  Oracle oracle, ignored;
  ASSERT_EQ(produce(cluster.bootstrap(), "events.a", keyed_stream("a", 0, 600, 60, oracle)), 0);
  ASSERT_EQ(produce(cluster.bootstrap(), "events.b", keyed_stream("b", 0, 400, 40, oracle)), 0);
  ASSERT_EQ(produce(cluster.bootstrap(), "prices", keyed_stream("p", 0, 300, 30, ignored)), 0);

  SidecarProcess& s = sidecar(name_, cluster.bootstrap(), kTopics, yaml_extra());
  s.start();
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == 1000; }, 60s))
      << "applied " << applied_messages(name_);
  // Name order gives the ranges.
  EXPECT_TRUE(table_has(name_, "topic 0 events.a"));
  EXPECT_TRUE(table_has(name_, "topic 1 events.b"));
  EXPECT_EQ(compare_segment(name_, oracle), "");  // nothing of prices

  // A topic created now matches: consumed at the next metadata read.
  ASSERT_EQ(cluster.command("topic events.c 2"), "ok");
  ASSERT_EQ(produce(cluster.bootstrap(), "events.c", keyed_stream("c", 0, 200, 20, oracle)), 0);
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == 1200; }, 60s))
      << "applied " << applied_messages(name_);
  EXPECT_TRUE(table_has(name_, "topic 2 events.c"));
  EXPECT_EQ(compare_segment(name_, oracle), "");

  // SIGKILL, more messages on two topics, a restart: resumes at the stored positions.
  s.kill9();
  ASSERT_EQ(produce(cluster.bootstrap(), "events.a", keyed_stream("a", 600, 1000, 60, oracle)), 0);
  ASSERT_EQ(produce(cluster.bootstrap(), "events.c", keyed_stream("c", 200, 500, 20, oracle)), 0);
  s.start();
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == 1900; }, 60s))
      << "applied " << applied_messages(name_);
  EXPECT_EQ(compare_segment(name_, oracle), "");
  EXPECT_GE(s.log_count("resuming at stored offset"), 1u);

  // Stopped; a topic that sorts first appears; the restart gives it the
  // free range 3 and resumes the others where they were.
  EXPECT_EQ(s.stop(), 0);
  ASSERT_EQ(cluster.command("topic events.0 1"), "ok");
  ASSERT_EQ(produce(cluster.bootstrap(), "events.0", keyed_stream("z", 0, 100, 10, oracle)), 0);
  ASSERT_EQ(produce(cluster.bootstrap(), "events.b", keyed_stream("b", 400, 500, 40, oracle)), 0);
  s.start();
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == 2100; }, 60s))
      << "applied " << applied_messages(name_);
  EXPECT_TRUE(table_has(name_, "topic 3 events.0"));
  EXPECT_TRUE(table_has(name_, "topic 0 events.a"));
  EXPECT_GE(s.log_count("topic \"events.a\" holds position range 0"), 2u);
  EXPECT_EQ(compare_segment(name_, oracle), "");
  // Caught up and nothing applied twice: the count holds once READY.
  ASSERT_TRUE(wait_until([&] { return Segment::open(name_).sync().state == layout::SyncState::kReady; }, 30s));
  EXPECT_EQ(applied_messages(name_), 2100);
  EXPECT_EQ(s.stop(), 0);
}

// More matching topics than max_topics: the extra one (in name order) is not
// consumed, and the log and the metrics say so.
TEST_F(KafkaRegexTest, TopicsBeyondMaxTopicsAreRefusedAndReported) {
  MockCluster cluster({"events.a:1", "events.b:1", "events.c:1"});
  Oracle oracle, ignored;
  ASSERT_EQ(produce(cluster.bootstrap(), "events.a", keyed_stream("a", 0, 100, 10, oracle)), 0);
  ASSERT_EQ(produce(cluster.bootstrap(), "events.b", keyed_stream("b", 0, 100, 10, oracle)), 0);
  ASSERT_EQ(produce(cluster.bootstrap(), "events.c", keyed_stream("c", 0, 100, 10, ignored)), 0);
  SidecarProcess& s = sidecar(name_, cluster.bootstrap(), kTopics,
                              "  partitions_per_topic: 4\n  max_topics: 2\n  metadata_interval: 100ms\n");
  s.start();
  ASSERT_TRUE(wait_until(
      [&] { return s.log_count("kafka: topic \"events.c\" matches kafka.topics but is not consumed") >= 1; }, 60s))
      << s.log_tail();
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == 200; }, 60s)) << "applied " << applied_messages(name_);
  ASSERT_TRUE(wait_until([&] { return s.metrics_port() > 0; }, 30s));
  httplib::Client http("127.0.0.1", s.metrics_port());
  auto metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("larder_kafka_topics_refused 1"), std::string::npos)
      << metrics->body.substr(metrics->body.find("larder_kafka"));
  EXPECT_EQ(compare_segment(name_, oracle), "");
  EXPECT_EQ(s.log_count("kafka: topic \"events.c\" matches kafka.topics but is not consumed"), 1u);  // logged once
  EXPECT_EQ(s.stop(), 0);
}

// Assignment group: librdkafka matches the regex; the group's assignment
// gives each topic its range, a topic created mid-run joins the assignment,
// and a restart keeps the ranges.
TEST_F(KafkaRegexTest, GroupAssignmentFollowsTheRegex) {
  MockCluster cluster({"events.a:2", "events.b:2", "prices:1"});
  const std::string extra = yaml_extra(fmt::format(
      "  assignment: group\n  group_id: {}-g\n  properties: {{session.timeout.ms: 6000, heartbeat.interval.ms: 500}}\n",
      name_));
  Oracle oracle, ignored;
  ASSERT_EQ(produce(cluster.bootstrap(), "events.a", keyed_stream("a", 0, 300, 30, oracle)), 0);
  ASSERT_EQ(produce(cluster.bootstrap(), "events.b", keyed_stream("b", 0, 300, 30, oracle)), 0);
  ASSERT_EQ(produce(cluster.bootstrap(), "prices", keyed_stream("p", 0, 100, 10, ignored)), 0);
  SidecarProcess& s = sidecar(name_, cluster.bootstrap(), kTopics, extra);
  s.start();
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == 600; }, 60s)) << "applied " << applied_messages(name_);
  EXPECT_EQ(compare_segment(name_, oracle), "");

  ASSERT_EQ(cluster.command("topic events.c 1"), "ok");
  ASSERT_EQ(produce(cluster.bootstrap(), "events.c", keyed_stream("c", 0, 100, 10, oracle)), 0);
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == 700; }, 60s)) << "applied " << applied_messages(name_);
  EXPECT_EQ(compare_segment(name_, oracle), "");
  EXPECT_GE(s.log_count("kafka: topic \"events.c\" matches kafka.topics: given position range"), 1u);

  s.kill9();
  ASSERT_EQ(produce(cluster.bootstrap(), "events.b", keyed_stream("b", 300, 500, 30, oracle)), 0);
  s.start();
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == 900; }, 60s)) << "applied " << applied_messages(name_);
  EXPECT_EQ(compare_segment(name_, oracle), "");
  ASSERT_TRUE(wait_until([&] { return Segment::open(name_).sync().state == layout::SyncState::kReady; }, 30s));
  EXPECT_EQ(applied_messages(name_), 900);
  EXPECT_EQ(s.stop(), 0);
}

// A range given to a topic that has stored no position yet (empty topic:
// the kill falls between the two for certain) is the topic's after a
// SIGKILL, while a new topic sorting first takes a free one. Then a damaged
// table: the ranges holding positions are retired and the topics replay
// into new ranges, never resuming at another topic's offsets.
TEST_F(KafkaRegexTest, RangesSurviveAKillBeforeTheFirstPositionAndDamageRetiresThem) {
  MockCluster cluster({"events.a:2", "events.b:2"});
  Oracle oracle;
  ASSERT_EQ(produce(cluster.bootstrap(), "events.a", keyed_stream("a", 0, 300, 30, oracle)), 0);
  SidecarProcess& s = sidecar(name_, cluster.bootstrap(), kTopics, yaml_extra());
  s.start();
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == 300; }, 60s)) << "applied " << applied_messages(name_);
  ASSERT_TRUE(wait_until([&] { return s.log_count("kafka: assigned 4 partitions") >= 1; }, 30s)) << s.log_tail();
  EXPECT_TRUE(table_has(name_, "topic 1 events.b"));  // given, and no position stored in it
  s.kill9();

  ASSERT_EQ(cluster.command("topic events.0 1"), "ok");
  ASSERT_EQ(produce(cluster.bootstrap(), "events.0", keyed_stream("z", 0, 50, 5, oracle)), 0);
  ASSERT_EQ(produce(cluster.bootstrap(), "events.b", keyed_stream("b", 0, 200, 20, oracle)), 0);
  s.start();
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == 550; }, 60s)) << "applied " << applied_messages(name_);
  EXPECT_TRUE(table_has(name_, "topic 1 events.b"));
  EXPECT_TRUE(table_has(name_, "topic 2 events.0"));
  EXPECT_EQ(compare_segment(name_, oracle), "");
  EXPECT_EQ(s.stop(), 0);

  // One byte changed: the checksum fails.
  const std::string path = "/dev/shm/." + name_ + ".kafka-topics";
  {
    FILE* f = std::fopen(path.c_str(), "r+");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fseek(f, 0, SEEK_END), 0);
    const long size = std::ftell(f);
    ASSERT_EQ(std::fseek(f, size - 30, SEEK_SET), 0);
    ASSERT_EQ(std::fputc('#', f), '#');
    std::fclose(f);
  }
  s.start();
  ASSERT_TRUE(wait_until([&] { return s.log_count("is damaged (the checksum does not match)") >= 1; }, 30s))
      << s.log_tail();
  // a (range 0), b (1) and events.0 (2) held positions: retired; the three
  // replay from their earliest offsets, into range 3 and no further (max_topics 4).
  EXPECT_EQ(s.log_count("holds stored positions of a topic the table does not name: retired"), 3u);
  ASSERT_TRUE(wait_until([&] { return table_has(name_, "topic 3 events.0"); }, 30s));
  EXPECT_TRUE(table_has(name_, "retired 0"));
  EXPECT_TRUE(table_has(name_, "retired 2"));
  ASSERT_TRUE(wait_until([&] { return applied_messages(name_) == 600; }, 60s)) << "applied " << applied_messages(name_);
  EXPECT_GE(s.log_count("kafka: topic \"events.a\" matches kafka.topics but is not consumed"), 1u);
  EXPECT_EQ(compare_segment(name_, oracle), "");
  EXPECT_EQ(s.stop(), 0);
}

// The topic table's file: what is written reads back; every damaged form is
// refused (no bytes trusted), and a table of another source is told apart.
TEST(KafkaTopicTableTest, RoundTripsAndRefusesDamage) {
  const std::string path = ::testing::TempDir() + unique_name("kafka-table") + ".kafka-topics";
  KafkaTopicTable t(path, "kafka topics=^e.* slots=4 ranges=3", 3);
  std::string why;
  EXPECT_EQ(t.load(&why), KafkaTopicTable::Load::kMissing);
  EXPECT_EQ(t.assign("events.b", &why), 0);
  t.retire(1);
  EXPECT_EQ(t.assign("events.a", &why), 2);  // the lowest free range: 1 is retired
  EXPECT_EQ(t.assign("events.c", &why), -1);
  EXPECT_EQ(why, "");                        // full, not failed
  EXPECT_EQ(t.assign("events.b", &why), 0);  // kept

  KafkaTopicTable back(path, "kafka topics=^e.* slots=4 ranges=3", 3);
  ASSERT_EQ(back.load(&why), KafkaTopicTable::Load::kLoaded) << why;
  EXPECT_EQ(back.topic_of(0), "events.b");
  EXPECT_TRUE(back.retired(1));
  EXPECT_EQ(back.topic_of(2), "events.a");
  KafkaTopicTable other(path, "kafka topics=^f.* slots=4 ranges=3", 3);
  EXPECT_EQ(other.load(&why), KafkaTopicTable::Load::kOtherSource);
  EXPECT_EQ(other.used(), 0u);
  KafkaTopicTable fewer(path, "kafka topics=^e.* slots=4 ranges=3", 2);
  EXPECT_EQ(fewer.load(&why), KafkaTopicTable::Load::kOtherSource);

  const std::string good = back.serialize();
  // Re-sums a body so that only the content check can refuse it.
  auto resum = [](const std::string& body) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char c : body) {
      h ^= static_cast<unsigned char>(c);
      h *= 0x100000001b3ull;
    }
    return body + fmt::format("end {:016x}\n", h);
  };
  const std::string body = good.substr(0, good.rfind("end "));
  const std::string head = body.substr(0, body.find("topic "));
  KafkaTopicTable p(path, "kafka topics=^e.* slots=4 ranges=3", 3);
  EXPECT_EQ(p.parse(good, &why), KafkaTopicTable::Load::kLoaded) << why;
  const std::vector<std::pair<std::string, std::string>> damaged = {
      {good.substr(0, good.size() - 1), "no final newline"},
      {std::string(good).replace(good.find("events.a"), 1, "f"), "checksum"},
      {"", "no final newline"},
      {std::string(good).insert(10, 1, '\0'), "NUL"},
      {std::string(70 * 1024, 'x'), "more than a table holds"},
      {resum(head + "topic 3 events.x\n"), "out of bounds"},
      {resum(head + "topic 00 events.x\n"), "out of bounds"},
      {resum(head + "topic 0 events.x\ntopic 0 events.y\n"), "given twice"},
      {resum(head + "topic 0 events.x\nretired 0\n"), "given twice"},
      {resum(head + "topic 0 events.x\ntopic 1 events.x\n"), "listed twice"},
      {resum(head + "topic 0 bad/name\n"), "not a Kafka topic name"},
      {resum(head + "topic 0 " + std::string(250, 'a') + "\n"), "not a Kafka topic name"},
      {resum(head + "topic 0\n"), "not a Kafka topic name"},
      {resum(head + "retired -1\n"), "out of bounds"},
      {resum(head + "moved 0 1\n"), "unknown entry"},
      {resum("larder-kafka-topics 2\n" + head.substr(head.find('\n') + 1)), "not a topic table of this version"},
      {resum(head.substr(0, head.find("ranges"))), "no header"},
  };
  for (const auto& [bytes, fragment] : damaged) {
    EXPECT_EQ(p.parse(bytes, &why), KafkaTopicTable::Load::kDamaged) << fragment;
    EXPECT_NE(why.find(fragment), std::string::npos) << why << " (expected " << fragment << ")";
    EXPECT_EQ(p.used(), 0u);
  }
  std::remove(path.c_str());
}

}  // namespace
}  // namespace larder::test

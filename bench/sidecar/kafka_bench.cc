// larder-bench-kafka: the sidecar's Kafka source against a bare librdkafka
// consumer, on the same mock cluster (larder_kafka_mock_cluster, a process
// of its own on loopback) and the same topic.
//
// Once: starts the mock cluster with one topic of --partitions partitions
// and produces --messages messages of --updates updates each (keyed, acked).
// Then, --rounds times, alternating: the bare consumer (every partition
// assigned from its start, rd_kafka_consumer_poll, reads each payload's
// length and nothing else) and a fresh larder-sidecar on its own segment
// (kafka assignment all, start earliest). Each is timed from its first
// message (the bare consumer) or its first applied update (the sidecar,
// from the segment header) to its last: the sidecar's last is when the
// positions the segment stores (Segment::sync(), polled every 100 µs) add up
// to --messages. Prints a Markdown table with the ratio sidecar / bare.
#include <fmt/format.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>

#include "larder/client.h"
#include "larder/writer/writer.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Options {
  uint32_t messages = 200'000;
  uint32_t updates = 1;
  uint32_t partitions = 4;
  uint32_t rounds = 3;
  std::string sidecar = LARDER_SIDECAR_BINARY;
  std::string mock = LARDER_KAFKA_MOCK_BINARY;
};

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The mock cluster child: its pid and bootstrap servers. Its stdin stays
// open (a pipe) for as long as the bench runs.
struct Mock {
  pid_t pid = -1;
  int stdin_fd = -1;
  std::string bootstrap;
};

Mock start_mock(const Options& o, const std::string& topic) {
  int in[2], out[2];
  if (::pipe(in) != 0 || ::pipe(out) != 0) throw std::runtime_error("pipe");
  const std::string spec = fmt::format("{}:{}", topic, o.partitions);
  Mock m;
  m.pid = ::fork();
  if (m.pid == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::close(in[1]);
    ::close(out[0]);
    ::execl(o.mock.c_str(), "larder_kafka_mock_cluster", "--topic", spec.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  m.stdin_fd = in[1];
  FILE* from = ::fdopen(out[0], "r");
  char line[1024];
  if (std::fgets(line, sizeof line, from) == nullptr || std::string(line).rfind("bootstrap ", 0) != 0) {
    throw std::runtime_error("the mock cluster did not start");
  }
  std::string s(line + 10);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  m.bootstrap = s;
  std::fclose(from);
  return m;
}

void produce(const Options& o, const Mock& m, const std::string& topic) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", m.bootstrap.c_str(), err, sizeof err);
  rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof err);
  static uint64_t failed = 0;
  rd_kafka_conf_set_dr_msg_cb(conf, [](rd_kafka_t*, const rd_kafka_message_t* msg, void*) {
    if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR) ++failed;
  });
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (rk == nullptr) throw std::runtime_error(err);
  const int64_t t0 = 1'700'000'000'000;
  for (uint32_t i = 0; i < o.messages; ++i) {
    const std::string key = fmt::format("k{}", i % 100'000);
    std::string body = o.updates > 1 ? "[" : "";
    for (uint32_t u = 0; u < o.updates; ++u) {
      if (u > 0) body += ",";
      body += fmt::format(R"({{"table":"t","key":"k{}","event_time":{},"fields":{{"n":{},"x":{}.5}}}})",
                          (uint64_t{i} * o.updates + u) % 100'000, t0 + i, i, u);
    }
    if (o.updates > 1) body += "]";
    for (;;) {
      const rd_kafka_resp_err_t e = rd_kafka_producev(
          rk, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_KEY(key.data(), key.size()),
          RD_KAFKA_V_VALUE(body.data(), body.size()), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
      if (e == RD_KAFKA_RESP_ERR_NO_ERROR) break;
      if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) throw std::runtime_error(rd_kafka_err2str(e));
      rd_kafka_poll(rk, 10);
    }
  }
  if (rd_kafka_flush(rk, 120'000) != RD_KAFKA_RESP_ERR_NO_ERROR || failed > 0) {
    throw std::runtime_error("produce: not every message was acknowledged");
  }
  rd_kafka_destroy(rk);
}

// The bare consumer: every partition from its start. Seconds from the first
// message to the last.
double bare_consume(const Options& o, const Mock& m, const std::string& topic) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", m.bootstrap.c_str(), err, sizeof err);
  rd_kafka_conf_set(conf, "group.id", "larder-bench-bare", err, sizeof err);
  rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
  rd_kafka_conf_set(conf, "enable.partition.eof", "false", err, sizeof err);
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (rk == nullptr) throw std::runtime_error(err);
  rd_kafka_poll_set_consumer(rk);
  rd_kafka_topic_partition_list_t* parts = rd_kafka_topic_partition_list_new(static_cast<int>(o.partitions));
  for (uint32_t p = 0; p < o.partitions; ++p) {
    rd_kafka_topic_partition_list_add(parts, topic.c_str(), static_cast<int32_t>(p))->offset =
        RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_assign(rk, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  uint64_t got = 0, bytes = 0;
  Clock::time_point first;
  while (got < o.messages) {
    rd_kafka_message_t* msg = rd_kafka_consumer_poll(rk, 5000);
    if (msg == nullptr) throw std::runtime_error("bare consumer: no message for 5 s");
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (got++ == 0) first = Clock::now();
      bytes += msg->len;
    }
    rd_kafka_message_destroy(msg);
  }
  const double s = seconds_since(first);
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  if (bytes == 0) throw std::runtime_error("bare consumer: empty messages");
  return s;
}

// A fresh larder-sidecar on its own segment reads the topic from its start.
// Seconds from its first applied update until its stored positions add up to
// every message.
double sidecar_consume(const Options& o, const Mock& m, const std::string& topic, const std::string& segment) {
  larder::Writer::remove_segment(segment);
  const std::string config = fmt::format("/tmp/{}.yaml", segment);
  std::ofstream(config) << fmt::format(R"(segment: {{name: {segment}}}
tables:
  - name: t
    key_max_len: 32
    capacity: 150000
    event_time: {{max_future_skew: off, min_event_time: 0}}
    fields:
      - {{name: n, type: int64}}
      - {{name: x, type: float64}}
kafka:
  bootstrap_servers: "{bootstrap}"
  topics: [{topic}]
  start: earliest
logging: {{level: warn}}
metrics: {{listen: ""}}
)",
                                       fmt::arg("segment", segment), fmt::arg("bootstrap", m.bootstrap),
                                       fmt::arg("topic", topic));
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl(o.sidecar.c_str(), "larder-sidecar", "--config", config.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  larder::Segment seg;
  for (int i = 0;; ++i) {
    try {
      seg = larder::Segment::open(segment);
      break;
    } catch (const larder::Error&) {
      if (i > 3000) throw std::runtime_error("the sidecar did not create its segment");
      std::this_thread::sleep_for(10ms);
    }
  }
  while (seg.info().updates_applied == 0) std::this_thread::sleep_for(100us);
  const auto first = Clock::now();
  auto done = [&] {
    uint64_t n = 0;
    for (const larder::SyncInfo::Partition& p : seg.sync().partitions) n += p.next_offset.value_or(0);
    return n == o.messages;
  };
  while (!done()) std::this_thread::sleep_for(100us);
  const double s = seconds_since(first);
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  std::remove(config.c_str());
  larder::Writer::remove_segment(segment);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"larder-bench-kafka: the sidecar's Kafka source vs a bare librdkafka consumer on a mock cluster"};
  app.add_option("--messages", o.messages, "messages in the topic")->capture_default_str();
  app.add_option("--updates", o.updates, "updates per message")->capture_default_str();
  app.add_option("--partitions", o.partitions, "partitions of the topic")->capture_default_str();
  app.add_option("--rounds", o.rounds, "bare/sidecar runs, alternating")->capture_default_str();
  app.add_option("--sidecar", o.sidecar, "larder-sidecar binary")->capture_default_str();
  app.add_option("--mock", o.mock, "larder_kafka_mock_cluster binary")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (o.messages == 0 || o.updates == 0 || o.partitions == 0 || o.partitions > 64) {
    std::fprintf(stderr, "larder-bench-kafka: --messages and --updates > 0, --partitions 1..64\n");
    return 2;
  }
  const std::string topic = fmt::format("larder-bench-kafka-{}", ::getpid());
  Mock m;
  try {
    m = start_mock(o, topic);
    std::printf("# Kafka source\n\nmock cluster %s, topic of %u partitions, %u messages x %u updates\n\n",
                m.bootstrap.c_str(), o.partitions, o.messages, o.updates);
    std::fflush(stdout);
    produce(o, m, topic);
    std::printf("| round | bare msg/s | sidecar msg/s | sidecar updates/s | ratio |\n|---|---:|---:|---:|---:|\n");
    for (uint32_t r = 0; r < o.rounds; ++r) {
      const double bare = o.messages / bare_consume(o, m, topic);
      const double side = o.messages / sidecar_consume(o, m, topic, fmt::format("larder-bench-kafka-{}", ::getpid()));
      std::printf("| %u | %.0f | %.0f | %.0f | %.2f |\n", r + 1, bare, side, side * o.updates, side / bare);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "larder-bench-kafka: %s\n", e.what());
  }
  if (m.stdin_fd >= 0) ::close(m.stdin_fd);  // end of input: the mock cluster exits
  if (m.pid > 0) ::waitpid(m.pid, nullptr, 0);
  return 0;
}

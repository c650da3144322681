// larder-bench-kafka: the sidecar's Kafka source against a bare librdkafka
// consumer, on the same mock cluster (larder_kafka_mock_cluster, a process
// of its own on loopback) and the same topics.
//
// Once: starts the mock cluster with two topics of --partitions partitions
// and produces --messages messages of 1 update and --batch-messages
// messages of 100 updates (keyed, acked). Then, for each topic, --rounds
// times, alternating:
//   (a) bare:        every partition assigned from its start,
//                    rd_kafka_consumer_poll, reads each payload's length;
//   (b) bare+apply:  the same poll loop, plus the sidecar's decoder and
//                    apply_batch (positions stored with every update) into a
//                    segment of the same config, in one thread: the floor any
//                    Kafka source reaches with this decoder and writer;
//   (c) sidecar:     a fresh larder-sidecar on its own segment (kafka
//                    assignment all, start earliest).
// The consumers get the sidecar's librdkafka defaults and every --property.
// Each is timed from its first message (a, b) or its first applied update
// (c, from the segment header) to its last: the sidecar's last is when the
// positions the segment stores (Segment::sync(), polled every 200 us) add
// up to the topic's messages. Prints a Markdown table per topic with the
// ratios c/a and c/b, and their medians.
#include <fmt/format.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "apply/writer_thread.h"
#include "config/config.h"
#include "consume/kafka_source.h"
#include "decode/message_decoder.h"
#include "larder/client.h"
#include "larder/writer/writer.h"
#include "snapshot/bootstrap.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Options {
  uint32_t messages = 100'000;
  uint32_t batch_messages = 2'000;
  uint32_t partitions = 4;
  uint32_t rounds = 3;
  std::vector<std::string> properties;  // key=value, for every consumer
  uint32_t max_in_flight = 0;           // the sidecar's kafka.max_in_flight; 0: its default
  std::string sidecar = LARDER_SIDECAR_BINARY;
  std::string mock = LARDER_KAFKA_MOCK_BINARY;
};

// One topic of the run: its messages and updates per message.
struct Topic {
  std::string name;
  uint32_t messages = 0;
  uint32_t updates = 0;
};

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// CPU time of every thread of process `pid` ("self" for this one), in
// seconds: the first field of each /proc/PID/task/TID/schedstat (ns on CPU).
// Wall time on a shared machine says how much CPU the scheduler gave a
// process; this says how much work it did.
double cpu_seconds(const std::string& pid) {
  uint64_t ns = 0;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + pid + "/task", ec)) {
    std::ifstream in(task.path() / "schedstat");
    uint64_t on_cpu = 0;
    if (in >> on_cpu) ns += on_cpu;
  }
  return static_cast<double>(ns) * 1e-9;
}

// One run: wall seconds from the first message to the last, and the CPU
// seconds the consumer's process spent over the same span.
struct Run {
  double wall_s = 0;
  double cpu_s = 0;
};

// The librdkafka settings every consumer of the bench gets: the sidecar's
// defaults, then the --property ones (as kafka.properties would be).
std::vector<std::pair<std::string, std::string>> consumer_properties(const Options& o) {
  std::vector<std::pair<std::string, std::string>> all = larder::sidecar::kafka_default_properties();
  for (const std::string& p : o.properties) {
    const size_t eq = p.find('=');
    if (eq == std::string::npos || eq == 0) throw std::runtime_error("--property takes key=value: " + p);
    all.emplace_back(p.substr(0, eq), p.substr(eq + 1));
  }
  return all;
}

// The mock cluster child: its pid and bootstrap servers. Its stdin stays
// open (a pipe) for as long as the bench runs.
struct Mock {
  pid_t pid = -1;
  int stdin_fd = -1;
  std::string bootstrap;
};

Mock start_mock(const Options& o, const std::vector<Topic>& topics) {
  int in[2], out[2];
  if (::pipe(in) != 0 || ::pipe(out) != 0) throw std::runtime_error("pipe");
  std::vector<std::string> args = {"larder_kafka_mock_cluster"};
  for (const Topic& t : topics) {
    args.push_back("--topic");
    args.push_back(fmt::format("{}:{}", t.name, o.partitions));
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  Mock m;
  m.pid = ::fork();
  if (m.pid == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::close(in[1]);
    ::close(out[0]);
    ::execv(o.mock.c_str(), argv.data());
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

void produce(const Mock& m, const Topic& topic, uint32_t partitions) {
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
  for (uint32_t i = 0; i < topic.messages; ++i) {
    const std::string key = fmt::format("k{}", i % 100'000);
    std::string body = topic.updates > 1 ? "[" : "";
    for (uint32_t u = 0; u < topic.updates; ++u) {
      if (u > 0) body += ",";
      body += fmt::format(R"({{"table":"t","key":"k{}","event_time":{},"fields":{{"n":{},"x":{}.5}}}})",
                          (uint64_t{i} * topic.updates + u) % 100'000, t0 + i, i, u);
    }
    if (topic.updates > 1) body += "]";
    for (;;) {
      const rd_kafka_resp_err_t e = rd_kafka_producev(
          rk, RD_KAFKA_V_TOPIC(topic.name.c_str()), RD_KAFKA_V_KEY(key.data(), key.size()),
          RD_KAFKA_V_VALUE(body.data(), body.size()), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
      if (e == RD_KAFKA_RESP_ERR_NO_ERROR) break;
      if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) throw std::runtime_error(rd_kafka_err2str(e));
      rd_kafka_poll(rk, 10);
    }
  }
  if (rd_kafka_flush(rk, 120'000) != RD_KAFKA_RESP_ERR_NO_ERROR || failed > 0) {
    throw std::runtime_error("produce: not every message was acknowledged");
  }
  // The mock cluster keeps a bounded log per partition (about 5 MB in
  // librdkafka 2.0) and drops the oldest messages beyond it.
  for (int32_t p = 0; p < static_cast<int32_t>(partitions); ++p) {
    int64_t low = -1, high = -1;
    if (rd_kafka_query_watermark_offsets(rk, topic.name.c_str(), p, &low, &high, 10'000) !=
            RD_KAFKA_RESP_ERR_NO_ERROR ||
        low != 0) {
      throw std::runtime_error(fmt::format(
          "produce: {}[{}] no longer starts at offset 0 (the mock cluster dropped its oldest messages): use more "
          "--partitions or fewer messages",
          topic.name, p));
    }
  }
  rd_kafka_destroy(rk);
}

// The config the sidecar runs with; bare+apply builds its decoder and
// segment from the same text.
std::string sidecar_yaml(const Options& o, const Mock& m, const Topic& topic, const std::string& segment) {
  std::string properties;
  for (const std::string& p : o.properties) {
    const size_t eq = p.find('=');
    properties += fmt::format("    {}: \"{}\"\n", p.substr(0, eq), p.substr(eq + 1));
  }
  return fmt::format(
      R"(segment: {{name: {segment}}}
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
{window}{properties}logging: {{level: warn}}
metrics: {{listen: ""}}
)",
      fmt::arg("segment", segment), fmt::arg("bootstrap", m.bootstrap), fmt::arg("topic", topic.name),
      fmt::arg("window", o.max_in_flight > 0 ? fmt::format("  max_in_flight: {}\n", o.max_in_flight) : ""),
      fmt::arg("properties", properties.empty() ? "" : "  properties:\n" + properties));
}

// A consumer with every partition of the topic assigned from its start.
rd_kafka_t* bare_consumer(const Options& o, const Mock& m, const Topic& topic, const char* group) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  std::vector<std::pair<std::string, std::string>> settings = {
      {"bootstrap.servers", m.bootstrap},
      {"group.id", group},
      {"enable.auto.commit", "false"},
      {"enable.partition.eof", "false"},
  };
  for (auto& p : consumer_properties(o)) settings.push_back(std::move(p));
  for (const auto& [key, value] : settings) {
    if (rd_kafka_conf_set(conf, key.c_str(), value.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      throw std::runtime_error(fmt::format("{}: {}", key, err));
    }
  }
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (rk == nullptr) throw std::runtime_error(err);
  rd_kafka_poll_set_consumer(rk);
  rd_kafka_topic_partition_list_t* parts = rd_kafka_topic_partition_list_new(static_cast<int>(o.partitions));
  for (uint32_t p = 0; p < o.partitions; ++p) {
    rd_kafka_topic_partition_list_add(parts, topic.name.c_str(), static_cast<int32_t>(p))->offset =
        RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_assign(rk, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  return rk;
}

// (a) The bare consumer.
[[gnu::noinline]] Run bare_poll(const Options& o, const Mock& m, const Topic& topic) {
  rd_kafka_t* rk = bare_consumer(o, m, topic, "larder-bench-bare");
  uint64_t got = 0, bytes = 0;
  Clock::time_point first;
  double cpu0 = 0;
  while (got < topic.messages) {
    rd_kafka_message_t* msg = rd_kafka_consumer_poll(rk, 5000);
    if (msg == nullptr) throw std::runtime_error(fmt::format("bare consumer: no message for 5 s after {}", got));
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (got++ == 0) {
        first = Clock::now();
        cpu0 = cpu_seconds("self");
      }
      bytes += msg->len;
    }
    rd_kafka_message_destroy(msg);
  }
  const Run s{seconds_since(first), cpu_seconds("self") - cpu0};
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  if (bytes == 0) throw std::runtime_error("bare consumer: empty messages");
  return s;
}

// (b) The bare consumer, decoding each message with the sidecar's decoder
// and applying it with its position (apply_batch, as the writer thread
// does) into a fresh segment of the sidecar's config, in the same loop.
// Timed from the first message to the last one's apply.
[[gnu::noinline]] Run bare_apply(const Options& o, const Mock& m, const Topic& topic, const std::string& segment) {
  larder::Writer::remove_segment(segment);
  const larder::sidecar::Config config = larder::sidecar::parse_config(sidecar_yaml(o, m, topic, segment), "bench");
  std::unique_ptr<larder::Writer> writer = larder::sidecar::open_segment(config, {});
  writer->set_source_id("larder-bench-kafka");
  std::unique_ptr<larder::sidecar::MessageDecoder> decoder =
      larder::sidecar::make_message_decoder(config.schema(), config.decode_options(), config.kafka.format);
  larder::sidecar::DecodedBatch batch;
  rd_kafka_t* rk = bare_consumer(o, m, topic, "larder-bench-bare-apply");
  uint64_t got = 0, applied = 0, stale = 0, refused = 0;
  Clock::time_point first;
  double cpu0 = 0;
  while (got < topic.messages) {
    rd_kafka_message_t* msg = rd_kafka_consumer_poll(rk, 5000);
    if (msg == nullptr) throw std::runtime_error("bare+apply consumer: no message for 5 s");
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (got++ == 0) {
        first = Clock::now();
        cpu0 = cpu_seconds("self");
      }
      const std::string_view body(static_cast<const char*>(msg->payload), msg->payload != nullptr ? msg->len : 0);
      if (!decoder->decode(body, batch).ok) throw std::runtime_error("bare+apply: a message did not decode");
      const larder::sidecar::StreamPlace place{static_cast<uint64_t>(msg->offset), 0,
                                               static_cast<uint32_t>(msg->partition)};
      larder::sidecar::RejectReason reason{};
      if (larder::sidecar::apply_batch(*writer, batch, &reason, &stale, &applied, nullptr, nullptr, nullptr, &place) ==
          larder::sidecar::Outcome::kRejected) {
        ++refused;
      }
    }
    rd_kafka_message_destroy(msg);
  }
  const Run s{seconds_since(first), cpu_seconds("self") - cpu0};
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  writer.reset();
  larder::Writer::remove_segment(segment);
  if (refused > 0 || applied + stale != uint64_t{topic.messages} * topic.updates) {
    throw std::runtime_error(fmt::format("bare+apply: {} applied + {} stale of {} updates, {} messages refused",
                                         applied, stale, uint64_t{topic.messages} * topic.updates, refused));
  }
  return s;
}

// (c) A fresh larder-sidecar on its own segment reads the topic from its
// start. Timed from its first applied update until its stored positions add
// up to every message.
Run sidecar_consume(const Options& o, const Mock& m, const Topic& topic, const std::string& segment) {
  larder::Writer::remove_segment(segment);
  const std::string config = fmt::format("/tmp/{}.yaml", segment);
  std::ofstream(config) << sidecar_yaml(o, m, topic, segment);
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
  const std::string child = std::to_string(pid);
  const double cpu0 = cpu_seconds(child);
  auto done = [&] {
    uint64_t n = 0;
    for (const larder::SyncInfo::Partition& p : seg.sync().partitions) n += p.next_offset.value_or(0);
    return n == topic.messages;
  };
  // Every 200 us: the bench shares the cores with the sidecar and the mock
  // cluster; the runs last 100 ms or more, so the error is under 0.2 %.
  while (!done()) std::this_thread::sleep_for(200us);
  const Run s{seconds_since(first), cpu_seconds(child) - cpu0};
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  std::remove(config.c_str());
  larder::Writer::remove_segment(segment);
  return s;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void run_topic(const Options& o, const Mock& m, const Topic& topic) {
  const std::string segment = fmt::format("larder-bench-kafka-{}", ::getpid());
  std::printf("\n%u messages x %u update%s\n\n", topic.messages, topic.updates, topic.updates == 1 ? "" : "s");
  // Rates are messages per wall second; CPU is microseconds of CPU per
  // message (every thread of the consumer's process), and its ratios are
  // inverted (b's CPU / c's) so that, like the rates, 1.0 is parity.
  std::printf(
      "| round | (a) msg/s | (b) msg/s | (c) msg/s | (c) updates/s | c/a | c/b | (a) CPU us/msg | (b) CPU us/msg | "
      "(c) CPU us/msg | CPU b/c |\n"
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  std::fflush(stdout);
  std::vector<double> ca, cb, cpu_bc;
  for (uint32_t r = 0; r < o.rounds; ++r) {
    const Run a = bare_poll(o, m, topic);
    const Run b = bare_apply(o, m, topic, segment);
    const Run c = sidecar_consume(o, m, topic, segment);
    const double ra = topic.messages / a.wall_s, rb = topic.messages / b.wall_s, rc = topic.messages / c.wall_s;
    const double us = 1e6 / topic.messages;
    ca.push_back(rc / ra);
    cb.push_back(rc / rb);
    cpu_bc.push_back(b.cpu_s / c.cpu_s);
    std::printf("| %u | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", r + 1, ra, rb, rc,
                rc * topic.updates, rc / ra, rc / rb, a.cpu_s * us, b.cpu_s * us, c.cpu_s * us, b.cpu_s / c.cpu_s);
    std::fflush(stdout);
  }
  std::printf("| median | | | | | %.2f | %.2f | | | | %.2f |\n", median(ca), median(cb), median(cpu_bc));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"larder-bench-kafka: the sidecar's Kafka source vs a bare librdkafka consumer on a mock cluster"};
  app.add_option("--messages", o.messages, "messages of 1 update (0: skip)")->capture_default_str();
  app.add_option("--batch-messages", o.batch_messages, "messages of 100 updates (0: skip)")->capture_default_str();
  app.add_option("--partitions", o.partitions, "partitions of each topic")->capture_default_str();
  app.add_option("--rounds", o.rounds, "(a)/(b)/(c) runs per topic, alternating")->capture_default_str();
  app.add_option("--property", o.properties, "key=value for librdkafka, in every consumer (repeatable)");
  app.add_option("--max-in-flight", o.max_in_flight, "the sidecar's kafka.max_in_flight (0: its default)");
  app.add_option("--sidecar", o.sidecar, "larder-sidecar binary")->capture_default_str();
  app.add_option("--mock", o.mock, "larder_kafka_mock_cluster binary")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if ((o.messages == 0 && o.batch_messages == 0) || o.rounds == 0 || o.partitions == 0 || o.partitions > 16) {
    std::fprintf(stderr, "larder-bench-kafka: --messages or --batch-messages > 0, --rounds > 0, --partitions 1..16\n");
    return 2;
  }
  std::vector<Topic> topics;
  if (o.messages > 0) topics.push_back({fmt::format("larder-bench-kafka-{}-1", ::getpid()), o.messages, 1});
  if (o.batch_messages > 0) {
    topics.push_back({fmt::format("larder-bench-kafka-{}-100", ::getpid()), o.batch_messages, 100});
  }
  Mock m;
  int rc = 0;
  try {
    m = start_mock(o, topics);
    std::string props;
    for (const auto& [k, v] : consumer_properties(o)) props += fmt::format("{}{}={}", props.empty() ? "" : " ", k, v);
    std::printf("# Kafka source\n\nmock cluster %s, topics of %u partitions; consumer settings: %s\n",
                m.bootstrap.c_str(), o.partitions, props.c_str());
    std::fflush(stdout);
    for (const Topic& t : topics) produce(m, t, o.partitions);
    for (const Topic& t : topics) run_topic(o, m, t);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "larder-bench-kafka: %s\n", e.what());
    rc = 1;
  }
  if (m.stdin_fd >= 0) ::close(m.stdin_fd);  // end of input: the mock cluster exits
  if (m.pid > 0) ::waitpid(m.pid, nullptr, 0);
  return rc;
}

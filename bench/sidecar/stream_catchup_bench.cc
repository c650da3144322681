// larder-bench-stream-catchup: how fast larder-sidecar replays a RabbitMQ
// stream from `first` (catch-up after a restart or on a new host), against a
// bare rabbitmq-c consumer reading the same stream from `first` in the same
// run. A tool that prints a Markdown table, not a timed test
// (bench/sidecar/README.md).
//
// One stream of --messages messages of --updates updates each is published
// once (with confirms). Then, --rounds times: the bare consumer reads every
// message from `first` (prefetch as the sidecar's, acking each, reading the
// x-stream-offset header of each delivery as the sidecar does); a fresh
// larder-sidecar with its own new segment replays the stream from `first`
// until its stored position reaches the end (Segment::sync(), polled every
// 100 µs). Each is timed from its first delivery (the bare consumer) or its
// first applied update (the sidecar) to the last.
//
// Threads: main only (the sidecar is a child process).
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "config/amqp_url.h"
#include "larder/client.h"
#include "larder/writer/writer.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct Options {
  std::string url;
  std::string password_env = "LARDER_BENCH_AMQP_PASSWORD";
  std::string password;
  uint32_t messages = 200000;
  uint32_t updates = 1;  // per message
  uint32_t prefetch = 200;
  uint32_t rounds = 2;
  std::string sidecar = LARDER_SIDECAR_BINARY;
};

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

amqp_bytes_t bytes_of(const std::string& s) { return amqp_bytes_t{s.size(), const_cast<char*>(s.data())}; }

void check(amqp_connection_state_t c, const char* what) {
  const amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
  if (r.reply_type != AMQP_RESPONSE_NORMAL) throw std::runtime_error(fmt::format("{} failed", what));
}

amqp_connection_state_t connect(const Options& o) {
  larder::sidecar::AmqpUrl url;
  std::string error;
  if (!larder::sidecar::parse_amqp_url(o.url, &url, &error)) throw std::runtime_error("--url: " + error);
  amqp_connection_state_t c = amqp_new_connection();
  amqp_socket_t* s = amqp_tcp_socket_new(c);
  if (amqp_socket_open(s, url.host.c_str(), url.port) != AMQP_STATUS_OK) throw std::runtime_error("connect " + o.url);
  if (amqp_login(c, url.vhost.c_str(), 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, url.user.c_str(), o.password.c_str())
          .reply_type != AMQP_RESPONSE_NORMAL) {
    throw std::runtime_error("login");
  }
  amqp_channel_open(c, 1);
  check(c, "channel.open");
  return c;
}

void close(amqp_connection_state_t c) {
  amqp_connection_close(c, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(c);
}

amqp_table_entry_t utf8(const char* key, const char* value) {
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_UTF8;
  e.value.value.bytes = amqp_cstring_bytes(value);
  return e;
}

// Declares the stream as larder-sidecar does and publishes the messages with
// confirms (2,000 in flight).
void publish_stream(const Options& o, const std::string& stream) {
  amqp_connection_state_t c = connect(o);
  amqp_table_entry_t args[] = {utf8("x-queue-type", "stream")};
  amqp_queue_declare(c, 1, bytes_of(stream), 0, 1, 0, 0, amqp_table_t{1, args});
  check(c, "declare stream");
  amqp_confirm_select(c, 1);
  check(c, "confirm.select");
  uint64_t published = 0, confirmed = 0;
  auto wait_confirm = [&] {
    amqp_frame_t f;
    if (amqp_simple_wait_frame(c, &f) != AMQP_STATUS_OK) throw std::runtime_error("waiting for confirms");
    if (f.frame_type == AMQP_FRAME_METHOD && f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
      const auto* a = static_cast<const amqp_basic_ack_t*>(f.payload.method.decoded);
      confirmed = a->multiple ? a->delivery_tag : std::max(confirmed, a->delivery_tag);
    } else if (f.frame_type == AMQP_FRAME_METHOD && f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
      throw std::runtime_error("publish nacked");
    }
  };
  const int64_t t0 = 1'700'000'000'000;
  for (uint32_t m = 0; m < o.messages; ++m) {
    std::string body = "[";
    for (uint32_t u = 0; u < o.updates; ++u) {
      const uint64_t i = uint64_t{m} * o.updates + u;
      body += fmt::format(R"({}{{"table":"t","key":"k{}","event_time":{},"fields":{{"n":{},"x":{}}}}})", u ? "," : "",
                          i % 100000, t0 + static_cast<int64_t>(i), i, static_cast<double>(i) * 0.5);
    }
    body += "]";
    amqp_basic_publish(c, 1, amqp_cstring_bytes(""), bytes_of(stream), 0, 0, nullptr, bytes_of(body));
    ++published;
    while (published - confirmed >= 2000) wait_confirm();
  }
  while (confirmed < published) wait_confirm();
  close(c);
}

// The bare consumer: every message from `first`, acking each. Seconds from
// the first delivery to the last.
double bare_replay(const Options& o, const std::string& stream) {
  amqp_connection_state_t c = connect(o);
  amqp_basic_qos(c, 1, 0, static_cast<uint16_t>(o.prefetch), 0);
  check(c, "basic.qos");
  amqp_table_entry_t args[] = {utf8("x-stream-offset", "first")};
  amqp_basic_consume(c, 1, bytes_of(stream), amqp_empty_bytes, 0, 0, 0, amqp_table_t{1, args});
  check(c, "basic.consume");
  Clock::time_point first{};
  uint64_t seen = 0, last_offset = 0;
  while (seen < o.messages) {
    amqp_envelope_t env;
    amqp_maybe_release_buffers(c);
    timeval tv{5, 0};
    const amqp_rpc_reply_t r = amqp_consume_message(c, &env, &tv, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) throw std::runtime_error("bare consumer: no delivery for 5 s");
    if (seen == 0) first = Clock::now();
    const amqp_table_t& h = env.message.properties.headers;
    for (int i = 0; i < h.num_entries; ++i) {
      if (h.entries[i].key.len == 15 && std::memcmp(h.entries[i].key.bytes, "x-stream-offset", 15) == 0) {
        last_offset = static_cast<uint64_t>(h.entries[i].value.value.i64);
      }
    }
    amqp_basic_ack(c, 1, env.delivery_tag, 0);
    amqp_destroy_envelope(&env);
    ++seen;
  }
  const double s = seconds_since(first);
  if (last_offset + 1 != o.messages)
    std::fprintf(stderr, "bare consumer: last offset %llu\n", (unsigned long long)last_offset);
  close(c);
  return s;
}

// A fresh larder-sidecar on its own segment replays the stream from `first`.
// Seconds from its first applied update until its stored position is the
// end of the stream.
double sidecar_replay(const Options& o, const std::string& stream, const std::string& segment) {
  larder::Writer::remove_segment(segment);
  const std::string config = fmt::format("/tmp/{}.yaml", segment);
  std::ofstream(config) << fmt::format(R"(segment: {{name: {segment}}}
tables:
  - name: t
    key_max_len: 32
    capacity: 150000
    fields:
      - {{name: n, type: int64}}
      - {{name: x, type: float64}}
rabbitmq:
  url: {url}
  password_env: {env}
  queue: {{name: {stream}, type: stream, stream_offset: first}}
  prefetch: {prefetch}
logging: {{level: warn}}
metrics: {{listen: ""}}
)",
                                       fmt::arg("segment", segment), fmt::arg("url", o.url),
                                       fmt::arg("env", o.password_env), fmt::arg("stream", stream),
                                       fmt::arg("prefetch", o.prefetch));
  ::setenv(o.password_env.c_str(), o.password.c_str(), 1);
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
    const larder::SyncInfo s = seg.sync();
    return !s.partitions.empty() && s.partitions[0].next_offset == uint64_t{o.messages};
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
  CLI::App app{"larder-bench-stream-catchup: larder-sidecar replaying a stream from first vs a bare consumer"};
  app.add_option("--url", o.url, "broker (default: $LARDER_BENCH_AMQP_URL, then $LARDER_TEST_AMQP_URL)");
  app.add_option("--password-env", o.password_env, "environment variable holding the password")->capture_default_str();
  app.add_option("--messages", o.messages, "messages in the stream")->capture_default_str();
  app.add_option("--updates", o.updates, "updates per message")->capture_default_str();
  app.add_option("--prefetch", o.prefetch, "prefetch of both consumers")->capture_default_str();
  app.add_option("--rounds", o.rounds, "bare/sidecar replays, alternating")->capture_default_str();
  app.add_option("--sidecar", o.sidecar, "larder-sidecar binary")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return v ? std::string(v) : std::string();
  };
  if (o.url.empty()) o.url = env("LARDER_BENCH_AMQP_URL");
  if (o.url.empty()) o.url = env("LARDER_TEST_AMQP_URL");
  o.password = env(o.password_env.c_str());
  if (o.password.empty()) o.password = env("LARDER_TEST_AMQP_PASSWORD");
  if (o.url.empty() || o.password.empty() || o.messages == 0 || o.updates == 0) {
    std::fprintf(stderr, "larder-bench-stream-catchup: no broker (pass --url and set %s) or nothing to replay\n",
                 o.password_env.c_str());
    return 2;
  }
  const std::string stream = fmt::format("larder-bench-stream-{}", ::getpid());
  try {
    std::printf("# stream catch-up\n\nbroker %s, %u messages x %u updates, prefetch %u\n\n", o.url.c_str(), o.messages,
                o.updates, o.prefetch);
    std::fflush(stdout);
    publish_stream(o, stream);
    std::printf("| round | bare msg/s | sidecar msg/s | sidecar updates/s | ratio |\n|---|---:|---:|---:|---:|\n");
    for (uint32_t r = 0; r < o.rounds; ++r) {
      const double bare = o.messages / bare_replay(o, stream);
      const double side = o.messages / sidecar_replay(o, stream, fmt::format("larder-bench-catchup-{}", ::getpid()));
      std::printf("| %u | %.0f | %.0f | %.0f | %.2f |\n", r + 1, bare, side, side * o.updates, side / bare);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "larder-bench-stream-catchup: %s\n", e.what());
  }
  try {
    amqp_connection_state_t c = connect(o);
    amqp_queue_delete(c, 1, bytes_of(stream), 0, 0);
    close(c);
  } catch (const std::exception&) {
  }
  return 0;
}

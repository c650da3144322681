// larder-bench-sidecar: throughput and latency of larder-sidecar next to a
// bare rabbitmq-c consumer, on the same broker, for classic and quorum
// queues (bench/sidecar/README.md).
//
//  throughput  N messages are published (with confirms) before consuming
//              starts; then (a) a bare consumer that only acks each message,
//              (b) the sidecar with 1 update per message and (c) the sidecar
//              with 100 updates per message drain them. Rates count from the
//              first delivery (a) or first applied update (b, c) to the last.
//  latency     a paced publisher at --rate msg/s; (a) a bare consumer records
//              publish-to-consume time, (b) a reader polling the segment
//              records publish-to-visible time. p50 / p99 / max.
//
// Threads: the main thread publishes and drives the runs; a bare consumer
// and a segment reader each get a thread with their own connection/mapping.
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "config/amqp_url.h"
#include "larder/client.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct Options {
  std::string url;
  std::string password_env = "LARDER_BENCH_AMQP_PASSWORD";
  std::string password;
  uint32_t messages = 50000;       // throughput: 1-update messages
  uint32_t batch_messages = 2000;  // throughput: 100-update messages
  double rate = 2000;              // latency: messages per second
  double latency_seconds = 5;
  std::vector<std::string> queue_types = {"classic", "quorum"};
  std::string sidecar = LARDER_SIDECAR_BINARY;
  uint32_t prefetch = 200;
};

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

amqp_bytes_t bytes_of(const std::string& s) { return amqp_bytes_t{s.size(), const_cast<char*>(s.data())}; }

// A rabbitmq-c connection on channel 1, owned by one thread.
class Conn {
 public:
  explicit Conn(const Options& o) {
    larder::sidecar::AmqpUrl url;
    std::string error;
    if (!larder::sidecar::parse_amqp_url(o.url, &url, &error)) throw std::runtime_error("--url: " + error);
    conn_ = amqp_new_connection();
    amqp_socket_t* s = amqp_tcp_socket_new(conn_);
    if (amqp_socket_open(s, url.host.c_str(), url.port) != AMQP_STATUS_OK) throw std::runtime_error("connect " + o.url);
    rpc(amqp_login(conn_, url.vhost.c_str(), 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, url.user.c_str(),
                   o.password.c_str()),
        "login");
    amqp_channel_open(conn_, 1);
    rpc(amqp_get_rpc_reply(conn_), "channel.open");
  }
  ~Conn() {
    amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn_);
  }
  amqp_connection_state_t get() { return conn_; }

  void rpc(amqp_rpc_reply_t r, const char* what) {
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
      throw std::runtime_error(fmt::format("{} failed ({})", what, static_cast<int>(r.reply_type)));
  }

  // Declares the queue exactly as larder-sidecar does, so either may go first.
  void declare_sidecar_queue(const std::string& name, const std::string& type) {
    const std::string dlx = name + ".dlx", dlq = name + ".dlq";
    const std::string dlq_type = type == "quorum" ? "quorum" : "classic";
    amqp_exchange_declare(conn_, 1, bytes_of(dlx), amqp_cstring_bytes("fanout"), 0, 1, 0, 0, amqp_empty_table);
    rpc(amqp_get_rpc_reply(conn_), "declare dlx");
    amqp_table_entry_t dlq_args[1];
    dlq_args[0].key = amqp_cstring_bytes("x-queue-type");
    dlq_args[0].value.kind = AMQP_FIELD_KIND_UTF8;
    dlq_args[0].value.value.bytes = bytes_of(dlq_type);
    amqp_queue_declare(conn_, 1, bytes_of(dlq), 0, 1, 0, 0, amqp_table_t{1, dlq_args});
    rpc(amqp_get_rpc_reply(conn_), "declare dlq");
    amqp_queue_bind(conn_, 1, bytes_of(dlq), bytes_of(dlx), amqp_cstring_bytes(""), amqp_empty_table);
    rpc(amqp_get_rpc_reply(conn_), "bind dlq");
    amqp_table_entry_t args[3];
    int n = 0;
    args[n].key = amqp_cstring_bytes("x-queue-type");
    args[n].value.kind = AMQP_FIELD_KIND_UTF8;
    args[n++].value.value.bytes = bytes_of(type);
    args[n].key = amqp_cstring_bytes("x-dead-letter-exchange");
    args[n].value.kind = AMQP_FIELD_KIND_UTF8;
    args[n++].value.value.bytes = bytes_of(dlx);
    if (type == "quorum") {
      args[n].key = amqp_cstring_bytes("x-delivery-limit");
      args[n].value.kind = AMQP_FIELD_KIND_I64;
      args[n++].value.value.i64 = 5;
    }
    amqp_queue_declare(conn_, 1, bytes_of(name), 0, 1, 0, 0, amqp_table_t{n, args});
    rpc(amqp_get_rpc_reply(conn_), "declare queue");
  }

  void delete_queues(const std::string& name) {
    amqp_queue_delete(conn_, 1, bytes_of(name), 0, 0);
    amqp_queue_delete(conn_, 1, bytes_of(name + ".dlq"), 0, 0);
    amqp_exchange_delete(conn_, 1, bytes_of(name + ".dlx"), 0);
  }

  // Publishes to the default exchange with confirms, `window` in flight.
  void publish_confirmed(const std::string& queue, const std::vector<std::string>& bodies, size_t window = 2000) {
    if (!confirm_mode_) {
      amqp_confirm_select(conn_, 1);
      rpc(amqp_get_rpc_reply(conn_), "confirm.select");
      confirm_mode_ = true;
    }
    // Delivery tags of confirms count every message published on the channel.
    uint64_t& published = published_;
    amqp_basic_properties_t props;
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    for (const std::string& b : bodies) {
      amqp_basic_publish(conn_, 1, amqp_cstring_bytes(""), bytes_of(queue), 0, 0, &props, bytes_of(b));
      ++published;
      while (published - confirmed_ >= window) wait_confirm();
    }
    while (confirmed_ < published) wait_confirm();
  }

  void publish_fast(const std::string& queue, const std::string& body) {
    amqp_basic_publish(conn_, 1, amqp_cstring_bytes(""), bytes_of(queue), 0, 0, nullptr, bytes_of(body));
  }

 private:
  void wait_confirm() {
    amqp_frame_t frame;
    if (amqp_simple_wait_frame(conn_, &frame) != AMQP_STATUS_OK) throw std::runtime_error("waiting for confirms");
    if (frame.frame_type == AMQP_FRAME_METHOD && frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
      const auto* ack = static_cast<const amqp_basic_ack_t*>(frame.payload.method.decoded);
      confirmed_ = ack->multiple ? ack->delivery_tag : std::max<uint64_t>(confirmed_, ack->delivery_tag);
    } else if (frame.frame_type == AMQP_FRAME_METHOD && frame.payload.method.id == AMQP_BASIC_NACK_METHOD) {
      throw std::runtime_error("publish nacked");
    }
  }

  amqp_connection_state_t conn_;
  bool confirm_mode_ = false;
  uint64_t published_ = 0;
  uint64_t confirmed_ = 0;
};

std::string update(const std::string& key, int64_t t, int64_t n) {
  return fmt::format(R"({{"table":"t","key":"{}","event_time":{},"fields":{{"n":{},"x":{},"v":[{},0.5,-1,2]}}}})", key,
                     t, n, static_cast<double>(n) * 0.5, n % 100);
}

// Bare consumer: consumes `count` messages, acking each. Calls on_message
// with the body. Returns seconds from the first delivery to the last.
double bare_consume(const Options& o, const std::string& queue, uint64_t count,
                    const std::function<void(std::string_view)>& on_message = {}) {
  Conn c(o);
  amqp_basic_qos(c.get(), 1, 0, static_cast<uint16_t>(o.prefetch), 0);
  c.rpc(amqp_get_rpc_reply(c.get()), "basic.qos");
  amqp_basic_consume(c.get(), 1, bytes_of(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
  c.rpc(amqp_get_rpc_reply(c.get()), "basic.consume");
  Clock::time_point first{};
  for (uint64_t i = 0; i < count;) {
    amqp_envelope_t env;
    amqp_maybe_release_buffers(c.get());
    timeval tv{1, 0};
    const amqp_rpc_reply_t r = amqp_consume_message(c.get(), &env, &tv, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
      if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT) continue;
      throw std::runtime_error("bare consumer: consume failed");
    }
    if (i == 0) first = Clock::now();
    if (on_message) on_message({static_cast<const char*>(env.message.body.bytes), env.message.body.len});
    amqp_basic_ack(c.get(), 1, env.delivery_tag, 0);
    amqp_destroy_envelope(&env);
    ++i;
  }
  return seconds_since(first);
}

// A larder-sidecar child with a config for table "t" on `queue`.
class Sidecar {
 public:
  Sidecar(const Options& o, const std::string& name, const std::string& type) : name_(name) {
    config_ = fmt::format("/tmp/{}.yaml", name);
    std::ofstream(config_) << fmt::format(R"(segment: {{name: {name}}}
tables:
  - name: t
    key_max_len: 32
    capacity: 400000
    fields:
      - {{name: n, type: int64}}
      - {{name: x, type: float64}}
      - {{name: v, type: vector, dims: 4}}
rabbitmq:
  url: {url}
  password_env: {env}
  queue: {{name: {name}, type: {type}}}
  prefetch: {prefetch}
logging: {{level: warn}}
)",
                                          fmt::arg("name", name), fmt::arg("url", o.url),
                                          fmt::arg("env", o.password_env), fmt::arg("type", type),
                                          fmt::arg("prefetch", o.prefetch));
    ::setenv(o.password_env.c_str(), o.password.c_str(), 1);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::execl(o.sidecar.c_str(), "larder-sidecar", "--config", config_.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 500; ++i) {
      try {
        segment_ = larder::Segment::open(name);
        return;
      } catch (const larder::Error&) {
        std::this_thread::sleep_for(10ms);
      }
    }
    throw std::runtime_error("the sidecar did not create its segment");
  }
  ~Sidecar() {
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    std::remove(config_.c_str());
    const std::string path = "/dev/shm/" + name_;
    std::remove(path.c_str());
    std::remove((path + ".lock").c_str());
  }
  const larder::Segment& segment() const { return segment_; }

  // Seconds from the first applied update until `updates` are applied.
  double time_until_applied(uint64_t updates) {
    while (segment_.info().updates_applied == 0) std::this_thread::sleep_for(100us);
    const auto first = Clock::now();
    while (segment_.info().updates_applied < updates) std::this_thread::sleep_for(100us);
    return seconds_since(first);
  }

 private:
  std::string name_;
  std::string config_;
  pid_t pid_ = -1;
  larder::Segment segment_;
};

struct Percentiles {
  double p50_us = 0, p99_us = 0, max_us = 0;
  size_t samples = 0;
};

Percentiles percentiles(std::vector<double> v) {
  Percentiles p;
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  p.samples = v.size();
  p.p50_us = v[v.size() / 2];
  p.p99_us = v[std::min(v.size() - 1, v.size() * 99 / 100)];
  p.max_us = v.back();
  return p;
}

// Paced publisher: `count` messages at o.rate; body(i) builds message i and
// stamps[i] gets its publish time (ns since `epoch`) just before it is sent.
void paced_publish(const Options& o, const std::string& queue, uint64_t count, Clock::time_point epoch,
                   std::vector<std::atomic<int64_t>>& stamps, const std::function<std::string(uint64_t)>& body) {
  Conn c(o);
  const auto interval = std::chrono::nanoseconds(static_cast<int64_t>(1e9 / o.rate));
  const auto start = Clock::now();
  for (uint64_t i = 0; i < count; ++i) {
    std::this_thread::sleep_until(start + i * interval);
    const std::string b = body(i);
    stamps[i].store(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - epoch).count(),
                    std::memory_order_release);  // process memory, not a segment: consumers acquire it
    c.publish_fast(queue, b);
  }
}

void run_queue_type(const Options& o, const std::string& type) {
  const std::string base = fmt::format("larder-bench-{}-{}", type, ::getpid());
  Conn admin(o);

  // --- throughput: bare consumer, 1 update/message ---------------------------
  std::vector<std::string> single;
  single.reserve(o.messages);
  for (uint32_t i = 0; i < o.messages; ++i)
    single.push_back(update(fmt::format("k{}", i % 10000), 1'700'000'000'000 + i, i));
  const std::string bare_q = base + "-bare";
  admin.declare_sidecar_queue(bare_q, type);
  admin.publish_confirmed(bare_q, single);
  const double bare_s = bare_consume(o, bare_q, o.messages);
  admin.delete_queues(bare_q);
  const double bare_rate = o.messages / bare_s;

  // --- throughput: sidecar, 1 update/message ---------------------------------
  const std::string one_q = base + "-one";
  admin.declare_sidecar_queue(one_q, type);
  admin.publish_confirmed(one_q, single);
  double one_s;
  {
    Sidecar s(o, one_q, type);
    one_s = s.time_until_applied(o.messages);
  }
  admin.delete_queues(one_q);
  const double one_rate = o.messages / one_s;

  // --- throughput: sidecar, 100 updates/message ------------------------------
  std::vector<std::string> batches;
  for (uint32_t m = 0; m < o.batch_messages; ++m) {
    std::string b = "[";
    for (uint32_t j = 0; j < 100; ++j) {
      const uint64_t i = static_cast<uint64_t>(m) * 100 + j;
      b += (j ? "," : "") +
           update(fmt::format("k{}", i % 200000), 1'700'000'000'000 + static_cast<int64_t>(i), static_cast<int64_t>(i));
    }
    batches.push_back(b + "]");
  }
  const std::string batch_q = base + "-batch";
  admin.declare_sidecar_queue(batch_q, type);
  admin.publish_confirmed(batch_q, batches, 500);
  double batch_s;
  {
    Sidecar s(o, batch_q, type);
    batch_s = s.time_until_applied(static_cast<uint64_t>(o.batch_messages) * 100);
  }
  admin.delete_queues(batch_q);
  const double batch_msg_rate = o.batch_messages / batch_s;

  std::printf("\n## %s queue, prefetch %u\n\n", type.c_str(), o.prefetch);
  std::printf("| run | messages | updates/msg | messages/s | updates/s | vs bare msg/s |\n|---|---|---|---|---|---|\n");
  std::printf("| bare rabbitmq-c consumer (ack each) | %u | 1 | %.0f | %.0f | 1.00 |\n", o.messages, bare_rate,
              bare_rate);
  std::printf("| larder-sidecar | %u | 1 | %.0f | %.0f | %.2f |\n", o.messages, one_rate, one_rate,
              one_rate / bare_rate);
  std::printf("| larder-sidecar | %u | 100 | %.0f | %.0f | %.2f |\n", o.batch_messages, batch_msg_rate,
              batch_msg_rate * 100, batch_msg_rate / bare_rate);
  std::fflush(stdout);

  // --- latency -----------------------------------------------------------------
  const uint64_t count = static_cast<uint64_t>(o.rate * o.latency_seconds);
  const auto epoch = Clock::now();
  auto now_ns = [&] { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - epoch).count(); };

  Percentiles bare_lat;
  {
    const std::string q = base + "-lat-bare";
    admin.declare_sidecar_queue(q, type);
    std::vector<std::atomic<int64_t>> stamps(count);
    std::vector<double> samples;
    samples.reserve(count);
    std::thread consumer([&] {
      bare_consume(o, q, count, [&](std::string_view body) {
        const uint64_t i = std::stoull(std::string(body));
        samples.push_back((now_ns() - stamps[i].load(std::memory_order_acquire)) / 1e3);  // see paced_publish
      });
    });
    std::this_thread::sleep_for(200ms);  // let the consumer subscribe
    paced_publish(o, q, count, epoch, stamps, [](uint64_t i) { return std::to_string(i); });
    consumer.join();
    admin.delete_queues(q);
    bare_lat = percentiles(std::move(samples));
  }

  Percentiles side_lat;
  {
    const std::string q = base + "-lat";
    admin.declare_sidecar_queue(q, type);
    std::vector<std::atomic<int64_t>> stamps(count);
    std::vector<double> samples;
    {
      Sidecar s(o, q, type);
      std::atomic<bool> done{false};
      std::thread reader([&] {
        const larder::Table t = s.segment().table("t");
        const larder::Field n = t.field("n");
        larder::Row row = t.make_row();
        int64_t last = -1;
        while (!done.load(std::memory_order_relaxed)) {  // a stop flag; it guards no data
          if (t.get("lat", row).ok()) {
            const int64_t seen = row.i64(n);
            if (seen != last) {
              samples.push_back((now_ns() - stamps[seen].load(std::memory_order_acquire)) / 1e3);  // see paced_publish
              last = seen;
            }
          }
          // Poll, do not spin: on a small host a spinning reader would take a
          // core from the broker and the sidecar and distort the result.
          std::this_thread::sleep_for(20us);
        }
      });
      std::this_thread::sleep_for(300ms);  // let the sidecar subscribe
      paced_publish(o, q, count, epoch, stamps, [](uint64_t i) {
        return update("lat", 1'700'000'000'000 + static_cast<int64_t>(i), static_cast<int64_t>(i));
      });
      std::this_thread::sleep_for(500ms);
      done = true;
      reader.join();
    }  // stops the sidecar before its queue goes away
    admin.delete_queues(q);
    side_lat = percentiles(std::move(samples));
  }
  std::printf("\n| latency at %.0f msg/s | samples | p50 µs | p99 µs | max µs |\n|---|---|---|---|---|\n", o.rate);
  std::printf("| bare publish-to-consume | %zu | %.0f | %.0f | %.0f |\n", bare_lat.samples, bare_lat.p50_us,
              bare_lat.p99_us, bare_lat.max_us);
  std::printf("| sidecar publish-to-visible | %zu | %.0f | %.0f | %.0f |\n", side_lat.samples, side_lat.p50_us,
              side_lat.p99_us, side_lat.max_us);
  std::printf("\np99 ratio (sidecar / bare): %.2f\n", side_lat.p99_us / std::max(1.0, bare_lat.p99_us));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"larder-bench-sidecar: larder-sidecar throughput and latency against a bare rabbitmq-c consumer"};
  app.add_option("--url", o.url,
                 "broker, amqp://user@host:port/vhost (default: $LARDER_BENCH_AMQP_URL, then $LARDER_TEST_AMQP_URL)");
  app.add_option("--password-env", o.password_env,
                 "environment variable holding the password (falls back to LARDER_TEST_AMQP_PASSWORD)")
      ->capture_default_str();
  app.add_option("--messages", o.messages, "1-update messages per throughput run")->capture_default_str();
  app.add_option("--batch-messages", o.batch_messages, "100-update messages per batched run")->capture_default_str();
  app.add_option("--rate", o.rate, "latency runs: messages per second")->capture_default_str();
  app.add_option("--latency-seconds", o.latency_seconds, "latency runs: duration")->capture_default_str();
  app.add_option("--queue-types", o.queue_types, "queue types to run")->capture_default_str();
  app.add_option("--prefetch", o.prefetch, "prefetch of both consumers")->capture_default_str();
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
  if (o.url.empty() || o.password.empty()) {
    std::fprintf(
        stderr,
        "larder-bench-sidecar: no broker: pass --url and set %s (or source a broker.env from scripts/broker.sh)\n",
        o.password_env.c_str());
    return 2;
  }
  std::printf(
      "# larder-sidecar benchmark\n\nbroker %s, %u messages x 1 update, %u messages x 100 updates, latency at %.0f "
      "msg/s for %.0f s\n",
      o.url.c_str(), o.messages, o.batch_messages, o.rate, o.latency_seconds);
  try {
    for (const std::string& type : o.queue_types) run_queue_type(o, type);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "larder-bench-sidecar: %s\n", e.what());
    return 1;
  }
  return 0;
}

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
//              records publish-to-visible time. p50 / p99 / max. Where the
//              sidecar's time goes: publish to the writer's apply time (the
//              row's apply_unix_ns) and from there to the reader seeing it,
//              per message, and the sidecar's own stages from its /metrics
//              (larder_pipeline_stage_seconds: receive, handover, apply,
//              pickup). The sidecar's CPU use while idle (/proc/PID/stat).
//
// Threads: the main thread publishes and drives the runs; a bare consumer
// and a segment reader each get a thread with their own connection/mapping.
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
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
  uint16_t metrics_port = static_cast<uint16_t>(20000 + ::getpid() % 20000);
  double idle_seconds = 2;
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
metrics: {{listen: "127.0.0.1:{port}"}}
)",
                                          fmt::arg("name", name), fmt::arg("url", o.url),
                                          fmt::arg("env", o.password_env), fmt::arg("type", type),
                                          fmt::arg("prefetch", o.prefetch), fmt::arg("port", o.metrics_port));
    port_ = o.metrics_port;
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

  // CPU seconds (user + system) the sidecar process has used so far.
  double cpu_seconds() const {
    std::ifstream f(fmt::format("/proc/{}/stat", pid_));
    std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) return 0;
    std::istringstream rest(stat.substr(close + 2));
    std::string field;
    double utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {  // fields 14 and 15: utime, stime (clock ticks)
      if (i == 14) utime = std::stod(field);
      if (i == 15) stime = std::stod(field);
    }
    return (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }

  // GET /metrics from the sidecar's listener; "" when it does not answer.
  std::string scrape() const {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return {};
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port_);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::string out;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
      const std::string req = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
      if (::send(fd, req.data(), req.size(), 0) == static_cast<ssize_t>(req.size())) {
        char buf[65536];
        for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) out.append(buf, static_cast<size_t>(n));
      }
    }
    ::close(fd);
    return out;
  }

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
  uint16_t port_ = 0;
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

// p50 and p99 of one labelled series of a Prometheus histogram in `text`,
// interpolated linearly inside the bucket (as histogram_quantile does), in µs.
struct StageQuantiles {
  double p50_us = NAN, p99_us = NAN;
  uint64_t count = 0;
};
StageQuantiles histogram_quantiles(const std::string& text, const std::string& family, const std::string& labels) {
  std::vector<std::pair<double, uint64_t>> buckets;  // upper bound (s), cumulative count
  std::istringstream in(text);
  const std::string prefix = family + "_bucket{" + labels + ",le=\"";
  for (std::string line; std::getline(in, line);) {
    if (line.compare(0, prefix.size(), prefix) != 0) continue;
    const size_t end = line.find('"', prefix.size());
    const std::string le = line.substr(prefix.size(), end - prefix.size());
    const double bound = le == "+Inf" ? INFINITY : std::stod(le);
    buckets.emplace_back(bound, std::stoull(line.substr(line.rfind(' ') + 1)));
  }
  StageQuantiles q;
  if (buckets.empty() || buckets.back().second == 0) return q;
  q.count = buckets.back().second;
  auto at = [&](double quantile) {
    const double rank = quantile * static_cast<double>(q.count);
    double lower = 0;
    uint64_t below = 0;
    for (const auto& [bound, cumulative] : buckets) {
      if (static_cast<double>(cumulative) >= rank) {
        if (std::isinf(bound)) return lower * 1e6;  // beyond the last bound: report it
        const double in_bucket = static_cast<double>(cumulative - below);
        return (lower + (bound - lower) * (rank - static_cast<double>(below)) / std::max(1.0, in_bucket)) * 1e6;
      }
      lower = bound;
      below = cumulative;
    }
    return lower * 1e6;
  };
  q.p50_us = at(0.5);
  q.p99_us = at(0.99);
  return q;
}

// Paced publisher: `count` messages at o.rate; body(i) builds message i and
// stamps[i] gets its publish time (ns since `epoch`) just before it is sent.
void paced_publish(const Options& o, const std::string& queue, uint64_t count, Clock::time_point epoch,
                   std::vector<std::atomic<int64_t>>& stamps, const std::function<std::string(uint64_t)>& body,
                   std::vector<std::atomic<int64_t>>* unix_stamps = nullptr) {
  Conn c(o);
  const auto interval = std::chrono::nanoseconds(static_cast<int64_t>(1e9 / o.rate));
  const auto start = Clock::now();
  for (uint64_t i = 0; i < count; ++i) {
    std::this_thread::sleep_until(start + i * interval);
    const std::string b = body(i);
    if (unix_stamps != nullptr) {
      (*unix_stamps)[i].store(
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
              .count(),
          std::memory_order_release);
    }
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

  Percentiles side_lat, to_apply, apply_to_seen;
  std::map<std::string, StageQuantiles> stages;
  double idle_cpu = NAN;
  {
    const std::string q = base + "-lat";
    admin.declare_sidecar_queue(q, type);
    std::vector<std::atomic<int64_t>> stamps(count), unix_stamps(count);
    std::vector<double> samples, apply_samples, seen_samples;
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
              const int64_t seen_unix = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                            std::chrono::system_clock::now().time_since_epoch())
                                            .count();
              samples.push_back((now_ns() - stamps[seen].load(std::memory_order_acquire)) / 1e3);  // see paced_publish
              const int64_t applied_unix = row.apply_unix_ns();
              apply_samples.push_back((applied_unix - unix_stamps[seen].load(std::memory_order_acquire)) / 1e3);
              seen_samples.push_back((seen_unix - applied_unix) / 1e3);
              last = seen;
            }
          }
          // Poll, do not spin: on a small host a spinning reader would take a
          // core from the broker and the sidecar and distort the result.
          std::this_thread::sleep_for(20us);
        }
      });
      std::this_thread::sleep_for(300ms);  // let the sidecar subscribe
      // Idle: subscribed, nothing to consume. The CPU the sidecar burns
      // waiting (a spinning thread would show here).
      const double cpu0 = s.cpu_seconds();
      const auto idle0 = Clock::now();
      std::this_thread::sleep_for(std::chrono::duration<double>(o.idle_seconds));
      idle_cpu = (s.cpu_seconds() - cpu0) / seconds_since(idle0);
      paced_publish(
          o, q, count, epoch, stamps,
          [](uint64_t i) {
            return update("lat", 1'700'000'000'000 + static_cast<int64_t>(i), static_cast<int64_t>(i));
          },
          &unix_stamps);
      std::this_thread::sleep_for(500ms);
      done = true;
      reader.join();
      const std::string metrics = s.scrape();
      for (const char* stage : {"receive", "handover", "apply", "pickup"}) {
        stages[stage] =
            histogram_quantiles(metrics, "larder_pipeline_stage_seconds", fmt::format("stage=\"{}\"", stage));
      }
    }  // stops the sidecar before its queue goes away
    admin.delete_queues(q);
    side_lat = percentiles(std::move(samples));
    to_apply = percentiles(std::move(apply_samples));
    apply_to_seen = percentiles(std::move(seen_samples));
  }
  std::printf("\n| latency at %.0f msg/s | samples | p50 µs | p99 µs | max µs |\n|---|---|---|---|---|\n", o.rate);
  std::printf("| bare publish-to-consume | %zu | %.0f | %.0f | %.0f |\n", bare_lat.samples, bare_lat.p50_us,
              bare_lat.p99_us, bare_lat.max_us);
  std::printf("| sidecar publish-to-visible | %zu | %.0f | %.0f | %.0f |\n", side_lat.samples, side_lat.p50_us,
              side_lat.p99_us, side_lat.max_us);
  std::printf("\np99 ratio (sidecar / bare): %.2f\n", side_lat.p99_us / std::max(1.0, bare_lat.p99_us));
  std::printf(
      "\nWhere publish-to-visible goes (per message; stages from the sidecar's larder_pipeline_stage_seconds,\n"
      "interpolated inside its buckets):\n\n| part | samples | p50 µs | p99 µs |\n|---|---|---|---|\n");
  std::printf("| publish -> writer's apply time (row apply_unix_ns) | %zu | %.0f | %.0f |\n", to_apply.samples,
              to_apply.p50_us, to_apply.p99_us);
  std::printf("| apply time -> reader saw it (20 µs polls) | %zu | %.0f | %.0f |\n", apply_to_seen.samples,
              apply_to_seen.p50_us, apply_to_seen.p99_us);
  for (const char* stage : {"receive", "handover", "apply", "pickup"}) {
    const StageQuantiles& st = stages[stage];
    std::printf("| sidecar stage %s | %llu | %.1f | %.1f |\n", stage, static_cast<unsigned long long>(st.count),
                st.p50_us, st.p99_us);
  }
  std::printf("\nsidecar CPU while idle (subscribed, no messages, %.1f s): %.2f%% of one CPU\n", o.idle_seconds,
              idle_cpu * 100);
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
  app.add_option("--metrics-port", o.metrics_port, "the sidecars' /metrics port (loopback)")->capture_default_str();
  app.add_option("--idle-seconds", o.idle_seconds, "latency run: idle time over which the sidecar's CPU is measured")
      ->capture_default_str();
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

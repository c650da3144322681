// larder-bench-bootstrap: how long a new host takes to be READY from a
// peer's snapshot plus a stream tail (docs/performance.md, "New host").
//
//  1. A "peer" segment of --keys rows is built with a Writer (its source id
//     that of the stream, its position offset 0) and copied (copy_image).
//  2. The real larder-sidecar of the new host runs once to declare its
//     stream queue, exchange and binding, and is stopped; its segment removed.
//  3. --tail messages (one upsert each, over the same keys) are published to
//     the stream with publisher confirms: the log the new host must replay.
//  4. An in-process HTTP server answers GET /snapshot with the peer's
//     snapshot file (compressed once, before the clock starts).
//  5. larder-sidecar --bootstrap-from starts; the clock runs until the
//     segment's state is READY. The restore log line gives fetch, verify and
//     restore; replay is the rest (connect, subscribe, apply the tail).
//
// Needs a broker: --url (amqp://user@host:port/) and the password in the
// environment variable --password-env. Prints one result block.
// Threads: the main thread drives everything; the HTTP server has its own.
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "apply/stream_sync.h"
#include "config/amqp_url.h"
#include "config/config.h"
#include "larder/client.h"
#include "larder/snapshot/snapshot_file.h"
#include "larder/writer/writer.h"

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
amqp_bytes_t bytes_of(const std::string& s) { return amqp_bytes_t{s.size(), const_cast<char*>(s.data())}; }

struct Options {
  std::string url;
  std::string password_env = "LARDER_BENCH_AMQP_PASSWORD";
  uint64_t keys = 1'000'000;
  uint64_t tail = 100'000;
  std::string sidecar = LARDER_SIDECAR_BINARY;
};

std::string config_yaml(const Options& o, const std::string& name, uint64_t capacity) {
  return fmt::format(R"(segment: {{name: {name}}}
tables:
  - name: t
    key_max_len: 24
    capacity: {capacity}
    event_time: {{max_future_skew: off, min_event_time: 0}}
    fields:
      - {{name: n, type: int64}}
      - {{name: x, type: float64}}
      - {{name: v, type: vector, dims: 4}}
rabbitmq:
  url: {url}
  password_env: {penv}
  queue: {{name: {name}, type: stream, stream_offset: first}}
  bindings: [{{exchange: {name}, routing_keys: ["t.#"]}}]
  prefetch: 2000
metrics: {{listen: ""}}
)",
                     fmt::arg("name", name), fmt::arg("capacity", capacity), fmt::arg("url", o.url),
                     fmt::arg("penv", o.password_env));
}

pid_t spawn(const Options& o, const std::string& config, const std::string& log, const std::vector<std::string>& args) {
  std::vector<const char*> argv = {"larder-sidecar", "--config", config.c_str()};
  for (const std::string& a : args) argv.push_back(a.c_str());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execv(o.sidecar.c_str(), const_cast<char* const*>(argv.data()));
    _exit(127);
  }
  return pid;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void stop(pid_t pid) {
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
}

// Publishes `count` upserts to exchange `name` with confirms.
void publish_tail(const Options& o, const std::string& name, uint64_t count, uint64_t keys) {
  larder::sidecar::AmqpUrl url;
  std::string error;
  if (!larder::sidecar::parse_amqp_url(o.url, &url, &error)) throw std::runtime_error("--url: " + error);
  const char* password = std::getenv(o.password_env.c_str());
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t* s = amqp_tcp_socket_new(conn);
  if (amqp_socket_open(s, url.host.c_str(), url.port) != AMQP_STATUS_OK) throw std::runtime_error("connect");
  if (amqp_login(conn, url.vhost.c_str(), 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, url.user.c_str(),
                 password ? password : "")
          .reply_type != AMQP_RESPONSE_NORMAL) {
    throw std::runtime_error("login");
  }
  amqp_channel_open(conn, 1);
  amqp_confirm_select(conn, 1);
  if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL) throw std::runtime_error("confirm.select");
  uint64_t published = 0, confirmed = 0;
  auto wait_confirm = [&] {
    amqp_frame_t frame;
    if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) throw std::runtime_error("confirms");
    if (frame.frame_type == AMQP_FRAME_METHOD && frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
      const auto* ack = static_cast<const amqp_basic_ack_t*>(frame.payload.method.decoded);
      confirmed = ack->multiple ? ack->delivery_tag : std::max<uint64_t>(confirmed, ack->delivery_tag);
    } else if (frame.frame_type == AMQP_FRAME_METHOD && frame.payload.method.id == AMQP_BASIC_NACK_METHOD) {
      throw std::runtime_error("nacked");
    }
  };
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t k = (i * 2654435761u) % keys;
    const std::string body =
        fmt::format(R"({{"table":"t","key":"k{}","event_time":{},"fields":{{"n":{},"x":{},"v":[1,2,3,4]}}}})", k,
                    1'800'000'000'000 + static_cast<int64_t>(i), i, static_cast<double>(i) * 0.5);
    amqp_basic_publish(conn, 1, bytes_of(name), amqp_cstring_bytes("t.1"), 0, 0, nullptr, bytes_of(body));
    ++published;
    while (published - confirmed >= 5000) wait_confirm();
  }
  while (confirmed < published) wait_confirm();
  amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(conn);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"larder-bench-bootstrap: time for a new host to be READY from a peer snapshot and a stream tail"};
  Options o;
  app.add_option("--url", o.url, "amqp://user@host:port/ of the broker")->required();
  app.add_option("--password-env", o.password_env, "environment variable holding the password");
  app.add_option("--keys", o.keys, "rows in the peer's snapshot");
  app.add_option("--tail", o.tail, "stream messages to replay after the snapshot");
  app.add_option("--sidecar", o.sidecar, "larder-sidecar binary");
  CLI11_PARSE(app, argc, argv);
  const std::string name = fmt::format("bench-bootstrap-{}", ::getpid());
  const std::string dir = "/tmp/" + name;
  std::filesystem::create_directories(dir);
  const std::string config_path = dir + "/sidecar.yaml";
  std::ofstream(config_path) << config_yaml(o, name, o.keys + o.keys / 4);
  const larder::sidecar::Config config = larder::sidecar::load_config_file(config_path);

  // 1. The peer's table, at stream position 0.
  auto t = Clock::now();
  std::vector<unsigned char> image;
  {
    const std::string peer = name + "-peer";
    auto w = larder::Writer::open(peer, config.schema());
    w->set_source_id(larder::sidecar::stream_source_id(config));
    const float vec[4] = {1, 2, 3, 4};
    for (uint64_t k = 0; k < o.keys; ++k) {
      const std::string key = fmt::format("k{}", k);
      const larder::FieldValue values[3] = {
          {0, larder::layout::FieldType::kInt64, static_cast<int64_t>(k), 0, nullptr, 0},
          {1, larder::layout::FieldType::kFloat64, 0, static_cast<double>(k), nullptr, 0},
          {2, larder::layout::FieldType::kFloat32Vector, 0, 0, vec, 4}};
      w->upsert(0, key, 1'700'000'000'000, values);
    }
    w->set_position({0, 0, 0});
    w->copy_image(&image);
    w.reset();
    larder::Writer::remove_segment(peer);
  }
  std::string file;
  larder::snapshot::write_snapshot(name, image, [&](const void* d, size_t n) {
    file.append(static_cast<const char*>(d), n);
    return true;
  });
  std::fprintf(stderr, "peer: %llu keys, image %zu bytes, snapshot %zu bytes (built in %.1f s)\n",
               static_cast<unsigned long long>(o.keys), image.size(), file.size(), seconds_since(t));
  std::vector<unsigned char>().swap(image);

  // 2. Declare the stream the way the sidecar does.
  const std::string declare_log = dir + "/declare.log";
  int status = 0;
  pid_t pid = spawn(o, config_path, declare_log, {});
  for (int i = 0; i < 600 && read_file(declare_log).find("consumer: connected") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  stop(pid);
  larder::Writer::remove_segment(name);

  // 3. The tail.
  t = Clock::now();
  publish_tail(o, name, o.tail, o.keys);
  std::fprintf(stderr, "tail: %llu messages published in %.1f s\n", static_cast<unsigned long long>(o.tail),
               seconds_since(t));

  // 4. The peer.
  httplib::Server server;
  server.Get("/snapshot", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(file, "application/octet-stream");
  });
  const int port = server.bind_to_any_port("127.0.0.1");
  std::thread http([&] { server.listen_after_bind(); });

  // 5. The new host.
  const std::string log = dir + "/new-host.log";
  t = Clock::now();
  pid = spawn(o, config_path, log, {"--bootstrap-from", fmt::format("http://127.0.0.1:{}/snapshot", port)});
  double ready_s = -1;
  for (;;) {
    if (::waitpid(pid, &status, WNOHANG) == pid) break;
    try {
      if (larder::Segment::open(name).state() == larder::layout::SyncState::kReady) {
        ready_s = seconds_since(t);
        break;
      }
    } catch (const larder::Error&) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  stop(pid);
  server.stop();
  http.join();
  larder::Writer::remove_segment(name);
  const std::string text = read_file(log);
  std::smatch m;
  const std::regex parts(R"(fetch ([0-9.]+) s, verify ([0-9.]+) s, restore ([0-9.]+) s)");
  if (ready_s < 0 || !std::regex_search(text, m, parts)) {
    std::fprintf(stderr, "the new host did not become READY; log %s\n", log.c_str());
    return 1;
  }
  const double fetch = std::stod(m[1]), verify = std::stod(m[2]), restore = std::stod(m[3]);
  std::printf("keys %llu, tail %llu messages, snapshot %zu bytes\n", static_cast<unsigned long long>(o.keys),
              static_cast<unsigned long long>(o.tail), file.size());
  std::printf("READY after %.3f s: fetch %.3f s, verify %.3f s, restore %.3f s, replay and the rest %.3f s\n", ready_s,
              fetch, verify, restore, ready_s - fetch - verify - restore);
  std::filesystem::remove_all(dir);
  return 0;
}

// Integration-test harness (see harness.h). Test main thread only.
#include "harness.h"

#include <amqp_tcp_socket.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "larder/client.h"
#include "larder/writer/writer.h"

namespace larder::test {
namespace {

constexpr const char* kHowToRun =
    "integration tests need a broker: run them with the README's test command (bash scripts/test.sh), which starts a "
    "throwaway RabbitMQ with scripts/broker.sh and exports LARDER_TEST_AMQP_URL, LARDER_TEST_AMQP_PASSWORD, "
    "LARDER_TEST_AMQPS_URL, LARDER_TEST_CA_FILE and LARDER_TEST_BROKER_CTL";

std::string getenv_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

std::string reply_text(const amqp_rpc_reply_t& r) {
  switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL: return "ok";
    case AMQP_RESPONSE_NONE: return "no reply";
    case AMQP_RESPONSE_LIBRARY_EXCEPTION: return amqp_error_string2(r.library_error);
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        const auto* m = static_cast<const amqp_channel_close_t*>(r.reply.decoded);
        return fmt::format("channel closed: {} {}", m->reply_code,
                           std::string(static_cast<const char*>(m->reply_text.bytes), m->reply_text.len));
      }
      if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        const auto* m = static_cast<const amqp_connection_close_t*>(r.reply.decoded);
        return fmt::format("connection closed: {} {}", m->reply_code,
                           std::string(static_cast<const char*>(m->reply_text.bytes), m->reply_text.len));
      }
      return "server exception";
  }
  return "?";
}

amqp_bytes_t bytes_of(const std::string& s) { return amqp_bytes_t{s.size(), const_cast<char*>(s.data())}; }

}  // namespace

bool BrokerEnv::load(BrokerEnv* env, bool need_tls, bool need_ctl) {
  env->amqp_url = getenv_or_empty("LARDER_TEST_AMQP_URL");
  env->password = getenv_or_empty("LARDER_TEST_AMQP_PASSWORD");
  env->amqps_url = getenv_or_empty("LARDER_TEST_AMQPS_URL");
  env->ca_file = getenv_or_empty("LARDER_TEST_CA_FILE");
  env->client_cert = getenv_or_empty("LARDER_TEST_CLIENT_CERT");
  env->client_key = getenv_or_empty("LARDER_TEST_CLIENT_KEY");
  env->broker_ctl = getenv_or_empty("LARDER_TEST_BROKER_CTL");
  std::vector<std::string> missing;
  if (env->amqp_url.empty()) missing.push_back("LARDER_TEST_AMQP_URL");
  if (env->password.empty()) missing.push_back("LARDER_TEST_AMQP_PASSWORD");
  if (need_tls && env->amqps_url.empty()) missing.push_back("LARDER_TEST_AMQPS_URL");
  if (need_tls && env->ca_file.empty()) missing.push_back("LARDER_TEST_CA_FILE");
  if (need_ctl && env->broker_ctl.empty()) missing.push_back("LARDER_TEST_BROKER_CTL");
  if (!missing.empty()) {
    std::string names;
    for (const auto& m : missing) names += (names.empty() ? "" : ", ") + m;
    ADD_FAILURE() << names << " not set; " << kHowToRun;
    return false;
  }
  return true;
}

bool BrokerEnv::ctl(const std::string& verb) const {
  const std::string cmd = broker_ctl + " " + verb + " >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

// ---- AmqpClient -----------------------------------------------------------

AmqpClient::AmqpClient(const BrokerEnv& env) {
  sidecar::AmqpUrl url;
  std::string error;
  if (!sidecar::parse_amqp_url(env.amqp_url, &url, &error)) throw std::runtime_error("LARDER_TEST_AMQP_URL: " + error);
  conn_ = amqp_new_connection();
  amqp_socket_t* socket = amqp_tcp_socket_new(conn_);
  timeval tv{10, 0};
  if (amqp_socket_open_noblock(socket, url.host.c_str(), url.port, &tv) != AMQP_STATUS_OK) {
    throw std::runtime_error("cannot connect to " + env.amqp_url);
  }
  amqp_set_rpc_timeout(conn_, &tv);
  const amqp_rpc_reply_t login = amqp_login(conn_, url.vhost.c_str(), 0, 131072, 0, AMQP_SASL_METHOD_PLAIN,
                                            url.user.c_str(), env.password.c_str());
  if (login.reply_type != AMQP_RESPONSE_NORMAL) throw std::runtime_error("login: " + reply_text(login));
  amqp_channel_open(conn_, 1);
  check("channel.open");
  amqp_confirm_select(conn_, 1);
  check("confirm.select");
}

AmqpClient::~AmqpClient() {
  if (conn_ != nullptr) {
    amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn_);
  }
}

void AmqpClient::check(const char* what) {
  const amqp_rpc_reply_t r = amqp_get_rpc_reply(conn_);
  if (r.reply_type != AMQP_RESPONSE_NORMAL) throw std::runtime_error(std::string(what) + ": " + reply_text(r));
}

amqp_channel_t AmqpClient::fresh_channel() {
  const amqp_channel_t ch = next_channel_++;
  amqp_channel_open(conn_, ch);
  check("channel.open");
  return ch;
}

void AmqpClient::publish(const std::string& exchange, const std::string& routing_key,
                         const std::vector<std::string>& bodies, size_t window) {
  publish_each(exchange, routing_key, bodies, window, "", "");
}

void AmqpClient::publish_with_properties(const std::string& exchange, const std::string& routing_key,
                                         const std::string& body, const std::string& message_id,
                                         const std::string& producer) {
  publish_each(exchange, routing_key, {body}, 1, message_id, producer);
}

void AmqpClient::publish_each(const std::string& exchange, const std::string& routing_key,
                              const std::vector<std::string>& bodies, size_t window, const std::string& message_id,
                              const std::string& producer) {
  std::set<uint64_t> unconfirmed;
  auto wait_confirms = [&](size_t allowed) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (unconfirmed.size() > allowed) {
      if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("publisher confirms timed out");
      amqp_frame_t frame;
      timeval tv{1, 0};
      const int status = amqp_simple_wait_frame_noblock(conn_, &frame, &tv);
      if (status == AMQP_STATUS_TIMEOUT) continue;
      if (status != AMQP_STATUS_OK)
        throw std::runtime_error(std::string("waiting for confirms: ") + amqp_error_string2(status));
      if (frame.frame_type != AMQP_FRAME_METHOD) continue;
      if (frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
        const auto* ack = static_cast<const amqp_basic_ack_t*>(frame.payload.method.decoded);
        if (ack->multiple) {
          unconfirmed.erase(unconfirmed.begin(), unconfirmed.upper_bound(ack->delivery_tag));
        } else {
          unconfirmed.erase(ack->delivery_tag);
        }
      } else if (frame.payload.method.id == AMQP_BASIC_NACK_METHOD) {
        throw std::runtime_error("the broker nacked a published message");
      } else if (frame.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                 frame.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
        throw std::runtime_error("the broker closed the publishing channel");
      }
    }
  };
  amqp_basic_properties_t props;
  props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
  props.content_type = amqp_cstring_bytes("application/json");
  props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
  amqp_table_entry_t header;
  if (!message_id.empty()) {
    props._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
    props.message_id = bytes_of(message_id);
  }
  if (!producer.empty()) {
    header.key = amqp_cstring_bytes("x-producer");
    header.value.kind = AMQP_FIELD_KIND_UTF8;
    header.value.value.bytes = bytes_of(producer);
    props._flags |= AMQP_BASIC_HEADERS_FLAG;
    props.headers = amqp_table_t{1, &header};
  }
  for (const std::string& body : bodies) {
    const int status =
        amqp_basic_publish(conn_, 1, bytes_of(exchange), bytes_of(routing_key), 0, 0, &props, bytes_of(body));
    if (status != AMQP_STATUS_OK) throw std::runtime_error(std::string("publish: ") + amqp_error_string2(status));
    unconfirmed.insert(++published_);
    if (unconfirmed.size() >= window) wait_confirms(window / 2);
  }
  wait_confirms(0);
}

std::optional<AmqpClient::Got> AmqpClient::get(const std::string& queue) {
  const amqp_channel_t ch = 1;
  const amqp_rpc_reply_t r = amqp_basic_get(conn_, ch, bytes_of(queue), /*no_ack=*/1);
  if (r.reply_type != AMQP_RESPONSE_NORMAL) throw std::runtime_error("basic.get: " + reply_text(r));
  if (r.reply.id != AMQP_BASIC_GET_OK_METHOD) return std::nullopt;
  amqp_message_t message;
  const amqp_rpc_reply_t read = amqp_read_message(conn_, ch, &message, 0);
  if (read.reply_type != AMQP_RESPONSE_NORMAL) throw std::runtime_error("read message: " + reply_text(read));
  Got got;
  got.body.assign(static_cast<const char*>(message.body.bytes), message.body.len);
  if (message.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
    got.message_id.assign(static_cast<const char*>(message.properties.message_id.bytes),
                          message.properties.message_id.len);
  }
  if (message.properties._flags & AMQP_BASIC_HEADERS_FLAG) {
    for (int i = 0; i < message.properties.headers.num_entries; ++i) {
      const amqp_table_entry_t& e = message.properties.headers.entries[i];
      const std::string key(static_cast<const char*>(e.key.bytes), e.key.len);
      if (key == "x-death") got.has_x_death = true;
      if (e.value.kind == AMQP_FIELD_KIND_UTF8 || e.value.kind == AMQP_FIELD_KIND_BYTES) {
        got.headers[key].assign(static_cast<const char*>(e.value.value.bytes.bytes), e.value.value.bytes.len);
      }
    }
  }
  amqp_destroy_message(&message);
  return got;
}

std::vector<AmqpClient::Got> AmqpClient::drain(const std::string& queue) {
  std::vector<Got> out;
  while (auto g = get(queue)) out.push_back(std::move(*g));
  return out;
}

std::optional<std::pair<uint32_t, uint32_t>> AmqpClient::inspect(const std::string& queue) {
  const amqp_channel_t ch = fresh_channel();
  const amqp_queue_declare_ok_t* ok =
      amqp_queue_declare(conn_, ch, bytes_of(queue), /*passive=*/1, 0, 0, 0, amqp_empty_table);
  const amqp_rpc_reply_t r = amqp_get_rpc_reply(conn_);
  if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
    amqp_channel_close_ok_t close_ok{};
    amqp_send_method(conn_, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &close_ok);  // 404: the channel is closed
    return std::nullopt;
  }
  if (r.reply_type != AMQP_RESPONSE_NORMAL) throw std::runtime_error("queue.declare passive: " + reply_text(r));
  auto result = std::make_pair(ok->message_count, ok->consumer_count);
  amqp_channel_close(conn_, ch, AMQP_REPLY_SUCCESS);
  return result;
}

void AmqpClient::delete_queue(const std::string& queue) {
  amqp_queue_delete(conn_, 1, bytes_of(queue), 0, 0);
  check("queue.delete");
}

void AmqpClient::delete_exchange(const std::string& exchange) {
  amqp_exchange_delete(conn_, 1, bytes_of(exchange), 0);
  check("exchange.delete");
}

// ---- SidecarProcess -------------------------------------------------------

SidecarProcess::SidecarProcess(std::string config_yaml, std::string name, const BrokerEnv& env)
    : password_(env.password) {
  config_path_ = ::testing::TempDir() + "/" + name + ".yaml";
  log_path_ = ::testing::TempDir() + "/" + name + ".log";
  std::ofstream(config_path_) << config_yaml;
  std::ofstream(log_path_, std::ios::trunc).flush();
}

SidecarProcess::~SidecarProcess() {
  if (pid_ > 0) kill9();
  std::remove(config_path_.c_str());
  if (!::testing::Test::HasFailure()) std::remove(log_path_.c_str());
}

pid_t spawn_sidecar(const std::string& config_path, const std::string& log_path, const std::string& password,
                    const std::vector<std::string>& extra_args) {
  // Built before the fork: the child only calls async-signal-safe functions.
  std::vector<const char*> argv = {"larder-sidecar", "--config", config_path.c_str(), "--log-level", "debug"};
  for (const std::string& a : extra_args) argv.push_back(a.c_str());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log_path.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::setenv("LARDER_IT_PASSWORD", password.c_str(), 1);
    ::execv(LARDER_SIDECAR_BINARY, const_cast<char* const*>(argv.data()));
    _exit(127);
  }
  return pid;
}

void SidecarProcess::start(const std::vector<std::string>& extra_args) {
  pid_ = spawn_sidecar(config_path_, log_path_, password_, extra_args);
  ASSERT_GT(pid_, 0) << "fork failed";
}

int SidecarProcess::wait_exit(std::chrono::seconds timeout) {
  if (!wait_until([&] { return !running(); }, timeout)) return -1;
  return exit_code_;
}

bool SidecarProcess::running() {
  if (pid_ <= 0) return false;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == 0) return true;
  // Reaped (or gone): the pid may be reused now, so never signal it again.
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  pid_ = -1;
  return false;
}

int SidecarProcess::stop(std::chrono::seconds timeout) {
  if (pid_ <= 0) return exit_code_;
  ::kill(pid_, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return exit_code_;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

void SidecarProcess::kill9() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  exit_code_ = 128 + SIGKILL;
}

std::string SidecarProcess::log_tail(size_t bytes) const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string s = ss.str();
  return s.size() > bytes ? s.substr(s.size() - bytes) : s;
}

size_t SidecarProcess::log_count(const std::string& needle) const {
  const std::string s = log_tail(std::string::npos);
  size_t count = 0;
  for (size_t pos = s.find(needle); pos != std::string::npos; pos = s.find(needle, pos + 1)) ++count;
  return count;
}

int SidecarProcess::metrics_port() const {
  static const std::regex listening(R"(metrics: listening on http://127\.0\.0\.1:(\d+))");
  const std::string log = log_tail(std::string::npos);
  int port = 0;
  for (auto it = std::sregex_iterator(log.begin(), log.end(), listening); it != std::sregex_iterator(); ++it) {
    port = std::stoi((*it)[1]);
  }
  return port;
}

double SidecarProcess::metric(const std::string& sample) const {
  const int port = metrics_port();
  if (port <= 0) return -1;
  httplib::Client http("127.0.0.1", port);
  const auto res = http.Get("/metrics");
  if (!res || res->status != 200) return -1;
  const size_t at = res->body.find("\n" + sample + " ");
  if (at == std::string::npos) return -1;
  return std::stod(res->body.substr(at + sample.size() + 2));
}

// ---- helpers ---------------------------------------------------------------

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

Features Features::from_seed(int64_t seed) {
  Features f;
  f.n = seed * 1000003 - 7;
  f.x = static_cast<double>(seed) * 0.5;
  f.f = static_cast<float>(seed % 1000) * 0.25f;
  f.flag = seed % 2 == 1;
  f.s = fmt::format("s{}", seed % 100000);
  f.v = {static_cast<float>(seed % 97), 1.5f, -static_cast<float>(seed % 13), 0.125f};
  return f;
}

std::string Features::json() const {
  return fmt::format(R"({{"n":{},"x":{},"f":{},"flag":{},"s":"{}","v":[{},{},{},{}]}})", n, x, f,
                     flag ? "true" : "false", s, v[0], v[1], v[2], v[3]);
}

void Oracle::upsert(const std::string& key, int64_t t, const Features& f) {
  Row& r = rows_[key];
  if (t < r.event_time_ms) return;  // last write wins; a tie goes to the later message
  r.event_time_ms = t;
  r.deleted = false;
  r.features = f;
}

void Oracle::remove(const std::string& key, int64_t t) {
  Row& r = rows_[key];
  if (t < r.event_time_ms) return;
  r.event_time_ms = t;
  r.deleted = true;
}

std::string upsert_json(const std::string& table, const std::string& key, int64_t t, const Features& f,
                        const std::string& id) {
  return fmt::format(R"({{"table":"{}","key":"{}","event_time":{},"fields":{}{}}})", table, key, t, f.json(),
                     id.empty() ? "" : fmt::format(R"(,"id":"{}")", id));
}

std::string delete_json(const std::string& table, const std::string& key, int64_t t) {
  return fmt::format(R"({{"table":"{}","key":"{}","event_time":{},"op":"delete"}})", table, key, t);
}

std::string users_table_yaml(uint64_t capacity) {
  return fmt::format(R"(tables:
  - name: users
    key_max_len: 32
    capacity: {}
    event_time: {{max_future_skew: off, min_event_time: 0}}  # synthetic times: 1 ms, 2027
    fields:
      - {{name: n, type: int64}}
      - {{name: x, type: float64}}
      - {{name: f, type: float32}}
      - {{name: flag, type: bool}}
      - {{name: s, type: string, max_len: 16}}
      - {{name: v, type: vector, dims: 4}}
)",
                     capacity);
}

std::string compare_segment(const std::string& segment, const Oracle& oracle) {
  Segment seg;
  try {
    seg = Segment::open(segment);
  } catch (const Error& e) {
    return std::string("cannot open segment: ") + e.what();
  }
  const Table users = seg.table("users");
  const Field n = users.field("n"), x = users.field("x"), f = users.field("f"), flag = users.field("flag"),
              s = users.field("s"), v = users.field("v");
  Row row = users.make_row();
  std::string diffs;
  size_t count = 0;
  for (const auto& [key, want] : oracle.rows()) {
    const ReadResult r = users.get(key, row);
    std::string problem;
    if (want.deleted) {
      if (r.status != Status::kNotFound)
        problem = fmt::format("deleted at {}, segment has {}", want.event_time_ms, status_name(r.status));
    } else if (r.status != Status::kOk) {
      problem = fmt::format("want event {}, segment has {}", want.event_time_ms, status_name(r.status));
    } else if (r.event_time_ms != want.event_time_ms) {
      problem = fmt::format("want event {}, segment has event {}", want.event_time_ms, r.event_time_ms);
    } else {
      const Features& w = want.features;
      const auto vec = row.vector(v);
      if (row.i64(n) != w.n || row.f64(x) != w.x || row.f32(f) != w.f || row.boolean(flag) != w.flag ||
          row.string(s) != w.s || vec.size() != 4 || vec[0] != w.v[0] || vec[1] != w.v[1] || vec[2] != w.v[2] ||
          vec[3] != w.v[3]) {
        problem = fmt::format("values differ (n {} vs {}, s \"{}\" vs \"{}\")", row.i64(n), w.n, row.string(s), w.s);
      }
    }
    if (!problem.empty() && ++count <= 5) diffs += fmt::format("\n  key {}: {}", key, problem);
  }
  if (count > 0) diffs = fmt::format("{} of {} keys differ:{}", count, oracle.rows().size(), diffs);
  return diffs;
}

std::string unique_name(const std::string& test) {
  // Segment names are limited to 63 bytes.
  return fmt::format("larder-it-{}-{}", test.substr(0, 32), ::getpid());
}

bool SidecarTestBase::load_broker(const std::string& prefix, bool need_tls, bool need_ctl) {
  name_ = unique_name(prefix + ::testing::UnitTest::GetInstance()->current_test_info()->name());
  Writer::remove_segment(name_);
  if (!BrokerEnv::load(&env_, need_tls, need_ctl)) return false;
  client_ = std::make_unique<AmqpClient>(env_);
  return true;
}

bool SidecarTestBase::reconnect_client(std::chrono::milliseconds timeout) {
  client_.reset();
  return wait_until(
      [&] {
        try {
          client_ = std::make_unique<AmqpClient>(env_);
          return true;
        } catch (const std::exception&) {
          return false;
        }
      },
      timeout);
}

void SidecarTestBase::wait_for_no_consumer() {
  ASSERT_TRUE(wait_until(
      [&] {
        const auto q = client_->inspect(name_);
        return q && q->second == 0;
      },
      std::chrono::seconds(60)))
      << "the broker still lists a consumer of the stopped sidecar";
}

void SidecarTestBase::TearDown() {
  if (sidecar_ && sidecar_->running()) sidecar_->kill9();
  if (sidecar_ && HasFailure()) std::cerr << "---- sidecar log tail ----\n" << sidecar_->log_tail() << "\n";
  sidecar_.reset();
  try {
    if (client_) {
      client_->delete_queue(name_);
      client_->delete_queue(name_ + ".dlq");
      client_->delete_exchange(name_);
      client_->delete_exchange(name_ + ".dlx");
    }
  } catch (const std::exception&) {
    // The broker may be gone after a failed restart test; nothing to clean.
  }
  client_.reset();
  Writer::remove_segment(name_);
}

}  // namespace larder::test

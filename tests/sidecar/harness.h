// Test harness for the sidecar integration tests: the broker environment, an
// AMQP client for publishing (with publisher confirms) and inspecting queues,
// a child larder-sidecar process, and an oracle of what the segment must
// hold. Everything here runs on the test's main thread.
#pragma once

#include <amqp.h>
#include <gtest/gtest.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/amqp_url.h"

namespace larder::test {

// What scripts/broker.sh exports. load() records a test failure naming the
// missing variable (integration tests never skip silently).
struct BrokerEnv {
  std::string amqp_url;     // LARDER_TEST_AMQP_URL, e.g. amqp://guest@127.0.0.1:5699/
  std::string password;     // LARDER_TEST_AMQP_PASSWORD
  std::string amqps_url;    // LARDER_TEST_AMQPS_URL
  std::string ca_file;      // LARDER_TEST_CA_FILE
  std::string client_cert;  // LARDER_TEST_CLIENT_CERT (optional)
  std::string client_key;   // LARDER_TEST_CLIENT_KEY (optional)
  std::string broker_ctl;   // LARDER_TEST_BROKER_CTL: a command prefix taking stop_app, start_app, restart

  static bool load(BrokerEnv* env, bool need_tls = false, bool need_ctl = false);
  // Runs "<broker_ctl> <verb>"; returns true on exit status 0.
  bool ctl(const std::string& verb) const;
};

// A blocking rabbitmq-c client on channel 1 with publisher confirms.
class AmqpClient {
 public:
  explicit AmqpClient(const BrokerEnv& env);
  ~AmqpClient();
  AmqpClient(const AmqpClient&) = delete;
  AmqpClient& operator=(const AmqpClient&) = delete;

  // Publishes persistent messages and returns once the broker confirmed all
  // of them (throws std::runtime_error on a nack, error or 30 s timeout).
  void publish(const std::string& exchange, const std::string& routing_key, const std::vector<std::string>& bodies,
               size_t window = 500);
  void publish(const std::string& exchange, const std::string& routing_key, const std::string& body) {
    publish(exchange, routing_key, std::vector<std::string>{body});
  }
  // One message with a message_id and an application header
  // (x-producer: `producer`), confirmed like publish().
  void publish_with_properties(const std::string& exchange, const std::string& routing_key, const std::string& body,
                               const std::string& message_id, const std::string& producer);

  struct Got {
    std::string body;
    bool has_x_death = false;
    std::string message_id;                      // the AMQP message_id property, "" when unset
    std::map<std::string, std::string> headers;  // the string-valued headers
  };
  // basic.get with auto-ack; nullopt when the queue is empty.
  std::optional<Got> get(const std::string& queue);
  // Drains `queue` with get(); returns the bodies.
  std::vector<Got> drain(const std::string& queue);
  // Passive declare: nullopt when the queue does not exist, else its
  // (messages, consumers).
  std::optional<std::pair<uint32_t, uint32_t>> inspect(const std::string& queue);
  void delete_queue(const std::string& queue);
  void delete_exchange(const std::string& exchange);

 private:
  void publish_each(const std::string& exchange, const std::string& routing_key, const std::vector<std::string>& bodies,
                    size_t window, const std::string& message_id, const std::string& producer);
  amqp_channel_t fresh_channel();
  void check(const char* what);

  amqp_connection_state_t conn_ = nullptr;
  amqp_channel_t next_channel_ = 2;  // 1 is the confirm channel
  uint64_t published_ = 0;
};

// A larder-sidecar child process with its own config file and log.
class SidecarProcess {
 public:
  SidecarProcess(std::string config_yaml, std::string name, const BrokerEnv& env);
  ~SidecarProcess();  // SIGKILLs a still-running child

  // `extra_args` follow --config and --log-level (e.g. --restore FILE).
  void start(const std::vector<std::string>& extra_args = {});
  // Waits until the child exits on its own; returns its exit code (or
  // 128+signal), -1 when it still runs after `timeout`.
  int wait_exit(std::chrono::seconds timeout = std::chrono::seconds(60));
  const std::string& config_path() const { return config_path_; }
  // SIGTERM and wait; returns the exit code (or 128+signal; -1 on timeout).
  // A child that already exited (seen by running()) returns its exit code.
  int stop(std::chrono::seconds timeout = std::chrono::seconds(20));
  void kill9();
  // False once the child exited; then it is reaped and never signalled again.
  bool running();
  pid_t pid() const { return pid_; }
  std::string log_tail(size_t bytes = 4000) const;
  size_t log_count(const std::string& needle) const;
  const std::string& log_path() const { return log_path_; }
  // The metrics port of the child's latest start (the log keeps the
  // "metrics: listening on" lines of earlier starts), 0 before the first.
  int metrics_port() const;
  // The value of one sample of the child's /metrics, named with its labels
  // (e.g. `larder_x{table="t"}`); -1 when absent or unreachable.
  double metric(const std::string& sample) const;

 private:
  std::string config_path_;
  std::string log_path_;
  std::string password_;
  pid_t pid_ = -1;      // -1 once reaped: a reaped pid may belong to another process
  int exit_code_ = -1;  // of the reaped child; -1 while running or never started
};

// Forks and execs larder-sidecar (LARDER_SIDECAR_BINARY) with the config at
// `config_path`, its stdout and stderr appended to `log_path` and `password`
// in LARDER_IT_PASSWORD. Returns the child's pid, or -1 when fork failed.
pid_t spawn_sidecar(const std::string& config_path, const std::string& log_path, const std::string& password,
                    const std::vector<std::string>& extra_args = {});

// Polls `pred` every 20 ms until true or timeout; returns the last result.
bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout);

// The features the tests write: every type the segment supports.
struct Features {
  int64_t n = 0;
  double x = 0;
  float f = 0;
  bool flag = false;
  std::string s;
  std::vector<float> v;  // 4 dims

  static Features from_seed(int64_t seed);
  std::string json() const;  // the "fields" object
};

// Last-write-wins model of one table, built from what the test published.
class Oracle {
 public:
  void upsert(const std::string& key, int64_t event_time_ms, const Features& f);
  void remove(const std::string& key, int64_t event_time_ms);

  struct Row {
    int64_t event_time_ms = -1;
    bool deleted = false;
    Features features;
  };
  const std::map<std::string, Row>& rows() const { return rows_; }

 private:
  std::map<std::string, Row> rows_;
};

std::string upsert_json(const std::string& table, const std::string& key, int64_t event_time_ms, const Features& f,
                        const std::string& id = "");
std::string delete_json(const std::string& table, const std::string& key, int64_t event_time_ms);

// The table every integration test uses, as YAML for the sidecar config.
std::string users_table_yaml(uint64_t capacity = 100000);

// Compares the segment's table "users" with the oracle. Returns "" when they
// agree, else a description of the first differences.
std::string compare_segment(const std::string& segment, const Oracle& oracle);

// A unique name for this test's segment, queue and exchange.
std::string unique_name(const std::string& test);

// A test that runs the real sidecar against the real broker: one unique name
// for its segment, queue and exchanges, and cleanup of all of them (and of
// the sidecar, whose log tail is printed when the test failed).
class SidecarTestBase : public ::testing::Test {
 protected:
  // Loads the broker environment; false (with a recorded failure) if absent.
  // The name is `prefix` + the test's name, made unique.
  bool load_broker(const std::string& prefix, bool need_tls, bool need_ctl);
  void TearDown() override;
  // Replaces the test's own broker connection (after a broker restart),
  // retrying until `timeout`.
  bool reconnect_client(std::chrono::milliseconds timeout);
  // Waits until the broker lists no consumer on the queue: the next start
  // then waits for its own consumer, not a stale registration.
  void wait_for_no_consumer();

  BrokerEnv env_;
  std::string name_;
  std::unique_ptr<AmqpClient> client_;
  std::unique_ptr<SidecarProcess> sidecar_;
};

}  // namespace larder::test

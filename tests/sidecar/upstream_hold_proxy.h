// A loopback TCP forwarder between the sidecar and the broker that the test
// controls: hold_upstream() stops forwarding what the sidecar sends (its
// acks stay in the proxy, never reaching the broker) while deliveries still
// flow to the sidecar; cut() closes every connection without forwarding what
// was held, so the broker requeues every message it has not seen acked.
//
// With the upstream held, "applied but not acked" is certain rather than a
// race: every message the sidecar applies after hold_upstream() returned is
// redelivered once the connection is cut.
//
// Threading: one forwarding thread; the public methods are called from the
// test's main thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace larder::test {

class UpstreamHoldProxy {
 public:
  // Listens on 127.0.0.1 (a free port) and forwards every accepted
  // connection to broker_host:broker_port.
  UpstreamHoldProxy(const std::string& broker_host, uint16_t broker_port);
  ~UpstreamHoldProxy();  // cut() and join
  UpstreamHoldProxy(const UpstreamHoldProxy&) = delete;
  UpstreamHoldProxy& operator=(const UpstreamHoldProxy&) = delete;

  uint16_t port() const { return port_; }
  // `amqp_url` with its host and port replaced by this proxy's.
  std::string url_through(const std::string& amqp_url) const;

  // Returns once the forwarding thread has stopped reading from the client
  // side: nothing the client sends from now on reaches the broker.
  void hold_upstream();
  // Closes every connection (both sides) without forwarding held bytes;
  // returns once they are closed. Later connections are refused.
  void cut();

 private:
  void run();

  struct Pair {
    int client_fd;
    int broker_fd;
  };

  std::string broker_host_;
  uint16_t broker_port_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  // Requests from the main thread; the forwarding thread answers by copying
  // them to the *_seen_ flags at the top of its loop.
  std::atomic<bool> hold_{false};
  std::atomic<bool> hold_seen_{false};
  std::atomic<bool> cut_{false};
  std::atomic<bool> cut_seen_{false};
  std::vector<Pair> pairs_;  // forwarding thread only
  std::thread thread_;
};

// A proxy to the broker of `amqp_url`; the sidecar reaches the broker
// through it at proxy->url_through(amqp_url). Records a test failure when
// `amqp_url` does not parse.
std::unique_ptr<UpstreamHoldProxy> make_hold_proxy(const std::string& amqp_url);

}  // namespace larder::test

// See upstream_hold_proxy.h.
#include "upstream_hold_proxy.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <stdexcept>

#include "config/amqp_url.h"

namespace larder::test {
namespace {

int connect_to(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0) return -1;
  int fd = -1;
  for (addrinfo* a = res; a != nullptr && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd >= 0 && ::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(res);
  return fd;
}

// Copies what is readable on `from` to `to`; false when either side closed.
bool forward(int from, int to) {
  char buf[65536];
  const ssize_t n = ::recv(from, buf, sizeof buf, 0);
  if (n <= 0) return false;
  for (ssize_t sent = 0; sent < n;) {
    const ssize_t w = ::send(to, buf + sent, static_cast<size_t>(n - sent), MSG_NOSIGNAL);
    if (w <= 0) return false;
    sent += w;
  }
  return true;
}

}  // namespace

UpstreamHoldProxy::UpstreamHoldProxy(const std::string& broker_host, uint16_t broker_port)
    : broker_host_(broker_host), broker_port_(broker_port) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listen_fd_, 8) != 0 || ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (listen_fd_ >= 0) ::close(listen_fd_);
    throw std::runtime_error("proxy: cannot listen on 127.0.0.1");
  }
  port_ = ntohs(addr.sin_port);
  thread_ = std::thread([this] { run(); });
}

UpstreamHoldProxy::~UpstreamHoldProxy() {
  cut();
  thread_.join();
  ::close(listen_fd_);
}

std::string UpstreamHoldProxy::url_through(const std::string& amqp_url) const {
  // amqp://user@host:port/vhost: replace what lies between '@' (or "://")
  // and the next '/'.
  const size_t scheme = amqp_url.find("://");
  size_t start = amqp_url.find('@', scheme == std::string::npos ? 0 : scheme + 3);
  start = start == std::string::npos ? scheme + 3 : start + 1;
  const size_t end = amqp_url.find('/', start);
  return amqp_url.substr(0, start) + "127.0.0.1:" + std::to_string(port_) +
         (end == std::string::npos ? "" : amqp_url.substr(end));
}

void UpstreamHoldProxy::hold_upstream() {
  hold_.store(true);
  while (!hold_seen_.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

void UpstreamHoldProxy::cut() {
  cut_.store(true);
  while (!cut_seen_.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

void UpstreamHoldProxy::run() {
  for (;;) {
    // The requests take effect here, before the next poll: once hold_seen_
    // is set, no recv() on a client socket begins.
    if (cut_.load()) {
      for (const Pair& p : pairs_) {
        ::close(p.client_fd);
        ::close(p.broker_fd);
      }
      pairs_.clear();
      cut_seen_.store(true);
      return;
    }
    const bool hold = hold_.load();
    hold_seen_.store(hold);

    std::vector<pollfd> fds;
    fds.push_back(pollfd{listen_fd_, POLLIN, 0});
    for (const Pair& p : pairs_) {
      fds.push_back(pollfd{p.client_fd, static_cast<short>(hold ? 0 : POLLIN), 0});
      fds.push_back(pollfd{p.broker_fd, POLLIN, 0});
    }
    if (::poll(fds.data(), fds.size(), 10) <= 0) continue;
    if (fds[0].revents & POLLIN) {
      const int client = ::accept(listen_fd_, nullptr, nullptr);
      if (client >= 0) {
        const int broker = connect_to(broker_host_, broker_port_);
        if (broker < 0) {
          ::close(client);
        } else {
          pairs_.push_back(Pair{client, broker});
        }
      }
      continue;  // fds no longer matches pairs_
    }
    std::vector<Pair> alive;
    for (size_t i = 0; i < pairs_.size(); ++i) {
      const pollfd& c = fds[1 + 2 * i];
      const pollfd& b = fds[2 + 2 * i];
      bool ok = true;
      if (hold && (c.revents & (POLLHUP | POLLERR))) ok = false;  // the client is gone; drop what it sent
      if (ok && !hold && (c.revents & (POLLIN | POLLHUP | POLLERR))) {
        ok = forward(pairs_[i].client_fd, pairs_[i].broker_fd);
      }
      if (ok && (b.revents & (POLLIN | POLLHUP | POLLERR))) ok = forward(pairs_[i].broker_fd, pairs_[i].client_fd);
      if (ok) {
        alive.push_back(pairs_[i]);
      } else {
        // One side closed: close both without forwarding anything held.
        ::close(pairs_[i].client_fd);
        ::close(pairs_[i].broker_fd);
      }
    }
    pairs_ = std::move(alive);
  }
}

std::unique_ptr<UpstreamHoldProxy> make_hold_proxy(const std::string& amqp_url) {
  sidecar::AmqpUrl url;
  std::string error;
  EXPECT_TRUE(sidecar::parse_amqp_url(amqp_url, &url, &error)) << error;
  return std::make_unique<UpstreamHoldProxy>(url.host, url.port);
}

}  // namespace larder::test

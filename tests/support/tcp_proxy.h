// A loopback TCP forwarder the test controls, standing between a client and
// a server (the sidecar and RabbitMQ) to make network failures certain:
//
//  * bound but not listening: connecting is refused (a broker not there yet);
//  * listen(): accepts and forwards every connection to the target;
//  * silence(): existing connections stay open but carry no byte in either
//    direction (a partition without FIN or RST); new ones are still forwarded;
//  * cut(): closes every connection and stops listening (refused again);
//  * inject_to_client(): writes bytes to the clients at the next boundary of
//    the server's AMQP frames (type, channel, size, payload, 0xCE), so a
//    whole frame can be slipped between two of the server's frames.
//
// Threads: one forwarding thread owns the sockets; the public methods may be
// called from any one other thread and only set state under mu_, which the
// forwarding thread reads once per poll round (at most 20 ms apart).
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace larder::test {

class TcpProxy {
 public:
  // Binds 127.0.0.1 on a free port (not yet listening) and forwards to
  // target_host:target_port once listen() is called.
  TcpProxy(std::string target_host, uint16_t target_port)
      : target_host_(std::move(target_host)), target_port_(target_port) {
    listen_fd_ = bind_loopback(0);
    sockaddr_in a{};
    socklen_t len = sizeof a;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~TcpProxy() {
    stop_.store(true);
    thread_.join();
    for (Pair& p : pairs_) close_pair(p);
    if (listen_fd_ >= 0) ::close(listen_fd_);
  }
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  uint16_t port() const { return port_; }

  void listen() {
    std::lock_guard<std::mutex> lock(mu_);
    want_listening_ = true;
  }
  void silence() {
    std::lock_guard<std::mutex> lock(mu_);
    ++silence_requests_;
  }
  void cut() {
    std::lock_guard<std::mutex> lock(mu_);
    ++cut_requests_;
    want_listening_ = false;
  }
  void inject_to_client(std::string bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    injections_.push_back(std::move(bytes));
  }
  // Connections accepted so far.
  size_t accepted() const { return accepted_.load(); }
  // Injections written to at least one client.
  size_t injected() const { return injected_.load(); }
  // Method frames the server sent so far with this AMQP class and method id
  // (e.g. 20, 40 for channel.close).
  size_t server_methods(uint16_t class_id, uint16_t method_id) const {
    std::lock_guard<std::mutex> lock(mu_);
    size_t n = 0;
    for (uint32_t id : server_methods_) n += id == (static_cast<uint32_t>(class_id) << 16 | method_id) ? 1 : 0;
    return n;
  }

 private:
  struct Pair {
    int client = -1;
    int server = -1;
    bool silent = false;
    std::string from_server;  // an incomplete server frame, held back until whole
  };

  static int bind_loopback(uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int on = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd);
      throw std::runtime_error(std::string("TcpProxy: bind: ") + std::strerror(errno));
    }
    return fd;
  }

  int connect_target() const {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(target_port_);
    // The target is on this host: a name (say "localhost") means loopback.
    if (::inet_pton(AF_INET, target_host_.c_str(), &a.sin_addr) != 1) a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd);
      return -1;
    }
    return fd;
  }

  static bool write_all(int fd, const char* data, size_t n) {
    while (n > 0) {
      const ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      data += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }

  static void close_pair(Pair& p) {
    if (p.client >= 0) ::close(p.client);
    if (p.server >= 0) ::close(p.server);
    p.client = p.server = -1;
  }

  // Forwards the whole frames at the front of p.from_server; false when the
  // client is gone.
  bool forward_frames(Pair& p) {
    size_t whole = 0;
    for (;;) {
      const std::string& b = p.from_server;
      if (b.size() - whole < 7) break;
      uint32_t size_be;
      std::memcpy(&size_be, b.data() + whole + 3, 4);
      const size_t frame = 7 + static_cast<size_t>(ntohl(size_be)) + 1;
      if (b.size() - whole < frame) break;
      if (b[whole] == 1 && frame >= 7 + 4 + 1) {  // a method frame: class and method id lead its payload
        const auto byte = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(b[whole + 7 + i])); };
        std::lock_guard<std::mutex> lock(mu_);
        server_methods_.push_back(byte(0) << 24 | byte(1) << 16 | byte(2) << 8 | byte(3));
      }
      whole += frame;
    }
    if (whole == 0) return true;
    const bool ok = write_all(p.client, p.from_server.data(), whole);
    p.from_server.erase(0, whole);
    return ok;
  }

  void run() {
    bool listening = false;
    int cuts_done = 0, silences_done = 0;
    std::vector<pollfd> fds;
    while (!stop_.load()) {
      std::vector<std::string> injections;
      bool want_listening;
      int cuts, silences;
      {
        std::lock_guard<std::mutex> lock(mu_);
        want_listening = want_listening_;
        cuts = cut_requests_;
        silences = silence_requests_;
        // An injection waits for every live connection to be at a frame boundary.
        bool at_boundary = true;
        for (const Pair& p : pairs_) at_boundary = at_boundary && (p.silent || p.from_server.empty());
        if (at_boundary) injections.swap(injections_);
      }
      if (cuts != cuts_done) {
        cuts_done = cuts;
        for (Pair& p : pairs_) close_pair(p);
        pairs_.clear();
        ::close(listen_fd_);
        listen_fd_ = bind_loopback(port_);  // bound, not listening: connects are refused
        listening = false;
      }
      if (silences != silences_done) {
        silences_done = silences;
        for (Pair& p : pairs_) p.silent = true;
      }
      if (want_listening && !listening) {
        ::listen(listen_fd_, 16);
        listening = true;
      }
      for (const std::string& bytes : injections) {
        bool any = false;
        for (Pair& p : pairs_) {
          if (!p.silent) any = write_all(p.client, bytes.data(), bytes.size()) || any;
        }
        if (any) ++injected_;
      }

      fds.clear();
      if (listening) fds.push_back({listen_fd_, POLLIN, 0});
      for (const Pair& p : pairs_) {
        if (p.silent) continue;
        fds.push_back({p.client, POLLIN, 0});
        fds.push_back({p.server, POLLIN, 0});
      }
      if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
      char buf[65536];
      for (const pollfd& f : fds) {
        if ((f.revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        if (f.fd == listen_fd_) {
          const int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
          if (client < 0) continue;
          const int server = connect_target();
          if (server < 0) {
            ::close(client);
            continue;
          }
          pairs_.push_back(Pair{client, server, false, {}});
          ++accepted_;
          continue;
        }
        for (Pair& p : pairs_) {
          if (p.silent || (f.fd != p.client && f.fd != p.server)) continue;
          const ssize_t n = ::recv(f.fd, buf, sizeof buf, 0);
          bool ok = n > 0;
          if (ok && f.fd == p.client) ok = write_all(p.server, buf, static_cast<size_t>(n));
          if (ok && f.fd == p.server) {
            p.from_server.append(buf, static_cast<size_t>(n));
            ok = forward_frames(p);
          }
          if (!ok) close_pair(p);
        }
      }
      std::erase_if(pairs_, [](const Pair& p) { return p.client < 0; });
    }
  }

  const std::string target_host_;
  const uint16_t target_port_;
  uint16_t port_ = 0;
  int listen_fd_ = -1;       // forwarding thread (and the constructor/destructor)
  std::vector<Pair> pairs_;  // forwarding thread
  std::atomic<bool> stop_{false};
  std::atomic<size_t> accepted_{0};
  std::atomic<size_t> injected_{0};

  mutable std::mutex mu_;  // guards the requests below and server_methods_
  bool want_listening_ = false;
  int cut_requests_ = 0;
  int silence_requests_ = 0;
  std::vector<std::string> injections_;
  std::vector<uint32_t> server_methods_;  // class << 16 | method of each server method frame

  std::thread thread_;  // last: starts after every member above is built
};

}  // namespace larder::test

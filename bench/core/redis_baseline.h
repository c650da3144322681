// Baseline: Redis GET over a Unix socket (hiredis), against a throwaway
// redis-server started in a temporary directory and stopped afterwards.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

struct redisContext;

namespace larder::bench {

class RedisBaseline {
 public:
  // Starts redis-server (no TCP port, no persistence) on a socket in a fresh
  // temporary directory and connects. On failure available() is false and
  // skip_reason() says why (no binary, no hiredis at build time, ...).
  RedisBaseline();
  ~RedisBaseline();
  RedisBaseline(const RedisBaseline&) = delete;
  RedisBaseline& operator=(const RedisBaseline&) = delete;

  bool available() const { return ctx_ != nullptr; }
  const std::string& skip_reason() const { return skip_reason_; }

  // Pipelined SETs: call set() for each key, then flush() once at the end.
  void set(std::string_view key, const void* value, size_t bytes);
  void flush();
  // GET; copies up to `bytes` of the value into out. False when absent.
  bool get(std::string_view key, void* out, size_t bytes);
  // Pins redis-server to one CPU (sched_setaffinity), or lets it run on any
  // (cpu < 0). False when the kernel refuses.
  bool pin_server(int cpu);

 private:
  void drain(size_t replies);

  redisContext* ctx_ = nullptr;
  pid_t server_ = -1;
  std::string dir_;
  std::string skip_reason_;
  size_t pending_ = 0;
};

}  // namespace larder::bench

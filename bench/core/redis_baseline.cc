#include "redis_baseline.h"

#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(LARDER_BENCH_HAVE_HIREDIS)
#include <hiredis/hiredis.h>
#endif

namespace larder::bench {

#if defined(LARDER_BENCH_HAVE_HIREDIS)

namespace {

std::string find_redis_server() {
  if (const char* env = std::getenv("LARDER_BENCH_REDIS_SERVER")) return env;
  for (const char* p : {"/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/sbin/redis-server"}) {
    if (::access(p, X_OK) == 0) return p;
  }
  return {};
}

}  // namespace

RedisBaseline::RedisBaseline() {
  const std::string server = find_redis_server();
  if (server.empty()) {
    skip_reason_ = "redis-server not found (apt-get install redis-server, or set LARDER_BENCH_REDIS_SERVER)";
    return;
  }
  char tmpl[] = "/tmp/larder-bench-redis-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    skip_reason_ = std::string("mkdtemp: ") + std::strerror(errno);
    return;
  }
  dir_ = tmpl;
  const std::string sock = dir_ + "/redis.sock";
  const std::string log = dir_ + "/redis.log";
  server_ = ::fork();
  if (server_ == 0) {
    ::execl(server.c_str(), server.c_str(), "--port", "0", "--unixsocket", sock.c_str(), "--save", "", "--appendonly",
            "no", "--dir", dir_.c_str(), "--logfile", log.c_str(), "--daemonize", "no", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  if (server_ < 0) {
    skip_reason_ = std::string("fork: ") + std::strerror(errno);
    return;
  }
  for (int attempt = 0; attempt < 200 && ctx_ == nullptr; ++attempt) {
    ::usleep(25'000);
    redisContext* c = redisConnectUnix(sock.c_str());
    if (c != nullptr && c->err == 0) {
      ctx_ = c;
    } else if (c != nullptr) {
      redisFree(c);
    }
  }
  if (ctx_ == nullptr) skip_reason_ = "redis-server did not accept connections on " + sock + " within 5 s";
}

RedisBaseline::~RedisBaseline() {
  if (ctx_ != nullptr) redisFree(ctx_);
  if (server_ > 0) {
    ::kill(server_, SIGTERM);
    ::waitpid(server_, nullptr, 0);
  }
  if (!dir_.empty()) {
    ::unlink((dir_ + "/redis.sock").c_str());
    ::unlink((dir_ + "/redis.log").c_str());
    ::rmdir(dir_.c_str());
  }
}

void RedisBaseline::set(std::string_view key, const void* value, size_t bytes) {
  redisAppendCommand(ctx_, "SET %b %b", key.data(), key.size(), value, bytes);
  if (++pending_ == 1000) drain(pending_);
}

void RedisBaseline::flush() { drain(pending_); }

void RedisBaseline::drain(size_t replies) {
  for (size_t i = 0; i < replies; ++i) {
    void* reply = nullptr;
    if (redisGetReply(ctx_, &reply) == REDIS_OK) freeReplyObject(reply);
  }
  pending_ = 0;
}

bool RedisBaseline::get(std::string_view key, void* out, size_t bytes) {
  auto* reply = static_cast<redisReply*>(redisCommand(ctx_, "GET %b", key.data(), key.size()));
  bool found = false;
  if (reply != nullptr && reply->type == REDIS_REPLY_STRING) {
    std::memcpy(out, reply->str, std::min(bytes, static_cast<size_t>(reply->len)));
    found = true;
  }
  if (reply != nullptr) freeReplyObject(reply);
  return found;
}

bool RedisBaseline::pin_server(int cpu) {
  if (server_ <= 0) return false;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu < 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c) CPU_SET(c, &set);
  } else {
    CPU_SET(cpu, &set);
  }
  return ::sched_setaffinity(server_, sizeof set, &set) == 0 || cpu < 0;
}

#else

RedisBaseline::RedisBaseline() { skip_reason_ = "built without hiredis (apt-get install libhiredis-dev)"; }
RedisBaseline::~RedisBaseline() = default;
void RedisBaseline::set(std::string_view, const void*, size_t) {}
void RedisBaseline::flush() {}
void RedisBaseline::drain(size_t) {}
bool RedisBaseline::get(std::string_view, void*, size_t) { return false; }
bool RedisBaseline::pin_server(int) { return false; }

#endif

}  // namespace larder::bench

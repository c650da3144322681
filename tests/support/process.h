// Child processes for cross-process tests: fork a function, kill, wait.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>
#include <vector>

namespace larder::testing {

// Forks; the child runs `body` and _exits with its return value (an uncaught
// exception exits 99). Returns the child's pid.
inline pid_t spawn(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) std::abort();
  if (pid == 0) {
    // A test that fails and returns early must not leave children behind.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    int code = 99;
    try {
      code = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child %d: %s\n", ::getpid(), e.what());
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  return pid;
}

// Waits for pid; returns its exit code, 128 + signal if killed, or -1 if it
// did not finish within `timeout` (it is then SIGKILLed and reaped).
inline int wait_for(pid_t pid, std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (true) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Kills and reaps the children it holds when it goes out of scope, so that
// a failing assertion cannot leave a reader or writer running.
class Children {
 public:
  ~Children() {
    for (pid_t p : pids_) {
      ::kill(p, SIGKILL);
      ::waitpid(p, nullptr, 0);
    }
  }
  pid_t add(pid_t pid) {
    pids_.push_back(pid);
    return pid;
  }
  // Waits for pid (see wait_for) and forgets it.
  int wait(pid_t pid, std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    std::erase(pids_, pid);
    return wait_for(pid, timeout);
  }

 private:
  std::vector<pid_t> pids_;
};

// Seconds for the long-running tests: LARDER_TORTURE_SECONDS, else `fallback`.
inline double torture_seconds(double fallback) {
  const char* s = std::getenv("LARDER_TORTURE_SECONDS");
  return s != nullptr ? std::atof(s) : fallback;
}

// The seed for randomized tests: LARDER_SEED if set, else from the clock.
// Always printed so that a failure can be replayed.
inline uint64_t test_seed(const char* test) {
  const char* s = std::getenv("LARDER_SEED");
  const uint64_t seed = s != nullptr
                            ? std::strtoull(s, nullptr, 10)
                            : static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  std::printf("%s: seed %llu (replay with LARDER_SEED=%llu)\n", test, static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  return seed;
}

}  // namespace larder::testing

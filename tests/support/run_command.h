// Runs a shell command from a test and collects what it printed.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace larder::testing {

struct CommandRun {
  int code = -1;    // the exit status; -1 when it did not exit normally or never started
  std::string out;  // stdout and stderr, interleaved as written
};

// Runs `command` through /bin/sh with stderr sent to stdout and waits for it
// to end. Blocks the calling thread until then.
inline CommandRun run_command(const std::string& command) {
  CommandRun r;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) {
    r.out = "popen failed: " + command;
    return r;
  }
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace larder::testing

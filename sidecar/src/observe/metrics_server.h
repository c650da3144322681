// The HTTP listener: /metrics (Prometheus text format 0.0.4), /healthz
// (liveness) and /readyz (readiness), for Prometheus and Kubernetes probes
// (docs/operations.md, "Metrics and probes").
//
// Threads: bind() and stop() run on the main thread. start() launches the
// HTTP thread, which accepts connections, and cpp-httplib's pool of
// kHttpWorkers worker threads, which answer them. The handlers only read the
// Pipeline's atomics and the segment (mapped read-only through the client
// library, as readers see it); they never touch the Writer or the broker
// connection. A mutex, taken only by the HTTP workers, guards the segment
// handle.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "apply/pipeline.h"
#include "config/config.h"
#include "larder/client.h"
#include "observe/metrics.h"
#include "snapshot/image_exchange.h"

namespace httplib {
class Server;
}

namespace larder::sidecar {

inline constexpr int kHttpWorkers = 2;
// /healthz fails when the writer thread has made no round for this long.
inline constexpr double kWriterLivenessLimitS = 5.0;

class MetricsServer {
 public:
  MetricsServer(const Config& config, const Pipeline& pipeline);
  ~MetricsServer();  // stop()
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Binds metrics.host:metrics.port. Returns the bound port (the chosen one
  // when the config says 0), or -1 with a reason in *error. Main thread.
  int bind(std::string* error);
  // Adds GET /snapshot (snapshot.serve; snapshot/snapshot_http.h), answered
  // with images from `images`. Main thread, before start().
  void serve_snapshots(ImageExchange& images);
  // Starts the HTTP thread; requires a successful bind(). Main thread.
  void start();
  // Stops accepting, finishes open requests and joins. Main thread; idempotent.
  void stop();

  // The bodies of the three endpoints, with their HTTP status. HTTP workers
  // (and tests).
  struct Reply {
    int status = 200;
    std::string body;
  };
  Reply metrics();
  Reply healthz();
  Reply readyz();

 private:
  // Reads the segment's header and table stats, (re)opening the segment when
  // needed. HTTP workers, under segment_mutex_.
  SegmentSample sample_segment();

  const Config& config_;
  const Pipeline& pipeline_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;

  std::mutex segment_mutex_;
  Segment segment_;            // guarded by segment_mutex_
  std::vector<Table> tables_;  // guarded by segment_mutex_
  bool segment_open_ = false;  // guarded by segment_mutex_
};

}  // namespace larder::sidecar

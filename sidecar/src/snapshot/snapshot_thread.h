// The snapshot thread: every snapshot.interval it asks the writer thread for
// an image (ImageExchange), compresses it and writes
// `<snapshot.dir>/<segment>-<unix_ms>.lsnap` atomically (a temporary file,
// fsync, rename), keeps the newest snapshot.keep files, logs the size, the
// time taken and the stream position the file covers, and updates the
// larder_snapshot_* metrics. The compression runs here, never on the writer
// thread, which only pauses for the copy.
//
// Threads: start() and stop() on the main thread; run() on the snapshot
// thread. A failed snapshot (disk full, directory gone) is logged and
// counted; the next interval tries again.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "config/config.h"
#include "observe/metrics.h"
#include "snapshot/image_exchange.h"

namespace larder::sidecar {

// How long a requester waits for the writer thread's copy before it gives
// up (the writer thread serves requests at least every 20 ms; a copy of a
// large segment takes a second or two).
inline constexpr std::chrono::seconds kImageWait{60};

// Writes one snapshot of `image` into `dir`; returns the file's path and
// size. Throws larder::Error or std::system_error. Snapshot thread (and tests).
struct WrittenSnapshot {
  std::string path;
  uint64_t bytes = 0;
};
WrittenSnapshot write_snapshot_to_dir(const std::string& dir, const std::string& segment, const SegmentImage& image);

// "next offset 1234" (+ ", 2 updates of it applied"), or "no stream position"
// when the segment stores none: how logs name the position an image covers.
std::string describe_position(const SegmentImage& image);

class SnapshotThread {
 public:
  SnapshotThread(const Config& config, ImageExchange& images, SidecarMetrics& metrics);
  ~SnapshotThread();  // stop()
  SnapshotThread(const SnapshotThread&) = delete;
  SnapshotThread& operator=(const SnapshotThread&) = delete;

  // Main thread.
  void start();
  void stop();  // idempotent; waits for a snapshot in progress to finish

 private:
  void run();
  void take_one();

  const Config& config_;
  ImageExchange& images_;
  SidecarMetrics& metrics_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mutex_
  std::thread thread_;
};

}  // namespace larder::sidecar

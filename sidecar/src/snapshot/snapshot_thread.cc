// The periodic snapshots (see snapshot_thread.h). start()/stop(): main
// thread; run(), take_one() and write_snapshot_to_dir(): snapshot thread.
#include "snapshot/snapshot_thread.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <system_error>

#include "larder/layout/clock.h"
#include "larder/snapshot/snapshot_file.h"
#include "snapshot/snapshot_dir.h"

namespace larder::sidecar {

// One compression thread: a snapshot is background work, and the host's
// cores belong to the model servers.
constexpr int kCompressionThreads = 1;

WrittenSnapshot write_snapshot_to_dir(const std::string& dir, const std::string& segment, const SegmentImage& image) {
  ensure_snapshot_dir(dir);
  WrittenSnapshot out;
  out.path = snapshot_path(dir, segment, image.taken_unix_ns / 1'000'000);
  snapshot::WriteOptions options;
  options.threads = kCompressionThreads;
  const snapshot::SnapshotInfo info = snapshot::write_snapshot_file(out.path, segment, image.bytes, options);
  out.bytes = snapshot::kSnapshotHeaderBytes + info.payload_bytes;
  return out;
}

std::string describe_position(const SegmentImage& image) {
  if (!image.position) return "no stream position";
  if (image.position->skip_updates == 0) return fmt::format("next offset {}", image.position->next_offset);
  return fmt::format("next offset {} ({} of its updates applied)", image.position->next_offset,
                     image.position->skip_updates);
}

SnapshotThread::SnapshotThread(const Config& config, ImageExchange& images, SidecarMetrics& metrics)
    : config_(config), images_(images), metrics_(metrics) {}

SnapshotThread::~SnapshotThread() { stop(); }

void SnapshotThread::start() {
  thread_ = std::thread([this] { run(); });
}

void SnapshotThread::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void SnapshotThread::run() {
  const auto interval = std::chrono::milliseconds(config_.snapshot.interval_ms);
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (cv_.wait_for(lock, interval, [&] { return stop_; })) return;
    }
    take_one();
  }
}

void SnapshotThread::take_one() {
  const SnapshotConfig& sc = config_.snapshot;
  const int64_t t0 = layout::now_mono_ns();
  const std::shared_ptr<const SegmentImage> image = images_.request(kImageWait);
  if (!image) {
    // Either the writer thread is stopping (close()) or it did not copy in
    // time; the next interval tries again.
    spdlog::error("snapshot: no image from the writer thread within {} s; no snapshot this time", kImageWait.count());
    metrics_.snapshot_failures.add();
    return;
  }
  try {
    const WrittenSnapshot written = write_snapshot_to_dir(sc.dir, config_.segment.name, *image);
    const int64_t took_ns = layout::now_mono_ns() - t0;
    metrics_.snapshot_last_unix_ns.set(image->taken_unix_ns);
    metrics_.snapshot_last_bytes.set(static_cast<int64_t>(written.bytes));
    metrics_.snapshot_last_ns.set(took_ns);
    metrics_.snapshots_written.add_release();
    spdlog::info("snapshot: wrote {} ({} bytes from a {} byte image, {:.3f} s, writer paused {:.3f} s), {}",
                 written.path, written.bytes, image->bytes.size(), static_cast<double>(took_ns) / 1e9,
                 static_cast<double>(image->copy_ns) / 1e9, describe_position(*image));
  } catch (const Error& e) {
    metrics_.snapshot_failures.add();
    spdlog::error("snapshot: writing into {} failed: {} ({})", sc.dir, e.what(), error_code_name(e.code()));
    return;
  } catch (const std::exception& e) {
    metrics_.snapshot_failures.add();
    spdlog::error("snapshot: writing into {} failed: {}", sc.dir, e.what());
    return;
  }
  try {
    for (const std::string& path : prune_snapshots(sc.dir, config_.segment.name, sc.keep)) {
      spdlog::info("snapshot: removed {} (snapshot.keep is {})", path, sc.keep);
    }
  } catch (const std::exception& e) {
    spdlog::warn("snapshot: cannot list {} to remove old snapshots: {}", sc.dir, e.what());
  }
}

}  // namespace larder::sidecar

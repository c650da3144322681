// The files of snapshot.dir: `<segment>-<unix_ms>.lsnap`, where unix_ms is
// when the image was taken. The periodic snapshots write them, start-up
// restores the newest valid one. Only names of that exact form count; any
// other file in the directory is left alone. Main thread and snapshot thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace larder::sidecar {

inline constexpr std::string_view kSnapshotSuffix = ".lsnap";

struct SnapshotEntry {
  std::string path;
  int64_t unix_ms = 0;
};

// "<dir>/<segment>-<unix_ms>.lsnap".
std::string snapshot_path(const std::string& dir, std::string_view segment, int64_t unix_ms);

// The snapshots of `segment` in `dir`, newest first (by the time in the
// name). An absent directory holds none. Throws std::system_error when the
// directory cannot be read.
std::vector<SnapshotEntry> list_snapshots(const std::string& dir, std::string_view segment);

// Creates `dir` (and its parents) with mode 0750 when missing. Throws
// std::system_error.
void ensure_snapshot_dir(const std::string& dir);

// Deletes all but the newest `keep` snapshots of `segment`; returns the
// paths deleted. Throws std::system_error when the directory cannot be read;
// a file that cannot be deleted is skipped (and not returned).
std::vector<std::string> prune_snapshots(const std::string& dir, std::string_view segment, uint32_t keep);

}  // namespace larder::sidecar
